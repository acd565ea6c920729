"""N4 bias-field estimation (Tustison et al. 2010) through SimpleITK.

The field is estimated on one image (the first echo or the anatomical
reference) and returned as an array, so the caller can divide every echo of
the same series by the same field.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

MIN_SLICES = 5


def foreground_mask(image: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Body mask: voxels above ``fraction`` of the 99th percentile, holes filled, largest parts kept."""
    image = np.nan_to_num(np.asarray(image, np.float32))
    if not np.any(image > 0):
        raise ValueError("image has no positive voxels")
    threshold = fraction * np.percentile(image[image > 0], 99)
    mask = image > threshold
    in_plane = ndimage.generate_binary_structure(2, 1)
    if mask.ndim == 3:
        in_plane = in_plane[..., None]
    mask = ndimage.binary_opening(mask, structure=in_plane)
    if mask.ndim == 3:
        mask = np.stack([ndimage.binary_fill_holes(mask[..., z]) for z in range(mask.shape[2])], axis=2)
    else:
        mask = ndimage.binary_fill_holes(mask)
    return mask


def estimation_factors(shape: tuple[int, ...], spacing_mm: tuple[float, ...], voxel_mm: float) -> list[int]:
    """Integer subsampling factor per array axis for the N4 estimate.

    Each axis is subsampled to about ``voxel_mm`` (never coarser than the
    native voxel, so thick slices are never merged) and keeps at least 8
    voxels.
    """
    if not voxel_mm > 0:
        raise ValueError(f"voxel_mm must be positive, got {voxel_mm}")
    factors = []
    for size, step in zip(shape, spacing_mm):
        factors.append(int(max(1, min(round(voxel_mm / float(step)), size // 8))))
    return factors


def n4_bias_field(
    image: np.ndarray,
    spacing_mm: tuple[float, ...],
    mask: np.ndarray | None = None,
    iterations: tuple[int, ...] = (50, 50, 30),
    spline_distance_mm: float = 100.0,
    voxel_mm: float = 4.0,
) -> np.ndarray:
    """Multiplicative bias field of ``image`` (same shape), normalised to mean 1 in the mask.

    The field is estimated on a coarse grid (every n-th voxel, about
    ``voxel_mm`` apart in-plane; the slices of thick-slice series are all
    kept) and its B-spline is evaluated at every voxel of ``image``: the
    fitting cost grows with the number of voxels in the mask, and the field
    (control points ~``spline_distance_mm`` apart) is much smoother than that
    grid. Subsampling, not block averaging, keeps the intensity histogram
    that N4 sharpens, so the estimate stays close to one on a finer grid.

    Parameters
    ----------
    image
        3D magnitude image, any positive scale.
    spacing_mm
        Voxel size along each array axis in mm.
    mask
        Voxels used for the estimate; a foreground mask when ``None``.
    iterations
        Iterations per fitting level (the number of levels is its length).
    spline_distance_mm
        B-spline control point spacing; larger means smoother fields.
    voxel_mm
        Target voxel size of the estimation grid in mm (see :func:`estimation_factors`).
    """
    image = np.asarray(image, np.float32)
    if image.ndim != 3:
        raise ValueError(f"N4 needs a 3D image, got shape {image.shape}")
    if mask is None:
        mask = foreground_mask(image)
    mask = np.asarray(mask, bool)
    if not mask.any():
        raise ValueError("N4: the foreground mask is empty")
    n_slices = image.shape[2]
    if n_slices < MIN_SLICES:
        # the B-spline fit needs a few slices: pad by repeating the edge slices
        pad = ((0, 0), (0, 0), (0, MIN_SLICES - n_slices))
        field = n4_bias_field(np.pad(image, pad, mode="edge"), spacing_mm, np.pad(mask, pad, mode="edge"),
                              iterations, spline_distance_mm, voxel_mm)
        return field[..., :n_slices] / float(np.mean(field[..., :n_slices][mask]))
    img = sitk.GetImageFromArray(np.transpose(np.clip(image, 0, None) + 1e-3, (2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing_mm])
    msk = sitk.GetImageFromArray(np.transpose(mask.astype(np.uint8), (2, 1, 0)))
    msk.CopyInformation(img)
    factors = estimation_factors(image.shape, spacing_mm, voxel_mm)
    small, small_mask = sitk.Shrink(img, factors), sitk.Shrink(msk, factors)
    if not np.any(sitk.GetArrayViewFromImage(small_mask)):
        small, small_mask = img, msk  # a mask thinner than the grid: estimate at full resolution
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(i) for i in iterations])
    extent = [sz * sp for sz, sp in zip(small.GetSize(), small.GetSpacing())]
    corrector.SetNumberOfControlPoints([max(4, int(e / spline_distance_mm) + 3) for e in extent])
    corrector.Execute(small, small_mask)
    log_field = corrector.GetLogBiasFieldAsImage(img)
    field = np.exp(np.transpose(sitk.GetArrayFromImage(log_field), (2, 1, 0))).astype(np.float32)
    if not np.all(np.isfinite(field)):
        raise ValueError("N4 returned a non-finite bias field")
    return field / float(np.mean(field[mask]))
