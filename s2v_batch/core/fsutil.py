"""Atomic filesystem operations: the basis of idempotent, resumable writes."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime as dt
import hashlib
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from s2v_batch.core.faults import StoreBusyError, writing

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; writers are not guarded there
    fcntl = None  # type: ignore[assignment]

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux ``renameat2(RENAME_EXCHANGE)``; False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        # EINVAL/ENOSYS: filesystem or kernel without exchange support: fall back.
        if err in (22, 38):
            return False
        raise OSError(err, os.strerror(err), str(a))
    return True


def replace_dir(new: Path, dest: Path) -> None:
    """Put directory ``new`` at ``dest``, replacing any existing ``dest``.

    Where the platform allows it the swap is a single atomic exchange, so readers see the old
    directory or the new one, never neither; elsewhere it is two renames in quick succession.
    """
    new, dest = Path(new), Path(dest)
    if not dest.exists():
        os.replace(new, dest)
        return
    if _renameat2_exchange(new, dest):
        shutil.rmtree(new)  # ``new`` now holds the old contents
        return
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


def tmp_name(path: str | os.PathLike[str]) -> Path:
    """A process-unique temporary sibling of ``path`` (dot-prefixed: readers ignore it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Write a file under a temporary name and rename it onto ``path`` when the block succeeds.

    Readers see the old file or the whole new one, never half of it; on an error the temporary
    file is removed and ``path`` is left as it was.

    Yields
    ------
    pathlib.Path
        The temporary sibling to write (see :func:`tmp_name`).
    """
    path = Path(path)
    tmp = tmp_name(path)
    try:
        with writing(path):  # a full disk's error names the file (pyarrow and zarr name none)
            yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # on a read-only or vanished folder there is none
            tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def raw_identity(
    path: str | os.PathLike[str], root: str | os.PathLike[str], content: bool = False
) -> str:
    """One raw file's line in a night's raw fingerprint: its path relative to ``root``, and its
    size and mtime (one ``stat``; a tree moved or copied with ``cp -a`` keeps it) or, with
    ``content``, a sha256 of its bytes (every byte read; survives a copy that drops mtimes)."""
    rel = os.path.relpath(path, root)
    if content:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return f"{rel}\0sha256:{h.hexdigest()}\n"
    st = os.stat(path)
    return f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n"


def data_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of a file that hold data: its size less its sparse holes (allocated blocks), what
    an estimate of its contents from its size should count (a hole is no stamps or alerts)."""
    st = os.stat(path)
    return min(st.st_size, st.st_blocks * 512)


@contextlib.contextmanager
def exclusive(
    lock_path: str | os.PathLike[str],
    what: str,
    *,
    wait: float = 3600.0,
    log: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) on ``lock_path`` while writing ``what``.

    Two writers of one season or night at once (a nightly run and a backfill, or two nights of
    a season in one backfill) would each see the other's half-written state: the second waits
    for the first, up to ``wait`` seconds, then gives up with :class:`StoreBusyError` naming the
    holder. The lock goes with its holder, so a killed writer never leaves a stale lock; the lock
    file itself stays (removing it would race with the next writer). On shared cluster
    filesystems ``flock`` must be enabled (Lustre: mount with ``-o flock``).

    Parameters
    ----------
    lock_path : path
        The lock file (created when missing).
    what : str
        What the lock guards, for messages.
    wait : float
        Seconds to wait for another holder; 0 fails at once.
    log : callable, optional
        Told once when the lock is busy and this process starts waiting.

    Raises
    ------
    StoreBusyError
        When another holder keeps the lock past ``wait`` seconds.
    """
    path = Path(lock_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            deadline = time.monotonic() + wait
            pause = 0.05
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "unknown"
                    if time.monotonic() >= deadline:
                        raise StoreBusyError(
                            f"{what} is being written by another process ({holder}); "
                            + _holder_advice(holder, path)
                        ) from None
                    if log is not None and pause == 0.05:
                        log(f"waiting for {what}: written by another process ({holder})")
                    time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                    pause = min(pause * 2, 2.0)
            stamp = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
            note = f"host {socket.gethostname()} pid {os.getpid()} since {stamp}"
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, note.encode(), 0)
            except OSError:
                pass  # the note only informs; a full disk is reported by the writes it guards
        yield
    finally:
        os.close(fd)  # releases the lock


_HOLDER_RE = re.compile(r"host (\S+) pid (\d+)")


def _holder_advice(holder: str, lock: Path) -> str:
    """What to do about a lock's holder: wait, or, when the process that took it has gone (a
    child it forked still holds the lock), find and stop the holder."""
    m = _HOLDER_RE.search(holder)
    if m and m.group(1) == socket.gethostname() and not _pid_alive(int(m.group(2))):
        return (
            f"that process has exited but the lock is still held, by a process it started: find "
            f"it with `fuser -v {lock}` and stop it, then run again"
        )
    return "run again when it has finished"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


@contextlib.contextmanager
def exclusive_all(
    locks: list[tuple[Path, str]],
    *,
    wait: float = 3600.0,
    log: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold :func:`exclusive` on every ``(lock_path, what)`` at once, taken in the given order.

    Callers pass them sorted, so two processes wanting overlapping sets never deadlock. Each
    lock is an open file: the open-files limit is raised to fit them.
    """
    ensure_open_files(len(locks) + 1024)
    with contextlib.ExitStack() as stack:
        for path, what in locks:
            stack.enter_context(exclusive(path, what, wait=wait, log=log))
        yield


def ensure_open_files(n: int) -> None:
    """Raise this process's soft limit of open files to ``n`` (within the hard limit).

    :func:`exclusive_all` holds one lock file open per season or night it writes: scoring a
    backfill of every season's nights passes the common default of 1,024.
    """
    try:
        import resource
    except ImportError:  # Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= n:
        return
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (n if hard == resource.RLIM_INFINITY else min(n, hard), hard)
    )
