"""What one labelled calf can give: the other leg of the same subject as an atlas.

The calf leave-one-leg-out test (``eval_seg.py --tasks calf``) trains a
network on one leg's labels of ``calf_mese_philips`` and tests it on the
other leg. This script measures the classic alternative with the same
information: mirror the image with the trained leg's labels, register it to
the tested leg (affine, then B-spline; Mattes mutual information, masked to
each leg's half of the field of view, started from the legs' body-mask
centroids) and carry the labels over. The scores are those of the
leave-one-leg-out test (``dice`` leaves out the unlabelled tissue inside the
tested leg's fascia).

Usage::

    python benchmarks/calf_mirror_atlas.py [--out results_dir]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))

import eval_seg
import train_synth_models as sources

from bids_muscle.seg import synth
from bids_muscle.seg.infer import resample_labels
from bids_muscle.seg.labels import load_label_table
from bids_muscle.seg.legs import body_mask, side_labels, voxel_sizes


def _image(array: np.ndarray, spacing) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    image.SetSpacing([float(s) for s in spacing])
    return image


def _array(image: sitk.Image) -> np.ndarray:
    return np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))


def _half(shape, leg_x: np.ndarray) -> np.ndarray:
    """Mask of the x range of one leg (its body-mask columns, 15 voxels wider)."""
    mask = np.zeros(shape, np.uint8)
    mask[max(int(leg_x.min()) - 15, 0) : int(leg_x.max()) + 15] = 1
    return mask


def register(fixed: np.ndarray, moving: np.ndarray, fixed_leg: np.ndarray, moving_leg: np.ndarray, spacing):
    """Affine and affine + B-spline transforms taking ``fixed`` points to
    ``moving`` ones; the legs are boolean masks of the leg in each image."""
    fixed_image, moving_image = _image(fixed.astype(np.float32), spacing), _image(moving.astype(np.float32), spacing)
    fixed_mask = _image(_half(fixed.shape, np.nonzero(fixed_leg.any((1, 2)))[0]), spacing)
    moving_mask = _image(_half(moving.shape, np.nonzero(moving_leg.any((1, 2)))[0]), spacing)
    scale = np.asarray(spacing, float)
    centre = np.argwhere(fixed_leg).mean(0) * scale
    shift = np.argwhere(moving_leg).mean(0) * scale - centre

    def method(metric_moving_mask: bool) -> sitk.ImageRegistrationMethod:
        r = sitk.ImageRegistrationMethod()
        r.SetMetricAsMattesMutualInformation(32)
        r.SetMetricFixedMask(fixed_mask)
        if metric_moving_mask:
            r.SetMetricMovingMask(moving_mask)
        r.SetMetricSamplingStrategy(r.RANDOM)
        r.SetMetricSamplingPercentage(0.03, seed=1)
        r.SetInterpolator(sitk.sitkLinear)
        return r

    affine = sitk.AffineTransform(3)
    affine.SetCenter(centre.tolist())
    linear = sitk.CompositeTransform([sitk.TranslationTransform(3, shift.tolist()), affine])
    r = method(True)
    r.SetInitialTransform(linear, inPlace=True)
    r.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 150)
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetShrinkFactorsPerLevel([4, 2, 1])
    r.SetSmoothingSigmasPerLevel([2, 1, 0])
    r.Execute(fixed_image, moving_image)
    mesh = sitk.BSplineTransformInitializer(fixed_image, [8, 8, 4])
    r = method(False)
    r.SetMovingInitialTransform(linear)
    r.SetInitialTransform(mesh, inPlace=True)
    r.SetOptimizerAsLBFGSB(1e-5, 100)
    r.SetShrinkFactorsPerLevel([2, 1])
    r.SetSmoothingSigmasPerLevel([1, 0])
    r.Execute(fixed_image, moving_image)
    return {"affine": linear, "affine+bspline": sitk.CompositeTransform([linear, mesh])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for the per-muscle table")
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    table = {lab.index: lab for lab in load_label_table("calf")}
    images = {name: value for name, value in sources.calf_images().items() if name in eval_seg.CALF_TEST_CONTRASTS}
    rows = []
    for trained, tested, side in (("odd", "even", "right"), ("even", "odd", "left")):
        atlas, dti_affine = sources.calf_truth(trained)
        truth, _ = sources.calf_truth(tested)
        labels = sorted(set(side_labels(np.array(list(sources.QMRI_CALF.values())), "calf", side).tolist()))
        for contrast, (image, affine) in images.items():
            if abs(affine[0, 0]) < np.abs(affine[1:3, 0]).max():
                raise ValueError(f"{contrast}: the first image axis is not left-right")
            spacing = voxel_sizes(affine)
            truth_grid = resample_labels(truth, dti_affine, image.shape, affine)
            # the trained leg mirrored onto the tested leg's side, its labels renamed to that side
            atlas_grid = resample_labels(atlas, dti_affine, image.shape, affine)[::-1]
            atlas_grid = side_labels(atlas_grid, "calf", side)
            body = body_mask(image)
            tested_leg = body & (np.arange(image.shape[0]) < image.shape[0] // 2)[:, None, None]
            if not (tested_leg & (truth_grid > 0)).any():
                tested_leg = body & ~tested_leg
            moving_leg = (body & ~tested_leg)[::-1]
            transforms = register(image, image[::-1], tested_leg, moving_leg, spacing)
            unlabelled = synth.mark_unlabelled(truth_grid, float(spacing[0])) == synth.IGNORE
            for name, transform in transforms.items():
                warped = _array(sitk.Resample(_image(atlas_grid.astype(np.int16), spacing), _image(image, spacing),
                                              transform, sitk.sitkNearestNeighbor, 0))
                scores = eval_seg._scores(warped, truth_grid, [table[i] for i in labels], spacing, unlabelled)
                rows.append(scores.assign(trained=trained, tested=tested, contrast=contrast, registration=name))
            print(f"trained {trained}, {contrast}: " + ", ".join(
                f"{name} {scores['dice'].mean():.3f}" for name, scores in zip(transforms, rows[-2:])), flush=True)
    result = pd.concat(rows, ignore_index=True)
    print(result.groupby(["registration", "contrast"])["dice"].mean().round(3).unstack())
    print(result.groupby("registration")["dice"].mean().round(3).to_string())
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        result.to_csv(args.out / "calf_mirror_atlas.tsv", sep="\t", index=False)


if __name__ == "__main__":
    main()
