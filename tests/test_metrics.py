"""Tests of s2v_batch.metrics.classification (published figures, exact metrics) and s2v_batch.metrics.histogram."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2v_batch.metrics import classification as m
from s2v_batch.metrics import timesaved
from s2v_batch.metrics.classification import Confusion, MetricsError
from s2v_batch.metrics.histogram import ScoreHistogram

# -- strategies -------------------------------------------------------------------------------

# Few distinct values mixed with arbitrary ones, so ties (the hard case) are frequent.
_score = st.one_of(
    st.sampled_from([0.0, 0.06, 0.25, 0.5, 0.75, 1.0]),
    st.floats(0.0, 1.0, allow_nan=False, width=32),
)
_label = st.sampled_from([-1, 0, 1])


@st.composite
def scored(draw, min_size: int = 0, max_size: int = 60) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(min_size, max_size))
    scores = np.array(draw(st.lists(_score, min_size=n, max_size=n)), dtype=np.float32)
    labels = np.array(draw(st.lists(_label, min_size=n, max_size=n)), dtype=np.int8)
    return scores, labels


def brute_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUC by comparing every real/artifact pair: the definition, O(n^2)."""
    pos = scores[labels == 1].astype(np.float64)
    neg = scores[labels == 0].astype(np.float64)
    if pos.size == 0 or neg.size == 0:
        return math.nan
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def space2vec_test_set() -> tuple[np.ndarray, np.ndarray]:
    """Scores reproducing the blog's test-set confusion at threshold 0.06.

    89,441 stamps, 44,954 true and 6,307 false candidates; 454 missed reals (recall 0.99).
    """
    rng = np.random.default_rng(2018)
    tp, fp, fn = 44_954, 6_307, 454
    tn = 89_441 - tp - fp - fn
    scores = np.concatenate(
        [
            rng.uniform(0.06, 1.0, tp),
            rng.uniform(0.06, 1.0, fp),
            rng.uniform(0.0, 0.059, fn),
            rng.uniform(0.0, 0.059, tn),
        ]
    ).astype(np.float32)
    labels = np.repeat(np.array([1, 0, 1, 0], dtype=np.int8), [tp, fp, fn, tn])
    return scores, labels


# -- published figures ------------------------------------------------------------------------


def test_space2vec_published_figures() -> None:
    scores, labels = space2vec_test_set()
    c = m.confusion(scores, labels, 0.06)
    assert (c.tp, c.fp) == (44_954, 6_307)
    assert c.n_candidates == 51_261
    assert round(c.fdr, 3) == 0.123
    assert round(c.recall, 2) == 0.99

    t = timesaved.time_saved(scores.size, c.n_candidates, 0.5, n_false_positives=c.fp)
    assert round(t["hours_all"], 2) == 12.42
    assert round(t["hours_candidates"], 2) == 7.12
    assert t["hours_saved"] == pytest.approx(12.42 - 7.12, abs=0.01)
    # 6,307 x 0.5 s; the blog's "0.85 h" is 12% of 7.12 h, a rounder estimate of the same.
    assert t["hours_wasted"] == pytest.approx(0.876, abs=0.001)
    assert t["reduction_factor"] == pytest.approx(89_441 / 51_261)


def test_autoscan_published_figures() -> None:
    n_stamps = 1_000_000
    n_cand = round(n_stamps / 13.4)
    assert n_cand == 74_627
    t = timesaved.time_saved(n_stamps, n_cand)
    assert round(t["reduction_factor"], 1) == 13.4
    assert round(t["hours_all"], 1) == 138.9
    assert round(t["hours_candidates"], 1) == 10.4
    assert round(t["hours_saved"], 1) == 128.5
    # "just over 16 working days"
    assert 16.0 < t["working_days_saved"] < 16.1
    assert t["hours_wasted"] is None


