"""The pipeline over one raw tree, store, scores and reports: resolve the inputs, plan, run steps.

The Prefect flows (``s2v_flows``) and the ``s2v`` command are thin layers over this module, as
pangeo-forge-recipes' transforms are over its functions: each flow task calls one function here.

- :func:`resolve_inputs` checks the paths, reads the config and the model card once.
- :func:`resolve_night` is the observing-night calendar (a night is named by its evening's date).
- :func:`for_plan` narrows the inputs to the model of the planned nights' survey (the shipped
  model whose card matches it, unless a model was named).
- :func:`plan` walks the raw tree once and says, per night, whether its stored dataset and its
  published scores are current: with the same tests the steps themselves skip with
  (``nightstate.current_night``, ``sink.current_scores``), so there is one skip mechanism, the
  library's verified completeness. :func:`plan_night` waits for a night's data to arrive.
- :func:`ingest_night`, :func:`score_night`, :func:`process_night` and :func:`report_season` run
  one step each and return what it did; each step resumes and skips on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from s2v_batch.core.conventions import survey_of_season
from s2v_batch.core.nights import (
    OBSERVATORY_TZ,
    NightError,
    check_selection,
    last_night,
    resolve_night,
)
from s2v_batch.ingest.driver import NightResult, ingest
from s2v_batch.ingest.labels import Labels, read_labels
from s2v_batch.ingest.rawtree import Discovery, discover
from s2v_batch.ingest.status import CURRENT, INGEST, night_need
from s2v_batch.pipeline.inputs import InputError, RunInputs, resolve_inputs
from s2v_batch.scoring.driver import NightScore, score
from s2v_batch.store import dataset as zstore
from s2v_batch.store import scores as sink
from s2v_batch.store import state as nightstate

__all__ = [
    "OBSERVATORY_TZ", "Gap", "InputError", "NightError", "NightOutcome", "NightPlan",
    "NoDataError", "Plan", "RunInputs", "check_selection", "for_plan", "ingest_night",
    "last_night", "plan", "plan_night", "process_night", "report_season", "resolve_inputs",
    "resolve_night", "score_night",
]  # fmt: skip

#: Seconds between two looks for a night's data while waiting for it.
POLL_SECONDS = 10.0

Log = Callable[[str], None]


class NoDataError(InputError):
    """No raw stamps for the night (yet): normal on cloudy or engineering nights."""


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class NightPlan:
    """One night of the raw tree and what is already done for it."""

    season: str
    night: int
    raw_fingerprint: str
    night_fingerprint: str
    n_units: int
    stored: bool  # the store holds it, verified, made from exactly these inputs and labels
    scored: bool  # its scores are published for this stored data, model and threshold
    #: Why it runs (``not stored``, ``its raw files changed``, ``its labels changed``, ``new
    #: model`` ...; :mod:`s2v_batch.ingest.status`, ``sink.scores_status``); None: complete.
    reason: str | None = None

    @property
    def complete(self) -> bool:
        """Nothing to do for this night."""
        return self.stored and self.scored

    @property
    def key(self) -> tuple[str, int]:
        return self.season, self.night


@dataclass(frozen=True)
class Gap:
    """A requested season or night without stamps."""

    season: str | None
    night: int | None
    reason: str


@dataclass
class Plan:
    """What a run will do: every selected night, and the one walk of the raw tree it came from."""

    nights: list[NightPlan]
    missing: list[Gap]
    discovery: Discovery
    labels: Labels | None = field(default=None, repr=False)

    @property
    def todo(self) -> list[NightPlan]:
        return [n for n in self.nights if not n.complete]

    @property
    def complete(self) -> list[NightPlan]:
        return [n for n in self.nights if n.complete]

    def why(self) -> str:
        """Why the nights to run run, counted: ``"its labels changed: 2; not stored: 1"``."""
        counts: dict[str, int] = {}
        for n in self.todo:
            counts[str(n.reason)] = counts.get(str(n.reason), 0) + 1
        return "; ".join(f"{k}: {v}" for k, v in sorted(counts.items()))

    @property
    def seasons(self) -> list[str]:
        return sorted({n.season for n in self.nights})

    def only(self, night: NightPlan) -> Plan:
        """This plan narrowed to one night: what a task working on that night is handed."""
        disc = Discovery(
            units={night.key: self.discovery.units[night.key]},
            raw_fingerprints={night.key: self.discovery.raw_fingerprints[night.key]},
            root=self.discovery.root,
        )
        return Plan([night], [], disc, self.labels)


def plan(
    inputs: RunInputs,
    *,
    seasons: Iterable[str] | None = None,
    nights: Iterable[int] | None = None,
) -> Plan:
    """Walk the raw tree once and check every selected night against the store and the scores.

    Parameters
    ----------
    inputs : RunInputs
    seasons, nights : optional
        Only these seasons / nights (default: everything under the raw root).

    Returns
    -------
    Plan
    """
    sel_s = None if seasons is None else set(seasons)
    sel_n = None if nights is None else {int(n) for n in nights}
    cfg = inputs.config
    disc = discover(
        inputs.raw,
        unit_stamps=cfg.ingest.unit_stamps,
        nights=sel_n,
        content=cfg.ingest.fingerprint == "content",
    )
    keys = sorted(
        k
        for k in disc.units
        if (sel_s is None or k[0] in sel_s) and (sel_n is None or k[1] in sel_n)
    )
    missing = [
        Gap(s, None, f"no stamps for season {s}")
        for s in sorted(sel_s or ())
        if not any(k[0] == s for k in disc.units)
    ]
    missing += [
        Gap(None, n, f"no stamps for night {n}")
        for n in sorted(sel_n or ())
        if not any(k[1] == n for k in keys)
    ]
    lab = read_labels(inputs.labels) if inputs.labels else None
    planned = []
    models: dict[str, RunInputs] = {}  # one model choice a survey (it reads the shipped cards)
    for season, night in keys:
        survey = survey_of_season(season)
        need = night_need(disc, (season, night), inputs.store, lab, cfg.ingest)
        if survey not in models:
            models[survey] = inputs.for_survey(survey)
        model = models[survey]
        reason = need.reason
        if need.need != INGEST:
            attrs = need.attrs
            labels_fp = (
                nightstate.labels_fingerprint(need.labels)
                if need.labels is not None
                else nightstate.night_labels_fingerprint(
                    zstore.night_path(inputs.store, season, night), attrs
                )
            )
            _, reason = sink.scores_status(
                inputs.scores,
                season,
                night,
                night_fp=nightstate.fingerprint_of(attrs),
                model_sha256=model.card.sha256,
                threshold=model.threshold,
                n_stamps=int(attrs["n_stamps"]),
                precision=model.precision,
                labels_fp=labels_fp,
            )
            reason = need.reason or reason
        planned.append(
            NightPlan(
                season,
                night,
                disc.raw_fingerprints[(season, night)],
                need.night_fp,
                len(disc.units[(season, night)]),
                need.need == CURRENT,
                reason is None,
                reason,
            )  # fmt: skip
        )
    return Plan(planned, missing, disc, lab)


def dry_run(
    inputs: RunInputs,
    *,
    seasons: Iterable[str] | None = None,
    nights: Iterable[int] | None = None,
) -> tuple[list[str], str]:
    """What a run would do, without doing it: a line per night that would run, saying why,
    and a summary line. Reads the raw tree, the store's metadata and the manifests only."""
    p = plan(inputs, seasons=seasons, nights=nights)
    lines = [f"would run {n.season}/{n.night}: {n.reason}" for n in p.todo]
    lines += [f"no data: {g.reason}" for g in p.missing]
    reasons = p.why()
    summary = (
        f"backfill --dry-run: {len(p.nights)} night(s): {len(p.todo)} would run"
        + (f" ({reasons})" if reasons else "")
        + f", {len(p.complete)} complete (skipped); nothing was changed"
    )
    return lines, summary


