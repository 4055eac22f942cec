"""Assembling a night: which staged stamps it keeps (season-wide duplicate IDs quarantined,
labels joined, alert fields kept), and its partial dataset, created empty for the shard tasks.

The ingest driver (:mod:`s2v_batch.ingest.driver`) plans a night here after its units are staged, fills
the shards on workers (:func:`s2v_batch.ingest.staging.assemble_shard`), then verifies and publishes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s2v_batch.core import provenance
from s2v_batch.core.config import IngestConfig
from s2v_batch.core.conventions import survey_of_season
from s2v_batch.core.surveys import alert_columns, get_survey
from s2v_batch.ingest.labels import Labels
from s2v_batch.ingest.staging import plan_shards, staged_paths
from s2v_batch.store import dataset as zstore
from s2v_batch.store import state as nightstate


class SeenIds:
    """The stamp IDs a season has kept so far, and where each was first seen (for a duplicate's
    quarantine reason): sorted arrays, 16 bytes an ID (a dict of a season's IDs and their paths
    took ~150; a replayed season holds millions). Blocks of IDs are merged as they come (two
    blocks of similar sizes become one), so a lookup searches a few sorted arrays."""

    def __init__(self) -> None:
        self._where: list[Callable[[int], str]] = []
        #: (sorted IDs, source index, row within the source) per block.
        self._blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, ids: np.ndarray, where: Callable[[int], str]) -> None:
        """Add IDs not seen before (distinct); ``where(i)`` says where ``ids[i]`` came from."""
        if not len(ids):
            return
        self._where.append(where)
        order = np.argsort(ids, kind="stable")
        src = np.full(len(ids), len(self._where) - 1, np.int32)
        self._blocks.append((np.asarray(ids, np.int64)[order], src, order.astype(np.int64)))
        while len(self._blocks) > 1 and 2 * len(self._blocks[-1][0]) >= len(self._blocks[-2][0]):
            b, a = self._blocks.pop(), self._blocks.pop()
            merged = [np.concatenate([x, y]) for x, y in zip(a, b, strict=True)]
            order = np.argsort(merged[0], kind="stable")
            self._blocks.append((merged[0][order], merged[1][order], merged[2][order]))

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
        """Which of ``ids`` were seen (a boolean mask), and where, by position in ``ids``."""
        seen = np.zeros(len(ids), bool)
        where: dict[int, str] = {}
        for sorted_ids, src, row in self._blocks:
            pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
            hit = (sorted_ids[pos] == ids) & ~seen
            for j in np.flatnonzero(hit).tolist():
                where[j] = self._where[int(src[pos[j]])](int(row[pos[j]]))
            seen |= hit
        return seen, where

    def __len__(self) -> int:
        return sum(len(b[0]) for b in self._blocks)


class _PartRows:
    """``where`` of a staged part's kept rows: the row's source path, read at need."""

    def __init__(self, part: dict[str, Any], rows: np.ndarray):
        self.part, self.rows = part, rows

    def __call__(self, i: int) -> str:
        return staged_paths(self.part)[int(self.rows[i])]


@dataclass
class NightAssembly:
    """A night being assembled: its partial dataset, shard tasks and quarantine records."""

    season: str
    night: int
    night_fp: str
    staging: Path
    partial: Path
    final: Path
    shards: list[tuple[int, list[tuple[str, np.ndarray]]]]
    quarantine: list[dict[str, Any]]
    n_found: int
    stamp_id: np.ndarray


def plan_night(
    key: tuple[str, int],
    units: list[dict[str, Any]],
    first_seen: SeenIds,
    lab: Labels | None,
    night_fp: str,
    store_root: Path,
    cfg: IngestConfig,
    data_provenance: tuple[str, dict[str, Any]] = (provenance.UNKNOWN, {}),
    *,
    raw_fp: str | None = None,
) -> NightAssembly:
    """Choose the stamps a night keeps, and create its partial dataset (``stamps`` still empty).

    Parameters
    ----------
    key : tuple of (str, int)
        The night's season and night.
    units : list of dict
        The night's staged units (``staging.staged_files`` metadata), in unit order.
    first_seen : SeenIds
        The season's stamp IDs kept so far; a stamp ID seen before is quarantined as a
        duplicate, and the kept ones are added.
    lab : Labels, optional
        The labels to join (None: every label -1).
    night_fp : str
        The night's fingerprint (:func:`s2v_batch.store.state.night_fingerprint`).
    store_root : pathlib.Path
    cfg : IngestConfig
    data_provenance : (str, dict)
        Where the night's stamps came from, and the evidence
        (``rawtree.Discovery.provenance``); recorded in the night's attributes.
    raw_fp : str, optional
        The night's raw fingerprint, recorded so that a later run can say "its raw files
        changed".

    Returns
    -------
    NightAssembly
    """
    season, night = key
    quarantine: list[dict[str, Any]] = []
    keep_ids, keep_frac, pieces_all = [], [], []
    survey = survey_of_season(season)
    keep_meta: dict[str, list[np.ndarray]] = {c.name: [] for c in get_survey(survey).columns}
    n_found = 0
    dtype = np.uint8
    for meta in units:
        n_found += meta["n_found"]
        for q in meta["quarantine"]:
            quarantine.append({"season": season, "night": night, **q})
        ids = meta["stamp_id"]
        dup, prev = first_seen.lookup(ids)
        # Repeats within the part: the first occurrence is kept.
        _, first = np.unique(ids, return_index=True)
        again = np.ones(len(ids), bool)
        again[first] = False
        dup |= again
        if dup.any():
            paths = staged_paths(meta)
            for j in np.flatnonzero(dup).tolist():
                before = prev.get(j)
                if before is None:  # within this part: its first occurrence
                    before = paths[int(first[np.searchsorted(ids[first], ids[j])])]
                quarantine.append(
                    {
                        "stamp_id": int(ids[j]),
                        "season": season,
                        "night": night,
                        "path": paths[j],
                        "reason": f"duplicate stamp_id in season {season} (first seen: {before})",
                    }
                )
        rows_a = np.flatnonzero(~dup)
        if len(rows_a):
            first_seen.add(ids[rows_a], _PartRows(meta, rows_a))
            keep_ids.append(ids[rows_a])
            keep_frac.append(meta["masked_fraction"][rows_a])
            for name, parts in keep_meta.items():
                parts.append(meta.get("meta", {})[name][rows_a])
            pieces_all.append((meta["npy"], rows_a))
            if meta["dtype"] != "uint8":
                dtype = np.float32
    stamp_id = np.concatenate(keep_ids) if keep_ids else np.zeros(0, np.int64)
    frac = np.concatenate(keep_frac) if keep_frac else np.zeros(0, np.float32)
    label = lab.lookup(stamp_id) if lab is not None else np.full(len(stamp_id), -1, np.int8)
    extra = alert_columns(get_survey(survey), keep_meta)
    final = zstore.night_path(store_root, season, night)
    partial = zstore.partial_path(final)
    zstore.create_night(
        partial,
        n_stamps=len(stamp_id),
        dtype=dtype,
        size=stamp_size(cfg, season),
        stamp_id=stamp_id,
        label=label,
        masked_fraction=frac,
        season=season,
        night=night,
        attrs={
            "n_quarantined": len(quarantine),
            "n_found": n_found,
            nightstate.FINGERPRINT_ATTR: nightstate.stored_fingerprint(
                night_fp, dtype, cfg.float_encoding
            ),
            "source_format": "fits" if dtype == np.float32 else "gif",
            "labelled": lab is not None,
            "survey": survey,
            nightstate.RAW_FINGERPRINT_ATTR: raw_fp,
            nightstate.LABELS_ATTR: nightstate.labels_fingerprint(label),
            provenance.ATTR: data_provenance[0],
            provenance.EVIDENCE_ATTR: data_provenance[1],
        },
        extra=extra,
        shard_stamps=cfg.shard_stamps,
        chunk_stamps=cfg.chunk_stamps,
        float_encoding=cfg.float_encoding,
    )
    return NightAssembly(
        season=season,
        night=night,
        night_fp=night_fp,
        staging=zstore.staging_dir(store_root, season, night, night_fp),
        partial=partial,
        final=final,
        shards=plan_shards(pieces_all, cfg.shard_stamps),
        quarantine=quarantine,
        n_found=n_found,
        stamp_id=stamp_id,
    )


def stamp_size(cfg: IngestConfig, season: str) -> int:
    """The stamp edge of a season's survey."""
    return cfg.size_for(survey_of_season(season))
