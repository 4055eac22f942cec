"""The units of ingest work and what reading one gives: the types that discovery, the readers and
staging share.

A :class:`Unit` is a group of loose stamps, one tar archive, or a set of alert inputs, of one
night; reading it (:func:`s2v_batch.ingest.stamps.read_unit`,
:func:`s2v_batch.ingest.alertunits.read_alert_unit`) gives :class:`UnitData`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from s2v_batch.core.conventions import CHANNELS

STAMP_FILE_RE = re.compile(r"^(srch|temp|diff)(.*)\.(gif|fits|fit|fts)$", re.IGNORECASE)


CHANNEL_INDEX = {c: i for i, c in enumerate(CHANNELS)}


@dataclass(frozen=True)
class Unit:
    """A unit of ingest work: a group of loose stamps, or one tar archive, of one night."""

    season: str
    night: int
    index: int
    archive: str | None = None
    #: For loose files: ``(id_text, (srch_path, temp_path, diff_path))``, ``None`` where missing.
    stamps: tuple[tuple[str, tuple[str | None, str | None, str | None]], ...] = ()
    #: ``des`` (stamp files or a ``.tar``), or ``ztf`` / ``rubin``: alert packets in ``archive``
    #: (a ``.tar.gz``) or in ``alert_files`` (``.avro`` / ``.parquet``); see ``alerttree``.
    survey: str = "des"
    alert_files: tuple[str, ...] = ()
    #: The files' alerts are sorted into nights by their detection time: this unit takes those
    #: of its own night only (a file of several nights is in several units).
    date_from_data: bool = False
    #: ``.avsc`` files of the raw tree, for framed (schemaless) alert records.
    schemas: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """Deterministic name of the unit within its night."""
        return f"unit-{self.index:06d}"

    def files(self) -> list[str]:
        """The raw files this unit reads (its archive, stamp files or alert files)."""
        out = [self.archive] if self.archive else []
        out += [p for _, paths in self.stamps for p in paths if p is not None]
        return out + list(self.alert_files)


@dataclass
class UnitData:
    """The decoded stamps of one unit and the quarantine records of the rest."""

    pixels: np.ndarray
    stamp_id: np.ndarray
    masked_fraction: np.ndarray
    paths: list[str]
    quarantine: list[dict]
    n_found: int
    #: Alert fields kept per stamp (``surveys.Survey.columns``), aligned with ``stamp_id``;
    #: empty for DES stamps.
    meta: dict[str, np.ndarray] = field(default_factory=dict)
