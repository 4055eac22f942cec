"""Pure numpy metrics for real/artifact classification (DESIGN.md section 3).

Positive class = real (label 1); label 0 = artifact; label -1 = unknown, ignored by every
labelled metric. A stamp is a candidate when ``score >= threshold``.

Exact metrics on in-memory arrays (:func:`confusion`, :func:`roc_auc`, :func:`roc_curve`,
operating points, :func:`threshold_for_recall`). The arithmetic on class
counts per group of tied scores (AUC, curves, operating points) is shared with
:class:`s2v_batch.metrics.histogram.ScoreHistogram`, the streaming summary the reports use.

Rates with a zero denominator are ``nan``, never an exception.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from s2v_batch.core.conventions import LABEL_ARTIFACT, LABEL_REAL, LABEL_UNKNOWN

__all__ = [
    "STANDARD_FPRS",
    "STANDARD_MDRS",
    "Confusion",
    "MetricsError",
    "confusion",
    "fpr_at_mdr",
    "mdr_at_fpr",
    "mdr_fpr_curve",
    "roc_auc",
    "roc_curve",
    "standard_operating_points",
    "threshold_for_recall",
]

#: FPRs at which autoscan and Ayyar et al. (2022) quote the missed detection rate.
STANDARD_FPRS: tuple[float, ...] = (0.01, 0.025, 0.04)
#: MDRs at which they quote the false positive rate.
STANDARD_MDRS: tuple[float, ...] = (0.02, 0.03, 0.05)


class MetricsError(ValueError):
    """Invalid input to a metric (shapes, NaN scores, unknown label codes ...)."""


# The helpers below without a place in __all__ are the building blocks that
# metrics.histogram and metrics.timesaved share with this module.


def safe_ratio(num: float, den: float) -> float:
    """``num / den``, NaN where ``den`` is 0 (a rate with nothing to count is undefined)."""
    return float(num) / float(den) if den else math.nan


def is_integer(value: Any) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


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
            if not is_integer(value) or value < 0:
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
        return safe_ratio(self.tp, self.tp + self.fn)

    @property
    def mdr(self) -> float:
        """Missed detection rate FN / (TP + FN) = 1 - recall."""
        return safe_ratio(self.fn, self.tp + self.fn)

    @property
    def fpr(self) -> float:
        """False positive rate FP / (FP + TN)."""
        return safe_ratio(self.fp, self.fp + self.tn)

    @property
    def fdr(self) -> float:
        """False discovery rate FP / (TP + FP)."""
        return safe_ratio(self.fp, self.tp + self.fp)

    @property
    def precision(self) -> float:
        """Precision (purity) TP / (TP + FP) = 1 - FDR."""
        return safe_ratio(self.tp, self.tp + self.fp)

    #: Keys of :meth:`to_dict`, in order: the counts, then the rates.
    _KEYS: ClassVar[list[str]] = (
        "n_labelled n_real n_artifact tp fp tn fn recall mdr fpr fdr precision".split()
    )

    def to_dict(self) -> dict[str, float | int]:
        """Counts and rates as a flat dict (rates may be ``nan``)."""
        return {key: getattr(self, key) for key in self._KEYS}


# -- input checks ----------------------------------------------------------------------------


def checked_scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
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
    s, lab = checked_scores_labels(scores, labels)
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


def auc_from_groups(pos: np.ndarray, neg: np.ndarray) -> float:
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


def _score_groups(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct scores of the labelled stamps, highest first; reals and artifacts at each."""
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
    return s_desc[ends], pos, neg


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
    _, pos, neg = _score_groups(scores, labels)
    return auc_from_groups(pos[::-1], neg[::-1])


def curve_from_groups(
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
    return curve_from_groups(*_score_groups(scores, labels))


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


def lowest_within(
    curve: tuple[np.ndarray, np.ndarray, np.ndarray], bounded: str, limit: float
) -> float:
    """The lowest of the two rates of an (fpr, mdr, thresholds) curve where the other is bounded.

    ``bounded="fpr"``: the lowest MDR among points with FPR <= ``limit``; ``bounded="mdr"``: the
    lowest FPR among points with MDR <= ``limit``. ``nan`` when no point qualifies.
    """
    limit = float(limit)
    if not 0.0 <= limit <= 1.0:
        raise MetricsError(f"{bounded} must be in [0, 1], got {limit}")
    fpr, mdr, _ = curve
    bound, value = (fpr, mdr) if bounded == "fpr" else (mdr, fpr)
    ok = bound <= limit
    return float(value[ok].min()) if ok.any() else math.nan


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
    return lowest_within(mdr_fpr_curve(scores, labels), "fpr", fpr)


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
    return lowest_within(mdr_fpr_curve(scores, labels), "mdr", mdr)


def operating_points_from(
    curve: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> dict[str, dict[str, float]]:
    """The standard operating points (:data:`STANDARD_FPRS`, :data:`STANDARD_MDRS`) of a curve."""
    return {
        "mdr_at_fpr": {f"{t:g}": lowest_within(curve, "fpr", t) for t in STANDARD_FPRS},
        "fpr_at_mdr": {f"{t:g}": lowest_within(curve, "mdr", t) for t in STANDARD_MDRS},
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
    return operating_points_from(mdr_fpr_curve(scores, labels))


def reals_needed(n_pos: int, target_recall: float) -> int:
    """Smallest k with ``k / n_pos >= target_recall``, computed as :attr:`Confusion.recall` does.

    Raises
    ------
    MetricsError
        For a target outside (0, 1], or no labelled real stamp (``n_pos == 0``).
    """
    target = float(target_recall)
    if not 0.0 < target <= 1.0:
        raise MetricsError(f"target_recall must be in (0, 1], got {target_recall}")
    if n_pos == 0:
        raise MetricsError("no labelled real stamps (label 1): cannot choose a threshold")
    k = min(n_pos, max(1, math.ceil(target * n_pos)))
    # ceil(target * n) can be off by one in floating point (0.99 * 100 = 99.00000000000001).
    while k > 1 and (k - 1) / n_pos >= target:
        k -= 1
    while k < n_pos and k / n_pos < target:
        k += 1
    return k


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
    s, real = _labelled(scores, labels)
    pos = np.sort(s[real])[::-1]
    return float(pos[reals_needed(int(pos.size), target_recall) - 1])
