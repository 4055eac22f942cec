"""One alert packet -> one stamp: its ID, night, three cut-outs as pixels, and the fields kept.

Both surveys' packets (and their Parquet exports) arrive as records (dicts) from
:mod:`s2v_batch.formats.alertio`. ZTF: ``candid`` is the stamp ID, ``candidate.jd`` the detection time,
the cut-outs are ``{"fileName", "stampData": gzipped FITS}`` records of 63x63 pixels. Rubin:
``diaSourceId`` (top level from schema v8, ``diaSource.diaSourceId`` before) is the stamp ID,
``diaSource.midpointMjdTai`` the time, the cut-outs are FITS bytes of any size. Schema versions
read: ZTF 1.7-4.02 (``drb`` is null before 3.3; the pre-launch 1.x packets before 1.7 carry JPEG
cut-outs, quarantined for it), Rubin 7.0-11.0 (earlier ones have no science cut-out: their
packets are quarantined for it). Channels: ``srch, temp, diff`` = science, template, difference.

Edge cut-outs: a ZTF cut-out within 31 pixels of its quadrant's edge is cut short on that side
(``shape (63, 53)``). It is padded back to 63x63 on that side, so that the candidate stays at the
centre pixel as in every other stamp, with NaN (masked: filled and counted in
``masked_fraction`` by :func:`~s2v_batch.formats.decode.combine_channels`). The side is the
nearer edge of the quadrant by ``candidate.xpos/ypos`` (checked on ZTF's real edge cut-outs:
``ypos`` 10.4 and 13.9 lost rows 0.., ``xpos`` 3051 lost the columns past 3072); the cut-outs'
FITS headers hold no position. Without a position, the side whose border row or column holds
more NaN pixels (the off-chip side, on the same real cut-outs); without either, both sides.
ZTF's Kowalski pads on the far side always, which moves a low-edge candidate off-centre.

Reading a whole unit of alert inputs on a worker is :mod:`s2v_batch.ingest.alertunits`.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np

from s2v_batch.core.conventions import CHANNELS
from s2v_batch.core.nights import NightError, night_of_jd, night_of_mjd
from s2v_batch.core.surveys import Survey
from s2v_batch.formats.decode import StampError, combine_channels, decode_fits

#: The packet fields of the channels, in channel order (srch, temp, diff).
CUTOUT_FIELDS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")
#: A gzipped cut-out may not inflate beyond this (a 63x63 float32 FITS file is 20 kB).
MAX_CUTOUT_BYTES = 16 << 20
#: Rubin fluxes are nJy: AB magnitude = 31.4 - 2.5 log10(flux / nJy).
NJY_AB_ZEROPOINT = 31.4
_ZTF_BANDS = {1: "g", 2: "r", 3: "i"}


def survey_of_record(rec: Any) -> str | None:
    """``ztf`` or ``rubin`` by the packet's fields; None when it is neither."""
    if not isinstance(rec, dict):
        return None
    if isinstance(rec.get("candidate"), dict) and "candid" in rec:
        return "ztf"
    if isinstance(rec.get("diaSource"), dict):
        return "rubin"
    return None


def record_id(rec: dict[str, Any], survey: str) -> int | None:
    """The stamp ID of a packet (``candid`` / ``diaSourceId``), or None when it has none."""
    if survey == "ztf":
        value = rec.get("candid")
        if value is None:
            value = (rec.get("candidate") or {}).get("candid")
    else:
        value = rec.get("diaSourceId")
        if value is None:
            value = (rec.get("diaSource") or {}).get("diaSourceId")
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        return None
    return int(value) if -(2**63) <= int(value) < 2**63 else None


def record_night(rec: dict[str, Any], survey: Survey) -> int:
    """The observing night of a packet's detection time (the observatory's evening date).

    Raises
    ------
    StampError
        No usable detection time.
    """
    try:
        if survey.name == "ztf":
            return night_of_jd(rec["candidate"]["jd"], survey.timezone)
        return night_of_mjd(rec["diaSource"]["midpointMjdTai"], survey.timezone, tai=True)
    except (KeyError, TypeError, NightError) as exc:
        field = "candidate.jd" if survey.name == "ztf" else "diaSource.midpointMjdTai"
        raise StampError(f"undecodable record: no usable detection time {field} ({exc})") from None


