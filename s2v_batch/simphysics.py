"""Physics of the stamp simulator: DES-like conditions, sources and artifacts, vectorised.

The model of a stamp (all in sky-subtracted ADU, vectorised over a batch, float32):

  srch = S_s + N_s,   temp = S_t + N_t,   diff = (S_s - M) + N_s - K * N_t

S_s / S_t: signal in the search / template image; M: the template signal after PSF matching
(what the subtraction removes: for a perfect subtraction the static scene in the search PSF);
K: the matching kernel (a Gaussian taking the template seeing to the search seeing), so the
template noise enters the difference smoothed. Static sources (host galaxies, field stars) are
in S_s, S_t and M alike and vanish from diff; a real transient is in S_s only; each artifact kind
breaks the subtraction its own way. Galaxies are Sersic profiles convolved with a Moffat PSF by
FFT on a padded grid; point sources are analytic Moffat profiles.

The public API (``simulate_stamps`` and the writers) is in :mod:`s2v_batch.simulator`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

try:  # scipy's pocketfft is 2-4x faster than numpy's on batches of small 2-D float32 FFTs
    from scipy.fft import irfft2 as _irfft2
    from scipy.fft import rfft2 as _rfft2
except ImportError:  # scipy is optional: numpy gives the same numbers, only slower
    from numpy.fft import irfft2 as _irfft2
    from numpy.fft import rfft2 as _rfft2

#: DECam pixel scale, arcsec per pixel.
PIXEL_SCALE = 0.263
BANDS: tuple[str, ...] = ("g", "r", "i", "z")
#: Dark-sky surface brightness at CTIO, mag / arcsec^2 (moon and twilight brighten it per stamp).
SKY_MAG = np.array([22.1, 21.1, 20.3, 19.1])
ZERO_POINT = 30.0
#: Artifact kinds and their shares among artifacts: subtraction residuals (dipoles, bad
#: subtractions) and noise dominate, as in the autoscan training set; defects are rarer.
ARTIFACT_KINDS: tuple[str, ...] = (
    "dipole",
    "bright_star",
    "cosmic_ray",
    "bad_column",
    "noise_spike",
    "bad_subtraction",
)
ARTIFACT_WEIGHTS = np.array([0.24, 0.11, 0.14, 0.09, 0.20, 0.22])
KINDS: tuple[str, ...] = ("real", *ARTIFACT_KINDS)
#: Fraction of stamps partly masked by a CCD edge.
MASKED_FRACTION = 0.03
_BLOCK = 2048  # stamps rendered at once: bounds the FFT buffers whatever n is asked for
_F32 = np.float32


def _fft_size(size: int) -> int:
    """Edge of the padded FFT grid: room for PSF wings, a multiple of 16 (fast FFTs)."""
    return int(-(-(size + 13) // 16) * 16)


def _col(v) -> np.ndarray:
    return np.asarray(v, dtype=_F32)[:, None, None]


def _moffat(dx: np.ndarray, dy: np.ndarray, fwhm: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Unit-flux Moffat profile sampled at offsets ``dx, dy`` (pixels; broadcast over the batch)."""
    alpha2 = (fwhm / (2.0 * np.sqrt(np.power(2.0, 1.0 / beta) - 1.0))) ** 2
    norm = ((beta - 1.0) / (np.pi * alpha2)).astype(_F32)
    return norm * np.power(1.0 + (dx * dx + dy * dy) / alpha2.astype(_F32), -beta.astype(_F32))


def _sersic_bn(n: np.ndarray) -> np.ndarray:
    # Ciotti & Bertin (1999) asymptotic expansion, good to 1e-4 for n > 0.36.
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)


def _mag_to_flux(mag, zp):
    return 10.0 ** (-0.4 * (np.asarray(mag) - zp))


