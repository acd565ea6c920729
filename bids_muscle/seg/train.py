"""Training and fine-tuning of muscle segmenters (and the region classifier).

Every training image is reoriented to RAS+, split into legs and the left leg
mirrored with its labels mapped to the right side, exactly as at inference
(:mod:`bids_muscle.seg.infer`), so each leg is one training volume of a
canonical right leg (Rohm et al. 2021). Volumes are resampled to the model
voxel size and normalised by robust percentiles.

Batches are augmented on the fly (Agosti et al. 2021): an independent random
translation, rotation and scaling of every leg (each leg is its own sample,
which gives the per-leg translation of the paper), elastic deformation,
and intensity changes (gamma, smooth multiplicative bias field, contrast,
Gaussian noise). The loss is soft Dice + cross-entropy; the optimiser is
AMSGrad Adam with the learning rate halved after 4 epochs without
improvement (Agosti et al.), and training stops early when the validation
Dice has not improved for ``patience`` epochs (Hostin et al. 2023). The best
weights are written with a model card by :func:`bids_muscle.seg.zoo.save_model`.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bids_muscle import __version__
from bids_muscle.seg.infer import (
    model_grid_shape,
    predict_probabilities,
    region_slices,
    resize_volume,
    robust_normalise,
    torch_threads,
)
from bids_muscle.seg.labels import REGIONS, load_label_table
from bids_muscle.seg.legs import body_mask, canonical_labels, reorient_to_ras, split_legs, voxel_sizes
from bids_muscle.seg import synth
from bids_muscle.seg.nets import SEGMENTATION_NETWORKS, SPATIAL_DIMS, build_network
from bids_muscle.seg.synth import extract_box
from bids_muscle.seg.zoo import ModelCard, load_model, save_model

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
    """What :func:`train_model` produced."""

    card: ModelCard
    card_path: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_dice: float = float("nan")
    stopped_early: bool = False


def prepare_leg_volumes(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    affines: Sequence[np.ndarray],
    region: str,
    label_indices: Sequence[int],
    voxel_size_mm: Sequence[float | None],
    spatial_dims: int,
    normalisation: dict[str, Any] | None = None,
) -> list[LegVolume]:
    """Split, mirror, resample and normalise training images into leg volumes.

    Labels are mapped to the right side and then to class indices (position
    in ``label_indices`` + 1); labels not in ``label_indices`` become
    background.
    """
    if not (len(images) == len(labels) == len(affines)):
        raise ValueError(f"got {len(images)} images, {len(labels)} label maps and {len(affines)} affines")
    if not images:
        raise ValueError("no training images")
    normalisation = normalisation or {"low": 0.5, "high": 99.5}
    table_size = max(lab.index for lab in load_label_table(region)) + 1
    lut = np.zeros(table_size, dtype=np.int64)
    lut[np.asarray(label_indices, dtype=np.int64)] = np.arange(1, len(label_indices) + 1)
    target = list(voxel_size_mm)
    if spatial_dims == 2:
        target[2] = None
    legs = []
    for group, (image, label, affine) in enumerate(zip(images, labels, affines)):
        image = np.asarray(image)
        label = np.asarray(label)
        if image.ndim != 3 or image.shape != label.shape:
            raise ValueError(f"training pair {group}: image {image.shape} and labels {label.shape} must be equal 3D shapes")
        image_ras, affine_ras, _ = reorient_to_ras(np.nan_to_num(image.astype(np.float32)), affine)
        label_ras, _, _ = reorient_to_ras(canonical_labels(label, region), affine)
        mask = body_mask(image_ras, slice_axis=2)
        crops = split_legs(image_ras, affine_ras, mask=mask | (label_ras > 0))
        voxel_mm = voxel_sizes(affine_ras)
        for crop in crops:
            leg_image = crop.extract(image_ras)
            leg_classes = lut[crop.extract(label_ras).astype(np.int64)]
            normalised = robust_normalise(
                leg_image, crop.extract(mask), float(normalisation.get("low", 0.5)), float(normalisation.get("high", 99.5))
            )
            grid = model_grid_shape(leg_image.shape, voxel_mm, target)
            legs.append(
                LegVolume(
                    image=resize_volume(normalised, grid).astype(np.float32),
                    classes=resize_volume(leg_classes, grid, mode="nearest").astype(np.int64),
                    group=group,
                )
            )
    return legs


def train_model(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    affines: Sequence[np.ndarray],
    region: str,
    architecture: str,
    out_dir: str | Path,
    *,
    name: str | None = None,
    arguments: dict[str, Any] | None = None,
    label_indices: Sequence[int] | None = None,
    voxel_size_mm: Sequence[float | None] | None = None,
    patch_size: Sequence[int] | None = None,
    epochs: int = 100,
    steps_per_epoch: int = 50,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-5,
    seed: int = 0,
    val_fraction: float = 0.2,
    patience: int = 10,
    augmentation: Augmentation | None = None,
    init_from: str | Path | None = None,
    model_dir: str | Path | None = None,
    input_contrast: str = "any",
    training_data: list[dict[str, Any]] | None = None,
    licence: str = "",
    description: str = "",
    time_limit_s: float | None = None,
    num_threads: int | None = None,
    progress: Progress | None = None,
) -> TrainingResult:
    """Train (or fine-tune) a muscle segmenter and save it as a model.

    Parameters
    ----------
    images, labels, affines : sequences of numpy.ndarray
        3D images, label maps (indices of the ``region`` table, either side)
        and their 4x4 RAS+ affines, any orientation and voxel size.
    region : str
        ``thigh`` or ``calf``.
    architecture : str
        ``unet2d``, ``unet3d``, ``transunet`` or ``hrnet``.
    out_dir : str or Path
        Where ``<name>.pt`` and ``<name>.json`` are written.
    name : str, optional
        Model name (default ``<region>_<architecture>``).
    arguments : dict, optional
        Network constructor arguments (``in_channels`` and ``n_classes`` are
        set here).
    label_indices : sequence of int, optional
        Right-side labels to learn, in class order (default: every muscle
        present in the training labels).
    voxel_size_mm : sequence, optional
        Model grid (x, y, z or None); default (1, 1, None), or that of
        ``init_from``.
    patch_size : sequence of int, optional
        Training patch (in-plane for 2D, X, Y, Z for 3D); default: the
        largest leg rounded up to the network stride (at most 256 in-plane,
        32 slices).
    epochs, steps_per_epoch, batch_size : int
        At most ``epochs`` epochs of ``steps_per_epoch`` batches.
    learning_rate, weight_decay : float
        AMSGrad Adam settings.
    seed : int
        Seeds the weights, the split, the sampling and the augmentation.
    val_fraction : float
        Share of images (of legs when only one image) held out for early
        stopping.
    patience : int
        Epochs without validation improvement before stopping.
    augmentation : Augmentation, optional
        Augmentation ranges (default :class:`Augmentation`).
    init_from : str or Path, optional
        Model (card path or name) to fine-tune; its architecture, arguments
        and voxel size are reused; when the label set differs the output
        layer is re-initialised.
    model_dir : str or Path, optional
        User model directory for ``init_from`` names.
    input_contrast, training_data, licence, description
        Written to the model card.
    time_limit_s : float, optional
        Stop after the epoch that exceeds this wall time.
    num_threads : int, optional
        Torch threads (default: every core this process may use).
    progress : callable, optional
        Called after every epoch with a dict (epoch, train_loss, val_dice,
        best_val_dice, learning_rate, elapsed_s).

    Returns
    -------
    TrainingResult
    """
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    init_state = None
    arguments = dict(arguments or {})
    if init_from is not None:
        init_network, init_card = load_model(init_from, model_dir)
        if init_card.architecture != architecture:
            raise ValueError(f"init_from model {init_card.name!r} is a {init_card.architecture!r}, not {architecture!r}")
        arguments = {**init_card.arguments, **arguments}
        voxel_size_mm = voxel_size_mm or init_card.voxel_size_mm
        init_state = init_network.state_dict()
    if architecture not in SEGMENTATION_NETWORKS:
        raise ValueError(f"architecture must be one of {SEGMENTATION_NETWORKS}, got {architecture!r}")
    spatial_dims = SPATIAL_DIMS[architecture]
    voxel_size_mm = list(voxel_size_mm or [1.0, 1.0, None])
    if label_indices is None:
        present = set()
        for label in labels:
            present |= set(np.unique(canonical_labels(label, region)).tolist())
        label_indices = sorted(present - {0})
    label_indices = [int(i) for i in label_indices]
    if not label_indices:
        raise ValueError("the training label maps hold no muscle labels")
    arguments.update(in_channels=1, n_classes=len(label_indices) + 1)
    card = ModelCard(
        name=name or f"{region}_{architecture}",
        architecture=architecture,
        arguments=arguments,
        region=region,
        labels=label_indices,
        input_contrast=input_contrast,
        voxel_size_mm=voxel_size_mm,
        training_data=list(training_data or []),
        licence=licence,
        description=description,
    )
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    network = build_network(architecture, **arguments)
    if init_state is not None:
        _load_matching(network, init_state)
    legs = prepare_leg_volumes(
        images, labels, affines, region, label_indices, voxel_size_mm, spatial_dims, card.normalisation
    )
    if not legs:
        raise ValueError("no legs found in the training images")
    train_legs, val_legs, split_note = _split(legs, val_fraction, rng)
    stride = _stride(network, spatial_dims)
    patch = _default_patch(train_legs, spatial_dims, stride) if patch_size is None else tuple(int(p) for p in patch_size)
    if spatial_dims == 3:
        card.patch_size = list(patch)
    augmentation = augmentation or Augmentation()
    sampler = _PatchSampler(train_legs, patch, spatial_dims, rng)

    def draw_batch() -> tuple[torch.Tensor, torch.Tensor]:
        x, y = sampler.batch(batch_size)
        return augment_batch(x, y, augmentation, generator) if augmentation.enabled else (x, y)

    best, history, stopped_early = _fit(
        network, draw_batch, lambda logits, y: dice_ce_loss(logits, y, card.n_classes),
        lambda net: {"val_dice": validation_dice(net, val_legs, spatial_dims, card.n_classes, patch)},
        epochs=epochs, steps_per_epoch=steps_per_epoch, learning_rate=learning_rate, weight_decay=weight_decay,
        lr_patience=4, patience=patience, time_limit_s=time_limit_s, num_threads=num_threads, progress=progress,
    )
    best_dice, best_epoch = best["val_dice"], best["epoch"]
    card.validation = {
        "metric": "mean Dice over muscles (model grid, canonical leg)",
        "val_dice": round(best_dice, 4),
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "n_train_legs": len(train_legs),
        "n_val_legs": len(val_legs),
        "split": split_note,
        "seed": seed,
        "fine_tuned_from": None if init_from is None else str(init_from),
    }
    card_path = save_model(network, card, out_dir)
    return TrainingResult(card=card, card_path=card_path, history=history, best_val_dice=best_dice, stopped_early=stopped_early)


def _fit(
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
    cross-entropy."""
    ce = F.cross_entropy(logits, target)
    probs = torch.softmax(logits, dim=1)
    one_hot = F.one_hot(target, n_classes).movedim(-1, 1).to(probs.dtype)
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
    network: nn.Module, legs: Sequence[LegVolume], spatial_dims: int, n_classes: int, patch: Sequence[int]
) -> float:
    """Mean Dice over muscles and validation legs (whole-leg prediction)."""
    scores = []
    for leg in legs:
        probs = predict_probabilities(network, leg.image, spatial_dims, batch_size=8, patch_size=patch if spatial_dims == 3 else None)
        scores.append(dice_per_class(np.argmax(probs, axis=0), leg.classes, n_classes))
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


