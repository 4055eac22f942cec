"""The pipeline without Prefect: planning (one walk of the raw tree, the library's skip), steps."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from s2v_batch.pipeline import steps as pipeline
from s2v_batch.store import dataset as zstore
from s2v_batch.store import scores as sink
from s2v_batch.store import state as nightstate

STAMPS = 60


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Y1 with two gif nights, Y2 with one fits night."""
    from s2v_batch.sim.simulator import simulate

    root = tmp_path_factory.mktemp("raw")
    y1 = simulate(root, season="Y1", nights=2, stamps_per_night=STAMPS, fmt="gif", seed=21)
    y2 = simulate(root, season="Y2", nights=1, stamps_per_night=STAMPS, fmt="fits", seed=22)
    return {"root": root, "nights": [("Y1", n) for n in y1.nights] + [("Y2", y2.nights[0])]}


def _inputs(raw_root: Path, base: Path, model: Path | None = None) -> pipeline.RunInputs:
    return pipeline.resolve_inputs(
        raw_root, base / "store", base / "scores", base / "reports", model=model
    )


def test_plan_walks_the_raw_tree_once_and_says_what_is_done(
    raw, dask_client, make_test_model, tmp_path, monkeypatch
):
    import s2v_batch.ingest.rawtree as rawtree

    model_a, model_b = make_test_model("plan", "1", 1), make_test_model("plan", "2", 2)
    inputs = _inputs(raw["root"], tmp_path, model_a)
    walks: list[str] = []
    real_walk = os.walk

    def counting_walk(top, *args, **kwargs):
        walks.append(str(top))
        return real_walk(top, *args, **kwargs)

    monkeypatch.setattr(rawtree.os, "walk", counting_walk)
    p = pipeline.plan(inputs)
    assert len(walks) == 1  # one walk for every season and night
    assert [n.key for n in p.nights] == raw["nights"]
    assert [n.key for n in p.todo] == raw["nights"] and p.complete == []
    assert all(n.n_units == 1 and len(n.night_fingerprint) == 64 for n in p.nights)
    assert p.labels is not None  # RAW/autoscan_features.3.csv is found by default

    # Process one night through the steps: the plan then says it is complete.
    first = p.nights[0]
    out = pipeline.process_night(inputs, dask_client, p.only(first), first, log=lambda s: None)
    assert (out.ingest.status, out.score.status) == ("ingested", "scored")
    assert out.ingest.n_stored == out.score.n_stamps == STAMPS
    again = pipeline.plan(inputs)
    assert [n.key for n in again.complete] == [first.key]
    skipped = pipeline.process_night(inputs, dask_client, again, again.nights[0], log=print)
    assert (skipped.ingest.status, skipped.score.status) == ("skipped", "skipped")

    # Another model: the stored night stays current, its scores do not.
    other = pipeline.plan(_inputs(raw["root"], tmp_path, model_b))
    assert other.nights[0].stored and not other.nights[0].scored

    # A raw file touched: the stored night no longer matches its inputs.
    f = next((Path(raw["root"]) / first.season / str(first.night)).rglob("diff*.gif"))
    st = f.stat()
    try:
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        touched = pipeline.plan(inputs).nights[0]
        assert not touched.stored and not touched.scored
        assert touched.raw_fingerprint != first.raw_fingerprint
    finally:
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert pipeline.plan(inputs).nights[0].complete


def test_a_nightly_plan_enters_only_its_own_night(raw, tmp_path, monkeypatch):
    import s2v_batch.ingest.rawtree as rawtree

    visited: list[str] = []
    real_walk = os.walk

    def recording_walk(top, *args, **kwargs):
        for dirpath, dirnames, filenames in real_walk(top, *args, **kwargs):
            visited.append(dirpath)
            yield dirpath, dirnames, filenames

    monkeypatch.setattr(rawtree.os, "walk", recording_walk)
    season, night = raw["nights"][1]
    p = pipeline.plan(_inputs(raw["root"], tmp_path), nights=[night])
    assert [n.key for n in p.nights] == [(season, night)]
    others = {str(n) for _, n in raw["nights"] if n != night}
    assert not [d for d in visited if set(Path(d).parts) & others]
    assert {n for _, n in raw["nights"]} - {night} <= p.discovery.other_nights


def test_plan_night_reports_missing_data_and_waits_for_late_data(raw, tmp_path):
    inputs = _inputs(raw["root"], tmp_path)
    p = pipeline.plan_night(inputs, 20200101)
    assert p.nights == []
    (gap,) = p.missing
    assert gap.night == 20200101 and gap.reason.startswith("no data for night 20200101: no stamps")
    newest = max(n for _, n in raw["nights"])  # every simulated night is earlier: the newest named
    assert gap.reason.endswith(f"(latest earlier night folder there: {newest})")
    late = tmp_path / "late-raw"
    from s2v_batch.sim.simulator import simulate

    first = simulate(late, season="Y1", nights=1, stamps_per_night=5, seed=3).nights[0]
    late_inputs = _inputs(late, tmp_path / "late-out")
    target = first + 1

    elsewhere = tmp_path / "transfer"
    simulate(elsewhere, season="Y1", nights=1, stamps_per_night=5, seed=4, first_night=target)

    def arrive() -> None:  # the night's transfer lands a second after the run started looking
        time.sleep(1.0)
        os.replace(elsewhere / "Y1" / str(target), late / "Y1" / str(target))

    t = threading.Thread(target=arrive)
    t.start()
    try:
        t0 = time.monotonic()
        got = pipeline.plan_night(late_inputs, target, wait_for_data=60, poll=0.2)
    finally:
        t.join()
    assert [n.key for n in got.nights] == [("Y1", target)]
    assert time.monotonic() - t0 < 30
    with pytest.raises(pipeline.NightError):
        pipeline.resolve_night("2020-01-01")


def test_stores_and_manifests_written_before_the_renaming_are_still_current(tmp_path):
    rng = np.random.default_rng(0)
    path = zstore.night_path(tmp_path / "store", "Y1", 20130901)
    zstore.write_night(
        path,
        rng.integers(0, 255, (3, 51, 51, 3), dtype=np.uint8),
        np.arange(3),
        np.full(3, -1, np.int8),
        season="Y1",
        night=20130901,
        attrs={"input_fingerprint": "f" * 64},  # the attribute's name before 0.2
    )
    assert nightstate.current_night(path, "f" * 64) is not None
    assert nightstate.current_night(path, "e" * 64) is None
    nd = sink.night_dir(tmp_path / "scores", "Y1", 20130901)
    nd.mkdir(parents=True)
    (nd / sink.MANIFEST).write_text(
        '{"store_fingerprint": "' + "f" * 64 + '", "model_sha256": "abc", "threshold": 0.5,'
        ' "n_stamps": 3}'
    )
    kw = dict(model_sha256="abc", threshold=0.5, n_stamps=3)
    assert sink.current_scores(tmp_path / "scores", "Y1", 20130901, night_fp="f" * 64, **kw)
    assert not sink.current_scores(tmp_path / "scores", "Y1", 20130901, night_fp="e" * 64, **kw)
