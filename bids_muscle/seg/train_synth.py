"""Training a segmenter on images synthesised from label maps.

A :class:`SyntheticPool` of slices (or blocks) drawn with random contrasts
from canonical leg anatomies (:mod:`bids_muscle.seg.synth`), partly redrawn
every epoch, feeds the shared loop of :mod:`bids_muscle.seg.train_loop`;
real labelled legs may join the pool.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bids_muscle.seg import synth
from bids_muscle.seg.infer import robust_normalise
from bids_muscle.seg.labels import REGIONS
from bids_muscle.seg.nets import SEGMENTATION_NETWORKS, SPATIAL_DIMS, build_network
from bids_muscle.seg.synth import extract_box
from bids_muscle.seg.train_loop import (
    Augmentation,
    LegVolume,
    Progress,
    TrainingResult,
    augment_batch,
    dice_ce_loss,
    fit_network,
    load_matching_weights,
    validation_dice,
)
from bids_muscle.seg.zoo import ModelCard, load_model, save_model


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
        As in :func:`bids_muscle.seg.train.train_model`. 3D networks
        (``unet3d``) train on blocks of native slices and keep the native
        slice spacing at inference (card voxel size z is null).
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
        a U-Net 3D (its kernels inflated, see :func:`~bids_muscle.seg.train_loop.load_matching_weights`).
    precision : str
        Weight storage of :func:`bids_muscle.seg.zoo.save_model`:
        ``float32``, ``float16`` (half the size) or ``int8`` (a quarter).
    inference_patch : sequence of int, optional
        Sliding-window patch of a 3D network at validation and inference
        (the card's ``patch_size``; default ``patch_size``): a window larger
        than the training block gives more context and fewer windows.

    Other parameters are those of :func:`bids_muscle.seg.train.train_model`.
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
        load_matching_weights(network, init_network.state_dict())
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

    best, history, stopped_early = fit_network(
        network, draw_batch, lambda logits, y: dice_ce_loss(logits, y, n_classes),
        lambda net: {"val_dice": validation_dice(net, val_legs, spatial_dims, n_classes, card.patch_size)},
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
