"""Training images synthesised from muscle label maps (the SynthSeg idea).

A network trained on one contrast fails on others (Rohm et al. 2021); a
network trained on images whose contrast, noise, bias field and resolution
are drawn at random for every sample learns shapes instead of intensities
and segments any contrast. This module turns a muscle label map into such
images:

1. :func:`leg_anatomies` splits a label map into canonical right legs on
   the model grid (the frame used at inference, :mod:`bids_muscle.seg.infer`)
   and maps the source's label codes to the region table.
2. :func:`complete_tissues` builds, slice by slice, the tissues a label map
   lacks: the fascia around the muscles, subcutaneous fat of random
   thickness, skin, femur or tibia and fibula (cortex and marrow, placed in
   the deepest unlabelled part of the compartment unless the source labels
   the bones), intermuscular fat and background.
3. :func:`render_tissues` draws every tissue's intensity from random
   Gaussian mixtures (either one of several contrast families, T1w-,
   water-, fat-, T2-, STIR- and PD-like, or fully random), adds
   intramuscular fat infiltration (diffuse and patchy, 0-80 %; optionally a
   disease pattern of a few muscles replaced by fat, and thin fat planes or
   fascia where two muscles meet), texture, a
   random point spread and in-plane resolution, a smooth multiplicative bias
   field and Rician noise.
4. :func:`synthesise_patch` combines both for one slice (averaged over a
   slab of neighbouring slices for a random slice thickness), cropped at
   random, with the training target: muscle classes, ``IGNORE`` where the
   source does not say (unlabelled tissue inside the fascia of maps that
   label only some muscles) and the muscle region (everything inside the
   fascia except bone). :func:`synthesise_block` does the same for a block
   of slices (3D networks).

Elastic and affine deformation are applied to whole batches during training
(:func:`bids_muscle.seg.train.augment_batch`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from bids_muscle.seg.infer import robust_normalise
from bids_muscle.seg.legs import (
    canonical_labels,
    reorient_to_ras,
    split_legs,
    voxel_sizes,
)

#: Tissue classes of :func:`complete_tissues`.
BACKGROUND, SKIN, SUBCUT_FAT, FASCIA, MUSCLE, IM_FAT, CORTEX, MARROW, UNLABELLED = range(9)
TISSUE_NAMES = (
    "background",
    "skin",
    "subcutaneous_fat",
    "fascia",
    "muscle",
    "intermuscular_fat",
    "cortical_bone",
    "bone_marrow",
    "unlabelled",
)
#: Target value of voxels the loss must ignore.
IGNORE = -1
#: Contrast families of :func:`draw_contrast` (``random`` is SynthSeg's fully random draw).
CONTRASTS = ("t1w", "water", "fat", "t2", "stir", "pd", "random")

# Mean intensity ranges (fraction of the brightest tissue) of each contrast
# family: muscle, fat (subcutaneous, intermuscular, marrow), skin, fascia,
# background. Cortical bone is dark in every MR contrast.
_FAMILIES = {
    "t1w": {"muscle": (0.2, 0.4), "fat": (0.8, 1.0), "skin": (0.35, 0.6), "fascia": (0.05, 0.25), "background": (0.0, 0.04)},
    "water": {"muscle": (0.55, 0.9), "fat": (0.03, 0.2), "skin": (0.45, 0.8), "fascia": (0.1, 0.35), "background": (0.0, 0.04)},
    "fat": {"muscle": (0.03, 0.15), "fat": (0.8, 1.0), "skin": (0.2, 0.5), "fascia": (0.02, 0.15), "background": (0.0, 0.03)},
    "t2": {"muscle": (0.12, 0.3), "fat": (0.6, 1.0), "skin": (0.3, 0.6), "fascia": (0.2, 0.7), "background": (0.0, 0.04)},
    "stir": {"muscle": (0.25, 0.5), "fat": (0.02, 0.12), "skin": (0.3, 0.6), "fascia": (0.4, 0.9), "background": (0.0, 0.04)},
    "pd": {"muscle": (0.45, 0.7), "fat": (0.75, 1.0), "skin": (0.5, 0.8), "fascia": (0.1, 0.4), "background": (0.0, 0.04)},
}


@dataclass
class SynthesisSettings:
    """Ranges of the random synthesis (all drawn uniformly unless stated).

    Lengths are in mm; ``infiltration_max`` is the largest fat fraction of a
    muscle (0.8 = 80 %).
    """

    subcut_fat_mm: tuple[float, float] = (3.0, 25.0)
    skin_mm: tuple[float, float] = (1.0, 3.0)
    fascia_closing_mm: tuple[float, float] = (3.0, 7.0)
    femur_radius_mm: tuple[float, float] = (11.0, 16.0)
    tibia_radius_mm: tuple[float, float] = (10.0, 15.0)
    fibula_radius_mm: tuple[float, float] = (5.0, 8.0)
    cortex_mm: tuple[float, float] = (2.5, 6.0)
    infiltration_max: float = 0.8
    patchy_probability: float = 0.5
    # disease patterns and planes between muscles: off by default (a 75 min
    # fine-tune of the thigh U-Net 3D with 0.4 / 0.7 and infiltration up to
    # 0.9 scored lower on the real IDEAL thigh, docs/validation.md)
    pattern_probability: float = 0.0
    pattern_fat: tuple[float, float] = (0.3, 0.9)
    plane_probability: float = 0.0
    plane_weight: tuple[float, float] = (0.2, 0.8)
    random_contrast_probability: float = 0.3
    texture_std: tuple[float, float] = (0.0, 0.08)
    psf_sigma_vox: tuple[float, float] = (0.0, 1.0)
    downsample: tuple[float, float] = (1.0, 2.5)
    downsample_probability: float = 0.5
    bias_strength: tuple[float, float] = (0.0, 0.5)
    noise_fraction: tuple[float, float] = (0.005, 0.08)
    slice_mm: tuple[float, float] = (3.0, 12.0)


@dataclass
class LegAnatomy:
    """One canonical right leg of a label map, on the model grid.

    Attributes
    ----------
    classes : numpy.ndarray
        (X, Y, Z) int16 right-side muscle indices of the region table, 0
        elsewhere, ``UNLABELLED_MUSCLE`` (-1) where the source labels a
        muscle that is not in the table (rendered as muscle, ignored by the
        loss).
    bone : numpy.ndarray or None
        (X, Y, Z) bool bone mask when the source labels bones; None lets
        :func:`complete_tissues` place them.
    voxel_mm : tuple of float
        Voxel size (x, y, z) in mm.
    complete : bool
        True when every muscle of the region is labelled, so unlabelled
        tissue inside the fascia is fat; False when some muscles are missing
        from the source and such tissue is ignored by the loss.
    source : str
        Name of the source map.
    """

    classes: np.ndarray
    bone: np.ndarray | None
    voxel_mm: tuple[float, float, float]
    complete: bool
    source: str


#: Class value of muscles outside the region table in :class:`LegAnatomy`.
UNLABELLED_MUSCLE = -1


@dataclass
class SyntheticPatch:
    """One synthetic training slice.

    Attributes
    ----------
    image : numpy.ndarray
        (H, W) float32, robustly normalised like inference inputs.
    classes : numpy.ndarray
        (H, W) int64 class indices (position in the label list + 1, 0
        background) with ``IGNORE`` where unknown.
    muscle_region : numpy.ndarray
        (H, W) bool, everything inside the fascia except bone.
    tissue : numpy.ndarray
        (H, W) uint8 tissue classes.
    contrast : str
        Contrast family drawn.
    """

    image: np.ndarray
    classes: np.ndarray
    muscle_region: np.ndarray
    tissue: np.ndarray
    contrast: str


def leg_anatomies(
    labels: np.ndarray,
    affine: np.ndarray,
    region: str,
    code_map: Mapping[int, int] | None = None,
    *,
    other_muscle_codes: Sequence[int] = (),
    bone_codes: Sequence[int] = (),
    bone_mask: np.ndarray | None = None,
    voxel_size_mm: Sequence[float] = (2.0, 2.0),
    complete: bool = True,
    source: str = "",
) -> list[LegAnatomy]:
    """Split a label map into canonical right legs on the model grid.

    Parameters
    ----------
    labels : numpy.ndarray
        3D label map of both legs (or one) in any orientation.
    affine : numpy.ndarray
        Its 4x4 voxel-to-world (RAS+, mm) matrix.
    region : str
        ``thigh`` or ``calf``.
    code_map : mapping, optional
        Source code -> index of the region table (either side). Without it
        the map already uses table indices.
    other_muscle_codes : sequence of int
        Codes of muscles outside the region table (rendered as muscle,
        ignored by the loss).
    bone_codes : sequence of int
        Codes of bones (femur, tibia, fibula) when the source labels them.
    bone_mask : numpy.ndarray, optional
        Bone mask on the grid of ``labels`` (instead of ``bone_codes``).
    voxel_size_mm : sequence of float
        In-plane model voxel size (x, y).
    complete, source
        Stored in every :class:`LegAnatomy`.

    Returns
    -------
    list of LegAnatomy
        Right leg first; the left leg mirrored.
    """
    labels = np.rint(np.asarray(labels)).astype(np.int64)
    if labels.ndim != 3:
        raise ValueError(f"{source or 'label map'}: expected a 3D label map, got shape {labels.shape}")
    table = np.zeros(labels.shape, np.int16)
    if code_map is None:
        table = canonical_labels(labels, region).astype(np.int16)
    else:
        for code, index in code_map.items():
            table[labels == code] = index
        table = canonical_labels(table, region).astype(np.int16)
    table[np.isin(labels, list(other_muscle_codes))] = UNLABELLED_MUSCLE
    bone = np.isin(labels, list(bone_codes)) if bone_codes else None
    if bone_mask is not None:
        bone = np.asarray(bone_mask, bool) | (bone if bone is not None else False)
    table_ras, affine_ras, _ = reorient_to_ras(table, affine)
    bone_ras = reorient_to_ras(bone, affine)[0] if bone is not None else None
    body = (table_ras != 0) | (bone_ras if bone_ras is not None else False)
    if not body.any():
        raise ValueError(f"{source or 'label map'}: no muscle labels of the {region} found")
    crops = split_legs(body.astype(np.float32), affine_ras, mask=body, margin_mm=30.0)
    voxel = voxel_sizes(affine_ras)
    legs = []
    for crop in crops:
        classes = crop.extract(table_ras)
        leg_bone = crop.extract(bone_ras) if bone_ras is not None else None
        shape = tuple(max(1, round(n * v / t)) for n, v, t in zip(classes.shape[:2], voxel[:2], voxel_size_mm))
        classes = _resize_nearest(classes, shape)
        if leg_bone is not None:
            leg_bone = _resize_nearest(leg_bone.astype(np.int16), shape).astype(bool)
        keep = np.flatnonzero((classes > 0).any(axis=(0, 1)))
        if keep.size == 0:
            continue
        z = slice(int(keep[0]), int(keep[-1]) + 1)
        legs.append(
            LegAnatomy(
                classes=np.ascontiguousarray(classes[..., z]),
                bone=None if leg_bone is None else np.ascontiguousarray(leg_bone[..., z]),
                voxel_mm=(float(voxel_size_mm[0]), float(voxel_size_mm[1]), float(voxel[2])),
                complete=complete,
                source=f"{source} {crop.side}".strip(),
            )
        )
    return legs


def _resize_nearest(volume: np.ndarray, shape_xy: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour in-plane resize of (X, Y, Z) to (shape_xy, Z), voxel centres aligned."""
    nx, ny = volume.shape[:2]
    ix = np.minimum(((np.arange(shape_xy[0]) + 0.5) * nx / shape_xy[0]).astype(int), nx - 1)
    iy = np.minimum(((np.arange(shape_xy[1]) + 0.5) * ny / shape_xy[1]).astype(int), ny - 1)
    return volume[np.ix_(ix, iy)]