def for_plan(inputs: RunInputs, plan: Plan) -> RunInputs:
    """The inputs with the model that scores the planned nights (what run summaries state).

    Raises
    ------
    InputError
        No model named and the nights are of several surveys: one run, one survey's model.
    """
    surveys = sorted({survey_of_season(n.season) for n in plan.nights})
    if len(surveys) > 1 and not inputs.model_given:
        raise InputError(
            f"the selected nights are of several surveys ({', '.join(surveys)}) and no model was "
            "named: run one survey at a time (select it with --season) or give --model"
        )
    return inputs.for_survey(surveys[0]) if surveys else inputs


def plan_night(
    inputs: RunInputs,
    night: int,
    season: str | None = None,
    *,
    wait_for_data: float = 0.0,
    poll: float = POLL_SECONDS,
    log: Log | None = None,
) -> Plan:
    """Plan one night, waiting up to ``wait_for_data`` seconds for its raw stamps to appear.

    Returns
    -------
    Plan
        With the night, or with no night and one :class:`Gap` whose reason says that no data
        came (a normal outcome on a cloudy night: the caller decides whether it is an error).

    Raises
    ------
    InputError
        Stamps of several seasons for the night and no ``season`` named.
    """
    deadline = time.monotonic() + max(0.0, float(wait_for_data))
    told = False
    while True:
        p = plan(inputs, seasons=None if season is None else [season], nights=[night])
        if len(p.nights) > 1:
            raise InputError(
                f"night {night} holds stamps of several seasons "
                f"({', '.join(n.season for n in p.nights)}); name one with season="
            )
        left = deadline - time.monotonic()
        if p.nights or left <= 0:
            break
        if log is not None and not told:
            log(f"no stamps for night {night} under {inputs.raw} yet; waiting up to {left:.0f} s")
            told = True
        time.sleep(min(poll, left))
    if not p.nights:
        of = f" of season {season}" if season else ""
        earlier = sorted(n for n in p.discovery.other_nights if n < night)
        hint = f" (latest earlier night folder there: {earlier[-1]})" if earlier else ""
        waited = f" after waiting {wait_for_data:g} s" if wait_for_data > 0 else ""
        reason = f"no data for night {night}{of}: no stamps under {inputs.raw}{waited}{hint}"
        p.missing[:] = [Gap(season, night, reason)]
    return p