class _PatchSampler:
    """Random patches of the training legs, centred on the leg with a random
    offset (slices with labels are preferred)."""

    def __init__(self, legs: Sequence[LegVolume], patch: tuple[int, ...], spatial_dims: int, rng: np.random.Generator) -> None:
        self.legs = legs
        self.patch = patch
        self.spatial_dims = spatial_dims
        self.rng = rng
        self.labelled_slices = [np.flatnonzero(leg.classes.any(axis=(0, 1))) for leg in legs]
        self.fills = [float(np.percentile(leg.image, 1.0)) for leg in legs]
        self.centres = []
        for leg in legs:
            found = np.argwhere(leg.classes.any(axis=2)) if leg.classes.any() else np.argwhere(np.ones(leg.classes.shape[:2]))
            self.centres.append(found.mean(axis=0))

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, classes = [], []
        for _ in range(size):
            k = int(self.rng.integers(len(self.legs)))
            leg = self.legs[k]
            nz = leg.image.shape[2]
            labelled = self.labelled_slices[k]
            if self.spatial_dims == 2:
                z = int(self.rng.choice(labelled)) if labelled.size else int(self.rng.integers(nz))
                z_start, z_size = z, 1
            else:
                z_size = self.patch[2]
                z_start = int(self.rng.integers(min(0, nz - z_size), max(0, nz - z_size) + 1))
            starts = []
            for axis in range(2):
                n, p = leg.image.shape[axis], self.patch[axis]
                free = abs(p - n) / 2.0
                jitter = self.rng.uniform(-free, free) * 0.5 if p > n else self.rng.uniform(-free, free)
                centre = self.centres[k][axis] if p < n else (n - 1) / 2.0
                starts.append(int(round(centre + jitter - (p - 1) / 2.0)))
            box = (starts[0], starts[1], z_start)
            sizes = (self.patch[0], self.patch[1], z_size)
            image = extract_box(leg.image, box, sizes, self.fills[k])
            label = extract_box(leg.classes, box, sizes, 0)
            if self.spatial_dims == 2:
                image, label = image[..., 0], label[..., 0]
            images.append(image)
            classes.append(label)
        x = torch.from_numpy(np.stack(images)[:, None].astype(np.float32))
        y = torch.from_numpy(np.stack(classes).astype(np.int64))
        return x, y


