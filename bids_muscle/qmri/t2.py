"""T2, water T2, proton density, B1 and fat fraction from multi-echo spin echo.

Three fits of a CPMG multi-echo spin echo series of magnitude images:

* :func:`fit_t2_single` -- echo modulation curve (EMC) dictionary matching
  (Ben-Eliezer et al., Magn Reson Med 2015; 73:809-817, as used by Amer et
  al., 2022, section 2.2.2): a dictionary of EPG echo trains over a T2 x B1
  grid is l2-normalised, each voxel takes the atom of maximum inner product
  (the minimum l2 distance after scaling), and the proton density is the
  scale of the unnormalised atom, i.e. the signal back-extrapolated to t = 0.
* :func:`fit_t2_water_fat` -- two-component water/fat EPG model for muscle
  (Marty et al., NMR Biomed 2016; 29:431-443; Santini et al., Front Neurol
  2021; 12:630387), in :mod:`bids_muscle.qmri.t2_water_fat`.
* :func:`fit_t2_monoexp` -- weighted log-linear mono-exponential baseline.

:func:`simulate_mese` generates noiseless echo trains of the two-component
model for the digital phantom, and :func:`dictionary_description` gives the
parameters for the JSON sidecars of the maps. The dictionaries, their grids
and the sub-grid interpolation are in :mod:`bids_muscle.qmri.t2_dictionary`;
the B1 prior and the two-pass fit in :mod:`bids_muscle.qmri.b1_prior`. This
module is the public face of all of them.

Default relaxation times at 3 T: water (muscle) T1 = 1.4 s and fat T1 =
0.37 s (Gold et al., AJR 2004; 183:343-351: 1420 and 371 ms). Fat T2 =
0.14 s, calibrated on subcutaneous fat as Marty et al. (2016) recommend: a
single-component EPG fit (with the fat T1) of subcutaneous fat gives
medians of 138 ms in the Philips calf and 139 ms in the Siemens thigh
series of the test data, close to the 133 ms of Gold et al.; with it the
two-component fit gives median FF of 79 % (thigh) and 100 % (calf) in
subcutaneous fat and 5-7 % in muscle. Published calibrations span 0.13-0.2 s (MyoQMRI defaults to
0.151 s); pass ``fat_t2_s`` for another value.

Units: seconds for times, B1 as a scale of the nominal flip angles, fat
fraction in percent. Voxels outside the mask, below the noise floor, with
non-finite echoes, or whose parameter lands on a dictionary bound are NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from bids_muscle.qmri.b1_prior import allowed_b1, b1_window, fit_with_b1_prior, smooth_b1_map
from bids_muscle.qmri.t2_dictionary import (
    B1_RANGE,
    FAT_T1_S,
    FAT_T2_S,
    SINGLE_T2_RANGE_S,
    WATER_T1_S,
    WATER_T2_RANGE_S,
    ProfileArg,
    bilinear_curves,
    dictionary_grid,
    echo_spacing,
    epg_table,
    peak_offset,
    resolve_profile,
    signal_mask,
    stencil,
    validate_mese,
    water_fat_tables,
)
from bids_muscle.qmri.t2_water_fat import fit_t2_water_fat, simulate_mese

__all__ = [
    "B1_RANGE",
    "FAT_T1_S",
    "FAT_T2_S",
    "SINGLE_T2_RANGE_S",
    "WATER_T1_S",
    "WATER_T2_RANGE_S",
    "b1_window",
    "dictionary_description",
    "echo_spacing",
    "fit_t2_monoexp",
    "fit_t2_single",
    "fit_t2_water_fat",
    "signal_mask",
    "simulate_mese",
    "smooth_b1_map",
    "validate_mese",
    "water_fat_tables",
]


def fit_t2_single(
    echoes: np.ndarray,
    te_s: np.ndarray,
    mask: np.ndarray | None = None,
    t2_range_s: tuple[float, float] = SINGLE_T2_RANGE_S,
    n_t2: int = 120,
    b1_range: tuple[float, float] = B1_RANGE,
    n_b1: int = 41,
    t1_s: float = WATER_T1_S,
    refocus_deg: float = 180.0,
    excite_deg: float = 90.0,
    slice_profile: ProfileArg = "default",
    b1_map: np.ndarray | None = None,
    b1_tolerance: float = 0.05,
    b1_smoothing_voxels: float | None = 4.0,
    noise_fraction: float = 0.05,
    block_size: int = 2048,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Single-component T2, B1 and PD by EMC dictionary matching.

    The dictionary holds EPG echo trains (:func:`~bids_muscle.qmri.epg.epg_cpmg`)
    on a log-spaced T2 grid times a linear B1 grid. Each voxel takes the
    l2-normalised atom of largest inner product; T2 and B1 are refined
    between grid points by a quadratic through the 3 x 3 neighbouring
    scores and the PD is the least-squares scale of the (interpolated)
    unnormalised atom, i.e. the signal back-extrapolated to t = 0 (Ben-Eliezer et al.,
    2015; Amer et al., 2022).

    Parameters
    ----------
    echoes : ndarray, shape (..., n_echoes)
        Magnitude images, echo last; any leading spatial shape.
    te_s : ndarray, shape (n_echoes,)
        Echo times (s), multiples of the echo spacing.
    mask : ndarray of bool, shape (...), optional
        Voxels to fit; others are NaN.
    t2_range_s, n_t2 : dictionary T2 range (s) and number of log-spaced steps.
    b1_range, n_b1 : dictionary B1 range and number of linear steps.
    t1_s : float
        T1 used in the simulation (s).
    refocus_deg, excite_deg : float
        Nominal refocusing and excitation angles (degrees).
    slice_profile : 'default', SliceProfile or None
        Slice profile of the simulation (None: ideal slice).
    b1_map : ndarray, shape (...), optional
        Prior B1, e.g. a measured B1 map: the search is restricted to
        dictionary B1 values within ``b1_tolerance`` of it (NaN:
        unconstrained). A prior removes the ambiguity between refocusing
        angles either side of 180 degrees (and slightly lowers the noise of
        T2).
    b1_tolerance : float
        Half width of the allowed B1 interval (at least two grid steps).
    b1_smoothing_voxels : float or None
        Without ``b1_map``, images (two or more spatial axes) are fitted
        twice: the B1 of the first pass, smoothed in-plane with this
        Gaussian width (:func:`smooth_b1_map`), is the prior of the second.
        None: a single unconstrained pass (also used for voxel lists).
    noise_fraction : float
        See :func:`signal_mask`.
    block_size : int
        Voxels per matrix product (bounds memory to about
        ``block_size * n_t2 * n_b1 * 8`` bytes).
    progress : callable(done, total), optional
        Called after each block of each pass.

    Returns
    -------
    dict
        ``t2_s``, ``b1``, ``pd``: float32 arrays of the spatial shape. A T2
        on a dictionary bound makes T2 and PD NaN; a B1 on a bound makes B1
        NaN.
    """
    echoes, te = validate_mese(echoes, te_s)
    esp = echo_spacing(te)
    keep = signal_mask(echoes, mask, noise_fraction)
    t2_grid = dictionary_grid(t2_range_s, n_t2, "T2", "log")
    b1_grid = dictionary_grid(b1_range, n_b1, "B1")
    table = epg_table(t2_grid, t1_s, b1_grid, esp, te.size, refocus_deg, excite_deg, resolve_profile(slice_profile))
    table_t = torch.from_numpy(table.astype(np.float32))
    atoms = torch.from_numpy(
        (table / np.linalg.norm(table, axis=-1, keepdims=True))
        .reshape(-1, te.size)
        .astype(np.float32)
    )
    log_step = np.log(t2_grid[1] / t2_grid[0])
    b1_step = b1_grid[1] - b1_grid[0]

    def fit_block(s: torch.Tensor, prior: torch.Tensor) -> dict[str, torch.Tensor]:
        n = s.shape[0]
        rows = torch.arange(n)
        score = (s @ atoms.T).view(n, n_b1, n_t2)
        allowed = allowed_b1(prior, b1_grid, b1_tolerance)
        best_score, best = (
            score.masked_fill(~allowed[:, :, None], -np.inf).view(n, -1).max(dim=1)
        )
        b, t = best // n_t2, best % n_t2
        t_edge = (t == 0) | (t == n_t2 - 1)
        b_edge = (b == 0) | (b == n_b1 - 1)
        scores = stencil(lambda bi, ti: score[rows, bi, ti], b, t, n_b1, n_t2)
        b_off, t_off = peak_offset(scores, b_edge, t_edge)
        t_pos, b_pos = t + t_off, b + b_off
        curve = bilinear_curves(table_t, b_pos, t_pos)
        pd = (s * curve).sum(1) / (curve * curve).sum(1)
        t2 = torch.exp(np.log(t2_grid[0]) + t_pos * log_step)
        b1 = b1_grid[0] + b_pos * b1_step
        matched = best_score > 0
        nan = torch.tensor(float("nan"))
        return {
            "t2_s": torch.where(t_edge | ~matched, nan, t2).float(),
            "pd": torch.where(t_edge | ~matched, nan, pd).float(),
            "b1": torch.where(b_edge | ~matched, nan, b1).float(),
        }

    names = ("t2_s", "b1", "pd")
    return fit_with_b1_prior(
        echoes, keep, fit_block, names, b1_grid, b1_map, b1_tolerance, b1_smoothing_voxels, block_size, progress
    )


