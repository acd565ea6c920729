"""Dictionaries of multi-echo spin echo fits: input checks, parameter grids,
EPG echo-train tables, and sub-grid interpolation on them.

The pieces shared by the single-component fit (:mod:`bids_muscle.qmri.t2`)
and the water/fat fit (:mod:`bids_muscle.qmri.t2_water_fat`), and by the
simulator of the phantom. Units: seconds for times, B1 as a scale of the
nominal flip angles.

Default relaxation times at 3 T (see :mod:`bids_muscle.qmri.t2` for the
sources): water (muscle) T1 = 1.4 s, fat T1 = 0.37 s, fat T2 = 0.14 s.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch

from bids_muscle.qmri.epg import SliceProfile, default_slice_profile, epg_cpmg

WATER_T1_S = 1.4
FAT_T1_S = 0.37
FAT_T2_S = 0.14

#: Default dictionary of the single-component fit.
SINGLE_T2_RANGE_S = (0.008, 2.0)
#: Default water T2 range of the two-component fit.
WATER_T2_RANGE_S = (0.010, 0.100)
B1_RANGE = (0.4, 1.3)

ProfileArg = SliceProfile | None | str


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------


def validate_mese(
    echoes: np.ndarray, te_s: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Check a multi-echo spin echo series and its echo times.

    Parameters
    ----------
    echoes : array_like, shape (..., n_echoes)
        Magnitude images, echo last.
    te_s : array_like, shape (n_echoes,)
        Echo times (s).

    Returns
    -------
    echoes : ndarray, float32
    te_s : ndarray, float64

    Raises
    ------
    ValueError
        Fewer than 3 echoes, echo times missing, non-finite, non-positive or
        not strictly increasing, shape mismatch, all-zero or all-NaN data.
    """
    echoes = np.asarray(echoes, dtype=np.float32)
    te = np.asarray(te_s, dtype=np.float64)
    if te.ndim != 1:
        raise ValueError(f"echo times must be a 1D array, got shape {te.shape}")
    if echoes.ndim < 1 or echoes.shape[-1] != te.size:
        raise ValueError(
            f"echoes shape {echoes.shape} does not end with the {te.size} echo times"
        )
    if te.size < 3:
        raise ValueError(
            f"multi-echo T2 fitting needs at least 3 echoes, got {te.size} (use the two-point T2 for 2 echoes)"
        )
    if not np.all(np.isfinite(te)):
        raise ValueError("echo times contain NaN or infinite values")
    if np.any(te <= 0) or np.any(np.diff(te) <= 0):
        raise ValueError(
            f"echo times must be positive and strictly increasing, got {te.tolist()}"
        )
    finite = np.isfinite(echoes)
    if not finite.any():
        raise ValueError("echo data are all NaN")
    if not np.any(echoes[finite] != 0):
        raise ValueError("echo data are all zero")
    return echoes, te


def echo_spacing(te_s: np.ndarray, rtol: float = 0.01) -> float:
    """Echo spacing of a CPMG train whose echoes are at ``k * esp``.

    Raises
    ------
    ValueError
        If the echoes are not equally spaced starting at one spacing.
    """
    te = np.asarray(te_s, dtype=np.float64)
    esp = float(np.mean(np.diff(te))) if te.size > 1 else float(te[0])
    expected = esp * np.arange(1, te.size + 1)
    if not np.allclose(te, expected, rtol=rtol, atol=0.0):
        raise ValueError(
            f"EPG fitting needs echoes at multiples of one echo spacing, got {te.tolist()}"
        )
    return esp