def _split(legs: list[LegVolume], val_fraction: float, rng: np.random.Generator) -> tuple[list[LegVolume], list[LegVolume], str]:
    """Hold out whole images (legs of one image stay together); with one
    image, hold out a leg; with one leg, validate on the training leg."""
    groups = sorted({leg.group for leg in legs})
    if len(groups) >= 2:
        keys, note = [leg.group for leg in legs], "by image"
    elif len(legs) >= 2:
        keys, note = list(range(len(legs))), "by leg (single image)"
    else:
        return legs, legs, "none (single leg: validated on training data)"
    unique = sorted(set(keys))
    n_val = min(len(unique) - 1, max(1, int(round(val_fraction * len(unique)))))
    held = set(rng.permutation(unique)[:n_val].tolist())
    train = [leg for leg, key in zip(legs, keys) if key not in held]
    val = [leg for leg, key in zip(legs, keys) if key in held]
    return train, val, note


def _stride(network: nn.Module, spatial_dims: int) -> tuple[int, ...]:
    stride = getattr(network, "total_stride", None)
    return tuple(stride) if stride is not None else (16,) * spatial_dims


def _default_patch(legs: Sequence[LegVolume], spatial_dims: int, stride: Sequence[int]) -> tuple[int, ...]:
    def round_up(n: int, m: int) -> int:
        return int(math.ceil(n / m) * m)

    sizes = np.array([leg.image.shape for leg in legs])
    inplane = tuple(min(round_up(int(sizes[:, a].max()), stride[a]), 256) for a in range(2))
    if spatial_dims == 2:
        return inplane
    return inplane + (min(round_up(int(sizes[:, 2].max()), stride[2]), 32),)


def _load_matching(network: nn.Module, state: dict[str, torch.Tensor]) -> None:
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


def train_region_classifier(
    images: Sequence[np.ndarray],
    affines: Sequence[np.ndarray],
    regions: Sequence[str],
    out_dir: str | Path,
    *,
    name: str = "region_classifier",
    arguments: dict[str, Any] | None = None,
    slices_per_image: int = 9,
    voxel_mm: float = 4.0,
    epochs: int = 50,
    steps_per_epoch: int = 20,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    seed: int = 0,
    val_fraction: float = 0.2,
    patience: int = 10,
    training_data: list[dict[str, Any]] | None = None,
    licence: str = "",
    time_limit_s: float | None = None,
    num_threads: int | None = None,
    progress: Progress | None = None,
) -> TrainingResult:
    """Train the thigh/calf classifier of Agosti et al. 2021 on whole axial
    slices (both legs) at ``voxel_mm`` (:func:`region_slices`), with
    rotation, scaling, left-right flips and intensity augmentation; early
    stopping on the validation cross-entropy."""
    classes = list(REGIONS)
    if not (len(images) == len(affines) == len(regions)):
        raise ValueError("images, affines and regions must have equal lengths")
    unknown = sorted(set(regions) - set(classes))
    if unknown:
        raise ValueError(f"unknown regions {unknown}; expected {classes}")
    arguments = {"input_size": 128, **(arguments or {}), "in_channels": 1, "n_classes": len(classes)}
    card = ModelCard(
        name=name,
        architecture="region",
        arguments=arguments,
        region="any",
        classes=classes,
        voxel_size_mm=[float(voxel_mm), float(voxel_mm), None],
        training_data=list(training_data or []),
        licence=licence,
    )
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    network = build_network("region", **arguments)
    size = network.input_size
    stacks = []
    for image, affine, region in zip(images, affines, regions):
        slices = torch.from_numpy(region_slices(image, affine, slices_per_image, voxel_mm, size))[:, None]
        stacks.append((slices, classes.index(region)))
    order = rng.permutation(len(stacks))
    n_val = min(len(stacks) - 1, max(1, int(round(val_fraction * len(stacks))))) if len(stacks) > 1 else 0
    val = [stacks[i] for i in order[:n_val]] or stacks
    train = [stacks[i] for i in order[n_val:]]
    x_train = torch.cat([s for s, _ in train])
    y_train = torch.cat([torch.full((s.shape[0],), c) for s, c in train])
    x_val = torch.cat([s for s, _ in val])
    y_val = torch.cat([torch.full((s.shape[0],), c) for s, c in val])
    settings = Augmentation(elastic_probability=0.0)

    def draw_batch() -> tuple[torch.Tensor, torch.Tensor]:
        pick = torch.from_numpy(rng.integers(len(x_train), size=batch_size))
        x, y = x_train[pick], y_train[pick]
        x, _ = augment_batch(x, torch.zeros(x.shape[0], size, size, dtype=torch.long), settings, generator)
        flip = torch.rand(x.shape[0], generator=generator) < 0.5
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(2), x), y

    def validate(net: nn.Module) -> dict[str, float]:
        with torch.inference_mode():
            logits = net(x_val)
            return {"val_loss": float(F.cross_entropy(logits, y_val)),
                    "val_accuracy": float((logits.argmax(dim=1) == y_val).float().mean())}

    best, history, stopped_early = _fit(
        network, draw_batch, F.cross_entropy, validate, epochs=epochs, steps_per_epoch=steps_per_epoch,
        learning_rate=learning_rate, patience=patience, score="val_loss", lower_is_better=True,
        time_limit_s=time_limit_s, num_threads=num_threads, progress=progress,
    )
    best_loss, best_accuracy, best_epoch = best["val_loss"], best["val_accuracy"], best["epoch"]
    card.validation = {
        "metric": "slice accuracy at the lowest validation cross-entropy",
        "val_accuracy": round(best_accuracy, 4),
        "val_loss": round(best_loss, 4),
        "best_epoch": best_epoch,
        "n_val_images": len(val),
    }
    card_path = save_model(network, card, out_dir)
    return TrainingResult(card=card, card_path=card_path, history=history, best_val_dice=float("nan"), stopped_early=stopped_early)


