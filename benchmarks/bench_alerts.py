"""Alert ingest throughput (alerts/s per core) for one night's ZTF archive, against the naive loop.

The naive loop is how alert notebooks read an archive: stream the ``.tar.gz`` member by member,
open each Avro file with ``fastavro.reader``, and each of its three cut-outs with
``gzip.decompress`` and ``astropy.io.fits`` into one numpy array (one process, nothing stored).
``s2v ingest`` runs on a real LocalCluster of single-threaded workers: discovery, decoding,
validation, the kept alert fields, staging, Zarr writing and verification included. The naive
loop is timed again right before every ingest row (a shared machine drifts; a ratio is only fair
between neighbouring measurements).

A nightly archive is one gzip stream, read by one worker: the second worker helps only with
the other inputs (here: the same alerts as loose Avro files, dated from their detection times
on the client, which is part of the figure).

    python benchmarks/bench_alerts.py --alerts 20000 --workers 1 2     # the measurement
    python benchmarks/bench_alerts.py --quick                          # a dry run (seconds)
"""

from __future__ import annotations

import argparse
import gzip
import io
import platform
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

CUTOUTS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")


def plain_stamps(archive: Path) -> Iterator[np.ndarray]:
    """The plain loop: stream the archive; fastavro for each member, astropy for each cut-out;
    one ``(63, 63, 3)`` float32 stamp per alert, as it is read."""
    import fastavro
    from astropy.io import fits

    with tarfile.open(archive, mode="r|gz") as tf:
        for member in tf:
            if not member.isfile():
                continue
            for rec in fastavro.reader(tf.extractfile(member)):
                chans = []
                for field in CUTOUTS:
                    data = gzip.decompress(rec[field]["stampData"])
                    with fits.open(io.BytesIO(data)) as hdul:
                        chans.append(np.asarray(hdul[0].data, dtype=np.float32))
                yield np.stack(chans, axis=-1)


def naive_load(archive: Path) -> tuple[np.ndarray, float]:
    """The plain loop into one array, and its seconds (imports before the clock starts)."""
    import astropy.io.fits  # noqa: F401
    import fastavro  # noqa: F401

    t0 = time.perf_counter()
    arr = np.stack(list(plain_stamps(archive)))
    return arr, time.perf_counter() - t0


def run_ingest(raw: Path, workers: int) -> tuple[int, float]:
    """``s2v ingest`` on a fresh LocalCluster; return alerts stored and seconds."""
    from distributed import Client, LocalCluster

    from s2v_batch.ingest.driver import ingest
    from s2v_batch.pipeline.cluster import cpu_worker_env

    store = Path(tempfile.mkdtemp(prefix="bench-alert-store-"))
    try:
        with LocalCluster(
            n_workers=workers, threads_per_worker=1, host="127.0.0.1", dashboard_address=":0",
            env=cpu_worker_env(1),
        ) as cluster, Client(cluster) as client:  # fmt: skip
            client.run(lambda: None)  # workers up before the clock starts
            t0 = time.perf_counter()
            s = ingest(raw, store, client, progress=False)
            dt = time.perf_counter() - t0
        if s.n_quarantined:
            raise SystemExit(f"bench: {s.n_quarantined} alerts quarantined: {s.line()}")
        return s.n_stored, dt
    finally:
        shutil.rmtree(store, ignore_errors=True)


def simulate_once(base: Path, name: str, n: int, fmt: str) -> Path:
    from s2v_batch.sim.alerts import simulate_alerts

    out = base / name
    if not (out / "autoscan_features.3.csv").exists():
        shutil.rmtree(out, ignore_errors=True)
        simulate_alerts(out, survey="ztf", nights=1, alerts_per_night=n, fmt=fmt, seed=11)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--alerts", type=int, default=20000, help="alerts in the night (20000)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts")
    p.add_argument("--workdir", default=".bench/alerts", help="where simulated inputs are kept")
    p.add_argument(
        "--quick", action="store_true", help="dry run: 200 alerts, 1 worker, a scratch folder"
    )
    a = p.parse_args(argv)
    scratch = None
    if a.quick:
        a.alerts, a.workers = 200, [1]
        scratch = tempfile.mkdtemp(prefix="bench-alerts-quick-")
        a.workdir = scratch
    base = Path(a.workdir)
    base.mkdir(parents=True, exist_ok=True)
    try:
        archive_raw = simulate_once(base, f"archive-{a.alerts}", a.alerts, "archive")
        loose_raw = simulate_once(base, f"avro-{a.alerts}", a.alerts, "avro")
        archive = next(archive_raw.glob("ztf_public_*.tar.gz"))

        def naive_rate() -> float:
            arr, dt = naive_load(archive)
            assert arr.shape == (a.alerts, 63, 63, 3)
            return a.alerts / dt

        print(
            f"# alert ingest benchmark: {platform.node()} "
            f"{platform.processor() or platform.machine()}, python {sys.version.split()[0]}, "
            f"{time.strftime('%Y-%m-%d %H:%M')}; one night of {a.alerts} simulated ZTF alerts "
            f"({archive.stat().st_size / 2**20:.0f} MiB archive)"
        )
        print(f"naive loop (1 process, first timing): {naive_rate():,.0f} alerts/s\n")
        print(
            "| input | workers | alerts | seconds | alerts/s | alerts/s per core "
            "| naive alerts/s | ratio per core |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for label, raw in (("nightly archive", archive_raw), ("loose Avro files", loose_raw)):
            for w in a.workers:
                nrate = naive_rate()
                n, dt = run_ingest(raw, w)
                rate = n / dt
                print(
                    f"| {label} | {w} | {n} | {dt:.2f} | {rate:,.0f} | {rate / w:,.0f} | "
                    f"{nrate:,.0f} | {rate / w / nrate:.1f}x |",
                    flush=True,
                )
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
