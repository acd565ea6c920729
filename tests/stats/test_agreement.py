"""Tests of bids_muscle.stats.agreement against hand-computed and SciPy results."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, stats
from scipy.spatial.distance import cdist

from bids_muscle.seg.labels import load_label_table
from bids_muscle.stats import agreement as A

SPACING = (2.0, 1.0, 3.0)


def _cube(shape=(12, 10, 10), start=(2, 2, 2), size=4):
    m = np.zeros(shape, bool)
    m[tuple(slice(s, s + size) for s in start)] = True
    return m


def _surface_points_mm(mask, spacing):
    """Surface voxel centres in mm: voxels with a face neighbour outside (image edge = outside)."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1, 1:-1]
    outside_neighbour = np.zeros_like(mask)
    for axis in range(3):
        for shift in (-1, 1):
            outside_neighbour |= ~np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(inner & outside_neighbour) * np.asarray(spacing)


def test_dice_of_known_masks():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :4] = True                      # 4 voxels
    b[0, 1:4] = True
    b[1, 0:3] = True                     # 6 voxels, 3 shared with a
    assert A.dice(a, b) == pytest.approx(2 * 3 / 10)
    assert np.isnan(A.dice(np.zeros(5, bool), np.zeros(5, bool)))
    assert A.dice(a, np.zeros_like(a)) == 0.0
    with pytest.raises(ValueError, match="shape mismatch"):
        A.dice(a, b[:3])


def test_dice_per_label_matches_masks_and_empty_rules():
    rng = np.random.default_rng(1)
    seg_a = rng.integers(0, 4, (20, 20, 5))
    seg_b = np.where(rng.random(seg_a.shape) < 0.8, seg_a, rng.integers(0, 4, seg_a.shape))
    seg_b[seg_b == 3] = 0                # label 3 only in a, label 7 in neither
    got = A.dice_per_label(seg_a, seg_b, [1, 2, 3, 7])
    for i, lab in enumerate([1, 2]):
        assert got[i] == pytest.approx(A.dice(seg_a == lab, seg_b == lab))
    assert got[2] == 0.0
    assert np.isnan(got[3])


def test_hausdorff_and_assd_of_shifted_cubes_with_anisotropic_spacing():
    a = _cube(start=(2, 2, 2))
    b = _cube(start=(4, 2, 2))           # shifted by 2 voxels = 4 mm along axis 0
    # 56 surface voxels per cube; distances A->B: 16 at 4 mm (far face),
    # 12 at 2 mm (next layer's rim), 4 at 1 mm (inner of the shared face),
    # 24 at 0 mm (shared side faces); the same for B->A by symmetry.
    assert A.hausdorff95_mm(a, b, SPACING) == pytest.approx(4.0)
    assert A.hausdorff95_mm(a, b, SPACING, percentile=100) == pytest.approx(4.0)
    assert A.assd_mm(a, b, SPACING) == pytest.approx(92.0 / 56.0)
    # average Hausdorff over all voxels: 16 at 4 mm, 16 at 2 mm, 32 at 0 mm
    assert A.average_hausdorff_mm(a, b, SPACING) == pytest.approx(96.0 / 64.0)
    # one voxel along the 3 mm axis
    c = _cube(start=(2, 2, 3))
    assert A.hausdorff95_mm(a, c, SPACING, percentile=100) == pytest.approx(3.0)
    assert A.hausdorff95_mm(a, a, SPACING) == 0.0


def test_surface_distances_match_brute_force():
    rng = np.random.default_rng(7)
    base = ndimage.gaussian_filter(rng.random((24, 20, 8)), 2.0)
    a = base > np.quantile(base, 0.7)
    b = ndimage.shift(base, (1.3, -0.7, 0.4), order=1) > np.quantile(base, 0.72)
    pa, pb = _surface_points_mm(a, SPACING), _surface_points_mm(b, SPACING)
    d = cdist(pa, pb)
    d_ab, d_ba = d.min(axis=1), d.min(axis=0)
    got_ab, got_ba = A.surface_distances_mm(a, b, SPACING)
    np.testing.assert_allclose(np.sort(got_ab), np.sort(d_ab))
    np.testing.assert_allclose(np.sort(got_ba), np.sort(d_ba))
    expect_hd95 = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    assert A.hausdorff95_mm(a, b, SPACING) == pytest.approx(expect_hd95)
    assert A.assd_mm(a, b, SPACING) == pytest.approx(np.concatenate([d_ab, d_ba]).mean())


def test_distances_of_empty_masks_are_nan():
    a = _cube()
    empty = np.zeros_like(a)
    assert np.isnan(A.hausdorff95_mm(a, empty, SPACING))
    assert np.isnan(A.assd_mm(empty, empty, SPACING))
    assert np.isnan(A.average_hausdorff_mm(empty, a, SPACING))
    with pytest.raises(ValueError, match="spacing_mm"):
        A.hausdorff95_mm(a, a, (1.0, 1.0))


