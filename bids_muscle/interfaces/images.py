"""Reading and writing images for interfaces: the only file I/O the interfaces share."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np


def load_volume(path: str | Path, volume: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Float32 data and affine of a 3D image (or one volume of a 4D image)."""
    img = nb.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0 if volume is None else volume]
    return data, img.affine


def load_series(paths: list[str], volumes: list[int | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stack of images (x, y, z, n) from files, or from volumes of one 4D file."""
    volumes = volumes or [None] * len(paths)
    data = [load_volume(p, v)[0] for p, v in zip(paths, volumes)]
    return np.stack(data, axis=-1), nb.load(str(paths[0])).affine


def load_pair_on_grid(reference: str | Path, other: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two 3D images on the grid of ``reference``; ``other`` is resampled (linear) when its grid differs."""
    from bids_muscle.qmri.mtr import resample_to_grid

    ref, affine = load_volume(reference)
    data, other_affine = load_volume(other)
    if data.shape != ref.shape or not np.allclose(affine, other_affine, atol=1e-3):
        data = resample_to_grid(data, other_affine, ref.shape, affine)
    return ref, data, affine


def save_image(data: np.ndarray, affine: np.ndarray, name: str, cwd: str | Path) -> str:
    """Save an array in the node's working directory; returns the absolute path."""
    path = Path(cwd) / name
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    nb.Nifti1Image(data, affine).to_filename(str(path))
    return str(path)
