"""Tests of s2v_batch.training.data (splits, augmentation, streaming batches) and s2v_batch.training.loop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from s2v_batch import model as M
from s2v_batch.core.config import ConfigError
from s2v_batch.core.conventions import CHANNELS
from s2v_batch.formats.decode import combine_channels, decode_gif
from s2v_batch.metrics import classification as metrics
from s2v_batch.sim.simulator import render_gif, simulate_stamps
from s2v_batch.store.dataset import write_night
from s2v_batch.training import data as D
from s2v_batch.training import loop as T
from s2v_batch.training.config import TrainConfig

# ----------------------------------------------------------------------------- splits


def test_splitmix64_reference_values() -> None:
    # The first two outputs of the reference SplitMix64 generator seeded with 0.
    golden = np.int64(np.uint64(0x9E3779B97F4A7C15).view(np.int64))
    out = D.splitmix64(np.array([0, golden], dtype=np.int64))
    assert [int(v) for v in out] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]


def test_split_fractions_and_stability() -> None:
    ids = np.arange(200_000, dtype=np.int64) + 20_000_000
    split = D.split_of(ids)
    frac = np.bincount(split, minlength=3) / ids.size
    np.testing.assert_allclose(frac, D.SPLIT_FRACTIONS, atol=0.005)
    # Consecutive IDs are not correlated with their split.
    assert abs(np.corrcoef(split[:-1], split[1:])[0, 1]) < 0.01
    # The split of an ID never depends on what else is split with it.
    np.testing.assert_array_equal(D.split_of(ids[::-7]), split[::-7])


@given(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=50))
def test_split_is_a_function_of_the_id(ids: list[int]) -> None:
    a = np.asarray(ids, dtype=np.int64)
    s = D.split_of(a)
    assert s.dtype == np.int8 and set(s.tolist()) <= {0, 1, 2}
    np.testing.assert_array_equal(s, [D.split_of(np.array([i], np.int64))[0] for i in ids])


# ----------------------------------------------------------------------------- augmentation


def _symmetries(stamp: np.ndarray) -> list[np.ndarray]:
    rots = [np.rot90(stamp, k, axes=(0, 1)) for k in range(4)]
    return rots + [r[:, ::-1] for r in rots]


def test_augment_applies_one_of_the_eight_symmetries() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 7, 7, 3)).astype(np.float32)
    y = D.augment(x, np.random.default_rng(1))
    used = set()
    for a, b in zip(x, y, strict=True):
        hits = [k for k, s in enumerate(_symmetries(a)) if np.array_equal(s, b)]
        assert len(hits) == 1  # channels turned together, pixels unchanged
        used.add(hits[0])
    assert used == set(range(8))
    np.testing.assert_array_equal(y, D.augment(x, np.random.default_rng(1)))
    assert y.dtype == x.dtype


# ----------------------------------------------------------------------------- data


def _gif_pixels(pixels: np.ndarray) -> np.ndarray:
    return np.stack(
        [
            np.stack(
                [decode_gif(render_gif(p[:, :, c], ch), 51) for c, ch in enumerate(CHANNELS)], -1
            )
            for p in pixels
        ]
    )


def _fits_pixels(pixels: np.ndarray) -> np.ndarray:
    return np.stack([combine_channels(list(np.moveaxis(p, -1, 0)))[0] for p in pixels])


@pytest.fixture(scope="session")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Two small labelled stores: a gif-derived (uint8) night and a fits-derived (float32) one."""
    root = tmp_path_factory.mktemp("stores")
    out: dict[str, object] = {"root": root}
    for k, (fmt, night) in enumerate((("gif", 20130901), ("fits", 20130902))):
        b = simulate_stamps(260, np.random.default_rng(100 + k))
        px = _gif_pixels(b.pixels) if fmt == "gif" else _fits_pixels(b.pixels)
        ids = np.arange(len(b), dtype=np.int64) + 20_000_000 + 10_000 * k
        label = b.labels.astype(np.int8)
        label[::13] = -1  # some stamps without a label
        # Masked fractions up to 0.25 on labelled stamps; 0.9 on an unlabelled one (index 0).
        frac = np.linspace(0.0, 0.25, len(b), dtype=np.float32)
        frac[0] = 0.9
        write_night(
            root / "Y1" / f"{night}.zarr",
            px,
            ids,
            label,
            season="Y1",
            night=night,
            shard_stamps=128,
            chunk_stamps=32,
            masked_fraction=frac,
        )
        out[fmt] = (px, ids, label)
    return out


