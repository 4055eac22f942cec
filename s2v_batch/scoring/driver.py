"""Score stored stamps with the CNN on a Dask cluster: the driver, one task per part of a night.

A task (:func:`s2v_batch.scoring.worker.score_shard`) scores ``part_stamps`` stamps of a night and
writes one Parquet part with a deterministic name into the night's staging folder; when all its
parts exist the night is published (:func:`s2v_batch.store.publish.publish_night`: merged into one sorted
file, swapped in atomically), so a re-run after a killed worker or process redoes only the
missing parts. Each worker loads the model once from its file path (never pickled through the
scheduler); :class:`~s2v_batch.scoring.worker.WarmUp` has every worker import TensorFlow, load the
model and trace it while the driver plans the nights.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from s2v_batch.core import provenance
from s2v_batch.core.config import ScoreConfig
from s2v_batch.core.conventions import survey_of_season
from s2v_batch.core.faults import ensure_free_space, environment_fault
from s2v_batch.core.fsutil import exclusive_all
from s2v_batch.model import load_card
from s2v_batch.model.precision import resolve_precision
from s2v_batch.scoring.checks import model_for_nights, nights_problem, survey_mismatch
from s2v_batch.scoring.worker import (  # noqa: F401  (the worker side, re-exported)
    WarmUp,
    get_predictor,
    nonfinite_reasons,
    prefetched_blocks,
    prefetched_reads,
    score_block,
    score_shard,
    warm_up,
)
from s2v_batch.store import dataset as zstore
from s2v_batch.store import publish
from s2v_batch.store import scores as sink
from s2v_batch.store import state as nightstate
from s2v_batch.store.shardread import StampReader


class ScoringError(ValueError):
    """Scoring cannot start (bad arguments, nothing to score)."""


class ScoringInconsistency(RuntimeError):
    """The scored parts of a night do not add up to its stamps: a bug, not bad input (exit 1)."""


# --------------------------------------------------------------------------- the driver


@dataclass
class NightScore:
    """The outcome for one night."""

    season: str
    night: int
    status: str  # "scored" | "relabelled" (scores kept, labels new) | "skipped"
    n_stamps: int
    n_candidates: int
    n_errors: int
    path: Path

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready summary (paths as strings)."""
        return {
            "season": self.season,
            "night": self.night,
            "status": self.status,
            "n_stamps": self.n_stamps,
            "n_candidates": self.n_candidates,
            "n_errors": self.n_errors,
            "path": str(self.path),
        }


@dataclass
class ScoreSummary:
    """The outcome of a scoring run."""

    nights: list[NightScore] = field(default_factory=list)
    seconds: float = 0.0
    model: str = ""
    #: Seconds from the start of :func:`score` to the first part written (None: none written).
    first_part_seconds: float | None = None
    #: Parts found finished in staging from an earlier, interrupted run (not scored again).
    n_parts_resumed: int = 0

    @property
    def n_stamps(self) -> int:
        return sum(n.n_stamps for n in self.nights)

    @property
    def n_candidates(self) -> int:
        return sum(n.n_candidates for n in self.nights)

    @property
    def n_errors(self) -> int:
        return sum(n.n_errors for n in self.nights)

    def night(self, season: str, night: int) -> NightScore | None:
        """The result of one night of this run (None: not scored, its dataset is incomplete)."""
        return next((n for n in self.nights if (n.season, n.night) == (season, int(night))), None)

    def line(self) -> str:
        """The one-line summary printed at the end of a run."""
        scored = [n for n in self.nights if n.status == "scored"]
        relabelled = sum(n.status == "relabelled" for n in self.nights)
        new = sum(n.n_stamps for n in scored)
        rate = new / self.seconds if self.seconds > 0 else 0.0
        return (
            f"score: {self.n_stamps} stamps, {self.n_candidates} candidates, {self.n_errors} errors; "
            f"{len(self.nights)} nights ({len(scored)} scored, "
            + (f"{relabelled} relabelled, " if relabelled else "")
            + f"{len(self.nights) - len(scored) - relabelled} already complete) with {self.model}; "
            f"{rate:,.0f} stamps/s over {self.seconds:.1f} s"
            + (f"; {self.n_parts_resumed} parts resumed" if self.n_parts_resumed else "")
        )


