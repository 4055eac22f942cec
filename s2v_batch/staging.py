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
        with atomic_path(npy) as tmp, open(tmp, "wb") as f:
            np.save(f, data.pixels)
        dtype = str(data.pixels.dtype)
    else:
        from .alertstamps import read_alert_unit

        # A nightly alert archive is one unit of up to a million stamps: written as they come.
        with atomic_path(npy) as tmp, NpyRows(tmp, (size, size, 3), np.float32) as rows:
            data = read_alert_unit(unit, size, emit=rows.append)
        dtype = "float32"
    meta = {
        "stamp_id": data.stamp_id,
        "masked_fraction": data.masked_fraction,
        "paths": np.asarray(data.paths, dtype=object).astype(str),
        "quarantine": np.asarray(json.dumps(data.quarantine)),
        "n_found": np.asarray(data.n_found),
        "dtype": np.asarray(dtype),
        # Alert fields kept per stamp (strings as fixed-width unicode: no pickle needed).
        **{_META + k: v for k, v in data.meta.items()},
    }
    # Written last: its presence says the unit is staged whole.
    with atomic_path(meta_path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **meta)
    return _load_meta(meta_path, npy)


class NpyRows:
    """An ``.npy`` file written row by row: the header is written first with room for any
    length and rewritten in place, with the final length, on close (a valid npy v1.0 file,
    readable with ``np.load(mmap_mode="r")``)."""

    _HEADER = 128  # bytes, magic included: a multiple of 64 as the format asks

    def __init__(self, path: str | Path, row_shape: tuple[int, ...], dtype: Any):
        self.row_shape = tuple(int(v) for v in row_shape)
        self.dtype = np.dtype(dtype)
        self.n = 0
        self._f = open(path, "wb")
        self._f.write(self._header())

    def _header(self) -> bytes:
        shape = (self.n, *self.row_shape)
        text = f"{{'descr': {self.dtype.str!r}, 'fortran_order': False, 'shape': {shape}, }}"
        body = text.ljust(self._HEADER - 10 - 1) + "\n"
        if len(body) + 10 != self._HEADER:
            raise ValueError(f"npy header too long for shape {shape}")
        return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")

    def append(self, row: np.ndarray) -> None:
        """Write one row (of ``row_shape``)."""
        row = np.asarray(row)
        if row.shape != self.row_shape:
            raise ValueError(f"row of shape {row.shape}, expected {self.row_shape}")
        self._f.write(np.ascontiguousarray(row, dtype=self.dtype).tobytes())
        self.n += 1

    def __enter__(self) -> NpyRows:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self._f.seek(0)
                self._f.write(self._header())
        finally:
            self._f.close()


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
