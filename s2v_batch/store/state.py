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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from s2v_batch.core import encoding as enc
from s2v_batch.core.faults import environment_fault
from s2v_batch.store.dataset import quarantine_path, stamps_array, verify_night

#: Bumped when the stored layout changes, so finished nights are re-ingested.
FORMAT_VERSION = "1"
#: The attribute holding :func:`night_fingerprint`; stores written before 0.2 call it
#: ``input_fingerprint`` (still read).
FINGERPRINT_ATTR = "night_fingerprint"
_OLD_FINGERPRINT_ATTRS = ("input_fingerprint",)


def night_fingerprint(raw_fingerprint: str, labels_fingerprint: str | None, stamp_size: int) -> str:
    """What a stored night must match to be current: its raw inputs, labels, stamp size, format.

    Parameters
    ----------
    raw_fingerprint : str
        The night's raw inputs (``rawtree.Discovery.fingerprints``: paths, sizes, mtimes).
    labels_fingerprint : str, optional
        The labels CSV's :func:`~s2v_batch.core.fsutil.file_identity` (None: no labels).
    stamp_size : int
        Stamp edge in pixels.

    Returns
    -------
    str
        A sha256 hex digest.
    """
    h = hashlib.sha256()
    for part in (raw_fingerprint, labels_fingerprint or "", str(int(stamp_size)), FORMAT_VERSION):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


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


def current_night(
    path: str | Path, night_fp: str, float_encoding: str = enc.LOSSLESS
) -> dict[str, Any] | None:
    """The attributes of a night dataset that is complete and made from ``night_fp`` (and, for
    float stamps, stored in ``float_encoding``); else None.

    The one test of "this night is done" that ingest (to skip it) and planning use.
    """
    attrs = verify_night(path)
    if attrs is None or not _quarantine_matches(path, attrs):
        return None
    expected = stored_fingerprint(night_fp, stamps_array(path).dtype, float_encoding)
    return attrs if fingerprint_of(attrs) == expected else None


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
