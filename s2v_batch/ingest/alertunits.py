"""Reading a unit of alert inputs on a worker: every alert found is returned as a stamp or as a
quarantine record with its reason (missing, corrupt or wrongly sized cut-out, an edge cut-out
where the config says so, undecodable record;
duplicates are found season-wide by the ingest). One packet's decoding is
:mod:`s2v_batch.formats.alertpackets`.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from s2v_batch.core.surveys import Survey, get_survey
from s2v_batch.formats.alertio import AlertReadError, Item, iter_archive, iter_path
from s2v_batch.formats.alertpackets import (
    alert_stamp,
    record_id,
    record_night,
    survey_of_record,
)
from s2v_batch.formats.alertschema import SchemaRegistry
from s2v_batch.formats.decode import StampError
from s2v_batch.ingest.units import Unit, UnitData


@functools.lru_cache(maxsize=8)
def alert_registry(paths: tuple[str, ...]) -> SchemaRegistry:
    """The schema registry of a unit's ``.avsc`` files, built once per worker."""
    return SchemaRegistry(paths)


def unit_items(unit: Unit) -> Iterator[Item]:
    """The records of a unit's archive or files, in order."""
    reg = alert_registry(tuple(unit.schemas))
    if unit.archive:
        return iter_archive(unit.archive, reg)
    return itertools.chain.from_iterable(iter_path(p, reg) for p in unit.alert_files)


def _columns(survey: Survey, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    out = {}
    for col in survey.columns:
        values = [r[col.name] for r in rows]
        if col.dtype.kind == "U":
            out[col.name] = np.asarray(values, dtype=str) if values else np.zeros(0, "U1")
        else:
            out[col.name] = np.asarray(values, dtype=col.dtype)
    return out


#: Kept fields are turned from dicts into arrays every this many stamps (bounded memory).
_ROWS_PER_BLOCK = 4096


def read_alert_unit(
    unit: Unit,
    size: int,
    emit: Callable[[np.ndarray], None] | None = None,
    edge: str = "pad",
    items: Iterable[Item] | None = None,
) -> UnitData:
    """Decode every alert of a unit; quarantine the bad ones with a reason.

    A unit dated by its archive's name or its folder takes every alert it holds. A unit dated
    from the data (``unit.date_from_data``) takes the alerts of its survey and night only: its
    files' other alerts belong to other units, and what could not be dated was quarantined by
    the discovery.

    Parameters
    ----------
    unit : Unit
        From the discovery (``unit.survey`` is ``ztf`` or ``rubin``).
    size : int
        Stamp edge in pixels.
    emit : callable, optional
        Called with each stored stamp's pixels, in order, instead of keeping them: a nightly
        archive holds hundreds of thousands of alerts (47 kB each at 63x63), so staging writes
        them to disk as they come. ``UnitData.pixels`` is then empty.
    edge : str
        ``pad`` or ``quarantine`` ZTF cut-outs cut short by a CCD edge
        (``IngestConfig.edge_cutouts``; :func:`s2v_batch.formats.alertpackets.cutout_pixels`).
    items : iterable of Item, optional
        The records to read in place of the unit's own (one part of a nightly archive, as
        :func:`s2v_batch.ingest.staging.stage_unit` stages it).

    Returns
    -------
    UnitData
    """
    survey = get_survey(unit.survey)
    pix: list[np.ndarray] = []
    ids: list[int] = []
    fracs: list[float] = []
    paths: list[str] = []
    rows: list[dict[str, Any]] = []
    blocks: list[dict[str, np.ndarray]] = []
    quarantine: list[dict] = []
    n_found = 0
    for where, rec in unit_items(unit) if items is None else items:
        if unit.date_from_data:
            if isinstance(rec, AlertReadError) or survey_of_record(rec) != survey.name:
                continue
            try:
                if record_night(rec, survey) != unit.night:
                    continue
            except StampError:
                continue
        n_found += 1
        if isinstance(rec, AlertReadError):
            quarantine.append({"stamp_id": None, "path": where, "reason": str(rec)})
            continue
        try:
            sid, stamp, frac, fields = alert_stamp(rec, survey, size, edge)
        except StampError as exc:
            known = record_id(rec, survey.name) if survey_of_record(rec) == survey.name else None
            quarantine.append({"stamp_id": known, "path": where, "reason": str(exc)})
            continue
        if emit is None:
            pix.append(stamp)
        else:
            emit(stamp)
        ids.append(sid)
        fracs.append(frac)
        paths.append(where)
        rows.append(fields)
        if len(rows) == _ROWS_PER_BLOCK:
            blocks.append(_columns(survey, rows))
            rows = []
    blocks.append(_columns(survey, rows))
    meta = {c.name: np.concatenate([b[c.name] for b in blocks]) for c in survey.columns}
    return UnitData(
        pixels=np.stack(pix) if pix else np.zeros((0, size, size, 3), np.float32),
        stamp_id=np.asarray(ids, dtype=np.int64),
        masked_fraction=np.asarray(fracs, dtype=np.float32),
        paths=paths,
        quarantine=quarantine,
        n_found=n_found,
        meta=meta,
    )
