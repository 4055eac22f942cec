"""Survey profiles of the stamp simulator: the instrument and site numbers its physics needs.

One frozen :class:`SurveyProfile` holds everything survey-specific (pixel scale, stamp size,
bands, sky, zero point, detector noise, seeing of the search images and of the template coadds,
saturation, the resampling kernel); the physics in :mod:`s2v_batch.sim.physics` is the same for
every survey. Three profiles ship:

- :data:`DES` (the default): DECam on the Blanco 4 m, 0.263"/px, 51x51 stamps, seeing 0.8-2".
- :data:`ZTF`: the ZTF camera on the Palomar 48-inch, 1.01"/px, 63x63 cut-outs, seeing ~2".
- :data:`RUBIN`: LSSTCam on Rubin, 0.2"/px, seeing ~0.8".

The DES numbers are the ones the simulator was built and checked with (its correlated-noise
statistics are tuned to measured DES stamps, docs/SIMULATOR.md). The ZTF and Rubin numbers are
approximate values from the instruments' public descriptions, not fitted to their stamps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

__all__ = ["DES", "PROFILES", "RUBIN", "ZTF", "SimulationError", "SurveyProfile", "get_profile"]


class SimulationError(ValueError):
    """Bad arguments to the simulator (the message says which and why)."""


def _range(name: str, value: object, low: float = 0.0) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise SimulationError(f"survey profile: {name} must be a (low, high) pair") from None
    if not (np.isfinite(a) and np.isfinite(b) and low <= a <= b):
        raise SimulationError(f"survey profile: {name} must satisfy {low} <= low <= high")
    return a, b


@dataclass(frozen=True)
class SurveyProfile:
    """The survey-specific numbers of the stamp simulator (validated when made).

    Attributes
    ----------
    name : str
        Short name (``des``, ``ztf``, ``rubin``).
    telescope, instrument : str
        For FITS headers.
    pixel_scale : float
        Arcsec per pixel.
    stamp_size : int
        Default stamp edge in pixels.
    bands : tuple of str
        Filters, drawn uniformly per stamp.
    sky_mag : tuple of float
        Dark-sky surface brightness per band, mag / arcsec^2.
    sky_brightening : float
        Moon and twilight brighten the sky by up to this many magnitudes (uniform).
    zero_point, zero_point_scatter : float
        Magnitude of 1 ADU in a search exposure, and its scatter between exposures.
    gain, read_noise : (float, float)
        Ranges of e-/ADU and read noise (e-), uniform.
    seeing : (float, float)
        Search-image FWHM range, arcsec: ``low + (high - low) * Beta(2, 3)``, skewed to good seeing.
    template_seeing : (float, float)
        FWHM range of the template coadd, arcsec (uniform). Where a search image is sharper than
        its template, the subtraction convolves the search image instead of the template.
    template_noise : (float, float)
        Template sky noise as a fraction of the search image's (the coadd is deeper).
    moffat_beta : (float, float)
        Range of the Moffat PSF's beta.
    saturation : (float, float)
        Saturation level range, ADU above the sky.
    bright_star_mag : (float, float)
        Magnitudes of the saturating stars that make ``bright_star`` artifacts.
    resample_order : int
        Order of the Lanczos kernel that resamples images onto a common pixel grid (SWarp's
        default LANCZOS3): the source of the noise correlation of search images and templates.
    search_resampled : float
        Share of the search images that are resampled (coadds of several exposures, or remapped
        onto the template's grid); the template is always resampled onto the search image's.
    n_ccds : int
        Detectors of the camera (CCDID is drawn from 1..n_ccds).
    """

    name: str
    telescope: str
    instrument: str
    pixel_scale: float
    stamp_size: int
    bands: tuple[str, ...]
    sky_mag: tuple[float, ...]
    sky_brightening: float
    zero_point: float
    zero_point_scatter: float
    gain: tuple[float, float]
    read_noise: tuple[float, float]
    seeing: tuple[float, float]
    template_seeing: tuple[float, float]
    template_noise: tuple[float, float]
    moffat_beta: tuple[float, float]
    saturation: tuple[float, float]
    bright_star_mag: tuple[float, float]
    resample_order: int
    search_resampled: float
    n_ccds: int

    def __post_init__(self) -> None:
        if not (isinstance(self.name, str) and self.name.isidentifier()):
            raise SimulationError(f"survey profile: bad name {self.name!r}")
        if not (np.isfinite(self.pixel_scale) and 0.01 <= self.pixel_scale <= 10):
            raise SimulationError("survey profile: pixel_scale must be 0.01-10 arcsec per pixel")
        size = self.stamp_size
        if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 512:
            raise SimulationError("survey profile: stamp_size must be an int in 16..512")
        if not self.bands or len(self.bands) != len(self.sky_mag):
            raise SimulationError("survey profile: one sky_mag per band is needed")
        for name in ("gain", "read_noise", "seeing", "template_seeing", "template_noise"):
            object.__setattr__(self, name, _range(name, getattr(self, name), 1e-3))
        object.__setattr__(self, "moffat_beta", _range("moffat_beta", self.moffat_beta, 1.5))
        object.__setattr__(self, "saturation", _range("saturation", self.saturation, 100.0))
        object.__setattr__(self, "bright_star_mag", _range("bright_star_mag", self.bright_star_mag))
        if self.template_noise[1] >= 1.5:
            raise SimulationError("survey profile: template_noise is a fraction (below 1.5)")
        if self.resample_order not in (2, 3, 4, 5):
            raise SimulationError("survey profile: resample_order must be 2, 3, 4 or 5")
        if not 0.0 <= self.search_resampled <= 1.0:
            raise SimulationError("survey profile: search_resampled must be in [0, 1]")
        if not (isinstance(self.n_ccds, int) and self.n_ccds >= 1):
            raise SimulationError("survey profile: n_ccds must be a positive int")

    def replace(self, **changes: object) -> SurveyProfile:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


#: DECam (DES), the default. Templates are coadds of a few good-seeing exposures (noise 0.3-0.7
#: of a search image's), sharper than ~60% of the search images (the others get convolved);
#: 40% of the search images are resampled (coadds of several exposures). The noise-texture
#: numbers (template seeing and depth, the resampled share) are tuned so that the simulated
#: stamps' noise autocorrelation matches measured DES stamps (docs/SIMULATOR.md).
DES = SurveyProfile(
    name="des",
    telescope="CTIO 4.0-m telescope",
    instrument="DECam",
    pixel_scale=0.263,
    stamp_size=51,
    bands=("g", "r", "i", "z"),
    sky_mag=(22.1, 21.1, 20.3, 19.1),
    sky_brightening=1.3,
    zero_point=30.0,
    zero_point_scatter=0.08,
    gain=(3.8, 4.8),
    read_noise=(5.0, 8.0),
    seeing=(0.8, 2.0),
    template_seeing=(0.9, 1.5),
    template_noise=(0.3, 0.7),
    moffat_beta=(2.5, 4.5),
    saturation=(25000.0, 45000.0),
    bright_star_mag=(12.0, 15.5),
    resample_order=3,
    search_resampled=0.4,
    n_ccds=62,
)

#: ZTF (Palomar 48-inch): 1.01"/px, 63x63 alert cut-outs, median seeing about 2" FWHM,
#: 30 s exposures (zero point ~26.3 in DN), reference images coadded from 15-40 exposures.
ZTF = SurveyProfile(
    name="ztf",
    telescope="Palomar 48-inch Samuel Oschin",
    instrument="ZTF",
    pixel_scale=1.01,
    stamp_size=63,
    bands=("g", "r", "i"),
    sky_mag=(21.6, 20.9, 20.2),
    sky_brightening=1.5,
    zero_point=26.3,
    zero_point_scatter=0.1,
    gain=(5.8, 6.4),
    read_noise=(8.0, 11.0),
    seeing=(1.4, 3.2),
    template_seeing=(1.6, 2.3),
    template_noise=(0.15, 0.35),
    moffat_beta=(2.5, 4.5),
    saturation=(40000.0, 60000.0),
    bright_star_mag=(10.0, 13.5),
    resample_order=3,
    search_resampled=0.0,
    n_ccds=64,
)

#: Rubin (LSSTCam): 0.2"/px, median seeing about 0.8", 30 s visits; the alert cut-outs vary in
#: size (31x31 here).
RUBIN = SurveyProfile(
    name="rubin",
    telescope="Simonyi Survey Telescope",
    instrument="LSSTCam",
    pixel_scale=0.2,
    stamp_size=31,
    bands=("u", "g", "r", "i", "z", "y"),
    sky_mag=(22.9, 22.3, 21.2, 20.5, 19.6, 18.6),
    sky_brightening=1.3,
    zero_point=28.0,
    zero_point_scatter=0.05,
    gain=(1.5, 1.8),
    read_noise=(5.0, 9.0),
    seeing=(0.5, 1.3),
    template_seeing=(0.55, 0.8),
    template_noise=(0.2, 0.5),
    moffat_beta=(2.5, 4.5),
    saturation=(50000.0, 65000.0),
    bright_star_mag=(13.5, 16.5),
    resample_order=3,
    search_resampled=0.0,
    n_ccds=189,
)

PROFILES: dict[str, SurveyProfile] = {p.name: p for p in (DES, ZTF, RUBIN)}


def get_profile(survey: str | SurveyProfile) -> SurveyProfile:
    """The profile named ``survey`` (``des``, ``ztf``, ``rubin``), or ``survey`` itself.

    Raises
    ------
    SimulationError
        An unknown name or another type.
    """
    if isinstance(survey, SurveyProfile):
        return survey
    if isinstance(survey, str) and survey.lower() in PROFILES:
        return PROFILES[survey.lower()]
    raise SimulationError(f"unknown survey {survey!r}; expected one of {sorted(PROFILES)}")


def draw_conditions(n: int, rng: np.random.Generator, p: SurveyProfile) -> dict[str, np.ndarray]:
    """Observing conditions of ``n`` stamps: band, zero point, gain, sky, noise, seeing.

    Sky noise per pixel in ADU, seeing FWHM in arcsec; ``conv_search`` marks the stamps whose
    search image is sharper than the template (the subtraction then convolves the search image).
    """
    band = rng.integers(0, len(p.bands), n)
    zp = p.zero_point + rng.normal(0.0, p.zero_point_scatter, n)
    gain = rng.uniform(*p.gain, n)
    rdnoise = rng.uniform(*p.read_noise, n)  # electrons
    sky_mag = np.asarray(p.sky_mag)[band] - rng.uniform(0.0, p.sky_brightening, n)
    sky = 10.0 ** (-0.4 * (sky_mag - zp)) * p.pixel_scale**2  # ADU / pixel
    skysig = np.sqrt(sky / gain + (rdnoise / gain) ** 2)
    lo, hi = p.seeing
    fwhm = lo + (hi - lo) * rng.beta(2.0, 3.0, n)
    fwhm_t = rng.uniform(*p.template_seeing, n)
    return {
        "band": band,
        "zp": zp,
        "gain": gain,
        "rdnoise": rdnoise,
        "sky": sky,
        "skysig": skysig,
        "skysig_t": skysig * rng.uniform(*p.template_noise, n),
        "fwhm": fwhm,
        "fwhm_t": fwhm_t,
        "beta": rng.uniform(*p.moffat_beta, n),
        "beta_t": rng.uniform(*p.moffat_beta, n),
        "conv_search": fwhm < fwhm_t,
    }
