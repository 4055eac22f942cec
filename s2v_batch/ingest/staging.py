"""Staged units of an ingest: the worker-side functions between raw stamps and a night dataset.

A unit is decoded once into the night's staging folder (:func:`stage_unit`: pixels as ``.npy``,
then its metadata as ``.meta.npz``, each through a rename, the metadata last), so an interrupted
ingest reuses it; a nightly alert archive is staged so in parts, and an interrupted ingest goes on
after its last whole part. The night's shards are then filled from the staged pixels
(:func:`assemble_shard`) in the order :func:`plan_shards` fixes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from s2v_batch.core.conventions import CHANNELS
from s2v_batch.core.fsutil import atomic_path, data_bytes
from s2v_batch.formats.alertio import Item, estimate_records, iter_archive_members
from s2v_batch.ingest.alertunits import alert_registry, read_alert_unit
from s2v_batch.ingest.stamps import read_unit
from s2v_batch.ingest.units import STAMP_FILE_RE, Unit, UnitData
from s2v_batch.store import dataset as zstore

_META = "meta__"
_EXTRA = "part__"


def staged_files(unit: Unit, staging: str | Path) -> tuple[Path, Path]:
    """The staged pixel and metadata files of a unit, named by what the unit holds.

    The name carries a digest of the unit's archive or stamp files, so a re-run that cuts the
    night into other units (another ``unit_stamps``) never takes a staged unit for another.
    """
    key = repr((unit.archive, unit.stamps)).encode()
    return zstore.staged_unit(staging, f"{unit.name}-{hashlib.sha256(key).hexdigest()[:12]}")


def stage_unit(
    unit: Unit, staging: str, size: int, edge: str | None = None, part_alerts: int = 2048
) -> list[dict[str, Any]]:
    """Decode one unit into the staging folder (or reuse it there); return its staged parts, in
    order, as handles for :func:`load_part` (the part's files, and whether it was reused).

    Runs on a worker. The handles are a few paths: the worker keeps nothing of a unit once it
    is staged (the client reads each part's IDs, fields and quarantine from its metadata file
    on the shared filesystem). A loose-file unit is one part. A nightly alert archive (up to a
    million alerts) is staged in parts of ``part_alerts`` members (``IngestConfig.unit_stamps``;
    a ZTF member is one alert), each written whole as it is read: a killed ingest resumes after
    its last whole part, passing over the members staged before without decoding them
    (:func:`s2v_batch.formats.alertio.iter_archive_members`), and the worker holds one part's
    fields at a time. ``edge``: how alert edge cut-outs are handled (``IngestConfig.edge_for``;
    None: ``pad``).
    """
    npy, meta_path = staged_files(unit, staging)
    if unit.survey != "des" and unit.archive:
        return _stage_archive(unit, Path(staging), size, edge or "pad", part_alerts)
    if meta_path.is_file():
        try:
            _load_meta(meta_path, npy)  # a whole staged unit: reused
            return [_handle(meta_path, npy, reused=True)]
        except Exception:
            pass  # a damaged staged unit is simply decoded again
    if unit.survey == "des":
        data = read_unit(unit, size)
        with atomic_path(npy) as tmp, open(tmp, "wb") as f:
            save_npy(f, data.pixels)
        dtype = str(data.pixels.dtype)
    else:
        # Alert files: the stamps are written as they come.
        with atomic_path(npy) as tmp, NpyRows(tmp, (size, size, 3), np.float32) as rows:
            data = read_alert_unit(unit, size, emit=rows.append, edge=edge or "pad")
        dtype = "float32"
    _save_meta(meta_path, data, dtype)
    return [_handle(meta_path, npy)]


def _save_meta(meta_path: Path, data: UnitData, dtype: str, **extra: Any) -> None:
    meta = {
        "stamp_id": data.stamp_id,
        "masked_fraction": data.masked_fraction,
        "paths": np.asarray(data.paths, dtype=object).astype(str),
        "quarantine": np.asarray(json.dumps(data.quarantine)),
        "n_found": np.asarray(data.n_found),
        "dtype": np.asarray(dtype),
        # Alert fields kept per stamp (strings as fixed-width unicode: no pickle needed).
        **{_META + k: v for k, v in data.meta.items()},
        **{_EXTRA + k: np.asarray(v) for k, v in extra.items()},
    }
    # Written last: its presence says the unit (or part) is staged whole.
    with atomic_path(meta_path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **meta)


def _part_files(unit: Unit, staging: Path, part_alerts: int, j: int) -> tuple[Path, Path]:
    """A part's files: named by the unit's files, the part size and the part's number."""
    stem = staged_files(unit, staging)[0].stem
    return zstore.staged_unit(staging, f"{stem}-p{part_alerts}-{j:05d}")


def _stage_archive(
    unit: Unit, staging: Path, size: int, edge: str, part_alerts: int
) -> list[dict[str, Any]]:
    """Stage a nightly archive in parts (see :func:`stage_unit`); the unit's own metadata file,
    written after the last part, says how many there are."""
    done: list[dict[str, Any]] = []
    members = 0
    while True:  # the whole parts of an earlier run, in order
        npy, meta = _part_files(unit, staging, part_alerts, len(done))
        try:
            part = _load_meta(meta, npy) if meta.is_file() else None
        except Exception:
            part = None  # a damaged part is decoded again, with those after it
        if part is None:
            break
        done.append(_handle(meta, npy, reused=True))
        members = part["members"]
        if part["last"]:
            return done
    groups = iter_archive_members(unit.archive, alert_registry(tuple(unit.schemas)), members)
    while True:
        npy, meta = _part_files(unit, staging, part_alerts, len(done))
        taken = [0]
        with atomic_path(npy) as tmp, NpyRows(tmp, (size, size, 3), np.float32) as rows:
            items = _members(groups, part_alerts, taken)
            data = read_alert_unit(unit, size, emit=rows.append, edge=edge, items=items)
        members += taken[0]
        last = taken[0] < part_alerts
        _save_meta(meta, data, "float32", members=members, last=last)
        done.append(_handle(meta, npy))
        del data  # one part's fields at a time
        if last:
            break
    with atomic_path(staged_files(unit, staging)[1]) as tmp, open(tmp, "wb") as f:
        np.savez(f, parts=np.asarray(len(done)))
    return done


def _members(groups: Iterator[Iterator[Item]], n: int, taken: list[int]) -> Iterator[Item]:
    """The items of the next ``n`` member groups (each read whole before the next is taken);
    ``taken[0]`` counts the groups."""
    for group in itertools.islice(groups, n):
        taken[0] += 1
        yield from group


def _handle(meta: Path, npy: Path, reused: bool = False) -> dict[str, Any]:
    return {"meta_path": str(meta), "npy": str(npy), "reused": reused}


def load_part(handle: dict[str, Any]) -> dict[str, Any]:
    """A staged part's IDs, masked fractions, kept fields, quarantine records and counts (its
    metadata file, read where the ingest plans the night)."""
    return _load_meta(Path(handle["meta_path"]), Path(handle["npy"]), handle["reused"])


def staged_paths(part: dict[str, Any]) -> list[str]:
    """The source path of each stamp of a staged part (read from its metadata file: only a
    duplicate's quarantine record needs them)."""
    with np.load(part["meta_path"], allow_pickle=False) as z:
        return z["paths"].tolist()


class NpyRows:
    """An ``.npy`` file written row by row: the header is written first with room for any
    length and rewritten in place, with the final length, on close (a valid npy v1.0 file,
    readable with ``np.load(mmap_mode="r")``)."""

    _HEADER = 128  # bytes, magic included: a multiple of 64 as the format asks

    def __init__(self, path: str | Path, row_shape: tuple[int, ...], dtype: Any):
        self.row_shape = tuple(int(v) for v in row_shape)
        self.dtype = np.dtype(dtype)
        self.n = 0
        self._f = open(path, "wb")
        self._f.write(self._header())

    def _header(self) -> bytes:
        shape = (self.n, *self.row_shape)
        text = f"{{'descr': {self.dtype.str!r}, 'fortran_order': False, 'shape': {shape}, }}"
        body = text.ljust(self._HEADER - 10 - 1) + "\n"
        if len(body) + 10 != self._HEADER:
            raise ValueError(f"npy header too long for shape {shape}")
        return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")

    def append(self, row: np.ndarray) -> None:
        """Write one row (of ``row_shape``)."""
        row = np.asarray(row)
        if row.shape != self.row_shape:
            raise ValueError(f"row of shape {row.shape}, expected {self.row_shape}")
        self._f.write(np.ascontiguousarray(row, dtype=self.dtype).tobytes())
        self.n += 1

    def __enter__(self) -> NpyRows:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self._f.seek(0)
                self._f.write(self._header())
        finally:
            self._f.close()


def save_npy(f: BinaryIO, arr: np.ndarray) -> None:
    """Write ``arr`` as a ``.npy`` file through Python's file object.

    ``np.save`` writes the pixels with C ``fwrite`` and reports a full disk as a bare
    ``OSError("N requested and M written")``; Python's ``write`` raises ``ENOSPC`` or ``EDQUOT``,
    which the run reports as the full disk it is.
    """
    arr = np.ascontiguousarray(arr)
    np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(arr))
    f.write(arr.reshape(-1).view(np.uint8).data)


