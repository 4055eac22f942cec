"""Streaming training on labelled Zarr night datasets, threshold choice and the model artifact.

The stores are never loaded whole: stamps are read a unit (a few hundred stamps, whole Zarr
chunks) at a time. Training order per epoch: the units in a random order, grouped into windows of
about ``shuffle_window`` stamps, each window shuffled (a shuffle buffer across chunks and nights),
then random 90-degree rotations and flips. Every batch is a pure function of ``(seed, epoch,
batch index)``, so Keras may peek at batches or ask for them again without changing the run.

Splits are fixed by a hash of ``stamp_id`` (splitmix64 -> [0, 1): 80 % train, 10 % validation,
10 % test), so a stamp never moves between splits across runs, stores or formats (the gif and the
fits copy of a stamp land in the same split). Unlabelled stamps (-1) are skipped.

After training (early stopping on the validation loss, best weights restored) the threshold that
keeps ``target_recall`` of the validation reals is chosen (:func:`metrics.threshold_for_recall`),
the test split is scored at it, and the model is written with its card
(:func:`model.save_artifact`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from . import metrics
from .conventions import CHANNELS, LABEL_ARTIFACT, LABEL_REAL, LABEL_UNKNOWN
from .model import ARCHITECTURES, ModelCard, Predictor, build_model, save_artifact

__all__ = [
    "SPLIT_FRACTIONS",
    "SPLIT_NAMES",
    "TrainResult",
    "TrainingError",
    "augment",
    "split_of",
    "splitmix64",
    "train",
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


class _Source:
    """All labelled stamps of the given nights, addressed by units of whole Zarr chunks."""

    def __init__(self, night_paths: Sequence[Path], unit_stamps: int = 512) -> None:
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


class _TrainBatches(keras.utils.PyDataset):
    """Shuffled, augmented training batches; batch ``i`` of epoch ``e`` is fixed by the seed."""

    def __init__(self, source: _Source, batch_size: int, seed: int, window: int) -> None:
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


class _EvalBatches(keras.utils.PyDataset):
    """Batches of one split in storage order, no augmentation (validation during training)."""

    def __init__(self, source: _Source, split: int, batch_size: int) -> None:
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


def _score_split(
    source: _Source, split: int, predictor: Predictor
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores, labels and stored dtype name of every labelled stamp of ``split``."""
    scores, labels, kinds = [], [], []
    for u in range(len(source.units)):
        idx = source.indices(u, split)
        if not idx.size:
            continue
        scores.append(predictor.predict(source.read(u)[idx]))
        labels.append(source.labels(u, idx))
        kinds.append(np.full(idx.size, source.dtype_of(u).name))
    if not scores:
        return np.zeros(0, np.float32), np.zeros(0, np.int8), np.zeros(0, "<U7")
    return np.concatenate(scores), np.concatenate(labels), np.concatenate(kinds)


# --------------------------------------------------------------------------------------------
# Metrics for the card
# --------------------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """JSON-safe: NaN -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _evaluate(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    c = metrics.confusion(scores, labels, threshold)
    out: dict[str, Any] = {"threshold": threshold, **c.to_dict()}
    out["roc_auc"] = metrics.roc_auc(scores, labels)
    out["operating_points"] = metrics.standard_operating_points(scores, labels)
    return out


def _split_metrics(
    scores: np.ndarray, labels: np.ndarray, kinds: np.ndarray, threshold: float
) -> dict[str, Any]:
    """Metrics at ``threshold`` overall and, when the split mixes them, per stored dtype."""
    ok = np.isfinite(scores)
    out = _evaluate(scores[ok], labels[ok], threshold)
    out["n_nonfinite_skipped"] = int((~ok).sum())
    names = {"uint8": "gif (uint8)", "float32": "fits (float32)"}
    if len(np.unique(kinds[ok])) > 1:
        out["by_stored_dtype"] = {
            names.get(k, k): _evaluate(
                scores[ok][kinds[ok] == k], labels[ok][kinds[ok] == k], threshold
            )
            for k in np.unique(kinds[ok])
        }
    return _clean(out)


