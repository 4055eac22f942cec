"""Tests of s2v_batch.model: architectures, normalisation, the artifact, the predictor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from s2v_batch import model as M
from s2v_batch.core.conventions import CHANNELS
from s2v_batch.formats.decode import combine_channels, decode_gif
from s2v_batch.sim.simulator import render_gif, simulate_stamps

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def sim_stamps() -> dict[str, np.ndarray]:
    """Simulated stamps as the ingest stores them: fits (float32, masks filled) and gif (uint8)."""
    b = simulate_stamps(40, np.random.default_rng(11))
    fits = np.stack([combine_channels(list(np.moveaxis(p, -1, 0)))[0] for p in b.pixels])
    gif = np.stack(
        [
            np.stack(
                [decode_gif(render_gif(p[:, :, c], ch), 51) for c, ch in enumerate(CHANNELS)], -1
            )
            for p in b.pixels
        ]
    )
    return {"fits": fits, "gif": gif, "labels": b.labels}


@pytest.fixture(scope="session")
def vgg6_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly initialised vgg6 saved as an artifact (fast to build, save and load)."""
    keras.utils.set_random_seed(3)
    model = M.build_model("vgg6")
    card = M.ModelCard(
        name="unit-vgg6",
        version="0",
        architecture="vgg6",
        threshold=0.5,
        target_recall=0.99,
        training_data={"description": "untrained", "simulated": True},
    )
    return M.save_artifact(model, card, tmp_path_factory.mktemp("art"))


@pytest.fixture(scope="session")
def vgg6_loaded(vgg6_artifact: Path) -> tuple[keras.Model, M.ModelCard]:
    return M.load_artifact(vgg6_artifact)


def _direct(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(x, training=False)).reshape(-1)


# ----------------------------------------------------------------------------- architectures


@pytest.mark.parametrize(
    ("arch", "params", "mflop"),
    [("space2vec", 1_702_877, 125.95), ("vgg6", 148_241, 23.23)],
)
def test_architecture_size_flops_and_output(arch: str, params: int, mflop: float) -> None:
    model = M.build_model(arch)
    assert model.count_params() == params
    assert M.count_flops(model) / 1e6 == pytest.approx(mflop, abs=0.01)
    out = _direct(model, np.zeros((3, 51, 51, 3), np.uint8))
    assert out.shape == (3,)
    assert np.all((out >= 0) & (out <= 1))
    assert model.layers[1].name == "normalize"
    assert isinstance(model.layers[1], M.StampNormalization)


def test_space2vec_matches_published_shape() -> None:
    model = M.build_model("space2vec")
    convs = [ly for ly in model.layers if isinstance(ly, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [25, 25, 63, 63, 119, 119, 210, 210, 210]
    assert [c.strides[0] for c in convs] == [1, 2] * 4 + [1]
    assert [ly.units for ly in model.layers if isinstance(ly, keras.layers.Dense)] == [128, 1]
    assert [ly.rate for ly in model.layers if isinstance(ly, keras.layers.Dropout)] == [0.45]
    assert len([ly for ly in model.layers if isinstance(ly, keras.layers.BatchNormalization)]) == 4


def test_other_input_sizes_and_bad_arguments() -> None:
    assert M.build_model("space2vec", (63, 63, 3)).output_shape == (None, 1)
    with pytest.raises(ValueError, match="unknown architecture"):
        M.build_model("resnet9000")
    with pytest.raises(ValueError, match="height, width, 3"):
        M.build_model("vgg6", (51, 51, 1))
    with pytest.raises(ValueError, match="cannot build 'vgg6'"):
        M.build_model("vgg6", (8, 8, 3))
    assert set(M.ARCHITECTURES) >= {"space2vec", "vgg6"}


# ----------------------------------------------------------------------------- normalisation


def test_uint8_and_float32_copies_score_the_same(sim_stamps, vgg6_loaded) -> None:
    model, _ = vgg6_loaded
    u8 = sim_stamps["gif"]
    norm = M.StampNormalization()
    a = keras.ops.convert_to_numpy(norm(u8))
    b = keras.ops.convert_to_numpy(norm(u8.astype(np.float32)))
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(_direct(model, u8), _direct(model, u8.astype(np.float32)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    # |offset| / (gain * noise) <= 1000: the scale's floor, 1e-6 of the sky level, stays <= 0.1%.
    gain=st.floats(0.5, 200.0),
    offset=st.floats(-500.0, 500.0),
    seed=st.integers(0, 2**31),
)
def test_normalisation_is_affine_invariant_per_channel(gain, offset, seed) -> None:
    # Real stamps keep the sky level within ~100 sigma of the noise (counts or 8-bit renderings);
    # beyond that the scale's floor (proportional to |level|, for float32 safety) takes over.
    assume(abs(offset) <= 100 * gain)
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, size=(2, 51, 51, 3)).astype(np.float32)
    x[:, 20:24, 20:24, :] += 40.0  # a bright source
    norm = M.StampNormalization()
    ref = keras.ops.convert_to_numpy(norm(x))
    y = (x * gain + offset).astype(np.float32)
    got = keras.ops.convert_to_numpy(norm(y))
    # Rounding may move a pixel across the 3-sigma clip: a relative change of ~1e-3 in scale.
    np.testing.assert_allclose(got, ref, rtol=1e-2, atol=1e-2)


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False, width=32),
            st.sampled_from([0.0, 1e-30, 255.0, -1e30, 3.4e38]),
        ),
        min_size=1,
        max_size=6,
    ),
    seed=st.integers(0, 2**31),
)
def test_normalisation_output_is_finite_and_bounded(values, seed) -> None:
    """Any finite stamp (constant, fill values, extreme ranges) maps into (-limit, limit)."""
    rng = np.random.default_rng(seed)
    x = rng.choice(np.asarray(values, np.float32), size=(1, 51, 51, 3))
    out = keras.ops.convert_to_numpy(M.StampNormalization()(x))
    assert np.all(np.isfinite(out))
    assert np.all(np.abs(out) <= 30.0)


