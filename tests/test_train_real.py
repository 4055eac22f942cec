"""Training against the simulator (issue 26): augmentations, warm start, model choice on real
stamps (``--choose-on``) and real stamps in the batches (``--real-train``). Real stamps are
stood in for by simulated ones written as realsets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from s2v_batch import model as M
from s2v_batch.core.conventions import CHANNELS
from s2v_batch.formats.decode import combine_channels, decode_gif
from s2v_batch.metrics import classification as metrics
from s2v_batch.sim.simulator import render_gif, simulate_stamps
from s2v_batch.store.dataset import write_night
from s2v_batch.training import augment as A
from s2v_batch.training import data as D
from s2v_batch.training import loop as T
from s2v_batch.training.choice import CHOICE_CRITERION, prepare_real, warm_start
from s2v_batch.training.config import TrainConfig
from s2v_batch.training.realsets import heldout_groups, load_realset


def _fits(pixels: np.ndarray) -> np.ndarray:
    """Pixels as ingest stores fits stamps (masked pixels filled)."""
    return np.stack([combine_channels(list(np.moveaxis(p, -1, 0)))[0] for p in pixels])


def _gif(pixels: np.ndarray) -> np.ndarray:
    return np.stack(
        [
            np.stack(
                [decode_gif(render_gif(p[:, :, c], ch), 51) for c, ch in enumerate(CHANNELS)], -1
            )
            for p in pixels
        ]
    )


def _write_realset(path: Path, x: np.ndarray, y: np.ndarray, groups: list[str]) -> Path:
    np.savez(
        path,
        x=x,
        y=np.asarray(y, np.int8),
        ids=np.array([f"id-{i}" for i in range(len(y))]),
        group=np.array(groups),
        source=np.array("sim-stand-in"),
        survey=np.array("des"),
    )
    return path


@pytest.fixture(scope="module")
def stamps() -> dict[str, np.ndarray]:
    b = simulate_stamps(48, np.random.default_rng(11))
    return {"fits": _fits(b.pixels), "gif": _gif(b.pixels)}


# ----------------------------------------------------------------------------- augmentations


@pytest.mark.parametrize("kind", ["fits", "gif"])
def test_survey_augment_keeps_shape_dtype_is_seeded_and_changes_pixels(stamps, kind) -> None:
    x = stamps[kind]
    y = A.survey_augment(x, np.random.default_rng(3))
    assert y.shape == x.shape and y.dtype == x.dtype and np.isfinite(y).all()
    np.testing.assert_array_equal(y, A.survey_augment(x, np.random.default_rng(3)))
    assert not np.array_equal(y, A.survey_augment(x, np.random.default_rng(4)))
    # Beyond the flips (same rng stream first): most stamps have changed pixels.
    flipped = A.augment(x, np.random.default_rng(3))
    changed = (y != flipped).any(axis=(1, 2, 3)).mean()
    assert changed > 0.5
    # The named sets: 'none' is the identity, 'flips' the published one.
    np.testing.assert_array_equal(A.apply_augmentation("none", x, np.random.default_rng(0)), x)
    np.testing.assert_array_equal(
        A.apply_augmentation("flips", x, np.random.default_rng(3)), flipped
    )


def test_8bit_stamps_held_as_float_stay_8bit_values(stamps) -> None:
    x = stamps["gif"].astype(np.float32)  # how the training batches hold gif stamps
    q = np.zeros(len(x), bool)
    q[::2] = True
    y = A.survey_augment(x, np.random.default_rng(5), quantised=q)
    assert y.dtype == np.float32
    assert y[q].min() >= 0 and y[q].max() <= 255 and np.array_equal(y[q], np.rint(y[q]))
    assert not np.array_equal(y[~q], np.rint(y[~q]))  # the others are not rounded


@pytest.mark.parametrize("part", ["p_blur", "p_noise", "p_background", "p_mask"])
def test_each_survey_augmentation_changes_pixels(stamps, part) -> None:
    off = {"p_blur": 0.0, "p_noise": 0.0, "p_background": 0.0, "p_mask": 0.0}
    x = stamps["fits"]
    rng = np.random.default_rng
    base = A.survey_augment(x, rng(2), params=A.SurveyAugmentation(**off))
    np.testing.assert_array_equal(base, A.augment(x, rng(2)))
    one = A.survey_augment(x, rng(2), params=A.SurveyAugmentation(**{**off, part: 1.0}))
    assert (one != base).any(axis=(1, 2, 3)).all()


def test_masked_strip_is_what_ingest_stores_for_masked_pixels(stamps) -> None:
    stamp = stamps["fits"][0]
    raw = stamp.copy()
    raw[:, -7:] = np.nan  # a CCD edge on the right, as a survey's fits stamp has it
    stored, frac = combine_channels(list(np.moveaxis(raw, -1, 0)))
    assert frac > 0
    np.testing.assert_array_equal(A.masked_strip(stamp, side=3, width=7), stored)


def test_train_config_names_the_augmentation() -> None:
    assert TrainConfig(augment="survey").augment == "survey"
    with pytest.raises(ValueError, match="augment must be one of"):
        TrainConfig(augment="everything")
    with pytest.raises(ValueError, match="real_weight must be a number > 0"):
        TrainConfig(real_weight=0)


# ----------------------------------------------------------------------------- realset split


def _reference_heldout(group: str) -> bool:
    """The documented rule, written out with Python integers (what a check can copy)."""
    h = int.from_bytes(hashlib.sha256(group.encode("utf-8")).digest()[:8], "little")
    m = (1 << 64) - 1
    z = (h + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    z ^= z >> 31
    return (z >> 11) * 2.0**-53 >= 0.8


def test_heldout_groups_follow_the_documented_rule() -> None:
    groups = [f"ZTF24aa{i:05d}" for i in range(5000)] + [f"ayyar2022-{k}" for k in range(10)]
    held = heldout_groups(groups)
    assert held.dtype == bool and abs(held.mean() - 0.2) < 0.02
    assert held.tolist() == [_reference_heldout(g) for g in groups]
    np.testing.assert_array_equal(heldout_groups(groups[::-3]), held[::-3])


def test_held_out_groups_never_enter_training(tmp_path: Path) -> None:
    """Real stamps are the constants 1000 + k; every batch gets per_batch of them, only from
    training groups, at the given weight; over the epochs every training group is used."""
    n_sim = 400
    ids = np.arange(n_sim, dtype=np.int64) * 7919 + 3
    label = np.random.default_rng(3).integers(0, 2, n_sim).astype(np.int8)
    px = np.broadcast_to(np.arange(n_sim, dtype=np.float32)[:, None, None, None], (n_sim, 9, 9, 3))
    night = tmp_path / "Y1" / "20130905.zarr"
    write_night(night, np.ascontiguousarray(px), ids, label, season="Y1", night=20130905,
                shard_stamps=64, chunk_stamps=16)  # fmt: skip
    n_real = 60
    groups = [f"obj-{k // 2}" for k in range(n_real)]  # two stamps an object
    xr = np.broadcast_to((1000 + np.arange(n_real, dtype=np.float32))[:, None, None, None],
                         (n_real, 9, 9, 3))  # fmt: skip
    path = _write_realset(tmp_path / "real.npz", np.ascontiguousarray(xr), np.arange(n_real) % 2,
                          groups)  # fmt: skip
    mix, _, facts = prepare_real([path], [], input_shape=(9, 9, 3), survey="des", weight=2.5,
                                 batch_size=40)  # fmt: skip
    held = heldout_groups(groups)
    assert 0 < held.sum() < n_real
    assert facts["real_train"]["sets"][0]["n_held_out"] == int(held.sum())
    assert mix.per_batch == 5
    ds = D.TrainBatches(D.LabelledNights([night], unit_stamps=32), 40, seed=1, window=100,
                        real=mix)  # fmt: skip
    seen = set()
    for _epoch in range(6):
        for i in range(len(ds)):
            x, y, w = ds[i]
            v = x[:, 0, 0, 0].astype(int)
            real = v >= 1000
            assert real.sum() == mix.per_batch and len(v) == 40 + mix.per_batch
            k = v[real] - 1000
            assert not held[k].any()
            np.testing.assert_array_equal(y[real], k % 2)
            np.testing.assert_array_equal(w[real], 2.5)
            seen |= set(k.tolist())
        ds.on_epoch_end()
    assert seen == set(np.flatnonzero(~held).tolist())


def test_realset_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((2, 9, 9, 3), np.uint8), y=np.array([1, 0], np.int8))
    with pytest.raises(D.TrainingError, match=r"keys \['ids', 'group', 'source', 'survey'\]"):
        load_realset(bad)
    with pytest.raises(D.TrainingError, match="does not exist"):
        load_realset(tmp_path / "none.npz")
    (tmp_path / "labels.csv").write_text("a,b\n1,2\n")
    with pytest.raises(D.TrainingError, match="not a .npz realset"):
        load_realset(tmp_path / "labels.csv")
    ok = _write_realset(tmp_path / "r.npz", np.zeros((4, 9, 9, 3), np.uint8), [1, 0, 1, 0],
                        ["a", "b", "c", "d"])  # fmt: skip
    with pytest.raises(D.TrainingError, match=r"shape \(9, 9, 3\), the training nights' "):
        prepare_real([ok], [], input_shape=(51, 51, 3), survey="des", weight=1, batch_size=8)


# ----------------------------------------------------------------------------- train()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small labelled night (fits and gif halves), and realsets of other simulated stamps."""
    root = tmp_path_factory.mktemp("store")
    for k, fmt in enumerate(("fits", "gif")):
        b = simulate_stamps(200, np.random.default_rng(40 + k))
        px = _fits(b.pixels) if fmt == "fits" else _gif(b.pixels)
        write_night(root / "Y1" / f"2013090{k + 1}.zarr", px,
                    np.arange(200, dtype=np.int64) + 30_000_000 + 1000 * k,
                    b.labels.astype(np.int8), season="Y1", night=20130901 + k,
                    shard_stamps=128, chunk_stamps=32)  # fmt: skip
    b = simulate_stamps(80, np.random.default_rng(77))
    groups = [f"obj-{i // 2}" for i in range(80)]
    real = _write_realset(root / "realset.npz", _gif(b.pixels), b.labels, groups)
    # Labels the wrong way round: the better a model gets on the simulator, the worse on this
    # set, so the epoch it chooses is not the one of the lowest validation loss.
    b = simulate_stamps(80, np.random.default_rng(78))
    flipped = _write_realset(root / "flipped.npz", _fits(b.pixels), 1 - b.labels, groups)
    return {"root": root, "realset": real, "flipped": flipped}


