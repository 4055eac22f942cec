"""What differs between the surveys s2v-batch reads: DES stamps, ZTF and Rubin alert packets.

A :class:`Survey` says where the survey observes (the night calendar), how its stamps are sized
(DES and ZTF: exactly ``stamp_size``, anything else quarantined, except ZTF cut-outs cut short by
a CCD edge, padded on that edge's side unless ``IngestConfig.edge_cutouts`` says quarantine;
Rubin: cut-outs of any size are centre-cropped or padded to the configured size; a pad is
counted in ``masked_fraction``), which
alert field is the stamp ID and which alert fields are kept per stamp.

The kept fields (:class:`Column`) are 1-D arrays of the night dataset (beside ``stamp_id``) and
extra, nullable columns of the Parquet scores of that survey's nights. A few have the same name
in both alert surveys, for code that reads either: ``objectId`` (string), ``mjd``, ``ra``,
``dec``, ``magpsf``, ``band``, ``isdiffpos``; the others are the survey's own names.
In the Zarr store a null is NaN (floats), ``""`` (strings) or -1 (integers and booleans).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from s2v_batch.core.conventions import STAMP_SIZE, SURVEYS
from s2v_batch.core.nights import SURVEY_TZ

#: Stamp edge of ZTF's alert cut-outs.
ZTF_STAMP_SIZE = 63
#: Default stamp edge Rubin cut-outs are cropped or padded to (their size varies per alert).
RUBIN_STAMP_SIZE = 63
#: (rows, columns) of the image a ZTF cut-out is cut from: one readout-channel quadrant,
#: NAXIS2 x NAXIS1 = 3080 x 3072 pixels. A cut-out within 31 pixels of its edge is smaller than
#: 63x63 (its FITS header says nothing of where it lies; ``candidate.xpos/ypos`` does).
ZTF_FRAME_SHAPE = (3080, 3072)


@dataclass(frozen=True)
class Column:
    """An alert field kept per stamp: its name, Parquet type and Zarr dtype (null convention in
    the module docstring)."""

    name: str
    arrow: pa.DataType
    doc: str

    @property
    def dtype(self) -> np.dtype:
        """The Zarr / numpy dtype of the stored array."""
        if pa.types.is_string(self.arrow):
            return np.dtype("U")
        if pa.types.is_boolean(self.arrow):
            return np.dtype(np.int8)
        return np.dtype(self.arrow.to_pandas_dtype())

    @property
    def null(self):
        """The stored value that means null."""
        if pa.types.is_string(self.arrow):
            return ""
        if pa.types.is_floating(self.arrow):
            return np.nan
        return -1


_COMMON = (
    Column("objectId", pa.string(), "the survey's object: ZTF objectId, Rubin diaObjectId"),
    Column("mjd", pa.float64(), "detection time, MJD (ZTF: jd - 2400000.5, UTC; Rubin: TAI)"),
    Column("ra", pa.float64(), "right ascension, deg (J2000 / ICRS)"),
    Column("dec", pa.float64(), "declination, deg"),
    Column("magpsf", pa.float32(), "PSF magnitude of the difference flux (Rubin: AB of |psfFlux|)"),
    Column("band", pa.string(), "filter: g, r, i (ZTF fid 1, 2, 3); u g r i z y (Rubin)"),
    Column("isdiffpos", pa.bool_(), "positive subtraction (science minus template)"),
)
_ZTF = (
    Column("jd", pa.float64(), "candidate.jd: Julian date at the start of the exposure"),
    Column("fid", pa.int8(), "candidate.fid: 1 g, 2 R, 3 i"),
    Column("sigmapsf", pa.float32(), "candidate.sigmapsf, mag"),
    Column("rb", pa.float32(), "candidate.rb: ZTF RealBogus (random forest), 0..1"),
    Column("drb", pa.float32(), "candidate.drb: ZTF deep-learning RealBogus, 0..1"),
    Column("programid", pa.int16(), "candidate.programid: 1 public, 2 partnership, 3 Caltech"),
)
_RUBIN = (
    Column("diaObjectId", pa.int64(), "diaSource.diaObjectId"),
    Column("ssObjectId", pa.int64(), "diaSource.ssObjectId (solar-system object)"),
    Column("midpointMjdTai", pa.float64(), "diaSource.midpointMjdTai"),
    Column("psfFlux", pa.float32(), "diaSource.psfFlux, nJy"),
    Column("psfFluxErr", pa.float32(), "diaSource.psfFluxErr, nJy"),
    Column("snr", pa.float32(), "diaSource.snr"),
    Column("reliability", pa.float32(), "diaSource.reliability: Rubin's real/bogus, 0..1"),
)


@dataclass(frozen=True)
class Survey:
    """One survey's conventions (see the module docstring)."""

    name: str
    timezone: str
    default_size: int
    #: "exact": another size is quarantined; "crop_pad": centre-cropped or padded to the size.
    fit: str
    #: The alert field that is the stamp ID (None: DES, the file names' IDs).
    id_field: str | None
    columns: tuple[Column, ...]
    #: (rows, columns) of the image cut-outs are cut from, where known: an "exact" survey's
    #: cut-out smaller than the stamp is an edge cut-out, padded on the side of the nearer edge
    #: (``formats.alertpackets.pad_edge_cutout``).
    frame_shape: tuple[int, int] | None = None

    @property
    def is_alert(self) -> bool:
        return self.id_field is not None

    def arrow_fields(self) -> list[pa.Field]:
        """The extra Parquet score columns of this survey's nights (all nullable)."""
        return [pa.field(c.name, c.arrow) for c in self.columns]


