"""Pixels from the bytes of one channel file: GIF (uint8) and FITS (float32), validated.

A stamp's three channels (``srch``, ``temp``, ``diff``) are decoded one by one and combined by
:func:`combine_channels`, which fills masked float pixels and measures their fraction. Anything
that cannot be used raises :class:`StampError`, whose message becomes the quarantine reason.
"""

from __future__ import annotations

import functools
import io
import struct

import numpy as np

from s2v_batch.core.conventions import CHANNELS

#: The fill value DES uses for masked pixels in float stamps.
FILL_1E30 = np.float32(1e-30)


class StampError(ValueError):
    """A stamp (or one of its channels) that cannot be used; the message is the quarantine reason."""


def _gif_plugin():
    from PIL import GifImagePlugin

    return GifImagePlugin.GifImageFile


def _gif_image_block(data: bytes) -> tuple[int, int, int, bool, bytes | None, int, bool]:
    """Walk a GIF's blocks to its first image: (width, height, LZW bits, interlaced, palette,
    data offset, whether the frame fills the logical screen)."""
    if data[:6] not in (b"GIF87a", b"GIF89a"):
        raise StampError("corrupt gif (no GIF signature)")
    sw, sh = struct.unpack_from("<HH", data, 6)
    packed = data[10]
    pos = 13
    palette = None
    if packed & 0x80:
        n = 3 << ((packed & 7) + 1)
        palette = data[pos : pos + n]
        pos += n
    while True:
        block = data[pos]
        if block == 0x21:  # extension: label, then sub-blocks
            pos += 2
            while data[pos]:
                pos += data[pos] + 1
            pos += 1
        elif block == 0x2C:  # image descriptor
            x0, y0, w, h = struct.unpack_from("<HHHH", data, pos + 1)
            ip = data[pos + 9]
            pos += 10
            if ip & 0x80:
                n = 3 << ((ip & 7) + 1)
                palette = data[pos : pos + n]
                pos += n
            full = (x0, y0, w, h) == (0, 0, sw, sh)
            return w, h, data[pos], bool(ip & 0x40), palette, pos + 1, full
        else:
            raise StampError("corrupt gif (no image block)")


def decode_gif(data: bytes, size: int) -> np.ndarray:
    """Decode one 8-bit GIF channel to a ``(size, size)`` uint8 grey array.

    The common case (one frame filling the screen) is decoded to palette indices by giflib
    (through ``imagecodecs``, about 2.5x faster than Pillow on tiny files, whose cost is
    per-image objects) or, where giflib refuses the data, by Pillow's C LZW decoder called
    directly; anything unusual goes through Pillow's full reader. giflib is stricter (it refuses
    a file without its trailer byte whose pixels are all there), so Pillow has the last word.

    Raises
    ------
    StampError
        Empty, truncated or corrupt data, or the wrong shape.
    """
    if not data:
        raise StampError("empty file")
    try:
        w, h, bits, interlace, palette, offset, full = _gif_image_block(data)
    except (IndexError, struct.error):
        raise StampError("corrupt gif (truncated header)") from None
    if (h, w) != (size, size) and full:
        raise StampError(f"shape {(h, w)}, expected {(size, size)}")
    if not full or not 1 <= bits <= 12:
        return _decode_gif_pillow(data, size)
    idx = _gif_indices_giflib(data, h, w)
    if idx is None:
        idx = _gif_indices_pillow(data, h, w, bits, interlace, offset)
    return idx if palette is None else _grey_lut(palette)[idx]


@functools.lru_cache(maxsize=64)
def _grey_lut(palette: bytes) -> np.ndarray:
    """Index -> grey level of a palette (a survey uses a handful of palettes: cached)."""
    # Grey-scale survey GIFs: R = G = B, so the red component maps indices to grey.
    lut = np.zeros(256, np.uint8)
    reds = np.frombuffer(palette, np.uint8)[0::3]
    lut[: len(reds)] = reds
    lut.flags.writeable = False
    return lut


try:
    from imagecodecs import gif_decode as _giflib_decode
