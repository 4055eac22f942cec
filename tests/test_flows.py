"""The Prefect flows, run for real: Prefect's test harness, a LocalCluster, simulated stamps, small models."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parent.parent
STAMPS = 120  # a night: enough for two ingest units and several score batches, fast to simulate


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two seasons: Y1 with a gif night (plus two corrupt stamps) and a tar night; Y2 one gif night."""
    from s2v_batch.sim.simulator import pack_night_as_tar, simulate

    root = tmp_path_factory.mktemp("raw")
    y1 = simulate(root, season="Y1", nights=2, stamps_per_night=STAMPS, fmt="gif", seed=11)
    y2 = simulate(root, season="Y2", nights=1, stamps_per_night=STAMPS, fmt="gif", seed=12)
    n1, n2 = y1.nights
    bad = root / "Y1" / str(n1) / "ccd99"
    bad.mkdir()
    for sid in (990001, 990002):
        for ch in ("srch", "temp", "diff"):
            (bad / f"{ch}{sid}.gif").write_bytes(b"GIF89a truncated")
    archives = pack_night_as_tar(root / "Y1" / str(n2))
    return {"root": root, "y1": (n1, n2), "y2": y2.nights[0], "archives": archives}


@pytest.fixture(scope="module")
def address(dask_client: Any) -> str:
    return dask_client.scheduler.address


def _roots(base: Path) -> dict[str, str]:
    return {
        "store": str(base / "store"),
        "out": str(base / "scores"),
        "reports": str(base / "reports"),
    }


