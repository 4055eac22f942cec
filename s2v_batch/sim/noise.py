"""Noise of the simulated stamps, made the way image subtraction makes it.

A survey's difference image is not white noise. Before subtracting, the pipeline resamples the
search image and the template onto one pixel grid (SWarp, Lanczos-3: neighbouring pixels share
noise), then convolves the sharper of the two with a PSF-matching kernel K (hotpants, Alard &
Lupton 1998), which smooths that image's noise. So, with N_s, N_t the resampled noise fields:

    template convolved (search seeing worse, the usual case):  diff noise = N_s - K * N_t
    search convolved (search sharper than the template):      diff noise = K * N_s - N_t

Everything here works in the Fourier domain on a padded grid (no wrap-around at the stamp's
edges), vectorised over a batch; K is a Gaussian taking one seeing to the other. The pixel
variances are exact (Parseval over the grid), so the sky noise of the difference image
(``sig_d``) that the S/N of every source refers to is the one the pixels have.
"""

from __future__ import annotations

import numpy as np

from s2v_batch.sim.survey import SurveyProfile

try:  # scipy's pocketfft is 2-4x faster than numpy's on batches of small 2-D float32 FFTs
    from scipy.fft import irfft2 as _irfft2
    from scipy.fft import rfft2 as _rfft2
except ImportError:  # scipy is optional: numpy gives the same numbers, only slower
    from numpy.fft import irfft2 as _irfft2
    from numpy.fft import rfft2 as _rfft2

__all__ = ["Grids", "NoiseModel", "col", "rfft2"]

_F32 = np.float32
rfft2 = _rfft2


def col(v) -> np.ndarray:
    """A per-stamp vector as a float32 ``(n, 1, 1)`` column, to broadcast over images."""
    return np.asarray(v, dtype=_F32)[:, None, None]


