"""Pure numpy metrics for real/artifact classification (DESIGN.md section 3).

Positive class = real (label 1); label 0 = artifact; label -1 = unknown, ignored by every
labelled metric. A stamp is a candidate when ``score >= threshold``.

Two families of functions:

* exact ones on in-memory arrays (:func:`confusion`, :func:`roc_auc`, :func:`roc_curve`, ...);
* :class:`ScoreHistogram`, a streaming, mergeable summary of scores per class on fine fixed
  bins over [0, 1], which reports use so they never hold a season's rows in memory.

Rates with a zero denominator are ``nan``, never an exception.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .conventions import LABEL_ARTIFACT, LABEL_REAL, LABEL_UNKNOWN

__all__ = [
    "DEFAULT_BINS",
    "STANDARD_FPRS",
    "STANDARD_MDRS",
    "WORKING_DAY_HOURS",
    "Confusion",
    "MetricsError",
    "ScoreHistogram",
    "confusion",
    "fpr_at_mdr",
    "mdr_at_fpr",
    "mdr_fpr_curve",
    "roc_auc",
    "roc_curve",
    "standard_operating_points",
    "threshold_for_recall",
    "time_saved",
]

#: Bins of :class:`ScoreHistogram` over [0, 1]; a power of two, so bin edges are exact floats.
DEFAULT_BINS = 2**16
#: Hours in the working day of :func:`time_saved`.
WORKING_DAY_HOURS = 8.0
#: FPRs at which autoscan and Ayyar et al. (2022) quote the missed detection rate.
STANDARD_FPRS: tuple[float, ...] = (0.01, 0.025, 0.04)
#: MDRs at which they quote the false positive rate.
STANDARD_MDRS: tuple[float, ...] = (0.02, 0.03, 0.05)


class MetricsError(ValueError):
    """Invalid input to a metric (shapes, NaN scores, unknown label codes ...)."""


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


@dataclass(frozen=True)
class Confusion:
    """Confusion counts at one threshold, positive class = real.

    Rates whose denominator is zero are ``nan``.
    """

    tp: int
    fp: int
    tn: int
    fn: int

    def __post_init__(self) -> None:
        for name in ("tp", "fp", "tn", "fn"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise MetricsError(f"confusion count {name} must be an integer >= 0, got {value!r}")
            object.__setattr__(self, name, int(value))

    def __add__(self, other: Confusion) -> Confusion:
        if not isinstance(other, Confusion):
            return NotImplemented
        return Confusion(
            self.tp + other.tp, self.fp + other.fp, self.tn + other.tn, self.fn + other.fn
        )

    @property
    def n_real(self) -> int:
        """Labelled real stamps (TP + FN)."""
        return self.tp + self.fn

    @property
    def n_artifact(self) -> int:
        """Labelled artifacts (FP + TN)."""
        return self.fp + self.tn

    @property
    def n_labelled(self) -> int:
        """All labelled stamps."""
        return self.tp + self.fp + self.tn + self.fn

    @property
    def n_candidates(self) -> int:
        """Labelled stamps at or above the threshold (TP + FP)."""
        return self.tp + self.fp

    @property
    def recall(self) -> float:
        """Recall (efficiency) TP / (TP + FN)."""
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def mdr(self) -> float:
        """Missed detection rate FN / (TP + FN) = 1 - recall."""
        return _ratio(self.fn, self.tp + self.fn)

    @property
    def fpr(self) -> float:
        """False positive rate FP / (FP + TN)."""
        return _ratio(self.fp, self.fp + self.tn)

    @property
    def fdr(self) -> float:
        """False discovery rate FP / (TP + FP)."""
        return _ratio(self.fp, self.tp + self.fp)

    @property
    def precision(self) -> float:
        """Precision (purity) TP / (TP + FP) = 1 - FDR."""
        return _ratio(self.tp, self.tp + self.fp)

    def to_dict(self) -> dict[str, float | int]:
        """Counts and rates as a flat dict (rates may be ``nan``)."""
        return {
            "n_labelled": self.n_labelled,
            "n_real": self.n_real,
            "n_artifact": self.n_artifact,
            "tp": self.tp,
            "fp": self.fp,
            "tn": self.tn,
            "fn": self.fn,
            "recall": self.recall,
            "mdr": self.mdr,
            "fpr": self.fpr,
            "fdr": self.fdr,
            "precision": self.precision,
        }


# -- input checks ----------------------------------------------------------------------------


def _check(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return (float64 scores, int8 labels), both 1-D and of equal length."""
    try:
        s = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MetricsError(f"scores must be numbers: {exc}") from None
    lab = np.asarray(labels)
    if s.ndim != 1 or lab.ndim != 1:
        raise MetricsError(
            f"scores and labels must be 1-D arrays, got shapes {s.shape} and {lab.shape}"
        )
    if s.shape != lab.shape:
        raise MetricsError(f"{s.size} scores but {lab.size} labels: they must pair up one to one")
    if np.isnan(s).any():
        raise MetricsError(f"{int(np.isnan(s).sum())} scores are NaN; drop failed stamps first")
    if lab.dtype.kind == "b":
        lab = lab.astype(np.int8)
    elif lab.dtype.kind not in "iuf":
        raise MetricsError(f"labels must be integers 1/0/-1, got dtype {lab.dtype}")
    bad = (lab != LABEL_REAL) & (lab != LABEL_ARTIFACT) & (lab != LABEL_UNKNOWN)
    if bad.any():
        examples = np.unique(lab[bad])[:5].tolist()
        raise MetricsError(
            f"labels must be 1 (real), 0 (artifact) or -1 (unknown); found {examples}"
        )
    return s, lab.astype(np.int8)


