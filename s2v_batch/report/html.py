"""HTML pages rendered from a report's JSON content alone.

Nothing here reads the scores: a report folder can be re-rendered from its ``report.json`` files
(:func:`s2v_batch.report.write.rerender`). Images are the PNG files beside each page, linked by
relative path (embedding them would double a season's size); pages load nothing from the
network. Every value is escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from s2v_batch import __version__
from s2v_batch.core.provenance import MIXED, SIMULATED, SURVEY, UNKNOWN
from s2v_batch.report.content import BANNER, REPORT_FILES
from s2v_batch.report.scanning import section_html as scanning_html

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:62em;
padding:0 1em;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:0.25em 0.6em;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f3f3f3}
.banner{padding:0.8em 1em;border-radius:4px;margin:1em 0;font-weight:600}
.sim{background:#fde2e1;border:2px solid #c62828;color:#7f1010}
.unknown{background:#fff4d6;border:2px solid #b8860b}
.real{background:#e6f4ea;border:1px solid #2e7d32}
.mixed{background:#fde2e1;border:2px dashed #c62828;color:#7f1010}
.banner.model{background:#fff4d6;border:1px solid #b8860b;font-weight:400}
.warn{color:#8a4b00}
img{max-width:100%;height:auto;border:1px solid #eee}
code{font-size:0.9em}
tr.flag td{background:#fde2e1}
.gal{display:flex;flex-wrap:wrap;gap:0.6em;margin:0.4em 0 1.2em}
.gal figure{margin:0;font-size:0.78em;line-height:1.25}
.st{overflow:hidden}
.st img{max-width:none;border:0;display:block;image-rendering:pixelated}
.trend{border:0;vertical-align:middle}
"""
_LABELS = {1: "real", 0: "artifact", -1: "unknown"}


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v: Any, rate: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "&mdash;"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int | np.integer):
        return f"{int(v):,}"
    if isinstance(v, float | np.floating):
        return f"{float(v):.4f}" if rate else f"{float(v):,.4g}"
    return _e(v)


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td class='n'>{v}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _data_kind(rep: Mapping[str, Any]) -> str:
    """The data's provenance; a report written before it was kept has only ``simulated``."""
    kind = rep.get("data_kind")
    if kind in BANNER:
        return kind
    return {True: SIMULATED, False: SURVEY}.get(rep.get("simulated"), UNKNOWN)


def _banner(rep: Mapping[str, Any]) -> str:
    """The data's provenance (a red banner for simulated data), then the model's, separately:
    a warning where survey data were scored by a model trained on simulated stamps."""
    cls = BANNER[_data_kind(rep)]
    model = rep.get("model_warning") or rep.get("model_provenance") or ""
    model_cls = "banner model" if rep.get("model_warning") else "model-note"
    return f"<div class='banner {cls}'>{_e(rep['data_provenance'])}</div>" + (
        f"<div class='{model_cls}'>{_e(model[:1].upper() + model[1:])}</div>" if model else ""
    )


def _page(title: str, body: str) -> bytes:
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>\n"
    ).encode()


def _img(name: str, alt: str) -> str:
    return f"<p><a href='{_e(name)}'><img src='{_e(name)}' alt='{_e(alt)}'></a></p>"


def _links(rep: Mapping[str, Any]) -> list[tuple[str, str]]:
    if rep["kind"] == "night":
        return [
            ("all seasons", "../../../index.html"),
            (f"season {rep['season']}", "../../report.html"),
        ]
    return [("all seasons", "../index.html")]


