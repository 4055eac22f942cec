"""The demo: simulate a small season, then run the nightly flow on each of its nights.

Everything lives under one work folder::

    WORKDIR/raw/Y1/<YYYYMMDD>/...      simulated stamps: gif files, the last night as tar archives
    WORKDIR/raw/autoscan_features.3.csv
    WORKDIR/store/                     Zarr datasets, one per night
    WORKDIR/scores/                    hive-partitioned Parquet scores
    WORKDIR/reports/index.html         per-season and per-night reports

Running the demo again on the same folder reuses the simulated stamps and Prefect's cache: every
step of every night comes back ``cached`` and nothing is recomputed.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

from s2v_flows.nightly import FlowInputError, dask_cluster, nightly_flow

#: The demo's season (its first night is the simulator's start of DES Y1).
DEMO_SEASON = "Y1"
_MARKER = ".s2v-demo.json"


class DemoError(FlowInputError):
    """Demo arguments or a work folder that cannot be used."""


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DemoError(f"{name} must be an integer between {low} and {high}, got {value!r}")
    return value


def pack_night_as_tar(night_dir: str | os.PathLike[str]) -> list[Path]:
    """Replace each folder of loose stamp files in a night by one tar archive of them.

    The survey distributes stamps as tar archives: ``<night>/<name>.tar`` with members
    ``<name>/{srch,temp,diff}<ID>.gif``, the layout ingest reads without unpacking.

    Returns
    -------
    list of pathlib.Path
        The archives written.
    """
    night_dir = Path(night_dir)
    archives = []
    for sub in sorted(p for p in night_dir.iterdir() if p.is_dir()):
        dest = night_dir / f"{sub.name}.tar"
        tmp = night_dir / f".{sub.name}.tar.partial"
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
            for f in sorted(sub.iterdir()):
                tf.add(f, arcname=f"{sub.name}/{f.name}", recursive=False)
        os.replace(tmp, dest)
        shutil.rmtree(sub)
        archives.append(dest)
    return archives


def _simulate(raw: Path, nights: int, stamps_per_night: int, seed: int) -> list[int]:
    """Simulate the season into ``raw`` (or reuse it when the same demo made it before)."""
    from s2v_batch.simulator import simulate

    want = {
        "season": DEMO_SEASON,
        "nights": nights,
        "stamps_per_night": stamps_per_night,
        "seed": seed,
    }
    marker = raw / _MARKER
    if raw.exists():
        try:
            have = json.loads(marker.read_text())
        except (OSError, ValueError):
            raise DemoError(
                f"{raw} exists and was not written by the demo; choose another work folder"
            ) from None
        if have.get("params") == want and have.get("state") == "ready":
            return [int(n) for n in have["nights"]]
        # The demo's own raw data of other parameters (or half written): start again.
        shutil.rmtree(raw)
    raw.mkdir(parents=True)
    marker.write_text(json.dumps({"params": want, "state": "simulating"}))
    sim = simulate(
        raw,
        season=DEMO_SEASON,
        nights=nights,
        stamps_per_night=stamps_per_night,
        fmt="gif",
        seed=seed,
    )
    if len(sim.nights) > 1:
        # Show both raw layouts: loose gif files, and (the last night) tar archives.
        pack_night_as_tar(raw / DEMO_SEASON / str(sim.nights[-1]))
    marker.write_text(json.dumps({"params": want, "state": "ready", "nights": sim.nights}))
    return list(sim.nights)


def run_demo(
    workdir: str | os.PathLike[str],
    *,
    nights: int = 2,
    stamps_per_night: int = 2000,
    seed: int = 7,
    cluster: str | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """Simulate a season of ``nights`` nights and run the nightly flow on each.

    Parameters
    ----------
    workdir : path
        Work folder (created); ``raw``, ``store``, ``scores`` and ``reports`` go in it.
    nights : int
        Nights to simulate (1 to 30); with two or more, the last one is written as tar archives.
    stamps_per_night : int
        Stamps a night (1 to 200,000).
    seed : int
        Simulation seed.
    cluster : str, optional
        Dask cluster spec or scheduler address; default: a LocalCluster on 127.0.0.1, opened once
        for all nights.
    model : str, optional
        Model artifact; default: the demo model shipped with the package.

    Returns
    -------
    dict
        Paths (``workdir``, ``raw``, ``store``, ``scores``, ``reports``, ``index``), ``nights``
        (the nightly summaries), totals (``n_stamps``, ``n_stored``, ``n_quarantined``,
        ``n_candidates``), ``season`` (the season report's figures), ``seconds`` and ``line``.
    """
    t0 = time.perf_counter()
    _check_int("nights", nights, 1, 30)
    _check_int("stamps_per_night", stamps_per_night, 1, 200_000)
    _check_int("seed", seed, 0, 2**32 - 1)
    work = Path(workdir).expanduser()
    if work.exists() and not work.is_dir():
        raise DemoError(f"work folder {work} exists and is not a folder")
    paths = {name: work / name for name in ("raw", "store", "scores", "reports")}
    night_list = _simulate(paths["raw"], nights, stamps_per_night, seed)
    t_sim = time.perf_counter() - t0
    runs = []
    with dask_cluster(cluster) as address:
        for night in night_list:
            runs.append(
                nightly_flow(
                    raw=str(paths["raw"]),
                    night=night,
                    store=str(paths["store"]),
                    out=str(paths["scores"]),
                    reports=str(paths["reports"]),
                    model=model,
                    cluster=address,
                    season=DEMO_SEASON,
                )
            )
    last = runs[-1]
    figures = (last["report"] or {}).get("figures", {})
    totals = {
        "n_stamps": sum(r["ingest"]["n_found"] for r in runs),
        "n_stored": sum(r["ingest"]["n_stored"] for r in runs),
        "n_quarantined": sum(r["ingest"]["n_quarantined"] for r in runs),
        "n_candidates": sum(r["score"]["n_candidates"] for r in runs),
    }
    seconds = time.perf_counter() - t0
    cached = all(set(r["steps"].values()) == {"cached"} for r in runs)
    rf = figures.get("reduction_factor")
    line = (
        f"demo: {len(runs)} night(s) of season {DEMO_SEASON}, {totals['n_stamps']:,} stamps "
        f"({totals['n_quarantined']} quarantined), {totals['n_candidates']:,} candidates"
        + (f" (x{rf:.1f} fewer to scan)" if rf else "")
        + (" [everything cached from an earlier run]" if cached else "")
        + f"; {seconds:.0f} s ({t_sim:.0f} s simulating); report: {last['index']}"
    )
    return {
        "workdir": str(work),
        **{k: str(v) for k, v in paths.items()},
        "index": last["index"],
        "nights": runs,
        **totals,
        "season": figures,
        "model": last["model"],
        "seconds": round(seconds, 3),
        "line": line,
    }
