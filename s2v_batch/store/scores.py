"""The hive-partitioned Parquet dataset of scores, and every path of its tree.

Layout (this module is the only one that builds these paths)::

    SCORES/season=<S>/night=<N>/part-<run>-00000.parquet  the published scores of a night: one
                                                   file (more only past PUBLISH_FILE_ROWS rows),
                                                   named for the run that made it
    SCORES/season=<S>/night=<N>/_manifest.json     what they were made from (model, data, run)
    SCORES/_staging/season=<S>/night=<N>/<key>/    parts of a run being written, one a scoring
                                                   task (key: model, threshold, part size), and
                                                   its _run.json: a killed run resumes from them
    SCORES/_staging/season=<S>/night=<N>/<key>.publish/  the night's file being assembled
    SCORES/_staging/season=<S>/night=<N>.lock      held by the one process scoring the night

pyarrow and pandas skip ``_`` folders and files. Parts are written through a temporary name and
a rename. Publishing merges a night's parts into one file, its rows sorted by
:data:`PUBLISH_SORT` in row groups of :data:`PUBLISH_ROW_GROUP` rows, so that a season is read
from one file a night and a filter on the sort keys skips row groups; the folder is then swapped
into place in one atomic exchange, so a reader sees a night's old rows or its new rows, never a
mix or duplicates.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from s2v_batch.core.faults import environment_fault
from s2v_batch.core.fsutil import atomic_path, replace_dir, write_bytes_atomic
from s2v_batch.core.surveys import get_survey

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


def score_schema(survey: str = "des") -> pa.Schema:
    """The columns of a survey's score parts: :data:`SCORE_SCHEMA`, then for alert surveys the
    alert fields kept per stamp (nullable; ``surveys.Survey.columns``). A scores root holds the
    nights of one survey, so its parts share one schema."""
    return pa.schema([*SCORE_SCHEMA, *get_survey(survey).arrow_fields()])


#: Partition columns as users query them (without it pyarrow infers night as int32).
PARTITIONING_SCHEMA = pa.schema([("season", pa.string()), ("night", pa.int32())])
#: Bytes a part takes on disk, for the free-space check before scoring (measured: about 14 a
#: stamp and 3.3 KiB a part with zstd; twice that here, for error strings and margin).
PART_BYTES_PER_STAMP = 32
PART_OVERHEAD = 8 * 1024
MANIFEST = "_manifest.json"
_STAGING = "_staging"
_RUN_FILE = "_run.json"
#: The manifest key of the stored night's fingerprint; manifests before 0.2 call it
#: ``store_fingerprint`` (still read).
_FINGERPRINT_KEYS = ("night_fingerprint", "store_fingerprint")
#: Row order of a published night: best candidates first, so a filter ``score >= t`` reads only
#: the first row groups of each night (benchmarks/bench_queries.py measured the choice).
PUBLISH_SORT: tuple[tuple[str, str], ...] = (("score", "descending"), ("stamp_id", "ascending"))
#: Rows per row group of a published night (the unit a filter skips and a scan reads).
PUBLISH_ROW_GROUP = 131_072
#: Rows per published file; a larger night gets several files of this many rows.
PUBLISH_FILE_ROWS = 8 * 2**20


# --------------------------------------------------------------------------- paths


def night_dir(root: str | Path, season: str, night: int) -> Path:
    """The published folder of one night's scores."""
    return Path(root) / f"season={season}" / f"night={int(night)}"


def run_key(model_sha256: str, threshold: float, part_stamps: int) -> str:
    """Name of a scoring run's staging folder: parts staged under another key (another model,
    threshold or part size) are not reused."""
    return f"{model_sha256[:16]}-t{float(threshold):.6f}-p{int(part_stamps)}"


class ScoresLayoutError(ValueError):
    """A Parquet file or partition folder under the scores root that is not in the layout."""


_SAFE_SEASON = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _hidden(name: str) -> bool:
    # Staging ("_staging"), manifests and temporary or hidden files are not published data, and
    # pyarrow and pandas skip them the same way.
    return name.startswith(("_", "."))


