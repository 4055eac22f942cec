"""Inference throughput of each architecture on this machine, against its matmul rate.

For every architecture and batch size: stamps/s through the compiled call the scorer uses
(:class:`s2v_batch.model.Predictor`: fixed-shape batches into a ``tf.function`` or ``jax.jit``)
and through ``model.predict``; the model's FLOPs per stamp counted from the layer shapes; the
machine's float32 matrix-multiply rate (numpy/OpenBLAS and the backend's own matmul, large square
matrices); and the fraction of the best matmul rate the CNN reaches. Prints a Markdown table,
and writes it with ``--out``.

    python benchmarks/bench_inference.py                      # all archs, default batches
    python benchmarks/bench_inference.py --arch space2vec --batch 256 512 --out bench.md
    KERAS_BACKEND=jax python benchmarks/bench_inference.py    # the JAX backend

Timings are the best of ``--repeats`` runs of at least ``--stamps`` stamps each (the best run is
the one least disturbed by other processes on a shared machine); the median is shown too. The
matmul rate is sampled before every CNN measurement and its best sample is the reference.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Quiet TensorFlow's start-up chatter; must precede its import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "--onednn-off" in sys.argv:  # for comparison: TensorFlow's default on CPUs without AVX-512
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"


def _set_threads(threads: int) -> None:
    """Thread pools of the backend: before the first TensorFlow op, or they are fixed."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def _time(fn: Callable[[], object], n_stamps: int, repeats: int) -> tuple[float, float]:
    """(best, median) stamps/s of ``fn`` which processes ``n_stamps`` per call."""
    fn()  # warm-up: traces, allocations
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        rates.append(n_stamps / (time.perf_counter() - t))
    return max(rates), statistics.median(rates)


class MatmulSampler:
    """GFLOP/s of an ``n x n`` float32 matrix product, numpy (BLAS) and the Keras backend.

    Sampled again before every CNN measurement: on a shared machine the load changes from minute
    to minute, and the best sample over the run is the rate of the quiet machine, the fair
    reference for CNN timings that are themselves best-of runs.
    """

    def __init__(self, n: int, repeats: int) -> None:
        import keras
        import numpy as np

        self.n, self.repeats = n, repeats
        self.a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        self.samples: dict[str, list[float]] = {"numpy": []}
        self.fns: dict[str, Callable[[], object]] = {"numpy": lambda: self.a @ self.a}
        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            at = tf.constant(self.a)
            mm = tf.function(lambda x: tf.matmul(x, x))
            self.fns["tensorflow"] = lambda: mm(at).numpy()
        elif backend == "jax":
            import jax
            import jax.numpy as jnp

            aj = jnp.asarray(self.a)
            mmj = jax.jit(lambda x: x @ x)
            self.fns["jax"] = lambda: mmj(aj).block_until_ready()
        for k in self.fns:
            self.samples[k] = []

    def sample(self) -> None:
        flop = 2.0 * self.n**3
        for k, fn in self.fns.items():
            best, _ = _time(fn, 1, self.repeats)
            self.samples[k].append(best * flop / 1e9)

    def best(self) -> dict[str, float]:
        return {k: max(v) for k, v in self.samples.items() if v}

    def median(self) -> dict[str, float]:
        return {k: statistics.median(v) for k, v in self.samples.items() if v}


def bench(
    archs: list[str],
    batches: list[int],
    stamps: int,
    repeats: int,
    predict: bool,
    mm: MatmulSampler,
) -> list[dict[str, object]]:
    """One row per (architecture, method, batch size)."""
    import keras
    import numpy as np

    from s2v_batch.model import Predictor, build_model, count_flops

    rows: list[dict[str, object]] = []
    rng = np.random.default_rng(0)
    for arch in archs:
        keras.utils.set_random_seed(0)
        model = build_model(arch)
        flops = count_flops(model)
        for bs in batches:
            n = max(stamps, bs) // bs * bs  # whole batches: no padding in the timing
            x = rng.normal(100.0, 10.0, size=(n, 51, 51, 3)).astype(np.float32)
            pred = Predictor.from_model(model, batch_size=bs)
            mm.sample()
            best, med = _time(lambda p=pred, x=x: p.predict(x), n, repeats)
            rows.append(
                dict(arch=arch, method="compiled", batch=bs, best=best, median=med, flops=flops)
            )
            print(
                f"  {arch:10s} compiled      batch {bs:5d}: {best:8.0f} stamps/s", file=sys.stderr
            )
            if predict:
                best, med = _time(
                    lambda m=model, x=x, bs=bs: m.predict(x, batch_size=bs, verbose=0), n, repeats
                )
                rows.append(
                    dict(
                        arch=arch,
                        method="model.predict",
                        batch=bs,
                        best=best,
                        median=med,
                        flops=flops,
                    )
                )
                print(
                    f"  {arch:10s} model.predict batch {bs:5d}: {best:8.0f} stamps/s",
                    file=sys.stderr,
                )
    return rows