def _cfg(**kw) -> TrainConfig:
    base = {"arch": "vgg6", "epochs": 1, "batch_size": 32, "learning_rate": 1e-3, "patience": 2,
            "shuffle_window": 96, "name": "tiny", "version": "1"}  # fmt: skip
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def chosen(store, tmp_path_factory: pytest.TempPathFactory) -> T.TrainResult:
    """Trained through the command line with every option of the recipe."""
    from s2v_batch.cli.main import main

    out = tmp_path_factory.mktemp("chosen")
    args = ["train", str(store["root"]), "--out", str(out), "--arch", "vgg6", "--epochs", "3",
            "--batch-size", "32", "--learning-rate", "1e-3", "--patience", "5", "--name", "tiny",
            "--version", "2", "--augment", "survey", "--choose-on", str(store["flipped"]),
            "--real-train", str(store["realset"]), "--real-weight", "3",
            "--data-description", "simulated", "--simulated", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    return out / "tiny-2.keras"


def test_choose_on_keeps_the_epoch_best_on_the_realset(chosen, store) -> None:
    model, card = M.load_artifact(chosen)
    td = card.training_data
    assert td["augmentation"] == A.AUGMENTATIONS["survey"]
    rt = td["real_train"]
    assert rt["weight"] == 3.0 and rt["per_batch"] == 4
    mc = td["model_choice"]
    assert mc["criterion"] == CHOICE_CRITERION
    rows = mc["per_epoch"]
    assert [r["epoch"] for r in rows] == [1, 2, 3] == list(range(1, td["epochs_run"] + 1))
    assert mc["sets"][0]["n"] == 80 and mc["sets"][0]["used"] == "all stamps"
    best = max(rows, key=lambda r: (r["roc_auc"], -r["val_loss"], -r["epoch"]))
    assert mc["chosen_epoch"] == best["epoch"] == card.validation_metrics["best_epoch"]
    # Not the epoch of the lowest validation loss (what training keeps without --choose-on).
    assert best["epoch"] != min(rows, key=lambda r: r["val_loss"])["epoch"]
    assert card.validation_metrics["val_loss"] == pytest.approx(best["val_loss"])
    # The saved weights are that epoch's: its AUC on the set is the recorded one.
    s = load_realset(store["flipped"])
    pred = M.Predictor(chosen, batch_size=64, fold_bn=False, fuse_norm=False)
    auc = metrics.roc_auc(pred.predict(s.x), s.y)
    assert auc == pytest.approx(best["roc_auc"], abs=1e-6)
    assert best["sets"]["sim-stand-in"]["roc_auc"] == best["roc_auc"]  # one set: the pool
    assert mc["before_training"]["epoch"] == 0 and "sim-stand-in" in mc["before_training"]["sets"]
    json.loads(chosen.with_suffix(".json").read_text())


def test_choose_on_a_file_also_trained_on_uses_its_held_out_groups(store) -> None:
    path = store["realset"]
    mix, sets, facts = prepare_real([path], [path, store["flipped"]], input_shape=(51, 51, 3),
                                    survey="des", weight=1, batch_size=32)  # fmt: skip
    s = load_realset(path)
    held = heldout_groups(s.group)
    assert len(mix.y) == int((~held).sum()) and len(sets[0]) == int(held.sum())
    np.testing.assert_array_equal(sets[0].ids, s.ids[held])
    assert "held-out" in facts["model_choice"]["sets"][0]["used"]
    assert len(sets[1]) == 80  # not trained on: all its stamps


def test_init_starts_from_the_artifacts_weights(chosen, store, tmp_path: Path) -> None:
    from s2v_batch.model.architectures import build_model

    saved, card = M.load_artifact(chosen)
    fresh = build_model("vgg6", (51, 51, 3))
    assert not all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), saved.get_weights(),
                                                       strict=True))  # fmt: skip
    facts = warm_start(fresh, chosen, "vgg6", (51, 51, 3))
    for a, b in zip(fresh.get_weights(), saved.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert facts["sha256"] == card.sha256 and facts["version"] == "2"
    r = T.train([store["root"]], tmp_path, _cfg(version="3"), training_data=None,
                progress=False, init=chosen.with_suffix(".json"))  # fmt: skip
    assert r.card.training_data["init"]["sha256"] == card.sha256
    assert r.card.training_data["augmentation"] == "random 90-degree rotations and flips"
    assert "model_choice" not in r.card.training_data


def test_init_refuses_another_architecture_or_a_tampered_file(chosen, store, tmp_path) -> None:
    with pytest.raises(
        D.TrainingError, match="its architecture is vgg6, this training's space2vec"
    ):
        T.train([store["root"]], tmp_path, _cfg(arch="space2vec"), training_data=None,
                progress=False, init=chosen)  # fmt: skip
    copy = tmp_path / "tiny-2.keras"
    copy.write_bytes(chosen.read_bytes() + b"x")
    card = json.loads(chosen.with_suffix(".json").read_text())
    copy.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(D.TrainingError, match="--init: .*sha256"):
        T.train([store["root"]], tmp_path / "o", _cfg(), training_data=None, progress=False,
                init=copy)  # fmt: skip


def test_choose_on_needs_both_classes_among_its_sets(store, tmp_path: Path) -> None:
    s = load_realset(store["realset"])
    files = {}
    for lab in (0, 1):
        sel = s.y == lab
        files[lab] = _write_realset(tmp_path / f"only{lab}.npz", s.x[sel], s.y[sel],
                                    list(s.group[sel]))  # fmt: skip
    with pytest.raises(D.TrainingError, match="needs real and artifact stamps among them"):
        T.train([store["root"]], tmp_path, _cfg(), training_data=None, progress=False,
                choose_on=[files[1]])  # fmt: skip
    # A source of reals only and one of artifacts only choose together (one pool).
    _, sets, facts = prepare_real([], [files[0], files[1]], input_shape=(51, 51, 3),
                                  survey="des", weight=1, batch_size=32)  # fmt: skip
    assert [len(x) for x in sets] == [int((s.y == 0).sum()), int((s.y == 1).sum())]
    assert facts["model_choice"]["criterion"] == CHOICE_CRITERION


def test_choice_scores_a_set_left_empty_by_the_split(store) -> None:
    """A file trained on whose groups all fall in training leaves nothing to choose on: it is
    recorded with n 0, and the others decide."""
    from s2v_batch.model.architectures import build_model
    from s2v_batch.training.choice import RealChoice

    s = load_realset(store["realset"])
    empty = s.subset(np.zeros(len(s), bool))
    chooser = RealChoice([empty, s])
    chooser.set_model(build_model("vgg6", (51, 51, 3)))
    auc, figures = chooser.score()
    assert list(figures) == ["sim-stand-in (realset) #1", "sim-stand-in (realset) #2"]
    first, second = figures.values()
    assert first["n"] == 0 and first["roc_auc"] is None
    assert second["n"] == 80 and auc == second["roc_auc"]
