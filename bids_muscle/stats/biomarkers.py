"""Per-muscle and per-slice biomarker tables.

Given a label map, its voxel size and quantitative maps on the same grid,
:func:`muscle_table` gives one row per muscle label (each label is one muscle
on one side) plus one whole-region row, with volume, voxel count and, for
every map, mean, median, standard deviation, quartiles and the number of
voxels with a value. :func:`slice_table` gives cross-sectional areas and
means per slice. :func:`column_descriptions` documents every column for the
JSON sidecar of the TSV.

Definitions
-----------
Map statistics
    NaN voxels of a map carry no value and are ignored; ``<map>_n`` counts
    the voxels that were used. SD is the sample SD (ddof=1). Quartiles and
    median use linear interpolation (as ``numpy.percentile``).
Erosion
    With ``erode_mm > 0`` every muscle mask is eroded by a ball of radius
    ``erode_mm`` (an ellipsoid in voxels for anisotropic voxels) before the
    map statistics, to keep partial-volume voxels at the muscle border out
    of the averages (Rohm 2021 notes that post-processing commonly erodes
    labels for this reason). A voxel survives when its distance to the
    nearest voxel outside the muscle is larger than ``erode_mm``. The edge
    of the field of view is not a muscle border (the muscle continues
    beyond it) and does not erode. ``volume_ml`` and ``voxel_count`` always
    describe the uneroded mask.
Standard errors
    :func:`add_standard_errors` puts beside each ``<map>_mean`` its
    standard error ``<map>_se = sqrt(se_noise^2 + se_seg^2)``: the noise
    part is the standard error of a mean over the muscle's voxels,
    ``sd / sqrt(n)`` (voxels taken as independent; it also holds the
    muscle's own heterogeneity, so it does not understate white noise),
    the segmentation part the standard deviation of the mean over the
    label maps of the ensemble's members (each member's labels are a
    plausible segmentation: the spread says how much the muscle's number
    depends on where its border is drawn). ``volume_ml_se`` is the spread
    of the volume over the members. With one member the segmentation part
    is unknown and the columns ``_se_seg`` are NaN; ``_se`` is then the
    noise part alone. Errors shared by every member (a network's
    systematic error, a model bias of the map) are not in these numbers.
IMAT fraction
    Amer et al. 2022, Eq. 4: IMAT fraction = IMAT area / muscle-region area,
    the muscle region being everything inside the fascia (muscle and
    intramuscular fat). Here it is computed on volumes. Per muscle, the
    muscle region is divided into territories: each muscle-region voxel
    belongs to the muscle whose labelled voxel is nearest (Euclidean
    distance in mm), so fat between muscles, which the muscle labels
    usually leave out, is charged to the muscle it lies next to. The
    muscle's IMAT fraction is (IMAT voxels in its territory) / (voxels of
    its territory). Without a muscle-region mask the territory is the
    muscle label itself. The whole-region row gives Eq. 4 over the whole
    muscle region (or over the union of the muscle labels without a
    muscle-region mask).

References
----------
Amer R, et al. Quantification of intra-muscular adipose infiltration in
calf/thigh MRI using fully and weakly supervised deep learning.
Bioengineering 2022 (Eq. 4).

Hostin MA, et al. J Magn Reson Imaging 2023 (biomarker = mean of the map
over the muscle volume).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from bids_muscle.stats.agreement import _as_label_map, _as_mask, _spacing, label_indices

__all__ = [
    "MAP_STATISTICS",
    "WHOLE_REGION_NAME",
    "add_standard_errors",
    "column_descriptions",
    "erode_labels",
    "largest_cross_section_mm2",
    "muscle_table",
    "muscle_territories",
    "slice_table",
]

MAP_STATISTICS = ("mean", "median", "sd", "p25", "p75", "n")
WHOLE_REGION_NAME = "whole_region"

_WHOLE_REGION_ROW = {
    "label": 0,
    "name": WHOLE_REGION_NAME,
    "abbreviation": "ALL",
    "muscle": WHOLE_REGION_NAME,
    "side": "both",
}

_KNOWN_MAPS = {
    "ff_dixon_percent": ("fat fraction from Dixon water and fat images", "%"),
    "ff_mese_percent": ("fat fraction from the two-component EPG fit of multi-echo spin echo", "%"),
    "water_t2_ms": ("water T2 from the two-component EPG fit of multi-echo spin echo", "ms"),
    "t2_ms": ("T2 from multi-echo spin echo", "ms"),
    "pd": ("proton density", "arbitrary"),
    "mtr_percent": ("magnetisation transfer ratio", "%"),
    "b1": ("relative transmit field B1+ (actual / nominal flip angle)", "ratio"),
    "r2star_hz": ("R2* from multi-echo gradient echo", "Hz"),
}

_SUFFIX_UNITS = (
    ("_percent", "%"),
    ("_ms", "ms"),
    ("_s", "s"),
    ("_hz", "Hz"),
    ("_mm", "mm"),
    ("_ml", "ml"),
)


def _label_rows(labels) -> list[dict]:
    rows = []
    for lab in labels:
        if hasattr(lab, "index"):
            rows.append({"label": int(lab.index), "name": lab.name, "abbreviation": lab.abbreviation,
                         "muscle": lab.muscle, "side": lab.side})
        else:
            rows.append({"label": int(lab), "name": f"label_{int(lab)}", "abbreviation": str(int(lab)),
                         "muscle": f"label_{int(lab)}", "side": "n/a"})
    return rows


def _check_maps(maps: Mapping[str, np.ndarray] | None, shape) -> dict[str, np.ndarray]:
    checked = {}
    for name, image in (maps or {}).items():
        arr = np.asarray(image)
        if arr.shape != shape:
            raise ValueError(f"map {name!r} has shape {arr.shape}, label map has {shape}")
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise ValueError(f"map {name!r} must be real-valued, got dtype {arr.dtype}")
        checked[name] = arr
    return checked


def _optional_mask(mask, shape, name: str):
    if mask is None:
        return None
    m = _as_mask(mask, name)
    if m.shape != shape:
        raise ValueError(f"{name} has shape {m.shape}, label map has {shape}")
    return m


def _lookup(values: np.ndarray, top: int) -> np.ndarray:
    """Table from label value to row position (-1 for labels not listed)."""
    lut = np.full(max(top, int(values.max())) + 1, -1, dtype=np.int32)
    lut[values] = np.arange(values.size, dtype=np.int32)
    return lut


def erode_labels(label_map, spacing_mm, erode_mm: float, labels=None) -> np.ndarray:
    """Erode every label of a label map by a ball of radius ``erode_mm``.

    Parameters
    ----------
    label_map : array of int
        Label map (0 = background).
    spacing_mm : sequence of float
        Voxel size per axis in mm.
    erode_mm : float
        Erosion radius in mm (0 returns a copy).
    labels : sequence of int or Label, optional
        Labels to erode; others are set to 0. Default: every non-zero label.

    Returns
    -------
    ndarray of int64
        Eroded label map. A voxel keeps its label when every voxel within
        ``erode_mm`` of it (Euclidean distance in mm) has the same label, i.e.
        binary erosion by a ball; the image edge does not count as another
        value.
    """
    seg = _as_label_map(label_map)
    sp = _spacing(spacing_mm, seg.ndim)
    if not np.isfinite(erode_mm) or erode_mm < 0:
        raise ValueError(f"erode_mm must be a non-negative number, got {erode_mm}")
    if labels is None:
        values = np.unique(seg)
        values = values[values > 0]
    else:
        values = label_indices(labels)
    out = np.zeros_like(seg)
    if values.size == 0:
        return out
    ball = _ball(sp, erode_mm)
    objects = ndimage.find_objects(seg, max_label=int(values.max()))
    for lab in values:
        box = objects[lab - 1]
        if box is None:
            continue
        grown = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, seg.shape))
        mask = seg[grown] == lab
        if ball.size > 1:
            # border_value=1: outside the image is not a muscle border
            mask = ndimage.binary_erosion(mask, structure=ball, border_value=1)
        out[grown][mask] = lab
    return out


def _ball(spacing_mm: tuple[float, ...], radius_mm: float) -> np.ndarray:
    """Voxels within ``radius_mm`` of the centre (an ellipsoid in voxels)."""
    half = [int(np.floor(radius_mm / s)) for s in spacing_mm]
    grid = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    return sum((g * s) ** 2 for g, s in zip(grid, spacing_mm)) <= radius_mm**2


def muscle_territories(label_map, spacing_mm, labels, muscle_region_mask) -> np.ndarray:
    """Assign every muscle-region voxel to the nearest muscle label.

    Parameters
    ----------
    label_map : array of int
        Muscle label map.
    spacing_mm : sequence of float
        Voxel size per axis in mm.
    labels : sequence of int or Label
        Muscle labels that own territory; other labels count as unlabelled.
    muscle_region_mask : array of bool
        Muscle region (inside the fascia).

    Returns
    -------
    ndarray of int64
        Label of the nearest listed muscle voxel (Euclidean distance in mm)
        for every muscle-region voxel, 0 outside the region or when no
        listed muscle is present.
    """
    seg = _as_label_map(label_map)
    sp = _spacing(spacing_mm, seg.ndim)
    if muscle_region_mask is None:
        raise ValueError("muscle_region_mask is required to define territories")
    region = _optional_mask(muscle_region_mask, seg.shape, "muscle_region_mask")
    values = label_indices(labels)
    listed = np.isin(seg, values)
    out = np.zeros_like(seg)
    if not listed.any() or not region.any():
        return out
    union = listed | region
    box = tuple(
        slice(int(idx.min()), int(idx.max()) + 1)
        for idx in (np.flatnonzero(union.any(axis=tuple(j for j in range(seg.ndim) if j != i)))
                    for i in range(seg.ndim))
    )
    crop_seg = np.where(listed[box], seg[box], 0)
    nearest = ndimage.distance_transform_edt(crop_seg == 0, sampling=sp,
                                             return_distances=False, return_indices=True)
    owner = crop_seg[tuple(nearest)]
    out[box] = np.where(region[box], owner, 0)
    return out


def largest_cross_section_mm2(label_map, spacing_mm, labels, *, axis: int = -1, mask=None) -> np.ndarray:
    """Largest cross-sectional area of every listed label over the slices.

    Parameters
    ----------
    label_map : array of int
        Muscle label map (0 = background).
    spacing_mm : sequence of float
        Voxel size per axis in mm.
    labels : sequence of int or Label
        Labels to measure, in the order of the result.
    axis : int
        Slice axis (default last; the through-plane axis of axial scans).
    mask : array of bool, optional
        A further region (the whole muscle region) measured the same way and
        appended as the last value.

    Returns
    -------
    ndarray of float64
        Per label (then ``mask``): the largest number of its voxels in one
        slice times the in-plane voxel area, in mm^2; 0 for an absent label.
    """
    seg = _as_label_map(label_map)
    sp = _spacing(spacing_mm, seg.ndim)
    if not -seg.ndim <= axis < seg.ndim:
        raise ValueError(f"axis {axis} out of range for a {seg.ndim}-D label map")
    axis = axis % seg.ndim
    values = label_indices(labels)
    pixel_mm2 = float(np.prod([s for i, s in enumerate(sp) if i != axis]))
    n_slices = seg.shape[axis]
    groups = _lookup(values, int(seg.max(initial=0)))[np.moveaxis(seg, axis, 0).reshape(n_slices, -1)]
    keys = np.arange(n_slices)[:, None] * values.size + groups
    per_slice = np.bincount(keys[groups >= 0], minlength=n_slices * values.size).reshape(n_slices, values.size)
    largest = per_slice.max(axis=0, initial=0).astype(np.float64)
    if mask is not None:
        region = _optional_mask(mask, seg.shape, "mask")
        largest = np.append(largest, np.moveaxis(region, axis, 0).reshape(n_slices, -1).sum(axis=1).max(initial=0))
    return largest * pixel_mm2


def _group_runs(groups: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel order that makes every group a contiguous run.

    ``groups`` holds a group number in ``[0, n_groups)`` per voxel, or -1 to
    leave the voxel out. Returns the flat voxel indices sorted by group
    (stable radix sort on the small integers), the start and the length of
    each group's run. Computed once and reused for every map.
    """
    flat = groups.ravel()
    selected = np.flatnonzero(flat >= 0)
    members = flat[selected]
    order = selected[np.argsort(members, kind="stable")]
    counts = np.bincount(members, minlength=n_groups)
    return order, np.cumsum(counts) - counts, counts