def _copy_model(src: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for f in (src, src.with_suffix(".json")):
        shutil.copy2(f, dest / f.name)
    return dest / src.name


# --------------------------------------------------------------------------- nightly


def test_nightly_end_to_end_then_nothing_again(
    prefect_harness, raw, address, make_test_model, tmp_path
):
    import xarray as xr

    from s2v_batch.store import scores as sink
    from s2v_flows.nightly import nightly_flow

    model = make_test_model("flows-a", "1", 1)
    night = raw["y1"][0]
    roots = _roots(tmp_path)
    first = nightly_flow(
        raw=str(raw["root"]), night=night, model=str(model), cluster=address, **roots
    )

    assert first["season"] == "Y1" and first["night"] == night
    assert first["status"] == "done"
    assert first["steps"] == {"ingest": "ingested", "score": "scored", "report": "done"}
    assert first["ingest"]["n_found"] == STAMPS + 2
    assert first["ingest"]["n_quarantined"] == 2  # the two corrupt stamps, with a reason
    assert first["ingest"]["n_stored"] == STAMPS
    assert first["labels"].endswith("autoscan_features.3.csv")  # the default labels CSV
    assert first["model"]["version"] == "flows-a-1"

    ds = xr.open_zarr(first["ingest"]["path"], zarr_format=3)
    assert ds.sizes["stamp"] == STAMPS
    assert set(ds["label"].values.tolist()) <= {0, 1}  # every stored stamp has a CSV row
    q = pd.read_parquet(first["ingest"]["quarantine"])
    assert len(q) == 2 and q["reason"].str.len().gt(0).all()
    scores = pd.read_parquet(roots["out"], filters=[("season", "==", "Y1")])
    assert len(scores) == STAMPS == first["score"]["n_stamps"]
    assert scores["model_sha256"].unique().tolist() == [first["model"]["sha256"]]
    assert Path(first["index"]).is_file()
    assert (Path(roots["reports"]) / "Y1" / "nights" / str(night) / "report.json").is_file()

    run_id = sink.read_manifest(roots["out"], "Y1", night)["run_id"]
    store_mtime = Path(first["ingest"]["path"]).stat().st_mtime_ns
    second = nightly_flow(
        raw=str(raw["root"]), night=night, model=str(model), cluster=address, **roots
    )

    # The library finds the night stored and scored: nothing ingested or scored again.
    assert second["steps"]["ingest"] == "skipped" and second["steps"]["score"] == "skipped"
    for step in ("ingest", "score"):
        assert {k: v for k, v in second[step].items() if k != "status"} == {
            k: v for k, v in first[step].items() if k != "status"
        }
    assert sink.read_manifest(roots["out"], "Y1", night)["run_id"] == run_id
    assert Path(first["ingest"]["path"]).stat().st_mtime_ns == store_mtime

    # A skip is only made on what is on disk: remove the scores, they come back.
    shutil.rmtree(sink.night_dir(roots["out"], "Y1", night))
    third = nightly_flow(
        raw=str(raw["root"]), night=night, model=str(model), cluster=address, **roots
    )
    assert third["steps"]["ingest"] == "skipped" and third["steps"]["score"] == "scored"
    assert len(pd.read_parquet(roots["out"])) == STAMPS


def _tree_identity(path: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (inode, mtime)}`` of every file and folder under ``path``: it changes
    when the tree is written again, whether in place or swapped in."""
    return {
        str(p.relative_to(path)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in [path, *sorted(path.rglob("*"))]
    }


def test_nightly_redoes_a_night_whose_raw_files_changed(
    prefect_harness, raw, address, make_test_model, tmp_path
):
    """Touching, adding or replacing a raw file of a finished night: the next nightly run
    ingests and scores that night again; without a change it rewrites nothing."""
    from s2v_batch.formats.decode import decode_gif
    from s2v_batch.store import dataset as zstore
    from s2v_batch.store import scores as sink
    from s2v_flows.nightly import nightly_flow

    root = tmp_path / "raw"
    shutil.copytree(raw["root"], root)
    night = raw["y2"]  # the Y2 gif night
    roots = _roots(tmp_path)
    kw = dict(raw=str(root), night=night, model=str(make_test_model("flows-a", "1", 1)))
    stored = zstore.night_path(roots["store"], "Y2", night)
    nightly_flow(**kw, cluster=address, **roots)
    files = sorted((root / "Y2" / str(night)).rglob("*.gif"))
    srch = [p for p in files if p.name.startswith("srch")]

    def again() -> dict:
        tree, run_id = _tree_identity(stored), sink.read_manifest(roots["out"], "Y2", night)
        out = nightly_flow(**kw, cluster=address, **roots)
        out["rewritten"] = _tree_identity(stored) != tree
        out["rescored"] = (
            sink.read_manifest(roots["out"], "Y2", night)["run_id"] != run_id["run_id"]
        )
        return out

    out = again()
    assert not out["rewritten"] and not out["rescored"]

    st_ = files[4].stat()  # touched: same bytes, a new modification time
    os.utime(files[4], ns=(st_.st_atime_ns, st_.st_mtime_ns + 10**9))
    out = again()
    assert (out["steps"]["ingest"], out["steps"]["score"]) == ("ingested", "scored")
    assert out["rewritten"] and out["rescored"]

    sid = srch[2].name[4:-4]  # added: a new stamp, a copy of another under a new ID
    for ch in ("srch", "temp", "diff"):
        shutil.copy(srch[2].with_name(f"{ch}{sid}.gif"), srch[2].with_name(f"{ch}96000001.gif"))
    out = again()
    assert (out["steps"]["ingest"], out["steps"]["score"]) == ("ingested", "scored")
    assert out["ingest"]["n_stored"] == STAMPS + 1 and out["score"]["n_stamps"] == STAMPS + 1
    assert 96000001 in set(pd.read_parquet(roots["out"], filters=[("season", "==", "Y2")]).stamp_id)

    a, b = srch[0].name[4:-4], srch[1].name[4:-4]  # replaced: a's diff now holds b's
    donor = srch[1].with_name(f"diff{b}.gif")
    srch[0].with_name(f"diff{a}.gif").write_bytes(donor.read_bytes())
    out = again()
    assert (out["steps"]["ingest"], out["steps"]["score"]) == ("ingested", "scored")
    ds = zstore.open_night(stored)
    i = ds.stamp_id.values.tolist().index(int(a))
    np.testing.assert_array_equal(ds.stamps.values[i, :, :, 2], decode_gif(donor.read_bytes(), 51))


def test_nightly_rerun_after_scoring_failure_does_only_the_rest(
    prefect_harness, raw, address, make_test_model, tmp_path
):
    from s2v_batch.model import ModelArtifactError
    from s2v_batch.store import scores as sink
    from s2v_flows.nightly import nightly_flow

    model = _copy_model(make_test_model("flows-a", "1", 1), tmp_path / "model")
    good = model.read_bytes()
    model.write_bytes(good[: len(good) // 2])  # the file no longer matches its card's sha256
    night = raw["y1"][1]  # the tar night
    roots = _roots(tmp_path)
    kw = dict(raw=str(raw["root"]), night=night, season="Y1", model=str(model), cluster=address)

    state = nightly_flow(**kw, **roots, return_state=True)
    assert state.is_failed()
    with pytest.raises(ModelArtifactError, match="sha256"):
        state.result()
    # Ingest finished before scoring failed; nothing was published for the night.
    assert sink.read_manifest(roots["out"], "Y1", night) is None

    model.write_bytes(good)
    again = nightly_flow(**kw, **roots)
    assert again["steps"] == {"ingest": "skipped", "score": "scored", "report": "done"}
    assert again["ingest"]["n_found"] == again["ingest"]["n_stored"] == STAMPS
    assert again["score"]["n_stamps"] == STAMPS


def test_nightly_bad_input_fails_with_a_clear_error(
    prefect_harness, raw, address, make_test_model, tmp_path
):
    from s2v_batch.pipeline.steps import InputError, NightError, NoDataError
    from s2v_flows.nightly import nightly_flow

    model = str(make_test_model("flows-a", "1", 1))
    roots = _roots(tmp_path)
    kw = dict(raw=str(raw["root"]), model=model, cluster=address, **roots)
    with pytest.raises(NoDataError, match="no data for night 20200101: no stamps under"):
        nightly_flow(night=20200101, fail_if_no_data=True, **kw)
    with pytest.raises(NightError, match="YYYYMMDD"):
        nightly_flow(night="2013-09-01", **kw)
    with pytest.raises(InputError, match="does not exist"):
        nightly_flow(**{**kw, "raw": str(tmp_path / "nope")}, night=20130901)
    assert not Path(roots["store"]).exists()  # nothing was written for bad input


def test_a_night_without_data_completes_saying_so(
    prefect_harness, raw, address, make_test_model, tmp_path
):
    from s2v_batch.pipeline.steps import last_night
    from s2v_flows.nightly import nightly_flow

    model = str(make_test_model("flows-a", "1", 1))
    kw = dict(raw=str(raw["root"]), model=model, cluster=address, **_roots(tmp_path))
    # No night: last night, from the run's scheduled time (here: now) in the observatory's zone.
    before = last_night(dt.datetime.now(dt.UTC))
    state = nightly_flow(night=None, return_state=True, **kw)
    after = last_night(dt.datetime.now(dt.UTC))
    assert state.is_completed()
    out = state.result()
    assert out["status"] == "no-data" and out["night"] in (before, after)
    assert f"no data for night {out['night']}: no stamps under" in out["line"]
    assert state.message.startswith(f"no data for night {out['night']}")
    assert "latest earlier night folder there" in out["line"]  # the newest simulated night
    # Waiting for late data: the run looks again until its window closes.
    t0 = dt.datetime.now()
    out = nightly_flow(night=20200101, wait_for_data=1.5, **kw)
    assert out["status"] == "no-data" and "after waiting 1.5 s" in out["line"]
    assert (dt.datetime.now() - t0).total_seconds() >= 1.5


# --------------------------------------------------------------------------- retries


def test_retries_transient_errors_but_not_bad_input(prefect_harness):
    from prefect import flow, task

    from s2v_batch.ingest.driver import IngestError
    from s2v_flows.nightly import TASK

    calls: list[str] = []

    @task(**{**TASK, "retry_delay_seconds": 0, "retry_jitter_factor": None})
    def flaky(kind: str) -> int:
        calls.append(kind)
        if len(calls) == 1:
            raise OSError("shared filesystem hiccup") if kind == "io" else IngestError("bad input")
        return len(calls)

    @flow
    def run(kind: str) -> Any:
        return flaky(kind, return_state=True)

    assert run("io").result() == 2  # failed once, retried, succeeded
    calls.clear()
    state = run("bad", return_state=True)
    assert state.is_failed() and calls == ["bad"]  # a ValueError is never retried


# --------------------------------------------------------------------------- backfill


def test_backfill_skips_complete_nights_and_isolates_a_failing_one(
    prefect_harness, raw, address, make_test_model, tmp_path
):
    from s2v_batch.store import dataset as zstore
    from s2v_batch.store import scores as sink
    from s2v_flows.backfill import BackfillError, backfill_flow

    model_a = str(make_test_model("flows-a", "1", 1))
    model_b = str(make_test_model("flows-a", "2", 2))
    roots = _roots(tmp_path)
    every = [["Y1", raw["y1"][0]], ["Y1", raw["y1"][1]], ["Y2", raw["y2"]]]
    kw = dict(raw=str(raw["root"]), cluster=address, **roots)

    first = backfill_flow(**kw, model=model_a, max_concurrency=2)
    assert first["failed"] == [] and first["skipped"] == []
    assert sorted([d["season"], d["night"]] for d in first["done"]) == every
    assert set(first["reports"]) == {"Y1", "Y2"}
    assert len(pd.read_parquet(roots["out"])) == 3 * STAMPS

    # Again, asking for one night that has no stamps: the others are complete and skipped.
    second = backfill_flow(**kw, model=model_a, nights=[n for _, n in every] + [20991231])
    assert second["done"] == [] and second["skipped"] == every
    assert second["failed"] == [
        {"season": None, "night": 20991231, "error": "no stamps for night 20991231"}
    ]

    # A new model rescores every night; one night's stored data is damaged and fails alone.
    shard = (
        zstore.night_path(roots["store"], "Y2", raw["y2"]) / "stamps" / "c" / "0" / "0" / "0" / "0"
    )
    shard.write_bytes(shard.read_bytes()[:100])
    third = backfill_flow(**kw, model=model_b, max_concurrency=1)
    assert sorted([d["season"], d["night"]] for d in third["done"]) == every[:2]
    assert all(
        d["steps"]["ingest"] == "skipped" and d["steps"]["score"] == "scored" for d in third["done"]
    )
    (fail,) = third["failed"]
    assert (fail["season"], fail["night"]) == ("Y2", raw["y2"])
    assert "the stored night is damaged" in fail["error"], fail["error"]
    y1 = pd.read_parquet(roots["out"], filters=[("season", "==", "Y1")])
    assert y1["model_version"].unique().tolist() == ["flows-a-2"]
    # The failed night keeps its earlier scores, whole.
    assert sink.read_manifest(roots["out"], "Y2", raw["y2"])["model_version"] == "1"
    assert third["reports"]["Y1"]["figures"]["n_stamps"] == 2 * STAMPS

    with pytest.raises(BackfillError, match="max_concurrency"):
        backfill_flow(**kw, model=model_a, max_concurrency=0)
    with pytest.raises(BackfillError, match="nothing to backfill"):
        backfill_flow(**kw, model=model_a, seasons=["Y5"])


# --------------------------------------------------------------------------- demo


def test_demo_simulates_runs_and_reuses_everything(
    prefect_harness, address, make_test_model, tmp_path
):
    from s2v_flows.demo import run_demo

    spec = tmp_path / "one-worker.yaml"
    spec.write_text(
        "kind: local\noptions: {n_workers: 1, threads_per_worker: 1, dashboard_address: '127.0.0.1:0'}\n"
    )
    model = str(make_test_model("flows-a", "1", 1))
    work = tmp_path / "demo"
    # Its own cluster from a spec file: opened once for both nights, closed at the end.
    out = run_demo(work, nights=2, stamps_per_night=80, seed=3, cluster=str(spec), model=model)
    n1, n2 = (r["night"] for r in out["nights"])
    assert out["n_stamps"] == out["n_stored"] == 160 and out["n_quarantined"] == 0
    assert Path(out["index"]).is_file() and out["index"].startswith(str(work))
    tars = sorted((work / "raw" / "Y1" / str(n2)).glob("*.tar"))
    assert tars and not [p for p in (work / "raw" / "Y1" / str(n2)).iterdir() if p.is_dir()]
    with tarfile.open(tars[0]) as tf:
        assert all(m.name.startswith(f"{tars[0].stem}/") for m in tf.getmembers())
    assert (work / "raw" / "Y1" / str(n1)).is_dir()
    assert out["season"]["n_stamps"] == 160

    again = run_demo(work, nights=2, stamps_per_night=80, seed=3, cluster=address, model=model)
    assert all(r["steps"]["ingest"] == r["steps"]["score"] == "skipped" for r in again["nights"])


def test_demo_refuses_a_foreign_raw_folder(tmp_path):
    from s2v_batch.sim.demo import DemoError
    from s2v_flows.demo import run_demo

    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "mine.txt").write_text("not the demo's")
    with pytest.raises(DemoError, match="not written by the demo"):
        run_demo(tmp_path, nights=1, stamps_per_night=10)
    with pytest.raises(DemoError, match="nights"):
        run_demo(tmp_path / "x", nights=0)


# --------------------------------------------------------------------------- scheduling


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(
        min_value=dt.datetime(2000, 1, 1),
        max_value=dt.datetime(2090, 1, 1),
        timezones=st.just(dt.UTC),
    )
)
def test_last_night_is_the_night_that_began_the_evening_before(when):
    from zoneinfo import ZoneInfo

    from s2v_batch.core.nights import OBSERVATORY_TZ, last_night

    night = last_night(when, OBSERVATORY_TZ)
    local = when.astimezone(ZoneInfo(OBSERVATORY_TZ))
    day = dt.datetime.strptime(str(night), "%Y%m%d").date()
    # Before noon local time it is the night that began the previous evening, after it today's.
    assert day == (local.date() if local.hour >= 12 else local.date() - dt.timedelta(days=1))


def test_resolve_night():
    from s2v_batch.core.nights import NightError, resolve_night

    assert resolve_night(20130901) == resolve_night("20130901") == 20130901
    assert isinstance(resolve_night(None), int) and resolve_night("last") == resolve_night(None)
    for bad in (20131301, "tomorrow", True, 2013):
        with pytest.raises(NightError):
            resolve_night(bad)
    with pytest.raises(NightError, match="timezone"):
        resolve_night(None, "Mars/Olympus_Mons")


def test_prefect_yaml_deploys_the_nightly_flow_with_its_config(monkeypatch):
    from prefect.flows import load_flow_from_entrypoint

    from s2v_batch.core.config import PipelineConfig
    from s2v_flows.nightly import NIGHTLY_CRON, OBSERVATORY_TZ, nightly_flow

    project = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (dep,) = [d for d in project["deployments"] if d["name"] == "s2v-nightly"]
    monkeypatch.chdir(REPO)
    loaded = load_flow_from_entrypoint(dep["entrypoint"])
    assert loaded.name == nightly_flow.name == dep["flow_name"]
    (sched,) = dep["schedules"]
    assert (sched["cron"], sched["timezone"]) == (NIGHTLY_CRON, OBSERVATORY_TZ)
    params = dep["parameters"]
    assert params["night"] is None  # last night, from the scheduled time
    accepted = nightly_flow.parameters.properties
    assert set(params) <= set(accepted)
    assert set(nightly_flow.parameters.required or []) <= set(params)
    # The deployment's config file is read as written (not defaults).
    cfg = PipelineConfig.from_yaml(REPO / params["config"])
    written = yaml.safe_load((REPO / params["config"]).read_text())
    for section, values in written.items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) == value, (section, key)


def test_serve_builds_a_scheduled_deployment(prefect_harness):
    from s2v_flows.nightly import build_deployment

    dep = build_deployment(
        [
            "--raw",
            "/data/raw",
            "--store",
            "/data/store",
            "--out",
            "/data/scores",
            "--reports",
            "/data/rep",
        ]
    )
    assert dep.name == "s2v-nightly"
    assert dep.parameters["night"] is None and dep.parameters["config"] == "configs/nightly.yaml"
    (sched,) = dep.schedules
    assert sched.schedule.cron == "0 9 * * *" and sched.schedule.timezone == "America/Santiago"
