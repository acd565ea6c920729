"""Training and fine-tuning of muscle segmenters from labelled images.

Every training image is reoriented to RAS+, split into legs and the left leg
mirrored with its labels mapped to the right side, exactly as at inference
(:mod:`bids_muscle.seg.infer`), so each leg is one training volume of a
canonical right leg (Rohm et al. 2021). Volumes are resampled to the model
voxel size and normalised by robust percentiles; random patches of them are
augmented on the fly and trained with the shared loop of
:mod:`bids_muscle.seg.train_loop` (soft Dice + cross-entropy, AMSGrad Adam,
early stopping). The best weights are written with a model card by
:func:`bids_muscle.seg.zoo.save_model`.

The other trainers live beside it and are importable from here:
:func:`train_synthetic_model` (images synthesised from label maps,
:mod:`bids_muscle.seg.train_synth`), :func:`train_region_classifier`
(thigh/calf classifier, :mod:`bids_muscle.seg.train_region`); the training
pairs are found by :func:`find_training_pairs`
(:mod:`bids_muscle.seg.train_data`). The command line is
``bids_muscle-train`` (:mod:`bids_muscle.cli.train`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bids_muscle.seg.infer import model_grid_shape, resize_volume, robust_normalise
from bids_muscle.seg.labels import REGIONS, load_label_table
from bids_muscle.seg.legs import body_mask, canonical_labels, reorient_to_ras, split_legs, voxel_sizes
from bids_muscle.seg.nets import SEGMENTATION_NETWORKS, SPATIAL_DIMS, build_network
from bids_muscle.seg.synth import extract_box
from bids_muscle.seg.train_data import (
    NON_MUSCLE_DESCS,
    check_label_map,
    find_training_pairs,
    load_training_pair,
    region_from_name,
    select_label_maps,
)
from bids_muscle.seg.train_loop import (
    Augmentation,
    LegVolume,
    Progress,
    TrainingResult,
    augment_batch,
    dice_ce_loss,
    dice_per_class,
    fit_network,
    load_matching_weights,
    validation_dice,
)
from bids_muscle.seg.train_region import train_region_classifier
from bids_muscle.seg.train_synth import SyntheticPool, train_synthetic_model
from bids_muscle.seg.zoo import ModelCard, load_model, save_model

__all__ = [
    "NON_MUSCLE_DESCS",
    "Augmentation",
    "LegVolume",
    "SyntheticPool",
    "TrainingResult",
    "augment_batch",
    "check_label_map",
    "dice_ce_loss",
    "dice_per_class",
    "find_training_pairs",
    "load_matching_weights",
    "load_training_pair",
    "prepare_leg_volumes",
    "region_from_name",
    "select_label_maps",
    "train_model",
    "train_region_classifier",
    "train_synthetic_model",
    "validation_dice",
]


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
        load_matching_weights(network, init_state)
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

    best, history, stopped_early = fit_network(
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

