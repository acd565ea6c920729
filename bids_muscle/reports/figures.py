"""Figures of the participant report: slices of the anatomy with outline layers, one figure per map.

Slices are shown radiologically (canonical RAS arrays: anterior up, the
participant's right on the image's left) with square pixels. The anatomy of
every slice is a small JPEG; each layer (the outlines of one segmentation,
the muscle region, IMAT) is a transparent PNG of the same field of view at
a finer pixel, laid over it by the page, so the layers can be switched off
and every slice costs a few kilobytes.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402

#: Longest side of an anatomical slice in pixels (the page scales it up), up to
#: FULL_SIZE_SLICES slices; beyond, smaller (down to MIN_ANATOMY_PX) so that the
#: figures of a long volume stay near the size of FULL_SIZE_SLICES slices.
ANATOMY_PX = 320
FULL_SIZE_SLICES = 40
MIN_ANATOMY_PX = 192
#: Pixels of a layer per anatomical pixel: thinner outlines than the anatomy's pixel.
LAYER_SCALE = 2
JPEG_QUALITY = 82


def radiological(plane: np.ndarray) -> np.ndarray:
    """A canonical (RAS) x-y plane as shown: rows anterior to posterior, columns right to left."""
    return np.rot90(plane)[:, ::-1]


def _display_zoom(shape_xy, spacing_xy, longest_px: int) -> tuple[float, float]:
    """Zoom factors (rows, columns of the displayed plane) to square pixels, ``longest_px`` on the long side."""
    extent_rows, extent_cols = shape_xy[1] * spacing_xy[1], shape_xy[0] * spacing_xy[0]
    pixel_mm = max(extent_rows, extent_cols) / longest_px
    return extent_rows / pixel_mm / shape_xy[1], extent_cols / pixel_mm / shape_xy[0]


def _plane(volume: np.ndarray, z: int, spacing_xy, longest_px: int, order: int) -> np.ndarray:
    zoom = _display_zoom(volume.shape[:2], spacing_xy, longest_px)
    return ndimage.zoom(radiological(volume[..., z]), zoom, order=order, mode="nearest", grid_mode=True)


def slice_px(n_slices: int) -> int:
    """Longest side of the anatomical slices of a volume of ``n_slices`` slices."""
    scale = np.sqrt(FULL_SIZE_SLICES / max(n_slices, FULL_SIZE_SLICES))
    return int(max(MIN_ANATOMY_PX, round(ANATOMY_PX * scale)))


def window(volume: np.ndarray) -> tuple[float, float]:
    """Display range of an anatomical volume: 0.5th to 99.5th percentile of its finite voxels."""
    finite = volume[np.isfinite(volume)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, [0.5, 99.5])
    return float(low), float(high if high > low else low + 1)


def anatomy_slices(volume: np.ndarray, spacing_xy, out_dir: Path, stem: str) -> list[Path]:
    """One grey JPEG per slice (last axis) of ``volume``, named ``<stem>_slice-<k>.jpg``."""
    low, high = window(volume)
    paths = []
    for z in range(volume.shape[2]):
        plane = np.nan_to_num(_plane(volume, z, spacing_xy, slice_px(volume.shape[2]), order=1), nan=low)
        path = Path(out_dir) / f"{stem}_slice-{z:03d}.jpg"
        matplotlib.image.imsave(path, plane, cmap="gray", vmin=low, vmax=high, format="jpeg",
                                pil_kwargs={"quality": JPEG_QUALITY})
        paths.append(path)
    return paths


def outline(labels2d: np.ndarray, width_px: int = 2) -> np.ndarray:
    """Pixels of a label with another value within ``width_px`` (an inner boundary ``width_px`` wide)."""
    size = 2 * width_px + 1
    differs = (ndimage.maximum_filter(labels2d, size=size, mode="nearest") != labels2d) | (
        ndimage.minimum_filter(labels2d, size=size, mode="nearest") != labels2d)
    return differs & (labels2d > 0)


def layer_slices(labels: np.ndarray, spacing_xy, colours: dict[int, tuple], out_dir: Path, stem: str,
                 filled: bool = False) -> list[Path]:
    """One transparent PNG per slice with the outline (or, ``filled``, the area) of every label.

    ``colours`` maps a label value (1-255) to an RGBA tuple (0-1); labels
    not in it are not drawn. The PNGs are palette images (one byte per
    pixel, the label value as palette index, alpha per index).
    """
    palette = np.zeros((256, 4), dtype=np.uint8)
    for value, rgba in colours.items():
        if not 0 < int(value) < 256:
            raise ValueError(f"label {value} does not fit a palette image (1-255)")
        palette[int(value)] = np.round(np.asarray(rgba) * 255)
    labels = np.where(np.isin(labels, list(colours)), labels, 0).astype(np.uint8)
    paths = []
    for z in range(labels.shape[2]):
        plane = _plane(labels, z, spacing_xy, slice_px(labels.shape[2]) * LAYER_SCALE, order=0)
        drawn = np.where(plane > 0 if filled else outline(plane), plane, 0).astype(np.uint8)
        image = Image.fromarray(drawn, mode="P")
        image.putpalette(palette[:, :3].ravel().tolist())
        path = Path(out_dir) / f"{stem}_slice-{z:03d}.png"
        image.save(path, format="png", optimize=True, transparency=palette[:, 3].tobytes())
        paths.append(path)
    return paths


def map_figure(volume: np.ndarray, spacing_xy, title: str, unit: str, limits: tuple | None, out: Path,
               cmap: str = "viridis") -> tuple[int, tuple[float, float]]:
    """Middle slice of one quantitative map with its own colour bar; returns the slice and the range shown."""
    z = volume.shape[2] // 2
    plane = radiological(volume[..., z]).astype(np.float64)
    if limits is None:
        finite = plane[np.isfinite(plane) & (plane > 0)]
        limits = (0.0, float(np.percentile(finite, 99))) if finite.size else (0.0, 1.0)
    height_over_width = plane.shape[0] * spacing_xy[1] / (plane.shape[1] * spacing_xy[0])
    wide = height_over_width < 0.75  # two legs side by side: the colour bar goes below
    # fixed layout in inches (faster than a layout engine): image, title above, colour bar below or right
    if wide:
        image_w = 4.4
        image_h = image_w * height_over_width
        fig = plt.figure(figsize=(image_w + 0.4, image_h + 1.3))
        width, height = fig.get_size_inches()
        ax = fig.add_axes((0.2 / width, 0.95 / height, image_w / width, image_h / height))
        bar_ax = fig.add_axes((0.7 / width, 0.55 / height, (image_w - 1.0) / width, 0.14 / height))
    else:
        image_h = min(3.6, 3.6 * height_over_width)
        image_w = image_h / height_over_width
        fig = plt.figure(figsize=(image_w + 1.4, image_h + 0.6))
        width, height = fig.get_size_inches()
        ax = fig.add_axes((0.1 / width, 0.15 / height, image_w / width, image_h / height))
        bar_ax = fig.add_axes(((image_w + 0.25) / width, 0.15 / height, 0.14 / width, image_h / height))
    colours = plt.get_cmap(cmap).with_extremes(bad="black")
    shown = ax.imshow(np.ma.masked_invalid(plane), cmap=colours, vmin=limits[0], vmax=limits[1], aspect="auto",
                      interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=12)
    bar = fig.colorbar(shown, cax=bar_ax, orientation="horizontal" if wide else "vertical")
    bar.set_label(unit, fontsize=11)
    bar.ax.tick_params(labelsize=10)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return z, limits
