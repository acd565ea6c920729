"""Tests of the multi-echo spin echo T2 / water T2 / fat fraction fits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bids_muscle.qmri.epg import default_slice_profile, epg_cpmg
from bids_muscle.qmri.t2 import (
    FAT_T1_S,
    FAT_T2_S,
    WATER_T1_S,
    dictionary_description,
    fit_t2_monoexp,
    fit_t2_single,
    fit_t2_water_fat,
    signal_mask,
    simulate_mese,
    smooth_b1_map,
    validate_mese,
)

TE_S = 0.0109 * np.arange(1, 18)


def _rician(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(0.0, sigma, clean.shape) + 1j * rng.normal(
        0.0, sigma, clean.shape
    )
    return np.abs(clean + noise).astype(np.float32)


def _sigma_snr100() -> float:
    """Noise giving SNR 100 on the first echo of muscle (FF 0, T2 35 ms, B1 1)."""
    return float(simulate_mese(1000.0, 0.0, 0.035, 1.0, TE_S)[0]) / 100.0


def _smooth_b1(shape: tuple[int, int]) -> np.ndarray:
    """Transmit field varying smoothly and evenly over [0.7, 1.2], like a real B1 map."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    ramp = (xx + 0.3 * shape[1] * np.sin(np.pi * yy / shape[0])) / (1.3 * shape[1])
    return 0.7 + 0.5 * ramp


@pytest.fixture(scope="module")
def water_fat_truth():
    rng = np.random.default_rng(7)
    shape = (40, 50)
    truth = {
        "water_t2_s": rng.uniform(0.025, 0.05, shape),
        "ff_percent": rng.uniform(0.0, 80.0, shape),
        "b1": _smooth_b1(shape),
    }
    clean = simulate_mese(
        1000.0, truth["ff_percent"], truth["water_t2_s"], truth["b1"], TE_S
    )
    return truth, clean, _rician(clean, _sigma_snr100(), rng)


def test_water_fat_noiseless_is_exact(water_fat_truth):
    truth, clean, _ = water_fat_truth
    fit = fit_t2_water_fat(clean, TE_S)
    t2_err = np.abs(fit["water_t2_s"] - truth["water_t2_s"])
    assert np.nanmedian(t2_err) < 1e-4
    assert np.nanmedian(np.abs(fit["ff_percent"] - truth["ff_percent"])) < 0.05
    assert np.nanmedian(np.abs(fit["b1"] - truth["b1"])) < 0.003
    assert np.nanmedian(np.abs(fit["pd"] / 1000.0 - 1.0)) < 0.003
    assert np.mean(np.isfinite(fit["water_t2_s"])) > 0.98


def test_water_fat_recovers_truth_with_noise(water_fat_truth):
    truth, _, noisy = water_fat_truth
    fit = fit_t2_water_fat(noisy, TE_S)
    for name in ("water_t2_s", "ff_percent", "b1", "pd"):
        assert fit[name].shape == noisy.shape[:-1]
        assert fit[name].dtype == np.float32
    low_ff = truth["ff_percent"] <= 60
    t2_err = (fit["water_t2_s"] - truth["water_t2_s"])[low_ff]
    # the Cramer-Rao bound of water T2 at SNR 100 is 1-2.5 ms here
    assert np.nanmedian(np.abs(t2_err)) < 0.002
    assert abs(np.nanmedian(t2_err)) < 0.0005
    ff_err = fit["ff_percent"] - truth["ff_percent"]
    assert np.nanmedian(np.abs(ff_err)) < 1.5
    assert abs(np.nanmedian(ff_err)) < 0.5
    assert np.nanmedian(np.abs(fit["b1"] - truth["b1"])) < 0.03
    assert np.all(
        (fit["ff_percent"][np.isfinite(fit["ff_percent"])] >= 0)
        & (fit["ff_percent"][np.isfinite(fit["ff_percent"])] <= 100)
    )
    assert np.mean(np.isfinite(fit["water_t2_s"][low_ff])) > 0.95


