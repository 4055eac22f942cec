"""The verdict database (SQLite, and a real PostgreSQL server started here), the scanning figures'
arithmetic (Wilson, kappa, seconds, consensus) and the labels export read back by the ingest."""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import skip_or_fail
from hypothesis import given, settings
from hypothesis import strategies as st

from s2v_batch.ingest.labels import read_labels
from s2v_batch.metrics.classification import MetricsError
from s2v_batch.metrics.scanning import (
    cohen_kappa,
    consensus,
    fleiss_kappa,
    scanning_figures,
    seconds_summary,
    wilson_interval,
)
from s2v_batch.scan.labels import export_labels
from s2v_batch.store.verdicts import (
    AlreadyJudgedError,
    VerdictError,
    default_db,
    open_verdicts,
)

# ----------------------------------------------------------------------------- PostgreSQL


def _pg_bin() -> Path | None:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of Debian's packages on loopback, in a temporary folder (as the
    ``postgres`` user: initdb refuses root), stopped at the end."""
    bindir = _pg_bin()
    if bindir is None:
        skip_or_fail("no PostgreSQL server (Debian: apt-get install -y postgresql; .ci/run does)")
    run_as: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            skip_or_fail("running as root without runuser: cannot start PostgreSQL as postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="s2v-pg-"))
    data = base / "data"
    if run_as:
        shutil.chown(base, "postgres")
    port = _free_port()
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U",
                    "postgres", "--no-sync"], check=True, capture_output=True)  # fmt: skip
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=on"
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l",
                    str(base / "log"), "-w", "-t", "60", "start"], check=True, capture_output=True)  # fmt: skip
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "stop"], capture_output=True)  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "_verdicts.sqlite")
        return
    url = request.getfixturevalue("postgres_url")
    with open_verdicts(url) as db:  # a fresh table for each test
        db._conn.execute("DROP TABLE IF EXISTS verdicts")
    yield url


def _v(db, stamp_id: int, scanner: str, verdict: str, seconds: float = 1.0, night: int = 20130901):
    return db.record(stamp_id=stamp_id, season="Y1", night=night, scanner=scanner,
                     verdict=verdict, seconds=seconds, model_version="m-1", score=0.7)  # fmt: skip


def test_verdicts_undo_is_a_row_and_reading_back(db_url: str) -> None:
    with open_verdicts(db_url) as db:
        a = _v(db, 1, "ann", "real", 2.0)
        _v(db, 2, "ann", "bogus", 3.0)
        _v(db, 1, "bob", "bogus", 4.0)
        _v(db, 3, "ann", "skip", 0.5)
        assert db.judged("ann", "Y1") == {1, 2, 3} and db.decided("Y1") == {1: 2, 2: 1}
        undone = db.undo_last("ann")
        assert undone["stamp_id"] == 3 and undone["verdict"] == "skip"
        assert db.undo_last("ann")["stamp_id"] == 2  # the one before: undo walks back
        assert db.judged("ann", "Y1") == {1} and db.decided("Y1") == {1: 2}
        # A stamp undone may be judged again; one judged and standing may not.
        _v(db, 2, "ann", "real", 1.5)
        with pytest.raises(AlreadyJudgedError, match="judged stamp 1"):
            _v(db, 1, "ann", "bogus")
        with pytest.raises(VerdictError, match="verdict must be one of"):
            _v(db, 9, "ann", "maybe")
        with pytest.raises(VerdictError, match="seconds must be"):
            _v(db, 9, "ann", "real", float("nan"))
        assert db.undo_last("nobody") is None
        every = db.read()
        assert len(every) == db.count() == 7  # nothing deleted: 5 verdicts and 2 undo rows
        assert (every["verdict"] == "undo").sum() == 2
        assert set(every.loc[every["verdict"] == "undo", "undoes"]) == {every["id"].iloc[3],
                                                                        every["id"].iloc[1]}  # fmt: skip
        standing = db.read(standing=True)
        assert sorted(zip(standing["scanner"], standing["stamp_id"], standing["verdict"], strict=True)) == [
            ("ann", 1, "real"), ("ann", 2, "real"), ("bob", 1, "bogus")]  # fmt: skip
        assert standing["at"].dt.tz is not None and standing["seconds"].tolist() == [2.0, 4.0, 1.5]
        assert int(standing.loc[standing["id"] == a, "stamp_id"].iloc[0]) == 1
        assert db.read(nights=[20130902]).empty


def test_concurrent_writers_lose_and_duplicate_nothing(db_url: str) -> None:
    """Eight threads on one connection, and (PostgreSQL) a second connection racing the same
    scanner on the same stamps: one standing verdict a (scanner, stamp), every write counted."""
    with open_verdicts(db_url) as db, open_verdicts(db_url) as other:
        ok: list[int] = []
        refused: list[int] = []

        def work(handle, k: int) -> None:
            for i in range(40):
                try:
                    ok.append(_v(handle, i, f"s{k % 4}", "real"))  # two threads per scanner
                except AlreadyJudgedError:
                    refused.append(i)

        threads = [
            threading.Thread(target=work, args=(db if k < 4 else other, k)) for k in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows = db.read()
        assert len(rows) == len(ok) == 4 * 40 and len(refused) == 4 * 40
        assert not rows.duplicated(["scanner", "stamp_id"]).any()
        assert sorted(rows["id"]) == sorted(ok)


def test_sqlite_default_location_is_invisible_to_parquet_readers(tmp_path: Path) -> None:
    """``SCORES/_verdicts.sqlite`` (and its WAL files) beside hive partitions: pandas still reads."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    part = tmp_path / "season=Y1" / "night=20130901"
    part.mkdir(parents=True)
    pq.write_table(pa.table({"stamp_id": [1, 2], "score": [0.1, 0.9]}), part / "part-0.parquet")
    with open_verdicts(default_db(tmp_path)) as db:
        _v(db, 1, "ann", "real")
        assert default_db(tmp_path).name.startswith("_")
        assert len(pd.read_parquet(tmp_path)) == 2  # -wal/-shm files exist now, too


