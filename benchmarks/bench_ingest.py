"""Ingest throughput (stamps/s per core) against the naive loop, and worker memory as input grows.

The naive way is how the published notebooks load stamps: a Python loop opening each file with
PIL or astropy into one numpy array (one process, on the unpacked files: the baseline is not
charged for unpacking the archives). s2v ingest runs on a real LocalCluster of single-threaded
workers, discovery, decoding, staging, Zarr writing and verification included.

    python benchmarks/bench_ingest.py --stamps 6000 --memory-stamps 4000 40000
"""

from __future__ import annotations

import argparse
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def naive_load(raw: Path, ext: str) -> tuple[np.ndarray, float]:
    """The notebooks' loop: open every file, one by one, into one array."""
    from astropy.io import fits
    from PIL import Image

    t0 = time.perf_counter()
    out = []
    for diff in sorted(raw.rglob(f"diff*.{ext}")):
        sid = diff.name[4 : -len(ext) - 1]
        chans = []
        for ch in ("srch", "temp", "diff"):
            p = diff.with_name(f"{ch}{sid}.{ext}")
            if ext == "gif":
                chans.append(np.array(Image.open(p).convert("L")))
            else:
                chans.append(fits.getdata(p).astype(np.float32))
        out.append(np.stack(chans, axis=-1))
    arr = np.stack(out)
    return arr, time.perf_counter() - t0


def run_ingest(raw: Path, workers: int) -> tuple[int, float, list[int]]:
    """Ingest on a fresh LocalCluster; return stamps, seconds and each worker's peak RSS (bytes)."""
    from distributed import Client, LocalCluster

    from s2v_batch.ingest.driver import ingest
    from s2v_batch.pipeline.cluster import cpu_worker_env

    store = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        with (
            LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                host="127.0.0.1",
                dashboard_address=":0",
                env=cpu_worker_env(1),
            ) as cluster,
            Client(cluster) as client,
        ):
            client.run(lambda: None)  # workers up before the clock starts
            t0 = time.perf_counter()
            s = ingest(raw, store, client, progress=False)
            dt = time.perf_counter() - t0

            def peak() -> int:
                return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

            rss = sorted(client.run(peak).values())
        return s.n_stored, dt, rss
    finally:
        shutil.rmtree(store, ignore_errors=True)


def simulate_once(base: Path, name: str, n: int, **kw) -> Path:
    from s2v_batch.sim.simulator import simulate

    out = base / name
    if not (out / "autoscan_features.3.csv").exists():
        shutil.rmtree(out, ignore_errors=True)
        simulate(out, season="Y1", nights=1, stamps_per_night=n, seed=11, **kw)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--stamps", type=int, default=6000, help="stamps per format (default 6000)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts")
    p.add_argument(
        "--memory-stamps",
        type=int,
        nargs="*",
        default=[4000, 40000],
        help="tar night sizes for the peak-memory check (default 4000 40000)",
    )
    p.add_argument("--workdir", default=".bench/ingest", help="where simulated inputs are kept")
    a = p.parse_args(argv)
    base = Path(a.workdir)
    base.mkdir(parents=True, exist_ok=True)
    cases = [
        ("gif files", simulate_once(base, "gif", a.stamps, fmt="gif"), "gif"),
        ("fits files", simulate_once(base, "fits", a.stamps, fmt="fits"), "fits"),
        (
            "tar of gif",
            simulate_once(base, "tar-gif", a.stamps, fmt="tar", tar_member_format="gif"),
            "gif",
        ),
        (
            "tar of fits",
            simulate_once(base, "tar-fits", a.stamps, fmt="tar", tar_member_format="fits"),
            "fits",
        ),
    ]
    # The naive loop is timed again right before every ingest run: this VM's speed drifts by up
    # to 1.7x over minutes, and a ratio is only fair between neighbouring measurements.
    naive_dirs = {"gif": base / "gif", "fits": base / "fits"}

    def naive_rate(ext: str) -> float:
        return a.stamps / naive_load(naive_dirs[ext], ext)[1]

    print(
        f"# ingest benchmark: {platform.node()} {platform.processor() or platform.machine()}, "
        f"python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M')}"
    )
    print(
        f"naive loop (1 process, first timing): gif {naive_rate('gif'):,.0f} stamps/s, "
        f"fits {naive_rate('fits'):,.0f} stamps/s; each row's naive figure was timed just "
        "before it\n"
    )
    print(
        "| input | workers | stamps | seconds | stamps/s | stamps/s per core | naive stamps/s | ratio per core | peak RSS/worker |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, raw, ext in cases:
        for w in a.workers:
            nrate = naive_rate(ext)
            n, dt, rss = run_ingest(raw, w)
            rate = n / dt
            print(
                f"| {label} | {w} | {n} | {dt:.2f} | {rate:,.0f} | {rate / w:,.0f} | {nrate:,.0f} | "
                f"{rate / w / nrate:.1f}x | {max(rss) / 2**20:.0f} MiB |",
                flush=True,
            )
    if a.memory_stamps:
        print(
            "\n| tar of gif, stamps | workers | seconds | stamps/s | stamps/s per core | naive stamps/s | ratio per core to naive | peak RSS per worker (max) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for n in a.memory_stamps:
            raw = simulate_once(base, f"mem-{n}", n, fmt="tar", tar_member_format="gif")
            for w in a.workers:
                nrate = naive_rate("gif")
                got, dt, rss = run_ingest(raw, w)
                print(
                    f"| {got} | {w} | {dt:.1f} | {got / dt:,.0f} | {got / dt / w:,.0f} | {nrate:,.0f} | "
                    f"{got / dt / w / nrate:.1f}x | {max(rss) / 2**20:.0f} MiB |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
