"""What a stored night was made from, and whether it is done: the one test of "current".

A night dataset records in its attribute ``night_fingerprint`` (:data:`FINGERPRINT_ATTR`) the raw
inputs, labels and settings it was made from (:func:`night_fingerprint`; for float stamps also
their encoding, :func:`stored_fingerprint`). It is *current* (:func:`current_night`) when it is
complete (:func:`s2v_batch.store.dataset.verify_night`), its quarantine table holds the rows it records,
and that fingerprint matches what the same inputs would give today. Ingest skips current nights;
planning and scoring ask the same question here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from s2v_batch.core import encoding as enc
from s2v_batch.core.faults import environment_fault
from s2v_batch.store.dataset import (
    quarantine_path,
    read_labels,
    read_stamp_ids,
    stamps_array,
    verify_night,
)

#: Bumped when the stored layout changes, so finished nights are re-ingested.
FORMAT_VERSION = "1"
#: The night's raw fingerprint (what tells "its raw files changed" from other reasons).
RAW_FINGERPRINT_ATTR = "raw_fingerprint"
#: The digest of the night's label array (:func:`labels_fingerprint`).
LABELS_ATTR = "labels_fingerprint"
#: Why a night must be ingested (:func:`night_status`).
NOT_STORED = "not stored"
INCOMPLETE = "incomplete"
RAW_CHANGED = "its raw files changed"
SETTINGS_CHANGED = "its ingest settings changed"
CHANGED = "its raw files or ingest settings changed"
LABELS_CHANGED = "its labels changed"
#: The attribute holding :func:`night_fingerprint`; stores written before 0.2 call it
#: ``input_fingerprint`` (still read).
FINGERPRINT_ATTR = "night_fingerprint"
_OLD_FINGERPRINT_ATTRS = ("input_fingerprint",)


def night_fingerprint(raw_fingerprint: str, stamp_size: int, edge: str | None = None) -> str:
    """What a stored night's pixels must match to be current: its raw inputs, stamp size, format.

    Labels are not part of it: they are a small array a night's labels update rewrites in place
    (:func:`labels_status`), without reading its pixels again.

    Parameters
    ----------
    raw_fingerprint : str
        The night's raw inputs (``rawtree.Discovery.raw_fingerprints``: paths relative to the
        raw root, sizes, mtimes; so a raw tree moved or copied with ``cp -a`` keeps it).
    stamp_size : int
        Stamp edge in pixels.
    edge : str, optional
        How alert cut-outs cut short by a CCD edge are handled (``IngestConfig.edge_for``);
        None (DES, and the default) leaves the fingerprint as it was before the choice.

    Returns
    -------
    str
        A sha256 hex digest.
    """
    h = hashlib.sha256()
    # The empty part stood for the labels CSV before labels left the fingerprint: nights
    # ingested without labels keep their fingerprint.
    parts = [raw_fingerprint, "", str(int(stamp_size)), FORMAT_VERSION]
    if edge is not None:
        parts.append(f"edge={edge}")
    for part in parts:
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def labels_fingerprint(labels: np.ndarray) -> str:
    """A digest of a night's label array (int8, in stamp order)."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int8).tobytes()).hexdigest()


def stored_fingerprint(night_fp: str, dtype: np.dtype | str, float_encoding: str) -> str:
    """The fingerprint a night of ``dtype`` records: ``night_fp``, and for float stamps not
    stored losslessly also their encoding (the pixels depend on it; uint8 pixels do not)."""
    applied = enc.applied(dtype, float_encoding)
    if applied == enc.LOSSLESS:
        return night_fp
    return hashlib.sha256(f"{night_fp}\0{applied}".encode()).hexdigest()


def fingerprint_of(attrs: Mapping[str, Any]) -> str | None:
    """The night fingerprint recorded in a dataset's attributes (old attribute names too)."""
    for name in (FINGERPRINT_ATTR, *_OLD_FINGERPRINT_ATTRS):
        if attrs.get(name):
            return str(attrs[name])
    return None


def night_status(
    path: str | Path, night_fp: str, float_encoding: str = enc.LOSSLESS, raw_fp: str | None = None
) -> tuple[dict[str, Any] | None, str | None]:
    """Whether a stored night is current, and if not, why: the one test of "this night's pixels
    are done" that ingest (to skip it) and planning use.

    Returns
    -------
    (dict or None, str or None)
        The night's attributes when it is complete and made from ``night_fp`` (for float stamps
        also stored in ``float_encoding``), and None; else None and the reason it must be
        ingested: ``not stored``, ``incomplete``, ``its raw files changed`` (``raw_fp`` differs
        from the one it records), ``its ingest settings changed``, or, where it records none,
        ``its raw files or ingest settings changed``.
    """
    if not Path(path).exists():
        return None, NOT_STORED
    attrs = verify_night(path)
    if attrs is None or not _quarantine_matches(path, attrs):
        return None, INCOMPLETE
    expected = stored_fingerprint(night_fp, stamps_array(path).dtype, float_encoding)
    if fingerprint_of(attrs) == expected:
        return attrs, None
    recorded = attrs.get(RAW_FINGERPRINT_ATTR)
    if recorded is None or raw_fp is None:  # stored before 0.2 recorded it: cannot tell which
        return None, CHANGED
    return None, SETTINGS_CHANGED if recorded == raw_fp else RAW_CHANGED


def current_night(
    path: str | Path, night_fp: str, float_encoding: str = enc.LOSSLESS
) -> dict[str, Any] | None:
    """The attributes of a night dataset that is complete and made from ``night_fp`` (and, for
    float stamps, stored in ``float_encoding``); else None (:func:`night_status`)."""
    return night_status(path, night_fp, float_encoding)[0]


def labels_status(
    path: str | Path, attrs: Mapping[str, Any], lookup: Callable[[np.ndarray], np.ndarray] | None
) -> np.ndarray | None:
    """The labels a current night must be given, or None when it holds them already.

    ``lookup`` maps stamp IDs to labels (``Labels.lookup``); None means no labels (every -1).
    Reads the night's small ``stamp_id`` array only when a labels CSV is given.
    """
    n = int(attrs["n_stamps"])
    want = lookup(read_stamp_ids(path)) if lookup is not None else np.full(n, -1, np.int8)
    have = attrs.get(LABELS_ATTR)
    if have is None:  # stored before the digest was kept: compare with the array itself
        have = labels_fingerprint(read_labels(path))
    return None if labels_fingerprint(want) == have else np.asarray(want, np.int8)


def night_labels_fingerprint(path: str | Path, attrs: Mapping[str, Any]) -> str:
    """The digest of a stored night's labels (its attribute, else computed from the array)."""
    have = attrs.get(LABELS_ATTR)
    return str(have) if have is not None else labels_fingerprint(read_labels(path))


def _quarantine_matches(path: str | Path, attrs: Mapping[str, Any]) -> bool:
    """Whether the night's quarantine table holds the ``n_quarantined`` rows its dataset records
    (an ingest stopped between publishing the two is redone, never taken for done)."""
    path = Path(path)
    qpath = quarantine_path(path.parent.parent, path.parent.name, int(path.stem))
    expected = int(attrs.get("n_quarantined", 0))
    try:
        return pq.ParquetFile(qpath).metadata.num_rows == expected
    except FileNotFoundError:
        return expected == 0
    except Exception as exc:
        if environment_fault(exc):
            raise
        return False
