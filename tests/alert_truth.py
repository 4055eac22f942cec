"""What the alert simulator wrote, read back without s2v_batch's readers or decoders.

The packets are read with fastavro (Avro containers, Confluent-framed records with the schema
files written beside them) or pyarrow (Parquet exports) directly, and the fields a night keeps
are derived here from the surveys' schema documentation: the raw record values are the truth
the stored fields are checked against.
"""

from __future__ import annotations

import io
import math
import struct
import tarfile
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pyarrow.parquet as pq

#: ZTF alert schema: candidate.fid is the filter, 1 = g, 2 = R, 3 = i.
ZTF_FID_BAND = {1: "g", 2: "r", 3: "i"}
#: Rubin fluxes are nJy; AB magnitude = 31.4 - 2.5 log10(flux / nJy) (3631 Jy = 0 mag).
NJY_AB = 31.4
#: Zarr columns kept per survey, as their stored dtype ("U": string; -1, NaN, "" are null).
ZTF_COLUMNS = {
    "objectId": "U", "mjd": "f8", "ra": "f8", "dec": "f8", "magpsf": "f4", "band": "U",
    "isdiffpos": "i1", "jd": "f8", "fid": "i1", "sigmapsf": "f4", "rb": "f4", "drb": "f4",
    "programid": "i2",
}  # fmt: skip
RUBIN_COLUMNS = {
    "objectId": "U", "mjd": "f8", "ra": "f8", "dec": "f8", "magpsf": "f4", "band": "U",
    "isdiffpos": "i1", "diaObjectId": "i8", "ssObjectId": "i8", "midpointMjdTai": "f8",
    "psfFlux": "f4", "psfFluxErr": "f4", "snr": "f4", "reliability": "f4",
}  # fmt: skip
#: Fields computed from others (a unit conversion): compared with a tolerance, not exactly.
DERIVED = {"ztf": {"mjd"}, "rubin": {"magpsf"}}


def _avro_records(data: bytes) -> list[dict[str, Any]]:
    return list(fastavro.reader(io.BytesIO(data)))


def _framed_record(data: bytes, schema: Any) -> dict[str, Any]:
    """A Confluent-framed record: magic byte 0, the schema ID (big-endian int32), the body."""
    magic, _schema_id = struct.unpack(">bI", data[:5])
    assert magic == 0, f"not a Confluent frame (magic {magic})"
    return fastavro.schemaless_reader(io.BytesIO(data[5:]), schema)


def raw_packets(files: list[Path], out: Path) -> list[dict[str, Any]]:
    """Every record in the simulator's files, decoded with fastavro / pyarrow only."""
    schema = None
    avsc = sorted((out / "schemas").glob("lsst.*.alert.avsc"))
    if avsc:  # framed records are read with the schema written beside them
        schema = fastavro.schema.load_schema(str(avsc[0]))
    records: list[dict[str, Any]] = []
    for f in files:
        if f.name.endswith(".tar.gz"):
            with tarfile.open(f, "r:gz") as tf:
                for member in tf:
                    fh = tf.extractfile(member)
                    assert fh is not None, member.name
                    records += _avro_records(fh.read())
        elif f.suffix == ".parquet":
            records += pq.read_table(f).to_pylist()
        elif schema is not None and f.read_bytes()[:1] == b"\x00":
            records.append(_framed_record(f.read_bytes(), schema))
        else:
            records += _avro_records(f.read_bytes())
    return records


def _stamp_id(rec: dict[str, Any], survey: str) -> int:
    return int(rec["candid"] if survey == "ztf" else rec["diaSourceId"])


def _nullable(value: Any, null: Any) -> Any:
    return null if value is None else value


def truth_fields(rec: dict[str, Any], survey: str) -> dict[str, Any]:
    """The kept fields of one raw packet, as the Zarr night stores them (nulls: "", NaN, -1)."""
    if survey == "ztf":
        c = rec["candidate"]
        return {
            "objectId": rec["objectId"],
            "mjd": c["jd"] - 2400000.5,  # MJD = JD - 2400000.5
            "ra": c["ra"],
            "dec": c["dec"],
            "magpsf": c["magpsf"],
            "band": ZTF_FID_BAND[c["fid"]],
            "isdiffpos": {"t": 1, "1": 1, "f": 0, "0": 0}[c["isdiffpos"]],
            "jd": c["jd"],
            "fid": c["fid"],
            "sigmapsf": c["sigmapsf"],
            "rb": _nullable(c["rb"], math.nan),
            "drb": _nullable(c["drb"], math.nan),
            "programid": c["programid"],
        }
    s = rec["diaSource"]
    flux = s["psfFlux"]
    return {
        "objectId": "" if s.get("diaObjectId") is None else str(s["diaObjectId"]),
        "mjd": s["midpointMjdTai"],
        "ra": s["ra"],
        "dec": s["dec"],
        "magpsf": NJY_AB - 2.5 * np.log10(abs(flux)),
        "band": s["band"],
        "isdiffpos": 0 if s["isNegative"] else 1,
        "diaObjectId": _nullable(s.get("diaObjectId"), -1),
        "ssObjectId": _nullable(s.get("ssObjectId"), -1),
        "midpointMjdTai": s["midpointMjdTai"],
        "psfFlux": flux,
        "psfFluxErr": s["psfFluxErr"],
        "snr": s["snr"],
        "reliability": _nullable(s.get("reliability"), math.nan),
    }


def truth_table(files: list[Path], out: Path, survey: str) -> dict[int, dict[str, Any]]:
    """Stamp ID -> the kept fields of its packet, for every packet the simulator wrote."""
    table: dict[int, dict[str, Any]] = {}
    for rec in raw_packets(files, out):
        sid = _stamp_id(rec, survey)
        assert sid not in table, f"stamp ID {sid} written twice"
        table[sid] = truth_fields(rec, survey)
    return table


def check_column(name: str, got: np.ndarray, want: list[Any], dtype: str, derived: bool) -> None:
    """Stored values of one column against the truth, cast to the stored dtype.

    Raw values compare exactly at the stored precision (a float32 column holds the float32
    nearest the packet's value); unit conversions within a few float32 or float64 ulps.
    """
    if dtype == "U":
        bad = [(str(g), str(w)) for g, w in zip(got, want, strict=True) if str(g) != str(w)]
        assert not bad, f"{name}: {len(bad)} stored values differ, e.g. (stored, truth) {bad[:3]}"
        return
    if dtype[0] == "i":  # integers as integers: 64-bit IDs do not survive a float64
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want, dtype), err_msg=name)
        return
    expect = np.asarray(want, dtype=np.float64)
    if derived:
        rtol = 1e-6 if dtype == "f4" else 1e-12
        np.testing.assert_allclose(np.asarray(got, np.float64), expect, rtol=rtol, err_msg=name)
    else:
        # Both at the stored precision: a decoded record's float64 is stored as float32.
        np.testing.assert_array_equal(
            np.asarray(got, np.float64).astype(dtype), expect.astype(dtype), err_msg=name
        )
