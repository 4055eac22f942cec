"""Per-season and per-night reports (JSON, HTML, PNG) from the hive-partitioned Parquet scores.

Layout read (docs/ARCHITECTURE.md, "Scores"): ``SCORES/season=<S>/night=<N>/part-*.parquet``;
folders and files starting with ``_`` or ``.`` (staging, manifests) are ignored, as pyarrow
and pandas ignore them.

Layout written::

    OUT/index.html
    OUT/<season>/report.json, report.html, score_histogram.png, mdr_fpr.png
    OUT/<season>/nights/<night>/report.json, report.html, score_histogram.png, mdr_fpr.png

Scores are read night by night and batch by batch, only the needed columns, into exact counts
and a :class:`~s2v_batch.metrics.ScoreHistogram`: memory stays flat whatever the season size.
Counts at the stored threshold (TP/FP/TN/FN, candidates) are exact, taken from ``is_candidate``;
ROC AUC and the standard operating points come from the histogram (2**16 bins, see its notes).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import __version__
from .conventions import LABEL_ARTIFACT, LABEL_REAL, LABEL_UNKNOWN
from .fsutil import write_bytes_atomic
from .histogram import DEFAULT_BINS, ScoreHistogram
from .metrics import STANDARD_FPRS, Confusion, MetricsError
from .timesaved import time_saved

__all__ = ["REPORT_FILES", "ReportError", "ReportSummary", "write_reports"]

#: Files written for every season and every night.
REPORT_FILES: dict[str, str] = {
    "json": "report.json",
    "html": "report.html",
    "score_histogram": "score_histogram.png",
    "mdr_fpr": "mdr_fpr.png",
}
_SCHEMA_ID = "s2v-batch/report"
_SCHEMA_VERSION = 1
_REQUIRED = ("score", "is_candidate", "threshold", "label")
_OPTIONAL = ("error", "model_version", "model_sha256", "run_id", "scored_at")
_STRING_COLUMNS = ["error", "model_version", "model_sha256", "run_id"]
_BATCH_ROWS = 65_536
#: Distinct values kept per string column / error message; beyond that only a count.
_MAX_DISTINCT = 50
#: Figures of each night listed in its season's report.
_NIGHT_ROW_KEYS = (
    "night", "n_stamps", "n_errors", "n_candidates", "n_labelled", "recall", "fdr", "roc_auc"
)  # fmt: skip
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ReportError(ValueError):
    """The scores cannot be reported on (no data, unknown season, malformed files ...)."""


# -- accumulation -----------------------------------------------------------------------------


@dataclass
class _Distinct:
    """A bounded set of distinct values (a few model versions, run ids, thresholds)."""

    values: set[Any] = field(default_factory=set)
    overflow: bool = False

    def update(self, items: Iterable[Any]) -> None:
        for item in items:
            if item in self.values:
                continue
            if len(self.values) >= _MAX_DISTINCT:
                self.overflow = True
                return
            self.values.add(item)

    def merge(self, other: _Distinct) -> None:
        self.update(other.values)
        self.overflow |= other.overflow

    def sorted(self) -> list[Any]:
        return sorted(self.values)


@dataclass
class _Tally:
    """Everything a report needs from a set of score rows; mergeable."""

    histogram: ScoreHistogram = field(default_factory=lambda: ScoreHistogram(DEFAULT_BINS))
    n_stamps: int = 0
    n_scored: int = 0
    n_errors: int = 0
    n_candidates: int = 0
    n_inconsistent: int = 0
    n_no_threshold: int = 0
    confusion: Confusion = field(default_factory=lambda: Confusion(0, 0, 0, 0))
    thresholds: _Distinct = field(default_factory=_Distinct)
    model_versions: _Distinct = field(default_factory=_Distinct)
    model_sha256s: _Distinct = field(default_factory=_Distinct)
    run_ids: _Distinct = field(default_factory=_Distinct)
    errors: Counter[str] = field(default_factory=Counter)
    scored_at_min: Any = None
    scored_at_max: Any = None

    def merge(self, other: _Tally) -> None:
        self.histogram.merge(other.histogram)
        for name in (
            "n_stamps",
            "n_scored",
            "n_errors",
            "n_candidates",
            "n_inconsistent",
            "n_no_threshold",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.confusion = self.confusion + other.confusion
        for name in ("thresholds", "model_versions", "model_sha256s", "run_ids"):
            getattr(self, name).merge(getattr(other, name))
        self._count_errors(other.errors)
        self._time_range(other.scored_at_min, other.scored_at_max)

    def _count_errors(self, counts: Mapping[str, int]) -> None:
        for msg, n in counts.items():
            key = msg if (msg in self.errors or len(self.errors) < _MAX_DISTINCT) else "(other)"
            self.errors[key] += n

    def _time_range(self, lo: Any, hi: Any) -> None:
        if lo is not None and (self.scored_at_min is None or lo < self.scored_at_min):
            self.scored_at_min = lo
        if hi is not None and (self.scored_at_max is None or hi > self.scored_at_max):
            self.scored_at_max = hi

    def add_batch(self, batch: pa.RecordBatch, where: str) -> None:
        """Count one record batch of score rows (``where`` names it in error messages)."""
        n = batch.num_rows
        if n == 0:
            return
        names = set(batch.schema.names)
        try:
            score_arr = batch.column("score").cast(pa.float64())
            label_arr = batch.column("label").cast(pa.int64())
            thr = batch.column("threshold").cast(pa.float64()).to_numpy(zero_copy_only=False)
            cand = (
                batch.column("is_candidate")
                .cast(pa.bool_())
                .fill_null(False)
                .to_numpy(zero_copy_only=False)
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ReportError(f"{where}: a score column has an unusable type ({exc})") from None
        score = score_arr.to_numpy(zero_copy_only=False)  # nulls become NaN
        errored = ~score_arr.is_valid().to_numpy(zero_copy_only=False)
        if "error" in names:
            err = batch.column("error")
            has_err = err.is_valid().to_numpy(zero_copy_only=False)
            errored |= has_err
            if has_err.any():
                msgs = err.filter(pa.array(has_err)).cast(pa.string()).to_pylist()
                self._count_errors(Counter(str(m)[:300] for m in msgs))
        ok = ~errored
        s = score[ok]
        bad = np.isnan(s) | (s < 0.0) | (s > 1.0)
        if bad.any():
            raise ReportError(
                f"{where}: {int(bad.sum())} score(s) without an error are NaN or outside [0, 1], "
                f"e.g. {s[bad][:3].tolist()}; a score is a probability of real"
            )
        label = label_arr.fill_null(LABEL_UNKNOWN).to_numpy(zero_copy_only=False)
        odd = (label != LABEL_REAL) & (label != LABEL_ARTIFACT) & (label != LABEL_UNKNOWN)
        if odd.any():
            raise ReportError(
                f"{where}: label must be 1 (real), 0 (artifact), -1 or null (unknown); "
                f"found {np.unique(label[odd])[:5].tolist()}"
            )
        lab = label[ok].astype(np.int8)
        c = cand[ok]
        t = thr[ok]

        self.n_stamps += n
        self.n_scored += int(ok.sum())
        self.n_errors += int(errored.sum())
        self.n_candidates += int(c.sum())
        real, art = lab == LABEL_REAL, lab == LABEL_ARTIFACT
        tp, fp = int((c & real).sum()), int((c & art).sum())
        self.confusion = self.confusion + Confusion(
            tp=tp, fp=fp, tn=int(art.sum()) - fp, fn=int(real.sum()) - tp
        )
        try:
            self.histogram.add(s, lab)
        except MetricsError as exc:  # cannot happen after the checks above; keep it readable
            raise ReportError(f"{where}: {exc}") from None
        has_t = ~np.isnan(t)
        self.n_no_threshold += int((~has_t).sum())
        # is_candidate must say score >= threshold; both float32, compared exactly in float64.
        self.n_inconsistent += int((c[has_t] != (s[has_t] >= t[has_t])).sum())
        self.thresholds.update(np.unique(t[has_t]).tolist())
        for col, dest in (
            ("model_version", self.model_versions),
            ("model_sha256", self.model_sha256s),
            ("run_id", self.run_ids),
        ):
            if col in names:
                dest.update(v for v in batch.column(col).unique().to_pylist() if v is not None)
        if "scored_at" in names:
            col = batch.column("scored_at")
            if col.null_count < len(col):
                mm = pc.min_max(col)
                self._time_range(mm["min"].as_py(), mm["max"].as_py())


# -- discovery and reading --------------------------------------------------------------------


def _partition(parts: tuple[str, ...], path: Path) -> tuple[str, int]:
    """(season, night) from the relative path parts of a part file."""
    if len(parts) < 3 or not parts[0].startswith("season=") or not parts[1].startswith("night="):
        raise ReportError(
            f"Parquet file {path} is not under season=<S>/night=<YYYYMMDD>/ as the scores "
            "layout requires (docs/ARCHITECTURE.md, 'Scores')"
        )
    season = urllib.parse.unquote(parts[0].removeprefix("season="))
    night_text = urllib.parse.unquote(parts[1].removeprefix("night="))
    if not _SAFE_NAME.match(season):
        raise ReportError(
            f"season {season!r} in {path} is not a usable name (letters, digits, _.-)"
        )
    try:
        night = int(night_text)
    except ValueError:
        raise ReportError(f"night {night_text!r} in {path} is not an integer YYYYMMDD") from None
    return season, night


def _discover(root: Path) -> dict[str, dict[int, list[Path]]]:
    """Every published part file, by season and night."""
    if not root.exists():
        raise ReportError(f"scores folder {root} does not exist")
    if not root.is_dir():
        raise ReportError(f"scores root {root} is not a folder")
    found: dict[str, dict[int, list[Path]]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        # Staging ("_staging") and hidden folders are not published data.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(("_", ".")))
        for name in sorted(filenames):
            if name.startswith(("_", ".")) or not name.endswith(".parquet"):
                continue
            path = Path(dirpath) / name
            season, night = _partition(path.relative_to(root).parts, path)
            found.setdefault(season, {}).setdefault(night, []).append(path)
    return found


def _read_night(paths: list[Path], where: str) -> _Tally:
    """Tally one night's part files, one file and one batch at a time.

    ``ParquetFile.iter_batches`` decodes one row group at a time, and the string columns
    (the same few model versions and run ids on every row) stay dictionary-encoded: this keeps
    memory to about one row group, where a dataset scan with read-ahead held several.
    """
    tally = _Tally()
    for path in paths:
        try:
            names = pq.read_schema(path).names
            missing = [c for c in _REQUIRED if c not in names]
            if missing:
                raise ReportError(f"{path} lacks required column(s) {', '.join(missing)}")
            # read_dictionary must name only columns the file has.
            strings = [c for c in _STRING_COLUMNS if c in names]
            pf = pq.ParquetFile(path, read_dictionary=strings, pre_buffer=False)
        except (pa.ArrowException, OSError) as exc:
            raise ReportError(f"cannot read Parquet file {path}: {exc}") from None
        with pf:
            cols = [c for c in (*_REQUIRED, *_OPTIONAL) if c in names]
            try:
                for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=cols):
                    tally.add_batch(batch, where)
            except (pa.ArrowException, OSError) as exc:
                raise ReportError(f"{where}: cannot read {path} ({exc})") from None
    return tally


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


def _provenance(simulated: bool | None, card: Mapping[str, Any] | None) -> tuple[bool | None, str]:
    """The ``simulated`` flag and the sentence every report prints about its data."""
    if simulated is not None:
        if simulated:
            return True, (
                "SIMULATED DATA: these scores were computed on simulated stamps (the s2v-batch "
                "simulator), not on survey observations. The figures describe the model on "
                "simulated data; they are not survey results."
            )
        return False, "These scores were computed on survey observations (not simulated data)."
    if card:
        flag, text = _card_training_text(card)
        quoted = f" (model card training data: {text[:200]})" if text else ""
        if flag:
            return True, (
                f"SIMULATED DATA: the model was trained on simulated stamps{quoted}; treat "
                "these scores as results on simulated data, not as survey results, unless "
                "they were run on survey observations."
            )
        if flag is False:
            return False, (
                f"The model card says the model was trained on survey data, not simulated "
                f"data{quoted}."
            )
    return None, (
        "Data provenance unknown: no 'simulated' flag was given and no model card says what "
        "data the model was trained on. Do not quote these figures as survey results until "
        "the data are known."
    )


# -- report content ---------------------------------------------------------------------------


def _short_float(v: float) -> float:
    """Float32 values (thresholds) as their shortest decimal: 0.06, not 0.05999999865889549."""
    f32 = np.float32(v)
    return float(str(f32)) if float(f32) == v else float(v)


def _iso(v: Any) -> str | None:
    if v is None:
        return None
    return v.isoformat() if hasattr(v, "isoformat") else str(v)


def _single(d: _Distinct) -> Any:
    return d.sorted()[0] if len(d.values) == 1 and not d.overflow else None


def _figures(
    tally: _Tally,
    *,
    kind: str,
    season: str,
    nights: list[int],
    seconds_per_stamp: float,
    simulated: bool | None,
    provenance: str,
    card: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The report as a JSON-ready dict (NaN still present; :func:`_clean` removes it)."""
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
        "schema": _SCHEMA_ID,
        "schema_version": _SCHEMA_VERSION,
        "kind": kind,
        "season": season,
        "night": nights[0] if kind == "night" else None,
        "nights": nights,
        "n_nights": len(nights),
        "simulated": simulated,
        "data_provenance": provenance,
        "n_stamps": tally.n_stamps,
        "n_scored": tally.n_scored,
        "n_errors": tally.n_errors,
        "n_candidates": tally.n_candidates,
        "candidate_fraction": tally.n_candidates / tally.n_scored if tally.n_scored else None,
        "threshold": thresholds[0] if len(thresholds) == 1 else None,
        "thresholds": thresholds,
        "model_version": _single(tally.model_versions),
        "model_versions": tally.model_versions.sorted(),
        "model_sha256": _single(tally.model_sha256s),
        "model_sha256s": tally.model_sha256s.sorted(),
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
    if card:
        rep["model_card"] = {
            k: card.get(k)
            for k in ("name", "version", "sha256", "threshold", "target_recall", "training_data")
            if k in card
        }
    else:
        rep["model_card"] = None
    rep["warnings"] = _warnings(tally, rep, card)
    rep["files"] = dict(REPORT_FILES)
    rep["generated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    rep["s2v_batch_version"] = __version__
    return rep


def _target_recall(card: Mapping[str, Any] | None) -> float:
    """The card's target recall when it holds a usable one, else 0.99 (DESIGN.md section 3)."""
    try:
        target = float(card["target_recall"]) if card and "target_recall" in card else 0.99
    except (TypeError, ValueError):
        return 0.99
    return target if 0.0 < target <= 1.0 else 0.99


def _warnings(tally: _Tally, rep: Mapping[str, Any], card: Mapping[str, Any] | None) -> list[str]:
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
    for name, dist in (("model versions", tally.model_versions), ("run ids", tally.run_ids)):
        if dist.overflow:
            out.append(f"more than {_MAX_DISTINCT} distinct {name}; only the first are listed")
    return out


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# -- plots ------------------------------------------------------------------------------------

_CLASS_STYLE = (("real", 0, "tab:orange"), ("artifact", 1, "tab:blue"), ("unknown", 2, "0.45"))


def _display_bins(n_bins: int, most: int = 128) -> int:
    return next(d for d in range(min(most, n_bins), 0, -1) if n_bins % d == 0)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _histogram_png(hist: ScoreHistogram, thresholds: list[float], title: str) -> bytes:
    """Score histogram per class, log y, with the threshold line(s) (as in the space2vec blog)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5), dpi=100)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.92, bottom=0.12)
    ax = fig.add_subplot()
    edges, counts = hist.coarsen(_display_bins(hist.n_bins))
    if hist.n_total == 0:
        ax.text(0.5, 0.5, "no scored stamps", ha="center", va="center", transform=ax.transAxes)
    else:
        if hist.n_real + hist.n_artifact:
            series = [(f"{n} ({counts[r].sum():,})", counts[r], c) for n, r, c in _CLASS_STYLE]
        else:
            series = [(f"all stamps, no labels ({hist.n_total:,})", counts.sum(axis=0), "0.3")]
        for name, row, color in series:
            if row.sum():
                # Zero bins would fall off a log axis: draw them at 0.5, below the first tick.
                ax.stairs(np.maximum(row, 0.5), edges, label=name, color=color, linewidth=1.6)
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.5)
    for t in thresholds:
        ax.axvline(t, color="crimson", linestyle="--", linewidth=1.2, label=f"threshold {t:g}")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("score (probability of real)")
    ax.set_ylabel(f"stamps per bin (bin width {1 / len(edges[1:]):.3g})")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")
    return _png(fig)


def _mdr_fpr_png(
    hist: ScoreHistogram, conf: Confusion, threshold: float | None, title: str
) -> bytes:
    """MDR against FPR (log x) with the operating point at the stored threshold."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5), dpi=100)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.92, bottom=0.12)
    ax = fig.add_subplot()
    ax.set_title(title)
    if not (hist.n_real and hist.n_artifact):
        ax.text(
            0.5,
            0.5,
            "no MDR-FPR curve: it needs stamps labelled real and artifact\n"
            f"(labelled real: {hist.n_real:,}, artifact: {hist.n_artifact:,})",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_axis_off()
        return _png(fig)
    fpr, mdr, _ = hist.mdr_fpr_curve()
    pos = fpr > 0  # log axis: FPR 0 cannot be drawn
    floor = min(fpr[pos].min() if pos.any() else 1.0, conf.fpr if conf.fpr > 0 else 1.0)
    left = max(floor / 2, 1e-7)
    ax.plot(fpr[pos], mdr[pos], drawstyle="steps-post", color="tab:blue", label="model")
    for i, f in enumerate(STANDARD_FPRS):
        label = "FPR " + ", ".join(f"{x:.1%}" for x in STANDARD_FPRS) if i == 0 else None
        ax.axvline(f, color="0.7", linestyle=":", linewidth=1, label=label)
    if not math.isnan(conf.fpr):
        x = conf.fpr if conf.fpr > 0 else left
        where = f"threshold {threshold:g}" if threshold is not None else "stored is_candidate"
        ax.plot(
            [x],
            [conf.mdr],
            marker="o" if conf.fpr > 0 else "<",
            color="crimson",
            markersize=8,
            linestyle="none",
            label=f"operating point ({where}): FPR {conf.fpr:.4g}, MDR {conf.mdr:.4g}",
        )
    ax.set_xscale("log")
    ax.set_xlim(left, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("false positive rate (artifacts kept)")
    ax.set_ylabel("missed detection rate (reals lost)")
    # The curve runs from high MDR at low FPR to low MDR at high FPR: lower left stays empty.
    ax.legend(loc="lower left", fontsize="small")
    ax.grid(True, which="major", alpha=0.3)
    return _png(fig)


# -- HTML -------------------------------------------------------------------------------------

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
.warn{color:#8a4b00}
img{max-width:100%;height:auto;border:1px solid #eee}
code{font-size:0.9em}
"""


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


def _banner(rep: Mapping[str, Any]) -> str:
    cls = {True: "sim", False: "real", None: "unknown"}[rep["simulated"]]
    return f"<div class='banner {cls}'>{_e(rep['data_provenance'])}</div>"


def _page(title: str, body: str) -> bytes:
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>\n"
    ).encode()


def _img(png: bytes, alt: str, href: str) -> str:
    # Embedded so the page stands alone; the PNG file sits beside it as well.
    data = base64.b64encode(png).decode("ascii")
    return (
        f"<p><a href='{_e(href)}'><img src='data:image/png;base64,{data}' alt='{_e(alt)}'></a></p>"
    )


def _report_html(
    rep: Mapping[str, Any],
    pngs: Mapping[str, bytes],
    links: list[tuple[str, str]],
    nights_table: str = "",
) -> bytes:
    if rep["kind"] == "night":
        title = f"s2v-batch report: season {rep['season']}, night {rep['night']}"
    else:
        title = f"s2v-batch report: season {rep['season']} ({rep['n_nights']} nights)"
    nav = " &middot; ".join(f"<a href='{_e(h)}'>{_e(t)}</a>" for t, h in links)
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
                ("run ids", _e(", ".join(rep["run_ids"])) or "&mdash;"),
                (
                    "scored between",
                    f"{_fmt(rep['scored_at_first'])} and {_fmt(rep['scored_at_last'])}",
                ),
            ]
        )
    )
    parts.append(
        f"<h2>Scanning time</h2><p>At {rep['seconds_per_stamp']:g} s a stamp for a human, "
        f"on the {rep['n_scored']:,} scored stamps.</p>"
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
    parts.append("<h2>Against the labels</h2>")
    if rep["labelled"]:
        parts.append(
            _table(
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
        )
        ops = rep["operating_points"] or {}
        rows = [
            (f"MDR at FPR {k}", _fmt(v, rate=True)) for k, v in ops.get("mdr_at_fpr", {}).items()
        ]
        rows += [
            (f"FPR at MDR {k}", _fmt(v, rate=True)) for k, v in ops.get("fpr_at_mdr", {}).items()
        ]
        parts.append(
            "<h3>Standard operating points (autoscan; Ayyar et al. 2022)</h3>" + _table(rows)
        )
        parts.append(f"<p><small>{_e(rep['roc_auc_method'])}</small></p>")
    else:
        parts.append(
            "<p>No labelled stamps: recall, FPR, FDR and the MDR-FPR curve need labels "
            "(1 real, 0 artifact).</p>"
        )
    parts.append("<h2>Plots</h2>")
    parts.append(
        _img(pngs["score_histogram"], "score histogram per class", REPORT_FILES["score_histogram"])
    )
    parts.append(
        _img(
            pngs["mdr_fpr"],
            "missed detection rate against false positive rate",
            REPORT_FILES["mdr_fpr"],
        )
    )
    if rep["warnings"]:
        items = "".join(f"<li>{_e(w)}</li>" for w in rep["warnings"])
        parts.append(f"<h2>Warnings</h2><ul class='warn'>{items}</ul>")
    if rep["error_messages"]:
        rows = [(msg, _fmt(n)) for msg, n in rep["error_messages"].items()]
        parts.append("<h2>Scoring errors</h2>" + _table(rows))
    parts.append(nights_table)
    parts.append(
        f"<hr><p><small>Generated {_e(rep['generated_at'])} by s2v-batch "
        f"{_e(rep['s2v_batch_version'])}. Figures also in "
        f"<a href='{REPORT_FILES['json']}'>{REPORT_FILES['json']}</a>.</small></p>"
    )
    return _page(title, "".join(parts))


def _nights_table(rows: list[Mapping[str, Any]]) -> str:
    head = (
        "<tr><th>night</th><th>stamps</th><th>errors</th><th>candidates</th>"
        "<th>labelled</th><th>recall</th><th>FDR</th><th>ROC AUC</th></tr>"
    )
    body = "".join(
        f"<tr><td><a href='nights/{r['night']}/report.html'>{r['night']}</a></td>"
        f"<td class='n'>{_fmt(r['n_stamps'])}</td><td class='n'>{_fmt(r['n_errors'])}</td>"
        f"<td class='n'>{_fmt(r['n_candidates'])}</td><td class='n'>{_fmt(r['n_labelled'])}</td>"
        f"<td class='n'>{_fmt(r['recall'], rate=True)}</td>"
        f"<td class='n'>{_fmt(r['fdr'], rate=True)}</td>"
        f"<td class='n'>{_fmt(r['roc_auc'], rate=True)}</td></tr>"
        for r in rows
    )
    return f"<h2>Nights</h2><table>{head}{body}</table>"


def _index_html(seasons: list[Mapping[str, Any]]) -> bytes:
    head = (
        "<tr><th>season</th><th>data</th><th>nights</th><th>stamps</th><th>candidates</th>"
        "<th>reduction factor</th><th>hours saved</th><th>recall</th><th>FDR</th></tr>"
    )
    rows = []
    for rep in seasons:
        s = rep["season"]
        data = {True: "<b>simulated</b>", False: "survey", None: "unknown"}[rep.get("simulated")]
        rows.append(
            f"<tr><td><a href='{_e(s)}/report.html'>{_e(s)}</a></td><td>{data}</td>"
            f"<td class='n'>{_fmt(rep['n_nights'])}</td><td class='n'>{_fmt(rep['n_stamps'])}</td>"
            f"<td class='n'>{_fmt(rep['n_candidates'])}</td>"
            f"<td class='n'>{_fmt(rep['reduction_factor'])}</td>"
            f"<td class='n'>{_fmt(rep['hours_saved'])}</td>"
            f"<td class='n'>{_fmt(rep['recall'], rate=True)}</td>"
            f"<td class='n'>{_fmt(rep['fdr'], rate=True)}</td></tr>"
        )
    nights = "".join(
        f"<h3>{_e(rep['season'])}</h3><p>"
        + " ".join(
            f"<a href='{_e(rep['season'])}/nights/{int(n)}/report.html'>{int(n)}</a>"
            for n in rep["nights"]
        )
        + "</p>"
        for rep in seasons
    )
    sims = [rep["season"] for rep in seasons if rep.get("simulated")]
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


# -- writing ----------------------------------------------------------------------------------


def _season_key(season: str) -> tuple[int, int, str]:
    if season == "SV":
        return (0, 0, season)
    m = re.fullmatch(r"Y(\d+)", season)
    return (1, int(m.group(1)), season) if m else (2, 0, season)


def _write_one(
    folder: Path,
    tally: _Tally,
    *,
    kind: str,
    season: str,
    nights: list[int],
    seconds_per_stamp: float,
    simulated: bool | None,
    provenance: str,
    card: Mapping[str, Any] | None,
    links: list[tuple[str, str]],
    night_rows: list[Mapping[str, Any]] | None = None,
) -> tuple[dict[str, Any], list[Path]]:
    """Write the four files of one report; return its JSON content and the paths."""
    rep = _clean(
        _figures(
            tally,
            kind=kind,
            season=season,
            nights=nights,
            seconds_per_stamp=seconds_per_stamp,
            simulated=simulated,
            provenance=provenance,
            card=card,
        )
    )
    if night_rows is not None:
        rep["night_reports"] = [dict(r) for r in night_rows]
    what = f"season {season}" if kind == "season" else f"season {season}, night {nights[0]}"
    sim = " [SIMULATED DATA]" if simulated else ""
    pngs = {
        "score_histogram": _histogram_png(
            tally.histogram, rep["thresholds"], f"Scores, {what}{sim}"
        ),
        "mdr_fpr": _mdr_fpr_png(
            tally.histogram, tally.confusion, rep["threshold"], f"MDR vs FPR, {what}{sim}"
        ),
    }
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, data in (
        ("json", (json.dumps(rep, indent=2, allow_nan=False) + "\n").encode()),
        ("score_histogram", pngs["score_histogram"]),
        ("mdr_fpr", pngs["mdr_fpr"]),
        ("html", _report_html(rep, pngs, links, _nights_table(night_rows) if night_rows else "")),
    ):
        path = folder / REPORT_FILES[key]
        write_bytes_atomic(path, data)
        paths.append(path)
    return rep, paths


@dataclass(frozen=True)
class ReportSummary:
    """What :func:`write_reports` wrote.

    Attributes
    ----------
    out_dir : pathlib.Path
        The reports folder.
    index_html : pathlib.Path
        ``out_dir/index.html``.
    seasons : dict
        Season name -> the season's ``report.json`` content (all its figures).
    season_dirs : dict
        Season name -> its report folder.
    paths : tuple of pathlib.Path
        Every file written, the index last.
    """

    out_dir: Path
    index_html: Path
    seasons: dict[str, dict[str, Any]]
    season_dirs: dict[str, Path]
    paths: tuple[Path, ...]

    def line(self) -> str:
        """One line for a terminal."""
        parts = []
        for name, rep in self.seasons.items():
            rf = rep["reduction_factor"]
            parts.append(
                f"{name}: {rep['n_nights']} night(s), {rep['n_stamps']:,} stamps, "
                f"{rep['n_candidates']:,} candidates"
                + (f" (x{rf:.1f} fewer)" if rf is not None else "")
                + (" [SIMULATED]" if rep["simulated"] else "")
            )
        return f"report: {'; '.join(parts)}; index {self.index_html}"


def write_reports(
    scores_root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    season: str | None = None,
    seconds_per_stamp: float = 0.5,
    simulated: bool | None = None,
    model_card: Mapping[str, Any] | None = None,
) -> ReportSummary:
    """Write per-season and per-night reports from the Parquet scores.

    Parameters
    ----------
    scores_root : path
        Root of the hive-partitioned scores (``season=<S>/night=<N>/part-*.parquet``).
    out_dir : path
        Reports folder; created if missing. ``index.html`` lists every season report in it,
        including ones written by earlier calls.
    season : str, optional
        Report on this season only; default every season found.
    seconds_per_stamp : float
        Human scanning time per stamp for the time-saved figures.
    simulated : bool, optional
        Whether the scores come from simulated stamps. When None, taken from the model
        card's ``training_data`` (its ``simulated`` flag, else its text).
    model_card : mapping, optional
        The model card (``ModelCard.to_dict()``): target recall, provenance, sha256 check.

    Returns
    -------
    ReportSummary

    Raises
    ------
    ReportError
        When the root holds no Parquet scores, ``season`` is not among them, a file is not in
        the layout or holds unusable values.
    """
    root, out = Path(scores_root), Path(out_dir)
    sec = float(seconds_per_stamp)
    if not (math.isfinite(sec) and sec > 0):
        raise ReportError(f"seconds_per_stamp must be a positive number, got {seconds_per_stamp}")
    if model_card is not None and not isinstance(model_card, Mapping):
        raise ReportError(f"model_card must be a mapping, got {type(model_card).__name__}")
    found = _discover(root)
    if not found:
        raise ReportError(
            f"no Parquet scores under {root} (expected season=<S>/night=<YYYYMMDD>/part-*.parquet)"
        )
    if season is not None:
        if season not in found:
            raise ReportError(
                f"season {season!r} has no scores under {root}; seasons there: "
                f"{', '.join(sorted(found, key=_season_key))}"
            )
        found = {season: found[season]}
    flag, provenance = _provenance(simulated, model_card)
    common = dict(seconds_per_stamp=sec, simulated=flag, provenance=provenance, card=model_card)

    written: list[Path] = []
    seasons: dict[str, dict[str, Any]] = {}
    season_dirs: dict[str, Path] = {}
    for name in sorted(found, key=_season_key):
        season_tally = _Tally()
        night_rows = []
        season_dir = out / name
        for night in sorted(found[name]):
            tally = _read_night(found[name][night], f"season {name} night {night}")
            rep, paths = _write_one(
                season_dir / "nights" / str(night),
                tally,
                kind="night",
                season=name,
                nights=[night],
                links=[
                    ("all seasons", "../../../index.html"),
                    (f"season {name}", "../../report.html"),
                ],
                **common,
            )
            written += paths
            night_rows.append({k: rep[k] for k in _NIGHT_ROW_KEYS})
            season_tally.merge(tally)
        rep, paths = _write_one(
            season_dir,
            season_tally,
            kind="season",
            season=name,
            nights=sorted(found[name]),
            links=[("all seasons", "../index.html")],
            night_rows=night_rows,
            **common,
        )
        written += paths
        seasons[name] = rep
        season_dirs[name] = season_dir

    index = out / "index.html"
    write_bytes_atomic(index, _index_html(_season_reports(out, seasons)))
    written.append(index)
    return ReportSummary(
        out_dir=out,
        index_html=index,
        seasons=seasons,
        season_dirs=season_dirs,
        paths=tuple(written),
    )


def _season_reports(out: Path, fresh: Mapping[str, dict[str, Any]]) -> list[Mapping[str, Any]]:
    """Season reports for the index: those just written plus earlier ones in ``out``."""
    reps: dict[str, Mapping[str, Any]] = {}
    for path in sorted(out.glob(f"*/{REPORT_FILES['json']}")):
        try:
            rep = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # not ours or half-written by someone else: leave it out of the index
        if (
            isinstance(rep, dict)
            and rep.get("schema") == _SCHEMA_ID
            and rep.get("schema_version") == _SCHEMA_VERSION
            and rep.get("kind") == "season"
            and rep.get("season") == path.parent.name
        ):
            reps[rep["season"]] = rep
    reps.update(fresh)
    return [reps[s] for s in sorted(reps, key=_season_key)]
