"""Dask cluster specs, installed with the package as ``s2v_batch.cluster_specs`` (see setup.py).

Use one by name (``s2v score ... --cluster local``) or by path (``--cluster cluster/slurm.yaml``,
or a copy you edited); ``s2v_batch.core.resources`` finds them.
"""
