"""Simulated ZTF-like and Rubin-like alert packets, written as the surveys and brokers do.

Writers (from given pixel arrays, for the tests and the simulator):

- :func:`ztf_record`, :func:`rubin_record`: one packet as a dict valid against our schemas
  (:mod:`s2v_batch.formats.alertschema`: ZTF 4.02, Rubin lsst.v11_0), cut-outs as gzipped FITS (ZTF)
  or FITS bytes of any size (Rubin).
- :func:`avro_container` (an Avro object container of records), :func:`framed_record` (one
  schemaless record behind the Confluent header), :func:`write_archive` (a ``.tar.gz`` of
  members, written as a stream) and :func:`write_parquet` (a Parquet alert export).

:func:`simulate_alerts` writes whole nights (``s2v simulate --survey ztf|rubin``)::

    OUT/ztf_public_<UT date>.tar.gz  members <candid>.avro             (fmt "archive", ZTF)
    OUT/rubin_<night>.tar.gz         members <diaSourceId>.avro        (fmt "archive", Rubin)
    OUT/alerts/<id>.avro             one packet each, Avro container   (fmt "avro")
    OUT/alerts/<id>.avro + OUT/schemas/*.avsc   Confluent-framed       (fmt "framed", Rubin)
    OUT/alerts/<survey>_alerts_<night>.parquet  one file a night       (fmt "parquet")
    OUT/autoscan_features.3.csv      truth: ID (candid / diaSourceId), OBJECT_TYPE (0 real)

Loose files are not in night folders: ingest dates them from their detection times. The
pixels come from :func:`s2v_batch.sim.simulator.simulate_stamps` with the survey's profile (pixel
scale, seeing, depth: :mod:`s2v_batch.sim.survey`); the survey's own
real/bogus scores (``rb``, ``drb``, ``reliability``) are drawn from the truth with noise.
Everything is deterministic: the same arguments give the same bytes.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import sys
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s2v_batch import __version__
from s2v_batch.core import provenance
from s2v_batch.core.fsutil import atomic_path
from s2v_batch.core.nights import MJD_JD_OFFSET, TAI_MINUS_UTC_S, shift_night
from s2v_batch.formats.alertpackets import NJY_AB_ZEROPOINT, fit_to_size
from s2v_batch.formats.alertschema import (
    RUBIN_SCHEMA_ID,
    ZTF_SCHEMA_VERSION,
    frame,
    parsed_schema,
    write_schema_files,
)
from s2v_batch.sim.edges import edge_cut, edge_draws
from s2v_batch.sim.simulator import (
    LABELS_CSV,
    TRAINING_REAL_FRACTION,
    SimulationError,
    fits_bytes,
    simulate_stamps,
)

FORMATS = {"ztf": ("archive", "avro", "parquet"), "rubin": ("archive", "avro", "framed", "parquet")}
#: Night 0 of the simulated ID scheme (IDs: base + night index * 1e9 + running number).
_EPOCH = dt.date(2017, 1, 1)
_ID_BASE = {"ztf": 10**18, "rubin": 2 * 10**17}
#: Detection times (UTC hours after midnight following the evening) of each observatory's night.
_HOURS = {"ztf": (4.0, 11.0), "rubin": (1.0, 8.0)}
_ZTF_FID = {"g": 1, "r": 2, "i": 3}
_CHUNK = 512


# --------------------------------------------------------------------------- packets


def _cutout_fits(image: np.ndarray, extra: dict[str, Any] | None = None) -> bytes:
    return fits_bytes(np.asarray(image, np.float32), extra or {})


def gzip_bytes(data: bytes) -> bytes:
    """Deterministic gzip (no time stamp), as ZTF's ``stampData``."""
    return gzip.compress(data, compresslevel=6, mtime=0)