def test_normalisation_statistics_ignore_a_bright_star() -> None:
    rng = np.random.default_rng(4)
    sky = (1000.0 + 10.0 * rng.normal(size=(1, 51, 51, 3))).astype(np.float32)
    star = sky.copy()
    yy, xx = np.mgrid[:51, :51]
    star[0, :, :, 0] += 5e4 * np.exp(-((yy - 25) ** 2 + (xx - 25) ** 2) / 8.0).astype(np.float32)
    norm = M.StampNormalization()
    m0, s0 = (keras.ops.convert_to_numpy(v) for v in norm.statistics(sky))
    m1, s1 = (keras.ops.convert_to_numpy(v) for v in norm.statistics(star))
    np.testing.assert_allclose(m1, m0, atol=2.0)  # within 0.2 sigma of the sky
    np.testing.assert_allclose(s1, s0, rtol=0.1)
    # The star keeps its shape (peak above its wings) instead of flattening at a clip.
    y = keras.ops.convert_to_numpy(norm(star))[0, :, :, 0]
    assert y[25, 25] > y[25, 28] > y[25, 31] > 5.0


def test_nonfinite_pixels_give_nan_and_leave_other_stamps_alone(sim_stamps, vgg6_loaded) -> None:
    model, _ = vgg6_loaded
    x = sim_stamps["fits"][:6].copy()
    clean = _direct(model, x)
    x[1, 3, 3, 2] = np.nan
    x[4, 50, 0, 0] = np.inf
    x[5, 10, 10, 1] = -np.inf
    got = _direct(model, x)
    assert np.isnan(got[[1, 4, 5]]).all()
    np.testing.assert_allclose(got[[0, 2, 3]], clean[[0, 2, 3]], rtol=1e-6)


def test_normalisation_config_round_trip() -> None:
    layer = M.StampNormalization(clip_sigma=2.5, iterations=3, limit=20.0, stats_stride=1)
    again = M.StampNormalization.from_config(layer.get_config())
    assert (again.clip_sigma, again.iterations, again.limit, again.stats_stride) == (
        2.5,
        3,
        20.0,
        1,
    )
    with pytest.raises(ValueError, match="clip_sigma"):
        M.StampNormalization(clip_sigma=0)


# ----------------------------------------------------------------------------- artifact


def test_save_load_round_trip_gives_identical_scores(sim_stamps, vgg6_artifact, vgg6_loaded):
    model, card = vgg6_loaded
    assert vgg6_artifact.name == "unit-vgg6-0.keras"
    card_path = vgg6_artifact.with_suffix(".json")
    assert (
        card.sha256 == M.file_sha256(vgg6_artifact) == json.loads(card_path.read_text())["sha256"]
    )
    assert card.channels == list(CHANNELS)
    assert card.label_convention == "1 = real, 0 = artifact"
    assert card.input_shape == (51, 51, 3)
    # Loading from the card's path gives the same model.
    again, card2 = M.load_artifact(card_path)
    x = sim_stamps["fits"]
    np.testing.assert_array_equal(_direct(model, x), _direct(again, x))
    assert card2 == card
    # The saved file equals the in-memory model it was saved from.
    keras.utils.set_random_seed(3)
    fresh = M.build_model("vgg6")
    np.testing.assert_array_equal(_direct(fresh, x), _direct(model, x))


