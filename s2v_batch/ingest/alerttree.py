"""Where the alert packets of a raw tree belong: survey, season and night of each alert input.

:func:`s2v_batch.ingest.rawtree.discover` walks the tree once and hands the alert inputs it meets
(``.avro`` and ``.parquet`` files, ``.tar.gz`` / ``.tgz`` archives, ``.avsc`` schemas) to an
:class:`AlertInputs`, which places them after the walk:

- **night**: from the archive's name where it is a nightly archive: ZTF's
  ``ztf_<program>_YYYYMMDD[_...].tar.gz`` is named by the UT date of the night, the morning after
  Palomar's evening, so its night is the day before; ``rubin_YYYYMMDD.tar.gz`` /
  ``lsst_..._YYYYMMDD.tar.gz`` by Rubin's ``dayObs``, the evening's date. Else from a
  ``<YYYYMMDD>`` folder in the path (the evening's date, as for DES). Else, for loose files, from
  the alerts themselves: each undated file is read once here, on the client, and its alerts are
  sorted into nights by their detection time (a file of several nights goes to several units,
  each taking its own night's alerts). Dated folders or nightly archives spare that read.
- **survey**: from a season folder (``ZTF2024``), the archive's name, or else the head of the
  first readable input of the folder (its Avro schema's name, its Parquet columns).
- **season**: a season folder of the same survey, else the survey and the night's year
  (``ZTF2024``).

The result keeps the discovery's contract: units per night, and a raw fingerprint per night made
of the identities (path, size, mtime) of the inputs that hold its alerts (and of the tree's
``.avsc`` files, which decide how framed records decode). Inputs that cannot be placed, and
alerts that cannot be dated, are listed as unplaced with the reason.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from s2v_batch.core.conventions import ALERT_SEASON_RE, alert_season, is_night, survey_of_season
from s2v_batch.core.fsutil import raw_identity
from s2v_batch.core.nights import shift_night
from s2v_batch.core.surveys import get_survey
from s2v_batch.formats.alertio import (
    AlertReadError,
    is_alert_archive,
    is_alert_file,
    iter_path,
    peek_schema_name,
)
from s2v_batch.formats.alertpackets import record_night, survey_of_record
from s2v_batch.formats.alertschema import SchemaRegistry, survey_of_schema_name
from s2v_batch.formats.decode import StampError
from s2v_batch.ingest.units import Unit

ZTF_ARCHIVE_RE = re.compile(r"^ztf_[a-z0-9]+_([0-9]{8})(?:_[a-z0-9]+)*\.(?:tar\.gz|tgz)$", re.I)
RUBIN_ARCHIVE_RE = re.compile(
    r"^(?:rubin|lsst)(?:_[a-z0-9]+)*?_([0-9]{8})(?:_[a-z0-9]+)*\.(?:tar\.gz|tgz)$", re.I
)
#: Loose files bigger than this are a unit each (a Parquet export of many alerts).
BIG_FILE = 8 << 20

Key = tuple[str, int]


def archive_placement(name: str) -> tuple[str, int] | None:
    """``(survey, night)`` of a nightly archive's file name, or None for another name."""
    m = ZTF_ARCHIVE_RE.match(name)
    if m and is_night(m.group(1)):
        return "ztf", shift_night(int(m.group(1)), -1)  # UT date -> Palomar's evening
    m = RUBIN_ARCHIVE_RE.match(name)
    if m and is_night(m.group(1)):
        return "rubin", int(m.group(1))
    return None


@dataclass
class Placed:
    """Alert inputs placed in nights."""

    units: dict[Key, list[Unit]] = field(default_factory=dict)
    #: Fingerprint lines (path, size, mtime) of the inputs of each night.
    lines: dict[Key, list[str]] = field(default_factory=dict)
    unplaced: list[tuple[str, str]] = field(default_factory=list)
    other_nights: set[int] = field(default_factory=set)
    n_files: int = 0
    n_archives: int = 0


@dataclass
class _Input:
    path: str
    dirpath: str
    parts: tuple[str, ...]
    archive: bool


