"""Scoring reliability with real processes: killed workers, a killed `s2v score`, model swaps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from s2v_batch.core.config import ScoreConfig
from s2v_batch.scoring.driver import ScoringError, WarmUp, prefetched_blocks, score
from s2v_batch.sim.simulator import simulate_stamps
from s2v_batch.store import dataset as zstore
from s2v_batch.store import publish
from s2v_batch.store import scores as sink

N_STAMPS = 1500
SHARD = 128
CFG = ScoreConfig(batch_size=128, part_stamps=SHARD)


@pytest.fixture(scope="module")
def client(two_worker_client):
    return two_worker_client


def _make_model(out: Path, name: str, seed: int) -> Path:
    import keras

    from s2v_batch.model import ModelCard, build_model, save_artifact

    keras.utils.set_random_seed(seed)
    card = ModelCard(
        name=name,
        version="1",
        architecture="vgg6",
        threshold=0.5,
        target_recall=0.99,
        training_data={"description": "untrained test model", "simulated": True},
    )
    return save_artifact(build_model("vgg6"), card, out)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return _make_model(d, "test-a", 1), _make_model(d, "test-b", 2)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    batch = simulate_stamps(N_STAMPS, np.random.default_rng(5))
    pixels = np.nan_to_num(batch.pixels, nan=0.0)
    ids = np.arange(N_STAMPS, dtype=np.int64) + 40_000_000
    zstore.write_night(
        zstore.night_path(root, "Y1", 20130901),
        pixels,
        ids,
        batch.labels,
        season="Y1",
        night=20130901,
        shard_stamps=SHARD,
        chunk_stamps=64,
        attrs={"night_fingerprint": "test"},
    )
    lab = batch.labels.copy()
    lab[:100] = -1  # some unknown labels: null in Parquet
    zstore.write_night(
        zstore.night_path(root, "Y2", 20140815),
        pixels[:300],
        ids[:300],
        lab[:300],
        season="Y2",
        night=20140815,
        shard_stamps=SHARD,
        chunk_stamps=64,
        attrs={"night_fingerprint": "test2"},
    )
    return root


@pytest.fixture(scope="module")
def clean(client, stored, models, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    s = score(stored, out, client, model_path=models[0], config=CFG, progress=False)
    assert s.n_stamps == N_STAMPS + 300
    return out


def _night(root: Path, season="Y1") -> pd.DataFrame:
    return pd.read_parquet(root, filters=[("season", "==", season)]).sort_values("stamp_id")


def test_scores_contract(clean):
    df = _night(clean)
    assert len(df) == N_STAMPS and df.stamp_id.is_unique
    assert df.score.dtype == np.float32 and df.score.between(0, 1).all()
    assert (df.is_candidate == (df.score >= df.threshold)).all()
    assert df.model_sha256.nunique() == 1 and df.run_id.nunique() == 1
    assert str(df.scored_at.dtype).startswith("datetime64")
    assert df.error.isna().all()
    assert set(df.season.astype(str)) == {"Y1"}
    y2 = _night(clean, "Y2")
    assert y2.label.isna().sum() == 100  # -1 becomes null
    typed = sink.read_scores(clean)
    assert typed.night.dtype == np.int32 and len(typed) == N_STAMPS + 300
    m = sink.read_manifest(clean, "Y1", 20130901)
    assert m["n_stamps"] == N_STAMPS and m["model_name"] == "test-a"


def _assert_same(a: Path, b: Path) -> None:
    da_, db_ = _night(a), _night(b)
    np.testing.assert_array_equal(da_.stamp_id.to_numpy(), db_.stamp_id.to_numpy())
    np.testing.assert_allclose(da_.score.to_numpy(), db_.score.to_numpy(), atol=1e-6)
    assert _staged_parts(a) == {}  # nothing left in staging


N_PARTS = -(-N_STAMPS // SHARD)


def _staging_dirs(out: Path) -> list[Path]:
    """The staging folders of unpublished nights (the one place that knows their layout):
    ``SCORES/_staging/season=<S>/night=<N>/<key>/``, holding ``part-*.parquet`` (each written
    through a rename, so a part that exists is whole) and the run's identity."""
    return sorted(p for p in (out / "_staging").glob("season=*/night=*/*") if p.is_dir())


