"""The `s2v` command as users run it: help, one-line errors, and the train/report commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from s2v_batch.sim.simulator import simulate_stamps
from s2v_batch.store import dataset as zstore


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


NIGHTLY = ["--raw", "r", "--store", "s", "--out", "o", "--reports", "p"]
TRAIN = ["--out", "m", "--data-description", "x", "--simulated"]

#: Every command's bad-argument paths: argparse's own (missing, badly typed, unknown) and the
#: command's checks. ``{tmp}`` is an empty folder.
BAD_ARGUMENTS = [
    ([], "s2v", "the following arguments are required: COMMAND"),
    (["frobnicate"], "s2v", "invalid choice: 'frobnicate'"),
    (["simulate"], "s2v simulate", "the following arguments are required: out"),
    (
        ["simulate", "x", "--season", "Z9"],
        "s2v simulate",
        "season must be SV, Y1, Y2 ... (DES) or ZTF2024",
    ),
    (["simulate", "x", "--nights", "0"], "s2v simulate", "positive integer"),
    (["simulate", "x", "--format", "png"], "s2v simulate", "invalid choice: 'png'"),
    (["simulate", "x", "--first-night", "20131301"], "s2v simulate", "night must be a date"),
    (["ingest", "raw"], "s2v ingest", "the following arguments are required: --store"),
    (
        ["ingest", "{tmp}", "--store", "s", "--night", "20130901"],
        "s2v ingest",
        "--night needs --season",
    ),
    (["ingest", "raw", "--store", "s", "--lock-wait", "soon"], "s2v ingest", "invalid float value"),
    (["ingest", "raw", "--store", "s", "--bogus"], "s2v ingest", "unrecognized arguments: --bogus"),
    (["ingest", "{tmp}/nowhere", "--store", "s"], "s2v ingest", "raw input"),
    (["train", "{tmp}", "--out", "m", "--data-description", "x"], "s2v train", "--simulated"),
    (["train", "{tmp}", *TRAIN], "s2v train", "no stored nights under"),
    (["train", "{tmp}/nowhere", *TRAIN], "s2v train", "does not exist"),
    (["train", "{tmp}", *TRAIN, "--epochs", "0"], "s2v train", "positive integer"),
    (["score", "store"], "s2v score", "the following arguments are required: --out"),
    (["score", "store", "--out", "o", "--night", "tomorrow"], "s2v score", "night must be a date"),
    (["score", "{tmp}", "--out", "o", "--threshold", "1.5"], "s2v score", "threshold must be"),
    (["score", "{tmp}/nowhere", "--out", "o"], "s2v score", "nowhere does not exist"),
    (["report", "scores"], "s2v report", "the following arguments are required: --out"),
    (["report", "{tmp}/nowhere", "--out", "r"], "s2v report", "nowhere"),
    (
        ["report", "{tmp}", "--out", "r", "--seconds-per-stamp", "0"],
        "s2v report",
        "seconds_per_stamp",
    ),
    (["nightly", "--raw", "r"], "s2v nightly", "the following arguments are required"),
    (
        ["nightly", *NIGHTLY, "--night", "2013-09-01"],
        "s2v nightly",
        "night must be a date YYYYMMDD",
    ),
    (["nightly", *NIGHTLY, "--night", "20130901"], "s2v nightly", "raw input r does not exist"),
    (["backfill", *NIGHTLY[:6]], "s2v backfill", "required: --reports"),
    (["backfill", *NIGHTLY], "s2v backfill", "raw input r does not exist"),
    (["backfill", *NIGHTLY, "--max-concurrency", "0"], "s2v backfill", "positive integer"),
    (
        ["ingest", "{tmp}", "--store", "s", "--float-encoding", "bitround-30"],
        "s2v ingest",
        "unknown float encoding 'bitround-30'",
    ),
    (["demo", "--nights", "0"], "s2v demo", "positive integer"),
    (["demo", "--bogus"], "s2v demo", "unrecognized arguments: --bogus"),
]


def _one_error_line(rc: int, out: str, err: str, prog: str, message: str) -> None:
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith(f"{prog}: error: ") and message in lines[0], lines[0]
    assert out == ""


@pytest.mark.parametrize("args, prog, message", BAD_ARGUMENTS)
def test_bad_arguments_give_exit_2_and_one_error_line(tmp_path, capsys, args, prog, message):
    from s2v_batch.cli.main import main

    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's errors exit from parse_args
        rc = exc.code
    out, err = capsys.readouterr()
    _one_error_line(rc, out, err, prog, message)


@pytest.mark.parametrize(
    "args, prog, message",
    [
        (["ingest", "{tmp}", "--store", "s", "--night", "20130901"], "s2v ingest", "--night needs"),
        (["train", "{tmp}", *TRAIN], "s2v train", "no stored nights under"),
        (["simulate", "x", "--nights", "0"], "s2v simulate", "positive integer"),
        (["score", "nowhere", "--out", "s"], "s2v score", "store nowhere does not exist"),
    ],
)
def test_the_command_exits_2_with_one_error_line(tmp_path, args, prog, message):
    """The same as a user sees it: the process's exit status and its whole stderr."""
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = subprocess.run(
        [sys.executable, "-m", "s2v_batch.cli", *argv], capture_output=True, text=True, cwd=tmp_path
    )
    _one_error_line(r.returncode, "", r.stderr, prog, message)


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
    assert card["threshold"] == card["validation_metrics"]["threshold"]


