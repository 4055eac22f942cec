"""Pixels of stamps named by (night, stamp_id), read from the Zarr store a night at a time.

The reports' galleries and the scanning page both name stamps by their ``stamp_id`` and night
(what the scores hold) and need their pixels: this module finds them in the night datasets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from s2v_batch.store import dataset as zstore

__all__ = ["read_pixels", "read_stamps"]


def read_pixels(
    store_root: Path, season: str, rows: Sequence[Mapping[str, Any]]
) -> tuple[list[np.ndarray | None], list[str]]:
    """Pixels of each row's stamp (None where not found), read a night at a time; and notes.

    Parameters
    ----------
    store_root : path
        The Zarr store root.
    season : str
        The season of every row.
    rows : sequence of mapping
        Each with ``night`` and ``stamp_id``.

    Returns
    -------
    tuple of (list, list of str)
        ``(h, w, 3)`` arrays in the order of ``rows`` (None where the stamp is not in the store),
        and one line a night that is missing or incomplete or lacks some of the stamps.
    """
    pixels: list[np.ndarray | None] = [None] * len(rows)
    notes = []
    by_night: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_night.setdefault(int(r["night"]), []).append(i)
    for night, members in sorted(by_night.items()):
        path = zstore.night_path(store_root, season, night)
        if zstore.verify_night(path) is None:
            notes.append(f"night {night} is not (complete) in the store {store_root}")
            continue
        ids = zstore.read_stamp_ids(path)
        order = np.argsort(ids, kind="stable")
        want = np.array([rows[i]["stamp_id"] for i in members], np.int64)
        pos = np.searchsorted(ids, want, sorter=order)
        pos = np.minimum(pos, len(ids) - 1) if len(ids) else pos
        found = (ids[order[pos]] == want) if len(ids) else np.zeros(len(want), bool)
        if not found.all():
            notes.append(
                f"{int((~found).sum())} stamp(s) of night {night} not in the store "
                f"(e.g. stamp_id {int(want[~found][0])})"
            )
        block = read_stamps(path, order[pos[found]])
        for j, i in enumerate(np.array(members)[found]):
            pixels[i] = block[j]
    return pixels, notes


def read_stamps(path: str | Path, indices: np.ndarray | list[int]) -> np.ndarray:
    """Pixels of the stamps at ``indices`` (positions along ``stamp``), in the order given.

    Reads one inner chunk's worth of the selection at a time: memory stays at the result plus
    one decoded chunk, wherever the stamps lie in the night.

    Parameters
    ----------
    path : path
        A night dataset.
    indices : array of int
        Positions along the ``stamp`` dimension (repeats allowed).

    Returns
    -------
    numpy.ndarray
        ``(len(indices), size, size, 3)``, the stored dtype.

    Raises
    ------
    StoreError
        An index outside the night.
    """
    arr = zstore.stamps_array(path)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= arr.shape[0]):
        raise zstore.StoreError(f"{path}: stamp index outside 0..{arr.shape[0] - 1}")
    wanted = np.unique(idx)
    out = np.empty((wanted.size, *arr.shape[1:]), dtype=arr.dtype)
    chunk = arr.chunks[0]
    groups = np.flatnonzero(np.diff(wanted // chunk)) + 1
    for sel in np.split(np.arange(wanted.size), groups) if wanted.size else []:
        out[sel] = arr.oindex[wanted[sel], :, :, :]
    return out[np.searchsorted(wanted, idx)]
