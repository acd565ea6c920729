"""Leg split / mirror / merge, inference geometry and resampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from bids_muscle.seg.infer import (
    keep_largest_component,
    predict_probabilities,
    resample_labels,
    resample_probabilities,
    robust_normalise,
    segment,
)
from bids_muscle.seg.legs import (
    body_mask,
    canonical_labels,
    merge_legs,
    reorient_from_ras,
    reorient_to_ras,
    split_legs,
)
from bids_muscle.seg.zoo import ModelCard

RIGHT = (1, 2, 3, 5)
LEFT = (21, 22, 23, 25)
LEVELS = (0.25, 0.45, 0.65, 0.8)
SECTORS = np.deg2rad([-100.0, -10.0, 70.0, 150.0])


def rotation_z(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return rot


def centred(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Same affine with the volume centre at world (0, 0, 0)."""
    affine = affine.copy()
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return affine


def synthetic_legs(shape, affine, rng, noise=0.02, taper=True, centre_mm=55.0):
    """Two legs drawn in world (RAS+) space: subject's right leg at x = +55 mm
    (``centre_mm``; below 45 mm the legs touch).

    Each leg is a fat ellipse around four muscle sectors with distinct
    intensities and a dark bone; the sectors are asymmetric medio-laterally so
    that mirroring matters.
    """
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    x, y, z = (c.reshape(shape) for c in affine[:3, :3] @ ijk + affine[:3, 3:4])
    image = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.int16)
    for labs, cx, lateral in ((RIGHT, centre_mm, 1.0), (LEFT, -centre_mm, -1.0)):
        scale = 1.0 - 0.004 * (z - z.mean()) if taper else 1.0
        u = lateral * (x - cx) / (45.0 * scale)
        v = y / (40.0 * scale)
        r = np.hypot(u, v)
        image[r <= 1.0] = 1.0
        compartment = r <= 0.8
        bone = np.hypot(u - 0.1, v - 0.1) < 0.15
        sector = np.searchsorted(SECTORS, np.arctan2(v, u)) % 4
        muscle = compartment & ~bone
        labels[muscle] = np.array(labs, np.int16)[sector[muscle]]
        image[muscle] = np.array(LEVELS, np.float32)[sector[muscle]]
        image[compartment & bone] = 0.05
    image += noise * rng.standard_normal(shape).astype(np.float32)
    return np.abs(image) * 1000.0, labels


GRIDS = {
    "ras": (np.diag([1.5, 1.5, 5.0, 1.0]), (180, 80, 6)),
    "radiological_las": (np.diag([-1.5, 1.5, 5.0, 1.0]), (180, 80, 6)),
    "oblique_permuted": (rotation_z(12.0) @ np.diag([-1.2, 1.4, 6.0, 1.0])[:, [1, 0, 2, 3]], (80, 180, 6)),
    "flipped_inferior": (np.diag([1.25, -1.25, -4.0, 1.0]), (210, 90, 5)),
}


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_split_mirror_merge_round_trip(grid):
    affine, shape = GRIDS[grid]
    affine = centred(affine, shape)
    image, labels = synthetic_legs(shape, affine, np.random.default_rng(1))
    crops = split_legs(image, affine, mask=body_mask(image, slice_axis=2) | (labels > 0))
    assert [c.side for c in crops] == ["right", "left"]
    assert [c.mirrored for c in crops] == [False, True]
    right_crop = crops[0].extract(labels)
    assert set(np.unique(right_crop)) - {0} == set(RIGHT)
    canonical = [canonical_labels(c.extract(labels), "thigh") for c in crops]
    assert set(np.unique(canonical[1])) - {0} == set(RIGHT)
    merged = merge_legs(labels.shape, crops, canonical, "thigh")
    np.testing.assert_array_equal(merged, labels)


def test_touching_legs_are_split_at_the_narrowest_contact():
    affine, shape = GRIDS["radiological_las"]
    affine = centred(affine, shape)
    image, labels = synthetic_legs(shape, affine, np.random.default_rng(9), centre_mm=43.0)
    mask = body_mask(image, slice_axis=2)
    assert ndimage.label(mask)[1] == 1
    crops = split_legs(image, affine, mask=mask)
    assert [c.side for c in crops] == ["right", "left"]
    canonical = [canonical_labels(c.extract(labels), "thigh") for c in crops]
    np.testing.assert_array_equal(merge_legs(labels.shape, crops, canonical, "thigh"), labels)


