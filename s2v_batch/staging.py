"""Staged units of an ingest: the worker-side functions between raw stamps and a night dataset.

A unit is decoded once into the night's staging folder (:func:`stage_unit`: pixels as ``.npy``,
then its metadata as ``.meta.npz``, each through a rename, the metadata last), so an interrupted
ingest reuses it. The night's shards are then filled from the staged pixels
(:func:`assemble_shard`) in the order :func:`plan_shards` fixes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from . import store as zstore
from .fsutil import atomic_path
from .rawtree import Unit
from .stamps import read_unit

_META = "meta__"


def stage_unit(unit: Unit, staging: str, size: int) -> dict[str, Any]:
    """Decode one unit into the staging folder (or reuse it there); return its IDs and quarantine.

    Runs on a worker. The returned dict is small: IDs, source paths and quarantine records.
    """
    npy, meta_path = zstore.staged_unit(staging, unit.name)
    if meta_path.is_file():
        try:
            return _load_meta(meta_path, npy)
        except Exception:
            pass  # a damaged staged unit is simply decoded again
    if unit.survey == "des":
        data = read_unit(unit, size)
    else:
        from .alertstamps import read_alert_unit

        data = read_alert_unit(unit, size)
    with atomic_path(npy) as tmp, open(tmp, "wb") as f:
        np.save(f, data.pixels)
    meta = {
        "stamp_id": data.stamp_id,
        "masked_fraction": data.masked_fraction,
        "paths": np.asarray(data.paths, dtype=object).astype(str),
        "quarantine": np.asarray(json.dumps(data.quarantine)),
        "n_found": np.asarray(data.n_found),
        "dtype": np.asarray(str(data.pixels.dtype)),
        # Alert fields kept per stamp (strings as fixed-width unicode: no pickle needed).
        **{_META + k: v for k, v in data.meta.items()},
    }
    # Written last: its presence says the unit is staged whole.
    with atomic_path(meta_path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **meta)
    return _load_meta(meta_path, npy)


def _load_meta(path: Path, npy: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as z:
        out = {
            "stamp_id": z["stamp_id"],
            "masked_fraction": z["masked_fraction"],
            "paths": z["paths"].tolist(),
            "quarantine": json.loads(str(z["quarantine"])),
            "n_found": int(z["n_found"]),
            "dtype": str(z["dtype"]),
            "npy": str(npy),
            "meta": {k[len(_META) :]: z[k] for k in z.files if k.startswith(_META)},
        }
    if any(len(v) != len(out["stamp_id"]) for v in (out["paths"], *out["meta"].values())):
        raise ValueError("inconsistent staged unit")
    return out


def assemble_shard(dest: str, start: int, pieces: list[tuple[str, np.ndarray]]) -> int:
    """Copy the kept rows of staged units into the shard that starts at ``start``; return its size.

    ``pieces`` are ``(npy path, row indices)`` in output order. Runs on a worker.
    """
    parts = [np.load(npy, mmap_mode="r")[rows] for npy, rows in pieces]
    pixels = np.concatenate(parts) if parts else np.zeros((0,))
    zstore.write_stamps(dest, start, pixels)
    return len(pixels)


def plan_shards(
    pieces: list[tuple[str, np.ndarray]], shard_stamps: int
) -> list[tuple[int, list[tuple[str, np.ndarray]]]]:
    """Cut ordered ``(source, rows)`` pieces into whole output shards.

    Returns ``(start, pieces)`` per shard: starts are multiples of ``shard_stamps``, every shard
    but the last is full, and the rows keep their order.
    """
    shards: list[tuple[int, list[tuple[str, np.ndarray]]]] = []
    start, current, filled = 0, [], 0
    for src, rows in pieces:
        off = 0
        while off < len(rows):
            take = min(shard_stamps - filled, len(rows) - off)
            current.append((src, rows[off : off + take]))
            filled += take
            off += take
            if filled == shard_stamps:
                shards.append((start, current))
                start += filled
                current, filled = [], 0
    if filled:
        shards.append((start, current))
    return shards
