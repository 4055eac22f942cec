"""Faults of the environment, made for real: a full tmpfs, a read-only remount, permission denied,
a folder renamed away mid-run, a Dask scheduler killed mid-run or never there, workers killed as
they come back, a lock held by an orphan. Each gives one line and its exit status, keeps the
details in the log file the line names, publishes nothing half-done, and the re-run after the
fault is removed gives what a clean run gives.

Mounts need root (CI runs as root); those tests skip otherwise, saying so, and fail instead
under ``S2V_REQUIRE_REAL=1`` (CI).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import xarray as xr
from conftest import skip_or_fail

from s2v_batch.core import faults
from s2v_batch.core.config import IngestConfig, ScoreConfig
from s2v_batch.core.faults import StoreBusyError
from s2v_batch.ingest.driver import ingest
from s2v_batch.pipeline.cluster import cpu_worker_env
from s2v_batch.scoring.driver import score
from s2v_batch.sim.simulator import simulate
from s2v_batch.store import dataset as zstore
from s2v_batch.store import scores as sink
from s2v_batch.store import state as nightstate

ROOT = os.geteuid() == 0
DASK = Path(sys.executable).with_name("dask")
#: Small units, shards and parts: a run is many tasks, so a fault lands in the middle of it.
CONFIG = """\
ingest:
  unit_stamps: {unit}
  shard_stamps: 64
  chunk_stamps: 16
  lock_wait: 0
score:
  part_stamps: 16
  batch_size: 64
  lock_wait: 0
"""
INGEST = IngestConfig(unit_stamps=10, shard_stamps=64, chunk_stamps=16)
SCORE = ScoreConfig(part_stamps=16, batch_size=64)
STAMPS = 150  # the test night's stamps


# --------------------------------------------------------------------------- real services


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def spawn(cmd: list, env: dict, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            [str(c) for c in cmd], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


@contextlib.contextmanager
def dask_cluster(logdir: Path, *, scheduler_env: dict[str, str] | None = None) -> Iterator:
    """A ``dask scheduler`` and one ``dask worker`` (with its nanny) as processes on 127.0.0.1."""
    from distributed import Client

    logdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    loopback = ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]
    env = {**os.environ, **(scheduler_env or {})}
    procs = [spawn([DASK, "scheduler", "--port", port, *loopback], env, logdir / f"s{port}.log")]
    try:
        worker = [DASK, "worker", address, "--nthreads", 1, "--local-directory", logdir, *loopback]
        wenv = {**os.environ, **cpu_worker_env(1)}
        procs.append(spawn(worker, wenv, logdir / f"w{port}.log"))
        with Client(address, timeout=120) as client:
            client.wait_for_workers(1, timeout=180)
        yield SimpleNamespace(address=address, scheduler=procs[0], worker=procs[1])
    finally:
        for p in reversed(procs):
            _kill(p)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "12m") -> Iterator[Path]:
    """A small tmpfs mounted at ``path`` for the block (unmounted also on failure)."""
    if not ROOT:
        skip_or_fail("mounting a tmpfs needs root (CI runs the tests as root)")
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if r.returncode:
        skip_or_fail(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def fill(folder: Path) -> Path:
    """Write zeros into ``folder/filler`` until its filesystem is full."""
    path = folder / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for block in (1 << 20, 4096):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, bytes(block))
    finally:
        os.close(fd)
    return path


def when_found(root: Path, pattern: str, action, timeout: float = 300.0) -> threading.Thread:
    """Run ``action()`` in a thread as soon as ``root`` holds a file matching ``pattern``."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if next(root.glob(pattern), None) is not None:
                    action()
                    return
            time.sleep(0.01)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def units_done(store: Path, night: int, total: int) -> int:
    """Ingest units of the test night finished on disk: those staged (a unit is staged once its
    ``.meta.npz``, written last, exists), or all ``total`` once the night is published (its
    staging is then removed; read second, so a night published in between counts whole)."""
    staged = sum(1 for _ in store.glob("Y1/.staging-*/*.meta.npz"))
    return total if zstore.night_path(store, "Y1", night).is_dir() else staged


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator:
    with dask_cluster(tmp_path_factory.mktemp("dask")) as c:
        yield c


