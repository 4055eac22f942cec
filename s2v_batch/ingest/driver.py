"""Ingest raw stamps into the Zarr store on a Dask cluster: parallel, resumable, nothing lost.

Per night, in two parallel phases:

1. *stage*: one task per unit (a tar archive, or a few thousand loose stamps) decodes and validates
   its stamps and saves them in the night's staging folder (``store.staging_dir``: a ``.npy`` of
   pixels and a ``.meta.npz`` written last, both through a rename). A re-run reuses staged units;
   a nightly alert archive is staged in parts, and a re-run goes on after its last whole part.
2. *assemble*: after season-wide duplicate IDs are quarantined and labels joined on the client
   (IDs only: 8 bytes a stamp), one task per output shard copies its stamps from the staged units
   into the night's partial dataset; the finished dataset is verified, then renamed into place.

Every stamp found is stored or written to the night's quarantine table with a reason. A night
that is already current (``nightstate.current_night``) is skipped.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from s2v_batch.core.config import IngestConfig
from s2v_batch.core.conventions import survey_of_season
from s2v_batch.core.faults import ensure_free_space, human_bytes
from s2v_batch.core.fsutil import atomic_path, exclusive_all, replace_dir
from s2v_batch.ingest.assembly import NightAssembly, SeenIds, plan_night, stamp_size
from s2v_batch.ingest.labels import Labels, read_labels
from s2v_batch.ingest.rawtree import Discovery, discover
from s2v_batch.ingest.staging import (
    assemble_shard,
    load_part,
    night_bytes,
    stage_unit,
    staged_files,
)
from s2v_batch.ingest.status import INGEST, RELABEL, night_need, relabel
from s2v_batch.store import dataset as zstore
from s2v_batch.store import state as nightstate

#: Bytes kept free beyond the estimate: quarantine tables, metadata, the lock file.
SPACE_MARGIN = 1 << 20


class IngestError(ValueError):
    """Ingest cannot start (bad arguments or inputs as a whole)."""


@dataclass
class NightResult:
    """What happened to one night."""

    season: str
    night: int
    status: str  # "ingested" | "relabelled" (labels only) | "skipped"
    n_found: int
    n_stored: int
    n_quarantined: int
    path: Path
    quarantine: Path
    night_fingerprint: str

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready summary (paths as strings)."""
        return {
            "season": self.season,
            "night": self.night,
            "status": self.status,
            "n_found": self.n_found,
            "n_stored": self.n_stored,
            "n_quarantined": self.n_quarantined,
            "path": str(self.path),
            "quarantine": str(self.quarantine),
            "night_fingerprint": self.night_fingerprint,
        }

    @property
    def key(self) -> tuple[str, int]:
        return self.season, self.night

    def line(self) -> str:
        """The night's accounting: found = stored + quarantined, and where the quarantine is."""
        where = f" (see {self.quarantine})" if self.n_quarantined else ""
        return (
            f"{self.season}/{self.night}: {self.n_found} found = {self.n_stored} stored + "
            f"{self.n_quarantined} quarantined; {self.status}{where}"
        )


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

    def night(self, season: str, night: int) -> NightResult:
        """The result of one night of this run."""
        return next(n for n in self.nights if n.key == (season, int(night)))

    def line(self) -> str:
        """The one-line summary printed at the end of a run."""
        done = sum(n.status == "ingested" for n in self.nights)
        relabelled = sum(n.status == "relabelled" for n in self.nights)
        skipped = len(self.nights) - done - relabelled
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
            + (f"{relabelled} relabelled, " if relabelled else "")
            + f"{skipped} already complete){csv}; {rate:,.0f} stamps/s over {self.seconds:.1f} s"
        )


# --------------------------------------------------------------------------- the driver


