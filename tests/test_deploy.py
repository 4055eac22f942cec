"""The scheduled deployment for real: a Prefect server, the repository's prefect.yaml, a worker.

A module fixture starts ``prefect server start`` on 127.0.0.1 (a free port, its own PREFECT_HOME
and SQLite database, a 2 s scheduler loop), creates the process work pool, runs ``prefect deploy
--name s2v-nightly`` from the repository root with S2V_REPO/S2V_DATA set (the prefect.yaml users
deploy, not a copy), and starts ``prefect worker start``: the commands of docs/DEPLOY.md. Flow
runs are read back through the server's API. Server, worker and everything they started are
stopped at the end, also when a test fails, and ``ps`` must then show none of them.

Scheduled runs take *last night* from their scheduled time in America/Santiago, so the tests add
schedules to the deployment that fire within seconds (the deployment's own 09:00 cron is checked,
then paused, so that it cannot fire during the test) and simulate the night such a run will take.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
POOL = "s2v-local"  # the work pool prefect.yaml names
DEPLOYMENT = "s2v-nightly/s2v-nightly"
SANTIAGO = ZoneInfo("America/Santiago")
STAMPS = 200
#: Seconds a scheduled test run is placed ahead of now: time for the scheduler and the worker.
LEAD = 20
RUN_TIMEOUT = 600


def night_of(when: dt.datetime) -> int:
    """The night a run scheduled at ``when`` processes: the Santiago date 12 h earlier."""
    return int((when.astimezone(SANTIAGO) - dt.timedelta(hours=12)).strftime("%Y%m%d"))


def _next(night: int, days: int = 1) -> int:
    d = dt.datetime.strptime(str(night), "%Y%m%d") + dt.timedelta(days=days)
    return int(d.strftime("%Y%m%d"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """The server and the worker, and every process they start (flow runs, Dask workers).

    Flow runs start in sessions of their own, so descendants and their sessions are sampled
    while the tests wait; :meth:`stop` ends them all, by pid, and returns what ``ps`` still shows.
    """

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}
        self.pids: set[int] = set()
        self.sids: set[int] = set()

    def start(self, name: str, cmd: list[str], env: dict[str, str], log: Path) -> None:
        with open(log, "wb") as fh:
            p = subprocess.Popen(
                cmd, env=env, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs[name] = p
        self.pids.add(p.pid)
        self.sids.add(p.pid)

    def _ps(self) -> list[tuple[int, int, int, str]]:
        out = subprocess.run(
            ["ps", "-eo", "pid=,ppid=,sid=,args="], capture_output=True, text=True, check=True
        ).stdout
        rows = []
        for line in out.splitlines():
            pid, ppid, sid, *args = line.split(None, 3)
            rows.append((int(pid), int(ppid), int(sid), args[0] if args else ""))
        return rows

    def sample(self) -> None:
        """Record the descendants of the server and worker, and their sessions."""
        rows = self._ps()
        children: dict[int, list[int]] = {}
        for pid, ppid, _, _ in rows:
            children.setdefault(ppid, []).append(pid)
        stack = [p.pid for p in self.procs.values()]
        while stack:
            pid = stack.pop()
            for c in children.get(pid, []):
                if c not in self.pids:
                    self.pids.add(c)
                    stack.append(c)
        self.sids |= {sid for pid, _, sid, _ in rows if pid in self.pids}

    def alive(self) -> list[str]:
        """``ps`` lines of processes that are ours: a recorded pid or one of our sessions."""
        me = os.getpid()
        return [
            f"{pid} sid={sid} {args}"
            for pid, _, sid, args in self._ps()
            if pid != me and (pid in self.pids or sid in self.sids) and "<defunct>" not in args
        ]

    def stop(self) -> list[str]:
        """SIGTERM the worker, then the server, then whatever is left of theirs; SIGKILL after
        a grace period. Returns the ``ps`` lines of survivors (none expected)."""
        self.sample()
        for name in ("worker", "server"):
            p = self.procs.get(name)
            if p and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=30)
        for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
            left = [int(line.split()[0]) for line in self.alive()]
            for pid in left:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while left and self.alive() and time.monotonic() < deadline:
                time.sleep(0.5)
        return self.alive()


def _run(cmd: list[str], env: dict[str, str], timeout: float = 300, cwd: Path = REPO) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc.stdout + proc.stderr


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"prefect server exited {proc.returncode}:\n{log.read_text()[-4000:]}"
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(
        f"prefect server not healthy after {timeout} s:\n{log.read_text()[-4000:]}"
    )


def _simulate(out: Path, first_night: int, nights: int, seed: int, env: dict[str, str]) -> None:
    _run(
        [str(BIN / "s2v"), "simulate", str(out), "--season", "Y1", "--nights", str(nights)]
        + ["--stamps-per-night", str(STAMPS), "--format", "gif", "--seed", str(seed)]
        + ["--first-night", str(first_night), "--no-progress"],
        env,
    )


def _ahead() -> dt.datetime:
    """A scheduled start LEAD seconds from now: time for the scheduler and the worker."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=LEAD)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A Prefect server, the deployment from prefect.yaml, a worker; torn down at the end."""
    from prefect.client.orchestration import SyncPrefectClient

    root = tmp_path_factory.mktemp("deploy")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    data = root / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(root / "prefect-home"),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{root / 'prefect.db'}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        # A schedule added by a test makes its runs within seconds, not at the next minute.
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
        PREFECT_API_URL=api,
        PREFECT_CLI_PROMPT="false",
        PREFECT_WORKER_QUERY_SECONDS="2",
        S2V_REPO=str(REPO),
        S2V_DATA=str(data),
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    prefect = str(BIN / "prefect")
    procs = Processes()
    client = None
    try:
        log = root / "server.log"
        procs.start(
            "server",
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
            env,
            log,
        )
        # Simulated data while the server starts: night A (manual runs), the night B that a run
        # scheduled LEAD seconds from now processes, and B + 1 (noon in Santiago may pass).
        now = dt.datetime.now(dt.UTC)
        night_b = night_of(now + dt.timedelta(seconds=LEAD))
        night_a = _next(night_b, -1)
        _simulate(data / "raw", night_a, 3, 11, env)
        _wait_healthy(api, procs.procs["server"], log)
        _run([prefect, "work-pool", "create", POOL, "--type", "process"], env)
        deploy_out = _run([prefect, "deploy", "--name", "s2v-nightly"], env)
        procs.start(
            "worker", [prefect, "worker", "start", "--pool", POOL], env, root / "worker.log"
        )
        client = SyncPrefectClient(api)
        client.__enter__()
        yield {
            "root": root,
            "api": api,
            "env": env,
            "data": data,
            "night_a": night_a,
            "night_b": night_b,
            "client": client,
            "procs": procs,
            "deploy_out": deploy_out,
            "worker_log": root / "worker.log",
        }
        print("\n`prefect deploy --name s2v-nightly` said:\n" + deploy_out.strip())
        _print_runs(client)
    finally:
        if client is not None:
            client.__exit__(None, None, None)
        left = procs.stop()
        assert not left, "processes left behind:\n" + "\n".join(left)
        print(f"\nserver, worker and {len(procs.pids) - 2} process(es) they started: all stopped")


