"""Score rows for the report tests, written as the scores contract says (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pytest import approx as pytest_approx

# The scores contract of docs/ARCHITECTURE.md ("Scores"), written out here on purpose: the
# report must read what the contract says, whoever writes it.
SCHEMA = pa.schema(
    [
        ("stamp_id", pa.int64()),
        ("score", pa.float32()),
        ("is_candidate", pa.bool_()),
        ("threshold", pa.float32()),
        ("label", pa.int8()),
        ("model_version", pa.string()),
        ("model_sha256", pa.string()),
        ("run_id", pa.string()),
        ("scored_at", pa.timestamp("us", tz="UTC")),
        ("error", pa.string()),
    ]
)
SHA = "5" * 64
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_night(
    rng: np.random.Generator,
    n: int,
    *,
    threshold: float,
    labelled: float,
    n_errors: int = 0,
    version: str = "1.0",
    real_fraction: float | None = None,
) -> dict[str, np.ndarray]:
    """Rows of one night: label-dependent scores, a share of unknown labels, some errors.

    Labels are real or artifact with even odds, or real with ``real_fraction`` when given.
    """
    if real_fraction is None:
        label = rng.integers(0, 2, n).astype(np.int8)
    else:
        label = (rng.random(n) < real_fraction).astype(np.int8)
    score = np.clip(rng.beta(1 + 5 * label, 3), 0, 1).astype(np.float32)
    known = rng.random(n) < labelled
    error = np.full(n, None, dtype=object)
    error[rng.choice(n, n_errors, replace=False)] = "decode failed: truncated block"
    ok = np.array([e is None for e in error])
    return {
        "stamp_id": np.arange(n, dtype=np.int64) + rng.integers(0, 10**9),
        "score": score,
        "ok": ok,
        "is_candidate": (score >= np.float32(threshold)) & ok,
        "threshold": np.full(n, threshold, dtype=np.float32),
        "label": np.where(known, label, -1).astype(np.int8),
        "model_version": np.full(n, version, dtype=object),
        "error": error,
    }


def write_part(path: Path, rows: dict[str, np.ndarray], null_labels: bool = False) -> None:
    """Write rows as one part, scores null where there is an error, as the sink does."""
    n = rows["score"].size
    label = pa.array(rows["label"], pa.int8())
    if null_labels:  # unknown written as null, the other allowed spelling
        label = pa.array([None if v == -1 else int(v) for v in rows["label"]], pa.int8())
    table = pa.table(
        {
            "stamp_id": rows["stamp_id"],
            "score": pa.array(rows["score"], pa.float32(), mask=~rows["ok"]),
            "is_candidate": rows["is_candidate"],
            "threshold": rows["threshold"],
            "label": label,
            "model_version": pa.array(rows["model_version"], pa.string()),
            "model_sha256": pa.array([SHA] * n, pa.string()),
            "run_id": pa.array(["run-1"] * n, pa.string()),
            "scored_at": pa.array([datetime(2026, 11, 1, tzinfo=UTC)] * n, SCHEMA.field(8).type),
            "error": pa.array(rows["error"], pa.string()),
        },
        schema=SCHEMA,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def concat(*nights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([r[k] for r in nights]) for k in nights[0]}


# -- independent expectations -----------------------------------------------------------------


def load_report_json(path: Path) -> dict[str, Any]:
    """A ``report.json`` parsed strictly: NaN, Infinity and -Infinity fail the test.

    ``json.loads`` alone accepts them, though they are not JSON and other readers refuse them.
    """

    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard JSON constant {token} in {path}")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _auc(score: pd.Series, label: pd.Series) -> float | None:
    """ROC AUC as the Mann-Whitney statistic (ties count one half); None without both classes."""
    n_real, n_art = int((label == 1).sum()), int((label == 0).sum())
    if not (n_real and n_art):
        return None
    ranks = score.rank(method="average")
    return float((ranks[label == 1].sum() - n_real * (n_real + 1) / 2) / (n_real * n_art))


def expected_nights(scores_root: Path, season: str) -> pd.DataFrame:
    """Each night's figures computed straight from the season's Parquet rows with pandas.

    A row is scored when it has a score and no error; only scored rows count as candidates
    (their ``is_candidate``) or as labelled (label 1 real, 0 artifact; -1 or null unknown).
    Recall = real candidates / reals, FDR = artifact candidates / labelled candidates; None
    where the denominator is 0. Indexed by night (int), in night order.
    """
    df = pd.read_parquet(scores_root, filters=[("season", "==", season)])
    df["night"] = df["night"].astype(int)
    scored = df["score"].notna()
    if "error" in df:
        scored &= df["error"].isna()
    label = df["label"].astype("float64").fillna(-1).astype(int)
    cand = df["is_candidate"].fillna(False).astype(bool) & scored
    df = df.assign(
        scored=scored,
        cand=cand,
        real=scored & (label == 1),
        artifact=scored & (label == 0),
        lab=label,
    )
    rows = []
    for night, g in df.groupby("night", sort=True):
        n_scored, n_cand = int(g["scored"].sum()), int(g["cand"].sum())
        n_real, n_art = int(g["real"].sum()), int(g["artifact"].sum())
        tp, fp = int((g["cand"] & g["real"]).sum()), int((g["cand"] & g["artifact"]).sum())
        known = g[g["real"] | g["artifact"]]
        rows.append(
            {
                "night": int(night),
                "n_stamps": len(g),
                "n_scored": n_scored,
                "n_errors": len(g) - n_scored,
                "n_candidates": n_cand,
                "candidate_fraction": _ratio(n_cand, n_scored),
                "n_labelled": n_real + n_art,
                "recall": _ratio(tp, n_real),
                "fdr": _ratio(fp, tp + fp),
                "roc_auc": _auc(known["score"].astype("float64"), known["lab"]),
            }
        )
    return pd.DataFrame(rows).set_index("night")


def expected_flags(nights: pd.DataFrame, n_mads: float = 5.0) -> dict[str, Any]:
    """The nights to flag, by the rule the reports document (s2v_batch/report/nights.py).

    With at least 5 nights of scored stamps: median m and MAD of their candidate fractions;
    a night of n scored stamps may lie within m +- n_mads * max(MAD, sqrt(m (1 - m) / n)).
    A night without a scored stamp is always flagged. Returns ``median``, ``mad``, ``low`` and
    ``high`` (Series by night, None without a range), ``margin`` (|f - m| / allowed distance)
    and ``flagged`` (sorted nights).
    """
    frac = nights["candidate_fraction"].dropna().astype(float)
    empty = [int(n) for n in nights.index[nights["n_scored"] == 0]]
    if len(frac) < 5:
        return {"median": None, "mad": None, "low": None, "high": None, "margin": None,
                "flagged": empty}  # fmt: skip
    med = float(frac.median())
    mad = float((frac - med).abs().median())
    n = nights.loc[frac.index, "n_scored"].astype(float)
    # The binomial floor below is taken at m itself: the rule clamps p to [1/n, 1 - 1/n],
    # which this season must not need.
    assert ((1.0 / n <= med) & (med <= 1.0 - 1.0 / n)).all(), "the median is too near 0 or 1"
    spread = (med * (1.0 - med) / n).map(math.sqrt).clip(lower=mad)
    margin = (frac - med).abs() / (n_mads * spread)
    flagged = sorted(empty + [int(k) for k in margin.index[margin > 1.0]])
    return {"median": med, "mad": mad, "low": med - n_mads * spread,
            "high": med + n_mads * spread, "margin": margin, "flagged": flagged}  # fmt: skip


def check_night_rows(rep: dict[str, Any], scores_root: Path, season: str) -> pd.DataFrame:
    """A season report's ``night_reports`` and flags against the Parquet rows; the expectations.

    Every figure of each night row is compared with :func:`expected_nights`, and the flags and
    range with :func:`expected_flags`. No night may lie within 5% of its range's edge, where
    the two computations could round differently.
    """
    want = expected_nights(scores_root, season)
    got = {r["night"]: r for r in rep["night_reports"]}
    nights = want.index.tolist()
    assert [r["night"] for r in rep["night_reports"]] == nights, (rep["night_reports"], nights)
    assert rep["nights"] == nights and rep["n_nights"] == len(want), (rep["nights"], nights)
    for night, w in want.to_dict("index").items():  # per-column types: ints stay ints
        r = got[night]
        for key in ("n_stamps", "n_scored", "n_errors", "n_candidates", "n_labelled"):
            assert r[key] == w[key], (night, key, r[key], w[key])
        for key in ("candidate_fraction", "recall", "fdr"):
            if w[key] is None or (isinstance(w[key], float) and math.isnan(w[key])):
                assert r[key] is None, (night, key, r[key])
            else:
                assert r[key] == pytest_approx(w[key], rel=1e-12), (night, key, r[key], w[key])
        if w["roc_auc"] is None or math.isnan(w["roc_auc"]):
            assert r["roc_auc"] is None, (night, r["roc_auc"])
        else:  # the report's AUC comes from a score histogram, whose bins tie
            assert r["roc_auc"] == pytest_approx(w["roc_auc"], abs=2e-3), (night, r, w)
    flags = expected_flags(want, rep["night_range"]["n_mads"])
    flagged = [f["night"] for f in rep["flagged_nights"]]
    assert flagged == flags["flagged"], f"flagged {flagged}, expected {flags['flagged']}"
    flagged = [n for n, r in got.items() if r["flag"]]
    assert flagged == flags["flagged"], f"rows flagged {flagged}, expected {flags['flagged']}"
    rng = rep["night_range"]
    if flags["median"] is None:
        assert rng["median"] is None and rng["mad"] is None, rng
        assert all(r["fraction_low"] is None for r in got.values()), rep["night_reports"]
        return want
    assert rng["median"] == pytest_approx(flags["median"], rel=1e-12), (rng, flags["median"])
    assert rng["mad"] == pytest_approx(flags["mad"], rel=1e-9, abs=1e-15), (rng, flags["mad"])
    margin = flags["margin"]
    assert not margin.between(0.95, 1.05).any(), f"a night at its range's edge: {margin}"
    for night in want.index[want["n_scored"] == 0]:  # no fraction: no range either
        r = got[night]
        assert r["fraction_low"] is None and r["fraction_high"] is None, r
    for night in margin.index:
        r, low, high = got[night], flags["low"][night], flags["high"][night]
        assert r["fraction_low"] == pytest_approx(low, rel=1e-9), (r, low)
        assert r["fraction_high"] == pytest_approx(high, rel=1e-9), (r, high)
    for f in rep["flagged_nights"]:
        w = want.loc[f["night"]]
        if w["n_scored"]:
            side = "above" if w["candidate_fraction"] > flags["median"] else "below"
            assert f"{side} the season's robust range" in f["reason"], f
            assert f["candidate_fraction"] == pytest_approx(w["candidate_fraction"], rel=1e-12)
        else:
            assert "no scored stamps" in f["reason"] and f["candidate_fraction"] is None
    return want
