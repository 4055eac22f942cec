"""The arguments of the ``s2v`` command: its parser, argument types, help and exit statuses.

Argument errors print one line, ``s2v <command>: error: ...``, and exit with status 2, as every
other error of the command does (:mod:`s2v_batch.cli.main`).
"""

from __future__ import annotations

import argparse

from s2v_batch import __version__
from s2v_batch.core.config import PRECISIONS
from s2v_batch.core.conventions import is_night, is_season
from s2v_batch.core.encoding import EncodingError, keepbits

EXAMPLES = """\
examples:
  s2v demo                                   # simulate, ingest, score and report two nights
  s2v simulate raw --season Y1 --nights 2 --stamps-per-night 1000 --format tar --seed 1
  s2v ingest raw --store store --labels raw/autoscan_features.3.csv
  s2v score store --out scores               # the shipped model of the store's survey
  s2v report scores --out reports
  s2v nightly --raw raw --night 20130901 --store store --out scores --reports reports

exit status (an error is one line naming the path or service and what to do; details and the
traceback go to a log file the line names, under $S2V_LOG_DIR or ~/.cache/s2v-batch/logs):
  0    done
  1    unexpected error (a bug: the log file holds the traceback)
  2    bad input or arguments (the line says which)
  69   the Dask scheduler cannot be reached or was lost, or workers keep dying (KilledWorker)
  74   I/O: disk full or quota exceeded (ingest and score check free space first), read-only
       filesystem, a store or raw folder that vanished mid-run
  75   busy: another process is writing the same season or night (named, also when its
       recorded holder is gone) and did not finish within --lock-wait
  77   permission denied
  130  interrupted
After any of 69, 74, 75, 77 and 130, fix the cause and run the same command again: finished
nights and staged work are kept and reused, and nothing half-written is ever published.
"""


def _night(text: str) -> int:
    if not is_night(text):
        raise argparse.ArgumentTypeError(f"night must be a date YYYYMMDD, got {text!r}")
    return int(text)


def _season(text: str) -> str:
    if not is_season(text):
        raise argparse.ArgumentTypeError(
            f"season must be SV, Y1, Y2 ... (DES) or ZTF2024, RUBIN2026 ... (alerts), got {text!r}"
        )
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _float_encoding(text: str) -> str:
    try:
        keepbits(text)
    except EncodingError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _add_cluster(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cluster",
        metavar="SPEC",
        help="Dask cluster spec: a YAML file, a shipped spec's name (local, cuda, slurm, slurm-cpu, "
        "existing) or a scheduler's address (tcp://host:8786); default: a LocalCluster on "
        "127.0.0.1 (s2v score: a worker per 4 cores, a thread per core; otherwise a "
        "single-threaded worker per core)",
    )


def _add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_lock_wait(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--lock-wait",
        type=float,
        metavar="SECONDS",
        help=f"wait this long while another process writes the same {what}, then exit 75 "
        "(default: the config's lock_wait, 3600)",
    )


class _Parser(argparse.ArgumentParser):
    """argparse with the command's error convention: one line ``s2v <command>: error: ...``, exit 2.

    argparse's own ``error()`` prints the usage block first; ``--help`` still shows it. Sub-command
    parsers inherit this class (``add_subparsers`` uses the parent's class), so their ``prog`` is
    ``s2v <command>``.
    """

    def error(self, message: str):  # type: ignore[override]
        self._fail(self.prog, message)

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        # Unknown options are found by the top-level parser: name the command they were given to.
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            command = getattr(ns, "command", None)
            self._fail(
                f"{self.prog} {command}" if command else self.prog,
                f"unrecognized arguments: {' '.join(extra)}",
            )
        return ns

    def _fail(self, prog: str, message: str):
        self.exit(2, f"{prog}: error: {message} (see {prog} --help)\n")


