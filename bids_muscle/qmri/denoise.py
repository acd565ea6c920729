"""Marchenko–Pastur PCA denoising of multi-echo series.

In a small neighbourhood the echo trains of muscle and fat span only a few
dimensions of the echo space (a handful of T2 and fat-fraction values),
while the noise spreads over all of them. The eigenvalues of the
neighbourhood's echo covariance that belong to noise follow the
Marchenko–Pastur law; the number of signal components is the smallest one
for which the remaining eigenvalues are consistent with that law, and the
data are projected onto the signal components (Veraart et al., NeuroImage
2016; applied to multi-echo relaxometry by Does et al., MRM 2019).

Each voxel is denoised with the neighbourhood centred on it (in-plane
window, slices are treated independently because 2D multi-slice MESE has
gaps and a different profile across slices). The work is a batched
eigendecomposition of small echo-by-echo matrices, done in blocks.
"""

from __future__ import annotations

import numpy as np
import torch

from bids_muscle.qmri.blocks import run_in_blocks


def _mp_signal_components(eigenvalues: torch.Tensor, n_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Number of signal components and noise variance per neighbourhood.

    ``eigenvalues`` (n, M) in ascending order, of covariance matrices
    estimated from ``n_samples`` >= M samples. For p signal components the
    M - p smallest eigenvalues are noise: their mean estimates sigma^2, and
    their spread should not exceed the Marchenko–Pastur width
    4 sigma^2 sqrt((M - p) / N). The chosen p is the smallest that passes.
    """
    m = eigenvalues.shape[1]
    lam = eigenvalues.clamp_min(0)
    # number of noise components k = M - p, for k = 1..M
    k = torch.arange(1, m + 1, dtype=lam.dtype)
    mean_noise = torch.cumsum(lam, dim=1) / k  # mean of the k smallest
    spread = (lam - lam[:, :1]) / (4.0 * torch.sqrt(k / n_samples))  # (lambda_k - lambda_1) / width
    consistent = mean_noise >= spread
    # largest k (fewest signal components) still consistent with noise
    k_noise = m - torch.argmax(torch.flip(consistent, dims=[1]).to(torch.int8), dim=1)
    k_noise = torch.where(consistent.any(dim=1), k_noise, torch.zeros_like(k_noise))
    sigma2 = torch.gather(mean_noise, 1, (k_noise - 1).clamp_min(0)[:, None])[:, 0]
    sigma2 = torch.where(k_noise > 0, sigma2, torch.zeros_like(sigma2))
    return m - k_noise, sigma2


def default_window(n_echoes: int) -> int:
    """Smallest odd window width >= 5 whose square is at least ``n_echoes``."""
    width = max(5, int(np.ceil(np.sqrt(n_echoes))))
    return width + 1 - width % 2


def denoise_mppca(
    echoes: np.ndarray,
    mask: np.ndarray | None = None,
    window: int | None = None,
    block_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Denoise a multi-echo series by local PCA with Marchenko–Pastur thresholding.

    Parameters
    ----------
    echoes : ndarray, shape (X, Y, Z, E)
        Magnitude (or real) echo images, E >= 3.
    mask : ndarray of bool, shape (X, Y, Z), optional
        Voxels to denoise; others are returned unchanged. Default: all.
    window : int, optional
        Odd in-plane window width (voxels); the window holds window**2
        samples, which must be at least E. Default: the smallest odd
        width of at least 5 with window**2 >= E.
    block_size : int
        Voxels per batched eigendecomposition (memory bound
        ``block_size * window**2 * E * 4`` bytes).

    Returns
    -------
    denoised : ndarray, float32, shape (X, Y, Z, E)
    n_components : ndarray, int16, shape (X, Y, Z)
        Signal components kept per voxel (0 outside ``mask``).
    sigma : ndarray, float32, shape (X, Y, Z)
        Local noise standard deviation estimated from the discarded
        eigenvalues (NaN outside ``mask``).
    """
    data = np.asarray(echoes, dtype=np.float32)
    if data.ndim != 4:
        raise ValueError(f"echoes must be 4D (X, Y, Z, echoes), got shape {data.shape}")
    n_echoes = data.shape[3]
    if n_echoes < 3:
        raise ValueError(f"denoising needs at least 3 echoes, got {n_echoes}")
    if window is None:
        window = default_window(n_echoes)
    if window < 3 or window % 2 == 0:
        raise ValueError(f"window must be an odd number >= 3, got {window}")
    if window * window < n_echoes:
        raise ValueError(f"a {window}x{window} window has fewer samples than the {n_echoes} echoes")
    if not np.all(np.isfinite(data)):
        raise ValueError("echoes contain NaN or infinite values")
    keep = np.ones(data.shape[:3], bool) if mask is None else np.asarray(mask, bool)
    if keep.shape != data.shape[:3]:
        raise ValueError(f"mask shape {keep.shape} does not match the images {data.shape[:3]}")
    half = window // 2
    padded = torch.from_numpy(np.pad(data, ((half, half), (half, half), (0, 0), (0, 0)), mode="reflect"))
    # neighbourhoods as a strided view: (X, Y, Z, E, window, window)
    windows = padded.unfold(0, window, 1).unfold(1, window, 1)
    ix, iy, iz = (torch.from_numpy(v) for v in np.nonzero(keep))
    centre = (window * window) // 2
    out = data.copy()
    n_comp = np.zeros(keep.shape, np.int16)
    sigma = np.full(keep.shape, np.nan, np.float32)

    def work(block: slice) -> None:
        with torch.inference_mode():
            x = windows[ix[block], iy[block], iz[block]].reshape(-1, n_echoes, window * window)
            n_samples = x.shape[2]
            evals, evecs = torch.linalg.eigh(x @ x.transpose(1, 2) / n_samples)
            p, s2 = _mp_signal_components(evals, n_samples)
            signal_vectors = evecs * (torch.arange(n_echoes)[None, None, :] >= (n_echoes - p)[:, None, None])
            centre_signal = x[:, :, centre, None]
            denoised = signal_vectors @ (signal_vectors.transpose(1, 2) @ centre_signal)
            idx = (ix[block].numpy(), iy[block].numpy(), iz[block].numpy())
            out[idx] = denoised[:, :, 0].numpy()
            n_comp[idx] = p.numpy()
            sigma[idx] = torch.sqrt(s2).numpy()

    run_in_blocks(ix.numel(), block_size, work)
    return out, n_comp, sigma
