"""How a model is trained: :class:`TrainConfig`, validated once where it is made."""

from __future__ import annotations

import math
from dataclasses import dataclass

from s2v_batch.core.config import ConfigError, check_positive
from s2v_batch.model.artifact import ModelArtifactError, check_name
from s2v_batch.training.augment import AUGMENTATIONS


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained (:func:`s2v_batch.training.loop.train`); not part of a pipeline run.

    arch: architecture name (``space2vec``, ``vgg6``; checked by ``train`` against the
    registry). epochs: most epochs (early stopping may end sooner). batch_size: training batch
    (the published space2vec used 368). learning_rate: Adam's (1.4e-4 as published). patience:
    epochs without a better validation loss before stopping, the best weights kept.
    target_recall: recall on the validation reals that the threshold keeps (0.99 as published).
    seed: seeds weights, order, augmentation and dropout. name, version: of the artifact (its
    file names). shuffle_window: stamps shuffled together (about 31 kB a 51x51 stamp, two
    windows held). augment: the augmentation set (``flips`` as published, ``survey`` adding PSF,
    noise-texture, background and masked-edge changes, ``none``; :mod:`s2v_batch.training.augment`).
    real_weight: sample weight of the real stamps ``train(real_train=...)`` mixes into each batch
    (the simulated stamps weigh 1). max_masked_fraction: the largest masked fraction the card
    says the model was validated on (scores above it are flagged); None: the largest among the
    labelled stamps it is trained on. The ``repr`` is valid Python, so a card can record the call that made it.
    """

    arch: str = "space2vec"
    epochs: int = 20
    batch_size: int = 128
    learning_rate: float = 1.4e-4
    patience: int = 3
    target_recall: float = 0.99
    seed: int = 0
    name: str = "space2vec"
    version: str = "1"
    shuffle_window: int = 2048
    augment: str = "flips"
    real_weight: float = 1.0
    max_masked_fraction: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.arch, str) or not self.arch:
            raise ConfigError(f"arch must be an architecture name, got {self.arch!r}")
        for name in ("epochs", "batch_size", "shuffle_window"):
            check_positive(name, getattr(self, name))
        for name in ("patience", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("learning_rate", "target_recall"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ConfigError(f"{name} must be a number, got {value!r}")
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(
                f"augment must be one of {sorted(AUGMENTATIONS)}, got {self.augment!r}"
            )
        if (
            not isinstance(self.real_weight, int | float)
            or isinstance(self.real_weight, bool)
            or not 0.0 < self.real_weight < math.inf
        ):
            raise ConfigError(f"real_weight must be a number > 0, got {self.real_weight!r}")
        limit = self.max_masked_fraction
        if limit is not None and (
            not isinstance(limit, int | float) or isinstance(limit, bool) or not 0.0 <= limit <= 1.0
        ):
            raise ConfigError(f"max_masked_fraction must be in [0, 1], got {limit!r}")
        if not 0.0 < self.learning_rate < math.inf:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0.0 < self.target_recall <= 1.0:
            raise ConfigError(f"target_recall must be in (0, 1], got {self.target_recall}")
        try:  # refused now rather than after hours of training, when the files are written
            check_name(self.name, "name")
            check_name(self.version, "version")
        except ModelArtifactError as exc:
            raise ConfigError(str(exc)) from None