def _load_meta(path: Path, npy: Path, reused: bool = False) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as z:
        out = {
            "stamp_id": z["stamp_id"],
            "masked_fraction": z["masked_fraction"],
            "quarantine": json.loads(str(z["quarantine"])),
            "n_found": int(z["n_found"]),
            "dtype": str(z["dtype"]),
            "npy": str(npy),
            "meta_path": str(path),
            "reused": reused,
            "meta": {k[len(_META) :]: z[k] for k in z.files if k.startswith(_META)},
            **{k[len(_EXTRA) :]: z[k].item() for k in z.files if k.startswith(_EXTRA)},
        }
        n_paths = z["paths"].shape[0]
    if any(len(v) != len(out["stamp_id"]) for v in (range(n_paths), *out["meta"].values())):
        raise ValueError("inconsistent staged unit")
    return out


def assemble_shard(dest: str, start: int, pieces: list[tuple[str, np.ndarray]]) -> int:
    """Copy the kept rows of staged units into the shard that starts at ``start``; return its size.

    ``pieces`` are ``(npy path, row indices)`` in output order. Runs on a worker.
    """
    if not pieces:
        zstore.write_stamps(dest, start, np.zeros((0,)))
        return 0
    srcs = [np.load(npy, mmap_mode="r") for npy, _ in pieces]
    n = sum(len(rows) for _, rows in pieces)
    # Filled in place (a shard of 4096 float32 stamps is 195 MB: no second copy by concatenate).
    pixels = np.empty((n, *srcs[0].shape[1:]), np.result_type(*(s.dtype for s in srcs)))
    off = 0
    for src, (_, rows) in zip(srcs, pieces, strict=True):
        m = len(rows)
        if m and rows[-1] - rows[0] == m - 1 and np.all(np.diff(rows) == 1):
            pixels[off : off + m] = src[rows[0] : rows[0] + m]  # a run of rows: no temporary
        else:
            pixels[off : off + m] = src[rows]
        off += m
    zstore.write_stamps(dest, start, pixels)
    return n


