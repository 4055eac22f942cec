"""The ``s2v`` command: simulate, ingest, train, score, report, and the Prefect flows (nightly, backfill, demo).

Errors print one line, ``s2v <command>: error: ...``, and exit with a documented status (see
:data:`s2v_batch.cli.args.EXAMPLES` and :mod:`s2v_batch.core.faults`); the details and the traceback go to the run's log file
(:mod:`s2v_batch.core.runlog`), which the line names. ``s2v --debug <command>`` shows them as well.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from s2v_batch.cli.args import build_parser
from s2v_batch.core import faults
from s2v_batch.core.config import PipelineConfig
from s2v_batch.core.faults import EXIT_ERROR, EXIT_USAGE
from s2v_batch.core.runlog import run_log
from s2v_batch.model import load_card
from s2v_batch.pipeline.cluster import open_client
from s2v_batch.pipeline.thresholds import recompute_thresholds
from s2v_batch.scan.labels import export_labels
from s2v_batch.training.config import TrainConfig

if TYPE_CHECKING:
    import logging

    from s2v_batch.core.faults import Fault
    from s2v_batch.core.runlog import RunLog


def _must_exist(path: str, what: str) -> None:
    """Refuse a missing input before a cluster or a flow starts: their start-up and shutdown
    write to stderr, and the error must stay one line."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path} does not exist")


def _load_config(path: str | None, **overrides: dict[str, object]):
    """The pipeline config of ``--config``, with the command line's settings (not None) on top."""
    import dataclasses

    cfg = PipelineConfig.from_yaml(path) if path else PipelineConfig()
    for section, values in overrides.items():
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            cfg = dataclasses.replace(
                cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)}
            )
    return cfg


# --------------------------------------------------------------------------- commands


