"""The `s2v` command as users run it: help, one-line errors, and the train/report commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from s2v_batch import store as zstore
from s2v_batch.simulator import simulate_stamps


def s2v(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "s2v_batch.cli", *args], capture_output=True, text=True
    )


@pytest.mark.parametrize(
    "cmd", ["simulate", "ingest", "train", "score", "report", "nightly", "backfill", "demo"]
)
def test_every_command_explains_itself(cmd):
    r = s2v(cmd, "--help")
    assert r.returncode == 0 and "usage: s2v" in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["simulate", "x", "--season", "Z9"], "season must look like"),
        (["simulate", "x", "--nights", "0"], "positive integer"),
        (["score", "nowhere", "--out", "s"], "error: store nowhere does not exist"),
        (["report", "nowhere", "--out", "r"], "error:"),
        (
            [
                "nightly",
                "--raw",
                "r",
                "--night",
                "2013-09-01",
                "--store",
                "s",
                "--out",
                "o",
                "--reports",
                "p",
            ],
            "night must be a date YYYYMMDD",
        ),
    ],
)
def test_bad_arguments_give_one_clear_line(tmp_path, args, message):
    r = subprocess.run(
        [sys.executable, "-m", "s2v_batch.cli", *args], capture_output=True, text=True, cwd=tmp_path
    )
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_train_command_writes_a_card_that_says_what_it_learned_from(tmp_path):
    batch = simulate_stamps(400, np.random.default_rng(4))
    zstore.write_night(
        zstore.night_path(tmp_path / "store", "Y1", 20130901),
        np.nan_to_num(batch.pixels),
        np.arange(400) + 7_000_000,
        batch.labels,
        season="Y1",
        night=20130901,
    )
    r = s2v(
        "train",
        str(tmp_path / "store"),
        "--out",
        str(tmp_path / "models"),
        "--arch",
        "vgg6",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--name",
        "cli-test",
        "--no-progress",
        "--data-description",
        "simulated stamps, seed 4",
        "--simulated",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("train: wrote")
    card = json.loads((tmp_path / "models" / "cli-test-1.json").read_text())
    assert card["architecture"] == "vgg6"
    assert card["training_data"]["simulated"] is True
    assert card["training_data"]["description"] == "simulated stamps, seed 4"
    assert 0.0 <= card["threshold"] <= 1.0


@pytest.mark.parametrize("name", ["nightly", "gpu"])
def test_shipped_pipeline_configs_are_valid(name):
    from s2v_batch.config import PipelineConfig

    cfg = PipelineConfig.from_yaml(
        Path(__file__).resolve().parent.parent / "configs" / f"{name}.yaml"
    )
    assert cfg.ingest.stamp_size == 51 and cfg.score.part_stamps >= cfg.score.batch_size


@pytest.mark.parametrize("ref", ["gpu", "gpu.yaml", "configs/gpu.yaml"])
def test_a_shipped_config_is_found_by_name_from_any_folder(ref, tmp_path, monkeypatch):
    from s2v_batch.config import PipelineConfig

    monkeypatch.chdir(tmp_path)
    repo = Path(__file__).resolve().parent.parent
    assert PipelineConfig.from_yaml(ref) == PipelineConfig.from_yaml(repo / "configs" / "gpu.yaml")


def test_an_unknown_config_is_a_one_line_error_listing_the_shipped_names(tmp_path, capsys):
    from s2v_batch.cli import main

    code = main(["score", str(tmp_path), "--out", str(tmp_path / "o"), "--config", "nope"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("s2v score: error: config file 'nope' does not exist")
    configs = sorted(
        p.stem for p in (Path(__file__).resolve().parent.parent / "configs").glob("*.yaml")
    )
    assert f"(shipped: {', '.join(configs)})" in err
