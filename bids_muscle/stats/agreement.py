"""Agreement between two segmentations and between two sets of biomarkers.

Geometric agreement (Dice, 95th-percentile Hausdorff distance, average
symmetric surface distance, average Hausdorff distance, volume difference)
works on label maps with anisotropic voxel sizes. Biomarker agreement
(Bland-Altman, the G20-/G20+ comparison, the correlation between Dice and
biomarker error, the Kruskal-Wallis site test) works on 1-D arrays of
per-muscle values.

Conventions
-----------
``a`` is the segmentation under test (for example a network) and ``b`` the
reference (for example manual labels), so every difference is ``a - b``:
Hostin et al. 2023 define the error of a quantity X as
``dX = X_automatic - X_manual``.

Empty masks:

* both masks empty: the pair is not counted. Dice and distances are NaN,
  the label is neither present nor absent.
* the reference holds the muscle, the test does not: the muscle is *absent*
  (Dice 0, distances NaN, ``absent=True``); it counts towards the absence
  rate.
* the test holds a muscle the reference lacks: *spurious* (Dice 0, distances
  NaN, ``spurious=True``); it does not count towards the absence rate.

References
----------
Hostin MA, et al. The impact of fatty infiltration on MRI segmentation of
lower limb muscles in neuromuscular diseases: a comparative study of deep
learning approaches. J Magn Reson Imaging 2023 (Dice, outlier rate, absence
rate, biomarker errors, Bland-Altman, G20-/G20+ tests, Dice-error
correlation).

Rohm M, et al. 3D automated segmentation of lower leg muscles using machine
learning on a heterogeneous dataset. Diagnostics 2021 (Dice and average
Hausdorff distance in mm).

Taha AA, Hanbury A. Metrics for evaluating 3D medical image segmentation:
analysis, selection, and tool. BMC Med Imaging 2015 (definition of the
average Hausdorff distance used by Rohm 2021).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage, stats

__all__ = [
    "absence_rate",
    "assd_mm",
    "average_hausdorff_mm",
    "bland_altman",
    "compare_groups",
    "compare_segmentations",
    "dice",
    "dice_error_correlation",
    "dice_per_label",
    "g20_comparison",
    "hausdorff95_mm",
    "label_indices",
    "outlier_rate",
    "paired_test",
    "site_effect",
    "surface_distances_mm",
    "volume_ml",
]


def label_indices(labels) -> np.ndarray:
    """Integer label values from a sequence of ints or of ``Label`` objects."""
    values = [getattr(lab, "index", lab) for lab in labels]
    out = np.asarray(values)
    if out.ndim != 1 or out.size == 0:
        raise ValueError("labels must be a non-empty sequence of label values")
    if not np.issubdtype(out.dtype, np.integer):
        if not np.all(np.isfinite(out)) or np.any(out != np.round(out)):
            raise ValueError("labels must be integer label values")
        out = out.astype(np.int64)
    if np.any(out < 1):
        raise ValueError("label values must be positive (0 is background)")
    if np.unique(out).size != out.size:
        raise ValueError("labels contain duplicate values")
    return out.astype(np.int64)


def _as_label_map(seg, name: str = "label map") -> np.ndarray:
    arr = np.asarray(seg)
    if arr.ndim < 1:
        raise ValueError(f"{name} must be an array with at least one dimension")
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        out = arr.astype(np.int64, copy=False)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{name} must hold integer label values")
        out = arr.astype(np.int64)
    else:
        raise ValueError(f"{name} has unsupported dtype {arr.dtype}")
    if out.size and out.min() < 0:
        raise ValueError(f"{name} holds negative labels")
    return out


def _as_mask(mask, name: str = "mask") -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim < 1:
        raise ValueError(f"{name} must be an array with at least one dimension")
    return arr.astype(bool, copy=False) if arr.dtype == bool else arr != 0


def _check_same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")


def _spacing(spacing_mm, ndim: int) -> tuple[float, ...]:
    sp = np.atleast_1d(np.asarray(spacing_mm, dtype=float))
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.shape != (ndim,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing_mm must be {ndim} positive voxel sizes, got {spacing_mm!r}")
    return tuple(float(s) for s in sp)


def volume_ml(mask, spacing_mm) -> float:
    """Volume of a binary mask in millilitres (voxel count x voxel volume)."""
    m = _as_mask(mask)
    sp = _spacing(spacing_mm, m.ndim)
    return float(np.count_nonzero(m) * np.prod(sp) / 1000.0)


def dice(a_mask, b_mask) -> float:
    """Dice coefficient ``2|A & B| / (|A| + |B|)``.

    Returns NaN when both masks are empty (nothing to compare) and 0 when
    exactly one is empty.
    """
    a = _as_mask(a_mask, "a_mask")
    b = _as_mask(b_mask, "b_mask")
    _check_same_shape(a, b)
    total = np.count_nonzero(a) + np.count_nonzero(b)
    if total == 0:
        return float("nan")
    return float(2.0 * np.count_nonzero(a & b) / total)


def _label_counts(seg_a: np.ndarray, seg_b: np.ndarray, values: np.ndarray):
    """Voxel counts per label in a, in b, and in their intersection."""
    top = int(max(seg_a.max(initial=0), seg_b.max(initial=0), values.max()))
    n_a = np.bincount(seg_a.ravel(), minlength=top + 1)[values]
    n_b = np.bincount(seg_b.ravel(), minlength=top + 1)[values]
    same = seg_a == seg_b
    n_ab = np.bincount(seg_a[same], minlength=top + 1)[values]
    return n_a, n_b, n_ab


def dice_per_label(seg_a, seg_b, labels) -> np.ndarray:
    """Dice coefficient of every label between two label maps.

    Parameters
    ----------
    seg_a, seg_b : array of int
        Label maps of the same shape (0 = background).
    labels : sequence of int or Label
        Labels to evaluate.

    Returns
    -------
    ndarray of float64
        Dice per label in the order of ``labels``; NaN where the label is
        missing from both maps, 0 where it is missing from one.
    """
    a = _as_label_map(seg_a, "seg_a")
    b = _as_label_map(seg_b, "seg_b")
    _check_same_shape(a, b)
    values = label_indices(labels)
    n_a, n_b, n_ab = _label_counts(a, b, values)
    total = n_a + n_b
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2.0 * n_ab / np.maximum(total, 1), np.nan)


def _crop_union(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of ``a | b`` grown by one voxel, clipped to the image."""
    union = a | b
    box = []
    for axis in range(union.ndim):
        other = tuple(i for i in range(union.ndim) if i != axis)
        hit = np.flatnonzero(union.any(axis=other))
        box.append(slice(max(hit[0] - 1, 0), min(hit[-1] + 2, union.shape[axis])))
    return tuple(box)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one face neighbour outside it.

    Voxels on the image border count as surface (the outside of the image
    is background).
    """
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances_mm(a_mask, b_mask, spacing_mm) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances between two binary masks in millimetres.

    The surface of a mask is the set of its voxels with at least one face
    neighbour (6-connectivity in 3-D) outside the mask. Distances are
    Euclidean between voxel centres, scaled by ``spacing_mm`` (exact
    Euclidean distance transform with anisotropic sampling).

    Parameters
    ----------
    a_mask, b_mask : array of bool
        Masks of the same shape.
    spacing_mm : sequence of float
        Voxel size along each axis in mm.

    Returns
    -------
    d_ab, d_ba : ndarray of float64
        Distance from every surface voxel of ``a`` to the nearest surface
        voxel of ``b`` and vice versa. Both are empty when either mask is
        empty.
    """
    a = _as_mask(a_mask, "a_mask")
    b = _as_mask(b_mask, "b_mask")
    _check_same_shape(a, b)
    sp = _spacing(spacing_mm, a.ndim)
    if not a.any() or not b.any():
        return np.empty(0), np.empty(0)
    box = _crop_union(a, b)
    surf_a = _surface(a[box])
    surf_b = _surface(b[box])
    d_ab = ndimage.distance_transform_edt(~surf_b, sampling=sp)[surf_a]
    d_ba = ndimage.distance_transform_edt(~surf_a, sampling=sp)[surf_b]
    return d_ab, d_ba


