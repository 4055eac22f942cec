"""Ingest against the real thing: simulator files, a real LocalCluster, real Zarr on disk."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from s2v_batch import store as zstore
from s2v_batch.config import IngestConfig
from s2v_batch.decode import StampError, decode_fits, decode_gif
from s2v_batch.ingest import IngestError, ingest
from s2v_batch.simulator import fits_bytes, render_gif, simulate
from s2v_batch.staging import plan_shards

CFG = IngestConfig(unit_stamps=64, shard_stamps=128, chunk_stamps=32)


@pytest.fixture(scope="module")
def client(two_worker_client):
    return two_worker_client


@pytest.fixture(scope="module")
def raws(tmp_path_factory):
    base = tmp_path_factory.mktemp("raw")
    out = {}
    out["gif"] = simulate(
        base / "gif", season="Y1", nights=2, stamps_per_night=150, fmt="gif", seed=1
    )
    out["fits"] = simulate(
        base / "fits", season="Y2", nights=1, stamps_per_night=150, fmt="fits", seed=2
    )
    out["tar"] = simulate(
        base / "tar",
        season="Y1",
        nights=1,
        stamps_per_night=250,
        fmt="tar",
        seed=3,
        stamps_per_archive=100,
    )
    return out


def _csv(summary) -> pd.DataFrame:
    return pd.read_csv(summary.labels_csv, comment="#").set_index("ID")


def _dataset_equal(a: Path, b: Path) -> None:
    da_, db_ = xr.open_zarr(a), xr.open_zarr(b)
    for name in ("stamps", "stamp_id", "label", "masked_fraction"):
        np.testing.assert_array_equal(da_[name].values, db_[name].values)
    keep = ("n_stamps", "n_quarantined", "night_fingerprint", "source_format")
    assert {k: da_.attrs[k] for k in keep} == {k: db_.attrs[k] for k in keep}


@pytest.mark.parametrize("fmt", ["gif", "fits", "tar"])
def test_ingest_each_format(client, raws, tmp_path, fmt):
    sim = raws[fmt]
    s = ingest(sim.out, tmp_path, client, labels=sim.labels_csv, config=CFG, progress=False)
    assert s.n_found == sim.n_stamps == s.n_stored + s.n_quarantined
    assert s.n_quarantined == 0
    assert s.n_csv_rows_without_stamp == 0
    csv = _csv(sim)
    nights = zstore.list_nights(tmp_path)
    assert [n.night for n in nights] == sim.nights
    total = 0
    for ref in nights:
        ds = xr.open_zarr(ref.path)
        assert list(ds.channel.values) == ["srch", "temp", "diff"]
        assert ds.stamps.dims == ("stamp", "y", "x", "channel")
        assert ds.stamps.dtype == (np.float32 if fmt == "fits" else np.uint8)
        ids = ds.stamp_id.values
        assert len(np.unique(ids)) == len(ids)
        # The autoscan coding is the opposite of ours: OBJECT_TYPE 0 (real) -> label 1.
        expect = 1 - csv.loc[ids, "OBJECT_TYPE"].to_numpy()
        np.testing.assert_array_equal(ds.label.values, expect)
        assert np.isfinite(ds.stamps.values).all()
        total += ds.sizes["stamp"]
    assert total == sim.n_stamps


def test_pixels_match_the_files(client, raws, tmp_path):
    sim = raws["gif"]
    ingest(sim.out, tmp_path, client, config=CFG, progress=False)
    ref = zstore.list_nights(tmp_path)[0]
    ds = xr.open_zarr(ref.path)
    assert (ds.label.values == -1).all()  # no CSV given: unknown labels
    i = 17
    sid = int(ds.stamp_id.values[i])
    files = sorted(Path(sim.out).rglob(f"*{sid}.gif"))
    by_ch = {p.name[:4]: decode_gif(p.read_bytes(), 51) for p in files}
    for c, ch in enumerate(["srch", "temp", "diff"]):
        np.testing.assert_array_equal(ds.stamps.values[i, :, :, c], by_ch[ch])


def test_masked_fits_stamps_are_stored_finite(client, raws, tmp_path):
    sim = raws["fits"]
    ingest(sim.out, tmp_path, client, config=CFG, progress=False)
    ds = xr.open_zarr(zstore.list_nights(tmp_path)[0].path)
    frac = ds.masked_fraction.values
    assert (frac > 0).any(), "the simulator masks some stamps (CCD edges)"
    assert (frac < 1).all()
    assert np.isfinite(ds.stamps.values).all()


def test_idempotent_and_verified_resume(client, raws, tmp_path):
    sim = raws["tar"]
    a, b = tmp_path / "a", tmp_path / "b"
    ingest(sim.out, a, client, labels=sim.labels_csv, config=CFG, progress=False)
    ingest(sim.out, b, client, labels=sim.labels_csv, config=CFG, progress=False)
    again = ingest(sim.out, a, client, labels=sim.labels_csv, config=CFG, progress=False)
    assert [n.status for n in again.nights] == ["skipped"]
    assert again.n_found == sim.n_stamps
    ref_a = zstore.list_nights(a)[0].path
    _dataset_equal(ref_a, zstore.list_nights(b)[0].path)
    # A shard file lost after the run: the night no longer verifies and is written again.
    shard = ref_a / "stamps" / "c" / "1" / "0" / "0" / "0"
    shard.unlink()
    assert zstore.verify_night(ref_a) is None
    redo = ingest(sim.out, a, client, labels=sim.labels_csv, config=CFG, progress=False)
    assert [n.status for n in redo.nights] == ["ingested"]
    _dataset_equal(ref_a, zstore.list_nights(b)[0].path)


def test_changed_labels_reingest(client, raws, tmp_path):
    sim = raws["gif"]
    ingest(sim.out, tmp_path, client, config=CFG, progress=False)
    s = ingest(sim.out, tmp_path, client, labels=sim.labels_csv, config=CFG, progress=False)
    assert {n.status for n in s.nights} == {"ingested"}
    ds = xr.open_zarr(zstore.list_nights(tmp_path)[0].path)
    assert set(np.unique(ds.label.values)) == {0, 1}


def _corrupt_copy(src: Path, dst: Path) -> dict[str, str]:
    """A copy of a gif raw tree with every kind of bad input; returns {what: expected reason part}."""
    shutil.copytree(src, dst)
    night1, night2 = sorted((dst / "Y1").iterdir())
    files = sorted(night1.rglob("*.gif"))

    def pick(ch: str, k: int) -> Path:
        return [p for p in files if p.name.startswith(ch)][k]

    expect = {}
    p = pick("diff", 0)
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3])
    expect[p.name[4:-4]] = "diff: corrupt gif"
    p = pick("srch", 1)
    p.write_bytes(b"")
    expect[p.name[4:-4]] = "srch: empty file"
    p = pick("temp", 2)
    p.unlink()
    expect[p.name[4:-4]] = "missing channel temp"
    p = pick("diff", 3)
    p.write_bytes(render_gif(np.zeros((50, 51), np.float32), "diff"))
    expect[p.name[4:-4]] = "diff: shape (50, 51)"
    p = pick("srch", 4)
    p.write_bytes(b"GIF89a this is not an image at all")
    expect[p.name[4:-4]] = "srch: corrupt gif"
    # A non-numeric ID.
    d = pick("srch", 5).parent
    for ch in ("srch", "temp", "diff"):
        (d / f"{ch}abc12.gif").write_bytes(pick(ch, 6).read_bytes())
    expect["abc12"] = "non-numeric stamp ID"
    # The same ID in the second night: the later one is the duplicate.
    sid = pick("srch", 7).name[4:-4]
    dd = next(p for p in night2.iterdir() if p.is_dir())
    for ch in ("srch", "temp", "diff"):
        (dd / f"{ch}{sid}.gif").write_bytes(pick(ch, 7).read_bytes())
    expect["dup"] = "duplicate stamp_id"
    # A fits stamp with an all-NaN channel and one with an all-Inf channel.
    fd = night2 / "ccdfits"
    fd.mkdir()
    img = np.ones((51, 51), np.float32)
    for sid, bad in (("99000001", np.nan), ("99000002", np.inf)):
        for ch in ("srch", "temp", "diff"):
            data = np.full((51, 51), bad, np.float32) if ch == "temp" else img
            (fd / f"{ch}{sid}.fits").write_bytes(fits_bytes(data, {}))
    expect["99000001"] = "temp: all pixels NaN/Inf/masked"
    expect["99000002"] = "temp: all pixels NaN/Inf/masked"
    # A tar archive with a corrupt member and a truncated tail.
    night3 = dst / "Y1" / "20131231"
    night3.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for k, sid in enumerate(("88000001", "88000002", "88000003")):
            for ch in ("srch", "temp", "diff"):
                data = pick(ch, 8 + k).read_bytes()
                if sid == "88000001" and ch == "temp":
                    data = b"\x00" * len(data)
                ti = tarfile.TarInfo(f"stamps_000/{ch}{sid}.gif")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    raw_tar = buf.getvalue()
    # Cut inside the last member's data: srch and temp of 88000003 survive, diff is truncated.
    last = tarfile.open(fileobj=io.BytesIO(raw_tar)).getmembers()[-1]
    (night3 / "stamps_000.tar").write_bytes(raw_tar[: last.offset_data + 100])
    expect["88000001"] = "temp: corrupt gif"
    expect["88000003"] = "missing channel diff"
    expect["archive"] = "truncated tar archive"
    # A stamp outside any season/night folder.
    (dst / "loose").mkdir()
    (dst / "loose" / "srch5.gif").write_bytes(pick("srch", 9).read_bytes())
    expect["unplaced"] = "no <season>/<YYYYMMDD> folder"
    return expect


def test_bad_input_is_quarantined_with_reasons(client, raws, tmp_path):
    sim = raws["gif"]
    expect = _corrupt_copy(Path(sim.out), tmp_path / "raw")
    s = ingest(
        tmp_path / "raw",
        tmp_path / "store",
        client,
        labels=sim.labels_csv,
        config=CFG,
        progress=False,
    )
    assert s.n_found == s.n_stored + s.n_quarantined
    q = pd.concat(
        [pd.read_parquet(p) for p in sorted((tmp_path / "store").rglob("quarantine*.parquet"))]
    )
    assert {"stamp_id", "season", "night", "path", "reason"} <= set(q.columns)
    assert len(q) == s.n_quarantined
    reasons = q.reason.tolist()
    for what, reason in expect.items():
        assert any(reason in r for r in reasons), (
            f"{what}: no quarantine reason containing {reason!r}"
        )
    for key in ("abc12",):
        assert q.path.str.contains(key).any()
    stored = np.concatenate(
        [xr.open_zarr(r.path).stamp_id.values for r in zstore.list_nights(tmp_path / "store")]
    )
    assert len(np.unique(stored)) == len(stored)
    bad_ids = {int(k) for k in expect if k.isdigit()}
    assert not bad_ids & set(stored.tolist())
    assert 88000002 in stored  # the good stamp of the damaged archive is kept
    # Added: abc12, the duplicate, two fits stamps, three archive stamps plus the archive's own
    # failure entry, and the unplaced file.
    assert s.n_found == sim.n_stamps + 1 + 1 + 2 + 3 + 1 + 1


def test_no_stamps_is_a_clear_error(client, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="no stamps"):
        ingest(tmp_path / "empty", tmp_path / "store", client, progress=False)
    with pytest.raises(FileNotFoundError):
        ingest(tmp_path / "nowhere", tmp_path / "store", client, progress=False)


@pytest.mark.slow
def test_killed_ingest_resumes_to_the_same_store(raws, tmp_path):
    """SIGKILL the whole `s2v ingest` process half way; the re-run gives the clean run's store."""
    sim = simulate(
        tmp_path / "raw", season="Y3", nights=1, stamps_per_night=1200, fmt="gif", seed=9
    )
    cfgfile = tmp_path / "cfg.yaml"
    cfgfile.write_text("ingest:\n  unit_stamps: 100\n  shard_stamps: 256\n  chunk_stamps: 64\n")
    cmd = [
        sys.executable,
        "-m",
        "s2v_batch.cli",
        "ingest",
        str(sim.out),
        "--labels",
        str(sim.labels_csv),
        "--config",
        str(cfgfile),
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    clean = subprocess.run(
        [*cmd, "--store", str(tmp_path / "clean")], env=env, capture_output=True, text=True
    )
    assert clean.returncode == 0, clean.stderr
    proc = subprocess.Popen(
        [*cmd, "--store", str(tmp_path / "s")],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    staging = tmp_path / "s" / "Y3"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(staging.glob(".staging-*/*.meta.npz"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not zstore.list_nights(tmp_path / "s"), "killed before the night was finished"
    again = subprocess.run(
        [*cmd, "--store", str(tmp_path / "s")], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert "1200 stamps found = 1200 stored + 0 quarantined" in again.stdout
    _dataset_equal(
        zstore.list_nights(tmp_path / "s")[0].path, zstore.list_nights(tmp_path / "clean")[0].path
    )


def test_cli_errors_are_one_line(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "s2v_batch.cli",
            "ingest",
            str(tmp_path / "nope"),
            "--store",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "error: raw input" in r.stderr and "Traceback" not in r.stderr


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 300), min_size=0, max_size=12),
    shard=st.integers(1, 97),
)
def test_plan_shards_covers_rows_in_order(lengths, shard):
    pieces = [(f"u{i}", np.arange(n) + 1000 * i) for i, n in enumerate(lengths)]
    plan = plan_shards(pieces, shard)
    total = sum(lengths)
    assert [s for s, _ in plan] == list(range(0, total, shard))
    flat = [(src, r) for _, ps in plan for src, rows in ps for r in rows.tolist()]
    assert flat == [(src, r) for src, rows in pieces for r in rows.tolist()]
    sizes = [sum(len(r) for _, r in ps) for _, ps in plan]
    assert all(s == shard for s in sizes[:-1])
    if sizes:
        assert 0 < sizes[-1] <= shard


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 5000), shard=st.integers(1, 600))
def test_shard_slices_partition(n, shard):
    sl = zstore.shard_slices(n, shard)
    assert sum(s.stop - s.start for s in sl) == n
    assert all(s.start % shard == 0 for s in sl)
    assert all(a.stop == b.start for a, b in zip(sl, sl[1:], strict=False))


@settings(max_examples=50, deadline=None)
@given(
    img=hnp.arrays(
        np.float32, (51, 51), elements=st.floats(-1e6, 1e6, width=32) | st.just(np.float32(np.nan))
    )
)
def test_fits_round_trip(img):
    np.testing.assert_array_equal(decode_fits(fits_bytes(img, {}), 51), img)


_GIF = render_gif(np.random.default_rng(4).normal(100, 30, (51, 51)).astype(np.float32), "srch")


def test_giflib_and_pillow_decode_the_same_pixels():
    import s2v_batch.decode as stamps

    pytest.importorskip("imagecodecs")
    w, h, bits, interlace, palette, offset, full = stamps._gif_image_block(_GIF)
    a = stamps._gif_indices_giflib(_GIF, h, w)
    b = stamps._gif_indices_pillow(_GIF, h, w, bits, interlace, offset)
    assert a is not None and full
    np.testing.assert_array_equal(a, b)
    # Without its trailer byte giflib refuses the file and Pillow, which has all the pixels, decodes it.
    assert stamps._gif_indices_giflib(_GIF[:-1], h, w) is None
    np.testing.assert_array_equal(decode_gif(_GIF[:-1], 51), decode_gif(_GIF, 51))


@settings(max_examples=150, deadline=None)
@given(cut=st.integers(0, len(_GIF) - 1))
def test_a_cut_gif_is_refused_or_decoded_whole(cut):
    # giflib refuses more cut files than Pillow (a missing trailer byte); whichever decodes,
    # a cut file either raises StampError or gives exactly the full file's pixels.
    whole = decode_gif(_GIF, 51)
    try:
        got = decode_gif(_GIF[:cut], 51)
    except StampError:
        return
    np.testing.assert_array_equal(got, whole)


def test_a_night_of_fill_value_pixels_is_complete(tmp_path):
    # Zarr skips chunks equal to the fill value unless told not to; the store must still verify.
    path = zstore.write_night(
        tmp_path / "Y1" / "20130901.zarr",
        np.zeros((300, 51, 51, 3), np.uint8),
        np.arange(300),
        np.zeros(300, np.int8),
        season="Y1",
        night=20130901,
        shard_stamps=128,
        chunk_stamps=64,
    )
    assert zstore.missing_shards(path) == []
    assert zstore.verify_night(path) is not None
