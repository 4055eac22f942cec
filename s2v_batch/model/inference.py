"""Fast scoring with a model artifact: the :class:`Predictor` and the graph rewrites it applies.

:class:`Predictor` loads (and checks) an artifact once and scores stamps through one compiled
call of a fixed batch size; :func:`fold_batchnorm` folds each BatchNormalization into the
convolution before it, :func:`fuse_normalization` has TensorFlow run the input normalisation as
one XLA kernel, and a mixed-precision clone runs the hidden layers in bfloat16 (GPUs).
The backend (TensorFlow or JAX) is whatever Keras runs on; Keras comes through
:mod:`s2v_batch.model.backend`, so TensorFlow's oneDNN default is set before it loads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from s2v_batch.core.conventions import CHANNELS
from s2v_batch.model.architectures import FLOAT32_LAYERS
from s2v_batch.model.artifact import ModelCard, default_model_path, load_artifact
from s2v_batch.model.backend import keras
from s2v_batch.model.layers import StampNormalization

layers = keras.layers

__all__ = ["ModelInputError", "Predictor", "fold_batchnorm", "fuse_normalization"]


class ModelInputError(ValueError):
    """Stamps handed to the model have the wrong shape or dtype."""


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


def _with_policy(model: keras.Model, policy: str) -> keras.Model:
    """Clone ``model`` with ``policy`` on every layer except the float32 ones, same weights."""

    def clone_layer(layer: layers.Layer) -> layers.Layer:
        config = layer.get_config()
        if layer.name not in FLOAT32_LAYERS:
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    clone.set_weights(model.get_weights())
    return clone


def _check_batch_size(batch_size: int) -> None:
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int | np.integer)
        or batch_size < 1
    ):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


class Predictor:
    """Scores stamps with a model artifact through one compiled call of a fixed batch size.

    The artifact is loaded (and checked) once. Batches are padded to ``batch_size`` (a tail
    smaller than half a batch to a multiple of ``batch_size // 8``), so the compiled function is
    traced at most twice per input dtype and never again. On TensorFlow the call is a
    ``tf.function`` without XLA (XLA was slower on the CPU, and ``model.predict`` is slower on
    small batches); on JAX a ``jax.jit`` of the stateless call. Thread settings are the caller's
    (before the first TensorFlow op).

    Parameters
    ----------
    path : path, optional
        ``.keras`` or ``.json`` of the artifact; default :func:`default_model_path`.
    batch_size : int
        Stamps per compiled call (512 was best on the 2-core CPU; not measured on a GPU).
    mixed_precision : bool
        Run the hidden layers in bfloat16 (for GPUs; slow on CPUs). The normalisation and the
        output stay float32.
    fold_bn : bool
        Fold each BatchNormalization into the convolution before it (:func:`fold_batchnorm`):
        the same scores to ~1e-6, fewer passes over the activations.
    fuse_norm : bool
        On TensorFlow, run the input normalisation as one XLA kernel
        (:func:`fuse_normalization`): about 10% less CPU a stamp; scores within 1.1e-4 (uint8)
        and 7.6e-6 (float32) of the model as saved over 100,000 stamps, rarely more (a pixel on a
        clip boundary; docs/MODEL.md).

    Attributes
    ----------
    model : keras.Model
    card : ModelCard
    sha256 : str
    path : pathlib.Path or None
        None for :meth:`from_model`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        batch_size: int = 512,
        mixed_precision: bool = False,
        fold_bn: bool = True,
        fuse_norm: bool = True,
    ) -> None:
        _check_batch_size(batch_size)
        self.path: Path | None = Path(path) if path is not None else default_model_path()
        model, card = load_artifact(self.path)
        self._setup(model, card, batch_size, mixed_precision, fold_bn, fuse_norm)

    @classmethod
    def from_model(
        cls,
        model: keras.Model,
        card: ModelCard | None = None,
        *,
        batch_size: int = 512,
        mixed_precision: bool = False,
        fold_bn: bool = True,
        fuse_norm: bool = True,
    ) -> Predictor:
        """A predictor around a model in memory (training, benchmarks); no file is read.

        Parameters
        ----------
        model : keras.Model
            Any model of this module (input ``(n, h, w, 3)``, output ``(n, 1)``).
        card : ModelCard, optional
            Describes it; a placeholder card (threshold 0.5, empty sha256) when omitted.
        batch_size, mixed_precision, fold_bn, fuse_norm
            As for the constructor.

        Returns
        -------
        Predictor
        """
        if card is None:
            card = ModelCard(
                name="in-memory",
                version="0",
                architecture=model.name,
                threshold=0.5,
                target_recall=float("nan"),
                input_shape=tuple(int(v) for v in model.input_shape[1:]),
            )
        self = cls.__new__(cls)
        self._setup(model, card, batch_size, mixed_precision, fold_bn, fuse_norm)
        self.path = None
        return self

    def _setup(
        self,
        model: keras.Model,
        card: ModelCard,
        batch_size: int,
        mixed_precision: bool,
        fold_bn: bool,
        fuse_norm: bool,
    ) -> None:
        _check_batch_size(batch_size)
        self.model, self.card = model, card
        self.sha256 = card.sha256
        self.batch_size = int(batch_size)
        self.small_batch = max(1, self.batch_size // 8)
        self.mixed_precision = bool(mixed_precision)
        self.input_shape: tuple[int, ...] = tuple(int(v) for v in model.input_shape[1:])
        self.backend = keras.backend.backend()
        if fold_bn:
            self.model = fold_batchnorm(self.model)
        if fuse_norm:
            self.model = fuse_normalization(self.model)
        if self.mixed_precision:
            self.model = _with_policy(self.model, "mixed_bfloat16")
        self._compiled: dict[tuple[str, int], Callable[[np.ndarray], Any]] = {}
        self._state: Any = None
        # Threads sharing a predictor (a worker warming up while its first task starts) make
        # one compiled function a shape, so it is traced once.
        self._fn_lock = threading.Lock()

    @property
    def threshold(self) -> float:
        """The card's threshold: a stamp is a candidate when ``score >= threshold``."""
        return float(self.card.threshold)

    def _fn(self, dtype: np.dtype, size: int) -> Callable[[np.ndarray], Any]:
        key = (dtype.str, size)
        fn = self._compiled.get(key)
        if fn is not None:
            return fn
        with self._fn_lock:
            fn = self._compiled.get(key)
            if fn is None:
                fn = self._compiled[key] = self._make_fn(dtype, size)
        return fn

    def _make_fn(self, dtype: np.dtype, size: int) -> Callable[[np.ndarray], Any]:
        model = self.model
        if self.backend == "tensorflow":
            import tensorflow as tf

            spec = tf.TensorSpec((size, *self.input_shape), tf.as_dtype(dtype))
            call = tf.function(
                lambda x: model(x, training=False), input_signature=[spec], jit_compile=False
            )
            call.get_concrete_function()  # traced now, under the caller's lock

            def fn(x: np.ndarray) -> Any:
                return call(x)

        elif self.backend == "jax":
            import jax

            if self._state is None:
                self._state = (
                    [v.value for v in model.trainable_variables],
                    [v.value for v in model.non_trainable_variables],
                )

            @jax.jit
            def call(tv: list, ntv: list, x: Any) -> Any:
                y, _ = model.stateless_call(tv, ntv, x, training=False)
                return y

            tv, ntv = self._state

            def fn(x: np.ndarray) -> Any:
                return call(tv, ntv, x)  # a device array: JAX dispatches asynchronously

        else:  # torch or numpy: eager calls; still fixed shapes

            def fn(x: np.ndarray) -> Any:
                return model(x, training=False)

        return fn

    def prepare(self, dtype: np.dtype | str) -> None:
        """Trace the compiled call for full batches of ``dtype`` pixels, running no stamps.

        A worker's warm-up: the trace overlaps the driver's planning. XLA's compilation of the
        fused normalisation and oneDNN's kernel set-up still happen in the first real call;
        a batch of zeros would pay for them with a batch of compute on the critical path.

        Parameters
        ----------
        dtype : numpy dtype or str
            ``uint8`` or ``float32`` (other real dtypes are scored as float32).
        """
        x = self._check(np.zeros((0, *self.input_shape), dtype=np.dtype(dtype)))
        self._fn(x.dtype, self.batch_size)

    def _check(self, x: Any) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ModelInputError(
                f"stamps must have shape (n, {', '.join(map(str, self.input_shape))}) "
                f"(channels {', '.join(CHANNELS)}), got {x.shape}"
            )
        if x.dtype == np.uint8 or x.dtype == np.float32:
            return x
        if np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating):
            return x.astype(np.float32)
        raise ModelInputError(f"stamps must be uint8 or float32 pixels, got dtype {x.dtype}")

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Scores of ``n`` stamps: probabilities of real, float32 of shape ``(n,)``.

        Parameters
        ----------
        x : numpy.ndarray
            ``(n, h, w, 3)`` raw stored pixels, uint8 or float32 (other real dtypes are cast to
            float32). A stamp with a non-finite pixel scores NaN.

        Returns
        -------
        numpy.ndarray

        Raises
        ------
        ModelInputError
            For a wrong shape or a non-numeric dtype.
        """
        x = self._check(x)
        n = x.shape[0]
        out = np.empty(n, dtype=np.float32)
        bs, sb = self.batch_size, self.small_batch
        start = 0
        # Every batch is dispatched before any result is read back: on a GPU (JAX dispatches
        # asynchronously) the next batch's transfer overlaps the current one's compute.
        pending: list[tuple[int, int, Any]] = []
        while start < n:
            rest = n - start
            if rest >= bs or rest > bs // 2:
                size = bs
            else:
                size = sb
            chunk = x[start : start + size]
            k = chunk.shape[0]
            if k < size:  # pad the tail so the compiled shape never changes
                pad = np.zeros((size - k, *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            pending.append((start, k, self._fn(x.dtype, size)(np.ascontiguousarray(chunk))))
            start += k
        for start, k, y in pending:
            y = keras.ops.convert_to_numpy(y)
            out[start : start + k] = np.asarray(y, dtype=np.float32).reshape(-1)[:k]
        return out

    __call__ = predict
