"""The figures of a scanning session, from people's verdicts (DESIGN.md section 3).

- :func:`wilson_interval`: a binomial proportion's 95% interval (Wilson score), for the FDR;
- :func:`seconds_summary`: seconds a candidate (median, quartiles);
- :func:`consensus`: one label a stamp, the majority of its real/bogus verdicts (ties and skips
  left out), and how many verdicts it rests on;
- :func:`cohen_kappa` and :func:`fleiss_kappa`: agreement between scanners beyond chance;
- :func:`scanning_figures`: all of them for a night or a season, with the time saved computed
  from the measured seconds (:func:`s2v_batch.metrics.timesaved.time_saved`).

Verdicts come in as a pandas DataFrame of standing verdicts (``stamp_id``, ``scanner``,
``verdict`` in real/bogus/skip, ``seconds``), as :meth:`s2v_batch.store.verdicts.VerdictDB.read`
gives them; this module imports no pandas itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from s2v_batch.metrics.classification import MetricsError, is_integer
from s2v_batch.metrics.timesaved import time_saved

__all__ = [
    "Z95",
    "cohen_kappa",
    "consensus",
    "fleiss_kappa",
    "scanning_figures",
    "seconds_summary",
    "wilson_interval",
]

#: The normal quantile of a two-sided 95% interval.
Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n``.

    Parameters
    ----------
    k : int
        Successes, ``0 <= k <= n``.
    n : int
        Trials.
    z : float
        Normal quantile (1.96 for 95%).

    Returns
    -------
    tuple of float
        ``(low, high)`` within [0, 1]; ``(nan, nan)`` when ``n == 0``.
    """
    if not (is_integer(k) and is_integer(n)) or not 0 <= k <= n:
        raise MetricsError(f"need integers 0 <= k <= n, got k={k!r}, n={n!r}")
    if n == 0:
        return math.nan, math.nan
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # Exact at the edges (rounding would put 0 or 1 a hair outside its own interval).
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def seconds_summary(seconds: Sequence[float] | np.ndarray) -> dict[str, float | int | None]:
    """Median, quartiles and mean of the seconds spent on candidates (NaN values left out).

    Returns
    -------
    dict
        ``n``, ``median``, ``q1``, ``q3``, ``mean`` (None when ``n == 0``).
    """
    s = np.asarray(seconds, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return {"n": 0, "median": None, "q1": None, "q3": None, "mean": None}
    q1, med, q3 = np.percentile(s, [25, 50, 75])
    return {"n": int(s.size), "median": float(med), "q1": float(q1), "q3": float(q3),
            "mean": float(s.mean())}  # fmt: skip


def consensus(verdicts: Any) -> Any:
    """One label a stamp: the majority of its standing real/bogus verdicts.

    Parameters
    ----------
    verdicts : pandas.DataFrame
        Standing verdicts with ``season``, ``stamp_id``, ``night`` and ``verdict``.

    Returns
    -------
    pandas.DataFrame
        One row a stamp with a majority: ``season``, ``night``, ``stamp_id``, ``label`` (1 real,
        0 bogus), ``n_real``, ``n_bogus`` and ``n_verdicts`` (real + bogus verdicts it rests on).
        Ties and stamps with only skips are left out.
    """
    d = verdicts[verdicts["verdict"].isin(["real", "bogus"])]
    keys = ["season", "night", "stamp_id"]
    real = (d["verdict"] == "real").astype("int64").rename("n_real")
    bogus = (d["verdict"] == "bogus").astype("int64").rename("n_bogus")
    frame = d[keys].assign(n_real=real, n_bogus=bogus)
    g = frame.groupby(keys, as_index=False, sort=True)[["n_real", "n_bogus"]].sum()
    g = g[g["n_real"] != g["n_bogus"]].copy()
    g["label"] = (g["n_real"] > g["n_bogus"]).astype("int8")
    g["n_verdicts"] = (g["n_real"] + g["n_bogus"]).astype("int64")
    return g[[*keys, "label", "n_real", "n_bogus", "n_verdicts"]].reset_index(drop=True)


def cohen_kappa(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Cohen's kappa of two raters' labels of the same items (NaN when chance explains all).

    Parameters
    ----------
    a, b : sequence
        Labels (any hashable values), one per item, in the same item order.
    """
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise MetricsError(f"two raters need the same items, got {len(a)} and {len(b)}")
    if not a:
        return math.nan
    cats = sorted(set(a) | set(b), key=repr)
    idx = {c: i for i, c in enumerate(cats)}
    table = np.zeros((len(cats), len(cats)), np.float64)
    for x, y in zip(a, b, strict=True):
        table[idx[x], idx[y]] += 1
    n = table.sum()
    po = np.trace(table) / n
    pe = float((table.sum(axis=0) * table.sum(axis=1)).sum() / (n * n))
    return math.nan if pe >= 1.0 else float((po - pe) / (1.0 - pe))


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa from a table of counts, items x categories (items may differ in raters).

    Items with fewer than 2 ratings say nothing about agreement and are left out. With the same
    number of raters everywhere this is Fleiss (1971); with different numbers each item's
    agreement is averaged as in Fleiss' own generalisation. NaN when no item has 2 ratings or
    chance explains all (one category only).
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 2 or (c < 0).any():
        raise MetricsError("counts must be a 2-D table of non-negative counts")
    n_i = c.sum(axis=1)
    c, n_i = c[n_i >= 2], n_i[n_i >= 2]
    if c.shape[0] == 0:
        return math.nan
    p_i = ((c * c).sum(axis=1) - n_i) / (n_i * (n_i - 1))
    p_bar = float(p_i.mean())
    p_j = c.sum(axis=0) / n_i.sum()
    pe = float((p_j * p_j).sum())
    return math.nan if pe >= 1.0 else (p_bar - pe) / (1.0 - pe)


def _fin(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def scanning_figures(
    verdicts: Any,
    *,
    n_stamps: int,
    n_candidates: int,
    assumed_seconds: float = 0.5,
) -> dict[str, Any]:
    """The figures of a night's or a season's scanning, from its standing verdicts.

    Parameters
    ----------
    verdicts : pandas.DataFrame
        Standing verdicts (``season``, ``night``, ``stamp_id``, ``scanner``, ``verdict``,
        ``seconds``) of the stamps of the night or season.
    n_stamps, n_candidates : int
        The night's or season's stamps and candidates (for the time saved).
    assumed_seconds : float
        What the report assumed without verdicts (kept for comparison).

    Returns
    -------
    dict
        ``n_verdicts``, ``n_scanners``, ``by_scanner`` (verdict counts and seconds per scanner),
        ``seconds`` (:func:`seconds_summary` of every verdict), ``n_scanned`` (stamps with a
        real/bogus consensus), ``n_judged_real``, ``n_judged_bogus``, ``fdr`` with ``fdr_low`` /
        ``fdr_high`` (Wilson 95%), ``agreement`` (Fleiss' kappa over stamps with 2 or more
        real/bogus verdicts, and Cohen's for the two busiest scanners on their common stamps),
        ``time_saved`` (with the measured median seconds a candidate) and ``seconds_source``.
    """
    v = verdicts
    by_scanner = {}
    for name, g in v.groupby("scanner", sort=True):
        counts = g["verdict"].value_counts()
        by_scanner[str(name)] = {
            **{k: int(counts.get(k, 0)) for k in ("real", "bogus", "skip")},
            "n": len(g),
            "seconds": seconds_summary(g["seconds"].to_numpy(np.float64)),
        }
    secs = seconds_summary(v["seconds"].to_numpy(np.float64))
    cons = consensus(v)
    n_real = int((cons["label"] == 1).sum())
    n_bogus = int((cons["label"] == 0).sum())
    n_scanned = n_real + n_bogus
    low, high = wilson_interval(n_bogus, n_scanned)
    decisive = v[v["verdict"].isin(["real", "bogus"])]
    table = decisive.groupby(["season", "stamp_id"])["verdict"].value_counts().unstack(fill_value=0)
    table = table.reindex(columns=["real", "bogus"], fill_value=0).to_numpy()
    multi = int((table.sum(axis=1) >= 2).sum()) if table.size else 0
    agreement: dict[str, Any] = {
        "n_stamps_multi": multi,
        "fleiss_kappa": _fin(fleiss_kappa(table)) if table.size else None,
        "cohen_kappa": None,
        "cohen_pair": None,
    }
    busiest = decisive["scanner"].value_counts().index[:2].tolist()
    if len(busiest) == 2:
        a = decisive[decisive["scanner"] == busiest[0]].set_index(["season", "stamp_id"])["verdict"]
        b = decisive[decisive["scanner"] == busiest[1]].set_index(["season", "stamp_id"])["verdict"]
        both = a.index.intersection(b.index)
        if len(both):
            agreement["cohen_kappa"] = _fin(cohen_kappa(a.loc[both], b.loc[both]))
            agreement["cohen_pair"] = [str(x) for x in busiest] + [len(both)]
    measured = secs["median"] is not None and secs["median"] > 0
    sec = secs["median"] if measured else assumed_seconds
    saved = time_saved(n_stamps, n_candidates, seconds_per_stamp=sec)
    return {
        "n_verdicts": len(v),
        "n_scanners": len(by_scanner),
        "by_scanner": by_scanner,
        "seconds": secs,
        "n_scanned": n_scanned,
        "n_judged_real": n_real,
        "n_judged_bogus": n_bogus,
        "fdr": n_bogus / n_scanned if n_scanned else None,
        "fdr_low": _fin(low),
        "fdr_high": _fin(high),
        "agreement": agreement,
        "time_saved": saved,
        "seconds_source": (
            f"measured: median of {secs['n']} verdicts' seconds"
            if measured
            else f"assumed: {assumed_seconds:g} s a stamp (no measured seconds)"
        ),
        "assumed_seconds": assumed_seconds,
    }