@pytest.fixture(scope="session")
def trained(stores, tmp_path_factory: pytest.TempPathFactory) -> T.TrainResult:
    return T.train(
        [stores["root"]],
        tmp_path_factory.mktemp("model"),
        TrainConfig(
            arch="vgg6",
            epochs=2,
            batch_size=32,
            learning_rate=1e-3,
            patience=1,
            shuffle_window=96,
            name="unit",
            version="3",
        ),
        training_data={"description": "simulated test stamps", "simulated": True, "seeds": [100]},
        command="pytest",
        progress=False,
    )


def _id_store(path: Path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A float32 night whose stamp i is the constant i (rotation-proof identity)."""
    ids = np.arange(n, dtype=np.int64) * 7919 + seed
    label = np.random.default_rng(seed).integers(-1, 2, n).astype(np.int8)
    px = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 9, 9, 3))
    write_night(
        path,
        np.ascontiguousarray(px),
        ids,
        label,
        season="Y1",
        night=20130905,
        shard_stamps=64,
        chunk_stamps=16,
    )
    return ids, label


def test_training_batches_are_shuffled_deterministic_and_complete(tmp_path: Path) -> None:
    path = tmp_path / "Y1" / "20130905.zarr"
    ids, label = _id_store(path, 700, 5)
    source = D.LabelledNights([path], unit_stamps=32)
    train_idx = np.flatnonzero((label != -1) & (D.split_of(ids) == 0))
    ds = D.TrainBatches(source, batch_size=20, seed=9, window=100)
    assert len(ds) == train_idx.size // 20
    peek = ds[1]  # Keras peeks at batches to learn their shapes: it must not disturb the run
    epoch0 = [ds[i] for i in range(len(ds))]
    np.testing.assert_array_equal(peek[0], epoch0[1][0])
    seen = np.concatenate([b[0][:, 0, 0, 0] for b in epoch0]).astype(int)
    assert len(set(seen.tolist())) == seen.size == len(ds) * 20  # no stamp twice in an epoch
    assert set(seen.tolist()) <= set(train_idx.tolist())  # only labelled training stamps
    np.testing.assert_array_equal(np.concatenate([b[1] for b in epoch0]), label[seen])
    assert not np.array_equal(seen, np.sort(seen))  # shuffled
    ds.on_epoch_end()
    seen1 = np.concatenate([ds[i][0][:, 0, 0, 0] for i in range(len(ds))]).astype(int)
    assert not np.array_equal(seen1, seen)  # a new order every epoch
    again = D.TrainBatches(
        D.LabelledNights([path], unit_stamps=32), batch_size=20, seed=9, window=100
    )
    np.testing.assert_array_equal(again[3][0], epoch0[3][0])  # same seed, same batches
    # Validation batches: every validation stamp once, in storage order.
    val = D.EvalBatches(source, D.VALIDATION, 16)
    got = np.concatenate([val[i][0][:, 0, 0, 0] for i in range(len(val))]).astype(int)
    np.testing.assert_array_equal(got, np.flatnonzero((label != -1) & (D.split_of(ids) == 1)))


def test_nonfinite_stamps_get_zero_weight(tmp_path: Path) -> None:
    path = tmp_path / "Y1" / "20130906.zarr"
    n = 64
    px = np.random.default_rng(0).normal(size=(n, 9, 9, 3)).astype(np.float32)
    px[::5, 2, 2, 1] = np.nan
    write_night(
        path, px, np.arange(n, dtype=np.int64), np.ones(n, np.int8), season="Y1", night=20130906
    )
    val = D.EvalBatches(D.LabelledNights([path]), D.TRAIN, 1000)
    x, y, w = val[0]
    assert np.isfinite(x).all()
    expect = np.isfinite(px).all(axis=(1, 2, 3))[D.split_of(np.arange(n)) == 0]
    np.testing.assert_array_equal(w, expect.astype(np.float32))


# ----------------------------------------------------------------------------- train()


def _no_constant(token: str) -> None:
    raise AssertionError(f"non-standard JSON constant {token}")


def test_train_writes_a_loadable_artifact_with_a_faithful_card(trained, stores) -> None:
    r = trained
    assert r.model_path.name == "unit-3.keras" and r.card_path.is_file()
    # Strict JSON: json.loads alone accepts NaN and Infinity, which other readers refuse.
    json.loads(r.card_path.read_text(), parse_constant=_no_constant)
    model, card = M.load_artifact(r.model_path)
    assert card == r.card
    assert card.architecture == "vgg6" and card.target_recall == 0.99
    assert card.training_command == "pytest"
    td = card.training_data
    assert td["simulated"] is True and td["seeds"] == [100]
    assert len(td["stores"]) == 2
    # Counts: labelled stamps only, split by the stamp_id hash.
    counts = {0: 0, 1: 0, 2: 0}
    for fmt in ("gif", "fits"):
        _, ids, label = stores[fmt]
        s = D.split_of(ids)[label != -1]
        for k in counts:
            counts[k] += int((s == k).sum())
    assert td["n_stamps"] == {"train": counts[0], "validation": counts[1], "test": counts[2]}
    assert (r.n_train, r.n_validation, r.n_test) == (counts[0], counts[1], counts[2])
    assert card.test_metrics["n_labelled"] == counts[2]
    assert set(card.test_metrics["by_stored_dtype"]) == {"gif (uint8)", "fits (float32)"}
    assert 1 <= r.best_epoch <= r.epochs_run <= 2
    assert "threshold" in r.line()
    # The card states the largest masked fraction among the labelled training stamps.
    assert card.max_masked_fraction == pytest.approx(0.25)


def test_threshold_keeps_the_target_recall_on_validation(trained, stores) -> None:
    """Rescore the validation stamps from the saved file: the stored threshold keeps 99 %."""
    pred = M.Predictor(trained.model_path, batch_size=64)
    scores, labels = [], []
    for fmt in ("gif", "fits"):
        px, ids, label = stores[fmt]
        sel = (D.split_of(ids) == D.VALIDATION) & (label != -1)
        scores.append(pred.predict(px[sel]))
        labels.append(label[sel])
    s, lab = np.concatenate(scores), np.concatenate(labels)
    c = metrics.confusion(s, lab, pred.threshold)
    assert c.recall >= 0.99
    assert c.tp == trained.card.validation_metrics["tp"]
    assert c.fp == trained.card.validation_metrics["fp"]
    # The threshold is the highest that keeps the target: any higher loses a real stamp.
    assert metrics.confusion(s, lab, np.nextafter(np.float32(pred.threshold), 1)).recall < 0.99
    # Issue 27: the card's bfloat16 threshold is the same choice on the bfloat16 scores.
    bf16 = M.Predictor(trained.model_path, batch_size=64, precision="bfloat16")
    t16 = trained.card.threshold_for("bfloat16")
    assert bf16.threshold == t16
    s16 = np.concatenate([bf16.predict(stores[f][0][(D.split_of(stores[f][1]) == D.VALIDATION)
                                                    & (stores[f][2] != -1)]) for f in ("gif", "fits")])  # fmt: skip
    assert metrics.confusion(s16, lab, t16).recall >= 0.99
    assert metrics.confusion(s16, lab, np.nextafter(np.float32(t16), 1)).recall < 0.99


def _train(nights: list, out: Path, config: TrainConfig | None = None) -> T.TrainResult:
    return T.train(nights, out, config or TrainConfig(), training_data=None, progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer"),
        ({"shuffle_window": True}, "shuffle_window must be a positive integer"),
        ({"patience": -1}, "patience must be an integer >= 0"),
        ({"seed": -3}, "seed must be an integer >= 0"),
        ({"target_recall": 1.5}, r"target_recall must be in \(0, 1\]"),
        ({"target_recall": 0.0}, r"target_recall must be in \(0, 1\]"),
        ({"target_recall": "0.9"}, "target_recall must be a number"),
        ({"learning_rate": 0.0}, "learning_rate must be > 0"),
        ({"learning_rate": float("nan")}, "learning_rate must be > 0"),
        ({"arch": ""}, "arch must be an architecture name"),
        ({"name": "../up"}, "model name '../up' must be letters"),
        ({"version": "1 2"}, "model version '1 2' must be letters"),
        ({"max_masked_fraction": 1.5}, r"max_masked_fraction must be in \[0, 1\]"),
        ({"max_masked_fraction": "0.2"}, r"max_masked_fraction must be in \[0, 1\]"),
    ],
)
def test_train_config_refuses_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)


def test_train_config_repr_rebuilds_it() -> None:
    """The repr is the config's part of the recorded train(...) call."""
    cfg = TrainConfig(arch="vgg6", epochs=6, learning_rate=1e-3, name="space2vec-demo")
    assert eval(repr(cfg), {"TrainConfig": TrainConfig}) == cfg


@pytest.mark.parametrize(
    "card_path", sorted(M.shipped_models_dir().glob("*.json")), ids=lambda p: p.stem
)
def test_shipped_card_records_a_valid_train_call(card_path: Path) -> None:
    """Each shipped card's training_command is an ``s2v train`` command line (or a Python
    ``train(...)`` call) that today's parser (or signature) accepts and that says what the card
    records: architecture, name, version, seed, batch size, learning rate, recall, data."""
    import ast
    import inspect
    import shlex

    from s2v_batch.cli.args import build_parser

    card = M.load_card(card_path.with_suffix(".keras"))
    td = card.training_data
    command = card.training_command
    if command.startswith("s2v train "):
        a = build_parser().parse_args(shlex.split(command)[1:])
        cfg = TrainConfig(arch=a.arch, epochs=a.epochs, batch_size=a.batch_size,
                          learning_rate=a.learning_rate, patience=a.patience,
                          target_recall=a.target_recall, seed=a.seed, name=a.name,
                          version=a.version)  # fmt: skip
        description, simulated = a.data_description, a.simulated
        # --augment (issue 26) names the set the card describes; older commands mean flips.
        from s2v_batch.training.augment import augmentation_text

        assert td["augmentation"] == augmentation_text(a.augment)
    else:
        code = command.split('python -c "', 1)[1].rsplit('"', 1)[0]
        calls = [n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call)]
        call = next(c for c in calls if getattr(c.func, "id", None) == "train")
        cfg_call = call.args[2]
        assert isinstance(cfg_call, ast.Call) and cfg_call.func.id == "TrainConfig"
        cfg = TrainConfig(**{k.arg: ast.literal_eval(k.value) for k in cfg_call.keywords})
        args = [ast.literal_eval(a) for a in call.args[:2]] + [cfg]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        inspect.signature(T.train).bind(*args, **kwargs)  # raises when the call no longer fits
        description = kwargs["training_data"]["description"]
        simulated = kwargs["training_data"]["simulated"]
    assert (cfg.arch, cfg.name, cfg.version) == (card.architecture, card.name, card.version)
    assert (cfg.seed, cfg.batch_size) == (td["training_seed"], td["batch_size"])
    assert (cfg.learning_rate, cfg.target_recall) == (td["learning_rate"], card.target_recall)
    assert (description, simulated) == (td["description"], td["simulated"])