def test_time_saved_edge_cases_and_errors() -> None:
    t = timesaved.time_saved(100, 0)
    assert math.isnan(t["reduction_factor"])
    assert t["hours_saved"] == t["hours_all"]
    t = timesaved.time_saved(0, 0)
    assert t["hours_all"] == 0.0
    with pytest.raises(MetricsError, match="exceeds"):
        timesaved.time_saved(10, 11)
    with pytest.raises(MetricsError, match="seconds_per_stamp"):
        timesaved.time_saved(10, 1, seconds_per_stamp=0)
    with pytest.raises(MetricsError, match="n_false_positives"):
        timesaved.time_saved(10, 2, n_false_positives=3)
    with pytest.raises(MetricsError, match="n_stamps"):
        timesaved.time_saved(-1, 0)
    with pytest.raises(ValueError):  # MetricsError is a ValueError
        timesaved.time_saved(10.5, 1)  # type: ignore[arg-type]


# -- Confusion --------------------------------------------------------------------------------


def test_confusion_zero_denominators_are_nan() -> None:
    c = Confusion(0, 0, 0, 0)
    for rate in (c.recall, c.mdr, c.fpr, c.fdr, c.precision):
        assert math.isnan(rate)
    assert c.n_labelled == 0 and c.n_candidates == 0
    c = Confusion(tp=0, fp=0, tn=5, fn=0)
    assert c.fpr == 0.0 and math.isnan(c.recall) and math.isnan(c.fdr)


def test_confusion_rejects_bad_counts() -> None:
    with pytest.raises(MetricsError, match="tp"):
        Confusion(-1, 0, 0, 0)
    with pytest.raises(MetricsError, match="fn"):
        Confusion(1, 0, 0, 0.5)  # type: ignore[arg-type]


def test_confusion_add_and_dict() -> None:
    a, b = Confusion(1, 2, 3, 4), Confusion(10, 20, 30, 40)
    assert a + b == Confusion(11, 22, 33, 44)
    d = a.to_dict()
    assert d["tp"] == 1 and d["n_labelled"] == 10 and d["recall"] == pytest.approx(0.2)


def test_confusion_candidate_is_score_at_or_above_threshold() -> None:
    scores = np.array([0.06, 0.0599, 0.9, 0.1, 0.2], dtype=np.float32)
    labels = np.array([1, 1, 0, -1, 0])
    c = m.confusion(scores, labels, np.float32(0.06))
    assert c == Confusion(tp=1, fp=2, tn=0, fn=1)  # unknown label ignored


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        ([0.1, 0.2], [1], "pair up"),
        ([0.1, float("nan")], [1, 0], "NaN"),
        ([0.1, 0.2], [1, 2], "found \\[2\\]"),
        ([[0.1, 0.2]], [[1, 0]], "1-D"),
        (["a", "b"], [1, 0], "numbers"),
        ([0.1, 0.2], ["x", "y"], "dtype"),
    ],
)
def test_bad_input_gives_clear_error(scores, labels, match) -> None:
    with pytest.raises(MetricsError, match=match):
        m.confusion(scores, labels, 0.5)


# -- exact AUC and curves ---------------------------------------------------------------------


def test_roc_auc_known_values() -> None:
    assert m.roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert m.roc_auc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert m.roc_auc([0.5, 0.5, 0.5], [1, 0, 0]) == 0.5
    # One tie between classes: pairs (0.3>0.2, 0.3=0.3, 0.7>0.2, 0.7>0.3) = 3.5 / 4.
    assert m.roc_auc([0.2, 0.3, 0.3, 0.7], [0, 0, 1, 1]) == 0.875
    assert math.isnan(m.roc_auc([0.1, 0.2], [1, 1]))
    assert math.isnan(m.roc_auc([], []))


