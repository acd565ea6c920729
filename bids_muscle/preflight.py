"""Checks of the arguments and the input folder that need no heavy import.

The command line runs them before nipype, pybids and torch are imported, so
a typo in a path is refused in well under a second.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class InputError(ValueError):
    """Bad or inconsistent input; the message names the file and the problem."""


def check_dataset(bids_dir: Path) -> None:
    """Fail with :class:`InputError` when ``bids_dir`` is not a BIDS dataset."""
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise InputError(f"{bids_dir}: input folder does not exist")
    desc = bids_dir / "dataset_description.json"
    if not desc.is_file():
        raise InputError(f"{bids_dir}: not a BIDS dataset (no dataset_description.json)")
    try:
        content = json.loads(desc.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{desc}: invalid JSON ({getattr(err, 'msg', err)})") from None
    if not isinstance(content, dict) or "BIDSVersion" not in content:
        raise InputError(f"{desc}: BIDSVersion is missing")


def check_folders(bids_dir: Path, output_dir: Path, work_dir: Path) -> None:
    """Refuse output and work folders that would write into the input dataset.

    The output may be ``bids_dir/derivatives/<name>`` (the BIDS convention);
    nothing else under ``bids_dir`` is ever written, so the work folder must
    lie outside it. All paths are absolute (resolved).
    """
    if output_dir == bids_dir:
        raise InputError(f"{output_dir}: output_dir must differ from bids_dir: the input dataset is never written to")
    if bids_dir in output_dir.parents and (bids_dir / "derivatives") not in output_dir.parents:
        raise InputError(f"{output_dir}: output_dir inside the input dataset must be bids_dir/derivatives/<name>")
    if work_dir == bids_dir or bids_dir in work_dir.parents:
        raise InputError(f"{work_dir}: the work folder is inside the input dataset {bids_dir}, which is never written "
                         "to; choose one outside it with -w (e.g. -w /tmp/bids_muscle_work)")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# ---------------------------------------------------------------- sidecars

#: Top-level folders pybids does not index (``derivatives`` is indexed only on request).
NOT_INDEXED = ("derivatives", "code", "sourcedata", "stimuli", "models")


def _json_problem(path: Path) -> str | None:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    except UnicodeDecodeError:
        return "invalid JSON (not UTF-8 text)"
    try:
        content = json.loads(text)
    except json.JSONDecodeError as err:
        return f"invalid JSON ({err.msg}, line {err.lineno} column {err.colno})"
    if not isinstance(content, dict):
        return f"a sidecar must hold a JSON object, not {type(content).__name__}"
    return None


def check_sidecars(bids_dir: Path) -> dict[tuple[str, str | None], str]:
    """Find the JSON files of ``bids_dir`` that pybids could not read.

    A broken sidecar makes pybids fail on the whole dataset, so the files are
    parsed here first. Returns ``{(participant, session or None): message}``
    for the participants (or sessions) that hold one; they are left out of the
    index and skipped. A broken file at the top of the dataset applies to every
    participant and raises :class:`InputError`.
    """
    bids_dir = Path(bids_dir)
    broken: dict[tuple[str, str | None], str] = {}
    for path in sorted(bids_dir.rglob("*.json")):
        parts = path.relative_to(bids_dir).parts
        if parts[0] in NOT_INDEXED or any(p.startswith(".") for p in parts) or parts == ("dataset_description.json",):
            continue
        problem = _json_problem(path)
        if problem is None:
            continue
        if not (len(parts) > 1 and parts[0].startswith("sub-")):
            raise InputError(f"{path}: {problem} (a dataset-level file that applies to every participant)")
        session = parts[1].removeprefix("ses-") if len(parts) > 2 and parts[1].startswith("ses-") else None
        broken.setdefault((parts[0].removeprefix("sub-"), session), f"{path}: {problem}")
    return broken


def number(meta: dict, key: str, path: Path, what: str, low: float, high: float, unit: str,
           milliseconds: bool = False) -> float | None:
    """The sidecar value ``meta[key]`` as a float within ``(low, high]``, or None when absent.

    Anything else (a string, a list, a boolean, NaN, a value out of range)
    raises :class:`InputError` naming ``path``; with ``milliseconds`` a value
    above ``high`` but below ``1000 high`` is called a millisecond value.
    """
    if key not in meta or meta[key] is None:
        return None
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{path}: {key} must be a number in {unit} ({what}), got {_one_line(json.dumps(value))[:60]}")
    if value != value or value in (float("inf"), float("-inf")):
        raise InputError(f"{path}: {key} is {value} ({what}); it must be a finite number in {unit}")
    if value <= low:
        raise InputError(f"{path}: {key} must be above {low:g} {unit} ({what}), got {value:g}")
    if value > high:
        if milliseconds and value <= 1000 * high:
            raise InputError(f"{path}: {key} {value:g} looks like milliseconds ({what}); BIDS uses seconds")
        raise InputError(f"{path}: {key} {value:g} {unit} is not plausible ({what}; at most {high:g} {unit})")
    return float(value)


# ---------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageInfo:
    """What the collection of inputs needs to know of one checked image."""

    shape: tuple[int, ...]
    affine: tuple[tuple[float, ...], ...]

    def same_grid(self, other: "ImageInfo", tolerance_mm: float = 1e-3) -> bool:
        """Same voxel grid: equal spatial shape and affines within ``tolerance_mm``."""
        import numpy as np

        return self.shape[:3] == other.shape[:3] and bool(
            np.allclose(self.affine, other.affine, rtol=0, atol=tolerance_mm))


#: Data types an input image may have: real integers and floats.
_DTYPE_KINDS = ("i", "u", "f")
_NIFTI_HEADER_SIZES = {348: 1, 540: 2}


def check_image(path: Path) -> ImageInfo:
    """Read one input NIfTI file completely and refuse what cannot be processed.

    Refused, with an :class:`InputError` naming the file: unreadable or
    truncated files, a ``vox_offset`` that does not fit the data, fewer than 3
    or more than 4 dimensions, data types other than real integers and
    floats, voxel sizes that are not positive, affines that are singular or
    hold NaN, and images (or volumes of a 4D image) with no finite value,
    with infinite values, or constant (all zero included).
    """
    import gzip
    import io
    import zlib

    import nibabel as nb
    import numpy as np
    from nibabel.imageglobals import logger as nibabel_logger

    path = Path(path)
    try:
        raw = path.read_bytes()
        if path.name.endswith(".gz"):
            raw = gzip.decompress(raw)
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({_one_line(err.strerror or err)})") from None
    except (EOFError, zlib.error) as err:
        raise InputError(f"{path}: truncated or corrupt gzip data ({_one_line(err)})") from None
    size = next((n for n in _NIFTI_HEADER_SIZES if raw[:4] in (n.to_bytes(4, "little"), n.to_bytes(4, "big"))), None)
    if size is None:
        raise InputError(f"{path}: not a NIfTI file (no NIfTI header in its first bytes)")
    image_class = nb.Nifti1Image if _NIFTI_HEADER_SIZES[size] == 1 else nb.Nifti2Image
    try:
        header = image_class.header_class.from_fileobj(io.BytesIO(raw), check=False)  # as on disk, unrepaired
        level = nibabel_logger.level
        nibabel_logger.setLevel(logging.CRITICAL + 1)  # nibabel logs what it repairs; the checks say what is wrong
        try:
            image = image_class.from_bytes(raw)
        finally:
            nibabel_logger.setLevel(level)
        shape = tuple(int(n) for n in image.shape)
        dtype = header.get_data_dtype()
    except Exception as err:  # nibabel raises several types for corrupt headers
        raise InputError(f"{path}: cannot be read as NIfTI ({_one_line(err)})") from None
    if not 3 <= len(shape) <= 4:
        raise InputError(f"{path}: {len(shape)}D data of shape {shape}; expected a 3D image (or 4D, one volume per echo)")
    if min(shape) < 1:
        raise InputError(f"{path}: empty image of shape {shape}")
    if dtype.kind not in _DTYPE_KINDS or dtype.itemsize > 8:
        raise InputError(f"{path}: data type {dtype} is not supported (expected real integers or floats)")
    offset, needed = int(header.get_data_offset()), int(np.prod(shape)) * dtype.itemsize
    if offset < size + 4 or offset + needed != len(raw):  # 4 bytes of extension flags follow the header
        held = len(raw) - offset
        problem = "truncated" if held < needed else "wrong vox_offset or extra data"
        raise InputError(f"{path}: {problem}: {held} bytes after vox_offset {offset}, "
                         f"shape {shape} of {dtype} needs {needed}")
    zooms = np.asarray(header["pixdim"][1:4], dtype=np.float64)
    if not (np.all(np.isfinite(zooms)) and np.all(zooms > 0)):
        raise InputError(f"{path}: voxel sizes (pixdim) must be positive, got {zooms.tolist()}")
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise InputError(f"{path}: the affine holds NaN or infinite values")
    axes = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(axes == 0) or abs(np.linalg.det(affine[:3, :3])) < 1e-3 * np.prod(axes):
        raise InputError(f"{path}: the affine is singular (voxel axes {affine[:3, :3].round(3).tolist()})")
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as err:
        raise InputError(f"{path}: cannot read the image data ({_one_line(err)})") from None
    volumes = data.reshape(-1, shape[3] if len(shape) == 4 else 1)

    def volume(k: int) -> str:
        return f"volume {k} " if len(shape) == 4 else ""

    low, high = volumes.min(axis=0), volumes.max(axis=0)
    if data.dtype.kind == "f":
        infinite = np.isinf(volumes).any(axis=0)
        if infinite.any():
            raise InputError(f"{path}: {volume(int(np.flatnonzero(infinite)[0]))}holds infinite values")
        if np.isnan(low).any() or np.isnan(high).any():
            empty = np.flatnonzero(np.isnan(volumes).all(axis=0))
            if empty.size:
                raise InputError(f"{path}: {volume(int(empty[0]))}holds no finite value (all NaN)")
            low, high = np.nanmin(volumes, axis=0), np.nanmax(volumes, axis=0)
    flat = np.flatnonzero(low == high)
    if flat.size:
        k = int(flat[0])
        value = "all zero" if high[k] == 0 else f"constant ({float(high[k]):g} everywhere)"
        raise InputError(f"{path}: {volume(k)}is {value}")
    return ImageInfo(shape=shape, affine=tuple(map(tuple, affine.tolist())))


# ---------------------------------------------------------------- folders in use

#: Lock file a run holds in its work folder (and in a folder without parts).
LOCK_NAME = ".bids_muscle.lock"


def lock_name(part: str) -> str:
    """Lock file of one part of the output folder (``sub-<label>``, ``group``)."""
    return f".bids_muscle-{part}.lock"


@contextmanager
def folder_lock(folder: Path, name: str = LOCK_NAME):
    """Hold ``folder/<name>`` (default ``.bids_muscle.lock``) for the time of the ``with`` block.

    A second run on the same folder is refused with :class:`InputError`
    naming the process that holds it. The lock is a POSIX record lock, which
    the system drops when its process ends however it ends, so the file a
    killed run leaves behind is simply taken over; the file is removed on a
    normal exit. Yields False (and locks nothing) on file systems without
    locking.
    """
    import fcntl
    import socket

    path = Path(folder) / name
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise InputError(f"{folder}: in use by another bids_muscle run ({holder}); wait for it to end or "
                             f"choose another folder") from None
        except OSError:  # no locking on this file system
            os.close(fd)
            yield False
            return
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:  # removed by the run that held it, after we opened it
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        yield True
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
