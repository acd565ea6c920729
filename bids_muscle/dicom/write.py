"""Writing BIDS: the conversion plan (file names, sidecars, runs) of the
recognised acquisitions, and the files of a plan.

Echo times are written in seconds with the decimal digits of the header.
Phase is written in radians: computed from the real and imaginary images when
the series has them (GE phase images use an undocumented scale), else
rescaled from the vendor's integer range. Sidecars are built from an
allow-list of acquisition parameters: no patient name, ID, birth date, age,
sex, size, weight, institution, dates or UIDs.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import nibabel as nb
import numpy as np
import pydicom

from bids_muscle import __version__, bids
from bids_muscle.dicom.read import (
    SIDECAR_FIELDS,
    ConversionError,
    Frame,
    Skipped,
    header_decimal,
    header_tokens,
    load_volume,
    ms_text,
    phase_scale_to_radians,
    scan_folder,
)
from bids_muscle.dicom.recognise import PART_NAMES, Acquisition, ImageGroup, group_frames, guess_region, is_spin_echo, recognise

CONVERTER = "bids_muscle-dicom2bids"


@dataclass(eq=False)
class PlannedImage:
    """One NIfTI file and its sidecar to write."""

    datatype: str  # anat | fmap
    entities: dict
    suffix: str
    frames: list[Frame]
    sidecar: dict
    imag_frames: list[Frame] | None = None  # with ``frames`` the real part: phase or magnitude computed from both
    derive: str = ""  # "", "phase", "magnitude" (from real and imaginary) or "rescale" (scanner phase)
    scale: float = 1.0

    @property
    def relpath(self) -> Path:
        folder = Path(f"sub-{self.entities['sub']}")
        if self.entities.get("ses"):
            folder = folder / f"ses-{self.entities['ses']}"
        return folder / self.datatype / bids.build_name(self.entities, self.suffix)

    @property
    def sidecar_relpath(self) -> Path:
        return self.relpath.with_name(self.relpath.name.replace(".nii.gz", ".json"))


@dataclass
class ConversionPlan:
    """What will be written and what was skipped."""

    participant: str
    session: str | None
    images: list[PlannedImage]
    skipped: list[Skipped]
    notes: list[str] = field(default_factory=list)  # one line per acquisition: series, role, region and why

    def report(self) -> str:
        lines = [f"recognised {len(self.notes)} acquisition(s), {len(self.images)} file(s) to write:"]
        lines += [f"  {note}" for note in self.notes]
        lines += [f"    {img.relpath}" for img in self.images]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}:")
            lines += [f"  {item}" for item in self.skipped]
        return "\n".join(lines)


def _json_value(value):
    if value is None:
        return None
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        items = [_json_value(v) for v in value]
        return items if len(items) > 1 else (items[0] if items else None)
    if isinstance(value, pydicom.valuerep.IS):
        return int(value)
    if isinstance(value, float | pydicom.valuerep.DSfloat | pydicom.valuerep.DSdecimal):
        return float(header_decimal(value) or 0)
    if isinstance(value, int):
        return value
    text = str(value).strip()
    return text or None


def _seconds(ms: Decimal | None) -> float | None:
    return None if ms is None else float(ms / 1000)


def _sidecar(frames: list[Frame], **extra) -> dict:
    first = frames[0]
    header = first.header
    meta = {}
    for keyword, key in SIDECAR_FIELDS.items():
        value = _json_value(header.get(keyword))
        if value is not None:
            meta[key] = value
    field_t = meta.get("MagneticFieldStrength")
    if isinstance(field_t, float) and field_t > 20:  # old headers give gauss
        meta["MagneticFieldStrength"] = field_t / 10000
    if first.echo_time_ms is not None:
        meta["EchoTime"] = _seconds(first.echo_time_ms)
    if first.repetition_time_ms is not None:
        meta["RepetitionTime"] = _seconds(first.repetition_time_ms)
    if first.flip_angle_deg is not None:
        meta["FlipAngle"] = first.flip_angle_deg
        # Siemens spin-echo headers give the refocusing pulse's angle as FlipAngle
        siemens = "SIEMENS" in str(header.get("Manufacturer") or "").upper()
        if siemens and is_spin_echo(header_tokens(header.get("ScanningSequence"))) and first.flip_angle_deg > 90:
            meta["RefocusingFlipAngle"] = first.flip_angle_deg
    meta["ImageType"] = list(first.image_type)
    meta.update(extra)
    meta["ConversionSoftware"] = CONVERTER
    meta["ConversionSoftwareVersion"] = __version__
    return meta


def _by_echo(groups: list[ImageGroup], part: str) -> dict[Decimal, list[Frame]]:
    frames: dict[Decimal, list[Frame]] = defaultdict(list)
    for g in groups:
        if g.part == part:
            for f in g.frames:
                frames[f.echo_time_ms].append(f)
    return dict(frames)


def _megre_images(acq: Acquisition, entities: dict) -> tuple[list[PlannedImage], list[Skipped]]:
    parts = {p: _by_echo(acq.groups, p) for p in ("mag", "phase", "real", "imag")}
    reference = "mag" if parts["mag"] else "real"
    echo_times = sorted(parts[reference])
    skipped = []
    for p, frames in parts.items():
        if frames and sorted(frames) != echo_times:
            for g in (g for g in acq.groups if g.part == p):
                skipped.append(Skipped(g.label, g.n_files, f"echo times {', '.join(map(ms_text, sorted(frames)))} ms differ "
                                       f"from the {PART_NAMES[reference]} echoes {', '.join(map(ms_text, echo_times))} ms"))
            parts[p] = {}
    complex_parts = bool(parts["real"]) and bool(parts["imag"])
    scale = 1.0
    if complex_parts and parts["phase"]:
        skipped += [Skipped(g.label, g.n_files, "not written: part-phase is computed in radians from the real and imaginary "
                            "images (scanner phase scaling differs between vendors)") for g in acq.groups if g.part == "phase"]
    elif parts["phase"]:
        max_abs = max(float(np.abs(load_volume(frames)[0]).max()) for frames in parts["phase"].values())
        manufacturer = str(acq.groups[0].header.get("Manufacturer") or "")
        found = phase_scale_to_radians(max_abs, manufacturer)
        if found is None:
            skipped += [Skipped(g.label, g.n_files, f"phase values up to {max_abs:g} have no known scale to radians "
                                "(the fat fraction is fitted from the magnitude alone)") for g in acq.groups if g.part == "phase"]
            parts["phase"] = {}
        scale = found or 1.0
    images = []
    for k, te in enumerate(echo_times, start=1):
        ent = {**entities, "echo": k}
        if parts["mag"]:
            images.append(PlannedImage("anat", {**ent, "part": "mag"}, "MEGRE", parts["mag"][te],
                                       _sidecar(parts["mag"][te], EchoNumber=k)))
        else:
            images.append(PlannedImage("anat", {**ent, "part": "mag"}, "MEGRE", parts["real"][te],
                                       _sidecar(parts["real"][te], EchoNumber=k, ImageType=["DERIVED", "MAGNITUDE"],
                                                ImageComment="magnitude of the real and imaginary images"),
                                       imag_frames=parts["imag"][te], derive="magnitude"))
        if complex_parts:
            images.append(PlannedImage("anat", {**ent, "part": "phase"}, "MEGRE", parts["real"][te],
                                       _sidecar(parts["real"][te], EchoNumber=k, Units="rad", ImageType=["DERIVED", "PHASE"],
                                                ImageComment="phase (radians) of the real and imaginary images"),
                                       imag_frames=parts["imag"][te], derive="phase"))
        elif parts["phase"]:
            images.append(PlannedImage("anat", {**ent, "part": "phase"}, "MEGRE", parts["phase"][te],
                                       _sidecar(parts["phase"][te], EchoNumber=k, Units="rad"),
                                       derive="rescale", scale=scale))
        for p in ("real", "imag") if complex_parts else ():
            images.append(PlannedImage("anat", {**ent, "part": p}, "MEGRE", parts[p][te], _sidecar(parts[p][te], EchoNumber=k)))
    return images, skipped


def _images(acq: Acquisition, participant: str, session: str | None) -> tuple[list[PlannedImage], list[Skipped]]:
    entities = {"sub": participant, "ses": session, "acq": acq.region, "run": acq.run}
    if acq.role == "MESE":
        by_te = _by_echo(acq.groups, "mag")
        return [PlannedImage("anat", {**entities, "echo": k}, "MESE", by_te[te], _sidecar(by_te[te], EchoNumber=k))
                for k, te in enumerate(sorted(by_te), start=1)], []
    if acq.role == "MEGRE":
        return _megre_images(acq, entities)
    if acq.role == "MTR":
        on, off = acq.groups
        return [PlannedImage("anat", {**entities, "mt": "on"}, "MTR", on.frames, _sidecar(on.frames, MTState=True)),
                PlannedImage("anat", {**entities, "mt": "off"}, "MTR", off.frames, _sidecar(off.frames, MTState=False))], []
    if acq.role == "TB1DAM":
        pair = sorted(acq.groups, key=lambda g: g.first.flip_angle_deg)
        return [PlannedImage("fmap", {**entities, "flip": k}, "TB1DAM", g.frames, _sidecar(g.frames))
                for k, g in enumerate(pair, start=1)], []
    (group,) = acq.groups
    return [PlannedImage("anat", {**entities, "rec": acq.rec}, "T1w", group.frames, _sidecar(group.frames))], []


def _assign_runs(acquisitions: list[Acquisition]) -> None:
    """``run-<n>`` in series order where one region has the same kind of acquisition more than once."""
    same: dict[tuple, list[Acquisition]] = defaultdict(list)
    for acq in acquisitions:
        same[(acq.role, acq.rec, acq.region)].append(acq)
    for repeats in same.values():
        if len(repeats) > 1:
            for k, acq in enumerate(sorted(repeats, key=lambda a: a.order), start=1):
                acq.run = k


def _label(value: str | None, prefix: str, option: str) -> str | None:
    if value is None:
        return None
    label = str(value).removeprefix(f"{prefix}-")
    if not re.fullmatch(r"[A-Za-z0-9]+", label):
        raise ConversionError(f"{option} {value!r}: BIDS labels are letters and digits only")
    return label


def plan_conversion(dicom_dir: Path, participant: str, session: str | None = None, region: str | None = None) -> ConversionPlan:
    """Recognise the series under ``dicom_dir`` and name the files they become (reads headers only).

    Parameters
    ----------
    dicom_dir : Path
        Folder searched recursively for DICOM files (other files are reported and ignored).
    participant, session : str
        BIDS labels, with or without ``sub-``/``ses-``.
    region : {"thigh", "calf"}, optional
        Region of every series; guessed per series from the header when omitted.

    Raises
    ------
    ConversionError
        Missing folder, no DICOM images, bad labels, or a recognised series
        whose region the header does not name while ``region`` is not given.
    """
    dicom_dir = Path(dicom_dir)
    if not dicom_dir.is_dir():
        raise ConversionError(f"{dicom_dir}: DICOM folder does not exist")
    participant = _label(participant, "sub", "--participant-label")
    session = _label(session, "ses", "--session-label")
    if region is not None and region not in bids.REGIONS:
        raise ConversionError(f"--region {region!r}: must be one of {', '.join(bids.REGIONS)}")
    frames, skipped = scan_folder(dicom_dir)
    if not frames:
        detail = "; ".join(str(s) for s in skipped) or "the folder is empty"
        raise ConversionError(f"{dicom_dir}: no DICOM MR images found ({detail})")
    acquisitions, left = recognise(group_frames(frames))
    skipped += left
    unknown = []
    for acq in acquisitions:
        if region:
            acq.region, acq.region_source = region, "--region"
        else:
            acq.region, acq.region_source = guess_region(acq.groups[0].header)
            if acq.region is None:
                unknown.append(acq.label)
    if unknown:
        raise ConversionError(
            f"{dicom_dir}: cannot tell thigh from calf for {'; '.join(unknown)} (BodyPartExamined, SeriesDescription "
            "and ProtocolName name neither); pass --region thigh or --region calf"
        )
    _assign_runs(acquisitions)
    images, notes = [], []
    for acq in acquisitions:
        found, left = _images(acq, participant, session)
        images += found
        skipped += left
        rec = f" rec-{acq.rec}" if acq.rec else ""
        notes.append(f"{acq.label} -> {acq.role}{rec}, {acq.region} (from {acq.region_source}), {len(found)} file(s)")
    return ConversionPlan(participant, session, images, skipped, notes)


# ---------------------------------------------------------------- writing


def image_data(image: PlannedImage) -> tuple[np.ndarray, np.ndarray]:
    """Voxel data and affine of one planned image."""
    data, affine = load_volume(image.frames)
    if image.derive == "rescale":
        return (data.astype(np.float64) * image.scale).astype(np.float32), affine
    if image.derive in ("phase", "magnitude"):
        imag, imag_affine = load_volume(image.imag_frames)
        if not np.allclose(affine, imag_affine, atol=1e-4) or imag.shape != data.shape:
            raise ConversionError(f"{image.imag_frames[0].path}: imaginary images do not match the real images' grid")
        real, imag = data.astype(np.float64), imag.astype(np.float64)
        values = np.arctan2(imag, real) if image.derive == "phase" else np.hypot(real, imag)
        return values.astype(np.float32), affine
    return data, affine


def _dataset_files(bids_dir: Path, participant: str) -> None:
    """dataset_description.json and README when missing; the participant's row in participants.tsv."""
    if not (bids_dir / "dataset_description.json").exists():
        bids.write_json_atomic(bids_dir / "dataset_description.json", {
            "Name": "Muscle MRI converted from DICOM",
            "BIDSVersion": "1.10.0",
            "DatasetType": "raw",
            "GeneratedBy": [{"Name": CONVERTER, "Version": __version__,
                             "CodeURL": "https://github.com/bids-muscle/bids_muscle"}],
        })
    if not (bids_dir / "README").exists() and not (bids_dir / "README.md").exists():
        bids.write_text_atomic(bids_dir / "README", f"Muscle MRI converted from DICOM by {CONVERTER} {__version__}.\n")
    participants = bids_dir / "participants.tsv"
    row_id = f"sub-{participant}"
    if not participants.exists():
        bids.write_text_atomic(participants, f"participant_id\n{row_id}\n")
        return
    lines = participants.read_text().splitlines()
    if any(line.split("\t")[0] == row_id for line in lines[1:]):
        return
    n_columns = len(lines[0].split("\t")) if lines else 1
    bids.write_text_atomic(participants, "\n".join(lines + [row_id + "\tn/a" * (n_columns - 1)]) + "\n")


