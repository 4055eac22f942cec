"""Alert packets without a cluster: schemas, writers, readers, one packet -> one stamp, the night
calendar of alerts, and the placement of alert inputs in nights."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import tarfile
from pathlib import Path
from zoneinfo import ZoneInfo

import fastavro
import numpy as np
import pytest
from alert_truth import DERIVED, ZTF_COLUMNS, check_column, truth_fields
from hypothesis import given, settings
from hypothesis import strategies as st

from s2v_batch.core.conventions import alert_season, is_season, survey_of_season
from s2v_batch.core.nights import SURVEY_TZ, night_of_jd, night_of_mjd
from s2v_batch.core.surveys import get_survey
from s2v_batch.formats.alertio import AlertReadError, iter_archive, iter_path
from s2v_batch.formats.alertpackets import alert_stamp, fit_to_size, record_night
from s2v_batch.formats.alertschema import (
    RUBIN_SCHEMA_ID,
    SchemaRegistry,
    parsed_schema,
    rubin_schema,
    schema_name,
    write_schema_files,
    ztf_schema,
)
from s2v_batch.formats.avro import read_header
from s2v_batch.formats.decode import StampError
from s2v_batch.ingest.alerttree import archive_placement
from s2v_batch.ingest.alertunits import read_alert_unit
from s2v_batch.ingest.rawtree import discover
from s2v_batch.ingest.units import Unit
from s2v_batch.sim.alerts import (
    avro_container,
    framed_record,
    gzip_bytes,
    rubin_record,
    write_archive,
    write_parquet,
    ztf_record,
)
from s2v_batch.sim.simulator import fits_bytes, simulate_stamps

ZTF, RUBIN = get_survey("ztf"), get_survey("rubin")
JD0 = 2460311.7  # 2024-01-02 04:48 UTC: the evening of 2024-01-01 at Palomar


def _pixels(n: int = 1, size: int = 63, seed: int = 0) -> np.ndarray:
    return simulate_stamps(n, np.random.default_rng(seed), size=size).pixels


def _ztf(candid: int = 1_000_000_001, jd: float = JD0, pixels=None, **kw) -> dict:
    pix = _pixels()[0] if pixels is None else pixels
    return ztf_record(candid, "ZTF24aaaaaaa", jd, pix, rb=0.7, drb=0.9, **kw)


def _rubin(sid: int = 5_000_000_001, sizes=(63, 63, 63), mjd: float = 60311.2) -> dict:
    rng = np.random.default_rng(sid)
    cut = tuple(rng.normal(0, 10, (s, s)).astype(np.float32) for s in sizes)
    return rubin_record(sid, mjd, cut, dia_object_id=77, psf_flux=-3631.0, reliability=0.4)


# --------------------------------------------------------------------------- schemas, writers


def test_schemas_have_the_published_shape():
    z, r = ztf_schema(), rubin_schema()
    assert schema_name(z) == "ztf.alert" and z["version"] == "4.02"
    cand = z["fields"][4]["type"]
    names = [f["name"] for f in cand["fields"]]
    assert len(names) == 103 and names[:3] == ["jd", "fid", "pid"] and names[-1] == "drbversion"
    assert schema_name(r) == "lsst.v11_0.alert"
    dia = r["fields"][3]["type"]
    assert len(dia["fields"]) == 98 and dia["fields"][0]["name"] == "diaSourceId"
    assert [f["name"] for f in r["fields"]][-3:] == [
        "cutoutDifference",
        "cutoutScience",
        "cutoutTemplate",
    ]


def test_written_packets_are_valid_and_round_trip():
    for survey, rec in (("ztf", _ztf()), ("rubin", _rubin())):
        assert fastavro.validation.validate(rec, parsed_schema(survey), raise_errors=True)
        back = list(fastavro.reader(io.BytesIO(avro_container([rec, rec], survey))))
        assert len(back) == 2 and back[0]["cutoutScience"] == rec["cutoutScience"]
    assert avro_container([_ztf()], "ztf") == avro_container([_ztf()], "ztf")  # deterministic


def test_framed_records_read_with_the_schema_files_of_the_tree(tmp_path):
    rec = _rubin()
    (tmp_path / "a.avro").write_bytes(framed_record(rec) + framed_record(rec))
    items = list(iter_path(str(tmp_path / "a.avro"), SchemaRegistry()))
    assert len(items) == 1 and "schema ID 1100 unknown" in str(items[0][1])
    reg = SchemaRegistry(write_schema_files(tmp_path / "schemas"))
    assert reg.ids() == {RUBIN_SCHEMA_ID: str(tmp_path / "schemas" / "lsst.v11_0.alert.avsc")}
    items = list(iter_path(str(tmp_path / "a.avro"), reg))
    assert [w.rsplit("#", 1)[1] for w, _ in items] == ["0", "1"]
    assert items[1][1]["diaSource"]["diaSourceId"] == rec["diaSourceId"]


@pytest.mark.parametrize("codec", ["null", "deflate", "snappy", "zstandard", "bzip2", "xz"])
def test_containers_of_many_blocks_and_codecs_read_whole(tmp_path, codec):
    recs = [_ztf(candid=1_000_000_000 + i, pixels=p) for i, p in enumerate(_pixels(5))]
    buf = io.BytesIO()
    fastavro.writer(buf, parsed_schema("ztf"), recs, codec=codec, sync_interval=1)  # 5 blocks
    (tmp_path / "a.avro").write_bytes(buf.getvalue())
    got = [r for _, r in iter_path(str(tmp_path / "a.avro"))]
    assert [r["candid"] for r in got] == [r["candid"] for r in recs]
    assert got[3]["cutoutDifference"] == recs[3]["cutoutDifference"]
    # A file cut short: the records before the cut, then the reason.
    data = buf.getvalue()
    (tmp_path / "b.avro").write_bytes(data[: len(data) * 2 // 3])
    items = list(iter_path(str(tmp_path / "b.avro")))
    assert isinstance(items[-1][1], AlertReadError) and 2 <= len(items) <= 5
    assert "undecodable Avro container from record" in str(items[-1][1])
    assert all(not isinstance(r, Exception) for _, r in items[:-1])


@pytest.mark.parametrize("codec", ["snappy", "bzip2", "xz"])
def test_a_corrupt_block_of_a_checksummed_codec_is_named(tmp_path, codec):
    # These codecs carry a checksum of each block (snappy's CRC-32 after it, bzip2 and xz
    # inside): a flipped byte is found, and the records before that block were read.
    recs = [_ztf(candid=1_000_000_000 + i, pixels=p) for i, p in enumerate(_pixels(3))]
    buf = io.BytesIO()
    fastavro.writer(buf, parsed_schema("ztf"), recs, codec=codec, sync_interval=1)
    data = bytearray(buf.getvalue())
    sync = read_header(io.BytesIO(bytes(data)))[1]
    ends = [i for i in range(len(data)) if data.startswith(sync, i)]
    data[ends[2] - 40] ^= 0xFF  # inside block 1's compressed bytes (ends[0] closes the header)
    (tmp_path / "c.avro").write_bytes(bytes(data))
    items = list(iter_path(str(tmp_path / "c.avro")))
    assert [r["candid"] for _, r in items[:-1]] == [recs[0]["candid"]]
    assert f"from record 1 on: ContainerError: corrupt {codec} block" in str(items[-1][1])


def test_bare_bytes_are_not_alerts(tmp_path):
    for name, data, reason in (
        ("empty.avro", b"", "empty file"),
        ("junk.avro", b"\x07junk", "not Avro"),
        ("cut.avro", avro_container([_ztf()], "ztf")[:3000], "undecodable Avro container"),
    ):
        (tmp_path / name).write_bytes(data)
        items = list(iter_path(str(tmp_path / name)))
        assert len(items) == 1 and isinstance(items[0][1], AlertReadError)
        assert reason in str(items[0][1])


# --------------------------------------------------------------------------- one packet -> a stamp


def test_a_ztf_packet_is_its_pixels_and_fields():
    pix = _pixels(seed=3)[0]
    sid, stamp, frac, fields = alert_stamp(_ztf(pixels=pix, fid=2, isdiffpos="f"), ZTF, 63)
    assert sid == 1_000_000_001 and stamp.shape == (63, 63, 3) and stamp.dtype == np.float32
    finite = np.isfinite(pix)
    np.testing.assert_array_equal(stamp[finite], pix[finite])  # srch, temp, diff in order
    assert frac == pytest.approx(1 - finite.mean())
    assert (
        fields["band"] == "r" and fields["isdiffpos"] == 0 and fields["objectId"] == "ZTF24aaaaaaa"
    )
    assert fields["rb"] == pytest.approx(0.7) and fields["drb"] == pytest.approx(0.9)
    assert fields["mjd"] == pytest.approx(JD0 - 2400000.5)


def test_a_rubin_packet_is_cropped_and_padded_with_the_pad_counted():
    sid, stamp, frac, fields = alert_stamp(_rubin(sizes=(79, 63, 47)), RUBIN, 63)
    assert sid == 5_000_000_001 and stamp.shape == (63, 63, 3)
    assert np.isfinite(stamp).all()
    assert frac == pytest.approx((63 * 63 - 47 * 47) / (3 * 63 * 63), abs=1e-3)
    assert fields["isdiffpos"] == 0 and fields["magpsf"] == pytest.approx(22.5, abs=1e-4)
    assert fields["objectId"] == "77" and fields["reliability"] == pytest.approx(0.4)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 90), w=st.integers(1, 90), size=st.integers(1, 80))
def test_fit_to_size_keeps_the_centre_and_pads_with_nan(h, w, size):
    arr = np.arange(h * w, dtype=np.float32).reshape(h, w)
    out = fit_to_size(arr, size)
    assert out.shape == (size, size)
    assert int(np.isnan(out).sum()) == size * size - min(h, size) * min(w, size)
    # The centre pixel of the larger of the two lands on the centre of the other.
    if h >= size and w >= size:
        assert (
            out[size // 2, size // 2]
            == arr[(h - size) // 2 + size // 2, (w - size) // 2 + size // 2]
        )
    if h <= size and w <= size:
        assert out[(size - h) // 2 + h // 2, (size - w) // 2 + w // 2] == arr[h // 2, w // 2]


def _with(rec: dict, field: str, value) -> dict:
    out = dict(rec)
    out[field] = value
    return out


def _ztf_cutout(data: bytes) -> dict:
    return {"fileName": "x.fits.gz", "stampData": data}


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda r: _with(r, "cutoutTemplate", None), "cutoutTemplate: missing cut-out"),
        (lambda r: _with(r, "cutoutScience", _ztf_cutout(b"")), "cutoutScience: empty"),
        (lambda r: _with(r, "cutoutScience", _ztf_cutout(b"\x1f\x8bjunk")), "corrupt gzip"),
        (
            lambda r: _with(
                r, "cutoutDifference", _ztf_cutout(r["cutoutDifference"]["stampData"][:40])
            ),
            "cutoutDifference: truncated gzip",
        ),
        (
            lambda r: _with(r, "cutoutScience", _ztf_cutout(gzip_bytes(bytes(17 << 20)))),
            "cutoutScience: gzip inflates beyond 16 MiB",
        ),
        (
            lambda r: _with(r, "cutoutScience", _ztf_cutout(gzip_bytes(b"hello"))),
            "cutoutScience: not a FITS file",
        ),
        (
            lambda r: _with(
                r, "cutoutScience", _ztf_cutout(gzip_bytes(fits_bytes(np.zeros((64, 63)), {})))
            ),
            "cutoutScience: shape (64, 63), expected (63, 63)",  # smaller: an edge cut-out, padded
        ),
        (
            lambda r: _with(
                r,
                "cutoutTemplate",
                _ztf_cutout(gzip_bytes(fits_bytes(np.full((63, 63), np.nan), {}))),
            ),
            "cutoutTemplate: all pixels NaN/Inf/masked",
        ),
        (
            lambda r: {**r, "candid": None, "candidate": {**r["candidate"], "candid": "x"}},
            "undecodable record: no integer candid",
        ),
        (lambda r: _rubin(), "undecodable record: a RUBIN alert among ZTF alerts"),
    ],
)
def test_every_bad_packet_has_its_reason(make, reason):
    with pytest.raises(StampError) as err:
        alert_stamp(make(_ztf()), ZTF, 63)
    assert reason in str(err.value)


# --------------------------------------------------------------------------- the night calendar


@settings(max_examples=80, deadline=None)
@given(
    survey=st.sampled_from(["ztf", "rubin", "des"]),
    day=st.dates(dt.date(2000, 1, 2), dt.date(2090, 12, 30)),
    hour=st.integers(0, 23),
)
def test_an_alert_night_is_the_local_evening_date(survey, day, hour):
    tz = ZoneInfo(SURVEY_TZ[survey])
    local = dt.datetime(day.year, day.month, day.day, hour, 30, tzinfo=tz)
    mjd = (local.astimezone(dt.UTC) - dt.datetime(1858, 11, 17, tzinfo=dt.UTC)).total_seconds()
    mjd /= 86400.0
    evening = day if hour >= 12 else day - dt.timedelta(days=1)
    want = int(evening.strftime("%Y%m%d"))
    assert night_of_mjd(mjd, SURVEY_TZ[survey]) == want
    assert night_of_jd(mjd + 2400000.5, SURVEY_TZ[survey]) == want


def test_record_nights_and_archive_names():
    assert record_night(_ztf(jd=JD0), ZTF) == 20240101
    assert record_night(_rubin(mjd=60311.2), RUBIN) == 20240101  # 04:48 UTC: 01:48 in Chile
    with pytest.raises(StampError, match="no usable detection time"):
        record_night(_ztf(jd=float("nan")), ZTF)
    assert archive_placement("ztf_public_20240102.tar.gz") == ("ztf", 20240101)
    assert archive_placement("ztf_public_20200106_programid3.tar.gz") == ("ztf", 20200105)
    assert archive_placement("ztf_partnership_20240301.tgz") == ("ztf", 20240229)
    assert archive_placement("rubin_20260101.tar.gz") == ("rubin", 20260101)
    assert archive_placement("stamps_001.tar.gz") is None


def test_seasons_of_alert_surveys_and_des():
    assert is_season("ZTF2024") and is_season("RUBIN2026") and is_season("Y3") and is_season("SV")
    assert not is_season("ZTF24") and not is_season("LSST2026") and not is_season("Z9")
    assert [survey_of_season(s) for s in ("Y1", "SV", "ZTF2019", "RUBIN2026")] == [
        "des",
        "des",
        "ztf",
        "rubin",
    ]
    assert alert_season("ztf", 20231231) == "ZTF2023"


# --------------------------------------------------------------------------- archives, units


def _archive(path: Path, records: list[dict], survey: str = "ztf", extra=()) -> Path:
    members = [(f"{i}.avro", avro_container([r], survey)) for i, r in enumerate(records)]
    write_archive(path, [*members, *extra])
    return path


def test_archives_stream_member_by_member_and_report_damage(tmp_path):
    recs = [_ztf(candid=1_000_000_000 + i, pixels=p) for i, p in enumerate(_pixels(6))]
    arc = _archive(tmp_path / "ztf_public_20240102.tar.gz", recs, extra=[("README", b"hi")])
    got = list(iter_archive(str(arc)))
    assert [r["candid"] for _, r in got] == [r["candid"] for r in recs]
    cut = tmp_path / "cut" / "ztf_public_20240102.tar.gz"
    cut.parent.mkdir()
    cut.write_bytes(arc.read_bytes()[: arc.stat().st_size // 2])
    got = list(iter_archive(str(cut)))
    good = [r for _, r in got if not isinstance(r, Exception)]
    bad = [r for _, r in got if isinstance(r, Exception)]
    # Streaming: the records before the cut come out, then the damage as one reason (or two:
    # the member cut in half, and the archive).
    assert 1 <= len(good) < len(recs) and 1 <= len(bad) <= 2
    assert all(r["candid"] == recs[i]["candid"] for i, r in enumerate(good))


def test_a_unit_stores_or_quarantines_every_alert(tmp_path):
    recs = [_ztf(candid=1_000_000_000 + i, pixels=p) for i, p in enumerate(_pixels(4))]
    recs[2] = _with(recs[2], "cutoutScience", None)
    arc = _archive(tmp_path / "ztf_public_20240102.tar.gz", recs, extra=[("junk.avro", b"\x05x")])
    data = read_alert_unit(Unit("ZTF2024", 20240101, 0, archive=str(arc), survey="ztf"), 63)
    assert data.n_found == 5 == len(data.stamp_id) + len(data.quarantine)
    assert data.stamp_id.tolist() == [1_000_000_000, 1_000_000_001, 1_000_000_003]
    reasons = sorted(q["reason"] for q in data.quarantine)
    assert reasons[0] == "cutoutScience: missing cut-out" and "not Avro" in reasons[1]
    assert data.meta["rb"].dtype == np.float32 and len(data.meta["objectId"]) == 3
    # The kept fields of the stored alerts are those of the packets written.
    kept = [truth_fields(r, "ztf") for i, r in enumerate(recs) if i != 2]
    for name, dtype in ZTF_COLUMNS.items():
        want = [k[name] for k in kept]
        check_column(name, data.meta[name], want, dtype, name in DERIVED["ztf"])


def test_parquet_exports_read_like_avro(tmp_path):
    pixels = _pixels(3)
    recs = [
        _ztf(candid=1_000_000_000 + i, pixels=p, fid=1 + i, isdiffpos="tf"[i % 2])
        for i, p in enumerate(pixels)
    ]
    write_parquet(tmp_path / "x.parquet", recs)
    got = [r for _, r in iter_path(str(tmp_path / "x.parquet"))]
    assert len(got) == len(recs)
    # Each exported packet decodes to what was written: its candid, its pixels, its fields.
    for a, rec, pix in zip(got, recs, pixels, strict=True):
        sid, stamp, _, fields = alert_stamp(a, ZTF, 63)
        assert sid == rec["candid"]
        finite = np.isfinite(pix)
        np.testing.assert_array_equal(stamp[finite], pix[finite])
        want = truth_fields(rec, "ztf")
        assert set(fields) == set(want)
        for name, dtype in ZTF_COLUMNS.items():
            check_column(name, [fields[name]], [want[name]], dtype, name in DERIVED["ztf"])


def test_discovery_places_alerts_by_name_folder_or_data(tmp_path):
    raw = tmp_path / "raw"
    p = _pixels(4)
    _archive(raw / "ztf_public_20240102.tar.gz", [_ztf(candid=1, pixels=p[0])])
    (raw / "20240105").mkdir(parents=True)
    (raw / "20240105" / "a.avro").write_bytes(avro_container([_ztf(candid=2, pixels=p[1])], "ztf"))
    (raw / "loose").mkdir()
    two_nights = [_ztf(candid=3, jd=JD0, pixels=p[2]), _ztf(candid=4, jd=JD0 + 1, pixels=p[3])]
    (raw / "loose" / "b.avro").write_bytes(avro_container(two_nights, "ztf"))
    (raw / "loose" / "c.avro").write_bytes(b"\x07garbage")
    (raw / "nightless.tar.gz").write_bytes(b"")
    disc = discover(raw, unit_stamps=10)
    assert sorted(disc.units) == [
        ("ZTF2024", 20240101),
        ("ZTF2024", 20240102),
        ("ZTF2024", 20240105),
    ]
    kinds = {
        k: [(u.archive is not None, u.date_from_data) for u in v] for k, v in disc.units.items()
    }
    assert kinds[("ZTF2024", 20240101)] == [(True, False), (False, True)]
    assert kinds[("ZTF2024", 20240102)] == [(False, True)]
    assert kinds[("ZTF2024", 20240105)] == [(False, False)]
    reasons = {Path(p.split("#")[0]).name: r for p, r in disc.unplaced}
    assert "not Avro" in reasons["c.avro"] and "without a night" in reasons["nightless.tar.gz"]
    # A unit dated from the data takes its own night's alerts of the file only.
    unit = disc.units[("ZTF2024", 20240102)][0]
    assert read_alert_unit(unit, 63).stamp_id.tolist() == [4]
    # Only the named night: other nights' archives and folders are not entered.
    only = discover(raw, unit_stamps=10, nights={20240105})
    assert sorted(only.units) == [("ZTF2024", 20240105)] and 20240101 in only.other_nights


def test_a_member_of_another_survey_is_quarantined(tmp_path):
    arc = tmp_path / "ztf_public_20240102.tar.gz"
    write_archive(arc, [("a.avro", avro_container([_ztf()], "ztf")),
                        ("b.avro", avro_container([_rubin()], "rubin"))])  # fmt: skip
    data = read_alert_unit(Unit("ZTF2024", 20240101, 0, archive=str(arc), survey="ztf"), 63)
    assert data.n_found == 2 and len(data.stamp_id) == 1
    assert data.quarantine[0]["reason"].startswith("undecodable record: a RUBIN alert")


def test_gzip_tar_bytes_are_deterministic(tmp_path):
    a = write_archive(tmp_path / "a.tar.gz", [("x.avro", b"1")])
    b = write_archive(tmp_path / "b.tar.gz", [("x.avro", b"1")])
    assert a == b == 1
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    with tarfile.open(tmp_path / "a.tar.gz") as tf:
        assert tf.getnames() == ["x.avro"]
    assert gzip.decompress(gzip_bytes(b"abc")) == b"abc"


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(0, 7),
    shape=st.lists(st.integers(1, 9), min_size=0, max_size=3),
    dtype=st.sampled_from(["<f4", "<i2", "|u1", "<f8"]),
)
def test_npy_rows_write_a_valid_npy_of_any_length(tmp_path_factory, n, shape, dtype):
    from s2v_batch.ingest.staging import NpyRows

    path = tmp_path_factory.mktemp("npy") / "x.npy"
    rows = np.arange(n * int(np.prod(shape, dtype=int)), dtype=dtype).reshape(n, *shape)
    with NpyRows(path, tuple(shape), dtype) as out:
        for r in rows:
            out.append(r)
    back = np.load(path, mmap_mode="r")
    assert back.shape == rows.shape and back.dtype == rows.dtype
    np.testing.assert_array_equal(back, rows)


def test_a_unit_can_hand_its_pixels_out_as_they_come(tmp_path):
    recs = [_ztf(candid=1_000_000_000 + i, pixels=p) for i, p in enumerate(_pixels(3))]
    arc = _archive(tmp_path / "ztf_public_20240102.tar.gz", recs)
    unit = Unit("ZTF2024", 20240101, 0, archive=str(arc), survey="ztf")
    got: list[np.ndarray] = []
    data = read_alert_unit(unit, 63, emit=got.append)
    assert len(data.pixels) == 0 and len(got) == 3 == len(data.stamp_id)
    np.testing.assert_array_equal(np.stack(got), read_alert_unit(unit, 63).pixels)
