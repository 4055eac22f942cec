"""The CNN architectures by name: space2vec (Dessa 2018) and vgg6 (braai), and their FLOP count.

Standard Keras 3 layers and ``keras.ops`` only, so one ``.keras`` file loads and scores under the
TensorFlow and the JAX backends alike. The model takes raw stored pixels, ``(n, 51, 51, 3)`` in
channel order ``srch, temp, diff``, uint8 (gif-ingested) or float32 (fits-ingested), and returns
the probability that each stamp is a real transient (DESIGN.md section 3). Its first layer,
:class:`~s2v_batch.model.layers.StampNormalization`, makes the file self-contained.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from s2v_batch.core.conventions import CHANNELS
from s2v_batch.model.artifact import DEFAULT_INPUT_SHAPE
from s2v_batch.model.backend import keras
from s2v_batch.model.layers import NonFiniteGuard, StampNormalization

layers = keras.layers

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_ARCH",
    "FLOAT32_LAYERS",
    "build_model",
    "count_flops",
    "space2vec",
    "vgg6",
]

DEFAULT_ARCH = "space2vec"

#: Layers kept in float32 under a mixed-precision policy: the statistics of the normalisation
#: need float32 (sky levels of thousands of counts), the sigmoid output should be exact.
FLOAT32_LAYERS = frozenset({"normalize", "score", "guard"})


def _head(x: Any, raw: Any, dense: int, dropout: float, name: str, dtype: Any) -> keras.Model:
    x = layers.Dense(dense, activation="relu", name="dense", dtype=dtype)(x)
    x = layers.Dropout(dropout, name="dropout", dtype=dtype)(x)
    # float32 output whatever the policy: a probability compared to a threshold.
    score = layers.Dense(1, activation="sigmoid", name="score", dtype="float32")(x)
    out = NonFiniteGuard(name="guard", dtype="float32")([raw, score])
    return keras.Model(raw, out, name=name)


def space2vec(
    input_shape: tuple[int, int, int] = DEFAULT_INPUT_SHAPE, dtype: Any = None
) -> keras.Model:
    """The published space2vec CNN (Dessa 2018).

    Four blocks of [Conv2D 3x3 stride 1, ReLU, Conv2D 3x3 stride 2, BatchNorm, ReLU] with 25, 63,
    119 and 210 filters, one more Conv2D 3x3 (210), Flatten, Dense(128) ReLU, Dropout(0.45),
    Dense(1, sigmoid). "same" padding everywhere: 1,702,877 parameters and 126 MFLOP a 51x51
    stamp, the published figures (``valid`` strided convolutions give 1.38 M).

    Parameters
    ----------
    input_shape : tuple of int
        ``(height, width, channels)``.
    dtype : str or keras.DTypePolicy, optional
        Policy of the convolution and dense layers (e.g. ``"mixed_bfloat16"``); the
        normalisation and the output stay float32.

    Returns
    -------
    keras.Model
    """
    raw = keras.Input(shape=tuple(input_shape), name="stamps")
    x = StampNormalization(name="normalize", dtype="float32")(raw)
    for i, filters in enumerate((25, 63, 119, 210), start=1):
        x = layers.Conv2D(
            filters, 3, padding="same", activation="relu", name=f"b{i}_conv", dtype=dtype
        )(x)
        x = layers.Conv2D(filters, 3, strides=2, padding="same", name=f"b{i}_down", dtype=dtype)(x)
        x = layers.BatchNormalization(name=f"b{i}_bn", dtype=dtype)(x)
        x = layers.ReLU(name=f"b{i}_relu", dtype=dtype)(x)
    x = layers.Conv2D(210, 3, padding="same", name="top_conv", dtype=dtype)(x)
    x = layers.Flatten(name="flatten", dtype=dtype)(x)
    return _head(x, raw, 128, 0.45, "space2vec", dtype)


def vgg6(input_shape: tuple[int, int, int] = DEFAULT_INPUT_SHAPE, dtype: Any = None) -> keras.Model:
    """The small VGG-like network of braai (Duev et al. 2019, ZTF real/bogus).

    Conv2D 16, Conv2D 16, MaxPool 2, Dropout 0.25, Conv2D 32, Conv2D 32, MaxPool 4,
    Dropout 0.25, Flatten, Dense(256) ReLU, Dropout(0.5), Dense(1, sigmoid); 3x3 kernels, ``valid``
    padding, as published. 148,241 parameters and 23 MFLOP a 51x51 stamp.

    Parameters
    ----------
    input_shape : tuple of int
        ``(height, width, channels)``.
    dtype : str or keras.DTypePolicy, optional
        Policy of the convolution and dense layers.

    Returns
    -------
    keras.Model
    """
    raw = keras.Input(shape=tuple(input_shape), name="stamps")
    x = StampNormalization(name="normalize", dtype="float32")(raw)
    x = layers.Conv2D(16, 3, activation="relu", name="conv1", dtype=dtype)(x)
    x = layers.Conv2D(16, 3, activation="relu", name="conv2", dtype=dtype)(x)
    x = layers.MaxPooling2D(2, name="pool1", dtype=dtype)(x)
    x = layers.Dropout(0.25, name="drop1", dtype=dtype)(x)
    x = layers.Conv2D(32, 3, activation="relu", name="conv3", dtype=dtype)(x)
    x = layers.Conv2D(32, 3, activation="relu", name="conv4", dtype=dtype)(x)
    x = layers.MaxPooling2D(4, name="pool2", dtype=dtype)(x)
    x = layers.Dropout(0.25, name="drop2", dtype=dtype)(x)
    x = layers.Flatten(name="flatten", dtype=dtype)(x)
    return _head(x, raw, 256, 0.5, "vgg6", dtype)


#: Architectures by name; each takes ``(input_shape, dtype=None)`` and returns a fresh model.
ARCHITECTURES: dict[str, Callable[..., keras.Model]] = {"space2vec": space2vec, "vgg6": vgg6}


def build_model(
    arch: str = DEFAULT_ARCH,
    input_shape: tuple[int, int, int] = DEFAULT_INPUT_SHAPE,
    *,
    dtype: Any = None,
) -> keras.Model:
    """Build an untrained model by architecture name.

    Parameters
    ----------
    arch : str
        A key of :data:`ARCHITECTURES` (``"space2vec"``, ``"vgg6"``).
    input_shape : tuple of int
        ``(height, width, 3)``; channels ``srch, temp, diff``.
    dtype : str or keras.DTypePolicy, optional
        Policy of the hidden layers (``"mixed_bfloat16"`` for GPUs); default float32.

    Returns
    -------
    keras.Model
        Uncompiled; input any real dtype, output ``(n, 1)`` float32 probabilities of real.

    Raises
    ------
    ValueError
        For an unknown architecture or an input shape that is not ``(h, w, 3)``.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or shape[2] != len(CHANNELS) or min(shape) < 1:
        raise ValueError(
            f"input_shape must be (height, width, {len(CHANNELS)}) for channels {CHANNELS}; "
            f"got {tuple(input_shape)}"
        )
    try:
        return ARCHITECTURES[arch](shape, dtype=dtype)
    except ValueError as exc:  # e.g. a stamp too small for the strides and pools
        raise ValueError(f"cannot build {arch!r} for input shape {shape}: {exc}") from exc


def count_flops(model: keras.Model) -> int:
    """Floating-point operations of one stamp through the convolutions and dense layers.

    A multiply-add counts as two; biases, activations, normalisation and pooling are left out
    (a few per cent). Counted from the layer shapes, so it needs a built model.

    Parameters
    ----------
    model : keras.Model

    Returns
    -------
    int
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw, c_in, _ = layer.kernel.shape
            total += 2 * h * w * c_out * kh * kw * c_in
        elif isinstance(layer, layers.Dense):
            n_in, n_out = layer.kernel.shape
            total += 2 * n_in * n_out
    return int(total)