def _staged_parts(out: Path) -> dict[str, tuple[int, int]]:
    """Finished parts of unpublished nights: ``{name: (inode, mtime)}``."""
    found = {}
    for d in _staging_dirs(out):
        for p in d.glob("part-*.parquet"):
            try:
                st_ = p.stat()
            except FileNotFoundError:  # published meanwhile
                continue
            found[p.name] = (st_.st_ino, st_.st_mtime_ns)
    return found


def _published_parts(out: Path, season: str, night: int) -> dict[str, tuple[int, int]]:
    """The published parts of a night: ``{name: (inode, mtime)}``."""
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sink.night_dir(out, season, night).glob("part-*.parquet")
    }


def test_worker_killed_mid_run(client, stored, models, clean, tmp_path):
    out = tmp_path / "scores"
    pids = client.run(os.getpid)
    result: dict = {}

    def run():
        result["s"] = score(
            stored, out, client, model_path=models[0], config=CFG, season="Y1", progress=False
        )

    t = threading.Thread(target=run)
    t.start()
    deadline = time.time() + 120
    while time.time() < deadline and not _staged_parts(out):
        time.sleep(0.02)
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)
    # Killed while the night was being scored: some parts written, not all, nothing published.
    at_kill = _staged_parts(out)
    assert 0 < len(at_kill) < N_PARTS
    assert not sink.night_dir(out, "Y1", 20130901).exists()
    t.join(timeout=300)
    assert not t.is_alive()
    assert result["s"].n_stamps == N_STAMPS
    _assert_same(out, clean)
    assert len(_published_parts(out, "Y1", 20130901)) == 1  # merged into one file a night
    client.wait_for_workers(2, timeout=60)
    assert victim not in client.run(os.getpid).values()  # the worker was really lost


def test_two_models_only_the_second_remains(client, stored, models, tmp_path):
    out = tmp_path / "scores"
    score(stored, out, client, model_path=models[0], config=CFG, night=20130901, progress=False)
    score(stored, out, client, model_path=models[1], config=CFG, night=20130901, progress=False)
    df = _night(out)
    assert len(df) == N_STAMPS and df.stamp_id.is_unique
    assert set(df.model_version) == {"test-b-1"}
    # Published as one file, best scores first; the per-task parts stayed in staging.
    (published,) = sink.night_dir(out, "Y1", 20130901).glob("*.parquet")
    run_id = sink.read_manifest(out, "Y1", 20130901)["run_id"]
    assert published.name == f"part-{run_id[:12]}-00000.parquet"
    scores = pd.read_parquet(published).score.to_numpy()
    assert (np.diff(scores[np.isfinite(scores)]) <= 0).all()
    assert not (out / "_staging").exists() or not list((out / "_staging").rglob("*.parquet"))


def test_skip_complete_and_threshold_override(client, stored, models, tmp_path):
    out = tmp_path / "scores"
    score(stored, out, client, model_path=models[0], config=CFG, progress=False)
    again = score(
        stored, out, client, model_path=models[0], config=CFG, skip_complete=True, progress=False
    )
    assert {n.status for n in again.nights} == {"skipped"}
    other = score(
        stored,
        out,
        client,
        model_path=models[0],
        config=ScoreConfig(batch_size=128, threshold=0.0, part_stamps=SHARD),
        skip_complete=True,
        progress=False,
    )
    assert {n.status for n in other.nights} == {"scored"}
    assert other.n_candidates == N_STAMPS + 300


class _Reader(threading.Thread):
    """Reads a season's scores with pandas in a loop, as a notebook would, until the ``with``
    block ends; records ``(rows, distinct stamp_ids, run_ids)`` per read, or the exception."""

    def __init__(self, root: Path, season: str) -> None:
        super().__init__(daemon=True)
        self.root, self.season = root, season
        self.done = threading.Event()
        self.reads: list[tuple[int, int, frozenset]] = []
        self.errors: list[str] = []
        self.stale = 0

    def run(self) -> None:
        while not self.done.is_set():
            try:
                df = pd.read_parquet(
                    self.root,
                    filters=[("season", "==", self.season)],
                    columns=["stamp_id", "run_id"],
                )
            except FileNotFoundError:
                # A listing gone stale under a swap (the files listed were replaced): the read
                # saw no rows, rather than a mix; a reader reads again.
                self.stale += 1
                continue
            except Exception as exc:
                self.errors.append(repr(exc))
                continue
            self.reads.append((len(df), df.stamp_id.nunique(), frozenset(df.run_id)))

    def wait_reads(self, n: int) -> None:
        """Wait until ``n`` more reads have finished (the reader is running)."""
        goal, deadline = len(self.reads) + n, time.time() + 120
        while len(self.reads) < goal and time.time() < deadline and not self.errors:
            time.sleep(0.01)

    def __enter__(self) -> _Reader:
        self.start()
        self.wait_reads(3)
        return self

    def __exit__(self, *exc) -> None:
        self.wait_reads(3)
        self.done.set()
        self.join(timeout=60)


