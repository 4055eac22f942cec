"""Training against the simulator: warm start, real stamps in the batches, model choice on them.

- :func:`warm_start`: the weights of a checked artifact (``--init``), same architecture and input.
- :func:`prepare_real`: the realsets of ``--real-train`` (their training groups only,
  :func:`s2v_batch.training.realsets.heldout_groups`) as a :class:`~s2v_batch.training.data.RealMix`,
  and those of ``--choose-on`` (held-out groups only where the file is also trained on).
- :class:`RealChoice`: a Keras callback that scores the ``--choose-on`` sets after every epoch
  and keeps the weights of the best epoch by :data:`CHOICE_CRITERION`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from s2v_batch.metrics import classification as metrics
from s2v_batch.model.artifact import ModelArtifactError, load_artifact
from s2v_batch.model.backend import keras
from s2v_batch.training.data import RealMix, TrainingError
from s2v_batch.training.realsets import RealSet, heldout_groups, load_realset

__all__ = [
    "CHOICE_CRITERION",
    "REAL_SPLIT_RULE",
    "RealChoice",
    "prepare_real",
    "warm_start",
]

#: How ``--choose-on`` picks the epoch whose weights are kept (recorded in the card).
CHOICE_CRITERION = (
    "after every epoch, the ROC AUC of the stamps of all --choose-on realsets together (one "
    "pool: a source of one class, e.g. all real, still counts); the epoch kept is the one with "
    "the highest; ties (within 1e-9) go to the lower validation loss, then to the earlier epoch. "
    "Early stopping still watches the validation loss"
)
#: The split of ``--real-train`` realsets (s2v_batch.training.realsets.heldout_groups).
REAL_SPLIT_RULE = (
    "by group: h = first 8 bytes of sha256(group utf-8), little-endian int64; u = splitmix64(h) "
    "/ 2**64; trained on when u < 0.8, held out otherwise "
    "(s2v_batch.training.realsets.heldout_groups)"
)


def warm_start(
    model: keras.Model, init: str | os.PathLike[str], arch: str, input_shape: tuple[int, ...]
) -> dict[str, Any]:
    """Set ``model``'s weights to those of the artifact ``init`` (``.keras`` or ``.json``).

    Returns
    -------
    dict
        What the card records: path, name, version, sha256 and survey of the artifact.

    Raises
    ------
    TrainingError
        An artifact that cannot be loaded (missing, tampered with), of another architecture or
        input shape, or whose weights do not fit.
    """
    try:
        init_model, card = load_artifact(init)
    except ModelArtifactError as exc:
        raise TrainingError(f"--init: {exc}") from None
    if card.architecture != arch:
        raise TrainingError(
            f"--init {init}: its architecture is {card.architecture}, this training's {arch}"
        )
    if tuple(card.input_shape) != tuple(input_shape):
        raise TrainingError(
            f"--init {init}: its input shape is {tuple(card.input_shape)}, the training "
            f"stamps' {tuple(input_shape)}"
        )
    try:
        model.set_weights(init_model.get_weights())
    except ValueError as exc:
        raise TrainingError(f"--init {init}: its weights do not fit {arch}: {exc}") from None
    return {
        "model": str(init),
        "name": card.name,
        "version": card.version,
        "sha256": card.sha256,
        "survey": card.survey,
    }


def _check_fits(s: RealSet, input_shape: tuple[int, ...], survey: str, what: str) -> None:
    if tuple(s.x.shape[1:]) != tuple(input_shape):
        raise TrainingError(
            f"{what} {s.path}: stamps of shape {tuple(s.x.shape[1:])}, the training nights' "
            f"{tuple(input_shape)}"
        )
    if s.survey != survey:
        raise TrainingError(f"{what} {s.path}: stamps of survey {s.survey}, the nights' {survey}")


def _finite(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = x.astype(np.float32, copy=True)
    ok = np.isfinite(x).all(axis=(1, 2, 3))
    x[~ok] = 0.0
    return x, ok


def prepare_real(
    real_train: Sequence[str | os.PathLike[str]],
    choose_on: Sequence[str | os.PathLike[str]],
    *,
    input_shape: tuple[int, ...],
    survey: str,
    weight: float,
    batch_size: int,
) -> tuple[RealMix | None, list[RealSet], dict[str, Any]]:
    """Read the realsets of ``--real-train`` and ``--choose-on``; what the card records of them.

    ``--real-train``: the stamps of the training groups of every file (:func:`heldout_groups`
    False), ``min(n, max(1, batch_size // 8))`` of them in each batch at sample weight
    ``weight``. ``--choose-on``: every stamp of a file, or only its held-out groups where the
    same file is also in ``--real-train``; together they need both classes.

    Returns
    -------
    (RealMix or None, list of RealSet, dict)
        The mix (None without ``real_train``), the sets to choose on, and the card's facts
        (``real_train`` and ``model_choice`` entries; empty where not used).

    Raises
    ------
    TrainingError
        Unreadable realsets, stamps of another shape or survey, no training group, or
        ``--choose-on`` stamps of one class only.
    """
    facts: dict[str, Any] = {}
    mix = None
    trained_on: set[Path] = set()
    if real_train:
        xs, ys, qs, rows = [], [], [], []
        for path in real_train:
            s = load_realset(path)
            _check_fits(s, input_shape, survey, "--real-train")
            held = heldout_groups(s.group)
            used = s.subset(~held)
            trained_on.add(s.path.resolve())
            xs.append(used.x.astype(np.float32))
            ys.append(used.y)
            qs.append(np.full(len(used), s.x.dtype == np.uint8))
            rows.append({**s.facts(), "n_used": len(used), "n_held_out": int(held.sum())})
        x, ok = _finite(np.concatenate(xs))
        if not len(x):
            raise TrainingError(
                "--real-train: every group of the realset(s) is held out; nothing to train on"
            )
        y = np.concatenate(ys).astype(np.float32)
        per_batch = min(len(x), max(1, batch_size // 8))
        mix = RealMix(x, y, ok * np.float32(weight), np.concatenate(qs), per_batch)
        facts["real_train"] = {
            "sets": rows,
            "weight": float(weight),
            "per_batch": per_batch,
            "split": REAL_SPLIT_RULE,
        }
    sets = []
    rows = []
    for path in choose_on:
        s = load_realset(path)
        _check_fits(s, input_shape, survey, "--choose-on")
        part = "all stamps"
        if s.path.resolve() in trained_on:
            s = s.subset(heldout_groups(s.group))
            part = "held-out groups only (the file is also in --real-train)"
        sets.append(s)
        rows.append({**s.facts(), "used": part})
    pooled = np.concatenate([s.y for s in sets]) if sets else np.zeros(0)
    if sets and len(np.unique(pooled)) < 2:
        raise TrainingError(
            f"--choose-on: needs real and artifact stamps among them ({len(pooled)} stamps "
            f"chosen on, {int((pooled == 1).sum())} real)"
        )
    if sets:
        facts["model_choice"] = {"criterion": CHOICE_CRITERION, "sets": rows}
    return mix, sets, facts


def _set_names(sets: Sequence[RealSet]) -> list[str]:
    """A distinct name per set: its source, with the file stem, then its place, where repeated."""
    names = [s.source for s in sets]
    names = [
        f"{n} ({s.path.stem})" if names.count(n) > 1 else n
        for n, s in zip(names, sets, strict=True)
    ]
    return [f"{n} #{k + 1}" if names.count(n) > 1 else n for k, n in enumerate(names)]


class RealChoice(keras.callbacks.Callback):
    """Scores the ``--choose-on`` sets after each epoch; keeps the best epoch's weights.

    After :meth:`keras.Model.fit`, :attr:`best_epoch` (1-based) and :attr:`best_weights` are the
    epoch chosen by :data:`CHOICE_CRITERION`, :attr:`rows` the per-epoch figures and
    :attr:`initial` those of the weights training started from (not a candidate).
    """

    def __init__(self, sets: Sequence[RealSet], batch_size: int = 256) -> None:
        super().__init__()
        self.names = _set_names(sets)
        self.data = [(_finite(s.x)[0], s.y) for s in sets]
        self.batch_size = batch_size
        self.rows: list[dict[str, Any]] = []
        self.best_epoch = 0
        self.best_weights: list[np.ndarray] | None = None
        self._best = (-math.inf, math.inf)
        self.initial: dict[str, Any] | None = None

    def score(self) -> tuple[float, dict[str, dict[str, Any]]]:
        """The pooled ROC AUC, and per set its AUC (None for one class) and the reals and
        artifacts scoring >= 0.5."""
        out, scores = {}, []
        for name, (x, y) in zip(self.names, self.data, strict=True):
            if not len(y):  # e.g. a file trained on whose groups are all in training
                s = np.zeros(0, np.float32)
            else:
                s = np.asarray(self.model.predict(x, batch_size=self.batch_size, verbose=0))
            s = s.ravel()
            scores.append(s)
            auc = metrics.roc_auc(s, y) if len(np.unique(y)) == 2 else None
            out[name] = {
                "n": len(y),
                "roc_auc": auc,
                "real_above_0.5": int(((s >= 0.5) & (y == 1)).sum()),
                "artifact_above_0.5": int(((s >= 0.5) & (y == 0)).sum()),
            }
        pooled = metrics.roc_auc(np.concatenate(scores), np.concatenate([y for _, y in self.data]))
        return float(pooled), out

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        # The starting point's figures (the --init model's, or random weights), for comparison;
        # not a candidate: it has no validation loss.
        auc, figures = self.score()
        self.initial = {"epoch": 0, "roc_auc": auc, "sets": figures}

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        auc, figures = self.score()
        val_loss = float((logs or {}).get("val_loss", math.nan))
        self.rows.append(
            {"epoch": epoch + 1, "val_loss": val_loss, "roc_auc": auc, "sets": figures}
        )
        if math.isnan(auc):
            auc = -math.inf  # a NaN score cannot win
        best_auc, best_loss = self._best
        tie = abs(auc - best_auc) <= 1e-9
        better = (auc > best_auc and not tie) or (tie and val_loss < best_loss)
        if better or self.best_weights is None:
            self._best = (auc, val_loss)
            self.best_epoch = epoch + 1
            self.best_weights = [np.array(w) for w in self.model.get_weights()]
