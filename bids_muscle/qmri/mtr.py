"""Magnetisation transfer ratio (MTR) and resampling between image grids.

``MTR = 100 (M_off - M_on) / M_off`` in percent units (Henkelman RM, Stanisz
GJ, Graham SJ. Magnetization transfer in MRI: a review. NMR Biomed
2001;14:57-64), as used for skeletal muscle by Sinclair CDJ et al.
(NMR Biomed 2012;25:262-270).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["mtr_percent", "resample_to_grid"]


def mtr_percent(m_off, m_on, mask=None, min_signal=None, min_signal_fraction=0.05) -> np.ndarray:
    """Magnetisation transfer ratio in percent units.

    Parameters
    ----------
    m_off, m_on : ndarray
        Images without and with the off-resonance saturation pulse, on the
        same grid (magnitude, any units).
    mask : ndarray of bool, optional
        Voxels to compute; NaN elsewhere.
    min_signal : float, optional
        ``M_off`` at or below this value is treated as noise floor (NaN).
        Default: ``min_signal_fraction`` times the 99th percentile of
        ``M_off`` inside the mask.
    min_signal_fraction : float
        Fraction used for the default ``min_signal``.

    Returns
    -------
    ndarray, float32
        MTR in percent units; NaN outside the mask and at the noise floor.
        Not clipped (negative values occur where noise dominates).
    """
    m_off = np.asarray(m_off, dtype=np.float64)
    m_on = np.asarray(m_on, dtype=np.float64)
    if m_off.shape != m_on.shape:
        raise ValueError(f"m_off and m_on shapes differ: {m_off.shape} vs {m_on.shape}")
    inside = np.ones(m_off.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if inside.shape != m_off.shape:
        raise ValueError(f"mask shape {inside.shape} does not match the images {m_off.shape}")
    valid = inside & np.isfinite(m_off) & np.isfinite(m_on)
    if min_signal is None:
        if not (0 <= min_signal_fraction < 1):
            raise ValueError(f"min_signal_fraction must be in [0, 1), got {min_signal_fraction}")
        ref = np.percentile(m_off[valid], 99) if valid.any() else 0.0
        min_signal = min_signal_fraction * ref
    elif not np.isfinite(min_signal) or min_signal < 0:
        raise ValueError(f"min_signal must be a non-negative number, got {min_signal}")
    valid &= m_off > max(float(min_signal), 0.0)
    out = np.full(m_off.shape, np.nan, dtype=np.float32)
    out[valid] = 100.0 * (m_off[valid] - m_on[valid]) / m_off[valid]
    return out


def resample_to_grid(array, affine, target_shape, target_affine, order=1, cval=np.nan) -> np.ndarray:
    """Resample an image onto another voxel grid given both voxel-to-world affines.

    Parameters
    ----------
    array : ndarray, 3-D
        Source image.
    affine : (4, 4) array
        Voxel-to-world affine of ``array``.
    target_shape : tuple of int
        Shape of the output grid.
    target_affine : (4, 4) array
        Voxel-to-world affine of the output grid.
    order : int
        Spline order (0 nearest, 1 linear, 3 cubic).
    cval : float
        Value outside the source field of view.

    Returns
    -------
    ndarray, float32, shape ``target_shape``
    """
    array = np.asarray(array)
    affine = np.asarray(affine, dtype=np.float64)
    target_affine = np.asarray(target_affine, dtype=np.float64)
    if array.ndim != 3:
        raise ValueError(f"array must be 3-D, got shape {array.shape}")
    if affine.shape != (4, 4) or target_affine.shape != (4, 4):
        raise ValueError("affine and target_affine must be 4x4 matrices")
    if len(target_shape) != 3:
        raise ValueError(f"target_shape must have three entries, got {target_shape}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError("affine is singular")
    target_to_source = np.linalg.inv(affine) @ target_affine
    return ndimage.affine_transform(
        array.astype(np.float32), target_to_source[:3, :3], offset=target_to_source[:3, 3],
        output_shape=tuple(int(n) for n in target_shape), order=order, mode="constant", cval=cval,
    )
