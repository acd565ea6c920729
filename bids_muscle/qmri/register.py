"""Rigid registration of two images on the same voxel grid (SimpleITK).

Arrays in, arrays out: no file I/O. Used to align the second echo of a
2-echo spin echo stored as a separate series onto the first
(:func:`bids_muscle.qmri.se2echo.align_second_echo`).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

__all__ = ["register_rigid", "THICK_SLICE_RATIO"]

#: Slices at least this many times thicker than the in-plane voxel carry too
#: little through-plane information: only the in-plane motion is estimated.
THICK_SLICE_RATIO = 2.0
#: Fewer slices are padded by repeating the edge slices for the estimate.
MIN_SLICES = 8


def _to_sitk(array: np.ndarray, spacing_mm) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0)), dtype=np.float32))
    image.SetSpacing([float(s) for s in spacing_mm])
    return image


def register_rigid(
    fixed: np.ndarray,
    moving: np.ndarray,
    spacing_mm: tuple[float, float, float],
    mask: np.ndarray | None = None,
    in_plane: bool | None = None,
    bins: int = 32,
    iterations: int = 300,
) -> tuple[np.ndarray, dict]:
    """Register ``moving`` to ``fixed`` (rigid, Mattes mutual information) and resample it onto ``fixed``.

    Parameters
    ----------
    fixed, moving
        3D images on the same voxel grid (array axes 0, 1 in-plane, 2 through-plane).
    spacing_mm
        Voxel size along each array axis in mm.
    mask
        Voxels over which the largest displacement is reported (all voxels
        when ``None``); the metric uses the whole image.
    in_plane
        Estimate only the in-plane motion (rotation about axis 2, translation
        along axes 0 and 1). Default: when the slices are at least
        :data:`THICK_SLICE_RATIO` times the in-plane voxel size, or fewer than 4.
    bins
        Histogram bins of the mutual information.
    iterations
        Most optimiser iterations per level (two levels: shrunk 2x and smoothed by two in-plane voxels, then
        full resolution smoothed by one).

    Returns
    -------
    moved : ndarray, float32
        ``moving`` resampled onto ``fixed`` (cubic B-spline, negatives set to 0, 0 outside its field of view).
    info : dict
        ``translation_mm`` and ``rotation_deg`` (along / about array axes 0, 1, 2; the transform maps a point
        of ``fixed`` to the same anatomy in ``moving``, so the translation is how far the content of
        ``moving`` is displaced), ``center_mm`` (centre of rotation, mm from voxel 0),
        ``max_displacement_mm`` (over ``mask``), ``degrees_of_freedom``, ``metric`` (final value,
        lower is better), ``iterations`` and ``stop`` (optimiser stop condition).
    """
    fixed = np.nan_to_num(np.asarray(fixed, np.float32))
    moving = np.nan_to_num(np.asarray(moving, np.float32))
    if fixed.ndim != 3 or fixed.shape != moving.shape:
        raise ValueError(f"register_rigid needs two 3D images of one shape, got {fixed.shape} and {moving.shape}")
    spacing = [float(s) for s in spacing_mm]
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing_mm must be three positive sizes, got {spacing_mm}")
    if in_plane is None:
        in_plane = spacing[2] >= THICK_SLICE_RATIO * max(spacing[:2]) or fixed.shape[2] < 4
    n_slices = fixed.shape[2]
    lo = max(0, MIN_SLICES - n_slices) // 2
    pad = ((0, 0), (0, 0), (lo, max(0, MIN_SLICES - n_slices) - lo))
    # the smoothing of the coarse level needs a few slices: repeat the edge slices (cropped again below)
    f_img = _to_sitk(np.pad(fixed, pad, mode="edge"), spacing)
    m_img = _to_sitk(np.pad(moving, pad, mode="edge"), spacing)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(int(bins))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-5, int(iterations), relaxationFactor=0.5)
    reg.SetOptimizerScalesFromPhysicalShift()
    if in_plane:
        reg.SetOptimizerWeights([0.0, 0.0, 1.0, 1.0, 1.0, 0.0])  # Euler3D: rx, ry, rz, tx, ty, tz
    reg.SetShrinkFactorsPerLevel([2, 1])
    # smoothing also at full resolution (one in-plane voxel): without it, linear interpolation averages
    # the noise of the moving image off the grid, which pulls mutual information ~0.5 voxel away from
    # the true alignment (measured: 1.4 mm on aligned 2 mm phantom echoes, 0.6 mm on real ones)
    voxel = min(spacing[:2])
    reg.SetSmoothingSigmasPerLevel([2.0 * voxel, voxel])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    initial = sitk.CenteredTransformInitializer(f_img, m_img, sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)
    reg.SetInitialTransform(initial, inPlace=True)
    reg.Execute(f_img, m_img)
    transform = sitk.Euler3DTransform(initial)

    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(f_img)
    resampler.SetInterpolator(sitk.sitkBSpline)
    resampler.SetTransform(transform)
    resampler.SetDefaultPixelValue(0.0)
    moved = np.transpose(sitk.GetArrayFromImage(resampler.Execute(m_img)), (2, 1, 0))
    moved = np.clip(moved[:, :, lo:lo + n_slices], 0.0, None).astype(np.float32)

    rotation = np.asarray(transform.GetMatrix()).reshape(3, 3)
    center = np.asarray(transform.GetCenter()) - np.array([0.0, 0.0, lo * spacing[2]])  # mm from voxel 0 of fixed
    translation = np.asarray(transform.GetTranslation())
    where = np.ones(fixed.shape, bool) if mask is None else np.asarray(mask, bool)
    points = np.argwhere(where)[:: max(1, int(where.sum()) // 20000)] * np.asarray(spacing)
    if len(points):
        displacement = (points - center) @ (rotation - np.eye(3)).T + translation
        max_disp = float(np.max(np.linalg.norm(displacement, axis=1)))
    else:
        max_disp = float(np.linalg.norm(translation))
    info = {
        "translation_mm": [float(t) for t in translation],
        "rotation_deg": [float(np.degrees(a))
                         for a in (transform.GetAngleX(), transform.GetAngleY(), transform.GetAngleZ())],
        "center_mm": [float(c) for c in center],
        "max_displacement_mm": max_disp,
        "degrees_of_freedom": 3 if in_plane else 6,
        "metric": float(reg.GetMetricValue()),
        "iterations": int(reg.GetOptimizerIteration()),
        "stop": reg.GetOptimizerStopConditionDescription(),
    }
    return moved, info
