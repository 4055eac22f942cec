"""Lazy re-exports for a package's ``__init__``: a name is imported from its module when first used.

So ``from s2v_batch.model import load_card`` imports only the card's module, not Keras, and
``from s2v_batch.store import read_scores`` loads no Zarr.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, owners: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` whose public names live in submodules.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    owners : Mapping[str, str]
        Public name -> the submodule (relative to ``package``) that defines it.
    namespace : dict
        The package's ``globals()``: a name found once is stored there, so later look-ups skip
        ``__getattr__``.
    """

    def __getattr__(name: str) -> Any:
        owner = owners.get(name)
        if owner is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{owner}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(owners))

    return __getattr__, __dir__
