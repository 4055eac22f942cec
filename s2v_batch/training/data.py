"""The labelled stamps training reads: splits, augmentation and streaming batches of Zarr nights.

The stores are never loaded whole: stamps are read a unit (a few hundred stamps, whole Zarr
chunks) at a time (:class:`LabelledNights`). Training order per epoch (:class:`TrainBatches`):
the units in a random order, grouped into windows of about ``shuffle_window`` stamps, each window
shuffled (a shuffle buffer across chunks and nights), then random 90-degree rotations and flips
(:func:`augment`). Every batch is a pure function of ``(seed, epoch, batch index)``, so Keras may
peek at batches or ask for them again without changing the run.

Splits are fixed by a hash of ``stamp_id`` (:func:`split_of`: splitmix64 -> [0, 1): 80 % train,
10 % validation, 10 % test), so a stamp never moves between splits across runs, stores or formats
(the gif and the fits copy of a stamp land in the same split). Unlabelled stamps (-1) are skipped.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from s2v_batch.core.conventions import CHANNELS, LABEL_ARTIFACT, LABEL_REAL, LABEL_UNKNOWN
from s2v_batch.model.backend import keras

__all__ = [
    "SPLIT_FRACTIONS",
    "SPLIT_NAMES",
    "TEST",
    "TRAIN",
    "VALIDATION",
    "EvalBatches",
    "LabelledNights",
    "TrainBatches",
    "TrainingError",
    "augment",
    "resolve_nights",
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


# --------------------------------------------------------------------------------------------
# Splits and augmentation
# --------------------------------------------------------------------------------------------


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


def augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random 90-degree rotations and flips, one of the 8 symmetries of the square per stamp.

    A stamp's class does not depend on its orientation on the sky, and all three channels turn
    together.

    Parameters
    ----------
    x : numpy.ndarray
        ``(n, h, w, c)`` stamps (square).
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray
        A new array of the same shape and dtype.
    """
    code = rng.integers(0, 8, size=x.shape[0])
    out = np.empty_like(x)
    for c in np.unique(code):
        sel = code == c
        y = np.rot90(x[sel], k=int(c) % 4, axes=(1, 2))
        out[sel] = y[:, :, ::-1] if c >= 4 else y
    return out


# --------------------------------------------------------------------------------------------
# The labelled stamps of many nights, read a unit at a time
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Night:
    path: Path
    stamps: Any  # zarr.Array
    split: np.ndarray  # int8 per stamp, -1 where unlabelled
    label: np.ndarray  # int8
    dtype: np.dtype


