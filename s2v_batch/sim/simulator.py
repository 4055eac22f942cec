"""Simulated survey stamps, written in the survey's raw layouts (gif, fits, tar) plus the CSV.

The real DES stamps are not reachable from development machines; this module stands in for them.
It holds the public API and the night/season driver:

- :func:`simulate_stamps`: stamps in memory (:class:`SimulatedBatch`), for any survey profile
  (:data:`DES` by default, :data:`ZTF`, :data:`RUBIN`: :mod:`s2v_batch.sim.survey`).
- :func:`simulate`: whole DES nights on disk, in the autoscan layout::

    OUT/<season>/<YYYYMMDD>/ccd<NN>/{srch,temp,diff}<ID>.{gif,fits}      (fmt "gif" / "fits")
    OUT/<season>/<YYYYMMDD>/stamps_<KKK>.tar  members stamps_<KKK>/...   (fmt "tar")
    OUT/autoscan_features.3.csv   '#' comments, then ID,OBJECT_TYPE,BAND,CCDID,MAG,SNR,...

- :func:`pack_night_as_tar`: a night written as loose files, packed into tar archives.
- :func:`render_gif`, :func:`fits_bytes`: one channel as the survey stored it.

The physics is :mod:`s2v_batch.sim.physics` (scene, subtraction), :mod:`s2v_batch.sim.artifacts`,
:mod:`s2v_batch.sim.noise` (resampled, PSF-matched noise); the formats are
:mod:`s2v_batch.sim.encoders` and :mod:`s2v_batch.sim.writer`. docs/SIMULATOR.md says what is
modelled and how it compares with DES.

The mix of real transients and artifacts is ``real_fraction``: 0.5 by default, the balanced mix
of autoscan's training set (:data:`TRAINING_REAL_FRACTION`); a survey's nightly stream of
detections is mostly artifacts, :data:`STREAM_REAL_FRACTION` (0.06) is like it.

Everything is deterministic: the same arguments give the same bytes.
"""

from __future__ import annotations

import datetime as _dt
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from s2v_batch import __version__
from s2v_batch.core import provenance
from s2v_batch.core.conventions import SEASON_RE, label_to_object_type
from s2v_batch.sim.encoders import FILL_1E30, fits_bytes, render_gif
from s2v_batch.sim.features import lag1_autocorrelation
from s2v_batch.sim.physics import KINDS, render
from s2v_batch.sim.survey import DES, RUBIN, ZTF, SimulationError, SurveyProfile, get_profile
from s2v_batch.sim.writer import NightWriter, pack_night_as_tar

__all__ = [
    "DES",
    "FILL_1E30",
    "KINDS",
    "RUBIN",
    "SEASON_FIRST_NIGHT",
    "STREAM_REAL_FRACTION",
    "TRAINING_REAL_FRACTION",
    "ZTF",
    "SimulatedBatch",
    "SimulationError",
    "SimulationSummary",
    "SurveyProfile",
    "fits_bytes",
    "get_profile",
    "lag1_autocorrelation",
    "pack_night_as_tar",
    "render_gif",
    "simulate",
    "simulate_stamps",
]

#: First night of each DES season (the default ``first_night`` of :func:`simulate`).
SEASON_FIRST_NIGHT: dict[str, int] = {
    "SV": 20121101,
    "Y1": 20130901,
    "Y2": 20140815,
    "Y3": 20150815,
    "Y4": 20160815,
    "Y5": 20170815,
    "Y6": 20180815,
}
#: Real fraction of autoscan's training set (about half injected fakes, half artifacts): the default.
TRAINING_REAL_FRACTION = 0.5
#: Real fraction like a survey's raw nightly stream of detections (docs/SIMULATOR.md: from
#: Kessler et al. 2015 and Goldstein et al. 2015, about 1 real detection in 15-20).
STREAM_REAL_FRACTION = 0.06
#: IDs of one season stay below this: ``(season index + 1) * ID_SEASON_STRIDE + ...``.
ID_SEASON_STRIDE = 10_000_000
LABELS_CSV = "autoscan_features.3.csv"
FORMATS = ("gif", "fits", "tar")
_CCDS_PER_NIGHT = 4
_CHUNK = 2048  # stamps rendered at a time by simulate (fixed: part of the determinism)


