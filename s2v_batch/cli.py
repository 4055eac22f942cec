"""The ``s2v`` command: simulate, ingest, train, score, report, and the Prefect flows (nightly, backfill, demo).

Library errors (bad arguments, bad input as a whole) print one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

EXAMPLES = """\
examples:
  s2v demo                                   # simulate, ingest, score and report two nights
  s2v simulate raw --season Y1 --nights 2 --stamps-per-night 1000 --format tar --seed 1
  s2v ingest raw --store store --labels raw/autoscan_features.3.csv
  s2v score store --out scores               # the shipped demo model
  s2v report scores --out reports
  s2v nightly --raw raw --night 20130901 --store store --out scores --reports reports

exit status: 0 done; 2 bad input or arguments (one line says which); 75 another process is
writing the same season or night and did not finish within the wait (run again later);
130 interrupted (run the same command again to resume).
"""


def _night(text: str) -> int:
    from .conventions import is_night

    if not is_night(text):
        raise argparse.ArgumentTypeError(f"night must be a date YYYYMMDD, got {text!r}")
    return int(text)


def _season(text: str) -> str:
    from .conventions import is_season

    if not is_season(text):
        raise argparse.ArgumentTypeError(f"season must look like SV, Y1, Y2 ..., got {text!r}")
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_cluster(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cluster",
        metavar="SPEC",
        help="Dask cluster spec: a YAML file, or the name of one in cluster/ (local, cuda, slurm, "
        "existing); default: a LocalCluster of one worker per core on 127.0.0.1",
    )


def _add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_lock_wait(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--lock-wait",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help=f"wait this long while another process writes the same {what}, then exit 75 "
        "(default 3600)",
    )


def _load_config(path: str | None):
    from .config import PipelineConfig

    return PipelineConfig.from_yaml(path) if path else PipelineConfig()


# --------------------------------------------------------------------------- commands


def cmd_simulate(a: argparse.Namespace) -> int:
    from .simulator import simulate

    s = simulate(
        a.out,
        season=a.season,
        nights=a.nights,
        stamps_per_night=a.stamps_per_night,
        fmt=a.format,
        seed=a.seed,
        size=a.size,
        first_night=a.first_night,
        stamps_per_archive=a.stamps_per_archive,
        real_fraction=a.real_fraction,
        progress=not a.no_progress,
    )
    print(
        f"simulate: {s.n_stamps} stamps ({s.n_real} real, {s.n_artifact} artifacts) in "
        f"{len(s.nights)} nights of season {s.season} as {s.fmt} under {s.out}; labels in "
        f"{s.labels_csv}; {s.n_stamps / max(s.seconds, 1e-9):,.0f} stamps/s"
    )
    return 0


def cmd_ingest(a: argparse.Namespace) -> int:
    from .cluster import open_client
    from .ingest import ingest

    cfg = _load_config(a.config)
    nights = None
    if a.night:
        if not a.season:
            raise SystemExit("s2v ingest: --night needs --season")
        nights = {(a.season, n) for n in a.night}
    with open_client(a.cluster) as client:
        print(f"dask dashboard: {client.dashboard_link}")
        s = ingest(
            a.raw,
            a.store,
            client,
            labels=a.labels,
            config=cfg.ingest,
            nights=nights,
            progress=not a.no_progress,
            lock_wait=a.lock_wait,
        )
    for n in s.nights:
        if n.n_quarantined:
            print(
                f"  {n.season}/{n.night}: {n.n_quarantined} quarantined (see quarantine-{n.night}.parquet)"
            )
    print(s.line())
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from .store import list_nights
    from .train import train

    stores = [r.path for s in a.store for r in list_nights(s, a.season)]
    if not stores:
        raise SystemExit(f"s2v train: no stored nights under {', '.join(a.store)}")
    command = "s2v " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("s2v") else None
    data = {"description": a.data_description, "simulated": a.simulated}
    r = train(
        stores,
        a.out,
        arch=a.arch,
        epochs=a.epochs,
        batch_size=a.batch_size,
        target_recall=a.target_recall,
        seed=a.seed,
        name=a.name,
        version=a.version,
        learning_rate=a.learning_rate,
        patience=a.patience,
        progress=not a.no_progress,
        command=command,
        training_data=data,
    )
    print(f"train: {r.line()}")
    return 0


def cmd_score(a: argparse.Namespace) -> int:
    from .cluster import open_client
    from .config import ScoreConfig
    from .scoring import score

    base = _load_config(a.config).score
    cfg = ScoreConfig(
        batch_size=a.batch_size or base.batch_size,
        threshold=a.threshold if a.threshold is not None else base.threshold,
        mixed_precision=a.mixed_precision or base.mixed_precision,
        part_stamps=a.part_stamps or base.part_stamps,
    )
    with open_client(a.cluster) as client:
        print(f"dask dashboard: {client.dashboard_link}")
        s = score(
            a.store,
            a.out,
            client,
            model_path=a.model,
            season=a.season,
            night=a.night,
            config=cfg,
            progress=not a.no_progress,
            lock_wait=a.lock_wait,
        )
    print(s.line())
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from .report import write_reports

    card = None
    if a.model:
        from .model import load_card

        card = load_card(a.model).to_dict()
    else:  # provenance of the newest model that scored these nights, from their manifests
        from .sink import manifests

        found = sorted(manifests(a.scores, a.season), key=lambda m: m.get("scored_at", ""))
        if found:
            m = found[-1]
            card = {
                "name": m.get("model_name"),
                "version": m.get("model_version"),
                "sha256": m.get("model_sha256"),
                "training_data": m.get("training_data") or {},
            }
    r = write_reports(
        a.scores, a.out, season=a.season, seconds_per_stamp=a.seconds_per_stamp, model_card=card
    )
    print(r.line() if hasattr(r, "line") else f"report: written under {a.out}")
    return 0


def cmd_nightly(a: argparse.Namespace) -> int:
    from s2v_flows.nightly import nightly_flow

    out = nightly_flow(
        raw=a.raw,
        night=a.night,
        store=a.store,
        out=a.out,
        reports=a.reports,
        model=a.model,
        cluster=a.cluster,
        labels=a.labels,
        season=a.season,
        config=a.config,
        progress=not a.no_progress,
    )
    print(out.get("line", out) if isinstance(out, dict) else out)
    return 0


def cmd_backfill(a: argparse.Namespace) -> int:
    from s2v_flows.backfill import backfill_flow

    out = backfill_flow(
        raw=a.raw,
        store=a.store,
        out=a.out,
        reports=a.reports,
        model=a.model,
        cluster=a.cluster,
        labels=a.labels,
        seasons=a.season,
        nights=a.night,
        max_concurrency=a.max_concurrency,
        config=a.config,
    )
    print(out.get("line", out) if isinstance(out, dict) else out)
    return 0 if not (isinstance(out, dict) and out.get("failed")) else 1


def cmd_demo(a: argparse.Namespace) -> int:
    from s2v_flows.demo import run_demo

    out = run_demo(
        a.workdir,
        nights=a.nights,
        stamps_per_night=a.stamps_per_night,
        seed=a.seed,
        cluster=a.cluster,
    )
    reports = out.get("index") or out.get("reports")
    print(f"demo: report at {reports}")
    print(
        "query the scores with pandas:\n"
        f"  python -c \"import pandas as pd; df = pd.read_parquet('{out.get('scores')}', "
        "filters=[('season', '==', 'Y1')]); print(df.groupby('night').is_candidate.mean())\""
    )
    if out.get("line"):
        print(out["line"])
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``s2v`` argument parser."""
    p = argparse.ArgumentParser(
        prog="s2v",
        description="s2v-batch: score every transient detection of a survey with a CNN. "
        "Raw stamps (gif/fits files, tar archives) -> Zarr -> CNN scores in Parquet -> reports.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    p.add_argument("--version", action="version", version=f"s2v-batch {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("simulate", help="write simulated DES-like stamps in the autoscan layout")
    s.add_argument("out", help="output folder (RAW/<season>/<YYYYMMDD>/...)")
    s.add_argument("--season", type=_season, default="Y1", help="season name (default Y1)")
    s.add_argument("--nights", type=_positive_int, default=2, help="number of nights (default 2)")
    s.add_argument("--stamps-per-night", type=_positive_int, default=1000, help="default 1000")
    s.add_argument("--format", choices=["gif", "fits", "tar"], default="gif", help="default gif")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument(
        "--size", type=_positive_int, default=51, help="stamp edge in pixels (default 51)"
    )
    s.add_argument("--first-night", type=_night, default=None, help="first night YYYYMMDD")
    s.add_argument(
        "--stamps-per-archive", type=_positive_int, default=1000, help="for --format tar"
    )
    s.add_argument(
        "--real-fraction",
        type=float,
        default=0.5,
        metavar="F",
        help="expected fraction of real transients (default 0.5, the training mix; a survey's "
        "nightly stream of detections is mostly artifacts: 0.06 is like it)",
    )
    _add_progress(s)
    s.set_defaults(fn=cmd_simulate)

    s = sub.add_parser("ingest", help="read raw stamps into one Zarr dataset per season/night")
    s.add_argument(
        "raw", help="raw root: gif/fits files and/or .tar archives under <season>/<YYYYMMDD>/"
    )
    s.add_argument("--store", required=True, help="Zarr store root")
    s.add_argument(
        "--labels", metavar="CSV", help="autoscan labels CSV (OBJECT_TYPE 0 real, 1 artifact)"
    )
    s.add_argument("--season", type=_season, help="with --night: only this season")
    s.add_argument("--night", type=_night, action="append", help="only this night (repeatable)")
    s.add_argument("--config", metavar="YAML", help="pipeline config (ingest section)")
    _add_lock_wait(s, "season")
    _add_cluster(s)
    _add_progress(s)
    s.set_defaults(fn=cmd_ingest)

    s = sub.add_parser("train", help="train a model on labelled Zarr stores")
    s.add_argument("store", nargs="+", help="Zarr store root(s) with labelled nights")
    s.add_argument("--out", required=True, help="folder for the .keras model and its JSON card")
    s.add_argument("--arch", default="space2vec", help="architecture name (default space2vec)")
    s.add_argument("--season", type=_season, help="only this season's nights")
    s.add_argument("--epochs", type=_positive_int, default=20, help="maximum epochs (default 20)")
    s.add_argument("--batch-size", type=_positive_int, default=128, help="default 128")
    s.add_argument("--target-recall", type=float, default=0.99, help="recall kept by the threshold")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--name", default="space2vec", help="model name in the card")
    s.add_argument("--version", default="1", help="model version in the card")
    s.add_argument("--learning-rate", type=float, default=1.4e-4, help="Adam (default 1.4e-4)")
    s.add_argument("--patience", type=_positive_int, default=3, help="early-stopping epochs (3)")
    s.add_argument(
        "--data-description",
        required=True,
        metavar="TEXT",
        help="what the training data are, for the model card (e.g. 'DES Y1 autoscan stamps')",
    )
    sim = s.add_mutually_exclusive_group(required=True)
    sim.add_argument(
        "--simulated",
        dest="simulated",
        action="store_true",
        help="the training stamps are simulated (reports will say so)",
    )
    sim.add_argument(
        "--survey-data",
        dest="simulated",
        action="store_false",
        help="the training stamps are real survey data",
    )
    _add_progress(s)
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("score", help="score stored stamps into hive-partitioned Parquet")
    s.add_argument("store", help="Zarr store root")
    s.add_argument("--model", help="model .keras or card .json (default: the shipped demo model)")
    s.add_argument("--out", required=True, help="Parquet scores root")
    s.add_argument("--season", type=_season, help="only this season")
    s.add_argument("--night", type=_night, help="only this night")
    s.add_argument("--threshold", type=float, help="override the model card's threshold")
    s.add_argument("--batch-size", type=_positive_int, help="stamps per model call (default 512)")
    s.add_argument(
        "--part-stamps",
        type=_positive_int,
        help="stamps per scoring task and Parquet part (default 2048; configs/gpu.yaml: 32768)",
    )
    s.add_argument("--mixed-precision", action="store_true", help="bf16 compute (for GPUs)")
    s.add_argument(
        "--config", metavar="YAML", help="pipeline config (score section; GPUs: configs/gpu.yaml)"
    )
    _add_lock_wait(s, "night's scores")
    _add_cluster(s)
    _add_progress(s)
    s.set_defaults(fn=cmd_score)

    s = sub.add_parser("report", help="per-season and per-night reports (JSON, HTML, PNG)")
    s.add_argument("scores", help="Parquet scores root")
    s.add_argument("--out", required=True, help="reports folder")
    s.add_argument("--season", type=_season, help="only this season")
    s.add_argument("--seconds-per-stamp", type=float, default=0.5, help="human time a stamp (0.5)")
    s.add_argument("--model", help="model card for provenance (default: from the scores)")
    s.set_defaults(fn=cmd_report)

    for name, fn, helptext in (
        (
            "nightly",
            cmd_nightly,
            "run the nightly Prefect flow for one night: ingest, score, report",
        ),
        ("backfill", cmd_backfill, "run the backfill Prefect flow over every season and night"),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--raw", required=True, help="raw root")
        if name == "nightly":
            s.add_argument("--night", type=_night, required=True, help="the night YYYYMMDD")
            s.add_argument("--season", type=_season, help="the season (default: from the path)")
        else:
            s.add_argument("--season", type=_season, action="append", help="only these seasons")
            s.add_argument("--night", type=_night, action="append", help="only these nights")
            s.add_argument(
                "--max-concurrency", type=_positive_int, default=2, help="nights at once"
            )
        s.add_argument("--store", required=True, help="Zarr store root")
        s.add_argument("--out", required=True, help="Parquet scores root")
        s.add_argument("--reports", required=True, help="reports folder")
        s.add_argument("--model", help="model artifact (default: the shipped demo model)")
        s.add_argument(
            "--labels", metavar="CSV", help="labels CSV (default RAW/autoscan_features.3.csv)"
        )
        s.add_argument("--config", metavar="YAML", help="pipeline config file")
        _add_cluster(s)
        if name == "nightly":
            _add_progress(s)
        s.set_defaults(fn=fn)

    s = sub.add_parser("demo", help="simulate two nights and run the nightly flow on them")
    s.add_argument("--workdir", default="demo-output", help="where everything goes (demo-output)")
    s.add_argument("--nights", type=_positive_int, default=2, help="default 2")
    s.add_argument("--stamps-per-night", type=_positive_int, default=2000, help="default 2000")
    s.add_argument("--seed", type=int, default=7, help="default 7")
    _add_cluster(s)
    s.set_defaults(fn=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``s2v`` command."""
    from .fsutil import StoreBusyError

    # Quiet start-up chatter in this process and the workers it spawns: progress bars and the
    # summary line are the output. Must be set before TensorFlow or distributed are imported.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    args = build_parser().parse_args(argv)
    fn: Callable[[argparse.Namespace], int] = args.fn
    try:
        return fn(args)
    except KeyboardInterrupt:
        print("s2v: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"s2v {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except StoreBusyError as exc:  # transient: EX_TEMPFAIL tells a wrapper to try again later
        print(f"s2v {args.command}: busy: {exc}", file=sys.stderr)
        return 75


if __name__ == "__main__":
    sys.exit(main())
