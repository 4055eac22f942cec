"""Data for the benchmarks: simulated stamps as ingest stores them, nights written with the store's
own code, the process-tree memory sampler and the load average line every table carries.

Stamps come from the project's simulator: float32 as ingest stores FITS stamps (masked pixels
filled with the channel's median, :func:`s2v_batch.formats.decode.combine_channels`), uint8 as the survey's
GIFs hold them (the simulator's GIF scaling; GIF is lossless, so ingest stores exactly these).
A night of ``n`` stamps repeats a pool of at most ``pool`` distinct stamps (simulating is ~1.5 ms
a stamp); compression works per inner chunk of 256 stamps, so repeating a pool of thousands
changes nothing the benchmarks measure. Written shard by shard (bounded memory) with
:func:`s2v_batch.store.dataset.create_night` and :func:`s2v_batch.store.dataset.write_stamps`, the layout and
codecs ``s2v ingest`` gives a night.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # s2v_batch from this checkout

SEASON, NIGHT = "Y1", 20130901


def simulated_stamps(n: int, dtype: str, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distinct stamps ``(n, 51, 51, 3)`` of ``dtype`` (``uint8``/``float32``) and labels."""
    from s2v_batch.formats.decode import combine_channels
    from s2v_batch.sim.encoders import scale_u8
    from s2v_batch.sim.simulator import simulate_stamps

    rng = np.random.default_rng(seed)
    out, labels = [], []
    for i in range(0, n, 2048):
        b = simulate_stamps(min(2048, n - i), rng)
        if dtype == "uint8":
            px = np.stack(
                [scale_u8(b.pixels[..., c], ch) for c, ch in enumerate(("srch", "temp", "diff"))],
                axis=-1,
            )
        else:
            px = np.stack([combine_channels([s[..., c] for c in range(3)])[0] for s in b.pixels])
        out.append(px)
        labels.append(b.labels)
    return np.concatenate(out), np.concatenate(labels)


def pool_path(workdir: Path, dtype: str, n: int, seed: int = 3) -> Path:
    return Path(workdir) / f"pool-{dtype}-{n}-s{seed}.npz"


def stamp_pool(workdir: Path, dtype: str, n: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """:func:`simulated_stamps`, cached in ``workdir`` (simulating 40,000 stamps takes a minute)."""
    p = pool_path(workdir, dtype, n, seed)
    if p.is_file():
        with np.load(p) as z:
            return z["pixels"], z["labels"]
    px, lab = simulated_stamps(n, dtype, seed)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp.npz")
    np.savez(tmp, pixels=px, labels=lab)
    os.replace(tmp, p)
    return px, lab


def make_night(
    store_root: Path,
    n: int,
    dtype: str,
    *,
    workdir: Path,
    pool: int = 8192,
    float_encoding: str | None = None,
    seed: int = 3,
) -> Path:
    """A complete night of ``n`` stamps under ``store_root`` (reused when already there)."""
    from s2v_batch.core.config import IngestConfig
    from s2v_batch.store import dataset as zstore
    from s2v_batch.store import state as nightstate

    path = zstore.night_path(store_root, SEASON, NIGHT)
    if zstore.verify_night(path):
        return path
    cfg = IngestConfig(**({"float_encoding": float_encoding} if float_encoding else {}))
    px, lab = stamp_pool(workdir, dtype, min(n, pool), seed)
    reps = -(-n // len(px))
    labels = np.tile(lab, reps)[:n]
    partial = zstore.partial_path(path)
    partial.parent.mkdir(parents=True, exist_ok=True)
    zstore.create_night(
        partial,
        n_stamps=n,
        dtype=dtype,
        size=px.shape[1],
        stamp_id=np.arange(1, n + 1, dtype=np.int64),
        label=labels,
        masked_fraction=np.zeros(n, np.float32),
        season=SEASON,
        night=NIGHT,
        attrs={
            "n_quarantined": 0,
            nightstate.FINGERPRINT_ATTR: f"bench-{dtype}-{n}-{cfg.float_encoding}",
            "source_format": "fits" if dtype == "float32" else "gif",
        },
        shard_stamps=cfg.shard_stamps,
        chunk_stamps=cfg.chunk_stamps,
        float_encoding=cfg.float_encoding,
    )
    for start in range(0, n, cfg.shard_stamps):
        idx = np.arange(start, min(start + cfg.shard_stamps, n)) % len(px)
        zstore.write_stamps(partial, start, px[idx])
    from s2v_batch.core.fsutil import replace_dir

    replace_dir(partial, path)
    return path


def shipped_model() -> Path:
    """The model that ships with the package (space2vec, the demo's)."""
    from s2v_batch.model import default_model_path

    return Path(default_model_path())


def load_line() -> str:
    """The machine's load average now (every figure is read next to it)."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} on {os.cpu_count()} cores"


def process_tree(pid: int) -> list:
    """The process ``pid`` and all its descendants (psutil), or none once it has gone."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


class TreeMemory:
    """Samples the PSS of a process and all its descendants (every ``interval`` s) in a thread.

    PSS charges each shared page to the processes sharing it in equal parts, so the sum over a
    tree counts TensorFlow's libraries once, unlike a sum of RSS. ``peak`` is the largest sum seen.
    """

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        import psutil

        total = 0
        for p in process_tree(self.pid):
            try:
                total += p.memory_full_info().pss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M")
