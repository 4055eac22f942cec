"""The verdicts of people who scan candidates: one row a verdict, in SQLite or PostgreSQL.

A verdict is ``real``, ``bogus`` or ``skip``; taking one back is a row too (``undo``, naming the
row it undoes in ``undoes``), never a delete, so the table is the whole history of a scanning
session. A verdict *stands* while no undo names it (:func:`effective_sql`).

Where the rows live (:func:`open_verdicts`):

- SQLite (the default): a file beside the scores, ``SCORES/_verdicts.sqlite`` (the leading
  ``_`` keeps pyarrow's and pandas' hive readers from taking it for data), in WAL mode with
  ``synchronous=FULL``: each verdict is one transaction, and a committed one survives the server
  being killed (and the machine losing power);
- PostgreSQL by URL (``postgresql://user@host:port/db``, psycopg 3) for a team sharing one
  database.

Columns: ``id``, ``stamp_id``, ``season``, ``night``, ``scanner``, ``verdict``, ``seconds`` (from
when the stamp was shown to the key), ``model_version``, ``model_sha256`` and ``score`` (what the
scanner was shown), ``at`` (UTC), ``session`` and ``undoes``.
"""

from __future__ import annotations

import datetime as dt
import math
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "DB_FILE",
    "UNDO",
    "VERDICTS",
    "AlreadyJudgedError",
    "VerdictDB",
    "VerdictError",
    "default_db",
    "open_verdicts",
]

#: The verdicts a scanner gives; ``undo`` rows take the scanner's last standing one back.
VERDICTS: tuple[str, str, str] = ("real", "bogus", "skip")
UNDO = "undo"
#: The default database's file name, in the scores root.
DB_FILE = "_verdicts.sqlite"
#: Columns of the table, in order (``read`` returns them).
COLUMNS = ("id", "stamp_id", "season", "night", "scanner", "verdict", "seconds", "model_version",
           "model_sha256", "score", "at", "session", "undoes")  # fmt: skip