def _inflate(data: bytes) -> bytes:
    d = zlib.decompressobj(wbits=31)  # gzip
    try:
        out = d.decompress(data, MAX_CUTOUT_BYTES)
    except zlib.error as exc:
        raise StampError(f"corrupt gzip ({exc})") from None
    if d.unconsumed_tail:
        raise StampError(f"gzip inflates beyond {MAX_CUTOUT_BYTES >> 20} MiB")
    if not d.eof:
        raise StampError("truncated gzip")
    return out


def fit_to_size(arr: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop or pad (with NaN, counted as masked) a 2-D cut-out to ``(size, size)``."""
    out = np.full((size, size), np.nan, dtype=np.float32)
    h, w = arr.shape
    # Source and destination windows, centred (the extra pixel of an odd difference goes last).
    sy, dy = max(0, (h - size) // 2), max(0, (size - h) // 2)
    sx, dx = max(0, (w - size) // 2), max(0, (size - w) // 2)
    ny, nx = min(h, size), min(w, size)
    out[dy : dy + ny, dx : dx + nx] = arr[sy : sy + ny, sx : sx + nx]
    return out


#: How an "exact" survey's edge cut-outs are handled (``IngestConfig.edge_cutouts``).
EDGE_POLICIES = ("pad", "quarantine")


def _pad_before(n: int, size: int, pos: float | None, extent: int | None, bad: np.ndarray) -> int:
    """Rows (or columns) of pad before the cut-out along one axis (see the module docstring)."""
    missing = size - n
    if missing <= 0:
        return 0
    if pos is not None and extent and math.isfinite(pos):
        return missing if pos < extent / 2 else 0
    first, last = int(bad[0].sum()), int(bad[-1].sum())
    if first != last:
        return missing if first > last else 0
    return missing // 2


def pad_edge_cutout(
    arr: np.ndarray,
    size: int,
    position: tuple[float | None, float | None] = (None, None),
    frame_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """An edge cut-out padded with NaN to ``(size, size)`` on the side of the edge it was cut at.

    Parameters
    ----------
    arr : ndarray
        The cut-out, at most ``size`` along each axis (row 0 = the FITS image's first row).
    size : int
        Stamp edge.
    position : (x, y)
        The candidate's pixel position on the image the cut-out was cut from (ZTF
        ``candidate.xpos``, ``ypos``), or None where unknown.
    frame_shape : (rows, columns), optional
        That image's shape (ZTF: the readout quadrant, 3080 x 3072).
    """
    h, w = arr.shape
    bad = ~np.isfinite(arr)
    ny, nx = frame_shape if frame_shape else (None, None)
    y0 = _pad_before(h, size, position[1], ny, bad)
    x0 = _pad_before(w, size, position[0], nx, bad.T)
    out = np.full((size, size), np.nan, dtype=np.float32)
    out[y0 : y0 + h, x0 : x0 + w] = arr
    return out


def _position(rec: dict[str, Any]) -> tuple[float | None, float | None]:
    c = rec.get("candidate") or {}
    x, y = c.get("xpos"), c.get("ypos")
    return (
        float(x) if isinstance(x, float | int) else None,
        float(y) if isinstance(y, float | int) else None,
    )


def cutout_pixels(
    value: Any,
    survey: Survey,
    size: int,
    edge: str = "pad",
    position: tuple[float | None, float | None] = (None, None),
) -> np.ndarray:
    """Pixels of one cut-out field (a ZTF cutout record, or Rubin's bytes), fitted to ``size``.

    ``edge``: what to do with an "exact" survey's cut-out smaller than ``size`` (an edge
    cut-out): ``pad`` it on the side ``position`` says (:func:`pad_edge_cutout`) or
    ``quarantine`` it.

    Raises
    ------
    StampError
        Missing, empty, corrupt, JPEG, or (ZTF) larger than ``size`` or an edge cut-out that
        ``edge`` says to quarantine.
    """
    if isinstance(value, dict):
        value = value.get("stampData")
    if value is None:
        raise StampError("missing")
    if not isinstance(value, bytes | bytearray | memoryview):
        raise StampError(f"not bytes ({type(value).__name__})")
    data = bytes(value)
    if not data:
        raise StampError("empty")
    if data[:2] == b"\x1f\x8b":
        data = _inflate(data)
    if data[:3] == b"\xff\xd8\xff":
        raise StampError("JPEG cut-out, not FITS (ZTF's pre-launch packets, schema 1.x)")
    arr = decode_fits(data, None)
    if survey.fit != "exact":
        return fit_to_size(arr, size)
    if arr.shape == (size, size):
        return arr
    if max(arr.shape) > size or edge != "pad":
        why = "" if max(arr.shape) > size else " (edge cut-out; edge_cutouts: quarantine)"
        raise StampError(f"shape {arr.shape}, expected {(size, size)}{why}")
    return pad_edge_cutout(arr, size, position, survey.frame_shape)


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | np.integer) and not isinstance(value, bool) else -1


def record_fields(rec: dict[str, Any], survey: Survey) -> dict[str, Any]:
    """The kept fields of a packet (:mod:`s2v_batch.core.surveys`), null-coded as they are stored."""
    if survey.name == "ztf":
        c = rec.get("candidate") or {}
        jd = _num(c.get("jd"))
        fid = _int(c.get("fid"))
        pos = str(c.get("isdiffpos", "")).strip().lower()
        return {
            "objectId": str(rec.get("objectId") or ""),
            "mjd": jd - 2400000.5,
            "ra": _num(c.get("ra")),
            "dec": _num(c.get("dec")),
            "magpsf": _num(c.get("magpsf")),
            "band": _ZTF_BANDS.get(fid, ""),
            "isdiffpos": 1 if pos in ("t", "1") else 0 if pos in ("f", "0") else -1,
            "jd": jd,
            "fid": fid if 0 <= fid < 128 else -1,
            "sigmapsf": _num(c.get("sigmapsf")),
            "rb": _num(c.get("rb")),
            "drb": _num(c.get("drb")),
            "programid": _int(c.get("programid")),
        }
    s = rec.get("diaSource") or {}
    flux = _num(s.get("psfFlux"))
    neg = s.get("isNegative")
    if isinstance(neg, bool):
        pos = 0 if neg else 1
    else:
        pos = -1 if math.isnan(flux) or flux == 0 else int(flux > 0)
    dia_obj = _int(s.get("diaObjectId"))
    ss_obj = _int(s.get("ssObjectId"))
    return {
        "objectId": str(dia_obj) if dia_obj > 0 else "",
        "mjd": _num(s.get("midpointMjdTai")),
        "ra": _num(s.get("ra")),
        "dec": _num(s.get("dec")),
        "magpsf": NJY_AB_ZEROPOINT - 2.5 * math.log10(abs(flux))
        if math.isfinite(flux) and flux != 0
        else math.nan,
        "band": str(s.get("band") or ""),
        "isdiffpos": pos,
        "diaObjectId": dia_obj if dia_obj > 0 else -1,
        "ssObjectId": ss_obj if ss_obj > 0 else -1,
        "midpointMjdTai": _num(s.get("midpointMjdTai")),
        "psfFlux": flux,
        "psfFluxErr": _num(s.get("psfFluxErr")),
        "snr": _num(s.get("snr")),
        "reliability": _num(s.get("reliability")),
    }


def alert_stamp(
    rec: dict[str, Any], survey: Survey, size: int, edge: str = "pad"
) -> tuple[int, np.ndarray, float, dict[str, Any]]:
    """A packet as ``(stamp_id, pixels (size, size, 3) float32, masked_fraction, fields)``.

    ``edge``: ``pad`` (edge cut-outs padded, the pad counted in ``masked_fraction``) or
    ``quarantine`` (:data:`EDGE_POLICIES`, :func:`cutout_pixels`).

    Raises
    ------
    StampError
        The reason it cannot be stored (the message names the cut-out field at fault).
    """
    found = survey_of_record(rec)
    if found != survey.name:
        what = f"a {found.upper()} alert" if found else "not a ZTF or Rubin alert packet"
        raise StampError(f"undecodable record: {what} among {survey.name.upper()} alerts")
    sid = record_id(rec, survey.name)
    if sid is None:
        raise StampError(f"undecodable record: no integer {survey.id_field}")
    arrays = []
    position = _position(rec) if survey.name == "ztf" else (None, None)
    for field in CUTOUT_FIELDS:
        try:
            arrays.append(cutout_pixels(rec.get(field), survey, size, edge, position))
        except StampError as exc:
            reason = "missing cut-out" if str(exc) == "missing" else f"{exc}"
            raise StampError(f"{field}: {reason}") from None
    try:
        stamp, frac = combine_channels(arrays)
    except StampError as exc:
        # combine_channels names the channel (srch, temp, diff): name its cut-out instead.
        ch, sep, rest = str(exc).partition(":")
        text = f"{CUTOUT_FIELDS[CHANNELS.index(ch)]}{sep}{rest}" if ch in CHANNELS else str(exc)
        raise StampError(text) from None
    return sid, stamp, frac, record_fields(rec, survey)
