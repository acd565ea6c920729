"""Tests of the Marchenko-Pastur PCA denoising of multi-echo series."""

from __future__ import annotations

import numpy as np
import pytest

from bids_muscle.phantom import anatomy, signals
from bids_muscle.qmri.denoise import default_window, denoise_mppca
from bids_muscle.qmri.t2 import fit_t2_water_fat

N_ECHOES = 17


def _low_rank_series(rng: np.random.Generator, shape=(40, 40, 3), rank: int = 3) -> np.ndarray:
    """Echo trains that are smooth mixtures of ``rank`` exponential decays."""
    te = 0.01 * np.arange(1, N_ECHOES + 1)
    basis = np.exp(-te[None, :] / np.array([0.03, 0.06, 0.15][:rank])[:, None])
    weights = 500.0 + 300.0 * rng.random(shape + (rank,))
    return (weights @ basis).astype(np.float32)


def test_noise_level_and_error_reduction():
    rng = np.random.default_rng(0)
    clean = _low_rank_series(rng)
    sigma = 5.0
    noisy = clean + rng.normal(0.0, sigma, clean.shape).astype(np.float32)
    denoised, components, sigma_est = denoise_mppca(noisy)
    assert np.median(sigma_est) == pytest.approx(sigma, rel=0.15)
    assert np.median(components) <= 4
    rmse_before = np.sqrt(np.mean((noisy - clean) ** 2))
    rmse_after = np.sqrt(np.mean((denoised - clean) ** 2))
    assert rmse_after < 0.7 * rmse_before


def test_pure_noise_keeps_almost_nothing():
    rng = np.random.default_rng(1)
    noise = rng.normal(0.0, 1.0, (30, 30, 2, N_ECHOES)).astype(np.float32)
    denoised, components, sigma_est = denoise_mppca(noise)
    assert np.median(components) <= 1
    assert np.median(sigma_est) == pytest.approx(1.0, rel=0.2)
    assert np.std(denoised) < 0.5 * np.std(noise)


def test_mask_leaves_other_voxels_untouched():
    rng = np.random.default_rng(2)
    data = _low_rank_series(rng) + rng.normal(0.0, 5.0, (40, 40, 3, N_ECHOES)).astype(np.float32)
    mask = np.zeros(data.shape[:3], bool)
    mask[10:30, 10:30] = True
    denoised, components, sigma_est = denoise_mppca(data, mask)
    np.testing.assert_array_equal(denoised[~mask], data[~mask])
    assert np.all(components[~mask] == 0) and np.all(np.isnan(sigma_est[~mask]))
    assert not np.array_equal(denoised[mask], data[mask])


def test_window_follows_echo_count():
    assert default_window(3) == 5 and default_window(25) == 5
    assert default_window(26) == 7 and default_window(50) == 9


@pytest.mark.parametrize(
    ("shape", "kwargs", "message"),
    [
        ((10, 10, N_ECHOES), {}, "4D"),
        ((10, 10, 2, 2), {}, "at least 3 echoes"),
        ((10, 10, 2, N_ECHOES), {"window": 4}, "odd"),
        ((10, 10, 2, N_ECHOES), {"window": 3}, "fewer samples"),
        ((10, 10, 2, N_ECHOES), {"mask": np.ones((9, 10, 2), bool)}, "mask shape"),
    ],
)
def test_bad_input(shape, kwargs, message):
    with pytest.raises(ValueError, match=message):
        denoise_mppca(np.ones(shape, np.float32), **kwargs)


def test_nan_rejected():
    data = np.ones((10, 10, 2, N_ECHOES), np.float32)
    data[3, 3, 0, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        denoise_mppca(data)


def test_phantom_water_t2_error_shrinks():
    """On the digital phantom (SNR 100) denoising roughly halves the water T2 error."""
    rng = np.random.default_rng(5)
    truth = anatomy.draw_region("thigh", rng, n_slices=2, severity=0.4)
    echoes, te = signals.mese_images(truth, rng)
    body = truth.tissue > 0
    lean = (truth.labels > 0) & (truth.ff_percent <= 60)
    errors = {}
    for name, data in (("raw", echoes), ("mppca", denoise_mppca(echoes, body)[0])):
        fit = fit_t2_water_fat(data, te, n_t2=40, n_b1=21)
        errors[name] = np.nanmedian(np.abs(fit["water_t2_s"] - truth.water_t2_s)[lean]) * 1000.0
    assert errors["mppca"] < 0.6 * errors["raw"]
    assert errors["mppca"] < 0.6