def _spatial_mask(echoes: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    spatial = echoes.shape[:-1]
    if mask is None:
        return np.ones(spatial, dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != spatial:
        raise ValueError(
            f"mask shape {mask.shape} does not match the image shape {spatial}"
        )
    return mask.astype(bool)


def signal_mask(
    echoes: np.ndarray, mask: np.ndarray | None = None, noise_fraction: float = 0.05
) -> np.ndarray:
    """Voxels with a usable echo train.

    A voxel is kept when it lies in ``mask``, all its echoes are finite and
    its first echo exceeds ``noise_fraction`` of a robust foreground
    intensity: the 98th percentile of the first echo over the voxels of the
    mask brighter than the mask's mean (so that a large background does not
    pull the reference down to the noise).

    Parameters
    ----------
    echoes : ndarray, shape (..., n_echoes)
    mask : ndarray of bool, shape (...), optional
    noise_fraction : float
        Fraction of the foreground intensity below which a voxel is noise.

    Returns
    -------
    ndarray of bool, shape (...)
    """
    keep = _spatial_mask(echoes, mask) & np.all(np.isfinite(echoes), axis=-1)
    first = echoes[..., 0]
    if not keep.any():
        return keep
    values = first[keep]
    bright = values[values > values.mean()]
    reference = float(np.percentile(bright if bright.size else values, 98.0))
    if not reference > 0:
        return np.zeros_like(keep)
    return keep & (first > noise_fraction * reference)


# --------------------------------------------------------------------------
# dictionaries
# --------------------------------------------------------------------------


def resolve_profile(slice_profile: ProfileArg) -> SliceProfile | None:
    """The slice profile a fit argument names: ``'default'``
    (:func:`~bids_muscle.qmri.epg.default_slice_profile`), a SliceProfile, or None (ideal slice)."""
    if isinstance(slice_profile, str):
        if slice_profile != "default":
            raise ValueError(
                f"slice_profile must be 'default', None or a SliceProfile, got {slice_profile!r}"
            )
        return default_slice_profile()
    return slice_profile


def dictionary_grid(
    value_range: tuple[float, float], n: int, name: str, spacing: str = "linear"
) -> np.ndarray:
    """``n`` values from ``low`` to ``high``, ``spacing`` ``'log'`` or ``'linear'``."""
    low, high = value_range
    if not (0 < low < high) or n < 3:
        raise ValueError(
            f"{name} range must satisfy 0 < low < high with at least 3 steps, got {value_range}, {n}"
        )
    return np.geomspace(low, high, n) if spacing == "log" else np.linspace(low, high, n)


@functools.lru_cache(maxsize=16)
def _cached_epg(
    t2_s: tuple[float, ...],
    t1_s: float,
    b1: tuple[float, ...],
    esp_s: float,
    n_echoes: int,
    refocus_deg: float,
    excite_deg: float,
    profile: tuple[tuple[float, ...], ...] | None,
) -> np.ndarray:
    """EPG table (n_b1, n_t2, n_echoes), cached: a protocol is fitted many times."""
    table = epg_cpmg(
        np.asarray(t2_s)[None, :],
        t1_s,
        np.asarray(b1)[:, None],
        esp_s,
        n_echoes,
        refocus_deg,
        excite_deg,
        None if profile is None else SliceProfile(*(np.asarray(a) for a in profile)),
    )
    table.flags.writeable = False
    return table


def epg_table(
    t2_s: np.ndarray,
    t1_s: float,
    b1: np.ndarray,
    esp_s: float,
    n_echoes: int,
    refocus_deg: float,
    excite_deg: float,
    profile: SliceProfile | None,
) -> np.ndarray:
    """EPG echo trains on the grid ``b1`` x ``t2_s``, shape (n_b1, n_t2, n_echoes)."""
    key = (
        None
        if profile is None
        else tuple(tuple(float(x) for x in np.ravel(a)) for a in profile)
    )
    return _cached_epg(
        tuple(float(x) for x in np.ravel(t2_s)),
        float(t1_s),
        tuple(float(x) for x in np.ravel(b1)),
        float(esp_s),
        int(n_echoes),
        float(refocus_deg),
        float(excite_deg),
        key,
    )


def saturation(tr_s: float | None, t1_s: float) -> float:
    """Longitudinal recovery after a repetition time (1 when TR is ignored)."""
    return 1.0 if tr_s is None else float(1.0 - np.exp(-tr_s / t1_s))


def water_fat_tables(
    te_s: np.ndarray,
    t2_grid_s: np.ndarray,
    b1_grid: np.ndarray,
    fat_t2_s: float = FAT_T2_S,
    fat_t1_s: float = FAT_T1_S,
    water_t1_s: float = WATER_T1_S,
    refocus_deg: float = 180.0,
    excite_deg: float = 90.0,
    slice_profile: ProfileArg = "default",
    tr_s: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Unnormalised water and fat echo trains for unit proton density.

    Returns
    -------
    water : ndarray, shape (n_b1, n_t2, n_echoes)
    fat : ndarray, shape (n_b1, n_echoes)
    """
    te = np.asarray(te_s, dtype=np.float64)
    esp = echo_spacing(te)
    profile = resolve_profile(slice_profile)
    b1 = np.asarray(b1_grid, dtype=np.float64)
    water = epg_table(
        t2_grid_s, water_t1_s, b1, esp, te.size, refocus_deg, excite_deg, profile
    )
    fat = epg_table(
        np.array([fat_t2_s]),
        fat_t1_s,
        b1,
        esp,
        te.size,
        refocus_deg,
        excite_deg,
        profile,
    )[:, 0]
    return water * saturation(tr_s, water_t1_s), fat * saturation(tr_s, fat_t1_s)


# --------------------------------------------------------------------------
# sub-grid interpolation
# --------------------------------------------------------------------------


def parabolic_offset(
    minus: torch.Tensor, centre: torch.Tensor, plus: torch.Tensor
) -> torch.Tensor:
    """Sub-grid offset of the maximum of a parabola through three samples."""
    curvature = minus - 2.0 * centre + plus
    concave = curvature < 0
    offset = (
        0.5
        * (minus - plus)
        / torch.where(concave, curvature, torch.full_like(curvature, -1.0))
    )
    return torch.where(concave, offset, torch.zeros_like(offset)).clamp(-0.5, 0.5)


def peak_offset(
    stencil: torch.Tensor, b_edge: torch.Tensor, t_edge: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-grid maximum of a quadratic through a 3 x 3 stencil (B1 x T2).

    The full quadratic (with the cross term: T2 and B1 are correlated) is
    used where it is concave; otherwise, and along an axis whose centre
    lies on the dictionary edge, one-dimensional parabolas are used.
    """
    f = stencil
    g_b = 0.5 * (f[:, 2, 1] - f[:, 0, 1])
    g_t = 0.5 * (f[:, 1, 2] - f[:, 1, 0])
    h_bb = f[:, 2, 1] - 2.0 * f[:, 1, 1] + f[:, 0, 1]
    h_tt = f[:, 1, 2] - 2.0 * f[:, 1, 1] + f[:, 1, 0]
    h_bt = 0.25 * (f[:, 2, 2] - f[:, 2, 0] - f[:, 0, 2] + f[:, 0, 0])
    det = h_bb * h_tt - h_bt * h_bt
    concave = (h_bb < 0) & (det > 0) & ~b_edge & ~t_edge
    safe = torch.where(concave, det, torch.ones_like(det))
    d_b = -(h_tt * g_b - h_bt * g_t) / safe
    d_t = -(h_bb * g_t - h_bt * g_b) / safe
    p_b = parabolic_offset(f[:, 0, 1], f[:, 1, 1], f[:, 2, 1])
    p_t = parabolic_offset(f[:, 1, 0], f[:, 1, 1], f[:, 1, 2])
    d_b = torch.where(concave, d_b.clamp(-1.0, 1.0), p_b)
    d_t = torch.where(concave, d_t.clamp(-1.0, 1.0), p_t)
    zero = torch.zeros_like(d_b)
    return torch.where(b_edge, zero, d_b), torch.where(t_edge, zero, d_t)


def stencil(
    values: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    t: torch.Tensor,
    n_b: int,
    n_t: int,
) -> torch.Tensor:
    """3 x 3 samples of ``values(b_index, t_index)`` around (b, t), clamped to the grid."""
    rows = []
    for db in (-1, 0, 1):
        bi = (b + db).clamp(0, n_b - 1)
        rows.append(
            torch.stack(
                [values(bi, (t + dt).clamp(0, n_t - 1)) for dt in (-1, 0, 1)], dim=1
            )
        )
    return torch.stack(rows, dim=1)


def bilinear_curves(
    table: torch.Tensor, b_pos: torch.Tensor, t_pos: torch.Tensor
) -> torch.Tensor:
    """Echo trains of ``table`` (nB, nT, E) at fractional grid positions."""
    n_b, n_t, n_e = table.shape
    b0 = b_pos.floor().clamp(0, n_b - 2)
    t0 = t_pos.floor().clamp(0, n_t - 2)
    wb = (b_pos - b0).clamp(0, 1)[:, None]
    wt = (t_pos - t0).clamp(0, 1)[:, None]
    flat = table.reshape(-1, n_e)
    i00 = b0.long() * n_t + t0.long()
    low = torch.lerp(flat.index_select(0, i00), flat.index_select(0, i00 + 1), wt)
    high = torch.lerp(
        flat.index_select(0, i00 + n_t), flat.index_select(0, i00 + n_t + 1), wt
    )
    return torch.lerp(low, high, wb)


def linear_curves(table: torch.Tensor, b_pos: torch.Tensor) -> torch.Tensor:
    """Echo trains of ``table`` (nB, E) at fractional B1 positions."""
    b0 = b_pos.floor().clamp(0, table.shape[0] - 2)
    wb = (b_pos - b0).clamp(0, 1)[:, None]
    i0 = b0.long()
    return torch.lerp(table.index_select(0, i0), table.index_select(0, i0 + 1), wb)
