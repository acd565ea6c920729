"""Agreement of an IMAT classification with a reference (Amer et al. 2022, 2.5-2.6.3).

All metrics count the voxels of the muscle region only: viable-muscle Dice
(region minus IMAT), IMAT Dice, accuracy (Eq. 10), normalised mutual
information and adjusted Rand index of the two-class partition. The IMAT
fraction (Eq. 4) is IMAT voxels over region voxels, for the whole region or
per group (muscle territory, slice).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from bids_muscle.stats.agreement import dice


def _region_pair(pred_imat, true_imat, region_mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    region = np.asarray(region_mask, dtype=bool)
    pred = np.asarray(pred_imat, dtype=bool)
    true = np.asarray(true_imat, dtype=bool)
    if pred.shape != region.shape or true.shape != region.shape:
        raise ValueError(f"IMAT masks {pred.shape} and {true.shape} must match the muscle region {region.shape}")
    if not region.any():
        raise ValueError("muscle region mask is empty")
    return pred & region, true & region, region


def imat_agreement(pred_imat, true_imat, region_mask) -> dict[str, float]:
    """Viable-muscle Dice, IMAT Dice, accuracy, NMI and ARI over the region voxels.

    Dice is NaN when both masks of a class are empty (see
    :func:`bids_muscle.stats.agreement.dice`).
    """
    pred, true, region = _region_pair(pred_imat, true_imat, region_mask)
    p, t = pred[region], true[region]
    return {
        "viable_dice": dice(region & ~pred, region & ~true),
        "imat_dice": dice(pred, true),
        "accuracy": float(np.mean(p == t)),
        "nmi": float(normalized_mutual_info_score(t, p)),
        "ari": float(adjusted_rand_score(t, p)),
    }


def imat_fraction(imat, region_mask, groups=None):
    """IMAT fraction (Eq. 4): IMAT voxels over muscle-region voxels.

    Parameters
    ----------
    imat, region_mask : ndarray of bool, same shape
    groups : ndarray of int, same shape, optional
        Group of each region voxel (e.g. muscle territories, slice index);
        0 is ignored.

    Returns
    -------
    float, or ndarray of float with one value per group present in the
    region (ascending group number) when ``groups`` is given.
    """
    region = np.asarray(region_mask, dtype=bool)
    imat = np.asarray(imat, dtype=bool) & region
    if imat.shape != region.shape:
        raise ValueError(f"IMAT mask {imat.shape} and muscle region {region.shape} differ in shape")
    if groups is None:
        if not region.any():
            raise ValueError("muscle region mask is empty")
        return float(imat.sum() / region.sum())
    groups = np.asarray(groups)
    if groups.shape != region.shape:
        raise ValueError(f"groups {groups.shape} and muscle region {region.shape} differ in shape")
    g = groups[region]
    keep = g > 0
    ids, inverse = np.unique(g[keep], return_inverse=True)
    totals = np.bincount(inverse, minlength=len(ids))
    fat = np.bincount(inverse, weights=imat[region][keep], minlength=len(ids))
    return fat / np.maximum(totals, 1)


def fraction_agreement(estimate, truth) -> dict[str, float]:
    """Pearson r, bias (mean of estimate - truth), SD of the difference and count."""
    x = np.asarray(estimate, dtype=float)
    y = np.asarray(truth, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"estimate {x.shape} and truth {y.shape} differ in shape")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    diff = x - y
    r = float(np.corrcoef(x, y)[0, 1]) if len(x) > 1 and x.std() > 0 and y.std() > 0 else float("nan")
    return {"r": r, "bias": float(diff.mean()) if len(diff) else float("nan"),
            "sd": float(diff.std(ddof=1)) if len(diff) > 1 else float("nan"), "n": len(x)}
