"""The model's own layers: :class:`StampNormalization` (raw pixels in) and :class:`NonFiniteGuard`.

Both are registered Keras serializables under the package name ``s2v_batch``: a ``.keras`` file
stores them as ``s2v_batch>StampNormalization`` and ``s2v_batch>NonFiniteGuard``, so this module
must be imported before such a file is loaded (:func:`s2v_batch.model.artifact.load_artifact`
does), and the registered names never change (the shipped model refers to them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from s2v_batch.model.backend import keras

layers, ops = keras.layers, keras.ops

__all__ = ["NonFiniteGuard", "StampNormalization"]


@keras.saving.register_keras_serializable(package="s2v_batch")
class StampNormalization(layers.Layer):
    """Cast raw pixels to float32 and normalise each stamp, per channel, robustly.

    For every stamp and channel, a sky level ``m`` and noise ``s``: mean and standard deviation
    of the outer ring of the stamp (the detection sits at the centre, so the ring is mostly sky),
    then ``iterations`` rounds of clipping at ``clip_sigma`` over the whole stamp (bright
    sources, cosmic rays, corner ticks and fill values drop out), all measured on every
    ``stats_stride``-th pixel in each direction (676 of 2601 pixels by default: plenty for two
    numbers, and a quarter of the work). Then ``z = (x - m) / scale`` with
    ``scale = max(s, 1e-3 std) + (1e-7 + 1e-6 |m|) max|x|``: never zero, so constant or
    coarsely quantised channels stay finite; the statistics are computed in units of ``max|x|``
    so no float32 square overflows whatever the pixel units. Last, ``y = z / (1 + |z| / limit)``:
    linear for faint signal, compressed smoothly into ``(-limit, limit)`` for bright sources,
    which keep their shape instead of saturating at a clip.

    The result depends on the pixel values only, not on their dtype: a uint8 stamp and the same
    values as float32 give the same output. It is invariant to a gain and an offset per channel,
    so the gif (already scaled to 8 bits) and fits (counts) versions of a stamp map to similar
    inputs. Non-finite pixels give non-finite outputs (see :class:`NonFiniteGuard`).

    A median through ``ops.sort`` was measured at about 0.5 s per 512 stamps on the 2-core CPU
    (TensorFlow sorts with top-k), as long as the whole CNN; these reductions cost a few ms.

    Parameters
    ----------
    clip_sigma : float
        Clipping threshold in units of the current standard deviation.
    iterations : int
        Rounds of clipping after the first, unclipped estimate.
    limit : float
        Bound of the output.
    stats_stride : int
        Pixel step of the subsample the statistics are measured on.
    """

    def __init__(
        self,
        clip_sigma: float = 3.0,
        iterations: int = 2,
        limit: float = 30.0,
        stats_stride: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not (clip_sigma > 0 and limit > 0 and int(iterations) >= 0 and int(stats_stride) >= 1):
            raise ValueError(
                "StampNormalization needs clip_sigma > 0, limit > 0, iterations >= 0 and "
                "stats_stride >= 1"
            )
        self.clip_sigma = float(clip_sigma)
        self.iterations = int(iterations)
        self.limit = float(limit)
        self.stats_stride = int(stats_stride)

    def statistics(self, x: Any) -> tuple[Any, Any]:
        """Per stamp and channel location and scale, shape ``(n, 1, 1, c)``, of float32 ``x``."""
        k = self.stats_stride
        sub = x[:, ::k, ::k, :] if k > 1 else x
        axes = (1, 2)
        # Work in units of the largest |pixel| so squares cannot overflow whatever the data's
        # units (counts, 8-bit levels, 1e30 fill values), and the floor below is unit-free.
        unit = ops.max(ops.abs(sub), axis=axes, keepdims=True) + 1e-30
        sub = sub / unit
        m = ops.mean(sub, axis=axes, keepdims=True)
        std_all = ops.sqrt(ops.mean(ops.square(sub - m), axis=axes, keepdims=True))
        # First guess from the outer ring: the detection sits at the centre, so the ring is
        # mostly sky, and clipping from there converges in a few rounds even for a bright star.
        h, w_ = sub.shape[1], sub.shape[2]
        b = max(1, min(h, w_) // 8)
        ring = np.ones((1, h, w_, 1), np.float32)
        ring[:, b : h - b, b : w_ - b, :] = 0.0
        w = ops.convert_to_tensor(ring)
        for i in range(self.iterations + 1):
            nw = ops.maximum(ops.sum(w, axis=axes, keepdims=True), 1.0)
            m = ops.sum(w * sub, axis=axes, keepdims=True) / nw
            s = ops.sqrt(ops.sum(w * ops.square(sub - m), axis=axes, keepdims=True) / nw)
            if i < self.iterations:
                w = ops.cast(ops.abs(sub - m) <= self.clip_sigma * s, "float32")
        scale = ops.maximum(s, 1e-3 * std_all) + 1e-7 + 1e-6 * ops.abs(m)
        return m * unit, scale * unit

    # The arithmetic here is part of every saved model (a .keras file stores only the config):
    # change it only behind a new config parameter whose default keeps the old behaviour.
    def call(self, inputs: Any) -> Any:
        x = ops.cast(inputs, "float32")
        m, scale = self.statistics(x)
        # The clip turns an overflow (a pixel far beyond the subsample's range) into a bound.
        z = ops.clip((x - m) * (1.0 / scale), -1e6, 1e6)
        return z / (1.0 + ops.abs(z) * (1.0 / self.limit))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return tuple(input_shape)

    def compute_output_spec(self, inputs: Any) -> keras.KerasTensor:
        return keras.KerasTensor(inputs.shape, dtype="float32")

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            clip_sigma=self.clip_sigma,
            iterations=self.iterations,
            limit=self.limit,
            stats_stride=self.stats_stride,
        )
        return config


@keras.saving.register_keras_serializable(package="s2v_batch")
class NonFiniteGuard(layers.Layer):
    """Return NaN for every stamp that holds a non-finite pixel, the score otherwise.

    Whether NaN survives ReLU, max-pooling and clipping differs between backends and kernels, so
    the model states it explicitly at its output: a NaN or Inf pixel never yields a
    finite-looking score.

    Call it on ``[raw_pixels, score]``.
    """

    def call(self, inputs: Sequence[Any]) -> Any:
        raw, score = inputs
        raw = ops.cast(raw, "float32")
        finite = ops.all(ops.isfinite(raw), axis=(1, 2, 3))
        finite = ops.expand_dims(finite, -1)
        score = ops.cast(score, "float32")
        return ops.where(finite, score, ops.full_like(score, float("nan")))

    def compute_output_shape(self, input_shapes: Sequence[tuple]) -> tuple:
        return tuple(input_shapes[1])

    def compute_output_spec(self, inputs: Sequence[Any]) -> keras.KerasTensor:
        return keras.KerasTensor(inputs[1].shape, dtype="float32")
