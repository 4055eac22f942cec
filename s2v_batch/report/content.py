"""The report's JSON content: figures, provenance, warnings and the identity of its inputs.

A report's ``report.json`` is the whole report: :mod:`.html` renders its page from it (and the
PNG files beside it) alone, and :mod:`.write` compares its ``identity`` with the scores' current
one to decide whether it is still current.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np

from s2v_batch import __version__
from s2v_batch.core import provenance as data_provenance
from s2v_batch.core.conventions import survey_of_season
from s2v_batch.core.provenance import MIXED, SIMULATED, SURVEY, UNKNOWN
from s2v_batch.metrics.timesaved import time_saved
from s2v_batch.report.tally import MAX_DISTINCT, Tally

#: Files written for every season and every night.
REPORT_FILES: dict[str, str] = {
    "json": "report.json",
    "html": "report.html",
    "score_histogram": "score_histogram.png",
    "mdr_fpr": "mdr_fpr.png",
}
#: Files a season report writes besides: the night-by-night plot and the index's trend line.
SEASON_FILES: dict[str, str] = {"nights": "nights.png", "trend": "trend.png"}
#: The density of s2v's score against the survey's own (ZTF, Rubin scores only).
AGREEMENT_FILE = "agreement.png"
SCHEMA_ID = "s2v-batch/report"
SCHEMA_VERSION = 1
#: Fields of a model card a report quotes.
CARD_KEYS = ("name", "version", "sha256", "threshold", "target_recall", "training_data")


# -- provenance -------------------------------------------------------------------------------


def _card_training_text(card: Mapping[str, Any]) -> tuple[bool | None, str]:
    """(simulated?, description) from a model card's training-data field."""
    data = None
    for key in ("training_data", "trained_on"):
        if card.get(key):
            data = card[key]
            break
    if data is None:
        return None, ""
    if isinstance(data, Mapping):
        flag = data.get("simulated")
        text = "; ".join(
            f"{k}: {v}" for k, v in data.items() if isinstance(v, str | int | float | bool)
        )
        if isinstance(flag, bool):
            return flag, text
    else:
        text = str(data)
    low = text.lower()
    if "simulat" in low or "synthetic" in low:
        return True, text
    return None, text


#: How the report's banner looks for each provenance of the data (html.py's CSS classes).
BANNER = {SIMULATED: "sim", SURVEY: "real", MIXED: "mixed", UNKNOWN: "unknown"}

_DATA_SENTENCE = {
    SIMULATED: (
        "SIMULATED DATA: these scores were computed on simulated stamps (the s2v-batch "
        "simulator), not on survey observations. The figures describe the model on "
        "simulated data; they are not survey results."
    ),
    SURVEY: "Survey data: these scores were computed on survey observations (not simulated data).",
    MIXED: (
        "MIXED DATA: these scores mix nights of simulated stamps with nights of survey "
        "observations; the figures describe neither alone (the Parquet rows' data_provenance "
        "column tells them apart)."
    ),
    UNKNOWN: (
        "Data provenance unknown: these nights were stored before s2v-batch recorded where "
        "their stamps came from (ingest them again to record it). Do not quote these figures "
        "as survey results until the data are known."
    ),
}


def model_provenance(card: Mapping[str, Any] | None) -> tuple[str, str]:
    """What the model was trained on (``simulated``, ``survey`` or ``unknown``), from its card,
    and the sentence a report prints about it."""
    flag, text = _card_training_text(card) if card else (None, "")
    quoted = f" (model card training data: {text[:200]})" if text else ""
    if flag:
        return SIMULATED, f"Model trained on simulated stamps{quoted}."
    if flag is False:
        return SURVEY, f"Model trained on survey data{quoted}."
    return UNKNOWN, "The model card does not say what data the model was trained on."