class _Grids:
    """Coordinates shared by a batch: the stamp grid and the padded FFT grid."""

    def __init__(self, size: int):
        self.size = size
        self.c = size // 2
        self.g = _fft_size(size)
        self.o = (self.g - size) // 2
        s = np.arange(size, dtype=_F32) - self.c
        self.sy, self.sx = s[None, :, None], s[None, None, :]
        gg = np.arange(self.g, dtype=_F32) - (self.o + self.c)
        self.gy, self.gx = gg[None, :, None], gg[None, None, :]
        w = ((np.arange(self.g) + self.g // 2) % self.g - self.g // 2).astype(_F32)
        self.wy, self.wx = w[None, :, None], w[None, None, :]
        self.fu = np.fft.rfftfreq(self.g).astype(_F32)[None, None, :]
        self.fv = np.fft.fftfreq(self.g).astype(_F32)[None, :, None]
        self.f2 = self.fu**2 + self.fv**2

    def crop(self, a: np.ndarray) -> np.ndarray:
        return a[:, self.o : self.o + self.size, self.o : self.o + self.size]

    def irfft(self, a: np.ndarray) -> np.ndarray:
        return self.crop(_irfft2(a, s=(self.g, self.g)))

    def psf_ft(self, fwhm: np.ndarray, beta: np.ndarray) -> np.ndarray:
        """FT of a unit-sum Moffat centred on the grid origin (wrapped), for circular convolution."""
        k = _moffat(self.wx, self.wy, _col(fwhm), _col(beta))
        k /= k.sum(axis=(1, 2), keepdims=True)
        return _rfft2(k)

    def shift_ft(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """Fourier phase ramp that moves an image by ``(dx, dy)`` pixels (sub-pixel exact)."""
        ph = -2.0 * np.pi * (self.fu * _col(dx) + self.fv * _col(dy))
        return np.exp(1j * ph).astype(np.complex64)

    def gauss_ft(self, var: np.ndarray) -> np.ndarray:
        """FT of a Gaussian of variance ``var`` px^2 (negative: a sharpening, capped at 5x)."""
        return np.minimum(np.exp(-2.0 * np.pi**2 * _col(var) * self.f2), 5.0).astype(_F32)


def _sersic_grid(gr: _Grids, x0, y0, re_px, n, q, theta, flux) -> np.ndarray:
    """Sersic galaxies on the padded grid, normalised to ``flux`` (ADU) within the grid."""
    ct, st = _col(np.cos(theta)), _col(np.sin(theta))
    dx = gr.gx - _col(x0)
    dy = gr.gy - _col(y0)
    xr = dx * ct + dy * st
    yr = (dy * ct - dx * st) / _col(q)
    # A quarter-pixel softening stands in for pixel integration of the cuspy n~4 cores.
    r = np.sqrt(xr * xr + yr * yr + _F32(0.0625)) / _col(re_px)
    img = np.exp(-_col(_sersic_bn(n)) * (np.power(r, 1.0 / _col(n)) - 1.0))
    img *= _col(flux) / img.sum(axis=(1, 2), keepdims=True)
    return img


def _bleed(img: np.ndarray, sat: np.ndarray, yc: np.ndarray, sy: np.ndarray):
    """Saturate at ``sat`` with charge bleeding up and down the columns (flat-topped trails).

    The charge above saturation in a column fills ``excess / sat`` more pixels of that column,
    split evenly above and below the star's row ``yc``. Returns the image and the mask of
    saturated pixels (they stay at ``sat`` exactly, noise or not).
    """
    s = _col(sat)
    over = img - s
    excess = np.clip(over, 0, None).sum(axis=1)  # (m, x)
    nsat = (over > 0).sum(axis=1)
    half = 0.5 * (nsat + excess / s[:, 0])
    trail = (np.abs(sy - _col(yc)) <= half[:, None, :]) & (excess[:, None, :] > 0)
    trail |= over >= 0
    return np.where(trail, s, img), trail


def _psf_snr(resid: np.ndarray, psf_c: np.ndarray, sum_p2: np.ndarray, sig_d: np.ndarray):
    """PSF-fit S/N at the stamp centre of a noiseless difference ``resid``."""
    return (resid * psf_c).sum(axis=(1, 2)) / np.sqrt(sum_p2) / sig_d


def _draw_conditions(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    band = rng.integers(0, len(BANDS), n)
    zp = ZERO_POINT + rng.normal(0.0, 0.08, n)
    gain = rng.uniform(3.8, 4.8, n)
    rdnoise = rng.uniform(5.0, 8.0, n)  # electrons
    sky_mag = SKY_MAG[band] - rng.uniform(0.0, 1.3, n)
    sky = 10.0 ** (-0.4 * (sky_mag - zp)) * PIXEL_SCALE**2  # ADU / pixel
    skysig = np.sqrt(sky / gain + (rdnoise / gain) ** 2)
    # Seeing skews to the good side; the template (a deep coadd of good nights) is sharper, deeper.
    fwhm = 0.8 + 1.2 * rng.beta(2.0, 3.0, n)
    fwhm_t = 0.7 + (fwhm - 0.7) * rng.uniform(0.15, 0.9, n)
    return {
        "band": band,
        "zp": zp,
        "gain": gain,
        "rdnoise": rdnoise,
        "sky": sky,
        "skysig": skysig,
        "skysig_t": skysig * rng.uniform(0.25, 0.6, n),
        "fwhm": fwhm,
        "fwhm_t": fwhm_t,
        "beta": rng.uniform(2.5, 4.5, n),
        "beta_t": rng.uniform(2.5, 4.5, n),
    }


def render(n: int, rng: np.random.Generator, size: int, real_fraction: float):
    """Render ``n`` stamps in blocks: ``(pixels, labels, kinds, features, masked)``.

    See :func:`s2v_batch.simulator.simulate_stamps` (which validates the arguments) for the
    meaning of each part.
    """
    parts = [
        _render_block(min(_BLOCK, n - s), rng, size, real_fraction) for s in range(0, n, _BLOCK)
    ] or [_render_block(0, rng, size, real_fraction)]
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
        pd.concat([p[3] for p in parts], ignore_index=True),
        np.concatenate([p[4] for p in parts]),
    )


def _render_block(n: int, rng: np.random.Generator, size: int, real_fraction: float):
    gr = _Grids(size)
    S = size
    cond = _draw_conditions(n, rng)
    fwhm_px = cond["fwhm"] / PIXEL_SCALE
    fwhm_t_px = cond["fwhm_t"] / PIXEL_SCALE
    beta, beta_t, zp = cond["beta"], cond["beta_t"], cond["zp"]
    sig_s, sig_t = cond["skysig"], cond["skysig_t"]

    is_real = rng.random(n) < real_fraction
    art = rng.choice(len(ARTIFACT_KINDS), size=n, p=ARTIFACT_WEIGHTS / ARTIFACT_WEIGHTS.sum())
    kind_idx = np.where(is_real, 0, art + 1)
    kinds = np.asarray(KINDS)[kind_idx]
    k = {name: kind_idx == i for i, name in enumerate(KINDS)}

    srch = np.zeros((n, S, S), _F32)  # search signal S_s
    temp = np.zeros((n, S, S), _F32)  # template signal S_t
    match = np.zeros((n, S, S), _F32)  # matched template signal M
    sharp = np.zeros((n, S, S), _F32)  # search-only signal not seen through the PSF

    # Matching kernel and the noise it leaves in the difference.
    var_k = np.clip((fwhm_px / 2.3548) ** 2 - (fwhm_t_px / 2.3548) ** 2, 0.05, None)
    kft = gr.gauss_ft(var_k)
    # Variance factor of a periodic convolution with K (Parseval; K is separable).
    f1 = np.fft.fftfreq(gr.g)[None, :] ** 2
    kvar = np.exp(-4.0 * np.pi**2 * var_k[:, None] * f1).mean(axis=1) ** 2
    sig_d = np.sqrt(sig_s**2 + kvar * sig_t**2)  # difference-image sky noise per pixel

    psf_c = _moffat(gr.sx, gr.sy, _col(fwhm_px), _col(beta))  # search PSF at the centre
    sum_p2 = (psf_c.astype(np.float64) ** 2).sum(axis=(1, 2))  # 1 / noise-equivalent area

    # ------------------------------------------------------------------ galaxies
    p_gal = np.select([k["real"], k["bad_subtraction"], k["dipole"]], [0.7, 1.0, 0.5], 0.35)
    has_gal = rng.random(n) < p_gal
    re_px = np.exp(rng.uniform(np.log(0.35), np.log(3.0), n)) / PIXEL_SCALE
    g_n = np.exp(rng.uniform(np.log(0.6), np.log(4.5), n))
    g_q = rng.uniform(0.3, 1.0, n)
    g_theta = rng.uniform(0.0, np.pi, n)
    g_mag = rng.uniform(18.5, 23.0, n)
    g_x = rng.uniform(-20, 20, n)  # background galaxies land anywhere
    g_y = rng.uniform(-20, 20, n)
    # SN hosts: the SN sits within about an effective radius of the host's centre.
    host_r = np.abs(rng.normal(0.0, 1.0, n)) * re_px
    host_phi = rng.uniform(0, 2 * np.pi, n)
    g_x = np.where(k["real"], host_r * np.cos(host_phi), g_x)
    g_y = np.where(k["real"], host_r * np.sin(host_phi), g_y)
    # Bad subtractions and galaxy dipoles happen on bright, compact cores at the detection.
    core = k["bad_subtraction"] | k["dipole"]
    g_mag = np.where(core, rng.uniform(16.5, 20.5, n), g_mag)
    re_px = np.where(core, np.exp(rng.uniform(np.log(0.3), np.log(1.5), n)) / PIXEL_SCALE, re_px)
    g_x = np.where(core, rng.uniform(-1.5, 1.5, n), g_x)
    g_y = np.where(core, rng.uniform(-1.5, 1.5, n), g_y)

    # Dipoles: a sub-pixel misregistration of a galaxy core or a star between search and template.
    d_amp = rng.uniform(0.15, 1.2, n)
    d_phi = rng.uniform(0, 2 * np.pi, n)
    d_dx, d_dy = d_amp * np.cos(d_phi), d_amp * np.sin(d_phi)
    # The detection is the positive lobe: its peak lies about 0.7 sigma_psf beyond the midpoint
    # of the two positions, along the shift; put it within ~0.3 px of the centre.
    lobe = 0.5 * d_amp + 0.7 * fwhm_px / 2.3548
    d_x0 = -lobe * np.cos(d_phi) + rng.normal(0, 0.3, n)  # template position of the source
    d_y0 = -lobe * np.sin(d_phi) + rng.normal(0, 0.3, n)
    g_x = np.where(k["dipole"], d_x0, g_x)
    g_y = np.where(k["dipole"], d_y0, g_y)
    dip_star = k["dipole"] & ~has_gal
    det_snr = rng.uniform(4.5, 8.0, n)  # least S/N that made an artifact a detection
    # Bad subtraction: a matching kernel too broad (usually) or too sharp, and a scale error.
    bs_var = rng.uniform(0.3, 2.0, n) * np.where(rng.random(n) < 0.75, 1.0, -0.5)
    bs_scale = 1.0 + rng.normal(0.0, 0.03, n)

    gi = np.flatnonzero(has_gal)
    if gi.size:
        gal = _sersic_grid(
            gr, g_x[gi], g_y[gi], re_px[gi], g_n[gi], g_q[gi], g_theta[gi],
            _mag_to_flux(g_mag[gi], zp[gi]),
        )  # fmt: skip
        gft = _rfft2(gal.astype(_F32))
        del gal
        temp[gi] += gr.irfft(gft * gr.psf_ft(fwhm_t_px[gi], beta_t[gi]))
        g_s = gft * gr.psf_ft(fwhm_px[gi], beta[gi])
        del gft
        s_img = gr.irfft(g_s)
        srch[gi] += s_img
        match[gi] += s_img
        # Only the broken subtractions need a separate search or matched image.
        dip = np.flatnonzero(k["dipole"][gi])
        if dip.size:
            gd = gi[dip]
            srch[gd] += gr.irfft(g_s[dip] * gr.shift_ft(d_dx[gd], d_dy[gd])) - s_img[dip]
        bad = np.flatnonzero(k["bad_subtraction"][gi])
        if bad.size:
            gb = gi[bad]
            mism = gr.gauss_ft(bs_var[gb]) * _col(bs_scale[gb])
            match[gb] += gr.irfft(g_s[bad] * mism) - s_img[bad]
        del g_s, s_img
        # These artifacts are detections: brighten a galaxy whose residual would fall below
        # the detection threshold (S/N ~5) until it passes (at most 10x, 2.5 mag).
        gx = gi[np.concatenate([dip, bad])]
        if gx.size:
            snr = np.abs(_psf_snr(srch[gx] - match[gx], psf_c[gx], sum_p2[gx], sig_d[gx]))
            boost = _col(np.clip(det_snr[gx] / np.maximum(snr, 1e-6), 1.0, 10.0))
            srch[gx] *= boost
            temp[gx] *= boost
            match[gx] *= boost

    # ------------------------------------------------------------------ field stars (static)
    for _slot in range(2):
        on = np.flatnonzero(rng.random(n) < 0.25)
        r = rng.uniform(6.0, 30.0, on.size)
        phi = rng.uniform(0, 2 * np.pi, on.size)
        flux = _col(_mag_to_flux(rng.uniform(17.0, 22.5, on.size), zp[on]))
        dx, dy = gr.sx - _col(r * np.cos(phi)), gr.sy - _col(r * np.sin(phi))
        star_s = flux * _moffat(dx, dy, _col(fwhm_px[on]), _col(beta[on]))
        srch[on] += star_s
        match[on] += star_s
        temp[on] += flux * _moffat(dx, dy, _col(fwhm_t_px[on]), _col(beta_t[on]))

    # ------------------------------------------------------------------ real transients
    snr_true = np.full(n, np.nan)
    mag_true = np.full(n, np.nan)
    ri = np.flatnonzero(k["real"])
    if ri.size:
        snr = np.exp(rng.uniform(np.log(5.0), np.log(100.0), ri.size))
        flux = snr * sig_d[ri] / np.sqrt(sum_p2[ri])  # optimal (PSF-fit) S/N in diff
        ox = np.clip(rng.normal(0, 0.35, ri.size), -1, 1)
        oy = np.clip(rng.normal(0, 0.35, ri.size), -1, 1)
        srch[ri] += _col(flux) * _moffat(
            gr.sx - _col(ox), gr.sy - _col(oy), _col(fwhm_px[ri]), _col(beta[ri])
        )
        snr_true[ri] = snr
        mag_true[ri] = zp[ri] - 2.5 * np.log10(flux)

    # ------------------------------------------------------------------ star dipoles
    di = np.flatnonzero(dip_star)
    if di.size:
        flux = _mag_to_flux(rng.uniform(16.0, 21.0, di.size), zp[di])
        px, py = d_x0[di], d_y0[di]
        f, b = _col(fwhm_px[di]), _col(beta[di])
        u_s = _moffat(gr.sx - _col(px + d_dx[di]), gr.sy - _col(py + d_dy[di]), f, b)
        u_m = _col(rng.normal(1.0, 0.02, di.size)) * _moffat(
            gr.sx - _col(px), gr.sy - _col(py), f, b
        )
        # A detection: at least the S/N that passed the threshold (see the galaxy case).
        snr1 = _psf_snr(u_s - u_m, psf_c[di], sum_p2[di], sig_d[di])
        flux = np.maximum(flux, det_snr[di] / np.maximum(snr1, 1e-9))
        srch[di] += _col(flux) * u_s
        match[di] += _col(flux) * u_m
        temp[di] += _col(flux) * _moffat(
            gr.sx - _col(px), gr.sy - _col(py), _col(fwhm_t_px[di]), _col(beta_t[di])
        )
        del u_s, u_m

    # ------------------------------------------------------------------ bright / saturated stars
    sat_mask_s = np.zeros((n, S, S), bool)  # saturated pixels stay at the level, noise or not
    sat_mask_t = np.zeros((n, S, S), bool)
    sat_s = np.zeros(n, _F32)
    sat_t_all = np.zeros(n, _F32)
    bi = np.flatnonzero(k["bright_star"])
    if bi.size:
        m = bi.size
        flux = _mag_to_flux(rng.uniform(12.0, 15.5, m), zp[bi])
        px, py = rng.uniform(-4, 4, m), rng.uniform(-4, 4, m)
        sat = np.clip(rng.uniform(25000, 45000, m) - cond["sky"][bi], 5000, None)
        f, b = _col(fwhm_px[bi]), _col(beta[bi])
        s_img = _col(flux) * _moffat(gr.sx - _col(px), gr.sy - _col(py), f, b)
        t_img = _col(flux) * _moffat(
            gr.sx - _col(px), gr.sy - _col(py), _col(fwhm_t_px[bi]), _col(beta_t[bi])
        )
        # The matched template misses the core and wings of a bright star by a few per cent.
        m_img = _col(flux * rng.normal(1.0, 0.04, m)) * _moffat(
            gr.sx - _col(px + rng.normal(0, 0.08, m)),
            gr.sy - _col(py + rng.normal(0, 0.08, m)),
            f * _col(1.0 + rng.uniform(-0.1, 0.1, m)),
            b,
        )
        sat_t = sat * rng.uniform(0.7, 1.6, m)
        s_img, sat_mask_s[bi] = _bleed(s_img, sat, py, gr.sy)
        t_img, sat_mask_t[bi] = _bleed(t_img, sat_t, py, gr.sy)
        m_img = _bleed(m_img, sat * rng.uniform(0.8, 1.25, m), py, gr.sy)[0]
        srch[bi] += s_img
        temp[bi] += t_img
        match[bi] += m_img
        sat_s[bi], sat_t_all[bi] = sat, sat_t
        del s_img, t_img, m_img

    # ------------------------------------------------------------------ cosmic rays (srch only)
    ci = np.flatnonzero(k["cosmic_ray"])
    if ci.size:
        m, npts = ci.size, 12
        length = rng.exponential(1.8, m)
        ang = rng.uniform(0, np.pi, m)
        # The track passes within half a pixel of the centre (the detection is on it).
        t = (np.linspace(0.0, 1.0, npts)[None, :] - rng.uniform(0, 1, m)[:, None]) * length[:, None]
        x0 = rng.uniform(-0.5, 0.5, m)[:, None]
        y0 = rng.uniform(-0.5, 0.5, m)[:, None]
        xs = np.clip(np.rint(x0 + t * np.cos(ang)[:, None]).astype(int) + gr.c, 0, S - 1)
        ys = np.clip(np.rint(y0 + t * np.sin(ang)[:, None]).astype(int) + gr.c, 0, S - 1)
        amp = (rng.uniform(8.0, 150.0, m) * sig_s[ci])[:, None] * rng.uniform(0.5, 1.0, (m, npts))
        cr = np.zeros((m, S * S), _F32)
        # Several samples may fall in one pixel: keep the largest (one deposit per pixel).
        np.maximum.at(cr, (np.repeat(np.arange(m), npts), (ys * S + xs).ravel()), amp.ravel())
        cr = cr.reshape(m, S, S)
        spread = _col(rng.uniform(0.0, 0.2, m))  # a little charge diffusion to the neighbours
        cr = cr + spread * (
            np.roll(cr, 1, 1) + np.roll(cr, -1, 1) + np.roll(cr, 1, 2) + np.roll(cr, -1, 2)
        )
        sharp[ci] += cr

    # ------------------------------------------------------------------ bad columns / rows
    bci = np.flatnonzero(k["bad_column"])
    if bci.size:
        m = bci.size
        is_row = _col(rng.random(m) < 0.3)
        pos = _col(rng.integers(-1, 2, m) + gr.c)
        start = _col(np.where(rng.random(m) < 0.5, 0, rng.integers(0, gr.c - 1, m)))
        up = _col(rng.random(m) < 0.5)
        amp = _col(rng.uniform(3.0, 25.0, m) * sig_s[bci])
        yy, xx = np.arange(S)[None, :, None], np.arange(S)[None, None, :]
        along = np.where(is_row, xx, yy)
        across = np.where(is_row, yy, xx)
        # A partial defect runs from a charge trap to the read-out edge.
        extent = np.where(up > 0, along >= start, along <= S - 1 - start)
        line = (across == pos) & extent
        prof = amp * (1.0 + 0.15 * rng.standard_normal((m, S, S), dtype=_F32))
        sharp[bci] += np.where(line, prof, 0.0).astype(_F32)

    # ------------------------------------------------------------------ noise spikes
    spike_t = np.zeros((n, S, S), _F32)  # template-noise dips: they reach diff through K
    ni = np.flatnonzero(k["noise_spike"])
    if ni.size:
        m = ni.size
        w2 = _col(rng.uniform(0.45, 1.0, m) ** 2)
        cx, cy = _col(rng.uniform(-1.0, 1.0, m)), _col(rng.uniform(-1.0, 1.0, m))
        r2 = (gr.sx - cx) ** 2 + (gr.sy - cy) ** 2
        in_temp = rng.random(m) < 0.4
        # A fluctuation that just passed the detection threshold: PSF-fit S/N about 3.5-6.5.
        # In the template case the dip is seen in diff smoothed by K (variance w2 + var_k).
        wd2 = np.where(_col(in_temp), w2 + _col(var_k[ni]), w2)
        blob_d = np.exp(-0.5 * r2 / wd2) * np.where(_col(in_temp), w2 / wd2, 1.0)
        resp = (blob_d * psf_c[ni]).sum(axis=(1, 2)) / np.sqrt(sum_p2[ni])
        amp = rng.uniform(3.5, 6.5, m) * sig_d[ni] / resp
        blob = _col(amp) * np.exp(-0.5 * r2 / w2)
        sharp[ni] += np.where(_col(in_temp), 0.0, blob).astype(_F32)
        spike_t[ni] = np.where(_col(in_temp), -blob, 0.0)

    # ------------------------------------------------------------------ noise
    z_s = rng.standard_normal((n, S, S), dtype=_F32)
    z_t = rng.standard_normal((n, gr.g, gr.g), dtype=_F32)
    noise_s = z_s * np.sqrt(_col(sig_s**2) + np.clip(srch + sharp, 0, None) / _col(cond["gain"]))
    # The template is a coadd: its photon noise shrinks with its depth like its sky noise.
    depth = (sig_t / sig_s) ** 2
    var_t = _col(sig_t**2) + np.clip(temp, 0, None) * _col(depth / cond["gain"])
    z_tc = gr.crop(z_t)
    extra_t = z_tc * (np.sqrt(var_t) - _col(sig_t))  # photon noise of the template's sources
    tn = z_t * _col(sig_t)
    tn[:, gr.o : gr.o + S, gr.o : gr.o + S] += spike_t
    noise_t = gr.crop(tn) + extra_t
    noise_t_matched = gr.irfft(_rfft2(tn) * kft) + extra_t
    del z_t, tn

    out = np.empty((n, S, S, 3), _F32)
    out[..., 0] = np.where(sat_mask_s, _col(sat_s), srch + sharp + noise_s)
    out[..., 1] = np.where(sat_mask_t, _col(sat_t_all), temp + noise_t)
    out[..., 2] = out[..., 0] - match - noise_t_matched

    # ------------------------------------------------------------------ CCD-edge masks
    masked = np.zeros((n, S, S), bool)
    mi = np.flatnonzero(rng.random(n) < MASKED_FRACTION)
    if mi.size:
        width = _col(rng.integers(2, 21, mi.size))
        side = rng.integers(0, 4, mi.size)[:, None, None]
        yy, xx = np.arange(S)[None, :, None], np.arange(S)[None, None, :]
        masked[mi] = (
            ((side == 0) & (yy < width))
            | ((side == 1) & (yy >= S - width))
            | ((side == 2) & (xx < width))
            | ((side == 3) & (xx >= S - width))
        )
        out[masked] = np.nan

    feats = _measure(out, masked, psf_c, cond, sig_d, gr.c)
    feats["SIM_KIND"] = kinds
    feats["SIM_SNR"] = snr_true.astype(_F32)
    feats["SIM_MAG"] = mag_true.astype(_F32)
    feats["SIM_HOST"] = has_gal.astype(np.int8)
    return out, is_real.astype(np.int8), kinds, feats, masked


def _measure(pix, masked, psf_c, cond, sig_d, c: int) -> pd.DataFrame:
    """autoscan-like features measured on the stamps (after Goldstein et al. 2015, table 2)."""
    n = pix.shape[0]
    d = np.nan_to_num(pix[..., 2], nan=0.0)
    t = np.nan_to_num(pix[..., 1], nan=0.0)
    p = psf_c * ~masked
    w2 = (p.astype(np.float64) ** 2).sum(axis=(1, 2))
    w2 = np.where(w2 > 0, w2, 1.0)
    flux = (p * d).sum(axis=(1, 2)) / w2  # PSF-fit flux at the centre
    flux_err = sig_d / np.sqrt(w2)
    zp = cond["zp"]
    r = 3  # aperture half-width, pixels
    ap_d = d[:, c - r : c + r + 1, c - r : c + r + 1].sum(axis=(1, 2))
    ap_t = t[:, c - r : c + r + 1, c - r : c + r + 1].sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        mag = np.where(flux > 0, zp - 2.5 * np.log10(np.abs(flux)), np.nan)
        lim = zp - 2.5 * np.log10(5.0 * flux_err)
        mag_ref = np.where(ap_t > 0, zp - 2.5 * np.log10(np.abs(ap_t)), np.nan)
    sd = _col(sig_d)
    b3 = d[:, c - 1 : c + 2, c - 1 : c + 2]
    b5 = d[:, c - 2 : c + 3, c - 2 : c + 3]
    b7 = d[:, c - 3 : c + 4, c - 3 : c + 4]
    # Second moments of the positive diff light in a 9x9 box: the detection's shape.
    b9 = np.clip(d[:, c - 4 : c + 5, c - 4 : c + 5], 0, None).astype(np.float64)
    yy, xx = np.mgrid[-4:5, -4:5]
    s0 = b9.sum(axis=(1, 2)) + 1e-9
    mx = (b9 * xx).sum(axis=(1, 2)) / s0
    my = (b9 * yy).sum(axis=(1, 2)) / s0
    vxx = (b9 * xx**2).sum(axis=(1, 2)) / s0 - mx**2
    vyy = (b9 * yy**2).sum(axis=(1, 2)) / s0 - my**2
    vxy = (b9 * xx * yy).sum(axis=(1, 2)) / s0 - mx * my
    half, dev = (vxx + vyy) / 2, np.sqrt(np.clip(((vxx - vyy) / 2) ** 2 + vxy**2, 0, None))
    a_img = np.sqrt(np.clip(half + dev, 1e-6, None))
    b_img = np.sqrt(np.clip(half - dev, 1e-6, None))
    centre = d[:, c, c]
    lap = centre - 0.25 * (d[:, c - 1, c] + d[:, c + 1, c] + d[:, c, c - 1] + d[:, c, c + 1])
    col_mean = d.mean(axis=1)[:, c - 2 : c + 3].max(axis=1) * np.sqrt(d.shape[1]) / sig_d
    return pd.DataFrame(
        {
            "BAND": np.asarray(BANDS)[cond["band"]],
            "CCDID": np.zeros(n, np.int16),  # the caller sets it
            "MAG": mag.astype(_F32),
            "SNR": (flux / flux_err).astype(_F32),
            "FLUX": flux.astype(_F32),
            "FLUX_ERR": flux_err.astype(_F32),
            "MAG_FROM_LIMIT": (lim - mag).astype(_F32),
            "MAG_REF": mag_ref.astype(_F32),
            "FLUX_RATIO": (ap_d / np.maximum(np.abs(ap_t), 1e-3)).astype(_F32),
            "N2SIG3": (b3 < -2 * sd).sum(axis=(1, 2)).astype(np.int16),
            "N3SIG3": (b3 < -3 * sd).sum(axis=(1, 2)).astype(np.int16),
            "N2SIG5": (b5 < -2 * sd).sum(axis=(1, 2)).astype(np.int16),
            "N3SIG5": (b5 < -3 * sd).sum(axis=(1, 2)).astype(np.int16),
            "NUMNEGRN": (b7 < 0).sum(axis=(1, 2)).astype(np.int16),
            "DIFFSUMRN": (b5.sum(axis=(1, 2)) / (5 * sig_d)).astype(_F32),
            "AMP": (centre / sig_d).astype(_F32),
            "LACOSMIC": (lap / sig_d).astype(_F32),
            "COLMEANMASK": col_mean.astype(_F32),
            "A_IMAGE": a_img.astype(_F32),
            "B_IMAGE": b_img.astype(_F32),
            "ELONGATION": (a_img / b_img).astype(_F32),
            "MASKFRAC": masked.mean(axis=(1, 2)).astype(_F32),
            "BANDNUM": cond["band"].astype(np.int8),
            "FWHM": cond["fwhm"].astype(_F32),
            "FWHM_TEMP": cond["fwhm_t"].astype(_F32),
            "SKYSIG": cond["skysig"].astype(_F32),
            "SKYSIG_TEMP": cond["skysig_t"].astype(_F32),
            "DIFFSIG": sig_d.astype(_F32),
            "ZP": zp.astype(_F32),
            "GAIN": cond["gain"].astype(_F32),
        }
    )
