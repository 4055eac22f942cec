"""Atomic filesystem operations: the basis of idempotent, resumable writes."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import sys
from pathlib import Path

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


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def tmp_name(path: Path) -> Path:
    """A process-unique temporary sibling of ``path`` (dot-prefixed: readers ignore it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")