def _fft_size(size: int) -> int:
    """Edge of the padded FFT grid: room for PSF wings, a multiple of 16 (fast FFTs)."""
    return int(-(-(size + 13) // 16) * 16)


class Grids:
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
        self.f1 = np.fft.fftfreq(self.g)  # one full axis, for variance factors
        self.f2 = self.fu**2 + self.fv**2

    def crop(self, a: np.ndarray) -> np.ndarray:
        return a[:, self.o : self.o + self.size, self.o : self.o + self.size]

    def pad(self, a: np.ndarray) -> np.ndarray:
        """Stamp-sized images zero-padded onto the FFT grid."""
        out = np.zeros((a.shape[0], self.g, self.g), _F32)
        out[:, self.o : self.o + self.size, self.o : self.o + self.size] = a
        return out

    def irfft(self, a: np.ndarray) -> np.ndarray:
        return self.crop(_irfft2(a, s=(self.g, self.g)))

    def irfft_full(self, a: np.ndarray) -> np.ndarray:
        return _irfft2(a, s=(self.g, self.g)).astype(_F32, copy=False)

    def convolve(self, a: np.ndarray, ft: np.ndarray) -> np.ndarray:
        """Stamp-sized images convolved with the kernels ``ft`` (zero padding outside)."""
        return self.irfft(_rfft2(self.pad(a)) * ft)

    def shift_ft(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """Fourier phase ramp that moves an image by ``(dx, dy)`` pixels (sub-pixel exact)."""
        ph = -2.0 * np.pi * (self.fu * col(dx) + self.fv * col(dy))
        return np.exp(1j * ph).astype(np.complex64)

    def gauss_ft(self, var: np.ndarray) -> np.ndarray:
        """FT of a Gaussian of variance ``var`` px^2 (negative: a sharpening, capped at 5x)."""
        return np.minimum(np.exp(-2.0 * np.pi**2 * col(var) * self.f2), 5.0).astype(_F32)

    def gauss_power(self, var: np.ndarray) -> np.ndarray:
        """``|K(f)|^2`` of a Gaussian along one full frequency axis: ``(n, g)``."""
        return np.exp(-4.0 * np.pi**2 * np.asarray(var)[:, None] * self.f1[None, :] ** 2)


def _lanczos_weights(shift: np.ndarray, order: int) -> np.ndarray:
    """Lanczos-``order`` interpolation weights at sub-pixel ``shift`` (n,) -> (n, 2*order)."""
    k = np.arange(-order + 1, order + 1)[None, :] - shift[:, None]
    w = np.sinc(k) * np.sinc(k / order)
    return w / w.sum(axis=1, keepdims=True)


def _response(weights: np.ndarray, order: int, f: np.ndarray) -> np.ndarray:
    """Frequency response of 1-D kernels ``weights`` (n, taps) at frequencies ``f``: (n, len(f))."""
    taps = np.arange(-order + 1, order + 1)
    return (weights[:, :, None] * np.exp(-2j * np.pi * taps[None, :, None] * f[None, None, :])).sum(
        axis=1
    )


class _Resampling:
    """The Lanczos resampling of one image per stamp at a random sub-pixel offset in x and y.

    A ``share`` of the images is resampled; a zero offset leaves an image as it is.
    """

    def __init__(self, gr: Grids, rng: np.random.Generator, n: int, order: int, share: float):
        on = rng.random(n) < share  # the others keep their pixel grid: a zero shift
        wx = _lanczos_weights(np.where(on, rng.random(n), 0.0), order)
        wy = _lanczos_weights(np.where(on, rng.random(n), 0.0), order)
        self.fx = _response(wx, order, gr.f1)  # (n, g) full axes: for variances
        self.fy = _response(wy, order, gr.f1)
        hx = _response(wx, order, gr.fu[0, 0])  # rfft axis
        self.ft = (self.fy[:, :, None] * hx[:, None, :]).astype(np.complex64)
        px, py = np.abs(self.fx) ** 2, np.abs(self.fy) ** 2
        self.px, self.py = px, py
        self.var = px.mean(axis=1) * py.mean(axis=1)  # pixel variance of resampled unit noise

    def var_through(self, kpow: np.ndarray) -> np.ndarray:
        """Pixel variance of resampled unit-variance noise after a separable kernel of power kpow."""
        return (self.px * kpow).mean(axis=1) * (self.py * kpow).mean(axis=1) / self.var


class NoiseModel:
    """Noise of a batch: drawn resampling offsets, the matching kernel, the difference's sky noise.

    Parameters
    ----------
    gr : Grids
    rng : numpy.random.Generator
    cond : dict
        Conditions (``skysig``, ``skysig_t``, ``gain``, ``conv_search``).
    var_k : numpy.ndarray
        Variance (px^2) of the Gaussian matching kernel K, per stamp.
    p : SurveyProfile
        The resampling kernel and the share of search images resampled.

    Attributes
    ----------
    kft : numpy.ndarray
        K in the Fourier domain (rfft layout).
    conv_search : numpy.ndarray
        bool: the subtraction convolves the search image (else the template).
    sig_d : numpy.ndarray
        Sky noise per pixel of the difference image, ADU.
    """

    def __init__(self, gr: Grids, rng: np.random.Generator, cond: dict, var_k, p: SurveyProfile):
        n = len(var_k)
        self.gr = gr
        self.cond = cond
        self.conv_search = np.asarray(cond["conv_search"], bool)
        self.kft = gr.gauss_ft(var_k)
        self.res_s = _Resampling(gr, rng, n, p.resample_order, p.search_resampled)
        self.res_t = _Resampling(gr, rng, n, p.resample_order, 1.0)  # always onto the search
        kpow = gr.gauss_power(var_k)
        sig_s, sig_t = cond["skysig"], cond["skysig_t"]
        var_d = np.where(
            self.conv_search,
            sig_s**2 * self.res_s.var_through(kpow) + sig_t**2,
            sig_s**2 + sig_t**2 * self.res_t.var_through(kpow),
        )
        self.sig_d = np.sqrt(var_d)

    def to_diff(self, a: np.ndarray, search: bool) -> np.ndarray:
        """How a stamp-sized signal of the search (or template) image appears in the difference."""
        sel = self.conv_search if search else ~self.conv_search
        out = np.array(a, dtype=_F32, copy=True)
        if sel.any():
            out[sel] = self.gr.convolve(a[sel], self.kft[sel])
        return out

    def render(
        self,
        rng: np.random.Generator,
        srch: np.ndarray,
        temp: np.ndarray,
        spike_t: np.ndarray,
        sat_s: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Noise images ``(search, template, difference)`` of the batch, stamp-sized.

        ``srch`` / ``temp``: the images' source signals (their photon noise is added);
        ``spike_t``: noise dips in the template (they reach the difference through the
        subtraction); ``sat_s``: saturated search pixels, which carry no noise.
        """
        gr, cond = self.gr, self.cond
        n, S, g, o = srch.shape[0], gr.size, gr.g, gr.o
        sig_s, sig_t, gain = cond["skysig"], cond["skysig_t"], cond["gain"]
        z = rng.standard_normal((n, g, g), dtype=_F32)
        u_s = gr.irfft_full(_rfft2(z) * self.res_s.ft) / col(np.sqrt(self.res_s.var))
        z = rng.standard_normal((n, g, g), dtype=_F32)
        u_t = gr.irfft_full(_rfft2(z) * self.res_t.ft) / col(np.sqrt(self.res_t.var))
        del z
        inner = (slice(None), slice(o, o + S), slice(o, o + S))
        # Search: sky (resampled) scaled up by the photon noise of its sources; none where saturated.
        std = np.broadcast_to(col(sig_s), (n, g, g)).copy()
        std[inner] = np.sqrt(col(sig_s**2) + np.clip(srch, 0, None) / col(gain))
        std[inner][sat_s] = 0.0
        n_s = u_s * std
        del u_s, std
        # Template: a coadd; its photon noise shrinks with its depth like its sky noise.
        depth = (sig_t / sig_s) ** 2
        var_t = col(sig_t**2) + np.clip(temp, 0, None) * col(depth / gain)
        extra_t = u_t[inner] * (np.sqrt(var_t) - col(sig_t))  # photon noise of its sources
        n_t = u_t * col(sig_t)
        del u_t
        n_t[inner] += spike_t
        noise_s = n_s[inner].copy()
        noise_t = n_t[inner] + extra_t
        noise_d = np.empty((n, S, S), _F32)
        cs = self.conv_search
        if cs.any():
            noise_d[cs] = gr.irfft(_rfft2(n_s[cs]) * self.kft[cs]) - noise_t[cs]
        ct = ~cs
        if ct.any():
            matched = gr.irfft(_rfft2(n_t[ct]) * self.kft[ct]) + extra_t[ct]
            noise_d[ct] = noise_s[ct] - matched
        return noise_s, noise_t, noise_d
