"""Seeded corruption of the inputs of phantom participants.

Each case copies an intact phantom participant under a new label and
corrupts one of its inputs in one way of :data:`KINDS` (a sidecar value, the
JSON text, the NIfTI header or data, the echoes of a series). The same seed
always gives the same cases. ``make_cases`` returns, for every case, the
files whose name the app's message must contain.
"""

from __future__ import annotations

import gzip
import json
import math
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np

from bids_muscle.phantom.dataset import generate_dataset

#: Echoes kept of each series of the phantom participant (fewer files: a fast index).
KEEP_ECHOES = {"MESE": 4, "MEGRE": 3}
# NIfTI-1 header fields (byte offset, struct format)
DATATYPE, PIXDIM, VOX_OFFSET, QFORM_CODE, SFORM_CODE, QUATERN_B, SROW_X = 70, 76, 108, 252, 254, 256, 280


@dataclass(frozen=True)
class Case:
    """One corrupted participant."""

    index: int
    kind: str
    subject: str
    detail: str
    #: Files any of which the message must name (an image, or its sidecar).
    files: tuple[Path, ...]


def base_participant(root: Path, seed: int = 0) -> Path:
    """A one-participant calf phantom (2 slices, 4 MESE and 3 MEGRE echoes) at ``root``."""
    generate_dataset(root, n_participants=1, seed=seed, regions=("calf",), n_slices=2)
    shutil.rmtree(root / "derivatives")
    for suffix, keep in KEEP_ECHOES.items():
        for path in (root / "sub-01" / "anat").glob(f"*_{suffix}.*"):
            echo = int(path.name.split("echo-")[1].split("_")[0])
            if echo > keep:
                path.unlink()
    return root / "sub-01"


def copy_participant(source: Path, root: Path, label: str) -> Path:
    """Copy the participant folder ``source`` into ``root`` as ``sub-<label>``."""
    old = source.name
    target = root / f"sub-{label}"
    for path in source.rglob("*"):
        if path.is_file():
            out = target / path.relative_to(source).parent / path.name.replace(old, f"sub-{label}")
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out)
    return target


# ---------------------------------------------------------------- helpers


def _pick(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))]


def _images(sub: Path, suffix: str | None = None) -> list[Path]:
    return sorted(p for p in sub.rglob("*.nii.gz") if suffix is None or p.name.endswith(f"_{suffix}.nii.gz"))


def _echo_images(sub: Path) -> list[Path]:
    return _images(sub, "MESE") + _images(sub, "MEGRE")


def _sidecar(image: Path) -> Path:
    return image.with_name(image.name.replace(".nii.gz", ".json"))


def _first_echo(sub: Path, suffix: str) -> Path:
    return next(p for p in _images(sub, suffix) if "_echo-1_" in p.name and "part-phase" not in p.name)


def _set_key(images: list[Path], key: str, value) -> tuple[Path, ...]:
    """Set (or delete, for ``...``) ``key`` in the sidecars of ``images``; returns images and sidecars."""
    for image in images:
        meta = json.loads(_sidecar(image).read_text())
        if value is ...:
            meta.pop(key, None)
        else:
            meta[key] = value
        _sidecar(image).write_text(json.dumps(meta))  # NaN and Infinity as the bare tokens of Python's json
    return tuple(images) + tuple(map(_sidecar, images))


def _edit_header(path: Path, edits: list[tuple[int, str, tuple]]) -> None:
    raw = bytearray(gzip.decompress(path.read_bytes()))
    endian = "<" if struct.unpack_from("<i", raw, 0)[0] == 348 else ">"
    for offset, fmt, values in edits:
        struct.pack_into(endian + fmt, raw, offset, *values)
    path.write_bytes(gzip.compress(bytes(raw)))


