"""Ingest raw stamps into the Zarr store on a Dask cluster: parallel, resumable, nothing lost.

Per night, in two parallel phases:

1. *stage*: one task per unit (a tar archive, or a few thousand loose stamps) decodes and validates
   its stamps and saves them to ``STORE/<season>/.staging-<night>-<fingerprint>/`` (a ``.npy`` of
   pixels and a ``.meta.npz`` written last, both through a rename). A re-run reuses staged units.
2. *assemble*: after season-wide duplicate IDs are quarantined and labels joined on the client
   (IDs only: 8 bytes a stamp), one task per output shard copies its stamps from the staged units
   into ``.<night>.zarr.partial``; the finished dataset is verified, then renamed into place.

Every stamp found is stored or written to ``quarantine-<night>.parquet`` with a reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import store as zstore
from .config import IngestConfig
from .fsutil import exclusive_all, replace_dir, tmp_name
from .labels import Labels, read_labels
from .stamps import Unit, discover, read_unit

#: Bumped when the stored layout changes, so finished nights are re-ingested.
FORMAT_VERSION = "1"

QUARANTINE_SCHEMA = pa.schema(
    [
        ("stamp_id", pa.int64()),
        ("season", pa.string()),
        ("night", pa.int64()),
        ("path", pa.string()),
        ("reason", pa.string()),
    ]
)


class IngestError(ValueError):
    """Ingest cannot start (bad arguments or inputs as a whole)."""


@dataclass
class NightResult:
    """What happened to one night."""

    season: str
    night: int
    status: str  # "ingested" | "skipped"
    n_found: int
    n_stored: int
    n_quarantined: int
    path: Path


@dataclass
class IngestSummary:
    """The outcome of an ingest run; ``n_found == n_stored + n_quarantined`` always."""

    nights: list[NightResult] = field(default_factory=list)
    n_unplaced: int = 0
    n_csv_rows_without_stamp: int | None = None
    seconds: float = 0.0

    @property
    def n_found(self) -> int:
        return sum(n.n_found for n in self.nights) + self.n_unplaced

    @property
    def n_stored(self) -> int:
        return sum(n.n_stored for n in self.nights)

    @property
    def n_quarantined(self) -> int:
        return sum(n.n_quarantined for n in self.nights) + self.n_unplaced

    def line(self) -> str:
        """The one-line summary printed at the end of a run."""
        done = sum(n.status == "ingested" for n in self.nights)
        skipped = len(self.nights) - done
        new = sum(n.n_found for n in self.nights if n.status == "ingested")
        rate = new / self.seconds if self.seconds > 0 else 0.0
        csv = (
            ""
            if self.n_csv_rows_without_stamp is None
            else f"; {self.n_csv_rows_without_stamp} CSV rows without a stamp"
        )
        return (
            f"ingest: {self.n_found} stamps found = {self.n_stored} stored + "
            f"{self.n_quarantined} quarantined; {len(self.nights)} nights ({done} ingested, "
            f"{skipped} already complete){csv}; {rate:,.0f} stamps/s over {self.seconds:.1f} s"
        )


# --------------------------------------------------------------------------- worker functions


def stage_unit(unit: Unit, staging: str, size: int) -> dict:
    """Decode one unit into the staging folder (or reuse it there); return its IDs and quarantine.

    Runs on a worker. The returned dict is small: IDs, source paths and quarantine records.
    """
    base = Path(staging) / unit.name
    meta_path = base.with_suffix(".meta.npz")
    if meta_path.is_file():
        try:
            return _load_meta(meta_path)
        except Exception:
            pass  # a damaged staged unit is simply decoded again
    data = read_unit(unit, size)
    npy = base.with_suffix(".npy")
    tmp = tmp_name(npy)
    with open(tmp, "wb") as f:
        np.save(f, data.pixels)
    os.replace(tmp, npy)
    meta = {
        "stamp_id": data.stamp_id,
        "masked_fraction": data.masked_fraction,
        "paths": np.asarray(data.paths, dtype=object).astype(str),
        "quarantine": np.asarray(json.dumps(data.quarantine)),
        "n_found": np.asarray(data.n_found),
        "dtype": np.asarray(str(data.pixels.dtype)),
    }
    tmp = tmp_name(meta_path)
    with open(tmp, "wb") as f:
        np.savez(f, **meta)
    os.replace(tmp, meta_path)
    return _load_meta(meta_path)


def _load_meta(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        out = {
            "stamp_id": z["stamp_id"],
            "masked_fraction": z["masked_fraction"],
            "paths": z["paths"].tolist(),
            "quarantine": json.loads(str(z["quarantine"])),
            "n_found": int(z["n_found"]),
            "dtype": str(z["dtype"]),
            "npy": str(path.with_name(path.name.replace(".meta.npz", ".npy"))),
        }
    if len(out["stamp_id"]) != len(out["paths"]):
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


# --------------------------------------------------------------------------- the driver


def night_fingerprint(input_fp: str, labels: Labels | None, cfg: IngestConfig) -> str:
    """What a finished night must match to be skipped: inputs, labels, stamp size, format."""
    h = hashlib.sha256()
    for part in (
        input_fp,
        labels.fingerprint if labels else "",
        str(cfg.stamp_size),
        FORMAT_VERSION,
    ):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def _write_quarantine(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA)
    tmp = tmp_name(path)
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def ingest(
    raw: str | Path,
    store_root: str | Path,
    client,
    *,
    labels: str | Path | None = None,
    config: IngestConfig | None = None,
    nights: set[tuple[str, int]] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    lock_wait: float = 3600.0,
) -> IngestSummary:
    """Ingest a raw tree (loose gif/fits files and tar archives) into one Zarr dataset per night.

    Parameters
    ----------
    raw : path
        Root of the raw stamps, with ``<season>/<YYYYMMDD>`` folders somewhere in each path.
    store_root : path
        The Zarr store root (created if needed).
    client : distributed.Client
        The Dask client that runs the work.
    labels : path, optional
        The autoscan CSV (``OBJECT_TYPE`` 0 real / 1 artifact), converted to labels 1 / 0.
    config : IngestConfig, optional
        Stamp size and work-unit sizes.
    nights : set of (season, night), optional
        Only these nights (the nightly flow ingests one night).
    progress : bool
        Show progress bars.
    log : callable
        Where status lines go.
    lock_wait : float
        Seconds to wait while another process writes the same season
        (:func:`s2v_batch.fsutil.exclusive`) before giving up with ``StoreBusyError``.

    Returns
    -------
    IngestSummary
    """
    cfg = config or IngestConfig()
    t0 = time.perf_counter()
    store_root = Path(store_root)
    lab = read_labels(labels) if labels else None
    disc = discover(raw, unit_stamps=cfg.unit_stamps)
    keys = sorted(disc.units)
    if nights is not None:
        keys = [k for k in keys if k in nights]
        missing = sorted(set(nights) - set(keys))
        if missing:
            raise IngestError(f"no stamps under {raw} for night(s) {missing}")
    if not keys and not disc.unplaced:
        raise IngestError(
            f"no stamps (srch/temp/diff .gif/.fits files or .tar archives) under {raw}"
        )
    store_root.mkdir(parents=True, exist_ok=True)
    locks = [
        (zstore.lock_path(store_root, s), f"season {s} of {store_root}")
        for s in sorted({k[0] for k in keys})
    ]
    with exclusive_all(locks, wait=lock_wait, log=log):  # one writer per season
        summary = _ingest_nights(disc, keys, store_root, client, lab, cfg, nights, progress)
    summary.seconds = time.perf_counter() - t0
    return summary


def _ingest_nights(
    disc, keys, store_root: Path, client, lab, cfg, nights, progress
) -> IngestSummary:
    """The body of :func:`ingest`, run with the seasons' writer locks held."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    summary = IngestSummary()
    if disc.unplaced and nights is None:
        rows = [
            {"stamp_id": None, "season": None, "night": None, "path": p, "reason": r}
            for p, r in disc.unplaced
        ]
        _write_quarantine(store_root / "quarantine-unplaced.parquet", rows)
        summary.n_unplaced = len(rows)

    # Which nights are already complete for exactly these inputs?
    todo: list[tuple[str, int]] = []
    fps = {k: night_fingerprint(disc.fingerprints[k], lab, cfg) for k in keys}
    seen_ids: list[np.ndarray] = []
    for k in keys:
        path = zstore.night_path(store_root, *k)
        attrs = zstore.verify_night(path)
        if attrs is not None and attrs.get("input_fingerprint") == fps[k]:
            n_st, n_q = int(attrs["n_stamps"]), int(attrs.get("n_quarantined", 0))
            summary.nights.append(NightResult(k[0], k[1], "skipped", n_st + n_q, n_st, n_q, path))
            if lab is not None:
                seen_ids.append(zstore.read_stamp_ids(path))
        else:
            todo.append(k)

    # Phase 1: stage every unit of every pending night, in parallel.
    staged: dict[tuple[str, int], list[dict]] = {}
    if todo:
        futures = {}
        for k in todo:
            sdir = store_root / k[0] / f".staging-{k[1]}-{fps[k][:12]}"
            sdir.mkdir(parents=True, exist_ok=True)
            for u in disc.units[k]:
                fut = client.submit(stage_unit, u, str(sdir), cfg.stamp_size, pure=False)
                futures[fut] = (k, u.index)
            staged[k] = [None] * len(disc.units[k])  # type: ignore[list-item]
        bar = tqdm(total=len(futures), desc="decode", unit="unit", disable=not progress)
        for fut in as_completed(futures):
            k, i = futures[fut]
            staged[k][i] = fut.result()
            bar.update(1)
        bar.close()

    # Season-wide duplicate IDs: the first occurrence (night, unit, member order) wins.
    first_seen: dict[str, dict[int, str]] = {}
    for season in sorted({k[0] for k in todo}):
        ids: dict[int, str] = {}
        for ref in zstore.list_nights(store_root, season):
            if (ref.season, ref.night) in staged or zstore.verify_night(ref.path) is None:
                continue
            for sid in zstore.read_stamp_ids(ref.path).tolist():
                ids.setdefault(sid, f"night {ref.night}")
        first_seen[season] = ids

    # Phase 2: assemble each pending night, shards in parallel across nights.
    pending = []
    for k in todo:
        pending.append(_plan_night(k, staged[k], first_seen[k[0]], lab, fps[k], store_root, cfg))
    shard_futs = {}
    for plan in pending:
        for start, pieces in plan["shards"]:
            fut = client.submit(assemble_shard, plan["partial"], start, pieces, pure=False)
            shard_futs[fut] = plan["key"]
    bar = tqdm(total=len(shard_futs), desc="write", unit="shard", disable=not progress)
    for _ in as_completed(shard_futs):
        bar.update(1)
    bar.close()
    for fut in shard_futs:
        fut.result()  # re-raise a worker error here, after every shard has had its chance
    for plan in pending:
        summary.nights.append(_finish_night(plan, store_root))
        seen_ids.append(plan["stamp_id"])
    if lab is not None:
        all_seen = np.concatenate(seen_ids) if seen_ids else np.zeros(0, np.int64)
        summary.n_csv_rows_without_stamp = lab.n_missing(all_seen)
    summary.nights.sort(key=lambda n: (n.season, n.night))
    return summary


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


