"""The worker side of scoring: one Parquet part from a range of a night's stamps.

Each worker process keeps its :class:`~s2v_batch.model.Predictor` (loaded once from the model's
file path, never pickled through the scheduler), its open nights (a
:class:`~s2v_batch.store.shardread.StampReader`, IDs and labels) and, per scoring thread, two block
buffers that a prefetch thread fills in turn. :class:`WarmUp` loads and traces the model on every
worker while the driver plans (:func:`s2v_batch.scoring.driver.score` registers it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from distributed.diagnostics.plugin import WorkerPlugin

from s2v_batch.core import provenance
from s2v_batch.core.conventions import CHANNELS
from s2v_batch.core.surveys import alert_score_columns
from s2v_batch.store import dataset as zstore
from s2v_batch.store import publish
from s2v_batch.store import scores as sink
from s2v_batch.store.shardread import StampReader

_PREDICTORS: dict[tuple, object] = {}
_LOCK = threading.Lock()
#: Open nights of this worker (reader, IDs, labels), the most recent last.
_NIGHTS: OrderedDict[tuple, _OpenNight] = OrderedDict()
_NIGHTS_KEPT = 4
#: Per scoring thread: the two block buffers the prefetching reader fills in turn.
_BUFFERS = threading.local()


def get_predictor(model_path: str, batch_size: int, precision: str = "float32"):
    """The worker's predictor for a model file at a precision (``float32``, ``bfloat16``),
    loaded (and sha256-checked) once per process."""
    # deferred: Keras and TensorFlow load on the worker, once, not in the client
    from s2v_batch.model import Predictor

    key = (
        str(Path(model_path).resolve()),
        os.stat(model_path).st_mtime_ns,
        batch_size,
        precision,
    )
    with _LOCK:
        pred = _PREDICTORS.get(key)
        if pred is None:
            pred = Predictor(model_path, batch_size=batch_size, precision=precision)
            _PREDICTORS[key] = pred
    return pred


def warm_up(model_path: str, batch_size: int, precision: str, dtypes: list[str]) -> None:
    """Load the model and trace its compiled call for each stamp dtype (the worker's start-up:
    TensorFlow's import, the model's load and one trace per dtype, 5-8 s of CPU on the VM).
    Nothing is run: a batch of zeros here cost the first part 0.7 s of compute on the VM."""
    pred = get_predictor(model_path, batch_size, precision)
    for dtype in dtypes:
        pred.prepare(dtype)


class WarmUp(WorkerPlugin):
    """Starts :func:`warm_up` in a background thread on every worker, present or joining later,
    so that TensorFlow's import, the model's load and its trace overlap the driver's planning
    instead of delaying each worker's first task. A task that needs the model before it is ready
    waits for it (:func:`get_predictor` holds a lock while loading); a failure here is left for
    that task to raise."""

    name = "s2v-score-warm-up"

    def __init__(self, model_path: str, batch_size: int, precision: str, dtypes: list[str]) -> None:
        self.args = (str(model_path), int(batch_size), str(precision), list(dtypes))

    def setup(self, worker: Any) -> None:
        threading.Thread(target=self._run, name=self.name, daemon=True).start()

    def _run(self) -> None:
        with contextlib.suppress(Exception):
            warm_up(*self.args)


@dataclass
class _OpenNight:
    reader: StampReader
    stamp_id: np.ndarray
    label: np.ndarray
    survey: str
    group: Any  # the open zarr group: an alert night's fields are read from it per task


def _open_night(night_path: str) -> _OpenNight:
    """A night's stamp reader, IDs and labels, opened once per worker (and again only when the
    dataset was replaced: its ``stamps/zarr.json`` is then another file)."""
    import zarr

    stamps = zstore.stamps_path(night_path)
    st = os.stat(stamps / "zarr.json")
    # The night's own metadata too: a labels update rewrites it (and the labels), not the pixels.
    meta = os.stat(Path(night_path) / "zarr.json")
    key = (str(night_path), st.st_ino, st.st_mtime_ns, meta.st_ino, meta.st_mtime_ns)
    with _LOCK:
        night = _NIGHTS.get(key)
        if night is not None:
            _NIGHTS.move_to_end(key)
            return night
    group = zarr.open_group(night_path, mode="r")
    survey = str(group.attrs.get("survey", "des"))
    night = _OpenNight(StampReader(stamps), group["stamp_id"][:], group["label"][:], survey, group)
    with _LOCK:
        _NIGHTS[key] = night
        while len(_NIGHTS) > _NIGHTS_KEPT:
            _NIGHTS.popitem(last=False)
    return night


def nonfinite_reason(stamp: np.ndarray) -> str:
    """Why a stamp scored NaN: which channels hold NaN/Inf pixels, and how many."""
    counts = (~np.isfinite(stamp)).sum(axis=(0, 1)) if stamp.dtype.kind == "f" else (0, 0, 0)
    where = ", ".join(f"{c}: {int(k)}" for c, k in zip(CHANNELS, counts, strict=True) if k)
    if not where:
        return "the model returned a non-finite score for finite pixels; not scored"
    return f"non-finite pixels after ingest ({where}); not scored"


def nonfinite_reasons(pixels: np.ndarray) -> list[str | None]:
    """Per stamp: None when every pixel is finite, else :func:`nonfinite_reason`."""
    if pixels.dtype.kind in "ui":
        return [None] * len(pixels)
    bad = ~np.isfinite(pixels).all(axis=(1, 2, 3))
    return [nonfinite_reason(pixels[i]) if b else None for i, b in enumerate(bad)]


def _guarded(pred: Any) -> bool:
    """Whether the model scores a stamp with a non-finite pixel NaN itself (NonFiniteGuard)."""
    # deferred: Keras (the worker has it loaded by now)
    from s2v_batch.model import NonFiniteGuard

    return any(isinstance(layer, NonFiniteGuard) for layer in pred.model.layers)


def score_block(pixels: np.ndarray, model_path: str, batch_size: int, precision: str = "float32"):
    """Scores of a block of stamps (NaN where a stamp has non-finite pixels) and the reasons.

    The model's :class:`~s2v_batch.model.NonFiniteGuard` already scores such a stamp NaN, so
    only stamps that scored NaN are looked at (a pass over every float pixel saved); a model
    without the guard gets its non-finite stamps left out first.
    """
    pred = get_predictor(model_path, batch_size, precision)
    if pixels.dtype.kind == "f" and not _guarded(pred):
        reasons = nonfinite_reasons(pixels)
        ok = np.array([r is None for r in reasons], dtype=bool)
        scores = np.full(len(pixels), np.nan, dtype=np.float32)
        if ok.any():
            scores[ok] = pred.predict(pixels[ok] if not ok.all() else pixels)
        return scores, reasons
    scores = pred.predict(pixels) if len(pixels) else np.zeros(0, np.float32)
    reasons: list[str | None] = [None] * len(pixels)
    for i in np.flatnonzero(np.isnan(scores)):
        reasons[i] = nonfinite_reason(pixels[i])
    return scores, reasons


def prefetched_blocks(arr, start: int, stop: int, step: int) -> Iterator[np.ndarray]:
    """Read ``arr[start:stop]`` in blocks of ``step``; the next block is read and decompressed in
    a background thread while the caller scores the current one (it keeps a GPU fed)."""
    edges = [*range(start, stop, step), stop]
    if len(edges) < 2:
        return
    with ThreadPoolExecutor(1) as pool:
        nxt = pool.submit(arr.__getitem__, slice(edges[0], edges[1]))
        for a, b in zip(edges[1:-1], edges[2:], strict=True):
            cur, nxt = nxt, pool.submit(arr.__getitem__, slice(a, b))
            yield cur.result()
        yield nxt.result()


def prefetched_reads(reader: StampReader, start: int, stop: int, step: int) -> Iterator[np.ndarray]:
    """Like :func:`prefetched_blocks` for a :class:`~s2v_batch.store.shardread.StampReader`, reading
    into two buffers kept by the calling thread and used in turn: no block is allocated (fresh
    pages cost the VM about 15 us a float32 stamp in page faults). A block stays valid until the
    caller asks for the one after the next."""
    edges = [*range(start, stop, step), stop]
    if len(edges) < 2:
        return
    shape = (step, *reader.shape[1:])
    bufs = getattr(_BUFFERS, "pair", None)
    if bufs is None or bufs[0].shape != shape or bufs[0].dtype != reader.dtype:
        bufs = _BUFFERS.pair = (np.empty(shape, reader.dtype), np.empty(shape, reader.dtype))

    def load(i: int) -> np.ndarray:
        a, b = edges[i], edges[i + 1]
        return reader.read(a, b, out=bufs[i % 2][: b - a])

    with ThreadPoolExecutor(1) as pool:
        nxt = pool.submit(load, 0)
        for i in range(len(edges) - 1):
            cur = nxt.result()
            if i + 2 < len(edges):
                nxt = pool.submit(load, i + 1)
            yield cur


def score_shard(
    night_path: str,
    start: int,
    stop: int,
    out_part: str,
    model_path: str,
    threshold: float,
    batch_size: int,
    precision: str,
    run_id: str,
    scored_at: str,
) -> dict:
    """Read stamps ``[start, stop)`` of a night, score them, write one Parquet part; return counts."""
    night = _open_night(night_path)
    stamp_id = night.stamp_id[start:stop]
    label = night.label[start:stop]
    pred = get_predictor(model_path, batch_size, precision)
    chunk = night.reader.chunk_stamps
    step = -(-2 * batch_size // chunk) * chunk  # whole inner chunks
    scores = np.empty(stop - start, np.float32)
    reasons: list[str | None] = []
    at = 0
    for pixels in prefetched_reads(night.reader, start, stop, step):
        sc, rs = score_block(pixels, model_path, batch_size, precision)
        scores[at : at + len(sc)] = sc
        reasons.extend(rs)
        at += len(sc)
    n = len(scores)
    valid = np.isfinite(scores)
    cand = valid & (scores >= np.float32(threshold))
    ts = dt.datetime.fromisoformat(scored_at)
    frac = np.asarray(night.group["masked_fraction"][start:stop], np.float32)
    limit = pred.card.max_masked_fraction  # scored anyway above it; the row says so
    over = pa.nulls(n, pa.bool_()) if limit is None else pa.array(frac > np.float32(limit))
    table = pa.table(
        {
            "stamp_id": pa.array(stamp_id, pa.int64()),
            "score": pa.array(scores, pa.float32(), mask=~valid),
            "is_candidate": pa.array(cand),
            "threshold": pa.array(np.full(n, threshold, np.float32)),
            "label": pa.array(label, pa.int8(), mask=label < 0),
            "model_version": _repeat(f"{pred.card.name}-{pred.card.version}", n),
            "precision": _repeat(pred.precision, n),
            "model_sha256": _repeat(pred.sha256, n),
            "run_id": _repeat(run_id, n),
            "scored_at": pa.repeat(pa.scalar(ts, pa.timestamp("us", tz="UTC")), n),
            "error": pa.array(reasons, pa.string()),
            "data_provenance": _repeat(provenance.of_attrs(night.group.attrs), n),
            "masked_fraction": pa.array(frac, pa.float32()),
            "masked_over_limit": over,
            **alert_score_columns(night.group, night.survey, start, stop),  # none for DES
        }
    )
    publish.write_part(out_part, table, sink.score_schema(night.survey))
    return {"n": n, "n_candidates": int(cand.sum()), "n_errors": int((~valid).sum())}


def _repeat(value: str, n: int) -> pa.Array:
    return pa.repeat(pa.scalar(value, pa.string()), n)