def test_legs_joined_in_the_proximal_slices_are_still_split():
    """Thighs that merge into one blob near the perineum in a few slices (thigh_mese_siemens_dicom)."""
    affine, shape = GRIDS["ras"]
    affine = centred(affine, shape)
    image, labels = synthetic_legs(shape, affine, np.random.default_rng(3))
    bridge = np.zeros(shape, bool)
    bridge[40:140, 20:60, 4:] = True  # the last 2 of 6 slices are one wide blob
    mask = body_mask(image, slice_axis=2) | bridge
    assert ndimage.label(mask)[1] == 1
    crops = split_legs(image, affine, mask=mask)
    assert [c.side for c in crops] == ["right", "left"]
    canonical = [canonical_labels(c.extract(labels), "thigh") for c in crops]
    np.testing.assert_array_equal(merge_legs(labels.shape, crops, canonical, "thigh"), labels)


def test_legs_with_vials_between_them_are_split_between_the_legs():
    """Reference vials that fill the gap between the calves (calf_megre_ge_dicom): no valley in the
    profile, but a body 2.5 times as wide as it is deep is two legs."""
    affine, shape = GRIDS["ras"]
    affine = centred(affine, shape)
    image, labels = synthetic_legs(shape, affine, np.random.default_rng(5))
    x = affine[0, 0] * np.arange(shape[0]) + affine[0, 3]
    y = affine[1, 1] * np.arange(shape[1]) + affine[1, 3]
    vials = (np.abs(x)[:, None] <= 25.0) & (np.abs(y)[None, :] <= 25.0)
    image[vials] = 1500.0
    assert ndimage.label(body_mask(image, slice_axis=2))[1] == 1
    crops = split_legs(image, affine)
    assert [c.side for c in crops] == ["right", "left"]
    canonical = [canonical_labels(c.extract(labels), "thigh") for c in crops]
    np.testing.assert_array_equal(merge_legs(labels.shape, crops, canonical, "thigh"), labels)
    one_leg = np.where((x > 0)[:, None, None], image, 0.0)  # one leg with the vials beside it: not split
    assert [c.side for c in split_legs(one_leg, affine)] == ["right"]


