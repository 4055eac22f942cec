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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from s2v_batch.core.config import IngestConfig
from s2v_batch.core.conventions import CHANNELS
from s2v_batch.formats.decode import (
    FILL_1E30,
    StampError,
    combine_channels,
    decode_fits,
    decode_gif,
)
from s2v_batch.ingest import driver as ingest_driver
from s2v_batch.ingest.driver import IngestError, ingest
from s2v_batch.ingest.staging import plan_shards
from s2v_batch.sim.simulator import fits_bytes, render_gif, simulate
from s2v_batch.store import dataset as zstore

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


def _fits_extras(night_dir: Path) -> dict[int, str]:
    """Hand-made fits stamps beside the simulated ones: Inf, -Inf and the 1e-30 fill, and
    BSCALE/BZERO scaling on float32 and on int16 data. Returns {stamp_id: what}."""
    from astropy.io import fits

    rng = np.random.default_rng(8)
    d = night_dir / "ccd99"
    d.mkdir()
    base = rng.normal(100.0, 5.0, (3, 51, 51)).astype(np.float32)
    masked = base.copy()
    masked[0, :3, :] = np.inf  # srch: a saturated edge
    masked[0, 3, :5] = -np.inf
    masked[1, :, -4:] = FILL_1E30  # temp: the DES fill value for masked pixels
    masked[2, 10:12, 10:12] = np.nan
    for c, ch in enumerate(CHANNELS):
        (d / f"{ch}97000001.fits").write_bytes(fits_bytes(masked[c], {}))
        # float32 data with scaling cards: the pixels are 2 * data + 100
        (d / f"{ch}97000002.fits").write_bytes(fits_bytes(base[c], {"BSCALE": 2.0, "BZERO": 100.0}))
        # int16 data with BSCALE/BZERO, as astropy writes them (exactly representable values)
        hdu = fits.PrimaryHDU(data=np.round(base[c] * 4) / 4)
        hdu.scale("int16", bscale=0.25, bzero=64.0)
        buf = io.BytesIO()
        hdu.writeto(buf)
        (d / f"{ch}97000003.fits").write_bytes(buf.getvalue())
    return {97000001: "inf and fill", 97000002: "float32 scaled", 97000003: "int16 scaled"}


def test_fits_pixels_and_masks_match_the_files(client, raws, tmp_path):
    """Every stored fits stamp against its three files read by astropy (an independent reader):
    unmasked pixels equal, masked ones (NaN, +-Inf, the 1e-30 fill) the channel's median of the
    rest; the masked fraction equals the simulator's CSV (``MASKFRAC``, as written)."""
    from astropy.io import fits

    sim = raws["fits"]
    shutil.copytree(sim.out, tmp_path / "raw")
    (night,) = sim.nights
    extras = _fits_extras(tmp_path / "raw" / sim.season / str(night))
    ingest(tmp_path / "raw", tmp_path / "store", client, config=CFG, progress=False)
    ds = zstore.open_night(zstore.night_path(tmp_path / "store", sim.season, night))
    ids, frac, stamps = ds.stamp_id.values, ds.masked_fraction.values, ds.stamps.values
    assert set(ids.tolist()) == set(_csv(sim).index.tolist()) | set(extras)
    assert stamps.dtype == np.float32 and np.isfinite(stamps).all()

    files = {p.name: p for p in (tmp_path / "raw").rglob("*.fits")}
    kinds = {"nan": 0, "fill": 0, "inf": 0}
    for i, sid in enumerate(ids.tolist()):
        n_masked = 0
        for c, ch in enumerate(CHANNELS):
            raw = fits.getdata(files[f"{ch}{sid}.fits"]).astype(np.float32)
            masked = ~np.isfinite(raw) | (raw == FILL_1E30)
            kinds["nan"] += int(np.isnan(raw).any())
            kinds["inf"] += int(np.isinf(raw).any())
            kinds["fill"] += int((raw == FILL_1E30).any())
            got = stamps[i, :, :, c]
            np.testing.assert_array_equal(got[~masked], raw[~masked], err_msg=f"{sid} {ch}")
            if masked.any():
                assert (got[masked] == np.median(raw[~masked])).all(), f"{sid} {ch}"
            n_masked += int(masked.sum())
        assert frac[i] == np.float32(n_masked / (3 * 51 * 51)), sid
    assert all(kinds.values()), kinds  # every kind of masked pixel was read
    sim_rows = ~np.isin(ids, list(extras))
    expected = _csv(sim).loc[ids[sim_rows], "MASKFRAC"].to_numpy()
    as_written = np.array([float(f"{v:.6g}") for v in frac[sim_rows]])  # the CSV's %.6g
    np.testing.assert_array_equal(as_written, expected)
    assert (expected > 0).any()  # the simulator masked some stamps (CCD edges)


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


