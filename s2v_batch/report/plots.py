"""The report's PNG plots (matplotlib's object API: no global pyplot state, no display needed).

The score plots are drawn from the histogram of a tally; the night-by-night plots from a season
report's JSON content alone. Plots are saved with a 64-colour palette: a third of the bytes of
full colour, the same picture.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from s2v_batch.metrics.agreement import Agreement
from s2v_batch.metrics.classification import STANDARD_FPRS, Confusion
from s2v_batch.metrics.histogram import ScoreHistogram

_CLASS_STYLE = (("real", 0, "tab:orange"), ("artifact", 1, "tab:blue"), ("unknown", 2, "0.45"))


def _display_bins(n_bins: int, most: int = 128) -> int:
    return next(d for d in range(min(most, n_bins), 0, -1) if n_bins % d == 0)


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    img = Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")
    out = io.BytesIO()
    img.quantize(colors=64).save(out, format="PNG", optimize=True)
    return out.getvalue()


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


def _night_ticks(ax: Any, nights: list[int], most: int = 12) -> None:
    step = max(1, math.ceil(len(nights) / most))
    ticks = list(range(0, len(nights), step))
    ax.set_xticks(ticks, [str(nights[i]) for i in ticks], rotation=35, ha="right", fontsize=7)
    ax.set_xlim(-0.6, len(nights) - 0.4)


def _values(rows: list[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else r[key] for r in rows], dtype=np.float64)


def nights_png(rep: Mapping[str, Any], title: str) -> bytes:
    """A season night by night: stamps and errors, candidate fraction with its robust range and
    the flagged nights, recall and FDR where labelled."""
    from matplotlib.figure import Figure

    rows = list(rep.get("night_reports") or [])
    nights = [int(r["night"]) for r in rows]
    x = np.arange(len(rows))
    fig = Figure(figsize=(7.5, 6.6), dpi=100)
    fig.subplots_adjust(left=0.11, right=0.97, top=0.94, bottom=0.13, hspace=0.12)
    ax1, ax2, ax3 = fig.subplots(3, 1, sharex=True)
    ax1.set_title(title)
    scored, errors = _values(rows, "n_scored"), _values(rows, "n_errors")
    ax1.bar(x, scored, color="0.55", width=0.8, label="scored")
    ax1.bar(x, errors, bottom=scored, color="crimson", width=0.8, label="errors (no score)")
    ax1.set_ylabel("stamps")
    ax1.legend(loc="upper left", fontsize="x-small", ncols=2)

    frac = _values(rows, "candidate_fraction")
    low, high = _values(rows, "fraction_low"), _values(rows, "fraction_high")
    if np.isfinite(low).any():
        ax2.fill_between(
            x,
            low,
            high,
            step="mid",
            color="tab:green",
            alpha=0.15,
            label=f"robust range (median +- {rep['night_range']['n_mads']:g} MAD)",
        )
        ax2.axhline(rep["night_range"]["median"], color="tab:green", linewidth=0.8)
    ax2.plot(x, frac, marker=".", color="tab:blue", linewidth=1, label="candidate fraction")
    bad = np.array([bool(r.get("flag")) for r in rows], dtype=bool)
    if bad.any():
        ax2.plot(
            x[bad],
            np.nan_to_num(frac[bad]),
            "X",
            color="crimson",
            markersize=8,
            linestyle="none",
            label=f"flagged ({int(bad.sum())})",
        )
    ax2.set_ylabel("candidate fraction")
    ax2.set_ylim(0.0, min(1.0, max(0.05, float(np.nanmax(frac, initial=0.0)) * 1.15)))
    ax2.legend(loc="upper left", fontsize="x-small", ncols=3)

    recall, fdr = _values(rows, "recall"), _values(rows, "fdr")
    if np.isfinite(recall).any() or np.isfinite(fdr).any():
        ax3.plot(x, recall, marker=".", color="tab:orange", linewidth=1, label="recall")
        ax3.plot(x, fdr, marker=".", color="tab:purple", linewidth=1, label="FDR")
        ax3.set_ylim(0.0, 1.02)
        ax3.legend(loc="center left", fontsize="x-small", ncols=2)
    else:
        ax3.text(
            0.5,
            0.5,
            "no labelled stamps: no recall or FDR",
            ha="center",
            va="center",
            transform=ax3.transAxes,
        )
    ax3.set_ylabel("labelled")
    for ax in (ax1, ax2, ax3):
        ax.grid(True, axis="y", alpha=0.3)
    _night_ticks(ax3, nights)
    ax3.set_xlabel("night")
    return _png(fig)


def trend_png(rep: Mapping[str, Any]) -> bytes:
    """A season's candidate fraction night by night at a glance (flagged nights in red)."""
    from matplotlib.figure import Figure

    rows = list(rep.get("night_reports") or [])
    frac = _values(rows, "candidate_fraction")
    fig = Figure(figsize=(1.8, 0.4), dpi=100)
    ax = fig.add_axes((0.02, 0.08, 0.96, 0.84))
    ax.set_axis_off()
    x = np.arange(len(rows))
    if np.isfinite(frac).any():
        ax.plot(x, frac, color="tab:blue", linewidth=1)
        bad = np.array([bool(r.get("flag")) for r in rows], dtype=bool)
        ax.plot(x[bad], np.nan_to_num(frac[bad]), "o", color="crimson", markersize=2.5)
        ax.set_xlim(-0.5, max(len(rows) - 0.5, 0.5))
    return _png(fig)


def agreement_png(agreement: Agreement, threshold: float | None, title: str) -> bytes:
    """The density of s2v's score against the survey's own (log colour scale), with s2v's
    threshold (dotted) and the survey's cut (dashed)."""
    return agreement.png(threshold, title)