@pytest.fixture(scope="module")
def data(tmp_path_factory, cluster):
    """A night of 150 FITS stamps, config files, and the store and scores of a clean run."""
    from distributed import Client

    base = tmp_path_factory.mktemp("faults")
    raw = base / "raw"
    simulate(raw, season="Y1", nights=1, stamps_per_night=STAMPS, fmt="fits", seed=5)
    (raw / "autoscan_features.3.csv").unlink()  # runs here name no labels
    cfg, fine = base / "cfg.yaml", base / "fine.yaml"
    cfg.write_text(CONFIG.format(unit=10))
    fine.write_text(CONFIG.format(unit=2))  # 75 units: time to break things mid-run
    with Client(cluster.address) as client:
        ingest(raw, base / "store", client, config=INGEST, progress=False)
        score(base / "store", base / "scores", client, config=SCORE, progress=False)
    return SimpleNamespace(
        raw=raw, cfg=cfg, fine=fine, store=base / "store", scores=base / "scores", night=20130901,
        fine_units=STAMPS // 2,
    )  # fmt: skip


@pytest.fixture
def logs(tmp_path) -> Path:
    return tmp_path / "logs"


#: Root passes every permission check; without these capabilities it meets them like a user.
AS_USER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if ROOT else []


def _env(logs: Path, extra: dict | None = None) -> dict:
    return {
        **os.environ,
        "S2V_LOG_DIR": str(logs),
        "PYTHONUNBUFFERED": "1",
        "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s",
        **(extra or {}),
    }


def s2v(
    *args: object, logs: Path, env: dict | None = None, as_user: bool = False
) -> subprocess.CompletedProcess:
    """Run the ``s2v`` command as users do, its run logs under ``logs``."""
    cmd = [*(AS_USER if as_user else []), sys.executable, "-m", "s2v_batch.cli", *map(str, args)]
    return subprocess.run(cmd, env=_env(logs, env), capture_output=True, text=True, timeout=600)