def test_readers_never_see_a_mix_while_a_night_is_rescored(client, stored, models, tmp_path):
    """A pandas reader looping while the night is re-scored twice (new model, then the first
    again) gets every stamp once in every read, and each read holds one run's rows."""
    out = tmp_path / "scores"
    kw = dict(config=CFG, season="Y1", progress=False)
    score(stored, out, client, model_path=models[0], **kw)
    with _Reader(out, "Y1") as reader:
        for model in (models[1], models[0]):
            score(stored, out, client, model_path=model, **kw)
            reader.wait_reads(3)
    assert reader.errors == []
    assert all(rows == distinct == N_STAMPS for rows, distinct, _ in reader.reads), (
        "a read saw a partial night or duplicates"
    )
    runs = [r for *_, r in reader.reads]
    assert len(frozenset().union(*runs)) == 3  # the reads spanned both swaps
    mixed = [r for r in runs if len(r) > 1]
    assert not mixed, f"{len(mixed)} of {len(runs)} reads mixed two runs"


def test_a_listing_taken_before_a_swap_never_reads_a_mix(
    monkeypatch, client, stored, models, tmp_path
):
    """What a reader does inside pd.read_parquet, made deterministic: list the night's files,
    read half, the night is re-scored, read the rest. It must get one run's rows, or fail
    (its listing went stale: list again), never rows of two runs."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    # A night of several published files, as a night past PUBLISH_FILE_ROWS rows is.
    monkeypatch.setattr(publish, "PUBLISH_FILE_ROWS", SHARD)
    out = tmp_path / "scores"
    kw = dict(config=CFG, season="Y1", night=20130901, progress=False)
    score(stored, out, client, model_path=models[0], **kw)
    frags = list(ds.dataset(out, format="parquet", partitioning="hive").get_fragments())
    assert len(frags) == N_PARTS
    half = len(frags) // 2
    first = [f.to_table(columns=["run_id"]) for f in frags[:half]]
    score(stored, out, client, model_path=models[1], **kw)
    try:
        rest = [f.to_table(columns=["run_id"]) for f in frags[half:]]
    except OSError:  # FileNotFoundError: the stale listing is refused, not mixed
        return
    runs = set(pa.concat_tables(first + rest).column("run_id").to_pylist())
    assert len(runs) == 1, f"one read returned rows of {len(runs)} runs"


def test_replace_dir_without_an_atomic_exchange(monkeypatch, client, stored, models, tmp_path):
    """Where renameat2(RENAME_EXCHANGE) is missing, replace_dir does two renames: the night may
    be absent for a moment, but the new rows replace the old whole, and nothing is left behind."""
    from s2v_batch.core import fsutil

    calls: list[tuple] = []

    def unsupported(a, b) -> bool:
        calls.append((a, b))
        return False

    monkeypatch.setattr(fsutil, "_renameat2_exchange", unsupported)

    # The bare operation: dest gets new's contents; new and the old contents are gone.
    old, new = tmp_path / "dest", tmp_path / "new"
    for d, text in ((old, "old"), (new, "new")):
        d.mkdir()
        (d / "a.txt").write_text(text)
        (d / f"only-{text}.txt").write_text(text)
    fsutil.replace_dir(new, old)
    assert calls == [(new, old)]  # the fallback ran
    assert sorted(p.name for p in old.iterdir()) == ["a.txt", "only-new.txt"]
    assert (old / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]

    # Re-scoring a night through it, with a pandas reader looping.
    out = tmp_path / "scores"
    kw = dict(config=CFG, season="Y1", progress=False)
    score(stored, out, client, model_path=models[0], **kw)
    with _Reader(out, "Y1") as reader:
        score(stored, out, client, model_path=models[1], **kw)
    assert len(calls) == 2
    assert reader.errors == []
    # Never partial, never duplicates; between the two renames the night may read as absent.
    assert all(rows == distinct and rows in (0, N_STAMPS) for rows, distinct, _ in reader.reads)
    df = _night(out)
    assert len(df) == N_STAMPS and set(df.model_version) == {"test-b-1"}
    season_dir = sink.night_dir(out, "Y1", 20130901).parent
    assert [p.name for p in season_dir.iterdir()] == ["night=20130901"]  # no old copy left
    assert _staged_parts(out) == {}


def test_nonfinite_pixels_get_error_entries(client, models, tmp_path):
    root = tmp_path / "store"
    px = np.nan_to_num(simulate_stamps(200, np.random.default_rng(1)).pixels, nan=0.0)
    path = zstore.write_night(
        zstore.night_path(root, "Y1", 20130905),
        px,
        np.arange(200),
        np.zeros(200, np.int8),
        season="Y1",
        night=20130905,
        shard_stamps=SHARD,
        chunk_stamps=64,
    )
    arr = zstore.stamps_array(path, mode="r+")
    block = arr[0:SHARD]
    block[3, 10, 10, 2] = np.nan
    block[7, :, :, 0] = np.inf
    arr[0:SHARD] = block
    s = score(root, tmp_path / "scores", client, model_path=models[0], config=CFG, progress=False)
    assert s.n_errors == 2
    df = _night(tmp_path / "scores").set_index("stamp_id")
    assert df.score.isna().sum() == 2 and not df.is_candidate[[3, 7]].any()
    assert "diff: 1" in df.error[3] and "srch: 2601" in df.error[7]
    assert df.error.notna().sum() == 2


@pytest.mark.parametrize("dtype, encoding", [("uint8", "lossless"), ("float32", "bitround-9")])
def test_scores_equal_the_predictor_on_the_stored_pixels(client, models, tmp_path, dtype, encoding):
    """The pipeline (reader, buffers, warm-up, guard) gives what Predictor.predict gives on the
    pixels xarray reads back from the store, stamp by stamp."""
    from s2v_batch.model import Predictor

    n = 700
    px = np.nan_to_num(simulate_stamps(n, np.random.default_rng(9)).pixels, nan=0.0)
    if dtype == "uint8":
        px = np.clip(px / 20 + 100, 0, 255).astype(np.uint8)
    path = zstore.write_night(
        zstore.night_path(tmp_path / "store", "Y1", 20130907),
        px,
        np.arange(n) * 7 + 3,
        np.zeros(n, np.int8),
        season="Y1",
        night=20130907,
        shard_stamps=SHARD,
        chunk_stamps=64,
        float_encoding=encoding,
    )
    cfg = ScoreConfig(batch_size=64, part_stamps=SHARD)
    s = score(tmp_path / "store", tmp_path / "scores", client, model_path=models[0], config=cfg,
              progress=False)  # fmt: skip
    assert s.n_stamps == n and s.first_part_seconds is not None
    ds = xr.open_zarr(path)
    want = Predictor(models[0], batch_size=64).predict(ds.stamps.values)
    got = _night(tmp_path / "scores").set_index("stamp_id").score
    np.testing.assert_allclose(got.loc[ds.stamp_id.values].to_numpy(), want, atol=1e-6, rtol=0)
    # The warm-up plugin is gone after the run; the workers kept their predictor.
    assert WarmUp.name not in client.run_on_scheduler(
        lambda dask_scheduler: list(dask_scheduler.worker_plugins)
    )


def test_nothing_to_score_is_a_clear_error(client, stored, models, tmp_path):
    with pytest.raises(ScoringError, match="no stored nights"):
        score(stored, tmp_path, client, model_path=models[0], season="Y6", progress=False)


#: A score the model never gives (float32): planted in a staged part, it reaches the published
#: scores only if that part is reused.
SENTINEL = np.float32(0.123456)


class _Stopped(Exception):
    """Raised in place of publishing a night: the run stops with every part staged."""


def _stop(*args, **kwargs):
    raise _Stopped


def _plant(part: Path, row: int = 0) -> int:
    """Rewrite a staged part with the SENTINEL score in ``row`` (not a candidate: under the
    threshold), as scoring writes parts (same schema, through a rename); return its stamp_id."""
    table = pq.read_table(part)
    score_ = table.column("score").to_numpy(zero_copy_only=False).copy()
    cand = table.column("is_candidate").to_pylist()
    score_[row], cand[row] = SENTINEL, False
    for name, values in (
        ("score", pa.array(score_, pa.float32())),
        ("is_candidate", pa.array(cand, pa.bool_())),
    ):
        table = table.set_column(table.schema.get_field_index(name), name, values)
    publish.write_part(part, table, table.schema)
    return int(table.column("stamp_id")[row].as_py())


def test_a_resumed_score_publishes_the_parts_it_reused(
    monkeypatch, client, stored, models, clean, tmp_path
):
    """Resume proven by the data, not by what the run says: a run stopped before publishing
    leaves its parts staged; one gets a SENTINEL score, two are deleted. The resumed run
    publishes the SENTINEL (that part was reused, not scored again), scores the deleted two
    again, and every other row is the clean run's."""
    out = tmp_path / "scores"
    kw = dict(model_path=models[0], config=CFG, season="Y1", progress=False)
    with monkeypatch.context() as m:
        m.setattr(publish, "publish_night", _stop)
        with pytest.raises(_Stopped):
            score(stored, out, client, **kw)
    assert len(_staged_parts(out)) == N_PARTS
    assert not sink.night_dir(out, "Y1", 20130901).exists()
    (stage,) = _staging_dirs(out)
    parts = sorted(stage.glob("part-*.parquet"))
    planted = _plant(parts[3], row=5)
    for p in (parts[0], parts[-1]):
        p.unlink()

    again = score(stored, out, client, **kw)
    assert again.n_stamps == N_STAMPS
    got = _night(out).set_index("stamp_id")
    assert got.score[planted] == SENTINEL, "the planted part was scored again, not reused"
    assert (got.score == SENTINEL).sum() == 1
    want = _night(clean).set_index("stamp_id")
    assert want.score[planted] != SENTINEL
    others = got.index != planted
    np.testing.assert_array_equal(got.index, want.index)
    np.testing.assert_allclose(got.score[others], want.score[others], atol=1e-6)
    assert _staged_parts(out) == {}


