"""Spatial regularisation of the field map of water-fat separation.

Every voxel has a few candidate fields (the local minima of its VARPRO
residual, :func:`bids_muscle.qmri.varpro.residual_on_grid`); these functions
choose among them the field map that is spatially smooth: quality-guided
region growing (Yu et al., Magn Reson Med 2005; 54:1032-1039), one global
branch per connected tissue component, and the penalised re-selection of
the candidate nearest to a smoothed prior. Fields are in Hz; ``period_hz``
is the aliasing period of equally spaced echoes (None otherwise) and
``swap_hz`` the distance between a true and a water-fat swapped field.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from bids_muscle.qmri.varpro import residual_on_grid


def local_minima(residual, n_keep, periodic):
    """Positions (fractional grid index) and values of the deepest minima."""
    n, g = residual.shape
    if periodic:
        left = np.roll(residual, 1, axis=1)
        right = np.roll(residual, -1, axis=1)
    else:
        left = np.concatenate([np.full((n, 1), np.inf, residual.dtype), residual[:, :-1]], axis=1)
        right = np.concatenate([residual[:, 1:], np.full((n, 1), np.inf, residual.dtype)], axis=1)
    is_min = (residual < left) & (residual <= right)
    is_min[np.arange(n), np.argmin(residual, axis=1)] = True
    values = np.where(is_min, residual, np.inf)
    k = min(n_keep, g)
    idx = np.argpartition(values, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(values, idx, axis=1)
    order = np.argsort(vals, axis=1)
    idx = np.take_along_axis(idx, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    rows = np.arange(n)[:, None]
    lv = left[rows, idx]
    rv = right[rows, idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = lv - 2 * vals + rv
        usable = np.isfinite(denom) & (denom > 0)
        offset = np.where(usable, 0.5 * (lv - rv) / denom, 0.0)
        offset = np.clip(np.nan_to_num(offset), -0.5, 0.5)
        refined = np.where(usable, vals - 0.25 * (lv - rv) * offset, vals)
    valid = np.isfinite(vals)
    return idx + offset, np.where(valid, refined, np.inf), valid


def _neighbour_sum(x: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    for axis in range(x.ndim):
        if x.shape[axis] < 2:
            continue
        hi = [slice(None)] * x.ndim
        lo = [slice(None)] * x.ndim
        hi[axis] = slice(1, None)
        lo[axis] = slice(None, -1)
        out[tuple(lo)] += x[tuple(hi)]
        out[tuple(hi)] += x[tuple(lo)]
    return out


def nearest_candidate(cand_hz, cand_cost, valid, prior_hz, period_hz, swap_hz, penalty):
    """Pick, per voxel, the candidate minimising residual + smoothness penalty."""
    if period_hz is not None:
        shifted = cand_hz + period_hz * np.round((prior_hz[:, None] - cand_hz) / period_hz)
    else:
        shifted = cand_hz
    cost = cand_cost + penalty * ((shifted - prior_hz[:, None]) / swap_hz) ** 2
    cost = np.where(valid, cost, np.inf)
    pick = np.argmin(cost, axis=1)
    return np.take_along_axis(shifted, pick[:, None], axis=1)[:, 0]


def grow_field_map(cand_hz, cand_cost, valid, quality, weight, tissue, period_hz, swap_hz, penalty,
                    n_levels=5):
    """Quality-guided region growing of a smooth field map over residual minima.

    All arrays are on the spatial grid (``cand_*`` with a trailing candidate
    axis). Every connected tissue component is seeded at its best voxel and
    grown front by front; a front voxel takes the candidate closest (with the
    residual as tie-breaker) to the weighted mean of its assigned neighbours.
    Voxels of higher quality are admitted first.
    """
    shape = tissue.shape
    labels, n_comp = ndimage.label(tissue)
    field = np.zeros(shape, dtype=np.float64)
    assigned = np.zeros(shape, dtype=bool)
    if n_comp == 0:
        return field, assigned, labels, 0
    seeds = ndimage.maximum_position(np.where(tissue, quality, -np.inf), labels, index=np.arange(1, n_comp + 1))
    for seed in seeds:
        seed = tuple(int(i) for i in np.atleast_1d(seed))
        field[seed] = cand_hz[seed][0]
        assigned[seed] = True
    q_tissue = quality[tissue]
    thresholds = np.quantile(q_tissue, np.linspace(1.0, 0.0, n_levels + 1)[1:])
    w = np.where(tissue, weight, 0.0)
    for thr in thresholds:
        allowed = tissue & (quality >= thr)
        while True:
            wa = np.where(assigned, w, 0.0)
            wsum = _neighbour_sum(wa)
            front = allowed & ~assigned & (wsum > 0)
            if not front.any():
                break
            fsum = _neighbour_sum(wa * field)
            prior = fsum[front] / wsum[front]
            field[front] = nearest_candidate(cand_hz[front], cand_cost[front], valid[front], prior,
                                              period_hz, swap_hz, penalty)
            assigned |= front
    return field, assigned, labels, n_comp


def choose_global_branch(field, residual_curves, weight, labels, n_comp, psi_grid_hz, period_hz,
                          tie_tolerance, use_residual):
    """Shift each component's field by the constant that minimises the total residual.

    The residual of a water-fat swapped but smooth map differs from the true
    one only through the spectral model. With ``use_residual`` (echo times
    that can tell water from fat), shifts whose total residual is within
    ``tie_tolerance`` (fraction of the component's signal energy) of the best
    are ties; otherwise (e.g. symmetric in/out-of-phase echoes) every clear
    minimum of the total residual is a tie. Among ties the field closest to
    0 Hz wins: scanners set their frequency on water.
    """
    step = psi_grid_hz[1] - psi_grid_hz[0]
    g = psi_grid_hz.size
    shifts = np.arange(g) if period_hz is not None else np.arange(-(g // 2), g // 2 + 1)
    in_comp = labels > 0
    lab = labels[in_comp]
    f = field[in_comp]
    curves = residual_curves[in_comp]
    wv = weight[in_comp]
    base = np.round((f - psi_grid_hz[0]) / step).astype(np.int64)
    totals = np.zeros((n_comp + 1, shifts.size))
    for j, s in enumerate(shifts):
        idx = base + s
        if period_hz is not None:
            idx %= g
            pen = 0.0
        else:
            pen = ((idx < 0) | (idx >= g)) * 1.0
            idx = np.clip(idx, 0, g - 1)
        vals = (curves[np.arange(idx.size), idx] + pen) * wv
        totals[:, j] = np.bincount(lab, weights=vals, minlength=n_comp + 1)
    energy = np.bincount(lab, weights=wv, minlength=n_comp + 1)
    shift_hz = np.zeros(n_comp + 1)
    for comp in range(1, n_comp + 1):
        e = totals[comp]
        if energy[comp] <= 0:
            continue
        mins = np.flatnonzero((e <= np.roll(e, 1)) & (e <= np.roll(e, -1))) if period_hz is not None else \
            np.flatnonzero(np.r_[True, e[1:] <= e[:-1]] & np.r_[e[:-1] <= e[1:], True])
        band = tie_tolerance * energy[comp] if use_residual else 0.5 * (e.mean() - e.min())
        near = mins[e[mins] <= e.min() + band]
        sel = lab == comp
        centre = np.average(f[sel], weights=np.maximum(wv[sel], 1e-12))
        cand_shift = shifts[near] * step
        if period_hz is not None:
            cand_shift = (cand_shift + 0.5 * period_hz) % period_hz - 0.5 * period_hz
            cand_shift = cand_shift + period_hz * np.round((-centre - cand_shift) / period_hz)
        shift_hz[comp] = cand_shift[np.argmin(np.abs(centre + cand_shift))]
    out = field.copy()
    out[in_comp] += shift_hz[lab]
    return out


def swap_discriminability(te, c, psi_grid_hz, phase_constrained):
    """Residual of the best swapped fit to a noiseless 30 % fat signal.

    Near 0 for symmetric in-phase/out-of-phase echoes, where the residual
    cannot tell a water-fat swap from the truth.
    """
    probe = (0.7 + 0.3 * c)[None, :].astype(np.complex64)
    res, _ = residual_on_grid(probe, te, c, psi_grid_hz, [0.0], phase_constrained)
    _, vals, valid = local_minima(res, 2, True)
    return float(vals[0, 1]) if valid[0, 1] else 1.0


def fill_unassigned(field, assigned):
    """Unassigned voxels take the field of the nearest assigned one."""
    if assigned.all() or not assigned.any():
        return field
    idx = ndimage.distance_transform_edt(~assigned, return_distances=False, return_indices=True)
    return field[tuple(idx)]


def smooth_weighted(field, weight, sigma):
    """Gaussian smoothing weighted by ``weight`` (normalised convolution); the field itself where the weight vanishes."""
    num = ndimage.gaussian_filter(field * weight, sigma, mode="nearest")
    den = ndimage.gaussian_filter(weight, sigma, mode="nearest")
    return np.where(den > 1e-12 * max(float(weight.max()), 1e-30), num / np.maximum(den, 1e-30), field)


def block_sum(x, factors):
    """Sum complex signals over blocks (spatial axes, trailing echo axis kept)."""
    pads = [(0, (-n) % f) for n, f in zip(x.shape[:-1], factors)] + [(0, 0)]
    x = np.pad(x, pads)
    shape = []
    for n, f in zip(x.shape[:-1], factors):
        shape += [n // f, f]
    x = x.reshape(shape + [x.shape[-1]])
    return x.sum(axis=tuple(range(1, 2 * len(factors), 2)))


def upsample(field, factors, shape):
    """A coarse field (from :func:`block_sum` blocks) linearly interpolated to the full grid ``shape``."""
    if all(f == 1 for f in factors):
        return field[tuple(slice(0, n) for n in shape)]
    big = ndimage.zoom(field, factors, order=1, mode="nearest", grid_mode=True)
    return big[tuple(slice(0, n) for n in shape)]

