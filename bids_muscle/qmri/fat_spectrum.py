"""The fat spectrum and what echo times can tell of it: the multi-peak fat
signal of a gradient echo, the noise of the water estimate (separability),
and a simulator of multi-echo gradient echo.

Canonical convention (fat at negative frequency): ``s(t) = (W + F c(t))
exp((i 2 pi psi - R2*) t)`` with ``c(t) = sum_p a_p exp(i 2 pi f_p t)``,
``f_p = gamma B0 ppm_p 1e-6`` (see :mod:`bids_muscle.qmri.dixon` for the
references).
"""

from __future__ import annotations

import numpy as np

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


def check_echo_times(te_s) -> np.ndarray:
    """Echo times (s) of a gradient echo as float64; ValueError unless at
    least 2, finite, positive, strictly increasing and in seconds."""
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


def check_field_strength(field_strength_t) -> float:
    """The main field in tesla as a float; ValueError unless a number in (0.01, 20]."""
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
    te = check_echo_times(te_s)
    b0 = check_field_strength(field_strength_t)
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


def main_fat_frequency_hz(field_strength_t: float, fat_model) -> float:
    """Frequency (Hz) of the largest fat peak relative to water."""
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
    te = check_echo_times(te_s)
    b0 = check_field_strength(field_strength_t)
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

