"""Water-fat separation and fat fraction from multi-echo gradient echo (Dixon).

Signal model (canonical convention, fat at negative frequency)::

    s(t) = (W + F * c(t)) * exp((i 2 pi psi - R2*) t),
    c(t) = sum_p a_p exp(i 2 pi f_p t),   f_p = gamma * B0 * ppm_p * 1e-6

with complex water ``W`` and fat ``F`` amplitudes at t = 0, off-resonance
``psi`` (Hz), a common ``R2*`` (1/s) and the multi-peak fat spectrum ``c(t)``.
The default fat spectrum is the 6-peak model of Hamilton et al. as used by
Yu et al. and the ISMRM fat-water toolbox (peaks -3.80, -3.40, -2.60, -1.94,
-0.39, +0.60 ppm relative to water; relative amplitudes 0.087, 0.693, 0.128,
0.004, 0.039, 0.048):

- Yu H, Shimakawa A, McKenzie CA, Brodsky E, Brittain JH, Reeder SB.
  Multiecho water-fat separation and simultaneous R2* estimation with
  multifrequency fat spectrum modeling. Magn Reson Med 2008;60:1122-1134.
- Hamilton G, Yokoo T, Bydder M, et al. In vivo characterization of the
  liver fat 1H MR spectrum. NMR Biomed 2011;24:784-790.
- Ren J, Dimitrov I, Sherry AD, Malloy CR. Composition of adipose tissue and
  marrow fat in humans by 1H NMR at 7 Tesla. J Lipid Res 2008;49:2055-2062.

Separation follows variable projection (VARPRO): for every candidate field
``psi`` (and ``R2*``) the linear amplitudes are eliminated in closed form and
the residual is a function of the non-linear parameters only, evaluated for
all voxels at once as a matrix product (Hernando D, Haldar JP, Sutton BP,
Ma J, Kellman P, Liang ZP. Joint estimation of water/fat images and field
inhomogeneity map. Magn Reson Med 2008;59:571-580). Water-fat swaps are
avoided by choosing, among the local minima of the residual, the field map
that is spatially smooth:

1. quality-guided region growing over the residual minima of a
   block-averaged (coarse) image (Yu H, Reeder SB, Shimakawa A, Brittain JH,
   Pelc NJ. Field map estimation with a region growing scheme for iterative
   3-point water-fat decomposition. Magn Reson Med 2005;54:1032-1039);
2. one global branch per connected tissue component: the one with the
   lowest total residual where the echo times can tell water from fat;
   where they cannot (symmetric in-/out-of-phase echoes such as 3.45 / 4.60
   / 5.75 ms at 3 T, whose residual is periodic in the field with the fat
   shift) the branch whose mean field is closest to 0 Hz, the frequency the
   scanner sets on water. This assumes the mean field over each connected
   component (e.g. each leg) lies within half the fat shift of 0 Hz
   (+-217 Hz at 3 T);
3. penalised re-selection at full resolution with two smoothing passes (an
   iterated-conditional-modes relative of the graph cut of Hernando D,
   Kellman P, Haldar JP, Liang ZP. Robust water/fat separation in the
   presence of large field inhomogeneities using a graph cut algorithm. Magn
   Reson Med 2010;63:79-90), then parabolic refinement of field and R2*.

Fat fraction uses magnitude discrimination (Liu CY, McKenzie CA, Yu H,
Brittain JH, Reeder SB. Fat quantification with IDEAL gradient echo imaging:
correction of bias from T1 and noise. Magn Reson Med 2007;58:354-364) so that
noise does not bias fat fractions near 0 % and 100 %, or the common-phase
estimate ``Re(F / (W + F))``, linear in the data and so unbiased; the latter
is the fat fraction of the phase-constrained model (real water and fat
sharing one phase, always used for two echoes; Bydder M, Yokoo T, Yu H, et
al. Constraining the initial phase in water-fat separation. Magn Reson
Imaging 2011;29:216-221) and, for symmetric three-point echoes and a
single-peak fat model, of the Dixon method of Glover GH, Schneider E.
Three-point Dixon technique for true water/fat decomposition with B0
inhomogeneity correction. Magn Reson Med 1991;18:371-383 (the method of the
musclemap tool).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "GYROMAGNETIC_RATIO_HZ_PER_T",
    "FAT_PEAKS_PPM",
    "FAT_PEAKS_RELATIVE_AMPLITUDE",
    "fat_spectrum",
    "fat_signal_basis",
    "simulate_megre",
    "separate_water_fat",
    "fat_fraction_from_water_fat",
    "fat_fraction_from_magnitude_echoes",
]

#: Proton gyromagnetic ratio / (2 pi), Hz per tesla (CODATA 2018).
GYROMAGNETIC_RATIO_HZ_PER_T = 42.577478518e6

#: Six-peak fat spectrum, chemical shift relative to water (ppm), Hamilton et
#: al. 2011 / Yu et al. 2008 (ISMRM fat-water toolbox values).
FAT_PEAKS_PPM = (-3.80, -3.40, -2.60, -1.94, -0.39, 0.60)
#: Relative amplitudes of :data:`FAT_PEAKS_PPM` (normalised to sum 1 on use).
FAT_PEAKS_RELATIVE_AMPLITUDE = (0.087, 0.693, 0.128, 0.004, 0.039, 0.048)
#: Main methylene peak, used by the single-peak model.
SINGLE_PEAK_FAT_PPM = -3.40

_MAX_FIELD_STRENGTH_T = 20.0
_MIN_FIELD_STRENGTH_T = 0.01
_MAX_TE_S = 0.2
_CHUNK_VOXELS = 32768


# ----------------------------------------------------------------------------
# input checks and the fat model
# ----------------------------------------------------------------------------
def _check_te(te_s) -> np.ndarray:
    te = np.asarray(te_s, dtype=np.float64)
    if te.ndim != 1 or te.size < 2:
        raise ValueError(f"te_s must be a 1-D sequence of at least 2 echo times, got shape {te.shape}")
    if not np.all(np.isfinite(te)) or np.any(te <= 0):
        raise ValueError(f"te_s must be finite and positive (seconds), got {te.tolist()}")
    if np.any(np.diff(te) <= 0):
        raise ValueError(f"te_s must be strictly increasing, got {te.tolist()}")
    if te[-1] > _MAX_TE_S:
        raise ValueError(f"te_s must be in seconds (largest echo time {te[-1]} s > {_MAX_TE_S} s)")
    return te


def _check_field_strength(field_strength_t) -> float:
    if field_strength_t is None:
        raise ValueError("field_strength_t is required (tesla)")
    try:
        b0 = float(field_strength_t)
    except (TypeError, ValueError):
        raise ValueError(f"field_strength_t must be a number in tesla, got {field_strength_t!r}") from None
    if not np.isfinite(b0) or not (_MIN_FIELD_STRENGTH_T < b0 <= _MAX_FIELD_STRENGTH_T):
        raise ValueError(f"field_strength_t must be in ({_MIN_FIELD_STRENGTH_T}, {_MAX_FIELD_STRENGTH_T}] T, "
                         f"got {field_strength_t!r}")
    return b0


def fat_spectrum(model="hamilton6") -> tuple[np.ndarray, np.ndarray]:
    """Fat spectral model: peak shifts relative to water and relative amplitudes.

    Parameters
    ----------
    model : {"hamilton6", "single"} or (ppm, amplitudes)
        ``"hamilton6"``: six-peak model (Hamilton et al. 2011, Yu et al.
        2008). ``"single"``: one peak at -3.40 ppm (the classic Dixon
        assumption). A pair of sequences gives a custom spectrum.

    Returns
    -------
    ppm : ndarray, shape (P,)
        Chemical shifts relative to water (negative: lower frequency).
    amplitude : ndarray, shape (P,)
        Relative amplitudes normalised to sum 1.
    """
    if isinstance(model, str):
        if model == "hamilton6":
            ppm, amp = FAT_PEAKS_PPM, FAT_PEAKS_RELATIVE_AMPLITUDE
        elif model == "single":
            ppm, amp = (SINGLE_PEAK_FAT_PPM,), (1.0,)
        else:
            raise ValueError(f"unknown fat spectrum {model!r}; use 'hamilton6', 'single' or (ppm, amplitudes)")
    else:
        try:
            ppm, amp = model
        except (TypeError, ValueError):
            raise ValueError("fat spectrum must be a name or a pair (ppm, amplitudes)") from None
    ppm = np.atleast_1d(np.asarray(ppm, dtype=np.float64))
    amp = np.atleast_1d(np.asarray(amp, dtype=np.float64))
    if ppm.shape != amp.shape or ppm.ndim != 1 or ppm.size == 0:
        raise ValueError("fat spectrum ppm and amplitudes must be 1-D of equal length")
    if not (np.all(np.isfinite(ppm)) and np.all(np.isfinite(amp))) or amp.sum() <= 0:
        raise ValueError("fat spectrum amplitudes must be finite with a positive sum")
    return ppm, amp / amp.sum()


def fat_signal_basis(te_s, field_strength_t, fat_model="hamilton6") -> np.ndarray:
    """Complex fat signal ``c(t) = sum_p a_p exp(i 2 pi f_p t)`` at each echo.

    Parameters
    ----------
    te_s : sequence of float
        Echo times in seconds.
    field_strength_t : float
        Main field in tesla.
    fat_model : see :func:`fat_spectrum`

    Returns
    -------
    ndarray, complex128, shape (n_echoes,)
        Canonical convention (fat at negative frequency).
    """
    te = _check_te(te_s)
    b0 = _check_field_strength(field_strength_t)
    ppm, amp = fat_spectrum(fat_model)
    freq_hz = GYROMAGNETIC_RATIO_HZ_PER_T * b0 * ppm * 1e-6
    return np.exp(2j * np.pi * np.outer(te, freq_hz)) @ amp


#: Fewest effective signal averages of the water estimate (:func:`water_nsa`)
#: accepted for a separation; echo-time sets below it are refused.
MIN_WATER_NSA = 0.5


def water_nsa(te_s, field_strength_t, fat_model="hamilton6") -> float:
    """Effective number of signal averages (NSA) of the water estimate.

    For a known field map and no R2*, the water and fat amplitudes solve the
    linear system ``s_n = W + F c(t_n)``; the noise variance of ``W`` is
    ``[(A^H A)^-1]_00`` times that of one echo, ``A = [1, c(t_n)]``, and
    the NSA is its inverse (Reeder SB, Wen Z, Yu H, et al. Multicoil Dixon
    chemical species separation with an iterative least-squares estimation
    method. Magn Reson Med 2004;51:35-45; Pineda AR, Reeder SB, Wen Z, Pelc
    NJ. Cramer-Rao bounds for three-point decomposition of water and fat.
    Magn Reson Med 2005;54:625-635). It is at most the number of echoes
    (2 for opposed- and in-phase echoes) and falls towards 0 when fat has
    the same phase at every echo (echoes one fat-water period apart, e.g.
    2.3 ms at 3 T), where water and fat cannot be told apart.
    """
    c = fat_signal_basis(te_s, field_strength_t, fat_model)
    a = np.stack([np.ones_like(c), c], axis=1)
    gram = a.conj().T @ a
    det = float(np.real(gram[0, 0] * gram[1, 1] - gram[0, 1] * gram[1, 0]))
    return det / float(np.real(gram[1, 1])) if det > 0 else 0.0


def check_separable(te_s, field_strength_t, fat_model="hamilton6") -> None:
    """Raise ValueError when the echo times cannot separate water from fat
    (:func:`water_nsa` below :data:`MIN_WATER_NSA`)."""
    nsa = water_nsa(te_s, field_strength_t, fat_model)
    if nsa < MIN_WATER_NSA:
        te_ms = ", ".join(f"{t * 1000:.2f}" for t in np.asarray(te_s, float))
        raise ValueError(
            f"echo times {te_ms} ms cannot separate water from fat at {float(field_strength_t):g} T: fat has nearly "
            f"the same phase at every echo (water NSA {nsa:.2f}, at least {MIN_WATER_NSA} needed, "
            f"{np.asarray(te_s).size} for ideal echoes); no fat fraction is computed"
        )


def _main_fat_frequency_hz(field_strength_t: float, fat_model) -> float:
    ppm, amp = fat_spectrum(fat_model)
    return float(GYROMAGNETIC_RATIO_HZ_PER_T * field_strength_t * ppm[np.argmax(amp)] * 1e-6)


def simulate_megre(
    water,
    fat,
    te_s,
    field_strength_t,
    b0_hz=0.0,
    r2star_per_s=0.0,
    phase0_rad=0.0,
    fat_model="hamilton6",
    precession_clockwise=False,
) -> np.ndarray:
    """Simulate complex multi-echo gradient-echo signals of water and fat.

    Parameters
    ----------
    water, fat : array_like, real or complex
        Water and fat amplitudes at t = 0; broadcast together with ``b0_hz``,
        ``r2star_per_s`` and ``phase0_rad``.
    te_s : sequence of float
        Echo times in seconds (strictly increasing).
    field_strength_t : float
        Main field in tesla.
    b0_hz : array_like
        Off-resonance of water in Hz.
    r2star_per_s : array_like
        Common transverse relaxation rate R2* in 1/s.
    phase0_rad : array_like
        Common initial phase in radians.
    fat_model : see :func:`fat_spectrum`
    precession_clockwise : bool
        Phase convention of the returned data. ``True`` gives the canonical
        model of the module docstring (fat phase decreasing with echo time,
        the ISMRM toolbox's ``PrecessionIsClockwise = 1``); ``False`` returns
        its complex conjugate. :func:`separate_water_fat` with the same flag
        inverts this simulator.

    Returns
    -------
    ndarray, complex64, shape (*broadcast_shape, n_echoes)
    """
    te = _check_te(te_s)
    b0 = _check_field_strength(field_strength_t)
    c = fat_signal_basis(te, b0, fat_model).astype(np.complex64)
    water, fat, b0_hz, r2star_per_s, phase0_rad = np.broadcast_arrays(
        np.asarray(water), np.asarray(fat), np.asarray(b0_hz, dtype=np.float32),
        np.asarray(r2star_per_s, dtype=np.float32), np.asarray(phase0_rad, dtype=np.float32),
    )
    t = te.astype(np.float32)
    amp = (water.astype(np.complex64)[..., None] + fat.astype(np.complex64)[..., None] * c)
    evolution = np.exp((2j * np.pi * b0_hz[..., None] - r2star_per_s[..., None]) * t + 1j * phase0_rad[..., None])
    signal = (amp * evolution).astype(np.complex64)
    return signal if precession_clockwise else np.conj(signal)


# ----------------------------------------------------------------------------
# variable projection kernels
# ----------------------------------------------------------------------------
def _basis(te: np.ndarray, c: np.ndarray, r2star: float) -> np.ndarray:
    decay = np.exp(-r2star * te)
    return np.stack([decay, decay * c], axis=1)  # (E, 2) complex


def _orthonormal_basis(te, c, r2star, phase_constrained) -> np.ndarray:
    """Orthonormal basis (E, 2) of the water/fat model at one R2*.

    Complex model: QR of the complex basis. Phase-constrained model: QR of
    the real-stacked basis ``[Re A; Im A]`` returned as ``Q_re + i Q_im`` so
    that ``Re(Q^H y)`` and ``Im(Q^H y)`` are the real projections of ``y`` and
    ``-i y``.
    """
    a = _basis(te, c, r2star)
    if not phase_constrained:
        return np.linalg.qr(a)[0]
    q = np.linalg.qr(np.concatenate([a.real, a.imag], axis=0))[0]
    return q[: te.size] + 1j * q[te.size:]


def _phase_constrained_energy(z0, z1):
    """Energy captured by the phase-constrained model from ``z = Q^H y``.

    Maximum over the common phase: the largest eigenvalue of
    ``[Re z, Im z]^T [Re z, Im z]``.
    """
    a = z0.real ** 2 + z1.real ** 2
    d = z0.imag ** 2 + z1.imag ** 2
    b = z0.real * z0.imag + z1.real * z1.imag
    half = 0.5 * (a - d)
    return 0.5 * (a + d) + np.sqrt(half * half + b * b)


def _projection_energy(signals, te, c, psi_hz, r2star_values, phase_constrained):
    """Captured energy for every field in ``psi_hz`` and R2* in ``r2star_values``.

    One matrix product ``signals (n, E) @ kernel (E, R * 2 * G)``; returns
    float32 of shape (n, R, G). Callers bound ``n`` (chunks).
    """
    psi_hz = np.atleast_1d(np.asarray(psi_hz, dtype=np.float64))
    demod = np.exp(-2j * np.pi * np.outer(te, psi_hz))  # (E, G)
    kernel = np.stack([_orthonormal_basis(te, c, r2, phase_constrained).conj()[:, :, None] * demod[:, None, :]
                       for r2 in r2star_values], axis=1)  # (E, R, 2, G)
    n_r, n_g = len(r2star_values), psi_hz.size
    z = (signals @ kernel.reshape(te.size, -1).astype(np.complex64)).reshape(-1, n_r, 2, n_g)
    if not phase_constrained:
        power = np.abs(z) ** 2
        return power[:, :, 0] + power[:, :, 1]
    return _phase_constrained_energy(z[:, :, 0], z[:, :, 1])


def _chunk_size(n_r, n_g):
    return int(max(1024, min(_CHUNK_VOXELS, 2 ** 22 // (2 * n_r * n_g))))


def _residual_on_grid(signals, te, c, psi_grid_hz, r2star_values, phase_constrained):
    """Normalised VARPRO residual for each voxel and grid field.

    Returns ``(residual, r2_index)`` of shape (n, G): residual divided by the
    voxel signal energy (in [0, 1]), minimised over ``r2star_values``.
    """
    energy = np.einsum("ne,ne->n", signals.real, signals.real) + np.einsum("ne,ne->n", signals.imag, signals.imag)
    proj = _projection_energy(signals, te, c, psi_grid_hz, r2star_values, phase_constrained)
    best_r = np.argmax(proj, axis=1)
    best = np.take_along_axis(proj, best_r[:, None, :], axis=1)[:, 0]
    safe = np.where(energy > 0, energy, 1.0).astype(np.float32)
    residual = 1.0 - best / safe[:, None]
    np.clip(residual, 0.0, 1.0, out=residual)
    residual[energy <= 0] = 1.0
    return residual, best_r


def _fit_at(signals, te, c, psi_hz, r2star, phase_constrained):
    """Per-voxel linear fit at given field and R2* (vectorised 2x2 algebra).

    Returns ``(water, fat, residual_energy)`` with complex amplitudes at t = 0.
    """
    t = te[None, :]
    y = signals * np.exp(-2j * np.pi * psi_hz[:, None] * t).astype(np.complex64)
    decay = np.exp(-r2star[:, None] * t)
    a0 = decay
    a1 = decay * c[None, :]
    g0 = np.sum(a0 * y, axis=1)
    g1 = np.sum(np.conj(a1) * y, axis=1)
    m00 = np.sum(a0 * a0, axis=1)
    m11 = np.sum(np.abs(a1) ** 2, axis=1)
    m01 = np.sum(a0 * a1, axis=1)  # a0 real: sum conj(a0) a1
    y_energy = np.sum(np.abs(y) ** 2, axis=1)
    if not phase_constrained:
        det = m00 * m11 - np.abs(m01) ** 2
        det = np.where(det > 0, det, np.inf)
        water = (m11 * g0 - m01 * g1) / det
        fat = (m00 * g1 - np.conj(m01) * g0) / det
        proj = (np.conj(g0) * water + np.conj(g1) * fat).real
        return water, fat, np.maximum(y_energy - proj, 0.0)
    m01r = m01.real
    det = m00 * m11 - m01r ** 2
    det = np.where(det > 0, det, np.inf)
    inv = np.stack([np.stack([m11, -m01r], -1), np.stack([-m01r, m00], -1)], -2) / det[:, None, None]
    gr = np.stack([g0.real, g1.real], -1)
    gi = np.stack([g0.imag, g1.imag], -1)
    a = np.einsum("ni,nij,nj->n", gr, inv, gr)
    d = np.einsum("ni,nij,nj->n", gi, inv, gi)
    b = np.einsum("ni,nij,nj->n", gr, inv, gi)
    phi = 0.5 * np.arctan2(2 * b, a - d)
    h = np.cos(phi)[:, None] * gr + np.sin(phi)[:, None] * gi
    x = np.einsum("nij,nj->ni", inv, h)
    proj = np.einsum("ni,ni->n", x, h)
    rot = np.exp(1j * phi)
    return x[:, 0] * rot, x[:, 1] * rot, np.maximum(y_energy - proj, 0.0)


# ----------------------------------------------------------------------------
# local minima and spatial field-map regularisation
# ----------------------------------------------------------------------------
def _local_minima(residual, n_keep, periodic):
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


def _nearest_candidate(cand_hz, cand_cost, valid, prior_hz, period_hz, swap_hz, penalty):
    """Pick, per voxel, the candidate minimising residual + smoothness penalty."""
    if period_hz is not None:
        shifted = cand_hz + period_hz * np.round((prior_hz[:, None] - cand_hz) / period_hz)
    else:
        shifted = cand_hz
    cost = cand_cost + penalty * ((shifted - prior_hz[:, None]) / swap_hz) ** 2
    cost = np.where(valid, cost, np.inf)
    pick = np.argmin(cost, axis=1)
    return np.take_along_axis(shifted, pick[:, None], axis=1)[:, 0]


def _grow_field_map(cand_hz, cand_cost, valid, quality, weight, tissue, period_hz, swap_hz, penalty,
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
            field[front] = _nearest_candidate(cand_hz[front], cand_cost[front], valid[front], prior,
                                              period_hz, swap_hz, penalty)
            assigned |= front
    return field, assigned, labels, n_comp


def _choose_global_branch(field, residual_curves, weight, labels, n_comp, psi_grid_hz, period_hz,
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


def _swap_discriminability(te, c, psi_grid_hz, phase_constrained):
    """Residual of the best swapped fit to a noiseless 30 % fat signal.

    Near 0 for symmetric in-phase/out-of-phase echoes, where the residual
    cannot tell a water-fat swap from the truth.
    """
    probe = (0.7 + 0.3 * c)[None, :].astype(np.complex64)
    res, _ = _residual_on_grid(probe, te, c, psi_grid_hz, [0.0], phase_constrained)
    _, vals, valid = _local_minima(res, 2, True)
    return float(vals[0, 1]) if valid[0, 1] else 1.0


def _fill_unassigned(field, assigned):
    if assigned.all() or not assigned.any():
        return field
    idx = ndimage.distance_transform_edt(~assigned, return_distances=False, return_indices=True)
    return field[tuple(idx)]


def _smooth_weighted(field, weight, sigma):
    num = ndimage.gaussian_filter(field * weight, sigma, mode="nearest")
    den = ndimage.gaussian_filter(weight, sigma, mode="nearest")
    return np.where(den > 1e-12 * max(float(weight.max()), 1e-30), num / np.maximum(den, 1e-30), field)


def _block_sum(x, factors):
    """Sum complex signals over blocks (spatial axes, trailing echo axis kept)."""
    pads = [(0, (-n) % f) for n, f in zip(x.shape[:-1], factors)] + [(0, 0)]
    x = np.pad(x, pads)
    shape = []
    for n, f in zip(x.shape[:-1], factors):
        shape += [n // f, f]
    x = x.reshape(shape + [x.shape[-1]])
    return x.sum(axis=tuple(range(1, 2 * len(factors), 2)))


def _upsample(field, factors, shape):
    if all(f == 1 for f in factors):
        return field[tuple(slice(0, n) for n in shape)]
    big = ndimage.zoom(field, factors, order=1, mode="nearest", grid_mode=True)
    return big[tuple(slice(0, n) for n in shape)]


# ----------------------------------------------------------------------------
# main separation
# ----------------------------------------------------------------------------
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
    te = _check_te(te_s)
    b0 = _check_field_strength(field_strength_t)
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
    spacing = np.diff(te)
    periodic = bool(np.allclose(spacing, spacing[0], rtol=1e-3, atol=1e-7))
    period_hz = 1.0 / spacing.min()
    if periodic:
        psi_grid = (np.arange(n_b0_grid) / n_b0_grid - 0.5) * period_hz
        f_fat = abs(_main_fat_frequency_hz(b0, fat_model)) % period_hz
        swap_hz = min(f_fat, period_hz - f_fat)
        grid_period = period_hz
    else:
        psi_grid = np.linspace(-period_hz, period_hz, 2 * n_b0_grid + 1)
        swap_hz = abs(_main_fat_frequency_hz(b0, fat_model))
        grid_period = None
    swap_hz = max(swap_hz, 2.0 * (psi_grid[1] - psi_grid[0]))
    # R2* is searched on the grid only when the residual can tell it apart
    # from the field (>= 4 echoes); with 3 echoes it is refined at the end.
    r2_grid = np.linspace(0.0, r2star_max_per_s, 6) if (fit_r2 and n_echo >= 4) else np.array([0.0])

    # ---- coarse level: block average, residual curves, region growing ----
    if coarse_factor is None:
        largest = max(spatial)
        coarse_factor = 1
        while largest / coarse_factor > 128:
            coarse_factor *= 2
    factors = tuple(int(coarse_factor) if n >= 8 * coarse_factor else 1 for n in spatial)
    coarse = _block_sum(data, factors)
    cshape = coarse.shape[:-1]
    cflat = coarse.reshape(-1, n_echo)
    say("coarse residual")
    curves = np.empty((cflat.shape[0], psi_grid.size), dtype=np.float32)
    chunk = _chunk_size(r2_grid.size, psi_grid.size)
    for start in range(0, cflat.shape[0], chunk):
        stop = start + chunk
        curves[start:stop] = _residual_on_grid(cflat[start:stop], te, c, psi_grid, r2_grid, phase_constrained)[0]
    pos, cost, valid = _local_minima(curves, 4, periodic)
    step = psi_grid[1] - psi_grid[0]
    cand = psi_grid[0] + pos * step
    rms = np.sqrt(np.mean(np.abs(cflat) ** 2, axis=1))
    cmask = _block_sum(mask[..., None].astype(np.float32), factors)[..., 0].reshape(-1) > 0
    ref = np.percentile(rms[cmask], 99) if cmask.any() else 0.0
    tissue = (rms > tissue_threshold * ref) & cmask & (ref > 0)
    contrast = np.where(valid[:, 1], cost[:, 1] - cost[:, 0], 1.0)
    quality = rms * (1.0 - cost[:, 0]) * (0.25 + np.minimum(contrast, 1.0))
    say("region growing")
    k = cand.shape[1]
    field, assigned, labels, n_comp = _grow_field_map(
        cand.reshape(cshape + (k,)), cost.reshape(cshape + (k,)), valid.reshape(cshape + (k,)),
        quality.reshape(cshape), rms.reshape(cshape), tissue.reshape(cshape), grid_period, swap_hz, smoothness,
    )
    if n_comp:
        weight = (rms ** 2).reshape(cshape) * assigned
        field = _choose_global_branch(field, curves.reshape(cshape + (-1,)), weight, labels * assigned, n_comp,
                                      psi_grid, grid_period, tie_tolerance,
                                      _swap_discriminability(te, c, psi_grid, phase_constrained) > 0.01)
    field = _fill_unassigned(field, assigned)
    field = _smooth_weighted(field, np.where(assigned, rms.reshape(cshape), 0.0) + 1e-6 * (ref + 1e-30), 1.0)
    prior = _upsample(field, factors, spatial).reshape(-1)

    # ---- full resolution: candidates, penalised choice, smoothing passes ----
    say("full-resolution residual")
    flat = data.reshape(-1, n_echo)
    inside = mask.reshape(-1)
    idx_in = np.flatnonzero(inside)
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
    for start in range(0, fine_tissue.size, chunk):
        rows = fine_tissue[start:start + chunk]
        res, _ = _residual_on_grid(flat[idx_in[rows]], te, c, psi_grid, r2_grid, phase_constrained)
        p, cst, v = _local_minima(res, k, periodic)
        fcand[rows] = psi_grid[0] + p * step
        fcost[rows] = cst
        fvalid[rows] = v
    chosen = _nearest_candidate(fcand, fcost, fvalid, prior[idx_in], grid_period, swap_hz, smoothness)
    sigma = tuple(max(1.0, 0.5 * f) for f in factors)
    wmap = np.zeros(flat.shape[0])
    wmap[idx_in] = fine_rms
    for _ in range(2):
        fmap = prior.copy()
        fmap[idx_in] = chosen
        smooth = _smooth_weighted(fmap.reshape(spatial), wmap.reshape(spatial), sigma).reshape(-1)
        chosen = _nearest_candidate(fcand, fcost, fvalid, smooth[idx_in], grid_period, swap_hz, smoothness)

    # ---- refinement of field (and R2*) and final amplitudes ----
    say("refinement")
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
        chunk = _chunk_size(r2_values.size, 3)
        for start in range(0, rows_all.size, chunk):
            rows = rows_all[start:start + chunk]
            sel = idx_in[rows]
            s = flat[sel]
            psi, r2 = _refine_field_r2star(s, te, c, chosen[rows].astype(np.float64), r2_values, 0.5 * step,
                                           phase_constrained, n_iter=2)
            w, f, res = _fit_at(s.astype(np.complex128), te, c, psi, r2, phase_constrained)
            energy = np.sum(np.abs(s) ** 2, axis=1)
            water[sel] = w
            fat[sel] = f
            b0_map[sel] = psi
            r2_map[sel] = r2 if report_r2 else np.nan
            resid_map[sel] = np.where(energy > 0, res / np.where(energy > 0, energy, 1.0), np.nan)
    if not precession_clockwise:
        np.conjugate(water, out=water)
        np.conjugate(fat, out=fat)
    ff = _ff_from_complex(water, fat, phase_constrained or ff_method == "common_phase")
    ff[~inside] = np.nan
    return {
        "water": water.reshape(spatial),
        "fat": fat.reshape(spatial),
        "ff_percent": ff.reshape(spatial),
        "b0_hz": b0_map.reshape(spatial),
        "r2star_per_s": r2_map.reshape(spatial),
        "residual": resid_map.reshape(spatial),
    }


def _parabola_offset(left, mid, right):
    denom = left - 2 * mid + right
    with np.errstate(invalid="ignore", divide="ignore"):
        off = np.where(denom > 0, 0.5 * (left - right) / denom, 0.0)
    return np.clip(np.nan_to_num(off), -1.0, 1.0)


def _refine_field_r2star(s, te, c, psi, r2_values, half_step, phase_constrained, n_iter=3):
    """Parabolic refinement of the field (and R2* on ``r2_values``) per voxel.

    Each iteration demodulates by the current field and evaluates the
    captured energy at field offsets ``-h, 0, +h`` for all R2* values with one
    matrix product; R2* and the best energy at each offset come from a
    parabola through the three R2* values around the maximum, the field from
    a parabola through the three offsets. ``h`` halves every iteration.
    """
    r2_values = np.asarray(r2_values, dtype=np.float64)
    t = te.astype(np.float32)
    rows = np.arange(s.shape[0])
    r2 = np.full(s.shape[0], r2_values[0])
    h = half_step
    for _ in range(n_iter):
        y = s * np.exp(-2j * np.pi * psi[:, None].astype(np.float32) * t).astype(np.complex64)
        en = _projection_energy(y, te, c, [-h, 0.0, h], r2_values, phase_constrained)
        j = np.argmax(en[:, :, 1], axis=1)
        e3 = en[rows, j]
        if r2_values.size > 1:
            jj = np.clip(j, 1, r2_values.size - 2)
            lo, mid, hi = en[rows, jj - 1], en[rows, jj], en[rows, jj + 1]  # (n, 3 offsets)
            off = np.where(j == jj, _parabola_offset(-lo[:, 1], -mid[:, 1], -hi[:, 1]), 0.0)
            r2 = r2_values[j] + off * (r2_values[1] - r2_values[0])
            curvature = 2 * mid - lo - hi
            with np.errstate(invalid="ignore", divide="ignore"):
                peak = mid + (hi - lo) ** 2 / (8 * curvature)
            e3 = np.where((j == jj)[:, None] & (curvature > 0), peak, e3)
        psi = psi + _parabola_offset(-e3[:, 0], -e3[:, 1], -e3[:, 2]) * h
        h *= 0.5
    return psi, r2


def _ff_from_complex(water, fat, common_phase):
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


# ----------------------------------------------------------------------------
# fat fraction from scanner water/fat images and from magnitude echoes
# ----------------------------------------------------------------------------
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
    te = _check_te(te_s)
    b0 = _check_field_strength(field_strength_t)
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
    for start in range(0, idx_in.size, _CHUNK_VOXELS):
        sel = idx_in[start:start + _CHUNK_VOXELS]
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
            off = _parabola_offset(-part[rows, jj - 1], -part[rows, jj], -part[rows, jj + 1])
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