def _rewrite(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    image = nb.load(path)
    nb.save(nb.Nifti1Image(data, image.affine if affine is None else affine), path)


def _data(path: Path) -> np.ndarray:
    return np.asanyarray(nb.load(path).dataobj)


# ---------------------------------------------------------------- kinds
# Each takes the participant folder and a generator, corrupts one input in
# place and returns (detail, files that the message may name).

Corruption = Callable[[Path, np.random.Generator], tuple[str, tuple[Path, ...]]]


def json_invalid(sub, rng):
    sidecar = _sidecar(_pick(rng, _images(sub)))
    text = sidecar.read_text()
    how = rng.choice(["truncated", "trailing comma", "single quotes", "binary", "empty", "list", "bom"])
    broken = {
        "truncated": lambda: text[: int(rng.integers(1, len(text) - 1))],
        "trailing comma": lambda: text.rstrip().rstrip("}") + ",}",
        "single quotes": lambda: text.replace('"', "'", 2),
        "binary": lambda: None,
        "empty": lambda: "",
        "list": lambda: json.dumps([json.loads(text)]),
        "bom": lambda: "\ufeff" + text,
    }[how]()
    if broken is None:
        sidecar.write_bytes(rng.integers(0, 256, 64, dtype=np.uint8).tobytes())
    else:
        sidecar.write_text(broken, encoding="utf-8")
    return f"{how}: {sidecar.name}", (sidecar,)


def sidecar_missing(sub, rng):
    if rng.random() < 0.75:
        image = _pick(rng, _echo_images(sub))
        return f"no EchoTime: {image.name}", _set_key([image], "EchoTime", ...)
    return "no MagneticFieldStrength (MEGRE)", _set_key(_images(sub, "MEGRE"), "MagneticFieldStrength", ...)


def _value_case(sub, rng, values: dict[str, list]) -> tuple[str, tuple[Path, ...]]:
    key = rng.choice(sorted(values))
    value = values[key][int(rng.integers(len(values[key])))]
    if key == "EchoTime":
        images = [_pick(rng, _echo_images(sub))]
    elif key == "MagneticFieldStrength":
        images = _images(sub, "MEGRE")
    else:  # RefocusingFlipAngle, RepetitionTime: read from the first echo of the MESE
        images = [_first_echo(sub, "MESE")]
    return f"{key} = {value!r}: {images[0].name}", _set_key(images, key, value)


def sidecar_string(sub, rng):
    return _value_case(sub, rng, {"EchoTime": ["ten", "10ms", "", "0.01 s", "NaN"],
                                  "MagneticFieldStrength": ["3T", "three"],
                                  "RefocusingFlipAngle": ["180deg"], "RepetitionTime": ["long"]})


def sidecar_nan(sub, rng):
    return _value_case(sub, rng, {"EchoTime": [math.nan, math.inf, -math.inf],
                                  "MagneticFieldStrength": [math.nan], "RefocusingFlipAngle": [math.nan]})


def sidecar_negative(sub, rng):
    return _value_case(sub, rng, {"EchoTime": [-0.01, 0, -float(rng.uniform(1e-4, 1.0))],
                                  "MagneticFieldStrength": [-3.0, 0], "RefocusingFlipAngle": [-180.0, 0],
                                  "RepetitionTime": [-2.0]})


def sidecar_huge(sub, rng):
    return _value_case(sub, rng, {"EchoTime": [1e30, 1e6, float(10 ** rng.uniform(3.1, 12))],
                                  "MagneticFieldStrength": [1e4, 300.0], "RefocusingFlipAngle": [1e6, 540.0],
                                  "RepetitionTime": [1e9]})


def sidecar_milliseconds(sub, rng):
    if rng.random() < 0.25:
        image = _first_echo(sub, "MESE")
        tr = json.loads(_sidecar(image).read_text())["RepetitionTime"]
        return f"RepetitionTime in ms: {image.name}", _set_key([image], "RepetitionTime", tr * 1000)
    image = _pick(rng, _echo_images(sub))
    te = json.loads(_sidecar(image).read_text())["EchoTime"]
    return f"EchoTime in ms: {image.name}", _set_key([image], "EchoTime", round(te * 1000, 3))


def sidecar_type(sub, rng):
    image = _pick(rng, _echo_images(sub))
    te = json.loads(_sidecar(image).read_text())["EchoTime"]
    value = [[te], {"value": te}, True, [te, 2 * te]][int(rng.integers(4))]
    return f"EchoTime = {value!r}: {image.name}", _set_key([image], "EchoTime", value)


def nifti_truncated(sub, rng):
    image = _pick(rng, _images(sub))
    if rng.random() < 0.5:
        raw = image.read_bytes()
        image.write_bytes(raw[: int(len(raw) * rng.uniform(0.05, 0.95))])
        return f"gzip cut: {image.name}", (image,)
    raw = gzip.decompress(image.read_bytes())
    image.write_bytes(gzip.compress(raw[: len(raw) - int(rng.integers(1, len(raw) - 352))]))
    return f"data cut: {image.name}", (image,)


def nifti_voxel_size(sub, rng):
    image = _pick(rng, _images(sub))
    axis = int(rng.integers(1, 4))
    value = [0.0, -float(rng.uniform(0.1, 5)), math.nan, math.inf][int(rng.integers(4))]
    _edit_header(image, [(PIXDIM + 4 * axis, "f", (value,))])
    return f"pixdim[{axis}] = {value}: {image.name}", (image,)


def nifti_affine(sub, rng):
    image = _pick(rng, _images(sub))
    how = rng.choice(["nan sform", "singular sform", "collinear sform", "nan qform"])
    affine = nb.load(image).affine
    if how == "nan sform":
        row, col = int(rng.integers(3)), int(rng.integers(4))
        affine = affine.copy()
        affine[row, col] = math.nan
        edits = [(SFORM_CODE, "h", (1,))]
    elif how in ("singular sform", "collinear sform"):
        affine = affine.copy()
        col = int(rng.integers(3))
        affine[:3, col] = 0 if how == "singular sform" else affine[:3, (col + 1) % 3]
        edits = [(SFORM_CODE, "h", (1,))]
    else:
        edits = [(SFORM_CODE, "h", (0,)), (QFORM_CODE, "h", (1,)), (QUATERN_B, "f", (math.nan,))]
    if how != "nan qform":
        edits += [(SROW_X + 16 * row, "4f", tuple(affine[row])) for row in range(3)]
    _edit_header(image, edits)
    return f"{how}: {image.name}", (image,)


def nifti_ndim(sub, rng):
    image = _pick(rng, _images(sub))
    data = _data(image)
    if rng.random() < 0.5:
        _rewrite(image, data[:, :, 0])
        return f"2D: {image.name}", (image,)
    extra = (1,) * int(rng.integers(1, 3)) + (2,)
    _rewrite(image, np.broadcast_to(data.reshape(data.shape + (1,) * (len(extra))), data.shape + extra).copy())
    return f"{3 + len(extra)}D: {image.name}", (image,)


def nifti_dtype(sub, rng):
    image = _pick(rng, _images(sub))
    data = _data(image)
    dtype = str(rng.choice(["complex64", "complex128", "RGB24", "code"]))
    if dtype == "RGB24":
        rgb = np.zeros(data.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        rgb["R"] = np.clip(data, 0, 255)
        _rewrite(image, rgb)
    elif dtype == "code":  # a datatype code nibabel cannot read here (float128, complex256, binary) or none at all
        code, bits = [(1536, 128), (2048, 256), (1, 1), (0, 0), (9999, 16)][int(rng.integers(5))]
        _edit_header(image, [(DATATYPE, "2h", (code, bits))])
        dtype = f"datatype code {code}"
    else:
        _rewrite(image, data.astype(dtype))
    return f"{dtype}: {image.name}", (image,)


def nifti_vox_offset(sub, rng):
    image = _pick(rng, _images(sub))
    offset = [0.0, 100.0, 348.0, 356.0, 352.0 + 16 * int(rng.integers(1, 64)), 1e9][int(rng.integers(6))]
    _edit_header(image, [(VOX_OFFSET, "f", (offset,))])
    return f"vox_offset {offset:g}: {image.name}", (image,)


def _values(sub, rng, make: Callable[[np.ndarray], np.ndarray], what: str):
    image = _pick(rng, _images(sub))
    _rewrite(image, make(_data(image)))
    return f"{what}: {image.name}", (image,)


def image_nan(sub, rng):
    return _values(sub, rng, lambda d: np.full(d.shape, np.nan, np.float32), "all NaN")


def image_zero(sub, rng):
    return _values(sub, rng, lambda d: np.zeros_like(d), "all zero")


def image_constant(sub, rng):
    value = float(rng.choice([1.0, 100.0, -5.0, float(rng.uniform(1, 1000))]))
    return _values(sub, rng, lambda d: np.full(d.shape, value, np.float32), f"constant {value:g}")


def image_infinite(sub, rng):
    def make(d):
        out = d.astype(np.float32)
        count = int(rng.integers(1, out.size + 1)) if rng.random() < 0.5 else 1
        out.flat[rng.choice(out.size, count, replace=False)] = rng.choice([np.inf, -np.inf])
        return out
    return _values(sub, rng, make, "infinite values")


def echo_shape(sub, rng):
    image = _pick(rng, _echo_images(sub))
    data = _data(image)
    axis = int(rng.integers(2))  # in plane: the phantom has two slices
    cut = int(rng.integers(1, 4))
    _rewrite(image, np.take(data, range(data.shape[axis] - cut), axis=axis))
    return f"axis {axis} cut by {cut}: {image.name}", (image,)


def echo_grid(sub, rng):
    image = _pick(rng, _echo_images(sub))
    affine = nb.load(image).affine.copy()
    how = rng.choice(["shifted", "rotated", "scaled"])
    if how == "shifted":
        affine[int(rng.integers(3)), 3] += float(rng.choice([-1, 1]) * rng.uniform(0.5, 20))
    elif how == "rotated":
        angle = np.deg2rad(rng.uniform(2, 90))
        rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        affine[:3, :3] = rotation @ affine[:3, :3]
    else:
        affine[:3, :3] *= float(rng.uniform(1.2, 2.0))
    _rewrite(image, _data(image), affine)
    return f"{how}: {image.name}", (image,)


def echo_duplicate(sub, rng):
    image = _pick(rng, _echo_images(sub))
    echo = image.name.split("echo-")[1].split("_")[0]
    copy = image.with_name(image.name.replace(f"echo-{echo}_", f"echo-0{echo}_"))
    shutil.copyfile(image, copy)
    shutil.copyfile(_sidecar(image), _sidecar(copy))
    return f"echo-0{echo} beside echo-{echo}: {image.name}", (image, copy)


KINDS: dict[str, Corruption] = {f.__name__: f for f in (
    json_invalid, sidecar_missing, sidecar_string, sidecar_nan, sidecar_negative, sidecar_huge, sidecar_milliseconds,
    sidecar_type, nifti_truncated, nifti_voxel_size, nifti_affine, nifti_ndim, nifti_dtype, nifti_vox_offset,
    image_nan, image_zero, image_constant, image_infinite, echo_shape, echo_grid, echo_duplicate)}


def make_cases(source: Path, root: Path, n_cases: int, seed: int = 0, kinds: tuple[str, ...] = tuple(KINDS),
               first: int = 0) -> list[Case]:
    """Write ``n_cases`` corrupted copies of the participant ``source`` into ``root``.

    Case ``k`` (numbered from ``first``) is of kind ``kinds[k % len(kinds)]``
    and is labelled ``f<k>``; its corruption depends only on ``seed`` and
    ``k``.
    """
    cases = []
    for k in range(first, first + n_cases):
        kind = kinds[k % len(kinds)]
        label = f"f{k:04d}"
        sub = copy_participant(source, root, label)
        detail, files = KINDS[kind](sub, np.random.default_rng([seed, k]))
        cases.append(Case(index=k, kind=kind, subject=label, detail=detail, files=files))
    return cases
