"""Training: the loop, the threshold choice and the model artifact.

:func:`train` streams the labelled stamps of Zarr night datasets (:mod:`s2v_batch.training.data`:
splits by ``stamp_id`` hash, augmentation, batches), fits the model with early stopping on the
validation loss (best weights restored), chooses the threshold that keeps ``target_recall`` of
the validation reals (:func:`metrics.threshold_for_recall`), scores the test split at it, and
writes the model with its card (:func:`s2v_batch.model.save_artifact`). Every knob is a field of
:class:`s2v_batch.training.config.TrainConfig`. Against the simulator
(:mod:`s2v_batch.training.choice`): a warm start from an artifact (``init``), real stamps in the
batches (``real_train``) and the epoch chosen on real stamps (``choose_on``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from s2v_batch.core.conventions import LABEL_ARTIFACT, LABEL_REAL, survey_of_season
from s2v_batch.metrics import classification as metrics
from s2v_batch.model.architectures import ARCHITECTURES, build_model
from s2v_batch.model.artifact import ModelCard, save_artifact
from s2v_batch.model.backend import keras
from s2v_batch.model.inference import Predictor
from s2v_batch.training.augment import augmentation_text
from s2v_batch.training.choice import RealChoice, prepare_real, warm_start
from s2v_batch.training.config import TrainConfig
from s2v_batch.training.data import (
    SPLIT_FRACTIONS,
    SPLIT_NAMES,
    TEST,
    TRAIN,
    VALIDATION,
    EvalBatches,
    LabelledNights,
    TrainBatches,
    TrainingError,
    augment,
    resolve_nights,
    split_of,
    splitmix64,
)
from s2v_batch.training.verdicts import verdict_labels

_log = logging.getLogger("s2v.train")

# The split helpers are re-exported: they were public here before trainingdata.py owned them.
__all__ = [
    "SPLIT_FRACTIONS",
    "SPLIT_NAMES",
    "TrainResult",
    "TrainingError",
    "augment",
    "split_of",
    "splitmix64",
    "train",
    "validation_threshold",
]


def _score_split(
    source: LabelledNights, split: int, predictor: Predictor
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


def validation_threshold(
    source: LabelledNights, model: keras.Model, target_recall: float, precision: str = "float32"
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """The threshold keeping ``target_recall`` of the validation reals when ``model`` computes
    at ``precision``, with the validation scores, labels and stored dtype names it came from.

    The card's ``threshold`` is float32's; its ``thresholds["bfloat16"]`` is this at bfloat16,
    on the same stamps for the same recall (the bfloat16 scores shift near the threshold).
    """
    predictor = Predictor.from_model(model, batch_size=256, precision=precision)
    scores, labels, kinds = _score_split(source, VALIDATION, predictor)
    ok = np.isfinite(scores)
    threshold = metrics.threshold_for_recall(scores[ok], labels[ok], float(target_recall))
    return float(threshold), scores, labels, kinds


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
    # deferred: zarr and xarray, only when nights are read
    from s2v_batch.store.dataset import read_attrs

    flags = {read_attrs(p).get("simulated") for p in nights}
    return flags.pop() if len(flags) == 1 and flags <= {True, False} else None


def train(
    nights: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    config: TrainConfig,
    *,
    training_data: Mapping[str, Any] | None,
    command: str | None = None,
    progress: bool = True,
    verdicts: str | os.PathLike[str] | None = None,
    init: str | os.PathLike[str] | None = None,
    choose_on: Sequence[str | os.PathLike[str]] = (),
    real_train: Sequence[str | os.PathLike[str]] = (),
) -> TrainResult:
    """Train a model on labelled night datasets, choose its threshold, write the artifact.

    ``train(nights, out, config, training_data=...)`` is the whole recipe: the card records the
    config's fields, the nights and ``command``, so the call can be made again.

    Parameters
    ----------
    nights : sequence of path
        Night datasets (``<season>/<night>.zarr``) and/or store roots (all their nights).
    out : path
        Where ``<name>-<version>.keras`` and ``.json`` are written.
    config : TrainConfig
        Architecture, epochs, batch size, learning rate, patience, target recall, seed, name
        and version of the artifact, shuffle window.
    training_data : mapping or None
        Facts for the card's ``training_data`` (``description``, ``simulated``, ``seeds``);
        the nights, stamp counts and training settings are filled in. None: a generic
        description, ``simulated`` from the nights' attributes.
    command : str, optional
        The command line that ran this, recorded in the card.
    progress : bool
        Show Keras' progress bar and stage messages on stderr.
    verdicts : str or path, optional
        A verdict database (:mod:`s2v_batch.store.verdicts`): the consensus of people's verdicts
        replaces the stored labels of the stamps it decides (the others keep theirs), and the
        card's ``training_data`` says how many human verdicts the labels rest on.
    init : str or path, optional
        A model artifact (``.keras`` or ``.json``, checked) whose weights training starts from
        (same architecture and input shape); the card's ``training_data.init`` names it.
    choose_on : sequence of path
        Realsets (:mod:`s2v_batch.training.realsets`): the weights kept are those of the epoch
        best on them (:data:`s2v_batch.training.choice.CHOICE_CRITERION`), not of the lowest
        validation loss; the card's ``training_data.model_choice`` has the per-epoch figures.
    real_train : sequence of path
        Realsets whose training groups are mixed into every batch at ``config.real_weight``
        (:func:`s2v_batch.training.choice.prepare_real`); the held-out groups never are.

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainingError
        Unknown architecture, unreadable stores, no labelled stamps, a training or
        validation split without both classes, or an ``init`` artifact or realset that does
        not fit. (Bad values of ``config`` are refused when it
        is built: :class:`~s2v_batch.core.config.ConfigError`.)
    """
    t0 = time.perf_counter()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if config.arch not in ARCHITECTURES:
        raise TrainingError(
            f"unknown architecture {config.arch!r}; choose one of {sorted(ARCHITECTURES)}"
        )

    def say(msg: str) -> None:
        if progress:
            print(f"[train] {msg}", file=sys.stderr, flush=True)

    paths = resolve_nights(nights)
    surveys = sorted({_survey_of_night(p) for p in paths})
    if len(surveys) > 1:
        raise TrainingError(
            f"the nights are of several surveys ({', '.join(surveys)}): a model is trained on "
            "one survey's stamps (select with --season)"
        )
    relabel, human = None, None
    if verdicts is not None:
        paths, relabel, human = verdict_labels(verdicts, paths)
    source = LabelledNights(paths, relabel=relabel)
    n_split = [source.count(s) for s in (TRAIN, VALIDATION, TEST)]
    n_lab = sum(n_split)
    if n_lab == 0:
        raise TrainingError(
            f"no labelled stamps (label 0 or 1) in {len(paths)} night(s); ingest with --labels"
        )
    for s, what in ((TRAIN, "training"), (VALIDATION, "validation")):
        for lab, lname in ((LABEL_REAL, "real"), (LABEL_ARTIFACT, "artifact")):
            if source.count_label(s, lab) == 0:
                raise TrainingError(
                    f"the {what} split has no {lname} stamps ({n_lab} labelled in all): "
                    "more labelled data of both classes is needed"
                )
    say(
        f"{len(paths)} night(s), {n_lab} labelled stamps: {n_split[0]} train, {n_split[1]} "
        f"validation, {n_split[2]} test (split by stamp_id hash)"
    )

    mix, choice_sets, real_facts = prepare_real(
        real_train, choose_on, input_shape=source.input_shape, survey=surveys[0],
        weight=config.real_weight, batch_size=config.batch_size,
    )  # fmt: skip
    keras.utils.set_random_seed(config.seed)
    model = build_model(config.arch, source.input_shape)
    init_facts = None
    if init is not None:
        init_facts = warm_start(model, init, config.arch, source.input_shape)
        say(f"weights from {init} ({init_facts['name']}-{init_facts['version']})")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=float(config.learning_rate)),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.AUC(name="auc")],
        jit_compile=False,  # XLA was slower on the CPU
    )
    train_ds = TrainBatches(source, config.batch_size, config.seed, config.shuffle_window,
                            augmentation=config.augment, real=mix)  # fmt: skip
    val_ds = EvalBatches(source, VALIDATION, max(config.batch_size, 256))
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.patience, restore_best_weights=True, min_delta=1e-4
    )
    chooser = RealChoice(choice_sets) if choice_sets else None
    # One line an epoch in the run log: a long CPU training is followed there, not on the terminal.
    epoch_log = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: _log.info(
            "epoch %d: %s", epoch + 1, ", ".join(f"{k} {v:.5g}" for k, v in (logs or {}).items())
        )
    )
    n_params = model.count_params()
    say(f"training {config.arch} ({n_params:,} parameters), up to {config.epochs} epochs")
    fit = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.epochs,
        callbacks=[stop, epoch_log] + ([chooser] if chooser else []),
        shuffle=False,  # the dataset shuffles itself; Keras' index shuffle would defeat the cache
        verbose=(1 if sys.stderr.isatty() else 2) if progress else 0,
    )
    history = {k: [float(v) for v in vals] for k, vals in fit.history.items()}
    val_losses = history.get("val_loss", [])
    best_epoch = int(np.nanargmin(val_losses)) + 1 if val_losses else len(history.get("loss", []))
    if chooser is not None and chooser.best_weights is not None:
        model.set_weights(chooser.best_weights)  # the epoch best on the real stamps
        best_epoch = chooser.best_epoch
        real_facts["model_choice"]["chosen_epoch"] = best_epoch
        real_facts["model_choice"]["per_epoch"] = chooser.rows
        real_facts["model_choice"]["before_training"] = chooser.initial
        say(f"kept epoch {best_epoch}, the best on the --choose-on realsets")

    say("scoring the validation and test splits")
    threshold, vs, vl, vk = validation_threshold(source, model, config.target_recall)
    ok = np.isfinite(vs)
    # bfloat16 scores move by up to ~0.03 (docs/MODEL.md): its own threshold, same recall.
    bf16_threshold = validation_threshold(source, model, config.target_recall, "bfloat16")[0]
    predictor = Predictor.from_model(model, batch_size=256)
    validation_metrics = _split_metrics(vs, vl, vk, threshold)
    ts, tl, tk = _score_split(source, TEST, predictor)
    test_metrics = _split_metrics(ts, tl, tk, threshold)
    validation_metrics["best_epoch"] = best_epoch
    validation_metrics["val_loss"] = _clean(val_losses[best_epoch - 1]) if val_losses else None

    data = {
        "description": "labelled stamps of the listed Zarr night datasets",
        "simulated": _simulated_flag(paths),
        **(training_data or {}),
        "stores": [str(p) for p in paths],
        "n_stamps": {"train": n_split[0], "validation": n_split[1], "test": n_split[2]},
        "split": "splitmix64(stamp_id) -> [0, 1): train < 0.8 <= validation < 0.9 <= test",
        "training_seed": config.seed,
        "epochs_run": len(history.get("loss", [])),
        "batch_size": config.batch_size,
        "learning_rate": float(config.learning_rate),
        "augmentation": augmentation_text(config.augment),
        **real_facts,
    }
    if init_facts is not None:
        data["init"] = init_facts
    if human is not None:
        data["human_verdicts"] = human
        data["description"] = (
            f"{data['description']}; {human['n_labels']} stamps labelled by the consensus of "
            f"{human['n_verdicts']} human verdicts ({human['database']})"
        )
    card = ModelCard(
        name=config.name,
        version=config.version,
        architecture=config.arch,
        threshold=float(threshold),
        thresholds={"bfloat16": bf16_threshold},
        target_recall=float(config.target_recall),
        input_shape=source.input_shape,
        validation_metrics=validation_metrics,
        test_metrics=test_metrics,
        training_data=_clean(data),
        training_command=command,
        survey=surveys[0],
        max_masked_fraction=(
            config.max_masked_fraction
            if config.max_masked_fraction is not None
            else max_masked_fraction(paths)
        ),
    )
    model_path = save_artifact(model, card, out)
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
    return result  # the command prints its line: once


def max_masked_fraction(paths: Sequence[Path]) -> float | None:
    """The largest ``masked_fraction`` among the labelled stamps of the nights (None: no night
    records one), what a trained model's card states it was validated on."""
    import zarr  # deferred: a heavy library, as in the data module

    best: float | None = None
    for p in paths:
        group = zarr.open_group(p, mode="r")
        if "masked_fraction" not in group:
            continue
        frac = np.asarray(group["masked_fraction"][:])
        label = np.asarray(group["label"][:])
        frac = frac[(label == LABEL_REAL) | (label == LABEL_ARTIFACT)]
        if len(frac):
            best = max(best or 0.0, float(np.nanmax(frac)))
    return best


def _survey_of_night(path: Path) -> str:
    """The survey of a night dataset ``<season>/<night>.zarr`` (DES where the folder is no season)."""
    try:
        return survey_of_season(path.parent.name)
    except ValueError:
        return "des"
