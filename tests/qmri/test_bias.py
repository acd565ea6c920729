import numpy as np
import pytest

from bids_muscle.phantom.anatomy import draw_region
from bids_muscle.qmri.bias import foreground_mask, n4_bias_field


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
