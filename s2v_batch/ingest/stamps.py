"""Reading a unit of raw stamps (loose files or a tar archive) into validated pixel arrays.

Every stamp found is returned either decoded or as a quarantine record with a reason: nothing is
dropped. Tar archives are read as a stream, member by member, never unpacked to disk. Reads are
bounded: a file or member larger than a stamp's channel can be is quarantined unread. A file that
cannot be read at all (vanished, permission denied) is a fault of the environment and is raised.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable, Iterator

import numpy as np

from s2v_batch.core.conventions import CHANNELS
from s2v_batch.formats.decode import StampError, combine_channels, decode_channel, max_channel_bytes
from s2v_batch.ingest.units import CHANNEL_INDEX, STAMP_FILE_RE, Unit, UnitData


def read_channel_file(path: str, size: int) -> bytes | StampError:
    """The bytes of one channel file, or a :class:`StampError` (the quarantine reason) when the
    file is larger than a channel of a ``size`` x ``size`` stamp can be: such a file is never
    read (:func:`~s2v_batch.formats.decode.max_channel_bytes`).

    An ``OSError`` (a vanished folder, permission denied, an I/O error) is raised: it is a fault
    of the environment, not of the stamp, and must stop the night rather than quarantine it.
    """
    limit = max_channel_bytes(path, size)
    with open(path, "rb") as f:
        n = os.fstat(f.fileno()).st_size
        data = b"" if n > limit else f.read(limit + 1)  # bounded even if the file grows
    if n > limit or len(data) > limit:
        return StampError(_too_large(max(n, len(data)), limit, "file", size))
    return data


def _too_large(n: int, limit: int, what: str, size: int | None = None) -> str:
    stamp = f"a {size}x{size} stamp's channel" if size else "a stamp's channel"
    return f"{what} is {n:,} bytes, larger than {stamp} can be (at most {limit:,}); not read"


def _iter_files(unit: Unit, size: int) -> Iterator[tuple[str, str, list]]:
    for id_text, paths in unit.stamps:
        chans: list = [None if p is None else (p, read_channel_file(p, size)) for p in paths]
        where = next(p for p in paths if p is not None)
        yield id_text, os.path.dirname(where), chans


class TarDamaged(Exception):
    """A tar archive that is truncated or corrupt from some point on."""


_ZERO_BLOCK = bytes(512)
_PLAIN_TYPES = (b"0", b"\0", b"7")


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(field[1:], "big")
    text = field.strip(b" \0")
    return int(text, 8) if text else 0


#: ``limit(member name)``: the most bytes to read of a member, or None to skip it unread.
MemberLimit = Callable[[str], int | None]


def tar_members(
    path: str, limit: MemberLimit | None = None
) -> Iterator[tuple[str, bytes | StampError]]:
    """Yield ``(name, data)`` of the regular files of a plain tar archive, streaming.

    Reads 512-byte headers directly (several times faster than :mod:`tarfile` for archives of
    tiny files), checking each header's checksum; archives with pax or GNU long-name headers are
    handed to :mod:`tarfile`. Members are read with bounded memory: one ``limit`` says to skip
    (None) is passed over with a seek, one larger than its limit is yielded as a
    :class:`StampError` and passed over with a seek, never read.

    Raises
    ------
    TarDamaged
        At the first truncated or corrupt point; the members before it have been yielded.
    OSError
        The archive cannot be read (a fault of the environment, not of the archive).
    """
    done = 0
    with open(path, "rb", buffering=1 << 20) as f:
        total = os.fstat(f.fileno()).st_size
        while True:
            hdr = f.read(512)
            if not hdr or hdr == _ZERO_BLOCK:
                return
            if len(hdr) < 512:
                raise TarDamaged("truncated tar archive (a header is cut short)")
            try:
                chk = _octal(hdr[148:156])
                size = _octal(hdr[124:136])
            except ValueError:
                raise TarDamaged(f"corrupt tar header at byte {f.tell() - 512}") from None
            if chk != sum(hdr[:148]) + 256 + sum(hdr[156:]):
                raise TarDamaged(f"corrupt tar header at byte {f.tell() - 512} (bad checksum)")
            kind = hdr[156:157]
            if kind in (b"x", b"g", b"L", b"K"):
                break  # extended headers: let tarfile read the rest
            name = hdr[:100].split(b"\0", 1)[0]
            if hdr[257:262] == b"ustar":
                prefix = hdr[345:500].split(b"\0", 1)[0]
                if prefix:
                    name = prefix + b"/" + name
            name_s = name.decode("utf-8", "replace")
            padded = (size + 511) & ~511
            most = limit(name_s) if limit is not None and kind in _PLAIN_TYPES else size
            if kind in _PLAIN_TYPES and most is not None and size <= most:
                data = f.read(padded)
                if len(data) < size:
                    raise TarDamaged(f"truncated tar archive at {name_s}")
                done += 1
                yield name_s, data[:size]
                continue
            if f.tell() + size > total:  # passed over unread: is it all there?
                raise TarDamaged(f"truncated tar archive at {name_s}")
            f.seek(padded, os.SEEK_CUR)
            if kind in _PLAIN_TYPES:
                done += 1
                if most is not None:
                    yield name_s, StampError(_too_large(size, most, "tar member"))
    yield from _tar_members_tarfile(path, done, limit)


def _tar_members_tarfile(
    path: str, skip: int, limit: MemberLimit | None
) -> Iterator[tuple[str, bytes | StampError]]:
    try:
        # Random access ("r:"), so that a member passed over is seeked past, not read through.
        with tarfile.open(path, mode="r:") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                if skip:
                    skip -= 1
                    continue
                most = limit(member.name) if limit is not None else member.size
                if most is None:
                    continue
                if member.size > most:
                    yield member.name, StampError(_too_large(member.size, most, "tar member"))
                    continue
                yield member.name, tf.extractfile(member).read(most + 1)
    except (tarfile.TarError, EOFError) as exc:
        raise TarDamaged(f"unreadable tar archive ({type(exc).__name__}: {exc})") from None


def _iter_tar(archive: str, size: int, failures: list[str]) -> Iterator[tuple[str, str, list]]:
    """Yield stamps of an archive in member order, streaming (memory does not grow with it)."""
    pending: dict[tuple[str, str], list] = {}  # insertion-ordered: member order

    def limit(name: str) -> int | None:
        wanted = STAMP_FILE_RE.match(os.path.basename(name)) is not None
        return max_channel_bytes(name, size) if wanted else None

    try:
        for name, data in tar_members(archive, limit):
            m = STAMP_FILE_RE.match(os.path.basename(name))
            if m is None:
                continue
            key = (os.path.dirname(name), m.group(2))
            slots = pending.setdefault(key, [None, None, None])
            ch = CHANNEL_INDEX[m.group(1).lower()]
            where = f"{archive}:{name}"
            if slots[ch] is not None:
                slots[ch] = (where, StampError(f"{m.group(1)} appears twice in the archive"))
            else:
                slots[ch] = (where, data)
            if slots[0] is not None and slots[1] is not None and slots[2] is not None:
                del pending[key]
                yield key[1], f"{archive}:{key[0]}", slots
    except TarDamaged as exc:
        failures.append(str(exc))
    for key, slots in pending.items():
        yield key[1], f"{archive}:{key[0]}", slots


def read_unit(unit: Unit, size: int) -> UnitData:
    """Decode every stamp of a unit; quarantine the bad ones with a reason.

    Parameters
    ----------
    unit : Unit
        From :func:`discover`.
    size : int
        Expected stamp edge in pixels.

    Returns
    -------
    UnitData
    """
    failures: list[str] = []
    source = _iter_tar(unit.archive, size, failures) if unit.archive else _iter_files(unit, size)
    pix: list[np.ndarray] = []
    ids: list[int] = []
    fracs: list[float] = []
    paths: list[str] = []
    quarantine: list[dict] = []
    n_found = 0
    for id_text, where, chans in source:
        n_found += 1
        sid = int(id_text) if id_text.isdigit() else None
        try:
            if sid is None:
                raise StampError(f"non-numeric stamp ID {id_text!r}")
            arrays = []
            for ch, slot in zip(CHANNELS, chans, strict=True):
                if slot is None:
                    raise StampError(f"missing channel {ch}")
                name, data = slot
                if isinstance(data, Exception):
                    raise StampError(f"{ch}: {data}")
                try:
                    arrays.append(decode_channel(name, data, size))
                except StampError as exc:
                    raise StampError(f"{ch}: {exc}") from None
            if len({a.dtype for a in arrays}) > 1:
                raise StampError("channels mix gif and fits files")
            stamp, frac = combine_channels(arrays)
        except StampError as exc:
            quarantine.append({"stamp_id": sid, "path": f"{where}/{id_text}", "reason": str(exc)})
            continue
        pix.append(stamp)
        ids.append(sid)
        fracs.append(frac)
        paths.append(f"{where}/{id_text}")
    for reason in failures:
        quarantine.append({"stamp_id": None, "path": unit.archive, "reason": reason})
        n_found += 1
    dtype = np.float32 if any(p.dtype != np.uint8 for p in pix) else np.uint8
    pixels = (
        np.stack([p.astype(dtype, copy=False) for p in pix])
        if pix
        else np.zeros((0, size, size, len(CHANNELS)), dtype)
    )
    return UnitData(
        pixels=pixels,
        stamp_id=np.asarray(ids, dtype=np.int64),
        masked_fraction=np.asarray(fracs, dtype=np.float32),
        paths=paths,
        quarantine=quarantine,
        n_found=n_found,
    )
