"""Water-fat separation on simulated multi-echo gradient echo data."""

from __future__ import annotations

import numpy as np
import pytest

from bids_muscle.qmri.dixon import (
    GYROMAGNETIC_RATIO_HZ_PER_T,
    fat_fraction_from_magnitude_echoes,
    fat_fraction_from_water_fat,
    fat_signal_basis,
    fat_spectrum,
    separate_water_fat,
    simulate_megre,
    water_nsa,
)

TE_3T_SYMMETRIC = (3.45e-3, 4.60e-3, 5.75e-3)
TE_6ECHO = (1.2e-3, 2.2e-3, 3.2e-3, 4.2e-3, 5.2e-3, 6.2e-3)
TE_HIP_1P5T = (2.87e-3, 6.07e-3, 9.27e-3)
FF_LEVELS = np.round(np.arange(0.0, 0.81, 0.1), 2)


def _phantom(shape=(72, 72, 2), b0_scale_hz=150.0, b0_offset_hz=0.0):
    """Disc of stripes at fat fractions 0..80 % with a 95 % fat rim.

    Returns fat fraction (0-1), body mask, inner mask (stripes), smooth B0 (Hz)
    and R2* (1/s) maps.
    """
    ny, nx, nz = shape
    y, x = np.mgrid[0:ny, 0:nx] / np.array([ny, nx])[:, None, None]
    radius = np.hypot(y - 0.5, x - 0.5)
    stripe = np.clip(np.floor(x * 10 - 0.5), 0, 8) / 10.0
    ff = np.where(radius > 0.42, 0.95, stripe)
    body = radius < 0.48
    inner = radius < 0.39
    b0 = b0_offset_hz + b0_scale_hz * np.sin(3.0 * (x - 0.5)) + 0.8 * b0_scale_hz * (y - 0.5)
    r2 = 35.0 + 30.0 * y
    stack = lambda a: np.repeat(a[..., None], nz, axis=2)  # noqa: E731
    b0 = stack(b0) + 15.0 * np.arange(nz)
    return stack(ff), stack(body), stack(inner), b0, stack(r2)


def _noisy(signal, sigma, seed):
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=signal.shape) + 1j * rng.normal(size=signal.shape)
    return (signal + sigma * noise).astype(np.complex64)


def _level_errors(ff_percent, truth, region):
    """Mean error (points) of the estimate at each simulated fat fraction."""
    errors = {}
    for level in FF_LEVELS:
        sel = region & np.isclose(truth, level)
        if sel.any():
            errors[float(level)] = float(np.nanmean(ff_percent[sel] - 100.0 * level))
    return errors


def test_fat_spectrum_models():
    ppm, amp = fat_spectrum("hamilton6")
    assert ppm.size == 6 and np.isclose(amp.sum(), 1.0)
    assert ppm[np.argmax(amp)] == pytest.approx(-3.40)
    ppm1, amp1 = fat_spectrum("single")
    assert ppm1.tolist() == [-3.4] and amp1.tolist() == [1.0]
    ppm2, amp2 = fat_spectrum(([-3.4, -2.6], [3.0, 1.0]))
    assert amp2.tolist() == [0.75, 0.25]
    with pytest.raises(ValueError):
        fat_spectrum("unknown")
    with pytest.raises(ValueError):
        fat_spectrum(([-3.4, -2.6], [1.0]))


def test_fat_basis_single_peak_phases():
    # single peak at -3.4 ppm: out of phase after half a cycle, in phase after one
    b0 = 3.0
    f_fat = GYROMAGNETIC_RATIO_HZ_PER_T * b0 * 3.4e-6
    te = [0.5 / f_fat, 1.0 / f_fat, 1.5 / f_fat]
    c = fat_signal_basis(te, b0, "single")
    np.testing.assert_allclose(c, [-1.0, 1.0, -1.0], atol=1e-9)
    c6 = fat_signal_basis(TE_6ECHO, b0)
    assert np.all(np.abs(c6) <= 1.0 + 1e-12)
    # multi-peak fat dephases: never fully back in phase
    assert np.abs(fat_signal_basis([1.0 / f_fat, 2.0 / f_fat], b0)).max() < 0.95


def test_simulate_megre_model_and_conventions():
    te = TE_6ECHO
    s = simulate_megre(np.array([2.0, 0.0]), np.array([0.0, 3.0]), te, 1.5, b0_hz=25.0, r2star_per_s=40.0,
                       phase0_rad=0.3, precession_clockwise=True)
    assert s.shape == (2, 6) and s.dtype == np.complex64
    t = np.asarray(te)
    expected_water = 2.0 * np.exp((2j * np.pi * 25.0 - 40.0) * t + 0.3j)
    np.testing.assert_allclose(s[0], expected_water, rtol=1e-5)
    expected_fat = 3.0 * fat_signal_basis(te, 1.5) * np.exp((2j * np.pi * 25.0 - 40.0) * t + 0.3j)
    np.testing.assert_allclose(s[1], expected_fat, rtol=1e-5)
    other = simulate_megre(np.array([2.0, 0.0]), np.array([0.0, 3.0]), te, 1.5, 25.0, 40.0, 0.3)
    np.testing.assert_allclose(other, np.conj(s), rtol=1e-6)