except ImportError:  # optional speed-up: Pillow decodes the same pixels
    _giflib_decode = None


def _gif_indices_giflib(data: bytes, h: int, w: int) -> np.ndarray | None:
    """The first frame's palette indices, or None where giflib is missing or refuses the data."""
    if _giflib_decode is None:
        return None
    try:
        idx = _giflib_decode(data, index=0, asrgb=False)
    except Exception:
        return None
    return idx if idx.shape == (h, w) and idx.dtype == np.uint8 else None


def _gif_indices_pillow(
    data: bytes, h: int, w: int, bits: int, interlace: bool, offset: int
) -> np.ndarray:
    from PIL import Image

    core = Image.core.new("L", (w, h))
    decoder = Image.core.gif_decoder("L", bits, interlace, -1)
    try:
        decoder.setimage(core, (0, 0, w, h))
        status, err = decoder.decode(data[offset:])
    finally:
        decoder.cleanup()
    if err < 0:
        raise StampError(f"corrupt gif (decoder error {err})")
    if status >= 0:  # the decoder wants more data than the file holds
        raise StampError("corrupt gif (truncated image data)")
    return np.asarray(Image.Image()._new(core))


def _decode_gif_pillow(data: bytes, size: int) -> np.ndarray:
    try:
        im = _gif_plugin()(io.BytesIO(data))
        im.load()
        arr = np.asarray(im.convert("L"))
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise StampError(f"corrupt gif ({type(exc).__name__}: {exc})") from None
    if arr.shape != (size, size):
        raise StampError(f"shape {arr.shape}, expected {(size, size)}")
    return arr


_FITS_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


def _fits_header(data: bytes) -> tuple[dict[str, float], int]:
    """Parse the numeric cards of a FITS primary header; return them and the data offset."""
    cards: dict[str, float] = {}
    pos = 0
    while True:
        if pos + 2880 > len(data):
            raise StampError("truncated FITS header")
        block = data[pos : pos + 2880]
        pos += 2880
        for i in range(0, 2880, 80):
            card = block[i : i + 80]
            key = card[:8].decode("ascii", "replace").strip()
            if key == "END":
                return cards, pos
            if key in (
                "SIMPLE",
                "BITPIX",
                "NAXIS",
                "NAXIS1",
                "NAXIS2",
                "NAXIS3",
                "BSCALE",
                "BZERO",
            ):
                if card[8:10] != b"= ":
                    raise StampError(f"bad FITS card {key}")
                raw = card[10:].split(b"/")[0].strip()
                if key == "SIMPLE":
                    cards[key] = 1.0 if raw == b"T" else 0.0
                else:
                    try:
                        cards[key] = float(raw)
                    except ValueError:
                        raise StampError(f"bad FITS card {key} = {raw!r}") from None
        if pos == 2880 and "SIMPLE" not in cards:
            raise StampError("not a FITS file (no SIMPLE card)")


