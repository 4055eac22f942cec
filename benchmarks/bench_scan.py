"""The scanning server under load: 8 scanners at once, 2,000 verdicts each, on loopback.

A simulated night (``--stamps``, real fraction 0.5) is stored and scored by the shipped model;
``s2v scan`` serves it as a separate process (SQLite verdicts, WAL, synchronous=FULL, one
transaction a verdict; ``--per-stamp 8`` so that the 8 scanners judge the same candidates). Each
scanner is a process of its own with one keep-alive connection, doing what the page does: ask
for the next 5, fetch each stamp's PNG, post each verdict. Every request is timed (client side:
from sending to the whole answer read). At the end the database must hold exactly the
acknowledged verdicts, no (scanner, stamp) twice.

The plain alternative, measured in the same run: the same number of verdicts written straight
into a fresh SQLite file with :meth:`VerdictDB.record` from 8 threads (no HTTP, no server), i.e.
what the database alone costs.

    python benchmarks/bench_scan.py                       # 8 x 2000, back to back
    python benchmarks/bench_scan.py --think 0.1           # 8 x 2000, 10 verdicts/s each
    python benchmarks/bench_scan.py --scanners 8 --verdicts 200 --stamps 1000   # quick
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import multiprocessing as mp
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(base: Path, n: int) -> tuple[Path, Path]:
    """A stored and scored night of ``n`` simulated stamps."""
    from s2v_batch.core.config import ScoreConfig
    from s2v_batch.pipeline.cluster import ClusterSpec, open_client
    from s2v_batch.scoring.driver import score
    from s2v_batch.sim.simulator import simulate_stamps
    from s2v_batch.store import dataset as zstore

    store, scores = base / "store", base / "scores"
    b = simulate_stamps(n, np.random.default_rng(24), real_fraction=0.5)
    zstore.write_night(zstore.night_path(store, "Y1", 20130901), b.pixels,
                       np.arange(n, dtype=np.int64) + 1_000_000, b.labels, season="Y1",
                       night=20130901, attrs={"night_fingerprint": "bench-scan"})  # fmt: skip
    spec = ClusterSpec(kind="local", name="bench",
                       options={"n_workers": 1, "threads_per_worker": 2,
                                "dashboard_address": "127.0.0.1:0"})  # fmt: skip
    with open_client(spec) as client:
        score(store, scores, client, config=ScoreConfig(part_stamps=n), progress=False,
              log=lambda _: None)  # fmt: skip
    return store, scores


def scanner(url: str, k: int, n: int, think: float, out: mp.Queue) -> None:
    """One scanner: next 5, each stamp's image, each verdict; the latencies by request kind."""
    host, port = url.split("//")[1].rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.connect()
    # As browsers do: without it Nagle's algorithm and delayed ACKs add 40 ms to a request.
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lat: dict[str, list[float]] = {"next": [], "image": [], "verdict": [], "session": []}
    acked: list[int] = []
    shown: list[int] = []

    def call(kind: str, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        t0 = time.perf_counter()
        conn.request(method, path, body=data)
        r = conn.getresponse()
        payload = r.read()
        lat[kind].append(time.perf_counter() - t0)
        return r.status, payload

    status, doc = call("session", "POST", "/api/session", {"scanner": f"bench{k}",
                       "order": "best" if k % 2 else "threshold"})  # fmt: skip
    sid = json.loads(doc)["session"]
    while len(acked) < n:
        status, doc = call("next", "GET", f"/api/next?session={sid}&n=5")
        items = json.loads(doc)["items"]
        if status != 200 or not items:
            break
        for it in items[: n - len(acked)]:
            shown.append(it["stamp_id"])
            status, _ = call("image", "GET", "/" + it["img"])
            assert status == 200
            status, doc = call("verdict", "POST", "/api/verdict", {
                "session": sid, "season": it["season"], "stamp_id": it["stamp_id"],
                "verdict": ("real", "bogus", "skip")[len(acked) % 3], "seconds": 1.0})  # fmt: skip
            assert status == 200, doc
            acked.append(json.loads(doc)["id"])
            if think:
                time.sleep(think)  # a person looks at the stamp before the next key
    out.put((k, lat, acked, shown))


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q)) if values else float("nan")


