"""The nightly flow: ingest one night's raw stamps, score them, update the night's and season's reports.

Each task calls one ``s2v_batch`` function; the library drives Dask itself. The flow opens one Dask
cluster per run (or attaches to a scheduler address it is given) and hands the scheduler address to
the tasks, which attach with their own ``distributed.Client``: no Prefect code runs on a Dask worker.

Re-runs are cheap and safe at two levels:

- Prefect caches each step under a key made of what the step's result depends on (season, night,
  the raw input fingerprint, the labels file, the model's sha256, version and threshold, the
  settings and the output folder), never the flow-run id. Results are persisted as JSON under
  ``STORE/_prefect/results``, so the cache lives and dies with the store. A cached step is only
  trusted while its output is still there: a missing or incomplete output refreshes the step.
- When a step does run, the library resumes: finished nights, staged ingest units and scored
  shards are kept, so a re-run after a failure does only what is missing.

Tasks retry transient errors (a lost worker, a flaky shared filesystem) with growing delays; bad
input (``ValueError`` and its subclasses, which every ``s2v_batch`` error derives from) fails at once.

Run it locally (Prefect's ephemeral mode, nothing to start): ``s2v nightly ...`` or
``python -c "from s2v_flows.nightly import nightly_flow; nightly_flow(...)"``. With ``PREFECT_API_URL``
set, runs are recorded on that server. ``python -m s2v_flows.nightly --help`` serves it on a schedule
(see docs/DEPLOY.md).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from s2v_batch import sink
from s2v_batch import store as zstore
from s2v_batch.config import IngestConfig, PipelineConfig, ScoreConfig
from s2v_batch.conventions import is_night, is_season
from s2v_batch.scoring import scores_complete

#: DES observes with DECam at CTIO, Chile: nights and the schedule follow its local time.
OBSERVATORY_TZ = "America/Santiago"
#: The schedule of the deployment: the morning after each observing night.
NIGHTLY_CRON = "0 9 * * *"
#: The autoscan labels CSV looked for at the top of the raw root (DESIGN.md section 4).
LABELS_CSV = "autoscan_features.3.csv"
#: Retries of a task after a transient error, and the waits before each (seconds).
RETRIES = 3
RETRY_DELAYS = [10.0, 60.0, 300.0]
#: Where task results (and so the cache) are persisted, under the store root. ``list_nights``
#: only looks at season folders, so the store's readers never see it.
RESULTS_DIR = "_prefect"

_ADDRESS_RE = re.compile(r"^(tcp|tls|ucx|ucxx|ws|wss|inproc)://")
_NIGHT_WORDS = {"last", "last-night", "last_night", "yesterday"}


class FlowInputError(ValueError):
    """A flow parameter that cannot be used (bad input: never retried)."""


# --------------------------------------------------------------------------- parameters


def last_night(when: dt.datetime, tz: str = OBSERVATORY_TZ) -> int:
    """The observing night that ``when`` falls in or most recently followed, as ``YYYYMMDD``.

    A night is named by the local date of its evening and runs from noon to noon, so a run at
    09:00 local time (the schedule) processes the night that began the evening before.

    Parameters
    ----------
    when : datetime.datetime
        A timezone-aware time (a naive one is taken as UTC).
    tz : str
        The observatory's IANA timezone.

    Returns
    -------
    int
    """
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise FlowInputError(
            f"unknown timezone {tz!r} (expected an IANA name such as {OBSERVATORY_TZ})"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    local = when.astimezone(zone) - dt.timedelta(hours=12)
    return int(local.strftime("%Y%m%d"))


def _scheduled_time() -> dt.datetime:
    """The flow run's scheduled start (its creation time for an ad-hoc run), or now."""
    try:
        from prefect.runtime import flow_run

        when = flow_run.scheduled_start_time
        return dt.datetime.fromisoformat(when.isoformat())
    except Exception:  # outside a flow run, or a datetime type without isoformat
        return dt.datetime.now(dt.UTC)