@pytest.mark.parametrize(
    ("te", "field_t", "sigma", "seed"),
    [(TE_6ECHO, 3.0, 1.0, 1), (TE_3T_SYMMETRIC, 3.0, 1.0, 2), (TE_HIP_1P5T, 1.5, 1.0, 3)],
)
def test_recovers_fat_fraction_with_smooth_b0_and_r2star(te, field_t, sigma, seed):
    ff, body, inner, b0, r2 = _phantom()
    pd = 100.0 * body
    signal = _noisy(simulate_megre(pd * (1 - ff), pd * ff, te, field_t, b0, r2, phase0_rad=0.7), sigma, seed)
    out = separate_water_fat(signal, te, field_t)
    errors = _level_errors(out["ff_percent"], ff, inner)
    assert len(errors) == FF_LEVELS.size
    assert max(abs(e) for e in errors.values()) <= 1.0, errors
    # no swaps anywhere in the object (rim included)
    assert np.mean(np.abs(out["ff_percent"][body] - 100 * ff[body]) > 30) == 0.0
    assert np.median(np.abs(out["b0_hz"][inner] - b0[inner])) < 3.0
    if len(te) > 3:
        assert abs(np.median(out["r2star_per_s"][inner] - r2[inner])) < 3.0
    assert np.all(np.isfinite(out["ff_percent"]))


def test_no_swaps_with_large_b0_variation():
    # field spans about +-800 Hz, beyond the +-435 Hz aliasing period of the
    # symmetric 3 T echoes, so the field map has to be unwrapped spatially
    ff, body, inner, b0, r2 = _phantom(shape=(96, 96, 2), b0_scale_hz=600.0)
    assert b0[body].max() - b0[body].min() > 1200
    pd = 100.0 * body
    signal = _noisy(simulate_megre(pd * (1 - ff), pd * ff, TE_3T_SYMMETRIC, 3.0, b0, r2), 1.0, 4)
    out = separate_water_fat(signal, TE_3T_SYMMETRIC, 3.0)
    err = out["ff_percent"][body] - 100 * ff[body]
    assert np.mean(np.abs(err) > 30) == 0.0
    assert max(abs(e) for e in _level_errors(out["ff_percent"], ff, inner).values()) <= 1.0
    assert np.median(np.abs(out["b0_hz"][body] - b0[body])) < 5.0


def test_two_echo_and_irregular_echo_times():
    ff, body, inner, b0, _ = _phantom(shape=(64, 64, 1), b0_scale_hz=100.0)
    pd = 100.0 * body
    te2 = (1.15e-3, 2.30e-3)
    signal = _noisy(simulate_megre(pd * (1 - ff), pd * ff, te2, 3.0, b0, 0.0, phase0_rad=-1.0), 0.5, 5)
    out = separate_water_fat(signal, te2, 3.0)
    assert max(abs(e) for e in _level_errors(out["ff_percent"], ff, inner).values()) <= 1.0
    te4 = (1.2e-3, 2.0e-3, 3.1e-3, 4.5e-3)
    signal = _noisy(simulate_megre(pd * (1 - ff), pd * ff, te4, 3.0, b0, 30.0), 1.0, 6)
    out = separate_water_fat(signal, te4, 3.0)
    assert max(abs(e) for e in _level_errors(out["ff_percent"], ff, inner).values()) <= 1.0
    assert np.mean(np.abs(out["ff_percent"][body] - 100 * ff[body]) > 30) == 0.0


def test_magnitude_discrimination_removes_noise_bias_near_0_and_100():
    n = 4000
    te = TE_6ECHO
    water = np.r_[np.full(n, 50.0), np.zeros(n)]
    fat = np.r_[np.zeros(n), np.full(n, 50.0)]
    signal = _noisy(simulate_megre(water, fat, te, 3.0, 0.0, 30.0).reshape(2 * n, 1, 6), 2.0, 7)
    out = separate_water_fat(signal, te, 3.0, coarse_factor=1)
    ff = out["ff_percent"][:, 0]
    assert abs(ff[:n].mean() - 0.0) < 1.0
    assert abs(ff[n:].mean() - 100.0) < 1.0
    # the plain magnitude ratio is biased at both ends by the noise floor
    naive = 100 * np.abs(out["fat"]) / (np.abs(out["water"]) + np.abs(out["fat"]))
    assert naive[:n].mean() > 2.0 and naive[n:].mean() < 98.0