def plan_shards(
    pieces: list[tuple[str, np.ndarray]], shard_stamps: int
) -> list[tuple[int, list[tuple[str, np.ndarray]]]]:
    """Cut ordered ``(source, rows)`` pieces into whole output shards.

    Returns ``(start, pieces)`` per shard: starts are multiples of ``shard_stamps``, every shard
    but the last is full, and the rows keep their order.
    """
    shards: list[tuple[int, list[tuple[str, np.ndarray]]]] = []
    start, current, filled = 0, [], 0
    for src, rows in pieces:
        off = 0
        while off < len(rows):
            take = min(shard_stamps - filled, len(rows) - off)
            current.append((src, rows[off : off + take]))
            filled += take
            off += take
            if filled == shard_stamps:
                shards.append((start, current))
                start += filled
                current, filled = [], 0
    if filled:
        shards.append((start, current))
    return shards


# --------------------------------------------------------------------------- space


def night_bytes(units: list[Unit], size: int, staging: str | Path) -> tuple[int, int]:
    """Estimate the bytes an ingest of a night will write: ``(staging, dataset)``.

    Every stamp is ``size * size * 3`` pixels of 1 byte (GIF) or 4 (FITS); it is written twice:
    once staged (``.npy``, removed when the night is published) and once in the Zarr shards
    (counted uncompressed: noise-dominated pixels barely compress). Staged units already on disk
    count for the dataset only. The stamps of loose files are counted; those of a tar archive are
    estimated from its size on disk and its first member (each channel is a 512-byte header plus
    the file padded to 512 bytes), exact for FITS, close for GIF; an archive padded with junk
    counts as more stamps than it holds (its junk is quarantined, never staged).
    """
    stage = dataset = 0
    px = size * size * len(CHANNELS)
    counts = [_unit_stamps(u, size) for u in units]
    itemsize = 4 if any(fits for _, fits in counts) else 1  # one FITS unit makes it float32
    for u, (n, fits) in zip(units, counts, strict=True):
        npy, meta = staged_files(u, staging)
        if not meta.is_file():
            stage += n * px * (4 if fits else 1)
        dataset += n * px * itemsize
    return stage, dataset


def _unit_stamps(unit: Unit, size: int) -> tuple[int, bool]:
    """(stamps, whether float32) of a unit: counted for loose files, estimated for an archive;
    for alert inputs estimated from their first records (:func:`estimate_records`; a file of
    several nights counts whole in each night's unit: an over-estimate, never an under-one)."""
    if unit.survey != "des":
        paths = [unit.archive] if unit.archive else list(unit.alert_files)
        registry = alert_registry(tuple(unit.schemas))
        try:
            return sum(estimate_records(p, registry) for p in paths), True
        except OSError:
            return 0, True  # unreadable now: its worker reports it
    if not unit.archive:
        first = next((p for _, paths in unit.stamps for p in paths if p), "")
        return len(unit.stamps), not first.lower().endswith(".gif")
    try:
        with tarfile.open(unit.archive, mode="r:") as tf:
            member = next(
                (m for m in tf if m.isfile() and STAMP_FILE_RE.match(Path(m.name).name)), None
            )
        total = data_bytes(unit.archive)
    except (tarfile.TarError, EOFError):
        return 0, False  # a damaged archive: read (and quarantined) by its worker
    if member is None:
        return 0, False
    per_stamp = len(CHANNELS) * (512 + -(-member.size // 512) * 512)
    return max(1, total // per_stamp), not member.name.lower().endswith(".gif")