@pytest.mark.slow
def test_killed_score_process_resumes(stored, models, clean, tmp_path):
    out = tmp_path / "scores"
    cfgfile = tmp_path / "cfg.yaml"
    cfgfile.write_text("score:\n  part_stamps: 999\n  batch_size: 64\n")  # the flags below win
    cmd = [
        sys.executable,
        "-m",
        "s2v_batch.cli",
        "score",
        str(stored),
        "--model",
        str(models[0]),
        "--out",
        str(out),
        "--season",
        "Y1",
        "--batch-size",
        "128",
        "--config",
        str(cfgfile),
        "--part-stamps",
        str(SHARD),
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and len(_staged_parts(out)) < 3:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # Killed while scoring: some parts finished, not all, and the night not published.
    staged = _staged_parts(out)
    assert 3 <= len(staged) < N_PARTS
    assert not sink.night_dir(out, "Y1", 20130901).exists()
    (stage,) = _staging_dirs(out)
    run_id = json.loads((stage / "_run.json").read_text())["run_id"]
    again = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"score: {N_STAMPS} stamps" in again.stdout
    _assert_same(out, clean)
    assert set(_night(out).run_id) == {run_id}  # the resumed run kept its identity
    # The parts finished before the kill were reused, not scored again.
    assert f"; {len(staged)} parts resumed" in again.stdout, again.stdout


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 3000), start=st.integers(0, 3000), step=st.integers(1, 700))
def test_prefetched_blocks_cover_the_range_in_order(n, start, step):
    a = np.arange(n)
    start = min(start, n)
    blocks = list(prefetched_blocks(a, start, n, step))
    assert all(0 < len(b) <= step for b in blocks)
    got = np.concatenate(blocks) if blocks else np.zeros(0, int)
    np.testing.assert_array_equal(got, a[start:n])
