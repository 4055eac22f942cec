"""What a backfill costs when every night is already complete (issue 30): the plan's time a night,
and the whole ``s2v backfill`` that finds nothing to do, over N nights of 100 stamps.

    python benchmarks/bench_rerun.py --nights 1000 --stamps 100 --work /tmp/bench-rerun

The data are made once under WORK (simulate, ingest, score, and the reports of a first backfill:
minutes) and reused. Measured in the
same run: ``pipeline.plan`` (every night verified: its dataset, quarantine table, labels and
published manifest), ``s2v backfill --dry-run`` and ``s2v backfill`` end to end (process start,
Prefect, the plan, the summary), against the plain loop a user could write instead: one
``os.path.exists`` of each night's manifest (which checks nothing but that a file is there).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def make(work: Path, nights: int, stamps: int) -> None:
    from s2v_batch.pipeline import steps as pipeline
    from s2v_batch.pipeline.cluster import open_client
    from s2v_batch.sim.simulator import simulate

    raw = work / "raw"
    if not raw.exists():
        simulate(raw, season="Y1", nights=nights, stamps_per_night=stamps, seed=1, fmt="gif")
    inputs = pipeline.resolve_inputs(raw, work / "store", work / "scores", work / "reports")
    p = pipeline.plan(inputs)
    if p.todo:
        from s2v_batch.ingest.driver import ingest
        from s2v_batch.scoring.driver import score

        with open_client(None, work="score") as client:
            ingest(raw, work / "store", client, labels=inputs.labels, progress=True)
            score(work / "store", work / "scores", client, skip_complete=True, progress=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nights", type=int, default=1000)
    ap.add_argument("--stamps", type=int, default=100)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-rerun"))
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    make(a.work, a.nights, a.stamps)
    print(f"data ready in {time.perf_counter() - t0:.0f} s", flush=True)

    from s2v_batch.pipeline import steps as pipeline

    inputs = pipeline.resolve_inputs(
        a.work / "raw", a.work / "store", a.work / "scores", a.work / "reports"
    )
    rows = []
    for _ in range(a.repeat):
        t = time.perf_counter()
        p = pipeline.plan(inputs)
        plan_s = time.perf_counter() - t
        assert not p.todo, f"{len(p.todo)} nights not complete: {p.why()}"
        t = time.perf_counter()
        found = sum(
            os.path.exists(a.work / "scores" / "season=Y1" / f"night={n.night}" / "_manifest.json")
            for n in p.nights
        )
        loop_s = time.perf_counter() - t
        assert found == len(p.nights)
        rows.append((plan_s, loop_s))
    n = len(p.nights)
    env = {**os.environ, "S2V_LOG_DIR": str(a.work / "logs")}
    common = ["--raw", "raw", "--store", "store", "--out", "scores", "--reports", "reports"]
    if not (a.work / "reports" / "index.html").exists():  # setup: the reports, written once
        subprocess.run([sys.executable, "-m", "s2v_batch.cli", "backfill", *common],
                       cwd=a.work, env=env, capture_output=True, text=True, check=True)  # fmt: skip
    walls = {}
    for name, extra in (("dry-run", ["--dry-run"]), ("backfill", [])):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "s2v_batch.cli", "backfill", *common, *extra],
                           cwd=a.work, env=env, capture_output=True, text=True)  # fmt: skip
        walls[name] = time.perf_counter() - t
        last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr
        print(f"s2v backfill {' '.join(extra)}: {walls[name]:.1f} s: {last}", flush=True)
    best_plan = min(r[0] for r in rows)
    best_loop = min(r[1] for r in rows)
    print(f"{n} complete nights of {a.stamps} stamps")
    print(f"plan: {best_plan:.2f} s = {1000 * best_plan / n:.1f} ms a night (best of {a.repeat})")
    print(f"plain loop (manifest exists): {1000 * best_loop / n:.3f} ms a night")
    for name, w in walls.items():
        print(f"s2v backfill {name}: {w:.1f} s end to end = {1000 * w / n:.1f} ms a night")


if __name__ == "__main__":
    main()
