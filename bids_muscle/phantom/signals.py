"""Images of a :class:`~bids_muscle.phantom.anatomy.RegionTruth` for each protocol.

Every image carries the receive bias field and Rician noise. The multi-echo
spin echo uses the EPG water + fat model of :mod:`bids_muscle.qmri.t2`, the
multi-echo gradient echo the multi-peak fat model of
:mod:`bids_muscle.qmri.dixon`, so the app's own fits can recover the truth.
"""

from __future__ import annotations

import numpy as np

from bids_muscle.phantom.anatomy import CORTEX, RegionTruth

#: Protocol parameters the phantom writes into the sidecars.
MESE_PROTOCOL = {"n_echoes": 17, "echo_spacing_s": 0.010, "repetition_time_s": 3.0, "refocusing_deg": 180.0}
MEGRE_PROTOCOL = {"n_echoes": 6, "first_te_s": 0.0012, "delta_te_s": 0.0010, "repetition_time_s": 0.025, "flip_deg": 5.0}
FIELD_STRENGTH_T = 3.0
SIGNAL_SCALE = 1000.0  # stored intensities are in the thousands, like scanner images
SNR_FIRST_ECHO = 100.0  # of muscle at the first echo


def add_rician_noise(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of a (real or complex) signal plus complex Gaussian noise of std ``sigma``."""
    noise = rng.normal(0.0, sigma, signal.shape) + 1j * rng.normal(0.0, sigma, signal.shape)
    return np.abs(signal + noise).astype(np.float32)


def _noise_sigma(truth: RegionTruth, first_echo: np.ndarray) -> float:
    muscle = truth.labels > 0
    return float(np.median(first_echo[muscle]) / SNR_FIRST_ECHO)


def mese_images(truth: RegionTruth, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Multi-echo spin echo magnitude (nx, ny, nz, n_echoes) and its echo times in s."""
    from bids_muscle.qmri.t2 import simulate_mese

    p = MESE_PROTOCOL
    te_s = p["echo_spacing_s"] * np.arange(1, p["n_echoes"] + 1)
    body = truth.tissue > 0
    clean = np.zeros(truth.tissue.shape + (p["n_echoes"],), np.float32)
    clean[body] = simulate_mese(
        pd=truth.pd[body],
        ff_percent=truth.ff_percent[body],
        water_t2_s=truth.water_t2_s[body],
        b1=truth.b1[body],
        te_s=te_s,
        refocus_deg=p["refocusing_deg"],
        tr_s=p["repetition_time_s"],  # water recovers less than fat at this TR, as in a real scan
    )
    clean *= SIGNAL_SCALE * truth.receive_bias[..., None]
    sigma = _noise_sigma(truth, clean[..., 0])
    return add_rician_noise(clean, sigma, rng), te_s


def megre_images(truth: RegionTruth, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Multi-echo gradient echo magnitude and phase (radians) and echo times in s."""
    from bids_muscle.qmri.dixon import simulate_megre

    p = MEGRE_PROTOCOL
    te_s = p["first_te_s"] + p["delta_te_s"] * np.arange(p["n_echoes"])
    ff = truth.ff_percent / 100.0
    water = truth.pd * (1.0 - ff)
    fat = truth.pd * ff
    phase0 = 0.4 + 0.3 * np.linspace(-1.0, 1.0, truth.tissue.shape[0])[:, None, None]
    signal = simulate_megre(
        water=water,
        fat=fat,
        te_s=te_s,
        field_strength_t=FIELD_STRENGTH_T,
        b0_hz=truth.b0_hz,
        r2star_per_s=truth.r2star_per_s,
        phase0_rad=np.broadcast_to(phase0, water.shape),
    )
    signal = signal * (SIGNAL_SCALE * truth.receive_bias[..., None])
    sigma = float(np.median(np.abs(signal[..., 0])[truth.labels > 0]) / SNR_FIRST_ECHO)
    noisy = signal + rng.normal(0.0, sigma, signal.shape) + 1j * rng.normal(0.0, sigma, signal.shape)
    return np.abs(noisy).astype(np.float32), np.angle(noisy).astype(np.float32), te_s


def mt_images(truth: RegionTruth, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """MT-off and MT-on gradient echo magnitudes."""
    m_off = truth.pd * SIGNAL_SCALE * truth.receive_bias
    m_on = m_off * (1.0 - truth.mtr_percent / 100.0)
    sigma = _noise_sigma(truth, m_off)
    return add_rician_noise(m_off, sigma, rng), add_rician_noise(m_on, sigma, rng)


def t1w_image(truth: RegionTruth, rng: np.random.Generator) -> np.ndarray:
    """T1-weighted turbo spin echo: fat bright, muscle grey, cortical bone dark."""
    ff = truth.ff_percent / 100.0
    weight = truth.pd * ((1.0 - ff) * 0.35 + ff * 1.0)
    weight[truth.tissue == CORTEX] = 0.02
    clean = weight * SIGNAL_SCALE * truth.receive_bias
    sigma = _noise_sigma(truth, clean) * 1.5
    return add_rician_noise(clean, sigma, rng)
