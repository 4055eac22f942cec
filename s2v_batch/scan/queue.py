"""What a scanner sees next: the candidates of the scores, in a queue order, each shown to a scanner
once, and to as many scanners as ``per_stamp`` verdicts ask.

The candidates (``is_candidate``, errored rows left out) of the chosen season and night are read
once from the Parquet scores. Three queue orders, chosen per session (:data:`ORDERS`):

- ``best``: highest score first (the model's surest candidates);
- ``threshold``: nearest the threshold first (the most uncertain: they teach the model most);
- ``disagree``: where s2v's score and the survey's own (ZTF ``drb``, Rubin ``reliability``)
  differ most first (alert surveys only).

A scanner never gets a stamp they have a standing verdict on (skips included); a stamp handed to
a session is held for it (a *lease*, :data:`LEASE_SECONDS`) so that scanners working at once get
different stamps until a stamp has ``per_stamp`` real/bogus verdicts.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from s2v_batch.metrics.agreement import SURVEY_SCORE
from s2v_batch.store.scores import read_scores

__all__ = ["LEASE_SECONDS", "ORDERS", "Candidates", "QueueError", "Session", "load_candidates"]

#: Queue orders: name -> what it shows first.
ORDERS: dict[str, str] = {
    "best": "highest score first",
    "threshold": "nearest the threshold first (the most uncertain)",
    "disagree": "s2v and the survey's score disagree most first",
}
#: How long a stamp handed to a session is held from other sessions.
LEASE_SECONDS = 300.0
#: Alert fields shown beside the stamp, when the scores hold them.
SHOWN_FIELDS = ("objectId", "band", "magpsf", "ra", "dec", "drb", "reliability")

Key = tuple[str, int]  # (season, stamp_id)


class QueueError(ValueError):
    """A request the queue cannot serve (the message is the one-line answer); ``status`` says
    which HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Session:
    """One scanner's sitting: the queue order, where its scan of the order is, what it holds."""

    id: str
    scanner: str
    order: str
    cursor: int = 0
    held: dict[Key, float] = field(default_factory=dict)  # key -> when handed out (monotonic)


@dataclass
class Candidates:
    """The candidates of a scores root (one row each) and the scanning state around them.

    Build with :func:`load_candidates`; every method is thread-safe.
    """

    rows: list[dict[str, Any]]
    orders: dict[str, np.ndarray]
    per_stamp: int = 1
    index: dict[Key, int] = field(default_factory=dict)
    decided: dict[Key, int] = field(default_factory=dict)  # standing real/bogus verdicts
    judged: dict[str, set[Key]] = field(default_factory=dict)  # scanner -> keys
    leases: dict[Key, dict[str, float]] = field(default_factory=dict)  # key -> session -> expiry
    sessions: dict[str, Session] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.index = {(r["season"], r["stamp_id"]): i for i, r in enumerate(self.rows)}

    def __len__(self) -> int:
        return len(self.rows)

    def seasons(self) -> list[str]:
        """The seasons the candidates come from."""
        return sorted({r["season"] for r in self.rows})

    def row(self, season: str, stamp_id: int) -> dict[str, Any]:
        """The candidate's row; QueueError (404) when it is not one of the scores' candidates."""
        i = self.index.get((season, int(stamp_id)))
        if i is None:
            raise QueueError(f"stamp {stamp_id} of season {season} is not a candidate here", 404)
        return self.rows[i]

    def open_session(self, scanner: str, order: str, judged: set[Key]) -> Session:
        """A new session of ``scanner`` (whose standing verdicts are ``judged``)."""
        if order not in self.orders:
            known = ", ".join(self.orders)
            raise QueueError(f"queue order {order!r} is not available here (choose: {known})")
        with self.lock:
            s = Session(uuid.uuid4().hex, scanner, order)
            self.sessions[s.id] = s
            self.judged.setdefault(scanner, set()).update(judged)
            return s

    def session(self, sid: Any) -> Session:
        """The session named ``sid``; QueueError (404) when there is none."""
        s = self.sessions.get(sid) if isinstance(sid, str) else None
        if s is None:
            raise QueueError("unknown session (the server may have restarted: open a new one)", 404)
        return s

    def _free(self, key: Key, s: Session, now: float) -> bool:
        if key in self.judged.get(s.scanner, ()) or key in s.held:
            return False
        others = self.leases.get(key)
        n = self.decided.get(key, 0)
        if others:
            for sid, until in list(others.items()):
                if until < now:
                    del others[sid]
            n += sum(1 for sid in others if sid != s.id)
        return n < self.per_stamp

    def next(self, s: Session, n: int) -> list[dict[str, Any]]:
        """Up to ``n`` more stamps for the session (held for it), in its queue order."""
        order = self.orders[s.order]
        out: list[Key] = []
        with self.lock:
            now = time.monotonic()
            # The session's own cursor makes a call cheap; stamps it passed may come free later
            # (a lease that lapsed), so an empty scan starts once more from the top.
            for start in (s.cursor, 0):
                i = start
                while i < len(order) and len(out) < n:
                    key = self._key(order[i])
                    if self._free(key, s, now):
                        out.append(key)
                        s.held[key] = now
                        self.leases.setdefault(key, {})[s.id] = now + LEASE_SECONDS
                    i += 1
                if start == s.cursor:
                    s.cursor = i
                if out or start == 0:
                    break
        return [self.rows[self.index[k]] for k in out]

    def _key(self, i: int) -> Key:
        r = self.rows[int(i)]
        return r["season"], r["stamp_id"]

    def judge(self, s: Session, key: Key, verdict: str) -> None:
        """Count a verdict the database has just written."""
        with self.lock:
            s.held.pop(key, None)
            self.leases.get(key, {}).pop(s.id, None)
            self.judged.setdefault(s.scanner, set()).add(key)
            if verdict in ("real", "bogus"):
                self.decided[key] = self.decided.get(key, 0) + 1

    def unjudge(self, s: Session, key: Key, verdict: str) -> None:
        """Count an undo the database has just written: the stamp goes back to the session."""
        with self.lock:
            self.judged.get(s.scanner, set()).discard(key)
            if verdict in ("real", "bogus") and self.decided.get(key, 0) > 0:
                self.decided[key] -= 1
            now = time.monotonic()
            s.held[key] = now
            self.leases.setdefault(key, {})[s.id] = now + LEASE_SECONDS

    def progress(self, s: Session) -> dict[str, int]:
        """``done`` (this scanner's standing verdicts here) of ``total`` candidates."""
        with self.lock:
            done = sum(1 for k in self.judged.get(s.scanner, ()) if k in self.index)
        return {"done": done, "total": len(self.rows)}