def test_save_strips_optimizer_state(tmp_path: Path) -> None:
    model = M.build_model("vgg6")
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x = np.zeros((4, 51, 51, 3), np.float32)
    model.fit(x, np.ones(4), epochs=1, verbose=0)
    card = M.ModelCard(
        name="opt", version="1", architecture="vgg6", threshold=0.3, target_recall=0.9
    )
    path = M.save_artifact(model, card, tmp_path)
    plain = M.save_artifact(
        M.build_model("vgg6"), M.ModelCard(**{**card.to_dict(), "name": "plain"}), tmp_path
    )
    # Adam keeps two moments per weight: with them the file would be about three times larger.
    assert path.stat().st_size < 1.3 * plain.stat().st_size
    loaded, _ = M.load_artifact(path)
    np.testing.assert_array_equal(_direct(loaded, x), _direct(model, x))


def test_card_json_round_trip_and_validation() -> None:
    card = M.ModelCard(
        name="c",
        version="2",
        architecture="space2vec",
        threshold=0.25,
        target_recall=0.99,
        validation_metrics={"roc_auc": 0.99},
        training_data={"simulated": True, "seeds": [1, 2]},
    )
    again = M.ModelCard.from_json(card.to_json())
    assert again == card
    data = card.to_dict()
    with pytest.raises(M.ModelArtifactError, match="required field"):
        M.ModelCard.from_dict({k: v for k, v in data.items() if k != "threshold"})
    with pytest.raises(M.ModelArtifactError, match="unknown field"):
        M.ModelCard.from_dict({**data, "bogus": 1})
    with pytest.raises(M.ModelArtifactError, match="channels"):
        M.ModelCard.from_dict({**data, "channels": ["diff", "srch", "temp"]})
    with pytest.raises(M.ModelArtifactError, match="not in"):
        M.ModelCard.from_dict({**data, "threshold": 1.5})
    with pytest.raises(M.ModelArtifactError, match="not valid JSON"):
        M.ModelCard.from_json("{not json")


def _copy_artifact(src: Path, dst_dir: Path) -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    for suffix in (".keras", ".json"):
        (dst_dir / src.with_suffix(suffix).name).write_bytes(src.with_suffix(suffix).read_bytes())
    return dst_dir / src.name


def test_tampered_missing_and_foreign_files_are_refused(vgg6_artifact: Path, tmp_path: Path):
    # One flipped byte in the weights.
    bad = _copy_artifact(vgg6_artifact, tmp_path / "tampered")
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(M.ModelArtifactError, match="does not match its card"):
        M.load_artifact(bad)
    # No card.
    lonely = _copy_artifact(vgg6_artifact, tmp_path / "nocard")
    lonely.with_suffix(".json").unlink()
    with pytest.raises(M.ModelArtifactError, match="card missing"):
        M.load_artifact(lonely)
    # No model file.
    nofile = _copy_artifact(vgg6_artifact, tmp_path / "nofile")
    nofile.unlink()
    with pytest.raises(M.ModelArtifactError, match="model file missing"):
        M.load_artifact(nofile.with_suffix(".json"))
    # A foreign .keras under our card's name.
    foreign = _copy_artifact(vgg6_artifact, tmp_path / "foreign")
    M.build_model("vgg6").save(tmp_path / "other.keras")
    foreign.write_bytes((tmp_path / "other.keras").read_bytes())
    with pytest.raises(M.ModelArtifactError, match="sha256"):
        M.load_artifact(foreign)
    # Garbage with a matching digest is still refused, by Keras, with our error type.
    junk = tmp_path / "junk" / "junk-1.keras"
    junk.parent.mkdir()
    junk.write_bytes(b"not a zip file at all")
    card = M.ModelCard(
        name="junk", version="1", architecture="vgg6", threshold=0.5, target_recall=0.99
    )
    card.sha256 = M.file_sha256(junk)
    junk.with_suffix(".json").write_text(card.to_json())
    with pytest.raises(M.ModelArtifactError, match="Keras cannot load"):
        M.load_artifact(junk)
    # Not an artifact path at all; a broken card.
    with pytest.raises(M.ModelArtifactError, match="expected the .keras file"):
        M.load_artifact(tmp_path / "model.h5")
    broken = _copy_artifact(vgg6_artifact, tmp_path / "badcard")
    broken.with_suffix(".json").write_text("[1, 2]")
    with pytest.raises(M.ModelArtifactError, match="JSON object"):
        M.load_artifact(broken)


