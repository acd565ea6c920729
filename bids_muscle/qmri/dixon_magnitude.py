"""Fat fraction from magnitude data: scanner water and fat images, and
magnitude-only multi-echo gradient echo (magnitude Dixon)."""

from __future__ import annotations

import numpy as np

from bids_muscle.qmri.fat_spectrum import check_echo_times, check_field_strength, check_separable, fat_signal_basis
from bids_muscle.qmri.varpro import CHUNK_VOXELS, parabola_offset


def fat_fraction_from_water_fat(water, fat, in_phase=None, noise_sigma=None, mask=None) -> np.ndarray:
    """Fat fraction (percent) from water and fat images.

    Parameters
    ----------
    water, fat : ndarray
        Water and fat images (magnitude as exported by scanners, or complex).
    in_phase : ndarray, optional
        Magnitude of the complex sum ``|W + F|`` (e.g. the scanner's in-phase
        image). When given, magnitude discrimination (Liu et al. 2007) is
        used: ``100 (1 - |W| / |W+F|)`` where water dominates and
        ``100 |F| / |W+F|`` where fat dominates. When the inputs are complex
        their sum is used automatically.
    noise_sigma : float, optional
        Standard deviation of the complex noise of the water and fat images;
        when given (and no in-phase image), the Rician noise floor is removed
        from the smaller component, ``sqrt(max(m^2 - 2 sigma^2, 0))``, before
        ``|F| / (|W| + |F|)``.
    mask : ndarray of bool, optional
        NaN outside.

    Returns
    -------
    ndarray, float32
        Fat fraction in percent; NaN where the denominator is 0. Values are
        not clipped (clipping would bias region means near 0 and 100 %).
    """
    water = np.asarray(water)
    fat = np.asarray(fat)
    if water.shape != fat.shape:
        raise ValueError(f"water and fat shapes differ: {water.shape} vs {fat.shape}")
    if in_phase is None and np.iscomplexobj(water) and np.iscomplexobj(fat):
        in_phase = np.abs(water + fat)
    aw = np.abs(water).astype(np.float64)
    af = np.abs(fat).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        if in_phase is not None:
            ip = np.abs(np.asarray(in_phase)).astype(np.float64)
            if ip.shape != water.shape:
                raise ValueError(f"in_phase shape {ip.shape} does not match water {water.shape}")
            ff = np.where(aw >= af, 100.0 * (1.0 - aw / ip), 100.0 * af / ip)
            ff = np.where(ip > 0, ff, np.nan)
        else:
            if noise_sigma is not None:
                sigma = float(noise_sigma)
                if not np.isfinite(sigma) or sigma < 0:
                    raise ValueError(f"noise_sigma must be >= 0, got {noise_sigma}")
                floor = 2.0 * sigma * sigma
                smaller_w = aw < af
                aw = np.where(smaller_w, np.sqrt(np.maximum(aw * aw - floor, 0.0)), aw)
                af = np.where(~smaller_w, np.sqrt(np.maximum(af * af - floor, 0.0)), af)
            total = aw + af
            ff = np.where(total > 0, 100.0 * af / total, np.nan)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != ff.shape:
            raise ValueError(f"mask shape {mask.shape} does not match {ff.shape}")
        ff = np.where(mask, ff, np.nan)
    return ff.astype(np.float32)


