"""Fast scoring with a model artifact: the :class:`Predictor`.

:class:`Predictor` loads (and checks) an artifact once and scores stamps through one compiled
call of a fixed batch size; the graph rewrites it applies (:mod:`s2v_batch.model.rewrites`,
re-exported here): :func:`fold_batchnorm` folds each BatchNormalization into the
convolution before it, :func:`fuse_normalization` has TensorFlow run the input normalisation as
one XLA kernel, and at ``precision="bfloat16"`` a clone runs the hidden layers in bfloat16
(:mod:`s2v_batch.model.precision`: CPUs with AVX512-BF16 or AMX, GPUs of compute capability 8.0+).
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
from s2v_batch.model.artifact import ModelCard, load_artifact
from s2v_batch.model.backend import keras
from s2v_batch.model.precision import COMPUTED, with_precision
from s2v_batch.model.rewrites import fold_batchnorm, fuse_normalization
from s2v_batch.model.shipped import default_model_path

__all__ = ["ModelInputError", "Predictor", "fold_batchnorm", "fuse_normalization"]


class ModelInputError(ValueError):
    """Stamps handed to the model have the wrong shape or dtype."""


def _precision_of(precision: str, mixed_precision: bool | None) -> str:
    """``precision``, or the old ``mixed_precision`` flag's (True: bfloat16); both: the same."""
    if mixed_precision is not None:
        old = "bfloat16" if mixed_precision else "float32"
        if precision not in ("float32", old):
            raise ValueError(
                f"mixed_precision={mixed_precision} contradicts precision={precision!r}"
            )
        precision = old
    if precision not in COMPUTED:
        raise ValueError(
            f"precision must be {' or '.join(COMPUTED)} (resolve 'auto' first), got {precision!r}"
        )
    return precision


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
    precision : str
        ``float32``, or ``bfloat16``: the hidden layers compute in bfloat16 (about 1.6x the
        stamps a core on a CPU with AVX512-BF16; slower than float32 where it is emulated;
        scores within about 0.03 of float32, docs/MODEL.md). The normalisation and the output
        stay float32. Score at bfloat16 against ``card.threshold_for("bfloat16")``.
    mixed_precision : bool, optional
        The old name: True is ``precision="bfloat16"``.
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
        precision: str = "float32",
        mixed_precision: bool | None = None,
        fold_bn: bool = True,
        fuse_norm: bool = True,
    ) -> None:
        _check_batch_size(batch_size)
        precision = _precision_of(precision, mixed_precision)
        self.path: Path | None = Path(path) if path is not None else default_model_path()
        model, card = load_artifact(self.path)
        self._setup(model, card, batch_size, precision, fold_bn, fuse_norm)

    @classmethod
    def from_model(
        cls,
        model: keras.Model,
        card: ModelCard | None = None,
        *,
        batch_size: int = 512,
        precision: str = "float32",
        mixed_precision: bool | None = None,
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
        batch_size, precision, mixed_precision, fold_bn, fuse_norm
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
        precision = _precision_of(precision, mixed_precision)
        self._setup(model, card, batch_size, precision, fold_bn, fuse_norm)
        self.path = None
        return self

    def _setup(
        self,
        model: keras.Model,
        card: ModelCard,
        batch_size: int,
        precision: str,
        fold_bn: bool,
        fuse_norm: bool,
    ) -> None:
        _check_batch_size(batch_size)
        self.model, self.card = model, card
        self.sha256 = card.sha256
        self.batch_size = int(batch_size)
        self.small_batch = max(1, self.batch_size // 8)
        self.precision = precision
        self.mixed_precision = precision == "bfloat16"  # the old attribute, still read
        self.input_shape: tuple[int, ...] = tuple(int(v) for v in model.input_shape[1:])
        self.backend = keras.backend.backend()
        if fold_bn:
            self.model = fold_batchnorm(self.model)
        if fuse_norm:
            self.model = fuse_normalization(self.model)
        self.model = with_precision(self.model, precision, FLOAT32_LAYERS)
        self._compiled: dict[tuple[str, int], Callable[[np.ndarray], Any]] = {}
        self._state: Any = None
        # Threads sharing a predictor (a worker warming up while its first task starts) make
        # one compiled function a shape, so it is traced once.
        self._fn_lock = threading.Lock()

    @property
    def threshold(self) -> float:
        """The card's threshold at this precision: a candidate when ``score >= threshold``."""
        return float(self.card.threshold_for(self.precision))

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