#: The longest seconds a verdict may record (a scanner away from the desk is not scanning).
MAX_SECONDS = 24 * 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    id {serial} PRIMARY KEY,
    stamp_id BIGINT NOT NULL,
    season TEXT NOT NULL,
    night INTEGER NOT NULL,
    scanner TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('real', 'bogus', 'skip', 'undo')),
    seconds DOUBLE PRECISION,
    model_version TEXT,
    model_sha256 TEXT,
    score DOUBLE PRECISION,
    at {time} NOT NULL,
    session TEXT,
    undoes BIGINT UNIQUE REFERENCES verdicts(id)
);
CREATE INDEX IF NOT EXISTS verdicts_scanner ON verdicts (scanner, season, stamp_id);
CREATE INDEX IF NOT EXISTS verdicts_stamp ON verdicts (season, stamp_id)
"""
#: Rows that stand: not an undo, and not undone (the UNIQUE index on ``undoes`` serves this).
_STANDING = "verdict <> 'undo' AND NOT EXISTS (SELECT 1 FROM verdicts u WHERE u.undoes = v.id)"


class VerdictError(ValueError):
    """A verdict or a database that cannot be used (the message says why, in one line)."""


class AlreadyJudgedError(VerdictError):
    """The scanner has a standing verdict on this stamp already (nothing was written)."""


def default_db(scores_root: str | Path) -> Path:
    """The default SQLite database of a scores root: ``SCORES/_verdicts.sqlite``."""
    return Path(scores_root) / DB_FILE


def effective_sql() -> str:
    """The SQL condition (on the alias ``v``) of a verdict that stands (see the module doc)."""
    return _STANDING


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class VerdictDB:
    """One verdict database: SQLite (``path``) or PostgreSQL (``url``); thread-safe.

    Use :func:`open_verdicts`. Every method is one transaction; one connection is shared by the
    threads of a server behind a lock (a verdict takes well under a millisecond to write).
    """

    def __init__(self, target: str | Path) -> None:
        text = str(target)
        self.url = text
        self._lock = threading.Lock()
        if text.startswith(("postgresql://", "postgres://")):
            self.kind = "postgresql"
            # deferred: psycopg is needed only for a PostgreSQL database
            import psycopg

            try:
                self._conn = psycopg.connect(text, autocommit=True, connect_timeout=10)
            except psycopg.Error as exc:
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise VerdictError(f"cannot connect to the verdict database {text}: {msg}") from exc
            self._param = "%s"
            schema = _SCHEMA.format(serial="BIGSERIAL", time="TIMESTAMPTZ")
            with self._conn.transaction():
                # Two servers starting at once must not both create the table.
                self._conn.execute("SELECT pg_advisory_xact_lock(2424242424)")
                for stmt in schema.split(";"):
                    self._conn.execute(stmt)
        else:
            self.kind = "sqlite"
            path = Path(text.removeprefix("sqlite:///"))
            if not path.parent.is_dir():
                raise VerdictError(f"the folder of the verdict database {path} does not exist")
            try:
                self._conn = sqlite3.connect(
                    path, check_same_thread=False, isolation_level=None, timeout=30
                )
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
                self._conn.execute("PRAGMA foreign_keys=ON")
                self._conn.executescript(
                    _SCHEMA.format(serial="INTEGER", time="TEXT").replace(
                        "INTEGER PRIMARY KEY", "INTEGER PRIMARY KEY AUTOINCREMENT"
                    )
                )
            except sqlite3.DatabaseError as exc:
                raise VerdictError(
                    f"{path} is not a usable SQLite verdict database: {exc}"
                ) from exc
            self._param = "?"

    # ------------------------------------------------------------------ plumbing

    def _sql(self, text: str) -> str:
        return text.replace("?", self._param) if self._param != "?" else text

    def _run(self, fn):
        """Run ``fn(cursor)`` in one transaction (BEGIN IMMEDIATE in SQLite: writers queue)."""
        with self._lock:
            if self.kind == "sqlite":
                cur = self._conn.cursor()
                cur.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(cur)
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                cur.execute("COMMIT")
                return out
            with self._conn.transaction():
                return fn(self._conn.cursor())

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> VerdictDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writing

    def record(
        self,
        *,
        stamp_id: int,
        season: str,
        night: int,
        scanner: str,
        verdict: str,
        seconds: float | None,
        model_version: str | None = None,
        model_sha256: str | None = None,
        score: float | None = None,
        session: str | None = None,
    ) -> int:
        """Write one verdict in its own transaction; its row ``id``.

        Raises
        ------
        VerdictError
            A verdict not in :data:`VERDICTS`, no scanner name, or seconds not in
            [0, :data:`MAX_SECONDS`].
        AlreadyJudgedError
            The scanner's standing verdict on this stamp exists (a client retrying a request).
        """
        if verdict not in VERDICTS:
            raise VerdictError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
        if not scanner or not isinstance(scanner, str):
            raise VerdictError("a verdict needs the scanner's name")
        if seconds is not None and not (math.isfinite(seconds) and 0 <= seconds <= MAX_SECONDS):
            raise VerdictError(f"seconds must be in [0, {MAX_SECONDS:g}], got {seconds!r}")
        row = (int(stamp_id), season, int(night), scanner, verdict,
               None if seconds is None else float(seconds), model_version, model_sha256,
               None if score is None else float(score), self._time(), session)  # fmt: skip

        def write(cur: Any) -> int:
            if self.kind == "postgresql":
                # One writer per (scanner, stamp) at a time, across servers sharing the database.
                cur.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{scanner}|{stamp_id}",)
                )
            cur.execute(
                self._sql(
                    f"SELECT 1 FROM verdicts v WHERE scanner = ? AND season = ? AND stamp_id = ? "
                    f"AND {_STANDING}"
                ),
                (scanner, season, int(stamp_id)),
            )
            if cur.fetchone() is not None:
                raise AlreadyJudgedError(
                    f"scanner {scanner!r} has judged stamp {stamp_id} of {season} already"
                )
            cur.execute(
                self._sql(
                    "INSERT INTO verdicts (stamp_id, season, night, scanner, verdict, seconds, "
                    "model_version, model_sha256, score, at, session) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id"
                ),
                row,
            )
            return int(cur.fetchone()[0])

        return self._run(write)

    def undo_last(self, scanner: str, session: str | None = None) -> dict[str, Any] | None:
        """Take back the scanner's last standing verdict (an ``undo`` row naming it).

        Returns
        -------
        dict or None
            The undone row (``COLUMNS``), or None when the scanner has nothing left to undo.
        """

        def write(cur: Any) -> dict[str, Any] | None:
            if self.kind == "postgresql":
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"undo|{scanner}",))
            cur.execute(
                self._sql(
                    f"SELECT {', '.join(COLUMNS)} FROM verdicts v WHERE scanner = ? AND "
                    f"{_STANDING} ORDER BY id DESC LIMIT 1"
                ),
                (scanner,),
            )
            last = cur.fetchone()
            if last is None:
                return None
            doc = dict(zip(COLUMNS, last, strict=True))
            cur.execute(
                self._sql(
                    "INSERT INTO verdicts (stamp_id, season, night, scanner, verdict, seconds, "
                    "model_version, model_sha256, score, at, session, undoes) "
                    "VALUES (?, ?, ?, ?, 'undo', NULL, ?, ?, ?, ?, ?, ?)"
                ),
                (doc["stamp_id"], doc["season"], doc["night"], scanner, doc["model_version"],
                 doc["model_sha256"], doc["score"], self._time(), session, doc["id"]),
            )  # fmt: skip
            return doc

        return self._run(write)

    def _time(self) -> Any:
        # SQLite has no time type: ISO 8601 text in UTC, which sorts and parses as time.
        return _now() if self.kind == "postgresql" else _now().isoformat(timespec="microseconds")

    # ------------------------------------------------------------------ reading

    def judged(self, scanner: str, season: str) -> set[int]:
        """The stamps of a season on which the scanner has a standing verdict (skips included)."""
        rows = self._run(
            lambda cur: cur.execute(
                self._sql(
                    f"SELECT stamp_id FROM verdicts v WHERE scanner = ? AND season = ? AND {_STANDING}"
                ),
                (scanner, season),
            ).fetchall()
        )
        return {int(r[0]) for r in rows}

    def decided(self, season: str) -> dict[int, int]:
        """Standing real/bogus verdicts a stamp, per stamp of the season that has any."""
        rows = self._run(
            lambda cur: cur.execute(
                self._sql(
                    "SELECT stamp_id, COUNT(*) FROM verdicts v WHERE season = ? AND "
                    f"verdict IN ('real', 'bogus') AND {_STANDING} GROUP BY stamp_id"
                ),
                (season,),
            ).fetchall()
        )
        return {int(s): int(n) for s, n in rows}

    def count(self) -> int:
        """Rows in the table (undo rows included)."""
        return int(
            self._run(lambda cur: cur.execute("SELECT COUNT(*) FROM verdicts").fetchone())[0]
        )

    def read(
        self,
        season: str | None = None,
        nights: Iterable[int] | None = None,
        standing: bool = False,
    ):
        """The rows as a pandas DataFrame (columns :data:`COLUMNS`; ``at`` as UTC time).

        Parameters
        ----------
        season : str, optional
            Only this season.
        nights : iterable of int, optional
            Only these nights.
        standing : bool
            Only the verdicts that stand (no undo rows, nothing undone).
        """
        # deferred: pandas is slow to import and the scanning server does not need it
        import pandas as pd

        where, params = [], []
        if season is not None:
            where.append("season = ?")
            params.append(season)
        if nights is not None:
            ns = sorted({int(n) for n in nights})
            if not ns:
                return pd.DataFrame({c: [] for c in COLUMNS})
            where.append(f"night IN ({', '.join('?' * len(ns))})")
            params.extend(ns)
        if standing:
            where.append(_STANDING)
        sql = f"SELECT {', '.join(COLUMNS)} FROM verdicts v"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        rows = self._run(lambda cur: cur.execute(self._sql(sql), tuple(params)).fetchall())
        df = pd.DataFrame([tuple(r) for r in rows], columns=list(COLUMNS))
        df["id"] = df["id"].astype("int64")
        df["stamp_id"] = df["stamp_id"].astype("int64")
        df["night"] = df["night"].astype("int64")
        df["seconds"] = df["seconds"].astype("float64")
        df["score"] = df["score"].astype("float64")
        df["undoes"] = df["undoes"].astype("Int64")
        df["at"] = pd.to_datetime(df["at"], utc=True, format="ISO8601")
        return df


def open_verdicts(target: str | Path) -> VerdictDB:
    """Open (creating the table when needed) a verdict database.

    Parameters
    ----------
    target : str or path
        ``postgresql://...`` (or ``postgres://...``), ``sqlite:///PATH``, or a file path
        (SQLite; created when missing, in an existing folder).

    Returns
    -------
    VerdictDB
    """
    return VerdictDB(target)
