"""Avro schemas of alert packets: our own definitions for the simulator and the tests, following
the published ones, and the Confluent framing of single records that brokers and Kafka use.

ZTF: ``ztf.alert`` schema **4.02** (ZwickyTransientFacility/ztf-avro-alert, ``schema/``): the
alert, ``candidate`` (all 103 fields, in order) and ``cutout`` records as published. The history
records (``prv_candidate``, ``fp_hist``) are declared with their published names and fields
but only ever written null by the simulator.

Rubin: ``lsst.v11_0.alert`` (lsst/alert_packet, ``schema/11/0``): the alert record and
``diaSource`` (all 98 fields, in order) as published. The records the simulator always writes
null (``diaForcedSource``, ``diaObject``, ``ssSource``, ``mpc_orbits``) are declared with their
published names but only their identifying fields: a packet whose optional records are null has
the same bytes under this schema as under the published one. Reading never depends on these
definitions for Avro container files, which carry their writer's schema.

Framing: a Kafka message (and many broker dumps) is one *schemaless* record behind a 5-byte
header, byte 0 then the schema's registry ID as a big-endian 32-bit integer (the Confluent wire
format). Rubin's registry numbers its schemas ``major * 100 + minor`` (v11.0 is 1100). To read
such records the schema must be known: :class:`SchemaRegistry` loads ``.avsc`` files kept in the
raw tree (a copy of lsst/alert_packet's ``schema/<major>/<minor>/`` folders, or files named
``<id>.avsc``).
"""

from __future__ import annotations

import functools
import json
import os
import re
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Header of a Confluent-framed record: magic byte 0, then the schema ID (big-endian int32).
FRAME = struct.Struct(">bI")
#: The first bytes of an Avro object container file.
CONTAINER_MAGIC = b"Obj\x01"

ZTF_SCHEMA_VERSION = "4.02"
RUBIN_SCHEMA_ID = 1100

