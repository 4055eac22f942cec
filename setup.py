"""Package layout (everything else is in pyproject.toml).

The Prefect flows live in the repository's ``flows/`` folder and install as ``s2v_flows``: a wheel
must not claim a generic top-level name such as ``flows``. pyproject.toml cannot combine package
discovery with such a mapping, hence these few lines.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["s2v_batch", "s2v_batch.*"]), "s2v_flows"],
    package_dir={"s2v_flows": "flows"},
)