@settings(max_examples=150, deadline=None)
@given(scored())
def test_roc_auc_matches_pairwise_definition(data) -> None:
    scores, labels = data
    exact, brute = m.roc_auc(scores, labels), brute_auc(scores, labels)
    if math.isnan(brute):
        assert math.isnan(exact)
    else:
        assert exact == pytest.approx(brute, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(scored(min_size=1))
def test_curve_points_are_the_confusions_at_their_thresholds(data) -> None:
    scores, labels = data
    fpr, tpr, thr = m.roc_curve(scores, labels)
    _, mdr, thr2 = m.mdr_fpr_curve(scores, labels)
    np.testing.assert_array_equal(thr, thr2)
    assert thr[0] == np.inf and np.all(np.diff(thr) < 0)
    known = labels != -1
    assert thr.size == np.unique(scores[known]).size + 1
    for f, t, md, th in zip(fpr, tpr, mdr, thr, strict=True):
        c = m.confusion(scores, labels, th)
        np.testing.assert_equal([f, t, md], [c.fpr, c.recall, c.mdr])


@settings(max_examples=100, deadline=None)
@given(scored(), st.sampled_from([0.0, 0.01, 0.2, 0.5]), st.sampled_from([0.0, 0.02, 0.3]))
def test_operating_points_are_achievable_and_optimal(data, fpr_target, mdr_target) -> None:
    scores, labels = data
    thresholds = np.concatenate([[np.inf], np.unique(scores)])
    confs = [m.confusion(scores, labels, t) for t in thresholds]
    # With one class absent its rate is nan everywhere, and so is the answer.
    ok = [c.mdr for c in confs if c.fpr <= fpr_target]
    want = min(ok) if ok else math.nan
    assert m.mdr_at_fpr(scores, labels, fpr_target) == pytest.approx(want, nan_ok=True)
    ok = [c.fpr for c in confs if c.mdr <= mdr_target]
    want = min(ok) if ok else math.nan
    assert m.fpr_at_mdr(scores, labels, mdr_target) == pytest.approx(want, nan_ok=True)


def test_standard_operating_points_layout() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 2000)
    scores = np.clip(rng.normal(0.3 + 0.4 * labels, 0.15), 0, 1)
    ops = m.standard_operating_points(scores, labels)
    assert set(ops) == {"mdr_at_fpr", "fpr_at_mdr"}
    assert list(ops["mdr_at_fpr"]) == ["0.01", "0.025", "0.04"]
    assert list(ops["fpr_at_mdr"]) == ["0.02", "0.03", "0.05"]
    assert ops["mdr_at_fpr"]["0.01"] == m.mdr_at_fpr(scores, labels, 0.01)
    # More tolerance on one error buys less of the other.
    mdrs = list(ops["mdr_at_fpr"].values())
    assert mdrs == sorted(mdrs, reverse=True)
    with pytest.raises(MetricsError, match="fpr"):
        m.mdr_at_fpr(scores, labels, 1.5)


# -- thresholds -------------------------------------------------------------------------------


def test_threshold_for_recall_float_trap() -> None:
    # 0.99 * 100 == 99.00000000000001: a naive ceil asks for all 100 reals.
    scores = np.arange(100, dtype=np.float64) / 100
    labels = np.ones(100, dtype=np.int8)
    t = m.threshold_for_recall(scores, labels, 0.99)
    assert t == 0.01
    assert m.confusion(scores, labels, t).recall == 0.99


def test_threshold_for_recall_errors() -> None:
    with pytest.raises(MetricsError, match="no labelled real"):
        m.threshold_for_recall([0.1, 0.2], [0, -1])
    with pytest.raises(MetricsError, match="target_recall"):
        m.threshold_for_recall([0.1], [1], 0.0)


@settings(max_examples=150, deadline=None)
@given(scored(min_size=1), st.sampled_from([0.5, 0.9, 0.95, 0.99, 1.0]))
def test_threshold_for_recall_reaches_target_and_is_highest(data, target) -> None:
    scores, labels = data
    if not (labels == 1).any():
        with pytest.raises(MetricsError):
            m.threshold_for_recall(scores, labels, target)
        return
    t = m.threshold_for_recall(scores, labels, target)
    assert m.confusion(scores, labels, t).recall >= target
    higher = scores[(labels == 1) & (scores > t)]
    if higher.size:
        # The next real score up already loses too many reals.
        assert m.confusion(scores, labels, float(higher.min())).recall < target


