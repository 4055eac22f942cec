"""Writing a night's scores: parts staged by the scoring tasks, then published in one swap.

The paths are :mod:`s2v_batch.store.scores`'s. Publishing merges a night's parts into one file,
its rows sorted by :data:`PUBLISH_SORT` in row groups of :data:`PUBLISH_ROW_GROUP` rows, so that a
season is read from one file a night and a filter on the sort keys skips row groups; the folder is
then swapped into place in one atomic exchange, so a reader sees a night's old rows or its new
rows, never a mix or duplicates. A night whose labels changed is published again with them
(:func:`relabel_night`), its scores untouched.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from s2v_batch.core.faults import environment_fault
from s2v_batch.core.fsutil import atomic_path, replace_dir, write_bytes_atomic
from s2v_batch.store.scores import (
    LABELS_KEY,
    MANIFEST,
    SCORE_SCHEMA,
    night_dir,
    part_path,
    read_manifest,
    staging_dir,
)

#: The run id and time of a night's scoring, in its staging folder (a resumed run reuses them).
_RUN_FILE = "_run.json"
#: Row order of a published night: best candidates first, so a filter ``score >= t`` reads only
#: the first row groups of each night (benchmarks/bench_queries.py measured the choice).
PUBLISH_SORT: tuple[tuple[str, str], ...] = (("score", "descending"), ("stamp_id", "ascending"))
#: Rows per row group of a published night (the unit a filter skips and a scan reads).
PUBLISH_ROW_GROUP = 131_072
#: Rows per published file; a larger night gets several files of this many rows.
PUBLISH_FILE_ROWS = 8 * 2**20


def write_part(path: str | Path, table: pa.Table, schema: pa.Schema = SCORE_SCHEMA) -> None:
    """Write one part atomically (temporary name, then rename), cast to ``schema``
    (:func:`score_schema` of the night's survey)."""
    with atomic_path(path) as tmp:
        pq.write_table(table.cast(schema), tmp, compression="zstd")


def part_rows(path: str | Path) -> int | None:
    """Rows of a finished part (from its footer), or None when missing or unreadable."""
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as exc:
        if environment_fault(exc):  # unreadable is not unfinished: re-scoring cannot help
            raise
        return None


def run_identity(stage: str | Path) -> dict[str, str]:
    """The run id and time of a night's scoring, kept in its staging folder so that a resumed
    run reuses them (created on first use)."""
    path = Path(stage) / _RUN_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        run = {
            "run_id": uuid.uuid4().hex,
            "scored_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        }
        write_bytes_atomic(path, json.dumps(run).encode())
        return run


def publish_night(
    staging: str | Path, root: str | Path, season: str, night: int, manifest: dict[str, Any]
) -> Path:
    """Publish a finished staging folder as the night's scores (replacing any earlier ones).

    The staged parts are merged into one file (:func:`merge_parts`) in a sibling folder with the
    manifest, that folder is swapped in, and only then are the parts removed: a run killed at
    any point leaves either the old night or the new one published, and its parts to resume.
    """
    staging = Path(staging)
    assembly = staging.with_name(staging.name + ".publish")
    shutil.rmtree(assembly, ignore_errors=True)
    assembly.mkdir(parents=True)
    merge_parts(sorted(staging.glob("part-*.parquet")), assembly, manifest["run_id"])
    write_bytes_atomic(assembly / MANIFEST, json.dumps(manifest, indent=2).encode())
    dest = night_dir(root, season, night)
    dest.parent.mkdir(parents=True, exist_ok=True)
    replace_dir(assembly, dest)
    shutil.rmtree(staging, ignore_errors=True)
    # Remove the now-empty staging parents, if nothing else is staged there.
    for parent in (staging.parent, staging.parent.parent):
        try:
            parent.rmdir()
        except OSError:
            break
    return dest


def relabel_night(
    root: str | Path, season: str, night: int, stamp_id: Any, label: Any, labels_fp: str
) -> Path:
    """Publish a night's scores again with new labels, the scores untouched: each row's ``label``
    is taken from the night's (``stamp_id`` -> ``label``) and the manifest records ``labels_fp``.

    What a change of a night's labels costs its scores: one read and write of its Parquet rows,
    no model run. Published as :func:`publish_night` does (one folder swap).
    """
    import numpy as np

    m = read_manifest(root, season, night)
    if not m:
        raise FileNotFoundError(f"no published scores for {season}/{night} under {root}")
    ids = np.asarray(stamp_id, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    ids_sorted, labels_sorted = ids[order], np.asarray(label, dtype=np.int8)[order]
    stage = staging_dir(root, season, night, f"relabel-{labels_fp[:16]}")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    src = sorted(night_dir(root, season, night).glob("part-*.parquet"))
    for i, path in enumerate(src):
        table = pq.read_table(path)
        rows = table.column("stamp_id").to_numpy(zero_copy_only=False)
        pos = np.clip(np.searchsorted(ids_sorted, rows), 0, max(len(ids_sorted) - 1, 0))
        hit = ids_sorted[pos] == rows if len(ids_sorted) else np.zeros(len(rows), bool)
        new = np.where(hit, labels_sorted[pos] if len(ids_sorted) else -1, -1).astype(np.int8)
        col = pa.array(new, pa.int8(), mask=new < 0)
        table = table.set_column(table.schema.get_field_index("label"), "label", col)
        write_part(part_path(stage, i, m["run_id"]), table, table.schema)
    return publish_night(stage, root, season, night, {**m, LABELS_KEY: labels_fp})


def merge_parts(
    parts: Sequence[str | Path],
    folder: str | Path,
    run_id: str,
    *,
    sort: Sequence[tuple[str, str]] = PUBLISH_SORT,
    row_group: int = PUBLISH_ROW_GROUP,
    file_rows: int | None = None,
) -> list[Path]:
    """Write the rows of ``parts`` into ``folder`` as one file named for run ``run_id``
    (:func:`part_path`; more files of ``file_rows`` rows for a larger night), sorted by ``sort``,
    in row groups of ``row_group``.

    Columns that repeat one value (model, run, threshold) are read dictionary-encoded and the
    rows are gathered one row group at a time, so memory stays near the sort keys' size.

    Returns
    -------
    list of pathlib.Path
        The files written (none for no parts).
    """
    if not parts:
        return []
    file_rows = file_rows or PUBLISH_FILE_ROWS  # read now: a test may lower the module's value
    first = pq.ParquetFile(parts[0]).schema_arrow
    strings = [f.name for f in first if pa.types.is_string(f.type)]
    table = pa.concat_tables(
        pq.read_table(p, read_dictionary=strings) for p in parts
    ).unify_dictionaries()
    order = pc.sort_indices(table, sort_keys=list(sort))  # nulls (unscored stamps) last
    out: list[Path] = []
    for f0 in range(0, max(len(table), 1), file_rows):
        path = part_path(folder, len(out), run_id)
        with atomic_path(path) as tmp, pq.ParquetWriter(tmp, first, compression="zstd") as w:
            for r0 in range(f0, min(f0 + file_rows, len(table)), row_group):
                rows = table.take(order[r0 : min(r0 + row_group, f0 + file_rows)])
                w.write_table(rows.cast(first), row_group_size=row_group)
        out.append(path)
    return out


def discard_staging(root: str | Path, season: str, night: int, keep: str | None = None) -> None:
    """Remove a night's stale staging folders (from runs with other models or thresholds)."""
    base = staging_dir(root, season, night, "x").parent
    if not base.is_dir():
        return
    for d in base.iterdir():
        if d.name != keep:
            shutil.rmtree(d, ignore_errors=True)