def _tiebreak(stamp_id: np.ndarray) -> np.ndarray:
    # Fibonacci hashing: equal scores (a float32 1.0) come in a fixed order spread over nights.
    with np.errstate(over="ignore"):
        return stamp_id.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)


def load_candidates(
    scores: str | Path,
    *,
    season: str | None = None,
    night: int | None = None,
    per_stamp: int = 1,
) -> Candidates:
    """The candidates of a scores root (of one season and night when given).

    Raises
    ------
    QueueError
        No scores, or no candidate among them.
    """
    if not Path(scores).is_dir():
        raise QueueError(f"scores root {scores} does not exist")
    if not (isinstance(per_stamp, int) and per_stamp >= 1):
        raise QueueError(f"--per-stamp must be an integer >= 1, got {per_stamp!r}")
    df = read_scores(scores, season)
    if night is not None:
        df = df[df["night"] == int(night)]
    where = f"season {season or '*'}, night {night or '*'}"
    if "error" in df.columns:
        df = df[df["error"].isna()]
    df = df[df["is_candidate"].astype(bool)]
    if df.empty:
        raise QueueError(f"no scored candidates in {scores} ({where})")
    df = df.reset_index(drop=True)
    ids = df["stamp_id"].to_numpy(np.int64)
    score = df["score"].to_numpy(np.float64)
    thr = df["threshold"].to_numpy(np.float64)
    tie = _tiebreak(ids)
    orders = {
        "best": np.lexsort((tie, -score)),
        "threshold": np.lexsort((tie, np.abs(score - thr))),
    }
    survey_col = next((c for c in SURVEY_SCORE.values() if c in df.columns), None)
    if survey_col is not None:
        other = df[survey_col].to_numpy(np.float64)
        gap = np.where(np.isfinite(other), np.abs(score - other), -1.0)
        orders["disagree"] = np.lexsort((tie, -gap))
    shown = [c for c in SHOWN_FIELDS if c in df.columns]
    rows = []
    for rec in df[["season", "night", "stamp_id", "score", "threshold", "model_version",
                   "model_sha256", *shown]].itertuples(index=False):  # fmt: skip
        r = dict(zip(["season", "night", "stamp_id", "score", "threshold", "model_version",
                      "model_sha256", *shown], rec, strict=True))  # fmt: skip
        r["season"], r["night"], r["stamp_id"] = (
            str(r["season"]),
            int(r["night"]),
            int(r["stamp_id"]),
        )
        for k, val in r.items():
            if isinstance(val, np.generic):
                r[k] = val.item()
            if isinstance(r[k], float) and not math.isfinite(r[k]):
                r[k] = None
        rows.append(r)
    return Candidates(rows=rows, orders=orders, per_stamp=per_stamp)
