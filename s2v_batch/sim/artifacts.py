"""Artifact kinds of the stamp simulator that are not galaxy residuals: star dipoles, saturated
stars, cosmic rays, bad columns and noise spikes.

Each function adds its kind to the stamps ``idx`` of a :class:`s2v_batch.sim.physics.Scene` in
place (the search, template and matched-template signals, the search-only ``sharp`` signal, the
template noise dips, the saturation masks). Galaxy dipoles and bad subtractions are made with the
galaxies in :mod:`s2v_batch.sim.physics`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from s2v_batch.sim.noise import col

if TYPE_CHECKING:
    from s2v_batch.sim.scene import Scene

_F32 = np.float32


def star_dipoles(sc: Scene, rng, idx, x0, y0, dx, dy, det_snr) -> None:
    """A star misregistered by ``(dx, dy)`` between search and template: a +/- pair in diff."""
    if not idx.size:
        return
    flux = sc.flux(rng.uniform(16.0, 21.0, idx.size), idx)
    px, py = x0[idx], y0[idx]
    u_s = sc.point(idx, px + dx[idx], py + dy[idx])
    u_m = col(rng.normal(1.0, 0.02, idx.size)) * sc.point(idx, px, py)
    # A detection: at least the S/N that passed the threshold.
    snr1 = sc.snr(idx, u_s - u_m)
    flux = np.maximum(flux, det_snr[idx] / np.maximum(snr1, 1e-9))
    sc.srch[idx] += col(flux) * u_s
    sc.match[idx] += col(flux) * u_m
    sc.temp[idx] += col(flux) * sc.point(idx, px, py, template=True)


def _bleed(img: np.ndarray, sat: np.ndarray, yc: np.ndarray, sy: np.ndarray):
    """Saturate at ``sat`` with charge bleeding up and down the columns (flat-topped trails).

    The charge above saturation in a column fills ``excess / sat`` more pixels of that column,
    split evenly above and below the star's row ``yc``. Returns the image and the mask of
    saturated pixels (they stay at ``sat`` exactly, noise or not).
    """
    s = col(sat)
    over = img - s
    excess = np.clip(over, 0, None).sum(axis=1)  # (m, x)
    nsat = (over > 0).sum(axis=1)
    half = 0.5 * (nsat + excess / s[:, 0])
    trail = (np.abs(sy - col(yc)) <= half[:, None, :]) & (excess[:, None, :] > 0)
    trail |= over >= 0
    return np.where(trail, s, img), trail


def bright_stars(sc: Scene, rng, idx) -> None:
    """Saturated stars near the detection, bleeding along columns; the matching misses a little."""
    m = idx.size
    if not m:
        return
    gr, p = sc.gr, sc.p
    flux = col(sc.flux(rng.uniform(*p.bright_star_mag, m), idx))
    px, py = rng.uniform(-4, 4, m), rng.uniform(-4, 4, m)
    sat = np.clip(rng.uniform(*p.saturation, m) - sc.cond["sky"][idx], 5000, None)
    s_img = flux * sc.point(idx, px, py)
    t_img = flux * sc.point(idx, px, py, template=True)
    # The matched template misses the core and wings of a bright star by a few per cent.
    f, b = col(sc.fwhm_px[idx]), col(sc.beta[idx])
    m_img = (flux * col(rng.normal(1.0, 0.04, m))) * sc.moffat(
        gr.sx - col(px + rng.normal(0, 0.08, m)),
        gr.sy - col(py + rng.normal(0, 0.08, m)),
        f * col(1.0 + rng.uniform(-0.1, 0.1, m)),
        b,
    )
    sat_t = sat * rng.uniform(0.7, 1.6, m)
    s_img, sc.sat_mask_s[idx] = _bleed(s_img, sat, py, gr.sy)
    t_img, sc.sat_mask_t[idx] = _bleed(t_img, sat_t, py, gr.sy)
    m_img = _bleed(m_img, sat * rng.uniform(0.8, 1.25, m), py, gr.sy)[0]
    sc.srch[idx] += s_img
    sc.temp[idx] += t_img
    sc.match[idx] += m_img
    sc.sat_s[idx], sc.sat_t[idx] = sat, sat_t


def cosmic_rays(sc: Scene, rng, idx) -> None:
    """Sharp tracks of charge in the search image only, through the centre."""
    m, npts = idx.size, 12
    if not m:
        return
    S, c = sc.gr.size, sc.gr.c
    length = rng.exponential(1.8, m)
    ang = rng.uniform(0, np.pi, m)
    # The track passes within half a pixel of the centre (the detection is on it).
    t = (np.linspace(0.0, 1.0, npts)[None, :] - rng.uniform(0, 1, m)[:, None]) * length[:, None]
    x0 = rng.uniform(-0.5, 0.5, m)[:, None]
    y0 = rng.uniform(-0.5, 0.5, m)[:, None]
    xs = np.clip(np.rint(x0 + t * np.cos(ang)[:, None]).astype(int) + c, 0, S - 1)
    ys = np.clip(np.rint(y0 + t * np.sin(ang)[:, None]).astype(int) + c, 0, S - 1)
    amp = (rng.uniform(8.0, 150.0, m) * sc.sig_s[idx])[:, None] * rng.uniform(0.5, 1.0, (m, npts))
    cr = np.zeros((m, S * S), _F32)
    # Several samples may fall in one pixel: keep the largest (one deposit per pixel).
    np.maximum.at(cr, (np.repeat(np.arange(m), npts), (ys * S + xs).ravel()), amp.ravel())
    cr = cr.reshape(m, S, S)
    spread = col(rng.uniform(0.0, 0.2, m))  # a little charge diffusion to the neighbours
    cr = cr + spread * (
        np.roll(cr, 1, 1) + np.roll(cr, -1, 1) + np.roll(cr, 1, 2) + np.roll(cr, -1, 2)
    )
    sc.sharp[idx] += cr


def bad_columns(sc: Scene, rng, idx) -> None:
    """Hot columns (or rows) through the centre, whole or from a charge trap to the edge."""
    m = idx.size
    if not m:
        return
    S, c = sc.gr.size, sc.gr.c
    is_row = col(rng.random(m) < 0.3)
    pos = col(rng.integers(-1, 2, m) + c)
    start = col(np.where(rng.random(m) < 0.5, 0, rng.integers(0, c - 1, m)))
    up = col(rng.random(m) < 0.5)
    amp = col(rng.uniform(3.0, 25.0, m) * sc.sig_s[idx])
    yy, xx = np.arange(S)[None, :, None], np.arange(S)[None, None, :]
    along = np.where(is_row, xx, yy)
    across = np.where(is_row, yy, xx)
    # A partial defect runs from a charge trap to the read-out edge.
    extent = np.where(up > 0, along >= start, along <= S - 1 - start)
    line = (across == pos) & extent
    prof = amp * (1.0 + 0.15 * rng.standard_normal((m, S, S), dtype=_F32))
    sc.sharp[idx] += np.where(line, prof, 0.0).astype(_F32)


def noise_spikes(sc: Scene, rng, idx) -> None:
    """Noise fluctuations just past the detection threshold, in the search image or the template.

    A template dip reaches the difference through the subtraction; it (or a search spike) is
    seen there smoothed by K when its image is the convolved one.
    """
    m = idx.size
    if not m:
        return
    gr = sc.gr
    w2 = col(rng.uniform(0.45, 1.0, m) ** 2)
    cx, cy = col(rng.uniform(-1.0, 1.0, m)), col(rng.uniform(-1.0, 1.0, m))
    r2 = (gr.sx - cx) ** 2 + (gr.sy - cy) ** 2
    in_temp = rng.random(m) < 0.4
    smoothed = col(np.where(sc.noise.conv_search[idx], ~in_temp, in_temp))
    # A fluctuation that just passed the detection threshold: PSF-fit S/N about 3.5-6.5.
    wd2 = np.where(smoothed, w2 + col(sc.var_k[idx]), w2)
    blob_d = np.exp(-0.5 * r2 / wd2) * np.where(smoothed, w2 / wd2, 1.0)
    resp = (blob_d * sc.psf_d[idx]).sum(axis=(1, 2)) / np.sqrt(sc.sum_p2[idx])
    amp = rng.uniform(3.5, 6.5, m) * sc.sig_d[idx] / resp
    blob = col(amp) * np.exp(-0.5 * r2 / w2)
    sc.sharp[idx] += np.where(col(in_temp), 0.0, blob).astype(_F32)
    sc.spike_t[idx] = np.where(col(in_temp), -blob, 0.0)
