"""Replaying a night's alert archive (issue 25, item 4): peak memory, speed and store bytes.

Three measurements of ``s2v ingest`` (and ``s2v score``) on one nightly ZTF archive
``ztf_public_YYYYMMDD.tar.gz``:

- ``memory``: peak RSS of the whole ``s2v ingest`` process tree (the client, the nannies and
  the workers: psutil samples every process of the tree every 0.2 s and sums their RSS; the
  largest single process is reported too) for archives of several sizes. ``s2v ingest`` runs
  as a subprocess with its default LocalCluster (a single-threaded worker process per core).
- ``speed``: alerts a second per core end to end (archive -> store -> scores: ``s2v ingest``
  then ``s2v score``, each a subprocess on a one-worker cluster) against the plain loop
  (stream the archive with ``tarfile``, each member with ``fastavro.reader``, each cut-out with
  ``gzip`` + ``astropy.io.fits``, one process, nothing stored), timed in the same run.
- ``bytes``: bytes a stored alert takes in the store (the night's Zarr dataset on disk) per float
  encoding, against the archive's own bytes per alert, and what each encoding does to the
  scores (largest absolute score change against lossless over the same alerts).

Big archives are not simulated alert by alert (the physics simulator makes ~400 alerts/s on
this VM): a pool of simulated packets (``--pool``, 2,000 by default, ``simulate_alerts``) is
streamed into the archive again and again, each copy with a new ``candid``, ``objectId`` and
``jd`` (:func:`write_replay_archive`, a generator of this benchmark, not of the library).

    python benchmarks/bench_replay.py memory --alerts 100000 300000
    python benchmarks/bench_replay.py speed --alerts 20000
    python benchmarks/bench_replay.py bytes --alerts 5000
    python benchmarks/bench_replay.py memory --alerts 2000 --quick    # a dry run
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
S2V = [sys.executable, "-m", "s2v_batch.cli"]
NIGHT = 20240101  # the evening; the archive is named by the UT date of the morning after
ARCHIVE = "ztf_public_20240102.tar.gz"


# --------------------------------------------------------------------------- inputs


def pool_records(base: Path, n: int, seed: int = 25) -> list[dict[str, Any]]:
    """``n`` simulated ZTF alert packets (simulated once, kept under ``base``)."""
    import fastavro

    from s2v_batch.sim.alerts import simulate_alerts

    out = base / f"pool-{n}-{seed}"
    if not (out / "autoscan_features.3.csv").exists():
        shutil.rmtree(out, ignore_errors=True)
        simulate_alerts(out, survey="ztf", nights=1, alerts_per_night=n, fmt="avro", seed=seed,
                        first_night=NIGHT)  # fmt: skip
    recs = []
    for p in sorted((out / "alerts").glob("*.avro")):
        with open(p, "rb") as f:
            recs.extend(fastavro.reader(f))
    return recs


def replay_members(pool: list[dict[str, Any]], n: int) -> Iterator[tuple[str, bytes]]:
    """``n`` archive members: the pool's packets again and again, each copy with a new
    ``candid``, ``objectId`` and ``jd`` (the pixels repeat)."""
    from s2v_batch.sim.alerts import avro_container

    base = 10**18 + 7 * 10**9
    for k in range(n):
        copy, i = divmod(k, len(pool))
        rec = dict(pool[i])
        cand = dict(rec["candidate"])
        candid = base + k
        cand["candid"] = candid
        cand["jd"] = float(cand["jd"]) + copy * 1e-6  # within the night, distinct per copy
        rec["candidate"], rec["candid"] = cand, candid
        rec["objectId"] = f"ZTF24{k:07d}"[:12]
        yield f"{candid}.avro", avro_container([rec], "ztf")


def write_replay_archive(path: Path, pool: list[dict[str, Any]], n: int, level: int = 1) -> int:
    """Stream ``n`` replayed packets into a ``.tar.gz`` (gzip ``level``: the members are mostly
    gzipped cut-outs already, so the level changes the size by about 1%); return its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile("", "wb", level, raw, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            for name, data in replay_members(pool, n):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tf.addfile(info, io.BytesIO(data))
    return path.stat().st_size


# --------------------------------------------------------------------------- measuring


def _rss_anon(pid: int) -> tuple[int, int]:
    """``(RssAnon, RssFile)`` bytes of a process (Linux ``/proc/PID/status``): private memory,
    and the pages of files it maps (a memory-mapped ``.npy`` read counts there, page cache the
    kernel takes back at need)."""
    anon = file = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    anon = int(line.split()[1]) * 1024
                elif line.startswith("RssFile:"):
                    file = int(line.split()[1]) * 1024
    except OSError:
        pass
    return anon, file


class TreeRSS:
    """Peak RSS of a process and all its descendants (sum over the tree, sampled), and the
    peak of its private part (``RssAnon``); per process the largest of each, by role."""

    def __init__(self, pid: int, every: float = 0.2):
        import psutil

        self.proc = psutil.Process(pid)
        self.every = every
        self.peak_sum = 0
        self.peak_one = 0
        self.peak_anon = 0
        self.by_role: dict[str, tuple[int, int]] = {}
        self.n_procs = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.Error:
                break
            rss, anon = [], []
            for p in procs:
                try:
                    rss.append(p.memory_info().rss)
                    a, f = _rss_anon(p.pid)
                    anon.append(a)
                    role = _role(p)
                    old = self.by_role.get(role, (0, 0))
                    self.by_role[role] = (max(old[0], a), max(old[1], f))
                except psutil.Error:
                    pass
            if rss:
                self.peak_anon = max(self.peak_anon, sum(anon))
                self.peak_sum = max(self.peak_sum, sum(rss))
                self.peak_one = max(self.peak_one, max(rss))
                self.n_procs = max(self.n_procs, len(rss))
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


def _role(p: Any) -> str:
    """client, nanny, worker or other: what a process of the ``s2v`` tree is."""
    cmd = " ".join(p.cmdline())
    if "s2v_batch.cli" in cmd:
        return "client"
    if "spawn_main" in cmd or "multiprocessing" in cmd:
        return "worker"
    return p.name()


def run_cli(args: list[str], *, measure: bool = False) -> tuple[float, TreeRSS | None, str]:
    """Run ``s2v ARGS`` niced; return seconds, the tree's memory (if asked) and its last line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    p = subprocess.Popen(["nice", "-n", "10", *S2V, *args], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, cwd=ROOT)  # fmt: skip
    mem = TreeRSS(p.pid) if measure else None
    out, _ = p.communicate()
    dt = time.perf_counter() - t0
    if mem:
        mem.stop()
    if p.returncode:
        raise SystemExit(f"s2v {' '.join(args)} failed ({p.returncode}):\n{out[-3000:]}")
    lines = [ln for ln in out.splitlines() if ln.strip()]
    return dt, mem, lines[-1] if lines else ""


def plain_loop(archive: Path) -> tuple[int, float]:
    """bench_alerts.py's plain loop over the archive, counting stamps instead of keeping them
    (a replayed night does not fit in memory); imports before the clock starts."""
    import astropy.io.fits  # noqa: F401
    import fastavro  # noqa: F401
    from bench_alerts import plain_stamps

    t0 = time.perf_counter()
    n = sum(1 for _ in plain_stamps(archive))
    return n, time.perf_counter() - t0


def du(path: Path) -> int:
    """Bytes on disk under ``path`` (allocated blocks, as ``du``)."""
    total = 0
    for p in path.rglob("*"):
        if p.is_file():
            total += p.stat().st_blocks * 512
    return total


def header(what: str) -> str:
    load = os.getloadavg()[0]
    return (
        f"# {what}: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, python "
        f"{sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"load average {load:.1f} before"
    )


# --------------------------------------------------------------------------- the three runs


def cmd_memory(a: argparse.Namespace, base: Path, pool: list[dict[str, Any]]) -> None:
    print(header(f"s2v ingest peak memory (pool of {len(pool)} simulated packets, replayed)"))
    print("| alerts | archive MiB | make s | ingest s | alerts/s | peak RSS, tree MiB "
          "| peak private (RssAnon), tree MiB | client private MiB | largest worker private MiB "
          "| load after | summary |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in a.alerts:
        raw = base / f"raw-{n}"
        store = base / f"store-{n}"
        shutil.rmtree(raw, ignore_errors=True)
        shutil.rmtree(store, ignore_errors=True)
        t0 = time.perf_counter()
        size = write_replay_archive(raw / ARCHIVE, pool, n)
        make = time.perf_counter() - t0
        try:
            args = ["ingest", str(raw), "--store", str(store), "--no-progress"]
            args += ["--float-encoding", a.encoding]
            dt, mem, line = run_cli(args, measure=True)
        finally:
            shutil.rmtree(raw, ignore_errors=True)
            shutil.rmtree(store, ignore_errors=True)
        assert mem is not None
        mib = {k: v[0] / 2**20 for k, v in mem.by_role.items()}
        print(
            f"| {n:,} | {size / 2**20:,.0f} | {make:.0f} | {dt:.0f} | {n / dt:,.0f} | "
            f"{mem.peak_sum / 2**20:,.0f} | {mem.peak_anon / 2**20:,.0f} | "
            f"{mib.get('client', 0):,.0f} | {mib.get('worker', 0):,.0f} | "
            f"{os.getloadavg()[0]:.1f} | {line} |",
            flush=True,
        )


def _scores(scores_root: Path) -> dict[int, tuple[float, bool]]:
    """``stamp_id -> (score, is_candidate)`` of every score part under ``scores_root``."""
    import pyarrow.parquet as pq

    out: dict[int, tuple[float, bool]] = {}
    for p in sorted(scores_root.rglob("*.parquet")):
        if "_staging" in p.parts:
            continue
        t = pq.read_table(p, columns=["stamp_id", "score", "is_candidate"]).to_pydict()
        pairs = zip(t["score"], t["is_candidate"], strict=True)
        out.update(zip(t["stamp_id"], pairs, strict=True))
    return out


def _model_version(scores_root: Path) -> str:
    import pyarrow.parquet as pq

    part = next(p for p in sorted(scores_root.rglob("*.parquet")) if "_staging" not in p.parts)
    return ", ".join(sorted(set(pq.read_table(part, columns=["model_version"])[0].to_pylist())))


def replay_archive(base: Path, pool: list[dict[str, Any]], n: int) -> tuple[Path, Path]:
    """The raw folder of a replayed night of ``n`` alerts and its archive (written once)."""
    raw = base / f"raw-{n}"
    archive = raw / ARCHIVE
    if not archive.exists():
        write_replay_archive(archive, pool, n)
    return raw, archive


def cmd_speed(a: argparse.Namespace, base: Path, pool: list[dict[str, Any]]) -> None:
    n = a.alerts[0]
    raw, archive = replay_archive(base, pool, n)
    cluster = base / "one-worker.yaml"
    cluster.write_text(
        "kind: local\noptions:\n  n_workers: 1\n  threads_per_worker: 1\n  processes: true\n"
        '  host: 127.0.0.1\n  dashboard_address: ":0"\n'
    )
    print(header(f"end to end, one night of {n:,} alerts ({archive.stat().st_size / 2**20:,.0f} "
                 f"MiB archive), one worker"))  # fmt: skip
    print("| run | plain loop alerts/s | ingest s | score s | s2v alerts/s per core "
          "| ingest-only alerts/s | ratio end to end | ratio ingest only |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in range(a.repeat):
        m, dt_plain = plain_loop(archive)
        assert m == n, (m, n)
        store, scores = base / "speed-store", base / "speed-scores"
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(scores, ignore_errors=True)
        args = ["ingest", str(raw), "--store", str(store), "--no-progress", "--cluster",
                str(cluster), "--float-encoding", a.encoding]  # fmt: skip
        dt_ing, _, _ = run_cli(args)
        dt_sc, _, line = run_cli(["score", str(store), "--out", str(scores), "--no-progress",
                                  "--cluster", str(cluster)])  # fmt: skip
        if r == 0:
            print(f"# model: {_model_version(scores)}", flush=True)
        plain = n / dt_plain
        e2e, ing = n / (dt_ing + dt_sc), n / dt_ing
        print(f"| {r + 1} | {plain:,.0f} | {dt_ing:.1f} | {dt_sc:.1f} | {e2e:,.0f} | {ing:,.0f} | "
              f"{e2e / plain:.2f}x | {ing / plain:.2f}x |", flush=True)  # fmt: skip
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(scores, ignore_errors=True)
    print(f"# load average after: {os.getloadavg()[0]:.1f}")


def cmd_bytes(a: argparse.Namespace, base: Path, pool: list[dict[str, Any]]) -> None:
    n = a.alerts[0]
    raw, archive = replay_archive(base, pool, n)
    arch = archive.stat().st_size
    print(header(f"store bytes per alert, one night of {n:,} alerts"))
    print(f"archive: {arch:,} bytes, {arch / n:,.0f} bytes/alert")
    print("| float encoding | store bytes/alert | store / archive | max abs score change "
          "| candidates changed |")  # fmt: skip
    print("|---|---|---|---|---|")
    ref: dict[int, tuple[float, bool]] | None = None
    for enc in a.encodings:
        store, scores = base / f"bytes-store-{enc}", base / f"bytes-scores-{enc}"
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(scores, ignore_errors=True)
        run_cli(["ingest", str(raw), "--store", str(store), "--no-progress",
                 "--float-encoding", enc])  # fmt: skip
        size = sum(du(p) for p in store.glob("*/*.zarr"))
        run_cli(["score", str(store), "--out", str(scores), "--no-progress"])
        got = _scores(scores)
        assert len(got) == n, (len(got), n)
        if ref is None:
            print(f"# model: {_model_version(scores)}")
        if ref is None:
            ref, change, flips = got, 0.0, 0
        else:
            ids = sorted(ref)
            d = np.abs(np.array([got[i][0] for i in ids]) - np.array([ref[i][0] for i in ids]))
            change = float(d.max())
            flips = sum(got[i][1] != ref[i][1] for i in ids)
        print(f"| {enc} | {size / n:,.0f} | {size / arch:.2f} | {change:.2e} | {flips} |",
              flush=True)  # fmt: skip
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(scores, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("what", choices=("memory", "speed", "bytes"))
    p.add_argument("--alerts", type=int, nargs="+", default=[100_000, 300_000])
    p.add_argument("--pool", type=int, default=2000, help="simulated packets replayed (2000)")
    p.add_argument("--encoding", default="lossless", help="float encoding (memory, speed)")
    p.add_argument("--encodings", nargs="+", default=["lossless", "bitround-12", "bitround-10",
                                                      "bitround-8"])  # fmt: skip
    p.add_argument("--repeat", type=int, default=1, help="speed: timings (1)")
    p.add_argument("--workdir", default=".bench/replay", help="scratch (archives deleted)")
    p.add_argument("--quick", action="store_true", help="dry run: a pool of 200")
    a = p.parse_args(argv)
    if a.quick:
        a.pool = 200
    base = Path(a.workdir).resolve()
    base.mkdir(parents=True, exist_ok=True)
    pool = pool_records(base, a.pool)
    {"memory": cmd_memory, "speed": cmd_speed, "bytes": cmd_bytes}[a.what](a, base, pool)
    return 0


if __name__ == "__main__":
    sys.exit(main())
