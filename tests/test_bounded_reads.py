"""Bounded reads: a stamp file or tar member larger than a stamp can be is quarantined unread.

Huge inputs are sparse files (a valid stamp followed by a hole: ``truncate``), so the tests take
no disk space; reading one whole would take gigabytes of memory.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from s2v_batch.core.config import IngestConfig
from s2v_batch.formats.decode import StampError, decode_fits, max_channel_bytes
from s2v_batch.ingest.driver import ingest
from s2v_batch.ingest.rawtree import discover
from s2v_batch.sim.simulator import fits_bytes, simulate
from s2v_batch.store import dataset as zstore

CFG = IngestConfig(unit_stamps=10, shard_stamps=64, chunk_stamps=16)
GiB = 1 << 30

MAXRSS = """\
import pickle, resource, sys
from s2v_batch.ingest.stamps import read_unit
with open(sys.argv[1], "rb") as f:
    units = pickle.load(f)
reasons = [q["reason"] for u in units for q in read_unit(u, 51).quarantine]
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
print("\\n".join(reasons))
"""


@pytest.fixture(scope="module")
def raws(tmp_path_factory):
    base = tmp_path_factory.mktemp("bounded")
    files = simulate(base / "files", season="Y1", nights=1, stamps_per_night=40, fmt="fits", seed=3)
    tars = simulate(
        base / "tars", season="Y2", nights=1, stamps_per_night=40, fmt="tar", seed=4,
        stamps_per_archive=20, tar_member_format="fits",
    )  # fmt: skip
    for s in (files, tars):
        Path(s.labels_csv).unlink()
    return {"files": Path(files.out), "tars": Path(tars.out)}


def grown(path: Path, size: int) -> None:
    """Make ``path`` a valid stamp followed by a hole up to ``size`` bytes (a sparse file)."""
    os.truncate(path, size)


def with_huge_member(archive: Path, which: int, size: int, fmt: int) -> str:
    """Rewrite ``archive`` with its ``which``-th stamp member claiming ``size`` bytes: its valid
    bytes, then a hole (sparse). Returns the member's name."""
    with tarfile.open(archive) as tin:
        members = [(m, tin.extractfile(m).read()) for m in tin.getmembers() if m.isfile()]
    tmp = archive.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        for i, (m, data) in enumerate(members):
            info = tarfile.TarInfo(m.name)
            info.mtime, info.mode = m.mtime, m.mode
            info.size = size if i == which else len(data)
            out.write(info.tobuf(format=fmt))
            out.write(data)
            out.seek(info.size - len(data) + (-info.size % 512), os.SEEK_CUR)
        out.write(bytes(1024))
        out.truncate()
    tmp.replace(archive)
    return members[which][0].name


def test_fits_size_must_match_its_header():
    img = np.arange(51 * 51, dtype=np.float32).reshape(51, 51)
    data = fits_bytes(img, {})
    np.testing.assert_array_equal(decode_fits(data, 51), img)
    with pytest.raises(StampError, match="size does not match the FITS header: 100 bytes"):
        decode_fits(data + b"x" * 100, 51)
    extension = b"XTENSION= 'IMAGE   '".ljust(2880, b" ")
    np.testing.assert_array_equal(decode_fits(data + extension, 51), img)  # an HDU, not junk
    assert (
        max_channel_bytes("diff1.fits", 51) < 1 << 20 and max_channel_bytes("a.gif", 51) < 1 << 17
    )


def test_huge_files_and_members_are_quarantined_unread(raws, dask_client, tmp_path):
    files, tars = tmp_path / "files", tmp_path / "tars"
    shutil.copytree(raws["files"], files, copy_function=shutil.copy2)
    shutil.copytree(raws["tars"], tars, copy_function=shutil.copy2)
    diffs = sorted(files.rglob("diff*.fits"))
    grown(diffs[0], 3 * GiB)  # a valid stamp followed by 3 GB of junk
    srch = next(files.rglob(f"srch{diffs[1].name[4:]}"))
    srch.write_bytes(srch.read_bytes() + b"junk" * 25)  # 100 bytes of trailing junk
    archives = sorted(tars.rglob("*.tar"))
    big = with_huge_member(archives[0], 2, 3 * GiB, tarfile.GNU_FORMAT)  # read straight
    bigger = with_huge_member(archives[1], 5, 40 * GiB, tarfile.PAX_FORMAT)  # read by tarfile
    assert archives[1].stat().st_size > 40 * GiB and archives[1].stat().st_blocks * 512 < GiB

    # Memory stays flat: each unit read in a fresh process, its peak resident size measured.
    units = [u for root in (files, tars) for us in discover(root).units.values() for u in us]
    (tmp_path / "units.pkl").write_bytes(pickle.dumps(units))
    r = subprocess.run(
        [sys.executable, "-c", MAXRSS, str(tmp_path / "units.pkl")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    peak_mib, *reasons = r.stdout.splitlines()
    assert int(peak_mib) < 1024, f"peak resident memory {peak_mib} MiB"
    assert sum("larger than" in x and "not read" in x for x in reasons) == 3, reasons

    for root in (files, tars):
        s = ingest(root, tmp_path / "store", dask_client, config=CFG, progress=False)
        assert s.n_found == 40 and s.n_found == s.n_stored + s.n_quarantined
    q = pd.concat(pd.read_parquet(p) for p in (tmp_path / "store").rglob("quarantine-*.parquet"))
    reasons = dict(zip(q.path.str.rsplit("/", n=1).str[-1], q.reason, strict=True))
    assert len(q) == 4, q
    assert f"file is {3 * GiB:,} bytes, larger than a 51x51 stamp's channel" in "".join(
        reasons.values()
    )
    assert "size does not match the FITS header: 100 bytes" in reasons[diffs[1].name[4:-5]]
    assert any(f"tar member is {40 * GiB:,} bytes" in x for x in reasons.values())
    assert any(f"tar member is {3 * GiB:,} bytes" in x for x in reasons.values())
    assert q.stamp_id.notna().all()
    assert Path(big).name.startswith(("srch", "temp", "diff")) and Path(bigger).name.endswith(
        ".fits"
    )

    # The faults removed, a re-run stores every stamp, as a clean run does.
    shutil.rmtree(files)
    shutil.rmtree(tars)
    shutil.copytree(raws["files"], files)
    shutil.copytree(raws["tars"], tars)
    for root in (files, tars):
        s = ingest(root, tmp_path / "store", dask_client, config=CFG, progress=False)
        assert (s.n_stored, s.n_quarantined) == (40, 0)
        clean = ingest(
            root, tmp_path / "clean" / root.name, dask_client, config=CFG, progress=False
        )
        for a, b in zip(s.nights, clean.nights, strict=True):
            da, db = xr.open_zarr(a.path), xr.open_zarr(b.path)
            for name in ("stamps", "stamp_id", "label", "masked_fraction"):
                np.testing.assert_array_equal(da[name].values, db[name].values)
    assert len(zstore.list_nights(tmp_path / "store")) == 2
