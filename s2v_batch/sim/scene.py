"""One block of stamps being rendered (:class:`Scene`) and the point-spread function it draws with.

The physics of the simulator (:mod:`s2v_batch.sim.physics`) and its artifact kinds
(:mod:`s2v_batch.sim.artifacts`) both add their signals to a scene.
"""

from __future__ import annotations

import numpy as np

from s2v_batch.sim.noise import Grids, NoiseModel, col, rfft2
from s2v_batch.sim.survey import SurveyProfile, draw_conditions

_F32 = np.float32


def moffat(dx: np.ndarray, dy: np.ndarray, fwhm: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Unit-flux Moffat profile sampled at offsets ``dx, dy`` (pixels; broadcast over the batch)."""
    alpha2 = (fwhm / (2.0 * np.sqrt(np.power(2.0, 1.0 / beta) - 1.0))) ** 2
    norm = ((beta - 1.0) / (np.pi * alpha2)).astype(_F32)
    return norm * np.power(1.0 + (dx * dx + dy * dy) / alpha2.astype(_F32), -beta.astype(_F32))


def psf_ft(gr: Grids, fwhm: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """FT of a unit-sum Moffat centred on the grid origin (wrapped), for circular convolution."""
    k = moffat(gr.wx, gr.wy, col(fwhm), col(beta))
    k /= k.sum(axis=(1, 2), keepdims=True)
    return rfft2(k)


def mag_to_flux(mag, zp):
    return 10.0 ** (-0.4 * (np.asarray(mag) - zp))


class Scene:
    """One block of stamps being rendered: conditions, PSFs, noise model and signal images."""

    def __init__(self, n: int, rng: np.random.Generator, size: int, p: SurveyProfile):
        self.n, self.p, self.gr = n, p, Grids(size)
        gr = self.gr
        self.cond = cond = draw_conditions(n, rng, p)
        self.fwhm_px = cond["fwhm"] / p.pixel_scale
        self.fwhm_t_px = cond["fwhm_t"] / p.pixel_scale
        self.beta, self.beta_t, self.zp = cond["beta"], cond["beta_t"], cond["zp"]
        self.sig_s = cond["skysig"]
        # The matching kernel takes the sharper image's seeing to the other's.
        var_k = np.abs(self.fwhm_px**2 - self.fwhm_t_px**2) / 2.3548**2
        self.var_k = np.clip(var_k, 0.05, None)
        self.noise = NoiseModel(gr, rng, cond, self.var_k, p)
        self.sig_d = self.noise.sig_d
        psf_c = moffat(gr.sx, gr.sy, col(self.fwhm_px), col(self.beta))  # search PSF at centre
        self.psf_d = self.noise.to_diff(psf_c, search=True)  # a new point source in diff
        self.sum_p2 = (self.psf_d.astype(np.float64) ** 2).sum(axis=(1, 2))
        # The PSF fit on diff, seen from the search side (K is symmetric): S/N of residuals.
        self.det_filter = self.noise.to_diff(self.psf_d, search=True)
        shape = (n, size, size)
        self.srch = np.zeros(shape, _F32)  # search signal S_s
        self.temp = np.zeros(shape, _F32)  # template signal S_t
        self.match = np.zeros(shape, _F32)  # matched template signal M
        self.sharp = np.zeros(shape, _F32)  # search-only signal not seen through the PSF
        self.spike_t = np.zeros(shape, _F32)  # template-noise dips: they reach diff
        self.sat_mask_s = np.zeros(shape, bool)  # saturated pixels stay at the level
        self.sat_mask_t = np.zeros(shape, bool)
        self.sat_s = np.zeros(n, _F32)
        self.sat_t = np.zeros(n, _F32)

    moffat = staticmethod(moffat)

    def flux(self, mag: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """ADU of sources of magnitude ``mag`` in the stamps ``idx``."""
        return mag_to_flux(mag, self.zp[idx])

    def snr(self, idx: np.ndarray, resid: np.ndarray) -> np.ndarray:
        """PSF-fit S/N at the centre of the difference that a search-side residual leaves."""
        flt = self.det_filter[idx]
        return (resid * flt).sum(axis=(1, 2)) / np.sqrt(self.sum_p2[idx]) / self.sig_d[idx]

    def point(self, idx, x, y, template: bool = False) -> np.ndarray:
        """Unit-flux PSFs of the search (or template) image at ``(x, y)`` for stamps ``idx``."""
        gr = self.gr
        fw, b = (self.fwhm_t_px, self.beta_t) if template else (self.fwhm_px, self.beta)
        return moffat(gr.sx - col(x), gr.sy - col(y), col(fw[idx]), col(b[idx]))
