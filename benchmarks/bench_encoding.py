"""Compact float stamps: bytes, speed and fidelity of each candidate encoding (issue 13, part 3).

Simulated FITS stamps as ingest stores them (float32, masked pixels filled), ``--stamps`` of them
(40,000 by default), each a distinct simulation. For each candidate:

- bytes a stamp: inner chunks of 256 stamps compressed on their own, as in the store's shards;
- encode (what ingest adds: rounding or quantising, then compressing) and decode (what every
  reader pays: decompressing, then converting to float32) in CPU microseconds a stamp on one
  thread (``time.process_time``, meaningful on a busy machine), and as stamps/s a core;
- fidelity with the shipped model: every stamp scored from the decoded pixels against its score
  from the exact pixels; the largest and the 99.9th-percentile ``|score difference|``, and the
  stamps whose candidate flag flips at the model card's threshold; stamps that score NaN.

Candidates: lossless zstd (today's store), lossless Blosc-zstd with byte shuffle, ``bitround-K``
(keep K mantissa bits, :func:`s2v_batch.core.encoding.round_mantissa`; Blosc zstd + byte shuffle, the
store's codec, and for one K also plain zstd, Blosc lz4 and bit shuffle), float16 (values beyond
65,504 overflow to Inf), and fpack-like quantisation: int32 codes of ``x / (sigma / q)`` with
``sigma`` each stamp's and channel's noise (the median absolute difference of neighbouring pixels,
as fpack estimates it), a reader then needing the per-stamp scales: a contract change.

    python benchmarks/bench_encoding.py                 # 40,000 stamps: ~1 h on a quiet 2-core VM
    python benchmarks/bench_encoding.py --quick         # 2,048 stamps, a few candidates
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchdata as bd  # noqa: E402

CHUNK = 256


def fpack_encode(x: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """int32 codes and per-stamp, per-channel steps (``sigma / q``), fpack-style (no dither)."""
    d = np.abs(np.diff(x, axis=2)).reshape(len(x), -1, x.shape[3])
    sigma = np.median(d, axis=1) / (0.6745 * np.sqrt(2))  # MAD of neighbour differences
    step = np.maximum(sigma / q, 1e-12).astype(np.float32)
    codes = np.rint(x / step[:, None, None, :])
    return np.clip(codes, -(2**31), 2**31 - 1).astype(np.int32), step


def fpack_decode(codes: np.ndarray, step: np.ndarray) -> np.ndarray:
    return codes.astype(np.float32) * step[:, None, None, :]


def candidates(
    keep: list[int], one_k: int, quick: bool
) -> list[tuple[str, Callable, Callable, object]]:
    """(name, transform pixels -> stored array(s), inverse -> float32, numcodecs codec)."""
    import numcodecs

    from s2v_batch.core.encoding import round_mantissa

    zstd = numcodecs.Zstd(level=1)
    bz = numcodecs.Blosc("zstd", 1, numcodecs.Blosc.SHUFFLE)
    ident = lambda x: x  # noqa: E731
    out = [("lossless, zstd (today)", ident, ident, zstd)]
    if not quick:
        out.append(("lossless, Blosc zstd + shuffle", ident, ident, bz))
    for k in keep:
        rnd = lambda x, k=k: round_mantissa(x, k)  # noqa: E731
        out.append((f"bitround-{k}, Blosc zstd + shuffle (store)", rnd, ident, bz))
        if k == one_k and not quick:
            out.append((f"bitround-{k}, zstd", rnd, ident, zstd))
            out.append((f"bitround-{k}, Blosc lz4 + shuffle", rnd, ident,
                        numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE)))  # fmt: skip
            out.append((f"bitround-{k}, Blosc zstd + bitshuffle", rnd, ident,
                        numcodecs.Blosc("zstd", 1, numcodecs.Blosc.BITSHUFFLE)))  # fmt: skip
    with np.errstate(over="ignore"):
        out.append(
            ("float16, zstd", lambda x: x.astype(np.float16), lambda y: y.astype(np.float32), zstd)
        )
    for q in (4.0,) if quick else (4.0, 16.0):
        out.append((
            f"fpack-like q={q:g} (int32 + scales; contract change), Blosc zstd + shuffle",
            lambda x, q=q: fpack_encode(x, q),
            lambda cs: fpack_decode(*cs),
            bz,
        ))  # fmt: skip
    return out


def measure(x: np.ndarray, fwd, inv, codec) -> tuple[np.ndarray, int, float, float]:
    """Decoded pixels, compressed bytes, encode and decode CPU seconds (one thread)."""
    t = time.process_time()
    stored = fwd(x)
    arrays = stored if isinstance(stored, tuple) else (stored,)
    main = arrays[0]
    blobs = [
        codec.encode(np.ascontiguousarray(main[i : i + CHUNK])) for i in range(0, len(main), CHUNK)
    ]
    extra = sum(a.nbytes for a in arrays[1:])  # per-stamp scales, stored beside
    t_enc = time.process_time() - t
    nbytes = sum(len(b) for b in blobs) + extra
    t = time.process_time()
    dec = np.empty_like(main)  # each chunk decompressed straight into place, as the reader does
    for i, blob in enumerate(blobs):
        codec.decode(blob, out=dec[i * CHUNK : (i + 1) * CHUNK].reshape(-1).view(np.uint8))
    restored = inv((dec, *arrays[1:]) if len(arrays) > 1 else dec)
    t_dec = time.process_time() - t
    return np.asarray(restored, np.float32), nbytes, t_enc, t_dec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--stamps", type=int, default=40000)
    p.add_argument("--keep", type=int, nargs="+", default=[4, 5, 6, 7, 8, 10, 12], help="K values")
    p.add_argument("--codecs-at", type=int, default=8, help="K with every compressor compared")
    p.add_argument("--workdir", default=".bench/encoding")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.stamps, a.keep, a.codecs_at = 2048, [6, 9], 9
    from s2v_batch.model import Predictor

    work = Path(a.workdir)
    t = time.perf_counter()
    x, _ = bd.stamp_pool(work, "float32", a.stamps)
    print(
        f"# compact float stamps: {len(x):,} simulated FITS stamps, {bd.now()}, {bd.load_line()} "
        f"(stamps ready in {time.perf_counter() - t:.0f} s)\n"
        f"# command: python benchmarks/bench_encoding.py {' '.join(sys.argv[1:] if argv is None else argv)}\n",
        flush=True,
    )
    pred = Predictor(bd.shipped_model(), batch_size=512)
    thr = np.float32(pred.threshold)
    ref = pred.predict(x)
    ref_flag = ref >= thr
    raw = x.nbytes / len(x)
    rows, fidelity = [], {}
    for name, fwd, inv, codec in candidates(a.keep, a.codecs_at, a.quick):
        y, nbytes, t_enc, t_dec = measure(x, fwd, inv, codec)
        key = name.split(",")[0]
        if key not in fidelity:  # the scores depend on the values, not on the compressor
            s = pred.predict(y)
            d = np.abs(s.astype(np.float64) - ref)
            fin = np.isfinite(s)
            fidelity[key] = (
                float(np.nanmax(d)) if fin.any() else float("nan"),
                float(np.nanpercentile(d, 99.9)) if fin.any() else float("nan"),
                int(((s >= thr) != ref_flag).sum()),
                int((~fin).sum()),
            )
        dmax, d999, flips, nan = fidelity[key]
        n = len(x)
        rows.append(
            f"| {name} | {nbytes / n:,.0f} | {raw * n / nbytes:.2f} | {1e6 * t_enc / n:.0f} | "
            f"{n / t_enc:,.0f} | {1e6 * t_dec / n:.0f} | {n / t_dec:,.0f} | {dmax:.2g} | "
            f"{d999:.2g} | {flips} | {nan} |"
        )
        print(rows[-1], flush=True)
    print(
        f"\nthreshold {float(thr):.4f} (the shipped model's card); {len(x):,} stamps; raw "
        f"{raw:,.0f} bytes a stamp\n\n"
        "| encoding | bytes a stamp | ratio to raw | encode us a stamp (CPU) | encode stamps/s a core "
        "| decode us a stamp (CPU) | decode stamps/s a core | max abs score diff "
        "| 99.9th pct abs diff | flag flips | NaN scores |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    print("\n".join(rows))
    print(f"\n# {bd.load_line()} at the end")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    sys.exit(main())
