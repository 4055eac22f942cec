"""A fault of the environment met while checking what is done keeps its own exit status.

The store's and the scores' readers take a damaged or missing night for incomplete (so it is made
again), but a permission or I/O error is not incompleteness: ingesting or scoring again cannot fix
it, and the user must see "permission denied" (exit 77) or an I/O error (exit 74), not "ingest
again". Tests run as root, which no permission stops, so the errors are raised where the OS would
raise them: in ``zarr.open_group``, ``pyarrow.parquet.ParquetFile`` and ``Path.read_text``.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import zarr

from s2v_batch.core.faults import EXIT_IOERR, EXIT_NOPERM, classify
from s2v_batch.ingest.driver import ingest
from s2v_batch.sim.simulator import simulate
from s2v_batch.store import dataset as zstore
from s2v_batch.store import publish
from s2v_batch.store import scores as sink
from s2v_batch.store.state import current_night, fingerprint_of

FAULTS = [
    (PermissionError(errno.EACCES, "Permission denied"), EXIT_NOPERM),
    (OSError(errno.EIO, "Input/output error"), EXIT_IOERR),
]


@pytest.fixture(scope="module")
def night(tmp_path_factory, dask_client) -> Path:
    root = tmp_path_factory.mktemp("envfaults")
    simulate(root / "raw", season="Y1", nights=1, stamps_per_night=30, fmt="fits", seed=2,
             progress=False)  # fmt: skip
    ingest(root / "raw", root / "store", dask_client, progress=False)
    (ref,) = zstore.list_nights(root / "store")
    return ref.path


def _raising(exc):
    def fail(*args, **kwargs):
        raise exc

    return fail


@pytest.mark.parametrize("exc, status", FAULTS)
def test_an_unreadable_night_is_a_fault_not_an_incomplete_night(night, monkeypatch, exc, status):
    assert zstore.verify_night(night) is not None
    monkeypatch.setattr(zarr, "open_group", _raising(exc))
    for check in (zstore.verify_night, zstore.read_attrs):
        with pytest.raises(OSError) as info:
            check(night)
        assert classify(info.value).status == status


@pytest.mark.parametrize("exc, status", FAULTS)
def test_an_unreadable_quarantine_table_is_a_fault(night, monkeypatch, exc, status):
    attrs = zstore.verify_night(night)
    fp = fingerprint_of(attrs)
    monkeypatch.setattr(pq, "ParquetFile", _raising(exc))
    assert zstore.quarantine_path(night.parent.parent, night.parent.name, int(night.stem)).exists()
    with pytest.raises(OSError) as info:
        current_night(night, fp)
    assert classify(info.value).status == status


def test_a_damaged_night_is_still_incomplete(night, tmp_path):
    """The other side of the line: a night whose metadata is damaged is redone, as before."""
    import shutil

    copy = tmp_path / night.parent.name / night.name
    shutil.copytree(night, copy)
    (copy / "zarr.json").write_text("{ not json")
    assert zstore.verify_night(copy) is None
    assert zstore.read_attrs(copy) == {}


@pytest.mark.parametrize("exc, status", FAULTS)
def test_unreadable_scores_are_a_fault(tmp_path, monkeypatch, exc, status):
    night_dir = sink.night_dir(tmp_path, "Y1", 20130901)
    night_dir.mkdir(parents=True)
    (night_dir / sink.MANIFEST).write_text(json.dumps({"season": "Y1", "night": 20130901}))
    part = night_dir / "part-x-00000.parquet"
    part.write_bytes(b"not parquet")
    assert publish.part_rows(part) is None  # damaged: unfinished, as before
    assert sink.read_manifest(tmp_path, "Y1", 20130901) is not None
    monkeypatch.setattr(pq, "ParquetFile", _raising(exc))
    monkeypatch.setattr(Path, "read_text", _raising(exc))
    for call in (
        lambda: publish.part_rows(part),
        lambda: sink.read_manifest(tmp_path, "Y1", 20130901),
        lambda: sink.manifests(tmp_path),
    ):
        with pytest.raises(OSError) as info:
            call()
        assert classify(info.value).status == status