def resolve_night(night: int | str | None, tz: str = OBSERVATORY_TZ) -> int:
    """A validated ``YYYYMMDD`` night; ``None`` or ``"last"`` means last night (see :func:`last_night`).

    Raises
    ------
    FlowInputError
        For anything else than a plausible ``YYYYMMDD`` date.
    """
    if night is None or (isinstance(night, str) and night.strip().lower() in _NIGHT_WORDS):
        return last_night(_scheduled_time(), tz)
    text = str(night).strip()
    if isinstance(night, bool) or not is_night(text):
        raise FlowInputError(f"night must be a YYYYMMDD date or 'last', got {night!r}")
    return int(text)


@dataclasses.dataclass(frozen=True)
class RunInputs:
    """The validated inputs shared by the nightly and backfill flows."""

    raw: Path
    store: Path
    out: Path
    reports: Path
    model: Path
    card: dict[str, Any]
    labels: Path | None
    config: PipelineConfig

    @property
    def threshold(self) -> float:
        """The threshold scoring applies: the config's override, else the model card's."""
        t = self.config.score.threshold
        return float(self.card["threshold"] if t is None else t)

    @property
    def model_version(self) -> str:
        """``<name>-<version>`` of the model, as written in the scores."""
        return f"{self.card['name']}-{self.card['version']}"

    @property
    def results(self) -> Path:
        """Where Prefect persists task results (and so its cache) for this store."""
        return self.store / RESULTS_DIR / "results"


def resolve_inputs(
    raw: str | os.PathLike[str],
    store: str | os.PathLike[str],
    out: str | os.PathLike[str],
    reports: str | os.PathLike[str],
    model: str | os.PathLike[str] | None,
    labels: str | os.PathLike[str] | None,
    config: str | os.PathLike[str] | None,
) -> RunInputs:
    """Check the paths, read the config and the model card once, find the default labels CSV.

    Raises
    ------
    FlowInputError, ConfigError, ModelArtifactError
        (all ``ValueError``) with a message that names the bad input.
    """
    from s2v_batch.model import default_model_path, load_card

    raw_p = Path(raw).expanduser()
    if not raw_p.exists():
        raise FlowInputError(f"raw input {raw_p} does not exist")
    paths = {}
    for name, value in (("store", store), ("out", out), ("reports", reports)):
        p = Path(value).expanduser()
        if p.exists() and not p.is_dir():
            raise FlowInputError(f"{name} {p} exists and is not a folder")
        paths[name] = p
    if len({p.resolve() for p in paths.values()}) < 3:
        raise FlowInputError("store, out (scores) and reports must be three different folders")
    model_p = Path(model).expanduser() if model else default_model_path()
    card = load_card(model_p).to_dict()
    if labels:
        labels_p: Path | None = Path(labels).expanduser()
        if not labels_p.is_file():
            raise FlowInputError(f"labels CSV {labels_p} does not exist")
    else:
        default = (raw_p if raw_p.is_dir() else raw_p.parent) / LABELS_CSV
        labels_p = default if default.is_file() else None
    cfg = PipelineConfig.from_yaml(config) if config else PipelineConfig()
    return RunInputs(
        raw_p, paths["store"], paths["out"], paths["reports"], model_p, card, labels_p, cfg
    )


# --------------------------------------------------------------------------- the Dask cluster

#: Security of the clusters this process opened, by scheduler address: tasks attaching to a TLS
#: scheduler (the SLURM spec) need the same credentials as the client that started it.
_SECURITY: dict[str, Any] = {}


