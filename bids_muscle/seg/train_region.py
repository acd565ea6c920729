"""Training the thigh/calf region classifier (Agosti et al. 2021) on whole axial slices."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bids_muscle.seg.infer import region_slices
from bids_muscle.seg.labels import REGIONS
from bids_muscle.seg.nets import build_network
from bids_muscle.seg.train_loop import Augmentation, Progress, TrainingResult, augment_batch, fit_network
from bids_muscle.seg.zoo import ModelCard, save_model


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

    best, history, stopped_early = fit_network(
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
