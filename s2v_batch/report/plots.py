"""The report's PNG plots (matplotlib's object API: no global pyplot state, no display needed)."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from ..metrics import STANDARD_FPRS, Confusion, ScoreHistogram

_CLASS_STYLE = (("real", 0, "tab:orange"), ("artifact", 1, "tab:blue"), ("unknown", 2, "0.45"))


def _display_bins(n_bins: int, most: int = 128) -> int:
    return next(d for d in range(min(most, n_bins), 0, -1) if n_bins % d == 0)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def histogram_png(hist: ScoreHistogram, thresholds: list[float], title: str) -> bytes:
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


def mdr_fpr_png(
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
