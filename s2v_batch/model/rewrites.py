"""Graph rewrites for inference: BatchNormalization folded into its convolution, and the input
normalisation compiled as one XLA kernel (TensorFlow). Used by :class:`s2v_batch.model.Predictor`;
neither is saved nor used for training.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from s2v_batch.model.backend import keras
from s2v_batch.model.layers import StampNormalization

layers = keras.layers

__all__ = ["fold_batchnorm", "fuse_normalization"]


class _FoldedAway(layers.Layer):
    """Stands where a folded BatchNormalization was (it takes the BN's call arguments)."""

    def call(self, inputs: Any, training: Any = None, mask: Any = None) -> Any:
        return inputs

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return tuple(input_shape)


def fold_batchnorm(model: keras.Model) -> keras.Model:
    """An inference copy of ``model`` with each BatchNormalization folded into its Conv2D.

    ``conv -> BN`` becomes one convolution with scaled kernel and shifted bias (``BN(conv(x)) =
    conv'(x)`` with the moving statistics), so the backend runs convolution, bias and ReLU as one
    fused kernel instead of four passes over the activations. Only a BN fed by a Conv2D without
    activation whose output goes nowhere else is folded; the BN layer becomes an identity. Scores
    agree with the original to float rounding (~1e-6). Not for training.

    Parameters
    ----------
    model : keras.Model

    Returns
    -------
    keras.Model
        The same model when there is nothing to fold.
    """
    folds: dict[str, layers.BatchNormalization] = {}
    for layer in model.layers:
        if not isinstance(layer, layers.BatchNormalization) or len(layer._inbound_nodes) != 1:
            continue
        parents = layer._inbound_nodes[0].parent_nodes
        conv = parents[0].operation if len(parents) == 1 else None
        if (
            isinstance(conv, layers.Conv2D)
            and type(conv) is layers.Conv2D
            and conv.get_config()["activation"] == "linear"
            and len(conv._outbound_nodes) == 1
            and tuple(layer.axis if isinstance(layer.axis, list | tuple) else [layer.axis])
            in ((-1,), (3,))
        ):
            folds[conv.name] = layer
    if not folds:
        return model
    folded_bn = {bn.name for bn in folds.values()}

    def clone_layer(layer: layers.Layer) -> layers.Layer:
        config = layer.get_config()
        if layer.name in folds:
            config["use_bias"] = True
            return layer.__class__.from_config(config)
        if layer.name in folded_bn:
            return _FoldedAway(name=layer.name)
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    for layer in model.layers:
        new = clone.get_layer(layer.name)
        if layer.name in folded_bn:
            continue
        if layer.name in folds:
            bn = folds[layer.name]
            w = {v.path.split("/")[-1]: keras.ops.convert_to_numpy(v) for v in bn.weights}
            inv = 1.0 / np.sqrt(w["moving_variance"].astype(np.float64) + bn.epsilon)
            gain = inv * (w["gamma"] if bn.scale else 1.0)
            kernel = keras.ops.convert_to_numpy(layer.kernel).astype(np.float64)
            bias = (
                keras.ops.convert_to_numpy(layer.bias).astype(np.float64)
                if layer.use_bias
                else np.zeros(kernel.shape[-1])
            )
            shift = (bias - w["moving_mean"]) * gain + (w["beta"] if bn.center else 0.0)
            new.set_weights([(kernel * gain).astype(np.float32), shift.astype(np.float32)])
        elif layer.weights:
            new.set_weights(layer.get_weights())
    return clone


class _FusedStampNormalization(StampNormalization):
    """:class:`StampNormalization` whose arithmetic TensorFlow compiles into one XLA kernel.

    Without XLA, TensorFlow runs the layer as some forty separate operations, each a pass over
    the batch (the strided subsample alone, a gather with an inner axis of 3, costs as much as
    the first convolution): 160-200 us a stamp on one core, 11-14% of the whole CNN. Fused, 33
    us. Only this layer is compiled: XLA's own convolutions are slower than oneDNN's on the CPU.
    Same arithmetic; XLA sums in its own order, so outputs differ by float rounding (more where
    a channel's level is high against its noise, as the GIF diff channel's mid-grey), and now and
    then a pixel on a clip boundary is kept by one and clipped by the other: docs/MODEL.md, "How
    far the fused normalisation moves scores". Inference only: never saved.
    """

    #: Batches smaller than this are padded with zero stamps inside the kernel. XLA's CPU code
    #: for up to 16 stamps sums in another order than for 17 or more (scores moved by up to 1e-5
    #: with the batch size); from 17 on, a stamp's output is the same whatever the batch size and
    #: its place in it, so it is the same in a tail batch (tested at 1-512). The CNN after it still
    #: moves scores by float32 ulps with the batch (oneDNN's kernels).
    MIN_BATCH = 64

    def call(self, inputs: Any) -> Any:
        fused = self.__dict__.get("_fused")
        if fused is None:
            import tensorflow as tf

            def padded(x: Any) -> Any:
                n = x.shape[0]
                if n is None or n >= self.MIN_BATCH:
                    return super(_FusedStampNormalization, self).call(x)
                fill = tf.zeros((self.MIN_BATCH - n, *x.shape[1:]), x.dtype)
                return super(_FusedStampNormalization, self).call(tf.concat([x, fill], 0))[:n]

            fused = tf.function(padded, jit_compile=True, autograph=False)
            # Kept out of Keras's attribute tracking, which would try to track a tf.function.
            self.__dict__["_fused"] = fused
        return fused(inputs)


def fuse_normalization(model: keras.Model) -> keras.Model:
    """An inference copy of ``model`` whose :class:`StampNormalization` runs as one XLA kernel.

    TensorFlow backend only (under JAX the whole call is already one XLA program); a model
    without the layer is returned as it is.

    Parameters
    ----------
    model : keras.Model

    Returns
    -------
    keras.Model
    """
    if keras.backend.backend() != "tensorflow" or not any(
        type(layer) is StampNormalization for layer in model.layers
    ):
        return model

    def clone_layer(layer: layers.Layer) -> layers.Layer:
        if type(layer) is StampNormalization:
            return _FusedStampNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    clone.set_weights(model.get_weights())
    return clone