@contextlib.contextmanager
def dask_cluster(cluster: str | os.PathLike[str] | None) -> Iterator[str]:
    """Open the cluster a spec describes for the duration of a flow run; yield its address.

    Parameters
    ----------
    cluster : str, path or None
        A spec file or the name of one in ``cluster/`` (None: the local default), or the address
        of a running scheduler (``tcp://host:port``), which is used and left running.

    Yields
    ------
    str
        The scheduler address, for tasks to attach to with :func:`attach`.
    """
    if cluster is not None and _ADDRESS_RE.match(str(cluster)):
        yield str(cluster)
        return
    from s2v_batch.cluster import open_client

    with open_client(cluster) as client:
        address = client.scheduler.address
        _SECURITY[address] = client.security
        try:
            yield address
        finally:
            _SECURITY.pop(address, None)


@contextlib.contextmanager
def attach(address: str) -> Iterator[Any]:
    """A Dask client on a running scheduler, closed on exit (the cluster keeps running)."""
    from distributed import Client

    with Client(address, security=_SECURITY.get(address), set_as_default=False) as client:
        yield client


# --------------------------------------------------------------------------- retries and caching


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry unless the task failed on bad input.

    Every ``s2v_batch`` error for bad input (``IngestError``, ``ScoringError``,
    ``ModelArtifactError``, ``ReportError``, ``ConfigError`` ...) is a ``ValueError``: retrying
    would fail the same way. Anything else (``OSError``, a lost Dask worker, a timeout) is retried.
    """
    # Fetch the exception without raising it: re-raising here would graft this frame onto the
    # traceback Prefect logs for the failure.
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, ValueError)


def _cache_key(step: str, **parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return f"s2v-{step}-{hashlib.sha256(blob.encode()).hexdigest()[:40]}"


def _abs(path: str | os.PathLike[str] | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def _file_identity(path: str | os.PathLike[str] | None) -> list[Any] | None:
    """Path, size and mtime of a file: what the library's labels fingerprint is made of."""
    if path is None:
        return None
    st = os.stat(path)
    return [_abs(path), st.st_size, st.st_mtime_ns]


def _ingest_key(context: Any, p: dict[str, Any]) -> str:
    from s2v_batch.ingest import FORMAT_VERSION

    return _cache_key(
        "ingest",
        store=_abs(p["store"]),
        season=p["season"],
        night=int(p["night"]),
        input=p["input_fingerprint"],
        labels=_file_identity(p["labels"]),
        config=dataclasses.asdict(p["config"]),
        format=FORMAT_VERSION,
    )


def _score_key(context: Any, p: dict[str, Any]) -> str:
    return _cache_key(
        "score",
        scores=_abs(p["out"]),
        season=p["season"],
        night=int(p["night"]),
        store_fingerprint=p["store_fingerprint"],
        model_sha256=p["model_sha256"],
        model_version=p["model_version"],
        threshold=float(p["threshold"]),
        config=dataclasses.asdict(p["config"]),
    )


def season_manifests(out: str | os.PathLike[str], season: str) -> list[list[Any]]:
    """``[night, run_id, model_sha256]`` of every published night of a season: its scores' identity."""
    rows = []
    for d in sorted(Path(out).glob(f"season={season}/night=*")):
        night = d.name.partition("=")[2]
        if not night.isdigit():
            continue
        m = sink.read_manifest(out, season, int(night)) or {}
        rows.append([int(night), m.get("run_id"), m.get("model_sha256")])
    return rows


def _report_key(context: Any, p: dict[str, Any]) -> str:
    return _cache_key(
        "report",
        reports=_abs(p["reports"]),
        season=p["season"],
        scores=season_manifests(p["out"], p["season"]),
        seconds_per_stamp=float(p["seconds_per_stamp"]),
        model_sha256=(p["model_card"] or {}).get("sha256"),
    )


_RETRY = {
    "retries": RETRIES,
    "retry_delay_seconds": RETRY_DELAYS,
    "retry_jitter_factor": 0.2,
    "retry_condition_fn": retry_on_transient,
}
# JSON, not pickle: nothing read back from the results folder can run code.
_PERSIST = {"persist_result": True, "result_serializer": "json"}


# --------------------------------------------------------------------------- tasks


