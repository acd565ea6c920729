"""Relative transmit field (B1+) from the double-angle method.

With long repetition times the signal is proportional to ``sin(theta)``, so
``S(2 alpha) / S(alpha) = 2 cos(alpha_actual)`` and the relative B1 is
``arccos(S_2alpha / (2 S_alpha)) / alpha_nominal`` (Insko EK, Bolinger L.
Mapping of the radiofrequency field. J Magn Reson A 1993;103:82-85;
Stollberger R, Wach P. Imaging of the active B1 field in vivo. Magn Reson
Med 1996;35:246-251).
"""

from __future__ import annotations

import numpy as np

__all__ = ["b1_double_angle", "b1_on_grid", "relative_b1"]


def b1_double_angle(s_alpha, s_2alpha, nominal_deg=60.0, mask=None, min_signal=None,
                    min_signal_fraction=0.02) -> np.ndarray:
    """Relative B1 (actual / nominal flip angle) from two flip angles.

    Parameters
    ----------
    s_alpha, s_2alpha : ndarray
        Images at nominal flip angles ``alpha`` and ``2 alpha`` on the same
        grid. Magnitude images cannot encode ``2 alpha > 180 deg`` (negative
        signal), so they give at most ``90 / nominal_deg``; real,
        phase-corrected images extend the range to ``180 / nominal_deg``.
    nominal_deg : float
        Nominal flip angle ``alpha`` in degrees, in (0, 90].
    mask : ndarray of bool, optional
        Voxels to compute; NaN elsewhere.
    min_signal : float, optional
        ``S_alpha`` at or below this value is noise (NaN). Default:
        ``min_signal_fraction`` times the 99th percentile of ``S_alpha``
        inside the mask.
    min_signal_fraction : float
        Fraction used for the default ``min_signal``.

    Returns
    -------
    ndarray, float32
        Relative B1 (1.0 = nominal); NaN outside the mask, at the noise floor
        and where ``|S_2alpha / (2 S_alpha)| > 1`` (no flip angle explains
        the ratio).
    """
    try:
        nominal = float(nominal_deg)
    except (TypeError, ValueError):
        raise ValueError(f"nominal_deg must be a number, got {nominal_deg!r}") from None
    if not np.isfinite(nominal) or not (0.0 < nominal <= 90.0):
        raise ValueError(f"nominal_deg must be in (0, 90] degrees, got {nominal_deg}")
    s1 = np.asarray(s_alpha, dtype=np.float64)
    s2 = np.asarray(s_2alpha, dtype=np.float64)
    if s1.shape != s2.shape:
        raise ValueError(f"s_alpha and s_2alpha shapes differ: {s1.shape} vs {s2.shape}")
    inside = np.ones(s1.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if inside.shape != s1.shape:
        raise ValueError(f"mask shape {inside.shape} does not match the images {s1.shape}")
    valid = inside & np.isfinite(s1) & np.isfinite(s2)
    if min_signal is None:
        if not (0 <= min_signal_fraction < 1):
            raise ValueError(f"min_signal_fraction must be in [0, 1), got {min_signal_fraction}")
        min_signal = min_signal_fraction * (np.percentile(s1[valid], 99) if valid.any() else 0.0)
    elif not np.isfinite(min_signal) or min_signal < 0:
        raise ValueError(f"min_signal must be a non-negative number, got {min_signal}")
    valid &= s1 > max(float(min_signal), 0.0)
    ratio = np.full(s1.shape, np.nan)
    ratio[valid] = s2[valid] / (2.0 * s1[valid])
    valid &= np.abs(ratio) <= 1.0
    out = np.full(s1.shape, np.nan, dtype=np.float32)
    out[valid] = np.arccos(ratio[valid]) / np.deg2rad(nominal)
    return out


#: Median relative B1 outside this range means the map is not a B1 map (or its units are wrong).
PLAUSIBLE_MEDIAN_B1 = (0.3, 2.0)


def relative_b1(b1_map, units: str | None = None) -> np.ndarray:
    """A B1 map as a fraction of the nominal flip angle (1.0 = nominal).

    BIDS recommends ``TB1map`` values in percent (100 = nominal) but only
    requires ``Units`` to be stated, so maps in percent (``units`` of
    ``"percent"`` or ``"%"``, or a median above 5 when ``units`` says
    nothing else) are divided by 100. Non-positive and non-finite values
    (background, masked voxels) become NaN, i.e. "not measured".

    Raises
    ------
    ValueError
        When no voxel is positive, or the median is outside
        :data:`PLAUSIBLE_MEDIAN_B1` after the conversion.
    """
    b1 = np.array(b1_map, dtype=np.float32)
    b1[~(np.isfinite(b1) & (b1 > 0))] = np.nan
    if not np.isfinite(b1).any():
        raise ValueError("the B1 map has no positive value")
    median = float(np.nanmedian(b1))
    unit = (units or "").strip().lower()
    if unit in ("percent", "%") or (unit in ("", "arbitrary", "a.u.") and median > 5.0):
        b1 /= 100.0
        median /= 100.0
    low, high = PLAUSIBLE_MEDIAN_B1
    if not low <= median <= high:
        raise ValueError(f"median B1 {median:.3g} of nominal (Units {units!r}) is not plausible; "
                         f"expected {low}-{high} (or {100 * low:g}-{100 * high:g} percent)")
    return b1


def b1_on_grid(b1, affine, target_shape, target_affine) -> np.ndarray:
    """A relative B1 map (NaN where not measured) on another voxel grid.

    Linear interpolation of the measured voxels only (normalised: the
    interpolated values over the interpolated share of measured voxels),
    so the body edge is not pulled towards the background; target voxels
    less than half covered by measured ones are NaN. The same grid returns
    a copy.
    """
    from bids_muscle.qmri.mtr import resample_to_grid

    b1 = np.asarray(b1, dtype=np.float32)
    if b1.ndim != 3:
        raise ValueError(f"the B1 map must be 3-D, got shape {b1.shape}")
    target_shape = tuple(int(n) for n in target_shape[:3])
    if b1.shape == target_shape and np.allclose(affine, target_affine, atol=1e-3):
        return b1.copy()
    measured = np.isfinite(b1)
    total = resample_to_grid(np.where(measured, b1, 0.0), affine, target_shape, target_affine, cval=0.0)
    weight = resample_to_grid(measured.astype(np.float32), affine, target_shape, target_affine, cval=0.0)
    out = np.full(target_shape, np.nan, dtype=np.float32)
    covered = weight >= 0.5
    out[covered] = total[covered] / weight[covered]
    return out
