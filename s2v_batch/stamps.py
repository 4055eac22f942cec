"""Raw stamps: find them (files and tar archives) and decode them into validated pixel arrays.

A stamp is three files ``srch<ID>``, ``temp<ID>``, ``diff<ID>`` (``.gif`` or ``.fits``), loose in a
folder tree or as members of ``.tar`` archives. Season and night come from the path. Every stamp
found is returned either decoded or as a quarantine record with a reason: nothing is dropped.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import struct
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .conventions import CHANNELS, is_night, is_season

STAMP_FILE_RE = re.compile(r"^(srch|temp|diff)(.*)\.(gif|fits|fit|fts)$", re.IGNORECASE)
_CH_INDEX = {c: i for i, c in enumerate(CHANNELS)}
#: The fill value DES uses for masked pixels in float stamps.
FILL_1E30 = np.float32(1e-30)


class StampError(ValueError):
    """A stamp (or one of its channels) that cannot be used; the message is the quarantine reason."""


# --------------------------------------------------------------------------- decoding


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


def decode_fits(data: bytes, size: int) -> np.ndarray:
    """Decode one FITS channel to a ``(size, size)`` float32 array (masked pixels left as they are).

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
    if shape != (size, size):
        raise StampError(f"shape {shape}, expected {(size, size)}")
    arr = np.frombuffer(data, _FITS_DTYPES[bitpix], shape[0] * shape[1], offset).reshape(shape)
    arr = arr.astype(np.float32)
    bscale, bzero = cards.get("BSCALE", 1.0), cards.get("BZERO", 0.0)
    if bscale != 1.0 or bzero != 0.0:
        arr = arr * np.float32(bscale) + np.float32(bzero)
    return arr


def _decode_fits_astropy(data: bytes, size: int) -> np.ndarray:
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
    if arr.shape != (size, size):
        raise StampError(f"shape {arr.shape}, expected {(size, size)}")
    return arr


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


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class Unit:
    """A unit of ingest work: a group of loose stamps, or one tar archive, of one night."""

    season: str
    night: int
    index: int
    archive: str | None = None
    #: For loose files: ``(id_text, (srch_path, temp_path, diff_path))``, ``None`` where missing.
    stamps: tuple[tuple[str, tuple[str | None, str | None, str | None]], ...] = ()

    @property
    def name(self) -> str:
        """Deterministic name of the unit within its night."""
        return f"unit-{self.index:06d}"


@dataclass
class Discovery:
    """What a raw tree holds, by night."""

    units: dict[tuple[str, int], list[Unit]] = field(default_factory=dict)
    fingerprints: dict[tuple[str, int], str] = field(default_factory=dict)
    #: Inputs that cannot be placed in a season/night: ``(path, reason)``.
    unplaced: list[tuple[str, str]] = field(default_factory=list)
    n_files: int = 0
    n_archives: int = 0


def place(parts: Iterable[str]) -> tuple[str | None, int | None]:
    """Season and night from path components (the nearest matching ones win)."""
    season = night = None
    for p in parts:
        if is_season(p):
            season = p
        elif is_night(p):
            night = int(p)
    return season, night