def test_compare_segmentations_rows_flags_and_biomarker_deltas():
    labels = load_label_table("thigh")[:4]          # indices 1..4
    seg_b = np.zeros((16, 12, 6), np.int16)         # reference
    seg_b[2:6, 2:6, 1:5] = 1
    seg_b[8:12, 2:6, 1:5] = 2                       # label 2 missed by a -> absent
    seg_a = np.zeros_like(seg_b)                    # under test
    seg_a[3:7, 2:6, 1:5] = 1                        # shifted by one voxel
    seg_a[8:12, 7:11, 1:5] = 3                      # label 3 only in a -> spurious
    ff = np.full(seg_b.shape, 10.0)
    ff[6, 2:6, 1:5] = 40.0                          # the extra slab of a is fatty
    ff[2, 2, 1] = np.nan                            # a voxel without value
    df = A.compare_segmentations(seg_a, seg_b, labels, (1.0, 1.0, 2.0), maps={"ff": ff})

    assert list(df["label"]) == [1, 2, 3, 4]
    assert list(df["abbreviation"]) == [lab.abbreviation for lab in labels]
    r1, r2, r3, r4 = (df.iloc[i] for i in range(4))
    assert r1["dice"] == pytest.approx(2 * 48 / 128)
    assert r1["volume_a_ml"] == pytest.approx(64 * 2.0 / 1000)
    assert r1["volume_diff_ml"] == pytest.approx(0.0)
    assert r1["hd95_mm"] == pytest.approx(1.0)
    # mean FF in a: 48 voxels at 10 and 16 at 40; in b: 63 valid voxels at 10
    assert r1["ff_a"] == pytest.approx((48 * 10 + 16 * 40) / 64)
    assert r1["ff_b"] == pytest.approx(10.0)
    assert r1["delta_ff"] == pytest.approx(r1["ff_a"] - 10.0)
    assert not r1["absent"] and not r1["spurious"]

    assert r2["absent"] and not r2["spurious"] and r2["dice"] == 0.0
    assert np.isnan(r2["hd95_mm"]) and np.isnan(r2["assd_mm"]) and np.isnan(r2["delta_ff"])
    assert r2["volume_diff_ml"] == pytest.approx(-64 * 2.0 / 1000)
    assert r3["spurious"] and not r3["absent"] and r3["dice"] == 0.0
    assert np.isnan(r4["dice"]) and not r4["absent"] and not r4["present_b"]

    assert A.absence_rate(df["present_b"], df["present_a"]) == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match="map 'ff'"):
        A.compare_segmentations(seg_a, seg_b, labels, (1.0, 1.0, 2.0), maps={"ff": ff[:-1]})


def test_absence_rate_known_flags():
    ref = [True, True, True, True, False]
    test = [True, False, True, True, True]
    assert A.absence_rate(ref, test) == pytest.approx(0.25)
    assert np.isnan(A.absence_rate([False], [True]))


def test_outlier_rate_of_known_list():
    values = [0.5, 0.90, 0.91, 0.92, 0.93, 0.94, np.nan]
    # Q1 = 0.9025, Q3 = 0.9275 (linear), fences 0.865 and 0.965
    assert A.outlier_rate(values) == pytest.approx(1 / 6)
    assert A.outlier_rate(values, tail="upper") == 0.0
    assert A.outlier_rate([0.5, 0.90, 0.91, 0.92, 0.93, 0.94, 1.5], tail="both") == pytest.approx(2 / 7)
    assert np.isnan(A.outlier_rate([np.nan]))
    with pytest.raises(ValueError, match="tail"):
        A.outlier_rate(values, tail="up")


def test_bland_altman_of_known_pairs():
    x = [1.0, 2.0, 3.0, 4.0, np.nan]
    y = [0.0, 2.0, 1.0, 5.0, 3.0]
    res = A.bland_altman(x, y)
    sd = np.sqrt(5.0 / 3.0)              # differences 1, 0, 2, -1
    assert res["n"] == 4
    assert res["bias"] == pytest.approx(0.5)
    assert res["sd"] == pytest.approx(sd)
    assert res["loa_low"] == pytest.approx(0.5 - 1.96 * sd)
    assert res["loa_high"] == pytest.approx(0.5 + 1.96 * sd)


def test_paired_test_chooses_t_or_wilcoxon_like_scipy():
    rng = np.random.default_rng(3)
    y = rng.normal(50, 5, 40)
    x_normal = y + rng.normal(0.5, 1.0, 40)
    x_skewed = y + rng.exponential(1.0, 40) ** 3
    res = A.paired_test(x_normal, y)
    assert stats.shapiro(x_normal - y).pvalue >= 0.05
    assert res["test"] == "paired_t"
    assert res["p_value"] == pytest.approx(stats.ttest_rel(x_normal, y).pvalue)
    res = A.paired_test(x_skewed, y)
    assert stats.shapiro(x_skewed - y).pvalue < 0.05
    assert res["test"] == "wilcoxon"
    assert res["p_value"] == pytest.approx(stats.wilcoxon(x_skewed, y).pvalue)
    assert A.paired_test([1, 2], [1, 3])["test"] == "none"