def test_changed_labels_are_written_in_place(client, raws, tmp_path):
    """Labels given later rewrite each night's label array, not its pixels (issue 30)."""
    sim = raws["gif"]
    ingest(sim.out, tmp_path, client, config=CFG, progress=False)
    path = zstore.list_nights(tmp_path)[0].path
    shards = {p: p.stat().st_ino for p in (path / "stamps").rglob("*")}
    s = ingest(sim.out, tmp_path, client, labels=sim.labels_csv, config=CFG, progress=False)
    assert {n.status for n in s.nights} == {"relabelled"}
    assert "2 relabelled, 0 already complete" in s.line()
    ds = xr.open_zarr(path)
    assert set(np.unique(ds.label.values)) == {0, 1}
    assert {p: p.stat().st_ino for p in (path / "stamps").rglob("*")} == shards
    s = ingest(sim.out, tmp_path, client, labels=sim.labels_csv, config=CFG, progress=False)
    assert {n.status for n in s.nights} == {"skipped"}


def _tree_identity(path: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (inode, mtime)}`` of every file and folder under ``path``: it changes
    when the tree is written again, whether in place or swapped in."""
    return {
        str(p.relative_to(path)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in [path, *sorted(path.rglob("*"))]
    }


def test_a_changed_raw_file_reingests_its_night(client, raws, tmp_path):
    """Touching, adding or replacing a raw file of a finished night makes ingest redo that night
    (and only that one); an unchanged tree is skipped without a write."""
    sim = raws["gif"]
    raw, store = tmp_path / "raw", tmp_path / "store"
    shutil.copytree(sim.out, raw)
    n1, n2 = sim.nights
    ingest(raw, store, client, labels=sim.labels_csv, config=CFG, progress=False)
    paths = {n: zstore.night_path(store, "Y1", n) for n in (n1, n2)}
    files = sorted((raw / "Y1" / str(n1)).rglob("*.gif"))
    srch = [p for p in files if p.name.startswith("srch")]

    def run() -> dict[int, str]:
        before = {n: _tree_identity(p) for n, p in paths.items()}
        s = ingest(raw, store, client, labels=sim.labels_csv, config=CFG, progress=False)
        after = {n: _tree_identity(p) for n, p in paths.items()}
        status = {n.night: n.status for n in s.nights}
        for n in (n1, n2):  # rewritten exactly when reported ingested
            assert (before[n] != after[n]) == (status[n] == "ingested"), (n, status)
        return status

    assert run() == {n1: "skipped", n2: "skipped"}

    # Touched: same bytes, a new modification time.
    st_ = files[5].stat()
    os.utime(files[5], ns=(st_.st_atime_ns, st_.st_mtime_ns + 10**9))
    assert run() == {n1: "ingested", n2: "skipped"}
    assert run() == {n1: "skipped", n2: "skipped"}

    # Added: a new stamp (a copy of another's files under a new ID).
    src_id = srch[3].name[4:-4]
    for ch in CHANNELS:
        shutil.copy(srch[3].with_name(f"{ch}{src_id}.gif"), srch[3].with_name(f"{ch}97000009.gif"))
    assert run() == {n1: "ingested", n2: "skipped"}
    ds = zstore.open_night(paths[n1])
    ids = ds.stamp_id.values.tolist()
    assert ds.sizes["stamp"] == len(srch) + 1 and 97000009 in ids
    np.testing.assert_array_equal(
        ds.stamps.values[ids.index(97000009)], ds.stamps.values[ids.index(int(src_id))]
    )

    # Replaced: one stamp's diff file now holds another stamp's diff.
    a, b = srch[0].name[4:-4], srch[1].name[4:-4]
    donor = srch[1].with_name(f"diff{b}.gif")
    srch[0].with_name(f"diff{a}.gif").write_bytes(donor.read_bytes())
    assert run() == {n1: "ingested", n2: "skipped"}
    ds = zstore.open_night(paths[n1])
    ids = ds.stamp_id.values.tolist()
    np.testing.assert_array_equal(
        ds.stamps.values[ids.index(int(a)), :, :, 2], decode_gif(donor.read_bytes(), 51)
    )


def _corrupt_copy(src: Path, dst: Path) -> list[dict]:
    """A copy of a gif raw tree with every kind of bad input.

    Returns the quarantine rows expected, exactly: ``stamp_id`` (None where there is none),
    ``night`` (None for an unplaced file), a part of ``path`` and the start of ``reason``.
    """
    shutil.copytree(src, dst)
    night1, night2 = sorted(d for d in (dst / "Y1").iterdir() if d.is_dir())
    n1, n2 = int(night1.name), int(night2.name)
    files = sorted(night1.rglob("*.gif"))

    def pick(ch: str, k: int) -> Path:
        return [p for p in files if p.name.startswith(ch)][k]

    expect: list[dict] = []

    def bad(p: Path, reason: str) -> None:
        sid = p.name[4:-4]
        expect.append({"stamp_id": int(sid), "night": n1, "path": sid, "reason": reason})

    p = pick("diff", 0)
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3])
    bad(p, "diff: corrupt gif")
    p = pick("srch", 1)
    p.write_bytes(b"")
    bad(p, "srch: empty file")
    p = pick("temp", 2)
    p.unlink()
    bad(p, "missing channel temp")
    p = pick("diff", 3)
    p.write_bytes(render_gif(np.zeros((50, 51), np.float32), "diff"))
    bad(p, "diff: shape (50, 51)")
    p = pick("srch", 4)
    p.write_bytes(b"GIF89a this is not an image at all")
    bad(p, "srch: corrupt gif")
    # A non-numeric ID.
    d = pick("srch", 5).parent
    for ch in ("srch", "temp", "diff"):
        (d / f"{ch}abc12.gif").write_bytes(pick(ch, 6).read_bytes())
    expect.append(
        {"stamp_id": None, "night": n1, "path": "abc12", "reason": "non-numeric stamp ID"}
    )
    # The same ID in the second night: the later one is the duplicate.
    sid = pick("srch", 7).name[4:-4]
    dd = next(p for p in night2.iterdir() if p.is_dir())
    for ch in ("srch", "temp", "diff"):
        (dd / f"{ch}{sid}.gif").write_bytes(pick(ch, 7).read_bytes())
    expect.append(
        {"stamp_id": int(sid), "night": n2, "path": str(dd), "reason": "duplicate stamp_id"}
    )
    # A fits stamp with an all-NaN channel and one with an all-Inf channel.
    fd = night2 / "ccdfits"
    fd.mkdir()
    img = np.ones((51, 51), np.float32)
    for sid, value in (("99000001", np.nan), ("99000002", np.inf)):
        for ch in ("srch", "temp", "diff"):
            data = np.full((51, 51), value, np.float32) if ch == "temp" else img
            (fd / f"{ch}{sid}.fits").write_bytes(fits_bytes(data, {}))
        expect.append(
            {"stamp_id": int(sid), "night": n2, "path": sid, "reason": "temp: all pixels NaN/Inf"}
        )
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
    for sid, reason in (("88000001", "temp: corrupt gif"), ("88000003", "missing channel diff")):
        expect.append({"stamp_id": int(sid), "night": 20131231, "path": sid, "reason": reason})
    expect.append(
        {"stamp_id": None, "night": 20131231, "path": "stamps_000.tar", "reason": "truncated tar"}
    )
    # A stamp outside any season/night folder.
    (dst / "loose").mkdir()
    (dst / "loose" / "srch5.gif").write_bytes(pick("srch", 9).read_bytes())
    expect.append(
        {
            "stamp_id": None,
            "night": None,
            "path": "loose/srch5.gif",
            "reason": "no <season>/<YYYYMMDD>",
        }
    )
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
    q = pd.concat(
        [pd.read_parquet(p) for p in sorted((tmp_path / "store").rglob("quarantine*.parquet"))]
    )
    assert {"stamp_id", "season", "night", "path", "reason"} <= set(q.columns)
    # Exactly the expected rows, one each: a good stamp quarantined, or a bad one with the wrong
    # reason, night or ID, fails here.
    rows = q.to_dict("records")
    for row in rows:
        row["stamp_id"] = None if pd.isna(row["stamp_id"]) else int(row["stamp_id"])
        row["night"] = None if pd.isna(row["night"]) else int(row["night"])
        row["season"] = None if pd.isna(row["season"]) else row["season"]
    unmatched = list(rows)
    for e in expect:
        hits = [
            r
            for r in unmatched
            if (r["stamp_id"], r["night"]) == (e["stamp_id"], e["night"])
            and e["path"] in r["path"]
            and r["reason"].startswith(e["reason"])
            and r["season"] == (None if e["night"] is None else "Y1")
        ]
        assert len(hits) == 1, f"expected one quarantine row like {e}, got {hits}"
        unmatched.remove(hits[0])
    assert unmatched == [], f"unexpected quarantine rows: {unmatched}"
    assert s.n_quarantined == len(expect)
    # Every other stamp is stored, once: the simulated ones but the five damaged in place, the
    # good stamp of the damaged archive.
    stored = np.concatenate(
        [xr.open_zarr(r.path).stamp_id.values for r in zstore.list_nights(tmp_path / "store")]
    )
    assert len(np.unique(stored)) == len(stored)
    damaged = {e["stamp_id"] for e in expect if e["night"] == int(sorted(sim.nights)[0])}
    good = set(_csv(sim).index.tolist()) - damaged
    assert set(stored.tolist()) == good | {88000002}
    # Added: abc12, the duplicate, two fits stamps, three archive stamps plus the archive's own
    # failure entry, and the unplaced file.
    assert s.n_found == sim.n_stamps + 1 + 1 + 2 + 3 + 1 + 1 == s.n_stored + s.n_quarantined


def test_no_stamps_is_a_clear_error(client, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="no stamps"):
        ingest(tmp_path / "empty", tmp_path / "store", client, progress=False)
    with pytest.raises(FileNotFoundError):
        ingest(tmp_path / "nowhere", tmp_path / "store", client, progress=False)


def _staged_units(store: Path, season: str) -> dict[str, tuple[int, int, int, int]]:
    """The staged units of a season's unfinished nights: ``{unit: (inode, mtime) of its .npy and
    of its .meta.npz}``. Layout: ``STORE/<season>/.staging-<night>-<fp12>/unit-*.{npy,meta.npz}``;
    a unit is staged once its ``.meta.npz`` (written last) exists."""
    out = {}
    for meta in (store / season).glob(".staging-*/*.meta.npz"):
        npy = meta.with_name(meta.name.replace(".meta.npz", ".npy"))
        try:
            a, b = npy.stat(), meta.stat()
        except FileNotFoundError:  # the night finished and its staging was removed meanwhile
            continue
        out[f"{meta.parent.name}/{meta.name}"] = (a.st_ino, a.st_mtime_ns, b.st_ino, b.st_mtime_ns)
    return out


#: A pixel value no simulated FITS stamp holds: planted in a staged unit, it reaches the
#: published night only if that unit is reused.
SENTINEL = np.float32(-12345.5)


class _Stopped(Exception):
    """Raised in place of planning a night's assembly: the run stops with every unit staged."""