def _plan_night(key, units, first_seen, lab, fp, store_root, cfg) -> dict:
    season, night = key
    quarantine: list[dict] = []
    keep_ids, keep_frac, pieces_all = [], [], []
    n_found = 0
    dtype = np.uint8
    for meta in units:
        n_found += meta["n_found"]
        for q in meta["quarantine"]:
            quarantine.append({"season": season, "night": night, **q})
        rows = []
        for j, (sid, path) in enumerate(zip(meta["stamp_id"].tolist(), meta["paths"], strict=True)):
            prev = first_seen.get(sid)
            if prev is not None:
                reason = f"duplicate stamp_id in season {season} (first seen: {prev})"
                quarantine.append(
                    {
                        "stamp_id": sid,
                        "season": season,
                        "night": night,
                        "path": path,
                        "reason": reason,
                    }
                )
                continue
            first_seen[sid] = path
            rows.append(j)
        if rows:
            rows_a = np.asarray(rows, dtype=np.int64)
            keep_ids.append(meta["stamp_id"][rows_a])
            keep_frac.append(meta["masked_fraction"][rows_a])
            pieces_all.append((meta["npy"], rows_a))
            if meta["dtype"] != "uint8":
                dtype = np.float32
    stamp_id = np.concatenate(keep_ids) if keep_ids else np.zeros(0, np.int64)
    frac = np.concatenate(keep_frac) if keep_frac else np.zeros(0, np.float32)
    label = lab.lookup(stamp_id) if lab is not None else np.full(len(stamp_id), -1, np.int8)
    n = len(stamp_id)
    final = zstore.night_path(store_root, season, night)
    partial = final.with_name(f".{final.name}.partial")
    zstore.create_night(
        partial,
        n_stamps=n,
        dtype=dtype,
        size=cfg.stamp_size,
        stamp_id=stamp_id,
        label=label,
        masked_fraction=frac,
        season=season,
        night=night,
        attrs={
            "n_quarantined": len(quarantine),
            "n_found": n_found,
            "input_fingerprint": fp,
            "source_format": "fits" if dtype == np.float32 else "gif",
            "labelled": lab is not None,
        },
        shard_stamps=cfg.shard_stamps,
        chunk_stamps=cfg.chunk_stamps,
    )
    shards = plan_shards(pieces_all, cfg.shard_stamps)
    return {
        "key": key,
        "partial": str(partial),
        "final": final,
        "shards": shards,
        "quarantine": quarantine,
        "n_found": n_found,
        "stamp_id": stamp_id,
        "staging": store_root / season / f".staging-{night}-{fp[:12]}",
    }


def _finish_night(plan: dict, store_root: Path) -> NightResult:
    season, night = plan["key"]
    partial, final = Path(plan["partial"]), plan["final"]
    if zstore.verify_night(partial) is None:
        raise IngestError(f"night {season}/{night}: the written dataset failed verification")
    _write_quarantine(zstore.quarantine_path(store_root, season, night), plan["quarantine"])
    replace_dir(partial, final)
    shutil.rmtree(plan["staging"], ignore_errors=True)
    n_q = len(plan["quarantine"])
    n_stored = len(plan["stamp_id"])
    if n_stored + n_q != plan["n_found"]:
        raise RuntimeError(f"night {season}/{night}: stamp accounting broke (a bug)")
    return NightResult(season, night, "ingested", plan["n_found"], n_stored, n_q, final)