#: ``desc-`` values of label maps that are not muscle label maps (the
#: phantom's ground-truth tissue classes), skipped by name.
NON_MUSCLE_DESCS = frozenset({"tissue"})


def _name_parts(path: Path) -> tuple[list[str], str]:
    """Underscore-separated parts of a NIfTI file name before its suffix, and the suffix."""
    parts = path.name.split(".nii")[0].split("_")
    return parts[:-1], parts[-1]


def _entity(parts: Sequence[str], key: str) -> str | None:
    for part in parts:
        if part.startswith(f"{key}-"):
            return part[len(key) + 1:]
    return None


def region_from_name(path: str | Path) -> str | None:
    """Region a file name gives: its ``acq-<region>`` entity, else the one
    region word in the name (``thigh_case01_dseg.nii.gz``); None when it
    names neither or both regions."""
    parts, _ = _name_parts(Path(path))
    acq = _entity(parts, "acq")
    if acq in REGIONS:
        return acq
    words = set(re.split(r"[_\-.]", Path(path).name.lower()))
    found = [region for region in REGIONS if region in words]
    return found[0] if len(found) == 1 else None


def _label_table(label: Path, root: Path) -> Path | None:
    """The BIDS label table (``*dseg.tsv``) of a label map: its sidecar's
    ``LabelTable``, a ``.tsv`` of the same stem, or the most specific
    ``[<entities>_]dseg.tsv`` in its folder or a parent folder up to ``root``
    whose entities all appear in the map's name (BIDS inheritance)."""
    stem = label.name.split(".nii")[0]
    folders = list(dict.fromkeys([label.parent] + [p for p in label.parents if p == root or root in p.parents]))
    sidecar = label.parent / f"{stem}.json"
    if sidecar.is_file():
        try:
            named = json.loads(sidecar.read_text()).get("LabelTable")
        except (OSError, ValueError, AttributeError):
            named = None
        if isinstance(named, str):
            for folder in folders:
                if (folder / named).is_file():
                    return folder / named
    if (label.parent / f"{stem}.tsv").is_file():
        return label.parent / f"{stem}.tsv"
    parts, _ = _name_parts(label)
    for folder in folders:
        tables = []
        for table in folder.glob("*dseg.tsv"):
            table_parts = table.name[: -len(".tsv")].split("_")[:-1]
            if table.name.endswith("dseg.tsv") and table.name.split("_")[-1] == "dseg.tsv" and set(table_parts) <= set(parts):
                tables.append((len(table_parts), table))
        if tables:
            return max(tables)[1]
    return None


def _muscle_names() -> set[str]:
    return {text.lower() for region in REGIONS for lab in load_label_table(region) for text in (lab.name, lab.abbreviation)}


def _not_a_muscle_map(label: Path, root: Path) -> str | None:
    """Why ``label`` is not a muscle label map, judged by name and label
    table; None when it may be one."""
    parts, _ = _name_parts(label)
    desc = _entity(parts, "desc")
    if desc in NON_MUSCLE_DESCS:
        return f"desc-{desc} maps are not muscle label maps"
    table = _label_table(label, root)
    if table is not None:
        try:
            with table.open(newline="") as handle:
                rows = list(csv.DictReader(handle, delimiter="\t"))
        except (OSError, csv.Error, UnicodeDecodeError):
            return None
        names = [str(row.get(key) or "").strip() for row in rows for key in ("name", "abbreviation")]
        names = [n for n in names if n]
        if names and not {n.lower() for n in names} & _muscle_names():
            return f"its label table {table.name} names no muscles ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
    return None


def select_label_maps(
    label_roots: Sequence[str | Path], region: str | None = None, log: Callable[[str], None] | None = None
) -> list[tuple[Path, Path]]:
    """Muscle label maps under ``label_roots``, as (root, label map) pairs.

    Every ``*_dseg.nii[.gz]`` is considered. A map is skipped (with the
    reason passed to ``log``) when its name gives another region than
    ``region`` (``acq-<region>`` or a region word in the name, see
    :func:`region_from_name`), when its ``desc-`` marks a non-muscle map
    (:data:`NON_MUSCLE_DESCS`, e.g. ``desc-tissue``), or when its BIDS label
    table (``dseg.tsv``, ``desc-<x>_dseg.tsv`` or the sidecar's
    ``LabelTable``) names no muscle of the label tables. Whether its values
    fit the ``region`` table is checked when it is loaded
    (:func:`check_label_map`)."""
    selected = []
    for root in label_roots:
        root = Path(root)
        if not root.exists():
            raise ValueError(f"{root}: label folder does not exist")
        for label in sorted(root.rglob("*_dseg.nii*")):
            if not label.name.endswith((".nii", ".nii.gz")):
                continue
            named = region_from_name(label)
            if region is not None and named is not None and named != region:
                reason = f"a {named} map, not {region}"
            else:
                reason = _not_a_muscle_map(label, root)
            if reason is not None:
                if log is not None:
                    log(f"skipped {label}: {reason}")
                continue
            selected.append((root, label))
    return selected


