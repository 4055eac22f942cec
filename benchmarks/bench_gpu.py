"""The GPU path of ``s2v score``, measured piece by piece against the card's own limits (issue 6).

Every figure comes from this one run on this one card, with the Keras JAX backend:

1. the card's matrix rate: ``jax.numpy`` products of large square matrices (float32 at the
   default and at the 'highest' precision, bfloat16), TFLOP/s;
2. the compiled model call on stamps already on the GPU: the :class:`s2v_batch.model.Predictor`'s
   ``jax.jit`` of ``model.stateless_call`` (BatchNorm folded, as the Predictor does), uint8
   input as stored, float32 and mixed precision (bfloat16), per batch size; stamps/s and the
   fraction of the matching matrix rate, from :func:`s2v_batch.model.count_flops`;
3. ``Predictor.predict`` on host numpy arrays, as the scorer calls it, at the same sizes;
4. the data path alone: read and decompress a night from Zarr in blocks
   (:func:`s2v_batch.scoring.driver.prefetched_blocks`) and copy them to the GPU
   (``jax.device_put``), with one reader and with several concurrent readers (threads);
5. end to end, Zarr -> Parquet: :func:`s2v_batch.scoring.driver.score` on a ``dask_cuda``
   ``LocalCUDACluster`` from the project's ``cluster/cuda.yaml`` (threads per worker swept),
   warmed first, with the GPU's busy time sampled through NVML every 0.1 s; once more in mixed
   precision, and once with the shipped defaults (ingest shards, ``ScoreConfig()``,
   ``cuda.yaml`` as is);
6. correctness: the end-to-end Parquet scores against ``Predictor.predict`` of the same stamps,
   and mixed precision against float32.

Prints Markdown tables as it goes (``--out FILE`` keeps a copy, rewritten after each table);
progress goes to stderr. Where JAX finds no GPU (or with ``--quick``) the same code runs at tiny
sizes on the CPU with a plain ``LocalCluster`` (``load_spec(None)``) and no NVML: that checks
the script, it measures nothing. The temporary store lives under ``--workdir`` (created once per
run, reused when complete); the scores written are removed.

    python benchmarks/bench_gpu.py --out bench_gpu.md            # on a GPU machine
    python benchmarks/bench_gpu.py --quick                       # anywhere: a check of the script
    bash benchmarks/gpu/run_on_device.sh                         # the GPU session's one command
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# Keras reads the backend once, JAX its allocator settings once: before either is imported.
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # s2v_batch from this checkout

import numpy as np  # noqa: E402

SEASON = "Y1"
NIGHT = 20130901  # the large night: tables 4, 5, 6
NIGHT_DEFAULTS = 20130902  # the night written with the ingest defaults, for the shipped config
T_START = time.perf_counter()


def log(msg: str) -> None:
    """A progress line on stderr, with the seconds since start."""
    print(f"[{time.perf_counter() - T_START:6.1f} s] {msg}", file=sys.stderr, flush=True)


class Report:
    """The Markdown text: printed as it grows, rewritten to ``--out`` after each section."""

    def __init__(self, out: Path | None) -> None:
        self.out, self.lines = out, []
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)

    def add(self, *lines: str) -> None:
        for line in lines:
            print(line, flush=True)
            self.lines.append(line)
        if self.out:
            self.out.write_text("\n".join(self.lines) + "\n")

    def table(self, header: list[str], rows: list[list[Any]], align: str | None = None) -> None:
        align = align or "-" * len(header)
        seps = ["---:" if a == "r" else "---" for a in align]
        self.add(
            "| " + " | ".join(header) + " |",
            "|" + "|".join(seps) + "|",
            *("| " + " | ".join(str(c) for c in r) + " |" for r in rows),
            "",
        )


def _tf(v: float) -> str:
    """TFLOP/s with three significant figures (the CPU check gives small ones)."""
    return f"{v:,.1f}" if v >= 100 else f"{v:.3g}"


def _sync(out: Any) -> None:
    block = getattr(out, "block_until_ready", None)
    if block is not None:
        block()


def measure(fn: Callable[[], Any], work: float, repeats: int, min_s: float) -> tuple[float, float]:
    """(best, median) of ``work`` units per second of ``fn``.

    The first call warms up (compiles); each timed run calls ``fn`` back to back as often as
    makes ``min_s`` seconds and waits for the last result only, so asynchronous dispatch is
    pipelined as in a real loop.
    """
    _sync(fn())
    t0 = time.perf_counter()
    _sync(fn())
    once = time.perf_counter() - t0
    inner = max(1, math.ceil(min_s / max(once, 1e-6)))
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = None
        for _ in range(inner):
            out = fn()
        _sync(out)
        rates.append(work * inner / (time.perf_counter() - t0))
    return max(rates), statistics.median(rates)


# --------------------------------------------------------------------------- the card


def machine(quick: bool) -> dict[str, Any]:
    """What runs this: JAX device, NVML card and driver, package versions."""
    import importlib.metadata as md

    import jax
    import keras

    dev = jax.devices()[0]
    info: dict[str, Any] = {
        "platform": dev.platform,
        "device_kind": getattr(dev, "device_kind", "?"),
        "n_devices": len(jax.devices()),
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
    }
    versions = []
    for pkg in (
        "jax",
        "jaxlib",
        "numpy",
        "zarr",
        "numcodecs",
        "dask",
        "distributed",
        "dask-cuda",
        "xarray",
        "pyarrow",
    ):
        try:
            versions.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            versions.append(f"{pkg} -")
    info["versions"] = ", ".join(versions)
    info["nvml"] = None
    if not quick:
        try:
            import pynvml

            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(0)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            drv = pynvml.nvmlSystemGetDriverVersion()
            drv = drv.decode() if isinstance(drv, bytes) else drv
            cuda = pynvml.nvmlSystemGetCudaDriverVersion()
            mem = pynvml.nvmlDeviceGetMemoryInfo(h).total
            info["nvml"] = (
                f"{name}, {mem / 2**30:.0f} GiB, driver {drv}, "
                f"CUDA {cuda // 1000}.{cuda % 1000 // 10}"
            )
        except Exception as exc:  # no driver, no pynvml: the tables still work without it
            info["nvml"] = f"NVML unavailable ({exc})"
    return info


class GpuSampler:
    """Mean GPU busy % and peak memory used (all processes), sampled every ``period`` s."""

    def __init__(self, enabled: bool, period: float = 0.1) -> None:
        self.h = None
        self.period = period
        if enabled:
            try:
                import pynvml

                pynvml.nvmlInit()
                self.h = pynvml.nvmlDeviceGetHandleByIndex(0)
                self.nvml = pynvml
            except Exception:
                self.h = None

    def __enter__(self) -> GpuSampler:
        self.busy: list[int] = []
        self.mem = 0
        self._stop = threading.Event()
        if self.h is not None:
            self._t = threading.Thread(target=self._run, daemon=True)
            self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.busy.append(int(self.nvml.nvmlDeviceGetUtilizationRates(self.h).gpu))
                self.mem = max(self.mem, int(self.nvml.nvmlDeviceGetMemoryInfo(self.h).used))
            except Exception:
                return
            self._stop.wait(self.period)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.h is not None:
            self._t.join()

    def busy_text(self) -> str:
        return f"{statistics.fmean(self.busy):.0f}% ({len(self.busy)})" if self.busy else "n/a"

    def mem_text(self) -> str:
        return f"{self.mem / 2**20:,.0f}" if self.h is not None and self.busy else "n/a"


# --------------------------------------------------------------------------- the store


def simulated_u8(n: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``n`` simulated stamps scaled to uint8 as gif ingest stores them (bench_score's way)."""
    from s2v_batch.sim.simulator import simulate_stamps

    block = simulate_stamps(n, np.random.default_rng(seed))
    px = np.nan_to_num(block.pixels)
    lo, hi = np.percentile(px, [1, 99.5], axis=(1, 2), keepdims=True)
    u8 = np.clip((px - lo) / np.maximum(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    return u8, block.labels.astype(np.int8)


def tiled(base: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Stamps ``start:stop`` of the endless repetition of ``base`` (stamp i = base[i % len])."""
    k = len(base)
    reps = -(-(stop - start + k) // k)
    return np.concatenate([base] * reps)[start % k : start % k + stop - start]


def make_night(
    root: Path,
    night: int,
    n: int,
    u8: np.ndarray,
    labels: np.ndarray,
    shard: int,
    chunk: int,
    writers: int,
) -> tuple[Path, str]:
    """A night of ``n`` uint8 stamps tiling ``u8``, written shard by shard by ``writers`` threads.

    Returns the path and how it came to be (seconds and rate, or "reused").
    """
    from s2v_batch.store import dataset as zstore

    path = zstore.night_path(root, SEASON, night)
    fp = f"bench-gpu-{n}-{shard}-{chunk}-{len(u8)}"
    attrs = zstore.verify_night(path)
    if attrs and attrs.get("night_fingerprint") == fp:
        return path, "reused (complete, same parameters)"
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    zstore.create_night(
        path,
        n_stamps=n,
        dtype=np.uint8,
        size=u8.shape[1],
        stamp_id=np.arange(n, dtype=np.int64),
        label=np.resize(labels, n),
        masked_fraction=np.zeros(n, np.float32),
        season=SEASON,
        night=night,
        attrs={"n_quarantined": 0, "night_fingerprint": fp, "source_format": "gif"},
        shard_stamps=shard,
        chunk_stamps=chunk,
    )
    # One period of the tiling, long enough for any shard: each shard is then a view of it.
    period = tiled(u8, 0, shard + len(u8))

    def write(sl: slice) -> None:
        off = sl.start % len(u8)
        zstore.write_stamps(path, sl.start, period[off : off + sl.stop - sl.start])

    with ThreadPoolExecutor(max(1, writers)) as pool:
        list(pool.map(write, zstore.shard_slices(n, shard)))
    dt = time.perf_counter() - t0
    if zstore.verify_night(path) is None:
        raise RuntimeError(f"{path}: the night written does not verify")
    disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path, (
        f"created in {dt:.1f} s with {writers} writer threads ({n / dt:,.0f} stamps/s, "
        f"{n * u8[0].nbytes / dt / 2**20:,.0f} MiB/s raw); {disk / 2**20:,.0f} MiB on disk"
    )


# --------------------------------------------------------------------------- tables 1 to 3


def matmul_rates(n: int, repeats: int, min_s: float) -> dict[str, float]:
    """TFLOP/s of an n x n product: float32 default and highest precision, bfloat16."""
    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(0)
    a32 = jax.random.normal(key, (n, n), jnp.float32)
    b32 = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    a16, b16 = a32.astype(jnp.bfloat16), b32.astype(jnp.bfloat16)
    cases = {
        "float32 (default precision)": (jax.jit(lambda x, y: x @ y), a32, b32),
        "float32 (precision='highest')": (
            jax.jit(lambda x, y: jnp.matmul(x, y, precision="highest")),
            a32,
            b32,
        ),
        "bfloat16": (jax.jit(lambda x, y: x @ y), a16, b16),
    }
    out = {}
    for name, (f, x, y) in cases.items():
        best, _ = measure(lambda f=f, x=x, y=y: f(x, y), 2.0 * n**3 / 1e12, repeats, min_s)
        out[name] = best
        log(f"matmul {n} {name}: {best:.1f} TFLOP/s")
    return out


def device_call(model: Any) -> Callable[[Any], Any]:
    """The Predictor's JAX call (``jax.jit`` of the stateless call), on device arrays."""
    import jax

    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]

    @jax.jit
    def call(tv: list, ntv: list, x: Any) -> Any:
        y, _ = model.stateless_call(tv, ntv, x, training=False)
        return y

    return lambda x: call(tv, ntv, x)


def pipelined(call: Callable[[Any], Any], x: np.ndarray, bs: int) -> np.ndarray:
    """Scores of host stamps ``x`` (whole batches of ``bs``): all batches dispatched, then read
    back; ``Predictor.predict`` without its checks, padding and copies."""
    ys = [call(x[i : i + bs]) for i in range(0, len(x), bs)]
    return np.concatenate([np.asarray(y, dtype=np.float32).reshape(-1) for y in ys])


# --------------------------------------------------------------------------- table 4


def data_path(night: Path, n: int, block: int, readers: int, to_gpu: bool) -> float:
    """Stamps/s reading (and copying to the GPU) stamps [0, n) split among ``readers`` threads."""
    import jax
    import zarr

    from s2v_batch.scoring.driver import prefetched_blocks

    arr = zarr.open_group(night, mode="r")["stamps"]
    dev = jax.devices()[0]
    edges = np.linspace(0, n, readers + 1).astype(int)

    def read(i: int) -> int:
        got = 0
        for px in prefetched_blocks(arr, int(edges[i]), int(edges[i + 1]), block):
            if to_gpu:
                jax.device_put(px, dev).block_until_ready()
            got += len(px)
        return got

    t0 = time.perf_counter()
    with ThreadPoolExecutor(readers) as pool:
        total = sum(pool.map(read, range(readers)))
    return total / (time.perf_counter() - t0)


# --------------------------------------------------------------------------- table 5


@dataclasses.dataclass
class E2E:
    """One end-to-end run: its settings and what it gave."""

    label: str
    threads: int
    batch: int
    part: int
    mixed: bool
    night: int
    n: int = 0
    seconds: float = float("nan")
    busy: str = "n/a"
    mem: str = "n/a"
    start_warm: float = float("nan")
    scores: Any = None  # stamp_id -> score of the first check stamps
    skipped: str = ""

    @property
    def rate(self) -> float:
        return self.n / self.seconds if self.n else float("nan")


def cluster_spec(quick: bool, threads: int, fallback: bool = False):
    """The project's spec (cuda.yaml; the default local one in quick mode), ``threads`` per worker.

    ``fallback``: where the LocalCUDACluster cannot start, a LocalCluster of one worker with
    cuda.yaml's worker environment (its JAX still uses the GPU), so the run still measures.
    """
    from s2v_batch.pipeline.cluster import ClusterSpec, load_spec

    spec = load_spec(None if quick else "cuda")
    if fallback:
        return ClusterSpec(
            kind="local",
            options={
                "n_workers": 1,
                "threads_per_worker": threads,
                "processes": True,
                "host": "127.0.0.1",
                "dashboard_address": "127.0.0.1:0",
            },
            worker_env=dict(spec.worker_env),
            name=f"LocalCluster fallback, 1 worker (threads_per_worker={threads})",
        )
    opts = {**spec.options, "threads_per_worker": threads, "dashboard_address": "127.0.0.1:0"}
    if quick:  # one worker: the check must not take a shared 2-core machine from others
        opts["n_workers"] = 1
    return dataclasses.replace(
        spec, options=opts, name=f"{spec.name} (threads_per_worker={threads})"
    )


def run_group(
    runs: list[E2E],
    quick: bool,
    store: Path,
    workdir: Path,
    model: Path,
    check: int,
    sampler_on: bool,
    fallback: bool = False,
) -> None:
    """Run the e2e runs of one threads-per-worker setting on one cluster (started and warmed)."""
    from s2v_batch.core.config import ScoreConfig
    from s2v_batch.pipeline.cluster import open_client
    from s2v_batch.scoring.driver import get_predictor, score

    keras_path = str(Path(model).with_suffix(".keras"))  # the path score() gives the workers

    def warm(path: str, batch: int, mixed: bool) -> None:
        # Load and trace both compiled shapes (full batch and the 1/8 tail) before the clock.
        get_predictor(path, batch, mixed).predict(
            np.zeros((batch + batch // 8, 51, 51, 3), np.uint8)
        )

    t0 = time.perf_counter()
    spec = cluster_spec(quick, runs[0].threads, fallback)
    with open_client(spec) as client:
        client.wait_for_workers(1)
        log(f"cluster up: {spec.name}, {len(client.scheduler_info()['workers'])} worker(s)")
        for r in runs:
            client.run(warm, keras_path, r.batch, r.mixed)
            r.start_warm = time.perf_counter() - t0
            out = workdir / f"scores-{r.threads}-{r.batch}-{r.part}-{int(r.mixed)}"
            shutil.rmtree(out, ignore_errors=True)
            cfg = ScoreConfig(batch_size=r.batch, part_stamps=r.part, mixed_precision=r.mixed)
            try:
                with GpuSampler(sampler_on) as smp:
                    t1 = time.perf_counter()
                    s = score(
                        store,
                        out,
                        client,
                        model_path=model,
                        night=r.night,
                        config=cfg,
                        progress=False,
                        log=log,
                    )
                    r.seconds = time.perf_counter() - t1
                r.n, r.busy, r.mem = s.n_stamps, smp.busy_text(), smp.mem_text()
                log(f"e2e {r.label}: {s.line()}")
                r.scores = first_scores(out, check)
            finally:
                shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()  # the next run on this cluster only warms


def first_scores(scores_root: Path, k: int) -> np.ndarray:
    """Scores of stamp_id 0..k-1 from a Parquet scores root."""
    import pyarrow.parquet as pq

    t = pq.read_table(scores_root, columns=["stamp_id", "score"], filters=[("stamp_id", "<", k)])
    ids = np.asarray(t["stamp_id"])
    sc = np.asarray(t["score"].to_numpy(zero_copy_only=False), dtype=np.float32)
    out = np.full(k, np.nan, np.float32)
    out[ids] = sc
    return out


_REF_CODE = """
import sys
import numpy as np, zarr
from s2v_batch.model import Predictor
model, night, k, batch, out = sys.argv[1:6]
x = zarr.open_group(night, mode="r")["stamps"][: int(k)]
np.save(out, Predictor(model, batch_size=int(batch)).predict(x))
"""


def reference_scores(
    model: Path, night: Path, k: int, batch: int, out: Path, env: dict[str, str]
) -> tuple[np.ndarray | None, str]:
    """fp32 ``Predictor.predict`` of the first ``k`` stamps in a fresh process with ``env``
    (e.g. ``JAX_PLATFORMS=cpu``): a reference the GPU process cannot give itself."""
    root = str(Path(__file__).resolve().parent.parent)
    pp = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), root) if p)
    t0 = time.perf_counter()
    try:
        subprocess.run(
            [sys.executable, "-c", _REF_CODE, str(model), str(night), str(k), str(batch), str(out)],
            env={**os.environ, "PYTHONPATH": pp, **env},
            check=True,
            timeout=300,
            capture_output=True,
            text=True,
        )
        return np.load(out), f"{time.perf_counter() - t0:.0f} s"
    except subprocess.CalledProcessError as exc:
        return None, f"failed: {exc.stderr.strip().splitlines()[-1:]}"
    except Exception as exc:
        return None, f"failed: {exc!r}"[:200]
    finally:
        out.unlink(missing_ok=True)


def spec_yaml(path: Path, quick: bool, threads: int) -> Path:
    """A cluster YAML like the project's with ``threads`` per worker (for the CLI line)."""
    import yaml

    spec = cluster_spec(quick, threads)
    data = {"kind": spec.kind, "options": spec.options, "worker_env": spec.worker_env}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Defaults are for a GPU; --quick (automatic without one) shrinks every size.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes on the CPU with a LocalCluster (a check of the script)",
    )
    p.add_argument("--model", type=Path, help="model .keras or .json (default: the shipped one)")
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/s2v-bench-gpu"),
        help="temporary store and scores (default /tmp/s2v-bench-gpu)",
    )
    p.add_argument("--out", type=Path, help="also write the Markdown here")
    p.add_argument("--stamps", type=int, help="stamps in the large night (GPU default 1,000,000)")
    p.add_argument("--shard-stamps", type=int, help="shard of the large night (default 16384)")
    p.add_argument(
        "--defaults-stamps",
        type=int,
        help="stamps in the night scored with the shipped defaults (default 262144; "
        "0 skips that run)",
    )
    p.add_argument(
        "--writers",
        type=int,
        default=os.cpu_count() or 1,
        help="threads writing the store (default: one per core)",
    )
    p.add_argument("--matmul-size", type=int, help="matrix edge (default 8192)")
    p.add_argument("--batches", type=int, nargs="+", help="batch sizes (default 1024 4096 16384)")
    p.add_argument(
        "--host-stamps", type=int, help="stamps per timed Predictor.predict call (default 65536)"
    )
    p.add_argument("--data-stamps", type=int, help="stamps read per data-path run (default 262144)")
    p.add_argument(
        "--blocks", type=int, nargs="+", help="data-path blocks (default 2048 8192 32768)"
    )
    p.add_argument("--readers", type=int, help="concurrent readers (default 8)")
    p.add_argument(
        "--threads",
        type=int,
        nargs="+",
        help="threads per worker to sweep end to end (default 2 4 8)",
    )
    p.add_argument("--e2e-batch", type=int, help="batch size end to end (default 4096)")
    p.add_argument("--part-stamps", type=int, help="stamps per task end to end (default 32768)")
    p.add_argument("--check-stamps", type=int, help="stamps compared in table 6 (default 4096)")
    p.add_argument("--repeats", type=int, help="timed runs per figure, best kept (default 3)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=0.0,
        help="skip end-to-end runs that would start after this many seconds (0: no limit)",
    )
    a = p.parse_args(argv)
    return a


