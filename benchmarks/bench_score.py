"""``s2v score`` against its three peers, in one run, on the same nights and the shipped model.

For each dtype (uint8 as ingested from GIF, float32 from FITS) and night size, every peer runs as
its own process, timed from process start to exit, with the PSS of its whole process tree
sampled every 0.25 s (PSS charges shared pages to the processes sharing them, so TensorFlow's
libraries count once) and its CPU seconds summed over the tree:

- ``s2v score NIGHTS --out OUT`` exactly as a user runs it (default LocalCluster and config); its
  parts are watched as they land: the time to the first one, and the steady rate between the
  first and the last;
- the plain loop (``benchmarks/plain_loop.py``): one process, Zarr slices of 4,096 by a
  background thread, a compiled ``tf.function`` per 512 stamps, pyarrow ``ParquetWriter``;
- ``model.predict`` (Keras) on the whole night read into one array (``xarray``);
- the ceiling: :class:`s2v_batch.model.Predictor` on stamps already in memory (one process,
  TensorFlow's default threads; and ``ceiling 2x1``: two threads calling it at once with one
  intra-op thread each, the layout of s2v's worker), best of 3 over up to 20,000 stamps; and
  ``ceiling, model as saved``: the same call without the Predictor's rewrites (BatchNorm
  folding, the fused normalisation), the plain loop's own ceiling.

The VM's speed drifts between minutes, so the plain loop runs next to each ``s2v score`` run in
ABBA order (plain, s2v, s2v, plain) and each s2v run is compared with its neighbour. Nights are
written with the store's own code (``benchdata.make_night``: the layout, codecs and float
encoding ``s2v ingest`` gives them) from simulated stamps; they are kept under ``--workdir``.

    python benchmarks/bench_score.py                        # 40,000 and 200,000, both dtypes
    python benchmarks/bench_score.py --sizes 40000 --dtypes float32
    python benchmarks/bench_score.py --quick                # everything small, a minute or two
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import benchdata as bd  # noqa: E402

ENV = {
    **os.environ,
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "TF_ENABLE_ONEDNN_OPTS": "1",
    "PYTHONPATH": str(HERE.parent),
}


# --------------------------------------------------------------------------- peers run in-process


def peer_predict(night: str, model: str) -> dict:
    """``model.predict`` on the whole night, read into memory with xarray."""
    import keras
    import xarray as xr

    import s2v_batch.model.layers  # noqa: F401  (the model's layers, registered)

    m = keras.saving.load_model(model, compile=False)
    t0 = time.perf_counter()
    x = xr.open_zarr(night).stamps.values
    m.predict(x, batch_size=512, verbose=0)
    return {"n": len(x), "rate": len(x) / (time.perf_counter() - t0)}


def peer_ceiling(
    night: str, model: str, threads: int, limit: int = 20000, as_saved: bool = False
) -> dict:
    """The compiled call on stamps in memory, best of 3 (``threads`` callers at once).

    :class:`~s2v_batch.model.Predictor` (BatchNorm folded, normalisation fused), or with
    ``as_saved`` the model as saved, the plain loop's call (its own ceiling).
    """
    from concurrent.futures import ThreadPoolExecutor

    import xarray as xr

    from s2v_batch.model import Predictor

    x = np.ascontiguousarray(xr.open_zarr(night).stamps[:limit].values)
    pred = Predictor(model, batch_size=512, fold_bn=not as_saved, fuse_norm=not as_saved)
    pred.predict(x[:512])
    pred.predict(x[:64])
    parts = np.array_split(x, threads)
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(3):
            t0 = time.perf_counter()
            list(pool.map(pred.predict, parts))
            best = max(best, len(x) / (time.perf_counter() - t0))
    return {"n": len(x), "rate": best}


# --------------------------------------------------------------------------- the driver


class Watch:
    """Runs a command, samples its process tree (PSS, CPU) and, for s2v, its parts landing."""

    def __init__(self, cmd: list[str], env: dict, parts_root: Path | None = None) -> None:
        self.cmd, self.env, self.parts_root = cmd, env, parts_root
        self.part_times: dict[str, float] = {}

    def run(self) -> dict:
        import psutil

        t0 = time.perf_counter()
        proc = subprocess.Popen(
            self.cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        out: dict[str, str] = {}
        readers = [
            threading.Thread(target=lambda k, f: out.__setitem__(k, f.read()), args=(k, f))
            for k, f in (("stdout", proc.stdout), ("stderr", proc.stderr))
        ]
        for r in readers:
            r.start()
        peak, cpu, next_mem = 0, {}, 0.0
        while proc.poll() is None:
            now = time.perf_counter()
            if self.parts_root is not None:
                for p in self.parts_root.rglob("part-*.parquet"):
                    self.part_times.setdefault(p.name, now - t0)
            if now >= next_mem:
                next_mem = now + 0.25
                total = 0
                for q in bd.process_tree(proc.pid):
                    try:
                        with q.oneshot():
                            total += q.memory_full_info().pss
                            c = q.cpu_times()
                            cpu[q.pid] = c.user + c.system
                    except psutil.Error:
                        pass
                peak = max(peak, total)
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        for r in readers:
            r.join()
        if proc.returncode:
            raise RuntimeError(
                f"{self.cmd[:4]} failed ({proc.returncode}):\n{out['stderr'][-3000:]}"
            )
        return {
            "wall": wall,
            "pss": peak,
            "cpu": sum(cpu.values()),
            "stdout": out["stdout"],
            "stderr": out["stderr"],
        }


def s2v_command() -> list[str]:
    exe = Path(sys.executable).with_name("s2v")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "s2v_batch.cli"]


def run_s2v(store: Path, out: Path, n: int, part_stamps: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    w = Watch([*s2v_command(), "score", str(store), "--out", str(out), "--no-progress"], ENV, out)
    r = w.run()
    times = sorted(w.part_times.values())
    r["first"] = times[0] if times else float("nan")
    r["n"] = n
    # Parts land every few seconds; the steady rate counts the stamps of the parts after the
    # first over the time between the first and the last (start-up and publishing excluded).
    r["steady"] = (
        (len(times) - 1) * part_stamps / (times[-1] - times[0])
        if len(times) > 2 and times[-1] > times[0]
        else float("nan")
    )
    r["summary"] = next((ln for ln in r["stdout"].splitlines() if ln.startswith("score:")), "")
    shutil.rmtree(out, ignore_errors=True)
    return r


def run_plain(night: Path, model: Path, out: Path) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    r = Watch(
        [sys.executable, str(HERE / "plain_loop.py"), str(night), str(model), str(out)], ENV
    ).run()
    own = json.loads(r["stdout"].strip().splitlines()[-1])
    out.unlink(missing_ok=True)
    return {**r, "n": own["n"], "first": own["first_block_s"], "steady": own["steady_rate"]}


def run_peer(name: str, night: Path, model: Path, env: dict) -> dict:
    cmd = [sys.executable, str(HERE / "bench_score.py"), "--peer", name, str(night), str(model)]
    r = Watch(cmd, env).run()
    own = json.loads(r["stdout"].strip().splitlines()[-1])
    return {**r, "n": own["n"], "steady": own["rate"], "first": float("nan")}


def fmt_row(dtype, n, label, r, plain, ceiling) -> str:
    e2e = r["n"] / r["wall"]
    ratio = f"{e2e / (plain['n'] / plain['wall']):.2f}x" if plain is not None else ""
    steady = "" if np.isnan(r["steady"]) else f"{r['steady']:,.0f}"
    pct = f"{100 * r['steady'] / ceiling:.0f}%" if ceiling and steady else ""
    first = "" if np.isnan(r.get("first", np.nan)) else f"{r['first']:.1f}"
    wall = f"{r['wall']:.1f}" if not label.startswith("ceiling") else ""
    e2e_s = f"{e2e:,.0f}" if wall else ""
    return (
        f"| {dtype} | {n:,} | {label} | {wall} | {e2e_s} | {steady} | {pct} | "
        f"{first} | {r['pss'] / 2**30:.2f} | {1e3 * r['cpu'] / max(r['n'], 1):.2f} | {ratio} |"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--peer", nargs=3, metavar=("NAME", "NIGHT", "MODEL"), help=argparse.SUPPRESS)
    p.add_argument("--sizes", type=int, nargs="+", default=[40000, 200000])
    p.add_argument("--dtypes", nargs="+", default=["uint8", "float32"])
    p.add_argument("--float-encoding", help="of the float32 nights (default: the ingest's)")
    p.add_argument("--no-predict-above", type=int, default=10**9, help="skip model.predict above")
    p.add_argument("--workdir", default=".bench/score")
    p.add_argument("--quick", action="store_true", help="6,144 stamps, each peer once")
    a = p.parse_args(argv)
    if a.peer:
        name, night, model = a.peer
        if name == "predict":
            r = peer_predict(night, model)
        else:
            r = peer_ceiling(
                night, model, 2 if name == "ceiling2" else 1, as_saved=name == "ceiling-saved"
            )
        print(json.dumps(r))
        return 0
    if a.quick:
        a.sizes = [6144]  # three parts: a steady rate between the first and the last
    from s2v_batch.core.config import IngestConfig, ScoreConfig

    work = Path(a.workdir)
    model = bd.shipped_model()
    enc = a.float_encoding or IngestConfig().float_encoding
    part = ScoreConfig().part_stamps
    print(
        f"# s2v score and its peers: {platform.node()}, {os.cpu_count()} cores, python "
        f"{platform.python_version()}, {bd.now()}, model {model.name}, float32 nights {enc}\n"
        f"# command: python benchmarks/bench_score.py {' '.join(sys.argv[1:] if argv is None else argv)}\n"
        f"# {bd.load_line()} at the start\n",
        flush=True,
    )
    header = (
        "| dtype | stamps | how | wall s (start to exit) | stamps/s end to end | steady stamps/s "
        "| steady % of ceiling | first part s | peak PSS GiB (tree) | CPU ms a stamp (tree) "
        "| end to end / plain loop (neighbour) |"
    )
    rows = [header, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    single_env = {**ENV}
    pair_env = {**ENV, "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "2"}
    for dtype in a.dtypes:
        for n in a.sizes:
            store = work / f"store-{dtype}-{n}-{enc if dtype == 'float32' else 'lossless'}"
            t = time.perf_counter()
            night = bd.make_night(store, n, dtype, workdir=work, float_encoding=enc)
            print(
                f"[{dtype} {n}: night ready in {time.perf_counter() - t:.0f} s; {bd.load_line()}]",
                flush=True,
            )
            out = work / "out"
            results: list[list] = []  # [label, result, neighbouring plain loop]
            for peer in ["plain", "s2v"] if a.quick else ["plain", "s2v", "s2v", "plain"]:
                if peer == "plain":
                    results.append(
                        ["plain loop", run_plain(night, model, out / "plain.parquet"), None]
                    )
                else:
                    results.append(["s2v score", run_s2v(store, out / "scores", n, part), None])
                print(
                    f"  {results[-1][0]}: {results[-1][1]['wall']:.1f} s ({bd.load_line()})",
                    flush=True,
                )
            for i, entry in enumerate(results):  # ABBA: each s2v run next to its own plain loop
                if entry[0] == "s2v score":
                    j = i - 1 if results[i - 1][0] == "plain loop" else i + 1
                    entry[2] = results[j][1]
            if n <= a.no_predict_above:
                results.append(
                    [
                        "model.predict, whole night",
                        run_peer("predict", night, model, single_env),
                        None,
                    ]
                )
            results.append(["ceiling", run_peer("ceiling", night, model, single_env), None])
            results.append(["ceiling 2x1", run_peer("ceiling2", night, model, pair_env), None])
            ceiling = results[-2][1]["steady"]
            results.append(
                [
                    "ceiling, model as saved",
                    run_peer("ceiling-saved", night, model, single_env),
                    None,
                ]
            )
            for label, r, plain in results:
                rows.append(fmt_row(dtype, n, label, r, plain, ceiling))
                if label == "s2v score":
                    print(f"  s2v's own summary: {r['summary']}", flush=True)
            print("\n".join(rows[-len(results) :]), flush=True)
    print("\n" + "\n".join(rows))
    print(f"\n# {bd.load_line()} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