def discover(raw: str | Path, *, unit_stamps: int = 2048) -> Discovery:
    """Walk a raw tree and group its stamps into units of work per night.

    Parameters
    ----------
    raw : path
        Root of the raw tree: loose ``srch/temp/diff<ID>.{gif,fits}`` files and/or ``.tar`` archives.
    unit_stamps : int
        Loose stamps per unit (a tar archive is one unit).

    Returns
    -------
    Discovery
    """
    raw = Path(raw)
    if not raw.exists():
        raise FileNotFoundError(f"raw input {raw} does not exist")
    disc = Discovery()
    groups: dict[tuple[str, int], dict[tuple[str, str], list[str | None]]] = {}
    archives: dict[tuple[str, int], list[str]] = {}
    hashes: dict[tuple[str, int], hashlib._Hash] = {}
    roots = [(str(raw.parent), [], [raw.name])] if raw.is_file() else os.walk(raw)
    for dirpath, dirnames, filenames in roots:
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_parts = Path(os.path.relpath(dirpath, raw.parent)).parts
        season, night = place(rel_parts)
        for fname in sorted(filenames):
            is_tar = fname.lower().endswith(".tar")
            m = None if is_tar else STAMP_FILE_RE.match(fname)
            if not is_tar and m is None:
                continue
            path = os.path.join(dirpath, fname)
            if season is None or night is None:
                disc.unplaced.append((path, "no <season>/<YYYYMMDD> folder in the path"))
                continue
            key = (season, night)
            st = os.stat(path)
            hashes.setdefault(key, hashlib.sha256()).update(
                f"{os.path.relpath(path, raw)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
            )
            if is_tar:
                archives.setdefault(key, []).append(path)
                disc.n_archives += 1
            else:
                slots = groups.setdefault(key, {}).setdefault((dirpath, m.group(2)), [None] * 3)
                ch = _CH_INDEX[m.group(1).lower()]
                if slots[ch] is not None:
                    disc.unplaced.append((path, f"second {m.group(1)} file for the same stamp"))
                    continue
                slots[ch] = path
                disc.n_files += 1
    for key in sorted(set(groups) | set(archives)):
        units: list[Unit] = []
        for path in archives.get(key, []):
            units.append(Unit(key[0], key[1], len(units), archive=path))
        items = sorted(groups.get(key, {}).items(), key=lambda kv: (kv[0][0], _id_sort(kv[0][1])))
        for i in range(0, len(items), unit_stamps):
            chunk = tuple((idt, tuple(paths)) for (_, idt), paths in items[i : i + unit_stamps])
            units.append(Unit(key[0], key[1], len(units), stamps=chunk))
        disc.units[key] = units
        disc.fingerprints[key] = hashes[key].hexdigest()
    return disc


def _id_sort(text: str) -> tuple[int, int, str]:
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


# --------------------------------------------------------------------------- reading a unit


@dataclass
class UnitData:
    """The decoded stamps of one unit and the quarantine records of the rest."""

    pixels: np.ndarray
    stamp_id: np.ndarray
    masked_fraction: np.ndarray
    paths: list[str]
    quarantine: list[dict]
    n_found: int


def _iter_files(unit: Unit) -> Iterator[tuple[str, str, list]]:
    for id_text, paths in unit.stamps:
        chans: list = []
        for p in paths:
            if p is None:
                chans.append(None)
                continue
            try:
                with open(p, "rb") as f:
                    chans.append((p, f.read()))
            except OSError as exc:
                chans.append((p, StampError(f"unreadable file ({exc.strerror})")))
        where = next(p for p in paths if p is not None)
        yield id_text, os.path.dirname(where), chans


class TarDamaged(Exception):
    """A tar archive that is truncated or corrupt from some point on."""


_ZERO_BLOCK = bytes(512)
_PLAIN_TYPES = (b"0", b"\0", b"7")


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(field[1:], "big")
    text = field.strip(b" \0")
    return int(text, 8) if text else 0