def test_b1_prior_removes_refocusing_ambiguity():
    rng = np.random.default_rng(3)
    b1 = _smooth_b1((48, 48))[..., None]
    t2 = rng.uniform(0.025, 0.05, b1.shape)
    ff = rng.uniform(0, 60, b1.shape)
    noisy = _rician(simulate_mese(1000.0, ff, t2, b1, TE_S), _sigma_snr100(), rng)
    one_pass = fit_t2_water_fat(noisy, TE_S, b1_smoothing_voxels=None)
    two_pass = fit_t2_water_fat(noisy, TE_S)
    manual = fit_t2_water_fat(noisy, TE_S, b1_map=smooth_b1_map(one_pass["b1"]))
    # the default second pass revisits only voxels outside the prior interval
    for name in two_pass:
        same = np.isclose(two_pass[name], manual[name], rtol=1e-5, equal_nan=True)
        assert same.mean() > 0.99
    wrong_one = np.mean(~(np.abs(one_pass["b1"] - b1) < 0.1))
    wrong_two = np.mean(~(np.abs(two_pass["b1"] - b1) < 0.1))
    assert wrong_two < 0.03
    assert wrong_two < wrong_one
    t2_one = np.nanmedian(np.abs(one_pass["water_t2_s"] - t2))
    assert np.nanmedian(np.abs(two_pass["water_t2_s"] - t2)) <= t2_one + 1e-4
    # the true B1 as prior does at least as well
    known = fit_t2_water_fat(noisy, TE_S, b1_map=b1)
    assert np.mean(~(np.abs(known["b1"] - b1) < 0.1)) < 0.01


def test_b1_prior_outside_dictionary_gives_nan():
    echoes = simulate_mese(1000.0, np.array([0.0, 30.0]), 0.035, 0.9, TE_S)
    prior = np.array([2.5, np.nan])
    for fit in (
        fit_t2_water_fat(echoes, TE_S, b1_map=prior),
        fit_t2_single(echoes, TE_S, b1_map=prior),
    ):
        for image in fit.values():
            assert np.isnan(image[0]) and np.isfinite(image[1])


def test_smooth_b1_map_ignores_nan_and_outliers():
    b1 = np.full((20, 20, 2), 0.9)
    b1[5, 5, 0] = np.nan
    b1[:, :3] = np.nan
    b1[10, 10, 1] = 1.3
    smooth = smooth_b1_map(b1, sigma_voxels=2.0)
    np.testing.assert_allclose(smooth[np.isfinite(smooth)], 0.9, rtol=1e-5)
    assert np.isfinite(smooth[5, 5, 0])
    assert np.all(np.isnan(smooth[:, 0]))
    plain = smooth_b1_map(b1, sigma_voxels=2.0, reject_deviation=None)
    assert plain[10, 10, 1] > 0.91
    with pytest.raises(ValueError):
        smooth_b1_map(np.ones(5))


def test_single_component_recovers_t2_b1_pd():
    rng = np.random.default_rng(1)
    t2 = rng.uniform(0.02, 0.2, 3000)
    b1 = rng.uniform(0.6, 1.2, 3000)
    clean = simulate_mese(1000.0, 0.0, t2, b1, TE_S)
    noisy = _rician(clean, _sigma_snr100(), rng)
    fit = fit_t2_single(noisy, TE_S)
    rel = np.abs(fit["t2_s"] / t2 - 1)
    assert np.nanmedian(rel) < 0.03
    assert np.nanmedian(np.abs(fit["b1"] - b1)) < 0.03
    assert np.nanmedian(np.abs(fit["pd"] / 1000.0 - 1)) < 0.03
    exact = fit_t2_single(clean, TE_S)
    assert np.nanmedian(np.abs(exact["t2_s"] / t2 - 1)) < 0.003


def test_single_component_ideal_slice_matches_exponential():
    t2 = np.array([0.03, 0.06, 0.12])
    echoes = 500.0 * np.exp(-TE_S[None, :] / t2[:, None])
    fit = fit_t2_single(echoes, TE_S, slice_profile=None, b1_range=(0.5, 1.2))
    np.testing.assert_allclose(fit["t2_s"], t2, rtol=0.005)
    np.testing.assert_allclose(fit["pd"], 500.0, rtol=0.01)


