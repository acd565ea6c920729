import numpy as np
import pytest
from scipy import ndimage

from bids_muscle.phantom.anatomy import draw_region
from bids_muscle.qmri.bias import estimation_factors, foreground_mask, n4_bias_field


@pytest.mark.parametrize("n_slices", [8, 2])
def test_n4_recovers_the_receive_field(n_slices):
    truth = draw_region("thigh", np.random.default_rng(0), n_slices=n_slices)
    image = truth.pd * truth.receive_bias * 1000.0
    field = n4_bias_field(image, (2.0, 2.0, 8.0), iterations=(30, 20))
    body = truth.tissue > 0
    assert np.all(np.isfinite(field))
    assert np.corrcoef(field[body], truth.receive_bias[body])[0, 1] > 0.95
    muscle = truth.labels > 0
    cv = lambda a: np.std(a[muscle]) / np.mean(a[muscle])  # noqa: E731
    assert cv(image / field) < 0.5 * cv(image)


def test_foreground_mask_and_errors():
    image = np.zeros((20, 20, 3), np.float32)
    image[5:15, 5:15] = 100.0
    mask = foreground_mask(image)
    assert mask[6:14, 6:14].all() and not mask[:5].any() and not mask[15:].any()
    with pytest.raises(ValueError, match="no positive voxels"):
        foreground_mask(np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="3D"):
        n4_bias_field(np.ones((4, 4)), (1.0, 1.0))


def _known_field(shape, spacing, strength=0.25):
    """Smooth multiplicative field, exp of a low-order polynomial over the field of view (~ +-strength)."""
    axes = [(np.arange(n) - (n - 1) / 2) * s / max(1.0, (n - 1) * s / 2) for n, s in zip(shape, spacing)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    return np.exp(strength * (0.8 * x + 0.5 * y ** 2 - 0.4 * x * y + 0.2 * z)).astype(np.float32)


def _thigh_volume(n_slices, zoom_in_plane, seed=0):
    truth = draw_region("thigh", np.random.default_rng(seed), n_slices=n_slices, severity=0.3)
    pd = ndimage.zoom(truth.pd, (zoom_in_plane, zoom_in_plane, 1), order=1)
    muscle = ndimage.zoom((truth.labels > 0).astype(np.uint8), (zoom_in_plane, zoom_in_plane, 1), order=0) > 0
    rng = np.random.default_rng(seed + 1)
    return (1000.0 * pd + rng.normal(0.0, 5.0, pd.shape)).clip(0).astype(np.float32), muscle


def test_coarse_grid_field_recovers_a_known_field():
    # a 384 x 192 mm thigh on a 1 mm grid with 10 mm slices: estimated every 4th voxel in-plane, all slices
    image, muscle = _thigh_volume(n_slices=10, zoom_in_plane=2)
    spacing = (1.0, 1.0, 10.0)
    assert estimation_factors(image.shape, spacing, 4.0) == [4, 4, 1]
    truth = _known_field(image.shape, spacing)
    mask = foreground_mask(image * truth)
    field = n4_bias_field(image * truth, spacing, mask=mask, iterations=(30, 20))
    assert field.shape == image.shape and np.all(np.isfinite(field))
    truth = truth / truth[mask].mean()
    assert np.median(np.abs(field / truth - 1)[muscle & mask]) < 0.03
    assert np.median(np.abs(field / truth - 1)[mask]) < 0.04
    # the field itself swings by more than that
    assert np.median(np.abs(truth - 1)[mask]) > 0.06


def test_estimation_grid_keeps_thick_slices_and_odd_shapes_work():
    assert estimation_factors((512, 512, 16), (0.742, 0.742, 24.0), 4.0) == [5, 5, 1]  # thick slices all kept
    assert estimation_factors((256, 256, 80), (1.0, 1.0, 1.0), 4.0) == [4, 4, 4]  # thin slices merged too
    assert estimation_factors((256, 256, 20), (1.0, 1.0, 1.0), 4.0) == [4, 4, 2]  # ... keeping >= 8 slices
    assert estimation_factors((40, 512, 12), (0.5, 2.0, 5.0), 4.0) == [5, 2, 1]  # >= 8 voxels per axis
    with pytest.raises(ValueError, match="voxel_mm"):
        estimation_factors((8, 8, 8), (1.0, 1.0, 1.0), 0.0)

    # anisotropic in-plane voxels, three thick slices, an odd matrix
    image, muscle = _thigh_volume(n_slices=3, zoom_in_plane=1, seed=2)
    image = ndimage.zoom(image, (1.0, 0.5, 1), order=1)[:187, :47]
    spacing = (2.0, 4.0, 30.0)
    truth = _known_field(image.shape, spacing)
    mask = foreground_mask(image * truth)
    field = n4_bias_field(image * truth, spacing, mask=mask, iterations=(20, 10))
    assert field.shape == image.shape and np.all(np.isfinite(field))
    assert np.corrcoef(field[mask], truth[mask])[0, 1] > 0.9
