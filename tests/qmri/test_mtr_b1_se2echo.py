"""MTR, double-angle B1 and two-point spin-echo T2 on known inputs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bids_muscle.qmri.b1 import b1_double_angle, b1_on_grid, relative_b1
from bids_muscle.qmri.mtr import mtr_percent, resample_to_grid
from bids_muscle.qmri.se2echo import t2_two_point


def test_mtr_known_values_and_noise_floor():
    m_off = np.array([100.0, 200.0, 50.0, 0.5, 0.0])
    m_on = np.array([60.0, 150.0, 50.0, 0.1, 0.0])
    mtr = mtr_percent(m_off, m_on, min_signal=1.0)
    np.testing.assert_allclose(mtr[:3], [40.0, 25.0, 0.0], atol=1e-5)
    assert np.all(np.isnan(mtr[3:]))
    masked = mtr_percent(m_off, m_on, mask=np.array([True, False, True, True, True]), min_signal=1.0)
    assert np.isnan(masked[1]) and masked[0] == pytest.approx(40.0)
    # default floor: 5 % of the 99th percentile of M_off
    auto = mtr_percent(np.array([100.0, 4.0, 6.0]), np.array([70.0, 1.0, 3.0]))
    assert np.isnan(auto[1]) and auto[2] == pytest.approx(50.0)
    assert mtr.dtype == np.float32


def test_mtr_invalid_inputs():
    with pytest.raises(ValueError, match="shapes"):
        mtr_percent(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="mask"):
        mtr_percent(np.ones(3), np.ones(3), mask=np.ones(2, bool))
    with pytest.raises(ValueError, match="min_signal"):
        mtr_percent(np.ones(3), np.ones(3), min_signal=-1.0)


def test_resample_to_grid_matches_world_coordinates():
    # a linear function of world position is reproduced exactly by linear interpolation
    src_affine = np.diag([2.0, 2.0, 5.0, 1.0])
    src_affine[:3, 3] = [-20.0, -10.0, 0.0]
    i, j, k = np.meshgrid(np.arange(20), np.arange(16), np.arange(6), indexing="ij")
    world = src_affine @ np.stack([i, j, k, np.ones_like(i)]).reshape(4, -1)
    field = lambda w: 3.0 * w[0] - 2.0 * w[1] + 0.5 * w[2]  # noqa: E731
    src = field(world).reshape(i.shape)
    tgt_affine = np.diag([1.0, 1.5, 5.0, 1.0])
    tgt_affine[:3, 3] = [-15.0, -5.0, 5.0]
    out = resample_to_grid(src, src_affine, (30, 12, 4), tgt_affine)
    ti, tj, tk = np.meshgrid(np.arange(30), np.arange(12), np.arange(4), indexing="ij")
    tworld = tgt_affine @ np.stack([ti, tj, tk, np.ones_like(ti)]).reshape(4, -1)
    expected = field(tworld).reshape(ti.shape)
    inside = np.isfinite(out)
    assert inside.mean() > 0.9
    np.testing.assert_allclose(out[inside], expected[inside], atol=1e-3)
    # identity grid returns the input
    np.testing.assert_allclose(resample_to_grid(src, src_affine, src.shape, src_affine), src, atol=1e-4)
    # agrees with scipy's shift for a pure half-voxel translation
    shifted = src_affine.copy()
    shifted[0, 3] += 1.0
    np.testing.assert_allclose(resample_to_grid(src, src_affine, src.shape, shifted)[:-1],
                               ndimage.shift(src, (-0.5, 0, 0), order=1)[:-1], atol=1e-3)
    with pytest.raises(ValueError):
        resample_to_grid(src[..., 0], src_affine, (3, 3, 3), tgt_affine)
    with pytest.raises(ValueError):
        resample_to_grid(src, np.zeros((4, 4)), (3, 3, 3), tgt_affine)


def test_b1_double_angle_recovers_flip_angle():
    b1_true = np.linspace(0.6, 1.45, 50)
    alpha = np.deg2rad(60.0)
    pd = 1000.0
    s1 = pd * np.sin(b1_true * alpha)
    s2 = pd * np.abs(np.sin(2 * b1_true * alpha))
    np.testing.assert_allclose(b1_double_angle(s1, s2, 60.0), b1_true, atol=1e-5)
    # magnitude data cannot encode 2 alpha beyond 180 degrees; signed data can
    b1_high = np.array([1.6, 1.8])
    s1h = pd * np.sin(b1_high * alpha)
    np.testing.assert_allclose(b1_double_angle(s1h, pd * np.sin(2 * b1_high * alpha), 60.0), b1_high, atol=1e-5)
    # other nominal angle
    np.testing.assert_allclose(
        b1_double_angle(pd * np.sin(0.9 * np.deg2rad(45)), pd * np.sin(1.8 * np.deg2rad(45)), 45.0), 0.9, atol=1e-6)


def test_b1_undefined_and_masked():
    s1 = np.array([100.0, 100.0, 0.0, 100.0])
    s2 = np.array([250.0, 100.0, 10.0, 100.0])
    out = b1_double_angle(s1, s2, 60.0, mask=np.array([True, True, True, False]), min_signal=1.0)
    assert np.isnan(out[0])  # ratio > 1
    assert out[1] == pytest.approx(np.rad2deg(np.arccos(0.5)) / 60.0)
    assert np.isnan(out[2]) and np.isnan(out[3])
    with pytest.raises(ValueError, match="nominal_deg"):
        b1_double_angle(s1, s2, 0.0)
    with pytest.raises(ValueError, match="nominal_deg"):
        b1_double_angle(s1, s2, 120.0)
    with pytest.raises(ValueError, match="shapes"):
        b1_double_angle(s1, s2[:2])


def test_t2_two_point_known_values():
    t2_true = np.array([0.025, 0.035, 0.045, 0.080, 0.150])
    s0_true = np.array([900.0, 1000.0, 1100.0, 1200.0, 1300.0])
    s1 = s0_true * np.exp(-0.016 / t2_true)
    s2 = s0_true * np.exp(-0.056 / t2_true)
    out = t2_two_point(s1, s2, 0.016, 0.056)
    np.testing.assert_allclose(out["t2_s"], t2_true, rtol=1e-5)
    np.testing.assert_allclose(out["s0"], s0_true, rtol=1e-4)
    # S1 <= S2 (no finite T2), noise floor and mask give NaN
    odd = t2_two_point(np.array([100.0, 100.0, 1.0, 100.0]), np.array([100.0, 120.0, 0.5, 50.0]), 0.016, 0.056,
                       mask=np.array([True, True, True, False]), min_signal=2.0)
    assert np.all(np.isnan(odd["t2_s"])) and np.all(np.isnan(odd["s0"]))


@pytest.mark.parametrize(("te1", "te2"), [(0.056, 0.016), (0.016, 0.016), (-0.01, 0.05), (16.0, 56.0)])
def test_t2_two_point_invalid_echo_times(te1, te2):
    with pytest.raises(ValueError):
        t2_two_point(np.ones(3), np.ones(3), te1, te2)


def test_t2_two_point_shape_mismatch():
    with pytest.raises(ValueError, match="shapes"):
        t2_two_point(np.ones(3), np.ones(2), 0.016, 0.056)


def test_relative_b1_reads_percent_and_blanks_the_background():
    percent = np.array([[0.0, 95.0], [110.0, np.nan]])
    expected = np.array([[np.nan, 0.95], [1.10, np.nan]])
    for units in ("percent", None, ""):  # BIDS recommends percent; unstated units are told by the values
        np.testing.assert_allclose(relative_b1(percent, units), expected, rtol=1e-6)
    np.testing.assert_allclose(relative_b1(np.array([0.8, 1.2, -1.0]), "arbitrary"), [0.8, 1.2, np.nan], rtol=1e-6)
    with pytest.raises(ValueError, match="not plausible"):
        relative_b1(np.array([0.8, 1.2]), "percent")  # a relative map labelled percent
    with pytest.raises(ValueError, match="no positive value"):
        relative_b1(np.zeros(3))


def test_b1_on_grid_interpolates_measured_voxels_only():
    # a linear B1 ramp on a 2x coarser grid, with background (NaN) beyond x = 10
    fine_affine = np.diag([1.0, 1.0, 4.0, 1.0])
    coarse_affine = fine_affine @ np.array([[2, 0, 0, 0.5], [0, 2, 0, 0.5], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    x_coarse = 2 * np.arange(8) + 0.5  # world x of the coarse voxel centres
    coarse = np.broadcast_to((0.8 + 0.02 * x_coarse)[:, None, None], (8, 4, 3)).astype(np.float32).copy()
    coarse[x_coarse > 10] = np.nan
    fine = b1_on_grid(coarse, coarse_affine, (16, 8, 3), fine_affine)
    x = np.arange(16)
    inside = (x >= 1) & (x <= 8)  # between measured coarse centres (0.5 ... 8.5): linear
    np.testing.assert_allclose(fine[inside, 2:6, :], np.broadcast_to((0.8 + 0.02 * x[inside])[:, None, None], (8, 4, 3)),
                               atol=1e-5)
    # next to the background: the nearest measured value, not a blend with it; then NaN
    np.testing.assert_allclose(fine[9, 2:6, :], 0.8 + 0.02 * 8.5, atol=1e-5)
    assert np.isnan(fine[10:, :, :]).all()
    assert np.nanmin(fine) >= 0.8 - 1e-6
    same = b1_on_grid(coarse, coarse_affine, coarse.shape, coarse_affine)
    np.testing.assert_array_equal(np.isnan(same), np.isnan(coarse))
