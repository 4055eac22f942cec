"""Alert packets through the real pipeline: simulated ZTF/Rubin nights -> ingest on a real
LocalCluster -> Zarr with the alert fields -> scores in Parquet with them; every bad alert
quarantined with its reason; and the `s2v` commands end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from alert_truth import DERIVED, RUBIN_COLUMNS, ZTF_COLUMNS, check_column, truth_table

from s2v_batch.core.config import IngestConfig, ScoreConfig
from s2v_batch.core.nights import night_of_mjd
from s2v_batch.core.surveys import get_survey
from s2v_batch.ingest.driver import ingest
from s2v_batch.model.shipped import default_model_path
from s2v_batch.scoring.driver import ScoringError, score
from s2v_batch.sim.alerts import avro_container, simulate_alerts, write_archive, ztf_record
from s2v_batch.sim.simulator import simulate, simulate_stamps
from s2v_batch.store import dataset as zstore
from s2v_batch.store import scores as sink

CFG = IngestConfig(unit_stamps=16, shard_stamps=64, chunk_stamps=32, rubin_stamp_size=51)


@pytest.fixture(scope="module")
def client(dask_client):
    return dask_client


@pytest.fixture(scope="module")
def model63(tmp_path_factory) -> Path:
    """A small untrained vgg6 of input 63x63x3 (ZTF's stamps)."""
    import keras

    from s2v_batch.model import ModelCard, build_model, save_artifact

    keras.utils.set_random_seed(0)
    card = ModelCard(
        name="test-ztf",
        version="1",
        architecture="vgg6",
        threshold=0.5,
        target_recall=0.99,
        training_data={"description": "untrained test model", "simulated": True},
    )
    out = tmp_path_factory.mktemp("model63")
    return save_artifact(build_model("vgg6", (63, 63, 3)), card, out)


@pytest.mark.parametrize(
    "survey, fmt", [("ztf", "archive"), ("ztf", "avro"), ("rubin", "framed"), ("rubin", "parquet")]
)
def test_alert_nights_are_stored_with_their_fields(client, tmp_path, survey, fmt):
    sim = simulate_alerts(
        tmp_path / "raw", survey=survey, nights=2, alerts_per_night=40, fmt=fmt, seed=4
    )
    s = ingest(sim.out, tmp_path / "store", client, labels=sim.labels_csv, config=CFG,
               progress=False)  # fmt: skip
    assert s.n_found == sim.n_alerts == s.n_stored and s.n_quarantined == 0
    assert s.n_csv_rows_without_stamp == 0
    season = f"{survey.upper()}2024"
    assert [(n.season, n.night) for n in s.nights] == [(season, 20240101), (season, 20240102)]
    truth = pd.read_csv(sim.labels_csv, comment="#").set_index("ID")
    # The packets as the simulator wrote them, read with fastavro / pyarrow, not our readers.
    packets = truth_table(sim.files, sim.out, survey)
    columns = ZTF_COLUMNS if survey == "ztf" else RUBIN_COLUMNS
    assert {c.name for c in get_survey(survey).columns} == set(columns)
    assert sorted(packets) == sorted(truth.index)
    size = 63 if survey == "ztf" else 51
    stored = []
    for n in s.nights:
        ds = xr.open_zarr(n.path)
        assert ds.attrs["survey"] == survey and ds.attrs["stamp_size"] == size
        assert ds.stamps.shape[1:] == (size, size, 3) and ds.stamps.dtype == np.float32
        ids = ds.stamp_id.values
        stored += ids.tolist()
        np.testing.assert_array_equal(ds.label.values, 1 - truth.loc[ids, "OBJECT_TYPE"].values)
        for name, dtype in columns.items():
            want = [packets[i][name] for i in ids.tolist()]
            assert ds[name].dtype.kind == dtype[0], name
            check_column(name, ds[name].values, want, dtype, name in DERIVED[survey])
        # night = the observatory's evening date of each alert's detection time
        tz = get_survey(survey).timezone
        assert {night_of_mjd(m, tz, tai=survey == "rubin") for m in ds.mjd.values} == {n.night}
    assert sorted(stored) == sorted(packets)  # every packet stored once
    if survey == "rubin":  # cut-outs of 47, 63 and 79 pixels: padded or cropped to 51
        frac = np.concatenate([xr.open_zarr(n.path).masked_fraction.values for n in s.nights])
        assert (frac == 0).any() and np.isclose(frac, (51**2 - 47**2) / 51**2 / 1, atol=0.01).any()


def test_reingest_skips_current_nights_and_redoes_a_changed_one(client, tmp_path):
    sim = simulate_alerts(tmp_path / "raw", survey="ztf", nights=2, alerts_per_night=20,
                          fmt="avro", seed=5)  # fmt: skip
    first = ingest(sim.out, tmp_path / "store", client, config=CFG, progress=False)
    again = ingest(sim.out, tmp_path / "store", client, config=CFG, progress=False)
    assert [n.status for n in again.nights] == ["skipped", "skipped"]
    # A new loose alert of the second night changes that night's inputs only.
    rec = ztf_record(1_900_000_000_000_000_001, "ZTF24zzzzzzz", 2460312.7,
                     simulate_stamps(1, np.random.default_rng(9), size=63).pixels[0])  # fmt: skip
    (sim.out / "alerts" / "extra.avro").write_bytes(avro_container([rec], "ztf"))
    third = ingest(sim.out, tmp_path / "store", client, config=CFG, progress=False)
    assert [n.status for n in third.nights] == ["skipped", "ingested"]
    assert third.nights[1].n_stored == first.nights[1].n_stored + 1


def test_every_bad_alert_is_quarantined_with_its_reason(client, tmp_path):
    raw = tmp_path / "raw"
    pix = simulate_stamps(8, np.random.default_rng(2), size=63).pixels
    jd = 2460311.7  # night 20240101

    def rec(i: int, **kw) -> dict:
        return ztf_record(2_000_000_000 + i, f"ZTF24aaaaaa{chr(97 + i)}", jd, pix[i], **kw)

    good = [rec(i) for i in range(4)]
    missing = {**rec(4), "cutoutTemplate": None}
    corrupt = {**rec(5), "cutoutScience": {"fileName": "x", "stampData": b"\x1f\x8b\x08junk"}}
    # Larger than 63x63 (a smaller one is an edge cut-out, padded: tests/test_alert_edges.py).
    big = ztf_record(2_000_000_006, "ZTF24aaaaaag", jd, np.pad(pix[6], ((0, 3), (0, 0), (0, 0))))
    dup = rec(0)  # the same candid again, in another member
    members = [(f"{i}.avro", avro_container([r], "ztf")) for i, r in enumerate(good)]
    members += [("m.avro", avro_container([missing], "ztf")),
                ("c.avro", avro_container([corrupt], "ztf")),
                ("s.avro", avro_container([big], "ztf")),
                ("d.avro", avro_container([dup], "ztf")),
                ("u.avro", b"\x07not avro at all")]  # fmt: skip
    write_archive(raw / "ztf_public_20240102.tar.gz", members)
    # A truncated archive of the next night: what comes before the cut is kept.
    write_archive(raw / "x" / "ztf_public_20240103.tar.gz",
                  [(f"{i}.avro", avro_container([ztf_record(3_000_000_000 + i, "ZTF24b", jd + 1,
                                                            pix[i])], "ztf")) for i in range(8)])  # fmt: skip
    cut = raw / "x" / "ztf_public_20240103.tar.gz"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 2 // 3])
    # Loose files to date from their data: one undecodable, one without a usable time.
    (raw / "loose").mkdir()
    (raw / "loose" / "junk.avro").write_bytes(b"Obj\x01garbage")
    nan_time = ztf_record(4_000_000_001, "ZTF24c", float("nan"), pix[7])
    (raw / "loose" / "notime.avro").write_bytes(avro_container([nan_time], "ztf"))

    s = ingest(raw, tmp_path / "store", client, config=CFG, progress=False)
    assert s.n_found == s.n_stored + s.n_quarantined
    n1 = s.night("ZTF2024", 20240101)
    assert (n1.n_found, n1.n_stored, n1.n_quarantined) == (9, 4, 5)
    q = pd.read_parquet(n1.quarantine).set_index("stamp_id", drop=False)
    reasons = dict(zip(q["path"].str.rsplit(":", n=1).str[1], q["reason"], strict=True))
    assert reasons["m.avro#0"] == "cutoutTemplate: missing cut-out"
    assert reasons["c.avro#0"].startswith("cutoutScience: corrupt gzip")
    assert reasons["s.avro#0"] == "cutoutScience: shape (66, 63), expected (63, 63)"
    assert reasons["d.avro#0"].startswith("duplicate stamp_id in season ZTF2024")
    assert "not Avro" in reasons["u.avro"]
    n2 = s.night("ZTF2024", 20240102)
    q2 = pd.read_parquet(n2.quarantine)
    assert 1 <= n2.n_stored < 8 and n2.n_quarantined == len(q2) >= 1
    assert q2["reason"].str.contains("damaged alert archive|undecodable Avro").all()
    unplaced = pd.read_parquet(zstore.unplaced_quarantine_path(tmp_path / "store"))
    why = dict(zip(unplaced["path"].map(lambda p: Path(p.split("#")[0]).name), unplaced["reason"],
                   strict=True))  # fmt: skip
    assert "undecodable Avro container" in why["junk.avro"]
    assert "no usable detection time" in why["notime.avro"]
    assert s.n_quarantined == n1.n_quarantined + n2.n_quarantined + len(unplaced)


def test_scores_carry_the_alert_fields_and_one_survey_a_root(client, tmp_path, model63):
    sim = simulate_alerts(tmp_path / "raw", survey="ztf", nights=1, alerts_per_night=30,
                          fmt="archive", seed=6)  # fmt: skip
    ingest(sim.out, tmp_path / "store", client, config=CFG, progress=False)
    with pytest.raises(ScoringError, match="takes 51x51 stamps; ZTF2024/20240101 holds 63x63"):
        score(tmp_path / "store", tmp_path / "scores", client, model_path=default_model_path(),
              progress=False)  # the DES model, named: it is not swapped for the ZTF one  # fmt: skip
    r = score(tmp_path / "store", tmp_path / "scores", client, model_path=model63,
              config=ScoreConfig(part_stamps=16, batch_size=16), progress=False)  # fmt: skip
    assert r.n_stamps == 30 and r.n_errors == 0
    df = pd.read_parquet(tmp_path / "scores", filters=[("season", "==", "ZTF2024")])
    assert len(df) == 30
    assert list(sink.score_schema("ztf").names) == [c for c in df.columns if c not in
                                                    ("season", "night")]  # fmt: skip
    assert df.objectId.str.startswith("ZTF24").all() and df.drb.between(0, 1).all()
    assert df.isdiffpos.dtype == bool and set(df.band) <= {"g", "r", "i"}
    # Every alert field of every score row against its packet, read here with fastavro.
    packets = truth_table(sim.files, sim.out, "ztf")
    assert sorted(df.stamp_id) == sorted(packets)
    ids = df.stamp_id.tolist()
    for name, dtype in ZTF_COLUMNS.items():
        assert df[name].notna().all(), name
        got = df[name].to_numpy()
        got = got.astype(np.int8) if df[name].dtype == bool else got
        check_column(name, got, [packets[i][name] for i in ids], dtype, name in DERIVED["ztf"])
    assert sink.read_manifest(tmp_path / "scores", "ZTF2024", 20240101)["survey"] == "ztf"
    # DES nights keep the DES columns, and go to another root than ZTF nights.
    des = simulate(tmp_path / "des", season="Y1", nights=1, stamps_per_night=20, fmt="fits",
                   seed=1, size=63)  # fmt: skip
    ingest(des.out, tmp_path / "store", client,
           config=IngestConfig(stamp_size=63, shard_stamps=64, chunk_stamps=32), progress=False)  # fmt: skip
    with pytest.raises(ScoringError, match="one scores root holds the nights of one survey"):
        score(tmp_path / "store", tmp_path / "scores", client, model_path=model63,
              season="Y1", progress=False)  # fmt: skip
    score(tmp_path / "store", tmp_path / "des-scores", client, model_path=model63, season="Y1",
          config=ScoreConfig(part_stamps=16, batch_size=16), progress=False)  # fmt: skip
    d = pd.read_parquet(tmp_path / "des-scores")
    assert [c for c in d.columns if c not in ("season", "night")] == list(sink.SCORE_SCHEMA.names)


def s2v(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "s2v_batch.cli", *args], capture_output=True,
                          text=True, cwd=cwd)  # fmt: skip


