"""One log file per ``s2v`` command run, and a terminal kept for the command's own lines.

The terminal gets progress bars, the summary line and, on failure, one error line. Everything
else goes to the run's log file: distributed's log blocks (worker errors, "Task ... failed",
nanny warnings, also those the worker processes of a LocalCluster print: they inherit the file as
their stdout and stderr), Prefect's flow-run logs, warnings, TensorFlow's C++ chatter and the
traceback of the error. The error line names the file.

The log folder is ``$S2V_LOG_DIR``, else ``$XDG_CACHE_HOME/s2v-batch/logs``, else
``~/.cache/s2v-batch/logs``; the newest :data:`KEEP` files are kept.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

LOG_DIR_ENV = "S2V_LOG_DIR"
#: Log files kept in the folder (older ones are removed when a run starts).
KEEP = 200
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_dir() -> Path:
    """Where run logs go: ``$S2V_LOG_DIR``, else the user's cache folder."""
    if os.environ.get(LOG_DIR_ENV):
        return Path(os.environ[LOG_DIR_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "s2v-batch" / "logs"


def _open_log(command: str) -> tuple[Path | None, int | None]:
    """Create the run's log file (in the log folder, else the temporary folder)."""
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    name = f"s2v-{command}-{stamp}-{os.getpid()}.log"
    for folder in (log_dir(), Path(tempfile.gettempdir()) / "s2v-batch-logs"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError:
            continue
        _prune(folder)
        return path, fd
    return None, None


def _prune(folder: Path) -> None:
    try:
        logs = sorted(folder.glob("s2v-*.log"), key=lambda p: p.stat().st_mtime)
        for old in logs[:-KEEP]:
            old.unlink(missing_ok=True)
    except OSError:
        pass  # a log folder we cannot tidy is no reason to fail a run


class RunLog:
    """The log of one command run (see :func:`run_log`).

    Attributes
    ----------
    path : pathlib.Path or None
        The log file (None when no folder could take it).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.logger = logging.getLogger("s2v")

    def where(self) -> str:
        """``details in <path>`` for an error line."""
        return f"details in {self.path}" if self.path else "no log file could be written"


@contextlib.contextmanager
def run_log(
    command: str, *, divert: bool = True, preload: tuple[str, ...] = ()
) -> Iterator[RunLog]:
    """Log this process (and the processes it starts) to a new file while the block runs.

    Parameters
    ----------
    command : str
        The command's name (in the file name).
    divert : bool
        Send file descriptors 1 and 2 to the log file, keeping ``sys.stdout`` and ``sys.stderr``
        on the terminal: the command's own prints and progress bars still show, while child
        processes, C libraries and log handlers that were set up on the old streams write to
        the file. False (``--debug``): everything stays on the terminal as well.
    preload : tuple of str
        Modules to import before the streams are swapped, so that the log handlers they
        configure on import (distributed, Prefect) write to the file.

    Yields
    ------
    RunLog
    """
    path, fd = _open_log(command)
    root = logging.getLogger()
    handler: logging.Handler | None = None
    if fd is not None:
        handler = logging.StreamHandler(open(fd, "a", buffering=1, closefd=False))  # noqa: SIM115
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler.setLevel(logging.DEBUG if not divert else logging.INFO)
        root.addHandler(handler)
        root.setLevel(min(root.level or logging.WARNING, logging.INFO))
        logging.getLogger("s2v").setLevel(logging.INFO)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per Prefect API call
    logging.captureWarnings(True)
    raise_exc, logging.raiseExceptions = logging.raiseExceptions, False  # a full disk says once
    for name in preload:
        __import__(name)
    saved: list[tuple[int, int]] = []
    streams = (sys.stdout, sys.stderr)
    try:
        if divert and fd is not None:
            for stream in streams:
                with contextlib.suppress(Exception):
                    stream.flush()
            for num in (1, 2):
                saved.append((num, os.dup(num)))
                os.dup2(fd, num)
            # Only streams on the diverted descriptors need a terminal of their own; one the
            # caller replaced (pytest's capture, a notebook) keeps receiving the command's lines.
            sys.stdout = _terminal(saved[0][1], streams[0]) if _on_fd(streams[0], 1) else streams[0]
            sys.stderr = _terminal(saved[1][1], streams[1]) if _on_fd(streams[1], 2) else streams[1]
        yield RunLog(path)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        sys.stdout, sys.stderr = streams
        for num, copy in saved:
            os.dup2(copy, num)
            os.close(copy)
        if handler is not None:
            root.removeHandler(handler)
            with contextlib.suppress(Exception):
                handler.stream.close()
        logging.captureWarnings(False)
        logging.raiseExceptions = raise_exc
        if fd is not None:
            os.close(fd)


def _on_fd(stream: object, num: int) -> bool:
    """Whether ``stream`` writes to file descriptor ``num``."""
    try:
        return stream.fileno() == num  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


def _terminal(fd: int, like: io.TextIOBase) -> io.TextIOWrapper:
    """A text stream on a copy of the terminal's descriptor, line-buffered like a console."""
    encoding = getattr(like, "encoding", None) or "utf-8"
    errors = getattr(like, "errors", None) or "backslashreplace"
    return io.TextIOWrapper(
        open(fd, "wb", buffering=0, closefd=False),  # noqa: SIM115
        encoding=encoding,
        errors=errors,
        line_buffering=True,
        write_through=True,
    )
