"""Where a night's stamps came from: recorded at ingest from the simulator's markers, carried into
the scores (a column and the manifest) and stated by the reports apart from the model's own
provenance (issue 29)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import zarr

from s2v_batch.core import provenance
from s2v_batch.core.config import IngestConfig, ScoreConfig
from s2v_batch.ingest.driver import ingest
from s2v_batch.ingest.rawtree import discover
from s2v_batch.model import load_card
from s2v_batch.report import write_reports
from s2v_batch.scoring.driver import score
from s2v_batch.sim.alerts import avro_container, simulate_alerts
from s2v_batch.sim.simulator import simulate
from s2v_batch.store import dataset as zstore
from s2v_batch.store import scores as sink

CFG = IngestConfig(stamp_size=63, unit_stamps=16, shard_stamps=64, chunk_stamps=32)
SCORE = ScoreConfig(part_stamps=32, batch_size=16)


def _forget(folder: Path, *entries: str) -> None:
    """Take entries out of the simulator's marker, as if their files came from elsewhere."""
    path = folder / provenance.MARKER
    doc = json.loads(path.read_text())
    for e in entries or list(doc["written"]):
        del doc["written"][e]
    path.write_text(json.dumps(doc))


def test_the_marker_names_what_the_simulator_wrote_and_nothing_else(tmp_path: Path) -> None:
    sim = simulate(tmp_path / "raw", season="Y1", nights=2, stamps_per_night=4, seed=3)
    marker = json.loads((tmp_path / "raw" / "Y1" / provenance.MARKER).read_text())
    assert sorted(marker["written"]) == [str(n) for n in sim.nights]
    assert marker["written"][str(sim.nights[0])]["seed"] == 3
    # A night of the same files that the simulator did not write (its marker entry gone).
    _forget(tmp_path / "raw" / "Y1", str(sim.nights[1]))
    disc = discover(tmp_path / "raw")
    kind, ev = disc.provenance(("Y1", sim.nights[0]))
    assert kind == provenance.SIMULATED and ev["simulator"][0]["seed"] == 3
    kind, ev = disc.provenance(("Y1", sim.nights[1]))
    assert kind == provenance.SURVEY and ev["survey_files"]["n"] == 12  # 4 stamps x 3 files
    # Alert files: one written by hand beside the simulator's, in the same night, is survey
    # data, and the night mixes both.
    alerts = simulate_alerts(tmp_path / "alerts", survey="ztf", nights=1, alerts_per_night=3,
                             fmt="avro", seed=2)  # fmt: skip
    import fastavro

    with open(alerts.files[0], "rb") as f:
        packet = next(iter(fastavro.reader(f)))
    packet["candid"] += 10**6
    packet["candidate"]["candid"] = packet["candid"]
    (tmp_path / "alerts" / "alerts" / "extra.avro").write_bytes(avro_container([packet], "ztf"))
    disc = discover(tmp_path / "alerts")
    (key,) = disc.units
    kind, ev = disc.provenance(key)
    assert kind == provenance.MIXED
    assert ev["survey_files"] == {"n": 1, "first": [str(Path("alerts") / "extra.avro")]}


