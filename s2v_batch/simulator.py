"""Simulated DES-like stamps, written in the survey's raw layouts (gif, fits, tar) plus the CSV.

The real DES stamps are not reachable from development machines; this module stands in for them.
The physics lives in :mod:`s2v_batch.simphysics`; this module holds the public API:

- :func:`simulate_stamps`: stamps in memory (:class:`SimulatedBatch`).
- :func:`render_gif`, :func:`fits_bytes`: one channel as the survey stored it.
- :func:`simulate`: whole nights on disk, in the autoscan layout::

    OUT/<season>/<YYYYMMDD>/ccd<NN>/{srch,temp,diff}<ID>.{gif,fits}      (fmt "gif" / "fits")
    OUT/<season>/<YYYYMMDD>/stamps_<KKK>.tar  members stamps_<KKK>/...   (fmt "tar")
    OUT/autoscan_features.3.csv   '#' comments, then ID,OBJECT_TYPE,BAND,CCDID,MAG,SNR,...

Everything is deterministic: the same arguments give the same bytes.
"""

from __future__ import annotations

import datetime as _dt
import functools
import io
import os
import re
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .conventions import CHANNELS, SEASON_RE, STAMP_SIZE, label_to_object_type
from .simphysics import KINDS, PIXEL_SCALE, render

__all__ = [
    "FILL_1E30",
    "KINDS",
    "SEASON_FIRST_NIGHT",
    "SimulatedBatch",
    "SimulationError",
    "SimulationSummary",
    "fits_bytes",
    "render_gif",
    "simulate",
    "simulate_stamps",
]

#: Fill value DES used for masked pixels of float stamps (the other half of the masks are NaN).
FILL_1E30 = np.float32(1e-30)
#: First night of each DES season (the default ``first_night`` of :func:`simulate`).
SEASON_FIRST_NIGHT: dict[str, int] = {
    "SV": 20121101,
    "Y1": 20130901,
    "Y2": 20140815,
    "Y3": 20150815,
    "Y4": 20160815,
    "Y5": 20170815,
    "Y6": 20180815,
}
#: IDs of one season stay below this: ``(season index + 1) * ID_SEASON_STRIDE + ...``.
ID_SEASON_STRIDE = 10_000_000
LABELS_CSV = "autoscan_features.3.csv"
FORMATS = ("gif", "fits", "tar")
_TICK = 4  # length of the corner tick marks, pixels
_CCDS_PER_NIGHT = 4
_CHUNK = 2048  # stamps rendered at a time by simulate (fixed: part of the determinism)


class SimulationError(ValueError):
    """Bad arguments to the simulator (the message says which and why)."""


@dataclass(frozen=True)
class SimulatedBatch:
    """Stamps in memory, as :func:`simulate` would write them.

    Attributes
    ----------
    pixels : numpy.ndarray
        float32 ``(n, size, size, 3)``, sky-subtracted ADU, channels srch, temp, diff;
        masked pixels are NaN.
    labels : numpy.ndarray
        int8 ``(n,)``: 1 real, 0 artifact.
    kinds : numpy.ndarray
        str ``(n,)``: one of :data:`KINDS`.
    features : pandas.DataFrame
        autoscan-like features per stamp (BAND, CCDID, MAG, SNR, FWHM, SKYSIG, ...) and the
        simulator's truth (``SIM_KIND``, ``SIM_SNR``, ``SIM_MAG``, ``SIM_HOST``).
    masked : numpy.ndarray
        bool ``(n, size, size)``: pixels masked by a CCD edge.
    """

    pixels: np.ndarray
    labels: np.ndarray
    kinds: np.ndarray
    features: pd.DataFrame
    masked: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class SimulationSummary:
    """What :func:`simulate` wrote. ``files_written`` counts stamp files or tar archives (not the CSV)."""

    out: Path
    season: str
    nights: list[int]
    n_stamps: int
    n_real: int
    n_artifact: int
    fmt: str
    labels_csv: Path
    files_written: int
    seconds: float


# --------------------------------------------------------------------------- stamps in memory