def ztf_record(
    candid: int,
    object_id: str,
    jd: float,
    pixels: np.ndarray,
    *,
    ra: float = 150.0,
    dec: float = 30.0,
    fid: int = 1,
    magpsf: float = 19.0,
    sigmapsf: float = 0.1,
    isdiffpos: str = "t",
    rb: float | None = None,
    drb: float | None = None,
    programid: int = 1,
    xpos: float | None = None,
    ypos: float | None = None,
) -> dict[str, Any]:
    """A ZTF alert packet (schema 4.02) from ``pixels`` ``(h, w, 3)`` (srch, temp, diff).

    The three cut-outs are gzipped FITS files, as ZTF sends them.
    """
    stamps = {}
    for i, field in enumerate(("Science", "Template", "Difference")):
        name = f"candid{candid}_{field.lower()}.fits.gz"
        data = gzip_bytes(_cutout_fits(pixels[..., i]))
        stamps[f"cutout{field}"] = {"fileName": name, "stampData": data}
    candidate = {
        "jd": float(jd), "fid": int(fid), "pid": int(candid) // 1000, "programid": int(programid),
        "candid": int(candid), "isdiffpos": isdiffpos, "ra": float(ra), "dec": float(dec),
        "magpsf": float(magpsf), "sigmapsf": float(sigmapsf), "rb": rb, "drb": drb,
        "ranr": float(ra), "decnr": float(dec), "ndethist": 1, "ncovhist": 1, "nmtchps": 0,
        "rfid": 100 + int(fid), "jdstartref": float(jd) - 400.0, "jdendref": float(jd) - 300.0,
        "nframesref": 20, "rbversion": "t17_f5_c3", "nmatches": 500,
        "drbversion": "d6_m7", "fwhm": 2.0, "exptime": 30.0, "xpos": xpos, "ypos": ypos,
    }  # fmt: skip
    return {
        "schemavsn": ZTF_SCHEMA_VERSION,
        "publisher": "s2v-batch simulator (SIMULATED, not ZTF data)",
        "objectId": object_id,
        "candid": int(candid),
        "candidate": candidate,
        "prv_candidates": None,
        "fp_hists": None,
        **stamps,
    }


def rubin_record(
    dia_source_id: int,
    mjd_tai: float,
    cutouts: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    dia_object_id: int | None = None,
    ra: float = 150.0,
    dec: float = -30.0,
    band: str = "r",
    psf_flux: float = 5000.0,
    psf_flux_err: float = 200.0,
    reliability: float | None = None,
) -> dict[str, Any]:
    """A Rubin alert packet (lsst.v11_0) from three 2-D cut-outs (science, template,
    difference), of any size each; cut-outs are plain FITS bytes, as Rubin sends them."""
    src = {
        "diaSourceId": int(dia_source_id), "visit": int(dia_source_id) // 10**6,
        "detector": 42, "diaObjectId": dia_object_id, "midpointMjdTai": float(mjd_tai),
        "ra": float(ra), "dec": float(dec), "x": 100.0, "y": 200.0,
        "isNegative": bool(psf_flux < 0), "snr": float(abs(psf_flux) / psf_flux_err),
        "psfFlux": float(psf_flux), "psfFluxErr": float(psf_flux_err), "psfNdata": 400,
        "trailNdata": 0, "dipoleNdata": 0, "reliability": reliability, "band": band,
        "timeProcessedMjdTai": float(mjd_tai) + 0.01,
        "bboxSize": int(max(c.shape[0] for c in cutouts)),
    }  # fmt: skip
    sci, tmp, dif = (_cutout_fits(c) for c in cutouts)
    return {
        "diaSourceId": int(dia_source_id),
        "diaSource": src,
        "cutoutDifference": dif,
        "cutoutScience": sci,
        "cutoutTemplate": tmp,
    }


def avro_container(records: Iterable[dict[str, Any]], survey: str) -> bytes:
    """An Avro object container file of ``records`` with our schema of ``survey``."""
    import fastavro

    buf = io.BytesIO()
    # A fixed sync marker keeps the bytes deterministic.
    fastavro.writer(buf, parsed_schema(survey), records, sync_marker=b"s2v-batch-alerts")
    return buf.getvalue()


