"""The one door to Keras for this package: TensorFlow's oneDNN default, then ``import keras``.

Every module of the package that needs Keras (the layers, the architectures, the artifact's
save and load, the predictor, training) imports it from here, so the default below is set
before TensorFlow is first imported whichever of them comes first. Modules that only read a
model card never import this one, and so never import Keras or TensorFlow.
"""

from __future__ import annotations

import os

# TensorFlow leaves its oneDNN kernels off on CPUs without AVX-512 (this AMD EPYC): on, the CNN
# runs about 1.4x faster. Read once, when TensorFlow is imported, hence before keras. A value
# already set (e.g. by a benchmark turning it off) wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import keras  # noqa: E402

__all__ = ["keras"]
