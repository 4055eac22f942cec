"""The models shipped with the package, and which one takes a survey's stamps (reads cards only).

``s2v_batch/data/models`` holds each model's ``.keras`` file and its card; :func:`shipped_model_for`
picks the one whose card names a survey and a stamp size, as ``s2v score`` and the flows do when
no model is named. Reading a card imports no Keras (:mod:`s2v_batch.model.artifact`).
"""

from __future__ import annotations

import os
from pathlib import Path

from s2v_batch.model.artifact import (
    DEFAULT_MODEL_NAME,
    DEFAULT_MODEL_VERSION,
    ModelArtifactError,
    load_card,
)

__all__ = ["default_model_path", "shipped_model_for", "shipped_models_dir"]


def shipped_models_dir() -> Path:
    """The folder of the models shipped with the package (``s2v_batch/data/models``)."""
    return Path(__file__).resolve().parent.parent / "data" / "models"


def default_model_path() -> Path:
    """Path of the demo model shipped with the package (``space2vec-demo-2.keras``).

    Raises
    ------
    ModelArtifactError
        When the package was installed without its model files.
    """
    path = shipped_models_dir() / f"{DEFAULT_MODEL_NAME}-{DEFAULT_MODEL_VERSION}.keras"
    if not path.is_file():
        raise ModelArtifactError(
            f"the shipped model {path} is missing; reinstall s2v-batch or pass a model path"
        )
    return path


def shipped_model_for(
    survey: str, stamp_size: int, models_dir: str | os.PathLike[str] | None = None
) -> Path:
    """The shipped model whose card matches a survey and a stamp edge (reads cards only).

    Parameters
    ----------
    survey : str
        ``des``, ``ztf`` or ``rubin`` (a card without ``survey`` is a DES model).
    stamp_size : int
        Stamp edge in pixels of the stored stamps.
    models_dir : path, optional
        Where to look; default :func:`shipped_models_dir`.

    Returns
    -------
    Path
        The ``.keras`` file: for DES the default demo model when it matches, otherwise the
        matching card of the highest (name, version), so the choice never depends on listing
        order.

    Raises
    ------
    ModelArtifactError
        When no shipped model matches (the message says to give one).
    """
    folder = Path(models_dir) if models_dir is not None else shipped_models_dir()
    survey, size = str(survey).lower(), int(stamp_size)
    if models_dir is None and survey == "des":
        default = default_model_path()
        card = load_card(default)
        if card.fits(survey, size):
            return default
    found = []
    for card_path in sorted(folder.glob("*.json")):
        try:
            card = load_card(card_path)
        except ModelArtifactError:
            continue  # not a model card; a broken one is reported when it is asked for by name
        if card.fits(survey, size):
            keras_path = card_path.with_suffix(".keras")
            if keras_path.is_file():
                found.append(((card.name, _version_key(card.version)), keras_path))
    if not found:
        raise ModelArtifactError(
            f"no shipped model takes {survey} stamps of {size}x{size} pixels (in {folder}); "
            "give a model with --model"
        )
    return max(found)[1]


def _version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Order versions part by part, numbers numerically (``10`` after ``9``) and before words."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in version.split("."))
