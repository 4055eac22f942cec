"""The demo: simulate a small season (``s2v_batch.sim.demo``), then run the nightly flow on each night.

Running the demo again on the same folder reuses the simulated stamps, and the library finds every
night stored, scored and reported: nothing is recomputed.
"""

from __future__ import annotations

import os
import time
from typing import Any

from s2v_batch.pipeline.cluster import open_client
from s2v_batch.sim import demo
from s2v_flows.nightly import nightly_flow


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
        Paths, ``nights`` (the nightly summaries), totals, ``season`` (the season report's
        figures), ``seconds`` and ``line`` (see :func:`s2v_batch.sim.demo.summary`).
    """
    t0 = time.perf_counter()
    data = demo.prepare(workdir, nights=nights, stamps_per_night=stamps_per_night, seed=seed)
    folders = {k: str(data.paths[k]) for k in ("raw", "store", "reports")}
    with open_client(cluster) as client:
        address = client.scheduler.address
        runs = [
            nightly_flow(
                night=night,
                out=str(data.paths["scores"]),
                model=model,
                cluster=address,
                season=demo.DEMO_SEASON,
                **folders,
            )
            for night in data.nights
        ]
    return demo.summary(data, runs, time.perf_counter() - t0)