@task(name="find-night", task_run_name="find-{night}", cache_policy=NO_CACHE, **_RETRY)
def find_night(raw: str, night: int, season: str | None, unit_stamps: int) -> dict[str, Any]:
    """Find a night under the raw root (``stamps.discover``): its season and input fingerprint.

    Not cached: new or changed raw files must always be seen.

    Raises
    ------
    FlowInputError
        When no season holds stamps for the night, or several do and none was named.
    """
    from s2v_batch.stamps import discover

    disc = discover(raw, unit_stamps=unit_stamps)
    keys = sorted(k for k in disc.units if k[1] == night and (season is None or k[0] == season))
    if not keys:
        where = f"season {season}, " if season else ""
        seen = sorted({k[0] for k in disc.units}) or ["none"]
        raise FlowInputError(
            f"no stamps under {raw} for {where}night {night} (seasons found: {', '.join(seen)})"
        )
    if len(keys) > 1:
        raise FlowInputError(
            f"night {night} holds stamps of several seasons ({', '.join(k[0] for k in keys)}); "
            "name one with season="
        )
    key = keys[0]
    return {
        "season": key[0],
        "night": key[1],
        "input_fingerprint": disc.fingerprints[key],
        "n_units": len(disc.units[key]),
    }


@task(
    name="ingest",
    task_run_name="ingest-{season}-{night}",
    cache_key_fn=_ingest_key,
    **_RETRY,
    **_PERSIST,
)
def ingest_night(
    raw: str,
    store: str,
    address: str,
    season: str,
    night: int,
    input_fingerprint: str,
    labels: str | None,
    config: IngestConfig,
    progress: bool = False,
) -> dict[str, Any]:
    """Ingest one night into the Zarr store (``ingest.ingest``); resumes and skips like it."""
    from s2v_batch.ingest import ingest

    logger = get_run_logger()
    # The library holds the season's writer lock: nights of one season ingest in turn.
    with attach(address) as client:
        summary = ingest(
            raw,
            store,
            client,
            labels=labels,
            config=config,
            nights={(season, night)},
            progress=progress,
            log=logger.info,
        )
    (res,) = [n for n in summary.nights if (n.season, n.night) == (season, night)]
    logger.info(summary.line())
    return {
        "status": res.status,
        "n_found": res.n_found,
        "n_stored": res.n_stored,
        "n_quarantined": res.n_quarantined,
        "path": str(res.path),
        "quarantine": str(zstore.quarantine_path(store, season, night)),
        "store_fingerprint": zstore.read_attrs(res.path).get("input_fingerprint"),
        "seconds": round(summary.seconds, 3),
        "line": summary.line(),
    }


@task(
    name="score",
    task_run_name="score-{season}-{night}",
    cache_key_fn=_score_key,
    **_RETRY,
    **_PERSIST,
)
def score_night(
    store: str,
    out: str,
    address: str,
    season: str,
    night: int,
    store_fingerprint: str | None,
    model: str,
    model_sha256: str,
    model_version: str,
    threshold: float,
    config: ScoreConfig,
    progress: bool = False,
) -> dict[str, Any]:
    """Score one stored night into the Parquet scores (``scoring.score``).

    ``skip_complete``: a night already published for this model, threshold and stored data is
    left as it is; otherwise only the shards not scored yet are (the library resumes).
    """
    from s2v_batch.scoring import score

    logger = get_run_logger()
    with attach(address) as client:
        summary = score(
            store,
            out,
            client,
            model_path=model,
            season=season,
            night=night,
            config=config,
            skip_complete=True,
            progress=progress,
            log=logger.info,
        )
    found = [n for n in summary.nights if (n.season, n.night) == (season, night)]
    if not found:
        # score() skips a stored night that fails verification: it changed under our feet.
        raise RuntimeError(f"{season}/{night} was not scored: its stored dataset is incomplete")
    res = found[0]
    logger.info(summary.line())
    return {
        "status": res.status,
        "n_stamps": res.n_stamps,
        "n_candidates": res.n_candidates,
        "n_errors": res.n_errors,
        "path": str(res.path),
        "model": summary.model,
        "seconds": round(summary.seconds, 3),
        "line": summary.line(),
    }


