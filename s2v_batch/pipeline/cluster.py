"""Cluster specs (YAML files in ``cluster/``) turned into a running Dask cluster and client.

Kinds: ``local`` (``distributed.LocalCluster``, the default), ``cuda``
(``dask_cuda.LocalCUDACluster``, one worker per GPU), ``slurm`` (``dask_jobqueue.SLURMCluster``,
one worker per job, adaptive) and ``address`` (attach to a running scheduler, over TLS when the
spec names its certificate files). Every service binds to loopback unless a spec says otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from s2v_batch.core import resources
from s2v_batch.core.faults import ClusterUnavailableError, classify, first_line

KINDS = ("local", "cuda", "slurm", "address")
#: A running scheduler's address, given instead of a spec (``tcp://127.0.0.1:8786``).
ADDRESS_RE = re.compile(r"^(tcp|tls|ucx|ucxx|ws|wss|inproc)://")

#: Options of an ``address`` spec: the scheduler, and the client's TLS files (Dask's
#: ``--tls-ca-file``, ``--tls-cert``, ``--tls-key``).
ADDRESS_OPTIONS = ("address", "ca_file", "cert", "key")
TLS_FILES = ("ca_file", "cert", "key")


class ClusterError(ValueError):
    """A cluster spec that cannot be used, or a cluster that cannot start here."""


@dataclass(frozen=True)
class ClusterSpec:
    """A validated cluster spec.

    kind: one of ``local``, ``cuda``, ``slurm``, ``address``. options: keyword arguments for the
    cluster class; for ``address``: ``address`` and, for a TLS scheduler, ``ca_file`` (the CA
    that signed the scheduler's certificate), ``cert`` and ``key`` (the client's certificate and
    key; ``key`` may be left out when ``cert`` holds both). worker_env: environment for worker
    processes. scale: ``{"jobs": N}`` or ``{"adapt": {"minimum_jobs": a, "maximum_jobs": b, ...}}``
    (slurm; further keys go to ``distributed.Adaptive``).
    """

    kind: str = "local"
    options: dict[str, Any] = field(default_factory=dict)
    worker_env: dict[str, str] = field(default_factory=dict)
    scale: dict[str, Any] = field(default_factory=dict)
    name: str = "local (default)"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ClusterError(f"unknown cluster kind {self.kind!r}; expected one of {KINDS}")
        if self.kind == "address":
            _check_address_options(self.options)


def _check_address_options(opts: dict[str, Any]) -> None:
    address = opts.get("address")
    if not address or not isinstance(address, str):
        raise ClusterError("an 'address' spec needs options.address (tcp://host:port)")
    unknown = set(opts) - set(ADDRESS_OPTIONS)
    if unknown:
        raise ClusterError(
            f"an 'address' spec takes options {ADDRESS_OPTIONS}, not {sorted(unknown)}"
        )
    given = [k for k in TLS_FILES if opts.get(k)]
    if not given:
        return
    if not address.startswith("tls://"):
        raise ClusterError(f"TLS files are given, so the address must be tls://..., not {address}")
    if "ca_file" not in given or "cert" not in given:
        raise ClusterError("a TLS 'address' spec needs options.ca_file and options.cert (and key)")
    for k in given:
        if not Path(opts[k]).is_file():
            raise ClusterError(f"TLS file options.{k} = {opts[k]} does not exist")


def _resolve_paths(opts: dict[str, Any], base: Path) -> dict[str, Any]:
    """TLS file paths of a spec, relative to the spec's folder (``~`` and ``$VARS`` expanded)."""
    opts = dict(opts)
    for k in TLS_FILES:
        if opts.get(k):
            p = Path(os.path.expandvars(str(opts[k]))).expanduser()
            opts[k] = str(p if p.is_absolute() else (base / p).resolve())
    return opts


