"""A nightly alert archive replayed: staged in parts, a killed ``s2v ingest`` (SIGKILL) resumes
after its last whole part without decoding it again and ends with the store of an uninterrupted
run; and every night's accounting says found = stored + quarantined, bad packets included."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from s2v_batch.ingest.staging import load_part, stage_unit, staged_files
from s2v_batch.ingest.units import Unit
from s2v_batch.sim.alerts import avro_container, simulate_alerts, write_archive, ztf_record
from s2v_batch.store import dataset as zstore

PART = 20
ARCHIVE = "ztf_public_20240102.tar.gz"  # the night of 2024-01-01


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """One night's archive: 400 simulated alerts, 3 bad packets and a repeated candid among them."""
    base = tmp_path_factory.mktemp("resume")
    sim = simulate_alerts(base / "sim", survey="ztf", nights=1, alerts_per_night=400, fmt="avro",
                          seed=25)  # fmt: skip
    files = sorted(sim.files)
    members = [(f.name, f.read_bytes()) for f in files]
    jd = 2460311.8
    pix = np.zeros((63, 63, 3), np.float32)
    corrupt = ztf_record(5_000_000_001, "ZTF24zzzzzzz", jd, pix)
    corrupt["cutoutScience"] = {"fileName": "x", "stampData": b"\x1f\x8b\x08junk"}
    bad = [
        ("corrupt.avro", avro_container([corrupt], "ztf")),
        ("junk.avro", b"\x07not avro at all"),
        ("cut.avro", members[5][1][: len(members[5][1]) // 2]),  # a truncated packet
        ("again.avro", members[7][1]),  # the same candid as an earlier member
    ]
    for i, m in enumerate(bad):  # spread through the archive, in different parts
        members.insert(60 + 97 * i, m)
    out = base / "raw"
    write_archive(out / ARCHIVE, members)
    (base / "cfg.yaml").write_text(f"ingest:\n  unit_stamps: {PART}\n")
    return out


def s2v(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen([sys.executable, "-m", "s2v_batch.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)  # fmt: skip


def ingest_cli(raw: Path, store: Path) -> str:
    p = s2v("ingest", str(raw), "--store", str(store), "--no-progress", "--config",
            str(raw.parent / "cfg.yaml"))  # fmt: skip
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    return out


def parts_staged(store: Path) -> list[Path]:
    return sorted(store.glob(f"ZTF2024/.staging-20240101-*/unit-*-p{PART}-*.meta.npz"))


def night(store: Path) -> tuple[xr.Dataset, pd.DataFrame]:
    ds = xr.open_zarr(store / "ZTF2024" / "20240101.zarr")
    q = pd.read_parquet(zstore.quarantine_path(store, "ZTF2024", 20240101))
    return ds, q.sort_values("path").reset_index(drop=True)


def test_every_night_says_found_equals_stored_plus_quarantined(raw, tmp_path):
    out = ingest_cli(raw, tmp_path / "store")
    m = re.search(r"ZTF2024/20240101: (\d+) found = (\d+) stored \+ (\d+) quarantined", out)
    assert m, out
    found, stored, quarantined = map(int, m.groups())
    assert found == stored + quarantined == 404
    assert (stored, quarantined) == (400, 4), out
    ds, q = night(tmp_path / "store")
    assert ds.sizes["stamp"] == stored and len(q) == quarantined
    assert ds.attrs["n_found"] == found and ds.attrs["n_quarantined"] == quarantined
    assert q["reason"].str.contains("duplicate stamp_id").sum() == 1
    assert "400 stored + 4 quarantined" in out.splitlines()[-1]


def test_a_killed_archive_ingest_resumes_after_its_staged_parts(raw, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    ingest_cli(raw, whole)
    # The same ingest, killed (SIGKILL: client, nannies and workers, as a batch system kills a
    # job) once a few parts of the archive are staged.
    p = s2v("ingest", str(raw), "--store", str(cut), "--no-progress", "--config",
            str(raw.parent / "cfg.yaml"), start_new_session=True)  # fmt: skip
    t0 = time.monotonic()
    while len(parts_staged(cut)) < 3 and p.poll() is None and time.monotonic() - t0 < 300:
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate()
    staged = parts_staged(cut)
    n_parts = -(-404 // PART)  # 404 members in parts of 20
    assert 3 <= len(staged) < n_parts, "killed while the archive was being staged"
    assert not (cut / "ZTF2024" / "20240101.zarr").exists()
    out = ingest_cli(raw, cut)
    # The parts staged before the kill were reused, not decoded again, and only those.
    assert f"ZTF2024/20240101: {len(staged)} of {n_parts} staged part(s) reused" in out, out
    a, qa = night(whole)
    b, qb = night(cut)
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    pd.testing.assert_frame_equal(qa, qb)


def test_staged_parts_are_kept_and_the_rest_decoded(raw, tmp_path):
    unit = Unit("ZTF2024", 20240101, 0, archive=str(raw / ARCHIVE), survey="ztf")
    first = [load_part(h) for h in stage_unit(unit, str(tmp_path), 63, "pad", PART)]
    assert [p["reused"] for p in first] == [False] * len(first) and first[-1]["last"]
    # As a kill leaves it: no unit index, the parts from the fourth on not written.
    staged_files(unit, tmp_path)[1].unlink()
    for p in first[3:]:
        Path(p["meta_path"]).unlink()
        Path(p["npy"]).unlink()
    kept = {p["npy"]: os.stat(p["npy"]) for p in first[:3]}
    again = [load_part(h) for h in stage_unit(unit, str(tmp_path), 63, "pad", PART)]
    assert [p["reused"] for p in again] == [True] * 3 + [False] * (len(first) - 3)
    for path, st in kept.items():
        now = os.stat(path)
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    for x, y in zip(first, again, strict=True):
        np.testing.assert_array_equal(x["stamp_id"], y["stamp_id"])
        assert x["members"] == y["members"] and x["quarantine"] == y["quarantine"]
        np.testing.assert_array_equal(np.load(x["npy"]), np.load(y["npy"]))


def test_seen_ids_finds_every_repeat_and_its_first_source():
    from s2v_batch.ingest.assembly import SeenIds

    rng = np.random.default_rng(5)
    seen, first = SeenIds(), {}
    for block in range(40):  # blocks of varied sizes, merged as they come
        ids = rng.integers(0, 5000, int(rng.integers(1, 400)))
        hit, where = seen.lookup(ids)
        assert hit.tolist() == [int(i) in first for i in ids]
        assert all(where[j] == first[int(ids[j])] for j in np.flatnonzero(hit))
        new = np.unique(ids[~hit])
        seen.add(new, lambda i, b=block, new=new: f"block {b} id {new[i]}")
        first.update((int(i), f"block {block} id {i}") for i in new)
    assert len(seen) == len(first)
