"""The shipped models' cards carry their real-stamp check, and the check runs (issue 26).

``benchmarks/realdata/check.py --write-card`` puts a ``real_data`` entry into a card; these tests
read the shipped cards as they are on disk (a retrained model whose card was not re-checked
fails here: its ``real_data`` is missing or names another model's digest). The check itself is
run on simulated stamps laid out as the real sources are (the readers, the DES label flip, the
proxy labels) and, once, end to end on the real data the project ships.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from s2v_batch.model.artifact import ModelArtifactError, ModelCard, load_card
from s2v_batch.model.shipped import shipped_models_dir
from s2v_batch.sim.alerts import simulate_alerts
from s2v_batch.sim.simulator import simulate_stamps

REPO = Path(__file__).resolve().parent.parent
CHECK = REPO / "benchmarks" / "realdata" / "check.py"
FIGURES = ("n", "n_real", "n_artifact", "recall", "fpr", "roc_auc", "right", "threshold")
SHIPPED_CARDS = sorted(shipped_models_dir().glob("*.json"))


def _realsets():
    spec = importlib.util.spec_from_file_location("realsets", CHECK.parent / "realsets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CHECK), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
    )


def _a_file(path: Path) -> Path:
    path.write_text("not a folder of stamps")
    return path


def test_there_are_shipped_cards():
    assert len(SHIPPED_CARDS) >= 2


@pytest.mark.parametrize("card_path", SHIPPED_CARDS, ids=lambda p: p.stem)
def test_shipped_card_carries_real_data(card_path):
    card = load_card(card_path)
    rd = card.real_data
    assert rd, f"{card_path.name}: no real_data; run benchmarks/realdata/check.py --write-card"
    datetime.date.fromisoformat(rd["date"])
    assert rd["command"].startswith("python benchmarks/realdata/check.py")
    assert "--write-card" in rd["command"]
    # The figures are of this very model file, not of one it replaced.
    assert rd["sha256"] == card.sha256
    sources = rd["sources"]
    assert any(s["n"] > 0 for s in sources.values())
    for name, s in sources.items():
        assert set(FIGURES) <= set(s), name
        assert s["n"] == s["n_real"] + s["n_artifact"] > 0, name
        assert 0 <= s["right"] <= s["n"], name
        assert s["threshold"] == pytest.approx(card.threshold), name
        assert isinstance(s["held_out"], bool) and s["labels"], name
        for key, count in (("recall", "n_real"), ("fpr", "n_artifact")):
            if s[count]:
                assert 0.0 <= s[key] <= 1.0, (name, key)
            else:
                assert s[key] is None, (name, key)
        if s["n_real"] and s["n_artifact"]:
            assert 0.0 <= s["roc_auc"] <= 1.0, name
            # right = reals passed + artifacts stopped, by the recall and FPR given.
            right = s["recall"] * s["n_real"] + (1 - s["fpr"]) * s["n_artifact"]
            assert math.isclose(right, s["right"], abs_tol=1e-6), name


def test_card_real_data_must_be_an_object():
    data = json.loads(SHIPPED_CARDS[0].read_text())
    assert ModelCard.from_dict(data).real_data == data["real_data"]
    data["real_data"] = [1, 2]
    with pytest.raises(ModelArtifactError, match="real_data"):
        ModelCard.from_dict(data)


def test_check_reads_each_layout_and_exports_realsets(tmp_path):
    """The DES sample's layout (labels 1 = ARTIFACT, flipped) and alert packets (labels by the
    survey's own score), written from simulated stamps, read back as realsets."""
    data = tmp_path / "data"
    batch = simulate_stamps(12, np.random.default_rng(7), survey="des")
    des = data / "des-sim" / "model_inference" / "sample_test_data"
    des.mkdir(parents=True)
    np.save(des / "input_x.npy", batch.pixels)
    np.savetxt(des / "input_labels_y.txt", 1 - batch.labels.astype(float))
    simulate_alerts(data / "ztf-sim", survey="ztf", alerts_per_night=40, fmt="avro", seed=3)
    out = _run("--data", str(data), "--export", str(tmp_path / "npz"), "--no-score")
    assert out.returncode == 0, out.stderr
    rs = _realsets()

    d = rs.load_realset(tmp_path / "npz" / "des-sim.npz")
    assert d["survey"] == "des" and d["x"].dtype == batch.pixels.dtype
    np.testing.assert_array_equal(d["y"], batch.labels)  # flipped back to 1 = real
    np.testing.assert_array_equal(d["x"], batch.pixels)
    assert list(d["ids"]) == [f"ayyar2022-{k}" for k in range(12)]

    z = rs.load_realset(tmp_path / "npz" / "ztf-sim.npz")
    assert z["survey"] == "ztf" and z["x"].shape[1:] == (63, 63, 3)
    assert np.isfinite(z["x"]).all()
    assert ((z["proxy"] >= 0.9) == (z["y"] == 1)).all()
    assert ((z["proxy"] <= 0.1) == (z["y"] == 0)).all()
    assert len(set(z["ids"])) == len(z["ids"]) and all(g.startswith("ZTF") for g in z["group"])
    # Every alert is kept or said to be left out (the simulated drb has some in between).
    line = next(s for s in out.stdout.splitlines() if s.startswith("ztf-sim "))
    between = re.search(r"(\d+) score in between", line)
    assert len(z["y"]) + (int(between.group(1)) if between else 0) == 40


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "no such folder"),
        (lambda p: p, "no real stamps found"),
        (lambda p: _a_file(p / "f.txt"), "not a folder"),
    ],
)
def test_check_bad_data_is_one_line(tmp_path, make, message):
    out = _run("--data", str(make(tmp_path)), "--no-score", timeout=120)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_check_runs_on_the_shipped_data_and_matches_the_card(tmp_path):
    """check.py with no data argument reads what the project ships; the ZTF card's figures of
    those sources are what it finds (counts exactly; `right` within one stamp, since a score
    this close to the threshold may round differently on another CPU)."""
    card_path = shipped_models_dir() / "space2vec-ztf-demo-2.json"
    out = _run("--model", str(card_path), "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    (found,) = summary["models"].values()
    card = load_card(card_path)
    # A source whose every object was trained on (--real-train) has nothing held out to check.
    shipped = {"fink", "ztf-kowalski", "ztf-btsbot"} & set(card.real_data["sources"])
    assert shipped and shipped <= set(found["sources"])
    for name in shipped:
        got, want = found["sources"][name], card.real_data["sources"][name]
        assert (got["n"], got["n_real"], got["n_artifact"]) == (
            want["n"],
            want["n_real"],
            want["n_artifact"],
        )
        assert abs(got["right"] - want["right"]) <= 1, name
        if got["right"] < got["n"]:
            assert Path(got["gallery"]).is_file()