def hausdorff95_mm(a_mask, b_mask, spacing_mm, percentile: float = 95.0) -> float:
    """Robust Hausdorff distance between the surfaces of two masks in mm.

    The larger of the two directed ``percentile``-th percentiles of the
    surface distances (``percentile=100`` gives the classical Hausdorff
    distance). Percentiles use linear interpolation (``numpy.percentile``).
    NaN when either mask is empty.
    """
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}")
    d_ab, d_ba = surface_distances_mm(a_mask, b_mask, spacing_mm)
    if d_ab.size == 0:
        return float("nan")
    return float(max(np.percentile(d_ab, percentile), np.percentile(d_ba, percentile)))


def assd_mm(a_mask, b_mask, spacing_mm) -> float:
    """Average symmetric surface distance in mm.

    Mean of all directed surface distances of both directions pooled:
    ``(sum d_ab + sum d_ba) / (|S_a| + |S_b|)``. NaN when either mask is
    empty.
    """
    d_ab, d_ba = surface_distances_mm(a_mask, b_mask, spacing_mm)
    if d_ab.size == 0:
        return float("nan")
    return float((d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size))


def average_hausdorff_mm(a_mask, b_mask, spacing_mm) -> float:
    """Average Hausdorff distance in mm (Taha & Hanbury 2015; Rohm 2021).

    ``max(mean_{x in A} d(x, B), mean_{y in B} d(y, A))`` over all voxels of
    each mask (not only the surface), where ``d(x, B)`` is the distance from
    voxel ``x`` to the nearest voxel of ``B`` (0 inside ``B``). NaN when
    either mask is empty.
    """
    a = _as_mask(a_mask, "a_mask")
    b = _as_mask(b_mask, "b_mask")
    _check_same_shape(a, b)
    sp = _spacing(spacing_mm, a.ndim)
    if not a.any() or not b.any():
        return float("nan")
    box = _crop_union(a, b)
    ca, cb = a[box], b[box]
    d_ab = ndimage.distance_transform_edt(~cb, sampling=sp)[ca].mean()
    d_ba = ndimage.distance_transform_edt(~ca, sampling=sp)[cb].mean()
    return float(max(d_ab, d_ba))