def tar_members(path: str) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, data)`` of the regular files of a plain tar archive, streaming.

    Reads 512-byte headers directly (several times faster than :mod:`tarfile` for archives of
    tiny files), checking each header's checksum; archives with pax or GNU long-name headers are
    handed to :mod:`tarfile`.

    Raises
    ------
    TarDamaged
        At the first truncated or corrupt point; the members before it have been yielded.
    """
    done = 0
    with open(path, "rb", buffering=1 << 20) as f:
        while True:
            hdr = f.read(512)
            if not hdr or hdr == _ZERO_BLOCK:
                return
            if len(hdr) < 512:
                raise TarDamaged("truncated tar archive (a header is cut short)")
            try:
                chk = _octal(hdr[148:156])
                size = _octal(hdr[124:136])
            except ValueError:
                raise TarDamaged(f"corrupt tar header at byte {f.tell() - 512}") from None
            if chk != sum(hdr[:148]) + 256 + sum(hdr[156:]):
                raise TarDamaged(f"corrupt tar header at byte {f.tell() - 512} (bad checksum)")
            kind = hdr[156:157]
            if kind in (b"x", b"g", b"L", b"K"):
                break  # extended headers: let tarfile read the rest
            name = hdr[:100].split(b"\0", 1)[0]
            if hdr[257:262] == b"ustar":
                prefix = hdr[345:500].split(b"\0", 1)[0]
                if prefix:
                    name = prefix + b"/" + name
            name_s = name.decode("utf-8", "replace")
            data = f.read((size + 511) & ~511)
            if len(data) < size:
                raise TarDamaged(f"truncated tar archive at {name_s}")
            if kind in _PLAIN_TYPES:
                done += 1
                yield name_s, data[:size]
    yield from _tar_members_tarfile(path, skip=done)


def _tar_members_tarfile(path: str, skip: int) -> Iterator[tuple[str, bytes]]:
    try:
        with tarfile.open(path, mode="r|") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                if skip:
                    skip -= 1
                    continue
                yield member.name, tf.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise TarDamaged(f"unreadable tar archive ({type(exc).__name__}: {exc})") from None


def _iter_tar(archive: str, failures: list[str]) -> Iterator[tuple[str, str, list]]:
    """Yield stamps of an archive in member order, streaming (memory does not grow with it)."""
    pending: dict[tuple[str, str], list] = {}  # insertion-ordered: member order
    try:
        for name, data in tar_members(archive):
            m = STAMP_FILE_RE.match(os.path.basename(name))
            if m is None:
                continue
            key = (os.path.dirname(name), m.group(2))
            slots = pending.setdefault(key, [None, None, None])
            ch = _CH_INDEX[m.group(1).lower()]
            where = f"{archive}:{name}"
            if slots[ch] is not None:
                slots[ch] = (where, StampError(f"{m.group(1)} appears twice in the archive"))
            else:
                slots[ch] = (where, data)
            if slots[0] is not None and slots[1] is not None and slots[2] is not None:
                del pending[key]
                yield key[1], f"{archive}:{key[0]}", slots
    except TarDamaged as exc:
        failures.append(str(exc))
    except OSError as exc:
        failures.append(f"unreadable tar archive ({exc.strerror or exc})")
    for key, slots in pending.items():
        yield key[1], f"{archive}:{key[0]}", slots


def read_unit(unit: Unit, size: int) -> UnitData:
    """Decode every stamp of a unit; quarantine the bad ones with a reason.

    Parameters
    ----------
    unit : Unit
        From :func:`discover`.
    size : int
        Expected stamp edge in pixels.

    Returns
    -------
    UnitData
    """
    failures: list[str] = []
    source = _iter_tar(unit.archive, failures) if unit.archive else _iter_files(unit)
    pix: list[np.ndarray] = []
    ids: list[int] = []
    fracs: list[float] = []
    paths: list[str] = []
    quarantine: list[dict] = []
    n_found = 0
    for id_text, where, chans in source:
        n_found += 1
        sid = int(id_text) if id_text.isdigit() else None
        try:
            if sid is None:
                raise StampError(f"non-numeric stamp ID {id_text!r}")
            arrays = []
            for ch, slot in zip(CHANNELS, chans, strict=True):
                if slot is None:
                    raise StampError(f"missing channel {ch}")
                name, data = slot
                if isinstance(data, Exception):
                    raise StampError(f"{ch}: {data}")
                try:
                    arrays.append(decode_channel(name, data, size))
                except StampError as exc:
                    raise StampError(f"{ch}: {exc}") from None
            if len({a.dtype for a in arrays}) > 1:
                raise StampError("channels mix gif and fits files")
            stamp, frac = combine_channels(arrays)
        except StampError as exc:
            quarantine.append({"stamp_id": sid, "path": f"{where}/{id_text}", "reason": str(exc)})
            continue
        pix.append(stamp)
        ids.append(sid)
        fracs.append(frac)
        paths.append(f"{where}/{id_text}")
    for reason in failures:
        quarantine.append({"stamp_id": None, "path": unit.archive, "reason": reason})
        n_found += 1
    dtype = np.float32 if any(p.dtype != np.uint8 for p in pix) else np.uint8
    pixels = (
        np.stack([p.astype(dtype, copy=False) for p in pix])
        if pix
        else np.zeros((0, size, size, len(CHANNELS)), dtype)
    )
    return UnitData(
        pixels=pixels,
        stamp_id=np.asarray(ids, dtype=np.int64),
        masked_fraction=np.asarray(fracs, dtype=np.float32),
        paths=paths,
        quarantine=quarantine,
        n_found=n_found,
    )