@dataclass(frozen=True)
class SimulatedBatch:
    """Stamps in memory, as :func:`simulate` would write them.

    Attributes
    ----------
    pixels : numpy.ndarray
        float32 ``(n, size, size, 3)``, sky-subtracted ADU, channels srch, temp, diff;
        masked pixels are NaN.
    labels : numpy.ndarray
        int8 ``(n,)``: 1 real, 0 artifact.
    kinds : numpy.ndarray
        str ``(n,)``: one of :data:`KINDS`.
    features : pandas.DataFrame
        autoscan-like features per stamp (BAND, CCDID, MAG, SNR, FWHM, SKYSIG, ...) and the
        simulator's truth (``SIM_KIND``, ``SIM_SNR``, ``SIM_MAG``, ``SIM_HOST``,
        ``SIM_CONV_SEARCH``: 1 where the subtraction convolved the search image).
    masked : numpy.ndarray
        bool ``(n, size, size)``: pixels masked by a CCD edge.
    survey : SurveyProfile
        The survey profile the stamps were made with.
    """

    pixels: np.ndarray
    labels: np.ndarray
    kinds: np.ndarray
    features: pd.DataFrame
    masked: np.ndarray
    survey: SurveyProfile = field(default=DES)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class SimulationSummary:
    """What :func:`simulate` wrote. ``files_written`` counts stamp files or tar archives (not the CSV)."""

    out: Path
    season: str
    nights: list[int]
    n_stamps: int
    n_real: int
    n_artifact: int
    fmt: str
    labels_csv: Path
    files_written: int
    seconds: float
    real_fraction: float = TRAINING_REAL_FRACTION


# --------------------------------------------------------------------------- stamps in memory


def simulate_stamps(
    n: int,
    rng: np.random.Generator,
    *,
    size: int | None = None,
    real_fraction: float = TRAINING_REAL_FRACTION,
    survey: str | SurveyProfile = "des",
) -> SimulatedBatch:
    """Render ``n`` stamps of a survey in memory.

    Parameters
    ----------
    n : int
        Number of stamps (0 allowed).
    rng : numpy.random.Generator
        Source of randomness; the result is a pure function of its state and the arguments.
    size : int, optional
        Stamp edge in pixels, at least 16; default: the survey's (DES 51, ZTF 63, Rubin 31).
    real_fraction : float
        Expected fraction of real transients, in [0, 1]: 0.5 (the training mix) by default;
        :data:`STREAM_REAL_FRACTION` for a survey's raw stream.
    survey : str or SurveyProfile
        ``"des"`` (default), ``"ztf"``, ``"rubin"`` or a :class:`SurveyProfile`.

    Returns
    -------
    SimulatedBatch

    Raises
    ------
    SimulationError
        Bad ``n``, ``size``, ``real_fraction`` or ``survey``.
    """
    profile = get_profile(survey)
    _check_int("n", n, 0)
    size = profile.stamp_size if size is None else size
    _check_int("size", size, 16)
    if size > 512:
        raise SimulationError(f"size={size} is unreasonably large for a stamp (at most 512)")
    if not isinstance(rng, np.random.Generator):
        raise SimulationError(f"rng must be a numpy.random.Generator, not {type(rng).__name__}")
    frac = _check_fraction(real_fraction)
    pixels, labels, kinds, feats, masked = render(int(n), rng, int(size), frac, profile)
    feats["CCDID"] = rng.integers(1, profile.n_ccds + 1, int(n)).astype(np.int16)
    return SimulatedBatch(
        pixels=pixels, labels=labels, kinds=kinds, features=feats, masked=masked, survey=profile
    )


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise SimulationError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise SimulationError(f"{name} must be >= {minimum}, got {value}")


def _check_fraction(value: object) -> float:
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    if not (ok and 0.0 <= float(value) <= 1.0):  # type: ignore[arg-type]
        raise SimulationError(f"real_fraction must be a number in [0, 1], got {value!r}")
    return float(value)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- simulate


def _nights(first: int, count: int) -> list[int]:
    try:
        d0 = _dt.datetime.strptime(str(first), "%Y%m%d").date()
    except ValueError:
        raise SimulationError(f"first_night={first!r} is not a valid YYYYMMDD date") from None
    return [int((d0 + _dt.timedelta(days=i)).strftime("%Y%m%d")) for i in range(count)]


