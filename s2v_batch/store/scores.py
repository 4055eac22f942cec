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

pyarrow and pandas skip ``_`` folders and files. Writing the parts and publishing a night (in
one atomic swap) are :mod:`s2v_batch.store.publish`'s; reading them back, the manifests and
whether a night's scores are current are here.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from s2v_batch.core.faults import environment_fault
from s2v_batch.core.surveys import get_survey
from s2v_batch.store.state import LABELS_CHANGED

SCORE_SCHEMA = pa.schema(
    [
        ("stamp_id", pa.int64()),
        ("score", pa.float32()),
        ("is_candidate", pa.bool_()),
        ("threshold", pa.float32()),
        ("label", pa.int8()),
        ("model_version", pa.string()),
        # float32 or bfloat16: what the model computed in (the threshold is that precision's)
        ("precision", pa.string()),
        ("model_sha256", pa.string()),
        ("run_id", pa.string()),
        ("scored_at", pa.timestamp("us", tz="UTC")),
        ("error", pa.string()),
        # simulated / survey / mixed / unknown: where the night's stamps came from
        ("data_provenance", pa.string()),
        # the stamp's masked pixels (an edge cut-out's pad included), as stored
        ("masked_fraction", pa.float32()),
        # masked_fraction above the model card's max_masked_fraction (null: the card states none)
        ("masked_over_limit", pa.bool_()),
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
#: The manifest key of the stored night's fingerprint; manifests before 0.2 call it
#: ``store_fingerprint`` (still read).
_FINGERPRINT_KEYS = ("night_fingerprint", "store_fingerprint")


# --------------------------------------------------------------------------- paths


def night_dir(root: str | Path, season: str, night: int) -> Path:
    """The published folder of one night's scores."""
    return Path(root) / f"season={season}" / f"night={int(night)}"


def run_key(
    model_sha256: str, threshold: float, part_stamps: int, precision: str = "float32"
) -> str:
    """Name of a scoring run's staging folder: parts staged under another key (another model,
    threshold, part size or precision) are not reused. float32 keys are as before precisions."""
    key = f"{model_sha256[:16]}-t{float(threshold):.6f}-p{int(part_stamps)}"
    return key if precision == "float32" else f"{key}-{precision}"


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


#: The manifest key of the night's labels digest when it was scored.
LABELS_KEY = "labels_fingerprint"
NOT_SCORED = "not scored"


def scores_status(
    root: str | Path,
    season: str,
    night: int,
    *,
    night_fp: str | None,
    model_sha256: str,
    threshold: float,
    n_stamps: int | None = None,
    precision: str = "float32",
    labels_fp: str | None = None,
) -> tuple[dict[str, Any] | None, str | None]:
    """Whether a night's published scores are current, and if not, why.

    Current means: for this stored data (``night_fp``), model, threshold and ``precision`` (and
    ``n_stamps`` stamps, and the labels ``labels_fp``, when given). A manifest without a
    precision was scored before there was a choice: float32.

    Returns
    -------
    (dict or None, str or None)
        The manifest and None; or None and the reason: ``not scored``, ``new model``, ``new
        threshold``, ``new precision``, ``its stored data changed``, ``its labels changed``.
    """
    m = read_manifest(root, season, night)
    if not m:
        return None, NOT_SCORED
    published_fp = next((m[k] for k in _FINGERPRINT_KEYS if m.get(k)), None)
    try:
        same_threshold = float(m.get("threshold")) == float(threshold)
    except (TypeError, ValueError):
        same_threshold = False
    checks = (
        (m.get("model_sha256") == model_sha256, "new model"),
        (same_threshold, "new threshold"),
        (m.get("precision", "float32") == precision, "new precision"),
        (
            published_fp == night_fp and (n_stamps is None or m.get("n_stamps") == n_stamps),
            "its stored data changed",
        ),
        (labels_fp is None or m.get(LABELS_KEY) == labels_fp, LABELS_CHANGED),
    )
    for ok, reason in checks:
        if not ok:
            return None, reason
    return m, None


def current_scores(root: str | Path, season: str, night: int, **what: Any) -> dict[str, Any] | None:
    """The night's manifest when its published scores are current (:func:`scores_status`:
    the one test of "these scores are done" that scoring, to skip a night, and planning use);
    else None."""
    return scores_status(root, season, night, **what)[0]


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
        "survey": m.get("model_survey"),
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
        "model_survey": model.get("survey"),
        "training_data": model.get("training_data") or {},
    }
