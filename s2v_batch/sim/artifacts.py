"""Artifact kinds of the stamp simulator that are defects rather than subtraction residuals:
saturated stars, cosmic rays, hot pixels, bad columns, CCD edges, satellite trails, ghosts and
noise spikes.

Each function adds its kind to the stamps ``idx`` of a :class:`s2v_batch.sim.scene.Scene` in
place (the search, template and matched-template signals, the search-only ``sharp`` signal, the
template noise dips, the saturation masks). Residuals of stars are
:mod:`s2v_batch.sim.residuals`; galaxy dipoles and bad subtractions are made with the galaxies
in :mod:`s2v_batch.sim.physics`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from s2v_batch.sim.noise import col

if TYPE_CHECKING:
    from s2v_batch.sim.scene import Scene

_F32 = np.float32
#: Share of the noise spikes that ride on column-structured noise.
COLUMN_NOISE_SHARE = 0.35


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
    # Some fluctuations ride on column-structured noise (readout pattern, a warm column band):
    # per-column offsets and a broader band beside the detection, in the same image.
    cols = np.flatnonzero(rng.random(m) < COLUMN_NOISE_SHARE)
    if cols.size:
        S = gr.size
        lvl = rng.uniform(0.4, 1.2, cols.size) * np.where(
            in_temp[cols], sc.cond["skysig_t"][idx[cols]], sc.sig_s[idx[cols]]
        )
        band_x = rng.uniform(3.0, 10.0, cols.size) * rng.choice([-1.0, 1.0], cols.size)
        band_w = rng.uniform(1.5, 5.0, cols.size)
        x = gr.sx[0, 0][None, :]
        pattern = rng.standard_normal((cols.size, S), dtype=_F32) * 0.4 + 1.0 * np.exp(
            -0.5 * ((x - band_x[:, None]) / band_w[:, None]) ** 2
        )
        blob[cols] += (lvl[:, None] * pattern)[:, None, :].astype(_F32)
    sc.sharp[idx] += np.where(col(in_temp), 0.0, blob).astype(_F32)
    sc.spike_t[idx] = np.where(col(in_temp), -blob, 0.0)


def hot_pixels(sc: Scene, rng, idx) -> None:
    """A hot pixel (or a 2x2 group) at the detection, in the search image only.

    Not seen through the PSF: one pixel (or four) stands far above its neighbours in the search
    image and in the difference (smoothed by K only where the search image was convolved).
    """
    m = idx.size
    if not m:
        return
    S, c = sc.gr.size, sc.gr.c
    x = c + rng.integers(-1, 2, m)
    y = c + rng.integers(-1, 2, m)
    amp = rng.uniform(8.0, 120.0, m) * sc.sig_s[idx]
    big = rng.random(m) < 0.3  # a 2x2 group (a hot pixel bleeding into its neighbours)
    img = np.zeros((m, S, S), _F32)
    rows = np.arange(m)
    img[rows, y, x] = amp
    b = rows[big]
    frac = rng.uniform(0.3, 0.9, (3, b.size))
    img[b, y[b] + 1, x[b]] = amp[b] * frac[0]
    img[b, y[b], x[b] + 1] = amp[b] * frac[1]
    img[b, y[b] + 1, x[b] + 1] = amp[b] * frac[2]
    sc.sharp[idx] += img


def satellite_trails(sc: Scene, rng, idx) -> None:
    """A satellite's trail: a straight, PSF-wide, bright line across the whole search image.

    The line passes within a pixel of the centre (the detection is on it); its cross-section is
    the search image's PSF (a point source smeared along the line); its brightness varies a
    little along it (a tumbling satellite glints).
    """
    m = idx.size
    if not m:
        return
    gr = sc.gr
    ang = col(rng.uniform(0, np.pi, m))
    off = col(rng.uniform(-1.0, 1.0, m))
    sig = col(sc.fwhm_px[idx] / 2.3548)
    # Distance of each pixel from the line, and the position along it.
    dist = gr.sx * np.sin(ang) - gr.sy * np.cos(ang) - off
    along = gr.sx * np.cos(ang) + gr.sy * np.sin(ang)
    peak = col(rng.uniform(6.0, 60.0, m) * sc.sig_s[idx])
    glint = 1.0 + col(rng.uniform(0.0, 0.3, m)) * np.sin(
        along / col(rng.uniform(3.0, 15.0, m)) + col(rng.uniform(0, 2 * np.pi, m))
    )
    sc.srch[idx] += (peak * glint * np.exp(-0.5 * (dist / sig) ** 2)).astype(_F32)


def ghosts(sc: Scene, rng, idx, det_snr) -> None:
    """A ghost: the out-of-focus pupil image of a bright star reflected in the optics.

    A diffuse disc or donut (central obscuration) of low surface brightness, 0.15-0.5 of the
    stamp in radius, in the search image only (the template, a coadd of other pointings, has it
    elsewhere or not at all). The stamp's centre lies on it; it is brightened to a PSF-fit S/N
    that passes the detection threshold, not more.
    """
    m = idx.size
    if not m:
        return
    gr = sc.gr
    S = gr.size
    r_out = rng.uniform(0.15, 0.5, m) * S
    r_in = r_out * np.where(rng.random(m) < 0.7, rng.uniform(0.3, 0.6, m), 0.0)
    # The centre (the detection) lies within the annulus.
    rc = rng.uniform(r_in, 0.9 * r_out)
    phi = rng.uniform(0, 2 * np.pi, m)
    cx, cy = col(rc * np.cos(phi)), col(rc * np.sin(phi))
    r = np.sqrt((gr.sx - cx) ** 2 + (gr.sy - cy) ** 2)
    soft = col(rng.uniform(0.8, 2.0, m))  # blurred edges
    outer = 1.0 / (1.0 + np.exp((r - col(r_out)) / soft))
    inner = np.where(col(r_in) > 0, 1.0 / (1.0 + np.exp((col(r_in) - r) / soft)), 1.0)
    img = (outer * inner).astype(_F32)
    snr1 = sc.snr(idx, img)
    amp = rng.uniform(1.0, 1.6, m) * det_snr[idx] / np.maximum(snr1, 1e-9)
    sc.sharp[idx] += col(amp) * img


def ccd_edges(sc: Scene, rng, idx) -> np.ndarray:
    """A detection next to a CCD edge: the stamp is masked beyond the edge, and the pixels along
    it glow (the flat field and bias roll off there), a glow that reaches the centre.

    Returns the mask ``(m, size, size)`` of the stamps ``idx`` (True beyond the edge); the
    caller sets those pixels to NaN with the other masks.
    """
    m = idx.size
    S, c = sc.gr.size, sc.gr.c
    if not m:
        return np.zeros((0, S, S), bool)
    dist = rng.integers(1, max(2, 7 * S // 51) + 1, m)  # centre to edge, pixels
    side = rng.integers(0, 4, m)
    yy, xx = np.arange(S)[None, :, None], np.arange(S)[None, None, :]
    edge = c - col(dist)  # first unmasked pixel index on the low side
    s3 = side[:, None, None]
    # Distance of each pixel from the edge (into the CCD); negative: beyond it (masked).
    into = np.select(
        [s3 == 0, s3 == 1, s3 == 2],
        [yy - edge, (S - 1 - yy) - edge, xx - edge],
        (S - 1 - xx) - edge,
    )
    mask = into < 0
    scale_len = col(rng.uniform(1.0, 3.5, m))
    at_centre = col(rng.uniform(3.0, 8.0, m) * sc.sig_s[idx])
    glow = np.minimum(at_centre * np.exp((col(dist) - into) / scale_len), 60.0 * col(sc.sig_s[idx]))
    sc.sharp[idx] += np.where(mask, 0.0, glow).astype(_F32)
    return mask