@pytest.mark.parametrize("name", ["nightly", "gpu"])
def test_shipped_pipeline_configs_are_valid(name):
    from s2v_batch.core.config import PipelineConfig

    cfg = PipelineConfig.from_yaml(
        Path(__file__).resolve().parent.parent / "configs" / f"{name}.yaml"
    )
    assert cfg.ingest.stamp_size == 51 and cfg.score.part_stamps >= cfg.score.batch_size


@pytest.mark.parametrize("ref", ["gpu", "gpu.yaml", "configs/gpu.yaml"])
def test_a_shipped_config_is_found_by_name_from_any_folder(ref, tmp_path, monkeypatch):
    from s2v_batch.core.config import PipelineConfig

    monkeypatch.chdir(tmp_path)
    repo = Path(__file__).resolve().parent.parent
    assert PipelineConfig.from_yaml(ref) == PipelineConfig.from_yaml(repo / "configs" / "gpu.yaml")


def test_an_unknown_config_is_a_one_line_error_listing_the_shipped_names(tmp_path, capsys):
    from s2v_batch.cli.main import main

    code = main(["score", str(tmp_path), "--out", str(tmp_path / "o"), "--config", "nope"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("s2v score: error: config file 'nope' does not exist")
    configs = sorted(
        p.stem for p in (Path(__file__).resolve().parent.parent / "configs").glob("*.yaml")
    )
    assert f"(shipped: {', '.join(configs)})" in err


def test_ingest_float_encoding_stores_fits_stamps_compactly(tmp_path):
    """--float-encoding bitround-K: float stamps keep K mantissa bits (recorded in the night's
    attributes), their values within 2^-K relative of the lossless ones; GIF nights stay lossless."""
    import numpy as np

    from s2v_batch.cli.main import main
    from s2v_batch.sim.simulator import simulate
    from s2v_batch.store import dataset as zstore

    raw = tmp_path / "raw"
    simulate(raw, season="Y1", nights=1, stamps_per_night=60, fmt="fits", seed=3)
    simulate(raw, season="Y2", nights=1, stamps_per_night=20, fmt="gif", seed=4)
    got = {}
    for enc in ("lossless", "bitround-7"):
        store = tmp_path / enc
        args = ["ingest", str(raw), "--store", str(store), "--float-encoding", enc]
        assert main([*args, "--no-progress"]) == 0
        for ref in zstore.list_nights(store):
            attrs = zstore.read_attrs(ref.path)
            got[enc, ref.season] = (attrs["stamps_encoding"], zstore.open_night(ref.path))
    assert got["bitround-7", "Y1"][0] == "bitround-7"
    assert got["lossless", "Y1"][0] == "lossless" and got["bitround-7", "Y2"][0] == "lossless"
    exact = got["lossless", "Y1"][1].stamps.values
    compact = got["bitround-7", "Y1"][1].stamps.values
    assert compact.dtype == np.float32 and not np.array_equal(exact, compact)
    np.testing.assert_allclose(compact, exact, rtol=2.0**-7, atol=0)


@pytest.mark.parametrize("command", ["nightly", "backfill", "demo"])
def test_the_flows_prefect_settings_hold_for_the_commands_that_run_a_flow(command):
    """The commands import Prefect early (the run log's preload): s2v_flows' defaults must be set
    by then, or the local server gets Prefect's 20 s start-up limit (a fresh clone's first demo
    timed out so on this machine)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_SERVER_")}
    script = (
        "from s2v_batch.cli.main import _PRELOAD\n"
        f"for name in _PRELOAD[{command!r}]: __import__(name)\n"
        "from prefect.settings import get_current_settings as g\n"
        "s = g().server\n"
        "print(s.ephemeral.startup_timeout_seconds, s.analytics_enabled)\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["120", "False"]
