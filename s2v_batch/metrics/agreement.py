"""Agreement between s2v's candidates and the survey's own real/bogus score (ZTF ``drb``, Rubin
``reliability``): the 2x2 table of counts and a density of the two scores, streaming and mergeable.

A stamp is the survey's candidate when its score is ``>= survey_threshold`` (0.5 by default, the
cut brokers use), s2v's when ``is_candidate``. Stamps without either score (no ``drb`` before ZTF
schema 3.3, a stamp s2v could not score) are counted apart, in ``n_missing``. The tally takes
Parquet record batches of the scores (:meth:`Agreement.add_batch`) and merges across nights, so a
season's report needs no more memory than one batch.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The survey's own score column, by survey (DES stamps have none).
SURVEY_SCORE = {"ztf": "drb", "rubin": "reliability"}
SURVEY_THRESHOLD = 0.5
#: Bins per axis of the score density (scores in [0, 1]).
DENSITY_BINS = 50
_CELLS = ("both", "s2v_only", "survey_only", "neither")


@dataclass
class Agreement:
    """The tally (see the module docstring). ``counts[i, j]``: i = s2v candidate (1) or not (0),
    j = survey candidate (1) or not (0)."""

    column: str
    survey_threshold: float = SURVEY_THRESHOLD
    bins: int = DENSITY_BINS
    counts: np.ndarray = field(default_factory=lambda: np.zeros((2, 2), np.int64))
    density: np.ndarray | None = None
    n_missing: int = 0

    def __post_init__(self) -> None:
        if self.density is None:
            self.density = np.zeros((self.bins, self.bins), np.int64)

    def add(self, is_candidate: Any, score: Any, survey_score: Any) -> None:
        """Count stamps: s2v's ``is_candidate`` and ``score``, the survey's score (NaN: none)."""
        cand = np.asarray(is_candidate, dtype=bool)
        s = np.asarray(score, dtype=np.float64)
        v = np.asarray(survey_score, dtype=np.float64)
        ok = np.isfinite(s) & np.isfinite(v)
        self.n_missing += int((~ok).sum())
        cand, s, v = cand[ok], s[ok], v[ok]
        survey = v >= self.survey_threshold
        np.add.at(self.counts, (cand.astype(np.intp), survey.astype(np.intp)), 1)
        edges = np.linspace(0.0, 1.0, self.bins + 1)
        h, _, _ = np.histogram2d(np.clip(s, 0, 1), np.clip(v, 0, 1), bins=(edges, edges))
        self.density += h.astype(np.int64)

    def add_batch(self, batch: Any) -> None:
        """Count a Parquet record batch (or table) of scores holding ``self.column``."""
        names = batch.schema.names
        if self.column not in names:
            self.n_missing += batch.num_rows
            return
        col = batch.column(names.index(self.column))
        score = batch.column(names.index("score"))
        cand = batch.column(names.index("is_candidate"))
        self.add(
            cand.to_numpy(zero_copy_only=False),
            score.to_numpy(zero_copy_only=False).astype(np.float64),
            col.to_numpy(zero_copy_only=False).astype(np.float64),
        )

    def merge(self, other: Agreement) -> None:
        """Add another tally of the same column, threshold and bins (another night's)."""
        if (other.column, other.survey_threshold, other.bins) != (
            self.column,
            self.survey_threshold,
            self.bins,
        ):
            raise ValueError("only tallies of the same column, threshold and bins merge")
        self.counts += other.counts
        self.density += other.density
        self.n_missing += other.n_missing

    @property
    def n(self) -> int:
        """Stamps with both scores."""
        return int(self.counts.sum())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures: the four cells, agreement fraction and Cohen's kappa."""
        c = self.counts
        cells = {"both": c[1, 1], "s2v_only": c[1, 0], "survey_only": c[0, 1], "neither": c[0, 0]}
        n = self.n
        agree = (c[1, 1] + c[0, 0]) / n if n else None
        kappa = None
        if n:
            expected = (c[1].sum() * c[:, 1].sum() + c[0].sum() * c[:, 0].sum()) / n**2
            kappa = None if expected == 1 else float((agree - expected) / (1 - expected))
        return {
            "survey_score": self.column,
            "survey_threshold": self.survey_threshold,
            **{k: int(v) for k, v in cells.items()},
            "n": n,
            "n_missing": self.n_missing,
            "agreement": None if agree is None else float(agree),
            "kappa": kappa,
        }

    def png(self, s2v_threshold: float | None = None, title: str = "") -> bytes:
        """A density plot of s2v's score against the survey's, with both thresholds."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import LogNorm

        fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=100)
        d = self.density.T.astype(float)
        d[d == 0] = np.nan
        top = float(np.nanmax(d)) if self.n else 1.0
        norm = LogNorm(vmin=1, vmax=max(1.0, top))
        im = ax.imshow(
            d, origin="lower", extent=(0, 1, 0, 1), aspect="auto", cmap="viridis", norm=norm
        )
        fig.colorbar(im, ax=ax, label="stamps")
        ax.axhline(self.survey_threshold, color="w", ls="--", lw=1)
        if s2v_threshold is not None:
            ax.axvline(s2v_threshold, color="w", ls=":", lw=1)
        ax.set_xlabel("s2v score (probability of real)")
        ax.set_ylabel(f"survey score ({self.column})")
        ax.set_title(title or f"s2v against {self.column}: {self.n:,} stamps")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        plt.close(fig)
        return buf.getvalue()
