"""The CNN: layers, architectures, the model artifact (``.keras`` + JSON card) and a fast predictor.

Standard Keras 3 layers and ``keras.ops`` only, so one ``.keras`` file loads and scores under the
TensorFlow and the JAX backends alike (JAX serves where TensorFlow is missing, e.g. on the GPU
machines). The model takes raw stored pixels, ``(n, 51, 51, 3)`` in channel order ``srch, temp,
diff``, uint8 (gif-ingested) or float32 (fits-ingested), and returns the probability that each
stamp is a real transient (DESIGN.md section 3).

One concern a module:

- :mod:`.layers`: ``StampNormalization`` and ``NonFiniteGuard`` (registered serializables);
- :mod:`.architectures`: ``space2vec``, ``vgg6``, ``build_model``, ``count_flops``;
- :mod:`.artifact`: ``ModelCard``, ``save_artifact``, ``load_card``, ``load_artifact`` ...;
- :mod:`.shipped`: the models shipped with the package, ``shipped_model_for``, ``default_model_path``;
- :mod:`.inference`: ``Predictor``;
- :mod:`.rewrites`: ``fold_batchnorm``, ``fuse_normalization`` (the predictor's graph rewrites);
- :mod:`.precision`: ``resolve_precision``, ``native_bfloat16`` (float32 or bfloat16, and which
  hardware computes bfloat16 natively);
- :mod:`.backend`: the one place Keras is imported (TensorFlow's oneDNN default set first).

The names are re-exported here lazily: ``from s2v_batch.model import load_card`` imports only
:mod:`.artifact`, so reading a card imports neither Keras nor TensorFlow, while ``from
s2v_batch.model import Predictor`` brings in Keras as it needs to.
"""

from __future__ import annotations

from s2v_batch.core.lazy import lazy_exports

#: Public name -> the submodule that owns it.
_OWNERS: dict[str, str] = {
    "ARCHITECTURES": "architectures",
    "DEFAULT_ARCH": "architectures",
    "build_model": "architectures",
    "count_flops": "architectures",
    "DEFAULT_INPUT_SHAPE": "artifact",
    "DEFAULT_MODEL_NAME": "artifact",
    "DEFAULT_MODEL_VERSION": "artifact",
    "LABEL_CONVENTION": "artifact",
    "SCORE_CONVENTION": "artifact",
    "ModelArtifactError": "artifact",
    "ModelCard": "artifact",
    "default_model_path": "shipped",
    "file_sha256": "artifact",
    "load_artifact": "artifact",
    "load_card": "artifact",
    "save_artifact": "artifact",
    "shipped_model_for": "shipped",
    "shipped_models_dir": "shipped",
    "ModelInputError": "inference",
    "Predictor": "inference",
    "fold_batchnorm": "rewrites",
    "fuse_normalization": "rewrites",
    "resolve_precision": "precision",
    "native_bfloat16": "precision",
    "NonFiniteGuard": "layers",
    "StampNormalization": "layers",
}

__all__ = sorted(_OWNERS)

__getattr__, __dir__ = lazy_exports(__name__, _OWNERS, globals())
