"""Where a scoring worker's time goes, in CPU time (meaningful on a busy machine; wall time is not).

1. Start-up of a worker process, each step's CPU seconds: importing distributed and zarr,
   TensorFlow + Keras (through ``s2v_batch.model.backend``), loading the model (sha256 check,
   BatchNorm folded), tracing the compiled call for a dtype.
2. Per stamp, each stage of scoring one part, before (the code of issue 4) and now, with one
   TensorFlow thread as a worker runs it: opening the night, reading (zarr-python slices into
   fresh arrays, against :class:`s2v_batch.store.shardread.StampReader` into reused buffers; and the
   zstd decompression alone), the non-finite check (every pixel, against only stamps that scored
   NaN), the model call, building and writing the Parquet part.
3. ``s2v score`` as a user runs it: CPU seconds of each process of its tree (the driver: client,
   scheduler and nannies; each worker) over the whole run.

    python benchmarks/profile_score.py                     # 8,192 stamps a night
    python benchmarks/profile_score.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

STARTUP = r"""
import json, os, sys, time
t = {}
c = time.process_time(); import distributed, zarr, pyarrow; t["import distributed, zarr, pyarrow"] = time.process_time() - c
c = time.process_time(); from s2v_batch.model import backend; t["import TensorFlow + Keras"] = time.process_time() - c
import numpy as np
from s2v_batch.model import Predictor
c = time.process_time(); pred = Predictor(sys.argv[1], batch_size=512); t["load model (+ fold BatchNorm)"] = time.process_time() - c
for dtype in sys.argv[2:]:
    c = time.process_time(); pred.predict(np.zeros((512, 51, 51, 3), dtype)); t[f"trace, {dtype}"] = time.process_time() - c
