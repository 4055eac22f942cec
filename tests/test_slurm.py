"""A backfill on a real SLURM cluster: the Dask workers are SLURM jobs of a one-node cluster.

The module starts the development cluster of ``cluster/slurm-dev/start.sh`` (Debian's munge,
slurmctld and slurmd; installed with apt where missing), runs ``s2v backfill --cluster
cluster/slurm-cpu.yaml`` as users do (a subprocess) over two simulated nights, and compares its
scores with a LocalCluster run of the same nights. A second run loses a worker job to ``scancel``
in the middle and must still publish every row once. The cluster is stopped at the end.
It skips only where SLURM cannot start here: not Linux, not root, or no apt-get to install it;
under ``S2V_REQUIRE_REAL=1`` (CI) it fails there instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import skip_or_fail

REPO = Path(__file__).resolve().parent.parent
DEV = REPO / "cluster" / "slurm-dev"
# By path: the name `slurm-cpu` is found through the spec lookup, which a wheel install changes.
SPEC = REPO / "cluster" / "slurm-cpu.yaml"
STAMPS = 600  # a night: three ingest units and three scoring tasks with the config below
CONFIG = """\
ingest: {unit_stamps: 200, shard_stamps: 256, chunk_stamps: 128}
score: {part_stamps: 200}
"""
UNITS = PARTS = 3  # ingest units and scoring tasks of a night (600 stamps, 200 a unit / a part)
SQUEUE_FORMAT = "%.8i %.9P %.12j %.8u %.10T %.8M %.6D %R"
RUN_TIMEOUT = 900.0


def _why_slurm_cannot_start() -> str | None:
    if not sys.platform.startswith("linux"):
        return "the development SLURM cluster runs on Linux only"
    if os.geteuid() != 0:
        return "starting SLURM needs root (cluster/slurm-dev/start.sh installs and starts daemons)"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "SLURM is not installed and there is no apt-get to install it"
    return None


def _daemons() -> list[str]:
    """The SLURM and munge daemons running on this machine (``pid name``)."""
    names = {"munged", "slurmctld", "slurmd", "slurmstepd"}
    out = subprocess.run(["ps", "-eo", "pid=,comm="], capture_output=True, text=True).stdout
    return [line.strip() for line in out.splitlines() if line.split()[-1:][0] in names]


def _squeue(*args: str) -> str:
    r = subprocess.run(["squeue", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _job_listeners() -> set[tuple[str, int]]:
    """(ip, port) of every socket listened on by a process of a running SLURM job."""
    import psutil

    found = set()
    for step in psutil.process_iter(["name"]):
        if step.info["name"] != "slurmstepd":
            continue
        try:
            for proc in step.children(recursive=True):
                for c in proc.net_connections(kind="inet"):
                    if c.status == psutil.CONN_LISTEN:
                        found.add((c.laddr.ip, c.laddr.port))
        except psutil.Error:
            continue  # a job ending while it is read
    return found


def _node_cpus() -> int:
    r = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, timeout=60)
    return int(r.stdout.split()[0])


def _jobs() -> dict[str, str]:
    """Job id -> state of every job in the queue."""
    rows = (line.split() for line in _squeue("-h", "-o", "%i %T").splitlines())
    return {r[0]: r[1] for r in rows if len(r) == 2}


@pytest.fixture(scope="module")
def slurm() -> Iterator[None]:
    """A one-node SLURM cluster on this machine, stopped at the end (if this fixture started it)."""
    why = _why_slurm_cannot_start()
    if why:
        skip_or_fail(why)  # under S2V_REQUIRE_REAL=1 (CI) a failure, with the same reason
    was_running = any(d.endswith(("slurmctld", "slurmd")) for d in _daemons())
    r = subprocess.run([str(DEV / "start.sh")], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"start.sh failed:\n{r.stdout}\n{r.stderr}"
    assert (
        "idle" in subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout
    )
    try:
        yield
    finally:
        if not was_running:
            r = subprocess.run([str(DEV / "stop.sh")], capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, f"stop.sh failed:\n{r.stdout}\n{r.stderr}"
            assert _daemons() == [], f"left running after stop.sh: {_daemons()}"


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory, dask_client: Any) -> dict[str, Any]:
    """Two simulated nights, and their scores from a LocalCluster run (the reference)."""
    from s2v_batch.core.config import PipelineConfig
    from s2v_batch.ingest.driver import ingest
    from s2v_batch.scoring.driver import score
    from s2v_batch.sim.simulator import simulate

    base = tmp_path_factory.mktemp("slurm-nights")
    sim = simulate(base / "raw", season="Y1", nights=2, stamps_per_night=STAMPS, fmt="gif", seed=21)
    config = base / "config.yaml"
    config.write_text(CONFIG)
    cfg = PipelineConfig.from_yaml(config)
    labels = base / "raw" / "autoscan_features.3.csv"
    ingest(
        base / "raw",
        base / "ref-store",
        dask_client,
        labels=labels,
        config=cfg.ingest,
        progress=False,
    )
    score(base / "ref-store", base / "ref-scores", dask_client, config=cfg.score, progress=False)
    return {
        "raw": base / "raw",
        "config": config,
        "nights": sim.nights,
        "ref": _scores(base / "ref-scores"),
    }


def _work_done(work: Path, nights: list[int]) -> int:
    """Ingest units and scoring tasks of the backfill finished on disk, over its nights.

    A night's units: those staged (``STORE/Y1/.staging-<night>-*/*.meta.npz``, written last),
    or all once the night's dataset is published; its tasks: the staged parts
    (``SCORES/_staging/season=Y1/night=<night>/*/part-*.parquet``, each written through a
    rename), or all once its scores are published. Staging is read first: a night published in
    between (its staging removed) counts whole.
    """
    store, scores = work / "store", work / "scores"
    done = 0
    for night in nights:
        units = _count(store, f"Y1/.staging-{night}-*/*.meta.npz")
        done += UNITS if (store / "Y1" / f"{night}.zarr").is_dir() else units
        parts = _count(scores, f"_staging/season=Y1/night={night}/*/part-*.parquet")
        published = scores / "season=Y1" / f"night={night}" / "_manifest.json"
        done += PARTS if published.is_file() else parts
    return done


def _count(root: Path, pattern: str) -> int:
    """Files matching ``pattern`` under ``root``, listed again when a folder goes meanwhile."""
    for _ in range(10):
        try:
            return sum(1 for _ in root.glob(pattern))
        except FileNotFoundError:  # a staging folder removed (its night published) while listed
            continue
    return 0


def _scores(root: Path) -> pd.DataFrame:
    df = pd.read_parquet(root, columns=["night", "stamp_id", "score", "is_candidate", "label"])
    return df.astype({"night": "int64"}).sort_values(["night", "stamp_id"]).reset_index(drop=True)


def _assert_same_scores(got: pd.DataFrame, ref: pd.DataFrame) -> None:
    assert not got.duplicated(["night", "stamp_id"]).any(), "a stamp was published twice"
    assert len(got) == len(ref) == 2 * STAMPS
    np.testing.assert_array_equal(got["night"], ref["night"])
    np.testing.assert_array_equal(got["stamp_id"], ref["stamp_id"])
    np.testing.assert_allclose(got["score"], ref["score"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(got["is_candidate"], ref["is_candidate"])


def _backfill(nights: dict[str, Any], work: Path) -> subprocess.Popen:
    """``s2v backfill --cluster slurm-cpu.yaml`` as a user runs it, from ``work`` (job logs there)."""
    cmd = [
        sys.executable, "-m", "s2v_batch.cli", "backfill",
        "--raw", str(nights["raw"]),
        "--store", str(work / "store"),
        "--out", str(work / "scores"),
        "--reports", str(work / "reports"),
        "--config", str(nights["config"]),
        "--cluster", str(SPEC),
    ]  # fmt: skip
    return subprocess.Popen(
        cmd,
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: on failure the whole tree is ended
    )


def _finish(proc: subprocess.Popen, deadline: float) -> str:
    try:
        out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"s2v backfill did not finish in {RUN_TIMEOUT:.0f} s:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    return out


def test_slurm_cpu_spec_renders_a_cpu_job_for_the_dev_cluster(tmp_path, monkeypatch) -> None:
    """The CPU spec as shipped, rendered without SLURM: no GPU, CPU threads, loopback, TLS."""
    import dataclasses
    import re

    from s2v_batch.pipeline.cluster import load_spec, make_cluster

    monkeypatch.chdir(tmp_path)  # log_directory is relative
    spec = load_spec(SPEC)
    # Without scaling (no job is submitted) and with the workers' TLS files in tmp_path.
    opts = {**spec.options, "shared_temp_directory": str(tmp_path)}
    cluster = make_cluster(dataclasses.replace(spec, options=opts, scale={}))
    try:
        script, address = cluster.job_script(), cluster.scheduler_address
    finally:
        cluster.close()
    lines = script.splitlines()
    # The partition of the development cluster (start.sh's default) is the spec's queue.
    partition = re.search(r"S2V_SLURM_PARTITION:-(\w+)", (DEV / "start.sh").read_text())[1]
    assert f"#SBATCH -p {partition}" in lines and spec.options["queue"] == partition
    assert "#SBATCH --cpus-per-task=1" in lines
    assert not any("gres" in line or "gpu" in line for line in lines)
    # A CPU worker: one TensorFlow thread per core, no GPU opened.
    for line in ("export TF_NUM_INTRAOP_THREADS=1", "export CUDA_VISIBLE_DEVICES=''"):
        assert line in lines
    (worker,) = [line for line in lines if "distributed.cli.dask_worker" in line]
    assert "--interface lo" in worker and "--dashboard-address 127.0.0.1:0" in worker
    assert "--local-directory ${TMPDIR:-/tmp}" in worker
    assert address.startswith("tls://127.0.0.1:") and "--tls-cert" in worker
    assert spec.scale["adapt"]["minimum_jobs"] == 2


@pytest.mark.slow
def test_backfill_runs_on_slurm_jobs_and_equals_a_local_run(slurm, nights, tmp_path):
    before = set(_jobs())
    deadline = time.monotonic() + RUN_TIMEOUT
    proc = _backfill(nights, tmp_path)
    seen: dict[str, set[str]] = {}  # job id -> states seen
    listing, most = "", 0
    listeners: set[tuple[str, int]] = set()
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            jobs = {j: s for j, s in _jobs().items() if j not in before}
            for j, s in jobs.items():
                seen.setdefault(j, set()).add(s)
            running = sum(s == "RUNNING" for s in jobs.values())
            if running > most:  # keep the fullest listing for the record
                most, listing = running, _squeue("-o", SQUEUE_FORMAT)
            if running:
                listeners |= _job_listeners()
            time.sleep(0.5)
    finally:
        out = _finish(proc, deadline)
    print(f"\nsqueue while `s2v backfill --cluster {SPEC.name}` ran:\n{listing}")
    assert "backfill: 2 night(s) run (not stored: 2), 0 skipped (complete), 0 failed" in out, out[
        -3000:
    ]
    # The Dask workers were SLURM jobs: squeue listed them running (the spec keeps two, one core
    # each), and each wrote its job log.
    assert most >= min(2, _node_cpus()) and "dask-worker" in listing, listing
    # Their ports (nanny, worker, the worker's HTTP) were on loopback only.
    assert listeners and {ip for ip, _ in listeners} == {"127.0.0.1"}, listeners
    ran = sorted(j for j, states in seen.items() if "RUNNING" in states)
    for j in ran:
        assert (tmp_path / "slurm-logs" / f"dask-worker-{j}.err").is_file()
    # The cluster closed with the run: its jobs are gone from the queue.
    time.sleep(1.0)
    assert not set(_jobs()) & set(seen), _squeue()
    _assert_same_scores(_scores(tmp_path / "scores"), nights["ref"])


@pytest.mark.slow
def test_scancel_of_a_worker_job_mid_run_loses_and_duplicates_nothing(slurm, nights, tmp_path):
    before = set(_jobs())
    deadline = time.monotonic() + RUN_TIMEOUT
    proc = _backfill(nights, tmp_path)
    victim, known, at_kill = None, set(), None
    total = len(nights["nights"]) * (UNITS + PARTS)
    try:
        # Mid-run: a worker job is running and some of the work is done on disk.
        while proc.poll() is None and time.monotonic() < deadline:
            running = sorted(
                (j for j, s in _jobs().items() if j not in before and s == "RUNNING"), key=int
            )
            if running and _work_done(tmp_path, nights["nights"]) > 0:
                victim = running[0]
                listing = _squeue("-o", SQUEUE_FORMAT)
                known = before | set(_jobs())
                subprocess.run(["scancel", victim], check=True, timeout=60)
                at_kill = _work_done(tmp_path, nights["nights"])
                break
            time.sleep(0.2)
        # Adaptive scaling keeps two workers: a replacement job is submitted.
        after = ""
        while victim and proc.poll() is None and time.monotonic() < deadline:
            if set(_jobs()) - known:
                after = _squeue("-o", SQUEUE_FORMAT)
                break
            time.sleep(0.5)
    finally:
        out = _finish(proc, deadline)
    assert victim is not None, f"the backfill ended before a worker job ran:\n{out[-3000:]}"
    # The scancel landed mid-run: some units and parts done on disk, not all.
    assert at_kill is not None and 0 < at_kill < total, (at_kill, total, out[-3000:])
    print(f"\nscancel {victim} with {at_kill} of {total} units and parts done; squeue before:")
    print(listing)
    print(f"and after (a replacement job, where one came before the run ended):\n{after}")
    assert "backfill: 2 night(s) run (not stored: 2), 0 skipped (complete), 0 failed" in out, out[
        -3000:
    ]
    # The job was really cancelled while it ran (slurmstepd says so in the job's log).
    log = (tmp_path / "slurm-logs" / f"dask-worker-{victim}.err").read_text()
    assert f"JOB {victim} ON" in log and "CANCELLED" in log, log[-2000:]
    time.sleep(1.0)
    assert victim not in _jobs()
    _assert_same_scores(_scores(tmp_path / "scores"), nights["ref"])
