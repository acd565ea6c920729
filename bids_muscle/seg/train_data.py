"""Training data of the segmenters: muscle label maps found in folders, each
paired with its image by name, checked against the region's label table.

Covers a plain folder of ``case_T1w.nii.gz`` / ``case_dseg.nii.gz`` pairs, a
BIDS derivatives folder next to a raw BIDS dataset, and the app's own output
folder (``desc-<net>_dseg``). Used by ``bids_muscle-train``
(:mod:`bids_muscle.cli.train`).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bids_muscle.seg.labels import REGIONS, load_label_table

#: ``desc-`` values of label maps that are not muscle label maps (the
#: phantom's ground-truth tissue classes), skipped by name.
NON_MUSCLE_DESCS = frozenset({"tissue"})


def _name_parts(path: Path) -> tuple[list[str], str]:
    """Underscore-separated parts of a NIfTI file name before its suffix, and the suffix."""
    parts = path.name.split(".nii")[0].split("_")
    return parts[:-1], parts[-1]


def _entity(parts: Sequence[str], key: str) -> str | None:
    for part in parts:
        if part.startswith(f"{key}-"):
            return part[len(key) + 1:]
    return None


def region_from_name(path: str | Path) -> str | None:
    """Region a file name gives: its ``acq-<region>`` entity, else the one
    region word in the name (``thigh_case01_dseg.nii.gz``); None when it
    names neither or both regions."""
    parts, _ = _name_parts(Path(path))
    acq = _entity(parts, "acq")
    if acq in REGIONS:
        return acq
    words = set(re.split(r"[_\-.]", Path(path).name.lower()))
    found = [region for region in REGIONS if region in words]
    return found[0] if len(found) == 1 else None


def _label_table(label: Path, root: Path) -> Path | None:
    """The BIDS label table (``*dseg.tsv``) of a label map: its sidecar's
    ``LabelTable``, a ``.tsv`` of the same stem, or the most specific
    ``[<entities>_]dseg.tsv`` in its folder or a parent folder up to ``root``
    whose entities all appear in the map's name (BIDS inheritance)."""
    stem = label.name.split(".nii")[0]
    folders = list(dict.fromkeys([label.parent] + [p for p in label.parents if p == root or root in p.parents]))
    sidecar = label.parent / f"{stem}.json"
    if sidecar.is_file():
        try:
            named = json.loads(sidecar.read_text()).get("LabelTable")
        except (OSError, ValueError, AttributeError):
            named = None
        if isinstance(named, str):
            for folder in folders:
                if (folder / named).is_file():
                    return folder / named
    if (label.parent / f"{stem}.tsv").is_file():
        return label.parent / f"{stem}.tsv"
    parts, _ = _name_parts(label)
    for folder in folders:
        tables = []
        for table in folder.glob("*dseg.tsv"):
            table_parts = table.name[: -len(".tsv")].split("_")[:-1]
            if table.name.endswith("dseg.tsv") and table.name.split("_")[-1] == "dseg.tsv" and set(table_parts) <= set(parts):
                tables.append((len(table_parts), table))
        if tables:
            return max(tables)[1]
    return None


def _muscle_names() -> set[str]:
    return {text.lower() for region in REGIONS for lab in load_label_table(region) for text in (lab.name, lab.abbreviation)}


def _not_a_muscle_map(label: Path, root: Path) -> str | None:
    """Why ``label`` is not a muscle label map, judged by name and label
    table; None when it may be one."""
    parts, _ = _name_parts(label)
    desc = _entity(parts, "desc")
    if desc in NON_MUSCLE_DESCS:
        return f"desc-{desc} maps are not muscle label maps"
    table = _label_table(label, root)
    if table is not None:
        try:
            with table.open(newline="") as handle:
                rows = list(csv.DictReader(handle, delimiter="\t"))
        except (OSError, csv.Error, UnicodeDecodeError):
            return None
        names = [str(row.get(key) or "").strip() for row in rows for key in ("name", "abbreviation")]
        names = [n for n in names if n]
        if names and not {n.lower() for n in names} & _muscle_names():
            return f"its label table {table.name} names no muscles ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
    return None