# Fields as "name:type" (type? = ["null", type] with default null; type?! = the same union
# without a default, as the published prv_candidate has for a few fields).
_ZTF_CANDIDATE = """
jd:double fid:int pid:long diffmaglim:float? pdiffimfilename:string? programpi:string?
programid:int candid:long isdiffpos:string tblid:long? nid:int? rcid:int? field:int? xpos:float?
ypos:float? ra:double dec:double magpsf:float sigmapsf:float chipsf:float? magap:float?
sigmagap:float? distnr:float? magnr:float? sigmagnr:float? chinr:float? sharpnr:float?
sky:float? magdiff:float? fwhm:float? classtar:float? mindtoedge:float? magfromlim:float?
seeratio:float? aimage:float? bimage:float? aimagerat:float? bimagerat:float? elong:float?
nneg:int? nbad:int? rb:float? ssdistnr:float? ssmagnr:float? ssnamenr:string? sumrat:float?
magapbig:float? sigmagapbig:float? ranr:double decnr:double sgmag1:float? srmag1:float?
simag1:float? szmag1:float? sgscore1:float? distpsnr1:float? ndethist:int ncovhist:int
jdstarthist:double? jdendhist:double? scorr:double? tooflag:int? objectidps1:long?
objectidps2:long? sgmag2:float? srmag2:float? simag2:float? szmag2:float? sgscore2:float?
distpsnr2:float? objectidps3:long? sgmag3:float? srmag3:float? simag3:float? szmag3:float?
sgscore3:float? distpsnr3:float? nmtchps:int rfid:long jdstartref:double jdendref:double
nframesref:int rbversion:string dsnrms:float? ssnrms:float? dsdiff:float? magzpsci:float?
magzpsciunc:float? magzpscirms:float? nmatches:int clrcoeff:float? clrcounc:float?
zpclrcov:float? zpmed:float? clrmed:float? clrrms:float? neargaia:float? neargaiabright:float?
maggaia:float? maggaiabright:float? exptime:float? drb:float? drbversion:string
"""
_ZTF_PRV_CANDIDATE = """
jd:double fid:int pid:long diffmaglim:float? pdiffimfilename:string? programpi:string?
programid:int candid:long?! isdiffpos:string?! tblid:long? nid:int? rcid:int? field:int?
xpos:float? ypos:float? ra:double?! dec:double?! magpsf:float?! sigmapsf:float?! chipsf:float?
magap:float? sigmagap:float? distnr:float? magnr:float? sigmagnr:float? chinr:float?
sharpnr:float? sky:float? magdiff:float? fwhm:float? classtar:float? mindtoedge:float?
magfromlim:float? seeratio:float? aimage:float? bimage:float? aimagerat:float? bimagerat:float?
elong:float? nneg:int? nbad:int? rb:float? ssdistnr:float? ssmagnr:float? ssnamenr:string?
sumrat:float? magapbig:float? sigmagapbig:float? ranr:double?! decnr:double?! scorr:double?
magzpsci:float? magzpsciunc:float? magzpscirms:float? clrcoeff:float? clrcounc:float?
rbversion:string
"""
_ZTF_FP_HIST = """
field:int? rcid:int? fid:int pid:long rfid:long sciinpseeing:float? scibckgnd:float?
scisigpix:float? magzpsci:float? magzpsciunc:float? magzpscirms:float? clrcoeff:float?
clrcounc:float? exptime:float? adpctdif1:float? adpctdif2:float? diffmaglim:float? programid:int
jd:double forcediffimflux:float? forcediffimfluxunc:float? procstatus:string? distnr:float?
ranr:double decnr:double magnr:float? sigmagnr:float? chinr:float? sharpnr:float?
"""
_RUBIN_DIASOURCE = """
diaSourceId:long visit:long detector:int diaObjectId:long? ssObjectId:long?
parentDiaSourceId:long? midpointMjdTai:double ra:double raErr:float? dec:double decErr:float?
ra_dec_Cov:float? x:float xErr:float? y:float yErr:float? centroid_flag:boolean? apFlux:float?
apFluxErr:float? apFlux_flag:boolean? apFlux_flag_apertureTruncated:boolean? isNegative:boolean?
snr:float? psfFlux:float? psfFluxErr:float? psfLnL:float? psfChi2:float? psfNdata:int
psfFlux_flag:boolean? psfFlux_flag_edge:boolean? psfFlux_flag_noGoodPixels:boolean?
trailFlux:float? trailFluxErr:float? trailRa:double? trailRaErr:float? trailDec:double?
trailDecErr:float? trailLength:float? trailLengthErr:float? trailAngle:float?
trailAngleErr:float? trailChi2:float? trailNdata:int trail_flag_edge:boolean?
dipoleMeanFlux:float? dipoleMeanFluxErr:float? dipoleFluxDiff:float? dipoleFluxDiffErr:float?
dipoleLength:float? dipoleAngle:float? dipoleChi2:float? dipoleNdata:int scienceFlux:float?
scienceFluxErr:float? forced_PsfFlux_flag:boolean? forced_PsfFlux_flag_edge:boolean?
forced_PsfFlux_flag_noGoodPixels:boolean? templateFlux:float? templateFluxErr:float? ixx:float?
iyy:float? ixy:float? ixxPSF:float? iyyPSF:float? ixyPSF:float? shape_flag:boolean?
shape_flag_no_pixels:boolean? shape_flag_not_contained:boolean?
shape_flag_parent_source:boolean? extendedness:float? reliability:float? band:string?
isDipole:boolean? dipoleFitAttempted:boolean? timeProcessedMjdTai:double
timeWithdrawnMjdTai:double? bboxSize:int pixelFlags:boolean? pixelFlags_bad:boolean?
pixelFlags_cr:boolean? pixelFlags_crCenter:boolean? pixelFlags_edge:boolean?
pixelFlags_nodata:boolean? pixelFlags_nodataCenter:boolean? pixelFlags_interpolated:boolean?
pixelFlags_interpolatedCenter:boolean? pixelFlags_offimage:boolean?
pixelFlags_saturated:boolean? pixelFlags_saturatedCenter:boolean? pixelFlags_suspect:boolean?
pixelFlags_suspectCenter:boolean? pixelFlags_streak:boolean? pixelFlags_streakCenter:boolean?
pixelFlags_injected:boolean? pixelFlags_injectedCenter:boolean?
pixelFlags_injected_template:boolean? pixelFlags_injected_templateCenter:boolean?
glint_trail:boolean?
"""
# Declared by name only (see the module docstring): the simulator writes these null.
_RUBIN_DIAFORCEDSOURCE = "diaForcedSourceId:long diaObjectId:long ra:double dec:double"
_RUBIN_DIAOBJECT = "diaObjectId:long ra:double dec:double"
_RUBIN_SSSOURCE = "ssObjectId:long diaSourceId:long"
_RUBIN_MPC_ORBITS = "designation:string"

_FIELD_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):([a-z]+)(\?!?)?$")