def _disk(radius_vox: float) -> np.ndarray:
    r = max(1, int(np.ceil(radius_vox)))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return xx**2 + yy**2 <= radius_vox**2 + 1e-6


def complete_tissues(
    classes: np.ndarray,
    region: str,
    voxel_mm: float,
    rng: np.random.Generator,
    settings: SynthesisSettings | None = None,
    bone: np.ndarray | None = None,
    complete: bool = True,
    subcut_fat_mm: float | None = None,
) -> np.ndarray:
    """Tissue map of one slice of a canonical leg from its muscle labels.

    Parameters
    ----------
    classes : numpy.ndarray
        (H, W) muscle labels (any non-zero value is muscle, negative values
        are muscles outside the table).
    region : str
        ``thigh`` (one femur) or ``calf`` (tibia and fibula).
    voxel_mm : float
        In-plane voxel size.
    rng : numpy.random.Generator
    settings : SynthesisSettings, optional
    bone : numpy.ndarray, optional
        (H, W) bone mask from the source; placed here when None.
    complete : bool
        When False, unlabelled tissue inside the fascia becomes
        ``UNLABELLED`` (it may be a muscle the source does not label)
        instead of intermuscular fat.
    subcut_fat_mm : float, optional
        Mean subcutaneous fat thickness (drawn when None; pass the same
        value for the slices of one slab).

    Returns
    -------
    numpy.ndarray
        (H, W) uint8 tissue classes (``BACKGROUND`` ... ``UNLABELLED``).
    """
    settings = settings or SynthesisSettings()
    muscle = np.asarray(classes) != 0
    tissue = np.zeros(muscle.shape, np.uint8)
    if not muscle.any() and (bone is None or not bone.any()):
        return tissue
    pad = int(np.ceil(40.0 / voxel_mm))
    padded = np.pad(muscle | (bone if bone is not None else False), pad)
    closing = _disk(rng.uniform(*settings.fascia_closing_mm) / voxel_mm)
    inside = ndimage.binary_closing(padded, structure=closing)
    inside = ndimage.binary_fill_holes(inside)[pad:-pad, pad:-pad] | muscle
    gaps = inside & ~muscle
    bone_mask = np.zeros_like(muscle) if bone is None else np.asarray(bone, bool).copy()
    marrow = np.zeros_like(muscle)
    if bone is None:
        bone_mask, marrow = _place_bones(gaps, region, voxel_mm, rng, settings)
    else:
        depth = ndimage.distance_transform_edt(bone_mask) * voxel_mm
        marrow = depth > rng.uniform(*settings.cortex_mm)
    inside |= bone_mask
    # thin bands of the closing between muscles and narrow clefts are fat
    outside = ~inside
    distance_out = ndimage.distance_transform_edt(np.pad(outside, 1, constant_values=True))[1:-1, 1:-1] * voxel_mm
    thickness = subcut_fat_mm if subcut_fat_mm is not None else rng.uniform(*settings.subcut_fat_mm)
    field = 1.0 + 0.25 * _smooth_noise(muscle.shape, rng, 40.0 / voxel_mm)
    fat_edge = thickness * np.clip(field, 0.5, 1.6)
    skin = rng.uniform(*settings.skin_mm)
    fascia_ring = inside & ~ndimage.binary_erosion(inside, border_value=0)
    tissue[outside & (distance_out <= fat_edge + skin)] = SKIN
    tissue[outside & (distance_out <= fat_edge)] = SUBCUT_FAT
    tissue[inside] = IM_FAT if complete else UNLABELLED
    narrow = gaps & (ndimage.distance_transform_edt(gaps) * voxel_mm <= 2.5)
    tissue[narrow] = IM_FAT
    tissue[fascia_ring & ~muscle] = FASCIA
    tissue[muscle] = MUSCLE
    tissue[bone_mask] = CORTEX
    tissue[bone_mask & marrow] = MARROW
    return tissue


