"""How big a season's reports get: a season of N nights (default 200) reported with galleries.

Bytes, not time. Each night: ``--stamps`` simulated stamps in a Zarr store (``store.write_night``)
and label-dependent synthetic scores published through the sink with a manifest, as the scorer
publishes them (no model: scoring 200 nights here would take long and change no byte of the
report's size). Then ``write_reports(..., store=STORE)`` with the default ReportConfig, and:

- the season page's weight: ``report.html`` plus every image it loads;
- a night page's weight (the median over nights);
- the whole season folder (every night's JSON, HTML, plots and gallery) and its file count;
- the index page's weight.

    python benchmarks/report_size.py --nights 200 --stamps 60 --work /tmp/report-size
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa

from s2v_batch.report import write_reports
from s2v_batch.sim.simulator import simulate_stamps
from s2v_batch.store import dataset as zstore
from s2v_batch.store import publish
from s2v_batch.store import scores as sink


def page_weight(page: Path) -> int:
    """Bytes of a page and of every distinct image it loads (relative paths)."""
    text = page.read_text()
    srcs = set(re.findall(r"<img[^>]* src='([^']+)'", text))
    return len(text.encode()) + sum((page.parent / s).stat().st_size for s in srcs)


def build(work: Path, n_nights: int, n_stamps: int, seed: int) -> tuple[Path, Path]:
    store_root, scores = work / "store", work / "scores"
    rng = np.random.default_rng(seed)
    for i in range(n_nights):
        night = int(f"{2013 + (i // 120)}{9 + (i // 30) % 4:02d}{1 + i % 30:02d}")
        batch = simulate_stamps(n_stamps, rng, real_fraction=0.5)
        ids = (i + 1) * 1_000_000 + np.arange(n_stamps, dtype=np.int64)
        zstore.write_night(
            zstore.night_path(store_root, "Y1", night),
            batch.pixels,
            ids,
            batch.labels,
            season="Y1",
            night=night,
        )
        lab = batch.labels.astype(np.int8)
        score = np.clip(rng.beta(1 + 5 * lab, 3), 0, 1).astype(np.float32)
        run_id = uuid.uuid4().hex
        table = pa.table(
            {
                "stamp_id": ids,
                "score": score,
                "is_candidate": score >= np.float32(0.25),
                "threshold": np.full(n_stamps, 0.25, np.float32),
                "label": lab,
                "model_version": ["1"] * n_stamps,
                "model_sha256": ["0" * 64] * n_stamps,
                "run_id": [run_id] * n_stamps,
                "scored_at": pa.array([None] * n_stamps, pa.timestamp("us", tz="UTC")),
                "error": pa.array([None] * n_stamps, pa.string()),
            }
        )
        stage = sink.staging_dir(scores, "Y1", night, "k")
        stage.mkdir(parents=True, exist_ok=True)
        publish.write_part(sink.part_path(stage, 0, run_id), table)
        manifest = {"run_id": run_id, "model_sha256": "0" * 64, "n_stamps": n_stamps}
        publish.publish_night(stage, scores, "Y1", night, manifest)
    return store_root, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nights", type=int, default=200)
    ap.add_argument("--stamps", type=int, default=60, help="stamps a night")
    ap.add_argument("--work", default="/tmp/s2v-report-size")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    store_root, scores = build(work, a.nights, a.stamps, a.seed)
    out = work / "reports"
    print(write_reports(scores, out, store=store_root, simulated=True).line())
    season = out / "Y1"
    files = [p for p in season.rglob("*") if p.is_file()]
    nights = [page_weight(p) for p in season.glob("nights/*/report.html")]
    mib = 1024 * 1024
    print(
        "| nights | season page + its images | night page (median) | season folder | files | index |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {a.nights} | {page_weight(season / 'report.html') / mib:.2f} MiB "
        f"| {statistics.median(nights) / 1024:.0f} KiB "
        f"| {sum(p.stat().st_size for p in files) / mib:.1f} MiB | {len(files)} "
        f"| {page_weight(out / 'index.html') / 1024:.0f} KiB |"
    )


if __name__ == "__main__":
    main()
