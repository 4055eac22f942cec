"""Issue 27: scoring at bfloat16. ``auto``'s choice (mocked only at the hardware detection), the
per-precision threshold of the card, the ``precision`` column and the completeness rule, the
threshold recomputed without retraining, and bfloat16 scores within the bound docs/MODEL.md
states."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from s2v_batch.cli.args import build_parser
from s2v_batch.core.config import ConfigError, PipelineConfig, ScoreConfig
from s2v_batch.model import ModelArtifactError, ModelCard, load_card, shipped_models_dir
from s2v_batch.model import precision as P
from s2v_batch.pipeline.thresholds import ThresholdError, recipe_of, recompute_thresholds
from s2v_batch.report.tally import Tally
from s2v_batch.sim.simulator import simulate_stamps
from s2v_batch.store import dataset as zstore
from s2v_batch.store import scores as sink

#: The bound docs/MODEL.md ("bfloat16") states for the shipped DES model: the largest
#: |bfloat16 - float32| score difference and its 99.9th percentile (measured over 20,000 stamps
#: a dtype: at most 0.034 and 0.016).
BF16_MAX, BF16_P999 = 5e-2, 2e-2


# ----------------------------------------------------------------------------- auto's choice


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(P, "gpu_compute_capability", lambda: None)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "avx512f", "avx512_bf16"}, "bfloat16"),
        ({"avx2", "amx_bf16", "amx_tile"}, "bfloat16"),
        ({"avx2", "avx512f", "avx512_vnni"}, "float32"),
        (set(), "float32"),
    ],
)
def test_auto_takes_bfloat16_only_where_the_cpu_has_it(
    monkeypatch, no_gpu, caplog, flags, expected
):
    monkeypatch.setattr(P, "cpu_flags", lambda path="/proc/cpuinfo": frozenset(flags))
    with caplog.at_level(logging.WARNING, logger="s2v.precision"):
        assert P.resolve_precision("auto") == expected
        assert P.resolve_precision("float32") == "float32"  # never asks the hardware
    warned = [r.getMessage() for r in caplog.records]
    if expected == "float32":
        assert len(warned) == 1 and "auto: float32" in warned[0] and "avx512_bf16" in warned[0]
    else:
        assert not warned
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="s2v.precision"):
        assert P.resolve_precision("bfloat16") == "bfloat16"  # asked for: kept, warned if emulated
    assert bool(caplog.records) == (expected == "float32")


def test_auto_follows_the_gpu_where_there_is_one(monkeypatch):
    monkeypatch.setattr(P, "cpu_flags", lambda path="/proc/cpuinfo": frozenset({"avx512_bf16"}))
    monkeypatch.setattr(P, "gpu_compute_capability", lambda: (7, 5))  # a T4: no native bf16
    assert P.resolve_precision("auto") == "float32"
    monkeypatch.setattr(P, "gpu_compute_capability", lambda: (8, 0))  # an A100
    monkeypatch.setattr(P, "cpu_flags", lambda path="/proc/cpuinfo": frozenset())
    assert P.resolve_precision("auto") == "bfloat16"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512_bf16 avx512f\nbogomips\t: 1\n")
    assert P.cpu_flags(str(info)) == {"fpu", "sse2", "avx512_bf16", "avx512f"}
    assert P.cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_precision_option_and_config():
    p = build_parser()
    assert p.parse_args(["score", "s", "--out", "o"]).precision is None  # the config's
    assert p.parse_args(["score", "s", "--out", "o", "--precision", "auto"]).precision == "auto"
    old = p.parse_args(["score", "s", "--out", "o", "--mixed-precision"])
    assert old.precision == "bfloat16"
    for cmd in (["nightly", "--night", "20130901"], ["backfill"]):
        a = p.parse_args([*cmd, "--raw", "r", "--store", "s", "--out", "o", "--reports", "x",
                          "--precision", "bfloat16"])  # fmt: skip
        assert a.precision == "bfloat16"
    with pytest.raises(SystemExit):
        p.parse_args(["score", "s", "--out", "o", "--precision", "float16"])
    assert ScoreConfig().precision == "float32"
    assert ScoreConfig(mixed_precision=True).precision == "bfloat16"  # the old name, still read
    assert PipelineConfig.from_mapping({"score": {"mixed_precision": False}}).score.precision == (
        "float32"
    )
    with pytest.raises(ConfigError, match="precision must be one of float32, bfloat16, auto"):
        ScoreConfig(precision="fp16")
    with pytest.raises(ConfigError, match="contradicts precision"):
        ScoreConfig(precision="auto", mixed_precision=True)
    for name in ("nightly", "gpu"):  # the shipped configs use the new key
        assert PipelineConfig.from_yaml(name).score.precision == "float32"


# ----------------------------------------------------------------------------- the card


def _card(**kw) -> ModelCard:
    base = {"name": "m", "version": "1", "architecture": "vgg6", "threshold": 0.4,
            "target_recall": 0.99, "sha256": "0" * 64}  # fmt: skip
    return ModelCard.from_dict({**base, **kw})


def test_the_card_holds_a_threshold_per_precision():
    card = _card(thresholds={"bfloat16": 0.41})
    assert card.threshold_for("float32") == 0.4 and card.threshold_for("bfloat16") == 0.41
    assert ModelCard.from_json(card.to_json()).thresholds == {"bfloat16": 0.41}
    with pytest.raises(ModelArtifactError, match="no bfloat16 threshold.*s2v threshold"):
        _card().threshold_for("bfloat16")  # an older card: float32's only, said so
    for bad in ({"float16": 0.4}, {"bfloat16": 1.5}, {"bfloat16": "x"}, [0.4]):
        with pytest.raises(ModelArtifactError, match="thresholds"):
            _card(thresholds=bad)


@pytest.mark.parametrize("card_path", sorted(shipped_models_dir().glob("*.json")), ids=str)
def test_shipped_cards_carry_their_bfloat16_threshold_and_recipe(card_path):
    card = load_card(card_path)
    t = card.threshold_for("bfloat16")
    assert 0.0 < t < 1.0 and t != card.threshold and abs(t - card.threshold) < BF16_MAX
    (first, *_) = recipe_of(card)  # the recipe s2v threshold rebuilds the validation data from
    assert first["survey"] == card.survey and first["n"] == 6000 and first["nights"] == 2


# ----------------------------------------------------------------------------- scoring


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    batch = simulate_stamps(600, np.random.default_rng(27))
    ids = np.arange(600, dtype=np.int64) + 20_000_000
    zstore.write_night(zstore.night_path(root, "Y1", 20130901), np.nan_to_num(batch.pixels), ids,
                       batch.labels, season="Y1", night=20130901, shard_stamps=256,
                       chunk_stamps=64, attrs={"night_fingerprint": "t"})  # fmt: skip
    return root


@pytest.fixture(scope="module")
def vgg6_with_bf16(tmp_path_factory):
    import keras

    from s2v_batch.model import build_model, save_artifact

    keras.utils.set_random_seed(3)
    card = _card(name="prec", thresholds={"bfloat16": 0.125}, threshold=0.25, sha256="",
                 training_data={"description": "untrained test model", "simulated": True})  # fmt: skip
    return save_artifact(build_model("vgg6"), card, tmp_path_factory.mktemp("m"))


def test_each_row_says_its_precision_and_another_precision_is_not_complete(
    dask_client, night, vgg6_with_bf16, tmp_path
):
    from s2v_batch.scoring.driver import score

    out = tmp_path / "scores"
    cfg = {"batch_size": 64, "part_stamps": 256}

    def run(precision: str, skip: bool = True):
        return score(night, out, dask_client, model_path=vgg6_with_bf16, progress=False,
                     config=ScoreConfig(precision=precision, **cfg), skip_complete=skip)  # fmt: skip

    def current(precision: str, threshold: float) -> bool:
        return bool(sink.current_scores(out, "Y1", 20130901, night_fp="t", precision=precision,
                                        model_sha256=load_card(vgg6_with_bf16).sha256,
                                        threshold=threshold))  # fmt: skip

    assert run("float32").nights[0].status == "scored"
    f32 = pd.read_parquet(out).sort_values("stamp_id")
    assert set(f32.precision) == {"float32"} and set(f32.threshold) == {0.25}
    assert sink.read_manifest(out, "Y1", 20130901)["precision"] == "float32"
    assert current("float32", 0.25) and not current("bfloat16", 0.125)
    assert run("float32").nights[0].status == "skipped"
    # Another precision: the night is not complete for it, and is scored again at its threshold.
    assert run("bfloat16").nights[0].status == "scored"
    bf = pd.read_parquet(out).sort_values("stamp_id")
    assert set(bf.precision) == {"bfloat16"} and set(bf.threshold) == {0.125}
    assert (bf.is_candidate == (bf.score >= 0.125)).all()
    assert sink.read_manifest(out, "Y1", 20130901)["precision"] == "bfloat16"
    assert current("bfloat16", 0.125) and not current("float32", 0.25)
    assert run("bfloat16").nights[0].status == "skipped"
    assert not np.array_equal(bf.score.to_numpy(), f32.score.to_numpy())  # really bf16
    # The report says it (rows from before the column: float32).
    table = pq.read_table(next(sink.night_dir(out, "Y1", 20130901).glob("*.parquet")))
    for rows, said in ((table, ["bfloat16"]), (table.drop(["precision"]), ["float32"])):
        tally = Tally()
        for batch in rows.to_batches():
            tally.add_batch(batch, "test")
        assert tally.precisions.sorted() == said
    np.testing.assert_allclose(bf.score, f32.score, atol=BF16_MAX)
    # A manifest from before precisions was float32.
    path = sink.night_dir(out, "Y1", 20130901) / sink.MANIFEST
    m = json.loads(path.read_text())
    m.pop("precision")
    m["threshold"] = 0.25
    path.write_text(json.dumps(m))
    assert current("float32", 0.25) and not current("bfloat16", 0.25)


def test_bfloat16_scores_stay_within_the_documented_bound():
    """The shipped DES model on a seeded night of both stored dtypes (docs/MODEL.md)."""
    from s2v_batch.model import Predictor

    batch = simulate_stamps(1024, np.random.default_rng(2027))
    x = np.nan_to_num(batch.pixels)
    gif = np.clip(x / 8 + 128, 0, 255).astype(np.uint8)
    f32, bf16 = Predictor(), Predictor(precision="bfloat16")
    assert bf16.model.get_layer("b1_conv").compute_dtype == "bfloat16"
    assert bf16.model.get_layer("normalize").compute_dtype == "float32"
    assert bf16.threshold == bf16.card.thresholds["bfloat16"]
    for pixels in (x, gif):
        d = np.abs(bf16.predict(pixels) - f32.predict(pixels))
        assert d.max() <= BF16_MAX and np.quantile(d, 0.999) <= BF16_P999, (d.max(), pixels.dtype)
        assert d.max() > 0  # the bfloat16 path really ran


# ----------------------------------------------------------------------------- s2v threshold


def test_threshold_recomputed_from_the_stores_without_retraining(night, tmp_path):
    from s2v_batch.model import load_artifact, save_artifact
    from s2v_batch.training.data import VALIDATION, LabelledNights, resolve_nights
    from s2v_batch.training.loop import validation_threshold

    model, _ = load_artifact(shipped_models_dir() / "space2vec-demo-2.keras")
    nights = LabelledNights(resolve_nights([night]))
    f32, *_ = validation_threshold(nights, model, 0.99)
    card = _card(name="old", threshold=f32, sha256="", architecture="space2vec",
                 input_shape=[51, 51, 3], training_data={
                     "simulated": True, "stores": ["/gone/Y1/20130901.zarr"],
                     "n_stamps": {"validation": nights.count(VALIDATION)}})  # fmt: skip
    path = save_artifact(model, card, tmp_path).with_suffix(".json")
    r = recompute_thresholds(path, stores=[night], dry_run=True)
    assert not load_card(path).thresholds  # dry run: nothing written
    assert r.float32 == f32 and r.bfloat16 != f32  # bfloat16 scores moved the threshold
    r = recompute_thresholds(path, stores=[night])
    assert load_card(path).threshold_for("bfloat16") == r.bfloat16
    load_artifact(path)  # the .keras still matches its card
    wrong = json.loads(path.read_text()) | {"threshold": f32 + 0.05}
    path.write_text(json.dumps(wrong))
    with pytest.raises(ThresholdError, match="not the card's"):
        recompute_thresholds(path, stores=[night])
    with pytest.raises(ThresholdError, match="cannot read the simulation recipe"):
        recipe_of(load_card(path))
