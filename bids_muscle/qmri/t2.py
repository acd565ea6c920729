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
  2021; 12:630387): water with free T2, fat with fixed T2 and T1 and its own
  EPG curve, one B1 for both. For every (water T2, B1) atom the two
  amplitudes are solved in closed form by non-negative least squares, so the
  search stays a set of matrix products.
* :func:`fit_t2_monoexp` -- weighted log-linear mono-exponential baseline.

:func:`simulate_mese` generates noiseless echo trains of the same model for
the digital phantom, and :func:`dictionary_description` gives the parameters
for the JSON sidecars of the maps.

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

import functools
import threading
from collections.abc import Callable

import numpy as np
import torch

from bids_muscle.qmri.blocks import run_in_blocks
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


def _profile(slice_profile: ProfileArg) -> SliceProfile | None:
    if isinstance(slice_profile, str):
        if slice_profile != "default":
            raise ValueError(
                f"slice_profile must be 'default', None or a SliceProfile, got {slice_profile!r}"
            )
        return default_slice_profile()
    return slice_profile


def _log_grid(value_range: tuple[float, float], n: int, name: str) -> np.ndarray:
    low, high = value_range
    if not (0 < low < high) or n < 3:
        raise ValueError(
            f"{name} range must satisfy 0 < low < high with at least 3 steps, got {value_range}, {n}"
        )
    return np.geomspace(low, high, n)


def _lin_grid(value_range: tuple[float, float], n: int, name: str) -> np.ndarray:
    low, high = value_range
    if not (0 < low < high) or n < 3:
        raise ValueError(
            f"{name} range must satisfy 0 < low < high with at least 3 steps, got {value_range}, {n}"
        )
    return np.linspace(low, high, n)


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