def test_common_phase_fat_fraction_equals_glover_schneider():
    # symmetric 3-point echoes, single-peak fat: Re(F/(W+F)) is the
    # Glover & Schneider (1991) fat fraction computed from the echoes
    ff, body, inner, b0, r2 = _phantom(shape=(64, 64, 1), b0_scale_hz=80.0)
    pd = 100.0 * body
    s = _noisy(simulate_megre(pd * (1 - ff), pd * ff, TE_3T_SYMMETRIC, 3.0, b0, r2, 0.4, fat_model="single"),
               1.0, 8)
    out = separate_water_fat(s, TE_3T_SYMMETRIC, 3.0, fat_model="single", ff_method="common_phase")
    s_m1, s_0, s_1 = (s[..., k].astype(np.complex128) for k in range(3))
    rot = np.exp(-1j * np.angle(s_0))
    s_m1p, s_1p = s_m1 * rot, s_1 * rot
    # measured field phase over 2 dTE, unwrapped with the help of the truth
    phim = np.angle(s_1p * np.conj(s_m1p))
    truth = -2 * np.pi * b0 * 2 * 1.15e-3
    phim += 2 * np.pi * np.round((truth - phim) / (2 * np.pi))
    p = np.cos(np.angle(s_m1p * np.exp(1j * phim / 2)))
    geo = np.abs(np.sqrt(s_1p * s_m1p))
    water = 0.5 * (np.abs(s_0) + p * geo)
    fat = 0.5 * (np.abs(s_0) - p * geo)
    ff_gs = 100 * fat / (water + fat)
    # at 50 % the out-of-phase echoes vanish and the field is undefined: both
    # give 50 % plus noise, but not the same noise
    region = inner & ~np.isclose(ff, 0.5)
    diff = np.abs(out["ff_percent"] - ff_gs)[region]
    assert np.median(diff) < 0.05
    assert np.percentile(diff, 99) < 0.2
    assert np.max(np.abs(out["ff_percent"] - ff_gs)[inner & np.isclose(ff, 0.5)]) < 5.0


def test_mask_and_outputs():
    ff, body, inner, b0, r2 = _phantom(shape=(48, 48, 1))
    pd = 100.0 * body
    signal = _noisy(simulate_megre(pd * (1 - ff), pd * ff, TE_6ECHO, 3.0, b0, r2), 1.0, 9)
    out = separate_water_fat(signal, TE_6ECHO, 3.0, mask=inner)
    assert set(out) == {"water", "fat", "ff_percent", "b0_hz", "r2star_per_s", "residual"}
    assert np.all(np.isnan(out["ff_percent"][~inner])) and np.all(out["water"][~inner] == 0)
    assert np.all(np.isfinite(out["ff_percent"][inner]))
    assert out["ff_percent"].dtype == np.float32 and out["water"].dtype == np.complex64
    rel = np.abs(np.abs(out["water"] + out["fat"])[inner] / pd[inner] - 1)
    assert np.median(rel) < 0.02 and np.percentile(rel, 99) < 0.1


def test_fat_fraction_from_water_fat():
    water = np.array([80.0, 20.0, 0.0, 10.0])
    fat = np.array([20.0, 80.0, 0.0, 0.0])
    ff = fat_fraction_from_water_fat(water, fat)
    np.testing.assert_allclose(ff[[0, 1, 3]], [20.0, 80.0, 0.0], atol=1e-5)
    assert np.isnan(ff[2])
    # magnitude discrimination with the in-phase image and Rician noise
    rng = np.random.default_rng(10)
    n = 20000
    true_w, true_f, sigma = 100.0, 0.0, 5.0
    w = np.abs(true_w + sigma * (rng.normal(size=n) + 1j * rng.normal(size=n)))
    f = np.abs(true_f + sigma * (rng.normal(size=n) + 1j * rng.normal(size=n)))
    ip = np.abs(true_w + true_f + sigma * (rng.normal(size=n) + 1j * rng.normal(size=n)))
    plain = fat_fraction_from_water_fat(w, f)
    assert plain.mean() > 4.0  # noise floor of |F| biases the plain ratio
    assert abs(fat_fraction_from_water_fat(w, f, in_phase=ip).mean()) < 0.5
    assert fat_fraction_from_water_fat(w, f, noise_sigma=sigma).mean() < 0.5 * plain.mean()
    with pytest.raises(ValueError):
        fat_fraction_from_water_fat(water, fat[:2])