def cmd_simulate(a: argparse.Namespace) -> int:
    if a.survey != "des":  # alert packets: nights of ZTF- or Rubin-like alerts
        # deferred: the command loads its own heavy libraries only when it runs
        from s2v_batch.sim.alerts import simulate_alerts

        print(simulate_alerts(a.out, survey=a.survey, nights=a.nights, alerts_per_night=a.stamps_per_night,
                              fmt=a.format or "archive", seed=a.seed, first_night=a.first_night or 20240101,
                              real_fraction=a.real_fraction,
                              progress=not a.no_progress).line())  # fmt: skip
        return 0
    # deferred: the command loads its own heavy libraries only when it runs
    from s2v_batch.sim.simulator import simulate

    s = simulate(
        a.out,
        season=a.season,
        nights=a.nights,
        stamps_per_night=a.stamps_per_night,
        fmt=a.format or "gif",
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
    _must_exist(a.raw, "raw input")
    # deferred: the command loads its own heavy libraries only when it runs
    from s2v_batch.ingest.driver import IngestError, ingest

    cfg = _load_config(
        a.config, ingest={"lock_wait": a.lock_wait, "float_encoding": a.float_encoding}
    )
    if a.night and not a.season:
        raise IngestError("--night needs --season (the season the night belongs to)")
    nights = {(a.season, n) for n in a.night} if a.night else None
    if a.dry_run:
        return _dry_run_ingest(a, cfg, nights)
    with open_client(a.cluster) as client:
        _dashboard(a, client)
        s = ingest(a.raw, a.store, client, labels=a.labels, config=cfg.ingest, nights=nights,
                   progress=not a.no_progress)  # fmt: skip
    for n in s.nights:  # every night's accounting: found = stored + quarantined
        print(f"  {n.line()}")
    print(s.line())
    return 0


def _dashboard(a: argparse.Namespace, client) -> None:
    """The Dask dashboard's address: in the run log, and on the terminal with --verbose."""
    import logging

    logging.getLogger("s2v").info("dask dashboard: %s", client.dashboard_link)
    if a.verbose:
        print(f"dask dashboard: {client.dashboard_link}")


def _warn(line: str) -> None:
    """A status line of the library: warnings to stderr, the rest to the run log."""
    import logging

    if line.startswith("warning"):
        print(line, file=sys.stderr)
    logging.getLogger("s2v").info("%s", line)


def _dry_run_ingest(a: argparse.Namespace, cfg, nights) -> int:
    """``s2v ingest --dry-run``: what each night needs, and why; nothing is written."""
    # deferred: the command loads its own heavy libraries only when it runs
    from s2v_batch.ingest.driver import dry_run

    lines, summary = dry_run(a.raw, a.store, labels=a.labels, config=cfg.ingest, nights=nights)
    for line in lines:
        print(line)
    print(summary)
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    # deferred: the command loads its own heavy libraries only when it runs
    from s2v_batch.store.dataset import StoreError, list_nights

    cfg = TrainConfig(
        arch=a.arch,
        epochs=a.epochs,
        batch_size=a.batch_size,
        learning_rate=a.learning_rate,
        patience=a.patience,
        target_recall=a.target_recall,
        seed=a.seed,
        name=a.name,
        version=a.version,
        augment=a.augment,
        real_weight=a.real_weight,
        max_masked_fraction=a.max_masked_fraction,
    )
    stores = [r.path for s in a.store for r in list_nights(s, a.season)]
    if not stores:
        raise StoreError(f"no stored nights under {', '.join(a.store)}")
    # deferred: the command loads its own heavy libraries only when it runs
    from s2v_batch.training.loop import train

    command = shlex.join(["s2v", *sys.argv[1:]]) if sys.argv[0].endswith("s2v") else None
    data = {"description": a.data_description, "simulated": a.simulated}
    r = train(stores, a.out, cfg, training_data=data, command=command, progress=not a.no_progress,
              verdicts=a.verdicts, init=a.init, choose_on=a.choose_on,
              real_train=a.real_train)  # fmt: skip
    print(f"train: {r.line()}")
    return 0


def cmd_score(a: argparse.Namespace) -> int:
    _must_exist(a.store, "store")
    # deferred: the command loads its own heavy libraries only when it runs
    from s2v_batch.scoring.driver import score

    cfg = _load_config(
        a.config,
        score={
            "batch_size": a.batch_size,
            "threshold": a.threshold,
            "precision": a.precision,
            "part_stamps": a.part_stamps,
            "lock_wait": a.lock_wait,
        },
    )
    with open_client(a.cluster, work="score") as client:
        _dashboard(a, client)
        s = score(a.store, a.out, client, model_path=a.model, season=a.season, night=a.night,
                  config=cfg.score, skip_complete=not a.rescore, progress=not a.no_progress,
                  log=_warn)  # fmt: skip
    print(s.line())
    return 0


def cmd_threshold(a: argparse.Namespace) -> int:
    _must_exist(a.model, "model")
    r = recompute_thresholds(a.model, stores=a.store, workdir=a.workdir, cluster=a.cluster,
                             dry_run=a.dry_run)  # fmt: skip
    print(r.line())
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    # deferred: the command loads its own heavy libraries only when it runs
    from s2v_batch.report import write_reports
    from s2v_batch.store.scores import newest_model

    # Provenance: the model named, else the newest model that scored these nights.
    card = load_card(a.model).to_dict() if a.model else newest_model(a.scores, a.season)
    r = write_reports(a.scores, a.out, season=a.season, seconds_per_stamp=a.seconds_per_stamp,
                      model_card=card, store=a.store, verdicts=a.verdicts)  # fmt: skip
    print(r.line())
    return 0


def cmd_nightly(a: argparse.Namespace) -> int:
    _must_exist(a.raw, "raw input")
    from s2v_flows.nightly import nightly_flow

    out = nightly_flow(
        raw=a.raw, night=a.night, store=a.store, out=a.out, reports=a.reports, model=a.model,
        cluster=a.cluster, labels=a.labels, season=a.season, config=a.config,
        progress=not a.no_progress, wait_for_data=a.wait_for_data, fail_if_no_data=True,
        precision=a.precision,
    )  # fmt: skip
    print(out["line"])
    return 0


def cmd_backfill(a: argparse.Namespace) -> int:
    _must_exist(a.raw, "raw input")
    from s2v_flows.backfill import backfill_flow

    if a.dry_run:
        return _dry_run_backfill(a)
    out = backfill_flow(
        raw=a.raw, store=a.store, out=a.out, reports=a.reports, model=a.model,
        cluster=a.cluster, labels=a.labels, seasons=a.season, nights=a.night,
        max_concurrency=a.max_concurrency, config=a.config, precision=a.precision,
    )  # fmt: skip
    print(out["line"])
    return _backfill_status(out["failed"], a.run_log.where())


def _dry_run_backfill(a: argparse.Namespace) -> int:
    """``s2v backfill --dry-run``: the plan, night by night with the reason each would run."""
    # deferred: the command loads its own heavy libraries only when it runs
    from s2v_batch.pipeline.steps import dry_run, resolve_inputs

    lines, summary = dry_run(
        resolve_inputs(a.raw, a.store, a.out, a.reports, model=a.model, labels=a.labels,
                       config=a.config, precision=a.precision),
        seasons=a.season, nights=a.night,
    )  # fmt: skip
    for line in lines:
        print(line)
    print(summary)
    return 0


def _backfill_status(failed: list[dict], where_log: str) -> int:
    """0 when every night is done; a fault of the environment's status (one error line on
    stderr, naming it); else 1 (the summary line says which nights failed and why)."""
    env = [f for f in failed if f.get("status", EXIT_ERROR) not in (EXIT_ERROR, EXIT_USAGE)]
    if env:
        first = env[0]
        where = f"{first['season'] or '*'}/{first['night'] or '*'}"
        more = f" (and {len(env) - 1} more night(s))" if len(env) > 1 else ""
        print(f"s2v backfill: error: {where}{more}: {first['error']}; {where_log}", file=sys.stderr)
        return int(first["status"])
    return EXIT_ERROR if failed else 0


def cmd_demo(a: argparse.Namespace) -> int:
    from s2v_flows.demo import run_demo

    out = run_demo(a.workdir, nights=a.nights, stamps_per_night=a.stamps_per_night, seed=a.seed,
                   cluster=a.cluster)  # fmt: skip
    print(f"demo: report at {out['index']}")
    print(
        "query the scores with pandas:\n"
        f"  python -c \"import pandas as pd; df = pd.read_parquet('{out['scores']}', "
        "filters=[('season', '==', 'Y1')]); print(df.groupby('night').is_candidate.mean())\""
    )
    print(out["line"])
    return 0


def cmd_scan(a: argparse.Namespace) -> int:
    _must_exist(a.scores, "scores root")
    _must_exist(a.store, "store")
    # deferred: the command loads its own heavy libraries only when it runs
    from s2v_batch.scan.server import prepare, serve

    scanning = prepare(a.scores, a.store, season=a.season, night=a.night, db=a.db,
                       per_stamp=a.per_stamp)  # fmt: skip
    serve(scanning, host=a.host, port=a.port)
    return 0


def cmd_labels(a: argparse.Namespace) -> int:
    print(export_labels(a.db, a.out, season=a.season).line())
    return 0


#: What each command runs.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "simulate": cmd_simulate,
    "ingest": cmd_ingest,
    "train": cmd_train,
    "score": cmd_score,
    "report": cmd_report,
    "threshold": cmd_threshold,
    "nightly": cmd_nightly,
    "backfill": cmd_backfill,
    "demo": cmd_demo,
    "scan": cmd_scan,
    "labels": cmd_labels,
}