def select_label_maps(
    label_roots: Sequence[str | Path], region: str | None = None, log: Callable[[str], None] | None = None
) -> list[tuple[Path, Path]]:
    """Muscle label maps under ``label_roots``, as (root, label map) pairs.

    Every ``*_dseg.nii[.gz]`` is considered. A map is skipped (with the
    reason passed to ``log``) when its name gives another region than
    ``region`` (``acq-<region>`` or a region word in the name, see
    :func:`region_from_name`), when its ``desc-`` marks a non-muscle map
    (:data:`NON_MUSCLE_DESCS`, e.g. ``desc-tissue``), or when its BIDS label
    table (``dseg.tsv``, ``desc-<x>_dseg.tsv`` or the sidecar's
    ``LabelTable``) names no muscle of the label tables. Whether its values
    fit the ``region`` table is checked when it is loaded
    (:func:`check_label_map`)."""
    selected = []
    for root in label_roots:
        root = Path(root)
        if not root.exists():
            raise ValueError(f"{root}: label folder does not exist")
        for label in sorted(root.rglob("*_dseg.nii*")):
            if not label.name.endswith((".nii", ".nii.gz")):
                continue
            named = region_from_name(label)
            if region is not None and named is not None and named != region:
                reason = f"a {named} map, not {region}"
            else:
                reason = _not_a_muscle_map(label, root)
            if reason is not None:
                if log is not None:
                    log(f"skipped {label}: {reason}")
                continue
            selected.append((root, label))
    return selected


def _image_search_roots(label_root: Path, image_root: str | Path | None) -> list[Path]:
    """Where the images of a label folder are looked for: ``image_root``;
    else the label folder, then its dataset's ``DatasetLinks`` ``raw``
    (a ``file://`` path) and the BIDS dataset around a ``derivatives`` folder."""
    if image_root is not None:
        return [Path(image_root)]
    roots = [label_root]
    description = label_root / "dataset_description.json"
    if description.is_file():
        try:
            raw = json.loads(description.read_text()).get("DatasetLinks", {}).get("raw", "")
        except (OSError, ValueError, AttributeError):
            raw = ""
        if isinstance(raw, str) and raw.startswith("file://") and Path(raw[len("file://"):]).is_dir():
            roots.append(Path(raw[len("file://"):]))
    if label_root.resolve().parent.name == "derivatives":
        roots.append(label_root.resolve().parent.parent)
    return list(dict.fromkeys(roots))


class _ImageIndex:
    """Images ``*_<suffix>.nii[.gz]`` under a folder, keyed by their name
    parts without ``desc-`` (raw images before derivatives, then undescribed
    before described)."""

    def __init__(self, root: Path, suffix: str) -> None:
        self.by_key: dict[tuple[str, ...], list[Path]] = {}
        found = []
        for path in root.rglob(f"*{suffix}.nii*"):
            parts, last = _name_parts(path)
            if last != suffix or not path.name.endswith((".nii", ".nii.gz")) or not path.is_file():
                continue
            relative = path.relative_to(root).parts
            rank = ("derivatives" in relative[:-1], _entity(parts, "desc") is not None, str(path))
            found.append((rank, tuple(p for p in parts if not p.startswith("desc-")), path))
        for _, key, path in sorted(found):
            self.by_key.setdefault(key, []).append(path)

    def find(self, key: tuple[str, ...]) -> list[Path]:
        """Images with exactly the parts ``key``, else those whose parts hold every part of ``key``."""
        if key in self.by_key:
            return self.by_key[key]
        wanted = set(key)
        return [paths[0] for other, paths in sorted(self.by_key.items()) if wanted <= set(other)]