def _image_search_roots(label_root: Path, image_root: str | Path | None) -> list[Path]:
    """Where the images of a label folder are looked for: ``image_root``;
    else the label folder, then its dataset's ``DatasetLinks`` ``raw``
    (a ``file://`` path) and the BIDS dataset around a ``derivatives`` folder."""
    if image_root is not None:
        return [Path(image_root)]
    roots = [label_root]
    description = label_root / "dataset_description.json"
    if description.is_file():
        try:
            raw = json.loads(description.read_text()).get("DatasetLinks", {}).get("raw", "")
        except (OSError, ValueError, AttributeError):
            raw = ""
        if isinstance(raw, str) and raw.startswith("file://") and Path(raw[len("file://"):]).is_dir():
            roots.append(Path(raw[len("file://"):]))
    if label_root.resolve().parent.name == "derivatives":
        roots.append(label_root.resolve().parent.parent)
    return list(dict.fromkeys(roots))


class _ImageIndex:
    """Images ``*_<suffix>.nii[.gz]`` under a folder, keyed by their name
    parts without ``desc-`` (raw images before derivatives, then undescribed
    before described)."""

    def __init__(self, root: Path, suffix: str) -> None:
        self.by_key: dict[tuple[str, ...], list[Path]] = {}
        found = []
        for path in root.rglob(f"*{suffix}.nii*"):
            parts, last = _name_parts(path)
            if last != suffix or not path.name.endswith((".nii", ".nii.gz")) or not path.is_file():
                continue
            relative = path.relative_to(root).parts
            rank = ("derivatives" in relative[:-1], _entity(parts, "desc") is not None, str(path))
            found.append((rank, tuple(p for p in parts if not p.startswith("desc-")), path))
        for _, key, path in sorted(found):
            self.by_key.setdefault(key, []).append(path)

    def find(self, key: tuple[str, ...]) -> list[Path]:
        """Images with exactly the parts ``key``, else those whose parts hold every part of ``key``."""
        if key in self.by_key:
            return self.by_key[key]
        wanted = set(key)
        return [paths[0] for other, paths in sorted(self.by_key.items()) if wanted <= set(other)]


def find_training_pairs(
    label_roots: Sequence[str | Path],
    image_suffix: str = "T1w",
    image_root: str | Path | None = None,
    region: str | None = None,
    log: Callable[[str], None] | None = None,
) -> list[tuple[Path, Path]]:
    """Pair the muscle label maps under ``label_roots`` with their images.

    Label maps are chosen by :func:`select_label_maps` (``region``, muscle
    maps only). The image of ``<parts>[_desc-<x>]_dseg.nii.gz`` is the
    ``<parts>[_desc-<y>]_<image_suffix>.nii[.gz]`` with the same parts apart
    from ``desc-`` (else the first whose name holds all of them, e.g. an
    extra ``run-``) under ``image_root``; without ``image_root`` under the
    label folder, then the raw dataset of a derivatives folder
    (``DatasetLinks.raw`` or the folder above ``derivatives/``). Raw images
    are preferred to derivatives. This covers a plain folder of
    ``case_T1w.nii.gz`` / ``case_dseg.nii.gz`` pairs, a BIDS derivatives
    folder (``sub-X_acq-thigh_desc-manual_dseg.nii.gz``) next to a raw BIDS
    dataset, and the app's own output folder (``desc-<net>_dseg``).
    """
    pairs = []
    indices: dict[Path, _ImageIndex] = {}
    for root, label in select_label_maps(label_roots, region, log):
        parts, _ = _name_parts(label)
        key = tuple(p for p in parts if not p.startswith("desc-"))
        searched = _image_search_roots(root, image_root)
        candidates: list[Path] = []
        for search in searched:
            if search not in indices:
                indices[search] = _ImageIndex(search, image_suffix)
            candidates = [p for p in indices[search].find(key) if p != label]
            if candidates:
                break
        if not candidates:
            where = " or ".join(str(s) for s in searched)
            raise ValueError(f"{label}: no image '{'_'.join(key)}[_desc-*]_{image_suffix}.nii[.gz]' under {where}")
        pairs.append((candidates[0], label))
    return pairs


def check_label_map(labels: np.ndarray, region: str, path: str | Path, named: bool = True) -> str | None:
    """Check that a label map holds only indices of the ``region`` table.

    Returns None when it does. A map whose name gives no region
    (``named=False``) and that holds only indices of the other region's table
    is not an error: the reason to skip it is returned. Anything else raises
    ValueError naming ``path``."""
    values = np.unique(labels)
    allowed = {0} | {lab.index for lab in load_label_table(region)}
    foreign = sorted(set(values.tolist()) - allowed)
    if not foreign:
        return None
    for other in REGIONS:
        if other != region and not named and set(values.tolist()) <= {0} | {lab.index for lab in load_label_table(other)}:
            return f"holds {other} labels only, not {region}"
    shown = ", ".join(str(int(v)) for v in foreign[:10]) + (", ..." if len(foreign) > 10 else "")
    raise ValueError(
        f"{path}: label map holds indices [{shown}] that are not in the {region} label table "
        f"(bids_muscle/data/labels/{region}.tsv)"
    )


