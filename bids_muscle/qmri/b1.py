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

__all__ = ["b1_double_angle"]


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