def framed_record(record: dict[str, Any], survey: str = "rubin") -> bytes:
    """One schemaless record behind the Confluent header (Rubin's schema ID for v11.0)."""
    import fastavro

    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed_schema(survey), record)
    return frame(buf.getvalue(), RUBIN_SCHEMA_ID)


def write_archive(path: str | Path, members: Iterable[tuple[str, bytes]]) -> int:
    """Write a ``.tar.gz`` of ``(name, bytes)`` members as a stream; return the member count.

    Written through a temporary name, then renamed. Deterministic (no time stamps).
    """
    n = 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as raw:
        # No file name or time in the gzip header: the same members give the same bytes.
        with gzip.GzipFile("", "wb", 6, raw, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                for name, data in members:
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    tf.addfile(info, io.BytesIO(data))
                    n += 1
    return n


def write_parquet(path: str | Path, records: list[dict[str, Any]]) -> None:
    """A Parquet alert export: one row per packet, its nested fields as columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(records)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(path)) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=256)


# --------------------------------------------------------------------------- whole nights


@dataclass
class AlertSimulation:
    """What :func:`simulate_alerts` wrote."""

    out: Path
    survey: str
    nights: list[int]
    n_alerts: int
    n_real: int
    fmt: str
    files: list[Path]
    labels_csv: Path
    seconds: float

    def line(self) -> str:
        """The one-line summary ``s2v simulate`` prints."""
        return (
            f"simulate: {self.n_alerts} SIMULATED {self.survey.upper()}-like alerts "
            f"({self.n_real} real) in {len(self.nights)} nights as {self.fmt} ({len(self.files)} "
            f"files) under {self.out}; truth labels in {self.labels_csv}; "
            f"{self.n_alerts / max(self.seconds, 1e-9):,.0f} alerts/s"
        )


def _night_index(night: int) -> int:
    return (dt.datetime.strptime(str(night), "%Y%m%d").date() - _EPOCH).days


def _mjd_utc(night: int, hours: np.ndarray) -> np.ndarray:
    d = dt.datetime.strptime(str(night), "%Y%m%d").date() + dt.timedelta(days=1)
    return (d - dt.date(1858, 11, 17)).days + hours / 24.0


def _object_ids(rng: np.random.Generator, night: int, n: int) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    yy = str(night)[2:4]
    return ["ZTF" + yy + "".join(row) for row in letters[rng.integers(0, 26, (n, 7))]]


def _scores(rng: np.random.Generator, labels: np.ndarray, sharp: float) -> np.ndarray:
    """A survey real/bogus score drawn from the truth: Beta(sharp, 1.5) for reals, mirrored."""
    real = rng.beta(sharp, 1.5, len(labels))
    return np.where(labels == 1, real, 1.0 - real).astype(np.float32)


def _night_records(
    survey, night, n, rng, sizes, real_fraction, edges=None
) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """The packets of one night (in chunks of pixels), their IDs and truth labels; ``edges``:
    ``(generator, fraction)`` of ZTF edge cut-outs (:mod:`s2v_batch.sim.edges`)."""
    base = _ID_BASE[survey] + _night_index(night) * 10**9
    records, ids, labels = [], [], []
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        edge = 63 if survey == "ztf" else max(sizes)
        batch = simulate_stamps(m, rng, size=edge, survey=survey, real_fraction=real_fraction)
        feats = batch.features
        lo, hi = _HOURS[survey]
        mjd = np.sort(_mjd_utc(night, rng.uniform(lo, hi, m)))
        ra = rng.uniform(0.0, 360.0, m)
        dec = rng.uniform(-25.0, 85.0, m) if survey == "ztf" else rng.uniform(-85.0, 25.0, m)
        sharp_rb = _scores(rng, batch.labels, 4.0)
        sharp_drb = _scores(rng, batch.labels, 12.0)
        objs = _object_ids(rng, night, m)
        size_pick = rng.integers(0, len(sizes), m)
        cuts = edge_draws(edges, m)
        for j in range(m):
            sid = base + start + j
            pix = batch.pixels[j]
            band = str(feats["BAND"].iloc[j])
            mag = float(feats["MAG"].iloc[j])
            if not np.isfinite(mag):  # artifacts without a measured magnitude: the survey has one
                mag = float(rng.uniform(19.0, 21.5))
            pos = str(batch.kinds[j]) != "dipole" or rng.random() < 0.5
            if survey == "ztf":
                cut, xy = edge_cut(pix, cuts[j]) if cuts is not None else (pix, (None, None))
                rec = ztf_record(
                    sid, objs[j], float(mjd[j] + MJD_JD_OFFSET), cut, ra=ra[j], dec=dec[j],
                    fid=_ZTF_FID.get(band, 2), magpsf=mag, sigmapsf=0.1,
                    isdiffpos="t" if pos else "f", rb=float(sharp_rb[j]), drb=float(sharp_drb[j]),
                    xpos=xy[0], ypos=xy[1],
                )  # fmt: skip
            else:
                s = sizes[size_pick[j]]
                cut = tuple(fit_to_size(pix[..., i], s) for i in range(3))
                flux = 10 ** ((NJY_AB_ZEROPOINT - mag) / 2.5) * (1 if pos else -1)
                rec = rubin_record(
                    sid, float(mjd[j] + TAI_MINUS_UTC_S / 86400.0), cut,
                    dia_object_id=sid // 10 + 7, ra=ra[j], dec=dec[j], band=band,
                    psf_flux=flux, psf_flux_err=abs(flux) / max(float(feats["SNR"].iloc[j]), 1.0),
                    reliability=float(sharp_drb[j]),
                )  # fmt: skip
            records.append(rec)
            ids.append(sid)
        labels.append(batch.labels)
    return records, np.asarray(ids, np.int64), np.concatenate(labels)


def simulate_alerts(
    out: str | Path,
    *,
    survey: str,
    nights: int = 1,
    alerts_per_night: int = 500,
    fmt: str = "archive",
    seed: int = 0,
    first_night: int = 20240101,
    sizes: tuple[int, ...] = (47, 63, 79),
    real_fraction: float = TRAINING_REAL_FRACTION,
    progress: bool = False,
    edge_fraction: float = 0.0,
) -> AlertSimulation:
    """Simulate whole nights of alert packets on disk (layout in the module docstring).

    Parameters
    ----------
    out : path
        Root of the raw tree (created if missing).
    survey : {"ztf", "rubin"}
    nights, alerts_per_night : int
        Consecutive nights, and alerts in each.
    fmt : str
        ``archive``, ``avro``, ``parquet``, or (Rubin) ``framed``.
    seed : int
        Each night draws from a generator seeded by ``(seed, survey, night)``.
    first_night : int
        ``YYYYMMDD`` of the first night (the observatory's evening date).
    sizes : tuple of int
        Rubin only: the edges its cut-outs are drawn from (they vary per alert).
    real_fraction : float
        Expected fraction of real transients (0.5, the training mix, by default).
    progress : bool
        One line per night to stderr.
    edge_fraction : float
        ZTF only: the share of alerts detected near a quadrant edge, whose cut-outs come cut
        short on that side (6-22 rows or columns lost, as ZTF's 63x53 and 41x63) with the
        candidate's ``xpos``/``ypos`` saying where (ingest pads them back:
        ``IngestConfig.edge_cutouts``). Drawn from a generator of their own: the other draws
        are the same as without them. 0 by default.

    Returns
    -------
    AlertSimulation

    Raises
    ------
    SimulationError
        Bad arguments, or a truth CSV of other columns already in ``out``.
    """
    t0 = time.perf_counter()
    if survey not in FORMATS:
        raise SimulationError(f"survey must be 'ztf' or 'rubin', got {survey!r}")
    if fmt not in FORMATS[survey]:
        raise SimulationError(f"{survey} alerts come as {', '.join(FORMATS[survey])}; not {fmt!r}")
    for name, value, low in (("nights", nights, 1), ("alerts_per_night", alerts_per_night, 1),
                             ("seed", seed, 0)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise SimulationError(f"{name} must be an int >= {low}, got {value!r}")
    if alerts_per_night >= 10**9:
        raise SimulationError("alerts_per_night must stay below 1e9 (the ID scheme)")
    if not (isinstance(edge_fraction, int | float) and 0.0 <= edge_fraction <= 1.0):
        raise SimulationError(f"edge_fraction must be in [0, 1], got {edge_fraction!r}")
    if not sizes or any(not isinstance(s, int) or s < 16 for s in sizes):
        raise SimulationError(f"sizes must be ints >= 16, got {sizes!r}")
    try:
        night_list = [shift_night(first_night, i) for i in range(nights)]
    except (ValueError, TypeError):
        raise SimulationError(f"first_night={first_night!r} is not a YYYYMMDD date") from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / LABELS_CSV
    _start_truth(csv, survey)
    files: list[Path] = []
    n_real = n_total = 0
    s_idx = {"ztf": 1, "rubin": 2}[survey]
    if fmt == "framed":
        write_schema_files(out / "schemas")
    for night in night_list:
        rng = np.random.default_rng([seed, s_idx, night])
        edges = (np.random.default_rng([seed, s_idx, night, 7]), float(edge_fraction))
        records, ids, labels = _night_records(
            survey, night, alerts_per_night, rng, sizes, real_fraction,
            edges if survey == "ztf" else None,
        )  # fmt: skip
        written = _write_night(out, survey, night, fmt, records, ids)
        provenance.write_marker(
            written[0].parent, [f.name for f in written], version=__version__, seed=seed,
            survey=survey, night=night,
        )  # fmt: skip
        files += written
        with open(csv, "a", encoding="ascii") as f:
            for sid, lab in zip(ids.tolist(), labels.tolist(), strict=True):
                f.write(f"{sid},{0 if lab == 1 else 1},{survey},{night}\n")
        n_real += int(labels.sum())
        n_total += len(ids)
        if progress:
            print(f"simulated {survey} night {night}: {len(ids)} alerts", file=sys.stderr)
    return AlertSimulation(out, survey, night_list, n_total, n_real, fmt, files, csv,
                           time.perf_counter() - t0)  # fmt: skip


def _write_night(out: Path, survey: str, night: int, fmt: str, records, ids) -> list[Path]:
    alerts = out / "alerts"
    if fmt == "archive":
        name = (
            f"ztf_public_{shift_night(night, 1)}.tar.gz"  # ZTF names nights by their UT date
            if survey == "ztf"
            else f"rubin_{night}.tar.gz"
        )
        members = (
            (f"{sid}.avro", avro_container([r], survey))
            for sid, r in zip(ids, records, strict=True)
        )
        write_archive(out / name, members)
        return [out / name]
    alerts.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        path = alerts / f"{survey}_alerts_{night}.parquet"
        write_parquet(path, records)
        return [path]
    written = []
    for sid, rec in zip(ids.tolist(), records, strict=True):
        path = alerts / f"{sid}.avro"
        data = framed_record(rec) if fmt == "framed" else avro_container([rec], survey)
        path.write_bytes(data)
        written.append(path)
    return written


def _start_truth(path: Path, survey: str) -> None:
    header = "ID,OBJECT_TYPE,SURVEY,NIGHT"
    if path.exists():
        with open(path, encoding="ascii", errors="replace") as f:
            line = next((ln for ln in f if not ln.startswith("#")), "")
        if line.rstrip("\n") != header:
            raise SimulationError(f"{path} exists with other columns; simulate into another folder")
        return
    with open(path, "w", encoding="ascii") as f:
        f.write(f"# SIMULATED {survey.upper()}-like alerts from the s2v-batch simulator, "
                "not survey data\n")  # fmt: skip
        f.write("# ID = candid (ZTF) / diaSourceId (Rubin); OBJECT_TYPE: 0 = real, 1 = artifact\n")
        f.write(header + "\n")