def describe(inputs: RunInputs, night: NightPlan) -> str:
    """One line saying what a run is about to do for a night."""
    inputs = inputs.for_survey(survey_of_season(night.season))
    return (
        f"night {night.season}/{night.night}: {night.n_units} unit(s) of raw stamps, "
        f"{'stored' if night.stored else 'to ingest'}, {'scored' if night.scored else 'to score'}; "
        f"model {inputs.model_version} (sha256 {inputs.card.sha256[:12]}), "
        f"threshold {inputs.threshold:g} at {inputs.precision}"
        + (f"; runs because {night.reason}" if night.reason else "")
    )


# --------------------------------------------------------------------------- steps


def ingest_night(
    inputs: RunInputs,
    client: Any,
    plan: Plan,
    night: NightPlan,
    *,
    progress: bool = False,
    log: Log = print,
) -> NightResult:
    """Ingest one planned night (skipped by the library when its dataset is current)."""
    summary = ingest(
        inputs.raw,
        inputs.store,
        client,
        labels=plan.labels,
        config=inputs.config.ingest,
        nights={night.key},
        discovery=plan.discovery,
        progress=progress,
        log=log,
    )
    return summary.night(*night.key)


def score_night(
    inputs: RunInputs, client: Any, night: NightPlan, *, progress: bool = False, log: Log = print
) -> NightScore:
    """Score one stored night (skipped by the library when its published scores are current)."""
    summary = score(
        inputs.store,
        inputs.scores,
        client,
        model_path=inputs.for_survey(survey_of_season(night.season)).model,
        season=night.season,
        night=night.night,
        config=inputs.config.score,
        skip_complete=True,
        progress=progress,
        log=log,
    )
    res = summary.night(*night.key)
    if res is None:  # score() skips a night that fails verification: it changed under our feet
        raise RuntimeError(
            f"{night.season}/{night.night} was not scored: its dataset is incomplete"
        )
    return res


@dataclass
class NightOutcome:
    """What a run did to one night: its ingest and its scoring."""

    ingest: NightResult
    score: NightScore

    def as_dict(self) -> dict[str, Any]:
        return {
            "season": self.ingest.season,
            "night": self.ingest.night,
            "steps": {"ingest": self.ingest.status, "score": self.score.status},
            "ingest": self.ingest.as_dict(),
            "score": self.score.as_dict(),
        }


def process_night(
    inputs: RunInputs,
    client: Any,
    plan: Plan,
    night: NightPlan,
    *,
    progress: bool = False,
    log: Log = print,
) -> NightOutcome:
    """Ingest then score one night: the backfill's unit of work."""
    ing = ingest_night(inputs, client, plan, night, progress=progress, log=log)
    return NightOutcome(ing, score_night(inputs, client, night, progress=progress, log=log))


#: The season figures a run summary repeats from the report.
REPORT_FIGURES = (
    "n_nights", "n_stamps", "n_candidates", "n_errors", "n_labelled", "threshold", "recall",
    "mdr", "fpr", "fdr", "roc_auc", "reduction_factor", "hours_saved", "simulated",
)  # fmt: skip


def report_season(inputs: RunInputs, season: str) -> dict[str, Any]:
    """Write the season's report and its nights' (with stamp galleries from the store), unless
    the scores they were made from are unchanged; return its summary.

    Returns
    -------
    dict
        ``status`` (``done`` or ``skipped``), ``index``, ``season_dir``, ``figures`` and the
        report's ``line``.
    """
    # deferred: matplotlib, for the report step only
    from s2v_batch.report import write_reports

    summary = write_reports(
        inputs.scores,
        inputs.reports,
        season=season,
        model_card=inputs.for_survey(survey_of_season(season)).card.to_dict(),
        skip_unchanged=True,
        store=inputs.store,
        config=inputs.config.report,
    )
    rep = summary.seasons.get(season, {})
    return {
        "status": "skipped" if summary.status.get(season) == "unchanged" else "done",
        "index": str(summary.index_html),
        "season_dir": str(summary.season_dirs[season]),
        "figures": {k: rep.get(k) for k in REPORT_FIGURES if k in rep},
        "line": summary.line(),
    }
