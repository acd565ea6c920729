"""Tests of bids_muscle.stats.biomarkers on constructed label maps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bids_muscle.seg.labels import load_label_table
from bids_muscle.stats import biomarkers as B

THIGH = load_label_table("thigh")
SPACING = (1.0, 1.0, 5.0)


def _two_muscles(shape=(30, 30, 4)):
    seg = np.zeros(shape, np.int16)
    seg[4:10, 4:14, :] = 1               # 6 x 10 x 4 = 240 voxels
    seg[14:20, 4:14, 1:3] = 21           # 6 x 10 x 2 = 120 voxels
    return seg


def test_muscle_table_statistics_on_known_values():
    seg = _two_muscles()
    ff = np.full(seg.shape, np.nan, np.float32)
    known = np.arange(240, dtype=np.float32) / 8.0
    ff[seg == 1] = known
    ff[seg == 21] = 30.0
    ff[15, 5, 1] = np.nan                # one voxel of label 21 without a value
    t2 = np.where(seg > 0, 35.0, 80.0).astype(np.float32)
    table = B.muscle_table(seg, SPACING, THIGH, {"ff_dixon_percent": ff, "t2_ms": t2})

    assert len(table) == len(THIGH) + 1
    row1 = table.loc[table["label"] == 1].iloc[0]
    assert row1["abbreviation"] == "SAR_R" and row1["side"] == "right"
    assert row1["voxel_count"] == 240
    assert row1["volume_ml"] == pytest.approx(240 * 5.0 / 1000)
    assert row1["ff_dixon_percent_mean"] == pytest.approx(known.mean())
    assert row1["ff_dixon_percent_median"] == pytest.approx(np.median(known))
    assert row1["ff_dixon_percent_sd"] == pytest.approx(known.std(ddof=1))
    assert row1["ff_dixon_percent_p25"] == pytest.approx(np.percentile(known, 25))
    assert row1["ff_dixon_percent_p75"] == pytest.approx(np.percentile(known, 75))
    assert row1["t2_ms_mean"] == pytest.approx(35.0)

    row21 = table.loc[table["label"] == 21].iloc[0]
    assert row21["voxel_count"] == 120 and row21["ff_dixon_percent_n"] == 119
    assert row21["ff_dixon_percent_mean"] == pytest.approx(30.0)

    absent = table.loc[table["label"] == 2].iloc[0]
    assert absent["voxel_count"] == 0 and absent["ff_dixon_percent_n"] == 0
    assert np.isnan(absent["ff_dixon_percent_mean"]) and np.isnan(absent["ff_dixon_percent_median"])

    whole = table.iloc[-1]
    assert whole["name"] == B.WHOLE_REGION_NAME and whole["label"] == 0
    assert whole["voxel_count"] == 360
    assert whole["ff_dixon_percent_mean"] == pytest.approx((known.sum() + 119 * 30.0) / 359)


def test_grouped_statistics_match_numpy_per_label():
    rng = np.random.default_rng(2)
    seg = rng.choice([0, 1, 3, 5, 22, 24], size=(25, 20, 6))
    image = rng.gamma(2.0, 10.0, seg.shape)
    image[rng.random(seg.shape) < 0.1] = np.nan
    table = B.muscle_table(seg, SPACING, THIGH, {"m": image})
    for lab in (1, 3, 5, 22, 24):
        v = image[seg == lab]
        v = v[np.isfinite(v)]
        row = table.loc[table["label"] == lab].iloc[0]
        assert row["m_n"] == v.size
        np.testing.assert_allclose(
            [row["m_mean"], row["m_median"], row["m_sd"], row["m_p25"], row["m_p75"]],
            [v.mean(), np.median(v), v.std(ddof=1), *np.percentile(v, [25, 75])], rtol=1e-10)


def test_erosion_matches_binary_erosion_and_keeps_volume():
    spacing = (1.0, 0.5, 2.0)
    seg = np.zeros((20, 30, 12), np.int16)
    seg[3:15, 4:26, 2:10] = 3
    erode_mm = 1.2
    radius = [int(np.floor(erode_mm / s)) for s in spacing]
    grid = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    ball = sum((g * s) ** 2 for g, s in zip(grid, spacing)) <= erode_mm ** 2
    expected = ndimage.binary_erosion(seg == 3, structure=ball)
    eroded = B.erode_labels(seg, spacing, erode_mm)
    np.testing.assert_array_equal(eroded == 3, expected)

    image = np.where(expected, 10.0, 50.0)         # border voxels carry a different value
    table = B.muscle_table(seg, spacing, THIGH, {"x": image}, erode_mm=erode_mm)
    row = table.loc[table["label"] == 3].iloc[0]
    assert row["voxel_count"] == np.count_nonzero(seg == 3)
    assert row["x_n"] == np.count_nonzero(expected)
    assert row["x_mean"] == pytest.approx(10.0)
    plain = B.muscle_table(seg, spacing, THIGH, {"x": image})
    assert plain.loc[plain["label"] == 3, "x_mean"].iloc[0] > 10.0


def test_erosion_does_not_erode_at_the_field_of_view_edge():
    seg = np.zeros((10, 10, 3), np.int16)
    seg[2:8, 2:8, :] = 1                           # fills the slab through-plane
    eroded = B.erode_labels(seg, (1.0, 1.0, 1.0), 1.0)
    assert np.count_nonzero(eroded) == 4 * 4 * 3   # in-plane rim gone, no slice lost
    assert np.array_equal(B.erode_labels(seg, (1.0, 1.0, 1.0), 0.0), seg)
    with pytest.raises(ValueError, match="erode_mm"):
        B.erode_labels(seg, (1.0, 1.0, 1.0), -1.0)


def test_imat_fraction_with_territories_and_without_region():
    seg = np.zeros((20, 12, 1), np.int16)
    seg[2:6, 2:10, 0] = 1                           # rows 2-5
    seg[12:16, 2:10, 0] = 2                         # rows 12-15
    region = np.zeros(seg.shape, bool)
    region[1:17, 2:10, 0] = True                    # rows 1-16: muscles and the gap rows 6-11
    imat = np.zeros(seg.shape, bool)
    imat[7, 2:10, 0] = True                         # in the gap, nearer to muscle 1
    imat[3, 2:6, 0] = True                          # inside muscle 1
    imat[14, 2:4, 0] = True                         # inside muscle 2
    table = B.muscle_table(seg, (1.0, 1.0, 1.0), THIGH[:2], imat_mask=imat, muscle_region_mask=region)
    r1, r2, whole = table.iloc[0], table.iloc[1], table.iloc[2]
    # gap rows 6-8 are nearer to muscle 1 (row 5), rows 9-11 nearer to muscle 2 (row 12)
    # muscle 1 territory: rows 1-8 = 8 x 8 = 64 voxels; muscle 2: rows 9-16 = 64 voxels
    assert r1["territory_volume_ml"] == pytest.approx(64 / 1000)
    assert r1["imat_fraction"] == pytest.approx((8 + 4) / 64)
    assert r2["imat_fraction"] == pytest.approx(2 / 64)
    assert whole["imat_fraction"] == pytest.approx(14 / 128)       # Amer 2022 Eq. 4
    assert r1["voxel_count"] == 32

    no_region = B.muscle_table(seg, (1.0, 1.0, 1.0), THIGH[:2], imat_mask=imat)
    assert no_region.iloc[0]["imat_fraction"] == pytest.approx(4 / 32)
    assert no_region.iloc[2]["imat_fraction"] == pytest.approx(6 / 64)


def test_slice_table_area_and_means():
    seg = _two_muscles()
    spacing = (0.8, 0.5, 6.0)
    image = np.broadcast_to(np.arange(seg.shape[2], dtype=float) * 10.0, seg.shape).copy()
    table = B.slice_table(seg, spacing, THIGH, {"x": image}, axis=2)
    rows1 = table.loc[table["label"] == 1]
    assert list(rows1["slice"]) == [0, 1, 2, 3]
    np.testing.assert_allclose(rows1["area_cm2"], 60 * 0.8 * 0.5 / 100)
    np.testing.assert_allclose(rows1["x_mean"], [0, 10, 20, 30])
    rows21 = table.loc[table["label"] == 21]
    assert list(rows21["slice"]) == [1, 2]
    whole = table.loc[table["label"] == 0]
    np.testing.assert_allclose(whole["area_cm2"], np.array([60, 120, 120, 60]) * 0.4 / 100)
    assert table["label"].iloc[-1] == 0

    by_rows = B.slice_table(seg, spacing, THIGH, axis=0)
    first = by_rows.loc[(by_rows["label"] == 1) & (by_rows["slice"] == 4)].iloc[0]
    assert first["area_cm2"] == pytest.approx(10 * 4 * 0.5 * 6.0 / 100)
    with pytest.raises(ValueError, match="axis"):
        B.slice_table(seg, spacing, THIGH, axis=3)


def test_column_descriptions_cover_every_column():
    seg = _two_muscles()
    maps = {"ff_dixon_percent": np.zeros(seg.shape), "water_t2_ms": np.zeros(seg.shape)}
    region = seg > 0
    desc = B.column_descriptions(maps)
    for table in (B.muscle_table(seg, SPACING, THIGH, maps, imat_mask=region, muscle_region_mask=region),
                  B.slice_table(seg, SPACING, THIGH, maps, imat_mask=region)):
        assert set(table.columns) <= set(desc)
    assert desc["ff_dixon_percent_mean"]["Units"] == "%"
    assert desc["water_t2_ms_sd"]["Units"] == "ms"
    assert desc["volume_ml"]["Units"] == "ml"
    assert B.column_descriptions(["r1_s"])["r1_s_median"]["Units"] == "s"


def test_bad_inputs_raise():
    seg = _two_muscles()
    with pytest.raises(ValueError, match="map 'x'"):
        B.muscle_table(seg, SPACING, THIGH, {"x": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="integer label"):
        B.muscle_table(seg + 0.5, SPACING, THIGH)
    with pytest.raises(ValueError, match="spacing_mm"):
        B.muscle_table(seg, (1.0, -1.0, 1.0), THIGH)


def test_real_calf_labels_match_simpleitk(shared_data):
    sitk = pytest.importorskip("SimpleITK")
    nib = pytest.importorskip("nibabel")
    folder = shared_data / "calf_mese_philips"
    labels_img = nib.load(folder / "labels.nii.gz")
    seg = np.asarray(labels_img.dataobj).astype(np.int64)
    image = np.asarray(nib.load(folder / "DTIdata.nii.gz").dataobj[..., 0], dtype=np.float64)
    spacing = tuple(float(z) for z in labels_img.header.get_zooms()[:3])
    values = list(range(13, 27))
    table = B.muscle_table(seg, spacing, values, {"b0": image})

    stats_filter = sitk.LabelStatisticsImageFilter()
    stats_filter.Execute(sitk.GetImageFromArray(image), sitk.GetImageFromArray(seg.astype(np.uint8)))
    for lab in values:
        row = table.loc[table["label"] == lab].iloc[0]
        assert row["voxel_count"] == stats_filter.GetCount(lab)
        assert row["volume_ml"] == pytest.approx(stats_filter.GetCount(lab) * np.prod(spacing) / 1000)
        assert row["b0_mean"] == pytest.approx(stats_filter.GetMean(lab), rel=1e-9)
        assert row["b0_sd"] == pytest.approx(stats_filter.GetSigma(lab), rel=1e-9)
        assert row["b0_median"] == pytest.approx(np.median(image[seg == lab]), rel=1e-9)


def test_standard_errors_combine_voxel_noise_and_the_spread_over_members():
    seg = _two_muscles()
    rng = np.random.default_rng(3)
    ff = np.where(seg > 0, 20.0 + rng.normal(0.0, 4.0, seg.shape), np.nan)
    ff[10:14, 4:14, :] = 60.0                      # fat next to muscle 1: where its border lies matters
    members = [seg.copy() for _ in range(3)]
    members[1][10, 4:14, :] = 1                    # one member draws muscle 1 a row larger, into the fat
    members[2][9, 4:14, :] = 0                     # another a row smaller
    table = B.muscle_table(seg, SPACING, THIGH, {"ff_percent": ff})
    member_tables = [B.muscle_table(m, SPACING, THIGH, {"ff_percent": ff}) for m in members]
    out = B.add_standard_errors(table, member_tables)
    row = out.set_index("label").loc[1]
    values = ff[seg == 1]
    assert row["ff_percent_se_noise"] == pytest.approx(values.std(ddof=1) / np.sqrt(values.size))
    member_means = [np.nanmean(ff[m == 1]) for m in members]
    assert row["ff_percent_se_seg"] == pytest.approx(np.std(member_means, ddof=1))
    assert row["ff_percent_se"] == pytest.approx(np.hypot(row["ff_percent_se_noise"], row["ff_percent_se_seg"]))
    assert row["volume_ml_se"] == pytest.approx(np.std([np.count_nonzero(m == 1) * 5e-3 for m in members], ddof=1))
    # muscle 21 is drawn the same by every member: no segmentation part
    assert out.set_index("label").loc[21, "ff_percent_se_seg"] == 0.0
    # one member: the segmentation part is unknown and the error is the noise part alone
    alone = B.add_standard_errors(table, member_tables[:1]).set_index("label").loc[1]
    assert np.isnan(alone["ff_percent_se_seg"]) and alone["ff_percent_se"] == alone["ff_percent_se_noise"]
    descriptions = B.column_descriptions(["ff_percent"])
    assert {"ff_percent_se", "ff_percent_se_noise", "ff_percent_se_seg", "volume_ml_se"} <= set(descriptions)


def test_noise_part_of_the_standard_error_covers_the_true_mean_at_its_nominal_rate():
    seg = _two_muscles()
    rng = np.random.default_rng(4)
    inside = []
    for _ in range(400):
        t2 = np.where(seg > 0, 35.0 + rng.normal(0.0, 3.0, seg.shape), np.nan)
        row = B.add_standard_errors(B.muscle_table(seg, SPACING, THIGH, {"t2_ms": t2})).set_index("label").loc[21]
        inside.append(abs(row["t2_ms_mean"] - 35.0) <= 1.96 * row["t2_ms_se"])
    assert 0.92 <= np.mean(inside) <= 0.98
