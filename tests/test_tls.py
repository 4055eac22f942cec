"""Dask workers started apart, over TLS: `dask scheduler` and two `dask worker` processes.

As on separate hosts (loopback here): the scheduler and the workers are started with Dask's own
command line, with certificates made here (a CA; a certificate and key each for the scheduler,
the workers and the client). ``s2v score --cluster spec.yaml`` with an ``address`` spec that names
the scheduler and the client's certificate files scores a night as a LocalCluster does; a client
without a certificate the scheduler trusts is refused with one clear line; SIGKILL of one worker
in the middle of a run leaves the output equal to a clean run's. Every process is stopped at the
end and none is left.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
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
import yaml

STAMPS = 800
PART = 100  # stamps per scoring task: eight tasks for two workers
N_PARTS = STAMPS // PART
DASK = str(Path(sys.executable).with_name("dask"))  # Dask's command line, from this environment
START_TIMEOUT = 180.0
RUN_TIMEOUT = 600.0


# --------------------------------------------------------------------------- certificates


def _pem_key(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_pki(out: Path, ca_name: str, leaves: tuple[str, ...]) -> dict[str, Path]:
    """A CA and, for each leaf name, a certificate (``NAME.pem``) and key (``NAME-key.pem``)
    signed by it, valid for 127.0.0.1 and localhost, for TLS servers and clients alike."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def builder(subject: str, issuer: x509.Name, key: Any) -> x509.CertificateBuilder:
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )

    out.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        builder(ca_name, name(ca_name), ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": out / f"{ca_name}.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    usage = x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    for leaf in leaves:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            builder(leaf, ca.subject, key)
            .add_extension(san, critical=False)
            .add_extension(usage, critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        paths[leaf] = out / f"{leaf}.pem"
        paths[f"{leaf}-key"] = out / f"{leaf}-key.pem"
        paths[leaf].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{leaf}-key"].write_bytes(_pem_key(key))
        paths[f"{leaf}-key"].chmod(0o600)
    return paths


# --------------------------------------------------------------------------- the processes


def _ps_group(pgids: set[int]) -> list[str]:
    """``pid pgid command`` of every live process in these process groups (as ps lists them)."""
    out = subprocess.run(
        ["ps", "-eo", "pid=,pgid=,stat=,args="], capture_output=True, text=True
    ).stdout
    rows = [line.split(None, 3) for line in out.splitlines()]
    return [
        " ".join(r) for r in rows if len(r) >= 3 and int(r[1]) in pgids and not r[2].startswith("Z")
    ]


class DaskApart:
    """A ``dask scheduler`` and ``dask worker`` processes on loopback, with TLS.

    Each process is started in its own session (its own process group), as if on its own host:
    stopping or killing a group ends the nanny and the worker process it spawned.
    """

    def __init__(self, root: Path, pki: dict[str, Path]) -> None:
        from distributed.security import Security

        from s2v_batch.pipeline.cluster import cpu_worker_env

        self.root, self.pki = root, pki
        self.procs: dict[str, subprocess.Popen] = {}
        self.address = ""
        self.security = Security(
            tls_ca_file=str(pki["ca"]),
            tls_client_cert=str(pki["client"]),
            tls_client_key=str(pki["client-key"]),
            require_encryption=True,
        )
        self.env = {**os.environ, **cpu_worker_env(1)}
        if "KERAS_BACKEND" in os.environ:
            self.env["KERAS_BACKEND"] = os.environ["KERAS_BACKEND"]

    def _tls(self, role: str) -> list[str]:
        return [
            "--tls-ca-file", str(self.pki["ca"]),
            "--tls-cert", str(self.pki[role]),
            "--tls-key", str(self.pki[f"{role}-key"]),
        ]  # fmt: skip

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 - the process owns it
        self.procs[name] = subprocess.Popen(
            [DASK, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.root,
            start_new_session=True,
        )
        log.close()

    def start_scheduler(self) -> None:
        sched_file = self.root / "scheduler.json"
        self._start(
            "scheduler",
            [
                "scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port", "0",
                "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sched_file),
                *self._tls("scheduler"),
            ],
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if sched_file.is_file():
                try:
                    self.address = json.loads(sched_file.read_text())["address"]
                    return
                except (ValueError, KeyError):
                    pass  # being written
            assert self.procs["scheduler"].poll() is None, self.log("scheduler")
            time.sleep(0.2)
        raise AssertionError(f"no scheduler after {START_TIMEOUT} s:\n{self.log('scheduler')}")

    def start_worker(self, name: str) -> None:
        local = self.root / name
        local.mkdir(exist_ok=True)
        self._start(
            name,
            [
                "worker", self.address, "--name", name, "--nthreads", "1", "--host", "127.0.0.1",
                # Without it the worker's HTTP port (health, metrics) listens on every
                # interface, even with --no-dashboard.
                "--dashboard-address", "127.0.0.1:0",
                "--local-directory", str(local), *self._tls("worker"),
            ],
        )  # fmt: skip

    def client(self) -> Any:
        from distributed import Client

        return Client(self.address, security=self.security, timeout=60, set_as_default=False)

    def kill(self, name: str) -> None:
        """SIGKILL a process group: the worker's host is gone, nanny and all."""
        os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait(timeout=60)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text()[-3000:] if path.is_file() else ""

    def stop(self) -> list[str]:
        """SIGTERM every group, SIGKILL what is left after 30 s; return what ps still lists."""
        groups = {p.pid for p in self.procs.values()}
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _ps_group(groups) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pgid in groups:
            if _ps_group({pgid}):
                os.killpg(pgid, signal.SIGKILL)
        for p in self.procs.values():
            p.wait(timeout=30)
        time.sleep(0.5)
        return _ps_group(groups)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    ours = make_pki(root / "site", "s2v-test-ca", ("scheduler", "worker", "client"))
    # A client with a certificate of its own, from a CA the scheduler does not trust.
    other = make_pki(root / "other", "other-ca", ("client",))
    return {**ours, "other-client": other["client"], "other-client-key": other["client-key"]}


@pytest.fixture(scope="module")
def dask_apart(pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskApart]:
    """The scheduler and two workers, up and connected; everything stopped afterwards."""
    apart = DaskApart(tmp_path_factory.mktemp("dask-apart"), pki)
    try:
        apart.start_scheduler()
        for i in range(2):
            apart.start_worker(f"worker-{i}")
        with apart.client() as client:
            client.wait_for_workers(2, timeout=START_TIMEOUT)
        yield apart
    finally:
        left = apart.stop()
    assert left == [], f"still running after stop: {left}"


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory, dask_client: Any) -> dict[str, Any]:
    """One stored night, and its scores from a LocalCluster run (the reference)."""
    from s2v_batch.core.config import ScoreConfig
    from s2v_batch.ingest.driver import ingest
    from s2v_batch.scoring.driver import score
    from s2v_batch.sim.simulator import simulate

    base = tmp_path_factory.mktemp("tls-night")
    simulate(base / "raw", season="Y1", nights=1, stamps_per_night=STAMPS, fmt="gif", seed=31)
    ingest(base / "raw", base / "store", dask_client, progress=False)
    cfg = ScoreConfig(part_stamps=PART)
    score(base / "store", base / "ref-scores", dask_client, config=cfg, progress=False)
    return {"store": base / "store", "ref": _scores(base / "ref-scores")}


def _scores(root: Path) -> pd.DataFrame:
    df = pd.read_parquet(root, columns=["night", "stamp_id", "score", "is_candidate"])
    return df.astype({"night": "int64"}).sort_values(["night", "stamp_id"]).reset_index(drop=True)


def _parts_done(out: Path) -> int:
    """Scoring tasks of the night finished on disk: its staged parts
    (``_staging/season=*/night=*/<key>/part-*.parquet``, each written through a rename, so one
    that exists is whole), or all of them once the night is published (its staging is then
    removed; read second, so a night published in between counts whole)."""
    staged = 0
    for _ in range(10):
        try:
            staged = sum(1 for _ in out.glob("_staging/season=*/night=*/*/part-*.parquet"))
            break
        except FileNotFoundError:  # a staging folder removed while listed: list again
            continue
    return N_PARTS if any(out.glob("season=*/night=*/_manifest.json")) else staged


def _assert_same_scores(got: pd.DataFrame, ref: pd.DataFrame) -> None:
    assert not got.duplicated(["night", "stamp_id"]).any(), "a stamp was published twice"
    assert len(got) == len(ref) == STAMPS
    np.testing.assert_array_equal(got["stamp_id"], ref["stamp_id"])
    np.testing.assert_allclose(got["score"], ref["score"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(got["is_candidate"], ref["is_candidate"])


def _spec(folder: Path, address: str, files: dict[str, Path] | None) -> Path:
    """An ``address`` spec in ``folder``; the TLS files copied beside it, named relative to it."""
    options: dict[str, str] = {"address": address}
    folder.mkdir(parents=True, exist_ok=True)
    if files:
        (folder / "certs").mkdir(parents=True, exist_ok=True)
        for option, src in files.items():
            shutil.copy2(src, folder / "certs" / f"{option}.pem")
            options[option] = f"certs/{option}.pem"
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump({"kind": "address", "options": options}))
    return path


def _score_cmd(store: Path, out: Path, spec: Path) -> list[str]:
    return [
        sys.executable, "-m", "s2v_batch.cli", "score", str(store), "--out", str(out),
        "--cluster", str(spec), "--part-stamps", str(PART), "--no-progress",
    ]  # fmt: skip


def _client_files(pki: dict[str, Path], client: str = "client") -> dict[str, Path]:
    return {"ca_file": pki["ca"], "cert": pki[client], "key": pki[f"{client}-key"]}


# --------------------------------------------------------------------------- tests


def test_an_address_spec_reads_its_tls_files_beside_it(pki, tmp_path):
    from s2v_batch.pipeline.cluster import load_spec, security_of

    spec = load_spec(_spec(tmp_path / "site", "tls://127.0.0.1:8786", _client_files(pki)))
    certs = (tmp_path / "site" / "certs").resolve()
    assert spec.options == {
        "address": "tls://127.0.0.1:8786",
        "ca_file": str(certs / "ca_file.pem"),
        "cert": str(certs / "cert.pem"),
        "key": str(certs / "key.pem"),
    }
    sec = security_of(spec)
    assert sec.require_encryption
    assert (sec.tls_ca_file, sec.tls_client_cert, sec.tls_client_key) == (
        spec.options["ca_file"],
        spec.options["cert"],
        spec.options["key"],
    )
    # No TLS files: no Security, Dask's configuration applies.
    assert security_of(load_spec(_spec(tmp_path / "plain", "tcp://127.0.0.1:8786", None))) is None


def test_bad_tls_address_specs_raise_cluster_errors(pki, tmp_path):
    from s2v_batch.pipeline.cluster import ClusterError, load_spec

    files = _client_files(pki)
    cases = {
        "tcp-with-files": ("tcp://127.0.0.1:8786", files, "the address must be tls://"),
        "no-cert": ("tls://127.0.0.1:8786", {"ca_file": pki["ca"]}, "needs options.ca_file and"),
        "no-ca": ("tls://127.0.0.1:8786", {"cert": pki["client"]}, "needs options.ca_file and"),
    }
    for name, (address, given, message) in cases.items():
        with pytest.raises(ClusterError, match=message):
            load_spec(_spec(tmp_path / name, address, given))
    missing = tmp_path / "missing.yaml"
    missing.write_text(
        yaml.safe_dump(
            {
                "kind": "address",
                "options": {"address": "tls://h:1", "ca_file": "no.pem", "cert": "c.pem"},
            }
        )
    )
    with pytest.raises(ClusterError, match="options.ca_file = .*no.pem does not exist"):
        load_spec(missing)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(
        yaml.safe_dump({"kind": "address", "options": {"address": "tcp://h:1", "tls": 1}})
    )
    with pytest.raises(ClusterError, match="not \\['tls'\\]"):
        load_spec(unknown)


@pytest.mark.slow
def test_every_process_listens_on_loopback_only(dask_apart):
    import psutil

    for name, proc in dask_apart.procs.items():
        parent = psutil.Process(proc.pid)
        for p in [parent, *parent.children(recursive=True)]:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    assert c.laddr.ip == "127.0.0.1", f"{name} (pid {p.pid}) listens on {c.laddr}"
    assert dask_apart.address.startswith("tls://127.0.0.1:")


@pytest.mark.slow
def test_score_through_a_tls_address_spec_equals_a_local_run(dask_apart, pki, night, tmp_path):
    spec = _spec(tmp_path / "site", dask_apart.address, _client_files(pki))
    elsewhere = tmp_path / "elsewhere"  # the spec's relative paths are read beside the spec
    elsewhere.mkdir()
    out = tmp_path / "scores"
    r = subprocess.run(
        _score_cmd(night["store"], out, spec),
        capture_output=True,
        text=True,
        cwd=elsewhere,
        timeout=RUN_TIMEOUT,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert f"score: {STAMPS} stamps" in r.stdout, r.stdout
    _assert_same_scores(_scores(out), night["ref"])
    # Both workers started apart did the work.
    with dask_apart.client() as client:
        done = client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert len(done) == 2 and all(n > 0 for n in done.values()), done


@pytest.mark.slow
def test_a_client_without_a_trusted_certificate_is_refused_in_one_line(
    dask_apart, pki, night, tmp_path
):
    host_port = dask_apart.address.removeprefix("tls://")
    cases = {
        # A certificate of its own, from a CA the scheduler does not know: the handshake fails.
        "untrusted certificate": (
            dask_apart.address,
            {**_client_files(pki, "other-client"), "ca_file": pki["ca"]},
            # The scheduler's alert (TLSV1_ALERT_UNKNOWN_CA) or, when the connection closes
            # first, an SSLEOFError: which one the client reads is a race.
            "SSL",
        ),
        # No certificate at all.
        "no certificate": (dask_apart.address, None, "speaks TLS: give the spec's options"),
        # Plain TCP to the TLS port.
        "plain tcp": (f"tcp://{host_port}", None, "cannot connect to the Dask scheduler"),
    }
    seen = {}
    for case, (address, files, message) in cases.items():
        folder = tmp_path / case.replace(" ", "-")
        spec = _spec(folder, address, files)
        r = subprocess.run(
            _score_cmd(night["store"], folder / "scores", spec),
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=RUN_TIMEOUT,
            # A refused handshake is retried until Dask's connect timeout: keep it short here.
            env={**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "10s"},
        )
        lines = r.stderr.strip().splitlines()
        seen[case] = lines[-1] if lines else ""
        assert r.returncode == 2, (case, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr, (case, r.stderr)
        assert lines[-1].startswith("s2v score: error: ") and message in lines[-1], (case, lines)
        assert sum(line.startswith("s2v score:") for line in lines) == 1, lines
        assert not (folder / "scores").exists()
    print("\n" + "\n".join(f"{case}: {line}" for case, line in seen.items()))
    # The scheduler and its workers are unharmed.
    with dask_apart.client() as client:
        assert len(client.scheduler_info()["workers"]) == 2
        assert client.submit(lambda: "still serving").result() == "still serving"


@pytest.mark.slow
def test_sigkill_of_a_worker_mid_run_leaves_the_output_of_a_clean_run(
    dask_apart, pki, night, tmp_path
):
    spec = _spec(tmp_path / "site", dask_apart.address, _client_files(pki))
    out = tmp_path / "scores"
    with dask_apart.client() as monitor:
        monitor.wait_for_workers(2, timeout=START_TIMEOUT)
        names = {a: w["name"] for a, w in monitor.scheduler_info()["workers"].items()}
        proc = subprocess.Popen(
            _score_cmd(night["store"], out, spec),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
            start_new_session=True,
        )
        victim, at_kill = None, None
        try:
            # Mid-run: a first part is done and a worker is running one of this run's tasks.
            deadline = time.monotonic() + RUN_TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline:
                busy = [
                    a
                    for a, keys in monitor.processing().items()
                    if any(str(k).startswith("score_shard") for k in keys)
                ]
                if busy and _parts_done(out) > 0:
                    victim = names[busy[0]]
                    dask_apart.kill(victim)
                    at_kill = _parts_done(out)
                    break
                time.sleep(0.05)
            output, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert victim is not None, (
            f"the run ended before a part was done with a worker busy:\n{output}"
        )
        # The kill landed mid-run: some parts done on disk, not all.
        assert at_kill is not None and 0 < at_kill < N_PARTS, (at_kill, output[-3000:])
        assert proc.returncode == 0, output[-3000:]
        # The scheduler lost that worker; the other finished the run.
        deadline = time.monotonic() + 60
        while len(monitor.scheduler_info()["workers"]) > 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [w["name"] for w in monitor.scheduler_info()["workers"].values()] == [
            n for n in names.values() if n != victim
        ]
    print(f"\nSIGKILL of {victim} with {at_kill} of {N_PARTS} parts done; s2v score said: "
          f"{output.strip().splitlines()[-1]}")  # fmt: skip
    _assert_same_scores(_scores(out), night["ref"])