def mark_unlabelled(classes: np.ndarray, voxel_mm: float, closing_mm: float = 5.0) -> np.ndarray:
    """Class map of an incompletely labelled real leg with ``IGNORE`` on the
    unlabelled tissue inside the fascia (closing of the labels, slice by
    slice): it may be a muscle the source does not label."""
    out = np.asarray(classes).astype(np.int64).copy()
    disk = _disk(closing_mm / voxel_mm)
    pad = disk.shape[0]
    for z in range(out.shape[2]):
        labelled = np.pad(out[..., z] > 0, pad)
        if not labelled.any():
            continue
        inside = ndimage.binary_fill_holes(ndimage.binary_closing(labelled, structure=disk))[pad:-pad, pad:-pad]
        out[..., z][inside & (out[..., z] == 0)] = IGNORE
    return out


def _place_bones(
    gaps: np.ndarray, region: str, voxel_mm: float, rng: np.random.Generator, settings: SynthesisSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Bones in the deepest unlabelled parts of the compartment: the femur
    (thigh) or the tibia and the fibula (calf), as discs no larger than the
    gap that holds them."""
    bone = np.zeros(gaps.shape, bool)
    marrow = np.zeros(gaps.shape, bool)
    depth = ndimage.distance_transform_edt(gaps) * voxel_mm
    ranges = [settings.femur_radius_mm] if region == "thigh" else [settings.tibia_radius_mm, settings.fibula_radius_mm]
    available = depth.copy()
    ii, jj = np.indices(gaps.shape)
    for radius_range in ranges:
        peak = float(available.max())
        if peak < 2.5:
            break
        ci, cj = np.unravel_index(int(np.argmax(available)), gaps.shape)
        radius = min(rng.uniform(*radius_range), peak + 1.5 * voxel_mm)
        r = np.hypot(ii - ci, jj - cj) * voxel_mm
        disc = r <= radius
        bone |= disc
        marrow |= r <= radius - rng.uniform(*settings.cortex_mm)
        available[r <= radius + 8.0] = 0.0
    return bone, marrow


def _smooth_noise(shape: Sequence[int], rng: np.random.Generator, scale_vox: float) -> np.ndarray:
    """Smooth random field with zero mean and unit standard deviation, drawn
    on a coarse grid and interpolated (cheap for large scales)."""
    shape = tuple(int(s) for s in shape)
    coarse = tuple(max(2, int(np.ceil(s / max(scale_vox, 1.0))) + 1) for s in shape)
    noise = rng.standard_normal(coarse)
    zoom = [s / c for s, c in zip(shape, coarse)]
    field = ndimage.zoom(noise, zoom, order=3, mode="nearest", grid_mode=True)[tuple(slice(0, s) for s in shape)]
    return ((field - field.mean()) / (field.std() + 1e-6)).astype(np.float32)


@dataclass
class Contrast:
    """Intensity parameters of one synthetic image."""

    family: str
    means: np.ndarray  # mean intensity of each tissue class
    stds: np.ndarray  # within-tissue standard deviation of each class
    muscle_means: dict[int, float]  # per muscle label
    fat_fraction: dict[int, float]  # per muscle label, 0..infiltration_max
    patchy: dict[int, bool]
    plane_weight: float = 0.0  # share of fat or fascia in the voxels where two muscles meet
    plane_tissue: int = 0  # IM_FAT or FASCIA: what separates neighbouring muscles


def draw_contrast(
    muscle_labels: Sequence[int], rng: np.random.Generator, settings: SynthesisSettings | None = None, family: str | None = None
) -> Contrast:
    """Draw the tissue intensities of one image.

    ``family`` is one of :data:`CONTRASTS` (drawn when None): a contrast
    family draws each tissue mean from its range; ``random`` draws every
    tissue mean from U(0, 1) independently (SynthSeg).
    """
    settings = settings or SynthesisSettings()
    if family is None:
        if rng.uniform() < settings.random_contrast_probability:
            family = "random"
        else:
            family = str(rng.choice(list(_FAMILIES)))
    if family not in CONTRASTS:
        raise ValueError(f"unknown contrast family {family!r}; expected one of {CONTRASTS}")
    means = np.zeros(len(TISSUE_NAMES))
    if family == "random":
        means[:] = rng.uniform(0.0, 1.0, len(TISSUE_NAMES))
        means[BACKGROUND] = rng.uniform(0.0, 0.1) if rng.uniform() < 0.8 else means[BACKGROUND]
        fat = means[SUBCUT_FAT]
    else:
        ranges = _FAMILIES[family]
        draw = {key: rng.uniform(*value) for key, value in ranges.items()}
        fat = draw["fat"]
        means[BACKGROUND] = draw["background"]
        means[SKIN] = draw["skin"]
        means[SUBCUT_FAT] = fat
        means[FASCIA] = draw["fascia"]
        means[MUSCLE] = draw["muscle"]
        means[IM_FAT] = fat * rng.uniform(0.85, 1.05)
        means[CORTEX] = rng.uniform(0.0, 0.06)
        means[MARROW] = fat * rng.uniform(0.75, 1.05)
        means[UNLABELLED] = draw["muscle"] if rng.uniform() < 0.7 else fat
    stds = np.array([rng.uniform(*settings.texture_std) for _ in TISSUE_NAMES])
    muscle_means, fat_fraction, patchy = {}, {}, {}
    severity = rng.choice([0.05, 0.15, 0.4], p=[0.55, 0.3, 0.15])
    # a disease pattern: a random set of muscles is replaced by fat up to
    # infiltration_max while the others stay lean (selective involvement, as
    # in dystrophies; Hostin et al. 2023)
    # (no random draw for a setting that is off, so that the default draws stay as they were)
    involved_share = 0.0
    if settings.pattern_probability > 0 and rng.uniform() < settings.pattern_probability:
        involved_share = rng.uniform(0.2, 0.8)
    for label in muscle_labels:
        muscle_means[int(label)] = float(means[MUSCLE] * (1.0 + rng.normal(0.0, 0.08)))
        if involved_share > 0 and rng.uniform() < involved_share:
            f = rng.uniform(*settings.pattern_fat)
        else:
            f = rng.exponential(severity)
        fat_fraction[int(label)] = float(min(f, settings.infiltration_max))
        patchy[int(label)] = bool(rng.uniform() < settings.patchy_probability)
    plane_weight, plane_tissue = 0.0, IM_FAT
    if settings.plane_probability > 0 and rng.uniform() < settings.plane_probability:
        plane_weight = rng.uniform(*settings.plane_weight)
        plane_tissue = IM_FAT if rng.uniform() < 0.7 else FASCIA
    return Contrast(family, means, stds, muscle_means, fat_fraction, patchy, plane_weight, plane_tissue)


def muscle_borders(classes: np.ndarray) -> np.ndarray:
    """Voxels of a muscle that touch another muscle in-plane (4-neighbours):
    where the thin fat planes and fascia between neighbouring muscles lie."""
    classes = np.asarray(classes)
    border = np.zeros(classes.shape, bool)
    for axis in (0, 1):
        for shift in (1, -1):
            other = np.roll(classes, shift, axis=axis)
            edge = [slice(None)] * classes.ndim
            edge[axis] = 0 if shift == 1 else -1
            other[tuple(edge)] = classes[tuple(edge)]
            border |= (classes != 0) & (other != 0) & (other != classes)
    return border


def render_tissues(
    tissue: np.ndarray, classes: np.ndarray, contrast: Contrast, rng: np.random.Generator, voxel_mm: float
) -> np.ndarray:
    """Noise-free image of one slice: tissue means, per-muscle intensity and
    fat infiltration (diffuse mixing or patchy fat), and texture."""
    image = contrast.means[tissue].astype(np.float32)
    fat = float(contrast.means[IM_FAT])
    patches = _smooth_noise(tissue.shape, rng, 4.0 / voxel_mm)
    for label, mean in contrast.muscle_means.items():
        where = (classes == label) & (tissue == MUSCLE)
        if not where.any():
            continue
        f = contrast.fat_fraction[label]
        if contrast.patchy[label] and f > 0.02:
            cut = np.quantile(patches[where], 1.0 - f)
            fatty = where & (patches >= cut)
            image[where] = mean
            image[fatty] = fat * rng.uniform(0.8, 1.0) + 0.1 * mean
        else:
            image[where] = (1.0 - f) * mean + f * fat
    if contrast.plane_weight > 0:
        planes = muscle_borders(np.where(tissue == MUSCLE, classes, 0))
        w = contrast.plane_weight
        image[planes] = (1.0 - w) * image[planes] + w * float(contrast.means[contrast.plane_tissue])
    texture = _smooth_noise(tissue.shape, rng, 1.5)
    image *= 1.0 + contrast.stds[tissue] * texture
    return image


def degrade(image: np.ndarray, rng: np.random.Generator, settings: SynthesisSettings | None = None) -> np.ndarray:
    """Random point spread, in-plane resolution loss, bias field and Rician
    noise of a slice (H, W) or a block (H, W, Z); the point spread and the
    resolution loss are in-plane only."""
    settings = settings or SynthesisSettings()
    flat = [1.0] * (image.ndim - 2)
    sigma = rng.uniform(*settings.psf_sigma_vox)
    out = ndimage.gaussian_filter(image, [sigma, sigma] + [0.0] * len(flat))
    if rng.uniform() < settings.downsample_probability:
        factor = rng.uniform(*settings.downsample)
        small = ndimage.zoom(out, [1.0 / factor] * 2 + flat, order=1, grid_mode=True, mode="nearest")
        out = ndimage.zoom(small, [a / b for a, b in zip(out.shape, small.shape)], order=1, grid_mode=True, mode="nearest")
        out = out[tuple(slice(0, n) for n in image.shape)]
        if out.shape != image.shape:
            out = np.pad(out, [(0, a - b) for a, b in zip(image.shape, out.shape)], mode="edge")
    bias = np.exp(rng.uniform(*settings.bias_strength) * _smooth_noise(out.shape, rng, out.shape[0] / 3.0))
    out = out * bias
    sigma = rng.uniform(*settings.noise_fraction) * float(np.percentile(out, 99.0) + 1e-6)
    real = out + sigma * rng.standard_normal(out.shape)
    imaginary = sigma * rng.standard_normal(out.shape)
    return np.sqrt(real**2 + imaginary**2).astype(np.float32)


def synthesise_patch(
    leg: LegAnatomy,
    z: int,
    region: str,
    label_indices: Sequence[int],
    patch_shape: Sequence[int],
    rng: np.random.Generator,
    settings: SynthesisSettings | None = None,
    family: str | None = None,
) -> SyntheticPatch:
    """Synthesise one training slice of ``leg`` at slice ``z``.

    The slice is averaged over a slab of neighbouring slices for a random
    slice thickness (sources with thin slices), cropped or padded at random
    to ``patch_shape`` and normalised by robust percentiles inside the body,
    as at inference.

    Parameters
    ----------
    leg : LegAnatomy
    z : int
        Slice index in ``leg.classes``.
    region : str
    label_indices : sequence of int
        Right-side table indices in class order (class = position + 1).
    patch_shape : sequence of int
        (H, W) of the output.
    rng : numpy.random.Generator
    settings : SynthesisSettings, optional
    family : str, optional
        Contrast family (drawn when None).
    """
    block = synthesise_block(leg, z, 1, 1, region, label_indices, patch_shape, rng, settings, family)
    return SyntheticPatch(image=block.image[..., 0], classes=block.classes[..., 0], muscle_region=block.muscle_region[..., 0],
                          tissue=block.tissue[..., 0], contrast=block.contrast)


def _muscle_region(tissue: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Everything inside the fascia except bone (labelled muscle on the fascia ring included)."""
    return np.isin(tissue, (MUSCLE, IM_FAT, UNLABELLED)) | ((tissue == FASCIA) & (classes != 0))


def slice_target(classes: np.ndarray, tissue: np.ndarray, label_indices: Sequence[int], complete: bool) -> np.ndarray:
    """Training classes of a synthetic slice: position in ``label_indices``
    + 1 for each muscle, 0 elsewhere, ``IGNORE`` on muscles outside the table
    and, for incompletely labelled sources, on unlabelled tissue inside the
    fascia."""
    target = np.zeros(classes.shape, np.int64)
    for position, label in enumerate(label_indices):
        target[classes == label] = position + 1
    if not complete:
        target[tissue == UNLABELLED] = IGNORE
    target[classes == UNLABELLED_MUSCLE] = IGNORE
    return target


def synthesise_block(
    leg: LegAnatomy,
    z_start: int,
    depth: int,
    step: int,
    region: str,
    label_indices: Sequence[int],
    patch_shape: Sequence[int],
    rng: np.random.Generator,
    settings: SynthesisSettings | None = None,
    family: str | None = None,
) -> SyntheticPatch:
    """Synthesise a 3D training block of ``leg`` (for 3D networks).

    The block holds ``depth`` slices, every ``step``-th source slice from
    ``z_start`` (a coarser slice spacing for sources with thin slices), all
    with one contrast and one draw of the missing tissues, each averaged
    over a random slice thickness, cropped at random in-plane to
    ``patch_shape`` (H, W) and normalised inside the body as at inference.
    Slices past the ends of the leg are background and ``IGNORE``: short
    sources fill part of a block. ``muscle_region`` and ``tissue`` are
    (H, W, depth) like ``image`` and ``classes``.
    """
    settings = settings or SynthesisSettings()
    nz = leg.classes.shape[2]
    centres = [z_start + k * step for k in range(depth)]
    inside = [z for z in centres if 0 <= z < nz]
    crop = random_crop(leg.classes.shape[:2], patch_shape, (leg.classes[..., inside] != 0).any(axis=2), rng)
    muscle_labels = [int(i) for i in label_indices]
    contrast = draw_contrast(muscle_labels, rng, settings, family)
    subcut = rng.uniform(*settings.subcut_fat_mm)
    tissue_seed = int(rng.integers(2**31))
    # slice thickness up to the block's slice spacing (any, up to 7 source slices, for a single slice)
    half = int(min(3 if depth == 1 else step // 2, max(0, round((rng.uniform(*settings.slice_mm) / leg.voxel_mm[2] - 1) / 2))))
    voxel = leg.voxel_mm[0]
    shape = tuple(int(p) for p in patch_shape)
    rendered: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def render(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if k not in rendered:
            classes_k = extract_box(leg.classes[..., k], crop, shape, 0)
            bone_k = None if leg.bone is None else extract_box(leg.bone[..., k], crop, shape, False)
            # one seed for every slice: the same fat thickness, fascia and bone draws
            tissue = complete_tissues(classes_k, region, voxel, np.random.default_rng(tissue_seed), settings, bone_k,
                                      leg.complete, subcut)
            rendered[k] = (classes_k, tissue, render_tissues(tissue, classes_k, contrast, rng, voxel))
        return rendered[k]

    images, targets, regions, tissues = [], [], [], []
    for z in centres:
        if not 0 <= z < nz:
            images.append(np.full(shape, contrast.means[BACKGROUND], np.float32))
            targets.append(np.full(shape, IGNORE, np.int64))
            regions.append(np.zeros(shape, bool))
            tissues.append(np.zeros(shape, np.uint8))
            continue
        classes, tissue, _ = render(z)
        images.append(np.mean([render(k)[2] for k in range(z - half, z + half + 1) if 0 <= k < nz], axis=0))
        targets.append(slice_target(classes, tissue, muscle_labels, leg.complete))
        regions.append(_muscle_region(tissue, classes))
        tissues.append(tissue)
    tissue = np.stack(tissues, axis=-1)
    image = degrade(np.stack(images, axis=-1), rng, settings)
    image = robust_normalise(image, tissue != BACKGROUND)
    return SyntheticPatch(image=image, classes=np.stack(targets, axis=-1), muscle_region=np.stack(regions, axis=-1),
                          tissue=tissue, contrast=contrast.family)


def random_crop(
    shape: Sequence[int], patch: Sequence[int], foreground: np.ndarray, rng: np.random.Generator
) -> tuple[int, int]:
    """Start of a random crop of ``patch`` that keeps the muscles mostly in
    view (crops larger than the leg pad it)."""
    starts = []
    found = np.argwhere(foreground)
    centre = found.mean(axis=0) if found.size else (np.array(shape) - 1) / 2.0
    for axis in range(2):
        p = patch[axis]
        jitter = rng.uniform(-0.15, 0.15) * p
        starts.append(round(centre[axis] + jitter - (p - 1) / 2.0))
    return starts[0], starts[1]


def extract_box(volume: np.ndarray, starts: Sequence[int], sizes: Sequence[int], fill) -> np.ndarray:
    """Box of ``volume`` starting at ``starts`` (may leave the volume; the
    outside is ``fill``)."""
    out = np.full(tuple(sizes), fill, dtype=volume.dtype)
    source, target = [], []
    for start, size, n in zip(starts, sizes, volume.shape):
        low, high = max(start, 0), min(start + size, n)
        if high <= low:
            return out
        source.append(slice(low, high))
        target.append(slice(low - start, high - start))
    out[tuple(target)] = volume[tuple(source)]
    return out


def synthesise_volume(
    leg: LegAnatomy,
    region: str,
    label_indices: Sequence[int],
    rng: np.random.Generator,
    settings: SynthesisSettings | None = None,
    family: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthesise every slice of a leg with one contrast (a test volume).

    Returns the normalised image and the class map (X, Y, Z) on the leg's
    grid; ``IGNORE`` marks unknown voxels.
    """
    settings = settings or SynthesisSettings()
    family = family or str(rng.choice(list(_FAMILIES)))
    contrast_seed = int(rng.integers(2**31))
    images, targets = [], []
    for z in range(leg.classes.shape[2]):
        # the same contrast draw for every slice of the volume
        slice_rng = np.random.default_rng([contrast_seed, z])
        contrast = draw_contrast(label_indices, np.random.default_rng(contrast_seed), settings, family)
        tissue = complete_tissues(
            leg.classes[..., z], region, leg.voxel_mm[0], np.random.default_rng(contrast_seed), settings,
            None if leg.bone is None else leg.bone[..., z], leg.complete,
        )
        image = render_tissues(tissue, leg.classes[..., z], contrast, slice_rng, leg.voxel_mm[0])
        images.append(degrade(image, np.random.default_rng([contrast_seed, 0]), settings))
        targets.append(slice_target(leg.classes[..., z], tissue, label_indices, leg.complete))
    volume = np.stack(images, axis=-1)
    body = ndimage.binary_dilation(leg.classes != 0, iterations=3)
    return robust_normalise(volume, body), np.stack(targets, axis=-1)