def test_monoexp_exact_on_exponential_and_biased_by_stimulated_echoes():
    t2 = np.array([[0.025, 0.04], [0.08, 0.3]])
    echoes = 800.0 * np.exp(-TE_S / t2[..., None])
    fit = fit_t2_monoexp(echoes, TE_S)
    np.testing.assert_allclose(fit["t2_s"], t2, rtol=1e-4)
    np.testing.assert_allclose(fit["pd"], 800.0, rtol=1e-3)
    stimulated = simulate_mese(1000.0, 0.0, 0.035, 0.8, TE_S)
    biased = fit_t2_monoexp(stimulated[None], TE_S)["t2_s"][0]
    assert biased > 0.038


def test_mask_and_spatial_shape():
    rng = np.random.default_rng(2)
    shape = (6, 5, 4)
    clean = simulate_mese(1000.0, 0.0, rng.uniform(0.025, 0.045, shape), 0.9, TE_S)
    mask = np.zeros(shape, bool)
    mask[1:5, 1:4, 1:3] = True
    for fit in (
        fit_t2_water_fat(clean, TE_S, mask=mask),
        fit_t2_single(clean, TE_S, mask=mask),
        fit_t2_monoexp(clean, TE_S, mask=mask),
    ):
        for image in fit.values():
            assert image.shape == shape
            assert np.all(np.isnan(image[~mask]))
            assert np.all(np.isfinite(image[mask]))


def test_noise_voxels_are_nan():
    rng = np.random.default_rng(4)
    shape = (30, 30)
    tissue = np.zeros(shape, bool)
    tissue[8:22, 8:22] = True
    pd = np.where(tissue, 1000.0, 0.0)
    noisy = _rician(simulate_mese(pd, 10.0, 0.035, 1.0, TE_S), _sigma_snr100(), rng)
    for fit in (
        fit_t2_water_fat(noisy, TE_S),
        fit_t2_single(noisy, TE_S),
        fit_t2_monoexp(noisy, TE_S),
    ):
        for image in fit.values():
            assert np.all(np.isnan(image[~tissue]))
            assert np.mean(np.isfinite(image[tissue])) > 0.95
    np.testing.assert_array_equal(signal_mask(noisy), tissue)


def test_dictionary_bounds_give_nan():
    long_t2 = simulate_mese(1000.0, 0.0, np.array([3.0, 0.035]), 1.0, TE_S)
    single = fit_t2_single(long_t2, TE_S, t2_range_s=(0.01, 1.0))
    assert np.isnan(single["t2_s"][0]) and np.isnan(single["pd"][0])
    assert np.isfinite(single["t2_s"][1])
    short = simulate_mese(1000.0, 0.0, np.array([0.035, 0.035]), 1.0, TE_S)
    water_fat = fit_t2_water_fat(short, TE_S, t2_range_s=(0.04, 0.1))
    assert np.all(np.isnan(water_fat["water_t2_s"]))


def test_block_size_does_not_change_results(water_fat_truth):
    _, _, noisy = water_fat_truth
    small = fit_t2_water_fat(noisy[:10], TE_S, block_size=37)
    large = fit_t2_water_fat(noisy[:10], TE_S, block_size=100000)
    for name in small:
        np.testing.assert_allclose(small[name], large[name], rtol=1e-5, equal_nan=True)


def test_pure_fat_and_pure_water():
    echoes = simulate_mese(1000.0, np.array([100.0, 0.0]), 0.035, 0.95, TE_S)
    fit = fit_t2_water_fat(echoes, TE_S)
    assert fit["ff_percent"][0] > 99.0 and np.isnan(fit["water_t2_s"][0])
    assert fit["ff_percent"][1] < 1.0 and abs(fit["water_t2_s"][1] - 0.035) < 0.001