def _epg_table(
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


def _saturation(tr_s: float | None, t1_s: float) -> float:
    """Longitudinal recovery after a repetition time (1 when TR is ignored)."""
    return 1.0 if tr_s is None else float(1.0 - np.exp(-tr_s / t1_s))


def _parabolic_offset(
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


def _peak_offset(
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
    p_b = _parabolic_offset(f[:, 0, 1], f[:, 1, 1], f[:, 2, 1])
    p_t = _parabolic_offset(f[:, 1, 0], f[:, 1, 1], f[:, 1, 2])
    d_b = torch.where(concave, d_b.clamp(-1.0, 1.0), p_b)
    d_t = torch.where(concave, d_t.clamp(-1.0, 1.0), p_t)
    zero = torch.zeros_like(d_b)
    return torch.where(b_edge, zero, d_b), torch.where(t_edge, zero, d_t)


def _stencil(
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


def _bilinear_curves(
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


def _linear_curves(table: torch.Tensor, b_pos: torch.Tensor) -> torch.Tensor:
    """Echo trains of ``table`` (nB, E) at fractional B1 positions."""
    b0 = b_pos.floor().clamp(0, table.shape[0] - 2)
    wb = (b_pos - b0).clamp(0, 1)[:, None]
    i0 = b0.long()
    return torch.lerp(table.index_select(0, i0), table.index_select(0, i0 + 1), wb)


def _b1_prior(b1_map: np.ndarray | None, keep: np.ndarray) -> np.ndarray:
    """Prior B1 of the kept voxels (NaN: unconstrained)."""
    if b1_map is None:
        return np.full(int(keep.sum()), np.nan, dtype=np.float32)
    b1_map = np.asarray(b1_map, dtype=np.float32)
    if b1_map.shape != keep.shape:
        raise ValueError(
            f"b1_map shape {b1_map.shape} does not match the image shape {keep.shape}"
        )
    return b1_map[keep]


def b1_window(
    b1_tolerance: float = 0.05, n_b1: int = 41, b1_range: tuple[float, float] = B1_RANGE
) -> tuple[float, float]:
    """``(tolerance, step)`` of a B1 prior on a dictionary of ``n_b1`` B1 values:
    the search keeps B1 within ``tolerance`` of the prior, at least two grid
    steps, so every voxel keeps a few atoms."""
    step = (float(b1_range[1]) - float(b1_range[0])) / (int(n_b1) - 1)
    return max(float(b1_tolerance), 2.0 * step), step


def _allowed_b1(
    prior: torch.Tensor, b1_grid: np.ndarray, tolerance: float
) -> torch.Tensor:
    """(n, n_b1) mask of dictionary B1 values within :func:`b1_window` of the
    prior; a NaN prior allows every B1."""
    grid = torch.from_numpy(b1_grid.astype(np.float32))
    tol, _ = b1_window(tolerance, len(b1_grid), (b1_grid[0], b1_grid[-1]))
    return ((grid[None, :] - prior[:, None]).abs() <= tol) | torch.isnan(prior)[:, None]


def _fit_with_b1_prior(
    echoes: np.ndarray,
    keep: np.ndarray,
    fit_block: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
    names: tuple[str, ...],
    b1_grid: np.ndarray,
    b1_map: np.ndarray | None,
    b1_tolerance: float,
    b1_smoothing_voxels: float | None,
    block_size: int,
    progress: Callable[[int, int], None] | None,
) -> dict[str, np.ndarray]:
    """One pass with the given prior, or two passes with a smoothed-B1 prior.

    The second pass only revisits the voxels whose first-pass B1 lies
    outside the interval allowed by the prior (or is NaN): elsewhere the
    constrained optimum is the unconstrained one already found.
    """
    two_pass = b1_map is None and b1_smoothing_voxels is not None and keep.ndim >= 2
    if not two_pass:
        return _run_blocks(
            echoes,
            keep,
            _b1_prior(b1_map, keep),
            fit_block,
            names,
            block_size,
            progress,
        )
    first = _run_blocks(
        echoes, keep, _b1_prior(None, keep), fit_block, names, block_size, progress
    )
    prior = smooth_b1_map(first["b1"], b1_smoothing_voxels)
    tol, step = b1_window(b1_tolerance, len(b1_grid), (b1_grid[0], b1_grid[-1]))
    inside = tol - step
    with np.errstate(invalid="ignore"):
        redo = keep & np.isfinite(prior) & ~(np.abs(first["b1"] - prior) <= inside)
    if redo.any():
        second = _run_blocks(
            echoes, redo, _b1_prior(prior, redo), fit_block, names, block_size, progress
        )
        for name in names:
            first[name][redo] = second[name][redo]
    return first


def _run_blocks(
    echoes: np.ndarray,
    keep: np.ndarray,
    prior: np.ndarray,
    fit_block: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
    names: tuple[str, ...],
    block_size: int,
    progress: Callable[[int, int], None] | None,
) -> dict[str, np.ndarray]:
    """Apply ``fit_block`` to the kept voxels in blocks (on all cores); NaN elsewhere."""
    voxels = echoes[keep]
    n = voxels.shape[0]
    flat = {name: np.full(n, np.nan, dtype=np.float32) for name in names}
    lock = threading.Lock()
    done = [0]

    def work(block: slice) -> None:
        with torch.inference_mode():
            data = torch.from_numpy(np.ascontiguousarray(voxels[block]))
            result = fit_block(data, torch.from_numpy(prior[block]))
            for name in names:
                flat[name][block] = result[name].numpy()
        if progress is not None:
            with lock:
                done[0] += block.stop - block.start
                progress(done[0], n)

    run_in_blocks(n, block_size, work)
    out = {}
    for name in names:
        image = np.full(keep.shape, np.nan, dtype=np.float32)
        image[keep] = flat[name]
        out[name] = image
    return out


def smooth_b1_map(
    b1: np.ndarray,
    sigma_voxels: float = 4.0,
    reject_deviation: float | None = 0.1,
    min_support: float = 0.2,
) -> np.ndarray:
    """Robust NaN-aware in-plane Gaussian smoothing of a B1 map.

    The transmit field varies slowly in space, so a smoothed B1 from a
    first fit is a good prior for a second one (``b1_map`` of the fits).
    Smoothing is applied over the first two axes only (2D slices, thick
    slice direction untouched); NaN voxels are excluded by normalised
    convolution, then voxels further than ``reject_deviation`` from the
    smoothed map (B1 taken in the wrong basin) are excluded and the map is
    smoothed again. Voxels where less than ``min_support`` of the kernel
    weight had valid neighbours are NaN.

    Parameters
    ----------
    b1 : ndarray, shape (nx, ny, ...)
    sigma_voxels : float
        Gaussian width in voxels.
    reject_deviation : float or None
        Outlier threshold of the second smoothing (None: single smoothing).
    min_support : float
        Minimum fraction of valid kernel weight.

    Returns
    -------
    ndarray, float32, same shape as ``b1``
    """
    from scipy.ndimage import gaussian_filter

    b1 = np.asarray(b1, dtype=np.float64)
    if b1.ndim < 2:
        raise ValueError(
            f"B1 smoothing needs an image of at least 2 dimensions, got shape {b1.shape}"
        )
    sigma = [sigma_voxels, sigma_voxels] + [0.0] * (b1.ndim - 2)

    def smooth(valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        weight = gaussian_filter(valid.astype(np.float64), sigma, mode="constant")
        total = gaussian_filter(np.where(valid, b1, 0.0), sigma, mode="constant")
        with np.errstate(invalid="ignore", divide="ignore"):
            return total / weight, weight

    valid = np.isfinite(b1)
    smoothed, weight = smooth(valid)
    if reject_deviation is not None:
        with np.errstate(invalid="ignore"):
            valid &= np.abs(b1 - smoothed) <= reject_deviation
        smoothed, weight = smooth(valid)
    return np.where(weight >= min_support, smoothed, np.nan).astype(np.float32)


# --------------------------------------------------------------------------
# single-component EMC fit
# --------------------------------------------------------------------------


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
    t2_grid = _log_grid(t2_range_s, n_t2, "T2")
    b1_grid = _lin_grid(b1_range, n_b1, "B1")
    table = _epg_table(
        t2_grid,
        t1_s,
        b1_grid,
        esp,
        te.size,
        refocus_deg,
        excite_deg,
        _profile(slice_profile),
    )
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
        allowed = _allowed_b1(prior, b1_grid, b1_tolerance)
        best_score, best = (
            score.masked_fill(~allowed[:, :, None], -np.inf).view(n, -1).max(dim=1)
        )
        b, t = best // n_t2, best % n_t2
        t_edge = (t == 0) | (t == n_t2 - 1)
        b_edge = (b == 0) | (b == n_b1 - 1)
        stencil = _stencil(lambda bi, ti: score[rows, bi, ti], b, t, n_b1, n_t2)
        b_off, t_off = _peak_offset(stencil, b_edge, t_edge)
        t_pos, b_pos = t + t_off, b + b_off
        curve = _bilinear_curves(table_t, b_pos, t_pos)
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
    return _fit_with_b1_prior(
        echoes,
        keep,
        fit_block,
        names,
        b1_grid,
        b1_map,
        b1_tolerance,
        b1_smoothing_voxels,
        block_size,
        progress,
    )


# --------------------------------------------------------------------------
# two-component water/fat fit
# --------------------------------------------------------------------------


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
    profile = _profile(slice_profile)
    b1 = np.asarray(b1_grid, dtype=np.float64)
    water = _epg_table(
        t2_grid_s, water_t1_s, b1, esp, te.size, refocus_deg, excite_deg, profile
    )
    fat = _epg_table(
        np.array([fat_t2_s]),
        fat_t1_s,
        b1,
        esp,
        te.size,
        refocus_deg,
        excite_deg,
        profile,
    )[:, 0]
    return water * _saturation(tr_s, water_t1_s), fat * _saturation(tr_s, fat_t1_s)


def fit_t2_water_fat(
    echoes: np.ndarray,
    te_s: np.ndarray,
    mask: np.ndarray | None = None,
    fat_t2_s: float = FAT_T2_S,
    fat_t1_s: float = FAT_T1_S,
    water_t1_s: float = WATER_T1_S,
    t2_range_s: tuple[float, float] = WATER_T2_RANGE_S,
    n_t2: int = 64,
    b1_range: tuple[float, float] = B1_RANGE,
    n_b1: int = 41,
    refocus_deg: float = 180.0,
    excite_deg: float = 90.0,
    slice_profile: ProfileArg = "default",
    tr_s: float | None = None,
    b1_map: np.ndarray | None = None,
    b1_tolerance: float = 0.05,
    b1_smoothing_voxels: float | None = 4.0,
    noise_fraction: float = 0.05,
    block_size: int = 2048,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Water T2, fat fraction, B1 and PD with a two-component EPG model.

    The signal is ``a * w(T2w, B1) + b * f(B1)`` with ``w`` and ``f`` the EPG
    echo trains of water (free T2) and fat (fixed T2 and T1) for unit
    proton density (Marty et al., 2016). For every dictionary atom
    (T2w, B1) the non-negative least-squares amplitudes have a closed form:
    with the water atom orthogonalised against the fat atom and both
    normalised, the explained energy of the unconstrained solution is
    ``q**2 + p**2`` (``q``, ``p``: inner products of the data with them),
    valid when both amplitudes are non-negative; otherwise the optimum is
    the better of the water-only and fat-only fits, which are feasible for
    every atom (the water-only score follows from ``q`` and ``p``). The
    search is thus two matrix products and maxima: a coarse pass over
    every other atom, then the full grid in two 5 x 5 windows (around the
    best coarse atom and the best one in another B1 basin, since
    refocusing angles either side of 180 degrees can give near-identical
    echo trains). The winner is refined between grid points
    by a quadratic through its 3 x 3 neighbourhood and the amplitudes are
    solved again on the interpolated curves.

    Parameters
    ----------
    echoes : ndarray, shape (..., n_echoes)
        Magnitude images, echo last; any leading spatial shape.
    te_s : ndarray, shape (n_echoes,)
        Echo times (s), multiples of the echo spacing.
    mask : ndarray of bool, shape (...), optional
        Voxels to fit; others are NaN.
    fat_t2_s, fat_t1_s, water_t1_s : float
        Fixed relaxation times (s); defaults from the module docstring.
    t2_range_s, n_t2 : water T2 range (s) and number of log-spaced steps.
    b1_range, n_b1 : B1 range and number of linear steps.
    refocus_deg, excite_deg : float
        Nominal refocusing and excitation angles (degrees).
    slice_profile : 'default', SliceProfile or None
        Slice profile of the simulation (None: ideal slice).
    tr_s : float, optional
        Repetition time (s); when given, the PD of each component is
        corrected for its incomplete T1 recovery ``1 - exp(-TR/T1)``.
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
        ``block_size * n_t2 * n_b1 * 12`` bytes).
    progress : callable(done, total), optional
        Called after each block of each pass.

    Returns
    -------
    dict
        ``water_t2_s``, ``ff_percent`` (fat amplitude over the sum of the
        amplitudes, in [0, 100]), ``b1``, ``pd`` (sum of the amplitudes):
        float32 arrays of the spatial shape. Water T2 is NaN where the fit
        has no water (fat only) or lands on a T2 bound; B1 is NaN on a B1
        bound.
    """
    echoes, te = validate_mese(echoes, te_s)
    keep = signal_mask(echoes, mask, noise_fraction)
    t2_grid = _log_grid(t2_range_s, n_t2, "water T2")
    b1_grid = _lin_grid(b1_range, n_b1, "B1")
    water, fat = water_fat_tables(
        te,
        t2_grid,
        b1_grid,
        fat_t2_s,
        fat_t1_s,
        water_t1_s,
        refocus_deg,
        excite_deg,
        slice_profile,
        tr_s,
    )
    fat_unit = fat / np.linalg.norm(fat, axis=-1, keepdims=True)
    water_norm = np.linalg.norm(water, axis=-1)
    overlap = np.einsum("bte,be->bt", water, fat_unit)
    water_orth = water - overlap[..., None] * fat_unit[:, None, :]
    orth_norm = np.linalg.norm(water_orth, axis=-1)
    if np.any(orth_norm < 1e-6 * water_norm):
        raise ValueError(
            "water and fat echo trains are indistinguishable: lower the water T2 range or change fat T2"
        )
    # b >= 0  <=>  p >= q * overlap / |w_orth|   (q = <s, w_orth>/|w_orth|, p = <s, f_unit>)
    ratio = torch.from_numpy((overlap / orth_norm).astype(np.float32))
    w_orth = torch.from_numpy((water_orth / orth_norm[..., None]).astype(np.float32))
    # r = <s, w/|w|> = q * |w_orth|/|w| + p * overlap/|w|: no third product needed
    r_from_q = torch.from_numpy((orth_norm / water_norm).astype(np.float32))
    r_from_p = torch.from_numpy((overlap / water_norm).astype(np.float32))
    f_unit = torch.from_numpy(fat_unit.astype(np.float32))
    water_t = torch.from_numpy(water.astype(np.float32))
    fat_t = torch.from_numpy(fat.astype(np.float32))
    # coarse search on every other atom, then the full grid in windows
    n_bc, n_tc = (n_b1 + 1) // 2, (n_t2 + 1) // 2
    coarse_b = torch.arange(0, n_b1, 2)
    coarse_t = torch.arange(0, n_t2, 2)
    # coarse atoms first, so that their scores are a contiguous slice
    is_coarse = torch.zeros(n_b1, n_t2, dtype=torch.bool)
    is_coarse[::2, ::2] = True
    order = torch.cat(
        [
            torch.nonzero(is_coarse.view(-1)).view(-1),
            torch.nonzero(~is_coarse.view(-1)).view(-1),
        ]
    )
    column = torch.empty_like(order)
    column[order] = torch.arange(order.numel())
    n_coarse = n_bc * n_tc
    w_orth_ordered = w_orth.reshape(-1, te.size)[order]
    ratio_c = ratio[::2, ::2].contiguous()
    r_from_q_c = r_from_q[::2, ::2].contiguous()
    r_from_p_c = r_from_p[::2, ::2].contiguous()
    ratio_flat = ratio.reshape(-1)
    window = torch.arange(-3, 4)
    inner = window.numel() - 2
    log_step = np.log(t2_grid[1] / t2_grid[0])
    b1_step = b1_grid[1] - b1_grid[0]
    nan = torch.tensor(float("nan"))

    def both_energy(
        q: torch.Tensor, p: torch.Tensor, ratio: torch.Tensor
    ) -> torch.Tensor:
        """Energy of the two-amplitude solution, -1 where an amplitude is negative."""
        energy = q * q
        energy += p * p
        energy.masked_fill_((q < 0) | (q * ratio > p), -1.0)
        return energy

    def fit_block(s: torch.Tensor, prior: torch.Tensor) -> dict[str, torch.Tensor]:
        n = s.shape[0]
        rows = torch.arange(n)
        allowed = _allowed_b1(prior, b1_grid, b1_tolerance)
        p = s @ f_unit.T
        q_all = s @ w_orth_ordered.T
        q_c = q_all[:, :n_coarse].view(n, n_bc, n_tc)
        p_c = p[:, ::2, None]
        energy = both_energy(q_c, p_c, ratio_c)
        r_c = q_c * r_from_q_c
        r_c += p_c * r_from_p_c
        energy = torch.maximum(energy, r_c.clamp_(min=0).square_())
        del r_c
        # centres of two windows: the best coarse atom and the best one in
        # another B1 basin (refocusing angles either side of 180 degrees
        # can give near-identical echo trains)
        per_b1, per_b1_t = energy.max(dim=2)
        del energy
        per_b1.masked_fill_(~allowed[:, ::2], -2.0)
        first_b = per_b1.argmax(dim=1)
        far = (torch.arange(n_bc)[None, :] - first_b[:, None]).abs() > 3
        second_b = torch.where(far, per_b1, torch.full_like(per_b1, -3.0)).argmax(dim=1)
        centre_b = torch.stack([first_b, second_b], dim=1)
        centre_t = per_b1_t.gather(1, centre_b)
        b_idx = (coarse_b[centre_b][:, :, None] + window).clamp(0, n_b1 - 1)
        t_idx = (coarse_t[centre_t][:, :, None] + window).clamp(0, n_t2 - 1)
        flat = (b_idx[:, :, :, None] * n_t2 + t_idx[:, :, None, :]).view(n, -1)
        shape = (n, 2, window.numel(), window.numel())
        q = q_all.gather(1, column[flat]).view(shape)
        del q_all
        p_win = p.gather(1, b_idx.view(n, -1)).view(n, 2, -1)[:, :, :, None]
        r = q * r_from_q.view(-1)[flat].view(shape) + p_win * r_from_p.view(-1)[
            flat
        ].view(shape)
        excluded = ~allowed.gather(1, b_idx.view(n, -1)).view(n, 2, -1)[
            :, :, 1:-1, None
        ]
        energy_both = both_energy(q, p_win, ratio_flat[flat].view(shape))[
            :, :, 1:-1, 1:-1
        ].masked_fill(excluded, -1.0)
        energy_water = (r.clamp(min=0) ** 2)[:, :, 1:-1, 1:-1].masked_fill(
            excluded, -1.0
        )
        both_e, both_i = energy_both.reshape(n, -1).max(dim=1)
        water_e, water_i = energy_water.reshape(n, -1).max(dim=1)
        fat_p, fat_b = p.masked_fill(~allowed, -np.inf).max(dim=1)
        fat_e = fat_p.clamp(min=0) ** 2
        # 0: water and fat, 1: water only, 2: fat only
        kind = torch.zeros(n, dtype=torch.long)
        kind[water_e > both_e] = 1
        kind[(fat_e > both_e) & (fat_e >= water_e)] = 2
        local = torch.where(kind == 1, water_i, both_i)
        wk = local // (inner * inner)
        wb = (local // inner) % inner + 1
        wt = local % inner + 1
        b = torch.where(kind == 2, fat_b, b_idx[rows, wk, wb])
        t = t_idx[rows, wk, wt]

        # refinement on the smooth (unconstrained) score of the winning model
        water_only = kind == 1
        unconstrained = q * q + p_win * p_win
        r_sq = r * r
        stencil = torch.stack(
            [
                torch.stack(
                    [
                        torch.where(
                            water_only,
                            r_sq[rows, wk, wb + db, wt + dt],
                            unconstrained[rows, wk, wb + db, wt + dt],
                        )
                        for dt in (-1, 0, 1)
                    ],
                    dim=1,
                )
                for db in (-1, 0, 1)
            ],
            dim=1,
        )
        t_edge = (t == 0) | (t == n_t2 - 1)
        b_edge = (b == 0) | (b == n_b1 - 1)
        b_off, t_off = _peak_offset(stencil, b_edge, t_edge)
        fat_sq = p * p
        b_off_fat = _parabolic_offset(
            fat_sq[rows, (b - 1).clamp(min=0)],
            fat_sq[rows, b],
            fat_sq[rows, (b + 1).clamp(max=n_b1 - 1)],
        )
        b_off = torch.where(kind == 2, torch.where(b_edge, 0.0, b_off_fat), b_off)
        t_pos = t + t_off
        b_pos = b + b_off

        # amplitudes on the interpolated curves (non-negative, closed form)
        w = _bilinear_curves(water_t, b_pos, t_pos)
        f = _linear_curves(fat_t, b_pos)
        ww, ff, wf = (w * w).sum(1), (f * f).sum(1), (w * f).sum(1)
        sw, sf = (s * w).sum(1), (s * f).sum(1)
        det = (ww * ff - wf * wf).clamp(min=1e-20)
        a_both = (ff * sw - wf * sf) / det
        b_both = (ww * sf - wf * sw) / det
        a_water = (sw / ww).clamp(min=0)
        b_fat = (sf / ff).clamp(min=0)
        interior = (a_both >= 0) & (b_both >= 0)
        water_better = a_water * sw >= b_fat * sf
        amp_w = torch.where(interior, a_both, torch.where(water_better, a_water, 0.0))
        amp_f = torch.where(interior, b_both, torch.where(water_better, 0.0, b_fat))
        amp_w = torch.where(kind == 2, 0.0, amp_w)
        amp_f = torch.where(kind == 2, b_fat, amp_f)
        total = amp_w + amp_f
        ok = (total > 0) & allowed.any(dim=1)
        ff_pct = torch.where(
            ok, (100.0 * amp_f / torch.where(ok, total, 1.0)).clamp(0.0, 100.0), nan
        )
        t2 = torch.exp(np.log(t2_grid[0]) + t_pos * log_step)
        b1 = b1_grid[0] + b_pos * b1_step
        no_water = (kind == 2) | (amp_w <= 0)
        return {
            "water_t2_s": torch.where(no_water | t_edge | ~ok, nan, t2).float(),
            "ff_percent": ff_pct.float(),
            "b1": torch.where(b_edge | ~ok, nan, b1).float(),
            "pd": torch.where(ok, total, nan).float(),
        }

    names = ("water_t2_s", "ff_percent", "b1", "pd")
    return _fit_with_b1_prior(
        echoes,
        keep,
        fit_block,
        names,
        b1_grid,
        b1_map,
        b1_tolerance,
        b1_smoothing_voxels,
        block_size,
        progress,
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
# simulation and description
# --------------------------------------------------------------------------


def simulate_mese(
    pd: np.ndarray,
    ff_percent: np.ndarray,
    water_t2_s: np.ndarray,
    b1: np.ndarray,
    te_s: np.ndarray,
    fat_t2_s: float = FAT_T2_S,
    fat_t1_s: float = FAT_T1_S,
    water_t1_s: float = WATER_T1_S,
    refocus_deg: float = 180.0,
    excite_deg: float = 90.0,
    slice_profile: ProfileArg = "default",
    tr_s: float | None = None,
) -> np.ndarray:
    """Noiseless multi-echo spin echo of the two-component water/fat model.

    The forward model of :func:`fit_t2_water_fat`:
    ``pd * ((1 - ff) * w(T2w, B1) + ff * f(B1))``. The EPG curves are
    computed on a grid spanning the input ranges (3 % steps in T2, 0.02
    in B1) and interpolated bilinearly (in log T2), which keeps the error
    below 1e-4 of PD while making whole volumes take a fraction of a
    second. Voxels with ``pd == 0`` are zero whatever their other values.

    Parameters
    ----------
    pd, ff_percent, water_t2_s, b1 : array_like
        Proton density, fat fraction (percent), water T2 (s) and B1 scale;
        broadcast against each other.
    te_s : array_like, shape (n_echoes,)
        Echo times (s), multiples of the echo spacing.
    fat_t2_s, fat_t1_s, water_t1_s, refocus_deg, excite_deg, slice_profile, tr_s
        As in :func:`fit_t2_water_fat`.

    Returns
    -------
    ndarray, shape (*broadcast_shape, n_echoes), float32
    """
    te = np.asarray(te_s, dtype=np.float64)
    if te.ndim != 1 or te.size < 1:
        raise ValueError("echo times must be a non-empty 1D array")
    echo_spacing(te)
    pd_b, ff_b, t2_b, b1_b = np.broadcast_arrays(
        *(np.asarray(a, dtype=np.float64) for a in (pd, ff_percent, water_t2_s, b1))
    )
    out = np.zeros(pd_b.shape + (te.size,), dtype=np.float32)
    tissue = pd_b != 0
    if not tissue.any():
        return out
    t2 = t2_b[tissue]
    b1v = b1_b[tissue]
    ff = ff_b[tissue] / 100.0
    if not (
        np.all(np.isfinite(t2))
        and np.all(t2 > 0)
        and np.all(np.isfinite(b1v))
        and np.all(b1v > 0)
    ):
        raise ValueError(
            "water T2 and B1 must be positive and finite where PD is non-zero"
        )
    if not np.all((ff >= -1e-6) & (ff <= 1 + 1e-6)):
        raise ValueError(
            "fat fraction must lie in [0, 100] percent where PD is non-zero"
        )
    ff = np.clip(ff, 0.0, 1.0)
    log_lo, log_hi = np.log(t2.min()), np.log(t2.max())
    n_t = max(2, int(np.ceil((log_hi - log_lo) / 0.03)) + 1)
    n_b = max(2, int(np.ceil((b1v.max() - b1v.min()) / 0.02)) + 1)
    t2_grid = (
        np.exp(np.linspace(log_lo, log_hi, n_t))
        if log_hi > log_lo
        else np.full(2, t2[0])
    )
    b1_grid = (
        np.linspace(b1v.min(), b1v.max(), n_b)
        if b1v.max() > b1v.min()
        else np.full(2, b1v[0])
    )
    water, fat = water_fat_tables(
        te,
        t2_grid,
        b1_grid,
        fat_t2_s,
        fat_t1_s,
        water_t1_s,
        refocus_deg,
        excite_deg,
        slice_profile,
        tr_s,
    )
    t_pos = (
        (np.log(t2) - log_lo) / (log_hi - log_lo) * (n_t - 1)
        if log_hi > log_lo
        else np.zeros_like(t2)
    )
    b_pos = (
        (b1v - b1_grid[0]) / (b1_grid[-1] - b1_grid[0]) * (n_b - 1)
        if b1_grid[-1] > b1_grid[0]
        else np.zeros_like(b1v)
    )
    with torch.inference_mode():
        b_t = torch.from_numpy(b_pos.astype(np.float32))
        w = _bilinear_curves(
            torch.from_numpy(water.astype(np.float32)),
            b_t,
            torch.from_numpy(t_pos.astype(np.float32)),
        )
        f = _linear_curves(torch.from_numpy(fat.astype(np.float32)), b_t)
        ff_t = torch.from_numpy(ff.astype(np.float32))[:, None]
        signal = torch.from_numpy(pd_b[tissue].astype(np.float32))[:, None] * (
            (1 - ff_t) * w + ff_t * f
        )
    out[tissue] = signal.numpy()
    return out


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
    profile = _profile(slice_profile)
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
