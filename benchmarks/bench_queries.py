"""The queries users run on the Parquet scores, before and after nights were published as one file.

Synthetic score tables, written with the sink's own code: per night, parts of ``--part-rows``
rows through :func:`s2v_batch.store.publish.write_part` (the layout before: one file per scoring task,
published as they were), then the same nights merged with :func:`s2v_batch.store.publish.merge_parts` into
one file each, for each sort order and row-group size compared. Scores follow a two-humped
distribution like a classifier's (most artifacts near 0, reals near 1); stamp IDs are unique in
a season and increase with the night, as ingest assigns them. The queries, each the best of
``--repeats`` runs on a warm page cache (every call lists the dataset afresh, as a user's does):

- season: ``pandas.read_parquet(root, filters=[("season", "==", S)])``, every column;
- night: one night's ``stamp_id`` and ``score``;
- top candidates: ``score >= 0.99`` over every night, ``stamp_id`` and ``score``, the 1,000 best;
- one stamp: every column of ``stamp_id == X`` over every night;
- reports' read: :func:`s2v_batch.store.scores.read_scores` of a season, every column.

    python benchmarks/bench_queries.py --nights 1000 --rows 40000          # the issue's scale
    python benchmarks/bench_queries.py --nights 100 --rows 400000          # large nights
    python benchmarks/bench_queries.py --quick
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchdata as bd  # noqa: E402

SORTS = {
    "stamp_id": (("stamp_id", "ascending"),),
    "score": (("score", "descending"), ("stamp_id", "ascending")),
    "candidate, stamp_id": (("is_candidate", "descending"), ("stamp_id", "ascending")),
}


def night_table(season_i: int, night_i: int, rows: int, rng: np.random.Generator):
    import pyarrow as pa

    real = rng.random(rows) < 0.3
    score = np.where(real, rng.beta(8, 1.2, rows), rng.beta(1.2, 12, rows)).astype(np.float32)
    score[rng.random(rows) < 1e-4] = np.nan  # a few unscored stamps
    thr = np.float32(0.2545)
    valid = np.isfinite(score)
    first = (season_i + 1) * 10_000_000_000 + night_i * rows
    label = np.where(rng.random(rows) < 0.05, real.astype(np.int8), np.int8(-1))
    ts = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    return pa.table(
        {
            "stamp_id": pa.array(np.arange(first, first + rows), pa.int64()),
            "score": pa.array(score, pa.float32(), mask=~valid),
            "is_candidate": pa.array(valid & (score >= thr)),
            "threshold": pa.array(np.full(rows, thr)),
            "label": pa.array(label, pa.int8(), mask=label < 0),
            "model_version": pa.repeat(pa.scalar("space2vec-demo-1"), rows),
            "model_sha256": pa.repeat(pa.scalar("ee5c52266a90ec31" * 4), rows),
            "run_id": pa.repeat(pa.scalar(f"{season_i:04d}{night_i:028d}"), rows),
            "scored_at": pa.repeat(pa.scalar(ts, pa.timestamp("us", tz="UTC")), rows),
            "error": pa.array(np.where(valid, None, "non-finite pixels"), pa.string()),
        }
    )


def build(base: Path, nights: int, seasons: int, rows: int, part_rows: int, variants, seed: int):
    """The 'before' tree and one 'after' tree per variant (reused when complete)."""
    from s2v_batch.store import publish
    from s2v_batch.store import scores as sink

    done = base / "_complete"
    if done.is_file():
        return
    shutil.rmtree(base, ignore_errors=True)
    rng = np.random.default_rng(seed)
    per_season = -(-nights // seasons)
    t0 = time.perf_counter()
    for k in range(nights):
        s_i, n_i = divmod(k, per_season)
        season, night = f"Y{s_i + 1}", 20130901 + 10000 * s_i + n_i
        table = night_table(s_i, n_i, rows, rng)
        run_id = table["run_id"][0].as_py()
        before = sink.night_dir(base / "before", season, night)
        before.mkdir(parents=True)
        for i, a in enumerate(range(0, rows, part_rows)):
            publish.write_part(sink.part_path(before, i, run_id), table.slice(a, part_rows))
        parts = sorted(before.glob("part-*.parquet"))
        for name, sort, rg in variants:
            folder = sink.night_dir(base / name, season, night)
            folder.mkdir(parents=True)
            publish.merge_parts(parts, folder, run_id, sort=sort, row_group=rg)
        if k % 50 == 0:
            print(f"  built {k + 1}/{nights} nights ({time.perf_counter() - t0:.0f} s)", flush=True)
    done.write_text("ok")


def best(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def queries(root: Path, season: str, night: int, stamp: int, repeats: int) -> dict[str, float]:
    import pandas as pd

    from s2v_batch.store import scores as sink

    def top():
        df = pd.read_parquet(root, filters=[("score", ">=", 0.99)], columns=["stamp_id", "score"])
        return df.nlargest(1000, "score")

    out = {}
    qs = {
        "season": lambda: pd.read_parquet(root, filters=[("season", "==", season)]),
        "night": lambda: pd.read_parquet(
            root,
            filters=[("season", "==", season), ("night", "==", night)],
            columns=["stamp_id", "score"],
        ),
        "top candidates": top,
        "one stamp": lambda: pd.read_parquet(root, filters=[("stamp_id", "==", stamp)]),
        "read_scores(season)": lambda: sink.read_scores(root, season),
    }
    for name, fn in qs.items():
        out[name], _ = best(fn, repeats)
    return out


def tree_size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*.parquet")]
    return len(files), sum(p.stat().st_size for p in files)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--nights", type=int, default=1000)
    p.add_argument("--seasons", type=int, default=5)
    p.add_argument("--rows", type=int, default=40000, help="stamps a night")
    p.add_argument("--part-rows", type=int, default=2048, help="rows a part before (part_stamps)")
    p.add_argument("--row-groups", type=int, nargs="+", default=[131072, 1048576])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", default=".bench/queries")
    p.add_argument("--quick", action="store_true", help="40 nights of 20,000 rows")
    a = p.parse_args(argv)
    if a.quick:
        a.nights, a.rows, a.seasons, a.repeats = 40, 20000, 2, 2
    base = Path(a.workdir) / f"n{a.nights}-r{a.rows}-p{a.part_rows}-s{a.seasons}"
    variants = [
        (f"sorted by {name}, row groups {rg:,}", sort, rg)
        for name, sort in SORTS.items()
        for rg in a.row_groups
        if rg < a.rows or rg == a.row_groups[0]
    ]
    variants = [(n.replace(" ", "_").replace(",", ""), s, rg, n) for n, s, rg in variants]
    t0 = time.perf_counter()
    build(base, a.nights, a.seasons, a.rows, a.part_rows, [v[:3] for v in variants], seed=5)
    built = time.perf_counter() - t0
    per_season = -(-a.nights // a.seasons)
    season, night = "Y2" if a.seasons > 1 else "Y1", 20130901 + 10000 + per_season // 2
    if a.seasons == 1:
        night = 20130901 + per_season // 2
    stamp = 20_000_000_000 + (per_season // 2) * a.rows + a.rows // 3
    print(
        f"# Parquet queries: {a.nights:,} nights x {a.rows:,} rows ({a.nights * a.rows:,} rows) in "
        f"{a.seasons} seasons; {bd.now()}, {bd.load_line()}; trees built in {built:.0f} s\n"
        f"# command: python benchmarks/bench_queries.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}\n"
    )
    rows = []
    trees = [("before: one file per scoring task", base / "before")] + [
        (label, base / name) for name, _, _, label in variants
    ]
    for label, root in trees:
        nfiles, nbytes = tree_size(root)
        q = queries(root, season, night, stamp, a.repeats)
        rows.append((label, nfiles, nbytes, q))
        print(f"  {label}: {', '.join(f'{k} {v:.3f} s' for k, v in q.items())}", flush=True)
    names = list(rows[0][3])
    print("\n| layout | files | MB | " + " | ".join(f"{n} (s)" for n in names) + " |")
    print("|---|---:|---:|" + "---:|" * len(names))
    ref = rows[0][3]
    for label, nfiles, nbytes, q in rows:
        cells = [
            f"{q[n]:.3f}" + ("" if label.startswith("before") else f" ({ref[n] / q[n]:.1f}x)")
            for n in names
        ]
        print(f"| {label} | {nfiles:,} | {nbytes / 1e6:,.0f} | " + " | ".join(cells) + " |")
    print(f"\n({bd.load_line()} at the end; x: times faster than before)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
