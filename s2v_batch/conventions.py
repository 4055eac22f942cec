"""Conventions fixed by DESIGN.md section 3: channels, labels, score direction, seasons, nights."""

from __future__ import annotations

import re

import numpy as np

#: Channel order everywhere: search, template, difference.
CHANNELS: tuple[str, str, str] = ("srch", "temp", "diff")
#: Default stamp edge in pixels (DES); other surveys use 63.
STAMP_SIZE = 51

LABEL_REAL = 1
LABEL_ARTIFACT = 0
LABEL_UNKNOWN = -1

SEASON_RE = re.compile(r"^(SV|Y[0-9]+)$")
NIGHT_RE = re.compile(r"^(19|20)[0-9]{2}(0[1-9]|1[0-2])(0[1-9]|[12][0-9]|3[01])$")


def object_type_to_label(object_type: np.ndarray) -> np.ndarray:
    """Convert autoscan ``OBJECT_TYPE`` codes to project labels.

    autoscan codes 0 = real, 1 = artifact; the project uses 1 = real, 0 = artifact,
    -1 = unknown. Anything else (missing, NaN, other codes) becomes -1.

    Parameters
    ----------
    object_type : numpy.ndarray
        The ``OBJECT_TYPE`` column, any numeric dtype (floats may hold NaN).

    Returns
    -------
    numpy.ndarray
        int8 labels.
    """
    ot = np.asarray(object_type, dtype="float64")
    out = np.full(ot.shape, LABEL_UNKNOWN, dtype=np.int8)
    out[ot == 0] = LABEL_REAL
    out[ot == 1] = LABEL_ARTIFACT
    return out


def label_to_object_type(label: np.ndarray) -> np.ndarray:
    """Inverse of :func:`object_type_to_label` for known labels (used by the simulator)."""
    lab = np.asarray(label)
    if np.any((lab != LABEL_REAL) & (lab != LABEL_ARTIFACT)):
        raise ValueError("only known labels (0 or 1) have an autoscan OBJECT_TYPE")
    return np.where(lab == LABEL_REAL, 0, 1).astype(np.int8)


def is_season(name: str) -> bool:
    """True when ``name`` looks like a DES season (``SV``, ``Y1`` ...)."""
    return bool(SEASON_RE.match(name))


def is_night(name: str) -> bool:
    """True when ``name`` is a plausible ``YYYYMMDD`` night."""
    return bool(NIGHT_RE.match(name))
