"""The fused normalisation against the model as saved, stamp by stamp, on many simulated stamps.

Each block of stamps is simulated (seeded, :func:`s2v_batch.sim.simulator.simulate_stamps`) and
stored both ways ingest stores it (``benchdata.simulated_stamps``: float32 as from FITS, masked
pixels filled with the channel's median; uint8 as the survey's GIFs hold it), so the two dtypes
show the same scenes. Every stamp is scored twice:

- ``saved``: the model as saved, ``keras.saving.load_model(..., compile=False)`` and its own call
  ``model(x, training=False)`` in batches of 512 (eager: the layers' arithmetic as written);
- ``predictor``: :class:`s2v_batch.model.Predictor` as the scoring workers build it
  (``Predictor(path, batch_size=512)``: BatchNorm folded, ``StampNormalization`` as one XLA
  kernel).

Only the current block's stamps are held, with the worst stamps so far. The process runs as a
scoring worker does: one intra-op thread (unless ``TF_NUM_INTRAOP_THREADS`` says otherwise).
The summary gives, per dtype, the per-stamp ``|saved - predictor|``: maximum, 99.99th and 99.9th
percentiles, mean; the worst stamps (index in the stream, both scores); how many candidate flags
(``score >=`` the card's threshold) differ, and how many stamps lie within the largest
difference of the threshold. ``--explain`` then takes the worst stamps apart: the saved layer's
output against the fused kernel's, and the sigma-clip masks of the statistics
(:meth:`StampNormalization.statistics` retraced with its intermediates, eagerly as the saved
model runs it and under XLA as the fused kernel does), so a pixel that one includes and the
other excludes is named with its margin.

    python benchmarks/fused_norm_bound.py                       # 100,000 stamps a dtype, seed 7
    python benchmarks/fused_norm_bound.py --n 8192 --seed 1 --explain 3 --save /tmp/worst.npz
    python benchmarks/fused_norm_bound.py --explain-only /tmp/worst.npz --explain 5
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # s2v_batch from this checkout
# A scoring worker's thread settings (s2v_batch.pipeline.cluster.cpu_worker_env), read when
# TensorFlow starts: one intra-op thread. Set them in the environment to run otherwise.
for _k, _v in {
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}.items():
    os.environ.setdefault(_k, _v)

DTYPES = ("float32", "uint8")
KEEP = 32  # worst stamps kept (pixels included) per dtype


def both_dtypes(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Simulated float32 stamps with NaN masks as ingest stores them from FITS and from GIF."""
    from s2v_batch.formats.decode import combine_channels
    from s2v_batch.sim.encoders import scale_u8

    u8 = np.stack(
        [scale_u8(pixels[..., c], ch) for c, ch in enumerate(("srch", "temp", "diff"))], axis=-1
    )
    f32 = np.stack([combine_channels([s[..., c] for c in range(3)])[0] for s in pixels])
    return {"float32": f32, "uint8": u8}


def saved_scores(model, x: np.ndarray, batch: int = 512) -> np.ndarray:
    """The model's own call, ``model(x, training=False)``, in batches of ``batch``."""
    import keras

    out = [
        keras.ops.convert_to_numpy(model(x[i : i + batch], training=False)).reshape(-1)
        for i in range(0, len(x), batch)
    ]
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


class Worst:
    """The ``KEEP`` stamps with the largest difference seen so far, pixels included."""

    def __init__(self, shape: tuple[int, ...], dtype: str) -> None:
        self.diff = np.zeros(0, np.float64)
        self.index = np.zeros(0, np.int64)
        self.pixels = np.zeros((0, *shape), dtype)

    def add(self, diff: np.ndarray, start: int, x: np.ndarray) -> None:
        top = np.argsort(diff, kind="stable")[::-1][:KEEP]
        d = np.concatenate([self.diff, diff[top]])
        i = np.concatenate([self.index, start + top])
        p = np.concatenate([self.pixels, x[top]])
        keep = np.argsort(-d, kind="stable")[:KEEP]
        self.diff, self.index, self.pixels = d[keep], i[keep], p[keep]


