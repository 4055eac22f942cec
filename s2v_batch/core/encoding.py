"""How a night's stamps are encoded in the store: lossless, or float mantissas rounded (compact).

Float (FITS) stamps are noise-dominated: their low mantissa bits are noise and barely compress
(about 29 kB of a 31 kB stamp with zstd). ``bitround-K`` keeps ``K`` of the 23 mantissa bits of
each finite float32 pixel, rounding to nearest (ties to even, as numcodecs' ``BitRound``), before
the pixels are stored with Blosc (zstd, byte shuffle): the relative error of a pixel is at most
``2**-(K+1)``, and the zeroed bits compress away. The rounding is done here, before writing, and
the codecs are standard Zarr v3 ones, so any Zarr reader reads plain float32 pixel values back:
``xarray.open_zarr(night).stamps`` keeps its meaning (DESIGN.md section 5). The encoding is
recorded in the night's attributes (``stamps_encoding``) and in its fingerprint.

uint8 (GIF) stamps are always stored losslessly (zstd).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

#: Lossless storage (zstd level 1), the only encoding of uint8 stamps.
LOSSLESS = "lossless"
_BITROUND_RE = re.compile(r"^bitround-(\d{1,2})$")
#: Float encodings accepted by the ingest (``IngestConfig.float_encoding``).
FLOAT_ENCODING_HELP = "'lossless' or 'bitround-K' (K = 1..22 mantissa bits kept)"


class EncodingError(ValueError):
    """An encoding name that is not one of :data:`FLOAT_ENCODING_HELP`."""


def keepbits(encoding: str) -> int | None:
    """Mantissa bits kept by a float encoding (None: lossless).

    Raises
    ------
    EncodingError
        For a name that is not ``lossless`` or ``bitround-K`` with ``1 <= K <= 22``.
    """
    if encoding == LOSSLESS:
        return None
    m = _BITROUND_RE.match(str(encoding))
    if m is None or not 1 <= int(m.group(1)) <= 22:
        raise EncodingError(f"unknown float encoding {encoding!r}; expected {FLOAT_ENCODING_HELP}")
    return int(m.group(1))


def applied(dtype: np.dtype | str, float_encoding: str) -> str:
    """The encoding a night of ``dtype`` gets when the ingest asks for ``float_encoding``."""
    keepbits(float_encoding)  # validated whatever the dtype
    return float_encoding if np.dtype(dtype).kind == "f" else LOSSLESS


def describe(encoding: str) -> str:
    """One line for readers of the store (recorded next to the encoding's name)."""
    k = keepbits(encoding)
    if k is None:
        return "pixel values stored exactly (zstd)"
    return (
        f"float32 pixel values with the mantissa rounded to {k} bits (round to nearest; relative "
        f"error at most 2**-{k + 1}), stored with Blosc zstd and byte shuffle; read as float32"
    )


def codecs(dtype: np.dtype | str, encoding: str) -> dict[str, Any]:
    """Keyword arguments of ``zarr.create_array`` for the stamps of ``dtype`` in ``encoding``."""
    import zarr

    if keepbits(encoding) is None:
        return {"compressors": zarr.codecs.ZstdCodec(level=1)}
    itemsize = np.dtype(dtype).itemsize
    return {
        "compressors": zarr.codecs.BloscCodec(
            cname="zstd", clevel=1, shuffle="shuffle", typesize=itemsize
        )
    }


def round_mantissa(x: np.ndarray, bits: int) -> np.ndarray:
    """A float32 copy of ``x`` with each finite value's mantissa rounded to ``bits`` bits.

    Round to nearest, ties to even (as numcodecs' ``BitRound``); NaN and Inf are kept as they
    are (rounding their bit patterns could turn a NaN into an Inf). A value whose rounding
    carries into the exponent becomes the next power of two, as it should, except near the
    largest float32, which is truncated rather than rounded to Inf. The relative error bound
    holds for normal floats; subnormals (below 1.2e-38, never a pixel value) lose more.
    """
    out = np.array(x, dtype=np.float32, copy=True, order="C")
    drop = 23 - int(bits)
    if drop <= 0:
        return out
    u = out.view(np.uint32)
    finite = np.isfinite(out)
    half = np.uint32((1 << (drop - 1)) - 1)
    mask = np.uint32((0xFFFFFFFF >> drop) << drop)
    rounded = (u + (((u >> np.uint32(drop)) & np.uint32(1)) + half)) & mask
    # Rounding the largest finite floats up would give Inf: those are truncated instead.
    exponent = np.uint32(0x7F800000)
    rounded = np.where((rounded & exponent) == exponent, u & mask, rounded)
    np.copyto(u, rounded, where=finite)
    return out


def encode(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """The pixels as they are to be stored under ``encoding`` (rounded, or as they are)."""
    k = keepbits(encoding)
    if k is None or pixels.dtype.kind != "f":
        return pixels
    return round_mantissa(pixels, k)
