"""What every trainer of :mod:`bids_muscle.seg` shares: the training loop,
the losses and Dice scores, the on-the-fly augmentation, and the start from
another model's weights.

Batches are augmented on the fly (Agosti et al. 2021): an independent random
translation, rotation and scaling of every sample (each leg is its own
sample, which gives the per-leg translation of the paper), elastic
deformation, and intensity changes (gamma, smooth multiplicative bias field,
contrast, Gaussian noise). The loss is soft Dice + cross-entropy; the
optimiser is AMSGrad Adam with the learning rate halved after a few epochs
without improvement (Agosti et al.), and training stops early when the
validation score has not improved for ``patience`` epochs (Hostin et al.
2023).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bids_muscle.seg.infer import predict_probabilities, torch_threads
from bids_muscle.seg.zoo import ModelCard

Progress = Callable[[dict[str, Any]], None]


@dataclass
class Augmentation:
    """Ranges of the random augmentation (set ``enabled=False`` to switch off).

    Rotation and scaling act in-plane; translations are a fraction of the
    patch size; the elastic displacement is in voxels, smoothed on a grid of
    ``elastic_grid`` control points per in-plane axis.
    """

    enabled: bool = True
    rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.85, 1.15)
    translation_fraction: float = 0.1
    elastic_probability: float = 0.5
    elastic_voxels: float = 3.0
    elastic_grid: int = 6
    gamma_range: tuple[float, float] = (0.7, 1.5)
    bias_strength: float = 0.3
    contrast_range: tuple[float, float] = (0.85, 1.15)
    noise_std: float = 0.05


@dataclass
class LegVolume:
    """One leg ready for training: normalised image and class map on the model grid."""

    image: np.ndarray
    classes: np.ndarray
    group: int


@dataclass
class TrainingResult:
    """What a trainer produced: the model card, where it was written, and the epochs."""

    card: ModelCard
    card_path: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_dice: float = float("nan")
    stopped_early: bool = False


def fit_network(
    network: nn.Module,
    draw_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    validate: Callable[[nn.Module], dict[str, float]],
    *,
    epochs: int,
    steps_per_epoch: int,
    learning_rate: float,
    weight_decay: float = 0.0,
    lr_patience: int | None = None,
    patience: int,
    score: str = "val_dice",
    lower_is_better: bool = False,
    time_limit_s: float | None = None,
    num_threads: int | None = None,
    progress: Progress | None = None,
    start: float | None = None,
    before_epoch: Callable[[int], dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
    """The training loop of every trainer here: AMSGrad Adam on batches from
    ``draw_batch``; after each epoch ``validate`` gives the record's
    validation fields, of which ``score`` picks the best weights, halves the
    learning rate after ``lr_patience`` epochs without gain (never when
    None) and stops the training after ``patience`` such epochs, or after
    the epoch that passes ``time_limit_s`` (counted from ``start``).
    ``before_epoch(epoch)`` runs first in every epoch and returns extra
    record fields. The network ends with its best weights, in eval mode.

    Returns the best epoch's record, every record, and whether patience
    stopped the training."""
    start = time.monotonic() if start is None else start
    sign = -1.0 if lower_is_better else 1.0
    optimiser = torch.optim.Adam(network.parameters(), lr=learning_rate, weight_decay=weight_decay, amsgrad=True)
    scheduler = None if lr_patience is None else torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimiser, mode="max", factor=0.5, patience=lr_patience)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    best_state = copy.deepcopy(network.state_dict())
    stopped_early = False
    with torch_threads(num_threads):
        for epoch in range(1, epochs + 1):
            extra = before_epoch(epoch) if before_epoch is not None else {}
            network.train()
            losses = []
            for _ in range(steps_per_epoch):
                x, y = draw_batch()
                value = loss(network(x), y)
                optimiser.zero_grad(set_to_none=True)
                value.backward()
                optimiser.step()
                losses.append(float(value.detach()))
            network.eval()
            record = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"), **validate(network)}
            if scheduler is not None:
                scheduler.step(sign * record[score])
            if not best or sign * record[score] > sign * best[score]:
                best, best_state = record, copy.deepcopy(network.state_dict())
            record.update({f"best_{score}": best[score], "learning_rate": optimiser.param_groups[0]["lr"],
                           "elapsed_s": time.monotonic() - start, **extra})
            history.append(record)
            if progress is not None:
                progress(record)
            if epoch - best["epoch"] >= patience:
                stopped_early = True
                break
            if time_limit_s is not None and record["elapsed_s"] > time_limit_s:
                break
    network.load_state_dict(best_state)
    network.eval()
    return best, history, stopped_early


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, n_classes: int, smooth: float = 1e-5) -> torch.Tensor:
    """Soft Dice (mean over foreground classes, pooled over the batch) plus
    cross-entropy; voxels whose target is negative (tissue a synthesis source
    does not label, :data:`bids_muscle.seg.synth.IGNORE`) are left out."""
    valid = target >= 0
    safe = target.clamp_min(0)
    ce = F.cross_entropy(logits, target.masked_fill(~valid, -100), ignore_index=-100) if valid.any() else logits.sum() * 0.0
    weight = valid.unsqueeze(1).to(logits.dtype)
    probs = torch.softmax(logits, dim=1) * weight
    one_hot = F.one_hot(safe, n_classes).movedim(-1, 1).to(probs.dtype) * weight
    dims = (0,) + tuple(range(2, logits.ndim))
    intersection = (probs * one_hot).sum(dims)
    denominator = probs.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + smooth) / (denominator + smooth)
    return ce + (1.0 - dice[1:].mean()) if n_classes > 1 else ce


def dice_per_class(prediction: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """Dice of classes 1..n_classes-1 (NaN where absent from both)."""
    counts = np.bincount(truth.ravel() * n_classes + prediction.ravel(), minlength=n_classes * n_classes)
    confusion = counts.reshape(n_classes, n_classes)
    tp = np.diag(confusion)[1:].astype(float)
    total = confusion.sum(0)[1:] + confusion.sum(1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * tp / total, np.nan)


def validation_dice(
    network: nn.Module, legs: Sequence[LegVolume], spatial_dims: int, n_classes: int, patch: Sequence[int] | None = None
) -> float:
    """Mean Dice over classes and validation legs (whole-leg prediction, 3D
    networks by sliding windows of ``patch``); voxels with a negative target
    are left out."""
    scores = []
    for leg in legs:
        probs = predict_probabilities(network, leg.image, spatial_dims, batch_size=8, patch_size=patch if spatial_dims == 3 else None)
        prediction = np.argmax(probs, axis=0)
        truth = leg.classes.copy()
        unknown = truth < 0
        prediction[unknown] = 0
        truth[unknown] = 0
        scores.append(dice_per_class(prediction, truth, n_classes))
    values = np.concatenate(scores) if scores else np.array([np.nan])
    return float(np.nanmean(values)) if np.isfinite(values).any() else 0.0


def augment_batch(
    images: torch.Tensor, classes: torch.Tensor, settings: Augmentation, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random spatial and intensity augmentation of a batch.

    Parameters
    ----------
    images : torch.Tensor
        (B, 1, *S) normalised images, S = (H, W) or (X, Y, Z).
    classes : torch.Tensor
        (B, *S) class indices.
    """
    spatial_dims = images.ndim - 2
    grid = _random_grid(images.shape[0], tuple(images.shape[2:]), settings, generator)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    classes = F.grid_sample(classes[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    classes = classes[:, 0].round().long()
    b = images.shape[0]

    def uniform(low: float, high: float, shape: tuple[int, ...] = ()) -> torch.Tensor:
        return low + (high - low) * torch.rand((b,) + shape, generator=generator)

    view = (b,) + (1,) * (spatial_dims + 1)
    gamma = torch.exp(uniform(math.log(settings.gamma_range[0]), math.log(settings.gamma_range[1]))).view(view)
    images = torch.sign(images) * images.abs().clamp_min(1e-6) ** gamma
    coarse = torch.randn((b, 1) + (3,) * spatial_dims, generator=generator)
    mode = "bilinear" if spatial_dims == 2 else "trilinear"
    bias = F.interpolate(coarse, size=images.shape[2:], mode=mode, align_corners=True)
    images = images * torch.exp(settings.bias_strength * uniform(0.0, 1.0).view(view) * bias)
    images = images * uniform(*settings.contrast_range).view(view)
    noise = torch.randn(images.shape, generator=generator)
    images = images + settings.noise_std * uniform(0.0, 1.0).view(view) * noise
    return images.contiguous(), classes.contiguous()


def _random_grid(batch: int, shape: tuple[int, ...], settings: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """Sampling grid (B, *S, ndim) for grid_sample: in-plane rotation and
    scaling about the centre, translation, and optional smooth elastic
    displacement; the slice axis of 3D patches is only translated."""
    spatial_dims = len(shape)
    axes = [torch.linspace(-1 + 1 / n, 1 - 1 / n, n) for n in shape]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    # work in voxel units so rotations are not distorted by unequal sides
    half = torch.tensor([n / 2.0 for n in shape])
    voxels = (coords * half).unsqueeze(0).repeat((batch,) + (1,) * (spatial_dims + 1))

    def uniform(low: float, high: float, size: tuple[int, ...] = ()) -> torch.Tensor:
        return low + (high - low) * torch.rand((batch,) + size, generator=generator)

    angle = torch.deg2rad(uniform(-settings.rotation_deg, settings.rotation_deg))
    scale = uniform(*settings.scale_range)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    view = (batch,) + (1,) * spatial_dims
    u, v = voxels[..., 0], voxels[..., 1]
    rotated_u = cos.view(view) * u - sin.view(view) * v
    rotated_v = sin.view(view) * u + cos.view(view) * v
    moved = [rotated_u, rotated_v] + [voxels[..., k] for k in range(2, spatial_dims)]
    for k in range(2):
        shift = uniform(-settings.translation_fraction, settings.translation_fraction) * shape[k]
        moved[k] = moved[k] + shift.view(view)
    if settings.elastic_probability > 0 and settings.elastic_voxels > 0:
        active = (torch.rand(batch, generator=generator) < settings.elastic_probability).float()
        control = (batch, 2, settings.elastic_grid, settings.elastic_grid) + (1,) * (spatial_dims - 2)
        displacement = torch.randn(control, generator=generator) * settings.elastic_voxels
        mode = "bicubic" if spatial_dims == 2 else "trilinear"
        displacement = F.interpolate(displacement, size=shape, mode=mode, align_corners=True)
        for k in range(2):
            moved[k] = moved[k] + active.view(view) * displacement[:, k]
    normalised = [m / half[k] for k, m in enumerate(moved)]
    # grid_sample expects the last axis first in the coordinate vector
    return torch.stack(normalised[::-1], dim=-1)


def load_matching_weights(network: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy parameters whose names and shapes match (fine-tuning to another
    label set re-initialises only the output layer).

    2D weights also start a 3D network of the same layout (a U-Net 2D a
    U-Net 3D): a 3x3 kernel becomes a 3x3x1 kernel or the central slice of a
    3x3x3 one (the other slices zero), and transposed-convolution kernels are
    repeated along the slice axis (nearest upsampling), so the 3D network
    starts as the 2D one applied slice by slice."""
    own = network.state_dict()
    transposed = {f"{name}.weight" for name, module in network.named_modules() if isinstance(module, nn.ConvTranspose3d)}
    for key, value in state.items():
        if key not in own:
            continue
        target = own[key]
        if target.shape == value.shape:
            own[key] = value
        elif target.ndim == value.ndim + 1 and target.shape[:-1] == value.shape:
            depth = target.shape[-1]
            if key in transposed:
                own[key] = value.unsqueeze(-1).repeat((1,) * value.ndim + (depth,))
            else:
                inflated = torch.zeros_like(target)
                inflated[..., depth // 2] = value
                own[key] = inflated
    network.load_state_dict(own)