@dataclass
class NightScoring:
    """A night being scored: where its parts are staged, which are done, what it must hold."""

    ref: zstore.NightRef
    stage: Path
    night_fp: str | None
    n_stamps: int
    run: dict[str, str]
    data_provenance: str = provenance.UNKNOWN
    labels_fp: str | None = None
    stats: dict[int, dict[str, int]] = field(default_factory=dict)
    left: int = 0
    published: bool = False


def score(
    store_root: str | Path,
    scores_root: str | Path,
    client: Any,
    *,
    model_path: str | Path | None = None,
    season: str | None = None,
    night: int | None = None,
    config: ScoreConfig | None = None,
    skip_complete: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> ScoreSummary:
    """Score every stored night (or one season / night) into the Parquet dataset.

    Parameters
    ----------
    store_root : path
        The Zarr store written by ingest.
    scores_root : path
        Root of the hive-partitioned Parquet scores.
    client : distributed.Client
        The Dask client that runs the work.
    model_path : path, optional
        Model artifact (``.keras`` or card ``.json``); by default the shipped model whose card
        matches the nights' survey and stamp size (:func:`scorechecks.model_for_nights`).
    season, night : optional
        Restrict to a season and/or a night.
    config : ScoreConfig, optional
        Batch size, threshold override, precision (``auto`` is resolved on the workers:
        :func:`s2v_batch.model.precision.resolve_precision`; each precision scores against the
        card's threshold for it), part size, how long to wait for another writer of a night.
    skip_complete : bool
        Skip nights whose published scores are current (``sink.current_scores``: this model,
        threshold, precision and stored data); otherwise every selected night is (re)scored
        and replaced.
    progress : bool
        Show a progress bar.
    log : callable
        Where status lines go.

    Returns
    -------
    ScoreSummary

    Raises
    ------
    ScoringError
        Nothing stored to score.
    StoreBusyError
        Another process kept a night's lock past ``config.lock_wait`` seconds.
    """
    cfg = config or ScoreConfig()
    t0 = time.perf_counter()
    refs = zstore.list_nights(store_root, season)
    if night is not None:
        refs = [r for r in refs if r.night == int(night)]
    if not refs:
        what = f"season {season}" if season else "any season"
        what += f", night {night}" if night is not None else ""
        raise ScoringError(f"no stored nights for {what} under {store_root}")
    # Absolute paths: workers started apart have a working directory of their own. No model
    # named: the shipped one whose card matches the nights' survey and stamp size.
    model_path = Path(model_path).expanduser().resolve() if model_path else model_for_nights(refs)
    scores_root = Path(scores_root).expanduser().resolve()
    card = load_card(model_path)
    keras_path = model_path.with_suffix(".keras")
    precision = resolve_precision(cfg.precision, client)
    threshold = float(cfg.threshold if cfg.threshold is not None else card.threshold_for(precision))
    # Downstream reads the resolved precision from the config, never "auto".
    cfg = replace(cfg, precision=precision)
    problem = nights_problem(refs, scores_root, card, model_path)
    if problem:
        raise ScoringError(problem)
    mismatch = survey_mismatch(refs, card)
    if mismatch:
        log(f"warning: {mismatch}")
    locks = [
        (
            sink.lock_path(scores_root, r.season, r.night),
            f"the scores of {r.season}/{r.night} under {scores_root}",
        )
        for r in refs
    ]
    # Workers import TensorFlow, load the model and trace it while the nights are planned.
    dtypes = sorted({_stamps_dtype(r.path) for r in refs[:16]} - {None})
    warm = _WarmUpOnce(client, WarmUp(str(keras_path), cfg.batch_size, cfg.precision, dtypes))
    try:
        # One writer per night: staging and publishing are not shared.
        with exclusive_all(locks, wait=cfg.lock_wait, log=log):
            summary = _score_nights(
                refs,
                scores_root,
                client,
                card,
                keras_path,
                threshold,
                cfg,
                skip_complete,
                progress,
                log,
                t0,
                warm,
            )
    finally:
        warm.remove()
    summary.seconds = time.perf_counter() - t0
    return summary


class _WarmUpOnce:
    """The workers' warm-up (:class:`WarmUp`), registered at the first night that needs scoring:
    a run that skips every night starts no TensorFlow on its workers (a worker busy importing it
    while a short-lived cluster closes missed its heartbeat: an ERROR in a finished run's log).
    Each run registers it under a name of its own and removes only that one (runs sharing a
    cluster, a backfill's nights, once removed each other's)."""

    def __init__(self, client: Any, plugin: WarmUp) -> None:
        self.client, self.plugin, self.name = client, plugin, None

    def __call__(self) -> None:
        if self.name is None:
            self.name = f"{WarmUp.name}-{uuid.uuid4().hex[:12]}"
            self.client.register_plugin(self.plugin, name=self.name)

    def remove(self) -> None:
        if self.name is not None:
            with contextlib.suppress(Exception):  # a plugin left behind only warms up
                self.client.unregister_worker_plugin(self.name)


def _score_nights(
    refs, scores_root, client, card, keras_path, threshold, cfg, skip_complete, progress, log, t0,
    warm,
) -> ScoreSummary:  # fmt: skip
    """The body of :func:`score`, run with the nights' writer locks held."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    summary = ScoreSummary(
        model=f"{card.name}-{card.version} (sha256 {card.sha256[:12]}) at {cfg.precision}"
    )
    check_space(refs, scores_root, card, threshold, cfg, skip_complete)
    key = sink.run_key(card.sha256, threshold, cfg.part_stamps, cfg.precision)
    jobs: dict = {}
    plans: dict[tuple[str, int], NightScoring] = {}
    for ref in refs:
        attrs = zstore.verify_night(ref.path)
        if attrs is None:
            log(f"warning: {ref.path} is incomplete; ingest it again (skipped)")
            continue
        night_fp, n_stamps = nightstate.fingerprint_of(attrs), int(attrs["n_stamps"])
        labels_fp = nightstate.night_labels_fingerprint(ref.path, attrs)
        what = dict(night_fp=night_fp, model_sha256=card.sha256, threshold=threshold,
                    n_stamps=n_stamps, precision=cfg.precision)  # fmt: skip
        m, why = sink.scores_status(scores_root, ref.season, ref.night, **what, labels_fp=labels_fp)
        if skip_complete and why == nightstate.LABELS_CHANGED:
            # Only the labels changed: the same scores are published again with the new ones.
            publish.relabel_night(scores_root, ref.season, ref.night, zstore.read_stamp_ids(
                ref.path), zstore.read_labels(ref.path), labels_fp)  # fmt: skip
            m = sink.current_scores(scores_root, ref.season, ref.night, **what)
            summary.nights.append(
                NightScore(ref.season, ref.night, "relabelled", m["n_stamps"], m["n_candidates"],
                           m["n_errors"], sink.night_dir(scores_root, ref.season, ref.night))
            )  # fmt: skip
            continue
        if skip_complete and m:
            summary.nights.append(
                NightScore(
                    ref.season,
                    ref.night,
                    "skipped",
                    m["n_stamps"],
                    m["n_candidates"],
                    m["n_errors"],
                    sink.night_dir(scores_root, ref.season, ref.night),
                )
            )
            continue
        warm()  # a night to score: the workers start loading the model now
        # Parts staged with other labels are not resumed: the rows carry the labels.
        nkey = f"{key}-{labels_fp[:12]}"
        publish.discard_staging(scores_root, ref.season, ref.night, keep=nkey)
        stage = sink.staging_dir(scores_root, ref.season, ref.night, nkey)
        stage.mkdir(parents=True, exist_ok=True)
        plan = NightScoring(
            ref, stage, night_fp, n_stamps, publish.run_identity(stage), provenance.of_attrs(attrs),
            labels_fp,
        )  # fmt: skip
        plans[(ref.season, ref.night)] = plan
        # An empty night (every stamp quarantined) still publishes one part, of no rows: its
        # scores exist, and readers and reports see the night.
        slices = zstore.shard_slices(n_stamps, cfg.part_stamps) or [slice(0, 0)]
        for i, sl in enumerate(slices):
            part = sink.part_path(stage, i, plan.run["run_id"])
            if publish.part_rows(part) == sl.stop - sl.start:
                plan.stats[i] = _part_stats(part)  # resumed: done in an earlier run
                summary.n_parts_resumed += 1
                continue
            fut = client.submit(
                score_shard,
                str(ref.path),
                sl.start,
                sl.stop,
                str(part),
                str(keras_path),
                threshold,
                cfg.batch_size,
                cfg.precision,
                plan.run["run_id"],
                plan.run["scored_at"],
                pure=False,
            )
            jobs[fut] = ((ref.season, ref.night), i)
            plan.left += 1
    bar = tqdm(total=len(jobs), desc="score", unit="part", disable=not progress or not jobs)
    for fut in as_completed(jobs):
        k, i = jobs[fut]
        plan = plans[k]
        plan.stats[i] = fut.result()
        plan.left -= 1
        if summary.first_part_seconds is None:
            summary.first_part_seconds = time.perf_counter() - t0
        bar.update(1)
        if plan.left == 0:  # publish each night as soon as its last part lands
            summary.nights.append(_publish(plan, scores_root, card, threshold, cfg.precision))
    bar.close()
    for plan in plans.values():
        if not plan.published:  # every part was staged by an earlier, killed run
            summary.nights.append(_publish(plan, scores_root, card, threshold, cfg.precision))
    summary.nights.sort(key=lambda n: (n.season, n.night))
    return summary


def check_space(refs, scores_root, card, threshold: float, cfg: ScoreConfig, skip_complete: bool):
    """Fail before scoring when the scores' filesystem lacks the space the nights need.

    Estimated from what Parquet parts measure (about 14 bytes a stamp and 3 KiB a part, zstd):
    :data:`s2v_batch.store.scores.PART_BYTES_PER_STAMP` a stamp plus :data:`~s2v_batch.store.scores.PART_OVERHEAD`
    a part, for every night not skipped as current.

    Raises
    ------
    s2v_batch.core.faults.InsufficientSpaceError
    """
    stamps = parts = nights = 0
    for ref in refs:
        attrs = zstore.read_attrs(ref.path)
        n = int(attrs.get("n_stamps", 0))
        current = skip_complete and sink.current_scores(
            scores_root, ref.season, ref.night, night_fp=nightstate.fingerprint_of(attrs),
            model_sha256=card.sha256, threshold=threshold, n_stamps=n, precision=cfg.precision,
        )  # fmt: skip
        if not current:
            stamps += n
            parts += len(zstore.shard_slices(n, cfg.part_stamps))
            nights += 1
    need = stamps * sink.PART_BYTES_PER_STAMP + parts * sink.PART_OVERHEAD
    if nights:
        what = f"scoring {stamps:,} stamps of {nights} night(s) (estimated)"
        ensure_free_space(scores_root, need, what)


def _stamps_dtype(night: Path) -> str | None:
    try:
        return StampReader(zstore.stamps_path(night)).dtype.str
    except (OSError, ValueError, KeyError) as exc:
        if environment_fault(exc):
            raise
        return None


def _part_stats(part: Path) -> dict[str, int]:
    import pyarrow.parquet as pq

    t = pq.read_table(part, columns=["is_candidate", "score"])
    return {
        "n": t.num_rows,
        "n_candidates": int(np.asarray(t["is_candidate"]).sum()),
        "n_errors": t["score"].null_count,
    }


def _publish(plan: NightScoring, scores_root, card, threshold: float, precision: str) -> NightScore:
    ref, stats = plan.ref, plan.stats.values()
    n = sum(s["n"] for s in stats)
    if n != plan.n_stamps:
        raise ScoringInconsistency(
            f"{ref.season}/{ref.night}: {n} rows scored, expected {plan.n_stamps}"
        )
    n_cand = sum(s["n_candidates"] for s in stats)
    n_err = sum(s["n_errors"] for s in stats)
    manifest = sink.manifest_for(
        night_fp=plan.night_fp,
        model=card.to_dict(),
        run=plan.run,
        threshold=threshold,
        precision=precision,
        season=ref.season,
        night=ref.night,
        n_stamps=n,
        n_candidates=n_cand,
        n_errors=n_err,
        survey=survey_of_season(ref.season),
        data_provenance=plan.data_provenance,
        **{sink.LABELS_KEY: plan.labels_fp},
    )
    dest = publish.publish_night(plan.stage, scores_root, ref.season, ref.night, manifest)
    plan.published = True
    return NightScore(ref.season, ref.night, "scored", n, n_cand, n_err, dest)
