"""Reading the scores night by night into exact counts and a streaming score histogram.

The scores tree is sink.py's: :func:`s2v_batch.store.scores.published_nights` lists each published night's
part files (staging, manifests and hidden files ignored). Each night is read file by file and batch
by batch, only the needed columns, so memory stays flat whatever the season size. Counts at the
stored threshold (TP/FP/TN/FN, candidates) are exact, taken from ``is_candidate``; ROC AUC and the
operating points come from the :class:`~s2v_batch.metrics.histogram.ScoreHistogram`. Where the scores carry
the survey's own score (ZTF ``drb``, Rubin ``reliability``), the agreement of s2v's candidates with
it is tallied too (:class:`~s2v_batch.metrics.agreement.Agreement`); DES scores have no such column.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from s2v_batch.core.conventions import LABEL_ARTIFACT, LABEL_REAL, LABEL_UNKNOWN
from s2v_batch.core.provenance import UNKNOWN
from s2v_batch.metrics.agreement import SURVEY_SCORE, Agreement
from s2v_batch.metrics.classification import Confusion, MetricsError
from s2v_batch.metrics.histogram import DEFAULT_BINS, ScoreHistogram
from s2v_batch.report.gallery import Picks
from s2v_batch.store import scores as sink


class ReportError(ValueError):
    """The scores cannot be reported on (no data, unknown season, malformed files ...)."""


_REQUIRED = ("score", "is_candidate", "threshold", "label")
_OPTIONAL = (
    "error", "model_version", "model_sha256", "run_id", "scored_at", "data_provenance", "precision"
)  # fmt: skip
_STRING_COLUMNS = [*_OPTIONAL[:4], "data_provenance", "precision"]
_BATCH_ROWS = 65_536
#: Distinct values kept per string column / error message; beyond that only a count.
MAX_DISTINCT = 50


@dataclass
class Distinct:
    """A bounded set of distinct values (a few model versions, run ids, thresholds)."""

    values: set[Any] = field(default_factory=set)
    overflow: bool = False

    def update(self, items: Iterable[Any]) -> None:
        for item in items:
            if item in self.values:
                continue
            if len(self.values) >= MAX_DISTINCT:
                self.overflow = True
                return
            self.values.add(item)

    def merge(self, other: Distinct) -> None:
        self.update(other.values)
        self.overflow |= other.overflow

    def sorted(self) -> list[Any]:
        return sorted(self.values)

    def single(self) -> Any:
        """The one value, or None when there are none or several."""
        return self.sorted()[0] if len(self.values) == 1 and not self.overflow else None


@dataclass
class Tally:
    """Everything a report needs from a set of score rows; mergeable."""

    histogram: ScoreHistogram = field(default_factory=lambda: ScoreHistogram(DEFAULT_BINS))
    n_stamps: int = 0
    n_scored: int = 0
    n_errors: int = 0
    n_candidates: int = 0
    n_inconsistent: int = 0
    n_no_threshold: int = 0
    confusion: Confusion = field(default_factory=lambda: Confusion(0, 0, 0, 0))
    thresholds: Distinct = field(default_factory=Distinct)
    model_versions: Distinct = field(default_factory=Distinct)
    model_sha256s: Distinct = field(default_factory=Distinct)
    run_ids: Distinct = field(default_factory=Distinct)
    #: Where the rows' stamps came from (``unknown`` for rows without the column).
    data_provenances: Distinct = field(default_factory=Distinct)
    #: What the model computed in (``float32`` for rows scored before the column existed).
    precisions: Distinct = field(default_factory=Distinct)
    errors: Counter[str] = field(default_factory=Counter)
    scored_at_min: Any = None
    scored_at_max: Any = None
    #: The rows the galleries may show (None: not collected); needs a ``night``.
    picks: Picks | None = None
    night: int | None = None
    #: s2v's candidates against the survey's own score (None: the scores have none, as DES's).
    agreement: Agreement | None = None

    def merge(self, other: Tally) -> None:
        self.histogram.merge(other.histogram)
        if other.agreement is not None:
            if self.agreement is None:
                a = other.agreement
                self.agreement = Agreement(a.column, a.survey_threshold, a.bins)
            self.agreement.merge(other.agreement)
        if self.picks is not None and other.picks is not None:
            self.picks.merge(other.picks)
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
        for name in (
            "thresholds",
            "model_versions",
            "model_sha256s",
            "run_ids",
            "data_provenances",
            "precisions",
        ):
            getattr(self, name).merge(getattr(other, name))
        self._count_errors(other.errors)
        self._time_range(other.scored_at_min, other.scored_at_max)

    def _count_errors(self, counts: Mapping[str, int]) -> None:
        for msg, n in counts.items():
            key = msg if (msg in self.errors or len(self.errors) < MAX_DISTINCT) else "(other)"
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
        if self.picks is not None and self.night is not None and "stamp_id" in names:
            ids = batch.column("stamp_id").cast(pa.int64()).fill_null(-1)
            ids_ok = ids.to_numpy(zero_copy_only=False)[ok]
            self.picks.add(ids_ok, s, lab, c, t, self.night)
        for col, dest in (
            ("model_version", self.model_versions),
            ("model_sha256", self.model_sha256s),
            ("run_id", self.run_ids),
        ):
            if col in names:
                dest.update(v for v in batch.column(col).unique().to_pylist() if v is not None)
        if "data_provenance" in names:
            kinds = batch.column("data_provenance").unique().to_pylist()
            self.data_provenances.update(UNKNOWN if k is None else k for k in kinds)
        else:  # scores written before the column existed
            self.data_provenances.update([UNKNOWN])
        if "precision" in names:
            kinds = batch.column("precision").unique().to_pylist()
            self.precisions.update("float32" if k is None else k for k in kinds)
        else:  # scored before there was a choice: float32
            self.precisions.update(["float32"])
        if "scored_at" in names:
            col = batch.column("scored_at")
            if col.null_count < len(col):
                mm = pc.min_max(col)
                self._time_range(mm["min"].as_py(), mm["max"].as_py())
        if self.agreement is not None:
            self.agreement.add_batch(batch)


def discover(root: Path, season: str | None = None) -> dict[str, dict[int, list[Path]]]:
    """Every published night's part files (of one season, when given), through sink's layout.

    Raises
    ------
    ReportError
        No scores folder, no Parquet scores in it, an unknown ``season``, or a file outside the
        layout.
    """
    if not root.exists():
        raise ReportError(f"scores folder {root} does not exist")
    if not root.is_dir():
        raise ReportError(f"scores root {root} is not a folder")
    try:
        found = sink.published_nights(root, season)
        if season is not None and not found:
            others = sink.published_nights(root)
            if others:
                raise ReportError(
                    f"season {season!r} has no scores under {root}; seasons there: "
                    f"{', '.join(sorted(others, key=season_key))}"
                )
    except sink.ScoresLayoutError as exc:
        raise ReportError(str(exc)) from None
    if not found:
        raise ReportError(
            f"no Parquet scores under {root} (expected season=<S>/night=<YYYYMMDD>/part-*.parquet)"
        )
    return found


def season_key(season: str) -> tuple[int, int, str]:
    """Sort key: SV first, then Y1, Y2 ... by number, then any other name."""
    if season == "SV":
        return (0, 0, season)
    m = re.fullmatch(r"Y(\d+)", season)
    return (1, int(m.group(1)), season) if m else (2, 0, season)


def read_night(
    paths: list[Path], where: str, night: int | None = None, picks: Picks | None = None
) -> Tally:
    """Tally one night's part files, one file and one batch at a time.

    With ``picks`` (and the ``night``), the rows the galleries may show are kept as well.

    ``ParquetFile.iter_batches`` decodes one row group at a time, and the string columns
    (the same few model versions and run ids on every row) stay dictionary-encoded: this keeps
    memory to about one row group, where a dataset scan with read-ahead held several.
    """
    tally = Tally(picks=picks, night=night)
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
        survey_cols = [c for c in SURVEY_SCORE.values() if c in names]
        if survey_cols and tally.agreement is None:
            tally.agreement = Agreement(survey_cols[0])
        with pf:
            extra = ("stamp_id",) if picks is not None else ()
            extra += tuple(survey_cols[:1])
            cols = [c for c in (*_REQUIRED, *_OPTIONAL, *extra) if c in names]
            try:
                for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=cols):
                    tally.add_batch(batch, where)
            except (pa.ArrowException, OSError) as exc:
                raise ReportError(f"{where}: cannot read {path} ({exc})") from None
    return tally


def night_identity(root: Path, season: str, night: int, parts: list[Path]) -> dict[str, Any]:
    """What identifies one night's published scores: its manifest's run, else its files.

    The sink writes a manifest with every published night (a new ``run_id`` each time a night is
    scored); scores written by someone else may have none, and then the part files' names, sizes
    and modification times stand for them.
    """
    m = sink.read_manifest(root, season, night) or {}
    if m.get("run_id"):
        keys = ("run_id", "model_sha256", "n_stamps", "night_fingerprint", "store_fingerprint",
                "labels_fingerprint")  # fmt: skip
        return {k: m.get(k) for k in keys if k in m}
    base = sink.night_dir(root, season, night)
    files = []
    for p in parts:
        try:
            st = p.stat()
        except OSError:
            continue
        files.append([p.relative_to(base).as_posix(), st.st_size, st.st_mtime_ns])
    return {"files": files}
