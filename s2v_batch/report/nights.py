"""A season night by night: each night's row and the nights whose candidate fraction is odd.

A night is flagged when its candidate fraction lies outside the season's robust range, median
+- ``n_mads`` MADs. A small MAD (nights that agree closely, or few nights) would flag ordinary
noise, so each night's spread is floored at its own binomial sampling noise, sqrt(p (1 - p) / n)
for the season's median fraction p and the night's n scored stamps: a night of 50 stamps is not
flagged for a fluctuation that 50 stamps make anyway. With fewer than ``MIN_NIGHTS`` nights no
range is drawn. A night with no scored stamp is always flagged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Figures of each night listed in its season's report.
ROW_KEYS = (
    "night", "n_stamps", "n_scored", "n_errors", "n_candidates", "candidate_fraction",
    "n_labelled", "recall", "fdr", "roc_auc",
)  # fmt: skip
#: Nights needed for a median and MAD worth flagging against.
MIN_NIGHTS = 5


def night_row(rep: Mapping[str, Any]) -> dict[str, Any]:
    """A night report's row in its season's ``night_reports``."""
    return {k: rep.get(k) for k in ROW_KEYS}


def flag_nights(
    rows: Sequence[dict[str, Any]], n_mads: float = 5.0
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Add ``fraction_low``, ``fraction_high`` and ``flag`` to each row; the range and the flags.

    Returns
    -------
    night_range : dict
        ``median``, ``mad``, ``n_mads``, ``method`` (and ``note`` when no range was drawn).
    flagged_nights : list of dict
        ``night``, ``candidate_fraction`` and ``reason``, in night order.
    """
    fractions = np.array(
        [r["candidate_fraction"] for r in rows if r.get("candidate_fraction") is not None],
        dtype=np.float64,
    )
    rng: dict[str, Any] = {
        "median": None,
        "mad": None,
        "n_mads": float(n_mads),
        "method": (
            f"candidate fraction is outside the median +- {n_mads:g} x max(MAD, the night's "
            "binomial sd sqrt(p (1 - p) / n_scored), p the median)"
        ),
    }
    med = mad = None
    if fractions.size >= MIN_NIGHTS:
        med = float(np.median(fractions))
        mad = float(np.median(np.abs(fractions - med)))
        rng.update(median=med, mad=mad)
    else:
        rng["note"] = (
            f"{fractions.size} night(s) with scored stamps: at least {MIN_NIGHTS} are needed "
            "for a robust range"
        )
    flagged = []
    for r in rows:
        r["fraction_low"] = r["fraction_high"] = r["flag"] = None
        side = ""
        f, n = r.get("candidate_fraction"), int(r.get("n_scored") or 0)
        if f is None or n == 0:
            r["flag"] = "no scored stamps (every stamp has an error, or none was scored)"
        elif med is not None and mad is not None:
            p = min(max(med, 1.0 / n), 1.0 - 1.0 / n) if n > 1 else 0.5
            sd = math.sqrt(p * (1.0 - p) / n)
            spread = max(mad, sd)
            low, high = med - n_mads * spread, med + n_mads * spread
            r["fraction_low"], r["fraction_high"] = low, high
            if not low <= f <= high:
                side = "above" if f > high else "below"
                basis = f"MAD {mad:.4f}" if spread == mad else f"binomial sd {sd:.4f}"
                r["flag"] = (
                    f"candidate fraction {f:.4f} is {side} the season's robust range "
                    f"[{max(low, 0.0):.4f}, {min(high, 1.0):.4f}] (median {med:.4f} +- "
                    f"{n_mads:g} x {basis})"
                )
        r["flag_short"] = (
            None if not r["flag"] else ("no scores" if f is None or n == 0 else f"{side} range")
        )
        if r["flag"]:
            flagged.append({"night": r["night"], "candidate_fraction": f, "reason": r["flag"]})
    return rng, flagged
