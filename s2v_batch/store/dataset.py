"""The Zarr v3 store: one xarray-readable dataset per season and night, and every path of its tree.

Layout (this module is the only one that builds these paths)::

    STORE/<season>/<night>.zarr                  the night's dataset (see below)
    STORE/<season>/quarantine-<night>.parquet    stamps not stored, with the reason
    STORE/<season>/.ingest.lock                  held by the one ingest writing the season
    STORE/<season>/.staging-<night>-<fp12>/      decoded units of a night being ingested
    STORE/<season>/.<night>.zarr.partial         the night being assembled (renamed into place)
    STORE/quarantine-unplaced.parquet            raw files outside any <season>/<YYYYMMDD> folder

A night dataset holds ``stamps (stamp, y, x, channel)`` (uint8 for gif-derived stamps, float32
for fits and alert cut-outs), ``stamp_id``, ``label`` (int8, -1 unknown), ``masked_fraction`` and
the coordinate ``channel``; a night of alerts also holds the alert fields kept per stamp
(``surveys.Survey.columns``, listed in the attribute ``alert_columns``) and says its ``survey``.
``stamps`` is sharded along ``stamp``: one shard file of thousands of stamps, small inner chunks, so that writing is fast and one stamp can be read without decompressing a whole
shard. Its attribute ``night_fingerprint`` says which raw inputs, labels and settings it was made
from, and a night is *current* when it verifies and that matches (:mod:`s2v_batch.store.state`).
The attribute ``stamps_encoding`` says how
the pixels are stored (:mod:`s2v_batch.core.encoding`: ``lossless``, or ``bitround-K`` for float
stamps with ``K`` mantissa bits kept); any Zarr reader reads pixel values back either way.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from s2v_batch import __version__
from s2v_batch.core import encoding as enc
from s2v_batch.core.conventions import CHANNELS, is_night, is_season
from s2v_batch.core.faults import environment_fault, writing
from s2v_batch.core.fsutil import atomic_path, replace_dir

#: Stamps per shard file (one Dask task writes or reads whole shards).
DEFAULT_SHARD_STAMPS = 4096
#: Stamps per inner chunk (the unit of compression and of random access).
DEFAULT_CHUNK_STAMPS = 256
#: The attribute naming the alert fields kept per stamp (1-D arrays beside ``stamp_id``).
ALERT_COLUMNS_ATTR = "alert_columns"

QUARANTINE_SCHEMA = pa.schema(
    [
        ("stamp_id", pa.int64()),
        ("season", pa.string()),
        ("night", pa.int64()),
        ("path", pa.string()),
        ("reason", pa.string()),
    ]
)


class StoreError(ValueError):
    """A store path or dataset that cannot be used."""


@dataclass(frozen=True)
class NightRef:
    """A night dataset in a store."""

    season: str
    night: int
    path: Path


# --------------------------------------------------------------------------- paths


def night_path(store_root: str | Path, season: str, night: int) -> Path:
    """Path of the dataset for ``season``/``night`` under ``store_root``."""
    return Path(store_root) / season / f"{int(night)}.zarr"


def partial_path(final: str | Path) -> Path:
    """Where a night dataset is assembled before it is renamed to ``final`` (hidden from readers)."""
    final = Path(final)
    return final.with_name(f".{final.name}.partial")


def staging_dir(store_root: str | Path, season: str, night: int, night_fp: str) -> Path:
    """Where an ingest stages the decoded units of a night; named by the night's fingerprint, so
    a re-run with the same inputs reuses them and one with other inputs starts afresh."""
    return Path(store_root) / season / f".staging-{int(night)}-{night_fp[:12]}"


def staged_unit(staging: str | Path, unit_name: str) -> tuple[Path, Path]:
    """The pixel file (``.npy``) and metadata file (``.meta.npz``, written last) of a staged unit."""
    base = Path(staging) / unit_name
    return base.with_suffix(".npy"), base.with_suffix(".meta.npz")


def lock_path(store_root: str | Path, season: str) -> Path:
    """The lock file an ingest holds while it writes a season (its duplicate-ID check reads the
    season's other nights)."""
    return Path(store_root) / season / ".ingest.lock"


def quarantine_path(store_root: str | Path, season: str, night: int) -> Path:
    """Path of the quarantine table for ``season``/``night``."""
    return Path(store_root) / season / f"quarantine-{int(night)}.parquet"


def unplaced_quarantine_path(store_root: str | Path) -> Path:
    """Path of the quarantine table of raw files that belong to no season/night."""
    return Path(store_root) / "quarantine-unplaced.parquet"


def write_quarantine(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write a quarantine table (``stamp_id, season, night, path, reason``) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def list_nights(store_root: str | Path, season: str | None = None) -> list[NightRef]:
    """Night datasets present under ``store_root`` (finished ones: partial writes are hidden).

    Parameters
    ----------
    store_root : path
        The store's root folder.
    season : str, optional
        Only this season.

    Returns
    -------
    list of NightRef
        Sorted by season then night.
    """
    root = Path(store_root)
    if not root.is_dir():
        raise StoreError(f"store {root} does not exist or is not a folder")
    root = root.resolve()  # night paths are handed to workers, whose working folder may differ
    out = []
    for sdir in sorted(p for p in root.iterdir() if p.is_dir() and is_season(p.name)):
        if season is not None and sdir.name != season:
            continue
        for n in sorted(sdir.glob("*.zarr")):
            if is_night(n.stem):
                out.append(NightRef(sdir.name, int(n.stem), n))
    return out


def _shard_count(n: int, shard: int) -> int:
    return -(-n // shard) if n else 0


def shard_slices(n: int, shard: int) -> list[slice]:
    """Slices of ``range(n)`` along whole shards of ``shard`` stamps (the last may be short)."""
    return [slice(i, min(i + shard, n)) for i in range(0, n, shard)]


def create_night(
    path: str | Path,
    *,
    n_stamps: int,
    dtype: str | np.dtype,
    size: int,
    stamp_id: np.ndarray,
    label: np.ndarray,
    masked_fraction: np.ndarray,
    season: str,
    night: int,
    attrs: Mapping[str, Any] | None = None,
    shard_stamps: int = DEFAULT_SHARD_STAMPS,
    chunk_stamps: int = DEFAULT_CHUNK_STAMPS,
    extra: Mapping[str, np.ndarray] | None = None,
    float_encoding: str = enc.LOSSLESS,
) -> None:
    """Create a night dataset: the small arrays written, ``stamps`` allocated and empty.

    Workers then fill ``stamps`` shard by shard with :func:`write_stamps`, which applies the
    encoding (``float_encoding`` for float stamps, :mod:`s2v_batch.core.encoding`; uint8 stamps are
    always lossless). The encoding is recorded as ``stamps_encoding`` in the dataset's and the
    ``stamps`` array's attributes. ``extra``: more 1-D arrays along ``stamp`` (the alert fields
    kept per stamp), named in the attribute ``alert_columns``.
    """
    import xarray as xr
    import zarr

    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    chunk_stamps = max(1, min(chunk_stamps, shard_stamps))
    if shard_stamps % chunk_stamps:
        raise StoreError("shard_stamps must be a multiple of chunk_stamps")
    n = int(n_stamps)
    stamps_encoding = enc.applied(dtype, float_encoding)
    encoding_attrs = {
        "stamps_encoding": stamps_encoding,
        "stamps_encoding_note": enc.describe(stamps_encoding),
    }
    ds = xr.Dataset(
        {
            "stamp_id": (("stamp",), np.asarray(stamp_id, dtype=np.int64)),
            "label": (("stamp",), np.asarray(label, dtype=np.int8)),
            "masked_fraction": (("stamp",), np.asarray(masked_fraction, dtype=np.float32)),
            **{k: (("stamp",), np.asarray(v)) for k, v in (extra or {}).items()},
        },
        coords={"channel": np.array(CHANNELS, dtype=object)},
        attrs={
            "season": season,
            "night": int(night),
            "n_stamps": n,
            "stamp_size": int(size),
            "channels": list(CHANNELS),
            "label_convention": "1 = real, 0 = artifact, -1 = unknown",
            "s2v_batch_version": __version__,
            **({ALERT_COLUMNS_ATTR: list(extra)} if extra else {}),
            **encoding_attrs,
            **(attrs or {}),
        },
    )
    with warnings.catch_warnings(), writing(path):
        # String coordinates and consolidated metadata are not yet in the Zarr v3 spec, and
        # xarray relies on both: the warnings say so on every write.
        warnings.simplefilter("ignore")
        ds.to_zarr(path, mode="w", zarr_format=3, consolidated=True)
        group = zarr.open_group(path, mode="r+")
        shard = max(1, min(shard_stamps, max(n, 1)))
        chunk = max(1, min(chunk_stamps, shard))
        while shard % chunk:
            chunk -= 1
        group.create_array(
            "stamps",
            shape=(n, size, size, len(CHANNELS)),
            chunks=(chunk, size, size, len(CHANNELS)),
            shards=(shard, size, size, len(CHANNELS)),
            dtype=np.dtype(dtype),
            fill_value=0,
            dimension_names=("stamp", "y", "x", "channel"),
            config={"write_empty_chunks": True},
            attributes=encoding_attrs,
            **enc.codecs(dtype, stamps_encoding),
        )
        zarr.consolidate_metadata(path)


def stamps_path(path: str | Path) -> Path:
    """The ``stamps`` array's folder in a night dataset (a
    :class:`~s2v_batch.store.shardread.StampReader` opens it)."""
    return Path(path) / "stamps"


def stamps_array(path: str | Path, mode: str = "r"):
    """The ``stamps`` zarr array of a night dataset."""
    import zarr

    # write_empty_chunks is a setting of the handle, not stored metadata: without it a shard of
    # all-fill pixels is never written, and verification would take it for a lost shard.
    with zarr.config.set({"array.write_empty_chunks": True}):
        return zarr.open_array(stamps_path(path), mode=mode)


def write_stamps(path: str | Path, start: int, pixels: np.ndarray) -> None:
    """Write whole shards of pixels starting at stamp ``start`` (a shard boundary), encoded as
    the night's ``stamps_encoding`` says (:func:`s2v_batch.core.encoding.encode`)."""
    arr = stamps_array(path, mode="r+")
    if start % arr.shards[0]:
        raise StoreError(f"write at {start} is not on a shard boundary ({arr.shards[0]})")
    pixels = pixels.astype(arr.dtype, copy=False)
    with writing(Path(path) / "stamps"):  # zarr's ENOSPC names no file
        arr[start : start + len(pixels)] = enc.encode(
            pixels, arr.attrs.get("stamps_encoding", enc.LOSSLESS)
        )


def missing_shards(path: str | Path) -> list[int]:
    """Indices of ``stamps`` shards with no file on disk.

    Zarr reads an absent shard back silently as the fill value, so completeness is checked on the
    files themselves.
    """
    arr = stamps_array(path)
    n = arr.shape[0]
    nshards = _shard_count(n, arr.shards[0])
    base = stamps_path(path) / "c"
    return [i for i in range(nshards) if not (base / str(i) / "0" / "0" / "0").is_file()]


def read_stamp_ids(path: str | Path) -> np.ndarray:
    """The ``stamp_id`` array of a night (already verified by the caller): 8 bytes a stamp."""
    import zarr

    return zarr.open_array(Path(path) / "stamp_id", mode="r")[:]


def read_labels(path: str | Path) -> np.ndarray:
    """The ``label`` array of a night (already verified by the caller): 1 byte a stamp."""
    import zarr

    return zarr.open_array(Path(path) / "label", mode="r")[:]


def write_labels(path: str | Path, labels: np.ndarray, **attrs: Any) -> None:
    """Replace a complete night's labels in place (and set ``attrs``), leaving its pixels alone.

    The label array is small (a byte a stamp); its chunk and the metadata are rewritten, the
    stamp shards are not. A run stopped half way leaves labels that the next run finds stale
    and writes again.
    """
    import zarr

    path = Path(path)
    with warnings.catch_warnings(), writing(path):
        warnings.simplefilter("ignore")  # consolidated metadata: not yet in the Zarr v3 spec
        group = zarr.open_group(path, mode="r+")
        arr = group["label"]
        if arr.shape != (len(labels),):
            raise StoreError(f"{path}: {len(labels)} labels for {arr.shape[0]} stamps")
        arr[:] = np.asarray(labels, dtype=np.int8)
        group.attrs.update(attrs)
        zarr.consolidate_metadata(path)


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The dataset attributes of a night (``{}`` when there are none or they are damaged; a fault
    of the environment, such as permission denied or an I/O error, is raised)."""
    import zarr

    try:
        return dict(zarr.open_group(Path(path), mode="r").attrs)
    except Exception as exc:
        if environment_fault(exc):
            raise
        return {}


def verify_night(path: str | Path) -> dict[str, Any] | None:
    """Check a night dataset is complete; return its attributes, or None when it is not.

    Complete means: readable metadata, a ``stamps`` array and 1-D arrays of the recorded length,
    and every shard file present.
    """
    import zarr

    path = Path(path)
    if not path.is_dir():
        return None
    try:
        group = zarr.open_group(path, mode="r")
        attrs = dict(group.attrs)
        n = int(attrs["n_stamps"])
        if group["stamps"].shape[0] != n:
            return None
        for name in ("stamp_id", "label", "masked_fraction", *attrs.get(ALERT_COLUMNS_ATTR, ())):
            if group[name].shape != (n,):
                return None
    except Exception as exc:
        if environment_fault(exc):  # unreadable is not incomplete: ingesting again cannot help
            raise
        return None
    if missing_shards(path):
        return None
    return attrs


def open_night(path: str | Path):
    """Open a night dataset with xarray (lazy, Dask-backed).

    Returns
    -------
    xarray.Dataset
    """
    import xarray as xr

    path = Path(path)
    if verify_night(path) is None:
        raise StoreError(f"{path} is not a complete night dataset")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_zarr(path, zarr_format=3)


def write_night(
    path: str | Path,
    stamps: np.ndarray,
    stamp_id: np.ndarray,
    label: np.ndarray,
    masked_fraction: np.ndarray | None = None,
    *,
    season: str,
    night: int,
    attrs: Mapping[str, Any] | None = None,
    shard_stamps: int = DEFAULT_SHARD_STAMPS,
    chunk_stamps: int = DEFAULT_CHUNK_STAMPS,
    extra: Mapping[str, np.ndarray] | None = None,
    float_encoding: str = enc.LOSSLESS,
) -> Path:
    """Write a whole night dataset from in-memory arrays (atomically: temporary name, rename).

    For small data and tests; the ingest writes large nights shard by shard on Dask workers.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(stamps)
    if stamps.ndim != 4 or stamps.shape[3] != len(CHANNELS) or stamps.shape[1] != stamps.shape[2]:
        raise StoreError(f"stamps must be (n, size, size, 3), got {stamps.shape}")
    mf = np.zeros(n, np.float32) if masked_fraction is None else masked_fraction
    tmp = partial_path(path)
    create_night(
        tmp,
        n_stamps=n,
        dtype=stamps.dtype,
        size=stamps.shape[1],
        stamp_id=stamp_id,
        label=label,
        masked_fraction=mf,
        season=season,
        night=night,
        attrs={"n_quarantined": 0, **(attrs or {})},
        shard_stamps=shard_stamps,
        chunk_stamps=chunk_stamps,
        extra=extra,
        float_encoding=float_encoding,
    )
    if n:
        write_stamps(tmp, 0, stamps)
    replace_dir(tmp, path)
    return path
