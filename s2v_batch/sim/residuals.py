"""Subtraction residuals of stars: misregistered stars (dipoles), stars whose PSF was matched
too broad or too narrow (a core of one sign in a ring of the other), and close pairs of stars
misregistered together (two dipoles side by side).

These are the artifacts DES scanners see most on bright stars (the DES sample of Ayyar et al.
2022: a dark core in a bright ring, a double star's two dipoles, a star's dipole). Each function
adds its kind to the stamps ``idx`` of a :class:`s2v_batch.sim.scene.Scene` in place: the star in
the search image ``S_s``, in the template ``S_t`` and, with the subtraction's error, in the
matched template ``M`` (what the subtraction removes). Galaxy-core residuals (dipoles and bad
subtractions of galaxy nuclei) are made with the galaxies in :mod:`s2v_batch.sim.physics`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from s2v_batch.sim.noise import col
from s2v_batch.sim.scene import psf_ft

if TYPE_CHECKING:
    from s2v_batch.sim.scene import Scene

_F32 = np.float32


def star_dipoles(sc: Scene, rng, idx, x0, y0, dx, dy, det_snr) -> None:
    """A star misregistered by ``(dx, dy)`` between search and template: a +/- pair in diff."""
    if not idx.size:
        return
    px, py = x0[idx], y0[idx]
    u_s = sc.point(idx, px + dx[idx], py + dy[idx])
    u_m = col(rng.normal(1.0, 0.02, idx.size)) * sc.point(idx, px, py)
    # The star's flux gives its residual the S/N of a detection (counts of a flux-limited survey).
    snr1 = sc.snr(idx, u_s - u_m)
    flux = residual_snr(rng, det_snr[idx]) / np.maximum(snr1, 1e-9)
    sc.srch[idx] += col(flux) * u_s
    sc.match[idx] += col(flux) * u_m
    sc.temp[idx] += col(flux) * sc.point(idx, px, py, template=True)


def residual_snr(rng: np.random.Generator, det: np.ndarray) -> np.ndarray:
    """S/N of residuals that passed the threshold ``det``: N(>S/N) ~ (S/N)^-1.5, up to 100.

    The stars that leave residuals are counted like any sources of a flux-limited survey, so
    most residuals are near the threshold (median 1.6 x ``det``), as in the DES scanners'
    sample: stars plain in the search image, their residuals a few sigma in the difference.
    """
    u = 1.0 - rng.random(len(det))
    return np.minimum(det * u ** (-1.0 / 1.5), 100.0)


def peak_snr(sc: Scene, idx: np.ndarray, resid: np.ndarray) -> np.ndarray:
    """Best positive PSF-fit S/N anywhere in the difference that a search-side residual leaves.

    The survey's detection is the residual's positive part wherever it lies (a ring, a lobe),
    not only its value at the stamp's centre (:meth:`Scene.snr`).
    """
    gr = sc.gr
    # The PSF fit on diff seen from the search side (as Scene.snr): the PSF, and K twice where
    # the subtraction convolved the search image (the residual and the PSF model both carry K).
    kern = psf_ft(gr, sc.fwhm_px[idx], sc.beta[idx])
    cs = sc.noise.conv_search[idx]
    kern[cs] *= sc.noise.kft[idx[cs]] ** 2
    fit = gr.convolve(resid, kern)
    return fit.max(axis=(1, 2)) / np.sqrt(sc.sum_p2[idx]) / sc.sig_d[idx]


def _stars(sc: Scene, rng, idx, xs, ys, fr, dx, dy, width, scale, det) -> None:
    """Add groups of stars that the subtraction misses; brighten each group to a detection.

    ``xs, ys, fr``: ``(m, k)`` template positions and flux fractions of ``k`` stars a stamp;
    ``dx, dy``: the search image's misregistration; ``width, scale``: the matched template's
    PSF width and flux, relative to the search image's (1 = a perfect match); ``det``: the
    detection threshold (PSF-fit S/N) the residual's positive part passed.
    """
    m = idx.size
    gr = sc.gr
    fw, b = col(sc.fwhm_px[idx]), col(sc.beta[idx])
    u_s = np.zeros((m, gr.size, gr.size), _F32)
    u_m = np.zeros_like(u_s)
    u_t = np.zeros_like(u_s)
    for j in range(xs.shape[1]):
        f = col(fr[:, j])
        u_s += f * sc.point(idx, xs[:, j] + dx, ys[:, j] + dy)
        u_m += f * sc.moffat(gr.sx - col(xs[:, j]), gr.sy - col(ys[:, j]), fw * col(width), b)
        u_t += f * sc.point(idx, xs[:, j], ys[:, j], template=True)
    u_m *= col(scale)
    snr1 = peak_snr(sc, idx, u_s - u_m)
    flux = residual_snr(rng, det) / np.maximum(snr1, 1e-9)
    # A star no brighter than the brightest that does not saturate.
    flux = np.minimum(flux, sc.flux(np.full(m, sc.p.bright_star_mag[1]), idx))
    sc.srch[idx] += col(flux) * u_s
    sc.match[idx] += col(flux) * u_m
    sc.temp[idx] += col(flux) * u_t


def psf_mismatch_stars(sc: Scene, rng, idx, det_snr) -> None:
    """A star whose PSF the subtraction matched too narrow or too broad, with a flux error.

    Too narrow (half of them): the matched template overshoots the core, leaving a dark core in
    a bright ring; too broad: a bright core in a dark ring. A flux-scale error of a few per cent
    tips the balance between core and ring.
    """
    m = idx.size
    if not m:
        return
    narrow = rng.random(m) < 0.5
    err = rng.uniform(0.04, 0.15, m)
    width = np.where(narrow, 1.0 - err, 1.0 + err)
    scale = 1.0 + rng.normal(0.0, 0.03, m)
    # The detection sits on the star (a ring's detection within a FWHM of it).
    xs = rng.uniform(-0.5, 0.5, (m, 1))
    ys = rng.uniform(-0.5, 0.5, (m, 1))
    shift = rng.normal(0.0, 0.03, (2, m)) / sc.p.pixel_scale  # a trace of misregistration
    _stars(sc, rng, idx, xs, ys, np.ones((m, 1)), shift[0], shift[1], width, scale, det_snr[idx])


def double_stars(sc: Scene, rng, idx, det_snr) -> None:
    """Two stars 0.7-2 FWHM apart, misregistered together: two dipoles side by side.

    The matching also misses their PSF by a few per cent (a blend is hard to match), and the
    fainter star has 30-100% of the brighter one's flux.
    """
    m = idx.size
    if not m:
        return
    sep = rng.uniform(0.7, 2.0, m) * sc.fwhm_px[idx]
    phi = rng.uniform(0, 2 * np.pi, m)
    # The brighter star near the centre (the detection), the other beside it.
    x1, y1 = rng.uniform(-0.7, 0.7, m), rng.uniform(-0.7, 0.7, m)
    xs = np.stack([x1, x1 + sep * np.cos(phi)], axis=1)
    ys = np.stack([y1, y1 + sep * np.sin(phi)], axis=1)
    ratio = rng.uniform(0.3, 1.0, m)
    fr = np.stack([1.0 / (1.0 + ratio), ratio / (1.0 + ratio)], axis=1)
    amp = rng.uniform(0.04, 0.3, m) / sc.p.pixel_scale
    ang = rng.uniform(0, 2 * np.pi, m)
    width = 1.0 + rng.uniform(-0.06, 0.06, m)
    scale = 1.0 + rng.normal(0.0, 0.02, m)
    dx, dy = amp * np.cos(ang), amp * np.sin(ang)
    _stars(sc, rng, idx, xs, ys, fr, dx, dy, width, scale, det_snr[idx])
