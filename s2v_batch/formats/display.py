"""Stamps for the eye: the display stretch (zscale; symmetric for diff) and PNG images of triplets.

The reports' galleries and the scanning page show stamps the same way: per stamp and channel,
``srch`` and ``temp`` with astropy's zscale, ``diff`` linear and symmetric about its median, so a
zero difference is mid-grey and a negative one (a dipole's lobe) is as visible as a positive one.
Pure numpy (astropy and PIL imported when used).
"""

from __future__ import annotations

import io

import numpy as np

__all__ = ["GAP", "STRETCH", "sprite_png", "stretch", "triplet_png"]

STRETCH = (
    "srch, temp: zscale (astropy ZScaleInterval), linear; diff: linear, symmetric about its "
    "median, +- the 99.5th percentile of |diff - median|; white is bright"
)
GAP = 2  # pixels between the channels of a triplet and between triplets


def stretch(pixels: np.ndarray) -> np.ndarray:
    """Display stretch of ``(n, h, w, 3)`` stamps to uint8, per stamp and channel.

    Parameters
    ----------
    pixels : numpy.ndarray
        ``(n, h, w, 3)`` stamps (srch, temp, diff), any numeric dtype; NaN allowed.

    Returns
    -------
    numpy.ndarray
        uint8 of the same shape (a channel without finite pixels stays 0, a flat one 128).
    """
    # deferred: astropy is slow to import and only the pages that show stamps need it
    from astropy.visualization import ZScaleInterval

    out = np.zeros(pixels.shape, np.uint8)
    zscale = ZScaleInterval()
    for i in range(pixels.shape[0]):
        for ch in range(pixels.shape[3]):
            a = pixels[i, :, :, ch].astype(np.float64)
            good = a[np.isfinite(a)]
            if good.size == 0:
                continue
            if ch < 2:  # srch, temp
                lo, hi = zscale.get_limits(good)
            else:  # diff: 0 (the background) mid-grey, positive and negative alike
                mid = float(np.median(good))
                half = float(np.percentile(np.abs(good - mid), 99.5))
                lo, hi = mid - half, mid + half
            if not hi > lo:
                out[i, :, :, ch] = 128
                continue
            v = np.clip((np.nan_to_num(a, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
            out[i, :, :, ch] = np.round(v * 255).astype(np.uint8)
    return out


def sprite_png(stamps: np.ndarray, optimize: bool = True) -> tuple[bytes, list[int]]:
    """A column of srch | temp | diff triplets (uint8 ``(n, h, w, 3)``); PNG and its [w, h].

    Parameters
    ----------
    stamps : numpy.ndarray
        Stretched stamps, uint8 ``(n, h, w, 3)``.
    optimize : bool
        PIL's smallest-file search (slower; worth it for a report written once).

    Returns
    -------
    tuple of (bytes, list of int)
        The greyscale PNG and its ``[width, height]``.
    """
    # deferred: PIL is only needed where images are written
    from PIL import Image

    n, h, w, _ = stamps.shape
    width = 3 * w + 2 * GAP
    img = np.full((n * (h + GAP) - GAP, width), 255, np.uint8)
    for i in range(n):
        y = i * (h + GAP)
        for ch in range(3):
            x = ch * (w + GAP)
            img[y : y + h, x : x + w] = stamps[i, :, :, ch]
    buf = io.BytesIO()
    Image.fromarray(img, mode="L").save(buf, format="PNG", optimize=optimize)
    return buf.getvalue(), [width, int(img.shape[0])]


def triplet_png(pixels: np.ndarray) -> bytes:
    """One stamp ``(h, w, 3)`` as a srch | temp | diff PNG at stored resolution, stretched.

    Parameters
    ----------
    pixels : numpy.ndarray
        One stamp's pixels as stored.

    Returns
    -------
    bytes
        The PNG (the page enlarges it with square pixels).
    """
    png, _ = sprite_png(stretch(np.asarray(pixels)[None]), optimize=False)
    return png