def _print_runs(client: Any) -> None:
    """The flow runs as the server has them (for the report)."""
    from prefect.client.schemas.sorting import FlowRunSort

    keys = ("night", "raw", "wait_for_data", "fail_if_no_data")
    print("\nflow runs read from the server:")
    for r in client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_ASC):
        params = {k: r.parameters.get(k) for k in keys if k in r.parameters}
        print(
            f"  {r.name}: {r.state.name if r.state else None} ({r.state.message if r.state else ''})"
            f" auto_scheduled={r.auto_scheduled} expected={r.expected_start_time} {params}"
        )


def _deployment(d: dict[str, Any]) -> Any:
    return d["client"].read_deployment_by_name(DEPLOYMENT)


def _wait_final(d: dict[str, Any], run_id: Any, timeout: float = RUN_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d["procs"].sample()
        run = d["client"].read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            return run
        time.sleep(2)
    raise AssertionError(
        f"flow run {run_id} not finished after {timeout} s (state {run.state}); worker log:\n"
        + d["worker_log"].read_text()[-4000:]
    )


def _logs(d: dict[str, Any], run_id: Any) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs = d["client"].read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    return [log.message for log in logs]


def _schedule_once(d: dict[str, Any], at: dt.datetime, parameters: dict[str, Any]) -> Any:
    """Add a schedule to the deployment whose first run is at ``at``; return that run's id once
    the server's scheduler made it (later runs are a day apart, after the test)."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.schedules import IntervalSchedule

    dep = _deployment(d)
    (sched,) = d["client"].create_deployment_schedules(
        dep.id,
        [
            (
                IntervalSchedule(
                    interval=dt.timedelta(days=1), anchor_date=at, timezone=str(SANTIAGO)
                ),
                True,
            )
        ],
        parameters=parameters,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        runs = d["client"].read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))
        )
        for r in runs:
            if r.auto_scheduled and abs((r.expected_start_time - at).total_seconds()) < 1:
                return sched, r.id
        time.sleep(1)
    raise AssertionError(f"the scheduler made no run for the schedule at {at}")


def _snapshot(*roots: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under the roots: inode, mtime (ns), size.

    Writer-lock files are left out: each writer records itself in the lock it takes (so that a
    second writer can name it), also on a run that then finds nothing to do. They hold no output.
    """
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix != ".lock":
                st = p.stat()
                out[str(p)] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


# --------------------------------------------------------------------------- tests


def test_prefect_yaml_deployed_with_its_cron_and_parameters(deployed):
    dep = _deployment(deployed)
    assert dep.work_pool_name == POOL and dep.entrypoint == "flows/nightly.py:nightly_flow"
    assert dep.parameters["raw"] == f"{deployed['data']}/raw" and dep.parameters["night"] is None
    assert dep.parameters["config"] == "configs/nightly.yaml"
    assert dep.parameters["wait_for_data"] == 3600 and dep.parameters["fail_if_no_data"] is False
    # `{{ $S2V_REPO }}` was filled in by `prefect deploy`: the worker needs no such variable.
    assert dep.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
    ]
    (cron,) = deployed["client"].read_deployment_schedules(dep.id)
    assert (cron.schedule.cron, cron.schedule.timezone, cron.active) == (
        "0 9 * * *",
        "America/Santiago",
        True,
    )
    # Paused for the rest of the module: a 09:00 Santiago run would wait an hour for data.
    deployed["client"].update_deployment_schedule(dep.id, cron.id, active=False)