def test_bad_databases_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(VerdictError, match="folder of the verdict database .* does not exist"):
        open_verdicts(tmp_path / "missing" / "v.sqlite")
    (tmp_path / "junk.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(VerdictError, match="not a usable SQLite verdict database"):
        open_verdicts(tmp_path / "junk.sqlite")
    with pytest.raises(VerdictError, match="cannot connect to the verdict database"):
        open_verdicts(f"postgresql://nobody@127.0.0.1:{_free_port()}/x")


# ----------------------------------------------------------------------------- the arithmetic


@given(st.integers(0, 400).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_interval_contains_the_estimate(kn: tuple[int, int]) -> None:
    k, n = kn
    lo, hi = wilson_interval(k, n)
    if n == 0:
        assert math.isnan(lo) and math.isnan(hi)
        return
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert (lo == 0.0) == (k == 0) and (hi == 1.0) == (k == n)
    # Symmetric: the interval of the failures is the mirror image.
    lo2, hi2 = wilson_interval(n - k, n)
    assert math.isclose(lo, 1 - hi2, abs_tol=1e-12) and math.isclose(hi, 1 - lo2, abs_tol=1e-12)


def test_wilson_interval_reference_values() -> None:
    # Wilson (1927) / Newcombe (1998) table: 81 of 263 -> 0.2553 .. 0.3662; 0 of 10 -> 0 .. 0.2775
    lo, hi = wilson_interval(81, 263)
    assert round(lo, 4) == 0.2553 and round(hi, 4) == 0.3662
    assert wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    with pytest.raises(MetricsError):
        wilson_interval(5, 3)


def test_wilson_interval_covers_about_95_percent() -> None:
    rng = np.random.default_rng(7)
    p, n = 0.12, 150
    hits = sum(
        lo <= p <= hi for lo, hi in (wilson_interval(int(k), n) for k in rng.binomial(n, p, 2000))
    )
    assert 0.93 <= hits / 2000 <= 0.97


@given(st.lists(st.sampled_from(["real", "bogus"]), min_size=1, max_size=60), st.data())
def test_kappa_properties(a: list[str], data) -> None:
    assert cohen_kappa(a, a) == 1.0 or math.isnan(cohen_kappa(a, a))  # NaN: one class only
    b = data.draw(st.lists(st.sampled_from(["real", "bogus"]), min_size=len(a), max_size=len(a)))
    k = cohen_kappa(a, b)
    assert math.isnan(k) or -1.0 <= k <= 1.0
    assert (math.isnan(k) and math.isnan(cohen_kappa(b, a))) or k == pytest.approx(
        cohen_kappa(b, a)
    )
    # Two raters: Fleiss' kappa of the count table, the same items.
    table = np.array([[x == "real", x == "bogus"] for x in a], float) + np.array(
        [[y == "real", y == "bogus"] for y in b], float
    )
    f = fleiss_kappa(table)
    assert math.isnan(f) or -1.0 <= f <= 1.0


def test_kappa_reference_values() -> None:
    # Fleiss (1971), table 1 (10 subjects, 14 raters, 5 categories, kappa 0.210) as in Wikipedia.
    t = np.array([[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0],
                  [2, 2, 8, 1, 1], [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2],
                  [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])  # fmt: skip
    assert fleiss_kappa(t) == pytest.approx(0.210, abs=5e-4)
    # Cohen: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no -> po 0.7, pe 0.5, kappa 0.4.
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert math.isnan(fleiss_kappa(np.array([[1, 0], [0, 1]])))  # no stamp judged twice


@settings(max_examples=50)
@given(st.lists(st.floats(0, 600, allow_nan=False), min_size=1, max_size=200))
def test_seconds_summary_orders(s: list[float]) -> None:
    out = seconds_summary(s)
    assert out["n"] == len(s)
    assert min(s) <= out["q1"] <= out["median"] <= out["q3"] <= max(s)
    assert out["median"] == pytest.approx(float(np.median(s)))
    assert seconds_summary([])["median"] is None


def _frame(rows: list[tuple[int, str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "season": "Y1",
                "night": 20130901,
                "stamp_id": i,
                "scanner": s,
                "verdict": v,
                "seconds": sec,
            }
            for i, s, v, sec in rows
        ]  # fmt: skip
    )


def test_consensus_and_figures() -> None:
    v = _frame([(1, "a", "real", 1.0), (1, "b", "real", 2.0), (1, "c", "bogus", 3.0),
                (2, "a", "bogus", 4.0), (2, "b", "real", 5.0),  # a tie: left out
                (3, "a", "skip", 6.0),  # skips only: left out
                (4, "b", "bogus", 7.0)])  # fmt: skip
    c = consensus(v)
    assert c[["stamp_id", "label", "n_verdicts"]].values.tolist() == [[1, 1, 3], [4, 0, 1]]
    f = scanning_figures(v, n_stamps=1000, n_candidates=100)
    assert (f["n_scanned"], f["n_judged_real"], f["n_judged_bogus"], f["fdr"]) == (2, 1, 1, 0.5)
    assert (f["fdr_low"], f["fdr_high"]) == pytest.approx(wilson_interval(1, 2))
    assert f["seconds"]["median"] == 4.0 and f["by_scanner"]["b"]["seconds"]["n"] == 3
    assert f["by_scanner"]["a"] == {"real": 1, "bogus": 1, "skip": 1, "n": 3,
                                    "seconds": seconds_summary([1.0, 4.0, 6.0])}  # fmt: skip
    assert f["time_saved"]["seconds_per_stamp"] == 4.0 and "measured" in f["seconds_source"]
    assert f["time_saved"]["hours_saved"] == pytest.approx(900 * 4.0 / 3600)
    assert f["agreement"]["n_stamps_multi"] == 2
    assert f["agreement"]["cohen_pair"][:2] == ["b", "a"] or f["agreement"]["cohen_pair"][:2] == [
        "a", "b"]  # fmt: skip


def test_labels_export_is_read_back_by_the_ingest(tmp_path: Path) -> None:
    db = tmp_path / "v.sqlite"
    with open_verdicts(db) as vdb:
        for i, s, v in [(10, "a", "real"), (10, "b", "real"), (11, "a", "bogus"),
                        (12, "a", "real"), (12, "b", "bogus"), (13, "a", "skip")]:  # fmt: skip
            _v(vdb, i, s, v)
        _v(vdb, 14, "a", "real")
        vdb.undo_last("a")  # 14 taken back: no label
    r = export_labels(db, tmp_path / "labels.csv")
    assert (r.n_labels, r.n_real, r.n_bogus, r.n_left_out) == (2, 1, 1, 2)
    labels = read_labels(tmp_path / "labels.csv")
    assert labels.ids.tolist() == [10, 11] and labels.labels.tolist() == [
        1,
        0,
    ]  # OBJECT_TYPE flipped
    table = pd.read_csv(tmp_path / "labels.csv", comment="#")
    assert table["N_VERDICTS"].tolist() == [2, 1] and table["OBJECT_TYPE"].tolist() == [0, 1]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_labels(tmp_path / "none.sqlite", tmp_path / "x.csv")