def test_mirrored_left_leg_looks_like_right_leg():
    affine, shape = GRIDS["radiological_las"]
    affine = centred(affine, shape)
    image, labels = synthetic_legs(shape, affine, np.random.default_rng(2))
    crops = split_legs(image, affine)
    right, left = (canonical_labels(c.extract(labels), "thigh") for c in crops)
    shape_common = tuple(min(a, b) for a, b in zip(right.shape, left.shape))
    # align the crops on the leg centres before comparing
    def centre_crop(a):
        centre = np.round(np.argwhere(a > 0).mean(axis=0)).astype(int)
        starts = [max(0, min(c - s // 2, n - s)) for c, s, n in zip(centre, shape_common, a.shape)]
        return a[tuple(slice(st, st + s) for st, s in zip(starts, shape_common))]

    r, lft = centre_crop(right), centre_crop(left)
    for index in RIGHT:
        dice = 2 * np.sum((r == index) & (lft == index)) / (np.sum(r == index) + np.sum(lft == index))
        assert dice > 0.9, (index, dice)


def test_split_single_leg_uses_world_side():
    affine = centred(np.diag([-1.5, 1.5, 5.0, 1.0]), (180, 80, 6))
    image, labels = synthetic_legs((180, 80, 6), affine, np.random.default_rng(3))
    x_world = affine[0, 0] * np.arange(180) + affine[0, 3]
    only_left = image * (x_world < 0)[:, None, None]
    crops = split_legs(only_left, affine)
    assert [(c.side, c.mirrored) for c in crops] == [("left", True)]


def test_phantom_round_trip():
    anatomy = pytest.importorskip("bids_muscle.phantom.anatomy")
    truth = anatomy.draw_region("calf", np.random.default_rng(4), n_slices=4)
    image = (truth.tissue > 0).astype(np.float32)
    crops = split_legs(image, truth.affine, mask=(truth.tissue > 0) | (truth.labels > 0))
    assert [c.side for c in crops] == ["right", "left"]
    assert set(np.unique(crops[0].extract(truth.labels))) - {0} <= set(range(41, 51))
    merged = merge_legs(truth.labels.shape, crops, [canonical_labels(c.extract(truth.labels), "calf") for c in crops], "calf")
    np.testing.assert_array_equal(merged, truth.labels)


def test_canonical_labels_rejects_unknown_indices():
    with pytest.raises(ValueError, match="not in the thigh label table"):
        canonical_labels(np.array([[0, 1, 17]]), "thigh")


def test_reorientation_round_trip():
    affine = rotation_z(30.0) @ np.diag([-1.0, 2.0, -3.0, 1.0])[:, [2, 0, 1, 3]]
    data = np.random.default_rng(5).standard_normal((5, 6, 7))
    ras, affine_ras, orientation = reorient_to_ras(data, affine)
    np.testing.assert_array_equal(reorient_from_ras(ras, orientation), data)
    # the same world point is addressed before and after
    ijk = np.array([1, 2, 3])
    world = affine[:3, :3] @ ijk + affine[:3, 3]
    ijk_ras = np.linalg.solve(affine_ras[:3, :3], world - affine_ras[:3, 3])
    assert ras[tuple(np.round(ijk_ras).astype(int))] == data[tuple(ijk)]


def test_resample_labels_preserves_volumes():
    shape = (180, 80, 10)
    affine = centred(np.diag([1.0, 1.0, 4.0, 1.0]), shape)
    _, labels = synthetic_legs(shape, affine, np.random.default_rng(6), taper=False)
    target_shape = (140, 70, 8)
    target = rotation_z(12.0) @ np.diag([1.6, 1.3, 5.0, 1.0])
    target = centred(target, target_shape)
    resampled = resample_labels(labels, affine, target_shape, target)
    assert resampled.dtype == labels.dtype
    for index in RIGHT + LEFT:
        v_source = np.sum(labels == index) * 1.0 * 1.0 * 4.0
        v_target = np.sum(resampled == index) * 1.6 * 1.3 * 5.0
        assert abs(v_target / v_source - 1.0) < 0.02, (index, v_source, v_target)


def test_resample_probabilities_is_exact_for_linear_fields():
    shape = (30, 30, 6)
    affine = centred(np.diag([2.0, 2.0, 5.0, 1.0]), shape)
    ijk = np.indices(shape, dtype=np.float64)
    x = affine[0, 0] * ijk[0] + affine[0, 3]
    field = (0.5 + x / 200.0).astype(np.float32)
    probs = np.stack([field, 1.0 - field], axis=-1)
    target_shape = (20, 20, 4)
    target = centred(rotation_z(20.0) @ np.diag([1.5, 1.5, 5.0, 1.0]), target_shape)
    out = resample_probabilities(probs, affine, target_shape, target)
    assert out.shape == target_shape + (2,)
    tijk = np.indices(target_shape, dtype=np.float64).reshape(3, -1)
    tx = (target[:3, :3] @ tijk + target[:3, 3:4])[0].reshape(target_shape)
    np.testing.assert_allclose(out[..., 0], 0.5 + tx / 200.0, atol=1e-5)
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, atol=1e-5)


def test_keep_largest_component_removes_islands():
    dseg = np.zeros((20, 20, 3), np.int16)
    dseg[2:10, 2:10] = 5
    dseg[15:17, 15:17, 1] = 5
    dseg[12:14, 2:4] = 3
    out = keep_largest_component(dseg)
    assert np.sum(out == 5) == 8 * 8 * 3
    assert np.sum(out == 3) == 2 * 2 * 3


class IntensityOracle(nn.Module):
    """Classifies normalised intensity by the nearest known tissue level, so
    that only the geometry of the pipeline decides the result."""

    def __init__(self, background_levels, muscle_levels, width=0.04):
        super().__init__()
        self.register_buffer("bg", torch.tensor(background_levels, dtype=torch.float32))
        self.register_buffer("muscle", torch.tensor(muscle_levels, dtype=torch.float32))
        self.width = width

    def forward(self, x):
        def score(levels):
            return -((x - levels.view(1, -1, *([1] * (x.ndim - 2)))) ** 2) / (2 * self.width**2)

        background = torch.logsumexp(score(self.bg), dim=1, keepdim=True)
        return torch.cat([background, score(self.muscle)], dim=1)


@pytest.mark.parametrize("grid", ["radiological_las", "oblique_permuted"])
def test_segment_geometry_with_oracle_network(grid):
    affine, shape = GRIDS[grid]
    affine = centred(affine, shape)
    image, labels = synthetic_legs(shape, affine, np.random.default_rng(7), noise=0.01)
    normalised = robust_normalise(image, body_mask(image, slice_axis=2))
    levels = {int(i): float(np.median(normalised[labels == i])) for i in RIGHT}
    background = [float(np.median(normalised[image < 100])), float(np.median(normalised[(labels == 0) & (image > 900)]))]
    model = IntensityOracle(background, [levels[i] for i in RIGHT])
    card = ModelCard(name="oracle", architecture="unet2d", arguments={}, region="thigh", labels=list(RIGHT), voxel_size_mm=[2.0, 2.0, None])
    result = segment(image, affine, model, card, return_probabilities=True, num_threads=1)
    dseg = result["dseg"]
    assert dseg.shape == labels.shape and dseg.dtype == np.int16
    assert result["legs"] == ["right", "left"]
    for index in RIGHT + LEFT:
        dice = 2 * np.sum((dseg == index) & (labels == index)) / (np.sum(dseg == index) + np.sum(labels == index))
        assert dice > 0.9, (index, dice)
    probseg = result["probseg"]
    assert probseg.shape == labels.shape + (8,)
    assert result["probseg_labels"] == list(RIGHT + LEFT)
    assert probseg.min() >= 0.0 and probseg.sum(axis=-1).max() <= 1.0 + 1e-4
    inside = dseg > 0
    from_probs = np.array(result["probseg_labels"])[np.argmax(probseg, axis=-1)]
    assert np.mean(from_probs[inside] == dseg[inside]) > 0.99


def test_sliding_window_matches_whole_volume_for_a_pointwise_network():
    torch.manual_seed(0)
    net = nn.Conv3d(1, 3, 1).eval()
    volume = np.random.default_rng(8).standard_normal((20, 18, 7)).astype(np.float32)
    whole = predict_probabilities(net, volume, 3)
    tiled = predict_probabilities(net, volume, 3, patch_size=(8, 8, 3), overlap=0.5)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    slices = predict_probabilities(nn.Conv2d(1, 3, 1).eval(), volume, 2, batch_size=3)
    assert slices.shape == (3, 20, 18, 7)
    np.testing.assert_allclose(slices.sum(axis=0), 1.0, atol=1e-5)


def test_real_thigh_label_maps_split_into_two_legs_and_mirror(shared_data):
    """HuashanMyo thigh label maps use the same indices 1-11 on both legs;
    every muscle must fall into one crop per leg, and after mirroring the
    muscles of both legs must lie on the same side of their leg centre
    (sartorius medial, vastus lateralis lateral)."""
    import nibabel as nib

    files = sorted((shared_data / "thigh_labels_huashan").glob("*.nii.gz"))[::6]
    if not files:
        pytest.skip("no HuashanMyo label maps")
    for path in files:
        img = nib.load(path)
        labels = np.asarray(img.dataobj).astype(np.int16)
        crops = split_legs(labels.astype(np.float32), img.affine, mask=labels > 0)
        assert sorted(c.side for c in crops) == ["left", "right"], path.name
        offsets = []
        for crop in crops:
            leg = crop.extract(labels)
            assert set(np.unique(leg)) == set(range(12)), path.name
            centre = np.argwhere(leg > 0).mean(axis=0)
            offsets.append([np.argwhere(leg == k).mean(axis=0)[crop.lr_axis] - centre[crop.lr_axis] for k in range(1, 12)])
        covered = np.zeros(labels.shape, bool)
        for crop in crops:
            covered[crop.slices] = True
        assert not np.any((labels > 0) & ~covered), path.name
        assert np.corrcoef(offsets[0], offsets[1])[0, 1] > 0.9, path.name


def test_real_calf_labels_split_by_leg(shared_data):
    """QMRITools calf labels: odd values on one leg, even on the other."""
    import nibabel as nib

    path = shared_data / "calf_mese_philips" / "labels.nii.gz"
    if not path.exists():
        pytest.skip("calf labels not available")
    img = nib.load(path)
    labels = np.asarray(img.dataobj).astype(np.int16)
    crops = split_legs(labels.astype(np.float32), img.affine, mask=labels > 0)
    assert len(crops) == 2
    parities = []
    for crop in crops:
        values = set(np.unique(crop.extract(labels))) - {0}
        assert len(values) == 7
        parities.append({v % 2 for v in values})
    assert sorted(map(tuple, parities)) == [(0,), (1,)]


def test_region_slices_keep_the_physical_size_of_the_legs():
    from bids_muscle.seg.infer import region_slices

    def legs(voxel_mm, radius_mm):
        n = int(round(400 / voxel_mm))
        ii, jj = np.indices((n, n)) * voxel_mm
        image = np.zeros((n, n, 4), np.float32)
        rng = np.random.default_rng(0)
        for cx in (110.0, 290.0):
            inside = np.hypot(ii - cx, jj - 200.0) <= radius_mm
            image[inside] = rng.uniform(50.0, 150.0, (int(inside.sum()), 4))
        return image, np.diag([voxel_mm, voxel_mm, 8.0, 1.0])

    def area_mm2(stack):
        return float((stack[1] > -0.25).sum()) * 4.0**2  # the background maps to -0.5

    thigh_1mm, thigh_2mm, calf_1mm = (region_slices(*legs(v, r)) for v, r in ((1.0, 80.0), (2.0, 80.0), (1.0, 55.0)))
    assert thigh_1mm.shape[1:] == (128, 128)
    expected = 2 * np.pi * 80.0**2
    assert abs(area_mm2(thigh_1mm) - expected) < 0.05 * expected
    assert abs(area_mm2(thigh_2mm) - area_mm2(thigh_1mm)) < 0.03 * expected
    assert area_mm2(calf_1mm) < 0.55 * area_mm2(thigh_1mm)