def test_manual_run_of_a_night_completes_with_scores_and_reports(deployed):
    night = deployed["night_a"]
    out = _run(
        [str(BIN / "prefect"), "deployment", "run", DEPLOYMENT, "--param", f"night={night}"],
        deployed["env"],
    )
    run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)
    run = _wait_final(deployed, run_id)
    assert run.state.name == "Completed", (run.state, _logs(deployed, run_id)[-20:])
    assert run.parameters["night"] == night
    data = deployed["data"]
    scores = pd.read_parquet(data / "scores", filters=[("night", "==", night)])
    assert len(scores) == STAMPS and scores["score"].notna().all()
    assert (data / "store" / "Y1" / f"{night}.zarr").is_dir()
    assert (data / "reports" / "index.html").is_file()
    assert (data / "reports" / "Y1" / "report.json").is_file()


def test_running_the_same_night_again_rewrites_no_file(deployed):
    from prefect.client.schemas.objects import FlowRun

    data = deployed["data"]
    roots = (data / "store", data / "scores", data / "reports")
    before = _snapshot(*roots)
    assert any("part-" in p for p in before)  # the first run's outputs are there
    dep = _deployment(deployed)
    run: FlowRun = deployed["client"].create_flow_run_from_deployment(
        dep.id, parameters={"night": deployed["night_a"]}
    )
    run = _wait_final(deployed, run.id)
    assert run.state.name == "Completed", (run.state, _logs(deployed, run.id)[-20:])
    assert _snapshot(*roots) == before


