"""The demo's data: a small simulated season written once into a work folder, and its summary.

Everything lives under one work folder::

    WORKDIR/raw/Y1/<YYYYMMDD>/...      simulated stamps: gif files, the last night as tar archives;
                                       the stream's mix (STREAM_REAL_FRACTION real, the rest artifacts)
    WORKDIR/raw/autoscan_features.3.csv
    WORKDIR/store/                     Zarr datasets, one per night
    WORKDIR/scores/                    hive-partitioned Parquet scores
    WORKDIR/reports/index.html         per-season and per-night reports

The raw folder carries a marker with the parameters that made it, so a second demo with the same
parameters reuses it (and the pipeline then skips every step), and a folder the demo did not write
is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The demo's season (its first night is the simulator's start of DES Y1).
DEMO_SEASON = "Y1"
_MARKER = ".s2v-demo.json"
_FOLDERS = ("raw", "store", "scores", "reports")


class DemoError(ValueError):
    """Demo arguments or a work folder that cannot be used."""


@dataclass(frozen=True)
class DemoData:
    """The demo's folders and the simulated nights."""

    work: Path
    paths: dict[str, Path]
    nights: list[int]
    seconds_simulating: float


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DemoError(f"{name} must be an integer between {low} and {high}, got {value!r}")
    return value


def prepare(
    workdir: str | os.PathLike[str], *, nights: int, stamps_per_night: int, seed: int
) -> DemoData:
    """Simulate the demo's season into ``WORKDIR/raw`` (or reuse the one the same demo made).

    Raises
    ------
    DemoError
        Bad arguments, or a work folder (or raw folder) that the demo did not write.
    """
    import time

    # deferred: scipy and pandas, only when the demo simulates
    from s2v_batch.sim.simulator import STREAM_REAL_FRACTION, pack_night_as_tar, simulate

    _check_int("nights", nights, 1, 30)
    _check_int("stamps_per_night", stamps_per_night, 1, 200_000)
    _check_int("seed", seed, 0, 2**32 - 1)
    work = Path(workdir).expanduser()
    if work.exists() and not work.is_dir():
        raise DemoError(f"work folder {work} exists and is not a folder")
    paths = {name: work / name for name in _FOLDERS}
    raw = paths["raw"]
    t0 = time.perf_counter()
    want = {"season": DEMO_SEASON, "nights": nights, "stamps_per_night": stamps_per_night,
            "seed": seed, "real_fraction": STREAM_REAL_FRACTION}  # fmt: skip
    marker = raw / _MARKER
    if raw.exists():
        try:
            have = json.loads(marker.read_text())
        except (OSError, ValueError):
            raise DemoError(
                f"{raw} exists and was not written by the demo; choose another work folder"
            ) from None
        if have.get("params") == want and have.get("state") == "ready":
            return DemoData(work, paths, [int(n) for n in have["nights"]], 0.0)
        shutil.rmtree(raw)  # the demo's own raw data of other parameters (or half written)
    raw.mkdir(parents=True)
    marker.write_text(json.dumps({"params": want, "state": "simulating"}))
    sim = simulate(
        raw, season=DEMO_SEASON, nights=nights, stamps_per_night=stamps_per_night, fmt="gif",
        seed=seed, real_fraction=STREAM_REAL_FRACTION,  # a night's stream: mostly artifacts
    )  # fmt: skip
    if len(sim.nights) > 1:
        # Show both raw layouts: loose gif files, and (the last night) tar archives.
        pack_night_as_tar(raw / DEMO_SEASON / str(sim.nights[-1]))
    marker.write_text(json.dumps({"params": want, "state": "ready", "nights": sim.nights}))
    return DemoData(work, paths, list(sim.nights), time.perf_counter() - t0)


def summary(data: DemoData, runs: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The demo's JSON-ready summary (from the nightly runs' summaries), with its ``line``."""
    last = runs[-1]
    figures = (last.get("report") or {}).get("figures", {})
    totals = {
        "n_stamps": sum(r["ingest"]["n_found"] for r in runs),
        "n_stored": sum(r["ingest"]["n_stored"] for r in runs),
        "n_quarantined": sum(r["ingest"]["n_quarantined"] for r in runs),
        "n_candidates": sum(r["score"]["n_candidates"] for r in runs),
    }
    nothing = all(set(r["steps"].values()) == {"skipped"} for r in runs)
    rf = figures.get("reduction_factor")
    line = (
        f"demo: {len(runs)} night(s) of season {DEMO_SEASON}, {totals['n_stamps']:,} stamps "
        f"({totals['n_quarantined']} quarantined), {totals['n_candidates']:,} candidates"
        + (f" (x{rf:.1f} fewer to scan)" if rf else "")
        + (" [everything done by an earlier run: nothing redone]" if nothing else "")
        + f"; {seconds:.0f} s ({data.seconds_simulating:.0f} s simulating); "
        f"report: {last['index']}"
    )
    return {
        "workdir": str(data.work),
        **{k: str(v) for k, v in data.paths.items()},
        "index": last["index"],
        "nights": runs,
        **totals,
        "season": figures,
        "model": last["model"],
        "seconds": round(seconds, 3),
        "line": line,
    }
