"""What each night of a raw tree needs from ingest, and why: nothing, new labels, or its pixels.

The one answer that ingest (to skip or relabel a night), the pipeline's plan and ``--dry-run``
use. A night is judged by what it was made from (:mod:`s2v_batch.store.state`): its own raw
files (paths relative to the raw root, sizes, mtimes), the stamp size and format; its labels
are judged apart, by the label rows of its own stamp IDs, so that another season's labels
appended to a shared CSV leave it alone, and a change of its own labels rewrites its small label
array without reading its pixels again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s2v_batch.core.config import IngestConfig
from s2v_batch.core.conventions import survey_of_season
from s2v_batch.ingest.labels import Labels
from s2v_batch.ingest.rawtree import Discovery
from s2v_batch.store import dataset as zstore
from s2v_batch.store import state as nightstate

#: What a night needs.
CURRENT = "current"
RELABEL = "relabel"
INGEST = "ingest"


@dataclass
class NightNeed:
    """What one night needs from ingest, and why (``reason`` is None for a current night)."""

    season: str
    night: int
    need: str  # CURRENT | RELABEL | INGEST
    reason: str | None
    night_fp: str
    #: The stored night's attributes (a current or relabelled night), else None.
    attrs: dict[str, Any] | None = None
    #: The labels to write (RELABEL only).
    labels: np.ndarray | None = None

    @property
    def key(self) -> tuple[str, int]:
        return self.season, self.night


def night_need(
    disc: Discovery,
    key: tuple[str, int],
    store_root: str | Path,
    lab: Labels | None,
    cfg: IngestConfig,
) -> NightNeed:
    """What one discovered night needs (see the module docstring)."""
    raw_fp = disc.raw_fingerprints[key]
    survey = survey_of_season(key[0])
    night_fp = nightstate.night_fingerprint(raw_fp, cfg.size_for(survey), cfg.edge_for(survey))
    path = zstore.night_path(store_root, *key)
    attrs, reason = nightstate.night_status(path, night_fp, cfg.float_encoding, raw_fp=raw_fp)
    if attrs is None:
        return NightNeed(*key, INGEST, reason, night_fp)
    labels = nightstate.labels_status(path, attrs, lab.lookup if lab is not None else None)
    if labels is not None:
        return NightNeed(*key, RELABEL, nightstate.LABELS_CHANGED, night_fp, attrs, labels)
    return NightNeed(*key, CURRENT, None, night_fp, attrs)


def relabel(need: NightNeed, store_root: str | Path) -> dict[str, Any]:
    """Write a night's new labels in place (its pixels untouched); return its attributes."""
    path = zstore.night_path(store_root, *need.key)
    digest = nightstate.labels_fingerprint(need.labels)
    labelled = bool((need.labels >= 0).any())
    new = {nightstate.LABELS_ATTR: digest, "labelled": labelled}
    zstore.write_labels(path, need.labels, **new)
    return {**(need.attrs or {}), **new}
