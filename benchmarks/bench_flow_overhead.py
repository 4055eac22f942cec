"""What Prefect and the flow add to a night: the nightly flow against the same library calls.

For each night size: simulate one night of raw stamps, then on one LocalCluster (opened once) time

- *direct*: ``ingest`` + ``score`` + ``write_reports`` called straight, on one client;
- *flow*: ``nightly_flow`` on the same raw night, attached to the same cluster (its tasks call
  the same library functions through ``s2v_batch.pipeline.steps``; planning walks the night's folder).

Two measures of the orchestration cost:

- *flow - direct*: the difference of the two runs' wall times. On a shared machine it carries the
  run-to-run noise of the compute itself (seconds on a minute-long night).
- *Prefect engine outside the flow body*: the flow's wall time minus the time its body reports.

Each measured run starts from empty outputs. Before measuring, a small night goes through both
paths once: the workers load the model and trace it, and Prefect's local server starts (its
start-up, paid once per process in ephemeral mode and never with a real server, is reported
apart). Runs alternate direct/flow (ABBA with --repeats 2) so neither side always runs first.

    python benchmarks/bench_flow_overhead.py                       # a small night, quick
    python benchmarks/bench_flow_overhead.py --stamps 10000 --repeats 2
    python benchmarks/bench_flow_overhead.py --stamps 100000 --no-direct   # the flow runs only

Prints a Markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

# Prefect reads its settings when first imported: set them first.
os.environ.setdefault("PREFECT_HOME", "/tmp/s2v-bench-prefect-home")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_raw(root: Path, n: int, fmt: str, seed: int) -> tuple[Path, int]:
    """One simulated night of ``n`` stamps under ``root`` (reused when already there)."""
    from s2v_batch.sim.simulator import simulate

    marker = root / ".bench.json"
    want = {"n": n, "fmt": fmt, "seed": seed}
    try:
        have = json.loads(marker.read_text())
        if have["params"] == want:
            return root, int(have["night"])
    except (OSError, ValueError, KeyError):
        pass
    shutil.rmtree(root, ignore_errors=True)
    sim = simulate(
        root, season="Y1", nights=1, stamps_per_night=n, fmt=fmt, seed=seed, stamps_per_archive=2000
    )
    marker.write_text(json.dumps({"params": want, "night": sim.nights[0]}))
    return root, sim.nights[0]


def make_model(out: Path) -> Path:
    """The shipped model, else an untrained space2vec artifact (the same compute per stamp)."""
    from s2v_batch.model import ModelArtifactError, default_model_path

    try:
        return default_model_path()
    except ModelArtifactError:
        pass
    from s2v_batch.model import ModelCard, build_model, save_artifact

    path = out / "bench-space2vec-1.keras"
    if path.is_file():
        return path
    card = ModelCard(
        name="bench-space2vec",
        version="1",
        architecture="space2vec",
        threshold=0.5,
        target_recall=0.99,
        training_data={"description": "untrained, for timing only", "simulated": True},
    )
    return save_artifact(build_model("space2vec"), card, out)


def fresh(base: Path) -> dict[str, Path]:
    """Empty output folders (store, scores, reports) under ``base``."""
    shutil.rmtree(base, ignore_errors=True)
    return {"store": base / "store", "out": base / "scores", "reports": base / "reports"}


def run_direct(raw: Path, night: int, out: dict[str, Path], model: Path, client) -> float:
    """The library calls the flow makes, straight on one client; wall seconds."""
    from s2v_batch.ingest.driver import ingest
    from s2v_batch.model import load_card
    from s2v_batch.report import write_reports
    from s2v_batch.scoring.driver import score

    labels = raw / "autoscan_features.3.csv"
    quiet = lambda s: None  # noqa: E731
    t = time.perf_counter()
    ingest(
        raw, out["store"], client, labels=labels, nights={("Y1", night)}, progress=False, log=quiet
    )
    score(
        out["store"], out["out"], client, model_path=model, season="Y1", night=night,
        skip_complete=True, progress=False, log=quiet,
    )  # fmt: skip
    write_reports(out["out"], out["reports"], season="Y1", model_card=load_card(model).to_dict())
    return time.perf_counter() - t


def run_flow(
    raw: Path, night: int, out: dict[str, Path], model: Path, address: str
) -> tuple[float, float]:
    """The nightly flow on the same night and cluster.

    Returns wall seconds and seconds inside the flow body.
    """
    from s2v_flows.nightly import nightly_flow

    t = time.perf_counter()
    res = nightly_flow(
        raw=str(raw), night=night, store=str(out["store"]), out=str(out["out"]),
        reports=str(out["reports"]), model=str(model), cluster=address, season="Y1",
    )  # fmt: skip
    wall = time.perf_counter() - t
    if "skipped" in res["steps"].values():
        raise RuntimeError(f"the flow did not do the whole night: {res['steps']}")
    return wall, float(res["seconds"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stamps", type=int, nargs="+", default=[2000], help="stamps a night (2000)")
    p.add_argument("--fmt", choices=["gif", "tar", "fits"], default="tar", help="raw layout (tar)")
    p.add_argument("--repeats", type=int, default=1, help="direct/flow pairs per size (default 1)")
    p.add_argument("--no-direct", action="store_true", help="only the flow runs (big nights)")
    p.add_argument("--workdir", default="/tmp/s2v-bench-flow", help="scratch (raw is reused)")
    p.add_argument("--seed", type=int, default=5)
    a = p.parse_args(argv)
    if min(a.stamps) < 1 or a.repeats < 1:
        p.error("--stamps and --repeats must be positive")

    from prefect import flow

    from s2v_batch.pipeline.cluster import open_client

    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = make_model(work / "model")
    warm_raw, warm_night = make_raw(work / "raw-warm", 600, a.fmt, a.seed + 1)
    rows = []
    with open_client(None) as client:
        address = client.scheduler.address
        n_workers = len(client.scheduler_info()["workers"])

        @flow
        def hello() -> int:
            return 1

        t = time.perf_counter()
        hello()  # starts Prefect's ephemeral server: once a process, never with a real server
        t_server = time.perf_counter() - t
        run_direct(warm_raw, warm_night, fresh(work / "out-warm-d"), model, client)
        run_flow(warm_raw, warm_night, fresh(work / "out-warm-f"), model, address)

        for n in a.stamps:
            t = time.perf_counter()
            raw, night = make_raw(work / f"raw-{n}", n, a.fmt, a.seed)
            print(f"[{n} stamps] raw ready in {time.perf_counter() - t:.0f} s", file=sys.stderr)
            direct: list[float] = []
            flow_wall: list[float] = []
            flow_body: list[float] = []
            for i in range(a.repeats):
                order = ("d", "f") if i % 2 == 0 else ("f", "d")
                for which in order:
                    if which == "d" and not a.no_direct:
                        d_out = fresh(work / f"out-{n}-d")
                        direct.append(run_direct(raw, night, d_out, model, client))
                    elif which == "f":
                        f_out = fresh(work / f"out-{n}-f")
                        w, b = run_flow(raw, night, f_out, model, address)
                        flow_wall.append(w)
                        flow_body.append(b)
                print(f"[{n}] direct {direct} flow {flow_wall}", file=sys.stderr)
            med = statistics.median
            d = med(direct) if direct else None
            rows.append((n, d, med(flow_wall), med(flow_body)))

    print(f"\n### Flow overhead ({a.fmt} nights, {platform.node() or 'this machine'})\n")
    print(
        f"{os.cpu_count()} cores, LocalCluster of {n_workers} worker(s), Prefect ephemeral mode "
        f"(server start-up {t_server:.1f} s, once a process, not counted); median of {a.repeats} "
        "run(s) each; every run from empty outputs.\n"
    )
    print(
        "| stamps | direct calls (s) | nightly flow (s) | flow - direct | "
        "Prefect engine outside the flow body (s) |"
    )
    print("|---:|---:|---:|---:|---:|")
    for n, d, f, b in rows:
        direct_s = "n/a" if d is None else f"{d:.1f}"
        diff = "n/a" if d is None else f"{f - d:+.1f} s ({100 * (f - d) / d:+.1f}%)"
        print(f"| {n:,} | {direct_s} | {f:.1f} | {diff} | {f - b:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