@pytest.mark.slow
def test_s2v_simulate_ingest_score_ztf_end_to_end(tmp_path, model63):
    for fmt in ("archive", "avro"):
        r = s2v("simulate", f"raw-{fmt}", "--survey", "ztf", "--format", fmt, "--nights", "1",
                "--stamps-per-night", "40", "--seed", "3", "--no-progress", cwd=tmp_path)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "SIMULATED ZTF-like alerts" in r.stdout
        r = s2v("ingest", f"raw-{fmt}", "--store", f"store-{fmt}", "--labels",
                f"raw-{fmt}/autoscan_features.3.csv", "--no-progress", cwd=tmp_path)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "40 stamps found = 40 stored + 0 quarantined" in r.stdout
        r = s2v("score", f"store-{fmt}", "--out", f"scores-{fmt}", "--model", str(model63),
                "--no-progress", cwd=tmp_path)  # fmt: skip
        assert r.returncode == 0, r.stderr
        df = pd.read_parquet(tmp_path / f"scores-{fmt}", filters=[("season", "==", "ZTF2024")])
        assert len(df) == 40 and df.label.notna().all()
        for col in ("objectId", "ra", "dec", "magpsf", "band", "fid", "isdiffpos", "rb", "drb"):
            assert df[col].notna().all(), col
    a = pd.read_parquet(tmp_path / "scores-archive").sort_values("stamp_id")
    b = pd.read_parquet(tmp_path / "scores-avro").sort_values("stamp_id")
    # The same alerts as an archive or as loose files: the same stamps, fields and scores.
    np.testing.assert_array_equal(a.stamp_id.values, b.stamp_id.values)
    np.testing.assert_array_equal(a.score.values, b.score.values)
    assert a.objectId.tolist() == b.objectId.tolist()
    r = s2v("simulate", "bad", "--survey", "ztf", "--format", "gif", cwd=tmp_path)
    assert r.returncode == 2 and "s2v simulate: error: ztf alerts come as" in r.stderr