def _season_index(season: str) -> int:
    return 0 if season == "SV" else int(season[1:])


def _csv_columns(feats: pd.DataFrame) -> list[str]:
    first = ["BAND", "CCDID", "MAG", "SNR"]
    return ["ID", "OBJECT_TYPE", *first, *[c for c in feats.columns if c not in first]]


def simulate(
    out: str | Path,
    *,
    season: str = "Y1",
    nights: int = 2,
    stamps_per_night: int = 1000,
    fmt: str = "gif",
    seed: int = 0,
    size: int = DES.stamp_size,
    first_night: int | None = None,
    stamps_per_archive: int = 1000,
    tar_member_format: str = "gif",
    real_fraction: float = TRAINING_REAL_FRACTION,
    progress: bool = False,
) -> SimulationSummary:
    """Simulate whole nights of stamps on disk in the autoscan layout, plus the labels CSV.

    Parameters
    ----------
    out : path
        Root of the raw tree (created if missing). A second season may be simulated into it: its
        CSV rows are appended.
    season : str
        ``SV`` or ``Y1`` ... ``Y6`` (any ``Y<k>`` when ``first_night`` is given).
    nights : int
        Number of consecutive nights.
    stamps_per_night : int
        Stamps per night.
    fmt : {"gif", "fits", "tar"}
        Loose gif or fits files under ``ccd<NN>`` folders, or tar archives of ``tar_member_format``
        members.
    seed : int
        Seed; each night draws from its own generator seeded by ``(seed, season, night)``.
    size : int
        Stamp edge in pixels.
    first_night : int, optional
        ``YYYYMMDD`` of the first night; default: the season's start.
    stamps_per_archive : int
        Stamps per tar archive (fmt "tar").
    tar_member_format : {"gif", "fits"}
        Format of the tar members.
    real_fraction : float
        Expected fraction of real transients, in [0, 1]: 0.5 (autoscan's training mix) by
        default; :data:`STREAM_REAL_FRACTION` (0.06) for a night like a survey's raw stream.
    progress : bool
        Print one line per night to stderr.

    Returns
    -------
    SimulationSummary

    Raises
    ------
    SimulationError
        Bad arguments (unknown season or format, nights < 1, ...) or an existing CSV with other
        columns.
    """
    t0 = time.perf_counter()
    if not isinstance(season, str) or not SEASON_RE.match(season):
        raise SimulationError(f"unknown season {season!r}; expected SV or Y1 ... Y6")
    if first_night is None:
        if season not in SEASON_FIRST_NIGHT:
            raise SimulationError(
                f"unknown season {season!r}: give first_night (known: {sorted(SEASON_FIRST_NIGHT)})"
            )
        first_night = SEASON_FIRST_NIGHT[season]
    _check_int("nights", nights, 1)
    _check_int("stamps_per_night", stamps_per_night, 1)
    _check_int("seed", seed, 0)
    _check_int("size", size, 16)
    _check_int("stamps_per_archive", stamps_per_archive, 1)
    _check_int("first_night", first_night, 0)
    frac = _check_fraction(real_fraction)
    if fmt not in FORMATS:
        raise SimulationError(f"unknown fmt {fmt!r}; expected one of {FORMATS}")
    if tar_member_format not in ("gif", "fits"):
        raise SimulationError(
            f"tar_member_format must be 'gif' or 'fits', got {tar_member_format!r}"
        )
    if nights * stamps_per_night >= ID_SEASON_STRIDE:
        raise SimulationError(
            f"nights * stamps_per_night must stay below {ID_SEASON_STRIDE:,} (IDs of one season)"
        )
    night_list = _nights(first_night, nights)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SimulationError(f"cannot create output folder {out}: {exc.strerror}") from None
    csv_path = out / LABELS_CSV
    s_idx = _season_index(season)
    # Check (or start) the CSV before any stamp is written: a refusal leaves OUT untouched.
    columns = _csv_columns(simulate_stamps(0, np.random.default_rng(0), size=size).features)
    id_range = ((s_idx + 1) * ID_SEASON_STRIDE, (s_idx + 2) * ID_SEASON_STRIDE)
    _start_csv(csv_path, columns, season, seed, night_list, id_range, frac)
    n_real = n_total = files = 0
    for ni, night in enumerate(night_list):
        rng = np.random.default_rng([seed, s_idx, night])
        ccds = np.sort(rng.choice(np.arange(1, 63), _CCDS_PER_NIGHT, replace=False))
        night_dir = out / season / str(night)
        writer = NightWriter(night_dir, night, fmt, tar_member_format, stamps_per_archive)
        base = (s_idx + 1) * ID_SEASON_STRIDE + ni * stamps_per_night
        mjd = _mjd(night)
        for start in range(0, stamps_per_night, _CHUNK):
            m = min(_CHUNK, stamps_per_night - start)
            batch = simulate_stamps(m, rng, size=size, real_fraction=frac)
            ids = base + start + np.arange(m, dtype=np.int64)
            ccd = ccds[rng.integers(0, len(ccds), m)]
            feats = batch.features
            feats["CCDID"] = ccd.astype(np.int16)
            # Each CCD of a night stands for one exposure: a stable exposure number per CCD.
            expnum = 100000 + s_idx * 50000 + ni * 100 + ccd
            writer.write(batch, ids, ccd, expnum, mjd, season)
            frame = feats.copy()
            frame.insert(0, "OBJECT_TYPE", label_to_object_type(batch.labels))
            frame.insert(0, "ID", ids)
            frame = frame[columns]
            frame.to_csv(csv_path, mode="a", header=False, index=False, float_format="%.6g")
            n_real += int(batch.labels.sum())
            n_total += m
        files += writer.close()
        provenance.write_marker(
            out / season, [str(night)], version=__version__, seed=seed, survey="des", season=season
        )
        if progress:
            print(f"simulated {season}/{night}: {stamps_per_night} stamps", file=sys.stderr)
    return SimulationSummary(
        out=out,
        season=season,
        nights=night_list,
        n_stamps=n_total,
        n_real=n_real,
        n_artifact=n_total - n_real,
        fmt=fmt,
        labels_csv=csv_path,
        files_written=files,
        seconds=time.perf_counter() - t0,
        real_fraction=frac,
    )