def _run_statistics(values: np.ndarray, runs) -> dict[str, np.ndarray]:
    """Mean, median, SD (ddof=1), quartiles and count of finite values per run.

    Quantiles are those of ``numpy.percentile`` (linear interpolation); one
    pass per group over that group's voxels only.
    """
    order, starts, counts = runs
    gathered = values.ravel()[order]
    n_groups = counts.size
    out = {key: np.full(n_groups, np.nan) for key in ("mean", "median", "sd", "p25", "p75")}
    out["n"] = np.zeros(n_groups, dtype=np.int64)
    for k in np.flatnonzero(counts):
        run = gathered[starts[k]:starts[k] + counts[k]]
        run = run[np.isfinite(run)].astype(np.float64)
        if run.size == 0:
            continue
        out["n"][k] = run.size
        out["mean"][k] = run.mean()
        if run.size > 1:
            out["sd"][k] = run.std(ddof=1)
        out["p25"][k], out["median"][k], out["p75"][k] = np.percentile(run, [25.0, 50.0, 75.0])
    return out


def muscle_table(
    label_map,
    spacing_mm,
    labels,
    maps: Mapping[str, np.ndarray] | None = None,
    *,
    imat_mask=None,
    muscle_region_mask=None,
    erode_mm: float = 0.0,
) -> pd.DataFrame:
    """Biomarkers per muscle label plus one whole-region row.

    Parameters
    ----------
    label_map : array of int
        Muscle label map (0 = background).
    spacing_mm : sequence of float
        Voxel size per axis in mm.
    labels : sequence of Label or int
        Label table (``bids_muscle.seg.labels.load_label_table(region)``);
        every entry gets a row, absent muscles with ``voxel_count`` 0 and NaN
        statistics. Label values not in the table are ignored.
    maps : dict of str to array, optional
        Quantitative maps on the same grid, NaN where there is no value,
        named with their unit (``ff_dixon_percent``, ``water_t2_ms`` ...).
    imat_mask : array of bool, optional
        Intramuscular adipose tissue voxels.
    muscle_region_mask : array of bool, optional
        Muscle region inside the fascia (defines IMAT territories and the
        whole-region row).
    erode_mm : float
        Erosion radius applied to each muscle (and to the whole region)
        before the map statistics; volumes are from the uneroded masks.

    Returns
    -------
    pandas.DataFrame
        Columns ``label``, ``name``, ``abbreviation``, ``muscle``, ``side``,
        ``voxel_count``, ``volume_ml``, ``csa_max_mm2`` (largest area over
        the slices of the last axis); for each map ``<map>_mean``,
        ``_median``, ``_sd``, ``_p25``, ``_p75``, ``_n``; with ``imat_mask``
        ``territory_volume_ml``, ``imat_volume_ml`` and ``imat_fraction``
        (0-1). The last row (label 0, name ``whole_region``) covers the
        muscle region, or the union of the listed muscles without one.
        See the module docstring for the definitions.
    """
    seg = _as_label_map(label_map)
    sp = _spacing(spacing_mm, seg.ndim)
    labels = list(labels)
    values = label_indices(labels)
    checked = _check_maps(maps, seg.shape)
    imat = _optional_mask(imat_mask, seg.shape, "imat_mask")
    region = _optional_mask(muscle_region_mask, seg.shape, "muscle_region_mask")
    voxel_ml = float(np.prod(sp)) / 1000.0
    n_rows = values.size

    lut = _lookup(values, int(seg.max(initial=0)))
    groups = lut[seg]
    counts = np.bincount(groups[groups >= 0], minlength=n_rows)
    whole = region if region is not None else groups >= 0
    whole_count = int(np.count_nonzero(whole))

    if erode_mm > 0:
        stat_groups = lut[erode_labels(seg, sp, erode_mm, values)]
        stat_whole = erode_labels(whole.astype(np.int64), sp, erode_mm) > 0
    else:
        if not np.isfinite(erode_mm) or erode_mm < 0:
            raise ValueError(f"erode_mm must be a non-negative number, got {erode_mm}")
        stat_groups, stat_whole = groups, whole

    rows = _label_rows(labels) + [dict(_WHOLE_REGION_ROW)]
    table: dict[str, object] = {key: [row[key] for row in rows] for key in rows[0]}
    table["voxel_count"] = np.append(counts, whole_count)
    table["volume_ml"] = np.append(counts, whole_count) * voxel_ml
    table["csa_max_mm2"] = largest_cross_section_mm2(seg, sp, values, mask=whole)

    muscle_runs = _group_runs(stat_groups, n_rows)
    whole_voxels = np.flatnonzero(stat_whole)
    whole_runs = (whole_voxels, np.zeros(1, np.int64), np.array([whole_voxels.size]))
    for name, image in checked.items():
        per_muscle = _run_statistics(image, muscle_runs)
        per_whole = _run_statistics(image, whole_runs)
        for stat in MAP_STATISTICS:
            table[f"{name}_{stat}"] = np.append(per_muscle[stat], per_whole[stat])

    if imat is not None:
        if region is not None:
            owner = muscle_territories(seg, sp, values, region)
            territory_groups = np.where(owner > 0, lut[owner], -1)
        else:
            territory_groups = groups
        sel = territory_groups >= 0
        territory = np.bincount(territory_groups[sel], minlength=n_rows)
        fat = np.bincount(territory_groups[sel & imat], minlength=n_rows)
        territory = np.append(territory, whole_count)
        fat = np.append(fat, np.count_nonzero(whole & imat))
        table["territory_volume_ml"] = territory * voxel_ml
        table["imat_volume_ml"] = fat * voxel_ml
        with np.errstate(invalid="ignore", divide="ignore"):
            table["imat_fraction"] = np.where(territory > 0, fat / np.maximum(territory, 1), np.nan)
    return pd.DataFrame(table)


