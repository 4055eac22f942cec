"""The Zarr store of stamps and the Parquet tree of scores: every path of both, and what is current.

One concern a module:

- :mod:`.dataset`: the Zarr store, its night datasets (create, write shards, read, verify) and
  every path of the store tree;
- :mod:`.state`: what a stored night was made from (its fingerprint) and whether it is current;
- :mod:`.shardread`: ``StampReader``, a night's shards read straight into reused buffers;
- :mod:`.scores`: the scores tree: its paths, publishing a night atomically, reading scores back.

The names users reach for are re-exported here lazily (``from s2v_batch.store import
list_nights, open_night, read_scores``), so importing the scores side loads no Zarr.
"""

from __future__ import annotations

from s2v_batch.core.lazy import lazy_exports

#: Public name -> the submodule that owns it.
_OWNERS: dict[str, str] = {
    "NightRef": "dataset",
    "StoreError": "dataset",
    "list_nights": "dataset",
    "open_night": "dataset",
    "read_attrs": "dataset",
    "verify_night": "dataset",
    "current_night": "state",
    "StampReader": "shardread",
    "read_scores": "scores",
    "current_scores": "scores",
}

__all__ = sorted(_OWNERS)

__getattr__, __dir__ = lazy_exports(__name__, _OWNERS, globals())