def test_fat_fraction_from_magnitude_echoes_and_its_ambiguity():
    te = TE_6ECHO
    ff_true = np.array([0.0, 0.1, 0.25, 0.4, 0.6, 0.8, 0.95])
    mag = np.abs(simulate_megre(100 * (1 - ff_true), 100 * ff_true, te, 3.0, 40.0, 45.0))
    mag = mag + np.random.default_rng(11).normal(scale=0.05, size=mag.shape)
    fat_dom = ff_true > 0.5
    out = fat_fraction_from_magnitude_echoes(mag, te, 3.0, fat_dominant=fat_dom)
    np.testing.assert_allclose(out["ff_percent"], 100 * ff_true, atol=1.5)
    np.testing.assert_allclose(out["r2star_per_s"], 45.0, atol=12.0)
    # without the hint every voxel is reported on the water-dominant branch
    water_only = fat_fraction_from_magnitude_echoes(mag, te, 3.0)["ff_percent"]
    assert np.all(water_only <= 50.0 + 1e-6)
    assert np.all(100 * ff_true[fat_dom] - water_only[fat_dom] >= 10.0)


@pytest.mark.parametrize(
    ("te", "field", "message"),
    [
        ((4.6e-3, 3.45e-3, 5.75e-3), 3.0, "increasing"),
        ((-1e-3, 2e-3, 3e-3), 3.0, "positive"),
        ((3.45, 4.6, 5.75), 3.0, "seconds"),
        ((3.45e-3,), 3.0, "at least 2"),
        (TE_3T_SYMMETRIC, 0.0, "field_strength_t"),
        (TE_3T_SYMMETRIC, -3.0, "field_strength_t"),
        (TE_3T_SYMMETRIC, 300.0, "field_strength_t"),
        (TE_3T_SYMMETRIC, None, "field_strength_t"),
        (TE_3T_SYMMETRIC, float("nan"), "field_strength_t"),
    ],
)
def test_invalid_parameters_raise(te, field, message):
    signal = np.ones((4, 4, len(te)), dtype=np.complex64)
    with pytest.raises(ValueError, match=message):
        separate_water_fat(signal, te, field)
    with pytest.raises(ValueError, match=message):
        simulate_megre(1.0, 0.0, te, field)


def test_invalid_signals_raise():
    s = np.ones((4, 4, 3), dtype=np.complex64)
    with pytest.raises(ValueError, match="complex"):
        separate_water_fat(np.abs(s), TE_3T_SYMMETRIC, 3.0)
    with pytest.raises(ValueError, match="shape"):
        separate_water_fat(s[..., :2], TE_3T_SYMMETRIC, 3.0)
    with pytest.raises(ValueError, match="mask"):
        separate_water_fat(s, TE_3T_SYMMETRIC, 3.0, mask=np.ones((3, 4), bool))
    with pytest.raises(ValueError, match="ff_method"):
        separate_water_fat(s, TE_3T_SYMMETRIC, 3.0, ff_method="ratio")
    with pytest.raises(ValueError, match="phase_constrained"):
        separate_water_fat(s[..., :2], TE_3T_SYMMETRIC[:2], 3.0, phase_constrained=False)
    with pytest.raises(ValueError, match="real"):
        fat_fraction_from_magnitude_echoes(s, TE_3T_SYMMETRIC, 3.0)
    with pytest.raises(ValueError, match="shape"):
        fat_fraction_from_magnitude_echoes(np.ones((4, 2)), TE_3T_SYMMETRIC, 3.0)


def test_echo_times_that_cannot_separate_water_from_fat_are_refused():
    # opposed- and in-phase echoes of a single fat peak: water NSA 2, the number of echoes
    period = 1.0 / (GYROMAGNETIC_RATIO_HZ_PER_T * 3.0 * 3.4e-6)
    assert water_nsa((period / 2, period), 3.0, "single") == pytest.approx(2.0)
    assert water_nsa(TE_3T_SYMMETRIC, 3.0) > 2.0
    # a GE "B0map" 2-echo GRE, 3.9 / 6.3 ms: fat has nearly the same phase at both echoes at 3 T, not at 1.5 T
    te = (3.9e-3, 6.3e-3)
    assert water_nsa(te, 3.0) < 0.2 and water_nsa(te, 1.5) > 1.9
    signal = simulate_megre(np.full((4, 4), 70.0), np.full((4, 4), 30.0), te, 3.0)
    with pytest.raises(ValueError, match="3.90, 6.30 ms cannot separate water from fat at 3 T"):
        separate_water_fat(signal, te, 3.0)
    with pytest.raises(ValueError, match="cannot separate water from fat"):
        fat_fraction_from_magnitude_echoes(np.abs(signal), te, 3.0)
    assert np.isfinite(separate_water_fat(simulate_megre(np.full((4, 4), 70.0), np.full((4, 4), 30.0), te, 1.5),
                                          te, 1.5)["ff_percent"]).all()
