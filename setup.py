"""Package layout (everything else is in pyproject.toml).

Three repository folders install under names of their own, each mapped here, not copied:

- ``flows/`` (the Prefect flows) as ``s2v_flows``: a wheel must not claim a generic top-level
  name such as ``flows``;
- ``cluster/`` (Dask cluster specs) as ``s2v_batch.cluster_specs`` and ``configs/`` (pipeline
  configs) as ``s2v_batch.pipeline_configs``: users read and edit them in the repository, and an
  installed package finds them by name (``--cluster local``, ``--config gpu``; see
  ``s2v_batch/resources.py``). Their YAML files are package data (pyproject.toml).

pyproject.toml cannot combine package discovery with such a mapping, hence these few lines.
"""

from setuptools import find_packages, setup

MAPPED = {
    "s2v_flows": "flows",
    "s2v_batch.cluster_specs": "cluster",
    "s2v_batch.pipeline_configs": "configs",
}

setup(
    packages=[*find_packages(include=["s2v_batch", "s2v_batch.*"]), *MAPPED],
    package_dir=MAPPED,
)
