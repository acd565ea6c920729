"""A 512x512x16 thigh T1w participant end to end, then its cached rerun (docs/validation.md).

Usage::

    python benchmarks/bench_participant.py [--folder /tmp/bench_participant] [--nprocs 2]

Writes a one-participant BIDS dataset whose only image is a thigh T1w of
512x512x16 voxels (0.75 x 0.75 x 8 mm; by default the phantom's T1w
resampled to that grid, or ``--image`` a real one such as
``../shared/data/thigh_ideal_labelled/water.nii.gz``), runs the participant
level with the default settings, then the same command again with the same
work folder, and prints the wall time of each run (start-up included).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

SHAPE = (512, 512, 16)
VOXEL_MM = (0.75, 0.75, 8.0)


def _phantom_t1w(folder: Path) -> nib.Nifti1Image:
    from bids_muscle.phantom.dataset import generate_dataset

    root = generate_dataset(folder / "phantom", n_participants=1, seed=0, regions=("thigh",), n_slices=16)
    img = nib.load(root / "sub-01/anat/sub-01_acq-thigh_T1w.nii.gz")
    data = np.asarray(img.dataobj, dtype=np.float32)
    zoom = [t / s for t, s in zip(SHAPE, data.shape)]
    data = ndimage.zoom(data, zoom, order=1)
    fov = np.asarray(img.header.get_zooms()[:3]) * np.asarray(img.shape[:3])
    affine = np.diag([*(fov / np.asarray(SHAPE)), 1.0])
    return nib.Nifti1Image(data[: SHAPE[0], : SHAPE[1], : SHAPE[2]], affine)


def _run(bids_dir: Path, out: Path, work: Path, nprocs: int) -> float:
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "bids_muscle.cli.run", str(bids_dir), str(out), "participant",
                           "-w", str(work), "--nprocs", str(nprocs)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stdout + proc.stderr)
    return time.time() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--image", type=Path, help="a real 3D thigh image to use as the T1w")
    parser.add_argument("--nprocs", type=int, default=2)
    opts = parser.parse_args()
    folder = opts.folder or Path(tempfile.mkdtemp(prefix="bench_participant_"))
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    img = nib.load(opts.image) if opts.image else _phantom_t1w(folder)
    bids_dir = folder / "bids"
    anat = bids_dir / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (bids_dir / "dataset_description.json").write_text(json.dumps({"Name": "bench", "BIDSVersion": "1.10.0"}))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine), anat / "sub-01_acq-thigh_T1w.nii.gz")
    (anat / "sub-01_acq-thigh_T1w.json").write_text("{}")
    first = _run(bids_dir, folder / "out", folder / "work", opts.nprocs)
    rerun = _run(bids_dir, folder / "out", folder / "work", opts.nprocs)
    print(f"T1w {img.shape}: first run {first:.1f} s, cached rerun {rerun:.1f} s (nprocs {opts.nprocs})")


if __name__ == "__main__":
    main()