def find_training_pairs(
    label_roots: Sequence[str | Path],
    image_suffix: str = "T1w",
    image_root: str | Path | None = None,
    region: str | None = None,
    log: Callable[[str], None] | None = None,
) -> list[tuple[Path, Path]]:
    """Pair the muscle label maps under ``label_roots`` with their images.

    Label maps are chosen by :func:`select_label_maps` (``region``, muscle
    maps only). The image of ``<parts>[_desc-<x>]_dseg.nii.gz`` is the
    ``<parts>[_desc-<y>]_<image_suffix>.nii[.gz]`` with the same parts apart
    from ``desc-`` (else the first whose name holds all of them, e.g. an
    extra ``run-``) under ``image_root``; without ``image_root`` under the
    label folder, then the raw dataset of a derivatives folder
    (``DatasetLinks.raw`` or the folder above ``derivatives/``). Raw images
    are preferred to derivatives. This covers a plain folder of
    ``case_T1w.nii.gz`` / ``case_dseg.nii.gz`` pairs, a BIDS derivatives
    folder (``sub-X_acq-thigh_desc-manual_dseg.nii.gz``) next to a raw BIDS
    dataset, and the app's own output folder (``desc-<net>_dseg``).
    """
    pairs = []
    indices: dict[Path, _ImageIndex] = {}
    for root, label in select_label_maps(label_roots, region, log):
        parts, _ = _name_parts(label)
        key = tuple(p for p in parts if not p.startswith("desc-"))
        searched = _image_search_roots(root, image_root)
        candidates: list[Path] = []
        for search in searched:
            if search not in indices:
                indices[search] = _ImageIndex(search, image_suffix)
            candidates = [p for p in indices[search].find(key) if p != label]
            if candidates:
                break
        if not candidates:
            where = " or ".join(str(s) for s in searched)
            raise ValueError(f"{label}: no image '{'_'.join(key)}[_desc-*]_{image_suffix}.nii[.gz]' under {where}")
        pairs.append((candidates[0], label))
    return pairs


def check_label_map(labels: np.ndarray, region: str, path: str | Path, named: bool = True) -> str | None:
    """Check that a label map holds only indices of the ``region`` table.

    Returns None when it does. A map whose name gives no region
    (``named=False``) and that holds only indices of the other region's table
    is not an error: the reason to skip it is returned. Anything else raises
    ValueError naming ``path``."""
    values = np.unique(labels)
    allowed = {0} | {lab.index for lab in load_label_table(region)}
    foreign = sorted(set(values.tolist()) - allowed)
    if not foreign:
        return None
    for other in REGIONS:
        if other != region and not named and set(values.tolist()) <= {0} | {lab.index for lab in load_label_table(other)}:
            return f"holds {other} labels only, not {region}"
    shown = ", ".join(str(int(v)) for v in foreign[:10]) + (", ..." if len(foreign) > 10 else "")
    raise ValueError(
        f"{path}: label map holds indices [{shown}] that are not in the {region} label table "
        f"(bids_muscle/data/labels/{region}.tsv)"
    )


def load_training_pair(image_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image (float32, first volume of a 4D file), label map (int16) and
    affine of a training pair; ValueError naming the file when either cannot
    be read, the label map is not 3D, or their grids differ."""
    import nibabel as nib

    loaded = []
    for path in (image_path, label_path):
        try:
            img = nib.load(str(path))
            loaded.append((img, np.asarray(img.dataobj)))
        except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as error:
            raise ValueError(f"{path}: cannot be read as NIfTI ({error})") from error
    (image_img, image), (label_img, labels) = loaded
    image = image.astype(np.float32)
    if image.ndim == 4:
        image = image[..., 0]
    if labels.ndim != 3:
        raise ValueError(f"{label_path}: a label map must be 3D, got shape {labels.shape}")
    labels = np.rint(labels).astype(np.int16)
    if image.shape != labels.shape:
        raise ValueError(f"{label_path}: shape {labels.shape} differs from its image {image_path} {image.shape}")
    if not np.allclose(image_img.affine, label_img.affine, atol=1e-3):
        raise ValueError(f"{label_path}: affine differs from its image {image_path}")
    return image, labels, image_img.affine
