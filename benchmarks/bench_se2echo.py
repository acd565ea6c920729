"""Two-point T2 of ``thigh_t2_se2echo`` through the app's interface, against musclemap.

musclemap registers the first echo to the Dixon image (FSL flirt, 2D,
mutual information), applies the same transform to the second echo and
computes T2 on the Dixon grid (``reference/t2.nii.gz``, ms). The app computes
T2 on the echoes' own grid (``TwoPointT2``: the second echo, a separate file,
is registered rigidly onto the first and kept only where that lowers the edge
artefacts of ln(S1/S2)). To compare, the app's T2 is put on the Dixon grid
either by the scanner affines alone or by musclemap's own transform
(``reference/t2_te16ms_xform.mat``); median |difference| inside
``reference/mask.nii.gz``.

Run: ``.venv/bin/python benchmarks/bench_se2echo.py`` (needs ../shared/data).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import nibabel as nb
import numpy as np
from scipy import ndimage

from bids_muscle.interfaces.qmaps import TwoPointT2
from bids_muscle.qmri.bias import foreground_mask
from bids_muscle.qmri.register import register_rigid
from bids_muscle.qmri.se2echo import log_ratio_edge_energy, t2_two_point

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "thigh_t2_se2echo"
TE = (0.016, 0.056)


def fsl_scaled_voxels(affine: np.ndarray, shape) -> np.ndarray:
    """FSL's voxel -> 'scaled mm' matrix (x flipped when the affine has a positive determinant)."""
    zooms = nb.affines.voxel_sizes(affine)
    out = np.diag([*zooms, 1.0])
    if np.linalg.det(affine[:3, :3]) > 0:
        out[0, 0], out[0, 3] = -zooms[0], (shape[0] - 1) * zooms[0]
    return out


def to_reference(data, affine, shape, ref_affine, ref_shape, flirt_mat=None, order=1):
    """``data`` on the reference grid: by the affines, or by a flirt matrix (input -> reference)."""
    if flirt_mat is None:
        vox = np.linalg.inv(affine) @ ref_affine  # reference voxel -> input voxel
    else:
        vox = np.linalg.inv(np.linalg.inv(fsl_scaled_voxels(ref_affine, ref_shape)) @ flirt_mat
                            @ fsl_scaled_voxels(affine, shape))
    return ndimage.affine_transform(data, vox[:3, :3], vox[:3, 3], output_shape=ref_shape, order=order, cval=np.nan)


def main() -> int:
    if not DATA.is_dir():
        print(f"no data at {DATA}")
        return 0
    load = lambda p: nb.load(str(DATA / p))  # noqa: E731
    e1_img, e2_img = load("t2_te16ms.nii.gz"), load("t2_te56ms.nii.gz")
    ref_img = load("reference/t2.nii.gz")
    ref = np.asarray(ref_img.dataobj, np.float32)
    mask = np.asarray(load("reference/mask.nii.gz").dataobj) > 0
    mat = np.loadtxt(DATA / "reference" / "t2_te16ms_xform.mat")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = TwoPointT2(in_files=[str(DATA / "t2_te16ms.nii.gz"), str(DATA / "t2_te56ms.nii.gz")],
                         echo_times=list(TE)).run(cwd=tmp).outputs
        seconds = time.perf_counter() - t0
        t2_ms = np.asarray(nb.load(res.t2).dataobj, np.float32) * 1000.0
    reg = res.metadata["Registration"]
    print(f"TwoPointT2 interface: {seconds:.1f} s; registration applied: {reg['Applied']}, translation "
          f"{reg['TranslationMm'][:2]} mm, rotation {reg['RotationDeg'][2]} deg, max displacement "
          f"{reg['MaxDisplacementMm']} mm, edge energy {reg['EdgeEnergyBefore']} -> {reg['EdgeEnergyAfter']}")

    def report(label, t2):
        for order, how in ((0, "nearest"), (1, "linear")):
            for name, m in (("scanner affines", None), ("musclemap's transform", mat)):
                on_ref = to_reference(t2, e1_img.affine, t2.shape, ref_img.affine, ref.shape, m, order)
                ok = mask & np.isfinite(on_ref)
                print(f"  {label}, {how}, by {name}: median |T2 - ref| = "
                      f"{np.median(np.abs(on_ref - ref)[ok]):.2f} ms ({ok.sum()} / {mask.sum()} voxels)")

    report("app (interface)", t2_ms)
    # the same echoes with the MI registration forced on (what the guard refused)
    e1 = np.asarray(e1_img.dataobj, np.float32)
    e2 = np.asarray(e2_img.dataobj, np.float32)
    body = foreground_mask(e1)
    moved, info = register_rigid(e1, e2, nb.affines.voxel_sizes(e1_img.affine), mask=body)
    print(f"forced registration: edge energy {log_ratio_edge_energy(e1, e2, body):.4f} -> "
          f"{log_ratio_edge_energy(e1, moved, body):.4f}")
    report("registration forced", t2_two_point(e1, moved, *TE, mask=body)["t2_s"] * 1000.0)
    # musclemap's order: both echoes onto the Dixon grid by its transform, then the formula
    r1, r2 = (np.nan_to_num(to_reference(e, e1_img.affine, e.shape, ref_img.affine, ref.shape, mat)) for e in (e1, e2))
    mm = t2_two_point(r1, r2, *TE, mask=mask)["t2_s"] * 1000.0
    ok = mask & np.isfinite(mm)
    print(f"echoes moved by musclemap's transform (linear), then the formula: median |T2 - ref| = "
          f"{np.median(np.abs(mm - ref)[ok]):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
