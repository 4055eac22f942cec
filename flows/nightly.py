"""The nightly flow: ingest one night's raw stamps, score them, update the night's and season's report.

Each task calls one function of :mod:`s2v_batch.pipeline.steps`. The flow opens one Dask cluster (or
attaches to a scheduler address) and hands its client to the tasks: no Prefect code runs on a Dask
worker. Re-runs are cheap and safe because the library skips what is done and verified and resumes
what was interrupted: there is no second cache here. Tasks retry transient errors (a lost worker,
a flaky filesystem, a busy writer lock); bad input, a full or read-only disk, permission denied and
a vanished folder fail at once (``s2v_batch.core.faults.is_transient`` decides). A night without
data is a normal outcome: the run waits up to ``wait_for_data`` seconds, then completes saying so,
unless ``fail_if_no_data``. ``python -m s2v_flows.nightly --help`` serves it on a schedule.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from s2v_batch.core import faults
from s2v_batch.core.config import PRECISIONS
from s2v_batch.ingest.driver import NightResult
from s2v_batch.pipeline import steps as pipeline
from s2v_batch.pipeline import summary as runsummary
from s2v_batch.pipeline.cluster import open_client
from s2v_batch.pipeline.steps import OBSERVATORY_TZ, NightPlan, Plan, RunInputs, last_night
from s2v_batch.scoring.driver import NightScore

#: The schedule of the deployment: the morning after each observing night.
NIGHTLY_CRON = "0 9 * * *"


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry what may pass (a lost worker or scheduler, a busy
    writer lock, a flaky filesystem), never bad input, a full or read-only disk, permission
    denied or a vanished folder (``s2v_batch.core.faults.is_transient``)."""
    # Fetch the exception without raising it (re-raising would graft this frame onto the log).
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, BaseException) or faults.is_transient(exc)


# The library's verified skip is the only cache: Prefect must not answer a step from its own.
# Transient errors are retried 3 times, after 10 s, 60 s and 300 s (+-20%).
TASK = {"cache_policy": NO_CACHE, "retries": 3, "retry_delay_seconds": [10.0, 60.0, 300.0],
        "retry_jitter_factor": 0.2, "retry_condition_fn": retry_on_transient}  # fmt: skip


@task(name="plan-night", task_run_name="plan-{night}", **TASK)
def plan_night(inputs: RunInputs, night: int, season: str | None, wait_for_data: float) -> Plan:
    """Find the night under the raw root (waiting for its data) and what is already done."""
    log = get_run_logger().info
    return pipeline.plan_night(inputs, night, season, wait_for_data=wait_for_data, log=log)


@task(name="ingest", task_run_name="ingest-{night.season}-{night.night}", **TASK)
def ingest_night(
    inputs: RunInputs, client: Any, plan: Plan, night: NightPlan, progress: bool = False
) -> NightResult:
    """Ingest the night into the Zarr store (``pipeline.ingest_night``)."""
    log = get_run_logger().info
    return pipeline.ingest_night(inputs, client, plan, night, progress=progress, log=log)


@task(name="score", task_run_name="score-{night.season}-{night.night}", **TASK)
def score_night(
    inputs: RunInputs, client: Any, night: NightPlan, progress: bool = False
) -> NightScore:
    """Score the stored night into the Parquet scores (``pipeline.score_night``)."""
    log = get_run_logger().info
    return pipeline.score_night(inputs, client, night, progress=progress, log=log)


@task(name="report", task_run_name="report-{season}", **TASK)
def report_season(inputs: RunInputs, season: str) -> dict[str, Any]:
    """Write the season's report and its nights' (``pipeline.report_season``)."""
    return pipeline.report_season(inputs, season)


