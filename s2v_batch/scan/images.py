"""Stamp images for the scanning page: a candidate's srch | temp | diff as one PNG, read from the
Zarr store and stretched as the reports stretch them (:mod:`s2v_batch.formats.display`).

Each night's ``stamp_id`` index and ``stamps`` array are opened once; the last few decoded chunks
and the rendered PNGs are kept in bounded caches, so neighbouring stamps cost one chunk read and a
stamp shown again (after an undo) costs nothing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from s2v_batch.formats.display import triplet_png
from s2v_batch.store import dataset as zstore

__all__ = ["StampImages"]


class StampImages:
    """PNG triplets of stored stamps, by (season, night, stamp_id); thread-safe.

    Parameters
    ----------
    store_root : path
        The Zarr store the scores were made from.
    cache : int
        Rendered PNGs kept (about 8 KB each for 51x51 stamps).
    chunk_bytes : int
        Bytes of decoded Zarr chunks kept (a chunk of 256 float32 51x51 stamps is 8 MB): the
        queue orders jump between chunks, and decoding one is most of an image's cost.
    """

    def __init__(
        self, store_root: str | Path, cache: int = 4096, chunk_bytes: int = 256 * 2**20
    ) -> None:
        self.root = Path(store_root)
        self.size = cache
        self._nights: dict[tuple[str, int], tuple[Any, dict[int, int]] | None] = {}
        self._png: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._chunks: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()
        self.chunk_bytes = chunk_bytes
        self._lock = threading.Lock()

    def _night(self, season: str, night: int) -> tuple[Any, dict[int, int]] | None:
        key = (season, int(night))
        with self._lock:
            if key in self._nights:
                return self._nights[key]
        path = zstore.night_path(self.root, season, night)
        opened = None
        if zstore.verify_night(path) is not None:
            ids = zstore.read_stamp_ids(path)
            opened = (zstore.stamps_array(path), {int(s): i for i, s in enumerate(ids)})
        with self._lock:
            self._nights[key] = opened
        return opened

    def _pixels(self, season: str, night: int, arr: Any, i: int) -> np.ndarray:
        # One stamp costs the decoding of its whole Zarr chunk (hundreds of stamps): keep the
        # last few decoded chunks, since a queue order visits many stamps of each.
        size = int(arr.chunks[0])
        key = (season, night, i // size)
        with self._lock:
            block = self._chunks.get(key)
            if block is not None:
                self._chunks.move_to_end(key)
        if block is None:
            block = np.asarray(arr[key[2] * size : (key[2] + 1) * size])
            with self._lock:
                self._chunks[key] = block
                held = sum(b.nbytes for b in self._chunks.values())
                while held > self.chunk_bytes and len(self._chunks) > 1:
                    held -= self._chunks.popitem(last=False)[1].nbytes
        return block[i % size]

    def png(self, season: str, night: int, stamp_id: int) -> bytes | None:
        """The stamp's PNG, or None when it is not in the store."""
        key = (season, int(stamp_id))
        with self._lock:
            hit = self._png.get(key)
            if hit is not None:
                self._png.move_to_end(key)
                return hit
        opened = self._night(season, night)
        if opened is None or int(stamp_id) not in opened[1]:
            return None
        arr, where = opened
        png = triplet_png(self._pixels(season, int(night), arr, where[int(stamp_id)]))
        with self._lock:
            self._png[key] = png
            while len(self._png) > self.size:
                self._png.popitem(last=False)
        return png
