"""Stored stamps and published scores at speed: the shard reader, compact float stamps, and
nights published as one sorted file. Real Zarr and Parquet on disk; no cluster."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from s2v_batch.core import encoding as enc
from s2v_batch.core.config import ConfigError, IngestConfig
from s2v_batch.store import dataset as zstore
from s2v_batch.store import publish
from s2v_batch.store import scores as sink
from s2v_batch.store import state as nightstate
from s2v_batch.store.shardread import CorruptShardError, StampReader

N = 1000  # not a multiple of the shard (256) nor of the chunk (64)


def _night(root: Path, pixels: np.ndarray, encoding: str = "lossless", **kw) -> Path:
    n = len(pixels)
    return zstore.write_night(
        zstore.night_path(root, "Y1", 20130901),
        pixels,
        np.arange(n),
        np.zeros(n, np.int8),
        season="Y1",
        night=20130901,
        shard_stamps=kw.get("shard_stamps", 256),
        chunk_stamps=kw.get("chunk_stamps", 64),
        float_encoding=encoding,
    )


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    rng = np.random.default_rng(3)
    f32 = (rng.normal(0, 30, (N, 51, 51, 3)) * rng.lognormal(0, 2, (N, 1, 1, 1))).astype(np.float32)
    u8 = rng.integers(0, 256, (N, 51, 51, 3), dtype=np.uint8)
    root = tmp_path_factory.mktemp("nights")
    out = {}
    for name, px, e in [
        ("uint8", u8, "lossless"),
        ("float32", f32, "lossless"),
        ("bitround", f32, "bitround-7"),
    ]:
        out[name] = (_night(root / name, px, e), px)
    return out


@settings(max_examples=60, deadline=None)
@given(which=st.sampled_from(["uint8", "float32", "bitround"]), a=st.integers(0, N + 50),
       b=st.integers(0, N + 50))  # fmt: skip
def test_reader_reads_what_zarr_reads(nights, which, a, b):
    path, _ = nights[which]
    reader = StampReader(zstore.stamps_path(path))
    assert reader.fast
    want = zstore.stamps_array(path)[a:b]
    np.testing.assert_array_equal(reader.read(a, b), want)
    out = np.empty_like(want)
    assert reader.read(a, b, out=out) is out
    np.testing.assert_array_equal(out, want)


def test_reader_falls_back_to_zarr_for_other_layouts(tmp_path):
    import zarr

    px = np.random.default_rng(1).normal(size=(300, 8, 8, 3)).astype(np.float32)
    arr = zarr.create_array(tmp_path / "plain", shape=px.shape, chunks=(50, 8, 8, 3), dtype="f4")
    arr[:] = px
    reader = StampReader(tmp_path / "plain")
    assert not reader.fast and reader.chunk_stamps == 50
    np.testing.assert_array_equal(reader.read(17, 260), px[17:260])


def test_reader_missing_shard_and_damaged_index(nights, tmp_path):
    import shutil

    path, px = nights["uint8"]
    copy = tmp_path / "night.zarr"
    shutil.copytree(path, copy)
    stamps = zstore.stamps_path(copy)
    (stamps / "c" / "1" / "0" / "0" / "0").unlink()  # a lost shard reads as the fill value
    got = StampReader(stamps).read(200, 600)
    np.testing.assert_array_equal(got, zstore.stamps_array(copy)[200:600])
    assert (got[56:312] == 0).all()
    shard = stamps / "c" / "0" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # inside the index: its crc32c no longer matches
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptShardError, match="checksum mismatch: the stored night is damaged"):
        StampReader(stamps).read(0, 10)
    shard.write_bytes(bytes(data[:100]))  # cut short
    with pytest.raises(CorruptShardError, match=f"delete {copy} and ingest it again"):
        StampReader(stamps).read(0, 10)
    with pytest.raises(ValueError, match="C-contiguous"):
        StampReader(stamps).read(300, 310, out=np.empty((9, 51, 51, 3), np.uint8))


@settings(max_examples=200, deadline=None)
@given(
    x=st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=50),
    bits=st.integers(1, 22),
)
def test_round_mantissa_bounds_the_relative_error(x, bits):
    import numcodecs

    a = np.asarray(x, np.float32)
    r = enc.round_mantissa(a, bits)
    fin = np.isfinite(a)
    assert r.dtype == np.float32 and (np.isnan(r) == np.isnan(a)).all()
    np.testing.assert_array_equal(r[~fin & ~np.isnan(a)], a[~fin & ~np.isnan(a)])  # +-Inf kept
    assert np.isfinite(r[fin]).all()
    normal = fin & (np.abs(a) >= np.finfo(np.float32).tiny)  # subnormals have no such bound
    err = np.abs(r[normal].astype(np.float64) - a[normal]) / np.abs(a[normal])
    assert (err <= 2.0 ** -(bits + 1) * (1 + 1e-6)).all()
    np.testing.assert_array_equal(enc.round_mantissa(r, bits), r)  # idempotent
    # The same rounding as numcodecs' BitRound, wherever that stays finite.
    nc = numcodecs.BitRound(keepbits=bits).encode(a.copy()).view(np.float32)
    same = fin & np.isfinite(nc)
    np.testing.assert_array_equal(r[same], nc[same])


def test_compact_float_stamps_read_back_as_pixel_values(nights):
    path, px = nights["bitround"]
    ds = xr.open_zarr(path)
    assert ds.stamps.dtype == np.float32
    np.testing.assert_array_equal(ds.stamps.values, enc.round_mantissa(px, 7))
    assert ds.attrs["stamps_encoding"] == "bitround-7" == ds.stamps.attrs["stamps_encoding"]
    assert "2**-8" in ds.attrs["stamps_encoding_note"]
    lossless = xr.open_zarr(nights["float32"][0])
    np.testing.assert_array_equal(lossless.stamps.values, px)
    assert lossless.attrs["stamps_encoding"] == "lossless"
    size = {k: sum(f.stat().st_size for f in zstore.stamps_path(p).rglob("*") if f.is_file())
            for k, (p, _) in nights.items()}  # fmt: skip
    assert size["bitround"] < 0.75 * size["float32"]
    assert xr.open_zarr(nights["uint8"][0]).attrs["stamps_encoding"] == "lossless"


def test_fingerprint_follows_the_float_encoding(tmp_path):
    px = np.random.default_rng(2).normal(size=(20, 51, 51, 3)).astype(np.float32)
    fp = "f" * 64
    for e in ("lossless", "bitround-8"):
        path = zstore.write_night(
            zstore.night_path(tmp_path / e, "Y1", 20130901),
            px,
            np.arange(20),
            np.zeros(20, np.int8),
            season="Y1",
            night=20130901,
            float_encoding=e,
            attrs={nightstate.FINGERPRINT_ATTR: nightstate.stored_fingerprint(fp, px.dtype, e)},
        )
        assert nightstate.current_night(path, fp, e) is not None
        other = "bitround-8" if e == "lossless" else "lossless"
        assert nightstate.current_night(path, fp, other) is None  # re-ingested in the new encoding
    # uint8 stamps are lossless whatever the setting: their fingerprint does not move.
    assert nightstate.stored_fingerprint(fp, np.uint8, "bitround-8") == fp
    with pytest.raises(ConfigError, match="float_encoding"):
        IngestConfig(float_encoding="bitround-30")
    with pytest.raises(ConfigError, match="float_encoding"):
        IngestConfig(float_encoding="float16")


def _part(ids: np.ndarray, scores: np.ndarray) -> pa.Table:
    n = len(ids)
    valid = np.isfinite(scores)
    return pa.table(
        {
            "stamp_id": pa.array(ids, pa.int64()),
            "score": pa.array(scores, pa.float32(), mask=~valid),
            "is_candidate": pa.array(valid & (scores >= 0.5)),
            "threshold": pa.array(np.full(n, 0.5, np.float32)),
            "label": pa.array(np.zeros(n, np.int8)),
            "model_version": pa.repeat(pa.scalar("m-1"), n),
            "model_sha256": pa.repeat(pa.scalar("a" * 64), n),
            "run_id": pa.repeat(pa.scalar("r" * 32), n),
            "scored_at": pa.repeat(
                pa.scalar(dt.datetime(2026, 11, 1, tzinfo=dt.UTC), pa.timestamp("us", tz="UTC")),
                n,
            ),
            "error": pa.array([None if v else "bad" for v in valid], pa.string()),
            "precision": pa.repeat(pa.scalar("float32"), n),
            "data_provenance": pa.repeat(pa.scalar("simulated"), n),
            "masked_fraction": pa.array(np.zeros(n, np.float32)),
            "masked_over_limit": pa.nulls(n, pa.bool_()),
        }
    ).select(sink.SCORE_SCHEMA.names)  # the columns in the schema's order


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 300), min_size=1, max_size=6), rg=st.integers(1, 400),
       file_rows=st.integers(1, 900))  # fmt: skip
def test_merge_parts_keeps_every_row_sorted_in_row_groups(tmp_path_factory, sizes, rg, file_rows):
    d = tmp_path_factory.mktemp("merge")
    rng = np.random.default_rng(len(sizes) * 1000 + rg)
    parts, start = [], 0
    (d / "stage").mkdir()
    for i, n in enumerate(sizes):
        scores = rng.random(n).astype(np.float32)
        scores[rng.random(n) < 0.05] = np.nan
        publish.write_part(
            sink.part_path(d / "stage", i, "r" * 32), _part(np.arange(start, start + n), scores)
        )
        parts.append(sink.part_path(d / "stage", i, "r" * 32))
        start += n
    (d / "out").mkdir()
    files = publish.merge_parts(parts, d / "out", "a" * 32, row_group=rg, file_rows=file_rows)
    assert [f.name for f in files] == [
        f"part-{'a' * 12}-{i:05d}.parquet" for i in range(len(files))
    ]
    merged = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    before = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    assert len(merged) == start
    assert not isinstance(merged.model_version.dtype, pd.CategoricalDtype)  # strings stay strings
    key = ["stamp_id"]
    pd.testing.assert_frame_equal(
        merged.sort_values(key).reset_index(drop=True),
        before.sort_values(key).reset_index(drop=True),
    )
    s = merged.score.to_numpy()
    fin = np.isfinite(s)
    assert (np.diff(s[fin]) <= 0).all() and not fin[fin.sum() :].any()  # best first, NaN last
    for f in files:
        meta = pq.ParquetFile(f).metadata
        assert meta.num_rows <= file_rows
        assert all(meta.row_group(i).num_rows <= rg for i in range(meta.num_row_groups))


def test_publish_leaves_one_file_and_no_parts(tmp_path):
    stage = sink.staging_dir(tmp_path, "Y1", 20130901, "key")
    stage.mkdir(parents=True)
    for i in range(3):
        publish.write_part(sink.part_path(stage, i, "s" * 32), _part(np.arange(i * 10, i * 10 + 10),
                                                        np.linspace(0, 1, 10, dtype=np.float32)))  # fmt: skip
    run_id = publish.run_identity(stage)["run_id"]
    dest = publish.publish_night(
        stage, tmp_path, "Y1", 20130901, {"n_stamps": 30, "run_id": run_id}
    )
    names = sorted(p.name for p in dest.iterdir())
    assert names == ["_manifest.json", f"part-{run_id[:12]}-00000.parquet"]
    assert not stage.exists() and not stage.with_name("key.publish").exists()
    assert len(sink.read_scores(tmp_path, "Y1")) == 30