def test_simulate_mese_matches_epg():
    rng = np.random.default_rng(5)
    pd = rng.uniform(0.5, 2.0, 200)
    ff = rng.uniform(0, 100, 200)
    t2 = rng.uniform(0.01, 0.08, 200)
    b1 = rng.uniform(0.6, 1.3, 200)
    sim = simulate_mese(pd, ff, t2, b1, TE_S)
    profile = default_slice_profile()
    water = epg_cpmg(t2, WATER_T1_S, b1, TE_S[0], TE_S.size, slice_profile=profile)
    fat = epg_cpmg(FAT_T2_S, FAT_T1_S, b1, TE_S[0], TE_S.size, slice_profile=profile)
    expected = pd[:, None] * ((1 - ff[:, None] / 100) * water + ff[:, None] / 100 * fat)
    assert sim.dtype == np.float32 and sim.shape == (200, TE_S.size)
    np.testing.assert_allclose(sim, expected, atol=5e-4 * pd.max())


def test_simulate_mese_ideal_and_background():
    pd = np.array([[0.0, 2.0], [1.0, 0.0]])
    t2 = np.array([[0.0, 0.04], [0.02, np.nan]])
    sim = simulate_mese(pd, 0.0, t2, 1.0, TE_S, slice_profile=None)
    assert np.all(sim[0, 0] == 0) and np.all(sim[1, 1] == 0)
    np.testing.assert_allclose(sim[0, 1], 2.0 * np.exp(-TE_S / 0.04), rtol=1e-4)
    np.testing.assert_allclose(sim[1, 0], np.exp(-TE_S / 0.02), rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError):
        simulate_mese(1.0, 0.0, -0.03, 1.0, TE_S)
    with pytest.raises(ValueError):
        simulate_mese(1.0, 120.0, 0.03, 1.0, TE_S)


@pytest.mark.parametrize(
    ("echoes", "te_s", "message"),
    [
        (np.ones((4, 2)), [0.01, 0.02], "at least 3 echoes"),
        (np.ones((4, 3)), [0.01, 0.03, 0.02], "strictly increasing"),
        (np.ones((4, 3)), [0.01, np.nan, 0.03], "NaN"),
        (np.ones((4, 4)), [0.01, 0.02, 0.03], "does not end with"),
        (np.zeros((4, 3)), [0.01, 0.02, 0.03], "all zero"),
        (np.full((4, 3), np.nan), [0.01, 0.02, 0.03], "all NaN"),
    ],
)
def test_bad_inputs_raise(echoes, te_s, message):
    with pytest.raises(ValueError, match=message):
        validate_mese(echoes, np.asarray(te_s))
    for fit in (fit_t2_water_fat, fit_t2_single, fit_t2_monoexp):
        with pytest.raises(ValueError):
            fit(echoes, np.asarray(te_s))


def test_epg_fits_need_equal_spacing_and_matching_mask():
    echoes = simulate_mese(1000.0, 0.0, 0.035, 1.0, TE_S)[None]
    uneven = TE_S.copy()
    uneven[5] += 0.003
    with pytest.raises(ValueError, match="echo spacing"):
        fit_t2_water_fat(echoes, uneven)
    with pytest.raises(ValueError, match="echo spacing"):
        fit_t2_single(echoes, TE_S + 0.005)
    assert np.isfinite(fit_t2_monoexp(echoes, uneven)["t2_s"][0])
    with pytest.raises(ValueError, match="mask shape"):
        fit_t2_water_fat(echoes, TE_S, mask=np.ones((2,), bool))
    with pytest.raises(ValueError, match="b1_map shape"):
        fit_t2_water_fat(echoes, TE_S, b1_map=np.ones((3,)))


def test_dictionary_description_is_json():
    for model in ("water_fat", "single", "monoexp"):
        description = dictionary_description(TE_S, model=model)
        json.dumps(description)
        assert description["Model"] == model
    water_fat = dictionary_description(TE_S, fat_t2_s=0.15, slice_profile=None)
    assert water_fat["FatT2"] == 0.15 and water_fat["SliceProfile"] == "none"
    assert water_fat["DictionaryT2Steps"] >= 60 and water_fat["DictionaryB1Steps"] >= 40
    with pytest.raises(ValueError):
        dictionary_description(TE_S, model="triexp")