def _fields(spec: str) -> list[dict[str, Any]]:
    out = []
    for token in spec.split():
        m = _FIELD_RE.match(token)
        if m is None:
            raise ValueError(f"bad field spec {token!r}")
        name, typ, opt = m.groups()
        if not opt:
            out.append({"name": name, "type": typ})
        elif opt == "?":
            out.append({"name": name, "type": ["null", typ], "default": None})
        else:
            out.append({"name": name, "type": ["null", typ]})
    return out


def _record(namespace: str, name: str, fields: list[dict[str, Any]], **extra) -> dict[str, Any]:
    return {"type": "record", "namespace": namespace, "name": name, **extra, "fields": fields}


def _optional(typ: Any) -> dict[str, Any]:
    return {"type": ["null", typ], "default": None}


def ztf_schema() -> dict[str, Any]:
    """The ZTF alert schema (v4.02) as one self-contained Avro schema dict."""
    v = {"version": ZTF_SCHEMA_VERSION}
    cand = _record("ztf.alert", "candidate", _fields(_ZTF_CANDIDATE), **v)
    prv = _record("ztf.alert", "prv_candidate", _fields(_ZTF_PRV_CANDIDATE), **v)
    fph = _record("ztf.alert", "fp_hist", _fields(_ZTF_FP_HIST), **v)
    cutout = _record(
        "ztf.alert",
        "cutout",
        [{"name": "fileName", "type": "string"}, {"name": "stampData", "type": "bytes"}],
        **v,
    )
    return _record(
        "ztf",
        "alert",
        [
            {"name": "schemavsn", "type": "string"},
            {"name": "publisher", "type": "string"},
            {"name": "objectId", "type": "string"},
            {"name": "candid", "type": "long"},
            {"name": "candidate", "type": cand},
            {"name": "prv_candidates", **_optional({"type": "array", "items": prv})},
            {"name": "fp_hists", **_optional({"type": "array", "items": fph})},
            {"name": "cutoutScience", **_optional(cutout)},
            {"name": "cutoutTemplate", **_optional("ztf.alert.cutout")},
            {"name": "cutoutDifference", **_optional("ztf.alert.cutout")},
        ],
        doc="avro alert schema for ZTF (www.ztf.caltech.edu)",
        version=ZTF_SCHEMA_VERSION,
    )


def rubin_schema() -> dict[str, Any]:
    """The Rubin alert schema (lsst.v11_0.alert) as one self-contained Avro schema dict."""
    ns = "lsst.v11_0"
    dia = _record(ns, "diaSource", _fields(_RUBIN_DIASOURCE))
    return _record(
        ns,
        "alert",
        [
            {"name": "diaSourceId", "type": "long"},
            {"name": "observation_reason", **_optional("string")},
            {"name": "target_name", **_optional("string")},
            {"name": "diaSource", "type": dia},
            {"name": "prvDiaSources", **_optional({"type": "array", "items": f"{ns}.diaSource"})},
            {
                "name": "prvDiaForcedSources",
                **_optional(
                    {
                        "type": "array",
                        "items": _record(ns, "diaForcedSource", _fields(_RUBIN_DIAFORCEDSOURCE)),
                    }
                ),
            },
            {"name": "diaObject", **_optional(_record(ns, "diaObject", _fields(_RUBIN_DIAOBJECT)))},
            {"name": "ssSource", **_optional(_record(ns, "ssSource", _fields(_RUBIN_SSSOURCE)))},
            {
                "name": "mpc_orbits",
                **_optional(_record(ns, "mpc_orbits", _fields(_RUBIN_MPC_ORBITS))),
            },
            {"name": "cutoutDifference", **_optional("bytes")},
            {"name": "cutoutScience", **_optional("bytes")},
            {"name": "cutoutTemplate", **_optional("bytes")},
        ],
        doc="Rubin Avro alert schema v11.0",
    )


@functools.cache
def parsed_schema(survey: str):
    """Our schema of ``survey`` (``ztf`` or ``rubin``), parsed by fastavro (cached)."""
    import fastavro

    if survey == "ztf":
        return fastavro.parse_schema(ztf_schema())
    if survey == "rubin":
        return fastavro.parse_schema(rubin_schema())
    raise ValueError(f"no alert schema for survey {survey!r}")


def survey_of_schema_name(name: str | None) -> str | None:
    """``ztf`` for ``ztf.alert``, ``rubin`` for ``lsst[.vM_m].alert``; None otherwise."""
    if not name:
        return None
    if name == "ztf.alert":
        return "ztf"
    if re.match(r"^lsst(\.v[0-9]+_[0-9]+)?\.alert$", name):
        return "rubin"
    return None