def _label_map_means(seg: np.ndarray, values: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Mean of ``image`` inside each label (NaN voxels ignored)."""
    top = int(max(seg.max(initial=0), values.max()))
    flat = np.asarray(image, dtype=np.float64).ravel()
    keys = seg.ravel()
    valid = np.isfinite(flat)
    sums = np.bincount(keys[valid], weights=flat[valid], minlength=top + 1)[values]
    counts = np.bincount(keys[valid], minlength=top + 1)[values]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def compare_segmentations(
    seg_a,
    seg_b,
    labels,
    spacing_mm,
    maps: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Per-label agreement of a segmentation under test with a reference.

    Parameters
    ----------
    seg_a : array of int
        Label map under test (for example a network's output).
    seg_b : array of int
        Reference label map on the same grid (for example manual labels).
    labels : sequence of int or Label
        Labels to compare; ``Label`` objects also add ``name`` and
        ``abbreviation`` columns.
    spacing_mm : sequence of float
        Voxel size per axis in mm.
    maps : dict of str to array, optional
        Quantitative maps on the same grid (NaN = no value). For each name
        ``m`` the table gets ``m_a`` and ``m_b`` (mean of the map inside the
        label in ``a`` and in ``b``, NaN voxels ignored) and
        ``delta_m = m_a - m_b``.

    Returns
    -------
    pandas.DataFrame
        One row per label: ``label``, ``dice``, ``hd95_mm``, ``assd_mm``,
        ``volume_a_ml``, ``volume_b_ml``, ``volume_diff_ml`` (a - b),
        ``present_a``, ``present_b``, ``absent`` (in b, missing from a),
        ``spurious`` (in a, missing from b) and the map columns. Labels
        missing from both maps keep a row with NaN metrics.
    """
    a = _as_label_map(seg_a, "seg_a")
    b = _as_label_map(seg_b, "seg_b")
    _check_same_shape(a, b)
    sp = _spacing(spacing_mm, a.ndim)
    labels = list(labels)
    values = label_indices(labels)
    voxel_ml = float(np.prod(sp)) / 1000.0

    n_a, n_b, n_ab = _label_counts(a, b, values)
    total = n_a + n_b
    with np.errstate(invalid="ignore", divide="ignore"):
        dsc = np.where(total > 0, 2.0 * n_ab / np.maximum(total, 1), np.nan)

    hd95 = np.full(values.size, np.nan)
    assd = np.full(values.size, np.nan)
    objects_a = ndimage.find_objects(a, max_label=int(values.max()))
    objects_b = ndimage.find_objects(b, max_label=int(values.max()))
    for i, lab in enumerate(values):
        if n_a[i] == 0 or n_b[i] == 0:
            continue
        box = _union_box(objects_a[lab - 1], objects_b[lab - 1], a.shape)
        d_ab, d_ba = surface_distances_mm(a[box] == lab, b[box] == lab, sp)
        hd95[i] = max(np.percentile(d_ab, 95.0), np.percentile(d_ba, 95.0))
        assd[i] = (d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size)

    table = {"label": values}
    if all(hasattr(lab, "name") for lab in labels):
        table["name"] = [lab.name for lab in labels]
        table["abbreviation"] = [lab.abbreviation for lab in labels]
    table.update(
        dice=dsc,
        hd95_mm=hd95,
        assd_mm=assd,
        volume_a_ml=n_a * voxel_ml,
        volume_b_ml=n_b * voxel_ml,
        volume_diff_ml=(n_a - n_b) * voxel_ml,
        present_a=n_a > 0,
        present_b=n_b > 0,
        absent=(n_b > 0) & (n_a == 0),
        spurious=(n_a > 0) & (n_b == 0),
    )
    for name, image in (maps or {}).items():
        img = np.asarray(image)
        if img.shape != a.shape:
            raise ValueError(f"map {name!r} has shape {img.shape}, label maps have {a.shape}")
        mean_a = _label_map_means(a, values, img)
        mean_b = _label_map_means(b, values, img)
        table[f"{name}_a"] = mean_a
        table[f"{name}_b"] = mean_b
        table[f"delta_{name}"] = mean_a - mean_b
    return pd.DataFrame(table)


def _union_box(box_a, box_b, shape) -> tuple[slice, ...]:
    """Union of two ``find_objects`` boxes grown by one voxel, clipped."""
    return tuple(
        slice(max(min(sa.start, sb.start) - 1, 0), min(max(sa.stop, sb.stop) + 1, n))
        for sa, sb, n in zip(box_a, box_b, shape)
    )


def absence_rate(present_reference, present_test) -> float:
    """Share of muscles present in the reference that the test misses.

    Hostin 2023's absence rate (AR): muscles identified by the operators
    but not detected by the network, over muscles identified by the
    operators. NaN when the reference holds no muscle.
    """
    ref = np.asarray(present_reference, dtype=bool)
    test = np.asarray(present_test, dtype=bool)
    _check_same_shape(ref, test)
    n_ref = np.count_nonzero(ref)
    if n_ref == 0:
        return float("nan")
    return float(np.count_nonzero(ref & ~test) / n_ref)


def outlier_rate(values, tail: str = "lower") -> float:
    """Share of values beyond Tukey's fences (Hostin 2023's outlier rate).

    With ``Q1``, ``Q3`` the quartiles (linear interpolation) and
    ``IQR = Q3 - Q1``, a value is an outlier when it is below
    ``Q1 - 1.5 IQR`` (``tail='lower'``, the definition of Hostin 2023 for
    Dice), above ``Q3 + 1.5 IQR`` (``'upper'``), or either (``'both'``).
    Non-finite values are ignored; NaN when none is left.
    """
    if tail not in ("lower", "upper", "both"):
        raise ValueError(f"tail must be 'lower', 'upper' or 'both', got {tail!r}")
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    q1, q3 = np.percentile(v, [25.0, 75.0])
    iqr = q3 - q1
    low = v < q1 - 1.5 * iqr
    high = v > q3 + 1.5 * iqr
    flagged = {"lower": low, "upper": high, "both": low | high}[tail]
    return float(np.count_nonzero(flagged) / v.size)


def _finite_pairs(x, y) -> tuple[np.ndarray, np.ndarray]:
    xa = np.asarray(x, dtype=float).ravel()
    ya = np.asarray(y, dtype=float).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"paired values differ in length: {xa.size} vs {ya.size}")
    keep = np.isfinite(xa) & np.isfinite(ya)
    return xa[keep], ya[keep]