def report_html(rep: Mapping[str, Any]) -> bytes:
    """The page of one season or night report, from its JSON content."""
    if rep["kind"] == "night":
        title = f"s2v-batch report: season {rep['season']}, night {rep['night']}"
    else:
        title = f"s2v-batch report: season {rep['season']} ({rep['n_nights']} nights)"
    files = {**REPORT_FILES, **(rep.get("files") or {})}
    nav = " &middot; ".join(f"<a href='{_e(h)}'>{_e(t)}</a>" for t, h in _links(rep))
    parts = [f"<p>{nav}</p>" if nav else "", f"<h1>{_e(title)}</h1>", _banner(rep)]
    thr = (
        rep["threshold"] if rep["threshold"] is not None else ", ".join(map(str, rep["thresholds"]))
    )
    parts.append("<h2>Scores</h2>")
    parts.append(
        _table(
            [
                ("stamps", _fmt(rep["n_stamps"])),
                ("scored", _fmt(rep["n_scored"])),
                ("errors (no score)", _fmt(rep["n_errors"])),
                ("candidates (score >= threshold)", _fmt(rep["n_candidates"])),
                ("candidate fraction", _fmt(rep["candidate_fraction"], rate=True)),
                ("threshold", _e(thr) if thr != "" else "&mdash;"),
                ("model version", _e(", ".join(rep["model_versions"])) or "&mdash;"),
                ("model sha256", f"<code>{_e(', '.join(rep['model_sha256s']))}</code>"),
                ("computed in", _e(", ".join(rep.get("score_precisions", []))) or "&mdash;"),
                ("run ids", _e(", ".join(rep["run_ids"])) or "&mdash;"),
                (
                    "scored between",
                    f"{_fmt(rep['scored_at_first'])} and {_fmt(rep['scored_at_last'])}",
                ),
            ]
        )
    )
    if rep.get("night_reports") is not None:
        parts.append(_nights_section(rep, files))
    if "galleries" in rep:
        parts.append(_galleries(rep["galleries"], season_page=rep["kind"] == "season"))
    parts.append(
        f"<h2>Scanning time</h2><p>At {rep['seconds_per_stamp']:g} s a stamp for a human "
        f"({_e(rep.get('seconds_basis') or 'assumed')}), on the {rep['n_scored']:,} scored "
        "stamps.</p>"
    )
    parts.append(
        _table(
            [
                ("hours to scan every stamp", _fmt(rep["hours_all"])),
                ("hours to scan the candidates", _fmt(rep["hours_candidates"])),
                ("hours saved", _fmt(rep["hours_saved"])),
                ("working days saved (8 h)", _fmt(rep["working_days_saved"])),
                ("reduction factor (stamps / candidates)", _fmt(rep["reduction_factor"])),
                (
                    f"hours wasted on false positives ({rep['hours_wasted_basis']})",
                    _fmt(rep["hours_wasted"]),
                ),
            ]
        )
    )
    parts.append(scanning_html(rep))
    parts.append("<h2>Against the labels</h2>")
    if rep["labelled"]:
        parts.append(_labels_table(rep))
    else:
        parts.append(
            "<p>No labelled stamps: recall, FPR, FDR and the MDR-FPR curve need labels "
            "(1 real, 0 artifact).</p>"
        )
    if rep.get("agreement"):
        parts.append(_agreement_section(rep["agreement"], files))
    parts.append("<h2>Score plots</h2>")
    parts.append(_img(files["score_histogram"], "score histogram per class"))
    parts.append(_img(files["mdr_fpr"], "missed detection rate against false positive rate"))
    if rep["warnings"]:
        items = "".join(f"<li>{_e(w)}</li>" for w in rep["warnings"])
        parts.append(f"<h2>Warnings</h2><ul class='warn'>{items}</ul>")
    if rep["error_messages"]:
        rows = [(msg, _fmt(n)) for msg, n in rep["error_messages"].items()]
        parts.append("<h2>Scoring errors</h2>" + _table(rows))
    parts.append(
        f"<hr><p><small>Generated {_e(rep['generated_at'])} by s2v-batch "
        f"{_e(rep['s2v_batch_version'])}. Figures also in "
        f"<a href='{files['json']}'>{files['json']}</a>.</small></p>"
    )
    return _page(title, "".join(parts))


