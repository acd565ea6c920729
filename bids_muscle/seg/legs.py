"""Leg detection, left/right split, mirroring and merging.

Both thighs (or calves) are usually imaged together. Following Rohm et al.
2021 and Agosti et al. 2021 the volume is split into one crop per leg and the
left leg is mirrored, so a network only ever sees a canonical *right* leg;
predictions are mirrored back and merged with the label indices of the side
they came from.

Sides are decided from the affine, in NIfTI RAS+ world coordinates, where x
increases towards the subject's right: of two legs, the one with the larger
world x is the right leg. A single leg is called right when its centre lies
at x > 0 (the scanner isocentre is near the body midline).

The crops of the two legs never overlap: the volume is cut by a plane
perpendicular to the voxel axis closest to world x, placed in the gap (or the
narrowest contact) between the legs. Each crop spans its half entirely along
the slice axis, so split + mirror + merge reproduces a label map exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from scipy import ndimage

from bids_muscle.seg.labels import load_label_table, mirror_index

RAS_ORNT = axcodes2ornt("RAS")


@dataclass(frozen=True)
class LegCrop:
    """One leg of a volume.

    Attributes
    ----------
    side : str
        ``"right"`` or ``"left"`` (subject's side).
    slices : tuple of slice
        Box of the leg in the voxel grid of the volume it was found in.
    lr_axis : int
        Voxel axis closest to the world left-right direction.
    mirrored : bool
        True when the crop is flipped along ``lr_axis`` so that it looks like
        a right leg (left legs).
    """

    side: str
    slices: tuple[slice, ...]
    lr_axis: int
    mirrored: bool

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape of the crop."""
        return tuple(s.stop - s.start for s in self.slices)

    def extract(self, array: np.ndarray) -> np.ndarray:
        """Crop ``array`` (spatial axes first, extra trailing axes allowed) to
        this leg, mirrored when the leg is a left leg. Returns a copy."""
        crop = array[self.slices]
        if self.mirrored:
            crop = np.flip(crop, axis=self.lr_axis)
        return np.ascontiguousarray(crop)

    def insert(self, target: np.ndarray, values: np.ndarray) -> None:
        """Write ``values`` (in the mirrored crop frame returned by
        :meth:`extract`) back into ``target`` in place."""
        if tuple(values.shape[: len(self.slices)]) != self.shape:
            raise ValueError(f"values of shape {values.shape} do not fit the leg crop of shape {self.shape}")
        if self.mirrored:
            values = np.flip(values, axis=self.lr_axis)
        target[self.slices] = values


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel sizes (mm) of the first three axes of a 4x4 affine."""
    affine = _check_affine(affine)
    return np.sqrt((affine[:3, :3] ** 2).sum(axis=0))


def lr_axis(affine: np.ndarray) -> int:
    """Voxel axis whose direction is closest to the world left-right axis."""
    directions = _check_affine(affine)[:3, :3] / voxel_sizes(affine)
    return int(np.argmax(np.abs(directions[0])))


def slice_axis(affine: np.ndarray) -> int:
    """Voxel axis closest to the world superior-inferior axis (the axial slice
    stacking direction for transverse leg scans)."""
    directions = _check_affine(affine)[:3, :3] / voxel_sizes(affine)
    return int(np.argmax(np.abs(directions[2])))


def reorient_to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Permute and flip the first three axes of ``array`` to the closest RAS+
    orientation (no interpolation).

    Returns
    -------
    array_ras, affine_ras : numpy.ndarray
    orientation : numpy.ndarray
        Orientation of the input (``nibabel.orientations.io_orientation``),
        for :func:`reorient_from_ras`.
    """
    affine = _check_affine(affine)
    if array.ndim < 3:
        raise ValueError(f"expected a 3D volume, got an array of shape {array.shape}")
    orientation = io_orientation(affine)
    transform = ornt_transform(orientation, RAS_ORNT)
    array_ras = apply_orientation(array, transform)
    affine_ras = affine @ inv_ornt_aff(transform, array.shape[:3])
    return array_ras, affine_ras, orientation


def reorient_from_ras(array_ras: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    """Undo :func:`reorient_to_ras` for an array on the RAS grid."""
    return apply_orientation(array_ras, ornt_transform(RAS_ORNT, orientation))


def body_mask(
    image: np.ndarray,
    slice_axis: int = 2,
    threshold_fraction: float = 0.1,
    min_component_fraction: float = 0.05,
) -> np.ndarray:
    """Mask of the body (legs) in a magnitude image.

    Voxels brighter than ``threshold_fraction`` times the 99th percentile are
    kept, speckle is removed by an in-plane opening, holes (dark muscle, bone,
    vessels inside the subcutaneous fat) are filled slice by slice and
    components smaller than ``min_component_fraction`` of the largest one are
    dropped.

    Parameters
    ----------
    image : numpy.ndarray
        3D magnitude image.
    slice_axis : int
        Axis along which slices are stacked (no connectivity across it for
        opening and hole filling).
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"body_mask expects a 3D image, got shape {image.shape}")
    values = image[np.isfinite(image)]
    if values.size == 0:
        raise ValueError("image has no finite values")
    high = float(np.percentile(values, 99.0))
    if high <= 0:
        return np.zeros(image.shape, dtype=bool)
    mask = np.nan_to_num(image, nan=0.0) > threshold_fraction * high
    flat = np.zeros((3, 3, 3), dtype=bool)
    index = [slice(None)] * 3
    index[slice_axis] = 1
    flat[tuple(index)] = True
    if min(s for a, s in enumerate(image.shape) if a != slice_axis) >= 5:
        mask = ndimage.binary_opening(mask, structure=flat)
    mask = ndimage.binary_fill_holes(mask, structure=flat)
    labelled, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labelled.ravel())[1:]
        keep = np.flatnonzero(sizes >= min_component_fraction * sizes.max()) + 1
        mask = np.isin(labelled, keep)
    return mask


def split_legs(
    image: np.ndarray,
    affine: np.ndarray,
    mask: np.ndarray | None = None,
    margin_mm: float = 10.0,
    threshold_fraction: float = 0.1,
) -> list[LegCrop]:
    """Find the legs in ``image`` and return one :class:`LegCrop` per leg.

    Parameters
    ----------
    image : numpy.ndarray
        3D image (any orientation; the affine tells the sides).
    affine : numpy.ndarray
        4x4 voxel-to-world (RAS+, mm) matrix.
    mask : numpy.ndarray, optional
        Body mask; computed with :func:`body_mask` when omitted. For
        training, pass the body mask joined with the label map so no label
        falls outside the crops.
    margin_mm : float
        Margin added around each leg's bounding box (in-plane).

    Returns
    -------
    list of LegCrop
        Right leg first; one element when only one leg is in the field of
        view, empty when no body is found.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"split_legs expects a 3D image, got shape {image.shape}")
    affine = _check_affine(affine)
    axis = lr_axis(affine)
    directions = affine[:3, :3] / voxel_sizes(affine)
    stack_axis = max((a for a in range(3) if a != axis), key=lambda a: abs(directions[2, a]))
    if mask is None:
        mask = body_mask(image, slice_axis=stack_axis, threshold_fraction=threshold_fraction)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")
    if not mask.any():
        return []
    split = _find_split(mask, axis, stack_axis, voxel_sizes(affine))
    n = image.shape[axis]
    halves = [(0, n)] if split is None else [(0, split), (split, n)]
    margins = np.ceil(margin_mm / voxel_sizes(affine)).astype(int)
    legs = []
    for start, stop in halves:
        index = [slice(None)] * 3
        index[axis] = slice(start, stop)
        half = np.zeros_like(mask)
        half[tuple(index)] = mask[tuple(index)]
        if not half.any():
            continue
        box = []
        for a in range(3):
            present = np.flatnonzero(half.any(axis=tuple(b for b in range(3) if b != a)))
            if a == stack_axis:
                low, high = 0, image.shape[a]
            else:
                low = max(int(present[0]) - int(margins[a]), 0)
                high = min(int(present[-1]) + 1 + int(margins[a]), image.shape[a])
            if a == axis:
                low, high = max(low, start), min(high, stop)
            box.append(slice(low, high))
        centre_voxel = np.array(ndimage.center_of_mass(half))
        centre_x = float((affine[:3, :3] @ centre_voxel + affine[:3, 3])[0])
        legs.append((centre_x, tuple(box)))
    if len(legs) == 2:
        sides = ["right", "left"] if legs[0][0] > legs[1][0] else ["left", "right"]
    else:
        sides = ["right" if legs[0][0] > 0 else "left"]
    crops = [LegCrop(side, box, axis, side == "left") for side, (_, box) in zip(sides, legs)]
    return sorted(crops, key=lambda c: c.side != "right")


def _find_split(mask: np.ndarray, axis: int, stack_axis: int, voxel_mm: np.ndarray) -> int | None:
    """Index along ``axis`` where the volume is cut between the two legs, or
    None when only one leg is present.

    The left-right profile is the median over slices of each slice's
    profile, so that proximal slices where the thighs touch (or the
    perineum joins them) do not fill the valley between the legs. A body
    more than 1.7 times as wide as it is deep is two legs even without a
    valley (reference vials or pads between the legs fill it): it is cut at
    the profile's lowest point in its central 60 %.
    """
    others = tuple(a for a in range(3) if a != axis)
    ap_axis = next(a for a in others if a != stack_axis)
    per_slice = mask.sum(axis=ap_axis).astype(np.float64)
    if axis > stack_axis:
        per_slice = per_slice.T
    occupied = per_slice.sum(axis=0) > 0
    profile = np.median(per_slice[:, occupied], axis=1)
    if not profile.any():  # the body moves across slices: fall back to the total
        profile = per_slice.sum(axis=1)
    labelled, n = ndimage.label(mask)
    if n >= 2:
        sizes = np.bincount(labelled.ravel())[1:]
        order = np.argsort(sizes)[::-1]
        if sizes[order[1]] >= 0.2 * sizes[order[0]]:
            extents = []
            for label in order[:2] + 1:
                present = np.flatnonzero((labelled == label).any(axis=others))
                extents.append((present[0], present[-1]))
            extents.sort()
            (_, first_stop), (second_start, _) = extents
            if first_stop < second_start:
                return int((first_stop + 1 + second_start) // 2)
    present = np.flatnonzero(profile)
    low, high = int(present[0]), int(present[-1])
    width = high - low
    if width < 4:
        return None
    smooth = ndimage.gaussian_filter1d(profile, sigma=max(1.0, width / 100))
    search = np.arange(low + int(0.2 * width), high - int(0.2 * width) + 1)
    split = int(search[np.argmin(smooth[search])])
    valley = smooth[split]
    peaks = min(smooth[low:split].max(initial=0.0), smooth[split:high + 1].max(initial=0.0))
    wide = width * voxel_mm[axis] > _TWO_LEGS_ASPECT * profile.max() * voxel_mm[ap_axis]
    if valley < 0.5 * peaks or wide:
        return split
    return None


#: Width / depth above which a body mask is two legs (one leg is at most about 1.3).
_TWO_LEGS_ASPECT = 1.7


@lru_cache(maxsize=None)
def _side_lookup(region: str, side: str | None) -> np.ndarray:
    """Lookup table mapping every label of ``region`` to its ``side``
    counterpart (``None``: identity on known labels). Unknown indices map to -1."""
    table = load_label_table(region)
    lut = np.full(max(label.index for label in table) + 1, -1, dtype=np.int32)
    lut[0] = 0
    for label in table:
        if side is None or label.side == side:
            lut[label.index] = label.index
        else:
            lut[label.index] = mirror_index(region, label.index)
    lut.setflags(write=False)
    return lut


def _map_labels(labels: np.ndarray, region: str, side: str | None) -> np.ndarray:
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        rounded = np.rint(labels)
        if not np.array_equal(rounded, labels):
            raise ValueError("label map holds non-integer values")
        labels = rounded.astype(np.int64)
    lut = _side_lookup(region, side)
    if labels.size and (labels.min() < 0 or labels.max() >= lut.size):
        bad = np.unique(labels[(labels < 0) | (labels >= lut.size)])
        raise ValueError(f"label map holds indices {bad[:10].tolist()} that are not in the {region} label table")
    mapped = lut[labels]
    if (mapped < 0).any():
        bad = np.unique(labels[mapped < 0])
        raise ValueError(f"label map holds indices {bad[:10].tolist()} that are not in the {region} label table")
    return mapped.astype(labels.dtype if labels.dtype.itemsize >= 2 else np.int16)


def canonical_labels(labels: np.ndarray, region: str) -> np.ndarray:
    """Map every muscle label to the right-side index of the same muscle."""
    return _map_labels(labels, region, "right")


def side_labels(labels: np.ndarray, region: str, side: str) -> np.ndarray:
    """Map every muscle label to the index of the same muscle on ``side``."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    return _map_labels(labels, region, side)


def merge_legs(
    shape: tuple[int, ...],
    crops: list[LegCrop],
    predictions: list[np.ndarray],
    region: str,
    dtype: type = np.int16,
) -> np.ndarray:
    """Assemble per-leg label maps into one map of ``shape``.

    Parameters
    ----------
    shape : tuple of int
        Shape of the volume the crops were taken from.
    crops : list of LegCrop
    predictions : list of numpy.ndarray
        Label maps in the canonical (right-leg, mirrored) frame of each crop,
        with right-side or any-side indices; each is written with the indices
        of its crop's side.
    region : str
        ``thigh`` or ``calf``.
    """
    if len(crops) != len(predictions):
        raise ValueError(f"{len(crops)} leg crops but {len(predictions)} predictions")
    merged = np.zeros(shape, dtype=dtype)
    for crop, prediction in zip(crops, predictions):
        crop.insert(merged, side_labels(prediction, region, crop.side).astype(dtype))
    return merged


def _check_affine(affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError("affine is singular")
    return affine
