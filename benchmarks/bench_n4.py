"""Speed and agreement of N4 on a coarse grid against the earlier N4 path.

Volume: the real IDEAL water image of ``thigh_ideal_labelled`` (512x512x16,
0.74x0.74x24 mm), first flattened by the new N4 (4 mm grid, 50/50/30
iterations: the scan's own receive field is strong), then multiplied by a
known smooth field (exp of a low-order polynomial, about
+-20 % over the body). Without ../shared/data, the digital thigh phantom is
resampled to 512x256x16 at 0.75x0.75x8 mm instead.

OLD: the N4 path of bids_muscle before 2026-12-07, copied here (in-plane
shrink 2, i.e. every 2nd voxel, all slices; iterations 50/50/30).
NEW: :func:`bids_muscle.qmri.bias.n4_bias_field` (every n-th voxel about
``--voxel-mm`` apart, default 4 mm as in the app; same iterations), for each
``--voxel-mm`` given. Printed: seconds, speed ratio, median |corrected_new /
corrected_old - 1| in the foreground mask and in muscle (labels), and the
median relative error of each field against the known one; then the same
for ``--sloppy`` settings (OLD: shrink 4, 20/10 iterations; NEW: 8 mm, 20/10).

Run: ``.venv/bin/python benchmarks/bench_n4.py [--voxel-mm 4 6 8] [--threads 1]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from bids_muscle.qmri.bias import estimation_factors, foreground_mask, n4_bias_field

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "thigh_ideal_labelled"
ITERATIONS = (50, 50, 30)


def n4_before(image, spacing_mm, mask, shrink=2, iterations=ITERATIONS, spline_distance_mm=100.0):
    """The earlier bids_muscle N4 (kept here only for comparison): every ``shrink``-th voxel in-plane."""
    img = sitk.GetImageFromArray(np.transpose(np.clip(image, 0, None) + 1e-3, (2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing_mm])
    msk = sitk.GetImageFromArray(np.transpose(mask.astype(np.uint8), (2, 1, 0)))
    msk.CopyInformation(img)
    factors = [shrink, shrink, 1]
    small = sitk.Shrink(img, factors)
    small_mask = sitk.Shrink(msk, factors)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(iterations))
    extent = [sz * sp for sz, sp in zip(small.GetSize(), small.GetSpacing())]
    corrector.SetNumberOfControlPoints([max(4, int(e / spline_distance_mm) + 3) for e in extent])
    corrector.Execute(small, small_mask)
    log_field = corrector.GetLogBiasFieldAsImage(img)
    field = np.exp(np.transpose(sitk.GetArrayFromImage(log_field), (2, 1, 0))).astype(np.float32)
    return field / float(np.mean(field[mask]))


def known_field(shape, spacing_mm, strength=0.2):
    axes = [(np.arange(n) - (n - 1) / 2) * s / max(1.0, (n - 1) * s / 2) for n, s in zip(shape, spacing_mm)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    return np.exp(strength * (np.sin(1.5 * x + 0.3) + 0.6 * y ** 2 - 0.5 * x * y + 0.3 * z)).astype(np.float32)


def volume():
    """(image without the known field, spacing, muscle mask, description)."""
    if (DATA / "water.nii.gz").exists():
        import nibabel as nb

        img = nb.load(str(DATA / "water.nii.gz"))
        water = np.asarray(img.dataobj, np.float32)
        spacing = tuple(float(v) for v in nb.affines.voxel_sizes(img.affine))
        muscle = np.asarray(nb.load(str(DATA / "labels.nii.gz")).dataobj) > 0
        flat = water / n4_bias_field(water, spacing, iterations=ITERATIONS, voxel_mm=4.0)
        return flat, spacing, muscle, f"thigh_ideal_labelled water {water.shape}, {np.round(spacing, 3).tolist()} mm"
    from bids_muscle.phantom.anatomy import draw_region

    truth = draw_region("thigh", np.random.default_rng(0), n_slices=16, severity=0.3)
    zoom = (512 / truth.pd.shape[0], 256 / truth.pd.shape[1], 1)
    pd = ndimage.zoom(truth.pd, zoom, order=1) * 1000.0
    muscle = ndimage.zoom((truth.labels > 0).astype(np.uint8), zoom, order=0) > 0
    pd += np.random.default_rng(1).normal(0, 5.0, pd.shape)
    spacing = (2.0 / zoom[0], 2.0 / zoom[1], 8.0)
    return pd.clip(0).astype(np.float32), spacing, muscle, f"phantom thigh {pd.shape}, {np.round(spacing, 3).tolist()} mm"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxel-mm", type=float, nargs="+", default=[4.0], help="grids of the new path")
    parser.add_argument("--threads", type=int, default=1, help="ITK threads")
    args = parser.parse_args(argv)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)

    base, spacing, muscle, what = volume()
    truth = known_field(base.shape, spacing)
    image = base * truth
    mask = foreground_mask(image)
    muscle &= mask
    truth /= truth[mask].mean()
    print(f"{what}; ITK threads {args.threads}; iterations {ITERATIONS}; mask {mask.sum()} voxels, "
          f"muscle {muscle.sum()}; known field median |f - 1| in mask {np.median(np.abs(truth - 1)[mask]):.3f}")

    def error(field, where):
        return float(np.median(np.abs(field / truth - 1)[where]))

    t0 = time.perf_counter()
    old = n4_before(image, spacing, mask)
    t_old = time.perf_counter() - t0
    print(f"OLD shrink 2 in-plane: {t_old:.1f} s; field vs known: mask {error(old, mask):.4f}, muscle {error(old, muscle):.4f}")
    for voxel in args.voxel_mm:
        t0 = time.perf_counter()
        new = n4_bias_field(image, spacing, mask=mask, iterations=ITERATIONS, voxel_mm=voxel)
        t_new = time.perf_counter() - t0
        ratio = old / new  # corrected_new / corrected_old = (image / new) / (image / old)
        factors = estimation_factors(image.shape, spacing, voxel)
        print(f"NEW {voxel:g} mm (factors {factors}): {t_new:.1f} s, {t_old / t_new:.1f}x faster; "
              f"corrected vs OLD: median |rel diff| mask {np.median(np.abs(ratio - 1)[mask]):.4f}, "
              f"muscle {np.median(np.abs(ratio - 1)[muscle]):.4f}, 95th pct mask "
              f"{np.percentile(np.abs(ratio - 1)[mask], 95):.4f}; field vs known: mask {error(new, mask):.4f}, "
              f"muscle {error(new, muscle):.4f}")
    sloppy = (20, 10)
    t0 = time.perf_counter()
    old = n4_before(image, spacing, mask, shrink=4, iterations=sloppy)
    t_old = time.perf_counter() - t0
    t0 = time.perf_counter()
    new = n4_bias_field(image, spacing, mask=mask, iterations=sloppy, voxel_mm=8.0)
    t_new = time.perf_counter() - t0
    ratio = old / new
    print(f"sloppy: OLD shrink 4 {t_old:.1f} s, NEW 8 mm {t_new:.1f} s ({t_old / t_new:.1f}x); corrected vs OLD: "
          f"median |rel diff| mask {np.median(np.abs(ratio - 1)[mask]):.4f}, muscle "
          f"{np.median(np.abs(ratio - 1)[muscle]):.4f}; field vs known: OLD {error(old, mask):.4f}, "
          f"NEW {error(new, mask):.4f}")


if __name__ == "__main__":
    main()
