"""Water-fat separation of complex multi-echo gradient echo (complex Dixon).

:func:`separate_water_fat` runs in four steps, each a function here: the
field grid the echo times allow (:func:`field_grid`); a smooth field map
grown over the residual minima of a block-averaged image
(:func:`coarse_field`); at full resolution, each voxel's residual minimum
nearest to the smoothed prior (:func:`full_resolution_field`); and the
parabolic refinement of field and R2* with the final amplitudes
(:func:`fit_amplitudes`). The method and its references are described in
:mod:`bids_muscle.qmri.dixon`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bids_muscle.qmri.fat_spectrum import (
    check_echo_times,
    check_field_strength,
    check_separable,
    fat_signal_basis,
    main_fat_frequency_hz,
)
from bids_muscle.qmri.fieldmap import (
    block_sum,
    choose_global_branch,
    fill_unassigned,
    grow_field_map,
    local_minima,
    nearest_candidate,
    smooth_weighted,
    swap_discriminability,
    upsample,
)
from bids_muscle.qmri.varpro import chunk_size, fit_at, refine_field_r2star, residual_on_grid

#: Residual minima kept per voxel as candidate fields.
N_CANDIDATES = 4


@dataclass(frozen=True)
class FieldGrid:
    """Fields searched for water-fat separation."""

    psi_hz: np.ndarray  # the grid (Hz)
    periodic: bool  # equally spaced echoes: the residual is periodic in the field
    period_hz: float | None  # its period when periodic
    swap_hz: float  # distance between a true and a water-fat swapped field

    @property
    def step_hz(self) -> float:
        return self.psi_hz[1] - self.psi_hz[0]


def field_grid(te: np.ndarray, b0: float, fat_model, n_b0_grid: int) -> FieldGrid:
    """``n_b0_grid`` fields over one aliasing period of equally spaced echoes,
    or ``2 n_b0_grid + 1`` over two periods of the shortest spacing otherwise."""
    spacing = np.diff(te)
    periodic = bool(np.allclose(spacing, spacing[0], rtol=1e-3, atol=1e-7))
    period_hz = 1.0 / spacing.min()
    if periodic:
        psi_grid = (np.arange(n_b0_grid) / n_b0_grid - 0.5) * period_hz
        f_fat = abs(main_fat_frequency_hz(b0, fat_model)) % period_hz
        swap_hz = min(f_fat, period_hz - f_fat)
        grid_period = period_hz
    else:
        psi_grid = np.linspace(-period_hz, period_hz, 2 * n_b0_grid + 1)
        swap_hz = abs(main_fat_frequency_hz(b0, fat_model))
        grid_period = None
    swap_hz = max(swap_hz, 2.0 * (psi_grid[1] - psi_grid[0]))
    return FieldGrid(psi_hz=psi_grid, periodic=periodic, period_hz=grid_period, swap_hz=swap_hz)


def coarse_factors(spatial: tuple[int, ...], coarse_factor: int | None) -> tuple[int, ...]:
    """Block size per axis of the coarse level: by default the power of two
    bringing the largest axis to <= 128; axes shorter than 8 blocks are not averaged."""
    if coarse_factor is None:
        largest = max(spatial)
        coarse_factor = 1
        while largest / coarse_factor > 128:
            coarse_factor *= 2
    return tuple(int(coarse_factor) if n >= 8 * coarse_factor else 1 for n in spatial)


def coarse_field(data, mask, te, c, grid: FieldGrid, r2_grid, factors, phase_constrained, tissue_threshold,
                 smoothness, tie_tolerance, say) -> np.ndarray:
    """Smooth field map (Hz, flat over the full grid) grown on the block sums of ``data``.

    Region growing over the residual minima of each block, one global
    branch per connected tissue component, then weighted smoothing and
    linear upsampling.
    """
    n_echo = te.size
    spatial = data.shape[:-1]
    psi_grid = grid.psi_hz
    coarse = block_sum(data, factors)
    cshape = coarse.shape[:-1]
    cflat = coarse.reshape(-1, n_echo)
    say("coarse residual")
    curves = np.empty((cflat.shape[0], psi_grid.size), dtype=np.float32)
    chunk = chunk_size(r2_grid.size, psi_grid.size)
    for start in range(0, cflat.shape[0], chunk):
        stop = start + chunk
        curves[start:stop] = residual_on_grid(cflat[start:stop], te, c, psi_grid, r2_grid, phase_constrained)[0]
    pos, cost, valid = local_minima(curves, N_CANDIDATES, grid.periodic)
    cand = psi_grid[0] + pos * grid.step_hz
    rms = np.sqrt(np.mean(np.abs(cflat) ** 2, axis=1))
    cmask = block_sum(mask[..., None].astype(np.float32), factors)[..., 0].reshape(-1) > 0
    ref = np.percentile(rms[cmask], 99) if cmask.any() else 0.0
    tissue = (rms > tissue_threshold * ref) & cmask & (ref > 0)
    contrast = np.where(valid[:, 1], cost[:, 1] - cost[:, 0], 1.0)
    quality = rms * (1.0 - cost[:, 0]) * (0.25 + np.minimum(contrast, 1.0))
    say("region growing")
    k = cand.shape[1]
    field, assigned, labels, n_comp = grow_field_map(
        cand.reshape(cshape + (k,)), cost.reshape(cshape + (k,)), valid.reshape(cshape + (k,)),
        quality.reshape(cshape), rms.reshape(cshape), tissue.reshape(cshape), grid.period_hz, grid.swap_hz, smoothness,
    )
    if n_comp:
        weight = (rms ** 2).reshape(cshape) * assigned
        field = choose_global_branch(field, curves.reshape(cshape + (-1,)), weight, labels * assigned, n_comp,
                                     psi_grid, grid.period_hz, tie_tolerance,
                                     swap_discriminability(te, c, psi_grid, phase_constrained) > 0.01)
    field = fill_unassigned(field, assigned)
    field = smooth_weighted(field, np.where(assigned, rms.reshape(cshape), 0.0) + 1e-6 * (ref + 1e-30), 1.0)
    return upsample(field, factors, spatial).reshape(-1)


def full_resolution_field(flat, idx_in, prior, te, c, grid: FieldGrid, r2_grid, factors, spatial,
                          phase_constrained, tissue_threshold, smoothness, say) -> tuple[np.ndarray, np.ndarray]:
    """Field (Hz) of each voxel ``idx_in`` of ``flat`` (voxels, echoes): the
    residual minimum nearest to the prior, re-chosen twice against the
    smoothed choice. Returns it and the positions in ``idx_in`` of the
    tissue voxels (background voxels keep the prior)."""
    say("full-resolution residual")
    psi_grid, k = grid.psi_hz, N_CANDIDATES
    n_in = idx_in.size
    fine_rms = np.sqrt(np.mean(np.abs(flat[idx_in]) ** 2, axis=1))
    fine_ref = np.percentile(fine_rms, 99) if n_in else 0.0
    # background voxels follow the grown field; only tissue gets candidates
    fine_tissue = np.flatnonzero(fine_rms > tissue_threshold * fine_ref)
    fcand = np.zeros((n_in, k), dtype=np.float32)
    fcand[:, 0] = prior[idx_in]
    fcost = np.zeros((n_in, k), dtype=np.float32)
    fvalid = np.zeros((n_in, k), dtype=bool)
    fvalid[:, 0] = True
    chunk = chunk_size(r2_grid.size, psi_grid.size)
    for start in range(0, fine_tissue.size, chunk):
        rows = fine_tissue[start:start + chunk]
        res, _ = residual_on_grid(flat[idx_in[rows]], te, c, psi_grid, r2_grid, phase_constrained)
        p, cst, v = local_minima(res, k, grid.periodic)
        fcand[rows] = psi_grid[0] + p * grid.step_hz
        fcost[rows] = cst
        fvalid[rows] = v
    chosen = nearest_candidate(fcand, fcost, fvalid, prior[idx_in], grid.period_hz, grid.swap_hz, smoothness)
    sigma = tuple(max(1.0, 0.5 * f) for f in factors)
    wmap = np.zeros(flat.shape[0])
    wmap[idx_in] = fine_rms
    for _ in range(2):
        fmap = prior.copy()
        fmap[idx_in] = chosen
        smooth = smooth_weighted(fmap.reshape(spatial), wmap.reshape(spatial), sigma).reshape(-1)
        chosen = nearest_candidate(fcand, fcost, fvalid, smooth[idx_in], grid.period_hz, grid.swap_hz, smoothness)
    return chosen, fine_tissue


def fit_amplitudes(flat, idx_in, chosen, fine_tissue, te, c, grid: FieldGrid, fit_r2, r2star_max_per_s,
                   phase_constrained, say) -> dict[str, np.ndarray]:
    """Refined field and R2* and the water and fat amplitudes of the voxels
    ``idx_in``, as flat maps: ``water``, ``fat``, ``b0_hz``,
    ``r2star_per_s``, ``residual`` (fraction of the signal energy)."""
    say("refinement")
    n_in = idx_in.size
    water = np.zeros(flat.shape[0], dtype=np.complex64)
    fat = np.zeros(flat.shape[0], dtype=np.complex64)
    b0_map = np.full(flat.shape[0], np.nan, dtype=np.float32)
    r2_map = np.full(flat.shape[0], np.nan, dtype=np.float32)
    resid_map = np.full(flat.shape[0], np.nan, dtype=np.float32)
    # R2* (searched down to a small negative value so that noise does not bias
    # it) is estimated in tissue; background voxels are fitted with R2* = 0
    # and report NaN, as does everything when R2* is not fitted.
    r2_fine = np.linspace(-0.2 * r2star_max_per_s, r2star_max_per_s, 16) if fit_r2 else np.array([0.0])
    is_tissue = np.zeros(n_in, dtype=bool)
    is_tissue[fine_tissue] = True
    for rows_all, r2_values in ((fine_tissue, r2_fine), (np.flatnonzero(~is_tissue), np.array([0.0]))):
        report_r2 = fit_r2 and r2_values.size > 1
        chunk = chunk_size(r2_values.size, 3)
        for start in range(0, rows_all.size, chunk):
            rows = rows_all[start:start + chunk]
            sel = idx_in[rows]
            s = flat[sel]
            psi, r2 = refine_field_r2star(s, te, c, chosen[rows].astype(np.float64), r2_values, 0.5 * grid.step_hz,
                                          phase_constrained, n_iter=2)
            w, f, res = fit_at(s.astype(np.complex128), te, c, psi, r2, phase_constrained)
            energy = np.sum(np.abs(s) ** 2, axis=1)
            water[sel] = w
            fat[sel] = f
            b0_map[sel] = psi
            r2_map[sel] = r2 if report_r2 else np.nan
            resid_map[sel] = np.where(energy > 0, res / np.where(energy > 0, energy, 1.0), np.nan)
    return {"water": water, "fat": fat, "b0_hz": b0_map, "r2star_per_s": r2_map, "residual": resid_map}


def separate_water_fat(
    signal,
    te_s,
    field_strength_t,
    mask=None,
    fit_r2star=True,
    precession_clockwise=False,
    fat_model="hamilton6",
    phase_constrained=None,
    n_b0_grid=64,
    r2star_max_per_s=500.0,
    coarse_factor=None,
    tissue_threshold=0.1,
    smoothness=2.0,
    tie_tolerance=2e-3,
    ff_method="magnitude_discrimination",
    progress=None,
) -> dict:
    """Separate water and fat from complex multi-echo gradient echo images.

    Parameters
    ----------
    signal : ndarray, complex, shape (*spatial, n_echoes)
        Complex echo images; up to three spatial axes (spatial smoothness of
        the field map is enforced along them).
    te_s : sequence of float
        Echo times in seconds, strictly increasing; any number (>= 2) and
        spacing.
    field_strength_t : float
        Main field in tesla (e.g. 1.5, 2.89, 3.0).
    mask : ndarray of bool, shape (*spatial), optional
        Voxels to fit; outputs are NaN (maps) or 0 (water/fat) outside.
    fit_r2star : bool
        Estimate a common R2* per voxel (grid search then parabolic
        refinement). With two echoes R2* cannot be separated from the
        amplitudes and is fixed to 0.
    precession_clockwise : bool
        ``True``: data follow the canonical model (fat phase decreasing with
        TE relative to water; ISMRM toolbox ``PrecessionIsClockwise = 1``).
        ``False``: data are the complex conjugate of it. Returned water/fat
        phases refer to the input data.
    fat_model : see :func:`fat_spectrum`
        ``"hamilton6"`` (default) or ``"single"`` (-3.4 ppm; reproduces the
        classic symmetric three-point Dixon assumption).
    phase_constrained : bool, optional
        Real water and fat sharing one phase (Glover & Schneider; Bydder
        2011). Default: ``True`` for two echoes, ``False`` otherwise.
    n_b0_grid : int
        Number of field values on the search grid over one aliasing period.
    r2star_max_per_s : float
        Upper end of the R2* search range.
    coarse_factor : int, optional
        In-plane block size of the coarse level used to grow the field map;
        default: the power of two bringing the largest axis to <= 128.
    tissue_threshold : float
        Voxels whose root-mean-square echo magnitude is below this fraction of
        the 99th percentile are treated as background when growing the field
        map (they are still fitted, guided by the grown field).
    smoothness : float
        Weight of the field-map smoothness penalty relative to the normalised
        residual; the penalty is 1 for a deviation equal to the distance
        between a true and a swapped field.
    tie_tolerance : float
        For echo times that can tell water from fat: residual difference, as
        a fraction of signal energy, below which two global branches of the
        field map count as equally good (then the one closest to 0 Hz is
        used).
    ff_method : {"magnitude_discrimination", "common_phase"}
        ``"magnitude_discrimination"`` (Liu et al. 2007):
        ``100 (1 - |W| / |W+F|)`` where water dominates, ``100 |F| / |W+F|``
        where fat dominates. ``"common_phase"``: ``100 Re(F / (W+F))``, the
        fat component in phase with the total signal; linear in the data and
        so free of noise bias, it is the fat fraction of the Glover &
        Schneider three-point method (what musclemap computes) and of the
        phase-constrained model (always used there).
    progress : callable, optional
        Called with a short stage name as the work proceeds.

    Returns
    -------
    dict
        ``water``, ``fat`` : complex64 (*spatial), amplitudes at t = 0
        (corrected for R2*). ``ff_percent`` : float32, fat fraction by
        ``ff_method``, not clipped to [0, 100] so that region means stay
        unbiased.
        ``b0_hz`` : float32, off-resonance of water in Hz, spatially
        unwrapped, with the sign convention of the fat shift (fat at -3.4 ppm
        is at negative frequency) whatever ``precession_clockwise``.
        ``r2star_per_s`` : float32, NaN in background voxels (below
        ``tissue_threshold``) and when R2* is not fitted. ``residual`` :
        float32, fit residual as a fraction of the voxel signal energy.

    Raises
    ------
    ValueError
        On non-complex or mis-shaped signals, invalid echo times or field
        strength, echo times that cannot separate water from fat
        (:func:`check_separable`), or a mask of the wrong shape.

    Notes
    -----
    With three echoes the model (two complex amplitudes, field, R2*) fits the
    data exactly, so R2* is noisy and the residual carries no information
    about the fat spectrum; the field map then relies on spatial continuity
    and, for symmetric echoes, on the 0 Hz prior of the module docstring.
    Work is done in chunks of voxels (memory of the order of 100 MB); a
    512 x 256 x 10 three-echo series takes 5-15 s on two CPU cores.
    """
    te = check_echo_times(te_s)
    b0 = check_field_strength(field_strength_t)
    check_separable(te, b0, fat_model)
    signal = np.asarray(signal)
    if not np.iscomplexobj(signal):
        raise ValueError("signal must be complex; use fat_fraction_from_magnitude_echoes for magnitude data")
    if signal.ndim < 2 or signal.shape[-1] != te.size:
        raise ValueError(f"signal must have shape (*spatial, {te.size}) matching te_s, got {signal.shape}")
    if signal.ndim > 4:
        raise ValueError(f"signal may have at most three spatial axes, got shape {signal.shape}")
    n_echo = te.size
    if phase_constrained is None:
        phase_constrained = n_echo == 2
    if n_echo == 2 and not phase_constrained:
        raise ValueError("two-echo separation needs phase_constrained=True")
    if ff_method not in ("magnitude_discrimination", "common_phase"):
        raise ValueError(f"ff_method must be 'magnitude_discrimination' or 'common_phase', got {ff_method!r}")
    if coarse_factor is not None and (int(coarse_factor) != coarse_factor or coarse_factor < 1):
        raise ValueError(f"coarse_factor must be a positive integer, got {coarse_factor}")
    if n_b0_grid < 8:
        raise ValueError(f"n_b0_grid must be >= 8, got {n_b0_grid}")
    if not (np.isfinite(r2star_max_per_s) and r2star_max_per_s > 0):
        raise ValueError(f"r2star_max_per_s must be positive, got {r2star_max_per_s}")
    spatial = signal.shape[:-1]
    if mask is None:
        mask = np.ones(spatial, dtype=bool)
    else:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != spatial:
            raise ValueError(f"mask shape {mask.shape} does not match the spatial shape {spatial}")
    data = np.where(mask[..., None], signal, 0).astype(np.complex64)
    data = np.nan_to_num(data)
    if not precession_clockwise:
        np.conjugate(data, out=data)
    fit_r2 = bool(fit_r2star) and n_echo >= 3
    say = progress if progress is not None else (lambda stage: None)
    c = fat_signal_basis(te, b0, fat_model)
    grid = field_grid(te, b0, fat_model, n_b0_grid)
    # R2* is searched on the grid only when the residual can tell it apart
    # from the field (>= 4 echoes); with 3 echoes it is refined at the end.
    r2_grid = np.linspace(0.0, r2star_max_per_s, 6) if (fit_r2 and n_echo >= 4) else np.array([0.0])
    factors = coarse_factors(spatial, coarse_factor)
    prior = coarse_field(data, mask, te, c, grid, r2_grid, factors, phase_constrained, tissue_threshold, smoothness,
                         tie_tolerance, say)
    flat = data.reshape(-1, n_echo)
    inside = mask.reshape(-1)
    idx_in = np.flatnonzero(inside)
    chosen, fine_tissue = full_resolution_field(flat, idx_in, prior, te, c, grid, r2_grid, factors, spatial,
                                                phase_constrained, tissue_threshold, smoothness, say)
    maps = fit_amplitudes(flat, idx_in, chosen, fine_tissue, te, c, grid, fit_r2, r2star_max_per_s,
                          phase_constrained, say)
    water, fat = maps["water"], maps["fat"]
    if not precession_clockwise:
        np.conjugate(water, out=water)
        np.conjugate(fat, out=fat)
    ff = ff_from_complex(water, fat, phase_constrained or ff_method == "common_phase")
    ff[~inside] = np.nan
    return {
        "water": water.reshape(spatial),
        "fat": fat.reshape(spatial),
        "ff_percent": ff.reshape(spatial),
        "b0_hz": maps["b0_hz"].reshape(spatial),
        "r2star_per_s": maps["r2star_per_s"].reshape(spatial),
        "residual": maps["residual"].reshape(spatial),
    }


def ff_from_complex(water, fat, common_phase):
    """Fat fraction (percent, float32) of complex amplitudes: ``100 Re(F / (W+F))``
    with ``common_phase``, else magnitude discrimination; NaN where ``W + F`` is 0."""
    total = np.abs(water + fat)
    with np.errstate(invalid="ignore", divide="ignore"):
        if common_phase:
            # fat component in phase with the total signal, Re(F / (W + F))
            ff = 100.0 * (fat * np.conj(water + fat)).real / (total * total)
        else:
            aw = np.abs(water)
            af = np.abs(fat)
            ff = np.where(aw >= af, 100.0 * (1.0 - aw / total), 100.0 * af / total)
    ff = np.where(total > 0, ff, np.nan)
    return ff.astype(np.float32)