def test_provenance_reaches_the_store_scores_and_reports(dask_client, make_test_model,
                                                         tmp_path: Path) -> None:  # fmt: skip
    import keras

    from s2v_batch.model import ModelCard, build_model, save_artifact

    keras.utils.set_random_seed(0)
    card = ModelCard(name="test-63", version="1", architecture="vgg6", threshold=0.5,
                     target_recall=0.99,
                     training_data={"description": "untrained", "simulated": True})  # fmt: skip
    model = save_artifact(build_model("vgg6", (63, 63, 3)), card, tmp_path / "model")

    # DES: Y1 night 1 simulated, night 2 not (its marker entry gone); Y2 wholly not.
    raw = tmp_path / "raw"
    y1 = simulate(raw, season="Y1", nights=2, stamps_per_night=20, seed=1, size=63, fmt="fits")
    y2 = simulate(raw, season="Y2", nights=1, stamps_per_night=20, seed=1, size=63, fmt="fits")
    _forget(raw / "Y1", str(y1.nights[1]))
    (raw / "Y2" / provenance.MARKER).unlink()
    # ZTF alert packets not written by the simulator (no marker: as a broker's archive).
    z = simulate_alerts(tmp_path / "ztf", survey="ztf", nights=1, alerts_per_night=20, seed=5)
    (tmp_path / "ztf" / provenance.MARKER).unlink()

    store = tmp_path / "store"
    ingest(raw, store, dask_client, labels=y1.labels_csv, config=CFG, progress=False)
    ingest(z.out, store, dask_client, config=CFG, progress=False)
    expect = {
        ("Y1", y1.nights[0]): provenance.SIMULATED,
        ("Y1", y1.nights[1]): provenance.SURVEY,
        ("Y2", y2.nights[0]): provenance.SURVEY,
        ("ZTF2024", z.nights[0]): provenance.SURVEY,
    }
    for (season, night), kind in expect.items():
        attrs = zstore.read_attrs(zstore.night_path(store, season, night))
        assert attrs[provenance.ATTR] == kind, (season, night)
    ev = zstore.read_attrs(zstore.night_path(store, "Y1", y1.nights[0]))[provenance.EVIDENCE_ATTR]
    assert ev["simulator"][0]["seed"] == 1 and ev["simulator"][0]["season"] == "Y1"

    des_scores, ztf_scores = tmp_path / "scores", tmp_path / "ztf-scores"
    for season in ("Y1", "Y2"):
        score(store, des_scores, dask_client, model_path=model, season=season, config=SCORE,
              progress=False)  # fmt: skip
    score(store, ztf_scores, dask_client, model_path=model, season="ZTF2024", config=SCORE,
          progress=False)  # fmt: skip
    # A pandas query can filter on it; the manifest says it too.
    df = pd.read_parquet(des_scores, filters=[("data_provenance", "==", "survey")])
    assert sorted(df.night.unique()) == [y1.nights[1], y2.nights[0]] and len(df) == 40
    assert sink.read_manifest(des_scores, "Y1", y1.nights[0])["data_provenance"] == "simulated"
    assert set(pd.read_parquet(ztf_scores).data_provenance) == {"survey"}

    card_d = load_card(model).to_dict()
    reports = tmp_path / "reports"
    write_reports(des_scores, reports, model_card=card_d, store=store)
    write_reports(ztf_scores, tmp_path / "ztf-reports", model_card=card_d)

    def rep(*parts: str | int) -> dict:
        return json.loads((reports.joinpath(*map(str, parts)) / "report.json").read_text())

    sim_night = rep("Y1", "nights", y1.nights[0])
    assert sim_night["data_kind"] == "simulated" and sim_night["simulated"] is True
    assert sim_night["model_trained_on"] == "simulated" and sim_night["model_warning"] is None
    survey_nights = [rep("Y1", "nights", y1.nights[1]), rep("Y2"),
                     json.loads((tmp_path / "ztf-reports" / "ZTF2024" / "report.json").read_text())]  # fmt: skip
    for r in survey_nights:
        assert r["data_kind"] == "survey" and r["simulated"] is False
        assert r["model_trained_on"] == "simulated"
        assert "model trained on simulated stamps" in r["model_warning"]
        assert r["model_warning"] in r["warnings"]
        assert "SIMULATED DATA" not in r["data_provenance"]
    assert rep("Y1")["data_kind"] == "mixed"
    # The pages say the same, apart.
    page = (reports / "Y2" / "report.html").read_text()
    assert "SIMULATED DATA" not in page and "Survey data" in page
    assert "banner model" in page and "Survey data, model trained on simulated stamps" in page
    page = (reports / "Y1" / "nights" / str(y1.nights[0]) / "report.html").read_text()
    assert "banner sim" in page and "SIMULATED DATA" in page
    page = (reports / "Y1" / "report.html").read_text()
    assert "banner mixed" in page and "MIXED DATA" in page
    index = (reports / "index.html").read_text()
    assert "<b>mixed</b>" in index and "<td>survey</td>" in index


def test_a_store_from_before_reads_as_unknown(dask_client, make_test_model, tmp_path: Path):
    sim = simulate(tmp_path / "raw", season="Y1", nights=1, stamps_per_night=10, seed=2)
    ingest(sim.out, tmp_path / "store", dask_client,
           config=IngestConfig(unit_stamps=16, shard_stamps=64, chunk_stamps=32), progress=False)  # fmt: skip
    path = zstore.night_path(tmp_path / "store", "Y1", sim.nights[0])
    group = zarr.open_group(path, mode="r+")
    for key in (provenance.ATTR, provenance.EVIDENCE_ATTR):
        del group.attrs[key]  # as written before provenance was kept
    assert provenance.of_attrs(zstore.read_attrs(path)) == provenance.UNKNOWN
    score(tmp_path / "store", tmp_path / "scores", dask_client, model_path=make_test_model(),
          config=SCORE, progress=False)  # fmt: skip
    assert set(pd.read_parquet(tmp_path / "scores").data_provenance) == {"unknown"}
    # Scores written before the column existed report as unknown too, without error.
    part = next((tmp_path / "scores").rglob("part-*.parquet"))
    df = pd.read_parquet(part).drop(columns=["data_provenance"])
    shutil.rmtree(part.parent)
    part.parent.mkdir(parents=True)
    df.to_parquet(part, index=False)
    s = write_reports(tmp_path / "scores", tmp_path / "reports")
    r = s.seasons["Y1"]
    assert r["data_kind"] == "unknown" and r["simulated"] is None
    assert "Data provenance unknown" in (tmp_path / "reports" / "Y1" / "report.html").read_text()


@pytest.mark.parametrize(
    "kinds, expected",
    [(["simulated"], "simulated"), (["survey", "survey"], "survey"), ([], "unknown"),
     (["survey", "simulated"], "mixed"), (["survey", None], "mixed"), (["bogus"], "unknown")],
)  # fmt: skip
def test_combine(kinds, expected) -> None:
    assert provenance.combine(kinds) == expected
