"""Variable projection (VARPRO) kernels of water-fat separation.

For every candidate field ``psi`` and ``R2*`` the water and fat amplitudes of
a voxel are eliminated in closed form, so the residual is a function of the
non-linear parameters only, evaluated for all voxels at once as a matrix
product (Hernando et al., Magn Reson Med 2008; 59:571-580). ``c`` is the fat
signal basis of :func:`bids_muscle.qmri.fat_spectrum.fat_signal_basis`;
signals are in the canonical convention, shape (n voxels, n echoes).
"""

from __future__ import annotations

import numpy as np

#: Voxels per chunk of the matrix products (bounds memory to about 100 MB).
CHUNK_VOXELS = 32768


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


def projection_energy(signals, te, c, psi_hz, r2star_values, phase_constrained):
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


def chunk_size(n_r, n_g):
    """Voxels per chunk of :func:`projection_energy` with ``n_r`` R2* values and ``n_g`` fields."""
    return int(max(1024, min(CHUNK_VOXELS, 2 ** 22 // (2 * n_r * n_g))))


def residual_on_grid(signals, te, c, psi_grid_hz, r2star_values, phase_constrained):
    """Normalised VARPRO residual for each voxel and grid field.

    Returns ``(residual, r2_index)`` of shape (n, G): residual divided by the
    voxel signal energy (in [0, 1]), minimised over ``r2star_values``.
    """
    energy = np.einsum("ne,ne->n", signals.real, signals.real) + np.einsum("ne,ne->n", signals.imag, signals.imag)
    proj = projection_energy(signals, te, c, psi_grid_hz, r2star_values, phase_constrained)
    best_r = np.argmax(proj, axis=1)
    best = np.take_along_axis(proj, best_r[:, None, :], axis=1)[:, 0]
    safe = np.where(energy > 0, energy, 1.0).astype(np.float32)
    residual = 1.0 - best / safe[:, None]
    np.clip(residual, 0.0, 1.0, out=residual)
    residual[energy <= 0] = 1.0
    return residual, best_r


def fit_at(signals, te, c, psi_hz, r2star, phase_constrained):
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



def parabola_offset(left, mid, right):
    """Offset (-1..1 grid steps) of the minimum of a parabola through three samples; 0 where it is not convex."""
    denom = left - 2 * mid + right
    with np.errstate(invalid="ignore", divide="ignore"):
        off = np.where(denom > 0, 0.5 * (left - right) / denom, 0.0)
    return np.clip(np.nan_to_num(off), -1.0, 1.0)


def refine_field_r2star(s, te, c, psi, r2_values, half_step, phase_constrained, n_iter=3):
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
        en = projection_energy(y, te, c, [-h, 0.0, h], r2_values, phase_constrained)
        j = np.argmax(en[:, :, 1], axis=1)
        e3 = en[rows, j]
        if r2_values.size > 1:
            jj = np.clip(j, 1, r2_values.size - 2)
            lo, mid, hi = en[rows, jj - 1], en[rows, jj], en[rows, jj + 1]  # (n, 3 offsets)
            off = np.where(j == jj, parabola_offset(-lo[:, 1], -mid[:, 1], -hi[:, 1]), 0.0)
            r2 = r2_values[j] + off * (r2_values[1] - r2_values[0])
            curvature = 2 * mid - lo - hi
            with np.errstate(invalid="ignore", divide="ignore"):
                peak = mid + (hi - lo) ** 2 / (8 * curvature)
            e3 = np.where((j == jj)[:, None] & (curvature > 0), peak, e3)
        psi = psi + parabola_offset(-e3[:, 0], -e3[:, 1], -e3[:, 2]) * h
        h *= 0.5
    return psi, r2

