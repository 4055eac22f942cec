"""Cluster specs (YAML files in ``cluster/``) turned into a running Dask cluster and client.

Kinds: ``local`` (``distributed.LocalCluster``, the default), ``cuda``
(``dask_cuda.LocalCUDACluster``, one worker per GPU), ``slurm`` (``dask_jobqueue.SLURMCluster``,
one GPU per job, adaptive) and ``address`` (attach to a running scheduler). Every service binds
to loopback unless a spec says otherwise.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KINDS = ("local", "cuda", "slurm", "address")
#: A running scheduler's address, given instead of a spec (``tcp://127.0.0.1:8786``).
ADDRESS_RE = re.compile(r"^(tcp|tls|ucx|ucxx|ws|wss|inproc)://")


class ClusterError(ValueError):
    """A cluster spec that cannot be used, or a cluster that cannot start here."""


@dataclass(frozen=True)
class ClusterSpec:
    """A validated cluster spec.

    kind: one of ``local``, ``cuda``, ``slurm``, ``address``. options: keyword arguments for the
    cluster class (for ``address``: ``address``). worker_env: environment for worker processes.
    scale: ``{"jobs": N}`` or ``{"adapt": {"minimum_jobs": a, "maximum_jobs": b}}`` (slurm).
    """

    kind: str = "local"
    options: dict[str, Any] = field(default_factory=dict)
    worker_env: dict[str, str] = field(default_factory=dict)
    scale: dict[str, Any] = field(default_factory=dict)
    name: str = "local (default)"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ClusterError(f"unknown cluster kind {self.kind!r}; expected one of {KINDS}")
        if self.kind == "address" and not self.options.get("address"):
            raise ClusterError("an 'address' spec needs options.address (tcp://host:port)")


def load_spec(path: str | Path | None) -> ClusterSpec:
    """Read a spec file; ``None`` gives the default local cluster sized to this machine."""
    if path is None:
        return default_local_spec()
    path = Path(path)
    if not path.is_file():
        bundled = Path(__file__).resolve().parent.parent / "cluster" / f"{path}"
        for cand in (bundled, bundled.with_suffix(".yaml")):
            if cand.is_file():
                path = cand
                break
        else:
            raise ClusterError(f"cluster spec {path} does not exist (see the cluster/ folder)")
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
        options=dict(data.get("options") or {}),
        worker_env=env,
        scale=dict(data.get("scale") or {}),
        name=str(path),
    )


def default_local_spec() -> ClusterSpec:
    """A LocalCluster of one single-threaded worker per core, on loopback."""
    n = max(1, os.cpu_count() or 1)
    return ClusterSpec(
        kind="local",
        options={"n_workers": n, "threads_per_worker": 1, "dashboard_address": "127.0.0.1:8787"},
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
        from dask_jobqueue import SLURMCluster

        opts = _slurm_options(opts, spec.worker_env)
        cluster = SLURMCluster(**opts)
        if "adapt" in spec.scale:
            cluster.adapt(**spec.scale["adapt"])
        elif "jobs" in spec.scale:
            cluster.scale(jobs=int(spec.scale["jobs"]))
        return cluster
    raise ClusterError(f"cannot start a cluster of kind {spec.kind!r}")


def _slurm_options(opts: dict[str, Any], worker_env: dict[str, str]) -> dict[str, Any]:
    opts = dict(opts)
    prologue = list(opts.pop("job_script_prologue", []) or [])
    prologue += [f"export {k}={v}" for k, v in worker_env.items()]
    if prologue:
        opts["job_script_prologue"] = prologue
    return opts


@contextlib.contextmanager
def open_client(spec: ClusterSpec | str | Path | None = None) -> Iterator[Any]:
    """A Dask client on the cluster a spec describes; the cluster is closed on exit.

    Parameters
    ----------
    spec : ClusterSpec, path, address or None
        A spec, a spec file (or the name of one in ``cluster/``), a running scheduler's address
        (``tcp://host:port``: attached to and left running), or None for the local default.

    Yields
    ------
    distributed.Client
    """
    from distributed import Client

    if isinstance(spec, str) and ADDRESS_RE.match(spec):
        spec = ClusterSpec(kind="address", options={"address": spec}, name=spec)
    if not isinstance(spec, ClusterSpec):
        spec = load_spec(spec)
    if spec.kind == "address":
        with Client(spec.options["address"]) as client:
            yield client
        return
    cluster = make_cluster(spec)
    try:
        with Client(cluster) as client:
            yield client
    finally:
        # A worker slower than the nanny's 5 s to exit (TensorFlow's teardown on a busy machine)
        # is killed, and the nanny's wait for that can time out: the work is done by then.
        with contextlib.suppress(TimeoutError):
            cluster.close()
