"""Issue 27: what bfloat16 does to the shipped model's scores and candidates, and what it costs.

``effect`` (in one process): fresh labelled simulated stamps of both stored dtypes (uint8 as
ingested from GIF, float32 from FITS; ``benchdata.simulated_stamps``, a seed no model was trained
on) scored by :class:`s2v_batch.model.Predictor` at float32, at bfloat16, and at bfloat16 with
the first convolution(s) and the hidden dense layer kept in float32; per variant the recall, FPR
and MDR at the card's threshold for that precision, the MDR at FPR 1%, ROC AUC, |score - float32|
(max, 99.9th and 99th percentiles), the candidate flags that flip against float32, and CPU ms a
stamp (process CPU time, batches of 512, in this same run).

``e2e``: ``s2v score --precision bfloat16`` against the float32 plain loop and the bfloat16
plain loop (``plain_loop.py ... bfloat16``), and ``s2v score`` at float32 for reference, each its
own process on the same stored night (``benchdata.make_night``), timed start to exit, whole
process tree's CPU and peak PSS sampled (``bench_score.Watch``).

    python benchmarks/bench_precision.py effect --n 20000
    python benchmarks/bench_precision.py e2e --n 200000
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI python benchmarks/bench_precision.py effect --n 4096
        # the same CPU with its bfloat16 instructions hidden from oneDNN: a CPU without them
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import benchdata as bd  # noqa: E402

#: bfloat16 variants: extra layers kept float32 (besides normalize, score, guard).
VARIANTS = {
    "bfloat16": frozenset(),
    "bfloat16, b1_conv + dense float32": frozenset({"b1_conv", "dense"}),
    "bfloat16, b1_conv + b1_down + dense float32": frozenset({"b1_conv", "b1_down", "dense"}),
}


def _cpu_ms(pred, x: np.ndarray) -> tuple[np.ndarray, float]:
    pred.predict(x[:1024])  # trace and oneDNN set-up outside the timing
    t0 = time.process_time()
    s = pred.predict(x)
    return s, 1e3 * (time.process_time() - t0) / len(x)


def effect(n: int, seed: int, workdir: Path) -> dict:
    from s2v_batch.metrics import classification as m
    from s2v_batch.model import Predictor, load_artifact
    from s2v_batch.model.architectures import FLOAT32_LAYERS
    from s2v_batch.model.precision import with_precision

    model, card = load_artifact(bd.shipped_model())
    out: dict = {"n": n, "seed": seed, "model": card.stem, "thresholds": {
        "float32": card.threshold, **card.thresholds}}  # fmt: skip
    for dtype in ("uint8", "float32"):
        x, labels = bd.stamp_pool(workdir, dtype, n, seed)
        ref, ref_ms = _cpu_ms(Predictor.from_model(model, card), x)
        t32 = card.threshold_for("float32")
        rows = {"float32": _row(m, ref, labels, t32, ref, t32, ref_ms, ref_ms)}
        for name, keep in VARIANTS.items():
            # The policy is set before the Predictor's rewrites, as Predictor(precision=...)
            # does after them; the folded and fused clones keep each layer's policy.
            clone = with_precision(model, "bfloat16", FLOAT32_LAYERS | keep)
            s, ms = _cpu_ms(Predictor.from_model(clone, card), x)
            t = card.threshold_for("bfloat16")
            rows[name] = _row(m, s, labels, t, ref, t32, ms, ref_ms)
        out[dtype] = rows
    return out


def _row(m, s, labels, t, ref, t32, ms, ref_ms) -> dict:
    c = m.confusion(s, labels, t)
    d = np.abs(s - ref)
    return {
        "threshold": t,
        "recall": c.recall,
        "fpr": c.fpr,
        "mdr": c.mdr,
        "mdr_at_fpr_1pct": m.standard_operating_points(s, labels)["mdr_at_fpr"]["0.01"],
        "roc_auc": m.roc_auc(s, labels),
        "max_diff": float(d.max()),
        "p999_diff": float(np.quantile(d, 0.999)),
        "p99_diff": float(np.quantile(d, 0.99)),
        "flips": int(((s >= t) != (ref >= t32)).sum()),
        "flips_same_threshold": int(((s >= t32) != (ref >= t32)).sum()),
        "cpu_ms": ms,
        "speedup": ref_ms / ms,
    }


def e2e(n: int, workdir: Path, dtypes: list[str]) -> list[str]:
    import bench_score as bs

    from s2v_batch.core.config import IngestConfig

    model = bd.shipped_model()
    enc = IngestConfig().float_encoding
    rows = [
        "| dtype | stamps | how | wall s | stamps/s end to end | CPU ms a stamp (tree) "
        "| peak PSS GiB (tree) | end to end / float32 plain loop | / bf16 plain loop |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for dtype in dtypes:
        store = workdir / f"store-{dtype}-{n}-{enc if dtype == 'float32' else 'lossless'}"
        night = bd.make_night(store, n, dtype, workdir=workdir, float_encoding=enc)
        out = workdir / "out"
        res: dict[str, dict] = {}
        for label, kind, precision in (
            ("plain loop, float32", "plain", "float32"),
            ("plain loop, bfloat16", "plain", "bfloat16"),
            ("s2v score --precision bfloat16", "s2v", "bfloat16"),
            ("s2v score (float32)", "s2v", "float32"),
        ):
            if kind == "plain":
                res[label] = _plain(bs, night, model, out, precision)
            else:
                res[label] = _s2v(bs, store, out, n, precision)
            print(f"  {dtype} {label}: {res[label]['wall']:.1f} s ({bd.load_line()})", flush=True)
        p32 = n / res["plain loop, float32"]["wall"]
        p16 = n / res["plain loop, bfloat16"]["wall"]
        for label, r in res.items():
            rate = r["n"] / r["wall"]
            rows.append(
                f"| {dtype} | {n:,} | {label} | {r['wall']:.1f} | {rate:,.0f} | "
                f"{1e3 * r['cpu'] / r['n']:.2f} | {r['pss'] / 2**30:.2f} | {rate / p32:.2f}x | "
                f"{rate / p16:.2f}x |"
            )
        print("\n".join(rows[-4:]), flush=True)
    return rows


def _plain(bs, night: Path, model: Path, out: Path, precision: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(HERE / "plain_loop.py"), str(night), str(model),
           str(out / "plain.parquet"), precision]  # fmt: skip
    r = bs.Watch(cmd, bs.ENV).run()
    own = json.loads(r["stdout"].strip().splitlines()[-1])
    (out / "plain.parquet").unlink(missing_ok=True)
    return {**r, "n": own["n"]}


def _s2v(bs, store: Path, out: Path, n: int, precision: str) -> dict:
    dest = out / "scores"
    shutil.rmtree(dest, ignore_errors=True)
    cmd = [*bs.s2v_command(), "score", str(store), "--out", str(dest), "--no-progress",
           "--precision", precision]  # fmt: skip
    r = bs.Watch(cmd, bs.ENV).run()
    r["n"] = n
    r["summary"] = next((ln for ln in r["stdout"].splitlines() if ln.startswith("score:")), "")
    print(f"    {r['summary']}", flush=True)
    shutil.rmtree(dest, ignore_errors=True)
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("what", choices=["effect", "e2e"])
    p.add_argument("--n", type=int, default=20000, help="stamps a dtype")
    p.add_argument("--seed", type=int, default=27, help="simulator seed (effect)")
    p.add_argument("--dtypes", nargs="+", default=["uint8", "float32"])
    p.add_argument("--workdir", default=".bench/precision")
    a = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "all")
    print(
        f"# bench_precision {a.what}: {platform.node()}, {os.cpu_count()} cores, {bd.now()}, "
        f"ONEDNN_MAX_CPU_ISA={isa}\n# command: python benchmarks/bench_precision.py "
        f"{' '.join(sys.argv[1:] if argv is None else argv)}\n# {bd.load_line()} at the start",
        flush=True,
    )
    if a.what == "effect":
        print(json.dumps(effect(a.n, a.seed, work), indent=1))
    else:
        print("\n".join(e2e(a.n, work, a.dtypes)))
    print(f"# {bd.load_line()} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