def run(args: argparse.Namespace) -> dict:
    import s2v_batch.model.layers  # noqa: F401  (registers the layers the file names)
    from s2v_batch.model import Predictor, default_model_path, load_card
    from s2v_batch.model.backend import keras
    from s2v_batch.sim.simulator import simulate_stamps

    path = Path(args.model) if args.model else Path(default_model_path())
    model = keras.saving.load_model(path, compile=False)
    pred = Predictor(path, batch_size=512)
    threshold = float(load_card(path).threshold)
    rng = np.random.default_rng(args.seed)
    n = args.n
    scores = {d: {k: np.empty(n, np.float32) for k in ("saved", "pred")} for d in DTYPES}
    labels = np.empty(n, np.int8)
    worst: dict[str, Worst] = {}
    t = {"simulate": [0.0, 0.0], "saved": [0.0, 0.0], "predictor": [0.0, 0.0]}

    def clock(key: str, w0: float, c0: float) -> tuple[float, float]:
        w1, c1 = time.perf_counter(), time.process_time()
        t[key][0] += w1 - w0
        t[key][1] += c1 - c0
        return w1, c1

    for start in range(0, n, args.block):
        k = min(args.block, n - start)
        w0, c0 = time.perf_counter(), time.process_time()
        b = simulate_stamps(k, rng)
        xs = both_dtypes(b.pixels)
        labels[start : start + k] = b.labels
        del b
        w0, c0 = clock("simulate", w0, c0)
        for d in DTYPES:
            x = xs[d]
            s = scores[d]["saved"][start : start + k] = saved_scores(model, x)
            w0, c0 = clock("saved", w0, c0)
            p = scores[d]["pred"][start : start + k] = pred.predict(x)
            w0, c0 = clock("predictor", w0, c0)
            diff = np.abs(s.astype(np.float64) - p)
            diff[np.isnan(s) & np.isnan(p)] = 0.0
            worst.setdefault(d, Worst(x.shape[1:], d)).add(diff, start, x)
        del xs
        if args.progress:
            print(
                f"  {start + k:,} stamps: simulate {t['simulate'][0]:.0f} s, saved "
                f"{t['saved'][0]:.0f} s, predictor {t['predictor'][0]:.0f} s (wall)",
                flush=True,
            )
    return {
        "scores": scores,
        "labels": labels,
        "worst": worst,
        "threshold": threshold,
        "times": t,
        "model": path,
    }


def summarise(res: dict, args: argparse.Namespace) -> None:
    thr = res["threshold"]
    print(
        f"model {res['model'].name}, threshold {thr:.6f}; {args.n:,} simulated stamps a dtype, "
        f"seed {args.seed}, blocks of {args.block}"
    )
    for d in DTYPES:
        s = res["scores"][d]["saved"].astype(np.float64)
        p = res["scores"][d]["pred"].astype(np.float64)
        nan = np.isnan(s) | np.isnan(p)
        nan_mismatch = int((np.isnan(s) != np.isnan(p)).sum())
        diff = np.abs(s - p)[~nan]
        flips = int(((s >= thr) != (p >= thr))[~nan].sum())
        near = int((np.abs(s - thr) <= diff.max())[~nan].sum()) if diff.size else 0
        print(
            f"\n{d}: {diff.size:,} finite scores (NaN in both: {int(nan.sum()) - nan_mismatch}, "
            f"NaN in one only: {nan_mismatch})"
        )
        print(
            f"  |saved - predictor|: max {diff.max():.3g}, 99.99th pct "
            f"{np.percentile(diff, 99.99):.3g}, 99.9th pct {np.percentile(diff, 99.9):.3g}, "
            f"mean {diff.mean():.3g}; > 1e-4: {int((diff > 1e-4).sum())}, "
            f"> 1e-5: {int((diff > 1e-5).sum())}"
        )
        print(
            f"  candidate flags differing: {flips} (candidates: saved {int((s >= thr).sum())}, "
            f"predictor {int((p >= thr).sum())}); stamps within the max difference of the "
            f"threshold: {near}"
        )
        w = res["worst"][d]
        print("  worst stamps: index, saved score, predictor score, |diff|, label")
        for j in range(min(args.top, len(w.index))):
            i = int(w.index[j])
            print(
                f"    {i:>8d}  {s[i]:.7f}  {p[i]:.7f}  {abs(s[i] - p[i]):.3g}  "
                f"{int(res['labels'][i])}"
            )
    t = res["times"]
    print(
        "\ntimes (wall / CPU s): " + ", ".join(f"{k} {v[0]:.0f} / {v[1]:.0f}" for k, v in t.items())
    )


# --------------------------------------------------------------------------- explanation


