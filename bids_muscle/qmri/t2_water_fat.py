"""Two-component water/fat EPG fit of multi-echo spin echo, and its forward model.

Water with free T2, fat with fixed T2 and T1 and its own EPG curve, one B1
for both (Marty et al., NMR Biomed 2016; 29:431-443; Santini et al., Front
Neurol 2021; 12:630387). For every (water T2, B1) atom the two amplitudes are
solved in closed form by non-negative least squares, so the search stays a
set of matrix products. :func:`simulate_mese` is the same model forwards, for
the digital phantom.

The fit of a block of voxels runs in four steps: :class:`WaterFatAtoms`
prepares the dictionary once; :func:`search_atoms` finds each voxel's best
atom (coarse pass, then two full-resolution windows); :func:`refine_position`
moves it between grid points; :func:`solve_amplitudes` solves the amplitudes
on the interpolated echo trains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from bids_muscle.qmri.b1_prior import allowed_b1, fit_with_b1_prior
from bids_muscle.qmri.t2_dictionary import (
    B1_RANGE,
    FAT_T1_S,
    FAT_T2_S,
    WATER_T1_S,
    WATER_T2_RANGE_S,
    ProfileArg,
    bilinear_curves,
    dictionary_grid,
    echo_spacing,
    linear_curves,
    parabolic_offset,
    peak_offset,
    signal_mask,
    validate_mese,
    water_fat_tables,
)

#: Offsets of the full-resolution search window around a coarse atom (the
#: outer ring only feeds the 3 x 3 refinement stencil).
WINDOW = torch.arange(-3, 4)
#: Model a voxel is fitted with.
BOTH, WATER_ONLY, FAT_ONLY = 0, 1, 2


@dataclass(frozen=True)
class WaterFatAtoms:
    """The water/fat dictionary prepared for the search.

    With the water atom orthogonalised against the fat atom and both
    normalised, the inner products ``q`` (orthogonalised water) and ``p``
    (fat) of a voxel give every score the search needs: the two-amplitude
    energy ``q**2 + p**2`` (valid where both amplitudes are non-negative,
    i.e. ``q >= 0`` and ``p >= q * ratio``) and the water-only projection
    ``r = q * r_from_q + p * r_from_p``.
    """

    t2_grid: np.ndarray  # (n_t2,) water T2 (s), log-spaced
    b1_grid: np.ndarray  # (n_b1,) linear
    water: torch.Tensor  # (n_b1, n_t2, E) unnormalised water echo trains
    fat: torch.Tensor  # (n_b1, E) unnormalised fat echo trains
    fat_unit: torch.Tensor  # (n_b1, E) normalised fat atoms
    water_orth: torch.Tensor  # (n_b1 * n_t2, E) orthonormalised water atoms, coarse atoms first
    column: torch.Tensor  # (n_b1 * n_t2,) grid index -> row of water_orth
    ratio: torch.Tensor  # (n_b1, n_t2) <w, f_unit> / |w_orth|
    r_from_q: torch.Tensor  # (n_b1, n_t2) |w_orth| / |w|
    r_from_p: torch.Tensor  # (n_b1, n_t2) <w, f_unit> / |w|

    @classmethod
    def build(cls, water: np.ndarray, fat: np.ndarray, t2_grid: np.ndarray, b1_grid: np.ndarray) -> WaterFatAtoms:
        """Atoms of the tables of :func:`~bids_muscle.qmri.t2_dictionary.water_fat_tables`.

        Raises
        ------
        ValueError
            Where a water atom is indistinguishable from the fat atom.
        """
        n_e = water.shape[-1]
        fat_unit = fat / np.linalg.norm(fat, axis=-1, keepdims=True)
        water_norm = np.linalg.norm(water, axis=-1)
        overlap = np.einsum("bte,be->bt", water, fat_unit)
        water_orth = water - overlap[..., None] * fat_unit[:, None, :]
        orth_norm = np.linalg.norm(water_orth, axis=-1)
        if np.any(orth_norm < 1e-6 * water_norm):
            raise ValueError(
                "water and fat echo trains are indistinguishable: lower the water T2 range or change fat T2"
            )
        # coarse atoms (every other one on both axes) first, so that their scores are a contiguous slice
        is_coarse = torch.zeros(water.shape[:2], dtype=torch.bool)
        is_coarse[::2, ::2] = True
        order = torch.cat(
            [
                torch.nonzero(is_coarse.view(-1)).view(-1),
                torch.nonzero(~is_coarse.view(-1)).view(-1),
            ]
        )
        column = torch.empty_like(order)
        column[order] = torch.arange(order.numel())
        w_orth = torch.from_numpy((water_orth / orth_norm[..., None]).astype(np.float32))
        return cls(
            t2_grid=t2_grid,
            b1_grid=b1_grid,
            water=torch.from_numpy(water.astype(np.float32)),
            fat=torch.from_numpy(fat.astype(np.float32)),
            fat_unit=torch.from_numpy(fat_unit.astype(np.float32)),
            water_orth=w_orth.reshape(-1, n_e)[order],
            column=column,
            ratio=torch.from_numpy((overlap / orth_norm).astype(np.float32)),
            r_from_q=torch.from_numpy((orth_norm / water_norm).astype(np.float32)),
            r_from_p=torch.from_numpy((overlap / water_norm).astype(np.float32)),
        )

    @property
    def n_b1(self) -> int:
        return len(self.b1_grid)

    @property
    def n_t2(self) -> int:
        return len(self.t2_grid)

    @property
    def coarse_shape(self) -> tuple[int, int]:
        return (self.n_b1 + 1) // 2, (self.n_t2 + 1) // 2


@dataclass
class AtomSearch:
    """Best atom of each voxel of a block, with the window scores around it."""

    kind: torch.Tensor  # (n,) BOTH, WATER_ONLY or FAT_ONLY
    b: torch.Tensor  # (n,) B1 index of the best atom
    t: torch.Tensor  # (n,) T2 index of the best atom
    window: torch.Tensor  # (n,) which of the two windows holds it
    wb: torch.Tensor  # (n,) its B1 position in the window
    wt: torch.Tensor  # (n,) its T2 position in the window
    q: torch.Tensor  # (n, 2, w, w) water scores of the windows
    p_window: torch.Tensor  # (n, 2, w, 1) fat scores of the windows
    r: torch.Tensor  # (n, 2, w, w) water-only projections of the windows
    p: torch.Tensor  # (n, n_b1) fat scores


def _both_energy(q: torch.Tensor, p: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """Energy of the two-amplitude solution, -1 where an amplitude is negative."""
    energy = q * q
    energy += p * p
    energy.masked_fill_((q < 0) | (q * ratio > p), -1.0)
    return energy


def _window_indices(
    atoms: WaterFatAtoms, q_all: torch.Tensor, p: torch.Tensor, allowed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid indices (n, 2, w) along B1 and T2 of two search windows: around the
    best coarse atom and around the best one in another B1 basin (refocusing
    angles either side of 180 degrees can give near-identical echo trains)."""
    n = q_all.shape[0]
    n_bc, n_tc = atoms.coarse_shape
    q_c = q_all[:, : n_bc * n_tc].view(n, n_bc, n_tc)
    p_c = p[:, ::2, None]
    energy = _both_energy(q_c, p_c, atoms.ratio[::2, ::2].contiguous())
    r_c = q_c * atoms.r_from_q[::2, ::2].contiguous()
    r_c += p_c * atoms.r_from_p[::2, ::2].contiguous()
    energy = torch.maximum(energy, r_c.clamp_(min=0).square_())
    del r_c
    per_b1, per_b1_t = energy.max(dim=2)
    del energy
    per_b1.masked_fill_(~allowed[:, ::2], -2.0)
    first_b = per_b1.argmax(dim=1)
    far = (torch.arange(n_bc)[None, :] - first_b[:, None]).abs() > 3
    second_b = torch.where(far, per_b1, torch.full_like(per_b1, -3.0)).argmax(dim=1)
    centre_b = torch.stack([first_b, second_b], dim=1)
    centre_t = per_b1_t.gather(1, centre_b)
    coarse_b = torch.arange(0, atoms.n_b1, 2)
    coarse_t = torch.arange(0, atoms.n_t2, 2)
    b_idx = (coarse_b[centre_b][:, :, None] + WINDOW).clamp(0, atoms.n_b1 - 1)
    t_idx = (coarse_t[centre_t][:, :, None] + WINDOW).clamp(0, atoms.n_t2 - 1)
    return b_idx, t_idx