@settings(max_examples=100, deadline=None)
@given(scored(), st.lists(st.floats(0, 1), min_size=2, max_size=6))
def test_counts_add_up_and_recall_falls_with_threshold(data, thresholds) -> None:
    scores, labels = data
    recalls = []
    for t in sorted(thresholds):
        c = m.confusion(scores, labels, t)
        assert c.n_labelled == int((labels != -1).sum())
        assert c.n_real == int((labels == 1).sum())
        # float64 comparison: numpy would compare a float32 array with a float in float32.
        assert c.n_candidates == int(((scores.astype(np.float64) >= t) & (labels != -1)).sum())
        if c.n_real:
            assert c.mdr == pytest.approx(1 - c.recall, abs=1e-15)
        if c.n_candidates:
            assert c.fdr == pytest.approx(1 - c.precision, abs=1e-15)
        recalls.append(c.recall)
    if (labels == 1).any():
        assert all(a >= b for a, b in zip(recalls, recalls[1:], strict=False))


# -- ScoreHistogram ---------------------------------------------------------------------------


def test_histogram_counts_and_bins() -> None:
    h = ScoreHistogram(4).add([0.0, 0.25, 0.2499, 1.0, 0.99], [1, 0, -1, 1, 0])
    np.testing.assert_array_equal(h.counts, [[1, 0, 0, 1], [0, 1, 0, 1], [1, 0, 0, 0]])
    assert (h.n_real, h.n_artifact, h.n_unknown, h.n_total) == (2, 2, 1, 5)
    assert ScoreHistogram(4).add([0.5, 0.6]).n_unknown == 2  # no labels: all unknown
    with pytest.raises(ValueError, match="read-only"):
        h.counts[0, 0] = 7
    edges, coarse = h.coarsen(2)
    np.testing.assert_array_equal(edges, [0, 0.5, 1])
    np.testing.assert_array_equal(coarse, [[1, 1], [1, 1], [1, 0]])
    with pytest.raises(MetricsError, match="divisor"):
        h.coarsen(3)


def test_histogram_rejects_out_of_range_and_mismatched_bins() -> None:
    with pytest.raises(MetricsError, match="outside \\[0, 1\\]"):
        ScoreHistogram().add([0.5, 1.5], [1, 0])
    with pytest.raises(MetricsError, match="NaN"):
        ScoreHistogram().add([np.nan], [1])
    with pytest.raises(MetricsError, match="bins"):
        ScoreHistogram(8).merge(ScoreHistogram(16))
    with pytest.raises(MetricsError, match="n_bins"):
        ScoreHistogram(0)


@settings(max_examples=100, deadline=None)
@given(scored(), scored())
def test_histogram_merge_equals_add_of_union(a, b) -> None:
    ha = ScoreHistogram().add(*a)
    hb = ScoreHistogram().add(*b)
    union = ScoreHistogram().add(np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]))
    merged = ha.copy().merge(hb)
    assert merged == union
    assert ha != merged or hb.n_total == 0  # merge works in place on a copy only


@settings(max_examples=100, deadline=None)
@given(scored(), st.sampled_from([4, 16, 2**16]))
def test_histogram_auc_within_tie_bound_of_exact(data, n_bins) -> None:
    scores, labels = data
    h = ScoreHistogram(n_bins).add(scores, labels)
    exact = m.roc_auc(scores, labels)
    if math.isnan(exact):
        assert math.isnan(h.roc_auc())
        return
    # Pairs sharing a bin count one half; each such pair moves the AUC by at most 1/2.
    shared = float((h.counts[0] * h.counts[1]).sum())
    bound = 0.5 * shared / (h.n_real * h.n_artifact)
    assert abs(h.roc_auc() - exact) <= bound + 1e-12


def test_histogram_auc_close_to_exact_on_continuous_scores() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(-1, 2, 20_000)
    scores = 1 / (1 + np.exp(-rng.normal(2.0 * (labels == 1) - 1.0, 1.0)))
    h = ScoreHistogram().add(scores, labels)
    assert h.roc_auc() == pytest.approx(m.roc_auc(scores, labels), abs=1e-4)


@settings(max_examples=100, deadline=None)
@given(scored(), st.integers(0, 15))
def test_histogram_confusion_exact_at_bin_edges(data, edge) -> None:
    # Lower edges only: the last bin also holds 1.0, so 1.0 is not a bin edge.
    scores, labels = data
    h = ScoreHistogram(16).add(scores, labels)
    assert h.confusion(edge / 16) == m.confusion(scores, labels, edge / 16)


