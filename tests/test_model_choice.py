"""Which model scores a store: the shipped model whose card names the store's survey and stamp
size, unless one is named; in `s2v score`, in `score()` and in the pipeline the flows run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from s2v_batch.core.config import IngestConfig, ScoreConfig
from s2v_batch.ingest.driver import ingest
from s2v_batch.ingest.rawtree import Discovery
from s2v_batch.model.artifact import ModelArtifactError, ModelCard, load_card
from s2v_batch.model.shipped import default_model_path, shipped_model_for, shipped_models_dir
from s2v_batch.pipeline.inputs import InputError, resolve_inputs
from s2v_batch.pipeline.steps import NightPlan, Plan, for_plan
from s2v_batch.scoring.driver import score
from s2v_batch.sim.alerts import simulate_alerts
from s2v_batch.sim.simulator import simulate_stamps
from s2v_batch.store import dataset as zstore
from s2v_batch.store import scores as sink

CFG = IngestConfig(unit_stamps=16, shard_stamps=64, chunk_stamps=32)
SCORE = ScoreConfig(part_stamps=32, batch_size=32)


def test_shipped_models_are_chosen_by_survey_and_stamp_size():
    assert shipped_model_for("des", 51) == default_model_path()
    ztf = shipped_model_for("ztf", 63)
    assert ztf.name == "space2vec-ztf-demo-2.keras"
    card = load_card(ztf)
    assert card.survey == "ztf" and tuple(card.input_shape) == (63, 63, 3)
    assert card.training_data["simulated"] is True
    assert "SIMULATED" in card.training_data["description"]
    assert card.training_command.startswith("s2v train ")
    assert ztf.stat().st_size < 10 * 2**20
    assert load_card(default_model_path()).survey == "des"  # a card without the field
    for survey, size in (("rubin", 63), ("des", 63), ("ztf", 51)):
        with pytest.raises(ModelArtifactError, match=f"no shipped model takes {survey} stamps"):
            shipped_model_for(survey, size)


def test_the_choice_reads_cards_only():
    code = (
        "import sys; from s2v_batch.model.shipped import shipped_model_for as f; "
        "print(f('ztf', 63).name, f('des', 51).name, 'keras' in sys.modules, "
        "'tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["space2vec-ztf-demo-2.keras", "space2vec-demo-2.keras",
                                  "False", "False"]  # fmt: skip


def _card(folder: Path, name: str, version: str, *, survey: str | None, size: int,
          keras_file: bool = True) -> Path:  # fmt: skip
    d = ModelCard(name=name, version=version, architecture="vgg6", threshold=0.5,
                  target_recall=0.99, sha256="0" * 64, input_shape=(size, size, 3)).to_dict()  # fmt: skip
    if survey is None:
        del d["survey"]  # written before cards named a survey
    else:
        d["survey"] = survey
    (folder / f"{name}-{version}.json").write_text(json.dumps(d))
    if keras_file:
        (folder / f"{name}-{version}.keras").write_bytes(b"not read when choosing")
    return folder / f"{name}-{version}.keras"


def test_the_choice_among_cards(tmp_path):
    old = _card(tmp_path, "old", "1", survey=None, size=51)
    _card(tmp_path, "z", "2", survey="ztf", size=63)
    z10 = _card(tmp_path, "z", "10", survey="ztf", size=63)
    _card(tmp_path, "z", "11", survey="ztf", size=63, keras_file=False)  # a card alone: skipped
    _card(tmp_path, "r", "1", survey="rubin", size=51)
    (tmp_path / "notes.json").write_text('{"not": "a card"}')
    assert shipped_model_for("des", 51, tmp_path) == old  # no survey in the card: DES
    assert shipped_model_for("ztf", 63, tmp_path) == z10  # version 10 after 2, numerically
    assert shipped_model_for("RUBIN", 51, tmp_path).name == "r-1.keras"
    with pytest.raises(ModelArtifactError, match="rubin stamps of 63x63 pixels"):
        shipped_model_for("rubin", 63, tmp_path)
    assert ModelCard.from_dict({**json.loads((tmp_path / "z-2.json").read_text())}).survey == "ztf"


@pytest.fixture(scope="module")
def client(dask_client):
    return dask_client


@pytest.fixture(scope="module")
def mixed_store(client, tmp_path_factory) -> Path:
    """A store with a DES night (51x51) and a ZTF night (63x63 alerts, ingested for real)."""
    root = tmp_path_factory.mktemp("mixed")
    sim = simulate_alerts(root / "raw", survey="ztf", nights=1, alerts_per_night=40, fmt="archive",
                          seed=11)  # fmt: skip
    ingest(sim.out, root / "store", client, config=CFG, progress=False)
    batch = simulate_stamps(40, np.random.default_rng(3))
    zstore.write_night(zstore.night_path(root / "store", "Y1", 20130901),
                       np.nan_to_num(batch.pixels), np.arange(40, dtype=np.int64) + 1,
                       batch.labels, season="Y1", night=20130901, shard_stamps=64,
                       chunk_stamps=32, attrs={"night_fingerprint": "t"})  # fmt: skip
    return root / "store"


def _model_of(scores: Path, season: str, night: int) -> str:
    m = sink.read_manifest(scores, season, night)
    return f"{m['model_name']}-{m['model_version']}"


def test_score_picks_the_model_of_the_stores_survey(client, mixed_store, tmp_path):
    score(mixed_store, tmp_path / "des", client, season="Y1", config=SCORE, progress=False)
    assert _model_of(tmp_path / "des", "Y1", 20130901) == "space2vec-demo-2"
    r = score(mixed_store, tmp_path / "ztf", client, season="ZTF2024", config=SCORE,
              progress=False)  # fmt: skip
    assert r.n_stamps == 40 and r.n_errors == 0
    assert _model_of(tmp_path / "ztf", "ZTF2024", 20240101) == "space2vec-ztf-demo-2"
    # A named model wins: the DES model is refused for 63x63 stamps rather than swapped.
    with pytest.raises(ValueError, match="takes 51x51 stamps; ZTF2024/20240101 holds 63x63"):
        score(mixed_store, tmp_path / "ztf", client, model_path=default_model_path(),
              season="ZTF2024", progress=False)  # fmt: skip
    # Both surveys selected and no model named: one model cannot take them.
    with pytest.raises(ValueError, match=r"several surveys or sizes \(des 51x51, ztf 63x63\)"):
        score(mixed_store, tmp_path / "both", client, progress=False)
    assert not (tmp_path / "both").exists()


def s2v(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "s2v_batch.cli", *args], capture_output=True,
                          text=True, cwd=cwd)  # fmt: skip


def test_s2v_score_names_the_fix_in_one_line(mixed_store, tmp_path):
    r = s2v("score", str(mixed_store), "--out", "scores", "--no-progress", cwd=tmp_path)
    assert r.returncode == 2
    (line,) = [x for x in r.stderr.splitlines() if x.strip()]
    assert line.startswith("s2v score: error: the selected nights hold stamps of several surveys")
    assert "--season" in line and "--model" in line


def test_the_pipeline_picks_the_same_way(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    dirs = [tmp_path / d for d in ("store", "scores", "reports")]
    inputs = resolve_inputs(raw, *dirs)
    assert inputs.card.name == "space2vec-demo" and not inputs.model_given
    ztf = inputs.for_survey("ztf")
    assert ztf.model == shipped_model_for("ztf", 63) and ztf.card.survey == "ztf"
    assert inputs.for_survey("des") is inputs

    def plan_of(*seasons: str) -> Plan:
        nights = [NightPlan(s, 20240101 + i, "r", "n", 1, False, False)
                  for i, s in enumerate(seasons)]  # fmt: skip
        return Plan(nights, [], Discovery())

    assert for_plan(inputs, plan_of("ZTF2024")).card.name == "space2vec-ztf-demo"
    assert for_plan(inputs, plan_of("Y1")).card.name == "space2vec-demo"
    with pytest.raises(InputError, match=r"several surveys \(des, ztf\).*--season"):
        for_plan(inputs, plan_of("Y1", "ZTF2024"))
    named = resolve_inputs(raw, *dirs, model=default_model_path())
    assert named.model_given and named.for_survey("ztf") is named
    assert for_plan(named, plan_of("Y1", "ZTF2024")) is named  # a named model is used as given
    assert shipped_models_dir() == default_model_path().parent


def test_training_writes_the_survey_and_refuses_a_mix(mixed_store, tmp_path):
    from s2v_batch.training.config import TrainConfig
    from s2v_batch.training.loop import TrainingError, _survey_of_night, train

    assert _survey_of_night(mixed_store / "ZTF2024" / "20240101.zarr") == "ztf"
    assert _survey_of_night(mixed_store / "Y1" / "20130901.zarr") == "des"
    assert _survey_of_night(tmp_path / "elsewhere" / "n.zarr") == "des"
    with pytest.raises(TrainingError, match=r"several surveys \(des, ztf\).*--season"):
        train([mixed_store], tmp_path / "m", TrainConfig(), training_data=None, progress=False)
