"""B1 prior of the multi-echo spin echo fits: the window a prior allows, the
two-pass fit with a smoothed first-pass B1, and the block runner the fits share.

The transmit field varies slowly in space, while refocusing angles either side
of 180 degrees can give near-identical echo trains; a prior B1 (a measured map,
or the smoothed B1 of a first pass) restricts every voxel's dictionary search
to B1 values near it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import torch

from bids_muscle.qmri.blocks import run_in_blocks
from bids_muscle.qmri.t2_dictionary import B1_RANGE

#: ``fit_block(signals (n, E), prior_b1 (n,)) -> {name: (n,) tensor}``
BlockFit = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


def prior_of_voxels(b1_map: np.ndarray | None, keep: np.ndarray) -> np.ndarray:
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


def allowed_b1(
    prior: torch.Tensor, b1_grid: np.ndarray, tolerance: float
) -> torch.Tensor:
    """(n, n_b1) mask of dictionary B1 values within :func:`b1_window` of the
    prior; a NaN prior allows every B1."""
    grid = torch.from_numpy(b1_grid.astype(np.float32))
    tol, _ = b1_window(tolerance, len(b1_grid), (b1_grid[0], b1_grid[-1]))
    return ((grid[None, :] - prior[:, None]).abs() <= tol) | torch.isnan(prior)[:, None]


def fit_with_b1_prior(
    echoes: np.ndarray,
    keep: np.ndarray,
    fit_block: BlockFit,
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
        return run_blocks(
            echoes,
            keep,
            prior_of_voxels(b1_map, keep),
            fit_block,
            names,
            block_size,
            progress,
        )
    first = run_blocks(
        echoes, keep, prior_of_voxels(None, keep), fit_block, names, block_size, progress
    )
    prior = smooth_b1_map(first["b1"], b1_smoothing_voxels)
    tol, step = b1_window(b1_tolerance, len(b1_grid), (b1_grid[0], b1_grid[-1]))
    inside = tol - step
    with np.errstate(invalid="ignore"):
        redo = keep & np.isfinite(prior) & ~(np.abs(first["b1"] - prior) <= inside)
    if redo.any():
        second = run_blocks(
            echoes, redo, prior_of_voxels(prior, redo), fit_block, names, block_size, progress
        )
        for name in names:
            first[name][redo] = second[name][redo]
    return first


def run_blocks(
    echoes: np.ndarray,
    keep: np.ndarray,
    prior: np.ndarray,
    fit_block: BlockFit,
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
