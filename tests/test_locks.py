"""One writer per season (ingest) and per night (scores): real processes, real flock, real runs."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from s2v_batch.core.config import IngestConfig, ScoreConfig
from s2v_batch.core.faults import StoreBusyError
from s2v_batch.core.fsutil import exclusive
from s2v_batch.ingest.driver import ingest
from s2v_batch.scoring.driver import score
from s2v_batch.sim.simulator import simulate
from s2v_batch.store import dataset as zstore
from s2v_batch.store import scores as sink

HOLD = (
    "import sys; from s2v_batch.core.fsutil import exclusive\n"
    "with exclusive(sys.argv[1], 'test'):\n"
    "    print('held', flush=True); sys.stdin.read()\n"
)


class Holder:
    """Another process holding a lock until :meth:`release`."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout.readline().strip() == "held"

    def release(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return simulate(
        tmp_path_factory.mktemp("raw"),
        season="Y1",
        nights=1,
        stamps_per_night=60,
        fmt="fits",
        seed=7,
    )


def test_a_held_lock_names_its_holder_then_is_waited_for(tmp_path):
    lock = tmp_path / "x.lock"
    holder = Holder(lock)
    try:
        with (
            pytest.raises(StoreBusyError, match=rf"pid {holder.proc.pid}"),
            exclusive(lock, "x", wait=0),
        ):
            pass
        said: list[str] = []
        threading.Timer(0.5, holder.release).start()
        with exclusive(lock, "x", wait=30, log=said.append):
            assert holder.proc.poll() is not None, "acquired only once the holder let go"
        assert len(said) == 1 and "waiting for x" in said[0]
    finally:
        holder.proc.kill()
    with exclusive(lock, "x", wait=0):  # a killed holder leaves no stale lock
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    lock = tmp_path / "x.lock"
    holder = Holder(lock)
    holder.proc.kill()
    holder.proc.wait(30)
    with exclusive(lock, "x", wait=0):
        pass


def test_ingest_and_score_wait_for_the_other_writer(raw, tmp_path, dask_client):
    store, scores = tmp_path / "store", tmp_path / "scores"
    cfg = IngestConfig(unit_stamps=32, shard_stamps=64, chunk_stamps=32, lock_wait=0)
    holder = Holder(store / "Y1" / ".ingest.lock")
    try:
        with pytest.raises(StoreBusyError, match="season Y1"):
            ingest(raw.out, store, dask_client, config=cfg, progress=False)
        assert not list((store / "Y1").glob("*.zarr")), "nothing written while refused"
        threading.Timer(0.5, holder.release).start()
        said: list[str] = []
        cfg = dataclasses.replace(cfg, lock_wait=60)
        s = ingest(raw.out, store, dask_client, config=cfg, progress=False, log=said.append)
    finally:
        holder.proc.kill()
    assert s.n_found == raw.n_stamps and any("waiting for season Y1" in x for x in said)

    night = zstore.list_nights(store)[0].night
    holder = Holder(sink.lock_path(scores, "Y1", night))
    try:
        with pytest.raises(StoreBusyError, match=f"Y1/{night}"):
            score(
                store, scores, dask_client, config=ScoreConfig(batch_size=32, lock_wait=0),
                progress=False,
            )  # fmt: skip
        assert not sink.night_dir(scores, "Y1", night).exists()
    finally:
        holder.release()
    score(
        store, scores, dask_client, config=ScoreConfig(batch_size=32, lock_wait=0), progress=False
    )
    df = pd.read_parquet(scores)
    assert len(df) == s.n_stored and np.isfinite(df.score).all()


def test_two_scorers_of_one_night_in_one_process_take_turns(raw, tmp_path, dask_client):
    store, scores = tmp_path / "store", tmp_path / "scores"
    stored = ingest(raw.out, store, dask_client, progress=False).n_stored
    cfg = ScoreConfig(batch_size=32, lock_wait=120)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            score(store, scores, dask_client, config=cfg, progress=False)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors
    df = pd.read_parquet(scores)
    assert len(df) == df.stamp_id.nunique() == stored, "one night's rows, once"


def test_the_open_files_limit_is_raised_for_many_night_locks():
    code = (
        "import resource; from s2v_batch.core.fsutil import ensure_open_files\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
        "ensure_open_files(300)\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) >= 300


def test_s2v_ingest_exits_75_naming_the_other_writer(raw, tmp_path):
    store = tmp_path / "store"
    holder = Holder(store / "Y1" / ".ingest.lock")
    try:
        cmd = [
            sys.executable,
            "-m",
            "s2v_batch.cli",
            "ingest",
            str(raw.out),
            "--store",
            str(store),
            "--lock-wait",
            "0.5",
            "--no-progress",
        ]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    finally:
        holder.release()
    assert run.returncode == 75, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("s2v ingest: busy: season Y1") and f"pid {holder.proc.pid}" in last