def published_nights(
    root: str | Path, season: str | None = None
) -> dict[str, dict[int, list[Path]]]:
    """Every published night's part files: season -> night -> sorted ``*.parquet`` paths.

    Folders and files whose names start with ``_`` or ``.`` are ignored; so are files that are
    not ``.parquet``. A missing root gives ``{}``.

    Parameters
    ----------
    root : path
        The scores root.
    season : str, optional
        Only this season (only its ``season=<S>`` folder is walked).

    Returns
    -------
    dict
        Nights with at least one part file, parts in path order (nested folders included, as
        pyarrow reads them).

    Raises
    ------
    ScoresLayoutError
        A Parquet file outside ``season=<S>/night=<YYYYMMDD>/``, a season name that is not
        usable, or a night that is not an integer.
    """
    root = Path(root)
    top = root if season is None else root / f"season={season}"
    found: dict[str, dict[int, list[Path]]] = {}
    if not top.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for name in sorted(filenames):
            if _hidden(name) or not name.endswith(".parquet"):
                continue
            path = Path(dirpath) / name
            parts = path.relative_to(root).parts
            if (
                len(parts) < 3
                or not parts[0].startswith("season=")
                or not parts[1].startswith("night=")
            ):
                raise ScoresLayoutError(
                    f"Parquet file {path} is not under season=<S>/night=<YYYYMMDD>/ as the scores "
                    "layout requires (docs/ARCHITECTURE.md, 'Scores')"
                )
            s = urllib.parse.unquote(parts[0].removeprefix("season="))
            night_text = urllib.parse.unquote(parts[1].removeprefix("night="))
            if not _SAFE_SEASON.match(s):
                raise ScoresLayoutError(
                    f"season {s!r} in {path} is not a usable name (letters, digits, _.-)"
                )
            try:
                night = int(night_text)
            except ValueError:
                raise ScoresLayoutError(
                    f"night {night_text!r} in {path} is not an integer YYYYMMDD"
                ) from None
            found.setdefault(s, {}).setdefault(night, []).append(path)
    return found


def staging_dir(root: str | Path, season: str, night: int, key: str) -> Path:
    """Where a scoring run of one night writes its parts before publishing them."""
    return Path(root) / _STAGING / f"season={season}" / f"night={int(night)}" / key


def lock_path(root: str | Path, season: str, night: int) -> Path:
    """The lock file a process holds while it scores and publishes one night."""
    return Path(root) / _STAGING / f"season={season}" / f"night={int(night)}.lock"


def part_path(folder: str | Path, index: int, run_id: str) -> Path:
    """Name of the part holding scoring task ``index`` of run ``run_id``.

    Deterministic within a run (a resumed run finds its parts), unique across runs: a reader
    whose listing of a night went stale while the night was re-scored then fails to open the
    old names, instead of reading the new run's rows under them and mixing two runs.
    """
    return Path(folder) / f"part-{run_id[:12]}-{index:05d}.parquet"


# --------------------------------------------------------------------------- writing


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


# --------------------------------------------------------------------------- reading


def read_manifest(root: str | Path, season: str, night: int) -> dict[str, Any] | None:
    """The manifest of a published night, or None."""
    p = night_dir(root, season, night) / MANIFEST
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        if environment_fault(exc):
            raise
        return None


def manifests(root: str | Path, season: str | None = None) -> list[dict[str, Any]]:
    """Manifests of every published night (optionally of one season), sorted by season, night."""
    pattern = f"season={season}/night=*/{MANIFEST}" if season else f"season=*/night=*/{MANIFEST}"
    out = []
    for p in sorted(Path(root).glob(pattern)):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError) as exc:
            if environment_fault(exc):
                raise
            continue
    return out


def current_scores(
    root: str | Path,
    season: str,
    night: int,
    *,
    night_fp: str | None,
    model_sha256: str,
    threshold: float,
    n_stamps: int | None = None,
) -> dict[str, Any] | None:
    """The night's manifest when its published scores are for this stored data (``night_fp``),
    model and threshold (and ``n_stamps`` stamps, when given); else None.

    The one test of "these scores are done" that scoring (to skip a night) and planning use.
    """
    m = read_manifest(root, season, night)
    if not m:
        return None
    published_fp = next((m[k] for k in _FINGERPRINT_KEYS if m.get(k)), None)
    try:
        ok = (
            m.get("model_sha256") == model_sha256
            and published_fp == night_fp
            and float(m.get("threshold")) == float(threshold)
        )
    except (TypeError, ValueError):
        return None
    return m if ok and (n_stamps is None or m.get("n_stamps") == n_stamps) else None


def surveys_of(root: str | Path) -> set[str]:
    """The surveys of the nights published under a scores root (manifests without one: DES)."""
    return {m.get("survey") or "des" for m in manifests(root)}


def newest_model(root: str | Path, season: str | None = None) -> dict[str, Any] | None:
    """Provenance of the model that most recently scored these nights, from their manifests:
    ``name``, ``version``, ``sha256`` and ``training_data`` (what a report states); None when
    nothing is published."""
    found = sorted(manifests(root, season), key=lambda m: m.get("scored_at", ""))
    if not found:
        return None
    m = found[-1]
    return {
        "name": m.get("model_name"),
        "version": m.get("model_version"),
        "sha256": m.get("model_sha256"),
        "training_data": m.get("training_data") or {},
    }


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


def manifest_for(
    night_fp: str | None, model: Mapping[str, Any], run: Mapping[str, str], **figures: Any
) -> dict[str, Any]:
    """A night's manifest: what its scores were made from and what they hold."""
    return {
        "night_fingerprint": night_fp,
        **run,
        **figures,
        "model_sha256": model["sha256"],
        "model_name": model["name"],
        "model_version": model["version"],
        "training_data": model.get("training_data") or {},
    }