def simulate_stamps(
    n: int, rng: np.random.Generator, *, size: int = STAMP_SIZE, real_fraction: float = 0.5
) -> SimulatedBatch:
    """Render ``n`` DES-like stamps in memory.

    Parameters
    ----------
    n : int
        Number of stamps (0 allowed).
    rng : numpy.random.Generator
        Source of randomness; the result is a pure function of its state and the arguments.
    size : int
        Stamp edge in pixels (DES: 51), at least 16.
    real_fraction : float
        Expected fraction of real transients, in [0, 1].

    Returns
    -------
    SimulatedBatch

    Raises
    ------
    SimulationError
        Bad ``n``, ``size`` or ``real_fraction``.
    """
    _check_int("n", n, 0)
    _check_int("size", size, 16)
    if size > 512:
        raise SimulationError(f"size={size} is unreasonably large for a stamp (at most 512)")
    if not isinstance(rng, np.random.Generator):
        raise SimulationError(f"rng must be a numpy.random.Generator, not {type(rng).__name__}")
    ok = isinstance(real_fraction, int | float | np.integer | np.floating) and not isinstance(
        real_fraction, bool
    )
    if not (ok and 0.0 <= float(real_fraction) <= 1.0):
        raise SimulationError(f"real_fraction must be a number in [0, 1], got {real_fraction!r}")
    pixels, labels, kinds, feats, masked = render(int(n), rng, int(size), float(real_fraction))
    feats["CCDID"] = rng.integers(1, 63, int(n)).astype(np.int16)  # DECam science CCDs 1..62
    return SimulatedBatch(pixels=pixels, labels=labels, kinds=kinds, features=feats, masked=masked)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise SimulationError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise SimulationError(f"{name} must be >= {minimum}, got {value}")


# --------------------------------------------------------------------------- gif


def _scale_u8(images: np.ndarray, channel: str) -> np.ndarray:
    """Scale a batch ``(m, h, w)`` of one channel to uint8 as the survey's scanning GIFs.

    srch/temp: linear from the 1st to the 99.5th percentile of the valid pixels; diff: zero at
    mid-grey 128, symmetric range set by the 99.5th percentile of ``|diff|``. Masked (NaN, Inf,
    1e-30 fill) pixels -> 0; white tick marks in the corners.
    """
    if channel not in CHANNELS:
        raise SimulationError(f"unknown channel {channel!r}; expected one of {CHANNELS}")
    a = np.asarray(images, dtype=np.float32)
    m = a.shape[0]
    flat = a.reshape(m, -1)
    bad = ~np.isfinite(flat) | (flat == FILL_1E30)
    any_bad = bool(bad.any())
    with np.errstate(invalid="ignore", over="ignore"):
        if channel == "diff":
            (hi,) = _row_quantiles(np.abs(flat), bad, (0.995,))
            hi = np.where(np.isfinite(hi) & (hi > 0), hi, np.float32(1.0))
            scaled = flat * (np.float32(127.0) / hi)[:, None]
            scaled += np.float32(128.0)
        else:
            lo, hi = _row_quantiles(flat, bad, (0.01, 0.995))
            lo = np.where(np.isfinite(lo), lo, np.float32(0.0))
            span = np.where(np.isfinite(hi) & (hi > lo), hi - lo, np.float32(1.0))
            scaled = flat - lo[:, None]
            scaled *= (np.float32(255.0) / span)[:, None]
        if any_bad:
            scaled[bad] = 0.0
        np.rint(scaled, out=scaled)
        np.clip(scaled, 0, 255, out=scaled)
    out = scaled.astype(np.uint8).reshape(a.shape)
    _ticks(out)
    return out


def _row_quantiles(
    vals: np.ndarray, bad: np.ndarray, qs: tuple[float, ...]
) -> tuple[np.ndarray, ...]:
    """Per-row quantiles of the good pixels (lower-neighbour rule; far faster than nanquantile)."""
    m, npx = vals.shape
    out = [np.full(m, np.nan, np.float32) for _ in qs]
    rows_bad = bad.any(axis=1)
    clean = np.flatnonzero(~rows_bad)
    if clean.size:
        ks = [int(np.floor(q * (npx - 1))) for q in qs]
        part = np.partition(vals[clean], ks, axis=1)
        for o, k in zip(out, ks, strict=True):
            o[clean] = part[:, k]
    for r in np.flatnonzero(rows_bad):  # only the few masked stamps
        good = vals[r][~bad[r]]
        if good.size:
            srt = np.sort(good)
            for o, q in zip(out, qs, strict=True):
                o[r] = srt[int(np.floor(q * (good.size - 1)))]
    return tuple(out)