def _scheduled_time() -> dt.datetime:
    """The flow run's scheduled start (its creation time for an ad-hoc run), or now."""
    try:
        from prefect.runtime import flow_run

        return dt.datetime.fromisoformat(flow_run.scheduled_start_time.isoformat())
    except Exception:  # outside a flow run, or a datetime type without isoformat
        return dt.datetime.now(dt.UTC)


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
    wait_for_data: float = 0.0,
    fail_if_no_data: bool = False,
    precision: str | None = None,
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
        Model artifact (``.keras`` or its ``.json`` card); default: the shipped model of the
        night's survey (DES: the demo model).
    cluster : str, optional
        Dask cluster spec (file, or name of a shipped one; default: a LocalCluster on
        127.0.0.1), or a running scheduler's address (``tcp://...``), used and left running.
    labels : str, optional
        autoscan labels CSV; default ``RAW/autoscan_features.3.csv`` where it exists.
    season : str, optional
        The night's season; default: the one season that holds the night.
    config : str, optional
        Pipeline config YAML (``ingest``, ``score``, ``report`` sections).
    progress : bool
        Progress bars from the library.
    write_report : bool
        Update the night's and season's reports (the backfill writes them once at its end).
    observatory_tz : str
        IANA timezone that names the nights.
    wait_for_data : float
        Seconds to wait for the night's raw stamps to appear (late transfers).
    fail_if_no_data : bool
        Fail the run when no stamps came; by default it completes with status ``no-data``.
    precision : str, optional
        ``float32``, ``bfloat16`` or ``auto`` (bfloat16 where the hardware computes it
        natively); default: the config's ``score.precision`` (float32).

    Returns
    -------
    dict
        ``status`` (``done`` or ``no-data``), ``season``, ``night``, ``steps`` (what each step
        did: ``ingested``/``skipped``, ``scored``/``skipped``, ``done``/``skipped``),
        ``ingest``, ``score``, ``report``, ``model``, the output paths, ``index``, ``seconds``
        and a one-line ``line``.
    """
    t0 = time.perf_counter()
    logger = get_run_logger()
    night_i = pipeline.resolve_night(night, observatory_tz, _scheduled_time())
    pipeline.check_selection(None if season is None else [season], None)
    inputs = pipeline.resolve_inputs(raw, store, out, reports, model, labels, config, precision)
    plan = plan_night(inputs, night_i, season, wait_for_data)
    if not plan.nights:
        if fail_if_no_data:
            raise pipeline.NoDataError(plan.missing[0].reason)
        summary = runsummary.no_data_summary(inputs, plan.missing[0])
        logger.info(summary["line"])
        # A completed run whose state says why nothing was done (the server shows the message).
        return Completed(message=plan.missing[0].reason, data=summary)
    (n,) = plan.nights
    inputs = pipeline.for_plan(inputs, plan)  # the survey's shipped model unless one is named
    logger.info(pipeline.describe(inputs, n))
    with open_client(cluster) as client:
        ing = ingest_night(inputs, client, plan, n, progress)
        sc = score_night(inputs, client, n, progress)
    rep = report_season(inputs, n.season) if write_report else None
    outcome = pipeline.NightOutcome(ing, sc)
    summary = runsummary.nightly_summary(inputs, outcome, rep, time.perf_counter() - t0)
    logger.info(summary["line"])
    return summary


# --------------------------------------------------------------------------- serving


def build_deployment(argv: Sequence[str] | None = None) -> Any:
    """The served deployment of :func:`nightly_flow` that ``python -m s2v_flows.nightly`` runs:
    a cron schedule in the observatory's timezone, each run taking last night."""
    from prefect.schedules import Cron

    p = argparse.ArgumentParser(
        prog="python -m s2v_flows.nightly",
        description="Serve the nightly flow with a cron schedule (a long-running process; the "
        "alternative to a work pool and `prefect deploy`, see docs/DEPLOY.md). Each scheduled run "
        "processes last night.",
    )
    for name in ("raw", "store", "out", "reports"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--model", help="model artifact (default: the shipped model of its survey)")
    p.add_argument("--cluster", help="Dask cluster spec (default: a LocalCluster on 127.0.0.1)")
    p.add_argument("--labels", help="labels CSV (default RAW/autoscan_features.3.csv)")
    p.add_argument("--config", default="configs/nightly.yaml", help="pipeline config YAML")
    p.add_argument("--cron", default=NIGHTLY_CRON, help=f"schedule (default {NIGHTLY_CRON!r})")
    p.add_argument("--timezone", default=OBSERVATORY_TZ, help=f"default {OBSERVATORY_TZ}")
    p.add_argument("--wait-for-data", type=float, default=0.0, help="seconds (default 0)")
    p.add_argument("--name", default="s2v-nightly", help="deployment name")
    p.add_argument("--precision", choices=PRECISIONS, help="default: the config's (float32)")
    a = p.parse_args(argv)
    last_night(dt.datetime.now(dt.UTC), a.timezone)  # fail now on a bad timezone, not at 09:00
    names = ("raw", "store", "out", "reports", "model", "cluster", "labels", "config", "precision")
    params = {k: getattr(a, k) for k in names if getattr(a, k) is not None}
    params.update(observatory_tz=a.timezone, wait_for_data=a.wait_for_data)
    return nightly_flow.to_deployment(
        name=a.name,
        schedules=[Cron(a.cron, timezone=a.timezone)],
        parameters={"night": None, **params},
        description="s2v-batch: ingest, score and report last night (served process)",
        tags=["s2v-batch", "nightly"],
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Serve :func:`nightly_flow` on its cron schedule until interrupted (Ctrl-C)."""
    from prefect import serve

    serve(build_deployment(argv))


if __name__ == "__main__":
    main()