def _labels_table(rep: Mapping[str, Any]) -> str:
    out = _table(
        [
            ("labelled stamps", _fmt(rep["n_labelled"])),
            ("real / artifact", f"{rep['n_real']:,} / {rep['n_artifact']:,}"),
            ("true positives (TP)", _fmt(rep["tp"])),
            ("false positives (FP)", _fmt(rep["fp"])),
            ("true negatives (TN)", _fmt(rep["tn"])),
            ("false negatives (FN)", _fmt(rep["fn"])),
            ("recall TP/(TP+FN)", _fmt(rep["recall"], rate=True)),
            ("missed detection rate 1 - recall", _fmt(rep["mdr"], rate=True)),
            ("false positive rate FP/(FP+TN)", _fmt(rep["fpr"], rate=True)),
            ("false discovery rate FP/(TP+FP)", _fmt(rep["fdr"], rate=True)),
            ("ROC AUC", _fmt(rep["roc_auc"], rate=True)),
            (
                f"threshold keeping {rep['target_recall']:g} of reals here",
                _fmt(rep["threshold_for_target_recall"]),
            ),
        ]
    )
    ops = rep["operating_points"] or {}
    rows = [(f"MDR at FPR {k}", _fmt(v, rate=True)) for k, v in ops.get("mdr_at_fpr", {}).items()]
    rows += [(f"FPR at MDR {k}", _fmt(v, rate=True)) for k, v in ops.get("fpr_at_mdr", {}).items()]
    out += "<h3>Standard operating points (autoscan; Ayyar et al. 2022)</h3>" + _table(rows)
    return out + f"<p><small>{_e(rep['roc_auc_method'])}</small></p>"


def _agreement_section(ag: Mapping[str, Any], files: Mapping[str, str]) -> str:
    """The 2x2 table of s2v's candidates against the survey's own score, and its density."""
    col, cut = _e(ag["survey_score"]), _e(f"{ag['survey_threshold']:g}")
    cells = {k: ag[k] for k in ("both", "s2v_only", "survey_only", "neither")}
    head = f"<tr><th></th><th>{col} &ge; {cut}</th><th>{col} &lt; {cut}</th><th>total</th></tr>"
    rows = [
        ("s2v candidate", cells["both"], cells["s2v_only"]),
        ("not an s2v candidate", cells["survey_only"], cells["neither"]),
        ("total", cells["both"] + cells["survey_only"], cells["s2v_only"] + cells["neither"]),
    ]
    body = "".join(
        f"<tr><th>{_e(name)}</th><td class='n'>{_fmt(a)}</td><td class='n'>{_fmt(b)}</td>"
        f"<td class='n'>{_fmt(a + b)}</td></tr>"
        for name, a, b in rows
    )
    out = (
        f"<h2>Agreement with the survey's score ({col})</h2>"
        f"<p>s2v's candidates (score &ge; threshold) against the survey's own real/bogus score "
        f"&ge; {cut}, on the {_fmt(ag['n'])} stamps with both scores.</p>"
        f"<table>{head}{body}</table>"
    )
    out += _table(
        [
            ("agreement (both or neither)", _fmt(ag["agreement"], rate=True)),
            ("Cohen's kappa", _fmt(ag["kappa"], rate=True)),
            (f"stamps without both scores (no {col}, or no s2v score)", _fmt(ag["n_missing"])),
        ]
    )
    if "agreement" in files:
        out += _img(files["agreement"], f"density of the s2v score against {ag['survey_score']}")
    return out