def _load_pair(image_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import nibabel as nib

    loaded = []
    for path in (image_path, label_path):
        try:
            img = nib.load(str(path))
            loaded.append((img, np.asarray(img.dataobj)))
        except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as error:
            raise ValueError(f"{path}: cannot be read as NIfTI ({error})") from error
    (image_img, image), (label_img, labels) = loaded
    image = image.astype(np.float32)
    if image.ndim == 4:
        image = image[..., 0]
    if labels.ndim != 3:
        raise ValueError(f"{label_path}: a label map must be 3D, got shape {labels.shape}")
    labels = np.rint(labels).astype(np.int16)
    if image.shape != labels.shape:
        raise ValueError(f"{label_path}: shape {labels.shape} differs from its image {image_path} {image.shape}")
    if not np.allclose(image_img.affine, label_img.affine, atol=1e-3):
        raise ValueError(f"{label_path}: affine differs from its image {image_path}")
    return image, labels, image_img.affine


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` unless the help already states its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.required:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``bids_muscle-train``."""
    parser = argparse.ArgumentParser(
        prog="bids_muscle-train",
        description=(
            "Train or fine-tune a muscle segmentation model from (image, label map) NIfTI pairs. --labels folders "
            "are searched for *_dseg.nii[.gz]; maps of the other region (acq-<region> or a region word in the "
            "name) and non-muscle maps (desc-tissue, or a label table naming no muscles) are skipped with the "
            "reason; each map is paired with the image of the same name entities (desc- aside) and --image-suffix."
        ),
        formatter_class=_DefaultsHelpFormatter,
    )
    parser.add_argument("out_dir", type=Path, help="folder for <name>.pt and <name>.json")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--region", required=True, choices=REGIONS, help="region of the model (required)")
    parser.add_argument("--architecture", default="unet2d", choices=SEGMENTATION_NETWORKS, help="network")
    parser.add_argument("--labels", nargs="+", type=Path, default=[], metavar="DIR",
                        help="folders with *_dseg.nii[.gz] label maps: a plain folder, BIDS derivatives "
                             "(e.g. a phantom's derivatives/truth) or a bids_muscle output folder (default: none)")
    parser.add_argument("--images-dir", type=Path,
                        help="where to look for the images, e.g. the raw BIDS dataset (default: the label folder, "
                             "then the raw dataset of a derivatives folder)")
    parser.add_argument("--image-suffix", default="T1w", help="suffix of the image files")
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("IMAGE", "LABELS"), type=Path,
                        help="one explicit (image, label map) pair; repeatable (default: none)")
    parser.add_argument("--name", help="model name (default: <region>_<architecture>)")
    parser.add_argument("--base-features", type=int, help="network width of the first level (default: the network's)")
    parser.add_argument("--voxel-size", nargs=2, type=float, metavar=("X_MM", "Y_MM"),
                        help="in-plane model voxel size in mm (default: 1 1, or that of --init-from)")
    parser.add_argument("--slice-mm", type=float, help="model slice spacing for 3D networks (default: native)")
    parser.add_argument("--epochs", type=int, default=100, help="most epochs")
    parser.add_argument("--steps-per-epoch", type=int, default=50, help="batches per epoch")
    parser.add_argument("--batch-size", type=int, default=8, help="patches per batch")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="AMSGrad Adam learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, split, sampling and augmentation")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of images held out for early stopping")
    parser.add_argument("--patience", type=int, default=10, help="epochs without validation gain before stopping")
    parser.add_argument("--init-from", help="model card path or name to fine-tune (default: none, train from scratch)")
    parser.add_argument("--model-dir", type=Path, help="user model folder for --init-from names (default: none)")
    parser.add_argument("--contrast", default="any", help="input contrast written to the card")
    parser.add_argument("--licence", default="", help="licence of the weights, for the card (default: empty)")
    parser.add_argument("--time-limit", type=float, help="stop after the epoch that passes this many seconds (default: none)")
    parser.add_argument("--threads", type=int, help="torch threads (default: all available cores)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``bids_muscle-train``."""
    args = build_parser().parse_args(argv)

    def log(message: str) -> None:
        print(message, flush=True)

    try:
        pairs = [(Path(i), Path(lab), True) for i, lab in args.pair]
        if args.labels:
            found = find_training_pairs(args.labels, args.image_suffix, args.images_dir, args.region, log)
            pairs += [(i, lab, region_from_name(lab) is not None) for i, lab in found]
        if not pairs:
            where = f" under {', '.join(str(p) for p in args.labels)}" if args.labels else ""
            raise ValueError(f"no {args.region} muscle label maps{where}; give --labels DIR or --pair IMAGE LABELS")
        images, labels, affines, used = [], [], [], []
        for image_path, label_path, named in pairs:
            image, label, affine = _load_pair(image_path, label_path)
            skip = check_label_map(label, args.region, label_path, named=named)
            if skip is not None:
                log(f"skipped {label_path}: {skip}")
                continue
            images.append(image)
            labels.append(label)
            affines.append(affine)
            used.append((image_path, label_path))
        if not used:
            raise ValueError(f"no {args.region} muscle label maps left to train on (reasons above)")
        arguments = {} if args.base_features is None else {"base_features": args.base_features}
        voxel = list(args.voxel_size) + [args.slice_mm] if args.voxel_size else None
        if voxel is None and args.slice_mm is not None:
            voxel = [1.0, 1.0, args.slice_mm]
        log(f"training {args.architecture} on {len(used)} image(s) of the {args.region}:")
        for image_path, label_path in used:
            log(f"  {label_path} with {image_path}")

        def report(record: dict[str, Any]) -> None:
            print(
                f"epoch {record['epoch']:4d}  loss {record['train_loss']:.4f}  val Dice {record['val_dice']:.4f}"
                f"  best {record['best_val_dice']:.4f}  lr {record['learning_rate']:.2e}  {record['elapsed_s']:.0f} s",
                flush=True,
            )

        result = train_model(
            images,
            labels,
            affines,
            args.region,
            args.architecture,
            args.out_dir,
            name=args.name,
            arguments=arguments,
            voxel_size_mm=voxel,
            epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            seed=args.seed,
            val_fraction=args.val_fraction,
            patience=args.patience,
            init_from=args.init_from,
            model_dir=args.model_dir,
            input_contrast=args.contrast,
            training_data=[{"image": str(i), "labels": str(lab)} for i, lab in used],
            licence=args.licence,
            time_limit_s=args.time_limit,
            num_threads=args.threads,
            progress=report,
        )
    except ValueError as error:
        print(f"bids_muscle-train: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {result.card_path} (validation Dice {result.best_val_dice:.4f})", flush=True)
    return 0


def masked_dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, n_classes: int, smooth: float = 1e-5) -> torch.Tensor:
    """:func:`dice_ce_loss` that ignores voxels whose target is negative
    (tissue a synthesis source does not label, :data:`bids_muscle.seg.synth.IGNORE`)."""
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


def masked_validation_dice(
    network: nn.Module, legs: Sequence[LegVolume], spatial_dims: int, n_classes: int, patch: Sequence[int] | None = None
) -> float:
    """Mean Dice over classes and validation legs; voxels with a negative
    target are left out."""
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


class SyntheticPool:
    """A pool of synthetic training slices, partly redrawn every epoch so
    synthesis costs a fraction of the training time while every batch still
    comes from many different random images.

    Legs are drawn by source group (``weights``), then a slice at random, then
    a fresh random contrast (:func:`bids_muscle.seg.synth.synthesise_patch`).
    A ``patch`` of three sizes (H, W, Z) makes 3D blocks instead
    (:func:`bids_muscle.seg.synth.synthesise_block`): Z consecutive slices
    of sources with slices of 3 mm or more, or every k-th slice of thinner
    ones for a random spacing in ``settings.slice_mm``.
    A group may also hold real labelled legs (:class:`LegVolume`, normalised
    image and classes on the model grid, ``IGNORE`` where unknown): their
    slices (blocks) are cropped at random and degraded
    (:func:`bids_muscle.seg.synth.degrade`) half of the time; slices without
    labels in a real block are ignored.
    ``target`` is ``"muscles"`` (classes) or ``"muscleregion"`` (1 inside the
    fascia except bone, 0 elsewhere; synthetic legs only).
    """

    def __init__(
        self,
        groups: Sequence[Sequence[Any]],
        weights: Sequence[float],
        region: str,
        label_indices: Sequence[int],
        patch: tuple[int, ...],
        size: int,
        rng: np.random.Generator,
        settings: Any = None,
        target: str = "muscles",
    ) -> None:
        self.groups = [list(g) for g in groups if len(g)]
        weights = np.array([w for g, w in zip(groups, weights) if len(g)], dtype=float)
        self.weights = weights / weights.sum()
        self.region = region
        self.label_indices = list(label_indices)
        self.patch = patch
        self.rng = rng
        self.settings = settings
        self.target = target
        if target != "muscles" and any(isinstance(leg, LegVolume) for g in self.groups for leg in g):
            raise ValueError("real labelled legs can only train the 'muscles' target")
        self.images = torch.zeros((size, 1) + tuple(patch))
        self.classes = torch.zeros((size,) + tuple(patch), dtype=torch.long)
        self.redraw(np.arange(size))

    def draw(self) -> tuple[np.ndarray, np.ndarray]:
        group = self.groups[int(self.rng.choice(len(self.groups), p=self.weights))]
        leg = group[int(self.rng.integers(len(group)))]
        if isinstance(leg, LegVolume):
            return self._real_sample(leg)
        nz = leg.classes.shape[2]
        if len(self.patch) == 2:
            z = int(self.rng.integers(nz))
            sample = synth.synthesise_patch(leg, z, self.region, self.label_indices, self.patch, self.rng, self.settings)
        else:
            depth = self.patch[2]
            spacing = (self.settings or synth.SynthesisSettings()).slice_mm
            dz = float(leg.voxel_mm[2])
            step = 1 if dz >= spacing[0] else int(self.rng.integers(max(1, round(spacing[0] / dz)), max(1, int(spacing[1] / dz)) + 1))
            z_start = self._block_start(nz, depth, step)
            sample = synth.synthesise_block(leg, z_start, depth, step, self.region, self.label_indices, self.patch[:2],
                                            self.rng, self.settings)
        if self.target == "muscleregion":
            return sample.image, sample.muscle_region.astype(np.int64)
        return sample.image, sample.classes

    def _block_start(self, nz: int, depth: int, step: int = 1) -> int:
        """First slice of a block; blocks longer than the leg overhang one end at random."""
        last = nz - 1 - (depth - 1) * step
        return int(self.rng.integers(min(0, last), max(0, last) + 1))

    def _real_sample(self, leg: LegVolume) -> tuple[np.ndarray, np.ndarray]:
        labelled = (leg.classes > 0).any(axis=(0, 1))
        depth = 1 if len(self.patch) == 2 else self.patch[2]
        z = int(self.rng.choice(np.flatnonzero(labelled))) if depth == 1 else self._block_start(len(labelled), depth)
        size = leg.classes.shape[:2] + (depth,)
        image = extract_box(leg.image, (0, 0, z), size, float(np.percentile(leg.image, 1.0)))
        classes = extract_box(leg.classes, (0, 0, z), size, 0)
        unlabelled = ~extract_box(labelled, (z,), (depth,), False)
        if self.rng.uniform() < 0.5:
            body = image > 0.02
            image = robust_normalise(synth.degrade(image - image.min(), self.rng, self.settings), body)
        start = synth.random_crop(size[:2], self.patch, (classes > 0).any(axis=2), self.rng) + (0,)
        box = tuple(self.patch[:2]) + (depth,)
        image = extract_box(image, start, box, float(np.percentile(image, 1.0)))
        classes = extract_box(classes, start, box, 0).astype(np.int64)
        classes[..., unlabelled] = synth.IGNORE
        return (image[..., 0], classes[..., 0]) if depth == 1 else (image, classes)

    def redraw(self, indices: np.ndarray) -> None:
        for i in indices:
            image, classes = self.draw()
            self.images[i, 0] = torch.from_numpy(image)
            self.classes[i] = torch.from_numpy(classes)

    def refresh(self, fraction: float) -> None:
        n = round(fraction * len(self.images))
        if n:
            self.redraw(self.rng.choice(len(self.images), size=n, replace=False))

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        pick = torch.randint(len(self.images), (size,), generator=generator)
        return self.images[pick].clone(), self.classes[pick].clone()


def train_synthetic_model(
    anatomy_groups: Sequence[Sequence[Any]],
    region: str,
    architecture: str,
    out_dir: str | Path,
    *,
    label_indices: Sequence[int],
    val_legs: Sequence[LegVolume],
    group_weights: Sequence[float] | None = None,
    name: str | None = None,
    arguments: dict[str, Any] | None = None,
    voxel_size_mm: Sequence[float] = (2.0, 2.0),
    patch_size: Sequence[int] = (128, 128),
    target: str = "muscles",
    pool_size: int = 1536,
    refresh_fraction: float = 0.25,
    epochs: int = 100,
    steps_per_epoch: int = 50,
    batch_size: int = 16,
    learning_rate: float = 2e-3,
    weight_decay: float = 1e-5,
    seed: int = 0,
    patience: int = 12,
    lr_patience: int = 4,
    augmentation: Augmentation | None = None,
    settings: Any = None,
    init_from: str | Path | None = None,
    model_dir: str | Path | None = None,
    training_data: list[dict[str, Any]] | None = None,
    licence: str = "",
    description: str = "",
    time_limit_s: float | None = None,
    num_threads: int | None = None,
    progress: Progress | None = None,
    precision: str = "float32",
    inference_patch: Sequence[int] | None = None,
) -> TrainingResult:
    """Train a segmenter on images synthesised from label maps.

    Parameters
    ----------
    anatomy_groups : sequence of sequences of LegAnatomy
        Canonical legs (:func:`bids_muscle.seg.synth.leg_anatomies`) grouped
        by source; a group is drawn with its ``group_weights`` share.
    region, architecture, out_dir
        As in :func:`train_model`. 3D networks (``unet3d``) train on blocks
        of native slices and keep the native slice spacing at inference
        (card voxel size z is null).
    label_indices : sequence of int
        Right-side indices in class order. For ``target="muscleregion"`` the
        single class 1 is the muscle region and the card lists the region's
        first muscle index as a placeholder label (see its description).
    val_legs : sequence of LegVolume
        Validation legs on the model grid (negative classes are ignored).
    voxel_size_mm : sequence of float
        In-plane model voxel size of the anatomies.
    patch_size : sequence of int
        Training slice size (H, W), or block size (H, W, Z) for 3D networks
        (also the card's sliding-window patch).
    target : str
        ``muscles`` or ``muscleregion``.
    pool_size, refresh_fraction
        Synthetic slices kept in memory and the share redrawn every epoch.
    settings : SynthesisSettings, optional
        Synthesis ranges.
    lr_patience : int
        Epochs without validation gain before the learning rate is halved.
    init_from : str or Path, optional
        Model (card path or name, looked up in ``model_dir`` then the
        package) whose matching weights start the training: continue a
        training, or start a calf model from the thigh one (the output layer
        is re-initialised when the label sets differ). A U-Net 2D may start
        a U-Net 3D (its kernels inflated, see :func:`_load_matching`).
    precision : str
        Weight storage of :func:`bids_muscle.seg.zoo.save_model`:
        ``float32``, ``float16`` (half the size) or ``int8`` (a quarter).
    inference_patch : sequence of int, optional
        Sliding-window patch of a 3D network at validation and inference
        (the card's ``patch_size``; default ``patch_size``): a window larger
        than the training block gives more context and fewer windows.

    Other parameters are those of :func:`train_model`.
    """
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    if architecture not in SEGMENTATION_NETWORKS:
        raise ValueError(f"{architecture!r} is not a segmentation network")
    spatial_dims = SPATIAL_DIMS[architecture]
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != spatial_dims:
        raise ValueError(f"a {architecture} needs a patch of {spatial_dims} sizes, got {patch}")
    if target not in ("muscles", "muscleregion"):
        raise ValueError(f"target must be 'muscles' or 'muscleregion', got {target!r}")
    label_indices = [int(i) for i in label_indices]
    card_labels = label_indices if target == "muscles" else label_indices[:1]
    n_classes = len(card_labels) + 1
    arguments = {**(arguments or {}), "in_channels": 1, "n_classes": n_classes}
    card = ModelCard(
        name=name or f"{region}_{architecture}",
        architecture=architecture,
        arguments=arguments,
        region=region,
        labels=card_labels,
        input_contrast="any",
        voxel_size_mm=[float(voxel_size_mm[0]), float(voxel_size_mm[1]), None],
        patch_size=list(inference_patch or patch) if spatial_dims == 3 else None,
        training_data=list(training_data or []),
        licence=licence,
        description=description,
    )
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    network = build_network(architecture, **arguments)
    if init_from is not None:
        init_network, init_card = load_model(init_from, model_dir)
        if init_card.architecture != architecture and (init_card.architecture, architecture) != ("unet2d", "unet3d"):
            raise ValueError(f"init_from model {init_card.name!r} is a {init_card.architecture!r}, not {architecture!r}")
        _load_matching(network, init_network.state_dict())
    weights = list(group_weights) if group_weights is not None else [1.0] * len(anatomy_groups)
    start = time.monotonic()
    pool = SyntheticPool(anatomy_groups, weights, region, label_indices, patch, pool_size, rng, settings, target)
    synthesis_s = time.monotonic() - start
    augmentation = augmentation or Augmentation()

    def draw_batch() -> tuple[torch.Tensor, torch.Tensor]:
        x, y = pool.batch(batch_size, generator)
        return augment_batch(x, y, augmentation, generator) if augmentation.enabled else (x, y)

    def refresh(epoch: int) -> dict[str, Any]:
        nonlocal synthesis_s
        if epoch > 1:
            refresh_start = time.monotonic()
            pool.refresh(refresh_fraction)
            synthesis_s += time.monotonic() - refresh_start
        return {"synthesis_s": synthesis_s}

    best, history, stopped_early = _fit(
        network, draw_batch, lambda logits, y: masked_dice_ce_loss(logits, y, n_classes),
        lambda net: {"val_dice": masked_validation_dice(net, val_legs, spatial_dims, n_classes, card.patch_size)},
        epochs=epochs, steps_per_epoch=steps_per_epoch, learning_rate=learning_rate, weight_decay=weight_decay,
        lr_patience=lr_patience, patience=patience, time_limit_s=time_limit_s, num_threads=num_threads,
        progress=progress, start=start, before_epoch=refresh,
    )
    best_dice, best_epoch = best["val_dice"], best["epoch"]
    card.validation = {
        "metric": "mean Dice over classes (model grid, canonical leg)" if target == "muscles" else "Dice of the muscle region",
        "val_dice": round(best_dice, 4),
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "n_val_legs": len(val_legs),
        "seed": seed,
        "trained_by": "synthesis from label maps (bids_muscle.seg.synth)",
        "init_from": None if init_from is None else Path(str(init_from)).stem,
        "output": target,
        "synthesis_s": round(synthesis_s, 1),
        "training_s": round(time.monotonic() - start, 1),
    }
    card_path = save_model(network, card, out_dir, precision)
    return TrainingResult(card=card, card_path=card_path, history=history, best_val_dice=best_dice, stopped_early=stopped_early)
