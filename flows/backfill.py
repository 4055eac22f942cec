"""The backfill flow: every season and night under a raw root, skipping what is complete.

One planning task walks the raw tree once and checks every night against the store and the scores
(``pipeline.plan``); complete nights are skipped without a task. The others run as ``night``
tasks (``pipeline.process_night``: ingest, then score), at most ``max_concurrency`` at once, all
on the one Dask cluster this flow opens. A failing night is recorded and the others go on. Season
reports are written once at the end, for the seasons selected.

Rescoring a season with a new model version is one command: ``s2v backfill ... --season Y1
--model new.keras`` (ingest is skipped, the scores of every night are replaced).
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from s2v_batch.pipeline import steps as pipeline
from s2v_batch.pipeline import summary as runsummary
from s2v_batch.pipeline.cluster import open_client
from s2v_batch.pipeline.steps import NightOutcome, NightPlan, Plan, RunInputs
from s2v_flows.nightly import TASK, report_season

#: Threads the flow's task runner holds; ``max_concurrency`` may not exceed it.
MAX_CONCURRENCY = 16


class BackfillError(pipeline.InputError):
    """Backfill parameters that cannot be used."""


@task(name="plan-backfill", **TASK)
def plan_backfill(inputs: RunInputs, seasons: list[str] | None, nights: list[int] | None) -> Plan:
    """Walk the raw tree once; say which selected nights are complete (``pipeline.plan``)."""
    return pipeline.plan(inputs, seasons=seasons, nights=nights)


@task(name="night", task_run_name="night-{night.season}-{night.night}", **TASK)
def run_night(inputs: RunInputs, client: Any, plan: Plan, night: NightPlan) -> NightOutcome:
    """Ingest and score one night (``pipeline.process_night``)."""
    return pipeline.process_night(inputs, client, plan, night, log=get_run_logger().info)


@flow(name="s2v-backfill", task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENCY))
def backfill_flow(
    raw: str,
    store: str,
    out: str,
    reports: str,
    model: str | None = None,
    cluster: str | None = None,
    labels: str | None = None,
    seasons: list[str] | None = None,
    nights: list[int] | None = None,
    max_concurrency: int = 2,
    config: str | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """Ingest, score and report every selected night that is not complete for the current model.

    Parameters
    ----------
    raw, store, out, reports : str
        Raw root, Zarr store root, Parquet scores root, reports folder.
    model : str, optional
        Model artifact; default: the shipped model of the nights' survey (DES: the demo model).
        A new model rescores every night.
    cluster : str, optional
        Dask cluster spec (e.g. ``slurm``) or a running scheduler's address; default: a
        LocalCluster on 127.0.0.1. Opened once for the whole backfill.
    labels : str, optional
        autoscan labels CSV; default ``RAW/autoscan_features.3.csv`` where it exists.
    seasons, nights : list, optional
        Only these seasons / nights (default: all found under ``raw``).
    max_concurrency : int
        Nights in flight at once (each night's work is spread over the whole cluster anyway).
    config : str, optional
        Pipeline config YAML.
    precision : str, optional
        ``float32``, ``bfloat16`` or ``auto``; default: the config's ``score.precision``
        (float32). A night scored at another precision is not complete and is scored again.

    Returns
    -------
    dict
        ``done`` (per night run: ``steps``, ``ingest``, ``score``), ``skipped`` (``[season,
        night]`` already complete), ``failed`` (``season``, ``night``, ``error``; requested
        nights without stamps included), ``reports`` (per season), counts, ``seconds``, ``line``.
    """
    t0 = time.perf_counter()
    logger = get_run_logger()
    if isinstance(max_concurrency, bool) or not 1 <= int(max_concurrency) <= MAX_CONCURRENCY:
        raise BackfillError(
            f"max_concurrency must be between 1 and {MAX_CONCURRENCY}, got {max_concurrency!r}"
        )
    sel_s, sel_n = pipeline.check_selection(seasons, nights)
    inputs = pipeline.resolve_inputs(raw, store, out, reports, model, labels, config, precision)
    plan = plan_backfill(inputs, sel_s, sel_n)
    if not plan.nights:
        what = ", ".join(g.reason for g in plan.missing) or "no stamps at all"
        raise BackfillError(f"nothing to backfill under {inputs.raw}: {what}")
    inputs = pipeline.for_plan(inputs, plan)  # the survey's shipped model unless one is named
    logger.info(
        f"backfill: {len(plan.todo)} night(s) to run, {len(plan.complete)} already complete "
        f"for {inputs.model_version} (sha256 {inputs.card.sha256[:12]})"
    )
    done: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    if plan.todo:
        with open_client(cluster) as client:
            pending, inflight = list(plan.todo), {}
            # A sliding window: a new night starts as soon as one finishes.
            while pending or inflight:
                while pending and len(inflight) < int(max_concurrency):
                    n = pending.pop(0)
                    inflight[run_night.submit(inputs, client, plan.only(n), n)] = n
                fut = next(iter(as_completed(list(inflight))))
                n = inflight.pop(fut)
                try:
                    done.append(fut.result().as_dict())
                except Exception as exc:  # one night's failure must not stop the others
                    failed.append(runsummary.failure(n.season, n.night, exc))
                    logger.error(f"night {n.season}/{n.night}: {failed[-1]['error']}", exc_info=exc)
    reports_done: dict[str, dict[str, Any]] = {}
    for season in sorted({d["season"] for d in done} | {n.season for n in plan.complete}):
        state = report_season(inputs, season, return_state=True)
        try:
            reports_done[season] = state.result()
        except Exception as exc:
            failed.append(runsummary.failure(season, None, exc, step="report"))
    summary = runsummary.backfill_summary(
        inputs, plan, done, failed, reports_done, time.perf_counter() - t0
    )
    (logger.warning if summary["failed"] else logger.info)(summary["line"])
    return summary
