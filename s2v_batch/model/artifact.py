"""The model artifact: a ``.keras`` file and its JSON card, written and read together.

The card (:class:`ModelCard`) says what a model is, how to use it and what it was trained on;
its ``sha256`` pins the ``.keras`` file, which is loaded only in Keras' safe mode and only when
the digest matches (:func:`load_artifact`). Reading a card (:func:`load_card`,
:meth:`ModelCard.from_json`, :func:`file_sha256`; the shipped models' lookup in
:mod:`s2v_batch.model.shipped`) imports neither Keras nor TensorFlow: the flows, the CLI and the scoring driver read cards in processes that
never run the model. Keras is imported inside :func:`save_artifact` and :func:`load_artifact`.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s2v_batch.core.conventions import CHANNELS, STAMP_SIZE

if TYPE_CHECKING:
    import keras

__all__ = [
    "DEFAULT_INPUT_SHAPE",
    "DEFAULT_MODEL_NAME",
    "DEFAULT_MODEL_VERSION",
    "LABEL_CONVENTION",
    "SCORE_CONVENTION",
    "ModelArtifactError",
    "ModelCard",
    "check_name",
    "file_sha256",
    "load_artifact",
    "load_card",
    "save_artifact",
]

DEFAULT_INPUT_SHAPE: tuple[int, int, int] = (STAMP_SIZE, STAMP_SIZE, len(CHANNELS))
DEFAULT_MODEL_NAME = "space2vec-demo"
DEFAULT_MODEL_VERSION = "2"
LABEL_CONVENTION = "1 = real, 0 = artifact"
SCORE_CONVENTION = "probability of real; candidate when score >= threshold"

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ModelArtifactError(ValueError):
    """A model file or card is missing, malformed, tampered with or not ours."""


@dataclasses.dataclass
class ModelCard:
    """What a model is, how to use it and what it was trained on; stored beside the ``.keras``.

    ``sha256`` is the digest of the ``.keras`` file; :func:`save_artifact` fills it in, with
    ``input_shape``, ``keras_version`` and ``backend``.
    """

    name: str
    version: str
    architecture: str
    threshold: float
    target_recall: float
    sha256: str = ""
    input_shape: tuple[int, int, int] = DEFAULT_INPUT_SHAPE
    channels: list[str] = dataclasses.field(default_factory=lambda: list(CHANNELS))
    normalisation: str = (
        "in-model StampNormalization layer: raw stored pixels (uint8 or float32) cast to float32; "
        "per stamp and channel, z = (x - m) / s with m, s the mean and standard deviation of the "
        "outer ring refined by 2 rounds of 3-sigma clipping (every 2nd pixel; s floored), "
        "then z / (1 + |z| / 30)"
    )
    label_convention: str = LABEL_CONVENTION
    score_convention: str = SCORE_CONVENTION
    validation_metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    test_metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    training_data: dict[str, Any] = dataclasses.field(default_factory=dict)
    training_command: str | None = None
    created_at: str = dataclasses.field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    )
    #: The survey whose stamps the model was trained on (``des``, ``ztf``, ``rubin``); cards
    #: written before surveys other than DES were read lack it and mean DES.
    survey: str = "des"
    # Filled in by save_artifact from the Keras that wrote the file; "" on a card not yet saved.
    # No default may import Keras: reading a card must not.
    keras_version: str = ""
    backend: str = ""
    #: The threshold of each precision other than float32 (``{"bfloat16": t}``), chosen on the
    #: same validation stamps for the same ``target_recall`` as ``threshold`` (float32's): the
    #: bfloat16 scores shift near it. Written by ``s2v train``; ``s2v threshold`` adds it to an
    #: older card without retraining. Cards without it know float32 only.
    thresholds: dict[str, float] = dataclasses.field(default_factory=dict)
    #: The largest ``masked_fraction`` (masked pixels, edge-cut-out pad included) of the stamps
    #: the model was validated on; stamps above it are still scored and their score rows say so
    #: (``masked_over_limit``). None: the card states no limit.
    max_masked_fraction: float | None = None
    #: The model on public real stamps (``benchmarks/realdata/check.py --write-card``): date,
    #: command, the ``sha256`` of the model it measured, figures per source. Empty on a card
    #: not yet checked; informative only (nothing reads it to score).
    real_data: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def stem(self) -> str:
        """``<name>-<version>``, the file name of the artifact without extension."""
        return f"{self.name}-{self.version}"

    def threshold_for(self, precision: str) -> float:
        """The threshold of scores computed at ``precision`` (``float32``: :attr:`threshold`).

        Raises
        ------
        ModelArtifactError
            When the card has no threshold for that precision (an older card): the message says
            how to add one.
        """
        if precision == "float32":
            return float(self.threshold)
        if precision not in self.thresholds:
            raise ModelArtifactError(
                f"model card {self.stem} has no {precision} threshold (its threshold is for "
                f"float32 scores); add it with `s2v threshold <card>` or give --threshold"
            )
        return float(self.thresholds[precision])

    def fits(self, survey: str, stamp_size: int) -> bool:
        """Whether the model takes ``survey``'s stamps of edge ``stamp_size`` pixels."""
        size = int(stamp_size)
        return self.survey == str(survey).lower() and tuple(self.input_shape[:2]) == (size, size)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        d = dataclasses.asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    def to_json(self, indent: int = 2) -> str:
        """The card as JSON text."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """Build a card from a dict, checking the required fields.

        Raises
        ------
        ModelArtifactError
            When a required field is missing, a field is unknown or a value has the wrong type.
        """
        if not isinstance(data, dict):
            raise ModelArtifactError("a model card must be a JSON object")
        fields = {f.name for f in dataclasses.fields(cls)}
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        } | {"sha256"}
        missing = sorted(required - set(data))
        if missing:
            raise ModelArtifactError(f"model card lacks required field(s): {', '.join(missing)}")
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ModelArtifactError(f"model card has unknown field(s): {', '.join(unknown)}")
        kw = dict(data)
        try:
            kw["input_shape"] = tuple(int(v) for v in kw.get("input_shape", DEFAULT_INPUT_SHAPE))
            kw["threshold"] = float(kw["threshold"])
            kw["target_recall"] = float(kw["target_recall"])
            kw["name"], kw["version"] = str(kw["name"]), str(kw["version"])
            kw["survey"] = str(kw.get("survey", "des")).lower()
            if kw.get("max_masked_fraction") is not None:
                kw["max_masked_fraction"] = float(kw["max_masked_fraction"])
                if not 0.0 <= kw["max_masked_fraction"] <= 1.0:
                    raise ValueError(
                        f"max_masked_fraction {kw['max_masked_fraction']} not in [0, 1]"
                    )
        except (TypeError, ValueError) as exc:
            raise ModelArtifactError(f"model card has a malformed value: {exc}") from exc
        if len(kw["input_shape"]) != 3:
            raise ModelArtifactError(
                f"model card input_shape must have 3 entries: {data['input_shape']}"
            )
        if list(kw.get("channels", CHANNELS)) != list(CHANNELS):
            raise ModelArtifactError(
                f"model card channels {kw.get('channels')} differ from the project's {list(CHANNELS)}"
            )
        if not (0.0 <= kw["threshold"] <= 1.0) or math.isnan(kw["threshold"]):
            raise ModelArtifactError(f"model card threshold {kw['threshold']} is not in [0, 1]")
        kw["thresholds"] = _precision_thresholds(kw.get("thresholds", {}))
        if not isinstance(kw.get("real_data", {}), dict):
            raise ModelArtifactError("model card real_data must be a JSON object")
        return cls(**kw)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        """Parse a card from JSON text.

        Raises
        ------
        ModelArtifactError
            When the text is not JSON or not a valid card.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelArtifactError(f"model card is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def _precision_thresholds(value: Any) -> dict[str, float]:
    """A card's ``thresholds``, checked: known precisions (bfloat16), numbers in [0, 1]."""
    ok = isinstance(value, dict) and set(value) <= {"bfloat16"}
    try:
        out = {k: float(t) for k, t in value.items()} if ok else {}
    except (TypeError, ValueError):
        ok = False
    if not ok or not all(0.0 <= t <= 1.0 for t in out.values()):
        raise ModelArtifactError(
            f"model card thresholds must map bfloat16 to a threshold in [0, 1], got {value!r}"
        )
    return out


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_name(value: str, what: str) -> None:
    """Refuse a model name or version that cannot be part of a file name.

    Raises
    ------
    ModelArtifactError
        Unless ``value`` is letters, digits, ``.``, ``_`` or ``-``, starting with a letter or
        digit.
    """
    if not isinstance(value, str) or not _SAFE_NAME.match(value):
        raise ModelArtifactError(
            f"model {what} {value!r} must be letters, digits, '.', '_' or '-' "
            "(it becomes a file name)"
        )


def _strip_optimizer(model: keras.Model) -> keras.Model:
    """A copy without compile state: ``.keras`` files always carry the optimizer's variables."""
    if getattr(model, "optimizer", None) is None:
        return model
    # Not keras.models.clone_model: it compiles the clone like the original (Keras >= 3.10).
    clone = model.__class__.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    return clone


def save_artifact(model: keras.Model, card: ModelCard, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``<name>-<version>.keras`` and ``<name>-<version>.json`` into ``out_dir``.

    The model is saved without optimizer state; the card's ``sha256`` (and ``input_shape``,
    ``keras_version``, ``backend``) are set from what was written. Both files are written under
    temporary names and renamed, so a reader never sees half an artifact.

    Parameters
    ----------
    model : keras.Model
    card : ModelCard
        Updated in place with the digest.
    out_dir : path
        Created if missing.

    Returns
    -------
    pathlib.Path
        The ``.keras`` path.

    Raises
    ------
    ModelArtifactError
        For a name or version that cannot be a file name.
    """
    # Keras only now: reading a card must not import TensorFlow
    from s2v_batch.model.backend import keras

    check_name(card.name, "name")
    check_name(card.version, "version")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keras_path = out / f"{card.stem}.keras"
    card_path = out / f"{card.stem}.json"
    plain = _strip_optimizer(model)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{card.stem}-", suffix=".keras", dir=out)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        plain.save(tmp)
        tmp.chmod(0o644)  # mkstemp makes it private; a model is meant to be shared
        card.sha256 = file_sha256(tmp)
        card.input_shape = tuple(int(v) for v in model.input_shape[1:])
        card.keras_version = keras.__version__
        card.backend = keras.backend.backend()
        tmp_card = out / f".{card.stem}.json.tmp"
        tmp_card.write_text(card.to_json())
        os.replace(tmp, keras_path)
        os.replace(tmp_card, card_path)
    finally:
        tmp.unlink(missing_ok=True)
    return keras_path


def _artifact_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix == ".keras":
        return p, p.with_suffix(".json")
    if p.suffix == ".json":
        return p.with_suffix(".keras"), p
    raise ModelArtifactError(f"{p}: expected the .keras file or the .json card of a model artifact")


def load_card(path: str | os.PathLike[str]) -> ModelCard:
    """Read the card of an artifact (the ``.keras`` or the ``.json`` path) without the model.

    Raises
    ------
    ModelArtifactError
        When the card is missing or invalid.
    """
    _, card_path = _artifact_paths(path)
    if not card_path.is_file():
        raise ModelArtifactError(
            f"{card_path}: model card missing; a model is only loaded with its card "
            "(written by save_artifact beside the .keras file)"
        )
    try:
        text = card_path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelArtifactError(f"{card_path}: cannot read the model card: {exc}") from exc
    try:
        return ModelCard.from_json(text)
    except ModelArtifactError as exc:
        raise ModelArtifactError(f"{card_path}: {exc}") from exc


def load_artifact(path: str | os.PathLike[str]) -> tuple[keras.Model, ModelCard]:
    """Load a model artifact after checking the ``.keras`` file against its card's sha256.

    Loads in Keras safe mode (no lambda or arbitrary code) without compiling.

    Parameters
    ----------
    path : path
        ``<name>-<version>.keras`` or ``<name>-<version>.json``.

    Returns
    -------
    (keras.Model, ModelCard)

    Raises
    ------
    ModelArtifactError
        When either file is missing, the digest differs (modified or foreign file), Keras
        cannot load it, or its input shape disagrees with the card.
    """
    keras_path, card_path = _artifact_paths(path)
    card = load_card(card_path)
    if not keras_path.is_file():
        raise ModelArtifactError(f"{keras_path}: model file missing (card {card_path.name} found)")
    digest = file_sha256(keras_path)
    if digest != card.sha256:
        raise ModelArtifactError(
            f"{keras_path}: sha256 {digest[:16]}... does not match its card "
            f"({card.sha256[:16] or '<empty>'}...); the file was modified or belongs to "
            "another model; refusing to load it"
        )
    # Keras only now, the file checked; the layers module registers the classes it names.
    import s2v_batch.model.layers  # noqa: F401
    from s2v_batch.model.backend import keras

    try:
        model = keras.saving.load_model(keras_path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types for a foreign or broken file
        raise ModelArtifactError(f"{keras_path}: Keras cannot load this model: {exc}") from exc
    shape = tuple(int(v) for v in model.input_shape[1:])
    if shape != tuple(card.input_shape):
        raise ModelArtifactError(
            f"{keras_path}: model input shape {shape} differs from its card's {card.input_shape}"
        )
    return model, card