def schema_name(schema: Any) -> str | None:
    """The full name of a schema's top-level record (a dict, parsed or not)."""
    if not isinstance(schema, dict):
        return None
    name = schema.get("name")
    ns = schema.get("namespace")
    if name and "." not in name and ns:
        return f"{ns}.{name}"
    return name


# --------------------------------------------------------------------------- framing


def frame(body: bytes, schema_id: int) -> bytes:
    """A schemaless record behind the Confluent header (byte 0, schema ID)."""
    return FRAME.pack(0, int(schema_id)) + body


def unframe_header(head: bytes) -> int | None:
    """The schema ID of a Confluent header, or None when ``head`` does not start with one."""
    if len(head) < FRAME.size or head[0] != 0:
        return None
    return FRAME.unpack_from(head)[1]


_RUBIN_NAME_RE = re.compile(r"^lsst\.v([0-9]+)_([0-9]+)\.alert\.avsc$")


class SchemaRegistry:
    """Schemas of framed records by ID, from ``.avsc`` files (our own schemas are not in it:
    framed records are read only with a schema the data came with).

    A file named ``lsst.v<M>_<m>.alert.avsc`` gets Rubin's ID ``M * 100 + m`` (its named types
    are read from the ``.avsc`` files beside it, as lsst/alert_packet lays them out); a file
    named ``<id>.avsc`` gets that ID.
    """

    def __init__(self, paths: Iterable[str | os.PathLike[str]] = ()):
        self.paths = tuple(sorted(str(p) for p in paths))
        self._by_id: dict[int, Any] = {}
        self._errors: dict[int, str] = {}

    @staticmethod
    def schema_id(path: str | os.PathLike[str]) -> int | None:
        """The ID a schema file stands for, or None (a named type of another schema)."""
        name = Path(path).name
        m = _RUBIN_NAME_RE.match(name)
        if m:
            return int(m.group(1)) * 100 + int(m.group(2))
        stem = name[: -len(".avsc")] if name.endswith(".avsc") else ""
        return int(stem) if stem.isdigit() else None

    def ids(self) -> dict[int, str]:
        """Schema ID -> file, for every file that stands for an ID."""
        out = {}
        for p in self.paths:
            sid = self.schema_id(p)
            if sid is not None:
                out.setdefault(sid, p)
        return out

    def get(self, schema_id: int):
        """The parsed schema of an ID.

        Raises
        ------
        KeyError
            With the reason: no file for the ID, or a file that does not parse.
        """
        if schema_id in self._by_id:
            return self._by_id[schema_id]
        if schema_id in self._errors:
            raise KeyError(self._errors[schema_id])
        path = self.ids().get(schema_id)
        if path is None:
            reason = (
                f"schema ID {schema_id} unknown (put its .avsc files in the raw tree: "
                "lsst.v<M>_<m>.alert.avsc and its siblings, or <id>.avsc)"
            )
            self._errors[schema_id] = reason
            raise KeyError(reason)
        try:
            import fastavro.schema

            parsed = fastavro.schema.load_schema(path)
        except Exception as exc:  # fastavro raises several types for bad schema files
            reason = f"schema file {path} for ID {schema_id} does not parse ({exc})"
            self._errors[schema_id] = reason
            raise KeyError(reason) from None
        self._by_id[schema_id] = parsed
        return parsed


def write_schema_files(folder: str | os.PathLike[str], survey: str = "rubin") -> list[Path]:
    """Write our Rubin schema as ``.avsc`` files laid out as lsst/alert_packet does
    (``lsst.v11_0.alert.avsc`` and one file per named record), for framed test data."""
    if survey != "rubin":
        raise ValueError("framed records are written for Rubin only")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    full = rubin_schema()
    written = []
    named: list[dict[str, Any]] = []

    def split(node: Any) -> Any:
        # Replace nested record definitions by their names, collecting them.
        if isinstance(node, dict):
            if node.get("type") == "record" and node is not full:
                named.append({**node, "fields": [split(f) for f in node["fields"]]})
                return f"{node['namespace']}.{node['name']}"
            return {k: split(v) for k, v in node.items()}
        if isinstance(node, list):
            return [split(v) for v in node]
        return node

    top = {**full, "fields": [split(f) for f in full["fields"]]}
    for rec in [top, *named]:
        path = folder / f"{rec['namespace']}.{rec['name']}.avsc"
        path.write_text(json.dumps(rec, indent=1))
        written.append(path)
    return written
