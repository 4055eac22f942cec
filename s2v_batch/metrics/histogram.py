"""A streaming, mergeable histogram of scores per class: what the reports tally a season into.

:class:`ScoreHistogram` counts scores on fine fixed bins over [0, 1] (real, artifact, unknown), so
a report never holds a season's rows in memory, and answers the metrics of
:mod:`s2v_batch.metrics.classification` at bin edges exactly: confusion counts, ROC AUC (ties within a bin),
the ROC and MDR-FPR curves, operating points and the threshold for a recall. Its JSON form
(:meth:`ScoreHistogram.to_dict`) round-trips.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from s2v_batch.core.conventions import LABEL_ARTIFACT, LABEL_REAL, LABEL_UNKNOWN
from s2v_batch.metrics.classification import (
    Confusion,
    MetricsError,
    auc_from_groups,
    checked_scores_labels,
    curve_from_groups,
    is_integer,
    lowest_within,
    operating_points_from,
    reals_needed,
)

__all__ = ["DEFAULT_BINS", "ScoreHistogram"]

#: Bins of :class:`ScoreHistogram` over [0, 1]; a power of two, so bin edges are exact floats.
DEFAULT_BINS = 2**16


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
        if not is_integer(n_bins) or n_bins < 1:
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
        s, lab = checked_scores_labels(scores, labels)
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
        return auc_from_groups(self._counts[0], self._counts[1])

    def roc_curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fpr, tpr, thresholds) at the lower edge of each bin holding labelled stamps.

        Same layout as :func:`~s2v_batch.metrics.classification.roc_curve`; every point is exact.
        """
        fpr, tpr, _, thr = self._curve()
        return fpr, tpr, thr

    def mdr_fpr_curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fpr, mdr, thresholds) as :func:`~s2v_batch.metrics.classification.mdr_fpr_curve`, at bin edges."""
        fpr, _, mdr, thr = self._curve()
        return fpr, mdr, thr

    def _curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        real, art = self._counts[0], self._counts[1]
        nz = np.flatnonzero((real + art) > 0)[::-1]
        return curve_from_groups(nz / self.n_bins, real[nz], art[nz])

    def mdr_at_fpr(self, fpr: float) -> float:
        """As :func:`~s2v_batch.metrics.classification.mdr_at_fpr`, over bin-edge thresholds."""
        return lowest_within(self.mdr_fpr_curve(), "fpr", fpr)

    def fpr_at_mdr(self, mdr: float) -> float:
        """As :func:`~s2v_batch.metrics.classification.fpr_at_mdr`, over bin-edge thresholds."""
        return lowest_within(self.mdr_fpr_curve(), "mdr", mdr)

    def standard_operating_points(self) -> dict[str, dict[str, float]]:
        """As :func:`~s2v_batch.metrics.classification.standard_operating_points`, over bin-edge thresholds."""
        return operating_points_from(self.mdr_fpr_curve())

    def threshold_for_recall(self, target_recall: float = 0.99) -> float:
        """Highest bin edge whose recall is at least ``target_recall`` (exact at that edge).

        Raises
        ------
        MetricsError
            When no stamp is labelled real.
        """
        real = self._counts[0]
        k = reals_needed(int(real.sum()), target_recall)
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
