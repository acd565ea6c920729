"""Tests of the CPMG extended phase graph simulation."""

from __future__ import annotations

import numpy as np
import pytest

from bids_muscle.qmri.epg import SliceProfile, default_slice_profile, epg_cpmg


def _reference_epg(
    t2_s: float, t1_s: float, esp_s: float, n_echoes: int, refocus_rad: float
) -> np.ndarray:
    """Textbook complex EPG (Weigel 2015 operators) with all states kept.

    90 degree excitation about y, refocusing about x, no regrowth of
    longitudinal magnetisation: an independent check of the real,
    truncated implementation.
    """
    k_max = 2 * n_echoes + 2
    f = np.zeros(2 * k_max + 1, complex)  # F_k for k = -k_max..k_max
    z = np.zeros(k_max + 1, complex)

    def rotate(f, z, angle, phase):
        fp = f[k_max:].copy()
        fm = np.conj(f[k_max::-1])
        c2, s2, sa = np.cos(angle / 2) ** 2, np.sin(angle / 2) ** 2, np.sin(angle)
        e = np.exp(1j * phase)
        new_fp = c2 * fp + e**2 * s2 * fm - 1j * e * sa * z
        new_fm = s2 / e**2 * fp + c2 * fm + 1j / e * sa * z
        new_z = -0.5j / e * sa * fp + 0.5j * e * sa * fm + np.cos(angle) * z
        out = np.zeros_like(f)
        out[k_max:] = new_fp
        out[k_max::-1] = np.conj(new_fm)
        out[k_max] = new_fp[0]
        return out, new_z

    z[0] = 1.0
    f, z = rotate(f, z, np.pi / 2, np.pi / 2)
    e2, e1 = np.exp(-esp_s / 2 / t2_s), np.exp(-esp_s / 2 / t1_s)
    echoes = []
    for _ in range(n_echoes):
        for half in range(2):
            f, z = np.roll(f * e2, 1), z * e1
            f[0] = 0.0
            if half == 0:
                f, z = rotate(f, z, refocus_rad, 0.0)
        echoes.append(f[k_max])
    return np.array(echoes)


def test_ideal_pulses_give_exponential_decay():
    t2 = np.array([0.02, 0.035, 0.1, 1.0])
    echoes = epg_cpmg(t2, 1.4, 1.0, 0.01, 17)
    te = 0.01 * np.arange(1, 18)
    np.testing.assert_allclose(
        echoes, np.exp(-te[None, :] / t2[:, None]), rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize("refocus_deg", [60.0, 120.0, 150.0, 200.0])
def test_matches_full_complex_epg(refocus_deg):
    scale = refocus_deg / 180.0
    # excitation kept at 90 degrees so the reference and the B1-scaled excitation agree
    ours = epg_cpmg(
        0.04, 1.0, scale, 0.01, 17, refocus_deg=180.0, excite_deg=90.0 / scale
    )
    ref = _reference_epg(0.04, 1.0, 0.01, 17, np.deg2rad(refocus_deg))
    assert np.abs(ref.imag).max() < 1e-12
    np.testing.assert_allclose(ours, ref.real, atol=1e-12)


def test_low_refocusing_angle_stimulated_echo():
    low_angle = epg_cpmg(0.035, 1.4, 1.0, 0.01, 17, refocus_deg=120.0)
    low_b1 = epg_cpmg(0.035, 1.4, 0.7, 0.01, 17)
    for train in (low_angle, low_b1):
        assert train[1] > train[0]
        assert np.all(np.isfinite(train)) and np.all(train > 0)
    # the excitation is scaled by B1 too: 0.7 * 90 degrees
    assert low_b1[0] < low_angle[0]


def test_slice_profile_adds_stimulated_echoes_at_nominal_b1():
    profile = default_slice_profile()
    ideal = epg_cpmg(0.035, 1.4, 1.0, 0.01, 17)
    sliced = epg_cpmg(0.035, 1.4, 1.0, 0.01, 17, slice_profile=profile)
    # stimulated echoes lift the second echo relative to the first
    assert sliced[1] / sliced[0] > ideal[1] / ideal[0] + 0.1
    assert sliced[1] / sliced[0] > sliced[2] / sliced[1]
    # the weakly excited slice edges give less signal at the first echo
    assert sliced[0] < 0.6 * ideal[0]
    low_b1 = epg_cpmg(0.035, 1.4, 0.85, 0.01, 17, slice_profile=profile)
    assert low_b1[1] > low_b1[0]


def test_monotone_in_t2_and_t1():
    t2 = np.geomspace(0.01, 0.3, 12)
    trains = epg_cpmg(t2, 1.4, 0.8, 0.01, 17, slice_profile=default_slice_profile())
    assert np.all(np.diff(trains, axis=0) > 0)
    # stimulated echoes are stored longitudinally: longer T1 keeps more of them
    short_t1 = epg_cpmg(0.035, 0.3, 0.7, 0.01, 17)
    long_t1 = epg_cpmg(0.035, 3.0, 0.7, 0.01, 17)
    assert long_t1[2:].sum() > short_t1[2:].sum()
    np.testing.assert_allclose(long_t1[0], short_t1[0])


def test_broadcasting_shape():
    out = epg_cpmg(
        np.array([0.02, 0.03, 0.04])[:, None],
        1.4,
        np.array([0.8, 0.9, 1.0, 1.1])[None, :],
        0.01,
        9,
    )
    assert out.shape == (3, 4, 9)
    single = epg_cpmg(0.03, 1.4, 0.9, 0.01, 9)
    np.testing.assert_allclose(out[1, 1], single)


def test_default_slice_profile_properties():
    profile = default_slice_profile(n_points=10)
    assert isinstance(profile, SliceProfile)
    assert profile.refocus_scale.shape == (10,)
    np.testing.assert_allclose(profile.weight.sum(), 1.0)
    assert profile.refocus_scale[0] > 0.95
    assert np.all(np.diff(profile.refocus_scale) < 0)
    assert np.all(profile.refocus_scale > 0)
    wide = default_slice_profile(n_points=10, refocus_width_ratio=1.5)
    assert np.all(wide.refocus_scale >= wide.excite_scale)
    np.testing.assert_allclose(wide.excite_scale, profile.excite_scale)


def test_custom_profile_is_a_weighted_average():
    profile = SliceProfile(
        np.array([1.0, 0.6]), np.array([1.0, 1.0]), np.array([3.0, 1.0])
    )
    mixed = epg_cpmg(0.035, 1.4, 1.0, 0.01, 12, slice_profile=profile)
    full = epg_cpmg(0.035, 1.4, 1.0, 0.01, 12)
    partial = epg_cpmg(0.035, 1.4, 1.0, 0.01, 12, refocus_deg=108.0)
    np.testing.assert_allclose(mixed, 0.75 * full + 0.25 * partial, atol=1e-12)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        epg_cpmg(-0.03, 1.4, 1.0, 0.01, 10)
    with pytest.raises(ValueError):
        epg_cpmg(0.03, 1.4, 1.0, 0.01, 0)
    with pytest.raises(ValueError):
        epg_cpmg(0.03, 1.4, 1.0, 0.0, 10)
    with pytest.raises(ValueError):
        epg_cpmg(
            0.03,
            1.4,
            1.0,
            0.01,
            10,
            slice_profile=SliceProfile(np.ones(2), np.ones(3), np.ones(2)),
        )
    with pytest.raises(ValueError):
        default_slice_profile(n_points=0)
