"""The agreement of s2v's candidates with the survey's own score: counts, merging, the plot."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2v_batch.metrics.agreement import SURVEY_SCORE, Agreement

_scores = st.lists(
    st.tuples(
        st.booleans(),
        st.one_of(st.floats(0, 1), st.just(float("nan"))),
        st.one_of(st.floats(0, 1), st.just(float("nan"))),
    ),
    max_size=60,
)


@settings(max_examples=80, deadline=None)
@given(rows=_scores, cut=st.integers(0, 60))
def test_counts_match_a_plain_loop_and_merge_over_any_split(rows, cut):
    whole = Agreement("drb")
    a, b = Agreement("drb"), Agreement("drb")
    if rows:
        cand, s, v = (np.array(x) for x in zip(*rows, strict=True))
        whole.add(cand, s, v)
        a.add(cand[:cut], s[:cut], v[:cut])
        b.add(cand[cut:], s[cut:], v[cut:])
    a.merge(b)
    np.testing.assert_array_equal(a.counts, whole.counts)
    np.testing.assert_array_equal(a.density, whole.density)
    assert a.n_missing == whole.n_missing
    want = {"both": 0, "s2v_only": 0, "survey_only": 0, "neither": 0}
    missing = 0
    for c, s, v in rows:
        if np.isnan(s) or np.isnan(v):
            missing += 1
            continue
        key = {(1, 1): "both", (1, 0): "s2v_only", (0, 1): "survey_only", (0, 0): "neither"}
        want[key[(int(c), int(v >= 0.5))]] += 1
    got = whole.as_dict()
    assert {k: got[k] for k in want} == want and got["n_missing"] == missing
    assert int(whole.density.sum()) == got["n"] == len(rows) - missing


def test_figures_of_a_known_table():
    ag = Agreement(SURVEY_SCORE["ztf"])
    # 40 both, 10 s2v only, 5 survey only, 45 neither
    cand = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    survey = np.r_[np.full(40, 0.9), np.full(10, 0.1), np.full(5, 0.8), np.full(45, 0.2)]
    ag.add(cand, np.where(cand, 0.7, 0.2), survey)
    d = ag.as_dict()
    assert (d["both"], d["s2v_only"], d["survey_only"], d["neither"]) == (40, 10, 5, 45)
    assert d["agreement"] == pytest.approx(0.85)
    # kappa = (0.85 - pe) / (1 - pe), pe = 0.5 * 0.45 + 0.5 * 0.55 = 0.5
    assert d["kappa"] == pytest.approx(0.7)
    assert "des" not in SURVEY_SCORE and SURVEY_SCORE["rubin"] == "reliability"
    with pytest.raises(ValueError):
        ag.merge(Agreement("reliability"))


def test_batches_with_nulls_and_the_plot():
    t = pa.table(
        {
            "score": pa.array([0.9, None, 0.1, 0.6], pa.float32()),
            "is_candidate": [True, False, False, True],
            "drb": pa.array([0.8, 0.7, None, 0.2], pa.float32()),
        }
    )
    ag = Agreement("drb")
    for batch in t.to_batches(max_chunksize=2):
        ag.add_batch(batch)
    d = ag.as_dict()
    assert (d["both"], d["s2v_only"], d["n_missing"]) == (1, 1, 2)
    other = Agreement("reliability")
    other.add_batch(t)  # a batch without the column: all missing
    assert other.n_missing == 4 and other.n == 0
    png = ag.png(s2v_threshold=0.5)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert Agreement("drb").png()[:4] == b"\x89PNG"  # an empty tally plots too
