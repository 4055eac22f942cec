"""Tests of the stamp simulator: physics sanity, survey statistics (noise texture, S/N counts,
the real/artifact mix), survey profiles, the gif/fits encoders, the on-disk layouts."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from s2v_batch.core.conventions import CHANNELS
from s2v_batch.ingest.labels import read_labels
from s2v_batch.sim.artifacts import COLUMN_NOISE_SHARE
from s2v_batch.sim.physics import ARTIFACT_KINDS, ARTIFACT_WEIGHTS, MAX_SNR
from s2v_batch.sim.simulator import (
    DES,
    FILL_1E30,
    KINDS,
    LABELS_CSV,
    RUBIN,
    SEASON_FIRST_NIGHT,
    STREAM_REAL_FRACTION,
    ZTF,
    SimulatedBatch,
    SimulationError,
    SimulationSummary,
    fits_bytes,
    get_profile,
    lag1_autocorrelation,
    pack_night_as_tar,
    render_gif,
    simulate,
    simulate_stamps,
)

FILE_RE = re.compile(r"^(srch|temp|diff)(\d+)\.(gif|fits)$")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def batch() -> SimulatedBatch:
    return simulate_stamps(1200, np.random.default_rng(20130901))


@pytest.fixture(scope="session")
def reals() -> SimulatedBatch:
    """Real transients only: enough of them for their S/N distribution and the bright tail."""
    return simulate_stamps(1500, np.random.default_rng(1501), real_fraction=1.0)


def _kind(batch: SimulatedBatch, kind: str) -> np.ndarray:
    idx = np.flatnonzero(batch.kinds == kind)
    assert idx.size >= 20, f"too few {kind} stamps in the fixture"
    return idx


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, comment="#")


# --------------------------------------------------------------------------- in-memory batch


def test_batch_contract(batch: SimulatedBatch) -> None:
    n = 1200
    assert batch.pixels.shape == (n, 51, 51, 3) and batch.pixels.dtype == np.float32
    assert batch.labels.shape == (n,) and batch.labels.dtype == np.int8
    assert set(np.unique(batch.labels)) == {0, 1}
    assert set(batch.kinds) == set(KINDS)  # every kind occurs in 1200 stamps
    np.testing.assert_array_equal(batch.labels == 1, batch.kinds == "real")
    assert len(batch.features) == n
    for col in ("BAND", "CCDID", "MAG", "SNR", "FWHM", "SKYSIG", "SIM_KIND"):
        assert col in batch.features.columns
    assert set(batch.features["BAND"]) <= {"g", "r", "i", "z"}
    assert batch.features["CCDID"].between(1, 62).all()
    assert batch.features["FWHM"].between(0.8, 2.0).all()
    np.testing.assert_array_equal(batch.features["SIM_KIND"].to_numpy(), batch.kinds)
    assert 0.4 < batch.labels.mean() < 0.6


def test_masks_are_nan_in_all_channels_and_nowhere_else(batch: SimulatedBatch) -> None:
    assert batch.masked.shape == batch.pixels.shape[:3] and batch.masked.dtype == bool
    nan = np.isnan(batch.pixels)
    for c in range(3):
        np.testing.assert_array_equal(nan[..., c], batch.masked)
    assert np.isfinite(batch.pixels[~batch.masked]).all()
    stamps_masked = batch.masked.any(axis=(1, 2))
    assert 0.005 < stamps_masked.mean() < 0.08  # about 3%
    # A CCD edge: whole rows or whole columns at one side, never the centre.
    for i in np.flatnonzero(stamps_masked):
        m = batch.masked[i]
        assert m.all(axis=0).any() or m.all(axis=1).any()
        assert not m[25, 25]
    np.testing.assert_allclose(
        batch.features["MASKFRAC"], batch.masked.mean(axis=(1, 2)), rtol=1e-6
    )


def test_same_seed_same_stamps_other_seed_other_stamps() -> None:
    a = simulate_stamps(50, np.random.default_rng(7))
    b = simulate_stamps(50, np.random.default_rng(7))
    c = simulate_stamps(50, np.random.default_rng(8))
    np.testing.assert_array_equal(a.pixels, b.pixels)  # NaN compare equal here
    np.testing.assert_array_equal(a.kinds, b.kinds)
    pd.testing.assert_frame_equal(a.features, b.features)
    assert not np.array_equal(a.pixels, c.pixels, equal_nan=True)


def test_real_fraction_extremes_and_empty() -> None:
    rng = np.random.default_rng(1)
    assert (simulate_stamps(30, rng, real_fraction=1.0).kinds == "real").all()
    assert (simulate_stamps(30, rng, real_fraction=0.0).labels == 0).all()
    empty = simulate_stamps(0, rng)
    assert empty.pixels.shape == (0, 51, 51, 3) and len(empty.features) == 0


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 25),
    size=st.sampled_from([16, 21, 33, 50, 51, 63]),
    frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_shapes_and_invariants_any_size(n: int, size: int, frac: float, seed: int) -> None:
    b = simulate_stamps(n, np.random.default_rng(seed), size=size, real_fraction=frac)
    assert b.pixels.shape == (n, size, size, 3)
    assert b.masked.shape == (n, size, size)
    np.testing.assert_array_equal(np.isnan(b.pixels).any(axis=3), b.masked)
    np.testing.assert_array_equal(b.labels == 1, b.kinds == "real")
    assert len(b.features) == n
    assert np.isfinite(b.pixels[~b.masked]).all()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": -1},
        {"n": 2.5},
        {"size": 8},
        {"real_fraction": 1.5},
        {"real_fraction": "half"},
        {"real_fraction": True},
        {"real_fraction": float("nan")},
        {"rng": 3},
    ],
)
def test_simulate_stamps_bad_arguments(kwargs: dict) -> None:
    args = {"n": 3, "rng": np.random.default_rng(0)} | kwargs
    n, rng = args.pop("n"), args.pop("rng")
    with pytest.raises(SimulationError):
        simulate_stamps(n, rng, **args)


# --------------------------------------------------------------------------- physics


def _centre_flux(img: np.ndarray, fwhm_px: np.ndarray, r: int = 12) -> np.ndarray:
    """PSF-weighted (Gaussian of the stamp's FWHM) flux at the centre of ``img`` (n, h, w)."""
    c = img.shape[1] // 2
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    s2 = (fwhm_px / 2.3548)[:, None, None] ** 2
    w = np.exp(-0.5 * (x * x + y * y)[None] / s2)
    cut = np.nan_to_num(img[:, c - r : c + r + 1, c - r : c + r + 1])
    return (w * cut).sum(axis=(1, 2)) / (w * w).sum(axis=(1, 2))


def test_real_stamps_have_a_new_psf_like_source_in_srch_and_diff_not_in_temp(reals) -> None:
    batch = reals
    idx = _kind(batch, "real")
    f = batch.features.iloc[idx]
    fwhm_px = f["FWHM"].to_numpy() / 0.263
    snr_true = f["SIM_SNR"].to_numpy()
    assert np.nanmin(snr_true) >= 5 and np.nanmax(snr_true) <= MAX_SNR
    pix = batch.pixels[idx]
    diff_flux = _centre_flux(pix[..., 2], fwhm_px)
    srch_flux = _centre_flux(pix[..., 0], fwhm_px)
    temp_flux = _centre_flux(pix[..., 1], fwhm_px)
    bright = snr_true > 20
    assert (diff_flux[bright] > 0).all()
    assert (f["SNR"].to_numpy()[bright] > 8).mean() > 0.95
    # The new source is what srch has and temp lacks: srch - temp at the centre ~ diff (where
    # the subtraction convolved the template: else diff shows the source broadened by K).
    tconv = f["SIM_CONV_SEARCH"].to_numpy() == 0
    no_host = (f["SIM_HOST"].to_numpy() == 0) & bright & tconv
    assert no_host.sum() >= 10
    ratio = temp_flux[no_host] / diff_flux[no_host]
    assert np.median(np.abs(ratio)) < 0.1  # the template shows no source there
    # (a field star near the centre may add to srch and temp alike: hence the quantiles)
    rel = np.abs(srch_flux[no_host] - diff_flux[no_host]) / diff_flux[no_host]
    assert np.median(rel) < 0.1 and (rel < 0.35).mean() > 0.9
    # PSF-like: the diff source correlates with a Gaussian of the seeing.
    c, r = 25, 6
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    for i in np.flatnonzero(snr_true > 40)[:30]:
        s2 = (fwhm_px[i] / 2.3548) ** 2
        model = np.exp(-0.5 * (x * x + y * y) / s2).ravel()
        cut = np.nan_to_num(pix[i, c - r : c + r + 1, c - r : c + r + 1, 2]).ravel()
        assert np.corrcoef(model, cut)[0, 1] > 0.7


def test_real_sources_are_slightly_off_centre(reals) -> None:
    batch = reals
    idx = _kind(batch, "real")
    snr = batch.features["SIM_SNR"].to_numpy()[idx]
    pix = np.nan_to_num(batch.pixels[idx[snr > 30], 19:32, 19:32, 2])
    # Smooth 3x3 (a little noise must not move the peak), then find it in the central 11x11.
    sm = sum(pix[:, 1 + dy : 12 + dy, 1 + dx : 12 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    peaks = np.array([np.unravel_index(np.argmax(p), p.shape) for p in sm]) - 5
    off = np.abs(peaks).max(axis=1)
    assert (off <= 1).mean() > 0.9  # within ~1 px
    assert (off > 0).any()  # not all exactly centred


def test_dipoles_have_a_positive_and_a_negative_lobe(batch) -> None:
    idx = _kind(batch, "dipole")
    sig = batch.features["DIFFSIG"].to_numpy()[idx]
    box = np.nan_to_num(batch.pixels[idx, 19:32, 19:32, 2])
    lo = box.min(axis=(1, 2)) / sig
    hi = box.max(axis=(1, 2)) / sig
    # Detections near the threshold (PSF-fit S/N from 4.5): both lobes stand out of the noise.
    both = (lo < -3) & (hi > 3)
    assert both.mean() > 0.85
    # Real stamps rarely show a strong negative lobe.
    ridx = _kind(batch, "real")
    rbox = np.nan_to_num(batch.pixels[ridx, 19:32, 19:32, 2])
    rlo = rbox.min(axis=(1, 2)) / batch.features["DIFFSIG"].to_numpy()[ridx]
    assert (rlo < -6).mean() < 0.2


def test_cosmic_rays_are_sharp_and_only_in_srch_and_diff(batch) -> None:
    idx = _kind(batch, "cosmic_ray")
    pix = np.nan_to_num(batch.pixels[idx])
    f = batch.features.iloc[idx]
    sig = f["SKYSIG"].to_numpy()
    peak_s = pix[:, 24:27, 24:27, 0].max(axis=(1, 2)) / sig
    peak_d = pix[:, 24:27, 24:27, 2].max(axis=(1, 2)) / sig
    assert (peak_s > 4).mean() > 0.9 and (peak_d > 4).mean() > 0.9
    # Sharper than any PSF: the brightest pixel dominates its neighbours (Laplacian), unlike reals.
    ridx = _kind(batch, "real")
    real_lap = batch.features["LACOSMIC"].to_numpy()[ridx]
    assert np.median(f["LACOSMIC"]) > 5 * np.median(real_lap)


def test_bad_columns_are_lines_through_the_centre_in_srch_and_diff(batch) -> None:
    idx = _kind(batch, "bad_column")
    pix = np.nan_to_num(batch.pixels[idx])
    sig = batch.features["SKYSIG"].to_numpy()[idx]
    hits = 0
    for k in range(len(idx)):
        for c in (0, 2):  # srch and diff
            img = pix[k, :, :, c]
            # Median along each of the central 3 columns / rows over the half of its length
            # with the defect on it: a line stands out above the noise.
            lines = np.concatenate([img[:, 24:27].T, img[24:27, :]])
            level = np.max(np.maximum(np.median(lines[:, :25], 1), np.median(lines[:, 26:], 1)))
            hits += level > 2 * sig[k]
    assert hits / (2 * len(idx)) > 0.9


def test_noise_spikes_are_faint_detections(batch) -> None:
    idx = _kind(batch, "noise_spike")
    snr = batch.features["SNR"].to_numpy()[idx]
    assert 2.5 < np.median(snr) < 7.5
    assert np.quantile(snr, 0.95) < 12


def test_bright_stars_saturate_with_flat_tops(batch) -> None:
    idx = _kind(batch, "bright_star")
    flat = 0
    for i in idx:
        s = np.nan_to_num(batch.pixels[i, :, :, 0])
        top = s.max()
        # Saturated: many pixels share (within noise) the same top value.
        flat += (s > top - 5 * batch.features["SKYSIG"].iloc[i]).sum() >= 3
    assert flat / len(idx) > 0.5


def test_bad_subtractions_sit_on_a_galaxy_core_in_the_template(batch) -> None:
    idx = _kind(batch, "bad_subtraction")
    f = batch.features.iloc[idx]
    assert (f["SIM_HOST"] == 1).all()
    t = _centre_flux(batch.pixels[idx, :, :, 1], f["FWHM"].to_numpy() / 0.263)
    d = _centre_flux(batch.pixels[idx, :, :, 2], f["FWHM"].to_numpy() / 0.263)
    assert (t > 10 * np.abs(d)).mean() > 0.5  # a residual, small next to the galaxy itself


# --------------------------------------------------------------------------- artifact classes


@pytest.fixture(scope="session")
def artifacts() -> SimulatedBatch:
    """Artifacts only: enough of each class (the rarest is 2% of them) for shares and pixels."""
    return simulate_stamps(4000, np.random.default_rng(2026), real_fraction=0.0)


def test_artifact_classes_and_their_shares(artifacts) -> None:
    """Every class of docs/SIMULATOR.md's table, each with its share within binomial error."""
    old = {"dipole", "bright_star", "cosmic_ray", "bad_column", "noise_spike", "bad_subtraction"}
    new = {"psf_mismatch", "double_star", "hot_pixel", "ccd_edge", "satellite_trail", "ghost"}
    assert set(ARTIFACT_KINDS) == old | new  # the old names kept (reports and tests read them)
    assert ARTIFACT_WEIGHTS.sum() == pytest.approx(1.0)
    n = len(artifacts.kinds)
    for kind, w in zip(ARTIFACT_KINDS, ARTIFACT_WEIGHTS, strict=True):
        share = (artifacts.kinds == kind).mean()
        assert abs(share - w) < 4 * np.sqrt(w * (1 - w) / n), kind
    # Subtraction residuals of stars and galaxy cores are most of a night's artifacts.
    residuals = np.isin(
        artifacts.kinds, ["dipole", "psf_mismatch", "double_star", "bad_subtraction"]
    )
    assert 0.5 < residuals.mean() < 0.62


def _ring_stats(batch: SimulatedBatch, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean diff (in DIFFSIG) within 0.6 FWHM of the centre, and whether the four quadrants of
    the annulus 1-2 FWHM all carry the opposite sign (a ring, not a dipole's lobe)."""
    f = batch.features.iloc[idx]
    fw = f["FWHM"].to_numpy() / 0.263
    sd = f["DIFFSIG"].to_numpy()
    yy, xx = np.mgrid[0:51, 0:51] - 25
    r, quad = np.hypot(yy, xx), (np.arctan2(yy, xx) + np.pi) // (np.pi / 2) % 4
    core, ring = np.empty(idx.size), np.empty(idx.size, bool)
    for j, i in enumerate(idx):
        d = np.nan_to_num(batch.pixels[i, :, :, 2]) / sd[j]
        core[j] = d[r <= 0.6 * fw[j]].mean()
        ann = (r >= fw[j]) & (r <= 2 * fw[j])
        q = np.array([d[ann & (quad == k)].mean() for k in range(4)])
        ring[j] = bool(np.all(np.sign(q) == -np.sign(core[j])))
    return core, ring


def test_psf_mismatch_leaves_a_core_and_a_ring_of_opposite_signs(artifacts) -> None:
    idx = _kind(artifacts, "psf_mismatch")
    core, ring = _ring_stats(artifacts, idx)
    assert ring.mean() > 0.5  # all around: a ring, not a lobe
    assert 0.3 < (core > 0).mean() < 0.7  # dark cores in bright rings, and the reverse
    assert (np.abs(core) > 1).mean() > 0.8  # the core stands out of the noise
    # A dipole's residual is not a ring: its lobes have opposite signs on either side.
    assert _ring_stats(artifacts, _kind(artifacts, "dipole"))[1].mean() < 0.1
    # The star itself is in the template, plain (the residual is small next to it).
    f = artifacts.features.iloc[idx]
    t = _centre_flux(artifacts.pixels[idx, :, :, 1], f["FWHM"].to_numpy() / 0.263)
    d = _centre_flux(artifacts.pixels[idx, :, :, 2], f["FWHM"].to_numpy() / 0.263)
    assert np.median(t / np.abs(d)) > 5


def test_double_stars_are_two_stars_with_residuals_of_both_signs(artifacts) -> None:
    idx = _kind(artifacts, "double_star")
    sd = artifacts.features["DIFFSIG"].to_numpy()[idx]
    box = np.nan_to_num(artifacts.pixels[idx, 15:36, 15:36, 2]) / sd[:, None, None]
    assert ((box.min(axis=(1, 2)) < -3) & (box.max(axis=(1, 2)) > 3)).mean() > 0.85
    # The template shows the pair: its light near the centre is elongated (second moments),
    # unlike the single stars of psf_mismatch.
    doubles = np.median(_axis_ratio(artifacts.pixels[idx, 13:38, 13:38, 1]))
    single = np.median(
        _axis_ratio(artifacts.pixels[_kind(artifacts, "psf_mismatch"), 13:38, 13:38, 1])
    )
    assert doubles > 1.5 > 1.25 > single


def _axis_ratio(img: np.ndarray) -> np.ndarray:
    """Major / minor axis of the light above the median in a batch of ``(m, h, w)`` images."""
    t = np.nan_to_num(img)
    t = np.clip(t - np.median(t, axis=(1, 2), keepdims=True), 0, None)
    h = img.shape[1] // 2
    y, x = np.mgrid[-h : h + 1, -h : h + 1]
    w = t.sum(axis=(1, 2))
    mx, my = (t * x).sum(axis=(1, 2)) / w, (t * y).sum(axis=(1, 2)) / w
    vxx = (t * x * x).sum(axis=(1, 2)) / w - mx**2
    vyy = (t * y * y).sum(axis=(1, 2)) / w - my**2
    vxy = (t * x * y).sum(axis=(1, 2)) / w - mx * my
    tr, det = vxx + vyy, vxx * vyy - vxy**2
    ev = np.sqrt(np.clip(tr * tr / 4 - det, 0, None))
    return (tr / 2 + ev) / np.maximum(tr / 2 - ev, 1e-9)


def test_hot_pixels_are_one_pixel_or_four_in_search_only(artifacts) -> None:
    idx = _kind(artifacts, "hot_pixel")
    f = artifacts.features.iloc[idx]
    sig = f["SKYSIG"].to_numpy()
    single = 0
    for j, i in enumerate(idx):
        s = np.nan_to_num(artifacts.pixels[i, :, :, 0])
        t = np.nan_to_num(artifacts.pixels[i, :, :, 1])
        py, px = np.unravel_index(np.argmax(s[23:28, 23:28]), (5, 5))
        py, px = py + 23, px + 23
        excess = s[py - 1 : py + 2, px - 1 : px + 2] - np.median(
            s[py - 3 : py + 4, px - 3 : px + 4]
        )
        peak = excess[1, 1]
        assert peak > 5 * sig[j]  # a detection in the search image
        n_hot = int((excess > 0.5 * peak).sum())
        assert n_hot <= 4  # sharper than any PSF: one pixel or a 2x2 group
        single += n_hot == 1
        # Nothing there in the template.
        assert t[py, px] - np.median(t[py - 3 : py + 4, px - 3 : px + 4]) < 0.2 * peak
    assert 0.5 < single / idx.size < 0.9  # 70% single pixels


def test_satellite_trails_cross_the_whole_stamp_through_the_centre(artifacts) -> None:
    idx = _kind(artifacts, "satellite_trail")
    sig = artifacts.features["SKYSIG"].to_numpy()[idx]
    yy, xx = np.mgrid[0:51, 0:51]
    border = np.minimum(np.minimum(yy, xx), np.minimum(50 - yy, 50 - xx)) < 2
    crossing = 0
    for j, i in enumerate(idx):
        s = np.nan_to_num(artifacts.pixels[i, :, :, 0])
        med = np.median(s)
        assert s[24:27, 24:27].max() - med > 5 * sig[j]  # on the detection
        pts = np.argwhere(border & (s > med + 5 * sig[j]) & ~artifacts.masked[i])
        if len(pts) >= 2:
            span = np.hypot(*(pts[:, None, :] - pts[None, :, :]).transpose(2, 0, 1)).max()
            crossing += span > 0.8 * 51  # it enters and leaves the stamp on opposite sides
    assert crossing / idx.size > 0.9
    # Search only: the template shows no line through the centre.
    t = np.nan_to_num(artifacts.pixels[idx, 24:27, 24:27, 1]).max(axis=(1, 2))
    s = np.nan_to_num(artifacts.pixels[idx, 24:27, 24:27, 0]).max(axis=(1, 2))
    assert np.median(t / s) < 0.3


def test_ghosts_are_diffuse_and_faint_in_search_and_diff_only(artifacts) -> None:
    idx = _kind(artifacts, "ghost")
    f = artifacts.features.iloc[idx]
    sd = f["DIFFSIG"].to_numpy()
    yy, xx = np.mgrid[0:51, 0:51] - 25
    near = np.hypot(yy, xx) <= 5
    d = np.nan_to_num(artifacts.pixels[idx, :, :, 2]) / sd[:, None, None]
    mean_near = d[:, near].mean(axis=1)
    # A low-surface-brightness excess over tens of pixels, with no bright compact source.
    assert ((mean_near > 0.2) & (mean_near < 3)).mean() > 0.85
    assert np.median(d.max(axis=(1, 2))) < 6
    # Not in the template.
    t = np.nan_to_num(artifacts.pixels[idx, :, :, 1])
    t_near = (t[:, near].mean(axis=1) - np.median(t, axis=(1, 2))) / f["SKYSIG"].to_numpy()
    assert np.median(np.abs(t_near)) < 0.2 * np.median(mean_near)


def test_ccd_edge_detections_glow_beside_a_masked_edge(artifacts) -> None:
    idx = _kind(artifacts, "ccd_edge")
    sig = artifacts.features["SKYSIG"].to_numpy()[idx]
    for j, i in enumerate(idx):
        m = artifacts.masked[i]
        assert m.any() and not m[25, 25]  # masked beyond the edge, the detection inside
        # Whole rows or columns on one side, the edge within 7 px of the centre.
        rows, cols = m.all(axis=1), m.all(axis=0)
        assert rows.any() or cols.any()
        line = rows if rows.any() else cols
        edge = np.flatnonzero(line)
        first = edge.max() + 1 if edge.min() == 0 else edge.min() - 1  # first unmasked line
        assert 1 <= abs(first - 25) <= 7
        # The glow: brightest along the edge, still a detection at the centre.
        s = np.nan_to_num(artifacts.pixels[i, :, :, 0]) - np.nanmedian(artifacts.pixels[i, :, :, 0])
        along = s[first, 20:31] if rows.any() else s[20:31, first]
        at_centre = s[24:27, 24:27].mean()
        assert along.mean() > at_centre > 1.5 * sig[j]
    # Other stamps are masked too (3% of them), but never the ccd_edge's way by construction.
    others = artifacts.kinds != "ccd_edge"
    assert 0.01 < artifacts.masked[others].any(axis=(1, 2)).mean() < 0.06


def test_some_noise_spikes_ride_on_column_structured_noise(artifacts) -> None:
    """The DES sample's noise artifact shows columns: a share of the noise spikes carry them."""

    def column_ratio(idx: np.ndarray) -> np.ndarray:
        out = []
        for c in (0, 1):
            x = np.nan_to_num(artifacts.pixels[idx, :, :, c])
            x -= np.median(x, axis=(1, 2), keepdims=True)
            out.append(x.mean(axis=1).var(axis=1) / x.mean(axis=2).var(axis=1))
        return np.maximum(*out)

    noise = (column_ratio(_kind(artifacts, "noise_spike")) > 3).mean()
    cosmic = (column_ratio(_kind(artifacts, "cosmic_ray")) > 3).mean()
    assert 0.08 < noise < COLUMN_NOISE_SHARE
    assert noise > 4 * cosmic


# --------------------------------------------------------------------------- survey statistics


def test_noise_texture_matches_measured_des_stamps(batch) -> None:
    """Lag-1 noise autocorrelation in the side strips, against real DES stamps: difference median
    ~0.12 (quartiles 0.06-0.26), search ~0.07 (docs/SIMULATOR.md). White noise would give ~0."""
    d = lag1_autocorrelation(batch.pixels[..., 2])
    s = lag1_autocorrelation(batch.pixels[..., 0])
    q25, med, q75 = np.nanquantile(d, [0.25, 0.5, 0.75])
    assert 0.09 <= med <= 0.16
    assert 0.01 <= q25 <= 0.08
    assert 0.19 <= q75 <= 0.32
    assert 0.04 <= np.nanmedian(s) <= 0.10
    # Made by the subtraction: where it convolved the search image (sharper than the template),
    # the difference's noise is the smoothest.
    conv = batch.features["SIM_CONV_SEARCH"].to_numpy() == 1
    assert 0.2 < conv.mean() < 0.6
    assert np.nanmedian(d[conv]) > 2 * np.nanmedian(d[~conv])
    assert np.nanmedian(d[conv]) > np.nanmedian(s[conv]) + 0.1


def test_lag1_autocorrelation_measures_what_it_says() -> None:
    rng = np.random.default_rng(2)
    white = rng.normal(0.0, 5.0, (200, 51, 52))
    assert abs(np.nanmedian(lag1_autocorrelation(white[:, :, :51]))) < 0.02
    # A 2-tap sum along x: correlation 0.5 along x, 0 along y; pooled over the strips' pairs
    # (51 x 11 along x, 50 x 12 along y) that is 0.5 * 561 / 1161.
    pairs = white[:, :, 1:] + white[:, :, :-1]
    np.testing.assert_allclose(np.median(lag1_autocorrelation(pairs)), 0.5 * 561 / 1161, atol=0.02)
    # A bright star in a strip is not noise (clipped); NaN pixels (masks) are left out.
    yy, xx = np.mgrid[0:51, 0:51]
    star = 400.0 * np.exp(-((yy - 20.0) ** 2 + (xx - 5.0) ** 2) / 4.0)
    masked = white[:, :, :51] + star
    masked[:, :10, :] = np.nan
    assert abs(np.nanmedian(lag1_autocorrelation(masked))) < 0.03
    assert np.isnan(lag1_autocorrelation(np.full((1, 51, 51), np.nan))).all()


def test_real_detections_follow_euclidean_counts_down_to_the_threshold(reals) -> None:
    """N(>S/N) ~ (S/N)^-1.5 above S/N 5: most real detections are faint."""
    f = reals.features
    true = f["SIM_SNR"].to_numpy()
    assert true.min() >= 5.0
    # Maximum-likelihood slope of a power law above s0: n / sum(ln(S / s0)).
    slope = len(true) / np.log(true / 5.0).sum()
    assert abs(slope - 1.5) < 0.12
    # Measured on the pixels (PSF fit on the difference, as the CSV's SNR): the same slope above
    # where the threshold's scatter matters, and a soft edge near 5.
    meas = f["SNR"].to_numpy()
    for s0 in (8.0, 12.0):
        above = meas[meas > s0]
        assert 1.25 < len(above) / np.log(above / s0).sum() < 1.75
    assert 6.5 < np.median(meas) < 10.0
    assert (meas < 4.0).mean() < 0.12
    # Cumulative counts halve for every factor 2**(2/3) = 1.59 in S/N.
    n6, n24 = (true > 6.0).sum(), (true > 24.0).sum()
    assert 0.09 < n24 / n6 < 0.16  # 4**-1.5 = 0.125


@pytest.mark.parametrize("frac", [STREAM_REAL_FRACTION, 0.5])
def test_real_fraction_sets_the_mix(frac: float) -> None:
    n = 2000
    b = simulate_stamps(n, np.random.default_rng(33), real_fraction=frac)
    assert abs(b.labels.mean() - frac) < 4 * np.sqrt(frac * (1 - frac) / n)
    art = b.kinds[b.labels == 0]
    assert set(art) == set(KINDS) - {"real"}  # every artifact kind in either mix


def test_stream_fraction_is_a_stream_like_mix() -> None:
    # docs/SIMULATOR.md: about 1 real detection in 15-20 (Kessler et al. 2015, Goldstein et al.
    # 2015); a perfect model keeping 99% of reals then cuts the stamps to scan by ~17x.
    assert 0.04 <= STREAM_REAL_FRACTION <= 0.08


def test_simulate_writes_the_stream_mix_and_says_so(tmp_path: Path) -> None:
    s = simulate(tmp_path, nights=2, stamps_per_night=600, fmt="tar", seed=3, real_fraction=0.06)
    assert s.real_fraction == 0.06
    df = _csv(s.labels_csv)
    assert abs((df["OBJECT_TYPE"] == 0).mean() - 0.06) < 4 * np.sqrt(0.06 * 0.94 / 1200)
    assert s.n_real == int((df["OBJECT_TYPE"] == 0).sum())
    assert "real_fraction=0.06" in s.labels_csv.read_text().splitlines()[1]


def test_cli_real_fraction(tmp_path: Path) -> None:
    def s2v(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "s2v_batch.cli", "simulate", *args, "--no-progress"]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)

    r = s2v("raw", "--nights", "1", "--stamps-per-night", "400", "--real-fraction", "0.06")
    assert r.returncode == 0, r.stderr
    df = _csv(tmp_path / "raw" / LABELS_CSV)
    assert 0.02 < (df["OBJECT_TYPE"] == 0).mean() < 0.11
    bad = s2v("bad", "--real-fraction", "1.5")
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "--real-fraction" in bad.stderr
    assert "Traceback" not in bad.stderr


# --------------------------------------------------------------------------- survey profiles


@pytest.mark.parametrize("profile", [DES, ZTF, RUBIN])
def test_survey_profiles_render_their_own_stamps(profile) -> None:
    # 600 stamps, mostly artifacts: the rarest kinds (2% of artifacts) occur too.
    b = simulate_stamps(600, np.random.default_rng(4), survey=profile.name, real_fraction=0.1)
    size = profile.stamp_size
    assert b.pixels.shape == (600, size, size, 3) and b.survey is profile
    assert np.isfinite(b.pixels[~b.masked]).all()
    f = b.features
    assert f["FWHM"].between(*profile.seeing).all()
    assert set(f["BAND"]) <= set(profile.bands)
    assert f["CCDID"].between(1, profile.n_ccds).all()
    assert set(b.kinds) == set(KINDS)


def test_pixel_scale_sets_the_psf_in_pixels() -> None:
    """The same physics: a 2" ZTF PSF on 1.01" pixels is far more compact than DES's 1.3" on
    0.263" pixels or Rubin's 0.8" on 0.2"."""

    def concentration(profile) -> float:
        b = simulate_stamps(400, np.random.default_rng(6), survey=profile, real_fraction=1.0)
        keep = b.features["SIM_SNR"].to_numpy() > 15
        c = profile.stamp_size // 2
        d = np.nan_to_num(b.pixels[keep, :, :, 2])
        inner = d[:, c - 1 : c + 2, c - 1 : c + 2].sum(axis=(1, 2))
        outer = d[:, c - 6 : c + 7, c - 6 : c + 7].sum(axis=(1, 2))
        return float(np.median(inner / outer))

    ztf, des, rubin = concentration(ZTF), concentration(DES), concentration(RUBIN)
    assert ztf > 0.6 > max(des, rubin)
    assert 0.1 < des < 0.5 and 0.1 < rubin < 0.5


def test_profiles_are_validated_and_found_by_name() -> None:
    assert get_profile("ZTF") is ZTF and get_profile(RUBIN) is RUBIN
    with pytest.raises(SimulationError, match="unknown survey"):
        get_profile("hst")
    with pytest.raises(SimulationError, match="unknown survey"):
        simulate_stamps(2, np.random.default_rng(0), survey="hst")
    for bad in (
        {"pixel_scale": -1.0},
        {"stamp_size": 8},
        {"seeing": (2.0, 1.0)},
        {"sky_mag": (21.0,)},
        {"template_noise": (0.5, 3.0)},
        {"resample_order": 7},
        {"search_resampled": 1.5},
    ):
        with pytest.raises(SimulationError):
            DES.replace(**bad)
    small = DES.replace(name="des33", stamp_size=33)
    assert simulate_stamps(3, np.random.default_rng(0), survey=small).pixels.shape[1:] == (
        33,
        33,
        3,
    )


# --------------------------------------------------------------------------- gif


def _gif_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


def test_gif_round_trip_ticks_and_diff_zero_at_mid_grey(batch) -> None:
    # A stamp of sky noise and a sharp track (a noise spike may sit on column-structured noise).
    i = int(_kind(batch, "cosmic_ray")[0])
    for c, ch in enumerate(CHANNELS):
        data = render_gif(batch.pixels[i, :, :, c], ch)
        assert data[:6] == b"GIF89a"
        im = Image.open(io.BytesIO(data))
        assert im.size == (51, 51)
        px = _gif_pixels(data)
        assert px.shape == (51, 51) and px.dtype == np.uint8
        for k in range(1, 5):  # white ticks in the four corners, pointing at the centre
            assert px[k, k] == px[k, 50 - k] == px[50 - k, k] == px[50 - k, 50 - k] == 255
    diff = _gif_pixels(render_gif(batch.pixels[i, :, :, 2], "diff"))
    assert abs(np.median(diff[8:-8, 8:-8]) - 128) <= 4
    zero = _gif_pixels(render_gif(np.zeros((51, 51), np.float32), "diff"))
    assert (zero[10:40, 10:40] == 128).all()


def test_gif_scaling_and_masks() -> None:
    rng = np.random.default_rng(3)
    img = rng.normal(0, 10, (51, 51)).astype(np.float32)
    img[:, :6] = np.nan
    img[:6, 10:] = FILL_1E30
    px = _gif_pixels(render_gif(img, "srch"))
    assert (px[10:45, 1:6] == 0).all() and (px[1:6, 12:45] == 0).all()
    body = px[10:45, 10:45]
    assert body.min() == 0 and body.max() == 255  # robust range: a few pixels clip
    # Monotone: brighter pixels never map darker.
    v = img[10:45, 10:45].ravel()
    order = np.argsort(v)
    assert (np.diff(body.ravel()[order].astype(int)) >= 0).all()


def test_gif_matches_the_ingest_decoder(batch) -> None:
    from s2v_batch.formats.decode import decode_gif

    data = render_gif(batch.pixels[0, :, :, 0], "srch")
    np.testing.assert_array_equal(decode_gif(data, 51), _gif_pixels(data))


@pytest.mark.parametrize(
    ("image", "channel"),
    [(np.zeros((51, 51)), "stack"), (np.zeros((51, 51, 3)), "srch"), (np.zeros(51), "diff")],
)
def test_gif_bad_input(image: np.ndarray, channel: str) -> None:
    with pytest.raises(SimulationError):
        render_gif(image, channel)


# --------------------------------------------------------------------------- fits


def test_fits_bytes_read_by_astropy_big_endian_float32() -> None:
    img = np.arange(51 * 51, dtype=np.float32).reshape(51, 51) / 7
    img[0, :] = np.nan
    img[1, :] = FILL_1E30
    header = {
        "OBJECT": "12345",
        "BAND": "r",
        "CCDNUM": 17,
        "EXPNUM": 229345,
        "MJD-OBS": 56536.125,
        "GAIN": 4.25,
        "SKYSIG": 12.5,
        "FWHM": 4.1,
        "SIMULATD": True,
    }
    data = fits_bytes(img, header)
    assert len(data) % 2880 == 0
    assert data.startswith(b"SIMPLE  =                    T")
    with fits.open(io.BytesIO(data)) as hdul:
        hdu = hdul[0]
        assert hdu.header["BITPIX"] == -32 and hdu.header["NAXIS"] == 2
        assert hdu.header["NAXIS1"] == 51 and hdu.header["NAXIS2"] == 51
        assert hdu.header["EXTEND"] is True
        for k, v in header.items():
            assert hdu.header[k] == v
        assert hdu.data.dtype == np.dtype(">f4")
        np.testing.assert_array_equal(hdu.data, img)  # NaN and 1e-30 kept
        assert np.isnan(hdu.data[0]).all() and (hdu.data[1] == FILL_1E30).all()
        hdu.verify("exception")


@pytest.mark.parametrize(
    "header",
    [{"TOO_LONG_KEY": 1}, {"BAD KEY": 1}, {"BITPIX": 16}, {"X": [1, 2]}, {"X": float("nan")}],
)
def test_fits_bad_header(header: dict) -> None:
    with pytest.raises(SimulationError):
        fits_bytes(np.zeros((5, 5), np.float32), header)


# --------------------------------------------------------------------------- simulate: layouts


@pytest.fixture(scope="session")
def gif_run(tmp_path_factory) -> SimulationSummary:
    out = tmp_path_factory.mktemp("sim_gif")
    return simulate(out, season="Y1", nights=2, stamps_per_night=60, fmt="gif", seed=11)


def test_gif_layout_counts_and_csv(gif_run: SimulationSummary) -> None:
    out = gif_run.out
    assert gif_run.nights == [20130901, 20130902]
    assert gif_run.n_stamps == 120 == gif_run.n_real + gif_run.n_artifact
    assert gif_run.files_written == 360 and gif_run.fmt == "gif"
    files = sorted(p for p in out.rglob("*.gif"))
    assert len(files) == 360
    ids: dict[int, set[str]] = {}
    ccd_dirs = set()
    for p in files:
        rel = p.relative_to(out).parts
        assert len(rel) == 4 and rel[0] == "Y1" and rel[1] in {"20130901", "20130902"}
        assert re.fullmatch(r"ccd\d\d", rel[2])
        ccd_dirs.add((rel[1], rel[2]))
        m = FILE_RE.match(rel[3])
        assert m and m.group(3) == "gif"
        ids.setdefault(int(m.group(2)), set()).add(m.group(1))
    assert all(v == set(CHANNELS) for v in ids.values())
    assert 2 < len(ccd_dirs) <= 8  # a few CCDs per night
    # The CSV: comments, then ID, OBJECT_TYPE (autoscan coding: 0 = real), BAND, CCDID, MAG, SNR.
    lines = gif_run.labels_csv.read_text().splitlines()
    assert gif_run.labels_csv == out / LABELS_CSV
    assert lines[0].startswith("#") and "SIMULATED" in lines[0]
    header = next(ln for ln in lines if not ln.startswith("#"))
    assert header.startswith("ID,OBJECT_TYPE,BAND,CCDID,MAG,SNR,")
    df = _csv(gif_run.labels_csv)
    assert sorted(df["ID"]) == sorted(ids)
    assert ((df["OBJECT_TYPE"] == 0) == (df["SIM_KIND"] == "real")).all()
    assert int((df["OBJECT_TYPE"] == 0).sum()) == gif_run.n_real
    labels = read_labels(gif_run.labels_csv)
    real_ids = set(df.loc[df["SIM_KIND"] == "real", "ID"])
    assert {
        int(i) for i, lab in zip(labels.ids, labels.labels, strict=True) if lab == 1
    } == real_ids
    # The CCD folder is the stamp's CCDID.
    for p in files[:30]:
        sid = int(FILE_RE.match(p.name).group(2))
        assert p.parent.name == f"ccd{int(df.loc[df['ID'] == sid, 'CCDID'].iloc[0]):02d}"


def test_fits_layout_and_masks(tmp_path: Path) -> None:
    s = simulate(tmp_path, season="SV", nights=2, stamps_per_night=150, fmt="fits", seed=5)
    assert s.nights == [20121101, 20121102]
    files = sorted(tmp_path.rglob("*.fits"))
    assert len(files) == 900 == s.files_written
    fills = set()
    for p in files:
        if not p.name.startswith("diff"):
            continue
        raw = p.read_bytes()
        assert len(raw) % 2880 == 0
        data = np.frombuffer(raw, ">f4", 51 * 51, 2880).reshape(51, 51)
        if np.isnan(data).any():
            fills.add("nan")
        if (data == FILL_1E30).any():
            fills.add("1e-30")
    assert fills == {"nan", "1e-30"}  # both mask conventions occur
    with fits.open(files[0]) as hdul:
        h = hdul[0].header
        assert h["BITPIX"] == -32 and hdul[0].data.dtype == np.dtype(">f4")
        for key in ("OBJECT", "BAND", "CCDNUM", "EXPNUM", "MJD-OBS", "GAIN", "SKYSIG", "FWHM"):
            assert key in h
        assert h["OBJECT"] == FILE_RE.match(files[0].name).group(2)
        assert h["SEASON"] == "SV"


@pytest.mark.parametrize("member", ["gif", "fits"])
def test_tar_layout(tmp_path: Path, member: str) -> None:
    s = simulate(
        tmp_path,
        nights=1,
        stamps_per_night=55,
        fmt="tar",
        stamps_per_archive=20,
        tar_member_format=member,
        first_night=20140102,
        season="Y2",
    )
    night = tmp_path / "Y2" / "20140102"
    tars = sorted(night.iterdir())
    assert [p.name for p in tars] == ["stamps_000.tar", "stamps_001.tar", "stamps_002.tar"]
    assert s.files_written == 3
    seen = []
    for p in tars:
        with tarfile.open(p, "r:") as tf:  # plain, uncompressed
            names = tf.getnames()
            assert all(n.startswith(p.stem + "/") for n in names)
            for name in names:
                m = FILE_RE.match(name.split("/", 1)[1])
                assert m and m.group(3) == member
                seen.append(int(m.group(2)))
            data = tf.extractfile(names[0]).read()
            if member == "gif":
                assert _gif_pixels(data).shape == (51, 51)
            else:
                with fits.open(io.BytesIO(data)) as hdul:
                    assert hdul[0].data.shape == (51, 51)
    assert len(seen) == 3 * 55 and len(set(seen)) == 55
    assert [len(tarfile.open(p).getnames()) for p in tars] == [60, 60, 45]


def test_pack_night_as_tar_gives_the_survey_layout_that_ingest_reads(tmp_path: Path) -> None:
    from s2v_batch.ingest.rawtree import discover
    from s2v_batch.ingest.stamps import read_unit

    kw = {"season": "Y1", "nights": 2, "stamps_per_night": 40, "fmt": "gif", "seed": 9}
    runs = [simulate(tmp_path / x, **kw) for x in "ab"]
    night = str(runs[0].nights[-1])
    night_dir = tmp_path / "a" / "Y1" / night
    folders = sorted(p.name for p in night_dir.iterdir())
    assert folders and all(re.fullmatch(r"ccd\d\d", f) for f in folders)
    loose = {p.name: p.read_bytes() for p in night_dir.rglob("*.gif")}
    archives = pack_night_as_tar(night_dir)
    assert [p.name for p in archives] == [f"{f}.tar" for f in folders]
    assert sorted(p.name for p in night_dir.iterdir()) == [p.name for p in archives]
    packed = {}
    for p in archives:
        with tarfile.open(p, "r:") as tf:
            for m in tf.getmembers():
                stem, name = m.name.split("/")
                assert stem == p.stem and FILE_RE.match(name) and m.isfile()
                packed[name] = tf.extractfile(m).read()
    assert packed == loose  # every file, byte for byte
    # Same files, same archives; the first night stays loose files.
    pack_night_as_tar(tmp_path / "b" / "Y1" / night)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert list((tmp_path / "a" / "Y1" / str(runs[0].nights[0])).rglob("*.gif"))
    # Ingest reads both layouts: every stamp of the CSV.
    disc = discover(tmp_path / "a")
    ids = [
        i
        for units in disc.units.values()
        for unit in units
        for i in read_unit(unit, 51).stamp_id.tolist()
    ]
    assert sorted(ids) == sorted(_csv(runs[0].labels_csv)["ID"])


def test_pack_night_as_tar_refuses_what_it_cannot_pack(tmp_path: Path) -> None:
    with pytest.raises(SimulationError, match="not a folder"):
        pack_night_as_tar(tmp_path / "missing")
    (tmp_path / "ccd01").mkdir()
    (tmp_path / "ccd01" / "diff1.gif").write_bytes(b"x")
    (tmp_path / "ccd02" / "nested").mkdir(parents=True)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(SimulationError, match="non-file"):
        pack_night_as_tar(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


# --------------------------------------------------------------------------- simulate: behaviour


def test_simulate_is_deterministic_and_nights_are_independent(tmp_path: Path) -> None:
    kw = {"season": "Y3", "stamps_per_night": 25, "seed": 4}
    simulate(tmp_path / "a", nights=2, fmt="gif", **kw)
    simulate(tmp_path / "b", nights=2, fmt="gif", **kw)
    simulate(tmp_path / "c", nights=1, fmt="gif", **kw)
    simulate(tmp_path / "d", nights=2, fmt="gif", season="Y3", stamps_per_night=25, seed=5)
    a, b, c, d = (_files(tmp_path / x) for x in "abcd")
    assert a == b
    first = {k: v for k, v in a.items() if "20150815" in k}
    # (c's marker names one night, a's two: the markers are compared apart.)
    assert first == {k: v for k, v in c.items() if k != LABELS_CSV and "_s2v_simulated" not in k}
    assert {k: v for k, v in a.items() if k.endswith(".gif")} != {
        k: v for k, v in d.items() if k.endswith(".gif")
    }
    simulate(tmp_path / "t1", nights=1, fmt="tar", stamps_per_archive=10, **kw)
    simulate(tmp_path / "t2", nights=1, fmt="tar", stamps_per_archive=10, **kw)
    assert _files(tmp_path / "t1") == _files(tmp_path / "t2")


def test_two_seasons_share_one_csv_without_collisions(tmp_path: Path) -> None:
    s1 = simulate(tmp_path, season="Y1", nights=1, stamps_per_night=30, fmt="tar", seed=1)
    s2 = simulate(tmp_path, season="Y2", nights=2, stamps_per_night=30, fmt="tar", seed=1)
    text = s1.labels_csv.read_text().splitlines()
    assert sum(ln.startswith("ID,") for ln in text) == 1
    df = _csv(s1.labels_csv)
    assert len(df) == s1.n_stamps + s2.n_stamps == 90
    assert df["ID"].is_unique


def test_same_season_twice_into_one_folder_is_refused(tmp_path: Path) -> None:
    simulate(tmp_path, season="Y4", nights=1, stamps_per_night=3, fmt="tar")
    before = _files(tmp_path)
    with pytest.raises(SimulationError, match="already simulated"):
        simulate(tmp_path, season="Y4", nights=1, stamps_per_night=3, fmt="gif", seed=2)
    assert _files(tmp_path) == before  # refused before writing anything


def test_nights_are_consecutive_calendar_dates(tmp_path: Path) -> None:
    s = simulate(tmp_path, nights=3, stamps_per_night=2, first_night=20160228, fmt="tar")
    assert s.nights == [20160228, 20160229, 20160301]
    assert sorted(p.name for p in (tmp_path / "Y1").iterdir()) == [
        *map(str, s.nights),
        "_s2v_simulated.json",
    ]  # the night folders, and the marker naming them (core/provenance.py)


def test_default_first_nights() -> None:
    assert SEASON_FIRST_NIGHT["SV"] == 20121101 and SEASON_FIRST_NIGHT["Y6"] == 20180815


@pytest.mark.parametrize(
    "kwargs",
    [
        {"season": "Y99"},
        {"season": "X1"},
        {"season": ""},
        {"nights": 0},
        {"stamps_per_night": 0},
        {"fmt": "png"},
        {"tar_member_format": "png"},
        {"first_night": 20131345},
        {"seed": -1},
        {"size": 8},
        {"stamps_per_archive": 0},
        {"nights": 2, "stamps_per_night": 5_000_000},
        {"nights": "2"},
    ],
)
def test_simulate_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(SimulationError) as exc:
        simulate(tmp_path, **({"stamps_per_night": 2} | kwargs))
    assert str(exc.value)  # a readable message
    assert not (tmp_path / LABELS_CSV).exists()


def test_existing_csv_with_other_columns_is_refused(tmp_path: Path) -> None:
    (tmp_path / LABELS_CSV).write_text("# other\nID,OBJECT_TYPE,FOO\n1,0,2\n")
    with pytest.raises(SimulationError, match="other columns"):
        simulate(tmp_path, nights=1, stamps_per_night=2)


def test_ingest_reads_every_simulated_stamp(gif_run: SimulationSummary) -> None:
    from s2v_batch.ingest.rawtree import discover
    from s2v_batch.ingest.stamps import read_unit

    disc = discover(gif_run.out)
    assert not disc.unplaced
    got = []
    for units in disc.units.values():
        for unit in units:
            data = read_unit(unit, 51)
            assert not data.quarantine
            got.extend(data.stamp_id.tolist())
    assert sorted(got) == sorted(_csv(gif_run.labels_csv)["ID"])