def bland_altman(x, y) -> dict[str, float]:
    """Bland-Altman agreement of paired measurements.

    Parameters
    ----------
    x, y : array-like
        Paired values (pairs with a non-finite member are dropped).

    Returns
    -------
    dict
        ``bias`` (mean of ``x - y``), ``sd`` (sample SD of the differences,
        ddof=1), ``loa_low`` and ``loa_high`` (``bias -/+ 1.96 sd``, the 95%
        limits of agreement) and ``n`` (pairs used).
    """
    xa, ya = _finite_pairs(x, y)
    d = xa - ya
    n = d.size
    bias = float(d.mean()) if n else float("nan")
    sd = float(d.std(ddof=1)) if n > 1 else float("nan")
    return {"bias": bias, "sd": sd, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd, "n": n}


def _shapiro_p(values: np.ndarray) -> float:
    if values.size < 3 or np.ptp(values) == 0:
        return float("nan")
    with warnings.catch_warnings():
        # SciPy warns that the p-value is approximate above 5000 samples;
        # normality is then rejected for any real data anyway.
        warnings.simplefilter("ignore", UserWarning)
        return float(stats.shapiro(values).pvalue)


def paired_test(x, y, alpha: float = 0.05) -> dict:
    """Paired test of ``x`` against ``y`` chosen by normality of the differences.

    Shapiro-Wilk on ``x - y``; when its p-value is at least ``alpha`` a
    paired Student t-test, otherwise a Wilcoxon signed-rank test (Hostin
    2023). Pairs with a non-finite member are dropped.

    Returns
    -------
    dict
        ``test`` ('paired_t', 'wilcoxon' or 'none' when fewer than 3 pairs or
        constant differences), ``p_value``, ``statistic``, ``shapiro_p``,
        ``n``.
    """
    xa, ya = _finite_pairs(x, y)
    d = xa - ya
    out = {"test": "none", "p_value": float("nan"), "statistic": float("nan"),
           "shapiro_p": float("nan"), "n": int(d.size)}
    if d.size < 3 or np.ptp(d) == 0:
        return out
    out["shapiro_p"] = _shapiro_p(d)
    if out["shapiro_p"] >= alpha:
        res = stats.ttest_rel(xa, ya)
        out["test"] = "paired_t"
    else:
        res = stats.wilcoxon(xa, ya)
        out["test"] = "wilcoxon"
    out["p_value"] = float(res.pvalue)
    out["statistic"] = float(res.statistic)
    return out


