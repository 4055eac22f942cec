"""Where a night's stamps came from: the simulator, or a survey. The one marker and its reading.

The simulator (``s2v simulate``) leaves a marker file, :data:`MARKER`, in each folder it writes
data into, naming the entries it wrote there (night folders, archives, alert files) and how (the
simulator's version and seed). Ingest asks :func:`classify` about a night's raw files: those
under an entry a marker names are simulated; the rest are a survey's. A night is ``simulated``,
``survey``, or ``mixed``; a night stored before provenance was recorded reads as ``unknown``
(:func:`of_attrs`).

Nothing else in a file says it was simulated, on purpose: real alert archives and DES files carry
no such marker, and a marker that a user copies along with the simulated files it names keeps
meaning the same thing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s2v_batch.core.fsutil import write_bytes_atomic

#: The marker the simulator writes into each folder it writes data into.
MARKER = "_s2v_simulated.json"
SIMULATED = "simulated"
SURVEY = "survey"
MIXED = "mixed"
UNKNOWN = "unknown"
KINDS = (SIMULATED, SURVEY, MIXED, UNKNOWN)
#: Night attributes (and manifest keys) that hold a night's provenance and its evidence.
ATTR = "data_provenance"
EVIDENCE_ATTR = "data_evidence"
#: At most this many file names are quoted as evidence of survey data.
_QUOTED = 5


def write_marker(folder: str | os.PathLike[str], entries: Iterable[str], **how: Any) -> Path:
    """Record that the simulator wrote ``entries`` (names inside ``folder``), merging with an
    existing marker there (a second season or night simulated into the same folder).

    Parameters
    ----------
    folder : path
        The folder written into.
    entries : iterable of str
        Names of the files or folders written directly inside ``folder``.
    **how
        What made them: ``version``, ``seed``, ``survey``, ``season`` ... (JSON values).

    Returns
    -------
    pathlib.Path
        The marker's path.
    """
    path = Path(folder) / MARKER
    old = _read(path) or {}
    written = dict(old.get("written", {}))
    for name in entries:
        written[str(name)] = {k: v for k, v in how.items() if v is not None}
    doc = {"generator": "s2v-batch simulator", "written": dict(sorted(written.items()))}
    write_bytes_atomic(path, json.dumps(doc, indent=1).encode())
    return path


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("written"), dict) else None


@dataclass
class Classifier:
    """Classifies raw files by the markers found between them and ``root``; markers are read once
    per folder."""

    root: Path
    _markers: dict[Path, dict[str, Any] | None] = field(default_factory=dict)

    def marked(self, path: str | os.PathLike[str]) -> dict[str, Any] | None:
        """How the simulator made ``path`` (its marker's entry), or None for a survey's file."""
        p = Path(path)
        root = self.root if self.root.is_dir() else self.root.parent
        while True:
            parent = p.parent
            if parent not in self._markers:
                self._markers[parent] = _read(parent / MARKER)
            doc = self._markers[parent]
            if doc is not None and p.name in doc["written"]:
                return doc["written"][p.name]
            if parent == root or parent == p or root not in parent.parents:
                return None
            p = parent

    def night(self, files: Iterable[str | os.PathLike[str]]) -> tuple[str, dict[str, Any]]:
        """The provenance of a night made from ``files``, and its evidence.

        Returns
        -------
        (str, dict)
            ``simulated``, ``survey`` or ``mixed``; the evidence: for simulated files how the
            simulator made them (distinct versions, seeds), for survey files their count and
            the first few names.
        """
        sims: list[dict[str, Any]] = []
        survey: list[str] = []
        for f in files:
            how = self.marked(f)
            if how is None:
                survey.append(os.path.relpath(f, self.root))
            elif how not in sims:
                sims.append(how)
        evidence: dict[str, Any] = {}
        if sims:
            evidence["simulator"] = sims
        if survey:
            evidence["survey_files"] = {"n": len(survey), "first": sorted(survey)[:_QUOTED]}
        kind = MIXED if sims and survey else SIMULATED if sims else SURVEY
        return kind, evidence


def of_attrs(attrs: Mapping[str, Any]) -> str:
    """A stored night's data provenance (``unknown`` for a night stored before it was kept)."""
    kind = attrs.get(ATTR)
    return str(kind) if kind in KINDS else UNKNOWN


def combine(kinds: Iterable[str | None]) -> str:
    """The provenance of several nights together: one kind, else ``mixed`` (unknown with a
    known kind is mixed too: a reader cannot vouch for the whole)."""
    found = {k if k in KINDS else UNKNOWN for k in kinds}
    if not found:
        return UNKNOWN
    return found.pop() if len(found) == 1 else MIXED
