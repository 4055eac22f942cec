"""The validated inputs of a run: paths, model card, labels CSV and config, checked once."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from s2v_batch.core.config import PipelineConfig
from s2v_batch.model.artifact import ModelCard, load_card
from s2v_batch.model.precision import resolve_precision
from s2v_batch.model.shipped import default_model_path, shipped_model_for

#: The autoscan labels CSV looked for at the top of the raw root (DESIGN.md section 4).
LABELS_CSV = "autoscan_features.3.csv"


class InputError(ValueError):
    """Inputs a run cannot use (bad input: never retried)."""


@dataclass(frozen=True)
class RunInputs:
    """The validated inputs of a run, shared by every step."""

    raw: Path
    store: Path
    scores: Path
    reports: Path
    model: Path
    card: ModelCard
    labels: Path | None
    config: PipelineConfig
    #: False when no model was named: ``model`` is then the shipped DES model, and
    #: :meth:`for_survey` swaps in the shipped model of another survey's stamps.
    model_given: bool = True

    def for_survey(self, survey: str) -> RunInputs:
        """These inputs with the model that scores ``survey``'s stamps: the named model, else
        the shipped one whose card matches the survey and its configured stamp size
        (:func:`~s2v_batch.model.shipped.shipped_model_for`, as ``s2v score`` picks)."""
        size = self.config.ingest.size_for(survey)
        # A card that already fits is the shipped choice (it came from it): no cards re-read
        # for every night of a run.
        if self.model_given or self.card.fits(survey, size):
            return self
        path = shipped_model_for(survey, size)
        return self if path == self.model else replace(self, model=path, card=load_card(path))

    @property
    def precision(self) -> str:
        """The precision scoring computes in: the config's, ``auto`` resolved on this machine
        (scoring resolves it again on its workers)."""
        return resolve_precision(self.config.score.precision)

    @property
    def threshold(self) -> float:
        """The threshold scoring applies: the config's override, else the model card's for
        :attr:`precision`."""
        t = self.config.score.threshold
        return float(self.card.threshold_for(self.precision) if t is None else t)

    @property
    def model_version(self) -> str:
        """``<name>-<version>`` of the model."""
        return self.card.stem

    def model_summary(self) -> dict[str, Any]:
        """The model as a run summary states it."""
        return {
            "path": str(self.model),
            "version": self.model_version,
            "sha256": self.card.sha256,
            "threshold": self.threshold,
            "precision": self.precision,
        }


def resolve_inputs(
    raw: str | os.PathLike[str],
    store: str | os.PathLike[str],
    scores: str | os.PathLike[str],
    reports: str | os.PathLike[str],
    model: str | os.PathLike[str] | None = None,
    labels: str | os.PathLike[str] | None = None,
    config: str | os.PathLike[str] | PipelineConfig | None = None,
    precision: str | None = None,
) -> RunInputs:
    """Check the paths, read the config and the model card once, find the default labels CSV.

    Parameters
    ----------
    raw, store, scores, reports : path
        Raw root (must exist), Zarr store root, Parquet scores root, reports folder (three
        different folders, created when needed).
    model : path, optional
        Model artifact (``.keras`` or its ``.json`` card); default the shipped demo model (DES),
        or another survey's shipped model through :meth:`RunInputs.for_survey`.
    labels : path, optional
        autoscan labels CSV; default ``RAW/autoscan_features.3.csv`` where it exists.
    config : path or PipelineConfig, optional
        Pipeline config (YAML file).
    precision : str, optional
        ``float32``, ``bfloat16`` or ``auto``: overrides the config's ``score.precision``.

    Returns
    -------
    RunInputs

    Raises
    ------
    InputError, ConfigError, ModelArtifactError
        (all ``ValueError``) with a message that names the bad input.
    """
    raw_p = Path(raw).expanduser().resolve()
    if not raw_p.exists():
        raise InputError(f"raw input {raw_p} does not exist")
    paths = {}
    for name, value in (("store", store), ("scores", scores), ("reports", reports)):
        p = Path(value).expanduser().resolve()
        if p.exists() and not p.is_dir():
            raise InputError(f"{name} {p} exists and is not a folder")
        paths[name] = p
    if len({p.resolve() for p in paths.values()}) < 3:
        raise InputError("store, scores and reports must be three different folders")
    model_p = Path(model).expanduser().resolve() if model else default_model_path()
    card = load_card(model_p)
    if labels:
        labels_p: Path | None = Path(labels).expanduser().resolve()
        if not labels_p.is_file():
            raise InputError(f"labels CSV {labels_p} does not exist")
    else:
        default = (raw_p if raw_p.is_dir() else raw_p.parent) / LABELS_CSV
        labels_p = default if default.is_file() else None
    if isinstance(config, PipelineConfig):
        cfg = config
    else:
        cfg = PipelineConfig.from_yaml(config) if config else PipelineConfig()
    if precision is not None:
        cfg = replace(cfg, score=replace(cfg.score, precision=precision))
    return RunInputs(raw_p, paths["store"], paths["scores"], paths["reports"], model_p, card,
                     labels_p, cfg, model_given=bool(model))  # fmt: skip