_REPORT_FIGURES = (
    "n_nights",
    "n_stamps",
    "n_candidates",
    "n_errors",
    "n_labelled",
    "threshold",
    "recall",
    "mdr",
    "fpr",
    "fdr",
    "roc_auc",
    "reduction_factor",
    "hours_saved",
    "simulated",
)


@task(
    name="report",
    task_run_name="report-{season}",
    cache_key_fn=_report_key,
    **_RETRY,
    **_PERSIST,
)
def report_season(
    out: str,
    reports: str,
    season: str,
    seconds_per_stamp: float,
    model_card: dict[str, Any] | None,
) -> dict[str, Any]:
    """Write the season's report and each of its nights' (``report.write_reports``)."""
    from s2v_batch.report import write_reports

    t0 = time.perf_counter()
    summary = write_reports(
        out, reports, season=season, seconds_per_stamp=seconds_per_stamp, model_card=model_card
    )
    seconds = time.perf_counter() - t0
    rep = summary.seasons.get(season, {})
    get_run_logger().info(summary.line())
    return {
        "index": str(summary.index_html),
        "season_dir": str(summary.season_dirs[season]),
        "figures": {k: rep.get(k) for k in _REPORT_FIGURES if k in rep},
        "seconds": round(seconds, 3),
        "line": summary.line(),
    }


# --------------------------------------------------------------------------- cache validity


def ingest_complete(store: str | os.PathLike[str], season: str, night: int) -> bool:
    """Whether the night's dataset is in the store and whole (else its cached step is refreshed)."""
    return zstore.verify_night(zstore.night_path(store, season, night)) is not None


def report_complete(reports: str | os.PathLike[str], season: str, night: int | None) -> bool:
    """Whether the season's report (and the night's, when given) is on disk."""
    from s2v_batch.report import REPORT_FILES

    base = Path(reports) / season
    files = [base / REPORT_FILES["json"], Path(reports) / "index.html"]
    if night is not None:
        files.append(base / "nights" / str(night) / REPORT_FILES["json"])
    return all(f.is_file() for f in files)


def _refresh(output_complete: bool) -> bool | None:
    """``refresh_cache`` for a step: True when its output is missing, else Prefect's setting
    (``PREFECT_TASKS_REFRESH_CACHE=true`` forces every step to run again)."""
    return True if not output_complete else None


def run_report(inputs: RunInputs, season: str, night: int | None) -> Any:
    """Run the report task for a season (cached; refreshed when its files are missing); its state."""
    t = report_season.with_options(
        result_storage=inputs.results,
        refresh_cache=_refresh(report_complete(inputs.reports, season, night)),
    )
    return t(
        str(inputs.out),
        str(inputs.reports),
        season,
        inputs.config.report.seconds_per_stamp,
        inputs.card,
        return_state=True,
    )


def step_status(state: Any, result: dict[str, Any] | None) -> str:
    """``cached`` for a step Prefect did not run, else what the library did (``ingested`` ...)."""
    if state.name == "Cached":
        return "cached"
    return str((result or {}).get("status", "done"))


# --------------------------------------------------------------------------- the flow


def _run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters or {}
    season = p.get("season")
    return f"nightly-{season + '-' if season else ''}{p.get('night') or 'last'}"


