"""The labelled stamps training reads: splits, augmentation and streaming batches of Zarr nights.

The stores are never loaded whole: stamps are read a unit (a few hundred stamps, whole Zarr
chunks) at a time (:class:`LabelledNights`). Training order per epoch (:class:`TrainBatches`):
the units in a random order, grouped into windows of about ``shuffle_window`` stamps, each window
shuffled (a shuffle buffer across chunks and nights), then the augmentation set chosen
(:mod:`s2v_batch.training.augment`: by default random 90-degree rotations and flips), with labelled
real stamps mixed into every batch where given (:class:`RealMix`). Every batch is a pure function of ``(seed, epoch, batch index)``, so Keras may
peek at batches or ask for them again without changing the run.

Splits are fixed by a hash of ``stamp_id`` (:func:`split_of`: splitmix64 -> [0, 1): 80 % train,
10 % validation, 10 % test), so a stamp never moves between splits across runs, stores or formats
(the gif and the fits copy of a stamp land in the same split). Unlabelled stamps (-1) are skipped.
The split functions live in :mod:`s2v_batch.training.splits` (numpy only) and are re-exported here.
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
from s2v_batch.training.augment import apply_augmentation, augment
from s2v_batch.training.splits import (
    SPLIT_FRACTIONS,
    SPLIT_NAMES,
    TEST,
    TRAIN,
    VALIDATION,
    TrainingError,
    split_of,
    splitmix64,
)

__all__ = [
    "SPLIT_FRACTIONS",
    "SPLIT_NAMES",
    "TEST",
    "TRAIN",
    "VALIDATION",
    "EvalBatches",
    "LabelledNights",
    "RealMix",
    "TrainBatches",
    "TrainingError",
    "augment",
    "resolve_nights",
    "split_of",
    "splitmix64",
]

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


@dataclasses.dataclass
class RealMix:
    """Labelled real stamps mixed into every training batch (``--real-train``).

    ``x`` float32 (non-finite stamps zeroed), ``y`` float32 labels, ``weight`` the sample weight
    of each (``--real-weight``; 0 for a non-finite stamp), ``quantised`` True for 8-bit stamps,
    ``per_batch`` how many go into each batch: epoch ``e`` walks a permutation of them seeded by
    ``(seed, e)``, ``per_batch`` at a time, starting over when it runs out.
    """

    x: np.ndarray
    y: np.ndarray
    weight: np.ndarray
    quantised: np.ndarray
    per_batch: int


class TrainBatches(keras.utils.PyDataset):
    """Shuffled, augmented training batches; batch ``i`` of epoch ``e`` is fixed by the seed.

    ``augmentation``: a set of :mod:`s2v_batch.training.augment` (``none``, ``flips``,
    ``survey``). ``real``: real stamps appended to every batch (:class:`RealMix`).
    """

    def __init__(
        self,
        source: LabelledNights,
        batch_size: int,
        seed: int,
        window: int,
        augmentation: str = "flips",
        real: RealMix | None = None,
    ) -> None:
        super().__init__(workers=1, use_multiprocessing=False)
        self.source, self.batch_size, self.seed, self.window = source, batch_size, seed, window
        self.augmentation, self.real = augmentation, real
        self.units = [u for u in range(len(source.units)) if source.indices(u, TRAIN).size]
        self.n = source.count(TRAIN)
        # Whole batches only (the remainder differs every epoch), so every step has one shape.
        self.n_batches = max(1, self.n // batch_size)
        self.epoch = 0
        self._plan_epoch = -1
        self._cache: OrderedDict[int, tuple[np.ndarray, ...]] = OrderedDict()

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

    def _window(self, w: int) -> tuple[np.ndarray, ...]:
        hit = self._cache.get(w)
        if hit is not None:
            return hit
        xs, ys, qs = [], [], []
        for u in self._windows[w]:
            idx = self.source.indices(u, TRAIN)
            xs.append(self.source.read(u)[idx].astype(np.float32))
            ys.append(self.source.labels(u, idx))
            qs.append(np.full(idx.size, self.source.dtype_of(u) == np.uint8))
        x, weight = _finite_float32(np.concatenate(xs))
        y = np.concatenate(ys).astype(np.float32)
        q = np.concatenate(qs)
        perm = np.random.default_rng([self.seed, self.epoch, w, 7]).permutation(len(y))
        hit = (x[perm], y[perm], weight[perm], q[perm])
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
            win = self._window(w)
            lo = a - self._starts[w]
            hi = min(b, self._starts[w + 1]) - self._starts[w]
            parts.append(tuple(v[lo:hi] for v in win))
            a = self._starts[w] + hi
            w += 1
        if self.real is not None:
            parts.append(self._real_part(i))
        x, y, wt, q = (np.concatenate([p[k] for p in parts]) for k in range(4))
        rng = np.random.default_rng([self.seed, self.epoch, i, 11])
        x = apply_augmentation(self.augmentation, x, rng, q)
        return x, y, wt

    def _real_part(self, i: int) -> tuple[np.ndarray, ...]:
        """The real stamps of batch ``i`` (:class:`RealMix`)."""
        r = self.real
        assert r is not None
        perm = np.random.default_rng([self.seed, self.epoch, 13]).permutation(len(r.y))
        take = perm[(i * r.per_batch + np.arange(r.per_batch)) % len(r.y)]
        return r.x[take], r.y[take], r.weight[take], r.quantised[take]


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