def _labelled(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Scores and a boolean 'is real' array for the labelled stamps only."""
    s, lab = _check(scores, labels)
    keep = lab != LABEL_UNKNOWN
    return s[keep], lab[keep] == LABEL_REAL


# -- exact metrics ---------------------------------------------------------------------------


def confusion(scores: Any, labels: Any, threshold: float) -> Confusion:
    """Confusion counts at ``threshold`` (candidate when ``score >= threshold``).

    Parameters
    ----------
    scores : array_like
        Probability of real, one per stamp.
    labels : array_like
        1 real, 0 artifact, -1 unknown (ignored).
    threshold : float
        Candidate threshold. The comparison is made in float64; pass the threshold as stored
        (float32 in the Parquet scores) to reproduce ``is_candidate`` exactly.

    Returns
    -------
    Confusion
    """
    s, real = _labelled(scores, labels)
    if math.isnan(float(threshold)):
        raise MetricsError("threshold is NaN")
    cand = s >= float(threshold)
    tp = int(np.count_nonzero(cand & real))
    fp = int(np.count_nonzero(cand & ~real))
    fn = int(np.count_nonzero(real)) - tp
    tn = int(real.size) - tp - fp - fn
    return Confusion(tp=tp, fp=fp, tn=tn, fn=fn)


def _auc_from_groups(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUC from per-group class counts, groups sorted by ascending score.

    Within a group scores tie: each real/artifact pair in it counts one half.
    """
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    neg_below = np.cumsum(neg) - neg
    if 2 * n_pos * n_neg < 2**62:
        # Integer numerator (twice the U statistic) keeps the result exact.
        twice_u = 2 * int(np.dot(pos.astype(np.int64), neg_below.astype(np.int64)))
        twice_u += int(np.dot(pos.astype(np.int64), neg.astype(np.int64)))
        return twice_u / (2 * n_pos * n_neg)
    u = np.dot(pos.astype(np.float64), neg_below + 0.5 * neg)
    return float(u / (float(n_pos) * float(n_neg)))


def roc_auc(scores: Any, labels: Any) -> float:
    """Exact ROC AUC (Mann-Whitney U / (n_real * n_artifact)); ties count one half.

    Parameters
    ----------
    scores, labels : array_like
        As in :func:`confusion`; unknown labels are ignored.

    Returns
    -------
    float
        AUC in [0, 1]; ``nan`` unless both classes are present.
    """
    s, real = _labelled(scores, labels)
    if s.size == 0:
        return math.nan
    _, inv = np.unique(s, return_inverse=True)
    inv = inv.ravel()
    n_groups = int(inv.max()) + 1
    pos = np.bincount(inv[real], minlength=n_groups)
    neg = np.bincount(inv[~real], minlength=n_groups)
    return _auc_from_groups(pos, neg)


def _curve_from_groups(
    thresholds_desc: np.ndarray, pos_desc: np.ndarray, neg_desc: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, mdr, thresholds) from class counts per distinct threshold, highest first.

    A first point at threshold +inf (nothing selected) is prepended, as scikit-learn does.
    MDR is FN / n_real, not 1 - TPR, so it equals :attr:`Confusion.mdr` to the last bit.
    """
    tp = np.concatenate([[0], np.cumsum(pos_desc)])
    fp = np.concatenate([[0], np.cumsum(neg_desc)])
    n_pos, n_neg = tp[-1], fp[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = tp / n_pos if n_pos else np.full(tp.shape, np.nan)
        mdr = (n_pos - tp) / n_pos if n_pos else np.full(tp.shape, np.nan)
        fpr = fp / n_neg if n_neg else np.full(fp.shape, np.nan)
    thr = np.concatenate([[np.inf], np.asarray(thresholds_desc, dtype=np.float64)])
    return fpr.astype(np.float64), tpr.astype(np.float64), mdr.astype(np.float64), thr


def _exact_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    s, real = _labelled(scores, labels)
    order = np.argsort(-s, kind="stable")
    s_desc, real_desc = s[order], real[order]
    # Last index of each run of equal scores: one point per distinct threshold.
    is_end = np.ones(s_desc.shape, dtype=bool)
    is_end[:-1] = s_desc[1:] != s_desc[:-1]
    ends = np.flatnonzero(is_end)
    cum_pos = np.cumsum(real_desc, dtype=np.int64)[ends]
    pos = np.diff(cum_pos, prepend=0)
    neg = np.diff(ends + 1 - cum_pos, prepend=0)
    return _curve_from_groups(s_desc[ends], pos, neg)


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve at every distinct score.

    Parameters
    ----------
    scores, labels : array_like
        As in :func:`confusion`; unknown labels are ignored.

    Returns
    -------
    fpr, tpr, thresholds : numpy.ndarray
        Point ``i`` is the operating point of candidates ``score >= thresholds[i]``.
        ``thresholds`` decreases from ``+inf`` (no candidate); ``fpr`` and ``tpr`` never
        decrease. A rate is ``nan`` when its class is absent.
    """
    fpr, tpr, _, thr = _exact_curve(scores, labels)
    return fpr, tpr, thr


def mdr_fpr_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Missed detection rate against false positive rate (the autoscan plot).

    Returns
    -------
    fpr, mdr, thresholds : numpy.ndarray
        As :func:`roc_curve` with ``mdr = 1 - tpr``: ``fpr`` rises, ``mdr`` falls as the
        threshold decreases.
    """
    fpr, _, mdr, thr = _exact_curve(scores, labels)
    return fpr, mdr, thr


def _mdr_at_fpr(fpr: np.ndarray, mdr: np.ndarray, target: float) -> float:
    ok = fpr <= target
    return float(mdr[ok].min()) if ok.any() else math.nan


def _fpr_at_mdr(fpr: np.ndarray, mdr: np.ndarray, target: float) -> float:
    ok = mdr <= target
    return float(fpr[ok].min()) if ok.any() else math.nan


def _check_rate(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise MetricsError(f"{name} must be in [0, 1], got {value}")
    return value


def mdr_at_fpr(scores: Any, labels: Any, fpr: float) -> float:
    """Lowest missed detection rate among thresholds whose FPR is at most ``fpr``.

    No interpolation: the operating point is a real threshold, so the quoted MDR is achievable.

    Parameters
    ----------
    scores, labels : array_like
        As in :func:`confusion`.
    fpr : float
        Largest acceptable false positive rate, e.g. 0.01.

    Returns
    -------
    float
        ``nan`` unless both classes are present.
    """
    target = _check_rate("fpr", fpr)
    f, m, _ = mdr_fpr_curve(scores, labels)
    return _mdr_at_fpr(f, m, target)


def fpr_at_mdr(scores: Any, labels: Any, mdr: float) -> float:
    """Lowest false positive rate among thresholds whose MDR is at most ``mdr``.

    Parameters
    ----------
    scores, labels : array_like
        As in :func:`confusion`.
    mdr : float
        Largest acceptable missed detection rate, e.g. 0.02.

    Returns
    -------
    float
        ``nan`` unless both classes are present.
    """
    target = _check_rate("mdr", mdr)
    f, m, _ = mdr_fpr_curve(scores, labels)
    return _fpr_at_mdr(f, m, target)


def _operating_points(fpr: np.ndarray, mdr: np.ndarray) -> dict[str, dict[str, float]]:
    return {
        "mdr_at_fpr": {f"{t:g}": _mdr_at_fpr(fpr, mdr, t) for t in STANDARD_FPRS},
        "fpr_at_mdr": {f"{t:g}": _fpr_at_mdr(fpr, mdr, t) for t in STANDARD_MDRS},
    }


def standard_operating_points(scores: Any, labels: Any) -> dict[str, dict[str, float]]:
    """MDR at FPR 1%, 2.5%, 4% and FPR at MDR 2%, 3%, 5% (autoscan, Ayyar et al. 2022).

    Returns
    -------
    dict
        ``{"mdr_at_fpr": {"0.01": .., "0.025": .., "0.04": ..},
        "fpr_at_mdr": {"0.02": .., "0.03": .., "0.05": ..}}``; values ``nan`` unless both
        classes are present.
    """
    f, m, _ = mdr_fpr_curve(scores, labels)
    return _operating_points(f, m)


def _min_count_for_recall(n_pos: int, target: float) -> int:
    """Smallest k with ``k / n_pos >= target``, computed as :attr:`Confusion.recall` does."""
    k = min(n_pos, max(1, math.ceil(target * n_pos)))
    # ceil(target * n) can be off by one in floating point (0.99 * 100 = 99.00000000000001).
    while k > 1 and (k - 1) / n_pos >= target:
        k -= 1
    while k < n_pos and k / n_pos < target:
        k += 1
    return k


def _check_target_recall(target_recall: float) -> float:
    target = float(target_recall)
    if not 0.0 < target <= 1.0:
        raise MetricsError(f"target_recall must be in (0, 1], got {target_recall}")
    return target


def threshold_for_recall(scores: Any, labels: Any, target_recall: float = 0.99) -> float:
    """Highest threshold whose recall on the labelled reals is at least ``target_recall``.

    It is the score of the k-th highest-scoring real stamp, k the fewest reals that reach the
    target, so ``confusion(scores, labels, t).recall >= target_recall`` holds exactly. Being a
    score, it survives storage as float32 unchanged when the scores are float32.

    Parameters
    ----------
    scores, labels : array_like
        As in :func:`confusion`.
    target_recall : float
        In (0, 1]; 0.99 as autoscan and space2vec chose.

    Returns
    -------
    float

    Raises
    ------
    MetricsError
        When there is no labelled real stamp to choose from.
    """
    target = _check_target_recall(target_recall)
    s, real = _labelled(scores, labels)
    pos = np.sort(s[real])[::-1]
    if pos.size == 0:
        raise MetricsError("no labelled real stamps (label 1): cannot choose a threshold")
    k = _min_count_for_recall(int(pos.size), target)
    return float(pos[k - 1])


def time_saved(
    n_stamps: int,
    n_candidates: int,
    seconds_per_stamp: float = 0.5,
    n_false_positives: int | None = None,
) -> dict[str, float | None]:
    """Human scanning time with and without the model (DESIGN.md section 3).

    Parameters
    ----------
    n_stamps : int
        Stamps a human would scan without the model.
    n_candidates : int
        Stamps left to scan with it (``score >= threshold``).
    seconds_per_stamp : float
        Human time per stamp; 0.5 s as in autoscan and space2vec.
    n_false_positives : int, optional
        Candidates that are artifacts, when labels tell.

    Returns
    -------
    dict
        ``hours_all``, ``hours_candidates``, ``hours_saved``, ``working_days_saved`` (8 h days),
        ``reduction_factor`` (stamps / candidates; ``nan`` with no candidate), ``hours_wasted``
        (false positives x seconds; ``None`` when unknown) and ``seconds_per_stamp``.
    """
    for name, value in (("n_stamps", n_stamps), ("n_candidates", n_candidates)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise MetricsError(f"{name} must be an integer >= 0, got {value!r}")
    if n_candidates > n_stamps:
        raise MetricsError(f"n_candidates ({n_candidates}) exceeds n_stamps ({n_stamps})")
    sec = float(seconds_per_stamp)
    if not (math.isfinite(sec) and sec > 0):
        raise MetricsError(f"seconds_per_stamp must be a positive number, got {seconds_per_stamp}")
    hours_all = n_stamps * sec / 3600.0
    hours_cand = n_candidates * sec / 3600.0
    wasted: float | None = None
    if n_false_positives is not None:
        if (
            isinstance(n_false_positives, bool)
            or not isinstance(n_false_positives, int | np.integer)
            or not 0 <= n_false_positives <= n_candidates
        ):
            raise MetricsError(
                f"n_false_positives must be an integer in [0, n_candidates={n_candidates}], "
                f"got {n_false_positives!r}"
            )
        wasted = n_false_positives * sec / 3600.0
    saved = hours_all - hours_cand
    return {
        "seconds_per_stamp": sec,
        "hours_all": hours_all,
        "hours_candidates": hours_cand,
        "hours_saved": saved,
        "working_days_saved": saved / WORKING_DAY_HOURS,
        "reduction_factor": _ratio(n_stamps, n_candidates),
        "hours_wasted": wasted,
    }


# -- streaming histogram ---------------------------------------------------------------------


class ScoreHistogram:
    """Counts of scores per class on ``n_bins`` equal bins over [0, 1]; streaming and mergeable.

    Bin ``i`` holds scores in ``[i / n_bins, (i + 1) / n_bins)``; the last bin also holds 1.0.
    Classes: ``real`` (label 1), ``artifact`` (0), ``unknown`` (-1).

    Accuracy: every figure evaluated at a bin's lower edge (``i / n_bins``, ``i < n_bins``) is
    exact, because "score >= edge" selects whole bins. :meth:`confusion` at any other threshold
    counts the whole bin that holds the threshold as candidates, so it may include stamps
    scoring up to one bin width (1.5e-5 with 2**16 bins) below it. :meth:`roc_auc` treats
    stamps in one bin as tied: it differs from the exact AUC by at most half the fraction of
    real/artifact pairs that share a bin.

    Parameters
    ----------
    n_bins : int
        Number of bins; the default 2**16 keeps edges exact and costs 1.5 MiB.
    """

    CLASSES: tuple[str, str, str] = ("real", "artifact", "unknown")
    _FORMAT = "s2v-batch/score-histogram"
    _VERSION = 1

    def __init__(self, n_bins: int = DEFAULT_BINS) -> None:
        if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
            raise MetricsError(f"n_bins must be a positive integer, got {n_bins!r}")
        self.n_bins = int(n_bins)
        self._counts = np.zeros((3, self.n_bins), dtype=np.int64)

    # -- building --------------------------------------------------------------------------

    def add(self, scores: Any, labels: Any = None) -> ScoreHistogram:
        """Count ``scores`` (in [0, 1]) by class; ``labels=None`` means all unknown.

        Returns
        -------
        ScoreHistogram
            ``self``, for chaining.
        """
        if labels is None:
            labels = np.full(np.shape(scores), LABEL_UNKNOWN, dtype=np.int8)
        s, lab = _check(scores, labels)
        if s.size and (s.min() < 0.0 or s.max() > 1.0):
            n_out = int(np.count_nonzero((s < 0.0) | (s > 1.0)))
            raise MetricsError(f"{n_out} scores fall outside [0, 1]; a score is a probability")
        # Scaling by a power of two is exact, so bin i is exactly [i/n, (i+1)/n).
        idx = np.minimum((s * self.n_bins).astype(np.int64), self.n_bins - 1)
        cls = np.where(lab == LABEL_REAL, 0, np.where(lab == LABEL_ARTIFACT, 1, 2))
        flat = np.bincount(cls * self.n_bins + idx, minlength=3 * self.n_bins)
        self._counts += flat.reshape(3, self.n_bins)
        return self

    def merge(self, other: ScoreHistogram) -> ScoreHistogram:
        """Add ``other``'s counts into this histogram (in place).

        Returns
        -------
        ScoreHistogram
            ``self``, for chaining.
        """
        if not isinstance(other, ScoreHistogram):
            raise MetricsError(f"can only merge a ScoreHistogram, got {type(other).__name__}")
        if other.n_bins != self.n_bins:
            raise MetricsError(
                f"cannot merge histograms with {self.n_bins} and {other.n_bins} bins"
            )
        self._counts += other._counts
        return self

    def copy(self) -> ScoreHistogram:
        """An independent copy."""
        out = ScoreHistogram(self.n_bins)
        out._counts[:] = self._counts
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScoreHistogram):
            return NotImplemented
        return self.n_bins == other.n_bins and bool(np.array_equal(self._counts, other._counts))

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"ScoreHistogram(n_bins={self.n_bins}, real={self.n_real}, "
            f"artifact={self.n_artifact}, unknown={self.n_unknown})"
        )

    # -- counts ----------------------------------------------------------------------------

    @property
    def counts(self) -> np.ndarray:
        """Read-only (3, n_bins) counts, rows in :attr:`CLASSES` order."""
        view = self._counts.view()
        view.flags.writeable = False
        return view

    @property
    def edges(self) -> np.ndarray:
        """The ``n_bins + 1`` bin edges."""
        return np.arange(self.n_bins + 1, dtype=np.float64) / self.n_bins

    @property
    def n_real(self) -> int:
        """Stamps labelled real."""
        return int(self._counts[0].sum())

    @property
    def n_artifact(self) -> int:
        """Stamps labelled artifact."""
        return int(self._counts[1].sum())

    @property
    def n_unknown(self) -> int:
        """Stamps without a label."""
        return int(self._counts[2].sum())

    @property
    def n_total(self) -> int:
        """All stamps counted."""
        return int(self._counts.sum())

    def coarsen(self, n_out: int) -> tuple[np.ndarray, np.ndarray]:
        """Sum groups of bins, e.g. for plotting.

        Parameters
        ----------
        n_out : int
            Number of output bins; must divide ``n_bins``.

        Returns
        -------
        edges : numpy.ndarray
            ``n_out + 1`` edges.
        counts : numpy.ndarray
            (3, n_out) counts, rows in :attr:`CLASSES` order.
        """
        if n_out < 1 or self.n_bins % n_out:
            raise MetricsError(f"n_out={n_out} must be a positive divisor of n_bins={self.n_bins}")
        counts = self._counts.reshape(3, n_out, self.n_bins // n_out).sum(axis=2)
        return np.linspace(0.0, 1.0, n_out + 1), counts

    # -- metrics ---------------------------------------------------------------------------

    def _bin_of(self, threshold: float) -> int:
        t = float(threshold)
        if math.isnan(t):
            raise MetricsError("threshold is NaN")
        if t <= 0.0:
            return 0
        if t > 1.0:
            return self.n_bins
        return min(int(t * self.n_bins), self.n_bins - 1)

    def confusion(self, threshold: float) -> Confusion:
        """Confusion counts with candidates ``score >= threshold``, to one bin width.

        Exact when ``threshold`` is a bin edge; otherwise the bin holding ``threshold`` counts
        as candidates (see the class notes).
        """
        b = self._bin_of(threshold)
        real, art = self._counts[0], self._counts[1]
        tp, fp = int(real[b:].sum()), int(art[b:].sum())
        return Confusion(tp=tp, fp=fp, tn=int(art.sum()) - fp, fn=int(real.sum()) - tp)

    def n_at_or_above(self, threshold: float) -> int:
        """Stamps of any class at or above ``threshold`` (to one bin width, as :meth:`confusion`)."""
        return int(self._counts[:, self._bin_of(threshold) :].sum())

    def roc_auc(self) -> float:
        """ROC AUC with stamps in one bin as ties; ``nan`` unless both classes are present."""
        return _auc_from_groups(self._counts[0], self._counts[1])

    def roc_curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fpr, tpr, thresholds) at the lower edge of each bin holding labelled stamps.

        Same layout as :func:`roc_curve`; every point is exact.
        """
        fpr, tpr, _, thr = self._curve()
        return fpr, tpr, thr

    def mdr_fpr_curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fpr, mdr, thresholds) as :func:`mdr_fpr_curve`, at bin edges."""
        fpr, _, mdr, thr = self._curve()
        return fpr, mdr, thr

    def _curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        real, art = self._counts[0], self._counts[1]
        nz = np.flatnonzero((real + art) > 0)[::-1]
        return _curve_from_groups(nz / self.n_bins, real[nz], art[nz])

    def mdr_at_fpr(self, fpr: float) -> float:
        """As :func:`mdr_at_fpr`, over bin-edge thresholds."""
        f, m, _ = self.mdr_fpr_curve()
        return _mdr_at_fpr(f, m, _check_rate("fpr", fpr))

    def fpr_at_mdr(self, mdr: float) -> float:
        """As :func:`fpr_at_mdr`, over bin-edge thresholds."""
        f, m, _ = self.mdr_fpr_curve()
        return _fpr_at_mdr(f, m, _check_rate("mdr", mdr))

    def standard_operating_points(self) -> dict[str, dict[str, float]]:
        """As :func:`standard_operating_points`, over bin-edge thresholds."""
        f, m, _ = self.mdr_fpr_curve()
        return _operating_points(f, m)

    def threshold_for_recall(self, target_recall: float = 0.99) -> float:
        """Highest bin edge whose recall is at least ``target_recall`` (exact at that edge).

        Raises
        ------
        MetricsError
            When no stamp is labelled real.
        """
        target = _check_target_recall(target_recall)
        real = self._counts[0]
        n_pos = int(real.sum())
        if n_pos == 0:
            raise MetricsError("no labelled real stamps (label 1): cannot choose a threshold")
        k = _min_count_for_recall(n_pos, target)
        at_or_above = np.cumsum(real[::-1])[::-1]  # reals in bins >= i
        i = int(np.flatnonzero(at_or_above >= k)[-1])
        return i / self.n_bins

    # -- serialisation ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready sparse form: the non-empty bins of each class and their counts."""
        classes = {}
        for name, row in zip(self.CLASSES, self._counts, strict=True):
            nz = np.flatnonzero(row)
            classes[name] = {"bins": nz.tolist(), "counts": row[nz].tolist()}
        return {
            "format": self._FORMAT,
            "version": self._VERSION,
            "n_bins": self.n_bins,
            "classes": classes,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoreHistogram:
        """Rebuild a histogram written by :meth:`to_dict`.

        Raises
        ------
        MetricsError
            When ``data`` is not such a dict or its counts are inconsistent.
        """
        if not isinstance(data, Mapping) or data.get("format") != cls._FORMAT:
            raise MetricsError(f"not a serialised ScoreHistogram (expected format {cls._FORMAT!r})")
        if data.get("version") != cls._VERSION:
            raise MetricsError(f"unsupported ScoreHistogram version {data.get('version')!r}")
        out = cls(data.get("n_bins"))  # type: ignore[arg-type]
        classes = data.get("classes")
        if not isinstance(classes, Mapping) or set(classes) != set(cls.CLASSES):
            raise MetricsError(f"ScoreHistogram classes must be exactly {list(cls.CLASSES)}")
        for row, name in enumerate(cls.CLASSES):
            entry = classes[name]
            try:
                bins = np.asarray(entry["bins"], dtype=np.int64)
                counts = np.asarray(entry["counts"], dtype=np.int64)
            except (KeyError, TypeError, ValueError) as exc:
                raise MetricsError(
                    f"class {name!r}: bins/counts must be integer lists ({exc})"
                ) from None
            if bins.ndim != 1 or bins.shape != counts.shape:
                raise MetricsError(f"class {name!r}: bins and counts must be equal-length lists")
            if bins.size and (bins.min() < 0 or bins.max() >= out.n_bins):
                raise MetricsError(f"class {name!r}: bin index outside [0, {out.n_bins})")
            if np.unique(bins).size != bins.size:
                raise MetricsError(f"class {name!r}: repeated bin index")
            if (counts < 0).any():
                raise MetricsError(f"class {name!r}: negative count")
            out._counts[row, bins] = counts
        return out