def decode_fits(data: bytes, size: int | None) -> np.ndarray:
    """Decode one FITS channel to a ``(size, size)`` float32 array (masked pixels left as they are;
    ``size`` None: any 2-D shape, as alert cut-outs of varying size).

    The pixel block of a simple primary HDU is read straight past the header (about 20x faster
    than astropy on tiny files); anything else goes through astropy.

    Raises
    ------
    StampError
        Empty, truncated or corrupt data, or the wrong shape.
    """
    if not data:
        raise StampError("empty file")
    if not data.startswith(b"SIMPLE  ="):
        raise StampError("not a FITS file")
    cards, offset = _fits_header(data)
    if cards.get("SIMPLE") != 1.0:
        raise StampError("FITS file does not conform (SIMPLE = F)")
    naxis = int(cards.get("NAXIS", -1))
    if naxis == 0:
        return _decode_fits_astropy(data, size)
    bitpix = int(cards.get("BITPIX", 0))
    if bitpix not in _FITS_DTYPES:
        raise StampError(f"unsupported FITS BITPIX {bitpix}")
    if naxis != 2:
        raise StampError(f"FITS image has {naxis} axes, expected 2")
    shape = (int(cards.get("NAXIS2", 0)), int(cards.get("NAXIS1", 0)))
    nbytes = shape[0] * shape[1] * abs(bitpix) // 8
    if offset + nbytes > len(data):
        raise StampError(f"truncated FITS data ({len(data) - offset} of {nbytes} bytes)")
    if size is not None and shape != (size, size):
        raise StampError(f"shape {shape}, expected {(size, size)}")
    end = offset + -(-nbytes // 2880) * 2880  # the data block, padded to whole FITS blocks
    if len(data) > end and data[end : end + 8] != b"XTENSION":
        raise StampError(
            f"size does not match the FITS header: {len(data) - end} bytes of trailing data "
            f"after the image (file is {len(data)} bytes, its header says {end})"
        )
    arr = np.frombuffer(data, _FITS_DTYPES[bitpix], shape[0] * shape[1], offset).reshape(shape)
    arr = arr.astype(np.float32)
    bscale, bzero = cards.get("BSCALE", 1.0), cards.get("BZERO", 0.0)
    if bscale != 1.0 or bzero != 0.0:
        arr = arr * np.float32(bscale) + np.float32(bzero)
    return arr


def _decode_fits_astropy(data: bytes, size: int | None) -> np.ndarray:
    from astropy.io import fits

    try:
        with fits.open(io.BytesIO(data), memmap=False) as hdul:
            for hdu in hdul:
                if hdu.data is not None and getattr(hdu.data, "ndim", 0) == 2:
                    arr = np.asarray(hdu.data, dtype=np.float32)
                    break
            else:
                raise StampError("FITS file holds no 2-D image")
    except StampError:
        raise
    except Exception as exc:
        raise StampError(f"corrupt FITS ({type(exc).__name__}: {exc})") from None
    if size is not None and arr.shape != (size, size):
        raise StampError(f"shape {arr.shape}, expected {(size, size)}")
    return arr


def max_channel_bytes(name: str, size: int) -> int:
    """The largest a channel file of a ``size`` x ``size`` stamp can be, by its format (generous).

    A larger file (a stamp followed by junk, a gigantic tar member) is quarantined without being
    read: memory per worker stays flat whatever the input files' sizes.

    - GIF: a 13-byte screen descriptor, two 768-byte palettes, extension blocks (comments), and
      LZW data of at most 12 bits a pixel in 255-byte sub-blocks: ``64 KiB + 2 * size**2``.
    - FITS: up to 72 header blocks of 2880 bytes, pixels of up to 8 bytes (BITPIX -64) padded to
      2880 bytes, twice over (room for one extension HDU): ``2 * (72 * 2880 + 8 * size**2 + 2880)``.
    """
    if name.lower().endswith(".gif"):
        return 64 * 1024 + 2 * size * size
    return 2 * (72 * 2880 + 8 * size * size + 2880)


def decode_channel(name: str, data: bytes, size: int) -> np.ndarray:
    """Decode a channel file by its extension (gif -> uint8, fits -> float32)."""
    if name.lower().endswith(".gif"):
        return decode_gif(data, size)
    return decode_fits(data, size)


def combine_channels(channels: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """Stack srch/temp/diff into ``(size, size, 3)``, fill masked pixels, measure the masked fraction.

    Float stamps may hold NaN, Inf or the 1e-30 fill for masked pixels (CCD edges): these are
    replaced by the channel's median so the stored stamp is finite, and their fraction is kept.
    A channel with no valid pixel at all is an error.
    """
    if all(c.dtype == np.uint8 for c in channels):
        return np.stack(channels, axis=-1), 0.0
    out = np.stack([c.astype(np.float32, copy=False) for c in channels], axis=-1)
    masked = ~np.isfinite(out) | (out == FILL_1E30)
    n_masked = int(masked.sum())
    if n_masked:
        for i, ch in enumerate(CHANNELS):
            m = masked[..., i]
            if m.all():
                raise StampError(f"{ch}: all pixels NaN/Inf/masked")
            if m.any():
                plane = out[..., i]
                plane[m] = np.median(plane[~m])
    return out, n_masked / out.size