class AlertInputs:
    """Collects the alert inputs met during the walk; :meth:`place` places them after it."""

    def __init__(self) -> None:
        self.inputs: list[_Input] = []
        self.schemas: list[str] = []

    def take(self, dirpath: str, fname: str, parts: tuple[str, ...]) -> bool:
        """Keep ``fname`` when it is an alert input or a schema file; say whether it was."""
        path = os.path.join(dirpath, fname)
        if fname.lower().endswith(".avsc"):
            self.schemas.append(path)
            return True
        archive = is_alert_archive(fname)
        if not (archive or is_alert_file(fname)):
            return False
        self.inputs.append(_Input(path, dirpath, parts, archive))
        return True

    def __bool__(self) -> bool:
        return bool(self.inputs)

    def place(
        self,
        raw: str | Path,
        *,
        unit_stamps: int,
        nights: set[int] | None = None,
        content: bool = False,
    ) -> Placed:
        """Place every collected input (see the module docstring)."""
        raw = str(raw)
        out = Placed()
        schemas = tuple(sorted(self.schemas))
        registry = SchemaRegistry(schemas)
        schema_lines = [raw_identity(p, raw, content) for p in schemas]
        dated: dict[tuple[Key, str], list[str]] = defaultdict(list)  # loose files by night
        archives: dict[tuple[Key, str], list[str]] = defaultdict(list)
        by_data: dict[tuple[Key, str], list[str]] = defaultdict(list)
        dir_survey: dict[str, str | None] = {}
        for inp in self.inputs:
            name = os.path.basename(inp.path)
            season_dir = next((p for p in reversed(inp.parts) if ALERT_SEASON_RE.match(p)), None)
            night = next((int(p) for p in reversed(inp.parts) if is_night(p)), None)
            survey = survey_of_season(season_dir) if season_dir else None
            by_name = archive_placement(name) if inp.archive else None
            if by_name is not None:
                survey = survey or by_name[0]
                night = by_name[1]
            if survey is None:
                survey = self._peek(inp, dir_survey, registry)
            if night is None and inp.archive:
                out.unplaced.append(
                    (inp.path, "alert archive without a night: name it like "
                     "ztf_public_YYYYMMDD.tar.gz or put it in a <YYYYMMDD> folder")
                )  # fmt: skip
                continue
            if night is not None:
                if survey is None:
                    out.unplaced.append((inp.path, "not a ZTF or Rubin alert file or archive"))
                    continue
                if nights is not None and night not in nights:
                    out.other_nights.add(night)
                    continue
                key = (_season(season_dir, survey, night), night)
                (archives if inp.archive else dated)[(key, survey)].append(inp.path)
                continue
            self._date(inp.path, season_dir, registry, by_data, out)
        for (key, survey), paths in sorted(archives.items()):
            for p in paths:
                self._add(out, key, Unit(key[0], key[1], 0, archive=p, survey=survey,
                                         schemas=schemas), [p], raw, content)  # fmt: skip
                out.n_archives += 1
        for source, from_data in ((dated, False), (by_data, True)):
            for (key, survey), paths in sorted(source.items()):
                if nights is not None and key[1] not in nights:
                    out.other_nights.add(key[1])
                    continue
                for chunk in _chunks(sorted(paths), unit_stamps):
                    unit = Unit(key[0], key[1], 0, survey=survey, alert_files=tuple(chunk),
                                date_from_data=from_data, schemas=schemas)  # fmt: skip
                    self._add(out, key, unit, chunk, raw, content)
                out.n_files += len(paths)
        for key in out.lines:
            out.lines[key].extend(schema_lines)
        return out

    @staticmethod
    def _add(out: Placed, key: Key, unit: Unit, paths: list[str], raw: str, content: bool) -> None:
        out.units.setdefault(key, []).append(unit)
        out.lines.setdefault(key, []).extend(raw_identity(p, raw, content) for p in paths)

    @staticmethod
    def _peek(inp: _Input, cache: dict[str, str | None], registry: SchemaRegistry) -> str | None:
        """The survey of a folder's alert inputs, from the head of its first readable one."""
        if cache.get(inp.dirpath) is None:
            cache[inp.dirpath] = survey_of_schema_name(peek_schema_name(inp.path, registry))
        return cache[inp.dirpath]

    @staticmethod
    def _date(
        path: str,
        season_dir: str | None,
        registry: SchemaRegistry,
        by_data: dict[tuple[Key, str], list[str]],
        out: Placed,
    ) -> None:
        """Sort the alerts of an undated file into nights (reading it once, here)."""
        keys: set[tuple[Key, str]] = set()
        for where, rec in iter_path(path, registry):
            if isinstance(rec, AlertReadError):
                out.unplaced.append((where, str(rec)))
                continue
            survey = survey_of_record(rec)
            if survey is None:
                out.unplaced.append((where, "not a ZTF or Rubin alert packet"))
                continue
            try:
                night = record_night(rec, get_survey(survey))
            except StampError as exc:
                out.unplaced.append((where, str(exc)))
                continue
            keys.add(((_season(season_dir, survey, night), night), survey))
        for k in keys:
            by_data[k].append(path)


def _season(season_dir: str | None, survey: str, night: int) -> str:
    if season_dir and survey_of_season(season_dir) == survey:
        return season_dir
    return alert_season(survey, night)


def _chunks(paths: list[str], per_unit: int) -> list[list[str]]:
    """Files in units of ``per_unit`` (a big file is a unit of its own)."""
    out: list[list[str]] = []
    cur: list[str] = []
    for p in paths:
        if os.path.getsize(p) > BIG_FILE:
            out.append([p])
            continue
        cur.append(p)
        if len(cur) == per_unit:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out