def write_plan(plan: ConversionPlan, bids_dir: Path, overwrite: bool = False) -> list[Path]:
    """Write the planned images, their sidecars and the dataset files; returns the image paths.

    Raises
    ------
    ConversionError
        When a planned file exists and ``overwrite`` is False (nothing is
        written then), or when pixel data cannot be read.
    """
    bids_dir = Path(bids_dir)
    if not overwrite:
        existing = [bids_dir / p for img in plan.images for p in (img.relpath, img.sidecar_relpath) if (bids_dir / p).exists()]
        if existing:
            raise ConversionError(f"{existing[0]}: already exists ({len(existing)} planned file(s) do); "
                                  "pass --overwrite to replace them")
    bids_dir.mkdir(parents=True, exist_ok=True)
    _dataset_files(bids_dir, plan.participant)
    written = []
    for image in plan.images:
        data, affine = image_data(image)
        header = nb.Nifti1Header()
        header.set_data_dtype(data.dtype)
        header.set_xyzt_units("mm", "sec")
        path = bids.save_nifti_atomic(bids_dir / image.relpath, data, affine, header)
        bids.write_json_atomic(bids_dir / image.sidecar_relpath, image.sidecar)
        written.append(path)
    return written


def convert(dicom_dir: Path, bids_dir: Path, participant: str, session: str | None = None, region: str | None = None,
            overwrite: bool = False, dry_run: bool = False) -> ConversionPlan:
    """Plan the conversion of ``dicom_dir`` and, unless ``dry_run``, write it into ``bids_dir``."""
    plan = plan_conversion(dicom_dir, participant, session, region)
    if not plan.images:
        raise ConversionError(f"{dicom_dir}: no series recognised\n{plan.report()}")
    if not dry_run:
        write_plan(plan, bids_dir, overwrite)
    return plan