def test_train_refuses_bad_input(stores, tmp_path: Path) -> None:
    root = stores["root"]
    with pytest.raises(T.TrainingError, match="unknown architecture"):
        _train([root], tmp_path, TrainConfig(arch="nope"))
    with pytest.raises(TypeError, match="TrainConfig"):
        T.train([root], tmp_path, {"epochs": 1}, training_data=None)  # type: ignore[arg-type]
    with pytest.raises(T.TrainingError, match="does not exist"):
        _train([tmp_path / "missing"], tmp_path)
    with pytest.raises(T.TrainingError, match="not a complete night"):
        _train([tmp_path / "Y1" / "20130907.zarr"], tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(T.TrainingError, match="no night datasets"):
        _train([empty], tmp_path)
    unl = tmp_path / "unl" / "Y1" / "20130908.zarr"
    # Non-zero pixels: a shard holding only the fill value is not written (store.py).
    write_night(
        unl,
        np.ones((20, 9, 9, 3), np.uint8),
        np.arange(20, dtype=np.int64),
        np.full(20, -1, np.int8),
        season="Y1",
        night=20130908,
    )
    with pytest.raises(T.TrainingError, match="no labelled stamps"):
        _train([unl], tmp_path)
    one = tmp_path / "one" / "Y1" / "20130909.zarr"
    write_night(
        one,
        np.ones((50, 9, 9, 3), np.uint8),
        np.arange(50, dtype=np.int64),
        np.ones(50, np.int8),
        season="Y1",
        night=20130909,
    )
    with pytest.raises(T.TrainingError, match="no artifact stamps"):
        _train([one], tmp_path)
