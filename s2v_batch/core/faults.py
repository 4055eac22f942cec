"""Faults of the environment: which kind an exception is, its exit status, and one line about it.

Bad *stamps* are quarantined where they are read; this module is about everything else that stops
a run: a full disk or quota, a read-only filesystem, permission denied, a store or raw folder that
vanishes mid-run, a busy writer lock, a Dask scheduler that cannot be reached or dies, a worker
that keeps dying. :func:`classify` maps any exception (also one re-raised in the client after it
happened on a Dask worker: distributed re-raises the worker's exception, with its ``errno`` and
file name) to a :class:`Fault`: a kind, an exit status (sysexits.h), whether retrying can help,
and one line naming the path or the service and what to do. The ``s2v`` command prints that line;
the Prefect flows retry through :func:`is_transient`.

Exit statuses (the ``s2v`` command documents them in its ``--help``):

==== ===================== ==============================================================
0    done
1    unexpected error      a bug: the log file holds the traceback
2    bad input             arguments or inputs as a whole (as before)
69   EX_UNAVAILABLE        Dask scheduler unreachable or lost; a worker that keeps dying
74   EX_IOERR              disk full or quota, read-only filesystem, a path vanished, I/O
75   EX_TEMPFAIL           another process is writing the same season or night (busy)
77   EX_NOPERM             permission denied
130  interrupted           Ctrl-C: run the same command again to resume
==== ===================== ==============================================================
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69
EXIT_IOERR = 74
EXIT_TEMPFAIL = 75
EXIT_NOPERM = 77
EXIT_INTERRUPTED = 130

#: What to say after any fault of the environment: finished work is kept and reused.
RERUN = "then run the same command again (finished work is kept and reused)"

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_PERMISSION = {errno.EACCES, errno.EPERM}
_VANISHED = {errno.ENOENT, errno.ESTALE}
_BAD_PATH = {errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP}
#: OS errors that say the environment failed, not that the data are incomplete or missing.
_ENVIRONMENT = {*_PERMISSION, *_NO_SPACE, errno.EIO, errno.EROFS, errno.ESTALE, errno.ENOTCONN,
                errno.ETIMEDOUT}  # fmt: skip
_ERRNO_TEXT = re.compile(r"\[?[Ee]rrno (\d+)\]?")


@dataclass(frozen=True)
class Fault:
    """A classified error: ``kind``, exit ``status``, whether a retry may help, one-line ``message``."""

    kind: str
    status: int
    transient: bool
    message: str


class InsufficientSpaceError(OSError):
    """Not enough free space for what a run is about to write (found before writing any of it).

    An ``OSError`` with ``errno.ENOSPC``, so it is handled as a full disk everywhere.
    """

    def __init__(self, path: str | os.PathLike[str], needed: int, available: int, what: str):
        self.needed, self.available, self.what = int(needed), int(available), what
        text = f"{what} needs about {human_bytes(needed)}, {human_bytes(available)} free"
        super().__init__(errno.ENOSPC, text, str(path))


class ClusterUnavailableError(RuntimeError):
    """The Dask scheduler cannot be reached, or was lost while the run used it."""

    def __init__(self, address: str, reason: str, *, lost: bool):
        self.address, self.reason, self.lost = address, reason, lost
        what = "lost the Dask scheduler" if lost else "cannot reach the Dask scheduler"
        super().__init__(f"{what} at {address} ({reason})")


# --------------------------------------------------------------------------- helpers


def human_bytes(n: float) -> str:
    """``n`` bytes as a short human figure (``12.0 MiB``)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # unreachable


def existing_ancestor(path: str | os.PathLike[str]) -> Path:
    """The nearest folder of ``path`` (itself included) that exists."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes this process may still write on the filesystem of ``path`` (None where unknown).

    From ``statvfs`` (``shutil.disk_usage``): quotas that the filesystem does not report are not
    seen here; they fail later, as ``EDQUOT``, and are reported the same way.
    """
    try:
        return shutil.disk_usage(existing_ancestor(path)).free
    except OSError:
        return None


