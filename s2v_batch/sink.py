"""The hive-partitioned Parquet dataset of scores: ``SCORES/season=<S>/night=<N>/part-*.parquet``.

Parts are written per shard under ``SCORES/_staging/`` (pyarrow and pandas skip ``_`` folders),
each through a temporary name and a rename; a finished night is swapped into place in one atomic
exchange, so a reader sees a night's old rows or its new rows, never a mix or duplicates.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .fsutil import replace_dir, tmp_name, write_bytes_atomic

SCORE_SCHEMA = pa.schema(
    [
        ("stamp_id", pa.int64()),
        ("score", pa.float32()),
        ("is_candidate", pa.bool_()),
        ("threshold", pa.float32()),
        ("label", pa.int8()),
        ("model_version", pa.string()),
        ("model_sha256", pa.string()),
        ("run_id", pa.string()),
        ("scored_at", pa.timestamp("us", tz="UTC")),
        ("error", pa.string()),
    ]
)
#: Partition columns as users query them (without it pyarrow infers night as int32).
PARTITIONING_SCHEMA = pa.schema([("season", pa.string()), ("night", pa.int32())])
MANIFEST = "_manifest.json"


def night_dir(root: str | Path, season: str, night: int) -> Path:
    """The published folder of one night's scores."""
    return Path(root) / f"season={season}" / f"night={int(night)}"


def staging_dir(root: str | Path, season: str, night: int, key: str) -> Path:
    """Where a scoring run of one night writes its parts before publishing them."""
    return Path(root) / "_staging" / f"season={season}" / f"night={int(night)}" / key


def lock_path(root: str | Path, season: str, night: int) -> Path:
    """The lock file a process holds while it scores and publishes one night."""
    return Path(root) / "_staging" / f"season={season}" / f"night={int(night)}.lock"


def part_path(folder: str | Path, index: int) -> Path:
    """Deterministic name of the part holding shard ``index``."""
    return Path(folder) / f"part-{index:05d}.parquet"


def write_part(path: str | Path, table: pa.Table) -> None:
    """Write one part atomically (temporary name, then rename)."""
    path = Path(path)
    tmp = tmp_name(path)
    pq.write_table(table.cast(SCORE_SCHEMA), tmp, compression="zstd")
    os.replace(tmp, path)


def part_rows(path: str | Path) -> int | None:
    """Rows of a finished part (from its footer), or None when missing or unreadable."""
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:
        return None


def read_manifest(root: str | Path, season: str, night: int) -> dict[str, Any] | None:
    """The manifest of a published night, or None."""
    p = night_dir(root, season, night) / MANIFEST
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def manifests(root: str | Path, season: str | None = None) -> list[dict[str, Any]]:
    """Manifests of every published night (optionally of one season), sorted by season, night."""
    pattern = f"season={season}/night=*/{MANIFEST}" if season else f"season=*/night=*/{MANIFEST}"
    out = []
    for p in sorted(Path(root).glob(pattern)):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    return out


def publish_night(staging: Path, root: str | Path, season: str, night: int, manifest: dict) -> Path:
    """Swap a finished staging folder in as the night's scores (replacing any earlier ones)."""
    write_bytes_atomic(staging / MANIFEST, json.dumps(manifest, indent=2).encode())
    dest = night_dir(root, season, night)
    dest.parent.mkdir(parents=True, exist_ok=True)
    replace_dir(staging, dest)
    # Remove the now-empty staging parents, if nothing else is staged there.
    for parent in (staging.parent, staging.parent.parent):
        try:
            parent.rmdir()
        except OSError:
            break
    return dest


def discard_staging(root: str | Path, season: str, night: int, keep: str | None = None) -> None:
    """Remove a night's stale staging folders (from runs with other models or thresholds)."""
    base = staging_dir(root, season, night, "x").parent
    if not base.is_dir():
        return
    for d in base.iterdir():
        if d.name != keep:
            shutil.rmtree(d, ignore_errors=True)


def read_scores(root: str | Path, season: str | None = None, columns: list[str] | None = None):
    """Read scores into pandas, with ``season`` as string and ``night`` as int32 columns.

    ``pandas.read_parquet(root, filters=[("season", "==", "Y1")])`` works as well; this adds
    typed partition columns.
    """
    import pyarrow.dataset as ds

    dataset = ds.dataset(
        Path(root),
        format="parquet",
        partitioning=ds.partitioning(PARTITIONING_SCHEMA, flavor="hive"),
    )
    flt = ds.field("season") == season if season is not None else None
    return dataset.to_table(columns=columns, filter=flt).to_pandas()
