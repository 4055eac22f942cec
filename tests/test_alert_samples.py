"""Real alert packets as the surveys and brokers publish them (tests/data/alerts/README.md says
where each comes from and under which licence): every file reads, every kept field is the
packet's own (read here with fastavro / pyarrow / astropy, not our readers), and every stamp's
pixels and masked fraction are its cut-outs'.

Shipped: ZTF schema 3.3 and 4.01 packets (Kowalski's test data, MIT), ZTF packets as Fink's
Parquet export (schema 3.3, Apache-2.0) and the layouts of Fink's LSST Parquet exports (lsst.v7_4,
v9_0, v10_0; Apache-2.0; the files hold the layout, no rows: a simulated packet is written in each).
ZTF's own sample packets of every schema version (1.1 to 3.5, in the history of
ZwickyTransientFacility/ztf-avro-alert, which states no licence: not shipped) and Rubin's of
lsst.v7_0 to v11_0 (lsst/alert_packet, GPL-3.0: not shipped) are checked by the last tests where
a clone of those repositories is named (S2V_ZTF_AVRO_ALERT_REPO, S2V_ALERT_PACKET_REPO).
"""

from __future__ import annotations

import gzip
import io
import math
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from alert_truth import DERIVED, RUBIN_COLUMNS, ZTF_COLUMNS, check_column, truth_fields

from s2v_batch.core.surveys import get_survey
from s2v_batch.formats.alertio import iter_path, peek_schema_name
from s2v_batch.formats.alertpackets import alert_stamp, record_fields
from s2v_batch.formats.decode import StampError
from s2v_batch.sim.alerts import rubin_record

DATA = Path(__file__).parent / "data" / "alerts"
ZTF, RUBIN = get_survey("ztf"), get_survey("rubin")
KOWALSKI = sorted((DATA / "ztf-kowalski").glob("*.avro"))
#: The schema version of each shipped night (the writer schema's "version").
KOWALSKI_VERSION = {"20200202": "3.3", "20231012": "4.01"}
FIELDS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")


def _astropy_pixels(rec: dict[str, Any]) -> np.ndarray:
    """The three cut-outs, (63, 63, 3) float32, decoded with gzip + astropy (NaN as they are)."""
    from astropy.io import fits

    planes = []
    for f in FIELDS:
        data = rec[f]["stampData"] if isinstance(rec[f], dict) else rec[f]
        data = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy: some ZTF SIMPLE cards break the standard
            planes.append(fits.getdata(io.BytesIO(data)).astype(np.float32))
    return np.stack(planes, axis=-1)


def _check(rec_ours: dict, rec_truth: dict, survey: str = "ztf") -> tuple[float, np.ndarray]:
    sid, stamp, frac, fields = alert_stamp(rec_ours, get_survey(survey), 63)
    assert sid == rec_truth["candid"]
    want = truth_fields(rec_truth, survey)
    columns = ZTF_COLUMNS if survey == "ztf" else RUBIN_COLUMNS
    for name, dtype in columns.items():
        check_column(name, np.asarray([fields[name]]), [want[name]], dtype, name in DERIVED[survey])
    pix = _astropy_pixels(rec_truth)
    bad = ~np.isfinite(pix)
    assert frac == pytest.approx(bad.mean())
    np.testing.assert_array_equal(stamp[~bad], pix[~bad])
    assert np.isfinite(stamp).all()
    return frac, stamp


@pytest.mark.parametrize("path", KOWALSKI, ids=[p.stem for p in KOWALSKI])
def test_real_ztf_packets_read_with_their_own_fields_and_pixels(path):
    with open(path, "rb") as f:
        reader = fastavro.reader(f)
        truth = list(reader)
        version = reader.writer_schema["version"]
    assert version == KOWALSKI_VERSION[path.stem[:8]]
    assert peek_schema_name(str(path)) == "ztf.alert"
    ours = [r for _, r in iter_path(str(path))]
    assert len(ours) == len(truth) == 1
    frac, _ = _check(ours[0], truth[0])
    assert not math.isnan(truth[0]["candidate"]["drb"])  # drb from schema 3.3 on


def test_real_masked_pixels_are_counted():
    # Two of the shipped 4.01 packets hold NaN pixels inside whole 63x63 cut-outs.
    fracs = {}
    for path in KOWALSKI:
        rec = next(r for _, r in iter_path(str(path)))
        fracs[rec["candid"]] = alert_stamp(rec, ZTF, 63)[2]
    assert sorted(round(f, 4) for f in fracs.values() if f) == [0.2847, 0.361]


def test_fink_parquet_export_of_real_ztf_packets():
    path = DATA / "fink" / "ztf-raw-20200101.parquet"
    truth = pq.read_table(path).to_pylist()
    ours = [r for _, r in iter_path(str(path))]
    assert len(ours) == len(truth) == 3 and peek_schema_name(str(path)) == "ztf.alert"
    for o, t in zip(ours, truth, strict=True):
        assert t["schemavsn"] == "3.3"
        _check(o, t)


def _fill(typ: pa.DataType, value: Any) -> Any:
    """``value`` (our simulated packet's) shaped as a Fink column of type ``typ`` (null where
    the layout has a field our packet lacks)."""
    if value is None:
        return None
    if pa.types.is_struct(typ):
        return {typ.field(i).name: _fill(typ.field(i).type, value.get(typ.field(i).name))
                for i in range(typ.num_fields)}  # fmt: skip
    if pa.types.is_list(typ):
        return [_fill(typ.value_type, v) for v in value]
    return value