def ensure_free_space(path: str | os.PathLike[str], needed: int, what: str) -> None:
    """Raise :class:`InsufficientSpaceError` when the filesystem of ``path`` has less than
    ``needed`` bytes free (nothing is checked where it does not report its free space)."""
    free = free_bytes(path)
    if free is not None and needed > free:
        raise InsufficientSpaceError(existing_ancestor(path), needed, free, what)


@contextlib.contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Name ``path`` in an ``OSError`` raised while writing it, where the error names no file.

    pyarrow and zarr raise ``OSError(ENOSPC)`` without a file name; the message of a fault must
    say where it happened, also when the error comes back from a Dask worker.
    """
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or isinstance(exc, InsufficientSpaceError):
            raise
        code = os_errno(exc)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from exc


def os_errno(exc: BaseException) -> int | None:
    """The ``errno`` of an OS error, also where a library only put it in the message."""
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code > 0:
        return code
    if not isinstance(exc, OSError):
        return None
    text = str(exc)
    m = _ERRNO_TEXT.search(text)
    if m:
        return int(m.group(1))
    for known in (*_NO_SPACE, errno.EROFS, *_PERMISSION, errno.EIO):
        if os.strerror(known) in text:
            return known
    return None


def environment_fault(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is an OS error of the environment:
    permission denied, an I/O error, a stale or lost network mount, a full disk.

    A reader that takes unreadable data for incomplete data must re-raise these, so that the run
    stops with the fault's own line and exit status instead of asking to ingest again.
    """
    return any(isinstance(e, OSError) and os_errno(e) in _ENVIRONMENT for e in _chain(exc))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from (explicit causes, unsuppressed contexts)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and len(seen) < 16:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or (None if cur.__suppress_context__ else cur.__context__)


def _where(exc: OSError) -> str:
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    return " -> ".join(names)


def mount_point(path: str | os.PathLike[str]) -> Path:
    """The mount point of the filesystem that holds ``path`` (or would hold it)."""
    p = existing_ancestor(path)
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def _free_text(path: str) -> str:
    if not path:
        return ""
    try:
        usage = shutil.disk_usage(existing_ancestor(path))
    except OSError:
        return ""
    return f" ({human_bytes(usage.free)} free of {human_bytes(usage.total)} on {mount_point(path)})"


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return os.environ.get("USER", "this user")


# --------------------------------------------------------------------------- classification


def _os_fault(exc: OSError) -> Fault | None:
    """The fault of an ``OSError`` with a known ``errno``; None for one without."""
    code = os_errno(exc)
    if code is None:
        return None
    where = _where(exc)
    at = f" {where}" if where else ""
    if isinstance(exc, InsufficientSpaceError):
        return Fault(
            "no-space",
            EXIT_IOERR,
            False,
            f"not enough space on {exc.filename}: {exc.strerror}; free space there or use "
            f"another folder, {RERUN}",
        )
    if code in _NO_SPACE:
        what = "disk quota exceeded" if code == errno.EDQUOT else "no space left on the device"
        hint = "free space in your quota (quota -s)" if code == errno.EDQUOT else "free space"
        return Fault(
            "no-space",
            EXIT_IOERR,
            False,
            f"{what} writing{at}{_free_text(where.split(' -> ')[-1])}; {hint} there or use "
            f"another folder, {RERUN}",
        )
    if code == errno.EROFS:
        return Fault(
            "read-only",
            EXIT_IOERR,
            False,
            f"{where or 'the output'} is on a read-only filesystem; remount it read-write or "
            f"use another folder, {RERUN}",
        )
    if code in _PERMISSION:
        return Fault(
            "permission",
            EXIT_NOPERM,
            False,
            f"permission denied:{at} (running as {_user()}); give this user access to it "
            f"(chmod/chown) or use another folder, {RERUN}",
        )
    if code in _VANISHED:
        return Fault(
            "vanished",
            EXIT_IOERR,
            False,
            f"{where or 'a file'} disappeared while the run used it (deleted, moved or "
            f"unmounted?); restore it, {RERUN}",
        )
    if code in _BAD_PATH:
        return Fault("bad-input", EXIT_USAGE, False, f"{exc.strerror or exc}:{at}")
    return Fault(
        "io",
        EXIT_IOERR,
        True,
        f"I/O error on{at or ' a file'}: {exc.strerror or exc}; check that filesystem, {RERUN}",
    )