def direct(path: Path, scanners: int, n: int) -> tuple[float, list[float]]:
    """The plain alternative: ``scanners`` threads x ``n`` verdicts straight into SQLite."""
    from s2v_batch.store.verdicts import open_verdicts

    lat: list[float] = []
    db = open_verdicts(path)

    def work(k: int) -> None:
        for i in range(n):
            t0 = time.perf_counter()
            db.record(stamp_id=i, season="Y1", night=20130901, scanner=f"d{k}", verdict="real",
                      seconds=1.0, model_version="m", score=0.5)  # fmt: skip
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work, args=(k,)) for k in range(scanners)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    db.close()
    return wall, lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scanners", type=int, default=8)
    ap.add_argument("--verdicts", type=int, default=2000, help="verdicts a scanner")
    ap.add_argument("--think", type=float, default=0.0,
                    help="seconds a scanner waits after each verdict (0: back to back)")  # fmt: skip
    ap.add_argument(
        "--stamps", type=int, default=4600, help="simulated stamps (about half are candidates)"
    )
    a = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-scan-"))
    t0 = time.perf_counter()
    store, scores = build(base, a.stamps)
    print(f"built and scored {a.stamps} stamps in {time.perf_counter() - t0:.0f} s", flush=True)
    db = base / "verdicts.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "s2v_batch.cli", "scan", str(scores), "--store", str(store),
         "--db", str(db), "--port", "0", "--per-stamp", str(a.scanners)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )  # fmt: skip
    url = None
    for line in proc.stdout:
        print(line.rstrip(), flush=True)
        if m := re.search(r"open (http://\S+)", line):
            url = m.group(1)
            break
    assert url, "no URL"
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    t0 = time.perf_counter()
    procs = [
        ctx.Process(target=scanner, args=(url, k, a.verdicts, a.think, q))
        for k in range(a.scanners)
    ]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    proc.terminate()
    proc.wait(timeout=60)

    from s2v_batch.store.verdicts import open_verdicts

    with open_verdicts(db) as vdb:
        rows = vdb.read()
    acked = [i for r in results for i in r[2]]
    lost = len(set(acked) - set(rows["id"]))
    dup = int(rows.duplicated(["scanner", "stamp_id"]).sum())
    shown_twice = sum(len(r[3]) - len(set(r[3])) for r in results)
    lat: dict[str, list[float]] = {}
    for r in results:
        for kind, v in r[1].items():
            lat.setdefault(kind, []).extend(v)
    every = [x for kind in ("next", "image", "verdict") for x in lat[kind]]
    d_wall, d_lat = direct(base / "direct.sqlite", a.scanners, len(acked) // a.scanners)
    shutil.rmtree(base, ignore_errors=True)
    load = os.getloadavg()
    print(
        f"\n{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"think time {a.think:g} s; scanners {a.scanners}, verdicts acknowledged {len(acked)} (wanted {a.scanners * a.verdicts}), "
          f"rows {len(rows)}, lost {lost}, duplicated {dup}, shown twice {shown_twice}")  # fmt: skip
    print("| requests | n | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|")
    for kind in ("verdict", "next", "image"):
        v = lat[kind]
        print(f"| {kind} | {len(v)} | {pct(v, 50):.1f} | {pct(v, 99):.1f} | {max(v) * 1000:.1f} |")
    print(
        f"| all three | {len(every)} | {pct(every, 50):.1f} | {pct(every, 99):.1f} | {max(every) * 1000:.1f} |"
    )
    print(
        f"| direct SQLite record (no HTTP) | {len(d_lat)} | {pct(d_lat, 50):.2f} | {pct(d_lat, 99):.2f} | {max(d_lat) * 1000:.1f} |"
    )
    rate = len(acked) / wall
    d_rate = len(d_lat) / d_wall
    print(f"verdicts/s through the server {rate:,.0f} ({wall:.1f} s, with an image fetch and 1/5 "
          f"next per verdict); direct {d_rate:,.0f} ({d_wall:.1f} s); ratio {rate / d_rate:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