def slice_table(
    label_map,
    spacing_mm,
    labels,
    maps: Mapping[str, np.ndarray] | None = None,
    *,
    axis: int = -1,
    imat_mask=None,
    muscle_region_mask=None,
    erode_mm: float = 0.0,
) -> pd.DataFrame:
    """Cross-sectional area and map means per slice and muscle.

    Parameters
    ----------
    label_map, spacing_mm, labels, maps, imat_mask, muscle_region_mask, erode_mm
        As in :func:`muscle_table`.
    axis : int
        Slice axis (default last; the through-plane axis of axial scans).

    Returns
    -------
    pandas.DataFrame
        One row per slice and muscle present in that slice, then the
        whole-region rows (label 0) for the slices where it is present.
        Columns ``slice``, ``label``, ``name``, ``abbreviation``,
        ``muscle``, ``side``, ``voxel_count``, ``area_cm2`` (uneroded);
        for each map ``<map>_mean`` and ``<map>_n``; with ``imat_mask``
        ``territory_area_cm2``, ``imat_area_cm2`` and ``imat_fraction``
        (Amer 2022 Eq. 4 per slice).
    """
    seg = _as_label_map(label_map)
    sp = _spacing(spacing_mm, seg.ndim)
    if not -seg.ndim <= axis < seg.ndim:
        raise ValueError(f"axis {axis} out of range for a {seg.ndim}-D label map")
    axis = axis % seg.ndim
    labels = list(labels)
    values = label_indices(labels)
    checked = _check_maps(maps, seg.shape)
    imat = _optional_mask(imat_mask, seg.shape, "imat_mask")
    region = _optional_mask(muscle_region_mask, seg.shape, "muscle_region_mask")
    in_plane_cm2 = float(np.prod([s for i, s in enumerate(sp) if i != axis])) / 100.0
    n_slices = seg.shape[axis]
    n_labels = values.size

    lut = _lookup(values, int(seg.max(initial=0)))
    groups = lut[seg]
    whole = region if region is not None else groups >= 0
    if erode_mm > 0:
        stat_groups = lut[erode_labels(seg, sp, erode_mm, values)]
        stat_whole = erode_labels(whole.astype(np.int64), sp, erode_mm) > 0
    else:
        if not np.isfinite(erode_mm) or erode_mm < 0:
            raise ValueError(f"erode_mm must be a non-negative number, got {erode_mm}")
        stat_groups, stat_whole = groups, whole

    def per_slice(arr: np.ndarray) -> np.ndarray:
        return np.moveaxis(arr, axis, 0).reshape(n_slices, -1)

    slice_id = np.repeat(np.arange(n_slices), seg.size // max(n_slices, 1))

    def keys(group_arr: np.ndarray) -> np.ndarray:
        g = per_slice(group_arr).ravel()
        return np.where(g >= 0, slice_id * n_labels + g, -1)

    n_keys = n_slices * n_labels
    muscle_keys = keys(groups)
    whole_keys = np.where(per_slice(whole).ravel(), slice_id, -1)
    stat_muscle_keys = keys(stat_groups)
    stat_whole_keys = np.where(per_slice(stat_whole).ravel(), slice_id, -1)

    def count(k: np.ndarray, n: int, where: np.ndarray | None = None) -> np.ndarray:
        sel = k >= 0 if where is None else (k >= 0) & where
        return np.bincount(k[sel], minlength=n)

    counts = np.concatenate([count(muscle_keys, n_keys), count(whole_keys, n_slices)])
    label_rows = _label_rows(labels) + [dict(_WHOLE_REGION_ROW)]
    row_slice = np.concatenate([np.repeat(np.arange(n_slices), n_labels), np.arange(n_slices)])
    row_label = np.concatenate([np.tile(np.arange(n_labels), n_slices), np.full(n_slices, n_labels)])
    present = np.flatnonzero(counts > 0)
    present = present[np.lexsort((row_slice[present], row_label[present]))]

    table: dict[str, object] = {"slice": row_slice[present]}
    for key in label_rows[0]:
        column = np.array([row[key] for row in label_rows], dtype=object)
        table[key] = column[row_label[present]]
    table["label"] = np.asarray(table["label"], dtype=np.int64)
    table["voxel_count"] = counts[present]
    table["area_cm2"] = counts[present] * in_plane_cm2

    for name, image in checked.items():
        flat = per_slice(np.asarray(image, dtype=np.float64)).ravel()
        valid = np.isfinite(flat)
        sums, ns = [], []
        for k, n in ((stat_muscle_keys, n_keys), (stat_whole_keys, n_slices)):
            sel = (k >= 0) & valid
            sums.append(np.bincount(k[sel], weights=flat[sel], minlength=n))
            ns.append(np.bincount(k[sel], minlength=n))
        total, n_valid = np.concatenate(sums), np.concatenate(ns)
        with np.errstate(invalid="ignore", divide="ignore"):
            table[f"{name}_mean"] = np.where(n_valid > 0, total / np.maximum(n_valid, 1), np.nan)[present]
        table[f"{name}_n"] = n_valid[present]

    if imat is not None:
        if region is not None:
            owner = muscle_territories(seg, sp, values, region)
            territory_groups = np.where(owner > 0, lut[owner], -1)
        else:
            territory_groups = groups
        territory_keys = keys(territory_groups)
        fat_flat = per_slice(imat).ravel()
        territory = np.concatenate([count(territory_keys, n_keys), count(whole_keys, n_slices)])
        fat = np.concatenate([count(territory_keys, n_keys, fat_flat), count(whole_keys, n_slices, fat_flat)])
        table["territory_area_cm2"] = territory[present] * in_plane_cm2
        table["imat_area_cm2"] = fat[present] * in_plane_cm2
        with np.errstate(invalid="ignore", divide="ignore"):
            table["imat_fraction"] = np.where(territory > 0, fat / np.maximum(territory, 1), np.nan)[present]

    return pd.DataFrame(table)


def _map_description(name: str) -> tuple[str, str]:
    if name in _KNOWN_MAPS:
        return _KNOWN_MAPS[name]
    for suffix, unit in _SUFFIX_UNITS:
        if name.endswith(suffix):
            return name[: -len(suffix)].replace("_", " "), unit
    return name.replace("_", " "), "arbitrary"


def add_segmentation_quality(
    table: pd.DataFrame, confidence: Mapping[int, float], flags: Mapping[int, Sequence[str]]
) -> pd.DataFrame:
    """Columns ``seg_confidence`` (expected Dice of the muscle's labels,
    NaN where the network found none), ``seg_flag`` (1 when the muscle is
    unlikely to be right, also for a muscle that was not found) and
    ``seg_flag_reason`` of a :func:`muscle_table` (the whole-region row gets
    no confidence and no flag)."""
    labels = table["label"].astype(int)
    out = table.copy()
    out["seg_confidence"] = [float(confidence[k]) if k in confidence else np.nan for k in labels]
    reasons = []
    for k in labels:
        if k == 0:
            reasons.append("")
        elif k not in confidence:
            reasons.append("not found")
        else:
            reasons.append("; ".join(flags.get(k, ())))
    out["seg_flag"] = [int(bool(r)) for r in reasons]
    out["seg_flag_reason"] = reasons
    return out


def add_standard_errors(table: pd.DataFrame, member_tables: Sequence[pd.DataFrame] = ()) -> pd.DataFrame:
    """Standard errors beside the means of a :func:`muscle_table`.

    Parameters
    ----------
    table : pandas.DataFrame
        The muscle table of the fused labels.
    member_tables : sequence of pandas.DataFrame
        Muscle tables of the same maps with each ensemble member's labels
        (same rows). Fewer than two give no segmentation part.

    Returns
    -------
    pandas.DataFrame
        ``table`` with ``<map>_se_noise``, ``<map>_se_seg`` and ``<map>_se``
        for every ``<map>_mean`` and ``volume_ml_se`` (see the module
        docstring). The whole-region row gets the same treatment.
    """
    out = table.copy()
    maps = [c[: -len("_mean")] for c in table.columns if c.endswith("_mean")]
    members = [m.set_index("label").reindex(table["label"]) for m in member_tables]

    def spread(column: str) -> np.ndarray:
        if len(members) < 2 or any(column not in m.columns for m in members):
            return np.full(len(table), np.nan)
        values = np.stack([m[column].to_numpy(np.float64) for m in members])
        finite = np.isfinite(values)
        count = finite.sum(axis=0)
        centred = np.where(finite, values - np.where(finite, values, 0.0).sum(axis=0) / np.maximum(count, 1), 0.0)
        return np.where(count >= 2, np.sqrt((centred ** 2).sum(axis=0) / np.maximum(count - 1, 1)), np.nan)

    for name in maps:
        n = out[f"{name}_n"].to_numpy(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            noise = np.where(n > 1, out[f"{name}_sd"].to_numpy(np.float64) / np.sqrt(np.maximum(n, 1)), np.nan)
        seg = spread(f"{name}_mean")
        out[f"{name}_se_noise"] = noise
        out[f"{name}_se_seg"] = seg
        out[f"{name}_se"] = np.sqrt(noise ** 2 + np.nan_to_num(seg) ** 2)
    volume = spread("volume_ml")
    out["volume_ml_se"] = volume
    return out


def column_descriptions(maps: Sequence[str] | Mapping[str, object] = ()) -> dict[str, dict[str, str]]:
    """Description and unit of every column of the biomarker tables.

    Parameters
    ----------
    maps : sequence of str or dict
        Map names (the keys of the ``maps`` given to :func:`muscle_table`).

    Returns
    -------
    dict
        Column name to ``{"Description": ..., "Units": ...}`` in the form of
        a BIDS TSV sidecar. It covers the columns of both
        :func:`muscle_table` and :func:`slice_table`; keep those present in
        the table written.
    """
    names = list(maps.keys()) if isinstance(maps, Mapping) else list(maps)
    out = {
        "label": {"Description": "integer label of the muscle in the label map (0: whole muscle region)",
                  "Units": "n/a"},
        "name": {"Description": "muscle name with side (whole_region: all muscles)", "Units": "n/a"},
        "abbreviation": {"Description": "short muscle name with side", "Units": "n/a"},
        "muscle": {"Description": "muscle name without side", "Units": "n/a"},
        "side": {"Description": "body side (right, left; both for the whole region)", "Units": "n/a"},
        "slice": {"Description": "slice index along the slice axis, from 0", "Units": "n/a"},
        "seg_confidence": {"Description": "confidence of the muscle's labels: the Dice expected from the ensemble's "
                                          "averaged probabilities (over-confident networks read high; it ranks muscles "
                                          "as their real Dice does)", "Units": "n/a"},
        "seg_flag": {"Description": "1 when the muscle's labels are unlikely to be right (see seg_flag_reason): "
                                    "exclude or check before analysis", "Units": "n/a"},
        "seg_flag_reason": {"Description": "why seg_flag is set (empty: not flagged)", "Units": "n/a"},
        "voxel_count": {"Description": "number of voxels of the muscle label (before any erosion)",
                        "Units": "voxels"},
        "volume_ml": {"Description": "muscle volume: voxel count times voxel volume (before any erosion)",
                      "Units": "ml"},
        "volume_ml_se": {"Description": "standard error of the volume: its standard deviation over the labels of "
                                        "the ensemble's members (n/a with one member)", "Units": "ml"},
        "area_cm2": {"Description": "cross-sectional area of the muscle in the slice (before any erosion)",
                     "Units": "cm^2"},
        "csa_max_mm2": {"Description": "largest cross-sectional area of the muscle over the slices (slice axis: "
                                       "the last image axis; before any erosion)", "Units": "mm^2"},
        "territory_volume_ml": {
            "Description": "volume of the muscle's territory: muscle-region voxels nearest to this muscle "
                           "(the muscle label itself without a muscle-region mask)",
            "Units": "ml"},
        "imat_volume_ml": {"Description": "volume of intramuscular adipose tissue in the muscle's territory",
                           "Units": "ml"},
        "territory_area_cm2": {"Description": "area of the muscle's territory in the slice", "Units": "cm^2"},
        "imat_area_cm2": {"Description": "area of intramuscular adipose tissue in the muscle's territory "
                                         "in the slice", "Units": "cm^2"},
        "imat_fraction": {
            "Description": "IMAT fraction (Amer et al. 2022, Eq. 4): IMAT voxels / muscle-region voxels of "
                           "the muscle's territory",
            "Units": "ratio"},
    }
    stat_text = {
        "mean": "mean",
        "median": "median",
        "sd": "sample standard deviation",
        "p25": "25th percentile",
        "p75": "75th percentile",
    }
    for name in names:
        what, unit = _map_description(name)
        for stat, text in stat_text.items():
            out[f"{name}_{stat}"] = {
                "Description": f"{text} of {what} over the muscle's voxels with a value "
                               "(after erosion when erode_mm > 0)",
                "Units": unit,
            }
        out[f"{name}_n"] = {"Description": f"number of voxels with a value of {what} used for the statistics",
                            "Units": "voxels"}
        out[f"{name}_se_noise"] = {"Description": f"noise part of the standard error of the mean {what}: sd / sqrt(n)",
                                   "Units": unit}
        out[f"{name}_se_seg"] = {"Description": f"segmentation part of the standard error of the mean {what}: "
                                                "standard deviation of the mean over the labels of the ensemble's "
                                                "members (n/a with one member)", "Units": unit}
        out[f"{name}_se"] = {"Description": f"standard error of the mean {what}, noise and segmentation combined "
                                            "(sqrt of the sum of squares); errors common to every ensemble member "
                                            "are not included", "Units": unit}
    return out
