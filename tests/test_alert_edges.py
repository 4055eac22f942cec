"""ZTF cut-outs cut short by a CCD edge: padded on the edge's side (the candidate stays at the
centre pixel), the pad counted in masked_fraction, stored and scored; quarantined instead where
the config says so; and score rows that say when a stamp is more masked than the model was
validated on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from s2v_batch.core.config import ConfigError, IngestConfig, ScoreConfig
from s2v_batch.core.surveys import ZTF_FRAME_SHAPE, get_survey
from s2v_batch.formats.alertpackets import alert_stamp, pad_edge_cutout
from s2v_batch.formats.decode import StampError
from s2v_batch.ingest.driver import ingest
from s2v_batch.model.artifact import ModelArtifactError, ModelCard
from s2v_batch.scoring.driver import score
from s2v_batch.sim.alerts import avro_container, write_archive, ztf_record
from s2v_batch.sim.simulator import simulate_stamps

ZTF = get_survey("ztf")
JD0 = 2460311.7  # night 20240101 at Palomar
NY, NX = ZTF_FRAME_SHAPE  # 3080 rows (y), 3072 columns (x)

# (xpos, ypos, rows kept, columns kept) as ZTF cuts near each edge: the first two are the
# real cut-outs of ZTF's sample packets (candid 472263571115115014: xpos 3051.06 -> 63x53;
# 396522680015040001: ypos 10.39 -> 41x63), the last a corner of both low x and high y.
EDGES = [
    (3051.06, 1214.2, slice(0, 63), slice(0, 53)),
    (2647.1, 10.39, slice(22, 63), slice(0, 63)),
    (20.0, 3070.0, slice(0, 42), slice(12, 63)),
]


def _stamp(seed: int = 0) -> np.ndarray:
    return simulate_stamps(1, np.random.default_rng(seed), size=63).pixels[0]


def _edge_record(candid: int, pix: np.ndarray, xpos, ypos, rows, cols) -> dict:
    rec = ztf_record(candid, "ZTF24edge", JD0, pix[rows, cols], rb=0.5, drb=0.5)
    rec["candidate"].update(xpos=xpos, ypos=ypos)
    return rec


@pytest.mark.parametrize("xpos, ypos, rows, cols", EDGES)
def test_an_edge_cutout_is_padded_on_its_edge_side_with_the_pad_counted(xpos, ypos, rows, cols):
    pix = _stamp()
    rec = _edge_record(7, pix, xpos, ypos, rows, cols)
    sid, stamp, frac, fields = alert_stamp(rec, ZTF, 63)
    assert sid == 7 and stamp.shape == (63, 63, 3) and np.isfinite(stamp).all()
    # The kept pixels are where they were in the whole cut-out: the candidate at the centre.
    np.testing.assert_array_equal(stamp[rows, cols], pix[rows, cols])
    np.testing.assert_array_equal(stamp[31, 31], pix[31, 31])
    kept = (rows.stop - rows.start) * (cols.stop - cols.start)
    assert frac == pytest.approx(1 - kept / 63**2)
    # The pad is filled as masked pixels are: each channel's median of its valid pixels.
    pad = np.ones((63, 63), bool)
    pad[rows, cols] = False
    for ch in range(3):
        assert np.all(stamp[..., ch][pad] == np.median(pix[rows, cols, ch]))
    assert fields["drb"] == pytest.approx(0.5)


def test_without_a_position_the_off_chip_nan_side_is_padded():
    pix = _stamp(1)[..., 0]
    cut = pix[:, :53].copy()
    cut[:, -4:] = np.nan  # ZTF's real x-edge cut-out: NaN columns on the off-chip side
    out = pad_edge_cutout(cut, 63)
    np.testing.assert_array_equal(out[:, :49], pix[:, :49])
    assert np.isnan(out[:, 49:]).all()
    cut = pix[20:, :].copy()
    cut[:2] = np.nan  # NaN rows first: the edge is before
    out = pad_edge_cutout(cut, 63)
    np.testing.assert_array_equal(out[22:], pix[22:])
    # Nothing to tell the side: both sides, the candidate within a pixel of the centre.
    out = pad_edge_cutout(pix[:, :53], 63)
    np.testing.assert_array_equal(out[:, 5:58], pix[:, :53])
    # A position wins over the NaN border.
    out = pad_edge_cutout(cut, 63, (None, 3000.0), ZTF_FRAME_SHAPE)
    np.testing.assert_array_equal(out[:43, :][2:], pix[22:])


def test_edge_cutouts_are_quarantined_where_the_config_says_so():
    rec = _edge_record(8, _stamp(), *EDGES[0])
    with pytest.raises(StampError, match=r"cutoutScience: shape \(63, 53\), expected \(63, 63\) "
                       r"\(edge cut-out; edge_cutouts: quarantine\)"):  # fmt: skip
        alert_stamp(rec, ZTF, 63, edge="quarantine")
    with pytest.raises(ConfigError, match="edge_cutouts must be pad or quarantine"):
        IngestConfig(edge_cutouts="crop")
    with pytest.raises(ModelArtifactError, match="max_masked_fraction 1.5 not in"):
        ModelCard.from_dict({**_card().to_dict(), "max_masked_fraction": 1.5})


def _card() -> ModelCard:
    return ModelCard(name="test-edge", version="1", architecture="vgg6", threshold=0.5,
                     target_recall=0.99, survey="ztf",
                     training_data={"description": "untrained test model", "simulated": True})  # fmt: skip


@pytest.fixture(scope="module")
def edge_model(tmp_path_factory) -> Path:
    """An untrained 63x63 vgg6 whose card says it was validated up to 10% masked pixels."""
    import keras

    from s2v_batch.model import build_model, save_artifact

    keras.utils.set_random_seed(0)
    card = _card()
    card.max_masked_fraction = 0.10
    return save_artifact(build_model("vgg6", (63, 63, 3)), card, tmp_path_factory.mktemp("m"))


@pytest.mark.slow
def test_edge_cutouts_are_stored_scored_and_flagged(dask_client, tmp_path, edge_model):
    pixels = simulate_stamps(40, np.random.default_rng(3), size=63).pixels
    # Stamps with no masked pixel of their own (the simulator masks some: CCD edges), so the
    # masked fractions below are the padding's alone.
    pixels = pixels[np.isfinite(pixels).all(axis=(1, 2, 3))][:6]
    recs = [ztf_record(100 + i, f"ZTF24a{i}", JD0, pixels[i], rb=0.5, drb=0.5) for i in range(3)]
    recs += [_edge_record(200 + i, pixels[3 + i], *e) for i, e in enumerate(EDGES)]
    members = [(f"{r['candid']}.avro", avro_container([r], "ztf")) for r in recs]
    write_archive(tmp_path / "raw" / "ztf_public_20240102.tar.gz", members)
    cfg = IngestConfig(unit_stamps=16, shard_stamps=64, chunk_stamps=32)

    s = ingest(tmp_path / "raw", tmp_path / "store", dask_client, config=cfg, progress=False)
    assert (s.n_found, s.n_stored, s.n_quarantined) == (6, 6, 0)
    ds = xr.open_zarr(s.nights[0].path)
    frac = dict(zip(ds.stamp_id.values.tolist(), ds.masked_fraction.values.tolist(), strict=True))
    assert [frac[i] for i in (100, 101, 102)] == [0.0, 0.0, 0.0]
    assert [round(frac[i] * 63**2) for i in (200, 201, 202)] == [630, 1386, 1827]

    score(tmp_path / "store", tmp_path / "scores", dask_client, model_path=edge_model,
          config=ScoreConfig(part_stamps=16, batch_size=16), progress=False)  # fmt: skip
    df = pd.read_parquet(tmp_path / "scores").set_index("stamp_id").sort_index()
    assert df.score.notna().all() and len(df) == 6
    np.testing.assert_allclose(df.masked_fraction, [frac[i] for i in df.index], rtol=1e-6)
    assert df.masked_over_limit.tolist() == [False, False, False, True, True, True]

    # A card without a limit: the column is null (nothing stated), the scores are there.
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in edge_model.parent.iterdir():
        shutil.copy(f, bare / f.name)
    card_path = next(bare.glob("*.json"))
    card_path.write_text(json.dumps({**json.loads(card_path.read_text()),
                                     "max_masked_fraction": None}))  # fmt: skip
    score(tmp_path / "store", tmp_path / "scores2", dask_client,
          model_path=bare / edge_model.name, progress=False)  # fmt: skip
    d2 = pd.read_parquet(tmp_path / "scores2")
    assert d2.masked_over_limit.isna().all() and d2.score.notna().all()

    # The same archive with edge cut-outs quarantined: the stored night is not current any more.
    q = ingest(tmp_path / "raw", tmp_path / "store", dask_client, progress=False,
               config=IngestConfig(unit_stamps=16, shard_stamps=64, chunk_stamps=32,
                                   edge_cutouts="quarantine"))  # fmt: skip
    assert q.nights[0].status == "ingested"
    assert (q.n_found, q.n_stored, q.n_quarantined) == (6, 3, 3)
    reasons = pd.read_parquet(q.nights[0].quarantine).set_index("stamp_id").reason
    assert reasons[200] == (
        "cutoutScience: shape (63, 53), expected (63, 63) (edge cut-out; edge_cutouts: quarantine)"
    )
    again = ingest(tmp_path / "raw", tmp_path / "store", dask_client, progress=False,
                   config=IngestConfig(unit_stamps=16, shard_stamps=64, chunk_stamps=32,
                                       edge_cutouts="quarantine"))  # fmt: skip
    assert again.nights[0].status == "skipped"


def test_the_simulator_makes_edge_cutouts_that_ingest_pads(tmp_path):
    import fastavro

    from s2v_batch.sim.alerts import simulate_alerts

    def packets(out: Path, edge_fraction: float) -> dict[int, dict]:
        sim = simulate_alerts(out, survey="ztf", nights=1, alerts_per_night=60, fmt="avro",
                              seed=3, edge_fraction=edge_fraction)  # fmt: skip
        recs = {}
        for f in sim.files:
            with open(f, "rb") as fh:
                recs.update((r["candid"], r) for r in fastavro.reader(fh))
        return recs

    plain, edged = packets(tmp_path / "plain", 0.0), packets(tmp_path / "edged", 0.25)
    assert plain.keys() == edged.keys()
    n_edge = 0
    for sid, rec in edged.items():
        _, stamp, frac, _ = alert_stamp(rec, ZTF, 63, "pad")
        c = rec["candidate"]
        if c["xpos"] is None:  # not at an edge: the same packet as without edge cut-outs
            assert rec == plain[sid]
            continue
        n_edge += 1
        sci = alert_stamp(plain[sid], ZTF, 63, "pad")[1]
        # The cut-out is smaller than 63x63 on one axis, and padded back on the edge's side:
        # the candidate's pixels (the centre) are where they are in the whole stamp.
        with pytest.raises(StampError, match="edge cut-out"):
            alert_stamp(rec, ZTF, 63, "quarantine")
        near_low_y, near_high_y = c["ypos"] < 40, c["ypos"] > NY - 40
        near_low_x, near_high_x = c["xpos"] < 40, c["xpos"] > NX - 40
        assert near_low_y + near_high_y + near_low_x + near_high_x == 1
        assert 6 / 63 - 1e-6 <= frac <= 1.0
        np.testing.assert_array_equal(stamp[24:39, 24:39], sci[24:39, 24:39])
    assert 5 <= n_edge <= 30, n_edge
