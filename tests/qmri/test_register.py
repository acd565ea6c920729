"""Rigid registration of the second echo of a 2-echo spin echo onto the first."""

import numpy as np
import pytest
from scipy import ndimage

from bids_muscle.phantom.anatomy import draw_region
from bids_muscle.qmri.bias import foreground_mask
from bids_muscle.qmri.register import register_rigid
from bids_muscle.qmri.se2echo import align_second_echo, log_ratio_edge_energy, t2_two_point

TE1, TE2 = 0.016, 0.056
FAT_T2_S = 0.15


def _echoes(n_slices=6, seed=0):
    truth = draw_region("thigh", np.random.default_rng(seed), n_slices=n_slices, severity=0.2)
    ff = truth.ff_percent / 100.0
    t2w = np.where(truth.water_t2_s > 0, truth.water_t2_s, 0.035)

    def echo(te):
        return 1000.0 * truth.pd * ((1 - ff) * np.exp(-te / t2w) + ff * np.exp(-te / FAT_T2_S))

    rng = np.random.default_rng(seed + 1)
    s1, s2 = (np.abs(echo(te) + rng.normal(0, 3.0, truth.pd.shape)).astype(np.float32) for te in (TE1, TE2))
    return truth, s1, s2


def _move(image, shift_mm, angle_deg, spacing):
    """Content of ``image`` rotated by ``angle_deg`` about the slice axis through the centre, then shifted."""
    c = (np.asarray(image.shape) - 1) / 2.0
    th = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(th), -np.sin(th), 0.0], [np.sin(th), np.cos(th), 0.0], [0.0, 0.0, 1.0]])
    scale = np.diag(spacing)
    # output voxel x shows input at R^-1 (x - c - t) + c (all in mm, then back to voxels)
    inv = np.linalg.inv(scale) @ rot.T @ scale
    t_vox = np.asarray(shift_mm) / np.asarray(spacing)
    offset = c - inv @ (c + t_vox)
    return ndimage.affine_transform(image, inv, offset, order=3, mode="constant").astype(np.float32)


def test_a_known_shift_between_the_echoes_is_recovered_and_removed():
    spacing = (2.0, 2.0, 8.0)
    truth, s1, s2 = _echoes()
    shift, angle = (2.6, -1.8, 0.0), 1.5
    moved_s2 = _move(s2, shift, angle, spacing)
    mask = foreground_mask(s1)
    aligned, info = align_second_echo(s1, moved_s2, spacing, mask)
    assert info["applied"] and info["degrees_of_freedom"] == 3  # 8 mm slices: in-plane only
    # the transform maps echo 1 to echo 2 about the image centre: its translation is the shift
    centre_mm = (np.asarray(s1.shape) - 1) / 2.0 * spacing
    np.testing.assert_allclose(info["center_mm"][:2], centre_mm[:2], atol=1.0)
    np.testing.assert_allclose(info["translation_mm"][:2], shift[:2], atol=0.3)
    assert abs(info["rotation_deg"][2] - angle) < 0.2
    assert abs(info["translation_mm"][2]) < 1e-6 and max(abs(a) for a in info["rotation_deg"][:2]) < 1e-6
    assert info["edge_energy_after"] < 0.7 * info["edge_energy_before"]

    core = ndimage.binary_erosion(truth.labels > 0, np.ones((5, 5, 1)))
    core[:, :, [0, -1]] = False
    truth_t2 = t2_two_point(s1, s2, TE1, TE2, mask=core)["t2_s"]
    error = lambda t2: np.nanmedian(np.abs(t2 - truth_t2)[core])  # noqa: E731
    before = error(t2_two_point(s1, moved_s2, TE1, TE2, mask=core)["t2_s"])
    after = error(t2_two_point(s1, aligned, TE1, TE2, mask=core)["t2_s"])
    assert after < 0.3 * before
    assert after < 0.5e-3  # below 0.5 ms


def test_aligned_echoes_are_left_alone_and_odd_grids_work():
    truth, s1, s2 = _echoes(n_slices=2, seed=3)
    mask = foreground_mask(s1)
    aligned, info = align_second_echo(s1, s2, (2.0, 2.0, 8.0), mask)
    assert info["max_displacement_mm"] < 0.5
    if not info["applied"]:
        np.testing.assert_array_equal(aligned, s2)
    assert log_ratio_edge_energy(s1, aligned, mask) <= log_ratio_edge_energy(s1, s2, mask) + 1e-9

    # thin slices: all six degrees of freedom
    iso = np.repeat(s1[::2, ::2, :1], 16, axis=2)
    moved, info = register_rigid(iso, _move(iso, (2.0, 0.0, 0.0), 0.0, (4.0, 4.0, 4.0)), (4.0, 4.0, 4.0))
    assert info["degrees_of_freedom"] == 6 and moved.shape == iso.shape
    assert abs(info["translation_mm"][0] - 2.0) < 0.5
    with pytest.raises(ValueError, match="one shape"):
        register_rigid(s1, s1[:-1], (2.0, 2.0, 8.0))


def test_twopoint_interface_registers_separate_series_and_says_so(tmp_path):
    nib = pytest.importorskip("nibabel")
    from bids_muscle.interfaces.qmaps import TwoPointT2

    spacing = (2.0, 2.0, 8.0)
    truth, s1, s2 = _echoes()
    affine = np.diag([*spacing, 1.0])
    moved = _move(s2, (-2.2, 1.4, 0.0), -1.0, spacing)
    paths = []
    for name, data in (("e1", s1), ("e2", moved)):
        paths.append(str(tmp_path / f"{name}.nii.gz"))
        nib.Nifti1Image(data, affine).to_filename(paths[-1])
    res = TwoPointT2(in_files=paths, echo_times=[TE1, TE2]).run(cwd=str(tmp_path)).outputs
    reg = res.metadata["Registration"]
    assert reg["Applied"] and "Mattes mutual information" in reg["Metric"]
    np.testing.assert_allclose(reg["TranslationMm"][:2], [-2.2, 1.4], atol=0.3)
    assert abs(reg["RotationDeg"][2] + 1.0) < 0.2
    core = ndimage.binary_erosion(truth.labels > 0, np.ones((5, 5, 1)))
    core[:, :, [0, -1]] = False
    t2 = np.asarray(nib.load(res.t2).dataobj)
    aligned_t2 = t2_two_point(s1, s2, TE1, TE2, mask=core)["t2_s"]
    assert np.nanmedian(np.abs(t2 - aligned_t2)[core]) < 0.5e-3

    # two volumes of one 4D file: one acquisition, nothing registered
    four_d = str(tmp_path / "both.nii.gz")
    nib.Nifti1Image(np.stack([s1, s2], axis=-1), affine).to_filename(four_d)
    res = TwoPointT2(in_files=[four_d, four_d], volumes=[0, 1], echo_times=[TE1, TE2]).run(cwd=str(tmp_path)).outputs
    assert "Registration" not in res.metadata