# --------------------------------------------------------------------------------------------
# train()
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` produced."""

    model_path: Path
    card_path: Path
    card: ModelCard
    history: dict[str, list[float]]
    epochs_run: int
    best_epoch: int
    n_train: int
    n_validation: int
    n_test: int
    seconds: float

    @property
    def threshold(self) -> float:
        """The chosen threshold (candidate when ``score >= threshold``)."""
        return self.card.threshold

    def line(self) -> str:
        """One-line summary for the command line."""
        v, t = self.card.validation_metrics, self.card.test_metrics

        def f(d: dict[str, Any], key: str) -> str:
            x = d.get(key)
            return "n/a" if x is None else f"{x:.4f}"

        return (
            f"wrote {self.model_path} ({self.epochs_run} epochs, best {self.best_epoch}, "
            f"{self.seconds:.0f} s); threshold {self.card.threshold:.4g} for recall "
            f">= {self.card.target_recall:g} on {self.n_validation} validation stamps; "
            f"test ({self.n_test} stamps): recall {f(t, 'recall')}, FDR {f(t, 'fdr')}, "
            f"ROC AUC {f(t, 'roc_auc')} (validation AUC {f(v, 'roc_auc')})"
        )


def _simulated_flag(nights: Sequence[Path]) -> bool | None:
    """True/False when every night's attributes say so (``simulated``), else None (unknown)."""
    from .store import read_attrs

    flags = {read_attrs(p).get("simulated") for p in nights}
    return flags.pop() if len(flags) == 1 and flags <= {True, False} else None


def _resolve_nights(stores: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Night datasets from a mix of night paths (``*.zarr``) and store roots."""
    from .store import StoreError, list_nights, verify_night

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


def train(
    stores: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    arch: str = "space2vec",
    epochs: int = 20,
    batch_size: int = 128,
    target_recall: float = 0.99,
    seed: int = 0,
    name: str = "space2vec",
    version: str = "1",
    learning_rate: float = 1.4e-4,
    patience: int = 3,
    shuffle_window: int = 2048,
    progress: bool = True,
    command: str | None = None,
    training_data: dict[str, Any] | None = None,
) -> TrainResult:
    """Train a model on labelled night datasets, choose its threshold, write the artifact.

    Parameters
    ----------
    stores : sequence of path
        Night datasets (``<season>/<night>.zarr``) and/or store roots (all their nights).
    out_dir : path
        Where ``<name>-<version>.keras`` and ``.json`` are written.
    arch : str
        Architecture name (:data:`model.ARCHITECTURES`).
    epochs : int
        Maximum epochs (early stopping may end sooner).
    batch_size : int
        Training batch size (the published space2vec used 368).
    target_recall : float
        Recall on the validation reals that the threshold keeps (0.99 as published).
    seed : int
        Seeds weights, order, augmentation and dropout.
    name, version : str
        Of the artifact (file names and card).
    learning_rate : float
        Adam learning rate (1.4e-4 as published).
    patience : int
        Epochs without a better validation loss before stopping; the best weights are kept.
    shuffle_window : int
        Stamps shuffled together (memory: about 31 kB a 51x51 stamp, two windows held).
    progress : bool
        Show Keras' progress bar and stage messages on stderr.
    command : str, optional
        The command line that ran this, recorded in the card.
    training_data : dict, optional
        Extra facts for the card's ``training_data`` (``description``, ``simulated``, ``seeds``);
        the stores and stamp counts are filled in.

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainingError
        Unknown architecture, bad parameters, unreadable stores, no labelled stamps, or a
        validation split without both classes.
    """
    t0 = time.perf_counter()
    if arch not in ARCHITECTURES:
        raise TrainingError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    for pname, value in (("epochs", epochs), ("batch_size", batch_size), ("patience", patience)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < (0 if pname == "patience" else 1)
        ):
            raise TrainingError(f"{pname} must be a positive integer, got {value!r}")
    if not 0.0 < float(target_recall) <= 1.0:
        raise TrainingError(f"target_recall must be in (0, 1], got {target_recall}")
    if not float(learning_rate) > 0.0:
        raise TrainingError(f"learning_rate must be > 0, got {learning_rate}")

    def say(msg: str) -> None:
        if progress:
            print(f"[train] {msg}", file=sys.stderr, flush=True)

    nights = _resolve_nights(stores)
    source = _Source(nights)
    n_split = [source.count(s) for s in (TRAIN, VALIDATION, TEST)]
    n_lab = sum(n_split)
    if n_lab == 0:
        raise TrainingError(
            f"no labelled stamps (label 0 or 1) in {len(nights)} night(s); ingest with --labels"
        )
    for s, what in ((TRAIN, "training"), (VALIDATION, "validation")):
        for lab, lname in ((LABEL_REAL, "real"), (LABEL_ARTIFACT, "artifact")):
            if source.count_label(s, lab) == 0:
                raise TrainingError(
                    f"the {what} split has no {lname} stamps ({n_lab} labelled in all): "
                    "more labelled data of both classes is needed"
                )
    say(
        f"{len(nights)} night(s), {n_lab} labelled stamps: {n_split[0]} train, {n_split[1]} "
        f"validation, {n_split[2]} test (split by stamp_id hash)"
    )

    keras.utils.set_random_seed(seed)
    model = build_model(arch, source.input_shape)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=float(learning_rate)),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.AUC(name="auc")],
        jit_compile=False,  # XLA was slower on the CPU
    )
    train_ds = _TrainBatches(source, batch_size, seed, shuffle_window)
    val_ds = _EvalBatches(source, VALIDATION, max(batch_size, 256))
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=patience, restore_best_weights=True, min_delta=1e-4
    )
    say(f"training {arch} ({model.count_params():,} parameters), up to {epochs} epochs")
    fit = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=epochs,
        callbacks=[stop],
        shuffle=False,  # the dataset shuffles itself; Keras' index shuffle would defeat the cache
        verbose=(1 if sys.stderr.isatty() else 2) if progress else 0,
    )
    history = {k: [float(v) for v in vals] for k, vals in fit.history.items()}
    val_losses = history.get("val_loss", [])
    best_epoch = int(np.nanargmin(val_losses)) + 1 if val_losses else len(history.get("loss", []))

    say("scoring the validation and test splits")
    predictor = Predictor.from_model(model, batch_size=256)
    vs, vl, vk = _score_split(source, VALIDATION, predictor)
    ok = np.isfinite(vs)
    threshold = metrics.threshold_for_recall(vs[ok], vl[ok], float(target_recall))
    validation_metrics = _split_metrics(vs, vl, vk, threshold)
    ts, tl, tk = _score_split(source, TEST, predictor)
    test_metrics = _split_metrics(ts, tl, tk, threshold)
    validation_metrics["best_epoch"] = best_epoch
    validation_metrics["val_loss"] = _clean(val_losses[best_epoch - 1]) if val_losses else None

    data = {
        "description": "labelled stamps of the listed Zarr night datasets",
        "simulated": _simulated_flag(nights),
        **(training_data or {}),
        "stores": [str(p) for p in nights],
        "n_stamps": {"train": n_split[0], "validation": n_split[1], "test": n_split[2]},
        "split": "splitmix64(stamp_id) -> [0, 1): train < 0.8 <= validation < 0.9 <= test",
        "training_seed": seed,
        "epochs_run": len(history.get("loss", [])),
        "batch_size": batch_size,
        "learning_rate": float(learning_rate),
        "augmentation": "random 90-degree rotations and flips",
    }
    card = ModelCard(
        name=name,
        version=version,
        architecture=arch,
        threshold=float(threshold),
        target_recall=float(target_recall),
        input_shape=source.input_shape,
        validation_metrics=validation_metrics,
        test_metrics=test_metrics,
        training_data=_clean(data),
        training_command=command,
    )
    model_path = save_artifact(model, card, out_dir)
    result = TrainResult(
        model_path=model_path,
        card_path=model_path.with_suffix(".json"),
        card=card,
        history=history,
        epochs_run=len(history.get("loss", [])),
        best_epoch=best_epoch,
        n_train=n_split[0],
        n_validation=int(ok.sum()),
        n_test=int(np.isfinite(ts).sum()),
        seconds=time.perf_counter() - t0,
    )
    say(result.line())
    return result