def _nights_section(rep: Mapping[str, Any], files: Mapping[str, str]) -> str:
    rng = rep.get("night_range") or {}
    flagged = rep.get("flagged_nights") or []
    out = ["<h2>Night by night</h2>"]
    if rng.get("median") is not None:
        out.append(
            f"<p>Candidate fraction: median {rng['median']:.4f}, MAD {rng['mad']:.4f}. A night "
            f"is flagged when its {_e(rng['method'])}.</p>"
        )
    elif rng.get("note"):
        out.append(f"<p>No nights are flagged by their candidate fraction: {_e(rng['note'])}.</p>")
    if flagged:
        items = "".join(
            f"<li><a href='nights/{int(f['night'])}/report.html'>{int(f['night'])}</a>: "
            f"{_e(f['reason'])}</li>"
            for f in flagged
        )
        out.append(f"<p class='warn'><b>{len(flagged)} night(s) flagged:</b></p><ul>{items}</ul>")
    else:
        out.append("<p>No night flagged.</p>")
    if "nights" in files:
        out.append(_img(files["nights"], "stamps, candidate fraction, recall and FDR per night"))
    head = (
        "<tr><th>night</th><th>stamps</th><th>errors</th><th>candidates</th><th>candidate "
        "fraction</th><th>robust range</th><th>labelled</th><th>recall</th><th>FDR</th>"
        "<th>ROC AUC</th><th>flag</th></tr>"
    )
    body = []
    for r in rep["night_reports"]:
        lo, hi = r.get("fraction_low"), r.get("fraction_high")
        span = f"{max(lo, 0.0):.4f}&ndash;{min(hi, 1.0):.4f}" if lo is not None else "&mdash;"
        cls = " class='flag'" if r.get("flag") else ""
        body.append(
            f"<tr{cls}><td><a href='nights/{r['night']}/report.html'>{r['night']}</a></td>"
            f"<td class='n'>{_fmt(r['n_stamps'])}</td><td class='n'>{_fmt(r['n_errors'])}</td>"
            f"<td class='n'>{_fmt(r['n_candidates'])}</td>"
            f"<td class='n'>{_fmt(r.get('candidate_fraction'), rate=True)}</td>"
            f"<td class='n'>{span}</td><td class='n'>{_fmt(r['n_labelled'])}</td>"
            f"<td class='n'>{_fmt(r['recall'], rate=True)}</td>"
            f"<td class='n'>{_fmt(r['fdr'], rate=True)}</td>"
            f"<td class='n'>{_fmt(r['roc_auc'], rate=True)}</td>"
            + (
                f"<td title='{_e(r['flag'])}'><b>{_e(r.get('flag_short') or 'flagged')}</b></td>"
                if r.get("flag")
                else "<td></td>"
            )
            + "</tr>"
        )
    return "".join(out) + f"<table>{head}{''.join(body)}</table>"


def _galleries(doc: Mapping[str, Any], season_page: bool) -> str:
    out = ["<h2>Stamps</h2>"]
    if doc.get("skipped"):
        return out[0] + f"<p class='warn'>Galleries skipped: {_e(doc['skipped'])}.</p>"
    out.append(
        f"<p>Each stamp: srch | temp | diff. Display stretch: {_e(doc.get('stretch', ''))}.</p>"
    )
    out += [f"<p class='warn'>{_e(n)}</p>" for n in doc.get("notes") or []]
    for item in doc.get("items", []):
        out.append(f"<h3>{_e(item['title'])} <small>({_e(item['answers'])})</small></h3>")
        if item.get("note"):
            out.append(f"<p class='warn'>{_e(item['note'])}</p>")
        if item["stamps"]:
            out.append(
                f"<div class='gal'>{''.join(_stamp(doc, st, season_page) for st in item['stamps'])}</div>"
            )
    return "".join(out)