def _distributed_fault(exc: BaseException) -> Fault | None:
    """Faults of the Dask cluster (only where ``distributed`` is loaded: it raised them)."""
    if isinstance(exc, ClusterUnavailableError):
        what = (
            "restart it (or use another --cluster)"
            if exc.lost
            else "start it or check the --cluster address"
        )
        return Fault(
            "scheduler-lost" if exc.lost else "scheduler-unreachable",
            EXIT_UNAVAILABLE,
            True,
            f"{exc}; {what}, {RERUN}",
        )
    if "distributed" not in sys.modules:
        return None
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError
    from distributed.comm.core import CommClosedError

    if isinstance(exc, KilledWorker):
        worker = getattr(exc.last_worker, "address", exc.last_worker)
        return Fault(
            "worker-lost",
            EXIT_UNAVAILABLE,
            True,
            f"Dask workers died {exc.allowed_failures + 1} time(s) running task {exc.task!r} "
            f"(last: {worker}); a worker killed for memory or by the batch system? Check the "
            f"workers' memory limit and logs, {RERUN}",
        )
    if isinstance(exc, CommClosedError) or (
        isinstance(exc, FutureCancelledError) and "connection" in str(exc.reason)
    ):
        return Fault(
            "scheduler-lost",
            EXIT_UNAVAILABLE,
            True,
            f"lost the connection to the Dask scheduler ({exc}); restart it, {RERUN}",
        )
    return None


def classify(exc: BaseException) -> Fault:
    """The :class:`Fault` of an exception (of any kind: kind ``error``, status 1, when unknown).

    Parameters
    ----------
    exc : BaseException
        As raised here, or re-raised in the Dask client after it happened on a worker.

    Returns
    -------
    Fault
    """
    if isinstance(exc, KeyboardInterrupt):
        return Fault("interrupted", EXIT_INTERRUPTED, False, "interrupted; " + RERUN)
    for e in _chain(exc):
        if isinstance(e, StoreBusyError):
            return Fault("busy", EXIT_TEMPFAIL, True, str(e))
        fault = _distributed_fault(e)
        if fault is not None:
            return fault
        if isinstance(e, OSError):
            fault = _os_fault(e)
            if fault is not None:
                return fault
            if isinstance(e, FileNotFoundError | NotADirectoryError | PermissionError):
                # Raised by a check of ours with a message only: the input is wrong.
                return Fault("bad-input", EXIT_USAGE, False, str(e))
            if "Timed out trying to connect" in str(e):
                return Fault(
                    "scheduler-unreachable",
                    EXIT_UNAVAILABLE,
                    True,
                    f"{e}; start the Dask scheduler or check the --cluster address, {RERUN}",
                )
        if isinstance(e, ValueError):
            return Fault("bad-input", EXIT_USAGE, False, first_line(e))
    for e in _chain(exc):
        if isinstance(e, OSError):  # no errno: a short write, a flaky network filesystem
            return Fault("io", EXIT_IOERR, True, f"I/O error: {first_line(e)}; {RERUN}")
    return Fault("error", EXIT_ERROR, True, f"unexpected {type(exc).__name__}: {first_line(exc)}")


def is_transient(exc: BaseException) -> bool:
    """Whether running the same step again may succeed (what the Prefect flows retry).

    True for a lost or unreachable scheduler, a worker that died, a busy writer lock, an I/O
    error of unknown cause and unexpected errors; False for bad input, a full disk or quota, a
    read-only filesystem, permission denied and a vanished path: retrying cannot fix those.
    """
    return classify(exc).transient


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class StoreBusyError(RuntimeError):
    """Another process is writing the same part of a store (transient: run again later)."""