print(json.dumps(t))
"""


def startup(model: Path, dtypes: list[str]) -> dict[str, float]:
    env = {**os.environ, "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
           "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(HERE.parent)}  # fmt: skip
    r = subprocess.run([sys.executable, "-c", STARTUP, str(model), *dtypes], env=env,
                       capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(r.stdout.strip().splitlines()[-1])


def stages(night: Path, model: Path, n: int, repeats: int) -> dict[str, tuple[float, float]]:
    """CPU microseconds a stamp of each stage: (before, now)."""
    import datetime as dt

    import numpy as np
    import pyarrow as pa
    import zarr

    from s2v_batch.scoring.driver import get_predictor, nonfinite_reasons, score_block
    from s2v_batch.store import dataset as zstore
    from s2v_batch.store import publish
    from s2v_batch.store.shardread import StampReader

    part = 2048
    pred = get_predictor(str(model), 512)
    stamps = zstore.stamps_path(night)
    reader = StampReader(stamps)
    buf = np.empty((1024, *reader.shape[1:]), reader.dtype)
    x = reader.read(0, part)
    pred.predict(x[:512])

    def per_stamp(fn, stamps_done: int = part) -> float:
        best = float("inf")
        for _ in range(repeats):
            c = time.process_time()
            fn()
            best = min(best, time.process_time() - c)
        return 1e6 * best / stamps_done

    def open_before():
        g = zarr.open_group(night, mode="r")
        g["stamp_id"][0:part], g["label"][0:part], g["stamps"]

    def read_before():
        arr = zarr.open_array(stamps, mode="r")
        for a in range(0, part, 1024):
            arr[a : a + 1024]

    def read_now():
        for a in range(0, part, 1024):
            reader.read(a, a + 1024, out=buf)

    def zstd_alone():
        import numcodecs

        lay = reader._layout
        shard = (stamps / "c" / "0" / "0" / "0" / "0").read_bytes()
        idx = np.frombuffer(shard[-(lay.n_inner * 16 + 4) : -4], "<u8").reshape(-1, 2)
        codec = numcodecs.Blosc() if "blosc" in str(lay.decoder) else numcodecs.Zstd()
        for off, nb in idx[: part // lay.chunk]:
            codec.decode(shard[off : off + nb])

    scores = pred.predict(x)
    ts = dt.datetime.now(dt.UTC)

    def table(strings_as_lists: bool):
        k = len(scores)
        rep = (lambda v: pa.array([v] * k, pa.string())) if strings_as_lists else (
            lambda v: pa.repeat(pa.scalar(v, pa.string()), k))  # fmt: skip
        t = pa.table({
            "stamp_id": pa.array(np.arange(k), pa.int64()), "score": pa.array(scores, pa.float32()),
            "is_candidate": pa.array(scores >= 0.5), "threshold": pa.array(np.full(k, 0.5, np.float32)),
            "label": pa.array(np.zeros(k, np.int8), pa.int8()), "model_version": rep("m-1"),
            "model_sha256": rep("a" * 64), "run_id": rep("r" * 32),
            "scored_at": pa.array([ts] * k, pa.timestamp("us", tz="UTC")) if strings_as_lists
            else pa.repeat(pa.scalar(ts, pa.timestamp("us", tz="UTC")), k),
            "error": pa.array([None] * k, pa.string()),
        })  # fmt: skip
        publish.write_part(night.parent / ".profile-part.parquet", t)

    out = {
        "open the night (per task)": (per_stamp(open_before), 0.0),
        "read + decompress": (per_stamp(read_before), per_stamp(read_now)),
        "  of which zstd/blosc alone": (per_stamp(zstd_alone), per_stamp(zstd_alone)),
        "non-finite check": (
            per_stamp(lambda: nonfinite_reasons(x)),
            per_stamp(lambda: np.flatnonzero(np.isnan(scores))),
        ),  # fmt: skip
        "model call (1 TensorFlow thread)": (per_stamp(lambda: pred.predict(x)),) * 2,
        "Parquet part (build + write)": (
            per_stamp(lambda: table(True)),
            per_stamp(lambda: table(False)),
        ),
        "score_block (check + call), as called": (
            float("nan"),
            per_stamp(lambda: score_block(x, str(model), 512)),
        ),  # fmt: skip
    }
    (night.parent / ".profile-part.parquet").unlink(missing_ok=True)
    return out


def tree_cpu(store: Path, out: Path) -> list[tuple[str, float]]:
    import shutil

    import benchdata as bd
    import psutil
    from bench_score import ENV, s2v_command

    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.Popen([*s2v_command(), "score", str(store), "--out", str(out), "--no-progress"],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    cpu, role = {}, {}
    while proc.poll() is None:
        for q in bd.process_tree(proc.pid):
            try:
                c = q.cpu_times()
                cpu[q.pid] = c.user + c.system
                cmd = " ".join(q.cmdline())
                role[q.pid] = ("driver (client, scheduler, nannies)" if q.pid == proc.pid
                               else "worker" if "spawn_main" in cmd else "other")  # fmt: skip
            except psutil.Error:
                pass
        time.sleep(0.2)
    shutil.rmtree(out, ignore_errors=True)
    return sorted(((f"{role[p]} {p}", c) for p, c in cpu.items()), key=lambda rc: rc[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--stamps", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", default=".bench/profile")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.stamps, a.repeats = 4096, 1
    os.environ.update(
        TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2"
    )
    import benchdata as bd

    from s2v_batch.core.config import IngestConfig

    work, model = Path(a.workdir), bd.shipped_model()
    enc = IngestConfig().float_encoding
    print(f"# where a scoring worker's time goes: {bd.now()}, {bd.load_line()}\n"
          f"# command: python benchmarks/profile_score.py {' '.join(sys.argv[1:] if argv is None else argv)}\n")  # fmt: skip
    su = startup(model, ["uint8", "float32"])
    print("| worker start-up step | CPU s |\n|---|---:|")
    print("\n".join(f"| {k} | {v:.2f} |" for k, v in su.items()))
    kinds = [("uint8", "lossless"), ("float32", "lossless")]
    kinds += [("float32", enc)] if enc != "lossless" else []
    for dtype, e in kinds:
        store = work / f"store-{dtype}-{a.stamps}-{e}"
        night = bd.make_night(store, a.stamps, dtype, workdir=work, float_encoding=e)
        st = stages(night, model, a.stamps, a.repeats)
        model_us = st["model call (1 TensorFlow thread)"][1]
        print(f"\n{dtype} stamps ({e}): CPU us a stamp, and as a share of the model call\n")
        print(
            "| stage | before | now | before, % of model | now, % of model |\n|---|---:|---:|---:|---:|"
        )
        for k, (b, n) in st.items():
            print(
                f"| {k} | {b:.1f} | {n:.1f} | {100 * b / model_us:.1f}% | {100 * n / model_us:.1f}% |"
            )
    print(
        "\n`s2v score` (float32 night): CPU seconds by process\n\n| process | CPU s |\n|---|---:|"
    )
    store = work / f"store-float32-{a.stamps}-{enc}"
    for name, c in tree_cpu(store, work / "scores"):
        print(f"| {name} | {c:.1f} |")
    print(f"\n# {bd.load_line()} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