def ingest(
    raw: str | Path,
    store_root: str | Path,
    client: Any,
    *,
    labels: str | Path | Labels | None = None,
    config: IngestConfig | None = None,
    nights: set[tuple[str, int]] | None = None,
    discovery: Discovery | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
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
    labels : path or Labels, optional
        The autoscan CSV (``OBJECT_TYPE`` 0 real / 1 artifact), converted to labels 1 / 0.
    config : IngestConfig, optional
        Stamp size, work-unit sizes and how long to wait for another writer of a season.
    nights : set of (season, night), optional
        Only these nights (the nightly flow ingests one night).
    discovery : Discovery, optional
        The raw tree as already walked by :func:`s2v_batch.ingest.rawtree.discover` (the pipeline's
        plan); walked here when not given.
    progress : bool
        Show progress bars.
    log : callable
        Where status lines go.

    Returns
    -------
    IngestSummary

    Raises
    ------
    IngestError
        No stamps at all, or none for a requested night.
    StoreBusyError
        Another process kept a season's lock past ``config.lock_wait`` seconds.
    """
    cfg = config or IngestConfig()
    t0 = time.perf_counter()
    # Absolute paths: workers started apart (TLS address specs) have a working directory of
    # their own, and every path below is sent to them.
    store_root, raw = Path(store_root).expanduser().resolve(), Path(raw).expanduser().resolve()
    lab = read_labels(labels) if isinstance(labels, str | Path) else labels
    wanted = None if nights is None else {int(n) for _, n in nights}
    content = cfg.fingerprint == "content"
    disc = discovery or discover(raw, unit_stamps=cfg.unit_stamps, nights=wanted, content=content)
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
    with exclusive_all(locks, wait=cfg.lock_wait, log=log):  # one writer per season
        summary = _ingest_nights(disc, keys, store_root, client, lab, cfg, nights, progress, log)
    summary.seconds = time.perf_counter() - t0
    return summary


def dry_run(
    raw: str | Path,
    store_root: str | Path,
    *,
    labels: str | Path | Labels | None = None,
    config: IngestConfig | None = None,
    nights: set[tuple[str, int]] | None = None,
) -> tuple[list[str], str]:
    """What :func:`ingest` would do, without doing it: a line per night that would be ingested
    or relabelled, saying why, and a summary line. Reads the raw tree and the store's metadata.
    """
    cfg = config or IngestConfig()
    lab = read_labels(labels) if isinstance(labels, str | Path) else labels
    wanted = None if nights is None else {int(n) for _, n in nights}
    disc = discover(
        Path(raw), unit_stamps=cfg.unit_stamps, nights=wanted, content=cfg.fingerprint == "content"
    )
    keys = [k for k in sorted(disc.units) if nights is None or k in nights]
    needs = [night_need(disc, k, Path(store_root), lab, cfg) for k in keys]
    lines = [
        f"would {'relabel' if n.need == RELABEL else 'ingest'} {n.season}/{n.night}: {n.reason}"
        for n in needs
        if n.reason is not None
    ]
    todo = sum(n.need == INGEST for n in needs)
    relabelled = sum(n.need == RELABEL for n in needs)
    summary = (
        f"ingest --dry-run: {len(needs)} night(s): {todo} would be ingested, {relabelled} "
        f"relabelled, {len(needs) - todo - relabelled} complete (skipped); "
        f"{len(disc.unplaced)} input(s) cannot be placed; nothing was changed"
    )
    return lines, summary


def _ingest_nights(
    disc: Discovery,
    keys: list[tuple[str, int]],
    store_root: Path,
    client: Any,
    lab: Labels | None,
    cfg: IngestConfig,
    nights: set[tuple[str, int]] | None,
    progress: bool,
    log: Callable[[str], None] = print,
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
        zstore.write_quarantine(zstore.unplaced_quarantine_path(store_root), rows)
        summary.n_unplaced = len(rows)

    # What each night needs: nothing, its labels, or its pixels (and why).
    todo: list[tuple[str, int]] = []
    fps: dict[tuple[str, int], str] = {}
    seen_ids: list[np.ndarray] = []
    for k in keys:
        need = night_need(disc, k, store_root, lab, cfg)
        fps[k] = need.night_fp
        if need.need == INGEST:
            todo.append(k)
            if need.reason != nightstate.NOT_STORED:
                log(f"night {k[0]}/{k[1]}: ingested again: {need.reason}")
            continue
        attrs = need.attrs
        status = "skipped"
        if need.need == RELABEL:
            attrs, status = relabel(need, store_root), "relabelled"
            log(f"night {k[0]}/{k[1]}: {need.reason}; labels rewritten, pixels kept")
        path = zstore.night_path(store_root, *k)
        n_st, n_q = int(attrs["n_stamps"]), int(attrs.get("n_quarantined", 0))
        qpath = zstore.quarantine_path(store_root, *k)
        summary.nights.append(NightResult(*k, status, n_st + n_q, n_st, n_q, path, qpath, fps[k]))
        if lab is not None:
            seen_ids.append(zstore.read_stamp_ids(path))

    # Phase 1: stage every unit of every pending night, in parallel.
    staged: dict[tuple[str, int], list[dict[str, Any]]] = {}
    if todo:
        check_space(disc, todo, store_root, fps, cfg, log)
        futures = {}
        for k in todo:
            sdir = zstore.staging_dir(store_root, *k, fps[k])
            sdir.mkdir(parents=True, exist_ok=True)
            for u in disc.units[k]:
                edge = cfg.edge_for(survey_of_season(k[0]))
                fut = client.submit(
                    stage_unit, u, str(sdir), stamp_size(cfg, k[0]), edge, cfg.unit_stamps,
                    pure=False,
                )  # fmt: skip
                futures[fut] = (k, u.index)
            staged[k] = [[]] * len(disc.units[k])
        bar = tqdm(
            total=len(futures), desc="decode", unit="unit", disable=not progress or not futures
        )
        for fut in as_completed(futures):
            k, i = futures[fut]
            staged[k][i] = [load_part(h) for h in fut.result()]
            bar.update(1)
        bar.close()
        for k in todo:
            parts = [p for unit in staged[k] for p in unit]
            reused = sum(p["reused"] for p in parts)
            if reused and len(parts) > len(staged[k]):
                log(f"{k[0]}/{k[1]}: {reused} of {len(parts)} staged part(s) reused")

    # Season-wide duplicate IDs: the first occurrence (night, unit, member order) wins.
    first_seen: dict[str, SeenIds] = {}
    for season in sorted({k[0] for k in todo}):
        seen = SeenIds()
        for ref in zstore.list_nights(store_root, season):
            if (ref.season, ref.night) in staged or zstore.verify_night(ref.path) is None:
                continue
            ids = np.unique(zstore.read_stamp_ids(ref.path))
            seen.add(ids[~seen.lookup(ids)[0]], _NightLabel(ref.night))
        first_seen[season] = seen

    # Phase 2: assemble each pending night, shards in parallel across nights.
    pending = [
        plan_night(
            k,
            [p for unit in staged[k] for p in unit],
            first_seen[k[0]],
            lab,
            fps[k],
            store_root,
            cfg,
            disc.provenance(k),
            raw_fp=disc.raw_fingerprints[k],
        )  # fmt: skip
        for k in todo
    ]
    shard_futs = [
        client.submit(assemble_shard, str(plan.partial), start, pieces, pure=False)
        for plan in pending
        for start, pieces in plan.shards
    ]
    bar = tqdm(
        total=len(shard_futs), desc="write", unit="shard", disable=not progress or not shard_futs
    )
    for _ in as_completed(shard_futs):
        bar.update(1)
    bar.close()
    for fut in shard_futs:
        fut.result()  # re-raise a worker error here, after every shard has had its chance
    for plan in pending:
        summary.nights.append(_finish_night(plan, store_root))
        seen_ids.append(plan.stamp_id)
    if lab is not None:
        all_seen = np.concatenate(seen_ids) if seen_ids else np.zeros(0, np.int64)
        summary.n_csv_rows_without_stamp = lab.n_missing(all_seen)
    summary.nights.sort(key=lambda n: n.key)
    return summary


class _NightLabel:
    """``where`` of the IDs of a stored night (SeenIds)."""

    def __init__(self, night: int):
        self.text = f"night {night}"

    def __call__(self, i: int) -> str:
        return self.text


def check_space(
    disc: Discovery,
    todo: list[tuple[str, int]],
    store_root: Path,
    fps: dict[tuple[str, int], str],
    cfg: IngestConfig,
    log: Callable[[str], None],
) -> None:
    """Fail before writing anything when the store's filesystem lacks the space the nights need
    (:func:`s2v_batch.ingest.staging.night_bytes` says how it is estimated); say what is reused.

    Raises
    ------
    s2v_batch.core.faults.InsufficientSpaceError
        With the bytes needed and the bytes free.
    """
    stage = dataset = 0
    for k in todo:
        sdir = zstore.staging_dir(store_root, *k, fps[k])
        st, ds = night_bytes(disc.units[k], stamp_size(cfg, k[0]), sdir)
        stage, dataset = stage + st, dataset + ds
        reused = sum(staged_files(u, sdir)[1].is_file() for u in disc.units[k])
        if reused:
            log(f"{k[0]}/{k[1]}: reusing {reused} of {len(disc.units[k])} staged unit(s)")
    need = stage + dataset + SPACE_MARGIN
    what = "ingesting " + (
        f"{todo[0][0]}/{todo[0][1]}" if len(todo) == 1 else f"{len(todo)} nights"
    )
    what += f" (staging {human_bytes(stage)} + datasets {human_bytes(dataset)}, estimated)"
    ensure_free_space(store_root, need, what)


def _finish_night(plan: NightAssembly, store_root: Path) -> NightResult:
    """Verify the assembled night, write its quarantine, rename it into place, drop staging."""
    if zstore.verify_night(plan.partial) is None:
        raise IngestError(
            f"night {plan.season}/{plan.night}: the written dataset failed verification"
        )
    n_q, n_stored = len(plan.quarantine), len(plan.stamp_id)
    if n_stored + n_q != plan.n_found:
        raise RuntimeError(f"night {plan.season}/{plan.night}: stamp accounting broke (a bug)")
    qpath = zstore.quarantine_path(store_root, plan.season, plan.night)
    # The dataset, then its quarantine table, each in one rename: a run stopped in between
    # leaves a night that nightstate.current_night does not take for done (the counts differ).
    with atomic_path(qpath) as qtmp:
        zstore.write_quarantine(qtmp, plan.quarantine)
        replace_dir(plan.partial, plan.final)
    shutil.rmtree(plan.staging, ignore_errors=True)
    return NightResult(
        plan.season,
        plan.night,
        "ingested",
        plan.n_found,
        n_stored,
        n_q,
        plan.final,
        qpath,
        plan.night_fp,
    )