def _start_csv(
    path: Path,
    columns: list[str],
    season: str,
    seed: int,
    nights: list[int],
    id_range: tuple[int, int],
    real_fraction: float,
) -> None:
    """Write the comment lines and header of a new CSV, or check that an existing one fits.

    An existing CSV must have the same columns and no row of this season yet (its IDs would
    collide with the new stamps').
    """
    header = ",".join(columns)
    if path.exists():
        with open(path, encoding="ascii", errors="replace") as f:
            line = next((ln for ln in f if not ln.startswith("#")), None)
        if line is None:
            raise SimulationError(f"{path} exists but holds no header line")
        if line.rstrip("\n") != header:
            raise SimulationError(f"{path} exists with other columns; simulate into another folder")
        ids = pd.read_csv(path, comment="#", usecols=["ID"])["ID"].to_numpy()
        if ((ids >= id_range[0]) & (ids < id_range[1])).any():
            raise SimulationError(
                f"season {season} was already simulated into {path.parent}; "
                "simulate into another folder (or delete it first)"
            )
        return
    d = _dt.datetime.strptime(str(nights[0]), "%Y%m%d").date().isoformat()
    with open(path, "w", encoding="ascii") as f:
        f.write(
            "# autoscan_features.3.csv: SIMULATED stamps from the s2v-batch simulator, not DES data\n"
        )
        f.write(
            f"# season={season} seed={seed} nights={nights[0]}..{nights[-1]} date={d} "
            f"real_fraction={real_fraction:g}\n"
        )
        f.write(
            "# OBJECT_TYPE: 0 = real, 1 = artifact (autoscan coding); SIM_* columns are truth\n"
        )
        f.write(header + "\n")


def _mjd(night: int) -> float:
    d = _dt.datetime.strptime(str(night), "%Y%m%d")
    # Local evening at CTIO is about 01:00-09:00 UTC the next day: MJD at 03:00 UTC.
    return float((d - _dt.datetime(1858, 11, 17)).days + 1 + 0.125)