def popen_s2v(*args: object, logs: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "s2v_batch.cli", *map(str, args)]
    return subprocess.Popen(
        cmd, env=_env(logs), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def ingest_args(data, store: Path, cluster: str | None, *, raw=None, cfg=None) -> list:
    """``s2v ingest`` of the test night (on ``cluster``, else a LocalCluster)."""
    args = ["ingest", raw or data.raw, "--store", store, "--config", cfg or data.cfg]
    return [*args, "--no-progress", *(["--cluster", cluster] if cluster else [])]


def score_args(data, store: Path, scores: Path, cluster: str) -> list:
    return ["score", store, "--out", scores, "--config", data.cfg, "--cluster", cluster,
            "--no-progress"]  # fmt: skip


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def one_error_line(r: subprocess.CompletedProcess, command: str, status: int, *needles: str):
    """The run failed with ``status`` and said so in exactly one line, naming its log file, which
    holds the details; nothing else reached the terminal's stderr, no traceback anywhere."""
    assert r.returncode == status, r.stderr + r.stdout
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    line = lines[0]
    label = "busy" if status == faults.EXIT_TEMPFAIL else "error"
    assert line.startswith(f"s2v {command}: {label}: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    if status == faults.EXIT_TEMPFAIL:
        return line, None
    m = re.search(r"; details in (\S+)$", line)
    assert m, line
    log = Path(m.group(1))
    assert log.is_file()
    text = log.read_text()
    assert "Traceback" in text and f"exit status {status}" in text
    return line, text


# --------------------------------------------------------------------------- comparisons


def only_complete_nights(store: Path | None = None, scores: Path | None = None) -> None:
    """Every night the store or the scores show is whole: nothing half-published."""
    if store is not None and store.is_dir():
        for ref in zstore.list_nights(store):
            attrs = zstore.verify_night(ref.path)
            assert attrs is not None, ref.path
            assert nightstate.current_night(ref.path, nightstate.fingerprint_of(attrs)) is not None
    if scores is not None and scores.is_dir():
        for night in scores.glob("season=*/night=*"):
            manifest = json.loads((night / sink.MANIFEST).read_text())
            rows = sum(pq.ParquetFile(p).metadata.num_rows for p in night.glob("part-*.parquet"))
            assert rows == manifest["n_stamps"], night


def same_store(a: Path, b: Path) -> None:
    ra, rb = zstore.list_nights(a), zstore.list_nights(b)
    assert [(r.season, r.night) for r in ra] == [(r.season, r.night) for r in rb]
    for x, y in zip(ra, rb, strict=True):
        dx, dy = xr.open_zarr(x.path), xr.open_zarr(y.path)
        for name in ("stamps", "stamp_id", "label", "masked_fraction"):
            np.testing.assert_array_equal(dx[name].values, dy[name].values)
        keep = ("n_stamps", "n_quarantined", "night_fingerprint", "source_format")
        assert {k: dx.attrs[k] for k in keep} == {k: dy.attrs[k] for k in keep}
        qx = pd.read_parquet(zstore.quarantine_path(a, x.season, x.night))
        qy = pd.read_parquet(zstore.quarantine_path(b, y.season, y.night))
        assert qx.reason.tolist() == qy.reason.tolist()


def same_scores(a: Path, b: Path) -> None:
    cols = ["stamp_id", "score", "is_candidate", "threshold", "label", "model_sha256", "error"]
    da = sink.read_scores(a).sort_values(["season", "night", "stamp_id"])[cols]
    db = sink.read_scores(b).sort_values(["season", "night", "stamp_id"])[cols]
    pd.testing.assert_frame_equal(da.reset_index(drop=True), db.reset_index(drop=True))


# --------------------------------------------------------------------------- classification


def test_real_os_errors_are_classified_also_after_a_trip_through_pickle(tmp_path):
    """Errors as the OS raises them (and as a Dask worker sends them back: pickled)."""
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError

    def both(exc: BaseException) -> list[faults.Fault]:
        return [faults.classify(exc), faults.classify(pickle.loads(pickle.dumps(exc)))]

    with pytest.raises(FileNotFoundError) as gone:
        open(tmp_path / "gone" / "x.npy", "wb")
    for f in both(gone.value):
        assert (f.kind, f.status, f.transient) == ("vanished", 74, False)
        assert str(tmp_path / "gone" / "x.npy") in f.message and "restore it" in f.message
    with tmpfs(tmp_path / "t", "1m") as t:
        fill(t)
        with pytest.raises(OSError) as full, faults.writing(t / "x.parquet"):
            # What pyarrow raises on a full disk: no file name.
            open(t / "filler", "ab").write(bytes(1 << 20))
        assert full.value.filename == str(t / "x.parquet")
        for f in both(full.value):
            assert (f.kind, f.status, f.transient) == ("no-space", 74, False)
            assert str(t / "x.parquet") in f.message and f"on {t})" in f.message
        remount(t, "ro")
        with pytest.raises(OSError) as ro:
            os.open(t / "lock", os.O_RDWR | os.O_CREAT)
        for f in both(ro.value):
            assert (f.kind, f.status, f.transient) == ("read-only", 74, False)
            assert str(t / "lock") in f.message and "remount it read-write" in f.message
    lost = FutureCancelledError("stage_unit-1", "scheduler-connection-lost")
    died = KilledWorker("stage_unit-1", "tcp://127.0.0.1:1", 0)
    for exc, kind, status in (
        (died, "worker-lost", 69),
        (lost, "scheduler-lost", 69),
        (faults.ClusterUnavailableError("tcp://h:1", "refused", lost=False), "scheduler-unreachable", 69),
        (StoreBusyError("season Y1 is being written"), "busy", 75),
        (OSError("1000 requested and 0 written"), "io", 74),
    ):  # fmt: skip
        f = faults.classify(exc)
        assert (f.kind, f.status, f.transient) == (kind, status, True)
        assert faults.is_transient(exc)
    for exc, kind, status in (
        (ValueError("bad"), "bad-input", 2),
        (FileNotFoundError("raw input x does not exist"), "bad-input", 2),
        (PermissionError(errno.EACCES, "Permission denied", "/s"), "permission", 77),
        (KeyboardInterrupt(), "interrupted", 130),
    ):
        f = faults.classify(exc)
        assert (f.kind, f.status) == (kind, status) and not faults.is_transient(exc)
    assert faults.classify(RuntimeError("x")).status == 1


# --------------------------------------------------------------------------- disk full


def test_ingest_short_of_space_fails_before_writing(data, cluster, tmp_path, logs):
    with tmpfs(tmp_path / "t", "6m") as t:
        store = t / "store"
        args = ingest_args(data, store, cluster.address)
        r = s2v(*args, logs=logs)
        one_error_line(r, "ingest", 74, f"not enough space on {store}", "needs about", "free")
        assert not list(t.rglob("*.npy")) and not list(t.rglob("*.zarr*")), "nothing written"
        remount(t, "size=16m")
        r = s2v(*args, logs=logs)
        assert r.returncode == 0, r.stderr
        same_store(store, data.store)


def test_disk_filling_up_mid_ingest(data, tmp_path, logs):
    """The default LocalCluster: its workers' error blocks go to the log file, not the terminal."""
    with tmpfs(tmp_path / "t") as t:
        store = t / "store"
        args = ingest_args(data, store, None)  # the default LocalCluster
        filler = when_found(store, "Y1/.staging-*/*.meta.npz", lambda: fill(t))
        r = s2v(*args, logs=logs)
        filler.join()
        _, log = one_error_line(r, "ingest", 74, "no space left on the device writing", str(t))
        assert "Compute Failed" in log, "the workers' error blocks are in the log"
        only_complete_nights(store)
        assert not zstore.list_nights(store)
        assert list(store.glob("Y1/.staging-*/*.meta.npz")), "staged units are kept"
        (t / "filler").unlink()
        r = s2v(*args, logs=logs)
        assert r.returncode == 0, r.stderr
        assert re.search(r"reusing \d+ of 15 staged unit", r.stdout), r.stdout
        same_store(store, data.store)


def test_disk_filling_up_mid_score(data, cluster, tmp_path, logs):
    store = tmp_path / "store"
    shutil.copytree(data.store, store)
    with tmpfs(tmp_path / "t") as t:
        scores = t / "scores"
        args = score_args(data, store, scores, cluster.address)
        filler = when_found(scores, "_staging/*/*/*/part-*.parquet", lambda: fill(t))
        r = s2v(*args, logs=logs)
        filler.join()
        one_error_line(r, "score", 74, "no space left on the device writing", str(scores))
        only_complete_nights(scores=scores)
        assert not list(scores.glob("season=*"))
        staged = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
                  for p in scores.glob("_staging/*/*/*/part-*.parquet")}  # fmt: skip
        assert staged
        # Still full: scoring checks the space it needs before it starts.
        r = s2v(*args, logs=logs)
        one_error_line(r, "score", 74, f"not enough space on {t}", "needs about", "0 B free")
        (t / "filler").unlink()
        r = s2v(*args, logs=logs)
        assert r.returncode == 0, r.stderr
        same_scores(scores, data.scores)
        # The parts written before the fault were reused, not scored again.
        assert f"; {len(staged)} parts resumed" in r.stdout, r.stdout


# --------------------------------------------------------------------------- read-only, permission


def test_read_only_store_and_scores(data, cluster, tmp_path, logs):
    with tmpfs(tmp_path / "t") as t:
        store, scores = t / "store", t / "scores"
        ing = ingest_args(data, store, cluster.address)
        sco = score_args(data, store, scores, cluster.address)
        remount(t, "ro")
        r = s2v(*ing, logs=logs)
        one_error_line(r, "ingest", 74, "is on a read-only filesystem", str(store))
        remount(t, "rw")
        assert s2v(*ing, logs=logs).returncode == 0
        remount(t, "ro")
        r = s2v(*sco, logs=logs)
        one_error_line(r, "score", 74, "is on a read-only filesystem", str(scores))
        only_complete_nights(store, scores)
        remount(t, "rw")
        r = s2v(*sco, logs=logs)
        assert r.returncode == 0, r.stderr
        same_store(store, data.store)
        same_scores(scores, data.scores)


def test_permission_denied(data, cluster, tmp_path, logs):
    """chmod, and for root a run without the capabilities that pass every permission check."""
    raw, store = tmp_path / "raw", tmp_path / "store"
    shutil.copytree(data.raw, raw, copy_function=shutil.copy2)
    store.mkdir()
    night = raw / "Y1" / str(data.night)
    args = ingest_args(data, store, cluster.address, raw=raw)
    night.chmod(0o000)
    try:
        r = s2v(*args, logs=logs, as_user=True)
    finally:
        night.chmod(0o755)
    one_error_line(r, "ingest", 77, f"permission denied: {night}", "chmod/chown")
    store.chmod(0o555)
    try:
        r = s2v(*args, logs=logs, as_user=True)
    finally:
        store.chmod(0o755)
    one_error_line(r, "ingest", 77, f"permission denied: {store / 'Y1'}")
    only_complete_nights(store)
    r = s2v(*args, logs=logs, as_user=True)
    assert r.returncode == 0, r.stderr
    same_store(store, data.store)


# --------------------------------------------------------------------------- vanishing folders


@pytest.mark.parametrize("what", ["raw", "store"])
def test_a_folder_vanishing_mid_ingest(data, cluster, tmp_path, logs, what):
    raw, store = tmp_path / "raw", tmp_path / "store"
    shutil.copytree(data.raw, raw, copy_function=shutil.copy2)  # same mtimes: same fingerprint
    folder = raw / "Y1" if what == "raw" else store
    away = folder.with_name(folder.name + ".away")
    proc = popen_s2v(*ingest_args(data, store, cluster.address, raw=raw, cfg=data.fine), logs=logs)
    when_found(store, "Y1/.staging-*/*.meta.npz", lambda: folder.rename(away)).join()
    r = finish(proc)
    one_error_line(r, "ingest", 74, "disappeared while the run used it", str(folder))
    away.rename(folder)
    only_complete_nights(store)
    r = s2v(*ingest_args(data, store, cluster.address, raw=raw), logs=logs)
    assert r.returncode == 0, r.stderr
    same_store(store, data.store)


def test_a_night_whose_quarantine_table_does_not_match_is_not_done(data, cluster, tmp_path):
    """A run stopped between publishing a night and its quarantine table is redone."""
    from distributed import Client

    store = tmp_path / "store"
    shutil.copytree(data.store, store)
    zstore.write_quarantine(zstore.quarantine_path(store, "Y1", data.night), [
        {"stamp_id": 1, "season": "Y1", "night": data.night, "path": "x", "reason": "stale"}
    ])  # fmt: skip
    with Client(cluster.address) as client:
        s = ingest(data.raw, store, client, config=INGEST, progress=False)
    assert [n.status for n in s.nights] == ["ingested"]
    same_store(store, data.store)


# --------------------------------------------------------------------------- Dask


def test_scheduler_killed_mid_ingest(data, cluster, tmp_path, logs):
    store = tmp_path / "store"
    at_kill: list[int] = []
    with dask_cluster(tmp_path / "dask") as own:
        proc = popen_s2v(*ingest_args(data, store, own.address, cfg=data.fine), logs=logs)

        def kill() -> None:  # once a first unit is staged
            os.killpg(own.scheduler.pid, signal.SIGKILL)
            at_kill.append(units_done(store, data.night, data.fine_units))

        when_found(store, "Y1/.staging-*/*.meta.npz", kill).join()
        r = finish(proc)
    # The kill landed mid-run: some units done on disk, not all.
    assert at_kill and 0 < at_kill[0] < data.fine_units, (at_kill, r.stdout, r.stderr)
    print(f"\nscheduler killed with {at_kill[0]} of {data.fine_units} units staged")
    one_error_line(r, "ingest", 69, f"lost the Dask scheduler at {own.address}", "restart it")
    only_complete_nights(store)
    r = s2v(*ingest_args(data, store, cluster.address, cfg=data.fine), logs=logs)
    assert r.returncode == 0, r.stderr
    assert "reusing" in r.stdout
    same_store(store, data.store)


def test_scheduler_that_cannot_be_reached(data, cluster, tmp_path, logs):
    store = tmp_path / "store"
    nowhere = f"tcp://127.0.0.1:{free_port()}"
    r = s2v(*ingest_args(data, store, nowhere), logs=logs)
    one_error_line(r, "ingest", 69, f"cannot reach the Dask scheduler at {nowhere}")
    r = s2v(*ingest_args(data, store, cluster.address), logs=logs)
    assert r.returncode == 0, r.stderr
    same_store(store, data.store)


def test_workers_that_keep_dying(data, cluster, tmp_path, logs):
    """Once a first unit is staged, each worker process that has a task is SIGKILLed (its nanny
    brings it back): the task is lost with its worker (KilledWorker, here on the first death),
    exit 69."""
    from distributed import Client

    store = tmp_path / "store"
    env = {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    stop = threading.Event()
    at_kill: list[int] = []  # units done on disk at each kill
    with dask_cluster(tmp_path / "dask", scheduler_env=env) as own, Client(own.address) as watch:

        def killer() -> None:
            pids: dict[str, int] = {}
            while not stop.is_set():
                if units_done(store, data.night, data.fine_units) == 0:
                    time.sleep(0.05)
                    continue
                for address, keys in watch.processing().items():
                    with contextlib.suppress(Exception):  # gone meanwhile
                        if address not in pids:
                            pids.update(watch.run(os.getpid, workers=[address]))
                        if keys:
                            os.kill(pids[address], signal.SIGKILL)
                            at_kill.append(units_done(store, data.night, data.fine_units))
                time.sleep(0.05)

        t = threading.Thread(target=killer, daemon=True)
        t.start()
        try:
            r = s2v(*ingest_args(data, store, own.address, cfg=data.fine), logs=logs)
        finally:
            stop.set()
            t.join()
    # The first kill landed mid-run: some units done on disk, not all.
    assert at_kill and 0 < at_kill[0] < data.fine_units, (at_kill, r.stdout, r.stderr)
    print(f"\nworkers killed with {at_kill} of {data.fine_units} units staged")
    one_error_line(r, "ingest", 69, "Dask workers died", "memory limit")
    only_complete_nights(store)
    r = s2v(*ingest_args(data, store, cluster.address), logs=logs)
    assert r.returncode == 0, r.stderr
    same_store(store, data.store)


# --------------------------------------------------------------------------- locks

ORPHAN = """\
import os, sys
from s2v_batch.core.fsutil import exclusive
lock = exclusive(sys.argv[1], "test")
lock.__enter__()
if os.fork() == 0:  # the child inherits the locked file; the parent that took it exits
    print(os.getpid(), flush=True)
    sys.stdin.read()
    os._exit(0)
os._exit(0)
"""


def test_a_lock_held_by_an_orphan_names_it_and_what_to_do(data, cluster, tmp_path, logs):
    store = tmp_path / "store"
    lock = zstore.lock_path(store, "Y1")
    taker = subprocess.Popen(
        [sys.executable, "-c", ORPHAN, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    orphan = int(taker.stdout.readline())
    taker.wait(30)
    try:
        args = ingest_args(data, store, cluster.address)
        r = s2v(*args, logs=logs)
        one_error_line(
            r, "ingest", 75, f"pid {taker.pid}", "has exited but the lock is still held",
            f"fuser -v {lock}",
        )  # fmt: skip
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(orphan, signal.SIGKILL)
        taker.stdin.close()
    time.sleep(0.2)  # the orphan's exit releases the lock
    r = s2v(*args, logs=logs)
    assert r.returncode == 0, r.stderr
    same_store(store, data.store)


# --------------------------------------------------------------------------- flows


@pytest.mark.slow
def test_nightly_fails_at_once_on_a_full_disk_then_completes(
    data, cluster, prefect_harness, tmp_path, logs
):
    from prefect.settings import PREFECT_API_URL

    env = {"PREFECT_API_URL": PREFECT_API_URL.value()}
    with tmpfs(tmp_path / "t", "6m") as t:
        args = ("nightly", "--raw", data.raw, "--night", data.night, "--store", t / "store",
                "--out", t / "scores", "--reports", t / "reports", "--config", data.cfg,
                "--cluster", cluster.address, "--no-progress")  # fmt: skip
        r = s2v(*args, logs=logs, env=env)
        _, log = one_error_line(r, "nightly", 74, "not enough space on", "needs about")
        failed = 'Finished in state Failed("Task run encountered an exception InsufficientSpace'
        assert log.count(failed) == 1 and "Retry 1/" not in log, "a full disk is not retried"
        remount(t, "size=24m")
        r = s2v(*args, logs=logs, env=env)
        assert r.returncode == 0, r.stderr
        same_store(t / "store", data.store)
        same_scores(t / "scores", data.scores)


@pytest.mark.slow
def test_backfill_exits_with_the_fault_of_its_nights(
    data, cluster, prefect_harness, tmp_path, logs
):
    from prefect.settings import PREFECT_API_URL

    with tmpfs(tmp_path / "t", "6m") as t:
        r = s2v("backfill", "--raw", data.raw, "--store", t / "store", "--out", t / "scores",
                "--reports", t / "reports", "--config", data.cfg, "--cluster", cluster.address,
                logs=logs, env={"PREFECT_API_URL": PREFECT_API_URL.value()})  # fmt: skip
        line, _ = one_error_line(r, "backfill", 74, f"Y1/{data.night}: not enough space on")
        assert "1 failed" in r.stdout
        only_complete_nights(t / "store", t / "scores")


def test_flow_tasks_retry_through_the_library_classification(prefect_harness, tmp_path):
    from distributed import KilledWorker
    from prefect import flow, task

    from s2v_flows.nightly import TASK

    calls: list[str] = []

    @task(**{**TASK, "retry_delay_seconds": 0, "retry_jitter_factor": None})
    def step(kind: str) -> int:
        calls.append(kind)
        if len(calls) == 1:
            if kind == "worker":
                raise KilledWorker("stage_unit-1", "tcp://127.0.0.1:1", 0)
            if kind == "scheduler":
                raise faults.ClusterUnavailableError("tcp://127.0.0.1:1", "refused", lost=True)
            open(tmp_path / "t" / "x", "wb").write(bytes(4 << 20))  # full: ENOSPC
        return len(calls)

    @flow
    def run(kind: str):
        return step(kind, return_state=True)

    for kind in ("worker", "scheduler"):
        calls.clear()
        assert run(kind).result() == 2, kind  # failed once, retried, done
    with tmpfs(tmp_path / "t", "1m"):
        calls.clear()
        state = run("disk", return_state=True)
        assert state.is_failed() and calls == ["disk"]  # a full disk is never retried