def _ticks(u8: np.ndarray) -> None:
    """White diagonal tick marks in the four corners, pointing at the centre (in place)."""
    h, w = u8.shape[-2:]
    k = np.arange(1, min(_TICK, h // 4, w // 4) + 1)
    u8[..., k, k] = 255
    u8[..., k, w - 1 - k] = 255
    u8[..., h - 1 - k, k] = 255
    u8[..., h - 1 - k, w - 1 - k] = 255


_GIF_LITERALS = 250  # literals between LZW clear codes: keeps every code 9 bits wide


def _gif_header(h: int, w: int) -> bytes:
    """GIF89a header, a 256-level grey global palette and one full-frame image descriptor."""
    return (
        b"GIF89a"
        + np.array([w, h], "<u2").tobytes()
        + bytes([0xF7, 0, 0])  # global colour table of 256 entries
        + np.repeat(np.arange(256, dtype=np.uint8), 3).tobytes()
        + b"\x2c"
        + np.array([0, 0, w, h], "<u2").tobytes()
        + b"\x00\x08"  # no local table, not interlaced; LZW minimum code size 8
    )


def _encode_gifs(u8: np.ndarray) -> list[bytes]:
    """Encode a batch ``(m, h, w)`` of uint8 images as grey GIFs, vectorised over the batch.

    The LZW stream holds literal codes only, with a clear code every 250 pixels so the code width
    stays 9 bits: a valid GIF that every decoder reads, written 3x faster than PIL's encoder (the
    noise-dominated stamps barely compress anyway: 3.7 kB against PIL's 4.3 kB).
    """
    m, h, w = u8.shape
    npx = h * w
    nblk = -(-npx // _GIF_LITERALS)
    ncodes = npx + nblk + 1
    codes = np.zeros((m, -(-ncodes // 8) * 8), np.uint16)
    starts = np.arange(nblk) * (_GIF_LITERALS + 1)
    codes[:, starts] = 256  # clear
    codes[:, np.delete(np.arange(ncodes - 1), starts)] = u8.reshape(m, npx)
    codes[:, ncodes - 1] = 257  # end of information
    # Pack 8 codes of 9 bits into 9 bytes, least significant bit first.
    c = codes.reshape(m, -1, 8)
    packed = np.empty((m, c.shape[1], 9), np.uint16)
    packed[..., 0] = c[..., 0]
    for k in range(1, 8):
        packed[..., k] = (c[..., k - 1] >> (9 - k)) | (c[..., k] << k)
    packed[..., 8] = c[..., 7] >> 1
    nb = -(-(ncodes * 9) // 8)
    data = (packed & 0xFF).astype(np.uint8).reshape(m, -1)[:, :nb]
    # Data sub-blocks: a length byte before every 255 bytes.
    nsub = -(-nb // 255)
    blocks = np.empty((m, nb + nsub), np.uint8)
    idx = np.arange(nb)
    blocks[:, idx + idx // 255 + 1] = data
    lens = np.full(nsub, 255, np.uint8)
    lens[-1] = nb - 255 * (nsub - 1)
    blocks[:, np.arange(nsub) * 256] = lens
    head = _gif_header(h, w)
    return [head + row.tobytes() + b"\x00\x3b" for row in blocks]


def render_gif(image: np.ndarray, channel: str) -> bytes:
    """One channel of a stamp as the 8-bit grey GIF the survey showed its human scanners.

    Parameters
    ----------
    image : numpy.ndarray
        ``(h, w)`` float pixels (NaN or the 1e-30 fill where masked).
    channel : {"srch", "temp", "diff"}
        srch/temp scale linearly from the 1st to the 99.5th percentile onto 0..255; diff puts zero
        at 128 with a symmetric range. Masked pixels are 0. White (255) tick marks in the corners
        point at the centre.

    Returns
    -------
    bytes
        A GIF file (mode "L").

    Raises
    ------
    SimulationError
        Not a 2-D image, or an unknown channel.
    """
    a = np.asarray(image)
    if a.ndim != 2 or min(a.shape) < 8:
        raise SimulationError(f"render_gif needs a 2-D image of at least 8x8, got shape {a.shape}")
    return _encode_gifs(_scale_u8(a[None], channel))[0]


# --------------------------------------------------------------------------- fits

_KEY_RE = re.compile(r"^[A-Z0-9_-]{1,8}$")


def _card(key: str, value: object, comment: str = "") -> bytes:
    if not _KEY_RE.match(key):
        raise SimulationError(f"bad FITS keyword {key!r} (1-8 of A-Z 0-9 _ -)")
    if isinstance(value, bool | np.bool_):
        v = f"{'T' if value else 'F':>20}"
    elif isinstance(value, int | np.integer):
        v = f"{int(value):>20d}"
    elif isinstance(value, float | np.floating):
        if not np.isfinite(value):
            raise SimulationError(f"FITS keyword {key} has a non-finite value {value!r}")
        text = f"{float(value):.15G}"
        if "." not in text and "E" not in text:
            text += "."
        v = f"{text:>20}"
    elif isinstance(value, str):
        if not value.isascii() or any(ord(ch) < 32 for ch in value):
            raise SimulationError(f"FITS keyword {key}: value must be printable ASCII")
        v = "'" + f"{value.replace(chr(39), chr(39) * 2):<8}" + "'"
        if len(v) > 70:
            raise SimulationError(f"FITS keyword {key}: string value too long")
    else:
        raise SimulationError(f"FITS keyword {key}: unsupported value type {type(value).__name__}")
    text = f"{key:<8}= {v}"
    if comment:
        text += f" / {comment}"
    return text[:80].ljust(80).encode("ascii")


def fits_bytes(image: np.ndarray, header: dict) -> bytes:
    """One channel as a FITS file: float32 big-endian primary HDU, masked pixels kept as they are.

    Parameters
    ----------
    image : numpy.ndarray
        ``(h, w)`` pixels; NaN or 1e-30 fill values are written unchanged.
    header : dict
        Extra cards (OBJECT, BAND, CCDNUM, EXPNUM, MJD-OBS, GAIN, SKYSIG, FWHM, ...): str, int,
        float or bool values. The structural cards (SIMPLE, BITPIX, NAXIS*, EXTEND) are the
        writer's and may not be given.

    Returns
    -------
    bytes
        2880-byte header blocks of 80-character cards, then the data padded to 2880 bytes.

    Raises
    ------
    SimulationError
        Not a 2-D image, a bad keyword or value.
    """
    a = np.asarray(image)
    if a.ndim != 2:
        raise SimulationError(f"fits_bytes needs a 2-D image, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number):
        raise SimulationError(f"fits_bytes needs numeric pixels, got {a.dtype}")
    reserved = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "END"}
    clash = reserved & {str(k).upper() for k in header}
    if clash:
        raise SimulationError(f"header may not set structural card(s) {sorted(clash)}")
    cards = b"".join(_card(str(k).upper(), v) for k, v in header.items())
    return _fits_assemble(a, cards)


@functools.lru_cache(maxsize=8)
def _structural_cards(h: int, w: int) -> bytes:
    return (
        _card("SIMPLE", True, "conforms to FITS standard")
        + _card("BITPIX", -32, "IEEE single precision")
        + _card("NAXIS", 2)
        + _card("NAXIS1", w)
        + _card("NAXIS2", h)
        + _card("EXTEND", True)
    )


def _fits_assemble(a: np.ndarray, cards: bytes) -> bytes:
    """Structural cards + ``cards`` + END, padded; then the big-endian float32 data, padded."""
    head = _structural_cards(int(a.shape[0]), int(a.shape[1])) + cards + b"END".ljust(80)
    head += b" " * (-len(head) % 2880)
    data = np.ascontiguousarray(a, dtype=">f4").tobytes()
    data += b"\0" * (-len(data) % 2880)
    return head + data


# --------------------------------------------------------------------------- simulate


def _nights(first: int, count: int) -> list[int]:
    try:
        d0 = _dt.datetime.strptime(str(first), "%Y%m%d").date()
    except ValueError:
        raise SimulationError(f"first_night={first!r} is not a valid YYYYMMDD date") from None
    return [int((d0 + _dt.timedelta(days=i)).strftime("%Y%m%d")) for i in range(count)]


def _season_index(season: str) -> int:
    return 0 if season == "SV" else int(season[1:])


def _csv_columns(feats: pd.DataFrame) -> list[str]:
    first = ["BAND", "CCDID", "MAG", "SNR"]
    return ["ID", "OBJECT_TYPE", *first, *[c for c in feats.columns if c not in first]]


def simulate(
    out: str | Path,
    *,
    season: str = "Y1",
    nights: int = 2,
    stamps_per_night: int = 1000,
    fmt: str = "gif",
    seed: int = 0,
    size: int = STAMP_SIZE,
    first_night: int | None = None,
    stamps_per_archive: int = 1000,
    tar_member_format: str = "gif",
    progress: bool = False,
) -> SimulationSummary:
    """Simulate whole nights of stamps on disk in the autoscan layout, plus the labels CSV.

    Parameters
    ----------
    out : path
        Root of the raw tree (created if missing). A second season may be simulated into it: its
        CSV rows are appended.
    season : str
        ``SV`` or ``Y1`` ... ``Y6`` (any ``Y<k>`` when ``first_night`` is given).
    nights : int
        Number of consecutive nights.
    stamps_per_night : int
        Stamps per night.
    fmt : {"gif", "fits", "tar"}
        Loose gif or fits files under ``ccd<NN>`` folders, or tar archives of ``tar_member_format``
        members.
    seed : int
        Seed; each night draws from its own generator seeded by ``(seed, season, night)``.
    size : int
        Stamp edge in pixels.
    first_night : int, optional
        ``YYYYMMDD`` of the first night; default: the season's start.
    stamps_per_archive : int
        Stamps per tar archive (fmt "tar").
    tar_member_format : {"gif", "fits"}
        Format of the tar members.
    progress : bool
        Print one line per night to stderr.

    Returns
    -------
    SimulationSummary

    Raises
    ------
    SimulationError
        Bad arguments (unknown season or format, nights < 1, ...) or an existing CSV with other
        columns.
    """
    t0 = time.perf_counter()
    if not isinstance(season, str) or not SEASON_RE.match(season):
        raise SimulationError(f"unknown season {season!r}; expected SV or Y1 ... Y6")
    if first_night is None:
        if season not in SEASON_FIRST_NIGHT:
            raise SimulationError(
                f"unknown season {season!r}: give first_night (known: {sorted(SEASON_FIRST_NIGHT)})"
            )
        first_night = SEASON_FIRST_NIGHT[season]
    _check_int("nights", nights, 1)
    _check_int("stamps_per_night", stamps_per_night, 1)
    _check_int("seed", seed, 0)
    _check_int("size", size, 16)
    _check_int("stamps_per_archive", stamps_per_archive, 1)
    _check_int("first_night", first_night, 0)
    if fmt not in FORMATS:
        raise SimulationError(f"unknown fmt {fmt!r}; expected one of {FORMATS}")
    if tar_member_format not in ("gif", "fits"):
        raise SimulationError(
            f"tar_member_format must be 'gif' or 'fits', got {tar_member_format!r}"
        )
    if nights * stamps_per_night >= ID_SEASON_STRIDE:
        raise SimulationError(
            f"nights * stamps_per_night must stay below {ID_SEASON_STRIDE:,} (IDs of one season)"
        )
    night_list = _nights(first_night, nights)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SimulationError(f"cannot create output folder {out}: {exc.strerror}") from None
    csv_path = out / LABELS_CSV
    s_idx = _season_index(season)
    # Check (or start) the CSV before any stamp is written: a refusal leaves OUT untouched.
    columns = _csv_columns(simulate_stamps(0, np.random.default_rng(0), size=size).features)
    id_range = ((s_idx + 1) * ID_SEASON_STRIDE, (s_idx + 2) * ID_SEASON_STRIDE)
    _start_csv(csv_path, columns, season, seed, night_list, id_range)
    n_real = n_total = files = 0
    for ni, night in enumerate(night_list):
        rng = np.random.default_rng([seed, s_idx, night])
        ccds = np.sort(rng.choice(np.arange(1, 63), _CCDS_PER_NIGHT, replace=False))
        night_dir = out / season / str(night)
        writer = _NightWriter(night_dir, night, fmt, tar_member_format, stamps_per_archive)
        base = (s_idx + 1) * ID_SEASON_STRIDE + ni * stamps_per_night
        mjd = _mjd(night)
        for start in range(0, stamps_per_night, _CHUNK):
            m = min(_CHUNK, stamps_per_night - start)
            batch = simulate_stamps(m, rng, size=size)
            ids = base + start + np.arange(m, dtype=np.int64)
            ccd = ccds[rng.integers(0, len(ccds), m)]
            feats = batch.features
            feats["CCDID"] = ccd.astype(np.int16)
            # Each CCD of a night stands for one exposure: a stable exposure number per CCD.
            expnum = 100000 + s_idx * 50000 + ni * 100 + ccd
            writer.write(batch, ids, ccd, expnum, mjd, season)
            frame = feats.copy()
            frame.insert(0, "OBJECT_TYPE", label_to_object_type(batch.labels))
            frame.insert(0, "ID", ids)
            frame = frame[columns]
            frame.to_csv(csv_path, mode="a", header=False, index=False, float_format="%.6g")
            n_real += int(batch.labels.sum())
            n_total += m
        files += writer.close()
        if progress:
            print(f"simulated {season}/{night}: {stamps_per_night} stamps", file=sys.stderr)
    return SimulationSummary(
        out=out,
        season=season,
        nights=night_list,
        n_stamps=n_total,
        n_real=n_real,
        n_artifact=n_total - n_real,
        fmt=fmt,
        labels_csv=csv_path,
        files_written=files,
        seconds=time.perf_counter() - t0,
    )


def _start_csv(
    path: Path,
    columns: list[str],
    season: str,
    seed: int,
    nights: list[int],
    id_range: tuple[int, int],
) -> None:
    """Write the comment lines and header of a new CSV, or check that an existing one fits.

    An existing CSV must have the same columns and no row of this season yet (its IDs would
    collide with the new stamps').
    """
    header = ",".join(columns)
    if path.exists():
        with open(path, encoding="ascii", errors="replace") as f:
            line = next((ln for ln in f if not ln.startswith("#")), None)
        if line is None:
            raise SimulationError(f"{path} exists but holds no header line")
        if line.rstrip("\n") != header:
            raise SimulationError(f"{path} exists with other columns; simulate into another folder")
        ids = pd.read_csv(path, comment="#", usecols=["ID"])["ID"].to_numpy()
        if ((ids >= id_range[0]) & (ids < id_range[1])).any():
            raise SimulationError(
                f"season {season} was already simulated into {path.parent}; "
                "simulate into another folder (or delete it first)"
            )
        return
    d = _dt.datetime.strptime(str(nights[0]), "%Y%m%d").date().isoformat()
    with open(path, "w", encoding="ascii") as f:
        f.write(
            "# autoscan_features.3.csv: SIMULATED stamps from the s2v-batch simulator, not DES data\n"
        )
        f.write(f"# season={season} seed={seed} nights={nights[0]}..{nights[-1]} date={d}\n")
        f.write(
            "# OBJECT_TYPE: 0 = real, 1 = artifact (autoscan coding); SIM_* columns are truth\n"
        )
        f.write(header + "\n")


def _mjd(night: int) -> float:
    d = _dt.datetime.strptime(str(night), "%Y%m%d")
    # Local evening at CTIO is about 01:00-09:00 UTC the next day: MJD at 03:00 UTC.
    return float((d - _dt.datetime(1858, 11, 17)).days + 1 + 0.125)


class _NightWriter:
    """Writes the stamps of one night: loose files under ccd folders, or tar archives."""

    def __init__(self, night_dir: Path, night: int, fmt: str, member_fmt: str, per_archive: int):
        self.dir = night_dir
        self.fmt = fmt
        self.ext = member_fmt if fmt == "tar" else fmt
        self.per_archive = per_archive
        self.mtime = int(
            _dt.datetime.strptime(str(night), "%Y%m%d").replace(tzinfo=_dt.UTC).timestamp()
        )
        self.tar: tarfile.TarFile | None = None
        self.tar_path: Path | None = None
        self.in_archive = 0
        self.n_archives = 0
        self.files = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        self._made: set[int] = set()

    def _channel_bytes(self, batch: SimulatedBatch, ids, ccd, expnum, mjd, season):
        """Yield ``(stamp index, channel, bytes)`` for the whole batch."""
        pix = batch.pixels
        m = pix.shape[0]
        if self.ext == "gif":
            gifs = [_encode_gifs(_scale_u8(pix[..., c], ch)) for c, ch in enumerate(CHANNELS)]
            for i in range(m):
                for c, ch in enumerate(CHANNELS):
                    yield i, ch, gifs[c][i]
            return
        feats = batch.features
        band = feats["BAND"].to_numpy()
        fwhm = feats["FWHM"].to_numpy()
        skysig = feats["SKYSIG"].to_numpy()
        gain = feats["GAIN"].to_numpy()
        zp = feats["ZP"].to_numpy()
        any_mask = batch.masked.any(axis=(1, 2))
        common = b"".join(
            _card(k, v)
            for k, v in {
                "TELESCOP": "CTIO 4.0-m telescope",
                "INSTRUME": "DECam",
                "MJD-OBS": float(mjd),
                "PIXSCAL1": PIXEL_SCALE,
                "PIXSCAL2": PIXEL_SCALE,
                "SEASON": season,
                "SIMULATD": True,
            }.items()
        )
        chan_cards = {ch: _card("STAMPTYP", ch, "srch, temp or diff") for ch in CHANNELS}
        for i in range(m):
            stamp = pix[i]
            if any_mask[i] and ids[i] % 2 == 0:
                # Half the masked stamps use the 1e-30 fill instead of NaN (both occur in DES).
                stamp = np.where(batch.masked[i][..., None], FILL_1E30, stamp)
            own = {
                "OBJECT": str(int(ids[i])),
                "BAND": str(band[i]),
                "FILTER": f"{band[i]} DECam SDSS c0001",
                "CCDNUM": int(ccd[i]),
                "EXPNUM": int(expnum[i]),
                "GAIN": round(float(gain[i]), 4),
                "SKYSIG": round(float(skysig[i]), 4),
                "FWHM": round(float(fwhm[i]) / PIXEL_SCALE, 4),
                "SEEING": round(float(fwhm[i]), 4),
                "MAGZP": round(float(zp[i]), 4),
            }
            cards = b"".join(_card(k, v) for k, v in own.items()) + common
            for c, ch in enumerate(CHANNELS):
                yield i, ch, _fits_assemble(stamp[..., c], cards + chan_cards[ch])

    def write(self, batch: SimulatedBatch, ids, ccd, expnum, mjd: float, season: str) -> None:
        for i, ch, data in self._channel_bytes(batch, ids, ccd, expnum, mjd, season):
            name = f"{ch}{int(ids[i])}.{self.ext}"
            if self.fmt == "tar":
                self._add_member(name, data, last=ch == CHANNELS[-1])
            else:
                sub = self.dir / f"ccd{int(ccd[i]):02d}"
                if int(ccd[i]) not in self._made:
                    sub.mkdir(exist_ok=True)
                    self._made.add(int(ccd[i]))
                # os.open/os.write: no Python buffer object per tiny file (~15% faster).
                fd = os.open(sub / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
                self.files += 1

    def _add_member(self, name: str, data: bytes, *, last: bool) -> None:
        if self.tar is None:
            stem = f"stamps_{self.n_archives:03d}"
            self.tar_path = self.dir / f"{stem}.tar"
            self.tar = tarfile.open(self.tar_path, "w", format=tarfile.USTAR_FORMAT)
            self.stem = stem
        info = tarfile.TarInfo(f"{self.stem}/{name}")
        info.size = len(data)
        info.mtime = self.mtime
        info.mode = 0o644
        info.uname = info.gname = "des"
        self.tar.addfile(info, io.BytesIO(data))
        if last:
            self.in_archive += 1
            if self.in_archive >= self.per_archive:
                self._finish_tar()

    def _finish_tar(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar = None
            self.n_archives += 1
            self.files += 1
            self.in_archive = 0

    def close(self) -> int:
        """Finish the open archive, return the number of files written."""
        self._finish_tar()
        return self.files