def test_a_scheduled_run_fires_and_processes_last_night(deployed):
    at = _ahead()
    night = night_of(at)
    assert night in (deployed["night_b"], _next(deployed["night_b"]))  # both simulated
    sched, run_id = _schedule_once(deployed, at, {})
    run = _wait_final(deployed, run_id)
    deployed["client"].delete_deployment_schedule(_deployment(deployed).id, sched.id)
    assert run.auto_scheduled and run.state.name == "Completed", (
        run.state,
        _logs(deployed, run_id)[-20:],
    )
    assert run.parameters["night"] is None  # it took last night from its scheduled time
    scores = pd.read_parquet(deployed["data"] / "scores", filters=[("night", "==", night)])
    assert len(scores) == STAMPS


def test_a_scheduled_run_without_data_waits_then_completes_saying_so(deployed):
    empty = deployed["root"] / "raw-empty"
    empty.mkdir()
    at = _ahead()
    night = night_of(at)
    sched, run_id = _schedule_once(deployed, at, {"raw": str(empty), "wait_for_data": 5})
    run = _wait_final(deployed, run_id)
    deployed["client"].delete_deployment_schedule(_deployment(deployed).id, sched.id)
    logs = _logs(deployed, run_id)
    assert run.state.name == "Completed", (run.state, logs[-20:])
    said = [m for m in [run.state.message or "", *logs] if f"no data for night {night}" in m]
    assert said, (run.state.message, logs)
    assert not any("Traceback" in m for m in logs)

    # Unless the deployment asks to fail: then the run ends Failed with the same words.
    dep = _deployment(deployed)
    run = deployed["client"].create_flow_run_from_deployment(
        dep.id,
        parameters={"raw": str(empty), "night": night, "wait_for_data": 0, "fail_if_no_data": True},
    )
    run = _wait_final(deployed, run.id)
    assert run.state.name == "Failed", run.state
    assert f"no data for night {night}" in (run.state.message or ""), run.state.message


def test_a_scheduled_run_picks_up_data_that_arrive_during_its_wait(deployed):
    late = deployed["root"] / "late"
    raw = late / "raw"
    raw.mkdir(parents=True)
    while True:  # the night a run scheduled LEAD s ahead takes, simulated before that time
        night = night_of(_ahead())
        staging = late / f"transfer-{night}"
        _simulate(staging, night, 1, 13, deployed["env"])
        at = _ahead()
        if night_of(at) == night:  # else noon in Santiago just passed
            break
    params = {
        "raw": str(raw),
        "store": str(late / "store"),
        "out": str(late / "scores"),
        "reports": str(late / "reports"),
        "wait_for_data": RUN_TIMEOUT,
    }
    sched, run_id = _schedule_once(deployed, at, params)
    # The transfer lands once the run says it waits for the night (never before it looked).
    deadline = time.monotonic() + RUN_TIMEOUT
    while not any("wait" in m.lower() and str(night) in m for m in _logs(deployed, run_id)):
        deployed["procs"].sample()
        run = deployed["client"].read_flow_run(run_id)
        assert not run.state.is_final(), (run.state, _logs(deployed, run_id))
        assert time.monotonic() < deadline, "the run never said it waits for data"
        time.sleep(2)
    shutil.move(staging / "autoscan_features.3.csv", raw / "autoscan_features.3.csv")
    (staging / "Y1").rename(raw / "Y1")  # one rename: the night appears whole
    run = _wait_final(deployed, run_id)
    deployed["client"].delete_deployment_schedule(_deployment(deployed).id, sched.id)
    assert run.state.name == "Completed", (run.state, _logs(deployed, run_id)[-20:])
    scores = pd.read_parquet(late / "scores", filters=[("night", "==", night)])
    assert len(scores) == STAMPS