def load_spec(path: str | Path | None, work: str = "any") -> ClusterSpec:
    """Read a cluster spec; ``None`` gives the default local cluster sized to this machine.

    Parameters
    ----------
    path : str, path or None
        A spec file, or the name of a shipped spec (``local``, ``local.yaml``,
        ``cluster/local.yaml``): an existing file wins (see :mod:`s2v_batch.core.resources`).
    work : {"any", "score"}
        What the default (``path`` None) is for: :func:`default_local_spec`.

    Raises
    ------
    ClusterError
        A spec that does not exist (the message lists the shipped names) or cannot be used.
    """
    if path is None:
        return default_local_spec(work)
    try:
        path = resources.find(resources.CLUSTER_SPECS, path)
    except resources.ResourceNotFoundError as exc:
        raise ClusterError(str(exc)) from None
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ClusterError(f"cluster spec {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ClusterError(f"cluster spec {path} must hold a mapping")
    unknown = set(data) - {"kind", "options", "worker_env", "scale", "description"}
    if unknown:
        raise ClusterError(f"cluster spec {path}: unknown key(s) {sorted(unknown)}")
    env = {str(k): str(v) for k, v in (data.get("worker_env") or {}).items()}
    return ClusterSpec(
        kind=data.get("kind", "local"),
        options=_resolve_paths(dict(data.get("options") or {}), path.parent),
        worker_env=env,
        scale=dict(data.get("scale") or {}),
        name=str(path),
    )


#: Most threads a scoring worker gets by default (see :func:`default_local_spec`).
SCORE_THREADS_PER_WORKER = 4


def default_local_spec(work: str = "any") -> ClusterSpec:
    """The default LocalCluster for ``work``, on loopback.

    ``"score"``: one worker per up to :data:`SCORE_THREADS_PER_WORKER` cores, a scoring thread
    per core. TensorFlow releases the GIL, so the threads of one process score side by side,
    and every worker process pays its own TensorFlow start (about 4 s of CPU) and memory (about
    0.2 GiB): on the 2-core VM, at 40,000 stamps, 11% less CPU a stamp and 0.2 GiB less than
    two workers, at the same steady rate. Anything else (ingest: decoding holds the GIL, and
    it ran 35% slower as two threads of one process): one single-threaded worker per core.

    Parameters
    ----------
    work : {"any", "score"}

    Returns
    -------
    ClusterSpec
    """
    if work not in ("any", "score"):
        raise ValueError(f"work must be 'any' or 'score', got {work!r}")
    cores = max(1, os.cpu_count() or 1)
    if work == "score":
        n = -(-cores // SCORE_THREADS_PER_WORKER)
        threads = max(1, cores // n)
    else:
        n, threads = cores, 1
    return ClusterSpec(
        kind="local",
        options={
            "n_workers": n,
            "threads_per_worker": threads,
            "dashboard_address": "127.0.0.1:8787",
        },
    )


def cpu_worker_env(threads: int) -> dict[str, str]:
    """Environment of a plain CPU worker: TensorFlow's thread settings (read at start-up, before
    its first op) and no GPU. On a GPU host every CPU worker would otherwise open the card (JAX
    preallocates 75% of its memory in the first one); the ``cuda`` kind is for GPUs.

    Each of the worker's ``threads`` runs one task, and each task's model call runs on one core:
    one intra-op thread (no barrier between halves of every operation, which a busy core stalls)
    and one inter-op thread per task thread, so the tasks' calls run side by side.
    """
    t = str(max(1, threads))
    return {
        "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": t,
        "OMP_NUM_THREADS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "",
        "JAX_PLATFORMS": "cpu",
    }


def gpu_count() -> int:
    """Number of NVIDIA GPUs visible here (0, safely, where there is no driver)."""
    try:
        from distributed.diagnostics import nvml

        return int(nvml.device_get_count())
    except Exception:
        return 0


def make_cluster(spec: ClusterSpec):
    """Start the cluster a spec describes (not for ``address`` specs)."""
    opts = dict(spec.options)
    if spec.kind == "local":
        from distributed import LocalCluster

        opts.setdefault("host", "127.0.0.1")
        opts.setdefault("dashboard_address", "127.0.0.1:0")
        opts.setdefault("threads_per_worker", 1)
        env = {**cpu_worker_env(opts["threads_per_worker"]), **spec.worker_env}
        # Keras reads KERAS_BACKEND in each worker process.
        if "KERAS_BACKEND" in os.environ:
            env.setdefault("KERAS_BACKEND", os.environ["KERAS_BACKEND"])
        return LocalCluster(env=env, **opts)
    if spec.kind == "cuda":
        if gpu_count() == 0:
            raise ClusterError(
                "this spec needs GPUs but none is visible here (NVML finds no device); "
                "use the default local cluster instead (omit --cluster)"
            )
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as exc:
            raise ClusterError(
                f"dask-cuda is not installed ({exc}); install the GPU extra: pip install 's2v-batch[gpu]'"
            ) from None
        opts.setdefault("host", "127.0.0.1")
        opts.setdefault("dashboard_address", "127.0.0.1:0")
        env = {
            "TF_FORCE_GPU_ALLOW_GROWTH": "true",
            "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
            **spec.worker_env,
        }
        if "KERAS_BACKEND" in os.environ:
            env.setdefault("KERAS_BACKEND", os.environ["KERAS_BACKEND"])
        return LocalCUDACluster(env=env, **opts)
    if spec.kind == "slurm":
        try:
            from dask_jobqueue import SLURMCluster
        except ImportError as exc:
            raise ClusterError(f"dask-jobqueue is not installed ({exc})") from None
        opts = _slurm_options(opts, spec.worker_env)
        try:
            cluster = SLURMCluster(**opts)
        except (TypeError, ValueError) as exc:  # an option the class does not take
            raise ClusterError(f"cluster spec {spec.name}: {exc}") from None
        if "adapt" in spec.scale:
            cluster.adapt(**spec.scale["adapt"])
        elif "jobs" in spec.scale:
            cluster.scale(jobs=int(spec.scale["jobs"]))
        return cluster
    raise ClusterError(f"cannot start a cluster of kind {spec.kind!r}")


def _wants_gpu(opts: dict[str, Any]) -> bool:
    directives = " ".join(str(d) for d in opts.get("job_extra_directives") or [])
    return "gpu" in directives


def _slurm_options(opts: dict[str, Any], worker_env: dict[str, str]) -> dict[str, Any]:
    """SLURMCluster keyword arguments: the worker environment becomes ``export`` lines.

    A job that asks for no GPU gets the CPU worker environment (:func:`cpu_worker_env`, one
    TensorFlow thread per core of its worker) under the spec's own ``worker_env``.
    """
    opts = dict(opts)
    env = dict(worker_env)
    if not _wants_gpu(opts):
        cores = int(opts.get("cores", 1))
        threads = max(1, cores // max(1, int(opts.get("processes", 1))))
        env = {**cpu_worker_env(threads), **env}
    if "KERAS_BACKEND" in os.environ:
        env.setdefault("KERAS_BACKEND", os.environ["KERAS_BACKEND"])
    prologue = list(opts.pop("job_script_prologue", []) or [])
    prologue += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    if prologue:
        opts["job_script_prologue"] = prologue
    return opts


def security_of(spec: ClusterSpec) -> Any:
    """The ``distributed.Security`` of an ``address`` spec with TLS files (None without them).

    Encryption is required: with these credentials the client never falls back to plain TCP.
    """
    opts = spec.options
    if spec.kind != "address" or not opts.get("ca_file"):
        return None
    from distributed.security import Security

    return Security(
        tls_ca_file=opts["ca_file"],
        tls_client_cert=opts["cert"],
        tls_client_key=opts.get("key") or None,
        require_encryption=True,
    )


def _connect(spec: ClusterSpec) -> Any:
    """A client on the scheduler of an ``address`` spec; a refusal becomes one ClusterError."""
    import dask
    from distributed import Client

    address = spec.options["address"]
    security = security_of(spec)
    if (
        address.startswith("tls://")
        and security is None
        and not dask.config.get("distributed.comm.tls.ca-file", None)
    ):
        raise ClusterError(
            f"the scheduler at {address} speaks TLS: give the spec's options ca_file, cert and "
            "key (or set distributed.comm.tls in Dask's configuration)"
        )
    try:
        return Client(address, security=security)
    except (OSError, TimeoutError, TypeError, ValueError) as exc:
        # OSError: refused, unreachable, or a TLS handshake that failed (a certificate the other
        # side does not trust); TypeError/ValueError: TLS settings that cannot be used.
        reason = " ".join(str(exc).split()) or type(exc).__name__
        reason = re.sub(r"^in <[^>]*>: ", "", reason)  # distributed's "in <TLS (closed) ...>: "
        answered = (
            isinstance(exc, TypeError | ValueError)
            or "SSL" in reason
            or "certificate" in reason.lower()
            or "reset by peer" in reason
        )
        if not answered:  # nothing listens there, or the network does not reach it: transient
            raise ClusterUnavailableError(address, reason, lost=False) from exc
        # Something answered but refused us: the spec's security does not fit (bad input).
        hint = (
            "check the spec's ca_file, cert and key"
            if address.startswith("tls://")
            else "is the scheduler running, and does it speak plain tcp://?"
        )
        raise ClusterError(
            f"cannot connect to the Dask scheduler at {address}: {reason} ({hint})"
        ) from None


@contextlib.contextmanager
def open_client(spec: ClusterSpec | str | Path | None = None, work: str = "any") -> Iterator[Any]:
    """A Dask client on the cluster a spec describes; the cluster is closed on exit.

    Parameters
    ----------
    spec : ClusterSpec, path, address or None
        A spec, a spec file (or the name of a shipped one: ``local``, ``slurm``...), a running
        scheduler's address (``tcp://host:port``: attached to and left running), or None for the
        local default.
    work : {"any", "score"}
        What the default local cluster is for (:func:`default_local_spec`); ignored when a
        spec is given.

    Yields
    ------
    distributed.Client
    """
    from distributed import Client

    if isinstance(spec, str) and ADDRESS_RE.match(spec):
        spec = ClusterSpec(kind="address", options={"address": spec}, name=spec)
    if not isinstance(spec, ClusterSpec):
        spec = load_spec(spec, work)
    if spec.kind == "address":
        client = _connect(spec)
        with client, _scheduler_loss(spec.options["address"]):
            yield client
        return
    cluster = make_cluster(spec)
    try:
        with Client(cluster) as client, _scheduler_loss(cluster.scheduler_address):
            yield client
    finally:
        try:
            cluster.close()
        except TimeoutError as exc:
            # The work is done; a worker slow to exit on a loaded machine (its nanny kills it
            # after a few seconds) must not turn a finished run into a failed one.
            logging.getLogger(__name__).warning("the Dask cluster was slow to close: %s", exc)


@contextlib.contextmanager
def _scheduler_loss(address: str) -> Iterator[None]:
    """Say which scheduler was lost when the work in the block fails because it went away."""
    try:
        yield
    except Exception as exc:
        if classify(exc).kind == "scheduler-lost" and not isinstance(exc, ClusterUnavailableError):
            reason = f"{type(exc).__name__}: {first_line(exc)}"
            raise ClusterUnavailableError(address, reason, lost=True) from exc
        raise