def provenance(data: str | None, card: Mapping[str, Any] | None) -> dict[str, Any]:
    """The two provenances a report states, separately: of its data and of its model.

    Parameters
    ----------
    data : str, optional
        Where the scored stamps came from (``simulated``, ``survey``, ``mixed``; None or
        ``unknown`` when not recorded: :mod:`s2v_batch.core.provenance`).
    card : mapping, optional
        The model card.

    Returns
    -------
    dict
        ``data_kind``, ``simulated`` (True only for simulated data, False for survey data),
        ``data_provenance`` (the sentence), ``model_trained_on`` and ``model_provenance``, and
        ``model_warning``: the warning a report on survey data gives about a model trained on
        simulated stamps (None otherwise).
    """
    kind = data if data in _DATA_SENTENCE else UNKNOWN
    model_kind, model_text = model_provenance(card)
    warning = None
    if model_kind == SIMULATED and kind in (SURVEY, MIXED):
        warning = (
            "survey data, model trained on simulated stamps: the model's figures on its "
            "simulated validation do not carry over to survey data; check it on labelled "
            "survey stamps before trusting these scores"
        )
    return {
        "data_kind": kind,
        "simulated": {SIMULATED: True, SURVEY: False}.get(kind),
        "data_provenance": _DATA_SENTENCE[kind],
        "model_trained_on": model_kind,
        "model_provenance": model_text,
        "model_warning": warning,
    }


def title_note(rep: Mapping[str, Any]) -> str:
    """What a plot title adds about the provenance: the data's, and a model trained on
    simulated stamps where the data are not simulated."""
    kind = rep.get("data_kind", UNKNOWN)
    if kind == SIMULATED:
        return " [SIMULATED DATA]"
    note = {SURVEY: "survey data", MIXED: "MIXED simulated + survey data"}.get(
        kind, "data provenance unknown"
    )
    if rep.get("model_trained_on") == SIMULATED:
        note += "; model trained on simulated stamps"
    return f" [{note}]"


# -- figures ----------------------------------------------------------------------------------


def _short_float(v: float) -> float:
    """Float32 values (thresholds) as their shortest decimal: 0.06, not 0.05999999865889549."""
    f32 = np.float32(v)
    return float(str(f32)) if float(f32) == v else float(v)


def _iso(v: Any) -> str | None:
    if v is None:
        return None
    return v.isoformat() if hasattr(v, "isoformat") else str(v)


