"""Muscle segmentation of a volume on any grid, and resampling of the result.

:func:`segment` runs one model card on one image of any orientation, voxel
size and field of view:

1. reorient to the closest RAS+ orientation (axis permutations and flips
   only, no interpolation);
2. find the legs and split them (:func:`bids_muscle.seg.legs.split_legs`),
   mirroring the left leg so the network sees a canonical right leg
   (Rohm et al. 2021);
3. resample each leg crop to the model voxel size and scale intensities by
   robust percentiles inside the body;
4. predict slice by slice in batches (2D networks) or with a 3D sliding
   window;
5. resample the class probabilities back to the crop, mirror back and merge
   both legs with their left/right label indices;
6. keep the largest connected component of every muscle and undo the
   reorientation.

:func:`resample_labels` (nearest neighbour) and
:func:`resample_probabilities` (trilinear) bring a segmentation into the
grid of each quantitative map.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from bids_muscle.seg.legs import (
    LegCrop,
    body_mask,
    merge_legs,
    reorient_from_ras,
    reorient_to_ras,
    side_labels,
    split_legs,
    voxel_sizes,
)
from bids_muscle.seg.nets import SEGMENTATION_NETWORKS, SPATIAL_DIMS
from bids_muscle.seg.zoo import ModelCard


def available_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@contextmanager
def torch_threads(num_threads: int | None = None) -> Iterator[int]:
    """Run torch with ``num_threads`` intra-op threads (default: all cores
    this process may use, never more), restoring the previous setting."""
    cores = available_cores()
    n = cores if num_threads is None else max(1, min(int(num_threads), cores))
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(previous)


def robust_normalise(
    image: np.ndarray, mask: np.ndarray | None = None, low_percent: float = 0.5, high_percent: float = 99.5
) -> np.ndarray:
    """Scale intensities so the ``low_percent`` and ``high_percent``
    percentiles inside ``mask`` map to 0 and 1 (float32, not clipped).

    Contrast-agnostic: the same scaling is used for T1w, Dixon and MESE
    images, at training and at inference.
    """
    image = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    values = image[mask] if mask is not None and np.count_nonzero(mask) >= 16 else image.ravel()
    if values.size == 0:
        raise ValueError("cannot normalise an empty image")
    low, high = np.percentile(values, [low_percent, high_percent])
    scale = float(high - low)
    if scale <= 1e-12 * max(1.0, abs(float(high))):
        return np.zeros_like(image)
    return ((image - np.float32(low)) / np.float32(scale)).astype(np.float32)


def model_grid_shape(shape: Sequence[int], voxel_mm: Sequence[float], target_mm: Sequence[float | None]) -> tuple[int, ...]:
    """Shape of a crop resampled from ``voxel_mm`` to ``target_mm`` (``None``
    keeps an axis)."""
    return tuple(
        int(n) if t is None else max(1, int(round(n * float(v) / float(t))))
        for n, v, t in zip(shape, voxel_mm, target_mm)
    )


def resize_volume(volume: np.ndarray, shape: Sequence[int], mode: str = "linear") -> np.ndarray:
    """Resize a 3D volume, or a stack (C, X, Y, Z), to a new voxel grid
    covering the same field of view (voxel edges aligned).

    ``mode="linear"`` interpolates trilinearly after a Gaussian pre-filter on
    axes that are shrunk by more than 1.2 (against aliasing);
    ``mode="nearest"`` is for label maps.
    """
    array = np.asarray(volume)
    stacked = array.ndim == 4
    if array.ndim not in (3, 4):
        raise ValueError(f"resize_volume expects 3D or (C, X, Y, Z) arrays, got shape {array.shape}")
    spatial = array.shape[-3:]
    shape = tuple(int(s) for s in shape)
    if spatial == shape:
        return array
    if mode == "nearest":
        t = torch.from_numpy(np.ascontiguousarray(array))
        t = t[None] if stacked else t[None, None]
        out = F.interpolate(t.float(), size=shape, mode="nearest-exact").to(t.dtype)
        out = out[0] if stacked else out[0, 0]
        return out.numpy()
    if mode != "linear":
        raise ValueError(f"unknown resize mode {mode!r}")
    factors = np.array(spatial, dtype=float) / np.array(shape, dtype=float)
    data = np.asarray(array, dtype=np.float32)
    if np.any(factors > 1.2):
        sigma = np.where(factors > 1.2, np.sqrt(np.maximum(factors**2 - 1.0, 0.0)) / 2.0, 0.0)
        data = ndimage.gaussian_filter(data, sigma=([0.0] if stacked else []) + list(sigma), mode="nearest")
    t = torch.from_numpy(np.ascontiguousarray(data))
    t = t[None] if stacked else t[None, None]
    out = F.interpolate(t, size=shape, mode="trilinear", align_corners=False)
    return (out[0] if stacked else out[0, 0]).numpy()


def predict_probabilities(
    model: nn.Module,
    volume: np.ndarray,
    spatial_dims: int,
    batch_size: int = 8,
    patch_size: Sequence[int] | None = None,
    overlap: float = 0.25,
) -> np.ndarray:
    """Softmax probabilities (K, X, Y, Z) of a normalised volume (X, Y, Z).

    2D networks run on the axial slices (last axis) in batches of
    ``batch_size``; 3D networks on the whole volume, or with a Gaussian-
    weighted sliding window of ``patch_size`` when the volume is larger.
    """
    volume = np.ascontiguousarray(volume, dtype=np.float32)
    with torch.inference_mode():
        if spatial_dims == 2:
            slices = torch.from_numpy(volume).permute(2, 0, 1).unsqueeze(1)
            outputs = []
            for start in range(0, slices.shape[0], max(1, batch_size)):
                logits = model(slices[start : start + batch_size])
                outputs.append(torch.softmax(logits, dim=1))
            return torch.cat(outputs).permute(1, 2, 3, 0).numpy()
        if spatial_dims != 3:
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        x = torch.from_numpy(volume)[None, None]
        if patch_size is None or all(n <= p for n, p in zip(volume.shape, patch_size)):
            return torch.softmax(model(x), dim=1)[0].numpy()
        return _sliding_window(model, x, tuple(int(p) for p in patch_size), overlap)


def _sliding_window(model: nn.Module, x: torch.Tensor, patch: tuple[int, ...], overlap: float) -> np.ndarray:
    shape = tuple(x.shape[2:])
    patch = tuple(min(p, n) for p, n in zip(patch, shape))
    starts = []
    for n, p in zip(shape, patch):
        step = max(1, int(p * (1.0 - overlap)))
        positions = list(range(0, n - p + 1, step))
        if positions[-1] != n - p:
            positions.append(n - p)
        starts.append(positions)
    weight = torch.ones(patch)
    for axis, p in enumerate(patch):
        centre = (p - 1) / 2.0
        g = torch.exp(-0.5 * ((torch.arange(p) - centre) / max(p / 8.0, 1e-3)) ** 2)
        g = torch.clamp(g / g.max(), min=1e-3)
        view = [1, 1, 1]
        view[axis] = p
        weight = weight * g.reshape(view)
    total = None
    norm = torch.zeros(shape)
    for i in starts[0]:
        for j in starts[1]:
            for k in starts[2]:
                window = (slice(i, i + patch[0]), slice(j, j + patch[1]), slice(k, k + patch[2]))
                probs = torch.softmax(model(x[(slice(None), slice(None)) + window]), dim=1)[0]
                if total is None:
                    total = torch.zeros((probs.shape[0],) + shape)
                total[(slice(None),) + window] += probs * weight
                norm[window] += weight
    return (total / norm).numpy()


def keep_largest_component(dseg: np.ndarray) -> np.ndarray:
    """Keep, for every label, only its largest 3D connected component (the
    rest becomes background). Returns a new array."""
    out = np.array(dseg, copy=True)
    if not out.any():
        return out
    boxes = ndimage.find_objects(out.astype(np.int32, copy=False))
    for index, box in enumerate(boxes, start=1):
        if box is None:
            continue
        region = out[box]
        components, n = ndimage.label(region == index)
        if n <= 1:
            continue
        sizes = np.bincount(components.ravel())[1:]
        drop = (components > 0) & (components != 1 + int(np.argmax(sizes)))
        region[drop] = 0
    return out


def segment(
    image: np.ndarray,
    affine: np.ndarray,
    model: nn.Module,
    card: ModelCard,
    *,
    return_probabilities: bool = False,
    batch_size: int = 8,
    overlap: float = 0.25,
    largest_component: bool = True,
    threshold_fraction: float = 0.1,
    num_threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Segment the muscles of both legs of a 3D image.

    Parameters
    ----------
    image : numpy.ndarray
        3D image (X, Y, Z) in any orientation, voxel size and field of view.
    affine : numpy.ndarray
        4x4 voxel-to-world (RAS+, mm) matrix of ``image``.
    model : torch.nn.Module
        Network from :func:`bids_muscle.seg.zoo.load_model`.
    card : ModelCard
        Its model card (architecture, label table, voxel size,
        normalisation, patch size).
    return_probabilities : bool
        Also return per-label probabilities on the input grid (memory:
        4 bytes x voxels x 2K).
    batch_size : int
        Slices per forward pass (2D networks).
    overlap : float
        Overlap of 3D sliding-window patches (fraction of the patch).
    largest_component : bool
        Keep only the largest connected component of every muscle.
    threshold_fraction : float
        Body-mask threshold relative to the 99th percentile.
    num_threads : int, optional
        Torch threads (default: every core this process may use).
    progress : callable, optional
        Called with a short message after each step.

    Returns
    -------
    dict
        ``dseg``: int16 labels on the input grid (left/right indices of the
        region table); ``probseg``: float32 (X, Y, Z, 2K) or None;
        ``probseg_labels``: label index of each probseg channel (right
        labels, then left); ``legs``: sides found.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"segment expects a 3D image, got shape {image.shape}")
    if card.architecture not in SEGMENTATION_NETWORKS:
        raise ValueError(f"model {card.name!r} is a {card.architecture!r} classifier, not a segmenter")
    report = progress or (lambda message: None)
    image_ras, affine_ras, orientation = reorient_to_ras(np.nan_to_num(image.astype(np.float32)), affine)
    mask = body_mask(image_ras, slice_axis=2, threshold_fraction=threshold_fraction)
    crops = split_legs(image_ras, affine_ras, mask=mask)
    report(f"found {len(crops)} leg(s): {', '.join(c.side for c in crops) or 'none'}")
    voxel_mm = voxel_sizes(affine_ras)
    spatial_dims = SPATIAL_DIMS[card.architecture]
    target_mm = list(card.voxel_size_mm)
    if spatial_dims == 2:
        target_mm[2] = None
    n_labels = len(card.labels)
    class_to_label = np.array([0] + list(card.labels), dtype=np.int16)
    model.eval()
    predictions = []
    probabilities = []
    with torch_threads(num_threads):
        for crop in crops:
            probs = _predict_crop(model, card, crop, image_ras, mask, voxel_mm, target_mm, spatial_dims, batch_size, overlap)
            predictions.append(class_to_label[np.argmax(probs, axis=0)])
            if return_probabilities:
                probabilities.append(np.moveaxis(probs[1:], 0, -1))
            report(f"segmented the {crop.side} leg")
    dseg = merge_legs(image_ras.shape, crops, predictions, card.region, dtype=np.int16)
    if largest_component:
        dseg = keep_largest_component(dseg)
    right = np.array(card.labels, dtype=np.int16)
    probseg_labels = right.tolist() + side_labels(right, card.region, "left").tolist()
    probseg = None
    if return_probabilities:
        probseg = np.zeros(image_ras.shape + (2 * n_labels,), dtype=np.float32)
        for crop, probs in zip(crops, probabilities):
            block = slice(0, n_labels) if crop.side == "right" else slice(n_labels, 2 * n_labels)
            crop.insert(probseg[..., block], probs)
        probseg = np.ascontiguousarray(reorient_from_ras(probseg, orientation))
    dseg = np.ascontiguousarray(reorient_from_ras(dseg, orientation))
    return {
        "dseg": dseg,
        "probseg": probseg,
        "probseg_labels": probseg_labels,
        "legs": [c.side for c in crops],
    }


def muscle_region_mask(
    image: np.ndarray,
    affine: np.ndarray,
    model: nn.Module,
    card: ModelCard,
    *,
    batch_size: int = 8,
    num_threads: int | None = None,
) -> np.ndarray:
    """Muscle region of both legs from a ``<region>_muscleregion`` model.

    The muscle region is everything inside the fascia: the muscles and the
    fat between and within them, not subcutaneous fat or bone (the region
    the IMAT stage classifies). The model is a binary segmenter trained by
    synthesis (its card's ``validation.output`` is ``muscleregion``).

    Returns
    -------
    numpy.ndarray
        Boolean mask on the grid of ``image``.
    """
    if card.validation.get("output") != "muscleregion" or card.n_classes != 2:
        raise ValueError(f"model {card.name!r} is not a muscle-region model")
    result = segment(image, affine, model, card, batch_size=batch_size, largest_component=False, num_threads=num_threads)
    return result["dseg"] > 0


def _predict_crop(
    model: nn.Module,
    card: ModelCard,
    crop: LegCrop,
    image_ras: np.ndarray,
    mask: np.ndarray,
    voxel_mm: np.ndarray,
    target_mm: list[float | None],
    spatial_dims: int,
    batch_size: int,
    overlap: float,
) -> np.ndarray:
    """Class probabilities (K+1, *crop.shape) of one leg in its mirrored frame."""
    leg = crop.extract(image_ras)
    leg_mask = crop.extract(mask)
    normalised = normalise_for_card(leg, leg_mask, card)
    grid = model_grid_shape(leg.shape, voxel_mm, target_mm)
    resampled = resize_volume(normalised, grid)
    probs = predict_probabilities(model, resampled, spatial_dims, batch_size, card.patch_size, overlap)
    return resize_volume(probs, leg.shape)


def normalise_for_card(image: np.ndarray, mask: np.ndarray | None, card: ModelCard) -> np.ndarray:
    """Apply the intensity normalisation the card prescribes."""
    method = card.normalisation.get("method", "percentile")
    if method != "percentile":
        raise ValueError(f"model {card.name!r}: unknown normalisation {method!r}")
    return robust_normalise(image, mask, float(card.normalisation.get("low", 0.5)), float(card.normalisation.get("high", 99.5)))


def classify_region(
    image: np.ndarray,
    affine: np.ndarray,
    model: nn.Module,
    card: ModelCard,
    n_slices: int = 5,
    num_threads: int | None = None,
) -> tuple[str, dict[str, float]]:
    """Thigh or calf? The tree root of Agosti et al. 2021.

    ``n_slices`` axial slices from the central half of the volume are
    resampled to the card's voxel size on a square canvas centred on the
    body (:func:`region_slices`, which keeps the physical size of the legs),
    normalised and classified; the softmax outputs are averaged.

    Returns
    -------
    region : str
        The most probable class of ``card.classes``.
    probabilities : dict
        Mean probability of each class.
    """
    if card.architecture != "region":
        raise ValueError(f"model {card.name!r} is not a region classifier")
    stack = region_slices(image, affine, n_slices, float(card.voxel_size_mm[0]), int(card.arguments.get("input_size", 128)))
    model.eval()
    with torch_threads(num_threads), torch.inference_mode():
        probs = torch.softmax(model(torch.from_numpy(stack)[:, None]), dim=1).mean(dim=0).numpy()
    result = {name: float(p) for name, p in zip(card.classes, probs)}
    return card.classes[int(np.argmax(probs))], result


def region_slices(
    image: np.ndarray, affine: np.ndarray, n_slices: int = 5, voxel_mm: float = 4.0, size: int = 128
) -> np.ndarray:
    """Normalised axial slices (N, size, size) of the body at ``voxel_mm``,
    centred on the body: the input of the region classifier (also used to
    train it). The physical size of the legs is kept (a thigh is wider than
    a calf), unlike a crop resized to the canvas."""
    image_ras, affine_ras, _ = reorient_to_ras(np.nan_to_num(np.asarray(image, dtype=np.float32)), affine)
    mask = body_mask(image_ras, slice_axis=2)
    if not mask.any():
        raise ValueError("no body found in the image")
    normalised = robust_normalise(image_ras, mask)
    fill = float(np.percentile(normalised, 1.0))
    nz = image_ras.shape[2]
    picks = np.unique(np.linspace(0.25 * (nz - 1), 0.75 * (nz - 1), num=min(n_slices, nz)).round().astype(int))
    voxel = np.asarray(voxel_sizes(affine_ras)[:2])
    centre = np.argwhere(mask.any(axis=2)).mean(axis=0)
    offsets = (np.arange(size) - (size - 1) / 2.0) * voxel_mm
    grid = np.stack(np.meshgrid(centre[0] + offsets / voxel[0], centre[1] + offsets / voxel[1], indexing="ij"))
    sigma = np.maximum(0.0, 0.4 * (voxel_mm / voxel - 1.0))
    out = np.empty((len(picks), size, size), np.float32)
    for k, z in enumerate(picks):
        plane = ndimage.gaussian_filter(normalised[..., z], sigma) if sigma.any() else normalised[..., z]
        out[k] = ndimage.map_coordinates(plane, grid, order=1, cval=fill)
    return out


def resample_labels(
    dseg: np.ndarray, affine: np.ndarray, target_shape: Sequence[int], target_affine: np.ndarray
) -> np.ndarray:
    """Nearest-neighbour resampling of a label map into another voxel grid.

    Parameters
    ----------
    dseg : numpy.ndarray
        Integer label map or boolean mask (X, Y, Z) with voxel-to-world
        ``affine``.
    target_shape, target_affine
        Grid of the map the labels are needed on (e.g. a T2 map).

    Returns
    -------
    numpy.ndarray
        Labels on the target grid (same dtype), 0 outside the source field of
        view.
    """
    dseg = np.asarray(dseg)
    if dseg.ndim != 3:
        raise ValueError(f"resample_labels expects a 3D label map, got shape {dseg.shape}")
    is_mask = dseg.dtype == bool
    if not (is_mask or np.issubdtype(dseg.dtype, np.integer)):
        raise ValueError(f"label map must have an integer or boolean dtype, got {dseg.dtype}")
    matrix = _target_to_source(affine, target_affine)
    target_shape = tuple(int(s) for s in target_shape[:3])
    out = ndimage.affine_transform(
        dseg.view(np.uint8) if is_mask else dseg,
        matrix[:3, :3],
        offset=matrix[:3, 3],
        output_shape=target_shape,
        order=0,
        mode="constant",
        cval=0,
    )
    return out.astype(bool) if is_mask else out


def resample_probabilities(
    probseg: np.ndarray, affine: np.ndarray, target_shape: Sequence[int], target_affine: np.ndarray
) -> np.ndarray:
    """Trilinear resampling of probabilities (X, Y, Z[, K]) into another grid.

    Channels are resampled one at a time to keep memory bounded; the result is
    float32 with 0 outside the source field of view.
    """
    probseg = np.asarray(probseg, dtype=np.float32)
    if probseg.ndim not in (3, 4):
        raise ValueError(f"resample_probabilities expects (X, Y, Z[, K]), got shape {probseg.shape}")
    matrix = _target_to_source(affine, target_affine)
    target_shape = tuple(int(s) for s in target_shape[:3])
    if probseg.ndim == 3:
        return ndimage.affine_transform(
            probseg, matrix[:3, :3], offset=matrix[:3, 3], output_shape=target_shape, order=1, mode="constant", cval=0.0
        )
    out = np.empty(target_shape + (probseg.shape[3],), dtype=np.float32)
    for k in range(probseg.shape[3]):
        out[..., k] = ndimage.affine_transform(
            np.ascontiguousarray(probseg[..., k]),
            matrix[:3, :3],
            offset=matrix[:3, 3],
            output_shape=target_shape,
            order=1,
            mode="constant",
            cval=0.0,
        )
    return out


def _target_to_source(affine: np.ndarray, target_affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    target_affine = np.asarray(target_affine, dtype=np.float64)
    if affine.shape != (4, 4) or target_affine.shape != (4, 4):
        raise ValueError("affines must be 4x4 matrices")
    return np.linalg.inv(affine) @ target_affine