# --------------------------------------------------------------------------
# mono-exponential baseline
# --------------------------------------------------------------------------


def fit_t2_monoexp(
    echoes: np.ndarray,
    te_s: np.ndarray,
    mask: np.ndarray | None = None,
    drop_first: bool = True,
    max_t2_s: float = 5.0,
    noise_fraction: float = 0.05,
) -> dict[str, np.ndarray]:
    """Mono-exponential T2 and PD by weighted log-linear least squares.

    ``log S = log PD - TE / T2`` is fitted with weights ``S**2`` (the inverse
    variance of ``log S`` for Gaussian noise), which keeps the noise floor
    of late echoes from biasing T2. Dropping the first echo removes most of
    the stimulated-echo deficit of the first echo (the usual clinical
    practice); T2 remains biased upwards by stimulated echoes.

    Parameters
    ----------
    echoes : ndarray, shape (..., n_echoes)
    te_s : ndarray, shape (n_echoes,)
        Echo times (s); need not be equally spaced.
    mask : ndarray of bool, shape (...), optional
    drop_first : bool
        Exclude the first echo from the fit.
    max_t2_s : float
        T2 above which (or a non-decaying fit) the voxel is NaN.
    noise_fraction : float
        See :func:`signal_mask`.

    Returns
    -------
    dict
        ``t2_s`` and ``pd`` (extrapolated to t = 0), float32, spatial shape.
    """
    echoes, te = validate_mese(echoes, te_s)
    keep = signal_mask(echoes, mask, noise_fraction)
    start = 1 if drop_first else 0
    if te.size - start < 2:
        raise ValueError(
            "mono-exponential fit needs at least 2 echoes after dropping the first"
        )
    s = echoes[keep][:, start:].astype(np.float64)
    t = te[start:]
    positive = s > 0
    w = np.where(positive, s * s, 0.0)
    y = np.log(np.where(positive, s, 1.0))
    sw, st, stt = w.sum(1), w @ t, w @ (t * t)
    sy, sty = (w * y).sum(1), (w * y) @ t
    det = sw * stt - st * st
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = (sw * sty - st * sy) / det
        intercept = (stt * sy - st * sty) / det
        t2 = -1.0 / slope
    valid = (positive.sum(1) >= 2) & np.isfinite(t2) & (t2 > 0) & (t2 <= max_t2_s)
    out = {}
    for name, values in (("t2_s", t2), ("pd", np.exp(intercept))):
        image = np.full(keep.shape, np.nan, dtype=np.float32)
        image[keep] = np.where(valid, values, np.nan)
        out[name] = image
    return out