def compare_groups(values_1, values_2, alpha: float = 0.05) -> dict:
    """Compare two independent samples chosen by their normality.

    Shapiro-Wilk on each sample; when both p-values are at least ``alpha``
    a Student t-test (equal variances), otherwise a Wilcoxon rank-sum
    (Mann-Whitney U, two-sided) test. Non-finite values are dropped.

    Returns
    -------
    dict
        ``test`` ('student_t', 'mann_whitney' or 'none' when a sample has
        fewer than 3 values), ``p_value``, ``statistic``, ``shapiro_p_1``,
        ``shapiro_p_2``, ``n_1``, ``n_2``.
    """
    v1 = np.asarray(values_1, dtype=float).ravel()
    v2 = np.asarray(values_2, dtype=float).ravel()
    v1 = v1[np.isfinite(v1)]
    v2 = v2[np.isfinite(v2)]
    out = {"test": "none", "p_value": float("nan"), "statistic": float("nan"),
           "shapiro_p_1": _shapiro_p(v1), "shapiro_p_2": _shapiro_p(v2),
           "n_1": int(v1.size), "n_2": int(v2.size)}
    if v1.size < 3 or v2.size < 3 or np.ptp(np.concatenate([v1, v2])) == 0:
        return out
    normal = out["shapiro_p_1"] >= alpha and out["shapiro_p_2"] >= alpha
    if normal:
        res = stats.ttest_ind(v1, v2, equal_var=True)
        out["test"] = "student_t"
    else:
        res = stats.mannwhitneyu(v1, v2, alternative="two-sided")
        out["test"] = "mann_whitney"
    out["p_value"] = float(res.pvalue)
    out["statistic"] = float(res.statistic)
    return out


