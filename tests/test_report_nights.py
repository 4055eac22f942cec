"""The night-by-night flags (robust range of the candidate fraction) and store.pixels.read_stamps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from report_rows import check_night_rows, load_report_json, make_night, write_part

from s2v_batch.report import write_reports
from s2v_batch.report.nights import MIN_NIGHTS, flag_nights
from s2v_batch.store import dataset as zstore
from s2v_batch.store.pixels import read_stamps


def rows(counts: list[tuple[int, int]]) -> list[dict]:
    """Night rows from (n_scored, n_candidates) pairs."""
    return [
        {"night": 20130901 + i, "n_scored": n, "candidate_fraction": (c / n) if n else None}
        for i, (n, c) in enumerate(counts)
    ]


def test_a_jump_is_flagged_and_ordinary_noise_is_not() -> None:
    nights = rows([(1000, 100 + d) for d in (0, 3, -4, 8, -6, 2, -1, 5, 0, -3)] + [(1000, 400)])
    rng, flagged = flag_nights(nights)
    assert [f["night"] for f in flagged] == [nights[-1]["night"]]
    assert "above the season's robust range" in flagged[0]["reason"]
    assert rng["median"] == pytest.approx(0.100) and rng["n_mads"] == 5.0
    assert nights[-1]["flag"] == flagged[0]["reason"] and nights[0]["flag"] is None
    assert nights[0]["fraction_low"] < 0.1 < nights[0]["fraction_high"]


def test_small_mad_is_floored_at_the_binomial_noise() -> None:
    # Ten nights with exactly the same fraction: MAD 0. A small night off by a few stamps is
    # what 50 stamps do by chance, and must not be flagged; a big jump still is.
    nights = rows([(1000, 100)] * 10 + [(50, 8), (1000, 200)])
    rng, flagged = flag_nights(nights)
    assert rng["mad"] == 0.0
    assert [f["night"] for f in flagged] == [nights[-1]["night"]]
    assert "binomial sd" in flagged[0]["reason"]


def test_too_few_nights_and_empty_nights() -> None:
    nights = rows([(100, 10), (100, 90), (0, 0)])
    rng, flagged = flag_nights(nights)
    assert rng["median"] is None and str(MIN_NIGHTS) in rng["note"]
    assert [f["night"] for f in flagged] == [nights[2]["night"]]
    assert "no scored stamps" in flagged[0]["reason"]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 10**6),
    p=st.floats(0.0, 1.0),
    k=st.integers(MIN_NIGHTS, 40),
    mads=st.floats(1.0, 10.0),
)
def test_identical_nights_are_never_flagged(n: int, p: float, k: int, mads: float) -> None:
    c = round(p * n)
    _, flagged = flag_nights(rows([(n, c)] * k), mads)
    assert flagged == []


#: A season of nine nights written as Parquet rows: (stamps, labelled share, errors, reals).
#: 20140905 is mostly artifacts (its candidate fraction far below the others'); 20140907 has
#: 40 stamps, mostly real: outside median +- 5 MADs, but within the binomial noise of 40
#: stamps, which floors its range; 20140908 is unlabelled (no recall, FDR or AUC) and 20140909
#: has no scored stamp at all.
SEASON_NIGHTS = {
    20140901: (600, 1.0, 0, None),
    20140902: (450, 0.9, 5, None),
    20140903: (800, 1.0, 0, None),
    20140904: (520, 0.7, 2, None),
    20140905: (700, 1.0, 0, 0.05),
    20140906: (650, 1.0, 3, None),
    20140907: (40, 1.0, 0, 0.9),
    20140908: (500, 0.0, 0, None),
    20140909: (30, 1.0, 30, None),
}


@pytest.fixture(scope="module")
def season_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("nights") / "scores"
    rng = np.random.default_rng(20140901)
    for night, (n, labelled, errors, real) in SEASON_NIGHTS.items():
        rows = make_night(rng, n, threshold=0.5, labelled=labelled, n_errors=errors,
                          real_fraction=real)  # fmt: skip
        write_part(root / "season=Y2" / f"night={night}" / "part-00000.parquet", rows)
    out = root.parent / "reports"
    write_reports(root, out)
    return {"root": root, "out": out, "rep": load_report_json(out / "Y2" / "report.json")}


def test_season_night_rows_and_flags_match_the_parquet_rows(season_report) -> None:
    """Each night's figures and the flags, computed here from the rows with pandas."""
    rep = season_report["rep"]
    want = check_night_rows(rep, season_report["root"], "Y2")
    # The season is what it was made to be: the odd night and the empty one flagged, the
    # small night not, and every figure of a night present where its rows allow it.
    assert [f["night"] for f in rep["flagged_nights"]] == [20140905, 20140909]
    assert want.loc[20140905, "candidate_fraction"] < 0.25 < want["candidate_fraction"].median()
    small = abs(want.loc[20140907, "candidate_fraction"] - rep["night_range"]["median"])
    assert small > 5 * rep["night_range"]["mad"]  # flagged but for the binomial floor
    rows = {r["night"]: r for r in rep["night_reports"]}
    assert rows[20140907]["flag"] is None and rows[20140908]["recall"] is None
    assert rows[20140909]["candidate_fraction"] is None and rows[20140901]["roc_auc"] > 0.8
    # Each night's own report holds the same figures as its row.
    for night, row in rows.items():
        nrep = load_report_json(season_report["out"] / "Y2" / "nights" / str(night) / "report.json")
        for key, value in row.items():
            if key in nrep:
                assert nrep[key] == value, (night, key)


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    pixels = np.random.default_rng(7).random((300, 6, 6, 3)).astype(np.float32)
    path = zstore.write_night(
        tmp_path_factory.mktemp("store") / "Y1" / "20130901.zarr",
        pixels,
        np.arange(300, dtype=np.int64) + 10,
        np.zeros(300, np.int8),
        season="Y1",
        night=20130901,
        shard_stamps=128,
        chunk_stamps=32,
    )
    return path, pixels


@settings(max_examples=40, deadline=None)
@given(idx=st.lists(st.integers(0, 299), max_size=50))
def test_read_stamps_returns_the_stamps_asked_for(night, idx: list[int]) -> None:
    path, pixels = night
    got = read_stamps(path, idx)
    assert got.shape == (len(idx), 6, 6, 3) and got.dtype == np.float32
    np.testing.assert_array_equal(got, pixels[idx])


def test_read_stamps_refuses_an_index_outside_the_night(night) -> None:
    with pytest.raises(zstore.StoreError, match="outside 0..299"):
        read_stamps(night[0], [0, 300])