def defaults(a: argparse.Namespace, quick: bool) -> argparse.Namespace:
    """Fill the unset sizes: the GPU's, or tiny ones for the CPU check."""
    big = dict(
        stamps=1_000_000,
        shard_stamps=16384,
        defaults_stamps=262144,
        matmul_size=8192,
        batches=[1024, 4096, 16384],
        host_stamps=65536,
        data_stamps=262144,
        blocks=[2048, 8192, 32768],
        readers=8,
        threads=[2, 4, 8],
        e2e_batch=4096,
        part_stamps=32768,
        check_stamps=4096,
        repeats=3,
    )
    tiny = dict(
        stamps=2048,
        shard_stamps=1024,
        defaults_stamps=1024,
        matmul_size=512,
        batches=[64, 256],
        host_stamps=512,
        data_stamps=2048,
        blocks=[256, 1024],
        readers=2,
        threads=[1, 2],
        e2e_batch=256,
        part_stamps=1024,
        check_stamps=256,
        repeats=2,
    )
    for k, v in (tiny if quick else big).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    # The e2e batch sizes are measured in table 2 too, for the ratios of table 5 (on the CPU
    # check the shipped batch of 512 is left out: too slow there).
    want = {a.e2e_batch} | (set() if quick or not a.defaults_stamps else {512})
    a.batches = sorted({*a.batches, *want})
    a.check_stamps = min(a.check_stamps, a.stamps)
    a.data_stamps = min(a.data_stamps, a.stamps)
    return a