def test_histogram_confusion_off_edge_counts_whole_bin() -> None:
    h = ScoreHistogram(4).add([0.26, 0.30, 0.6], [1, 0, 1])
    # 0.28 lies in bin [0.25, 0.5): both its stamps count, documented approximation.
    assert h.confusion(0.28) == Confusion(tp=2, fp=1, tn=0, fn=0)
    assert h.n_at_or_above(0.28) == 3
    assert h.confusion(1.5) == Confusion(tp=0, fp=0, tn=1, fn=2)
    assert h.confusion(-1) == Confusion(tp=2, fp=1, tn=0, fn=0)


@settings(max_examples=100, deadline=None)
@given(scored(min_size=1))
def test_histogram_curve_and_operating_points_match_exact_on_bin_edges(data) -> None:
    scores, labels = data
    # Scores on lower bin edges (1.0 shares the last bin): the histogram then loses nothing.
    snapped = np.minimum(np.floor(scores.astype(np.float64) * 64), 63) / 64
    h = ScoreHistogram(64).add(snapped, labels)
    for got, want in zip(h.mdr_fpr_curve(), m.mdr_fpr_curve(snapped, labels), strict=True):
        np.testing.assert_array_equal(got, want)
    got_ops, want_ops = h.standard_operating_points(), m.standard_operating_points(snapped, labels)
    for kind in ("mdr_at_fpr", "fpr_at_mdr"):
        assert got_ops[kind] == pytest.approx(want_ops[kind], nan_ok=True)
    assert h.mdr_at_fpr(0.1) == pytest.approx(m.mdr_at_fpr(snapped, labels, 0.1), nan_ok=True)
    assert h.fpr_at_mdr(0.1) == pytest.approx(m.fpr_at_mdr(snapped, labels, 0.1), nan_ok=True)
    if (labels == 1).any():
        assert h.threshold_for_recall(0.9) == m.threshold_for_recall(snapped, labels, 0.9)


def test_histogram_threshold_for_recall_on_real_scores() -> None:
    scores, labels = space2vec_test_set()
    h = ScoreHistogram().add(scores, labels)
    t = h.threshold_for_recall(0.99)
    assert h.confusion(t).recall >= 0.99
    assert m.confusion(scores, labels, t).recall >= 0.99  # exact at an edge
    assert h.confusion(t + 1 / h.n_bins).recall < 0.99
    assert abs(t - m.threshold_for_recall(scores, labels, 0.99)) <= 1 / h.n_bins
    with pytest.raises(MetricsError, match="no labelled real"):
        ScoreHistogram().add([0.5], [0]).threshold_for_recall()


def test_histogram_serialisation_round_trip() -> None:
    scores, labels = space2vec_test_set()
    h = ScoreHistogram().add(scores[:5000], labels[:5000])
    text = json.dumps(h.to_dict())
    back = ScoreHistogram.from_dict(json.loads(text))
    assert back == h
    assert len(text) < 200_000  # sparse: far smaller than 3 x 65,536 counts
    empty = ScoreHistogram(8)
    assert ScoreHistogram.from_dict(empty.to_dict()) == empty


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.update(format="other"), "not a serialised"),
        (lambda d: d.update(version=99), "version"),
        (lambda d: d["classes"].pop("unknown"), "classes"),
        (lambda d: d["classes"]["real"].update(bins=[0, 99], counts=[1, 1]), "outside"),
        (lambda d: d["classes"]["real"].update(bins=[1, 1], counts=[1, 1]), "repeated"),
        (lambda d: d["classes"]["real"].update(bins=[1], counts=[-1]), "negative"),
        (lambda d: d["classes"]["real"].update(bins=[1, 2], counts=[1]), "equal-length"),
        (lambda d: d["classes"]["real"].pop("counts"), "integer lists"),
    ],
)
def test_histogram_from_dict_rejects_bad_data(mutate, match) -> None:
    d = ScoreHistogram(8).add([0.1, 0.9], [1, 0]).to_dict()
    mutate(d)
    with pytest.raises(MetricsError, match=match):
        ScoreHistogram.from_dict(d)