@flow(name="s2v-nightly", flow_run_name=_run_name)
def nightly_flow(
    raw: str,
    night: int | str | None,
    store: str,
    out: str,
    reports: str,
    model: str | None = None,
    cluster: str | None = None,
    labels: str | None = None,
    season: str | None = None,
    config: str | None = None,
    progress: bool = False,
    write_report: bool = True,
    observatory_tz: str = OBSERVATORY_TZ,
) -> dict[str, Any]:
    """Ingest, score and report one night.

    Parameters
    ----------
    raw : str
        Raw root: gif/fits files and tar archives under ``<season>/<YYYYMMDD>/``.
    night : int, str or None
        ``YYYYMMDD``; None or ``"last"``: last night, from the run's scheduled time in
        ``observatory_tz`` (what the scheduled deployment uses).
    store, out, reports : str
        Zarr store root, Parquet scores root, reports folder.
    model : str, optional
        Model artifact (``.keras`` or its ``.json`` card); default: the shipped demo model.
    cluster : str, optional
        Dask cluster spec file or name in ``cluster/`` (default: a LocalCluster on 127.0.0.1), or
        a running scheduler's address (``tcp://...``), used and left running.
    labels : str, optional
        autoscan labels CSV; default ``RAW/autoscan_features.3.csv`` where it exists.
    season : str, optional
        The night's season; default: the one season that holds the night.
    config : str, optional
        Pipeline config YAML (``ingest``, ``score``, ``report`` sections), e.g.
        ``configs/nightly.yaml``.
    progress : bool
        Progress bars from the library.
    write_report : bool
        Update the night's and season's reports (the backfill writes them once at its end).
    observatory_tz : str
        IANA timezone that names the nights.

    Returns
    -------
    dict
        ``season``, ``night``, ``steps`` (per step: ``cached`` when Prefect's cache answered,
        else what the library did: ``ingested``/``skipped``, ``scored``/``skipped``, ``done``),
        ``ingest``, ``score``, ``report`` (each step's result), ``model``, the output paths,
        ``index`` (the reports' index.html), ``seconds`` and a one-line ``line``.
    """
    t0 = time.perf_counter()
    logger = get_run_logger()
    if season is not None and not is_season(str(season)):
        raise FlowInputError(f"season must look like SV or Y1 ... Y6, got {season!r}")
    inputs = resolve_inputs(raw, store, out, reports, model, labels, config)
    night_i = resolve_night(night, observatory_tz)
    found = find_night(str(inputs.raw), night_i, season, inputs.config.ingest.unit_stamps)
    s = found["season"]
    logger.info(
        f"night {s}/{night_i}: {found['n_units']} unit(s) of raw stamps; model "
        f"{inputs.model_version} (sha256 {inputs.card['sha256'][:12]}), threshold {inputs.threshold:g}"
    )
    with dask_cluster(cluster) as address:
        ing_task = ingest_night.with_options(
            result_storage=inputs.results,
            refresh_cache=_refresh(ingest_complete(inputs.store, s, night_i)),
        )
        ing_state = ing_task(
            str(inputs.raw),
            str(inputs.store),
            address,
            s,
            night_i,
            found["input_fingerprint"],
            str(inputs.labels) if inputs.labels else None,
            inputs.config.ingest,
            progress,
            return_state=True,
        )
        ing = ing_state.result()
        sc_fresh = (
            scores_complete(
                inputs.out,
                s,
                night_i,
                store_fingerprint=ing["store_fingerprint"],
                model_sha256=inputs.card["sha256"],
                threshold=inputs.threshold,
            )
            is not None
        )
        sc_task = score_night.with_options(
            result_storage=inputs.results, refresh_cache=_refresh(sc_fresh)
        )
        sc_state = sc_task(
            str(inputs.store),
            str(inputs.out),
            address,
            s,
            night_i,
            ing["store_fingerprint"],
            str(inputs.model),
            inputs.card["sha256"],
            inputs.model_version,
            inputs.threshold,
            inputs.config.score,
            progress,
            return_state=True,
        )
        sc = sc_state.result()
    steps = {"ingest": step_status(ing_state, ing), "score": step_status(sc_state, sc)}
    rep = None
    if write_report:
        rep_state = run_report(inputs, s, night_i)
        rep = rep_state.result()
        steps["report"] = step_status(rep_state, rep)
    seconds = time.perf_counter() - t0
    line = (
        f"nightly {s}/{night_i}: ingest {steps['ingest']} ({ing['n_stored']} stored, "
        f"{ing['n_quarantined']} quarantined), score {steps['score']} ({sc['n_stamps']} stamps, "
        f"{sc['n_candidates']} candidates, {sc['n_errors']} errors)"
        + (f", report {steps['report']}" if rep else "")
        + f"; {seconds:.1f} s"
    )
    logger.info(line)
    return {
        "season": s,
        "night": night_i,
        "steps": steps,
        "ingest": ing,
        "score": sc,
        "report": rep,
        "model": {
            "path": str(inputs.model),
            "version": inputs.model_version,
            "sha256": inputs.card["sha256"],
            "threshold": inputs.threshold,
        },
        "labels": str(inputs.labels) if inputs.labels else None,
        "store": str(inputs.store),
        "scores": str(inputs.out),
        "reports": str(inputs.reports),
        "index": rep["index"] if rep else None,
        "seconds": round(seconds, 3),
        "line": line,
    }