def _stop(*args, **kwargs):
    raise _Stopped


def test_a_resumed_ingest_publishes_the_staged_units_it_reused(monkeypatch, client, raws, tmp_path):
    """Resume proven by the data, not by what the run says: a run stopped after staging leaves
    its units in ``STORE/<season>/.staging-<night>-<fp12>/`` (``.npy`` pixels, ``.meta.npz``
    written last: nothing checks the pixels' content); one stamp of a staged unit is overwritten
    with a SENTINEL, another unit is deleted. The resumed run publishes the SENTINEL stamp (that
    unit was reused, not decoded again), decodes the deleted unit again, and every other stamp
    is a clean run's."""
    sim = raws["fits"]  # one night of 150 float32 stamps: three units of 64, 64 and 22
    store = tmp_path / "store"
    with monkeypatch.context() as m:
        m.setattr(ingest_driver, "plan_night", _stop)
        with pytest.raises(_Stopped):
            ingest(sim.out, store, client, config=CFG, progress=False)
    metas = sorted(store.glob("Y2/.staging-*/*.meta.npz"))
    assert len(metas) == 3 and not zstore.list_nights(store)
    npys = [p.with_name(p.name.replace(".meta.npz", ".npy")) for p in metas]
    with np.load(metas[1]) as z:
        planted = int(z["stamp_id"][5])
    pixels = np.load(npys[1], mmap_mode="r+")
    assert pixels.dtype == np.float32 and not (pixels == SENTINEL).any()
    pixels[5] = SENTINEL
    pixels.flush()
    del pixels
    for p in (metas[0], npys[0]):
        p.unlink()

    s = ingest(sim.out, store, client, config=CFG, progress=False)
    assert [n.status for n in s.nights] == ["ingested"]
    assert not list(store.glob("Y2/.staging-*"))  # removed with the finished night
    ds = xr.open_zarr(zstore.list_nights(store)[0].path)
    ids, stamps = ds.stamp_id.values.tolist(), ds.stamps.values
    row = ids.index(planted)
    assert (stamps[row] == SENTINEL).all(), "the planted unit was decoded again, not reused"
    assert (stamps == SENTINEL).sum() == stamps[row].size
    ingest(sim.out, tmp_path / "clean", client, config=CFG, progress=False)
    clean = xr.open_zarr(zstore.list_nights(tmp_path / "clean")[0].path)
    np.testing.assert_array_equal(clean.stamp_id.values, ds.stamp_id.values)
    others = np.arange(len(ids)) != row
    np.testing.assert_array_equal(stamps[others], clean.stamps.values[others])
    assert not (clean.stamps.values[row] == SENTINEL).any()