def test_bad_names_are_refused(tmp_path: Path) -> None:
    card = M.ModelCard(
        name="../evil", version="1", architecture="vgg6", threshold=0.5, target_recall=0.9
    )
    with pytest.raises(M.ModelArtifactError, match="file name"):
        M.save_artifact(M.build_model("vgg6"), card, tmp_path)


# ----------------------------------------------------------------------------- predictor


@pytest.mark.parametrize("n", [0, 1, 5, 16, 23, 40])
def test_predictor_padding_matches_direct_call(sim_stamps, vgg6_artifact, vgg6_loaded, n):
    model, _ = vgg6_loaded
    pred = _predictor(vgg6_artifact)
    for key in ("fits", "gif"):
        x = sim_stamps[key][:n]
        got = pred.predict(x)
        assert got.dtype == np.float32 and got.shape == (n,)
        if n:
            np.testing.assert_allclose(got, _direct(model, x), rtol=1e-5, atol=1e-6)
    # Fixed shapes: a full batch and the small tail batch, per input dtype, never more.
    assert set(pred._compiled) <= {(d, s) for d in ("|u1", "<f4") for s in (16, 2)}


_PREDICTORS: dict[Path, M.Predictor] = {}


def _predictor(path: Path) -> M.Predictor:
    if path not in _PREDICTORS:
        _PREDICTORS[path] = M.Predictor(path, batch_size=16)
    return _PREDICTORS[path]


def test_predictor_attributes_and_input_errors(vgg6_artifact: Path) -> None:
    pred = _predictor(vgg6_artifact)
    assert pred.sha256 == pred.card.sha256 == M.file_sha256(vgg6_artifact)
    assert pred.threshold == 0.5
    assert pred.path == vgg6_artifact
    with pytest.raises(M.ModelInputError, match=r"\(n, 51, 51, 3\)"):
        pred.predict(np.zeros((2, 51, 51), np.float32))
    with pytest.raises(M.ModelInputError, match=r"\(n, 51, 51, 3\)"):
        pred.predict(np.zeros((2, 3, 51, 51), np.float32))
    with pytest.raises(M.ModelInputError, match="dtype"):
        pred.predict(np.zeros((2, 51, 51, 3), np.complex64))
    with pytest.raises(ValueError, match="batch_size"):
        M.Predictor(vgg6_artifact, batch_size=0)
    # float64 and int16 pixels are accepted (cast to float32) and score like float32.
    x = np.random.default_rng(0).integers(0, 255, size=(3, 51, 51, 3))
    np.testing.assert_array_equal(
        pred.predict(x.astype(np.float64)), pred.predict(x.astype(np.float32))
    )
    np.testing.assert_array_equal(
        pred.predict(x.astype(np.int16)), pred.predict(x.astype(np.uint8))
    )


def test_predictor_mixed_precision_is_close(sim_stamps, vgg6_artifact) -> None:
    ref = _predictor(vgg6_artifact).predict(sim_stamps["fits"])
    mixed = M.Predictor(vgg6_artifact, batch_size=16, mixed_precision=True)
    assert mixed.model.get_layer("conv1").compute_dtype == "bfloat16"
    assert mixed.model.get_layer("normalize").compute_dtype == "float32"
    np.testing.assert_allclose(mixed.predict(sim_stamps["fits"]), ref, atol=2e-2)


def test_predictor_from_model(sim_stamps, vgg6_loaded) -> None:
    model, _ = vgg6_loaded
    pred = M.Predictor.from_model(model, batch_size=8)
    assert pred.path is None and pred.card.architecture == "vgg6"
    np.testing.assert_allclose(
        pred.predict(sim_stamps["gif"]), _direct(model, sim_stamps["gif"]), rtol=1e-5
    )


# ----------------------------------------------------------------------------- shipped model


def test_shipped_model_card_and_size() -> None:
    path = M.default_model_path()
    assert path.name == "space2vec-demo-2.keras"
    assert path.stat().st_size < 10 * 2**20
    card = M.load_card(path)
    assert card.architecture == "space2vec"
    assert card.training_data["simulated"] is True
    assert "simulat" in card.training_data["description"].lower()
    assert card.target_recall == 0.99
    assert card.sha256 == M.file_sha256(path)


