"""Largest cross-sectional area per muscle (``csa_max_mm2``)."""

from __future__ import annotations

import numpy as np
import pytest

from bids_muscle.stats.biomarkers import largest_cross_section_mm2, muscle_table


def _cone(shape=(40, 40, 9), top=3):
    """Label 1: discs whose radius grows with the slice; label 2: a fixed square; label 3 absent."""
    seg = np.zeros(shape, dtype=np.int16)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for z in range(shape[2]):
        seg[..., z][(yy - 15) ** 2 + (xx - 15) ** 2 <= (2 + z) ** 2] = 1
    seg[30:36, 30:34, :top] = 2
    return seg


def test_largest_slice_area_in_mm2_follows_the_voxel_size():
    seg = _cone()
    spacing = (0.8, 1.2, 5.0)
    csa = largest_cross_section_mm2(seg, spacing, [1, 2, 3])
    widest = max(np.count_nonzero(seg[..., z] == 1) for z in range(seg.shape[2]))
    assert csa[0] == pytest.approx(widest * 0.8 * 1.2)
    assert csa[1] == pytest.approx(6 * 4 * 0.8 * 1.2)
    assert csa[2] == 0
    # along another axis the slices are other planes (and other pixel areas)
    along_x = largest_cross_section_mm2(seg, spacing, [2], axis=0)
    assert along_x[0] == pytest.approx(4 * 3 * 1.2 * 5.0)


def test_mask_row_and_table_column():
    seg = _cone()
    region = seg > 0
    csa = largest_cross_section_mm2(seg, (1, 1, 3), [1, 2], mask=region)
    assert csa[-1] == max(np.count_nonzero(region[..., z]) for z in range(seg.shape[2]))
    table = muscle_table(seg, (1, 1, 3), [1, 2, 3], muscle_region_mask=region)
    assert list(table["csa_max_mm2"]) == pytest.approx([*csa[:2], 0.0, csa[-1]])
    # at least the mean area over the slices where the muscle is (volume / thickness / slices),
    # and more than it for the cone, whose slices differ
    slices_present = np.array([9, 3, 9])  # label 1, label 2, whole region
    mean_area = table.loc[table["voxel_count"] > 0, "volume_ml"].to_numpy() * 1000 / 3 / slices_present
    largest = table.loc[table["voxel_count"] > 0, "csa_max_mm2"].to_numpy()
    assert largest[0] > mean_area[0] and largest[1] == pytest.approx(mean_area[1])


def test_bad_axis_is_refused():
    with pytest.raises(ValueError, match="axis 3 out of range"):
        largest_cross_section_mm2(np.zeros((2, 2, 2), int), (1, 1, 1), [1], axis=3)