# --------------------------------------------------------------------------- serving


def serve_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m s2v_flows.nightly``: serve the flow on a cron schedule."""
    p = argparse.ArgumentParser(
        prog="python -m s2v_flows.nightly",
        description="Serve the nightly flow with a cron schedule (a long-running process; the "
        "alternative to a work pool and `prefect deploy`, see docs/DEPLOY.md). Each scheduled run "
        "processes last night.",
    )
    p.add_argument("--raw", required=True, help="raw root")
    p.add_argument("--store", required=True, help="Zarr store root")
    p.add_argument("--out", required=True, help="Parquet scores root")
    p.add_argument("--reports", required=True, help="reports folder")
    p.add_argument("--model", help="model artifact (default: the shipped demo model)")
    p.add_argument("--cluster", help="Dask cluster spec (default: a LocalCluster on 127.0.0.1)")
    p.add_argument("--labels", help="labels CSV (default RAW/autoscan_features.3.csv)")
    p.add_argument("--config", default="configs/nightly.yaml", help="pipeline config YAML")
    p.add_argument("--cron", default=NIGHTLY_CRON, help=f"schedule (default {NIGHTLY_CRON!r})")
    p.add_argument("--timezone", default=OBSERVATORY_TZ, help=f"default {OBSERVATORY_TZ}")
    p.add_argument("--name", default="s2v-nightly", help="deployment name")
    return p


def build_deployment(argv: Sequence[str] | None = None) -> Any:
    """The served deployment of :func:`nightly_flow` that ``python -m s2v_flows.nightly`` runs.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (see :func:`serve_parser`); default ``sys.argv[1:]``.

    Returns
    -------
    prefect.deployments.runner.RunnerDeployment
        A cron schedule in the observatory's timezone; ``night=None``: each run takes last night.
    """
    from prefect.schedules import Cron

    a = serve_parser().parse_args(argv)
    last_night(dt.datetime.now(dt.UTC), a.timezone)  # fail now on a bad timezone, not at 09:00
    params = {
        "raw": a.raw,
        "store": a.store,
        "out": a.out,
        "reports": a.reports,
        "model": a.model,
        "cluster": a.cluster,
        "labels": a.labels,
        "config": a.config,
        "observatory_tz": a.timezone,
    }
    return nightly_flow.to_deployment(
        name=a.name,
        schedules=[Cron(a.cron, timezone=a.timezone)],
        parameters={"night": None, **{k: v for k, v in params.items() if v is not None}},
        description="s2v-batch: ingest, score and report last night (served process)",
        tags=["s2v-batch", "nightly"],
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Serve :func:`nightly_flow` on its cron schedule until interrupted (Ctrl-C)."""
    from prefect import serve

    serve(build_deployment(argv))


if __name__ == "__main__":
    main()