def _add_precision(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="what the model computes in: float32, bfloat16 (about 1.6x the stamps a core on "
        "CPUs with AVX512-BF16 or AMX and GPUs of compute capability >= 8.0; slower where "
        "emulated; scored against the card's bfloat16 threshold), or auto (bfloat16 where "
        "native, else float32 with a warning); default: the config's score.precision (float32)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``s2v`` argument parser."""
    p = _Parser(
        prog="s2v",
        description="s2v-batch: score every transient detection of a survey with a CNN. "
        "Raw stamps (gif/fits files, tar archives) -> Zarr -> CNN scores in Parquet -> reports.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    p.add_argument("--version", action="version", version=f"s2v-batch {__version__}")
    p.add_argument(
        "--debug",
        action="store_true",
        help="on an error, show the traceback and every log line on the terminal as well",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also print what usually goes to the run log only (the Dask dashboard's address)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser(
        "simulate", help="write simulated DES-like stamps, or ZTF/Rubin-like alert packets"
    )
    s.add_argument("out", help="output folder (RAW/<season>/<YYYYMMDD>/...)")
    s.add_argument("--season", type=_season, default="Y1", help="season name (default Y1)")
    s.add_argument("--nights", type=_positive_int, default=2, help="number of nights (default 2)")
    s.add_argument("--stamps-per-night", type=_positive_int, default=1000, help="default 1000")
    s.add_argument("--survey", choices=["des", "ztf", "rubin"], default="des",
                   help="des: stamp files (default); ztf, rubin: alert packets (Avro)")  # fmt: skip
    s.add_argument("--format", choices=["gif", "fits", "tar", "archive", "avro", "framed", "parquet"],
                   help="des: gif (default), fits, tar; ztf/rubin: archive (default: nightly "
                   ".tar.gz), avro, parquet; rubin also framed (Confluent-framed)")  # fmt: skip
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
        type=_fraction,
        default=0.5,
        metavar="F",
        help="expected fraction of real transients, 0-1 (default 0.5, the training mix; a "
        "survey's nightly stream of detections is mostly artifacts: 0.06 is like it)",
    )
    _add_progress(s)

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
    s.add_argument(
        "--dry-run",
        action="store_true",
        help="list the nights that would be ingested (or relabelled) and why; change nothing",
    )
    s.add_argument(
        "--float-encoding",
        type=_float_encoding,
        metavar="ENC",
        help="how float (FITS, alert) stamps are stored: lossless, or bitround-K (K mantissa "
        "bits kept, 1-22; fewer bytes, pixel values within 2^-K relative); default: the config's "
        "ingest.float_encoding. GIF stamps are always lossless",
    )
    _add_lock_wait(s, "season")
    _add_cluster(s)
    _add_progress(s)

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

    s.add_argument(
        "--verdicts",
        metavar="DB",
        help="train on people's verdicts (a verdict database: SQLite file or postgresql:// URL) "
        "for stamps already in the store: their consensus replaces the stored labels of the "
        "stamps it decides (the others keep theirs; unlabelled nights hold -1)",
    )
    s.add_argument(
        "--augment",
        choices=("flips", "survey", "none"),
        default="flips",
        help="augmentation set: flips (random 90-degree rotations and flips, the default), "
        "survey (also PSF blur, noise texture, background offsets and gradients, masked CCD "
        "edges: docs/MODEL.md), none",
    )
    s.add_argument(
        "--init",
        metavar="MODEL",
        help="start from this model artifact's weights (.keras or .json; same architecture and "
        "stamp size), e.g. to fine-tune a shipped model",
    )
    s.add_argument(
        "--choose-on",
        nargs="+",
        default=[],
        metavar="NPZ",
        help="realset(s) of labelled real stamps (.npz): keep the epoch with the best ROC AUC "
        "on their stamps pooled (ties: lower validation loss) instead of the lowest validation "
        "loss",
    )
    s.add_argument(
        "--real-train",
        nargs="+",
        default=[],
        metavar="NPZ",
        help="realset(s) whose training groups (group hash < 0.8) are mixed into every batch; "
        "the held-out groups are left for the check",
    )
    s.add_argument(
        "--real-weight",
        type=float,
        default=1.0,
        metavar="W",
        help="sample weight of the --real-train stamps (simulated stamps weigh 1; default 1)",
    )
    s.add_argument(
        "--max-masked-fraction",
        type=float,
        default=None,
        metavar="F",
        help="the largest masked fraction the card says the model was validated on (scores of "
        "stamps above it are flagged); default: the largest among the labelled training stamps",
    )

    s = sub.add_parser("score", help="score stored stamps into hive-partitioned Parquet")
    s.add_argument("store", help="Zarr store root")
    s.add_argument(
        "--model",
        help="model .keras or card .json (default: the shipped model of the store's survey)",
    )
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
    _add_precision(s)
    s.add_argument(
        "--rescore",
        action="store_true",
        help="score every selected night again, also those whose scores are complete for this "
        "model, threshold, precision, stored data and labels (skipped by default)",
    )
    s.add_argument(
        "--mixed-precision",
        action="store_const",
        const="bfloat16",
        dest="precision",
        help="old name of --precision bfloat16",
    )
    s.add_argument(
        "--config", metavar="YAML", help="pipeline config (score section; GPUs: configs/gpu.yaml)"
    )
    _add_lock_wait(s, "night's scores")
    _add_cluster(s)
    _add_progress(s)

    s = sub.add_parser(
        "threshold",
        help="add a model card's bfloat16 threshold, chosen on its own validation stamps "
        "(for cards written before s2v train wrote it; no retraining)",
    )
    s.add_argument("model", help="model card .json (or its .keras); the card is updated")
    s.add_argument(
        "--store",
        action="append",
        help="store(s) holding the model's training nights (default: the card's recorded "
        "stores, else for a simulated model the nights simulated again from its card's recipe)",
    )
    s.add_argument("--workdir", help="where a rebuild simulates and ingests (default: a temp dir)")
    s.add_argument("--dry-run", action="store_true", help="print the thresholds, write nothing")
    _add_cluster(s)

    s = sub.add_parser("report", help="per-season and per-night reports (JSON, HTML, PNG)")
    s.add_argument("scores", help="Parquet scores root")
    s.add_argument("--out", required=True, help="reports folder")
    s.add_argument("--season", type=_season, help="only this season")
    s.add_argument("--seconds-per-stamp", type=float, default=0.5, help="human time a stamp (0.5)")
    s.add_argument("--model", help="model card for provenance (default: from the scores)")
    s.add_argument(
        "--store",
        help="Zarr store the scores came from: adds stamp galleries (without it they are skipped)",
    )
    s.add_argument(
        "--verdicts",
        metavar="DB",
        help="scanners' verdict database for the Scanning section (SQLite file or postgresql:// "
        "URL; default SCORES/_verdicts.sqlite where it exists)",
    )

    for name, helptext in (
        ("nightly", "run the nightly Prefect flow for one night: ingest, score, report"),
        ("backfill", "run the backfill Prefect flow over every season and night"),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--raw", required=True, help="raw root")
        if name == "nightly":
            s.add_argument("--night", type=_night, required=True, help="the night YYYYMMDD")
            s.add_argument("--season", type=_season, help="the season (default: from the path)")
            s.add_argument(
                "--wait-for-data",
                type=float,
                default=0.0,
                metavar="SECONDS",
                help="wait this long for the night's raw stamps to appear (default 0)",
            )
        else:
            s.add_argument("--season", type=_season, action="append", help="only these seasons")
            s.add_argument("--night", type=_night, action="append", help="only these nights")
            s.add_argument(
                "--max-concurrency", type=_positive_int, default=2, help="nights at once"
            )
            s.add_argument(
                "--dry-run",
                action="store_true",
                help="list the nights that would run and why (new labels, raw files changed, "
                "new model ...); start nothing, change nothing",
            )
        s.add_argument("--store", required=True, help="Zarr store root")
        s.add_argument("--out", required=True, help="Parquet scores root")
        s.add_argument("--reports", required=True, help="reports folder")
        s.add_argument(
            "--model", help="model artifact (default: the shipped model of the nights' survey)"
        )
        s.add_argument(
            "--labels", metavar="CSV", help="labels CSV (default RAW/autoscan_features.3.csv)"
        )
        s.add_argument("--config", metavar="YAML", help="pipeline config file")
        _add_precision(s)
        _add_cluster(s)
        if name == "nightly":
            _add_progress(s)

    s = sub.add_parser("demo", help="simulate two nights and run the nightly flow on them")
    s.add_argument("--workdir", default="demo-output", help="where everything goes (demo-output)")
    s.add_argument("--nights", type=_positive_int, default=2, help="default 2")
    s.add_argument("--stamps-per-night", type=_positive_int, default=2000, help="default 2000")
    s.add_argument("--seed", type=int, default=7, help="default 7")
    _add_cluster(s)
    _add_scanning(sub)
    return p


def _add_scanning(sub: argparse._SubParsersAction) -> None:
    """``s2v scan`` (the scanning page) and ``s2v labels export`` (its verdicts as labels)."""
    s = sub.add_parser("scan", help="serve the scanning page: people judge candidates, r/b/s/u")
    s.add_argument("scores", help="Parquet scores root (its candidates are scanned)")
    s.add_argument("--store", required=True, help="Zarr store the scores were made from")
    s.add_argument("--season", type=_season, help="only this season")
    s.add_argument("--night", type=_night, help="only this night")
    s.add_argument(
        "--db",
        metavar="URL",
        help="verdict database: a SQLite file or postgresql://user@host/db "
        "(default SCORES/_verdicts.sqlite)",
    )
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any "
                   "other requires the token printed in the URL)")  # fmt: skip
    s.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free one)")
    s.add_argument("--per-stamp", type=_positive_int, default=1, metavar="K",
                   help="independent real/bogus verdicts wanted a stamp (default 1)")  # fmt: skip
    s = sub.add_parser("labels", help="labels from people's verdicts")
    lsub = s.add_subparsers(dest="labels_command", metavar="ACTION", required=True)
    e = lsub.add_parser("export", help="the verdicts' consensus as an autoscan labels CSV")
    e.add_argument("db", help="verdict database: a SQLite file or a postgresql:// URL")
    e.add_argument("--out", required=True, help="the CSV to write (ID, OBJECT_TYPE, N_VERDICTS...)")
    e.add_argument("--season", type=_season, help="only this season")