def g20_comparison(
    reference_ff_percent,
    values_a,
    values_b=None,
    threshold_percent: float = 20.0,
    alpha: float = 0.05,
) -> dict:
    """G20- / G20+ comparison of Hostin 2023.

    Muscles are split by their reference fat fraction: G20- below
    ``threshold_percent``, G20+ at or above it (muscles with a non-finite
    reference FF are dropped).

    With ``values_b`` (paired measurements, for example FF from the network
    and from the manual mask), the differences ``a - b`` are tested

    * within each group against zero: :func:`paired_test` (Shapiro-Wilk on
      the differences, then paired t-test or Wilcoxon signed-rank);
    * between the groups: :func:`compare_groups` on the differences (does
      the error change with fat infiltration, Hostin's Table 2).

    Without ``values_b``, ``values_a`` is a per-muscle metric (for example
    Dice) and only the between-group comparison is made.

    Returns
    -------
    dict
        ``n_minus``, ``n_plus``, ``mean_minus``, ``sd_minus``,
        ``mean_plus``, ``sd_plus`` (of the differences, or of the metric),
        ``test_between``, ``p_between``; with ``values_b`` also
        ``test_minus``, ``p_minus``, ``shapiro_p_minus`` and the same for
        ``plus``.
    """
    ff = np.asarray(reference_ff_percent, dtype=float).ravel()
    va = np.asarray(values_a, dtype=float).ravel()
    if va.shape != ff.shape:
        raise ValueError(f"values_a has {va.size} values, reference_ff_percent {ff.size}")
    if values_b is not None:
        vb = np.asarray(values_b, dtype=float).ravel()
        if vb.shape != ff.shape:
            raise ValueError(f"values_b has {vb.size} values, reference_ff_percent {ff.size}")
        metric = va - vb
    else:
        metric = va
    known = np.isfinite(ff)
    plus = known & (ff >= threshold_percent)
    minus = known & (ff < threshold_percent)

    out: dict = {}
    for tag, sel in (("minus", minus), ("plus", plus)):
        m = metric[sel]
        m = m[np.isfinite(m)]
        out[f"n_{tag}"] = int(m.size)
        out[f"mean_{tag}"] = float(m.mean()) if m.size else float("nan")
        out[f"sd_{tag}"] = float(m.std(ddof=1)) if m.size > 1 else float("nan")
    if values_b is not None:
        for tag, sel in (("minus", minus), ("plus", plus)):
            res = paired_test(va[sel], vb[sel], alpha=alpha)
            out[f"test_{tag}"] = res["test"]
            out[f"p_{tag}"] = res["p_value"]
            out[f"shapiro_p_{tag}"] = res["shapiro_p"]
    between = compare_groups(metric[minus], metric[plus], alpha=alpha)
    out["test_between"] = between["test"]
    out["p_between"] = between["p_value"]
    return out


def dice_error_correlation(dice_values, error) -> dict:
    """Pearson correlation between Dice and the absolute biomarker error.

    Hostin 2023 report that this correlation does not exceed -0.45.
    Pairs with a non-finite member are dropped.

    Returns
    -------
    dict
        ``r``, ``p_value`` and ``n``; NaN when fewer than 3 pairs or a
        constant input.
    """
    d, e = _finite_pairs(dice_values, error)
    e = np.abs(e)
    if d.size < 3 or np.ptp(d) == 0 or np.ptp(e) == 0:
        return {"r": float("nan"), "p_value": float("nan"), "n": int(d.size)}
    res = stats.pearsonr(d, e)
    return {"r": float(res.statistic), "p_value": float(res.pvalue), "n": int(d.size)}


def site_effect(values, sites: Sequence) -> dict:
    """Kruskal-Wallis test of a biomarker across acquisition sites.

    Parameters
    ----------
    values : array-like of float
        One value per participant (non-finite values are dropped).
    sites : sequence
        Site of each value.

    Returns
    -------
    dict
        ``statistic`` (H), ``p_value``, ``n_sites`` (sites with at least one
        value) and ``n``; NaN statistic when fewer than 2 sites or all
        values equal.
    """
    v = np.asarray(values, dtype=float).ravel()
    s = np.asarray(sites).ravel()
    if v.shape != s.shape:
        raise ValueError(f"values has {v.size} entries, sites {s.size}")
    keep = np.isfinite(v)
    v, s = v[keep], s[keep]
    codes, uniques = pd.factorize(s)
    order = np.argsort(codes, kind="stable")
    groups = np.split(v[order], np.cumsum(np.bincount(codes, minlength=len(uniques)))[:-1])
    out = {"statistic": float("nan"), "p_value": float("nan"),
           "n_sites": int(len(uniques)), "n": int(v.size)}
    if len(uniques) < 2 or np.ptp(v) == 0:
        return out
    res = stats.kruskal(*groups)
    out["statistic"] = float(res.statistic)
    out["p_value"] = float(res.pvalue)
    return out
