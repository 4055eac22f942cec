"""Splits by hash and the training error: numpy only, so a real-data check can import them.

:func:`split_of` splits stamps by ``stamp_id`` (re-exported by :mod:`s2v_batch.training.data`);
:mod:`s2v_batch.training.realsets` splits real stamps by group with the same :func:`splitmix64`.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "SPLIT_FRACTIONS",
    "SPLIT_NAMES",
    "TEST",
    "TRAIN",
    "VALIDATION",
    "TrainingError",
    "split_of",
    "splitmix64",
]

#: Split codes: 0 train, 1 validation, 2 test (-1: not used, e.g. unlabelled).
SPLIT_NAMES: tuple[str, str, str] = ("train", "validation", "test")
#: Fractions of the hash interval [0, 1) given to train, validation and test.
SPLIT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
TRAIN, VALIDATION, TEST = 0, 1, 2


class TrainingError(ValueError):
    """Training cannot start or cannot finish meaningfully (the message says why)."""


def splitmix64(values: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser of int64 values, as uint64 (a fast, well-mixed 64-bit hash).

    Parameters
    ----------
    values : numpy.ndarray
        Integers (e.g. ``stamp_id``).

    Returns
    -------
    numpy.ndarray
        uint64 hashes, same shape.
    """
    z = np.asarray(values).astype(np.int64).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def split_of(stamp_id: np.ndarray) -> np.ndarray:
    """The split of each stamp (0 train, 1 validation, 2 test), fixed by its ``stamp_id``.

    ``u = splitmix64(stamp_id) / 2**64`` (top 53 bits); train when ``u < 0.8``, validation when
    ``u < 0.9``, test otherwise.

    Parameters
    ----------
    stamp_id : numpy.ndarray
        int64 stamp IDs.

    Returns
    -------
    numpy.ndarray
        int8 split codes.
    """
    u = (splitmix64(stamp_id) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    cuts = np.cumsum(SPLIT_FRACTIONS)[:-1]
    return np.searchsorted(cuts, u, side="right").astype(np.int8)