# --------------------------------------------------------------------------
# sidecar description
# --------------------------------------------------------------------------


def dictionary_description(
    te_s: np.ndarray,
    model: str = "water_fat",
    fat_t2_s: float = FAT_T2_S,
    fat_t1_s: float = FAT_T1_S,
    water_t1_s: float = WATER_T1_S,
    t2_range_s: tuple[float, float] | None = None,
    n_t2: int | None = None,
    b1_range: tuple[float, float] = B1_RANGE,
    n_b1: int = 41,
    refocus_deg: float = 180.0,
    excite_deg: float = 90.0,
    slice_profile: ProfileArg = "default",
    tr_s: float | None = None,
    b1_smoothing_voxels: float | None = 4.0,
    b1_tolerance: float = 0.05,
    noise_fraction: float = 0.05,
) -> dict:
    """Fit parameters for the JSON sidecar of the maps.

    Parameters
    ----------
    te_s : array_like
        Echo times (s).
    model : {'water_fat', 'single', 'monoexp'}
        Which fit produced the maps.
    Other parameters
        As passed to the fit; ``t2_range_s`` and ``n_t2`` default to the
        fit's own defaults.

    Returns
    -------
    dict
        JSON-serialisable description.
    """
    te = np.asarray(te_s, dtype=np.float64)
    description: dict = {
        "EchoTime": [round(float(x), 6) for x in te],
        "NoiseFloorFraction": noise_fraction,
    }
    if model == "monoexp":
        description.update(
            {
                "Algorithm": "mono-exponential weighted log-linear least squares, first echo dropped",
                "Model": "monoexp",
            }
        )
        return description
    if model not in ("water_fat", "single"):
        raise ValueError(
            f"model must be 'water_fat', 'single' or 'monoexp', got {model!r}"
        )
    single = model == "single"
    if t2_range_s is None:
        t2_range_s = SINGLE_T2_RANGE_S if single else WATER_T2_RANGE_S
    if n_t2 is None:
        n_t2 = 120 if single else 64
    profile = resolve_profile(slice_profile)
    description.update(
        {
            "Algorithm": (
                "EPG echo modulation curve dictionary matching (Ben-Eliezer 2015)"
                if single
                else "two-component water/fat EPG dictionary fit with per-atom non-negative least squares (Marty 2016)"
            ),
            "Model": model,
            "EchoSpacing": echo_spacing(te),
            "DictionaryT2Range": [float(t2_range_s[0]), float(t2_range_s[1])],
            "DictionaryT2Steps": int(n_t2),
            "DictionaryT2Spacing": "logarithmic",
            "DictionaryB1Range": [float(b1_range[0]), float(b1_range[1])],
            "DictionaryB1Steps": int(n_b1),
            "B1Regularisation": (
                "none"
                if b1_smoothing_voxels is None
                else {
                    "Method": "second pass within B1Tolerance of the first-pass B1 smoothed in-plane",
                    "SmoothingSigmaVoxels": float(b1_smoothing_voxels),
                    "B1Tolerance": float(b1_tolerance),
                }
            ),
            "RefocusingFlipAngle": float(refocus_deg),
            "ExcitationFlipAngle": float(excite_deg),
            "WaterT1": float(water_t1_s),
            "RepetitionTimeCorrection": tr_s,
            "SliceProfile": (
                "none"
                if profile is None
                else {
                    "RefocusingScale": [
                        round(float(x), 5) for x in profile.refocus_scale
                    ],
                    "ExcitationScale": [
                        round(float(x), 5) for x in profile.excite_scale
                    ],
                    "Weight": [round(float(x), 5) for x in profile.weight],
                }
            ),
        }
    )
    if not single:
        description.update({"FatT2": float(fat_t2_s), "FatT1": float(fat_t1_s)})
    return description
