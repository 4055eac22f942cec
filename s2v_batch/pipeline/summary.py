"""The JSON-ready summaries of pipeline runs (nightly, backfill) and their one-line ``line``.

The flows return these dicts; the ``s2v`` command prints their ``line``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from s2v_batch.core.faults import classify

if TYPE_CHECKING:
    from s2v_batch.pipeline.inputs import RunInputs
    from s2v_batch.pipeline.steps import Gap, NightOutcome, Plan


def nightly_summary(
    inputs: RunInputs,
    outcome: NightOutcome,
    report: dict[str, Any] | None,
    seconds: float,
) -> dict[str, Any]:
    """The nightly run's JSON-ready summary, with its one-line ``line``."""
    ing, sc = outcome.ingest, outcome.score
    steps = {"ingest": ing.status, "score": sc.status}
    if report is not None:
        steps["report"] = report["status"]
    summary = outcome.as_dict()
    line = (
        f"nightly {ing.season}/{ing.night}: ingest {ing.status} ({ing.n_found} found = "
        f"{ing.n_stored} stored + {ing.n_quarantined} quarantined), score {sc.status} ({sc.n_stamps} stamps, "
        f"{sc.n_candidates} candidates, {sc.n_errors} errors)"
        + (f", report {report['status']}" if report else "")
        + f"; {seconds:.1f} s"
    )
    return {
        **summary,
        "status": "done",
        "steps": steps,
        "report": report,
        "model": inputs.model_summary(),
        "labels": str(inputs.labels) if inputs.labels else None,
        "store": str(inputs.store),
        "scores": str(inputs.scores),
        "reports": str(inputs.reports),
        "index": report["index"] if report else None,
        "seconds": round(seconds, 3),
        "line": line,
    }


def no_data_summary(inputs: RunInputs, gap: Gap) -> dict[str, Any]:
    """The nightly run's summary for a night without data: a normal, completed outcome."""
    return {
        "season": gap.season,
        "night": gap.night,
        "status": "no-data",
        "steps": {},
        "model": inputs.model_summary(),
        "line": f"nightly: {gap.reason}",
    }


def error_text(exc: BaseException) -> str:
    """One line about an error: for a fault of the environment what it is and what to do
    (:func:`s2v_batch.core.faults.classify`), else its type and the first line of its message."""
    fault = classify(exc)
    if fault.kind not in ("bad-input", "error"):
        return fault.message
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def failure(season: str | None, night: int | None, exc: BaseException, step: str = "") -> dict:
    """A failed night of a run summary: ``season``, ``night``, ``error`` (one line), ``kind`` and
    ``status`` (the exit status the fault maps to, :mod:`s2v_batch.core.faults`)."""
    fault = classify(exc)
    prefix = f"{step}: " if step else ""
    return {
        "season": season,
        "night": night,
        "error": prefix + error_text(exc),
        "kind": fault.kind,
        "status": fault.status,
    }


def backfill_summary(
    inputs: RunInputs,
    p: Plan,
    done: list[dict[str, Any]],
    failed: list[dict[str, Any]],
    reports: dict[str, dict[str, Any]],
    seconds: float,
) -> dict[str, Any]:
    """The backfill's JSON-ready summary, with its one-line ``line``."""
    failed = [{"season": g.season, "night": g.night, "error": g.reason} for g in p.missing] + failed
    skipped = [[n.season, n.night] for n in p.complete]
    because = f" ({p.why()})" if p.todo else ""
    # Every night run: found = stored + quarantined (the ingest checks it night by night).
    accounting = [
        {k: d["ingest"][k] for k in ("season", "night", "n_found", "n_stored", "n_quarantined")}
        for d in done
    ]
    found, stored, quarantined = (
        sum(a[k] for a in accounting) for k in ("n_found", "n_stored", "n_quarantined")
    )
    line = (
        f"backfill: {len(done)} night(s) run{because}, {len(skipped)} skipped (complete), "
        f"{len(failed)} failed; {found:,} found = {stored:,} stored + {quarantined:,} "
        f"quarantined; {sum(d['score']['n_stamps'] for d in done):,} stamps scored in "
        f"{seconds:.1f} s"
    )
    if failed:
        line += "; failed: " + "; ".join(
            f"{f['season'] or '*'}/{f['night'] or '*'}: {f['error']}" for f in failed
        )
    return {
        "done": done,
        "accounting": accounting,
        "skipped": skipped,
        "reasons": {f"{n.season}/{n.night}": n.reason for n in p.todo},
        "failed": failed,
        "reports": reports,
        "n_done": len(done),
        "n_skipped": len(skipped),
        "n_failed": len(failed),
        "model": inputs.model_summary(),
        "index": next(iter(reports.values()), {}).get("index"),
        "seconds": round(seconds, 3),
        "line": line,
    }
