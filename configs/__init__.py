"""Pipeline configs, installed with the package as ``s2v_batch.pipeline_configs`` (see setup.py).

Use one by name (``s2v score ... --config gpu``) or by path (``--config configs/gpu.yaml``, or a
copy you edited); ``s2v_batch.core.resources`` finds them.
"""
