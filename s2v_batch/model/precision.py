"""The precision a model computes in: which hardware does bfloat16 natively, ``auto``'s choice,
and the bfloat16 copy of a model.

bfloat16 halves the bytes of every activation and weight and runs the convolutions on the CPU's
or GPU's bfloat16 units: on a CPU with AVX512-BF16 the shipped CNN scores about 1.6x as many
stamps a core (docs/MODEL.md, "bfloat16"). Where the hardware lacks them the same arithmetic is
emulated, slower than float32, so ``auto`` takes bfloat16 only where it is native. Reading the
CPU's flags imports nothing heavy; asking about a GPU imports the backend (only when asked).
"""

from __future__ import annotations

import logging
from typing import Any

from s2v_batch.core.config import PRECISIONS, ConfigError

__all__ = [
    "BF16_CPU_FLAGS",
    "COMPUTED",
    "cpu_flags",
    "gpu_compute_capability",
    "native_bfloat16",
    "resolve_precision",
    "with_precision",
]

#: /proc/cpuinfo flags of a CPU that computes bfloat16 natively (AVX512-BF16: AMD Zen 4 and
#: later, Intel Cooper Lake and later; AMX: Intel Sapphire Rapids and later).
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
#: The precisions a model computes in (``auto`` resolves to one of them).
COMPUTED = ("float32", "bfloat16")
#: Keras dtype policy of the hidden layers at each precision.
_POLICY = {"float32": "float32", "bfloat16": "mixed_bfloat16"}

log = logging.getLogger("s2v.precision")


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (the first processor's ``flags`` line); empty where unknown.

    Parameters
    ----------
    path : str
        Where the kernel lists them (Linux).

    Returns
    -------
    frozenset of str
    """
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def gpu_compute_capability() -> tuple[int, int] | None:
    """The compute capability of the first GPU the Keras backend sees, or None without one.

    Imports the backend (TensorFlow or JAX); called only when ``auto`` is resolved, in a
    process that scores (it loads the backend anyway).
    """
    # deferred: the backend, only when a precision is resolved in a process that scores
    from s2v_batch.model.backend import keras

    try:
        if keras.backend.backend() == "jax":
            # deferred: JAX only under the JAX backend
            import jax

            gpus = [d for d in jax.devices() if d.platform == "gpu"]
            cc = getattr(gpus[0], "compute_capability", None) if gpus else None
            return tuple(int(v) for v in str(cc).split(".")[:2]) if cc else None  # type: ignore[return-value]
        # deferred: TensorFlow only under the TensorFlow backend
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return None
        cc = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
        return (int(cc[0]), int(cc[1])) if cc else None
    except Exception:  # a backend without device details: no GPU we can vouch for
        return None


def native_bfloat16(flags: frozenset[str] | None = None) -> tuple[bool, str]:
    """Whether this process's hardware computes bfloat16 natively, and why (one phrase).

    A visible GPU decides when there is one (compute capability 8.0 or more: Ampere and
    later); otherwise the CPU's flags (:data:`BF16_CPU_FLAGS`).

    Parameters
    ----------
    flags : frozenset of str, optional
        The CPU flags; default :func:`cpu_flags`.

    Returns
    -------
    (bool, str)
    """
    cc = gpu_compute_capability()
    if cc is not None:
        ok = cc >= (8, 0)
        return ok, f"GPU of compute capability {cc[0]}.{cc[1]} ({'>=' if ok else '<'} 8.0)"
    have = sorted(BF16_CPU_FLAGS & (cpu_flags() if flags is None else flags))
    if have:
        return True, f"CPU with {' and '.join(have)}"
    return False, f"CPU without {' or '.join(sorted(BF16_CPU_FLAGS))}"


def resolve_precision(requested: str, client: Any = None) -> str:
    """The precision to compute in: ``float32`` or ``bfloat16`` as given, ``auto`` resolved.

    ``auto`` is ``bfloat16`` when every worker of ``client`` (or, without a client or before
    any worker has joined, this process) computes it natively (:func:`native_bfloat16`), else
    ``float32`` with a warning on the ``s2v.precision`` logger. ``bfloat16`` asked for on
    hardware without it is kept (the scores are the same) with a warning: it is emulated and
    slower than float32.

    Parameters
    ----------
    requested : str
        One of :data:`s2v_batch.core.config.PRECISIONS`.
    client : distributed.Client, optional
        Whose workers decide.

    Returns
    -------
    str
        ``float32`` or ``bfloat16``.

    Raises
    ------
    ConfigError
        For a name that is not a precision.
    """
    if requested not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "float32":
        return requested
    answers: dict[str, tuple[bool, str]] = {}
    if client is not None:
        answers = dict(client.run(native_bfloat16))
    if not answers:
        answers = {"this process": native_bfloat16()}
    lacking = sorted({why for ok, why in answers.values() if not ok})
    if requested == "bfloat16":
        if lacking:
            log.warning(
                "precision bfloat16 on a %s: emulated there, slower than float32 "
                "(same scores); --precision auto would take float32",
                lacking[0],
            )
        return requested
    if lacking:
        log.warning(
            "precision auto: float32, because a worker runs on a %s (no native bfloat16)",
            lacking[0],
        )
        return "float32"
    return "bfloat16"


def with_precision(model: Any, precision: str, float32_layers: frozenset[str]) -> Any:
    """``model`` as it computes at ``precision``: the same model for float32; for bfloat16 a
    clone, same weights, whose layers compute in bfloat16 except ``float32_layers``.

    Parameters
    ----------
    model : keras.Model
    precision : str
        ``float32`` or ``bfloat16``.
    float32_layers : frozenset of str
        Names of the layers kept in float32 (the normalisation, the output).

    Returns
    -------
    keras.Model
    """
    if precision not in COMPUTED:
        raise ConfigError(f"a model computes in {' or '.join(COMPUTED)}, not {precision!r}")
    if precision == "float32":
        return model
    # deferred: Keras, only where a model is built
    from s2v_batch.model.backend import keras

    def clone_layer(layer: Any) -> Any:
        config = layer.get_config()
        if layer.name not in float32_layers:
            config["dtype"] = _POLICY[precision]
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    clone.set_weights(model.get_weights())
    return clone