def search_atoms(atoms: WaterFatAtoms, s: torch.Tensor, allowed: torch.Tensor) -> AtomSearch:
    """Best model and atom of every voxel of ``s`` (n, E) among the B1 values ``allowed`` (n, n_b1).

    A coarse pass over every other atom places two windows
    (:func:`_window_indices`); the full grid is searched inside them. For
    each atom the best non-negative fit is the two-amplitude solution where
    both amplitudes are non-negative, else the better of the water-only and
    fat-only fits; the fat-only fit does not depend on T2 and is searched
    over every allowed B1.
    """
    n = s.shape[0]
    rows = torch.arange(n)
    n_t2 = atoms.n_t2
    p = s @ atoms.fat_unit.T
    q_all = s @ atoms.water_orth.T
    b_idx, t_idx = _window_indices(atoms, q_all, p, allowed)
    flat = (b_idx[:, :, :, None] * n_t2 + t_idx[:, :, None, :]).view(n, -1)
    shape = (n, 2, WINDOW.numel(), WINDOW.numel())
    q = q_all.gather(1, atoms.column[flat]).view(shape)
    del q_all
    p_win = p.gather(1, b_idx.view(n, -1)).view(n, 2, -1)[:, :, :, None]
    r = q * atoms.r_from_q.view(-1)[flat].view(shape) + p_win * atoms.r_from_p.view(-1)[
        flat
    ].view(shape)
    excluded = ~allowed.gather(1, b_idx.view(n, -1)).view(n, 2, -1)[
        :, :, 1:-1, None
    ]
    energy_both = _both_energy(q, p_win, atoms.ratio.reshape(-1)[flat].view(shape))[
        :, :, 1:-1, 1:-1
    ].masked_fill(excluded, -1.0)
    energy_water = (r.clamp(min=0) ** 2)[:, :, 1:-1, 1:-1].masked_fill(
        excluded, -1.0
    )
    both_e, both_i = energy_both.reshape(n, -1).max(dim=1)
    water_e, water_i = energy_water.reshape(n, -1).max(dim=1)
    fat_p, fat_b = p.masked_fill(~allowed, -np.inf).max(dim=1)
    fat_e = fat_p.clamp(min=0) ** 2
    kind = torch.full((n,), BOTH, dtype=torch.long)
    kind[water_e > both_e] = WATER_ONLY
    kind[(fat_e > both_e) & (fat_e >= water_e)] = FAT_ONLY
    inner = WINDOW.numel() - 2
    local = torch.where(kind == WATER_ONLY, water_i, both_i)
    wk = local // (inner * inner)
    wb = (local // inner) % inner + 1
    wt = local % inner + 1
    b = torch.where(kind == FAT_ONLY, fat_b, b_idx[rows, wk, wb])
    t = t_idx[rows, wk, wt]
    return AtomSearch(kind=kind, b=b, t=t, window=wk, wb=wb, wt=wt, q=q, p_window=p_win, r=r, p=p)


def refine_position(
    atoms: WaterFatAtoms, found: AtomSearch
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fractional (B1, T2) grid position of each voxel's optimum and whether
    its atom lies on a B1 or a T2 bound.

    A quadratic through the 3 x 3 neighbourhood of the smooth
    (unconstrained) score of the winning model: the water-only projection,
    or the two-amplitude energy; fat-only voxels move along B1 only.
    """
    n_b1, n_t2 = atoms.n_b1, atoms.n_t2
    rows = torch.arange(found.b.shape[0])
    wk, wb, wt, b, t = found.window, found.wb, found.wt, found.b, found.t
    water_only = found.kind == WATER_ONLY
    unconstrained = found.q * found.q + found.p_window * found.p_window
    r_sq = found.r * found.r
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
    b_off, t_off = peak_offset(stencil, b_edge, t_edge)
    fat_sq = found.p * found.p
    b_off_fat = parabolic_offset(
        fat_sq[rows, (b - 1).clamp(min=0)],
        fat_sq[rows, b],
        fat_sq[rows, (b + 1).clamp(max=n_b1 - 1)],
    )
    b_off = torch.where(found.kind == FAT_ONLY, torch.where(b_edge, 0.0, b_off_fat), b_off)
    return b + b_off, t + t_off, b_edge, t_edge


def solve_amplitudes(
    atoms: WaterFatAtoms,
    s: torch.Tensor,
    kind: torch.Tensor,
    b_pos: torch.Tensor,
    t_pos: torch.Tensor,
    b_edge: torch.Tensor,
    t_edge: torch.Tensor,
    allowed: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Non-negative water and fat amplitudes (closed form) on the echo trains
    interpolated at the refined positions, and the maps of the fit."""
    nan = torch.tensor(float("nan"))
    w = bilinear_curves(atoms.water, b_pos, t_pos)
    f = linear_curves(atoms.fat, b_pos)
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
    amp_w = torch.where(kind == FAT_ONLY, 0.0, amp_w)
    amp_f = torch.where(kind == FAT_ONLY, b_fat, amp_f)
    total = amp_w + amp_f
    ok = (total > 0) & allowed.any(dim=1)
    ff_pct = torch.where(
        ok, (100.0 * amp_f / torch.where(ok, total, 1.0)).clamp(0.0, 100.0), nan
    )
    t2_grid, b1_grid = atoms.t2_grid, atoms.b1_grid
    t2 = torch.exp(np.log(t2_grid[0]) + t_pos * np.log(t2_grid[1] / t2_grid[0]))
    b1 = b1_grid[0] + b_pos * (b1_grid[1] - b1_grid[0])
    no_water = (kind == FAT_ONLY) | (amp_w <= 0)
    return {
        "water_t2_s": torch.where(no_water | t_edge | ~ok, nan, t2).float(),
        "ff_percent": ff_pct.float(),
        "b1": torch.where(b_edge | ~ok, nan, b1).float(),
        "pd": torch.where(ok, total, nan).float(),
    }


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
        Fixed relaxation times (s); defaults from :mod:`bids_muscle.qmri.t2`.
    t2_range_s, n_t2 : water T2 range (s) and number of log-spaced steps.
    b1_range, n_b1 : B1 range and number of linear steps.
    refocus_deg, excite_deg, slice_profile
        As in :func:`~bids_muscle.qmri.t2.fit_t2_single`.
    tr_s : float, optional
        Repetition time (s); when given, the PD of each component is
        corrected for its incomplete T1 recovery ``1 - exp(-TR/T1)``.
    b1_map, b1_tolerance, b1_smoothing_voxels, noise_fraction, progress
        As in :func:`~bids_muscle.qmri.t2.fit_t2_single`.
    block_size : int
        Voxels per matrix product (bounds memory to about
        ``block_size * n_t2 * n_b1 * 12`` bytes).

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
    t2_grid = dictionary_grid(t2_range_s, n_t2, "water T2", "log")
    b1_grid = dictionary_grid(b1_range, n_b1, "B1")
    water, fat = water_fat_tables(
        te, t2_grid, b1_grid, fat_t2_s, fat_t1_s, water_t1_s, refocus_deg, excite_deg, slice_profile, tr_s
    )
    atoms = WaterFatAtoms.build(water, fat, t2_grid, b1_grid)

    def fit_block(s: torch.Tensor, prior: torch.Tensor) -> dict[str, torch.Tensor]:
        allowed = allowed_b1(prior, b1_grid, b1_tolerance)
        found = search_atoms(atoms, s, allowed)
        b_pos, t_pos, b_edge, t_edge = refine_position(atoms, found)
        return solve_amplitudes(atoms, s, found.kind, b_pos, t_pos, b_edge, t_edge, allowed)

    names = ("water_t2_s", "ff_percent", "b1", "pd")
    return fit_with_b1_prior(
        echoes, keep, fit_block, names, b1_grid, b1_map, b1_tolerance, b1_smoothing_voxels, block_size, progress
    )


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
        w = bilinear_curves(
            torch.from_numpy(water.astype(np.float32)),
            b_t,
            torch.from_numpy(t_pos.astype(np.float32)),
        )
        f = linear_curves(torch.from_numpy(fat.astype(np.float32)), b_t)
        ff_t = torch.from_numpy(ff.astype(np.float32))[:, None]
        signal = torch.from_numpy(pd_b[tissue].astype(np.float32))[:, None] * (
            (1 - ff_t) * w + ff_t * f
        )
    out[tissue] = signal.numpy()
    return out
