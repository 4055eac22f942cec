"""The backfill flow: every season and night under a raw root, each night a nightly sub-run.

One planning pass discovers the raw tree once and checks every night against the store and the
scores: a night whose stored dataset matches its raw input and labels, and whose published scores
match the stored data, the model's sha256 and the threshold, is skipped without a sub-run. The
other nights run as sub-runs of :func:`s2v_flows.nightly.nightly_flow`, at most ``max_concurrency`` at
once, all on the one Dask cluster this flow opens. A failing night is recorded and the others go
on. Season reports are written once at the end, for the seasons selected.

Rescoring a season with a new model version is one command: ``s2v backfill ... --season Y1
--model new.keras`` (ingest is skipped, the scores of every night are replaced).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from s2v_batch import store as zstore
from s2v_batch.conventions import is_night, is_season
from s2v_batch.scoring import scores_complete
from s2v_flows.nightly import (
    FlowInputError,
    RunInputs,
    _abs,
    dask_cluster,
    nightly_flow,
    resolve_inputs,
    retry_on_transient,
    run_report,
)

#: Threads the flow's task runner holds; ``max_concurrency`` may not exceed it.
MAX_CONCURRENCY = 16


class BackfillError(FlowInputError):
    """Backfill parameters that cannot be used."""


def _selection(seasons: Iterable[str] | None, nights: Iterable[int] | None):
    sel_s = None if seasons is None else sorted({str(s) for s in seasons})
    for s in sel_s or []:
        if not is_season(s):
            raise BackfillError(f"season must look like SV or Y1 ... Y6, got {s!r}")
    sel_n = None if nights is None else sorted({int(n) for n in nights})
    for n in sel_n or []:
        if not is_night(str(n)):
            raise BackfillError(f"night must be a YYYYMMDD date, got {n!r}")
    return sel_s, sel_n


@task(
    name="plan-backfill",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[10.0, 60.0],
    retry_condition_fn=retry_on_transient,
)
def plan_backfill(
    inputs: RunInputs, seasons: list[str] | None, nights: list[int] | None
) -> dict[str, Any]:
    """Discover the raw tree once; split the selected nights into to-do and complete.

    Returns
    -------
    dict
        ``todo`` and ``complete`` lists of ``[season, night]``, ``missing`` (requested nights or
        seasons without stamps) and ``seasons`` (the selected seasons found).
    """
    from s2v_batch.ingest import night_fingerprint
    from s2v_batch.labels import read_labels
    from s2v_batch.stamps import discover

    cfg = inputs.config
    disc = discover(inputs.raw, unit_stamps=cfg.ingest.unit_stamps)
    keys = sorted(
        k
        for k in disc.units
        if (seasons is None or k[0] in seasons) and (nights is None or k[1] in nights)
    )
    missing = []
    for s in seasons or []:
        if not any(k[0] == s for k in disc.units):
            missing.append({"season": s, "night": None, "error": f"no stamps for season {s}"})
    for n in nights or []:
        if not any(k[1] == n for k in keys):
            missing.append({"season": None, "night": n, "error": f"no stamps for night {n}"})
    lab = read_labels(inputs.labels) if inputs.labels else None
    todo, complete = [], []
    for season, night in keys:
        attrs = zstore.verify_night(zstore.night_path(inputs.store, season, night))
        want_fp = night_fingerprint(disc.fingerprints[(season, night)], lab, cfg.ingest)
        done = (
            attrs is not None
            and attrs.get("input_fingerprint") == want_fp
            and scores_complete(
                inputs.out,
                season,
                night,
                store_fingerprint=want_fp,
                model_sha256=inputs.card["sha256"],
                threshold=inputs.threshold,
                n_stamps=int(attrs["n_stamps"]),
            )
        )
        (complete if done else todo).append([season, night])
    return {
        "todo": todo,
        "complete": complete,
        "missing": missing,
        "seasons": sorted({k[0] for k in keys}),
    }


@task(name="night", task_run_name="night-{season}-{night}", cache_policy=NO_CACHE)
def run_night(
    inputs: RunInputs, season: str, night: int, address: str, config: str | None
) -> dict[str, Any]:
    """One night as a sub-run of the nightly flow, on the backfill's cluster, without reports."""
    return nightly_flow(
        raw=str(inputs.raw),
        night=night,
        store=str(inputs.store),
        out=str(inputs.out),
        reports=str(inputs.reports),
        model=str(inputs.model),
        cluster=address,
        labels=str(inputs.labels) if inputs.labels else None,
        season=season,
        config=config,
        progress=False,
        write_report=False,
    )


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


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
) -> dict[str, Any]:
    """Ingest, score and report every selected night that is not complete for the current model.

    Parameters
    ----------
    raw, store, out, reports : str
        Raw root, Zarr store root, Parquet scores root, reports folder.
    model : str, optional
        Model artifact; default: the shipped demo model. A new model rescores every night.
    cluster : str, optional
        Dask cluster spec (e.g. ``cluster/slurm.yaml``) or a running scheduler's address;
        default: a LocalCluster on 127.0.0.1. Opened once for the whole backfill.
    labels : str, optional
        autoscan labels CSV; default ``RAW/autoscan_features.3.csv`` where it exists.
    seasons, nights : list, optional
        Only these seasons / nights (default: all found under ``raw``).
    max_concurrency : int
        Nights in flight at once (each night's work is spread over the whole cluster anyway).
    config : str, optional
        Pipeline config YAML.

    Returns
    -------
    dict
        ``done`` (one nightly summary per night run), ``skipped`` (``[season, night]`` already
        complete), ``failed`` (``season``, ``night``, ``error``; requested nights without
        stamps included), ``reports`` (per season), counts, ``seconds`` and ``line``.
    """
    t0 = time.perf_counter()
    logger = get_run_logger()
    if isinstance(max_concurrency, bool) or not 1 <= int(max_concurrency) <= MAX_CONCURRENCY:
        raise BackfillError(
            f"max_concurrency must be between 1 and {MAX_CONCURRENCY}, got {max_concurrency!r}"
        )
    sel_s, sel_n = _selection(seasons, nights)
    inputs = resolve_inputs(raw, store, out, reports, model, labels, config)
    plan = plan_backfill(inputs, sel_s, sel_n)
    if not plan["todo"] and not plan["complete"]:
        what = ", ".join(m["error"] for m in plan["missing"]) or "no stamps at all"
        raise BackfillError(f"nothing to backfill under {inputs.raw}: {what}")
    logger.info(
        f"backfill: {len(plan['todo'])} night(s) to run, {len(plan['complete'])} already complete "
        f"for {inputs.model_version} (sha256 {inputs.card['sha256'][:12]})"
    )
    done: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = list(plan["missing"])
    if plan["todo"]:
        with dask_cluster(cluster) as address:
            pending = [tuple(k) for k in plan["todo"]]
            inflight: dict[Any, tuple[str, int]] = {}
            # A sliding window: a new night starts as soon as one finishes.
            while pending or inflight:
                while pending and len(inflight) < int(max_concurrency):
                    s, n = pending.pop(0)
                    inflight[run_night.submit(inputs, s, n, address, _abs(config))] = (s, n)
                fut = next(iter(as_completed(list(inflight))))
                s, n = inflight.pop(fut)
                try:
                    done.append(fut.result())
                except Exception as exc:  # one night's failure must not stop the others
                    logger.error(f"night {s}/{n} failed: {_error_text(exc)}")
                    failed.append({"season": s, "night": n, "error": _error_text(exc)})
    season_reports: dict[str, Any] = {}
    scored_seasons = {d["season"] for d in done} | {k[0] for k in plan["complete"]}
    for s in sorted(scored_seasons):
        state = run_report(inputs, s, None)
        try:
            season_reports[s] = state.result()
        except Exception as exc:
            failed.append({"season": s, "night": None, "error": f"report: {_error_text(exc)}"})
    seconds = time.perf_counter() - t0
    line = (
        f"backfill: {len(done)} night(s) run, {len(plan['complete'])} skipped (complete), "
        f"{len(failed)} failed; {sum(d['score']['n_stamps'] for d in done):,} stamps scored in "
        f"{seconds:.1f} s"
    )
    if failed:
        line += "; failed: " + "; ".join(
            f"{f['season'] or '*'}/{f['night'] or '*'}: {f['error']}" for f in failed
        )
    (logger.warning if failed else logger.info)(line)
    return {
        "done": done,
        "skipped": plan["complete"],
        "failed": failed,
        "reports": season_reports,
        "n_done": len(done),
        "n_skipped": len(plan["complete"]),
        "n_failed": len(failed),
        "model": {"version": inputs.model_version, "sha256": inputs.card["sha256"]},
        "index": next(iter(season_reports.values()), {}).get("index"),
        "seconds": round(seconds, 3),
        "line": line,
    }