#: Modules a command imports anyway, imported before the run log takes over the terminal so that
#: the log handlers they set up on import write to the log file (distributed's worker errors,
#: Prefect's flow-run logs), not to the terminal. s2v_flows before prefect: it sets Prefect's
#: defaults (the local server's start-up limit), which Prefect reads once, on import.
_PRELOAD = {
    "ingest": ("distributed",),
    "score": ("distributed",),
    "nightly": ("distributed", "s2v_flows", "prefect"),
    "backfill": ("distributed", "s2v_flows", "prefect"),
    "demo": ("distributed", "s2v_flows", "prefect"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``s2v`` command."""
    import logging

    # Quiet start-up chatter in this process and the workers it spawns: progress bars and the
    # summary line are the output. Must be set before TensorFlow or distributed are imported.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    args = build_parser().parse_args(argv)
    fn: Callable[[argparse.Namespace], int] = COMMANDS[args.command]
    words = list(sys.argv[1:] if argv is None else argv)
    with run_log(args.command, divert=not args.debug, preload=_PRELOAD.get(args.command, ())) as rl:
        args.run_log = rl
        log = logging.getLogger("s2v")
        log.info("s2v %s (pid %d)", " ".join(words), os.getpid())
        try:
            status = fn(args)
            log.info("exit status %d", status)
            return status
        except Exception as exc:
            status = _report(args, exc, rl, faults.classify(exc), log)
        except KeyboardInterrupt:
            log.info("interrupted", exc_info=True)
            print("s2v: interrupted; re-run the same command to resume", file=sys.stderr)
            return faults.EXIT_INTERRUPTED
    return status


def _report(
    args: argparse.Namespace, exc: BaseException, rl: RunLog, fault: Fault, log: logging.Logger
) -> int:
    """Print the one error line of a failed command (the traceback only with --debug)."""
    import traceback

    log.error("%s: %s (exit status %d)", fault.kind, fault.message, fault.status, exc_info=exc)
    if args.debug:
        traceback.print_exception(exc, file=sys.stderr)
    if fault.kind == "busy":  # transient: EX_TEMPFAIL tells a wrapper to try again later
        print(f"s2v {args.command}: busy: {fault.message}", file=sys.stderr)
    elif fault.status == faults.EXIT_USAGE:
        print(f"s2v {args.command}: error: {fault.message}", file=sys.stderr)
    else:
        print(f"s2v {args.command}: error: {fault.message}; {rl.where()}", file=sys.stderr)
    return fault.status
