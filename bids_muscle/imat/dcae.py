"""Patch auto-encoder with a triplet loss for IMAT classification (Amer et al. 2022, 2.4).

Each muscle-region voxel is described by the 16 x 16 in-plane patch around
it, cut from two co-registered quantitative maps (water T2 and fat
fraction from the two-component EPG fit, or T2 and PD). A convolutional
encoder (two blocks of 3 x 3 convolution, ReLU, 2 x 2 max pooling and
batch normalisation with 32 and 64 feature maps, flattened to 1024 units,
then a dense layer) maps the patch to an embedding on the unit hypersphere;
a mirrored decoder reconstructs the patch from it. Training minimises

    beta * triplet(anchor, positive, negative; margin alpha)
    + lambda * (MSE(anchor) + MSE(positive) + MSE(negative))

with alpha = 1, beta = 1/2 and lambda = 1/6 (Eq. 1-3), where positive and
negative are drawn by the weak label of the anchor (voxel fat fraction
above 50 %). Without the triplet term (``triplet_weight=0``) the same
network is the plain DCAE of the paper's "DCAE + k-means" baseline.

The patch of a voxel covers offsets -8..+7 around it on both in-plane axes
(the voxel sits at index (8, 8)). Maps are normalised by
:func:`normalise_maps` and multiplied by the muscle-region mask, so the
patch sees zeros outside the region as in the paper.

Trained encoders ship as ``<name>.pt`` (the encoder ``state_dict``) and
``<name>.json`` (a card: architecture, input maps, normalisation, loss,
training data, reference class centroids in the embedding, sha256) in
``bids_muscle/data/models``.
"""

from __future__ import annotations

import functools
import io
import json
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from bids_muscle.seg.zoo import package_model_dir, sha256_file

PATCH_SIZE = 16
IMAT_CARD_VERSION = 1
#: Architecture name written into the cards of this module.
ARCHITECTURE = "dcae_patch_encoder"

#: Normalisation of each supported map. ``fraction``: percent divided by
#: 100 (an absolute scale, so a participant's composition cannot shift it).
#: ``relative``: divided by the 25th percentile over the muscle region,
#: which lies in viable muscle unless fat fills three quarters of the
#: region (fat raises T2 and PD, so the lower quartile stays in muscle).
MAP_NORMALISATION: dict[str, dict[str, Any]] = {
    "ff_percent": {"method": "fraction", "scale": 100.0, "clip": [-0.2, 1.2]},
    "water_t2_s": {"method": "relative", "percentile": 25.0, "clip": [0.0, 4.0]},
    "t2_s": {"method": "relative", "percentile": 25.0, "clip": [0.0, 6.0]},
    "pd": {"method": "relative", "percentile": 25.0, "clip": [0.0, 4.0]},
}