def clip_trace(layer, x) -> dict:
    """:meth:`StampNormalization.statistics` line for line, with its intermediates.

    Returns ``m``, ``s`` (per round, in units of ``max|x|``), ``w`` (the clip masks each round
    produces), ``sub`` (the subsample in those units), and the final ``loc``/``scale`` (the
    statistics' own outputs, to check that the trace reproduces them bit for bit).
    """
    from s2v_batch.model.backend import keras

    ops = keras.ops
    k = layer.stats_stride
    sub = x[:, ::k, ::k, :] if k > 1 else x
    axes = (1, 2)
    unit = ops.max(ops.abs(sub), axis=axes, keepdims=True) + 1e-30
    sub = sub / unit
    m = ops.mean(sub, axis=axes, keepdims=True)
    std_all = ops.sqrt(ops.mean(ops.square(sub - m), axis=axes, keepdims=True))
    h, w_ = sub.shape[1], sub.shape[2]
    b = max(1, min(h, w_) // 8)
    ring = np.ones((1, h, w_, 1), np.float32)
    ring[:, b : h - b, b : w_ - b, :] = 0.0
    w = ops.convert_to_tensor(ring)
    ms, ss, ws = [], [], []
    for i in range(layer.iterations + 1):
        nw = ops.maximum(ops.sum(w, axis=axes, keepdims=True), 1.0)
        m = ops.sum(w * sub, axis=axes, keepdims=True) / nw
        s = ops.sqrt(ops.sum(w * ops.square(sub - m), axis=axes, keepdims=True) / nw)
        ms.append(m)
        ss.append(s)
        if i < layer.iterations:
            w = ops.cast(ops.abs(sub - m) <= layer.clip_sigma * s, "float32")
            ws.append(w)
    scale = ops.maximum(s, 1e-3 * std_all) + 1e-7 + 1e-6 * ops.abs(m)
    return {"m": ms, "s": ss, "w": ws, "sub": sub, "loc": m * unit, "scale": scale * unit}


def _elementwise(x: np.ndarray, trace: dict, limit: float) -> np.ndarray:
    """The layer's step after its statistics, in numpy float32, for the first stamp of ``x``."""
    one = np.float32(1)
    z = np.clip((x - trace["loc"][:1]) * (one / trace["scale"][:1]), -1e6, 1e6)
    return (z / (one + np.abs(z) * (one / np.float32(limit))))[0]


def explain(pixels: np.ndarray, index: np.ndarray, dtype: str, model_path: Path, k: int) -> None:
    """Take the worst stamps apart: scores again, normalisation outputs, clip masks."""
    import tensorflow as tf

    from s2v_batch.model import Predictor, fuse_normalization
    from s2v_batch.model.backend import keras

    model = keras.saving.load_model(model_path, compile=False)
    saved = model.get_layer("normalize")
    fused = fuse_normalization(model).get_layer("normalize")
    pred = Predictor(model_path, batch_size=512)
    pad = fused.MIN_BATCH  # the kernel's own padding of small batches

    def as_np(t):
        return keras.ops.convert_to_numpy(t)

    def traced(x, xla: bool) -> dict:
        if not xla:
            return {
                key: ([as_np(v) for v in val] if isinstance(val, list) else as_np(val))
                for key, val in clip_trace(saved, tf.convert_to_tensor(x)).items()
            }
        fn = tf.function(lambda t: clip_trace(saved, t), jit_compile=True, autograph=False)
        out = fn(tf.convert_to_tensor(x))
        return {
            key: ([as_np(v) for v in val] if isinstance(val, list) else as_np(val))
            for key, val in out.items()
        }

    stats_xla = tf.function(lambda t: saved.statistics(t), jit_compile=True, autograph=False)
    print(f"\n{dtype}: the {min(k, len(index))} worst stamps taken apart")
    for j in range(min(k, len(index))):
        x1 = pixels[j : j + 1]
        xp = np.concatenate([x1, np.zeros((pad - 1, *x1.shape[1:]), x1.dtype)])
        s_saved = float(as_np(model(x1, training=False)).ravel()[0])
        s_pred = float(pred.predict(x1)[0])
        y_saved = as_np(saved(x1))[0]
        y_fused = as_np(fused(x1))[0]
        dy = np.abs(y_saved.astype(np.float64) - y_fused)
        print(
            f"  stamp {int(index[j])}: saved {s_saved:.7f}, predictor {s_pred:.7f} "
            f"(|diff| {abs(s_saved - s_pred):.3g}); normalised pixels: max |diff| "
            f"{dy.max():.3g}, per channel {', '.join(f'{v:.2g}' for v in dy.max((0, 1)))}"
        )
        xf = xp.astype(np.float32)
        te, tx = traced(xf, False), traced(xf, True)
        m_e, sc_e = (as_np(v) for v in saved.statistics(tf.convert_to_tensor(xf)))
        m_x, sc_x = (as_np(v) for v in stats_xla(tf.convert_to_tensor(xf)))
        same = all(
            np.array_equal(a[:1], b[:1])
            for a, b in (
                (te["loc"], m_e),
                (te["scale"], sc_e),
                (tx["loc"], m_x),
                (tx["scale"], sc_x),
            )
        )
        # The kernel's output against the elementwise step run in numpy on each trace's
        # statistics: the trace under XLA explains the fused output, the eager one the saved.
        fit_e = np.abs(_elementwise(xf[:1], te, saved.limit) - y_saved).max()
        fit_x = np.abs(_elementwise(xf[:1], tx, saved.limit) - y_fused).max()
        print(
            f"    trace reproduces the layer's statistics bit for bit: {same}; outputs from "
            f"the traced statistics match the saved layer to {fit_e:.2g}, the kernel to "
            f"{fit_x:.2g}"
        )
        for c in range(x1.shape[-1]):
            loc = (float(m_e[0, 0, 0, c]), float(m_x[0, 0, 0, c]))
            sc = (float(sc_e[0, 0, 0, c]), float(sc_x[0, 0, 0, c]))
            line = (
                f"    channel {c}: location {loc[0]:.9g} / {loc[1]:.9g}, scale {sc[0]:.9g} / "
                f"{sc[1]:.9g} (eager / XLA; scale rel. diff {abs(sc[0] - sc[1]) / sc[0]:.2g})"
            )
            print(line)
            for it in range(len(te["w"])):
                we, wx = te["w"][it][0, ..., c], tx["w"][it][0, ..., c]
                me, mx = te["m"][it][0, 0, 0, c], tx["m"][it][0, 0, 0, c]
                se, sx = te["s"][it][0, 0, 0, c], tx["s"][it][0, 0, 0, c]
                flip = np.argwhere(we != wx)
                pre = (
                    f"      round {it + 1}: m {me:.9g} / {mx:.9g}, s {se:.9g} / {sx:.9g}; "
                    f"kept {int(we.sum())} / {int(wx.sum())}"
                )
                if not len(flip):
                    if me != mx or se != sx:
                        print(pre + ", the same pixels")
                    continue
                print(pre + f"; {len(flip)} pixel(s) kept by one only:")
                sub = te["sub"][0, ..., c]
                for r, q in flip[:6]:
                    v = float(sub[r, q])
                    raw = float(xf[0, 2 * r, 2 * q, c])
                    ae, ax = abs(np.float32(v) - me), abs(np.float32(v) - mx)
                    ke, kx = np.float32(3.0) * se, np.float32(3.0) * sx
                    print(
                        f"        pixel ({2 * r}, {2 * q}) = {raw:.9g}: |v - m| {ae:.9g} / "
                        f"{ax:.9g} against 3 s {ke:.9g} / {kx:.9g}; kept "
                        f"{bool(we[r, q])} / {bool(wx[r, q])}"
                    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="stamps a dtype (default 100,000)")
    ap.add_argument("--seed", type=int, default=7, help="simulator seed (default 7)")
    ap.add_argument("--block", type=int, default=2048, help="stamps simulated at a time")
    ap.add_argument("--model", help="artifact (.keras or .json); default the shipped model")
    ap.add_argument("--top", type=int, default=10, help="worst stamps listed a dtype")
    ap.add_argument("--explain", type=int, default=0, help="worst stamps taken apart a dtype")
    ap.add_argument("--save", help="write the worst stamps (pixels, indices) to this .npz")
    ap.add_argument("--explain-only", help="explain the stamps of a --save file; no scoring")
    ap.add_argument("--progress", action="store_true", help="a line per block")
    args = ap.parse_args(argv)
    if args.explain_only:
        from s2v_batch.model import default_model_path

        with np.load(args.explain_only) as z:
            path = Path(str(z["model"])) if "model" in z else Path(default_model_path())
            for d in DTYPES:
                explain(z[f"{d}_pixels"], z[f"{d}_index"], d, path, args.explain or 3)
        return
    if args.n < 1 or args.block < 1:
        ap.error("--n and --block must be >= 1")
    res = run(args)
    summarise(res, args)
    if args.save:
        arrays = {"model": str(res["model"]), "seed": args.seed, "labels": res["labels"]}
        for d in DTYPES:
            w = res["worst"][d]
            arrays |= {f"{d}_pixels": w.pixels, f"{d}_index": w.index, f"{d}_diff": w.diff}
            arrays |= {f"{d}_{k}": v for k, v in res["scores"][d].items()}  # all stamps
        np.savez_compressed(args.save, **arrays)
        print(f"worst stamps written to {args.save}")
    if args.explain:
        for d in DTYPES:
            w = res["worst"][d]
            explain(w.pixels, w.index, d, res["model"], args.explain)


if __name__ == "__main__":
    main()
