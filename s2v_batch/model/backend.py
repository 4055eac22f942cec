"""The one door to Keras for this package: TensorFlow's oneDNN default, then ``import keras``.

Every module of the package that needs Keras (the layers, the architectures, the artifact's
save and load, the predictor, training) imports it from here, so the default below is set
before TensorFlow is first imported whichever of them comes first. Modules that only read a
model card never import this one, and so never import Keras or TensorFlow.
"""

from __future__ import annotations

import json
import os
import sys

# TensorFlow leaves its oneDNN kernels off on CPUs without AVX-512 (the AMD EPYC this was first
# measured on): on, the CNN ran about 1.4x faster there. Read once, when TensorFlow is imported, hence before keras. A value
# already set (e.g. by a benchmark turning it off) wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def _keras_backend() -> str:
    """The backend Keras will load: ``KERAS_BACKEND``, else its ``keras.json``, else TensorFlow."""
    name = os.environ.get("KERAS_BACKEND")
    if name:
        return name
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as f:
            return str(json.load(f).get("backend", "tensorflow"))
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


# TensorFlow's TFLite converter imports JAX whenever JAX is installed (the dev extra, GPU hosts):
# on the 2-core VM that added 1.3 s of CPU and 106 MB to every process importing TensorFlow,
# for nothing this package uses. On the TensorFlow backend, JAX is hidden while Keras (and with
# it TensorFlow) is imported; ``import jax`` works again afterwards.
_HIDE_JAX = _keras_backend() == "tensorflow" and "jax" not in sys.modules
if _HIDE_JAX:
    sys.modules["jax"] = None  # type: ignore[assignment]
try:
    import keras  # noqa: E402
finally:
    if _HIDE_JAX and "jax" in sys.modules and sys.modules["jax"] is None:
        del sys.modules["jax"]

__all__ = ["keras"]
