"""Re-runs redo only what changed (issue 30): another season's labels, one night's labels, a raw
tree copied with ``cp -a``, a store moved with ``mv``, ``s2v score`` twice and twice at once,
and a model of another survey."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import zarr

from s2v_batch.core.config import IngestConfig
from s2v_batch.ingest.driver import dry_run as ingest_dry_run
from s2v_batch.ingest.driver import ingest
from s2v_batch.model.shipped import shipped_model_for
from s2v_batch.pipeline import steps as pipeline
from s2v_batch.report import write_reports
from s2v_batch.sim.alerts import simulate_alerts
from s2v_batch.sim.simulator import LABELS_CSV, simulate
from s2v_batch.store import dataset as zstore
from s2v_batch.store import scores as sink
from s2v_batch.store.scores import newest_model

STAMPS = 40


def _inputs(raw: Path, store: Path, base: Path, model: Path) -> pipeline.RunInputs:
    return pipeline.resolve_inputs(raw, store, base / "scores", base / "reports", model=model)


def _run(inputs: pipeline.RunInputs, client) -> dict[tuple[str, int], tuple[str, str]]:
    """Process every night the plan says is not complete; what each step did."""
    p = pipeline.plan(inputs)
    out = {}
    for n in p.todo:
        o = pipeline.process_night(inputs, client, p.only(n), n, log=lambda s: None)
        out[n.key] = (o.ingest.status, o.score.status)
    return out


def _inodes(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_ino for p in (path / "stamps").rglob("*")}


def test_labels_of_a_season_or_a_night_and_moved_trees(dask_client, make_test_model, tmp_path):
    model = make_test_model("reruns", "1", 3)
    raw, store = tmp_path / "raw", tmp_path / "store"
    y1 = simulate(raw, season="Y1", nights=1, stamps_per_night=STAMPS, seed=11)
    inputs = _inputs(raw, store, tmp_path, model)
    night1 = ("Y1", y1.nights[0])
    assert _run(inputs, dask_client) == {night1: ("ingested", "scored")}

    # Another season simulated into the same raw folder: its labels are appended to the
    # shared CSV. Y1 is left alone, and the plan says why Y2 runs.
    y2 = simulate(raw, season="Y2", nights=1, stamps_per_night=STAMPS, seed=12)
    night2 = ("Y2", y2.nights[0])
    p = pipeline.plan(inputs)
    assert [n.key for n in p.complete] == [night1]
    assert [(n.key, n.reason) for n in p.todo] == [(night2, "not stored")]
    assert _run(inputs, dask_client) == {night2: ("ingested", "scored")}

    # One label of one night changed: that night's labels are rewritten in place (its pixel
    # shards keep their inodes) and its scores redone; the other night is not touched.
    path1, path2 = (zstore.night_path(store, *k) for k in (night1, night2))
    before1, before2 = _inodes(path1), _inodes(path2)
    meta2 = (path2 / "zarr.json").stat().st_mtime_ns
    csv = raw / LABELS_CSV
    lines = csv.read_text().splitlines(keepends=True)
    first_id = int(zstore.read_stamp_ids(path1)[0])
    i = next(j for j, ln in enumerate(lines) if ln.startswith(f"{first_id},"))
    cells = lines[i].split(",")
    cells[1] = "1" if cells[1] == "0" else "0"  # OBJECT_TYPE flipped
    lines[i] = ",".join(cells)
    csv.write_text("".join(lines))
    why = ingest_dry_run(raw, store, labels=csv, config=IngestConfig())
    assert why[0] == [f"would relabel Y1/{night1[1]}: its labels changed"]
    assert "1 relabelled, 1 complete" in why[1] and "nothing was changed" in why[1]
    lines_b, summary_b = pipeline.dry_run(inputs)
    assert lines_b == [f"would run Y1/{night1[1]}: its labels changed"]
    assert "1 would run (its labels changed: 1), 1 complete" in summary_b
    scores1 = next(sink.night_dir(tmp_path / "scores", *night1).glob("part-*.parquet"))
    old_scores = pd.read_parquet(scores1)
    assert _run(inputs, dask_client) == {night1: ("relabelled", "relabelled")}
    assert _inodes(path1) == before1 and _inodes(path2) == before2
    assert (path2 / "zarr.json").stat().st_mtime_ns == meta2
    new_label = 1 - int(zarr.open_array(path1 / "label", mode="r")[0])  # flipped back = old
    assert int(zarr.open_array(path1 / "label", mode="r")[0]) != new_label
    # The scores were published again with the new label, not computed again.
    new_scores = pd.read_parquet(
        next(sink.night_dir(tmp_path / "scores", *night1).glob("*.parquet"))
    )
    assert new_scores.drop(columns="label").equals(old_scores.drop(columns="label"))
    changed = new_scores.label.fillna(-1) != old_scores.label.fillna(-1)
    assert new_scores.stamp_id[changed].tolist() == [first_id]
    assert int(new_scores.label[changed].iloc[0]) == int(zarr.open_array(path1 / "label")[0])
    assert pipeline.plan(inputs).todo == []

    # The raw tree copied with cp -a and the store moved with mv: every night stays complete.
    subprocess.run(["cp", "-a", str(raw), str(tmp_path / "raw2")], check=True)
    shutil.move(str(store), str(tmp_path / "store2"))
    moved = _inputs(tmp_path / "raw2", tmp_path / "store2", tmp_path, model)
    p = pipeline.plan(moved)
    assert [n.key for n in p.complete] == [night1, night2] and p.todo == []
    s = ingest(tmp_path / "raw2", tmp_path / "store2", dask_client, labels=moved.labels,
               progress=False, log=lambda s: None)  # fmt: skip
    assert [n.status for n in s.nights] == ["skipped", "skipped"]
    # A site that asks for content hashes: a copy that drops mtimes keeps the nights too
    # (after one re-ingest that records the new fingerprints).
    content = IngestConfig(fingerprint="content")
    subprocess.run(["cp", "-r", str(raw), str(tmp_path / "raw3")], check=True)  # new mtimes
    assert [n.need for n in _needs(tmp_path / "raw3", tmp_path / "store2", content)] == [
        "ingest", "ingest"
    ]  # fmt: skip
    ingest(tmp_path / "raw2", tmp_path / "store2", dask_client, labels=moved.labels,
           config=content, progress=False, log=lambda s: None)  # fmt: skip
    needs = _needs(tmp_path / "raw3", tmp_path / "store2", content, labels=moved.labels)
    assert [n.need for n in needs] == ["current", "current"]
    needs = _needs(tmp_path / "raw3", tmp_path / "store2", IngestConfig(), labels=moved.labels)
    assert {n.reason for n in needs} == {"its raw files changed"}  # stat: mtimes differ


def _needs(raw: Path, store: Path, cfg: IngestConfig, labels=None):
    from s2v_batch.ingest.labels import read_labels
    from s2v_batch.ingest.rawtree import discover
    from s2v_batch.ingest.status import night_need

    disc = discover(raw, content=cfg.fingerprint == "content")
    lab = read_labels(labels) if labels else None
    return [night_need(disc, k, store, lab, cfg) for k in sorted(disc.units)]


def _s2v(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "S2V_LOG_DIR": str(cwd / "logs")}
    return subprocess.Popen(
        [sys.executable, "-m", "s2v_batch.cli", *args],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_s2v_score_twice_at_once_scores_once_and_warns_of_another_survey(dask_client, tmp_path):
    sim = simulate_alerts(tmp_path / "raw", survey="rubin", nights=2, alerts_per_night=30,
                          fmt="parquet", seed=8)  # fmt: skip
    ingest(sim.out, tmp_path / "store", dask_client, progress=False, log=lambda s: None)
    ztf_model = shipped_model_for("ztf", 63)  # same stamp size, another survey
    args = ("score", "store", "--out", "scores", "--model", str(ztf_model), "--no-progress",
            "--lock-wait", "600")  # fmt: skip
    procs = [_s2v(*args, cwd=tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    lines = sorted(o[0].strip().splitlines()[-1] for o in outs)
    # One scored both nights; the other waited for its locks, then found them complete.
    assert any("2 scored, 0 already complete" in ln for ln in lines), lines
    assert any("0 scored, 2 already complete" in ln for ln in lines), lines
    for out, err in outs:
        assert "dask dashboard" not in out  # only with --verbose
        assert "trained on ZTF stamps; these nights are RUBIN" in err
    third = _s2v(*args, cwd=tmp_path)
    out, err = third.communicate(timeout=600)
    assert "0 scored, 2 already complete" in out.strip().splitlines()[-1], (out, err)
    again = _s2v(*args, "--rescore", cwd=tmp_path)
    out, err = again.communicate(timeout=600)
    assert "2 scored, 0 already complete" in out.strip().splitlines()[-1], (out, err)
    # The report says it too, from the model recorded with the scores.
    card = newest_model(tmp_path / "scores")
    assert card["survey"] == "ztf"
    s = write_reports(tmp_path / "scores", tmp_path / "reports", model_card=card)
    (season,) = s.seasons
    rep = json.loads((tmp_path / "reports" / season / "report.json").read_text())
    assert any("trained on ZTF stamps and these are RUBIN" in w for w in rep["warnings"])