SURVEY = {
    "des": Survey("des", SURVEY_TZ["des"], STAMP_SIZE, "exact", None, ()),
    "ztf": Survey(
        "ztf", SURVEY_TZ["ztf"], ZTF_STAMP_SIZE, "exact", "candid", _COMMON + _ZTF, ZTF_FRAME_SHAPE
    ),
    "rubin": Survey(
        "rubin", SURVEY_TZ["rubin"], RUBIN_STAMP_SIZE, "crop_pad", "diaSourceId", _COMMON + _RUBIN
    ),
}
assert tuple(SURVEY) == SURVEYS


def get_survey(name: str) -> Survey:
    """The :class:`Survey` named ``des``, ``ztf`` or ``rubin``."""
    try:
        return SURVEY[name]
    except KeyError:
        raise ValueError(f"unknown survey {name!r}; expected one of {', '.join(SURVEYS)}") from None


def alert_columns(survey: Survey, parts: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """The kept fields of a night: each column's pieces (staged units' kept rows) joined, typed
    as stored (strings as fixed-width unicode)."""
    out = {}
    for c in survey.columns:
        pieces = parts.get(c.name) or []
        if c.dtype.kind == "U":
            joined = np.concatenate(pieces) if pieces else np.zeros(0, "U1")
            out[c.name] = joined.astype(str) if joined.dtype.kind != "U" else joined
        else:
            out[c.name] = np.concatenate(pieces).astype(c.dtype) if pieces else np.zeros(0, c.dtype)
    return out


def to_arrow(column: Column, values: np.ndarray) -> pa.Array:
    """A stored array as its nullable Parquet column."""
    values = np.asarray(values)
    if pa.types.is_string(column.arrow):
        return pa.array(values.astype(str), pa.string(), mask=values == "")
    if pa.types.is_floating(column.arrow):
        return pa.array(values, column.arrow, mask=np.isnan(values.astype(np.float64)))
    mask = values < 0
    if pa.types.is_boolean(column.arrow):
        return pa.array(values == 1, pa.bool_(), mask=mask)
    return pa.array(values, column.arrow, mask=mask)


def alert_score_columns(group, survey: str, start: int, stop: int) -> dict[str, pa.Array]:
    """The alert fields of stamps ``[start, stop)`` of a night dataset (an open zarr group) as
    nullable Parquet columns; none for DES nights."""
    return {c.name: to_arrow(c, group[c.name][start:stop]) for c in get_survey(survey).columns}
