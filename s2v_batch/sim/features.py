"""Features of simulated stamps for the labels CSV, measured on the pixels as autoscan did.

The autoscan CSV (Goldstein et al. 2015, table 2) holds 38 features per detection; the simulator
writes a similar set measured on its own stamps (PSF-fit flux and S/N on the difference image,
aperture sums, negative-pixel counts, shape moments, ...) plus the observing conditions. They are
kept for users and the report, not needed for scoring.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from s2v_batch.sim.survey import SurveyProfile

_F32 = np.float32


def measure(
    pix: np.ndarray,
    masked: np.ndarray,
    psf: np.ndarray,
    cond: dict,
    sig_d: np.ndarray,
    c: int,
    profile: SurveyProfile,
) -> pd.DataFrame:
    """autoscan-like features measured on the stamps (after Goldstein et al. 2015, table 2).

    Parameters
    ----------
    pix : numpy.ndarray
        ``(n, h, w, 3)`` stamps (srch, temp, diff), NaN where masked.
    masked : numpy.ndarray
        ``(n, h, w)`` masked pixels.
    psf : numpy.ndarray
        ``(n, h, w)`` PSF of a point source at the centre of the difference image (the PSF fit).
    cond : dict
        Observing conditions (:func:`s2v_batch.sim.survey.draw_conditions`).
    sig_d : numpy.ndarray
        Sky noise per pixel of the difference image.
    c : int
        Index of the centre pixel.
    profile : SurveyProfile
        Survey (band names).

    Returns
    -------
    pandas.DataFrame
        One row per stamp; ``CCDID`` is 0 (the caller sets it).
    """
    n = pix.shape[0]
    d = np.nan_to_num(pix[..., 2], nan=0.0)
    t = np.nan_to_num(pix[..., 1], nan=0.0)
    p = psf * ~masked
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
    sd = np.asarray(sig_d, np.float32)[:, None, None]
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
            "BAND": np.asarray(profile.bands)[cond["band"]],
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


def lag1_autocorrelation(images: np.ndarray, strip: int | None = None) -> np.ndarray:
    """Lag-1 pixel autocorrelation of the noise in the side strips of each stamp.

    The strips are the ``strip`` leftmost and rightmost columns (default: a quarter of the stamp
    each), away from the detection at the centre. In each strip the median is removed and pixels
    more than 3 robust sigma (1.4826 MAD) from it are left out (stars and galaxy cores are not
    noise), as are NaN pixels; neighbouring pairs along x and along y within the strips are
    pooled into one correlation coefficient per stamp. The figures for real DES stamps in
    docs/SIMULATOR.md (median 0.12 for difference stamps, 0.07 for search stamps) are what this
    measures on the simulated ones.

    Parameters
    ----------
    images : numpy.ndarray
        ``(n, h, w)`` one channel of a batch of stamps.
    strip : int, optional
        Strip width in pixels.

    Returns
    -------
    numpy.ndarray
        float64 ``(n,)``; NaN where a stamp has no valid pair.
    """
    a = np.asarray(images, dtype=np.float64)
    w = a.shape[2]
    k = strip or max(2, w // 4)
    num = np.zeros(a.shape[0])
    den_a = np.zeros(a.shape[0])
    den_b = np.zeros(a.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN strips: masked stamps
        for part in (a[:, :, :k], a[:, :, w - k :]):
            part = part - np.nanmedian(part, axis=(1, 2), keepdims=True)
            sig = 1.4826 * np.nanmedian(np.abs(part), axis=(1, 2), keepdims=True)
            part = np.where(np.abs(part) <= 3.0 * sig, part, np.nan)
            part = part - np.nanmean(part, axis=(1, 2), keepdims=True)
            for x, y in ((part[:, :, :-1], part[:, :, 1:]), (part[:, :-1, :], part[:, 1:, :])):
                ok = np.isfinite(x) & np.isfinite(y)
                x, y = np.where(ok, x, 0.0), np.where(ok, y, 0.0)
                num += (x * y).sum(axis=(1, 2))
                den_a += (x * x).sum(axis=(1, 2))
                den_b += (y * y).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / np.sqrt(den_a * den_b)