def _fresh_python(script: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``script`` in a new interpreter (nothing imported yet) from the repository root."""
    clean = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS",)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env={**clean, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_reading_a_card_imports_no_keras_or_tensorflow() -> None:
    """The flows, the CLI and the scoring driver read cards in processes that never run a model."""
    run = _fresh_python(
        """
        import sys
        import s2v_batch.model
        from s2v_batch.training.config import TrainConfig
        from s2v_batch.model import ModelCard, default_model_path, load_card
        card = load_card(default_model_path())
        assert ModelCard.from_json(card.to_json()) == card
        assert card.keras_version and card.backend  # recorded by save_artifact, read back as is
        TrainConfig(name="x", version="2")
        assert "tensorflow" not in sys.modules and "keras" not in sys.modules, sorted(
            m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")
        )[:5]
        """
    )
    assert run.returncode == 0, run.stderr[-3000:]


def test_load_artifact_alone_in_a_fresh_process() -> None:
    """load_artifact registers the project's layers itself (the move of issue 23 once lost that
    import, and only a process that had not imported the layers for another reason noticed)."""
    run = _fresh_python(
        """
        from s2v_batch.model import default_model_path, load_artifact
        model, card = load_artifact(default_model_path())
        assert model.input_shape[1:] == tuple(card.input_shape), model.input_shape
        """
    )
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.parametrize(
    "entry", ["from s2v_batch.model import Predictor", "import s2v_batch.training.loop"]
)
def test_onednn_is_on_before_tensorflow_loads(entry: str) -> None:
    """The predictor and training both import Keras through model.backend, which sets oneDNN."""
    run = _fresh_python(
        f"""
        import os, sys
        seen = []

        class Spy:  # notes the variable when TensorFlow is first looked for
            def find_spec(self, name, path=None, target=None):
                if name == "tensorflow" and not seen:
                    seen.append(os.environ.get("TF_ENABLE_ONEDNN_OPTS"))

        sys.meta_path.insert(0, Spy())
        {entry}
        assert seen == ["1"], seen
        """,
        KERAS_BACKEND="tensorflow",
    )
    assert run.returncode == 0, run.stderr[-3000:]


def test_shipped_model_separates_simulated_classes(sim_stamps) -> None:
    """Sanity on 40 fresh stamps of a seed it was not trained on (the full check is in MODEL.md)."""
    pred = M.Predictor(batch_size=64)
    for key in ("fits", "gif"):
        s = pred.predict(sim_stamps[key])
        lab = sim_stamps["labels"]
        assert s[lab == 1].mean() > s[lab == 0].mean() + 0.3


def test_batchnorm_folding_keeps_the_scores(sim_stamps) -> None:
    model, _ = M.load_artifact(M.default_model_path())
    folded = M.fold_batchnorm(model)
    assert not [ly for ly in folded.layers if isinstance(ly, keras.layers.BatchNormalization)]
    assert not np.allclose(
        folded.get_layer("b1_down").get_weights()[0], model.get_layer("b1_down").get_weights()[0]
    )
    x = np.concatenate([sim_stamps["fits"], sim_stamps["gif"].astype(np.float32)])
    np.testing.assert_allclose(_direct(folded, x), _direct(model, x), atol=1e-5)
    # The original is untouched; a model without BatchNormalization is returned as it is.
    assert [ly for ly in model.layers if isinstance(ly, keras.layers.BatchNormalization)]
    vgg = M.build_model("vgg6")
    assert M.fold_batchnorm(vgg) is vgg


def test_fused_normalization_keeps_the_scores(sim_stamps) -> None:
    """The XLA-fused normalisation (the Predictor's default on TensorFlow) scores as the model
    as saved, NaN for the stamp with a NaN pixel included; the original model is untouched."""
    model, _ = M.load_artifact(M.default_model_path())
    fused = M.fuse_normalization(model)
    assert type(fused.get_layer("normalize")) is not M.StampNormalization
    assert type(model.get_layer("normalize")) is M.StampNormalization
    fits = sim_stamps["fits"].copy()
    fits[3, 10, 10, 2] = np.nan
    for x in (fits, sim_stamps["gif"]):
        want = _direct(model, x)
        np.testing.assert_allclose(_direct(fused, x), want, atol=1e-4)
        pred = M.Predictor(batch_size=16)
        got = pred.predict(x)
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(pred.predict(fits[3:4]))[0]
    unfused = M.Predictor(batch_size=16, fuse_norm=False)
    assert type(unfused.model.get_layer("normalize")) is M.StampNormalization
    vgg = M.build_model("vgg6")
    assert type(M.fuse_normalization(vgg).get_layer("normalize")) is not M.StampNormalization


@pytest.fixture(scope="module")
def stamps_520() -> dict[str, np.ndarray]:
    """520 simulated stamps as ingest stores them (fits float32, gif uint8): a full batch of 512
    and a tail."""
    from s2v_batch.sim.encoders import scale_u8

    b = simulate_stamps(520, np.random.default_rng(23))
    fits = np.stack([combine_channels(list(np.moveaxis(p, -1, 0)))[0] for p in b.pixels])
    gif = np.stack([scale_u8(b.pixels[..., c], ch) for c, ch in enumerate(CHANNELS)], -1)
    return {"float32": fits, "uint8": gif}


def _in_batches(fn, x: np.ndarray, b: int) -> np.ndarray:
    return np.concatenate(
        [keras.ops.convert_to_numpy(fn(x[i : i + b])) for i in range(0, len(x), b)]
    )


def test_a_stamp_scores_the_same_in_any_batch(stamps_520) -> None:
    """Batches of 1, 16, 17, 64, 83 and 512 stamps (ragged tails of 8, 10 and 22 included), uint8
    and float32. The fused normalisation's output is the same bit for bit whatever the batch: the
    kernel pads batches under ``MIN_BATCH`` stamps (XLA's CPU code sums in another order for up
    to 16). Scores are not bit for bit: the CNN's own kernels (oneDNN; not the normalisation)
    sum in another order with the batch's size and a stamp's place in it, a few float32 ulps from
    16 stamps on (a tail of the workers' 512-stamp predictor included) and up to 1.5e-6 at 1
    (measured): every batch size scores within 1e-5 of every other, at any place."""
    model, card = M.load_artifact(M.default_model_path())
    fused = M.fuse_normalization(model).get_layer("normalize")
    sizes = (1, 16, 17, 64, 83, 512)
    preds = {b: M.Predictor.from_model(model, card, batch_size=b) for b in sizes}
    for dtype, x in stamps_520.items():
        want = _in_batches(fused, x, 512)
        scores = preds[512].predict(x)
        assert np.isfinite(scores).all()
        for b in sizes:
            # Two full batches of b and a ragged tail of 7 (all 520 for 512): enough places.
            m = min(len(x), 2 * b + 7)
            got = _in_batches(fused, x[:m], b)
            err = f"{dtype}, normalisation, batch {b}"
            np.testing.assert_array_equal(got, want[:m], err_msg=err)
            got = preds[b].predict(x[:m])
            np.testing.assert_allclose(got, scores[:m], rtol=0, atol=1e-5, err_msg=f"{dtype}, {b}")
        for n in sizes:  # the last n stamps: in a full batch and a tail, or in tails only
            got = preds[512].predict(x[-n:])
            np.testing.assert_allclose(got, scores[-n:], rtol=0, atol=1e-5, err_msg=f"last {n}")


def test_tensorflow_and_jax_give_the_same_scores(sim_stamps, tmp_path: Path) -> None:
    """The shipped .keras file scores the same under JAX (own process: one backend a process)."""
    pytest.importorskip("jax")
    x = np.concatenate([sim_stamps["fits"][:20], sim_stamps["gif"][:20].astype(np.float32)])
    np.save(tmp_path / "x.npy", x)
    path = M.default_model_path()
    tf_scores = M.Predictor(path, batch_size=32).predict(x)
    script = textwrap.dedent(
        f"""
        import numpy as np, keras
        from s2v_batch.model import Predictor
        assert keras.backend.backend() == "jax"
        x = np.load({str(tmp_path / "x.npy")!r})
        np.save({str(tmp_path / "jax.npy")!r}, Predictor({str(path)!r}, batch_size=32).predict(x))
        """
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    jax_scores = np.load(tmp_path / "jax.npy")
    # Different convolution kernels round differently: ~1e-5 on a trained model's scores.
    np.testing.assert_allclose(jax_scores, tf_scores, atol=1e-4)
    t = M.load_card(path).threshold
    near = np.abs(tf_scores - t) < 1e-4
    np.testing.assert_array_equal((jax_scores >= t)[~near], (tf_scores >= t)[~near])
    assert np.ptp(tf_scores) > 0.5  # a trained model: scores spread over [0, 1]
