"""Labelled real stamps as ``.npz`` files ("realsets"): reading them, and their held-out split.

A realset (written by ``benchmarks/realdata/check.py --export``) holds ``x`` (``(n, S, S, 3)``
uint8 or float32, channels srch, temp, diff, pixels as ingest stores them), ``y`` (int8, 1 real,
0 artifact), ``ids`` and ``group`` (str per stamp), and 0-d str ``source`` and ``survey``.
Training reads them for ``--choose-on`` (the epoch kept is the best on them) and ``--real-train``
(mixed into the training batches).

**The split of a realset** (:func:`heldout_groups`): by ``group`` (ZTF: objectId; the DES sample:
the stamp's id), so the stamps of one object stay together. ``h`` = the first 8 bytes of
``sha256(group.encode("utf-8"))`` read as a little-endian signed int64; ``u =
splitmix64(h) / 2**64`` (top 53 bits, as :func:`s2v_batch.training.data.split_of`); a group is
for training when ``u < 0.8`` and held out otherwise. ``--real-train`` uses only the training
groups; a real-data check of a model so trained must use only the held-out ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from s2v_batch.training.splits import SPLIT_FRACTIONS, TrainingError, splitmix64

__all__ = [
    "REAL_TRAIN_FRACTION",
    "RealSet",
    "group_hash",
    "heldout_groups",
    "load_realset",
]

#: Fraction of the hash interval whose groups ``--real-train`` may use (the stamp split's train).
REAL_TRAIN_FRACTION: float = SPLIT_FRACTIONS[0]

REALSET_KEYS = ("x", "y", "ids", "group", "source", "survey")


@dataclasses.dataclass
class RealSet:
    """One realset file, checked; ``x`` as stored (uint8 or float32)."""

    path: Path
    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    group: np.ndarray
    source: str
    survey: str

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, keep: np.ndarray) -> RealSet:
        """The stamps where ``keep`` (bool) is true."""
        return dataclasses.replace(
            self, x=self.x[keep], y=self.y[keep], ids=self.ids[keep], group=self.group[keep]
        )

    def facts(self) -> dict[str, object]:
        """What a card records of it: path, source, survey, stamps and reals."""
        return {
            "path": str(self.path),
            "source": self.source,
            "survey": self.survey,
            "n": len(self),
            "n_real": int((self.y == 1).sum()),
            "n_groups": len(np.unique(self.group)),
        }


def group_hash(groups: Sequence[str] | np.ndarray) -> np.ndarray:
    """int64 per group string: the first 8 bytes of its UTF-8 sha256, little-endian, signed."""
    return np.array(
        [
            int.from_bytes(
                hashlib.sha256(str(g).encode("utf-8")).digest()[:8], "little", signed=True
            )
            for g in np.asarray(groups).ravel()
        ],
        dtype=np.int64,
    )


def heldout_groups(groups: Sequence[str] | np.ndarray) -> np.ndarray:
    """True for the stamps whose group is held out of ``--real-train`` (module docstring).

    Parameters
    ----------
    groups : sequence of str
        The realset's ``group`` values.

    Returns
    -------
    numpy.ndarray
        bool per stamp: held out (``u >= 0.8``); False: may be trained on.
    """
    h = group_hash(groups)
    u = (splitmix64(h) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return u >= REAL_TRAIN_FRACTION


def _text(z: np.lib.npyio.NpzFile, key: str, path: Path) -> str:
    v = np.asarray(z[key])
    if v.ndim != 0 or v.dtype.kind not in "US":
        raise TrainingError(f"{path}: realset key {key!r} must be a 0-d string array")
    return str(v.item() if v.dtype.kind == "U" else v.item().decode())


def load_realset(path: str | os.PathLike[str]) -> RealSet:
    """Read and check a realset ``.npz`` (keys in the module docstring).

    Raises
    ------
    TrainingError
        A missing or unreadable file, a missing key, or values of the wrong shape or kind.
    """
    p = Path(path)
    if not p.is_file():
        raise TrainingError(f"realset {p} does not exist")
    if not zipfile.is_zipfile(p):
        raise TrainingError(f"{p}: not a .npz realset (not a zip archive)")
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in REALSET_KEYS if k not in z.files]
            if missing:
                raise TrainingError(f"{p}: not a realset: keys {missing} missing")
            x, y = np.asarray(z["x"]), np.asarray(z["y"])
            ids, group = np.asarray(z["ids"]).astype(str), np.asarray(z["group"]).astype(str)
            source, survey = _text(z, "source", p), _text(z, "survey", p)
    except TrainingError:
        raise
    except Exception as exc:  # np.load raises several types for a foreign file
        raise TrainingError(f"{p}: not a readable .npz realset: {exc}") from exc
    if x.ndim != 4 or x.shape[3] != 3 or x.shape[1] != x.shape[2]:
        raise TrainingError(f"{p}: x must be (n, S, S, 3), found {x.shape}")
    if x.dtype != np.uint8:
        if x.dtype.kind not in "fiu":
            raise TrainingError(f"{p}: x must be uint8 or float32, found {x.dtype}")
        x = x.astype(np.float32)
    n = x.shape[0]
    if y.shape != (n,) or ids.shape != (n,) or group.shape != (n,):
        raise TrainingError(f"{p}: y, ids and group must have one value per stamp ({n})")
    if n == 0:
        raise TrainingError(f"{p}: the realset holds no stamps")
    if not np.isin(y, (0, 1)).all():
        raise TrainingError(f"{p}: y must be 1 (real) or 0 (artifact)")
    return RealSet(p, x, y.astype(np.int8), ids, group, source, survey)
