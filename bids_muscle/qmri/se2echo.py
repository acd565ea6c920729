"""T2 from two spin-echo images (two-point mono-exponential fit).

``S(TE) = S0 exp(-TE / T2)`` gives ``T2 = (TE2 - TE1) / ln(S1 / S2)`` and
``S0 = S1 exp(TE1 / T2)``; the method used for skeletal muscle by Sinclair
CDJ et al. (NMR Biomed 2012;25:262-270) with echoes at about 16 and 56 ms.
"""

from __future__ import annotations

import numpy as np

__all__ = ["t2_two_point", "align_second_echo", "log_ratio_edge_energy"]

_MAX_TE_S = 1.0


def t2_two_point(s1, s2, te1_s, te2_s, mask=None, min_signal=None, min_signal_fraction=0.02) -> dict:
    """Two-point spin-echo T2 and extrapolated S0.

    Parameters
    ----------
    s1, s2 : ndarray
        Magnitude images at echo times ``te1_s < te2_s`` on the same grid.
    te1_s, te2_s : float
        Echo times in seconds.
    mask : ndarray of bool, optional
        Voxels to compute; NaN elsewhere.
    min_signal : float, optional
        ``S2`` at or below this value is noise (NaN). Default:
        ``min_signal_fraction`` times the 99th percentile of ``S1`` inside
        the mask.
    min_signal_fraction : float
        Fraction used for the default ``min_signal``.

    Returns
    -------
    dict
        ``t2_s`` (seconds) and ``s0`` (units of the images), float32. NaN
        outside the mask, at the noise floor and where ``S1 <= S2`` (no
        finite positive T2).
    """
    try:
        te1 = float(te1_s)
        te2 = float(te2_s)
    except (TypeError, ValueError):
        raise ValueError(f"te1_s and te2_s must be numbers in seconds, got {te1_s!r}, {te2_s!r}") from None
    if not (np.isfinite(te1) and np.isfinite(te2)) or te1 < 0 or te2 <= te1:
        raise ValueError(f"echo times must satisfy 0 <= te1_s < te2_s, got {te1_s}, {te2_s}")
    if te2 > _MAX_TE_S:
        raise ValueError(f"echo times must be in seconds (te2_s = {te2_s} > {_MAX_TE_S} s)")
    a = np.asarray(s1, dtype=np.float64)
    b = np.asarray(s2, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"s1 and s2 shapes differ: {a.shape} vs {b.shape}")
    inside = np.ones(a.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if inside.shape != a.shape:
        raise ValueError(f"mask shape {inside.shape} does not match the images {a.shape}")
    valid = inside & np.isfinite(a) & np.isfinite(b)
    if min_signal is None:
        if not (0 <= min_signal_fraction < 1):
            raise ValueError(f"min_signal_fraction must be in [0, 1), got {min_signal_fraction}")
        min_signal = min_signal_fraction * (np.percentile(a[valid], 99) if valid.any() else 0.0)
    elif not np.isfinite(min_signal) or min_signal < 0:
        raise ValueError(f"min_signal must be a non-negative number, got {min_signal}")
    valid &= (b > max(float(min_signal), 0.0)) & (a > b)
    t2 = np.full(a.shape, np.nan, dtype=np.float32)
    s0 = np.full(a.shape, np.nan, dtype=np.float32)
    t2v = (te2 - te1) / np.log(a[valid] / b[valid])
    t2[valid] = t2v
    s0[valid] = a[valid] * np.exp(te1 / t2v)
    return {"t2_s": t2, "s0": s0}


def log_ratio_edge_energy(s1, s2, mask) -> float:
    """Mean in-plane gradient magnitude of ``ln(S1 / S2)`` inside ``mask``.

    Misaligned echoes leave signed edge artefacts in the log ratio (its value
    is ``(TE2 - TE1) / T2``) wherever the anatomy has edges; aligned echoes
    minimise it. Voxels with ``S2`` at or below 2 % of the 99th percentile of
    ``S1`` in the mask are left out.
    """
    a = np.asarray(s1, dtype=np.float64)
    b = np.asarray(s2, dtype=np.float64)
    inside = np.asarray(mask, dtype=bool)
    if not inside.any():
        raise ValueError("log_ratio_edge_energy: the mask is empty")
    floor = max(0.02 * float(np.percentile(a[inside], 99)), 1e-6)
    ratio = np.log(np.maximum(a, floor) / np.maximum(b, floor))
    gx, gy = np.gradient(ratio, axis=(0, 1))
    ok = inside & (b > floor) & (a > floor)
    if not ok.any():
        raise ValueError("log_ratio_edge_energy: no voxel above the noise floor")
    return float(np.mean(np.hypot(gx, gy)[ok]))


def align_second_echo(s1, s2, spacing_mm, mask) -> tuple[np.ndarray, dict]:
    """Register the second echo (separate series) rigidly onto the first.

    The registration (:func:`bids_muscle.qmri.register.register_rigid`,
    Mattes mutual information) is kept only when it lowers the edge artefacts
    of ``ln(S1 / S2)`` (:func:`log_ratio_edge_energy`) inside ``mask`` (eroded
    by one voxel in-plane). Echoes of different contrast make mutual
    information settle up to ~0.5 mm off on echoes that are already aligned;
    resampling them by such a shift would add the artefacts it is meant to
    remove.

    Parameters
    ----------
    s1, s2 : ndarray
        First and second echo on the same grid.
    spacing_mm : tuple of float
        Voxel size along each array axis in mm.
    mask : ndarray of bool
        Foreground (body) voxels.

    Returns
    -------
    s2_aligned : ndarray, float32
        ``s2`` resampled onto ``s1`` when the registration was kept, else ``s2`` unchanged.
    info : dict
        :func:`register_rigid`'s fields, plus ``edge_energy_before`` and
        ``edge_energy_after`` (of ``ln(S1/S2)``) and ``applied`` (bool).
    """
    from scipy import ndimage

    from bids_muscle.qmri.register import register_rigid

    a = np.asarray(s1, dtype=np.float32)
    b = np.asarray(s2, dtype=np.float32)
    inside = np.asarray(mask, dtype=bool)
    if a.shape != b.shape or inside.shape != a.shape:
        raise ValueError(f"echo and mask shapes differ: {a.shape}, {b.shape}, {inside.shape}")
    moved, info = register_rigid(a, b, spacing_mm, mask=inside)
    core = ndimage.binary_erosion(inside, structure=np.ones((3, 3, 1), bool)) if inside.ndim == 3 else inside
    if not core.any():
        core = inside
    before = log_ratio_edge_energy(a, b, core)
    after = log_ratio_edge_energy(a, moved, core)
    applied = after < before
    info.update(edge_energy_before=before, edge_energy_after=after, applied=bool(applied))
    return (moved if applied else b.copy()), info