def _platform() -> str:
    """JAX's default platform: "gpu" on a CUDA machine, "cpu" without one."""
    import jax

    return jax.devices()[0].platform


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    import jax

    quick = a.quick or _platform() == "cpu"
    a = defaults(a, quick)
    import keras

    if keras.backend.backend() != "jax":
        raise SystemExit("bench_gpu.py measures the JAX path: run it with KERAS_BACKEND=jax")
    from s2v_batch.model import Predictor, count_flops, default_model_path, load_artifact

    model_path = Path(a.model) if a.model else default_model_path()
    min_s = 0.05 if quick else 0.3
    rep = Report(a.out)
    info = machine(quick)
    cmd = "python benchmarks/bench_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv)
    card_name = f"{info['platform']} ({info['device_kind']})"
    if info["nvml"] and "unavailable" not in info["nvml"]:
        card_name = info["nvml"]
    rep.add(
        f"# GPU path of s2v score (issue 6): {card_name}",
        "",
        f"`{cmd.strip()}` on {platform.node()}, {time.strftime('%Y-%m-%d %H:%M')}; "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; JAX device "
        f"{info['platform']} '{info['device_kind']}' (x{info['n_devices']}); Keras "
        f"{info['keras']} ({info['backend']}); {info['versions']}.",
        "",
    )
    if quick:
        rep.add(
            "**Quick check on the CPU (no GPU here, or --quick): tiny sizes, LocalCluster, "
            "no NVML. These numbers measure nothing; they show the script runs.**",
            "",
        )

    log("simulating stamps")
    u8, labels = simulated_u8(min(a.stamps, 500 if quick else 5000))

    # ---- 1. matmul
    log("table 1: matmul")
    mm = matmul_rates(a.matmul_size, a.repeats, min_s)
    rep.add(
        f"## 1. Matrix rate of the card ({a.matmul_size}x{a.matmul_size} `jax.numpy` "
        f"product, 2n^3 FLOP, best of {a.repeats})",
        "",
        "float32 at XLA's default precision may run on TF32 tensor cores (as the model's "
        "float32 convolutions do); 'highest' is true float32.",
        "",
    )
    rep.table(["dtype", "TFLOP/s"], [[k, _tf(v)] for k, v in mm.items()], "lr")

    # ---- 2. compiled call on device arrays
    raw_model, card = load_artifact(model_path)
    flops = count_flops(raw_model)
    x_host = tiled(u8, 0, max(a.batches))
    refs = {False: "float32 (default precision)", True: "bfloat16"}
    compiled: dict[tuple[bool, int], float] = {}
    rows = []
    log("table 2: compiled call on device arrays")
    preds = {
        mp: Predictor.from_model(raw_model, card, batch_size=a.e2e_batch, mixed_precision=mp)
        for mp in (False, True)
    }
    calls = {}
    for mp in (False, True):
        call = calls[mp] = device_call(preds[mp].model)
        for bs in a.batches:
            xd = jax.device_put(x_host[:bs])
            best, med = measure(lambda c=call, x=xd: c(x), bs, a.repeats, min_s)
            compiled[(mp, bs)] = best
            tflops = best * flops / 1e12
            ref = mm[refs[mp]]
            rows.append(
                [
                    "bf16 (mixed)" if mp else "fp32",
                    bs,
                    f"{best:,.0f}",
                    f"{med:,.0f}",
                    f"{1e3 * bs / best:.2f}",
                    _tf(tflops),
                    f"{100 * tflops / ref:.1f}% of {refs[mp]}",
                ]
            )
            log(f"compiled {'bf16' if mp else 'fp32'} batch {bs}: {best:,.0f} stamps/s")
            del xd
    rep.add(
        "## 2. Compiled model call on uint8 stamps already on the device",
        "",
        f"Model {card.name}-{card.version} ({model_path.name}), "
        f"`count_flops` = {flops / 1e6:.1f} MFLOP a stamp (convolutions and dense layers; a "
        "multiply-add counts as 2 FLOP, as the matrix rate does; normalisation, bias, "
        "activations and pooling not counted). The Predictor's `jax.jit` of "
        "`model.stateless_call` (BatchNorm folded), timed back to back, waiting on the last "
        f"result only; best (median) of {a.repeats}.",
        "",
    )
    rep.table(
        [
            "precision",
            "batch",
            "stamps/s (best)",
            "stamps/s (median)",
            "ms a batch",
            "TFLOP/s",
            "of the matrix rate",
        ],
        rows,
        "lrrrrrl",
    )

    # ---- 3. Predictor.predict on host arrays
    log("table 3: Predictor.predict on host numpy arrays")
    rows = []
    for mp in (False, True):
        for bs in a.batches:
            pred = Predictor.from_model(raw_model, card, batch_size=bs, mixed_precision=mp)
            n = max(a.host_stamps, bs) // bs * bs
            xh = tiled(u8, 0, n)
            best, med = measure(lambda p=pred, x=xh: p.predict(x), n, a.repeats, min_s)
            piped, _ = measure(
                lambda c=calls[mp], x=xh, bs=bs: pipelined(c, x, bs), n, a.repeats, min_s
            )
            comp = compiled[(mp, bs)]
            rows.append(
                [
                    "bf16 (mixed)" if mp else "fp32",
                    bs,
                    n,
                    f"{best:,.0f}",
                    f"{med:,.0f}",
                    f"{best / comp:.2f}",
                    f"{piped:,.0f}",
                    f"{piped / comp:.2f}",
                ]
            )
            log(
                f"predict {'bf16' if mp else 'fp32'} batch {bs}: {best:,.0f} stamps/s "
                f"(bare {piped:,.0f})"
            )
            del pred, xh
    rep.add(
        "## 3. `Predictor.predict` on host numpy arrays (what a scoring task calls)",
        "",
        "uint8 stamps in host memory. `Predictor.predict` checks them, cuts them into "
        "batches (copied contiguous), dispatches every batch to the compiled call (JAX "
        "copies each to the device and runs it asynchronously) and then reads every result "
        "back. 'Bare': the same compiled call on the same host batches, all dispatched, "
        "then read back, without predict's checks and copies: the overhead of predict "
        "itself is the gap between the two.",
        "",
    )
    rep.table(
        [
            "precision",
            "batch",
            "stamps a call",
            "predict stamps/s (best)",
            "predict (median)",
            "ratio to table 2",
            "bare stamps/s",
            "ratio to table 2",
        ],
        rows,
        "lrrrrrrr",
    )

    # ---- the store, made once (tables 4 to 6; after 1 to 3, which do without it)
    a.workdir.mkdir(parents=True, exist_ok=True)
    store = a.workdir / "store"
    log(f"writing the night: {a.stamps} stamps, shard {a.shard_stamps}")
    night, how = make_night(store, NIGHT, a.stamps, u8, labels, a.shard_stamps, 256, a.writers)
    rep.add("## The store (for tables 4 to 6)", "")
    rep.add(
        f"Night {SEASON}/{NIGHT}, {a.stamps:,} uint8 stamps tiling {len(u8):,} "
        f"simulated ones, shards of {a.shard_stamps:,} stamps, inner chunks of 256, zstd "
        f"level 1 (the project's store code): {how}."
    )
    if a.defaults_stamps:
        from s2v_batch.store.dataset import DEFAULT_CHUNK_STAMPS, DEFAULT_SHARD_STAMPS

        _, how2 = make_night(
            store,
            NIGHT_DEFAULTS,
            a.defaults_stamps,
            u8,
            labels,
            DEFAULT_SHARD_STAMPS,
            DEFAULT_CHUNK_STAMPS,
            a.writers,
        )
        rep.add(
            f"Night {SEASON}/{NIGHT_DEFAULTS} for the shipped-defaults run: "
            f"{a.defaults_stamps:,} stamps in the ingest's default shards "
            f"({DEFAULT_SHARD_STAMPS} stamps, chunks of {DEFAULT_CHUNK_STAMPS}): {how2}."
        )
    rep.add("")

    # ---- 4. data path
    log("table 4: data path")
    rows = []
    n_read = a.data_stamps
    for readers in sorted({1, a.readers}):
        for block in a.blocks:
            r_read = data_path(night, n_read, block, readers, to_gpu=False)
            r_put = data_path(night, n_read, block, readers, to_gpu=True)
            mib = r_read * u8[0].nbytes / 2**20
            rows.append([readers, block, f"{r_read:,.0f}", f"{mib:,.0f}", f"{r_put:,.0f}"])
            log(f"data path {readers} reader(s), block {block}: {r_read:,.0f} / {r_put:,.0f}")
    rep.add(
        "## 4. Data path alone: Zarr read + zstd decode, then copy to the device",
        "",
        f"The first {n_read:,} stamps of the large night, split evenly among the readers "
        "(threads of one process); each reader iterates `prefetched_blocks` over its range "
        "(the next block decoded in a background thread, as a scoring task does). The shard "
        "files were just written, so they come from the page cache: this is decode, not "
        "disk. Raw MiB/s counts decoded bytes (7,803 a stamp).",
        "",
    )
    rep.table(
        [
            "readers",
            "block (stamps)",
            "read + decode stamps/s",
            "raw MiB/s",
            "+ device_put stamps/s",
        ],
        rows,
        "rrrrr",
    )

    # ---- 5. end to end
    log("table 5: end to end")
    runs_by_t: list[list[E2E]] = [
        [E2E("threads sweep", t, a.e2e_batch, a.part_stamps, False, NIGHT)] for t in a.threads
    ]
    from s2v_batch.core.config import ScoreConfig
    from s2v_batch.pipeline.cluster import load_spec

    shipped = ScoreConfig()
    yaml_threads = int(load_spec(None if quick else "cuda").options.get("threads_per_worker", 1))
    if a.defaults_stamps:
        d = E2E(
            f"shipped defaults (ScoreConfig(), {'local' if quick else 'cuda'}.yaml as is)",
            yaml_threads,
            shipped.batch_size,
            shipped.part_stamps,
            False,
            NIGHT_DEFAULTS,
        )
        for g in runs_by_t:
            if g[0].threads == yaml_threads:
                g.append(d)
                break
        else:
            runs_by_t.append([d])
    done: list[E2E] = []
    state: dict[str, str | None] = {"fallback": None}
    sampler_on = not quick and info["nvml"] is not None and "unavailable" not in info["nvml"]

    def go(group: list[E2E]) -> None:
        if a.budget_s and time.perf_counter() - T_START > a.budget_s:
            for r in group:
                r.skipped = f"skipped: past --budget-s {a.budget_s:.0f}"
            done.extend(group)
            log(f"skipping e2e threads={group[0].threads}: time budget spent")
            return
        try:
            run_group(
                group,
                quick,
                store,
                a.workdir,
                model_path,
                a.check_stamps,
                sampler_on,
                fallback=bool(state["fallback"]),
            )
        except Exception as exc:  # report it in the table, keep going to the next setting
            started = any(not math.isnan(r.start_warm) for r in group)
            if not quick and not state["fallback"] and not started:
                # The cluster itself did not start (dask-cuda, CUDA bindings): measure the same
                # scoring on a one-worker LocalCluster instead, and say so.
                state["fallback"] = f"{type(exc).__name__}: {exc}"[:300]
                log(f"LocalCUDACluster failed ({exc!r}); falling back to a LocalCluster")
                go(group)
                return
            for r in group:
                if not r.n:
                    r.skipped = f"failed: {type(exc).__name__}: {exc}"[:200]
            log(f"e2e threads={group[0].threads} failed: {exc!r}")
        done.extend(group)

    for g in runs_by_t:
        go(g)
    sweep = [r for r in done if r.label == "threads sweep" and r.n]
    best_t = max(sweep, key=lambda r: r.rate).threads if sweep else a.threads[0]
    go([E2E("mixed precision (bf16)", best_t, a.e2e_batch, a.part_stamps, True, NIGHT)])

    rows = []
    for r in done:
        comp = compiled.get((r.mixed, r.batch))
        ratio = f"{r.rate / comp:.2f}" if comp and r.n else "-"
        if r.skipped:
            rows.append(
                [r.label, r.threads, r.batch, r.part, "-", "-", "-", "-", "-", "-", r.skipped]
            )
            continue
        rows.append(
            [
                r.label,
                r.threads,
                r.batch,
                r.part,
                f"{r.n:,}",
                f"{r.seconds:.1f}",
                f"**{r.rate:,.0f}**",
                ratio,
                r.busy,
                r.mem,
                f"{r.start_warm:.1f}",
            ]
        )
    kind = (
        "LocalCluster (default local spec, 1 worker)"
        if quick
        else ("dask_cuda.LocalCUDACluster from cluster/cuda.yaml (one worker per GPU)")
    )
    if state["fallback"]:
        kind = (
            f"**The LocalCUDACluster did not start ({state['fallback']}): these runs used "
            "a LocalCluster of one worker with cuda.yaml's environment (JAX on the GPU)**"
        )
    rep.add(
        "## 5. End to end: `s2v score` (Zarr -> Parquet) on the project's cluster spec",
        "",
        f"{kind}, `threads_per_worker` overridden; `scoring.score()` timed from the call to "
        "the published night (graph, tasks, Parquet parts, atomic publish); the model is "
        "loaded and both compiled shapes traced on every worker before the clock starts "
        "('start + warm-up': cluster start and that warm-up, or the warm-up alone for a "
        "second run on the same cluster). GPU busy: NVML utilisation (share of time a "
        "kernel ran), mean of samples every 0.1 s during the run (count in brackets); GPU "
        "MiB: peak memory used on the card, every process. Ratio: to the compiled call on "
        "device arrays at the same batch and precision (table 2).",
        "",
    )
    rep.table(
        [
            "run",
            "threads/worker",
            "batch",
            "part_stamps",
            "stamps",
            "s",
            "stamps/s",
            "ratio to compiled call",
            "GPU busy",
            "peak GPU MiB",
            "start + warm-up s",
        ],
        rows,
        "lrrrrrrrrrr",
    )
    best = max((r for r in done if r.n and r.night == NIGHT), key=lambda r: r.rate, default=None)
    cli = f"KERAS_BACKEND=jax python3 -m s2v_batch.cli.main score {store} --out {a.workdir / 'scores'}"
    lines = ["```bash"]
    if a.defaults_stamps:
        lines += [
            "# the shipped defaults (ScoreConfig(), cluster spec as is):",
            f"{cli} --night {NIGHT_DEFAULTS} --cluster {'local' if quick else 'cuda'}",
        ]
    if best is not None:
        lines += [
            f"# the fastest run above ({best.rate:,.0f} stamps/s); threads per worker come "
            "from the cluster spec"
        ]
        cluster = "local" if quick else "cuda"
        if best.threads != yaml_threads or quick:
            cl = spec_yaml(a.workdir / f"cluster-t{best.threads}.yaml", quick, best.threads)
            lines += [f"cat > {cl} <<'EOF'", cl.read_text().rstrip(), "EOF"]
            cluster = str(cl)
        lines.append(
            f"{cli} --night {NIGHT} --model {model_path} --batch-size {best.batch} "
            f"--part-stamps {best.part}{' --mixed-precision' if best.mixed else ''} "
            f"--cluster {cluster}"
        )
    rep.add(
        "The same runs as `s2v score` commands (`python3 -m s2v_batch.cli.main` where the package "
        "is not installed):",
        "",
        *lines,
        "```",
        "",
    )

    # ---- 6. correctness
    log("table 6: correctness")
    rows = []
    k = a.check_stamps
    import zarr

    xk = zarr.open_group(night, mode="r")["stamps"][:k]
    ref32 = Predictor.from_model(raw_model, card, batch_size=a.e2e_batch).predict(xk)
    ref16 = Predictor.from_model(
        raw_model, card, batch_size=a.e2e_batch, mixed_precision=True
    ).predict(xk)
    thr = card.threshold

    def row(name: str, got: np.ndarray | None, ref: np.ndarray | None, note: str = "") -> None:
        if got is None or ref is None:
            rows.append([name, k, "-", "-", "-", note or "run missing"])
            return
        d = np.abs(got.astype(np.float64) - ref)
        flips = int(((got >= thr) != (ref >= thr)).sum())
        nan = int(np.isnan(got).sum() + np.isnan(ref).sum())
        rows.append(
            [
                name,
                k,
                f"{np.nanmax(d):.2e}",
                f"{np.nanmean(d):.2e}",
                flips,
                "; ".join(x for x in (f"{nan} NaN", note) if x),
            ]
        )

    e32 = next((r.scores for r in done if r.label == "threads sweep" and r.n), None)
    e16 = next((r.scores for r in done if r.mixed and r.n), None)
    row("e2e fp32 (Parquet) vs Predictor.predict fp32 in this process", e32, ref32)
    row("e2e bf16 (Parquet) vs Predictor.predict bf16 in this process", e16, ref16)
    row("e2e bf16 vs e2e fp32", e16, e32 if e32 is not None else ref32)
    row("Predictor.predict bf16 vs fp32 (this process)", ref16, ref32)
    log("table 6: fp32 references in fresh processes")
    cpu, t_cpu = reference_scores(
        model_path, night, k, a.e2e_batch, a.workdir / "ref-cpu.npy", {"JAX_PLATFORMS": "cpu"}
    )
    hi, t_hi = reference_scores(
        model_path,
        night,
        k,
        a.e2e_batch,
        a.workdir / "ref-hi.npy",
        {"JAX_DEFAULT_MATMUL_PRECISION": "highest"},
    )
    row(
        "e2e fp32 vs Predictor.predict fp32 on the CPU (JAX_PLATFORMS=cpu process)", e32, cpu, t_cpu
    )
    row(
        "Predictor.predict fp32, precision 'highest' (JAX_DEFAULT_MATMUL_PRECISION process) "
        "vs on the CPU",
        hi,
        cpu,
        t_hi,
    )
    row("Predictor.predict fp32 default precision vs 'highest'", ref32, hi)
    rep.add(
        "## 6. Correctness",
        "",
        f"The first {k:,} stamps of the large night; candidate "
        f"flips: stamps on different sides of the card's threshold {thr:.4f}. The CPU and "
        "'highest' references run in fresh processes (JAX picks its platform and default "
        "precision at start-up): they show whether XLA's default float32 precision on the "
        "GPU (TF32) moves the scores, e.g. beyond tests/test_gpu.py's tolerances (1e-2 fp32, 5e-2 bf16).",
        "",
    )
    rep.table(
        ["comparison", "stamps", "max abs diff", "mean abs diff", "candidate flips", "notes"],
        rows,
        "lrrrrl",
    )
    log(f"done in {time.perf_counter() - T_START:.0f} s")
    failed = [r for r in done if r.skipped.startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
