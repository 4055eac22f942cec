"""Files shipped with the package and found by name: Dask cluster specs and pipeline configs.

They live in the repository's top-level ``cluster/`` and ``configs/`` folders, where users read and
edit them, and setup.py installs those folders as the data packages ``s2v_batch.cluster_specs`` and
``s2v_batch.pipeline_configs`` (no copies to keep in step). So a wheel install finds
``--cluster local`` and ``--config gpu`` as a checkout does, from any working directory.

Look-up of a reference such as ``local``, ``local.yaml``, ``cluster/local.yaml`` or a path:

1. an existing file wins (a user's own spec or config, or an edited copy);
2. otherwise a bare name, ``NAME.yaml`` or ``<folder>/NAME.yaml`` (the folder being ``cluster`` or
   ``configs``) is a shipped file of that name;
3. otherwise a :class:`ResourceNotFoundError` whose one-line message lists the shipped names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path, PurePath

SUFFIXES = (".yaml", ".yml")


class ResourceNotFoundError(ValueError):
    """Neither a file nor the name of a shipped resource."""


@dataclass(frozen=True)
class ShippedKind:
    """One kind of shipped file: what it is called, its repository folder, its data package."""

    what: str
    folder: str
    package: str


CLUSTER_SPECS = ShippedKind("cluster spec", "cluster", "s2v_batch.cluster_specs")
PIPELINE_CONFIGS = ShippedKind("config file", "configs", "s2v_batch.pipeline_configs")


def shipped(kind: ShippedKind) -> dict[str, Traversable]:
    """The shipped files of a kind, by name (file name without ``.yaml``).

    Parameters
    ----------
    kind : ShippedKind
        :data:`CLUSTER_SPECS` or :data:`PIPELINE_CONFIGS`.

    Returns
    -------
    dict of str to importlib.resources.abc.Traversable
        Empty where the package was installed without its data.
    """
    try:
        root = resources.files(kind.package)
    except ModuleNotFoundError:
        return {}
    found = {}
    for entry in root.iterdir():
        stem, dot, ext = entry.name.rpartition(".")
        if dot and f".{ext}" in SUFFIXES and entry.is_file():
            found[stem] = entry
    return dict(sorted(found.items()))


def shipped_name(kind: ShippedKind, ref: str | os.PathLike[str]) -> str | None:
    """The shipped name a reference spells (``gpu``, ``gpu.yaml``, ``configs/gpu.yaml``), or None
    for a reference that is a path elsewhere (absolute, or in another folder)."""
    p = PurePath(ref)
    if p.is_absolute() or len(p.parts) > 2 or (len(p.parts) == 2 and p.parts[0] != kind.folder):
        return None
    name = p.name
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name or None


def find(kind: ShippedKind, ref: str | os.PathLike[str]) -> Path | Traversable:
    """An existing file, else the shipped file that ``ref`` names.

    Parameters
    ----------
    kind : ShippedKind
        :data:`CLUSTER_SPECS` or :data:`PIPELINE_CONFIGS`.
    ref : str or path
        A file path, or a shipped name as ``NAME``, ``NAME.yaml`` or ``<folder>/NAME.yaml``.

    Returns
    -------
    pathlib.Path or importlib.resources.abc.Traversable
        Read it with ``.read_text()``; ``str()`` of it names it in messages.

    Raises
    ------
    ResourceNotFoundError
        One line that names the reference and lists the shipped names.
    """
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    available = shipped(kind)
    name = shipped_name(kind, ref)
    if name is not None and name in available:
        return available[name]
    # An editable install made before setup.py mapped these folders has none: reinstall it.
    names = ", ".join(available) or "none: reinstall the package (pip install -e .)"
    raise ResourceNotFoundError(
        f"{kind.what} {str(ref)!r} does not exist: not a file, nor a shipped {kind.what} "
        f"(shipped: {names})"
    )