def _kill_when(cmd: list[str], env: dict, done: Callable[[], bool]) -> None:
    """Start ``cmd`` in its own process group and SIGKILL the whole group (workers included)
    as soon as ``done()``."""
    proc = subprocess.Popen(
        cmd,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not done():
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_killed_ingest_resumes_to_the_same_store(tmp_path):
    """SIGKILL `s2v ingest` (and its workers) twice while it decodes; each re-run keeps the units
    staged before it, and the last one gives the clean run's store."""
    n_units = 12
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
    store = tmp_path / "s"
    killed = [*cmd, "--store", str(store)]

    # Killed while decoding: some units staged, not all, and no night published.
    _kill_when(killed, env, lambda: len(_staged_units(store, "Y3")) >= 3)
    first = _staged_units(store, "Y3")
    assert 3 <= len(first) < n_units and not zstore.list_nights(store)

    # Killed again after it staged two more units: the first ones were reused, not redone.
    _kill_when(killed, env, lambda: len(_staged_units(store, "Y3")) >= len(first) + 2)
    second = _staged_units(store, "Y3")
    assert len(first) < len(second) < n_units and not zstore.list_nights(store)
    assert {u: second.get(u) for u in first} == first, "staged units were written again"

    again = subprocess.run(killed, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "1200 stamps found = 1200 stored + 0 quarantined" in again.stdout
    assert _staged_units(store, "Y3") == {}  # staging is removed with the finished night
    _dataset_equal(
        zstore.list_nights(store)[0].path, zstore.list_nights(tmp_path / "clean")[0].path
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
    assert len(sl) == -(-n // shard)
    if sl:
        assert sl[0].start == 0 and sl[-1].stop == n
    assert all(a.stop == b.start for a, b in zip(sl, sl[1:], strict=False))  # contiguous
    assert all(0 < s.stop - s.start <= shard for s in sl)
    assert all(s.stop - s.start == shard for s in sl[:-1])  # all but the last are full
    assert [i for s in sl for i in range(s.start, s.stop)] == list(range(n))


_SPECIAL = st.sampled_from([np.nan, np.inf, -np.inf, 1e-30, -0.0, 0.0]).map(np.float32)


@settings(max_examples=50, deadline=None)
@given(img=hnp.arrays(np.float32, (13, 13), elements=st.floats(-1e6, 1e6, width=32) | _SPECIAL))
def test_fits_round_trip(img):
    """NaN, +-Inf and the 1e-30 fill come back bit for bit (masking is the ingest's job)."""
    np.testing.assert_array_equal(decode_fits(fits_bytes(img, {}), 13), img)


@settings(max_examples=50, deadline=None)
@given(
    data=hnp.arrays(np.int16, (13, 13), elements=st.integers(-32768, 32767)),
    bscale=st.floats(1e-3, 1e3),
    bzero=st.floats(-1e5, 1e5),
)
def test_fits_bscale_bzero_are_applied(data, bscale, bzero):
    """Integer FITS with BSCALE/BZERO decode to the physical values astropy reads."""
    from astropy.io import fits

    hdu = fits.PrimaryHDU(data=data)
    hdu.header["BSCALE"] = bscale
    hdu.header["BZERO"] = bzero
    buf = io.BytesIO()
    hdu.writeto(buf, output_verify="silentfix")
    raw = buf.getvalue()
    expect = fits.getdata(io.BytesIO(raw)).astype(np.float64)
    got = decode_fits(raw, 13)
    assert got.dtype == np.float32
    # Both compute in float32: they may differ by the rounding of one product and one sum.
    tol = 4 * np.finfo(np.float32).eps * (np.abs(data * np.float64(bscale)) + abs(bzero))
    assert (np.abs(got - expect) <= tol + 1e-30).all()
    physical = data * np.float64(bscale) + bzero
    assert (np.abs(got - physical) <= tol + 1e-30).all()


@settings(max_examples=100, deadline=None)
@given(
    img=hnp.arrays(np.float32, (3, 9, 9), elements=st.floats(-1e4, 1e4, width=32)),
    mask=hnp.arrays(np.bool_, (3, 9, 9)),
    fill=st.sampled_from([np.nan, np.inf, -np.inf, 1e-30]).map(np.float32),
)
def test_masked_pixels_become_the_channel_median(img, mask, fill):
    """What ingest stores for a masked pixel (NaN, +-Inf or the 1e-30 fill): the median of the
    channel's other pixels; the masked fraction is counted over all three channels."""
    img = np.where(img == FILL_1E30, np.float32(0), img)  # a real pixel is never the fill value
    raw = np.where(mask, fill, img)
    if mask.all(axis=(1, 2)).any():
        with pytest.raises(StampError, match="all pixels NaN/Inf/masked"):
            combine_channels(list(raw))
        return
    out, frac = combine_channels(list(raw))
    assert out.shape == (9, 9, 3) and np.isfinite(out).all()
    assert frac == mask.sum() / mask.size
    for c in range(3):
        np.testing.assert_array_equal(out[..., c][~mask[c]], img[c][~mask[c]])
        assert (out[..., c][mask[c]] == np.median(img[c][~mask[c]])).all()


_GIF = render_gif(np.random.default_rng(4).normal(100, 30, (51, 51)).astype(np.float32), "srch")


def test_giflib_and_pillow_decode_the_same_pixels():
    import s2v_batch.formats.decode as stamps

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