def table(rows: list[dict[str, object]], mm: MatmulSampler, threads: int) -> str:
    """The Markdown report."""
    import keras

    best_mm = mm.best()
    limit_name, limit = max(best_mm.items(), key=lambda kv: kv[1])
    lines = [
        f"Inference on {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), "
        f"{threads} thread(s); Keras {keras.__version__}, backend {keras.backend.backend()}, "
        f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}.",
        "",
        f"float32 {mm.n}x{mm.n} matrix product, GFLOP/s, best (median) of "
        f"{len(mm.samples['numpy'])} samples taken between the CNN runs: "
        + ", ".join(f"{k} {v:.0f} ({mm.median()[k]:.0f})" for k, v in best_mm.items())
        + f"; the limit used below is the best, {limit_name} {limit:.0f} GFLOP/s.",
        "",
        "| architecture | MFLOP/stamp | method | batch | stamps/s (best) | stamps/s (median) "
        "| GFLOP/s | % of matmul |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        gflops = float(r["best"]) * float(r["flops"]) / 1e9
        lines.append(
            f"| {r['arch']} | {float(r['flops']) / 1e6:.1f} | {r['method']} | {r['batch']} "
            f"| {float(r['best']):,.0f} | {float(r['median']):,.0f} | {gflops:.0f} "
            f"| {100 * gflops / limit:.0f}% |"
        )
    best_rows = {}
    for r in rows:
        if r["method"] == "compiled" and float(r["best"]) > float(
            best_rows.get(r["arch"], {"best": 0})["best"]
        ):
            best_rows[r["arch"]] = r
    lines.append("")
    for arch, r in best_rows.items():
        gflops = float(r["best"]) * float(r["flops"]) / 1e9
        lines.append(
            f"- {arch}: best compiled batch {r['batch']}, {float(r['best']):,.0f} stamps/s, "
            f"{100 * gflops / limit:.0f}% of the matmul rate "
            f"(compute limit {limit * 1e9 / float(r['flops']):,.0f} stamps/s)."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (and optionally write) the Markdown table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", nargs="+", default=None, help="architectures (default: all)")
    p.add_argument("--batch", nargs="+", type=int, default=[64, 128, 256, 512, 1024])
    p.add_argument("--stamps", type=int, default=2048, help="stamps per timed run (default 2048)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per setting (default 3)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--matmul-size", type=int, default=4096)
    p.add_argument("--no-predict", action="store_true", help="skip the model.predict rows")
    p.add_argument(
        "--onednn-off",
        action="store_true",
        help="TF_ENABLE_ONEDNN_OPTS=0 (s2v_batch turns oneDNN on unless the variable is set)",
    )
    p.add_argument("--out", type=Path, help="also write the Markdown table here")
    a = p.parse_args(argv)

    # s2v_batch.model sets TF_ENABLE_ONEDNN_OPTS before TensorFlow is first imported.
    from s2v_batch.model import ARCHITECTURES

    _set_threads(a.threads)

    archs = a.arch or list(ARCHITECTURES)
    unknown = sorted(set(archs) - set(ARCHITECTURES))
    if unknown:
        p.error(f"unknown architecture(s) {unknown}; choose from {sorted(ARCHITECTURES)}")
    mm = MatmulSampler(a.matmul_size, 2)
    rows = bench(archs, sorted(a.batch), a.stamps, a.repeats, not a.no_predict, mm)
    text = table(rows, mm, a.threads)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