def test_g20_comparison_splits_and_tests_like_scipy():
    rng = np.random.default_rng(11)
    n = 60
    ff_ref = np.concatenate([rng.uniform(2, 19.9, n), rng.uniform(20, 60, n)])
    manual = ff_ref + rng.normal(0, 0.1, 2 * n)
    err = np.concatenate([rng.normal(-0.3, 0.8, n), -rng.exponential(1.0, n) ** 2])
    auto = manual + err
    res = A.g20_comparison(ff_ref, auto, manual)
    d = auto - manual
    minus, plus = d[:n], d[n:]
    assert (res["n_minus"], res["n_plus"]) == (n, n)
    assert res["mean_minus"] == pytest.approx(minus.mean())
    assert res["sd_plus"] == pytest.approx(plus.std(ddof=1))
    assert res["test_minus"] == "paired_t"
    assert res["p_minus"] == pytest.approx(stats.ttest_rel(auto[:n], manual[:n]).pvalue)
    assert res["test_plus"] == "wilcoxon"
    assert res["p_plus"] == pytest.approx(stats.wilcoxon(auto[n:], manual[n:]).pvalue)
    assert res["test_between"] == "mann_whitney"
    assert res["p_between"] == pytest.approx(stats.mannwhitneyu(minus, plus).pvalue)
    # a single metric (Dice): normal in both groups -> Student t
    dice_values = np.concatenate([rng.normal(0.92, 0.02, n), rng.normal(0.88, 0.03, n)])
    res = A.g20_comparison(ff_ref, dice_values)
    assert res["test_between"] == "student_t"
    assert res["p_between"] == pytest.approx(stats.ttest_ind(dice_values[:n], dice_values[n:]).pvalue)
    assert "test_minus" not in res


def test_dice_error_correlation_and_site_effect_match_scipy():
    rng = np.random.default_rng(5)
    dsc = rng.uniform(0.7, 0.95, 50)
    err = (1 - dsc) * rng.normal(0, 5, 50)
    res = A.dice_error_correlation(dsc, err)
    ref = stats.pearsonr(dsc, np.abs(err))
    assert res["r"] == pytest.approx(ref.statistic)
    assert res["p_value"] == pytest.approx(ref.pvalue)
    values = np.concatenate([rng.normal(10, 1, 20), rng.normal(11, 1, 25), rng.normal(10.5, 1, 15)])
    sites = np.repeat(["a", "b", "c"], [20, 25, 15])
    values[3] = np.nan
    res = A.site_effect(values, sites)
    keep = np.isfinite(values)
    ref = stats.kruskal(*(values[keep & (sites == s)] for s in "abc"))
    assert res["n_sites"] == 3 and res["n"] == 59
    assert res["statistic"] == pytest.approx(ref.statistic)
    assert res["p_value"] == pytest.approx(ref.pvalue)
    assert np.isnan(A.site_effect([1.0, 2.0], ["a", "a"])["p_value"])


def test_real_label_maps_agree_with_simpleitk(shared_data):
    sitk = pytest.importorskip("SimpleITK")
    nib = pytest.importorskip("nibabel")
    folder = shared_data / "thigh_labels_huashan"
    img_a = nib.load(folder / "Training__T1__THIGH_022_0002.nii.gz")
    img_b = nib.load(folder / "Training__Water__THIGH_022_0001.nii.gz")
    a = np.asarray(img_a.dataobj).astype(np.int64)
    b = np.asarray(img_b.dataobj).astype(np.int64)
    spacing = tuple(float(z) for z in img_a.header.get_zooms()[:3])

    def to_sitk(arr):
        image = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
        image.SetSpacing(spacing)
        return image

    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(to_sitk(b.astype(np.uint8)), to_sitk(a.astype(np.uint8)))
    got = A.dice_per_label(a, b, range(1, 12))
    np.testing.assert_allclose(got, [overlap.GetDiceCoefficient(lab) for lab in range(1, 12)], rtol=1e-9)
    assert np.all(got > 0.8)

    hausdorff = sitk.HausdorffDistanceImageFilter()
    for lab in (1, 8):
        d_ab, d_ba = A.surface_distances_mm(a == lab, b == lab, spacing)
        surf_a = A._surface(a == lab).astype(np.uint8)
        surf_b = A._surface(b == lab).astype(np.uint8)
        hausdorff.Execute(to_sitk(surf_a), to_sitk(surf_b))
        assert max(d_ab.max(), d_ba.max()) == pytest.approx(hausdorff.GetHausdorffDistance(), rel=1e-6)
        assert (d_ab.mean() + d_ba.mean()) / 2 == pytest.approx(hausdorff.GetAverageHausdorffDistance(), rel=1e-6)