def fat_fraction_from_magnitude_echoes(
    magnitude,
    te_s,
    field_strength_t,
    mask=None,
    fit_r2star=True,
    fat_model="hamilton6",
    fat_dominant=None,
    r2star_max_per_s=300.0,
    n_ff_grid=201,
    n_r2star_grid=31,
) -> dict:
    """Fat fraction from magnitude-only multi-echo gradient echo images.

    Fits ``m(t) = rho |(1 - eta) + eta c(t)| exp(-R2* t)`` by grid search over
    the fat fraction ``eta`` and R2*, the amplitude ``rho`` in closed form
    (a matrix product per chunk of voxels).

    **Ambiguity.** The magnitude signal of a water fraction ``eta`` and of
    ``1 - eta`` are identical for a single-peak fat model and nearly so for
    the multi-peak model at few, short echoes: magnitude data alone cannot
    tell 20 % from 80 % fat. The fit is therefore split at 50 % and one
    branch is chosen per voxel: the fat-dominant branch where
    ``fat_dominant`` is True, the water-dominant branch elsewhere (muscle
    is assumed water dominant). Give ``fat_dominant`` from another source
    (e.g. a smoothed complex fit, a segmentation of subcutaneous fat or
    marrow) wherever fat may dominate; without it every voxel is reported
    in 0-50 %, which is wrong in adipose tissue and in severely replaced
    muscle.

    Parameters
    ----------
    magnitude : ndarray, shape (*spatial, n_echoes)
        Magnitude echo images (real, non-negative).
    te_s : sequence of float
        Echo times in seconds (>= 2 echoes; >= 3 for R2*).
    field_strength_t : float
        Main field in tesla.
    mask : ndarray of bool, optional
        Voxels to fit; NaN elsewhere.
    fit_r2star : bool
        Search R2* in ``[0, r2star_max_per_s]`` (needs >= 3 echoes).
    fat_model : see :func:`fat_spectrum`
    fat_dominant : ndarray of bool, optional
        Where the fat-dominant branch (50-100 %) is taken.
    r2star_max_per_s, n_ff_grid, n_r2star_grid : grid settings.

    Returns
    -------
    dict
        ``ff_percent`` (chosen branch), ``ff_water_branch_percent``,
        ``ff_fat_branch_percent``, ``r2star_per_s``, ``residual`` (fraction
        of signal energy, chosen branch); float32 arrays (*spatial).
    """
    te = check_echo_times(te_s)
    b0 = check_field_strength(field_strength_t)
    check_separable(te, b0, fat_model)
    mag = np.asarray(magnitude)
    if np.iscomplexobj(mag):
        raise ValueError("magnitude must be real; use separate_water_fat for complex data")
    if mag.ndim < 1 or mag.shape[-1] != te.size:
        raise ValueError(f"magnitude must have shape (*spatial, {te.size}) matching te_s, got {mag.shape}")
    if n_ff_grid < 11 or n_r2star_grid < 2:
        raise ValueError("n_ff_grid must be >= 11 and n_r2star_grid >= 2")
    spatial = mag.shape[:-1]
    inside = np.ones(spatial, bool) if mask is None else np.asarray(mask, dtype=bool)
    if inside.shape != spatial:
        raise ValueError(f"mask shape {inside.shape} does not match the spatial shape {spatial}")
    if fat_dominant is not None:
        fat_dominant = np.asarray(fat_dominant, dtype=bool)
        if fat_dominant.shape != spatial:
            raise ValueError(f"fat_dominant shape {fat_dominant.shape} does not match {spatial}")
    c = fat_signal_basis(te, b0, fat_model)
    eta = np.linspace(0.0, 1.0, n_ff_grid)
    r2 = np.linspace(0.0, r2star_max_per_s, n_r2star_grid) if (fit_r2star and te.size >= 3) else np.array([0.0])
    shape_curve = np.abs((1 - eta)[:, None] + eta[:, None] * c[None, :])  # (n_eta, E)
    models = shape_curve[:, None, :] * np.exp(-np.outer(r2, te))[None, :, :]  # (n_eta, n_r2, E)
    models /= np.linalg.norm(models, axis=-1, keepdims=True)
    kernel = models.reshape(-1, te.size).T.astype(np.float32)  # (E, n_eta * n_r2)
    half = n_ff_grid // 2
    flat = np.nan_to_num(mag.reshape(-1, te.size).astype(np.float32))
    idx_in = np.flatnonzero(inside.reshape(-1))
    out = {name: np.full(flat.shape[0], np.nan, dtype=np.float32)
           for name in ("ff_percent", "ff_water_branch_percent", "ff_fat_branch_percent", "r2star_per_s", "residual")}
    fat_dom = None if fat_dominant is None else fat_dominant.reshape(-1)
    for start in range(0, idx_in.size, CHUNK_VOXELS):
        sel = idx_in[start:start + CHUNK_VOXELS]
        m = flat[sel]
        energy = np.einsum("ne,ne->n", m, m)
        proj = (m @ kernel) ** 2
        proj = proj.reshape(sel.size, n_ff_grid, r2.size)
        best_r = np.argmax(proj, axis=2)
        curve = np.take_along_axis(proj, best_r[..., None], axis=2)[..., 0]
        results = []
        for lo, hi in ((0, half + 1), (half, n_ff_grid)):
            part = curve[:, lo:hi]
            j = np.argmax(part, axis=1)
            jj = np.clip(j, 1, part.shape[1] - 2)
            rows = np.arange(sel.size)
            off = parabola_offset(-part[rows, jj - 1], -part[rows, jj], -part[rows, jj + 1])
            off = np.where(j == jj, off, 0.0)
            eta_hat = np.clip(eta[lo + j] + off * (eta[1] - eta[0]), eta[lo], eta[hi - 1])
            res = 1.0 - part[rows, j] / np.where(energy > 0, energy, 1.0)
            results.append((100.0 * eta_hat, r2[best_r[rows, lo + j]], res))
        (ffw, r2w, resw), (fff, r2f, resf) = results
        use_fat = np.zeros(sel.size, bool) if fat_dom is None else fat_dom[sel]
        out["ff_water_branch_percent"][sel] = ffw
        out["ff_fat_branch_percent"][sel] = fff
        out["ff_percent"][sel] = np.where(use_fat, fff, ffw)
        out["r2star_per_s"][sel] = np.where(use_fat, r2f, r2w)
        out["residual"][sel] = np.where(energy > 0, np.where(use_fat, resf, resw), np.nan)
    return {name: v.reshape(spatial) for name, v in out.items()}