class PatchEncoder(nn.Module):
    """Encoder of ``in_channels`` x 16 x 16 patches onto the unit hypersphere.

    Parameters
    ----------
    in_channels : int
        Number of maps per patch.
    embedding_dim : int
        Size of the embedding.
    patch_size : int
        Patch side, a multiple of 4.

    Input (N, in_channels, patch_size, patch_size); output (N, embedding_dim)
    with unit L2 norm.
    """

    def __init__(self, in_channels: int = 2, embedding_dim: int = 16, patch_size: int = PATCH_SIZE) -> None:
        super().__init__()
        if patch_size % 4 or patch_size < 4:
            raise ValueError(f"patch_size must be a positive multiple of 4, got {patch_size}")
        self.in_channels = in_channels
        self.patch_size = patch_size
        # ReLU after the pooling: max and ReLU commute, so this is the
        # paper's convolution-ReLU-pooling on a quarter of the values
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(32),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(64),
        )
        self.dense = nn.Linear(64 * (patch_size // 4) ** 2, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1:] != (self.in_channels, self.patch_size, self.patch_size):
            raise ValueError(
                f"patches must have shape (N, {self.in_channels}, {self.patch_size}, {self.patch_size}), got {tuple(x.shape)}"
            )
        return F.normalize(self.dense(self.features(x).flatten(1)), dim=1)


class PatchDecoder(nn.Module):
    """Mirror of :class:`PatchEncoder`: dense layer to 64 x 4 x 4, two stride-2 transposed convolutions.

    Input (N, embedding_dim); output (N, out_channels, patch_size, patch_size).
    """

    def __init__(self, out_channels: int = 2, embedding_dim: int = 16, patch_size: int = PATCH_SIZE) -> None:
        super().__init__()
        self.side = patch_size // 4
        self.dense = nn.Linear(embedding_dim, 64 * self.side**2)
        self.up = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(32, out_channels, 3, stride=2, padding=1, output_padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(self.dense(z).view(-1, 64, self.side, self.side))


class PatchAutoencoder(nn.Module):
    """Encoder and decoder; ``forward`` returns (embedding, reconstruction)."""

    def __init__(self, in_channels: int = 2, embedding_dim: int = 16, patch_size: int = PATCH_SIZE) -> None:
        super().__init__()
        self.encoder = PatchEncoder(in_channels, embedding_dim, patch_size)
        self.decoder = PatchDecoder(in_channels, embedding_dim, patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return z, self.decoder(z)


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Mean over the batch of ``max(0, |a - p|^2 - |a - n|^2 + margin)`` (Eq. 2).

    The paper sums over the batch; the mean keeps the weights of Eq. 3
    independent of the batch size.
    """
    d_pos = (anchor - positive).pow(2).sum(dim=1)
    d_neg = (anchor - negative).pow(2).sum(dim=1)
    return F.relu(d_pos - d_neg + margin).mean()


# --------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------


def _check_volume(array: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.shape != shape:
        raise ValueError(f"{name} has shape {array.shape}, the muscle region {shape}")
    return array


def normalise_maps(maps: Mapping[str, np.ndarray], region_mask: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Stack the named maps, normalised, as channels (C, X, Y, Z) float32.

    Each map is normalised by :data:`MAP_NORMALISATION`, NaN voxels of the
    region (no water component, noise floor) take the median of the map
    over the region, values are clipped to the range of the method, and
    everything outside the region is 0.

    Parameters
    ----------
    maps : mapping of str to ndarray, shape (X, Y, Z)
        Quantitative maps keyed by name (``water_t2_s``, ``ff_percent``,
        ``t2_s``, ``pd``).
    region_mask : ndarray of bool, shape (X, Y, Z)
    names : sequence of str
        Maps to use, in channel order.
    """
    region = np.asarray(region_mask, dtype=bool)
    if not region.any():
        raise ValueError("muscle region mask is empty")
    channels = np.zeros((len(names),) + region.shape, np.float32)
    for c, name in enumerate(names):
        if name not in maps:
            raise ValueError(f"map {name!r} is missing (given: {sorted(maps)})")
        if name not in MAP_NORMALISATION:
            raise ValueError(f"no normalisation for map {name!r}; known maps: {sorted(MAP_NORMALISATION)}")
        values = _check_volume(maps[name], region.shape, f"map {name!r}").astype(np.float32)[region]
        finite = np.isfinite(values)
        if not finite.any():
            raise ValueError(f"map {name!r} has no finite value in the muscle region")
        values = np.where(finite, values, np.median(values[finite]))
        spec = MAP_NORMALISATION[name]
        if spec["method"] == "fraction":
            values = values / spec["scale"]
        else:
            reference = float(np.percentile(values, spec["percentile"]))
            if not reference > 0:
                raise ValueError(f"map {name!r} has a non-positive {spec['percentile']}th percentile in the muscle region")
            values = values / reference
        channels[c][region] = np.clip(values, *spec["clip"])
    return channels


def extract_patches(channels: np.ndarray, centres: np.ndarray, patch_size: int = PATCH_SIZE) -> np.ndarray:
    """In-plane patches around voxel centres, zero beyond the image edge.

    Parameters
    ----------
    channels : ndarray, shape (C, X, Y, Z)
    centres : ndarray of int, shape (N, 3)
        Voxel indices (x, y, z).

    Returns
    -------
    ndarray, shape (N, C, patch_size, patch_size), float32
    """
    half = patch_size // 2
    padded = np.pad(channels, ((0, 0), (half, half), (half, half), (0, 0)))
    offsets = np.arange(patch_size)
    ix = centres[:, 0, None] + offsets  # padded index of offset -half is the centre index
    iy = centres[:, 1, None] + offsets
    patches = padded[:, ix[:, :, None], iy[:, None, :], centres[:, 2, None, None]]
    return np.ascontiguousarray(patches.transpose(1, 0, 2, 3), dtype=np.float32)


@torch.no_grad()
def embed(encoder: PatchEncoder, channels: np.ndarray, centres: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Embeddings (N, D) of the patches around ``centres`` (encoder in eval mode)."""
    # channels-last convolutions are about twice as fast on the CPU for two input channels
    encoder.eval().to(memory_format=torch.channels_last)
    out = []
    for start in range(0, len(centres), batch_size):
        patches = extract_patches(channels, centres[start : start + batch_size], encoder.patch_size)
        out.append(encoder(torch.from_numpy(patches).contiguous(memory_format=torch.channels_last)).numpy())
    dim = encoder.dense.out_features
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------


@dataclass
class TrainingVolume:
    """One volume for training: normalised channels, region and weak labels."""

    channels: np.ndarray  # (C, X, Y, Z) from normalise_maps
    region: np.ndarray  # bool (X, Y, Z)
    weak_imat: np.ndarray  # bool (X, Y, Z), weak label (e.g. fitted FF > 50 %)


def _pools(volumes: Sequence[TrainingVolume], edge_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Voxel centres (volume, x, y, z) of weak viable and weak IMAT voxels.

    With ``edge_only``, only voxels with a voxel of the other weak class in
    their in-plane 3 x 3 neighbourhood.
    """
    pools: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    ring = np.ones((3, 3, 1), bool)
    for v, vol in enumerate(volumes):
        viable, imat = vol.region & ~vol.weak_imat, vol.region & vol.weak_imat
        if edge_only:
            viable, imat = (
                viable & ndimage.binary_dilation(imat, structure=ring),
                imat & ndimage.binary_dilation(viable, structure=ring),
            )
        for label, mask in ((0, viable), (1, imat)):
            idx = np.argwhere(mask)
            pools[label].append(np.column_stack([np.full(len(idx), v), idx]))
    viable_pool, imat_pool = (np.concatenate(p) for p in pools)
    if not len(viable_pool) or not len(imat_pool):
        raise ValueError("training volumes need both weak viable and weak IMAT voxels")
    return viable_pool, imat_pool


def _gather(volumes: Sequence[TrainingVolume], picks: np.ndarray, patch_size: int) -> torch.Tensor:
    out = np.empty((len(picks), volumes[0].channels.shape[0], patch_size, patch_size), np.float32)
    for v in np.unique(picks[:, 0]):
        rows = picks[:, 0] == v
        out[rows] = extract_patches(volumes[v].channels, picks[rows, 1:], patch_size)
    return torch.from_numpy(out)


def train_patch_autoencoder(
    volumes: Sequence[TrainingVolume],
    steps: int = 3000,
    batch_size: int = 256,
    embedding_dim: int = 16,
    triplet_weight: float = 0.5,
    reconstruction_weight: float = 1.0 / 6.0,
    margin: float = 1.0,
    learning_rate: float = 1e-3,
    edge_fraction: float = 0.5,
    seed: int = 0,
    max_seconds: float | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[PatchAutoencoder, dict[str, Any]]:
    """Train the patch auto-encoder on weakly labelled volumes.

    Anchors are drawn half from weak viable and half from weak IMAT voxels
    (so a mildly infiltrated training set still teaches the IMAT class),
    positives from the anchor's weak class and negatives from the other,
    all from any training volume. A share ``edge_fraction`` of every draw
    comes from voxels that touch the other weak class in-plane: these are
    the patches whose centre decides the class while most of the patch
    says otherwise, the hardest to embed. With ``triplet_weight=0`` the loss is the
    reconstruction term only and the batch is ``3 * batch_size`` patches
    drawn uniformly from all region voxels, without the weak labels (the
    paper's plain DCAE).

    Parameters
    ----------
    volumes : sequence of TrainingVolume
    steps : int
        Optimiser steps (Adam, default settings; the learning rate decays
        from ``learning_rate`` to 0 on a cosine over the steps).
    batch_size : int
        Triplets per step.
    embedding_dim : int
    triplet_weight, reconstruction_weight, margin : float
        beta, lambda and alpha of Eq. 2-3.
    learning_rate : float
    edge_fraction : float
        Share of the draws taken from the class edges.
    seed : int
        Seeds the sampling and the weight initialisation.
    max_seconds : float, optional
        Stop after this much wall time even if ``steps`` are not done.
    log : callable(str), optional
        Receives a progress line every 200 steps.

    Returns
    -------
    model : PatchAutoencoder, in eval mode
    history : dict
        ``steps``, ``seconds``, ``loss`` / ``triplet`` / ``mse`` (means of
        the last 200 steps).
    """
    if not volumes:
        raise ValueError("no training volumes")
    n_channels = volumes[0].channels.shape[0]
    for vol in volumes:
        if vol.channels.shape[0] != n_channels or vol.channels.shape[1:] != vol.region.shape:
            raise ValueError("training volumes differ in channels or shape")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pools = _pools(volumes)
    edges = _pools(volumes, edge_only=True)
    everything = np.concatenate(pools)
    model = PatchAutoencoder(n_channels, embedding_dim)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    # cosine decay to zero: the last steps refine the class edges
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda k: 0.5 * (1.0 + np.cos(np.pi * min(k, steps) / steps)))
    model.train()

    def pick(label: int, n: int) -> np.ndarray:
        edge = (rng.uniform(size=n) < edge_fraction)[:, None]
        return np.where(edge, edges[label][rng.integers(0, len(edges[label]), n)],
                        pools[label][rng.integers(0, len(pools[label]), n)])

    recent: dict[str, list[float]] = {"loss": [], "triplet": [], "mse": []}
    start = time.perf_counter()
    step = 0
    for step in range(1, steps + 1):
        if triplet_weight > 0:
            n_imat = int(rng.binomial(batch_size, 0.5))
            anchors = np.concatenate([pick(0, batch_size - n_imat), pick(1, n_imat)])
            positives = np.concatenate([pick(0, batch_size - n_imat), pick(1, n_imat)])
            negatives = np.concatenate([pick(1, batch_size - n_imat), pick(0, n_imat)])
            picks = np.concatenate([anchors, positives, negatives])
        else:
            picks = everything[rng.integers(0, len(everything), 3 * batch_size)]
        x = _gather(volumes, picks, PATCH_SIZE)
        z, x_hat = model(x)
        # Eq. 3: the three reconstruction terms are MSEs of equal-size parts,
        # so their sum is three times the MSE over the whole batch
        mse = 3.0 * F.mse_loss(x_hat, x)
        za, zp, zn = z.split(batch_size)
        trip = triplet_loss(za, zp, zn, margin) if triplet_weight > 0 else torch.zeros(())
        loss = triplet_weight * trip + reconstruction_weight * mse
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        for key, value in (("loss", loss), ("triplet", trip), ("mse", mse)):
            recent[key] = (recent[key] + [float(value.detach())])[-200:]
        if log is not None and step % 200 == 0:
            log(f"step {step}: loss {np.mean(recent['loss']):.4f} triplet {np.mean(recent['triplet']):.4f} "
                f"mse {np.mean(recent['mse']):.4f} ({time.perf_counter() - start:.0f} s)")
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    model.eval()
    history = {"steps": step, "seconds": round(time.perf_counter() - start, 1)}
    history.update({key: round(float(np.mean(values)), 5) for key, values in recent.items()})
    return model, history


def class_centroids(encoder: PatchEncoder, volumes: Sequence[TrainingVolume], per_class: int = 20000, seed: int = 0) -> np.ndarray:
    """Mean embeddings (2, D) of weak viable (row 0) and weak IMAT (row 1) voxels, renormalised."""
    rng = np.random.default_rng(seed)
    centroids = []
    for pool in _pools(volumes):
        picks = pool[rng.integers(0, len(pool), min(per_class, len(pool)))]
        z = np.concatenate([embed(encoder, volumes[v].channels, picks[picks[:, 0] == v, 1:]) for v in np.unique(picks[:, 0])])
        mean = z.mean(axis=0)
        centroids.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
    return np.stack(centroids).astype(np.float32)


# --------------------------------------------------------------------------
# shipped encoders
# --------------------------------------------------------------------------


def save_encoder(encoder: PatchEncoder, card: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``<name>.pt`` (encoder ``state_dict``) and ``<name>.json`` (card) into ``out_dir``.

    The card needs ``name``, ``inputs`` and ``reference_centroids``; the
    architecture, its arguments, the normalisation of the inputs, the
    weights file name and its sha256 are filled in. Returns the card path.
    """
    for key in ("name", "inputs", "reference_centroids"):
        if key not in card:
            raise ValueError(f"encoder card needs {key!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{card['name']}.pt"
    torch.save({k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}, weights)
    full = {
        "name": card["name"],
        "architecture": ARCHITECTURE,
        "arguments": {
            "in_channels": encoder.in_channels,
            "embedding_dim": encoder.dense.out_features,
            "patch_size": encoder.patch_size,
        },
        "normalisation": {name: MAP_NORMALISATION[name] for name in card["inputs"]},
    }
    full.update({k: v for k, v in card.items() if k not in full})
    full.update({"weights_file": weights.name, "sha256": sha256_file(weights), "card_version": IMAT_CARD_VERSION})
    path = out_dir / f"{card['name']}.json"
    path.write_text(json.dumps(full, indent=2) + "\n")
    return path


def _card_path(name_or_path: str | Path) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix == ".json" or candidate.parent != Path("."):
        if not candidate.is_file():
            raise ValueError(f"IMAT encoder card not found: {candidate}")
        return candidate
    path = package_model_dir() / f"{name_or_path}.json"
    if not path.is_file():
        raise ValueError(f"no IMAT encoder named {str(name_or_path)!r} in {package_model_dir()}")
    return path


@functools.lru_cache(maxsize=8)
def _load_cached(card_path: str, digest: str) -> tuple[PatchEncoder, str]:
    card = json.loads(Path(card_path).read_text())
    weights = Path(card_path).parent / card["weights_file"]
    encoder = PatchEncoder(**card["arguments"])
    try:
        state = torch.load(io.BytesIO(weights.read_bytes()), map_location="cpu", weights_only=True)
        encoder.load_state_dict(state, strict=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as error:
        raise ValueError(f"cannot load IMAT encoder weights {weights}: {str(error).splitlines()[0]}") from None
    encoder.eval()
    return encoder, digest


def load_encoder(name_or_path: str | Path = "imat_dcae") -> tuple[PatchEncoder, dict[str, Any]]:
    """Load a trained encoder (eval mode, CPU) and its card.

    Parameters
    ----------
    name_or_path : str or Path
        Path of a ``.json`` card or the name of a model shipped in
        ``bids_muscle/data/models``.

    Raises
    ------
    ValueError
        Missing or invalid card, missing weights, sha256 mismatch or
        weights that do not fit the architecture; the message names the
        file.
    """
    path = _card_path(name_or_path)
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"IMAT encoder card {path} is not valid JSON: {error}") from None
    missing = [k for k in ("architecture", "arguments", "inputs", "reference_centroids", "weights_file", "sha256") if k not in card]
    if missing:
        raise ValueError(f"IMAT encoder card {path} lacks {missing}")
    if card["architecture"] != ARCHITECTURE:
        raise ValueError(f"IMAT encoder card {path}: architecture must be {ARCHITECTURE!r}, got {card['architecture']!r}")
    weights = path.parent / card["weights_file"]
    if Path(card["weights_file"]).name != card["weights_file"] or not weights.is_file():
        raise ValueError(f"weights of IMAT encoder card {path} not found: {weights}")
    digest = sha256_file(weights)
    if digest != card["sha256"]:
        raise ValueError(f"sha256 of {weights} is {digest}, the card {path} expects {card['sha256']}")
    encoder, _ = _load_cached(str(path.resolve()), digest)
    return encoder, card