@pytest.mark.parametrize("version", ["v7_4", "v9_0", "v10_0"])
def test_fink_lsst_parquet_layouts_read(tmp_path, version):
    layout = pq.read_schema(DATA / "fink" / f"lsst.{version}.parquet")
    rng = np.random.default_rng(5)
    cut = tuple(rng.normal(0, 10, (s, s)).astype(np.float32) for s in (61, 63, 65))
    rec = rubin_record(5_000_000_123, 60311.2, cut, dia_object_id=77, psf_flux=-3631.0,
                       reliability=0.4)  # fmt: skip
    rec["alertId"] = rec["diaSourceId"]  # v7's top-level ID (its diaSource holds diaSourceId)
    row = {f.name: _fill(f.type, rec.get(f.name)) for f in layout}
    pq.write_table(pa.Table.from_pylist([row], schema=layout), tmp_path / "x.parquet")
    assert peek_schema_name(str(tmp_path / "x.parquet")) == "lsst.alert"
    (_, got), = list(iter_path(str(tmp_path / "x.parquet")))  # fmt: skip
    sid, stamp, frac, fields = alert_stamp(got, RUBIN, 63)
    assert sid == 5_000_000_123 and stamp.shape == (63, 63, 3)
    assert frac == pytest.approx((63 * 63 - 61 * 61) / (3 * 63 * 63))
    want = truth_fields(rec, "rubin")
    if version == "v7_4":  # no isNegative before v8: the sign of psfFlux says it
        assert "isNegative" not in got["diaSource"]
    for name, dtype in RUBIN_COLUMNS.items():
        check_column(
            name, np.asarray([fields[name]]), [want[name]], dtype, name in DERIVED["rubin"]
        )


# --------------------------------------------------------------------------- not shipped


def _repo(var: str) -> Path:
    path = os.environ.get(var)
    if not path:
        pytest.skip(f"set {var} to a clone of the repository to check its sample packets")
    return Path(path)


def _git(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True).stdout


def test_every_ztf_schema_version_in_ztfs_own_samples():
    """ZTF's sample packets of every version (the history of ztf-avro-alert's data/ folder)."""
    repo = _repo("S2V_ZTF_AVRO_ALERT_REPO")
    blobs = {}
    for commit in _git(repo, "log", "--all", "--format=%H", "--", "data/").decode().split():
        for line in _git(repo, "ls-tree", "-r", commit, "--", "data/").decode().splitlines():
            meta, path = line.split("\t")
            if path.endswith(".avro") and "ztf-2500" not in path:
                blobs[meta.split()[2]] = path
    versions: dict[str, list[float]] = {}
    for sha, path in blobs.items():
        data = _git(repo, "cat-file", "blob", sha)
        try:
            reader = fastavro.reader(io.BytesIO(data))
        except Exception:  # a file fastavro cannot read either: one error line from ours
            (err,) = list(_items(data, path))
            assert isinstance(err, Exception) and "Avro" in str(err), err
            versions.setdefault("unreadable", []).append(1.0)
            continue
        truth, version = list(reader), reader.writer_schema.get("version")
        ours = list(_items(data, path))
        assert len(ours) == len(truth), path
        for o, t in zip(ours, truth, strict=True):
            c = t["candidate"]
            if t["cutoutScience"]["stampData"][:3] == b"\xff\xd8\xff":  # pre-launch: JPEG
                with pytest.raises(StampError, match="JPEG cut-out"):
                    alert_stamp(o, ZTF, 63)
                versions.setdefault(f"{version} (JPEG)", [])
                continue
            sid, stamp, frac, fields = alert_stamp(o, ZTF, 63)
            assert sid == t["candid"] and np.isfinite(stamp).all()
            assert fields["objectId"] == t["objectId"] and fields["rb"] == pytest.approx(c["rb"])
            assert math.isnan(fields["drb"]) == (c.get("drb") is None)
            pix = _astropy_pixels(t)
            if pix.shape[:2] != (63, 63):
                # An edge cut-out: the brightest science pixel is where it was relative to the
                # candidate, i.e. the pad went on the side of the quadrant's nearer edge.
                h, w = pix.shape[:2]
                y0 = 63 - h if c["ypos"] < 3080 / 2 else 0
                x0 = 63 - w if c["xpos"] < 3072 / 2 else 0
                np.testing.assert_array_equal(stamp[y0 : y0 + h, x0 : x0 + w][np.isfinite(pix)],
                                              pix[np.isfinite(pix)])  # fmt: skip
            versions.setdefault(version, []).append(frac)
    print({v: len(f) for v, f in sorted(versions.items(), key=str)})
    assert {"1.7", "1.8", "2.0", "3.0", "3.1", "3.2", "3.3", "3.5"} <= set(versions)


def _items(data: bytes, name: str) -> list[Any]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / Path(name).name
        p.write_bytes(data)
        return [rec for _, rec in iter_path(str(p))]


def test_every_rubin_schema_version_in_rubins_own_samples():
    """lsst/alert_packet's sample packet of each version from v7_0 (they carry no cut-outs)."""
    repo = _repo("S2V_ALERT_PACKET_REPO")
    seen = []
    for path in sorted((repo / "python/lsst/alert/packet/schema").glob("*/*/sample_data/*.avro")):
        major = int(path.parts[-4])
        if major < 7:
            continue
        (_, rec), = list(iter_path(str(path)))  # fmt: skip
        fields = record_fields(rec, RUBIN)
        s = rec["diaSource"]
        assert fields["ra"] == s["ra"] and fields["band"] == (s.get("band") or "")
        assert fields["midpointMjdTai"] == s["midpointMjdTai"]
        with pytest.raises(StampError, match="cutoutScience: missing cut-out"):
            alert_stamp(rec, RUBIN, 63)
        seen.append(f"{path.parts[-4]}.{path.parts[-3]}")
    assert {"7.0", "8.0", "9.0", "10.0", "11.0"} <= set(seen)