def figures(
    tally: Tally,
    *,
    kind: str,
    season: str,
    nights: list[int],
    seconds_per_stamp: float,
    simulated: bool | None,
    card: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The report as a JSON-ready dict (NaN still present; :func:`clean` removes it).

    ``simulated`` overrides the data's provenance (True: simulated, False: survey); None takes
    it from the scores' ``data_provenance`` column (``unknown`` where they have none).
    """
    conf = tally.confusion
    thresholds = [_short_float(t) for t in tally.thresholds.sorted()]
    labelled = conf.n_labelled > 0
    n_cand_unlabelled = tally.n_candidates - conf.n_candidates
    # Time is counted on scored stamps: errored ones are neither candidates nor dismissed.
    saved = time_saved(
        tally.n_scored,
        tally.n_candidates,
        seconds_per_stamp,
        n_false_positives=conf.fp if labelled else None,
    )
    hist = tally.histogram
    rep: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "season": season,
        "night": nights[0] if kind == "night" else None,
        "nights": nights,
        "n_nights": len(nights),
        **provenance(
            data_provenance.combine(tally.data_provenances.values)
            if simulated is None
            else (SIMULATED if simulated else SURVEY),
            card,
        ),
        "n_stamps": tally.n_stamps,
        "n_scored": tally.n_scored,
        "n_errors": tally.n_errors,
        "n_candidates": tally.n_candidates,
        "candidate_fraction": tally.n_candidates / tally.n_scored if tally.n_scored else None,
        "threshold": thresholds[0] if len(thresholds) == 1 else None,
        "thresholds": thresholds,
        "model_version": tally.model_versions.single(),
        "model_versions": tally.model_versions.sorted(),
        "model_sha256": tally.model_sha256s.single(),
        "model_sha256s": tally.model_sha256s.sorted(),
        # float32 or bfloat16: what the model computed in (each has its own threshold); not
        # "precision", which is the candidates' TP / (TP + FP)
        "score_precision": tally.precisions.single(),
        "score_precisions": tally.precisions.sorted(),
        "run_ids": tally.run_ids.sorted(),
        "scored_at_first": _iso(tally.scored_at_min),
        "scored_at_last": _iso(tally.scored_at_max),
        "time_basis": "scored stamps (n_scored); stamps with an error are not counted",
        **saved,
        "hours_wasted_basis": (
            "labelled false positives only" if labelled else "unknown: no labelled candidates"
        ),
        "labelled": labelled,
        **conf.to_dict(),
        "n_candidates_unlabelled": n_cand_unlabelled,
        "roc_auc": hist.roc_auc(),
        "roc_auc_method": f"score histogram, {hist.n_bins} bins over [0, 1]; a bin's pairs tie",
        "operating_points": hist.standard_operating_points(),
        "error_messages": dict(tally.errors.most_common()),
    }
    target = _target_recall(card)
    rep["target_recall"] = target
    rep["threshold_for_target_recall"] = hist.threshold_for_recall(target) if conf.n_real else None
    if not labelled:
        for key in ("recall", "mdr", "fpr", "fdr", "precision", "roc_auc"):
            rep[key] = None
        rep["operating_points"] = None
    rep["model_card"] = {k: card.get(k) for k in CARD_KEYS if k in card} if card else None
    rep["warnings"] = _warnings(tally, rep, card)
    if rep["model_warning"]:
        rep["warnings"].append(rep["model_warning"])
    rep["files"] = dict(REPORT_FILES)
    if tally.agreement is not None:  # only where the scores carry the survey's own score
        rep["agreement"] = tally.agreement.as_dict()
        rep["files"]["agreement"] = AGREEMENT_FILE
    rep["generated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    rep["s2v_batch_version"] = __version__
    return rep


def use_measured_seconds(rep: dict[str, Any], tally: Tally) -> None:
    """The report's time figures with the seconds people's verdicts measured, where they exist.

    The assumed seconds a stamp (``seconds_per_stamp``, 0.5 by default) stand in only where no
    scanner judged these stamps; where the report's ``scanning`` section measured the median
    seconds a candidate, the hours to scan, saved and wasted are computed with it instead, and
    ``seconds_basis`` says which it was.
    """
    sc = rep.get("scanning") or {}
    median = (sc.get("seconds") or {}).get("median") if sc.get("measured") else None
    if not median or not median > 0:
        rep["seconds_basis"] = (
            f"assumed: {rep['seconds_per_stamp']:g} s a stamp (no scanners' verdicts on these "
            "stamps)"
        )
        return
    conf = tally.confusion
    fp = conf.fp if rep["labelled"] else None
    rep.update(
        clean(time_saved(tally.n_scored, tally.n_candidates, float(median), n_false_positives=fp))
    )
    rep["seconds_basis"] = (
        f"measured: the median seconds a candidate of {sc['seconds']['n']:,} scanners' verdicts "
        "(s2v scan)"
    )


def _target_recall(card: Mapping[str, Any] | None) -> float:
    """The card's target recall when it holds a usable one, else 0.99 (DESIGN.md section 3)."""
    try:
        target = float(card["target_recall"]) if card and "target_recall" in card else 0.99
    except (TypeError, ValueError):
        return 0.99
    return target if 0.0 < target <= 1.0 else 0.99


def _warnings(tally: Tally, rep: Mapping[str, Any], card: Mapping[str, Any] | None) -> list[str]:
    out = []
    if tally.n_errors:
        out.append(
            f"{tally.n_errors:,} stamp(s) have no score (error set): they are neither candidates "
            "nor dismissed; re-score them. Time figures count scored stamps only."
        )
    if len(tally.thresholds.values) > 1:
        out.append(
            f"rows were scored with {len(tally.thresholds.values)} different thresholds "
            f"{rep['thresholds']}: counts use each row's own is_candidate"
        )
    if len(tally.model_versions.values) > 1 or len(tally.model_sha256s.values) > 1:
        out.append(
            f"scores from several models are mixed: versions {rep['model_versions']}, "
            f"sha256 {rep['model_sha256s']}"
        )
    if tally.n_inconsistent:
        out.append(
            f"{tally.n_inconsistent:,} row(s) have is_candidate different from "
            "score >= threshold; counts follow is_candidate"
        )
    if tally.n_no_threshold:
        out.append(f"{tally.n_no_threshold:,} scored row(s) have no threshold")
    if rep["labelled"] and rep["n_candidates_unlabelled"]:
        out.append(
            f"{rep['n_candidates_unlabelled']:,} candidate(s) have no label: hours_wasted and "
            "FDR count labelled candidates only"
        )
    if card and card.get("sha256") and tally.model_sha256s.values:
        if card["sha256"] not in tally.model_sha256s.values:
            out.append(
                f"the model card's sha256 {card['sha256']} is not the model_sha256 of these "
                "scores: the card may describe another model"
            )
    model_survey = str(card.get("survey") or "").lower() if card else ""
    if model_survey and model_survey != survey_of_season(rep["season"]):
        out.append(
            f"the model was trained on {model_survey.upper()} stamps and these are "
            f"{survey_of_season(rep['season']).upper()} stamps: its scores and threshold are not "
            "validated for them"
        )
    for name, dist in (("model versions", tally.model_versions), ("run ids", tally.run_ids)):
        if dist.overflow:
            out.append(f"more than {MAX_DISTINCT} distinct {name}; only the first are listed")
    return out


def clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(obj, Mapping):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def to_json(rep: Mapping[str, Any]) -> bytes:
    """The bytes of a ``report.json``."""
    return (json.dumps(rep, indent=2, allow_nan=False) + "\n").encode()


def is_season_report(rep: Any, season: str) -> bool:
    """Whether a parsed JSON document is a season report of ours for ``season``."""
    return (
        isinstance(rep, dict)
        and rep.get("schema") == SCHEMA_ID
        and rep.get("schema_version") == SCHEMA_VERSION
        and rep.get("kind") == "season"
        and rep.get("season") == season
    )


# -- identity ---------------------------------------------------------------------------------


def settings_identity(
    seconds_per_stamp: float,
    simulated: bool | None,
    card: Mapping[str, Any] | None,
    *,
    store: str | None = None,
    galleries: Mapping[str, int] | None = None,
    flag_mads: float | None = None,
) -> dict[str, Any]:
    """The settings that change a report's content, as recorded in its ``identity``.

    The model card counts by its sha256 and by a digest of the fields a report quotes; the
    package version counts because a newer s2v-batch may write different content; the store
    counts by its path (the stamps in it by each night's ``night_fingerprint``, a night's).
    """
    quoted = {k: card.get(k) for k in CARD_KEYS if k in card} if card else None
    digest = hashlib.sha256(
        json.dumps(clean(quoted), sort_keys=True, default=str).encode()
    ).hexdigest()
    return clean(
        {
            "seconds_per_stamp": float(seconds_per_stamp),
            "simulated": simulated,
            "model_card_sha256": card.get("sha256") if card else None,
            "model_card_digest": digest,
            "s2v_batch_version": __version__,
            "schema_version": SCHEMA_VERSION,
            "store": store,
            "galleries": dict(galleries or {}),
            "flag_mads": flag_mads,
        }
    )


def identity(settings: Mapping[str, Any], nights: Mapping[int, Mapping[str, Any]]) -> dict:
    """A report's ``identity``: its settings and the identity of each night's scores."""
    # Through JSON, so that it compares equal with what a report.json read back holds.
    doc = {"settings": dict(settings), "nights": {str(n): nights[n] for n in sorted(nights)}}
    return json.loads(json.dumps(clean(doc), sort_keys=True))
