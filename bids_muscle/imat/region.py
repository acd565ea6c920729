"""Muscle region and threshold IMAT from a muscle segmentation and a fat-fraction map.

The muscle region is everything inside the fascia except bone: the muscles
and the intramuscular fat between them (Amer et al. 2022, stage 1). Without
a network that predicts it directly, it is the union of the muscle labels
closed in-plane by a small disc, which bridges the thin fat septa between
neighbouring muscles but not the bone (a femur or tibia is far wider than
the closing radius), then filled where a hole is fully enclosed by muscle
and smaller than the disc.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _disc(radius_mm: float, spacing_mm: tuple[float, float]) -> np.ndarray:
    ry, rx = (max(1, int(np.ceil(radius_mm / s))) for s in spacing_mm)
    yy, xx = np.mgrid[-ry : ry + 1, -rx : rx + 1]
    return (yy * spacing_mm[0] / radius_mm) ** 2 + (xx * spacing_mm[1] / radius_mm) ** 2 <= 1.0


def muscle_region_from_labels(labels: np.ndarray, spacing_mm, closing_mm: float = 4.0) -> np.ndarray:
    """Muscle region (bool) from a muscle label map, slice by slice (last axis).

    Parameters
    ----------
    labels : ndarray of int, shape (X, Y, Z)
        Muscle labels, 0 elsewhere.
    spacing_mm : sequence of float
        Voxel size per axis (mm).
    closing_mm : float
        Radius of the in-plane closing: gaps between muscles up to about
        twice this width become part of the region.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"label map must be 3D, got shape {labels.shape}")
    disc = _disc(closing_mm, (float(spacing_mm[0]), float(spacing_mm[1])))
    muscle = labels > 0
    region = np.zeros_like(muscle)
    pad = max(disc.shape)
    for z in range(muscle.shape[2]):
        padded = np.pad(muscle[..., z], pad)
        closed = ndimage.binary_closing(padded, structure=disc)[pad:-pad, pad:-pad]
        region[..., z] = closed | muscle[..., z]
    return region


def imat_threshold(ff_percent: np.ndarray, muscle_region: np.ndarray, cut_percent: float = 50.0) -> np.ndarray:
    """IMAT as muscle-region voxels with fat fraction above ``cut_percent`` (NaN counts as not IMAT)."""
    ff = np.asarray(ff_percent, dtype=np.float32)
    if ff.shape != np.asarray(muscle_region).shape:
        raise ValueError(f"fat fraction {ff.shape} and muscle region {np.shape(muscle_region)} differ in shape")
    with np.errstate(invalid="ignore"):
        return np.asarray(muscle_region, bool) & (np.nan_to_num(ff, nan=0.0) > cut_percent)
