"""Physics of the stamp simulator: the scene (galaxies, stars, transients) and the subtraction.

The model of a stamp (all in sky-subtracted ADU, vectorised over a batch, float32):

  srch = S_s + N_s,   temp = S_t + N_t,
  diff = A(S_s - M) + (N_s - K * N_t)     (A = 1: the template was convolved, the usual case)
  diff = A(S_s - M) + (K * N_s - N_t)     (A = K: the search image was sharper and convolved)

S_s / S_t: signal in the search / template image; M: the template signal after PSF matching,
expressed in the search image's PSF (what the subtraction removes: for a perfect subtraction the
static scene in the search PSF); K: the PSF-matching kernel (a Gaussian taking the sharper seeing
to the other). Static sources (host galaxies, field stars) are in S_s, S_t and M alike and vanish
from diff; a real transient is in S_s only; each artifact kind breaks the subtraction its own way
(residuals of stars: :mod:`s2v_batch.sim.residuals`; defects: :mod:`s2v_batch.sim.artifacts`;
galaxy-core residuals here). The noise, resampled and PSF-matched as surveys do, is
:mod:`s2v_batch.sim.noise`'s. Galaxies are Sersic profiles convolved with a Moffat PSF by FFT on a
padded grid; point sources are analytic Moffat profiles.

Real transients are detections of a flux-limited survey: their S/N follows Euclidean number
counts, N(>S/N) proportional to (S/N)^-1.5, down to the detection threshold (S/N 5), so most of
them are faint.

Survey-specific numbers come from a :class:`s2v_batch.sim.survey.SurveyProfile`; the public API
(``simulate_stamps`` and the writers) is in :mod:`s2v_batch.sim.simulator`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from s2v_batch.sim import artifacts as art
from s2v_batch.sim import residuals as res
from s2v_batch.sim.features import measure
from s2v_batch.sim.noise import Grids, col, rfft2
from s2v_batch.sim.scene import Scene, psf_ft
from s2v_batch.sim.survey import SurveyProfile

#: Artifact kinds, and their shares of a night's artifacts (docs/SIMULATOR.md: what each is and
#: where its share comes from). Subtraction residuals of stars and galaxy cores come first (56%):
#: they dominate what scanners reject; detector defects, optics and noise share the rest.
ARTIFACT_KINDS: tuple[str, ...] = (
    "dipole",  # a star or galaxy core misregistered: a +/- pair
    "psf_mismatch",  # a star's PSF matched too broad or too narrow: core and ring of two signs
    "double_star",  # two close stars misregistered together: two dipoles
    "bad_subtraction",  # a galaxy nucleus under a wrong kernel and flux scale
    "bright_star",  # a saturated star bleeding along columns
    "cosmic_ray",
    "hot_pixel",  # one pixel or a 2x2 group, search image only
    "bad_column",
    "ccd_edge",  # a glow beside a masked CCD edge
    "satellite_trail",  # a PSF-wide line across the whole search image
    "ghost",  # a diffuse disc or donut in the search image
    "noise_spike",  # a fluctuation past the threshold (some on column-structured noise)
)
ARTIFACT_WEIGHTS = np.array(
    [0.20, 0.16, 0.06, 0.14, 0.06, 0.09, 0.03, 0.05, 0.03, 0.02, 0.02, 0.14]
)
KINDS: tuple[str, ...] = ("real", *ARTIFACT_KINDS)
#: Fraction of the other stamps partly masked by a CCD edge (the edge is not their detection).
MASKED_FRACTION = 0.03
#: True PSF-fit S/N of the faintest real detection (the detection threshold).
DETECTION_SNR = 5.0
#: Slope of the real detections' cumulative counts: N(>S/N) ~ (S/N)^-COUNTS_SLOPE (Euclidean).
COUNTS_SLOPE = 1.5
#: Brightest real detection drawn (S/N); a cap on the power law's far tail.
MAX_SNR = 1000.0
_BLOCK = 2048  # stamps rendered at once: bounds the FFT buffers whatever n is asked for
_F32 = np.float32


def euclidean_snr(rng: np.random.Generator, m: int) -> np.ndarray:
    """``m`` S/N values with N(>S/N) ~ (S/N)^-1.5 above :data:`DETECTION_SNR` (inverse CDF)."""
    u = 1.0 - rng.random(m)  # in (0, 1]
    return np.minimum(DETECTION_SNR * u ** (-1.0 / COUNTS_SLOPE), MAX_SNR)


def _sersic_bn(n: np.ndarray) -> np.ndarray:
    # Ciotti & Bertin (1999) asymptotic expansion, good to 1e-4 for n > 0.36.
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)


def _sersic_grid(gr: Grids, x0, y0, re_px, n, q, theta, flux) -> np.ndarray:
    """Sersic galaxies on the padded grid, normalised to ``flux`` (ADU) within the grid."""
    ct, st = col(np.cos(theta)), col(np.sin(theta))
    dx = gr.gx - col(x0)
    dy = gr.gy - col(y0)
    xr = dx * ct + dy * st
    yr = (dy * ct - dx * st) / col(q)
    # A quarter-pixel softening stands in for pixel integration of the cuspy n~4 cores.
    r = np.sqrt(xr * xr + yr * yr + _F32(0.0625)) / col(re_px)
    img = np.exp(-col(_sersic_bn(n)) * (np.power(r, 1.0 / col(n)) - 1.0))
    img *= col(flux) / img.sum(axis=(1, 2), keepdims=True)
    return img


def render(
    n: int, rng: np.random.Generator, size: int, real_fraction: float, profile: SurveyProfile
):
    """Render ``n`` stamps in blocks: ``(pixels, labels, kinds, features, masked)``.

    See :func:`s2v_batch.sim.simulator.simulate_stamps` (which validates the arguments) for the
    meaning of each part.
    """
    parts = [
        _render_block(min(_BLOCK, n - s), rng, size, real_fraction, profile)
        for s in range(0, n, _BLOCK)
    ] or [_render_block(0, rng, size, real_fraction, profile)]
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
        pd.concat([p[3] for p in parts], ignore_index=True),
        np.concatenate([p[4] for p in parts]),
    )


def _render_block(n: int, rng, size: int, real_fraction: float, p: SurveyProfile):
    sc = Scene(n, rng, size, p)
    gr, S, scale = sc.gr, size, p.pixel_scale
    is_real = rng.random(n) < real_fraction
    a_idx = rng.choice(len(ARTIFACT_KINDS), size=n, p=ARTIFACT_WEIGHTS / ARTIFACT_WEIGHTS.sum())
    kind_idx = np.where(is_real, 0, a_idx + 1)
    kinds = np.asarray(KINDS)[kind_idx]
    k = {name: kind_idx == i for i, name in enumerate(KINDS)}

    # ------------------------------------------------------------------ galaxies
    p_gal = np.select([k["real"], k["bad_subtraction"], k["dipole"]], [0.7, 1.0, 0.5], 0.35)
    has_gal = rng.random(n) < p_gal
    re_px = np.exp(rng.uniform(np.log(0.35), np.log(3.0), n)) / scale
    g_n = np.exp(rng.uniform(np.log(0.6), np.log(4.5), n))
    g_q = rng.uniform(0.3, 1.0, n)
    g_theta = rng.uniform(0.0, np.pi, n)
    g_mag = rng.uniform(18.5, 23.0, n)
    g_x = rng.uniform(-0.4 * S, 0.4 * S, n)  # background galaxies land anywhere
    g_y = rng.uniform(-0.4 * S, 0.4 * S, n)
    # SN hosts: the SN sits within about an effective radius of the host's centre.
    host_r = np.abs(rng.normal(0.0, 1.0, n)) * re_px
    host_phi = rng.uniform(0, 2 * np.pi, n)
    g_x = np.where(k["real"], host_r * np.cos(host_phi), g_x)
    g_y = np.where(k["real"], host_r * np.sin(host_phi), g_y)
    # Bad subtractions and galaxy dipoles happen on bright, compact cores at the detection.
    core = k["bad_subtraction"] | k["dipole"]
    g_mag = np.where(core, rng.uniform(16.5, 20.5, n), g_mag)
    re_px = np.where(core, np.exp(rng.uniform(np.log(0.3), np.log(1.5), n)) / scale, re_px)
    g_x = np.where(core, rng.uniform(-0.4, 0.4, n) / scale, g_x)
    g_y = np.where(core, rng.uniform(-0.4, 0.4, n) / scale, g_y)

    # Dipoles: a sub-pixel misregistration of a galaxy core or a star between search and template.
    d_amp = rng.uniform(0.04, 0.32, n) / scale
    d_phi = rng.uniform(0, 2 * np.pi, n)
    d_dx, d_dy = d_amp * np.cos(d_phi), d_amp * np.sin(d_phi)
    # The detection is the positive lobe: its peak lies about 0.7 sigma_psf beyond the midpoint
    # of the two positions, along the shift; put it within ~0.3 px of the centre.
    lobe = 0.5 * d_amp + 0.7 * sc.fwhm_px / 2.3548
    d_x0 = -lobe * np.cos(d_phi) + rng.normal(0, 0.3, n)  # template position of the source
    d_y0 = -lobe * np.sin(d_phi) + rng.normal(0, 0.3, n)
    g_x = np.where(k["dipole"], d_x0, g_x)
    g_y = np.where(k["dipole"], d_y0, g_y)
    det_snr = rng.uniform(4.5, 8.0, n)  # least S/N that made an artifact a detection
    # Bad subtraction: a matching kernel too broad (usually) or too sharp, and a scale error.
    bs_var = rng.uniform(0.3, 2.0, n) * np.where(rng.random(n) < 0.75, 1.0, -0.5)
    bs_scale = 1.0 + rng.normal(0.0, 0.03, n)

    gi = np.flatnonzero(has_gal)
    if gi.size:
        gal = _sersic_grid(
            gr, g_x[gi], g_y[gi], re_px[gi], g_n[gi], g_q[gi], g_theta[gi],
            sc.flux(g_mag[gi], gi),
        )  # fmt: skip
        gft = rfft2(gal.astype(_F32))
        del gal
        sc.temp[gi] += gr.irfft(gft * psf_ft(gr, sc.fwhm_t_px[gi], sc.beta_t[gi]))
        g_s = gft * psf_ft(gr, sc.fwhm_px[gi], sc.beta[gi])
        del gft
        s_img = gr.irfft(g_s)
        sc.srch[gi] += s_img
        sc.match[gi] += s_img
        # Only the broken subtractions need a separate search or matched image.
        dip = np.flatnonzero(k["dipole"][gi])
        if dip.size:
            gd = gi[dip]
            sc.srch[gd] += gr.irfft(g_s[dip] * gr.shift_ft(d_dx[gd], d_dy[gd])) - s_img[dip]
        bad = np.flatnonzero(k["bad_subtraction"][gi])
        if bad.size:
            gb = gi[bad]
            mism = gr.gauss_ft(bs_var[gb]) * col(bs_scale[gb])
            sc.match[gb] += gr.irfft(g_s[bad] * mism) - s_img[bad]
        del g_s, s_img
        # These artifacts are detections: brighten a galaxy whose residual would fall below
        # the detection threshold (S/N ~5) until it passes (at most 10x, 2.5 mag).
        gx = gi[np.concatenate([dip, bad])]
        if gx.size:
            snr = np.abs(sc.snr(gx, sc.srch[gx] - sc.match[gx]))
            boost = col(np.clip(det_snr[gx] / np.maximum(snr, 1e-6), 1.0, 10.0))
            sc.srch[gx] *= boost
            sc.temp[gx] *= boost
            sc.match[gx] *= boost

    # ------------------------------------------------------------------ field stars (static)
    for _slot in range(2):
        on = np.flatnonzero(rng.random(n) < 0.25)
        r = rng.uniform(0.12 * S, 0.6 * S, on.size)
        phi = rng.uniform(0, 2 * np.pi, on.size)
        flux = col(sc.flux(rng.uniform(17.0, 22.5, on.size), on))
        x, y = r * np.cos(phi), r * np.sin(phi)
        star_s = flux * sc.point(on, x, y)
        sc.srch[on] += star_s
        sc.match[on] += star_s
        sc.temp[on] += flux * sc.point(on, x, y, template=True)

    # ------------------------------------------------------------------ real transients
    snr_true = np.full(n, np.nan)
    mag_true = np.full(n, np.nan)
    ri = np.flatnonzero(k["real"])
    if ri.size:
        snr = euclidean_snr(rng, ri.size)
        flux = snr * sc.sig_d[ri] / np.sqrt(sc.sum_p2[ri])  # optimal (PSF-fit) S/N in diff
        ox = np.clip(rng.normal(0, 0.35, ri.size), -1, 1)
        oy = np.clip(rng.normal(0, 0.35, ri.size), -1, 1)
        sc.srch[ri] += col(flux) * sc.point(ri, ox, oy)
        snr_true[ri] = snr
        mag_true[ri] = sc.zp[ri] - 2.5 * np.log10(flux)

    # ------------------------------------------------------------------ artifacts
    res.star_dipoles(
        sc, rng, np.flatnonzero(k["dipole"] & ~has_gal), d_x0, d_y0, d_dx, d_dy, det_snr
    )
    res.psf_mismatch_stars(sc, rng, np.flatnonzero(k["psf_mismatch"]), det_snr)
    res.double_stars(sc, rng, np.flatnonzero(k["double_star"]), det_snr)
    art.bright_stars(sc, rng, np.flatnonzero(k["bright_star"]))
    art.cosmic_rays(sc, rng, np.flatnonzero(k["cosmic_ray"]))
    art.hot_pixels(sc, rng, np.flatnonzero(k["hot_pixel"]))
    art.bad_columns(sc, rng, np.flatnonzero(k["bad_column"]))
    edge_idx = np.flatnonzero(k["ccd_edge"])
    edge_mask = art.ccd_edges(sc, rng, edge_idx)
    art.satellite_trails(sc, rng, np.flatnonzero(k["satellite_trail"]))
    art.ghosts(sc, rng, np.flatnonzero(k["ghost"]), det_snr)
    art.noise_spikes(sc, rng, np.flatnonzero(k["noise_spike"]))

    # ------------------------------------------------------------------ images
    noise_s, noise_t, noise_d = sc.noise.render(
        rng, sc.srch + sc.sharp, sc.temp, sc.spike_t, sc.sat_mask_s
    )
    seen_s = np.where(sc.sat_mask_s, col(sc.sat_s), sc.srch + sc.sharp)
    out = np.empty((n, S, S, 3), _F32)
    out[..., 0] = seen_s + noise_s  # no noise on saturated pixels (noise_s is 0 there)
    out[..., 1] = np.where(sc.sat_mask_t, col(sc.sat_t), sc.temp + noise_t)
    out[..., 2] = sc.noise.to_diff(seen_s - sc.match, search=True) + noise_d
    del seen_s, noise_s, noise_t, noise_d

    # ------------------------------------------------------------------ CCD-edge masks
    masked = np.zeros((n, S, S), bool)
    masked[edge_idx] = edge_mask  # the CCD-edge artifacts: the edge is their detection
    mi = np.flatnonzero((rng.random(n) < MASKED_FRACTION) & ~k["ccd_edge"])
    if mi.size:
        width = col(rng.integers(2, max(3, 21 * S // 51), mi.size))  # DES: 2-20 px
        side = rng.integers(0, 4, mi.size)[:, None, None]
        yy, xx = np.arange(S)[None, :, None], np.arange(S)[None, None, :]
        masked[mi] = (
            ((side == 0) & (yy < width))
            | ((side == 1) & (yy >= S - width))
            | ((side == 2) & (xx < width))
            | ((side == 3) & (xx >= S - width))
        )
    out[masked] = np.nan

    feats = measure(out, masked, sc.psf_d, sc.cond, sc.sig_d, gr.c, p)
    feats["SIM_KIND"] = kinds
    feats["SIM_SNR"] = snr_true.astype(_F32)
    feats["SIM_MAG"] = mag_true.astype(_F32)
    feats["SIM_HOST"] = has_gal.astype(np.int8)
    feats["SIM_CONV_SEARCH"] = sc.noise.conv_search.astype(np.int8)
    return out, is_real.astype(np.int8), kinds, feats, masked