class LabelledNights:
    """All labelled stamps of the given nights, addressed by units of whole Zarr chunks.

    Parameters
    ----------
    night_paths : sequence of path
        Night datasets of one stamp shape.
    unit_stamps : int
        Stamps a unit, rounded to whole Zarr chunks.
    relabel : mapping, optional
        Night path -> {stamp_id: label}: these labels (people's verdicts) replace the stored
        ones of those stamps; the other stamps keep theirs.

    Raises
    ------
    TrainingError
        For an unreadable night, stamps of another shape, or labels other than 1, 0, -1.
    """

    def __init__(
        self,
        night_paths: Sequence[Path],
        unit_stamps: int = 512,
        relabel: Mapping[Path, Mapping[int, int]] | None = None,
    ) -> None:
        import zarr

        self.nights: list[_Night] = []
        self.units: list[tuple[int, int, int]] = []  # (night, start, stop)
        shape: tuple[int, ...] | None = None
        for path in night_paths:
            try:
                group = zarr.open_group(path, mode="r")
                stamps = group["stamps"]
                stamp_id = np.asarray(group["stamp_id"][:])
                label = np.asarray(group["label"][:]).astype(np.int8)
            except Exception as exc:  # zarr raises several types for a foreign folder
                raise TrainingError(f"{path}: not a readable night dataset: {exc}") from exc
            if stamps.ndim != 4 or stamps.shape[3] != len(CHANNELS):
                raise TrainingError(f"{path}: stamps must be (n, h, w, 3), found {stamps.shape}")
            if shape is None:
                shape = tuple(stamps.shape[1:])
            elif tuple(stamps.shape[1:]) != shape:
                raise TrainingError(
                    f"{path}: stamps of shape {tuple(stamps.shape[1:])}, other nights have {shape}"
                )
            if len(stamp_id) != stamps.shape[0] or len(label) != stamps.shape[0]:
                raise TrainingError(f"{path}: stamp_id/label lengths differ from the stamps")
            given = relabel.get(Path(path)) if relabel is not None else None
            if given:  # people's verdicts replace the stored labels of the stamps they decided
                pos = {int(s): i for i, s in enumerate(stamp_id)}
                for sid, lab in given.items():
                    if sid in pos:
                        label[pos[sid]] = lab
            bad = ~np.isin(label, (LABEL_REAL, LABEL_ARTIFACT, LABEL_UNKNOWN))
            if bad.any():
                raise TrainingError(
                    f"{path}: labels must be 1, 0 or -1; found {np.unique(label[bad])[:5].tolist()}"
                )
            split = np.where(label == LABEL_UNKNOWN, -1, split_of(stamp_id)).astype(np.int8)
            k = len(self.nights)
            self.nights.append(_Night(Path(path), stamps, split, label, np.dtype(stamps.dtype)))
            chunk = int(stamps.chunks[0])
            step = max(chunk, chunk * (unit_stamps // chunk))
            n = stamps.shape[0]
            self.units += [(k, a, min(a + step, n)) for a in range(0, n, step)]
        if shape is None:
            raise TrainingError("no night datasets to train on")
        self.input_shape: tuple[int, int, int] = shape  # type: ignore[assignment]
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def indices(self, unit: int, split: int) -> np.ndarray:
        """Positions, within ``unit``, of its labelled stamps of ``split``."""
        k, a, b = self.units[unit]
        return np.flatnonzero(self.nights[k].split[a:b] == split)

    def labels(self, unit: int, idx: np.ndarray) -> np.ndarray:
        """Labels of the stamps at positions ``idx`` of ``unit``."""
        k, a, b = self.units[unit]
        return self.nights[k].label[a:b][idx]

    def count(self, split: int) -> int:
        return int(sum(np.count_nonzero(n.split == split) for n in self.nights))

    def count_label(self, split: int, label: int) -> int:
        return int(
            sum(np.count_nonzero((n.split == split) & (n.label == label)) for n in self.nights)
        )

    def read(self, unit: int) -> np.ndarray:
        """Pixels of a unit in their stored dtype (a few units are cached)."""
        hit = self._cache.get(unit)
        if hit is not None:
            self._cache.move_to_end(unit)
            return hit
        k, a, b = self.units[unit]
        pixels = np.asarray(self.nights[k].stamps[a:b])
        self._cache[unit] = pixels
        while len(self._cache) > 4:
            self._cache.popitem(last=False)
        return pixels

    def dtype_of(self, unit: int) -> np.dtype:
        return self.nights[self.units[unit][0]].dtype


def _finite_float32(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 copy with non-finite stamps zeroed, and a 0/1 weight per stamp."""
    x = x.astype(np.float32, copy=True)
    ok = np.isfinite(x).all(axis=(1, 2, 3))
    if not ok.all():
        x[~ok] = 0.0
    return x, ok.astype(np.float32)


class TrainBatches(keras.utils.PyDataset):
    """Shuffled, augmented training batches; batch ``i`` of epoch ``e`` is fixed by the seed."""

    def __init__(self, source: LabelledNights, batch_size: int, seed: int, window: int) -> None:
        super().__init__(workers=1, use_multiprocessing=False)
        self.source, self.batch_size, self.seed, self.window = source, batch_size, seed, window
        self.units = [u for u in range(len(source.units)) if source.indices(u, TRAIN).size]
        self.n = source.count(TRAIN)
        # Whole batches only (the remainder differs every epoch), so every step has one shape.
        self.n_batches = max(1, self.n // batch_size)
        self.epoch = 0
        self._plan_epoch = -1
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return self.n_batches

    def on_epoch_end(self) -> None:
        self.epoch += 1

    def _plan(self) -> None:
        if self._plan_epoch == self.epoch:
            return
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.units))
        windows: list[list[int]] = [[]]
        size = 0
        for j in order:
            u = self.units[j]
            windows[-1].append(u)
            size += self.source.indices(u, TRAIN).size
            if size >= self.window:
                windows.append([])
                size = 0
        self._windows = [w for w in windows if w]
        counts = [sum(self.source.indices(u, TRAIN).size for u in w) for w in self._windows]
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self._cache.clear()
        self._plan_epoch = self.epoch

    def _window(self, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        hit = self._cache.get(w)
        if hit is not None:
            return hit
        xs, ys = [], []
        for u in self._windows[w]:
            idx = self.source.indices(u, TRAIN)
            xs.append(self.source.read(u)[idx].astype(np.float32))
            ys.append(self.source.labels(u, idx))
        x, weight = _finite_float32(np.concatenate(xs))
        y = np.concatenate(ys).astype(np.float32)
        perm = np.random.default_rng([self.seed, self.epoch, w, 7]).permutation(len(y))
        hit = (x[perm], y[perm], weight[perm])
        self._cache[w] = hit
        while len(self._cache) > 2:  # a batch straddles at most two windows
            self._cache.popitem(last=False)
        return hit

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self._plan()
        a = i * self.batch_size
        b = self.n if self.n < self.batch_size else a + self.batch_size
        parts = []
        w = int(np.searchsorted(self._starts, a, side="right")) - 1
        while a < b:
            x, y, wt = self._window(w)
            lo = a - self._starts[w]
            hi = min(b, self._starts[w + 1]) - self._starts[w]
            parts.append((x[lo:hi], y[lo:hi], wt[lo:hi]))
            a = self._starts[w] + hi
            w += 1
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        wt = np.concatenate([p[2] for p in parts])
        x = augment(x, np.random.default_rng([self.seed, self.epoch, i, 11]))
        return x, y, wt


class EvalBatches(keras.utils.PyDataset):
    """Batches of one split in storage order, no augmentation (validation during training)."""

    def __init__(self, source: LabelledNights, split: int, batch_size: int) -> None:
        super().__init__(workers=1, use_multiprocessing=False)
        self.source, self.batch_size = source, batch_size
        self.units = [u for u in range(len(source.units)) if source.indices(u, split).size]
        self.idx = {u: source.indices(u, split) for u in self.units}
        counts = [self.idx[u].size for u in self.units]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.n = int(self._starts[-1])

    def __len__(self) -> int:
        return max(1, math.ceil(self.n / self.batch_size))

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, b = i * self.batch_size, min((i + 1) * self.batch_size, self.n)
        xs, ys = [], []
        j = int(np.searchsorted(self._starts, a, side="right")) - 1
        while a < b:
            u = self.units[j]
            lo = a - self._starts[j]
            hi = min(b, self._starts[j + 1]) - self._starts[j]
            idx = self.idx[u][lo:hi]
            xs.append(self.source.read(u)[idx].astype(np.float32))
            ys.append(self.source.labels(u, idx))
            a = self._starts[j] + hi
            j += 1
        x, weight = _finite_float32(np.concatenate(xs))
        return x, np.concatenate(ys).astype(np.float32), weight


# --------------------------------------------------------------------------------------------
# Which nights
# --------------------------------------------------------------------------------------------


def resolve_nights(stores: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Night datasets from a mix of night paths (``*.zarr``) and store roots, each once.

    Parameters
    ----------
    stores : iterable of path
        Complete night datasets (``<season>/<night>.zarr``) and/or store roots (all their
        nights).

    Returns
    -------
    list of pathlib.Path

    Raises
    ------
    TrainingError
        For a partial or missing night, a store root without nights, or nothing at all.
    """
    # deferred: zarr and xarray, only when nights are read
    from s2v_batch.store.dataset import StoreError, list_nights, verify_night

    out: list[Path] = []
    for item in stores:
        p = Path(item)
        if p.suffix == ".zarr":
            if verify_night(p) is None:
                raise TrainingError(f"{p}: not a complete night dataset (missing or partial)")
            out.append(p)
            continue
        try:
            refs = list_nights(p)
        except StoreError as exc:
            raise TrainingError(str(exc)) from exc
        if not refs:
            raise TrainingError(f"{p}: no night datasets (<season>/<night>.zarr) under it")
        out += [r.path for r in refs]
    seen: set[Path] = set()
    unique = [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]
    if not unique:
        raise TrainingError("no stores given to train on")
    return unique