def _stamp(doc: Mapping[str, Any], st: Mapping[str, Any], season_page: bool) -> str:
    """One triplet: its row of the sprite, shown twice its stored size, and its caption."""
    (_w, h), gap, (sw, sh) = doc["cell"], doc["gap"], doc["size"]
    night = int(st["night"])
    where = f"<a href='nights/{night}/report.html'>{night}</a>" if season_page else night
    sid = int(st["stamp_id"])
    return (
        f"<figure><div class='st' style='width:{2 * sw}px;height:{2 * h}px'>"
        f"<img src='{_e(doc['image'])}' width='{2 * sw}' height='{2 * sh}' "
        f"style='margin-top:-{2 * int(st['row']) * (h + gap)}px' alt='stamp {sid}'>"
        f"</div><figcaption>stamp_id {sid}<br>score {float(st['score']):.4f} &middot; "
        f"{_LABELS.get(int(st['label']), '?')}<br>night {where}</figcaption></figure>"
    )


def index_html(seasons: Sequence[Mapping[str, Any]]) -> bytes:
    """The index page listing every season report (their JSON content, in display order)."""
    head = (
        "<tr><th>season</th><th>data</th><th>nights</th><th>candidate fraction by night</th>"
        "<th>flagged nights</th><th>stamps</th><th>candidates</th>"
        "<th>reduction factor</th><th>hours saved</th><th>recall</th><th>FDR</th></tr>"
    )
    rows = []
    for rep in seasons:
        s = rep["season"]
        data = {SIMULATED: "<b>simulated</b>", MIXED: "<b>mixed</b> (simulated + survey)"}.get(
            _data_kind(rep), _data_kind(rep)
        )
        trend = (rep.get("files") or {}).get("trend")
        spark = (
            f"<img class='trend' src='{_e(s)}/{_e(trend)}' width='180' height='40' "
            f"alt='candidate fraction by night, season {_e(s)}'>"
            if trend
            else "&mdash;"
        )
        flagged = rep.get("flagged_nights")
        rows.append(
            f"<tr><td><a href='{_e(s)}/report.html'>{_e(s)}</a></td><td>{data}</td>"
            f"<td class='n'>{_fmt(rep['n_nights'])}</td><td>{spark}</td>"
            f"<td class='n'>{_fmt(len(flagged)) if flagged is not None else '&mdash;'}</td>"
            f"<td class='n'>{_fmt(rep['n_stamps'])}</td>"
            f"<td class='n'>{_fmt(rep['n_candidates'])}</td>"
            f"<td class='n'>{_fmt(rep['reduction_factor'])}</td>"
            f"<td class='n'>{_fmt(rep['hours_saved'])}</td>"
            f"<td class='n'>{_fmt(rep['recall'], rate=True)}</td>"
            f"<td class='n'>{_fmt(rep['fdr'], rate=True)}</td></tr>"
        )
    nights = "".join(
        f"<h3>{_e(rep['season'])}</h3><p>"
        + " ".join(_night_link(rep, int(n)) for n in rep["nights"])
        + "</p>"
        for rep in seasons
    )
    sims = [rep["season"] for rep in seasons if _data_kind(rep) in (SIMULATED, MIXED)]
    banner = (
        f"<div class='banner sim'>SIMULATED DATA in season(s) {_e(', '.join(sims))}: "
        "those figures are not survey results.</div>"
        if sims
        else ""
    )
    body = (
        f"<h1>s2v-batch reports</h1>{banner}<table>{head}{''.join(rows)}</table>"
        f"<h2>Nights</h2>{nights}"
        f"<hr><p><small>Index written {_e(datetime.now(UTC).isoformat(timespec='seconds'))} "
        f"by s2v-batch {_e(__version__)}.</small></p>"
    )
    return _page("s2v-batch reports", body)


def _night_link(rep: Mapping[str, Any], night: int) -> str:
    reasons = {int(f["night"]): f["reason"] for f in rep.get("flagged_nights") or []}
    href = f"{_e(rep['season'])}/nights/{night}/report.html"
    if night in reasons:
        return f"<a href='{href}' class='warn' title='{_e(reasons[night])}'><b>{night} (flagged)</b></a>"
    return f"<a href='{href}'>{night}</a>"
