"""Convert a folder of muscle-protocol DICOM series into a BIDS dataset that bids_muscle reads.

Series are recognised from their DICOM headers (pydicom), classic single-frame
files and enhanced multi-frame files alike, and become:

==========================================  =============================================================
what the headers say                        BIDS file (``sub-<p>[_ses-<s>]_acq-<region>...``)
==========================================  =============================================================
spin echo, two or more echo times           ``anat/..._echo-<n>_MESE``
gradient echo, two or more echo times       ``anat/..._echo-<n>_part-<mag|phase|real|imag>_MEGRE``
MT pulse on / off (flag or name)            ``anat/..._mt-<on|off>_MTR``
scanner Dixon water / fat / in / out phase  ``anat/..._rec-<water|fat|inphase|outphase>_T1w``
T1-weighted (name, or short TR and TE SE)   ``anat/..._T1w``
two series at flip angles alpha and 2 alpha ``fmap/..._flip-<1|2>_TB1DAM``
==========================================  =============================================================

Echo times come from each image (``EchoTime``) or, in enhanced files, from the
per-frame ``MREchoSequence``; they are written in seconds with the decimal
digits of the header. Echoes of one acquisition split over several series (one
series per echo, or magnitude and phase apart) are joined when protocol name,
geometry, TR and flip angle agree. Phase is written in radians: computed from
the real and imaginary images when the series has them (GE phase images use an
undocumented scale), else rescaled from the vendor's integer range.

Pixel data are read with pydicom (rescale slope and intercept applied; Philips
floating-point scale when present) and stacked along the slice normal; the
affine is built from ``ImagePositionPatient``/``ImageOrientationPatient``, so
every voxel has the same scanner position as in dcm2niix's output.

Sidecars are built from an allow-list of acquisition parameters: no patient
name, ID, birth date, age, sex, size, weight, institution, dates or UIDs.
Everything not recognised is reported with the reason it was skipped.
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
from pydicom.errors import InvalidDicomError

from bids_muscle import __version__, bids

CONVERTER = "bids_muscle-dicom2bids"
ENHANCED_MR = ("1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.4")  # enhanced, legacy converted enhanced
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
DICOMDIR = "1.2.840.10008.1.3.10"
DIXON_KINDS = ("water", "fat", "inphase", "outphase")

#: DICOM keyword -> BIDS sidecar key, the only header fields copied (anonymisation by allow-list).
SIDECAR_FIELDS = {
    "Manufacturer": "Manufacturer",
    "ManufacturerModelName": "ManufacturersModelName",
    "SoftwareVersions": "SoftwareVersions",
    "MagneticFieldStrength": "MagneticFieldStrength",
    "ImagingFrequency": "ImagingFrequency",
    "ReceiveCoilName": "ReceiveCoilName",
    "BodyPartExamined": "BodyPart",
    "PatientPosition": "PatientPosition",
    "SeriesDescription": "SeriesDescription",
    "ProtocolName": "ProtocolName",
    "SeriesNumber": "SeriesNumber",
    "ScanningSequence": "ScanningSequence",
    "SequenceVariant": "SequenceVariant",
    "ScanOptions": "ScanOptions",
    "SequenceName": "SequenceName",
    "MRAcquisitionType": "MRAcquisitionType",
    "SliceThickness": "SliceThickness",
    "SpacingBetweenSlices": "SpacingBetweenSlices",
    "PixelBandwidth": "PixelBandwidth",
    "EchoTrainLength": "EchoTrainLength",
    "NumberOfAverages": "NumberOfAverages",
    "PercentSampling": "PercentSampling",
    "PercentPhaseFieldOfView": "PercentPhaseFOV",
    "InPlanePhaseEncodingDirection": "InPlanePhaseEncodingDirectionDICOM",
}

_BODY_PART_REGION = {
    "THIGH": "thigh", "UPPERLEG": "thigh", "UPPER LEG": "thigh", "FEMUR": "thigh",
    # DICOM's LEG (SNOMED T-D9400) is the lower leg
    "LEG": "calf", "LOWERLEG": "calf", "LOWER LEG": "calf", "CALF": "calf", "TIBIA": "calf", "FIBULA": "calf",
}
_TEXT_REGION = (
    ("thigh", re.compile(r"thigh|femur|femoral|upper[\s_-]?leg|quadriceps|hamstring|oberschenkel|cuisse|coscia")),
    ("calf", re.compile(r"calf|calves|lower[\s_-]?leg|tibia|fibula|shank|unterschenkel|mollet|polpaccio")),
)
_PART_TOKENS = {"M": "mag", "MAGNITUDE": "mag", "P": "phase", "PHASE": "phase", "R": "real", "REAL": "real",
                "I": "imag", "IMAGINARY": "imag"}
_GE_PART = {0: "mag", 1: "phase", 2: "real", 3: "imag"}
_DIXON_TYPE_TOKENS = {
    "WATER": "water", "W": "water", "W_FFE": "water", "W_SE": "water",
    "FAT": "fat", "F": "fat", "F_FFE": "fat", "F_SE": "fat",
    "IN_PHASE": "inphase", "IP": "inphase", "IN": "inphase", "IP_FFE": "inphase",
    "OUT_PHASE": "outphase", "OPP_PHASE": "outphase", "OPPOSED_PHASE": "outphase", "OP": "outphase", "OPP": "outphase",
    "OUT": "outphase", "OP_FFE": "outphase",
    "FF": "fatfraction", "FAT_FRACTION": "fatfraction", "FATFRACTION": "fatfraction",
}
_DIXON_NAME_TOKENS = {"w": "water", "water": "water", "f": "fat", "fat": "fat", "in": "inphase", "ip": "inphase",
                      "inphase": "inphase", "opp": "outphase", "op": "outphase", "out": "outphase",
                      "outphase": "outphase", "ff": "fatfraction", "fatfraction": "fatfraction"}
_DERIVED_MAP_TOKENS = ("T1_MAP", "T2_MAP", "T2 MAP", "T2*_MAP", "ADC", "FA", "TRACEW", "MIP", "MPR", "PROJECTION IMAGE",
                       "SUBTRACTION", "R2STAR", "T2STAR_MAP", "FIELD_MAP", "B0 MAP", "B1 MAP")
_LOCALIZER_NAME = re.compile(r"locali[sz]er|scout|survey|3[\s_-]?plane|tri[\s_-]?pilot|aahscout|\bpilot\b", re.IGNORECASE)
_MT_ON_NAME = re.compile(r"(?<![a-z])mt[\s_-]?(on|sat)\b|with[\s_-]?mt\b|\bmton\b|mt[\s_-]?pulse", re.IGNORECASE)
_MT_OFF_NAME = re.compile(r"(?<![a-z])mt[\s_-]?off\b|\bmtoff\b|\bno[\s_-]?mt\b|without[\s_-]?mt\b", re.IGNORECASE)
_T1_NAME = re.compile(r"(?<![a-z0-9])t1(?!\s*[_-]?\s*map)(w|[\s_-]|$|(?=[a-z]))", re.IGNORECASE)


class ConversionError(ValueError):
    """The folder cannot be converted as asked; the message names the folder or file and the problem."""


@dataclass
class Skipped:
    """Something that was not converted, and why."""

    what: str
    n_files: int
    reason: str

    def __str__(self) -> str:
        return f"{self.what} ({self.n_files} file{'s' if self.n_files != 1 else ''}): {self.reason}"


# ---------------------------------------------------------------- reading headers


@dataclass(eq=False)
class Frame:
    """One 2D image: a classic DICOM file, or one frame of an enhanced multi-frame file."""

    path: Path
    index: int | None  # frame number in an enhanced file, None for classic files
    series_uid: str
    series_number: int
    header: dict  # series-level values keyed by DICOM keyword
    image_type: tuple[str, ...]
    part: str  # mag | phase | real | imag
    kind: str  # "" ordinary image, a Dixon type, "derived" or "localizer"
    echo_time_ms: Decimal | None
    repetition_time_ms: Decimal | None
    flip_angle_deg: float | None
    mt: bool | None  # MT pulse on/off when the header or name says so
    position: np.ndarray
    orientation: np.ndarray
    spacing_mm: tuple[float, float]  # (between rows, between columns) = DICOM PixelSpacing
    shape: tuple[int, int]  # (rows, columns)
    slope: float = 1.0
    intercept: float = 0.0
    philips_scale: float | None = None


def _decimal(value) -> Decimal | None:
    """A header number as Decimal with the digits written in the header (``10.9`` stays ``10.9``)."""
    if value is None or value == "":
        return None
    text = str(value) if isinstance(value, str | pydicom.valuerep.DSfloat) else repr(float(value))
    number = Decimal(text.strip())
    return number.normalize() if number != 0 else None


def _ms(value: Decimal | None) -> str:
    """A time in ms as plain digits (``4100``, not ``4.1E+3``)."""
    return "n/a" if value is None else format(value, "f")


def _float(value) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _tokens(value) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else list(value)
    return tuple(str(v).strip().upper() for v in items if str(v).strip())


def _first(seq_owner, keyword):
    """First item of a sequence attribute, or None."""
    seq = getattr(seq_owner, keyword, None) if seq_owner is not None else None
    return seq[0] if seq else None


def _private(ds, group: int, creator: str, offset: int):
    """Value of a private element by creator and offset, or None."""
    try:
        return ds.private_block(group, creator)[offset].value
    except (KeyError, ValueError):
        return None


def _series_header(ds) -> dict:
    header = {key: ds.get(key) for key in SIDECAR_FIELDS}
    header["SOPClassUID"] = str(ds.get("SOPClassUID", ""))
    if "ScanningSequence" not in ds and ds.get("EchoPulseSequence"):
        # enhanced MR names the echo type instead of the classic ScanningSequence
        header["ScanningSequence"] = {"SPIN": "SE", "GRADIENT": "GR", "BOTH": ["SE", "GR"]}.get(str(ds.EchoPulseSequence))
    region_item = _first(ds, "AnatomicRegionSequence")
    header["AnatomicRegion"] = str(region_item.get("CodeMeaning", "")) if region_item is not None else ""
    header["TransferSyntaxUID"] = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    return header


def _part_of(ds, image_type: tuple[str, ...], frame_item=None) -> str:
    frame_type = _first(frame_item, "MRImageFrameTypeSequence") if frame_item is not None else None
    component = (frame_type.get("ComplexImageComponent") if frame_type is not None else None) or ds.get("ComplexImageComponent")
    if component:
        return {"MAGNITUDE": "mag", "PHASE": "phase", "REAL": "real", "IMAGINARY": "imag"}.get(str(component), "mag")
    if "GE" in str(ds.get("Manufacturer", "")).upper():
        ge_type = _private(ds, 0x0043, "GEMS_PARM_01", 0x2F)
        if ge_type is not None:
            return _GE_PART.get(int(ge_type), "mag")
    for token in image_type[2:]:
        if token in _PART_TOKENS:
            return _PART_TOKENS[token]
        if token.endswith(("_FFE", "_SE", "_IR")) and token[:1] in "MPRI" and token[1] == "_":  # Philips M_FFE, P_SE ...
            return _PART_TOKENS[token[0]]
    return "mag"


def _kind_of(image_type: tuple[str, ...], header: dict) -> str:
    description = f"{header.get('SeriesDescription') or ''} {header.get('ProtocolName') or ''}"
    if "LOCALIZER" in image_type or _LOCALIZER_NAME.search(description):
        return "localizer"
    for token in image_type[2:]:
        if token in _DIXON_TYPE_TOKENS:
            return _DIXON_TYPE_TOKENS[token]
    name = str(header.get("SeriesDescription") or "")
    low = name.lower()
    if ":" in name:  # GE IDEAL / FLEX names its outputs "WATER: Ax ...", "InPhase: ..."
        head = re.sub(r"[\s_-]", "", name.split(":", 1)[0].lower())
        if head in _DIXON_NAME_TOKENS and len(head) > 2:
            return _DIXON_NAME_TOKENS[head]
    if re.search(r"dixon|ideal|flex", low):
        last = re.split(r"[\s_-]+", low.strip())[-1]
        if last in _DIXON_NAME_TOKENS:
            return _DIXON_NAME_TOKENS[last]
    if "DIXON" in image_type:
        return "derived"
    if (image_type[:1] == ("DERIVED",)) or any(token in _DERIVED_MAP_TOKENS for token in image_type[2:]):
        return "derived"
    return ""


def _mt_of(ds, header: dict, frame_item=None) -> bool | None:
    for owner in (frame_item, _shared(ds), ds):
        modifier = _first(owner, "MRImagingModifierSequence") if owner is not None else None
        if modifier is not None and modifier.get("MagnetizationTransfer"):
            return str(modifier.MagnetizationTransfer) != "NONE"
    if any(t == "MT" or t.startswith("MT_") for t in _tokens(header.get("ScanOptions"))):
        return True
    description = f"{header.get('SeriesDescription') or ''} {header.get('ProtocolName') or ''}"
    if _MT_OFF_NAME.search(description):
        return False
    if _MT_ON_NAME.search(description):
        return True
    return None


def _shared(ds):
    return _first(ds, "SharedFunctionalGroupsSequence")


def _functional(frame_item, shared, keyword):
    """Item of a functional-group sequence, per-frame first, shared second."""
    item = _first(frame_item, keyword)
    return item if item is not None else _first(shared, keyword)


def _philips_scale(owner) -> float | None:
    value = _private(owner, 0x2005, "Philips MR Imaging DD 001", 0x0E)
    scale = _float(value[0] if isinstance(value, list | tuple | pydicom.multival.MultiValue) else value)
    return scale if scale else None


def _read_header(path: Path):
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        pass
    # some exports drop the 128-byte preamble; accept those only when they hold an image header
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - pydicom raises many types on arbitrary bytes
        raise InvalidDicomError(f"{path}: not DICOM") from None
    if "SOPClassUID" not in ds and "Rows" not in ds:
        raise InvalidDicomError(f"{path}: not DICOM")
    return ds


def read_frames(path: Path) -> list[Frame]:
    """Frames of one DICOM file (header only).

    Raises
    ------
    ConversionError
        When the file is DICOM but not a usable MR image; the message says why.
    InvalidDicomError
        When the file is not DICOM.
    """
    ds = _read_header(path)
    sop = str(ds.get("SOPClassUID", ""))
    if sop == DICOMDIR or "DirectoryRecordSequence" in ds:
        raise ConversionError("DICOMDIR index")
    if ds.get("Modality") not in (None, "MR"):
        raise ConversionError(f"not an MR image (Modality {ds.get('Modality')})")
    if sop and sop not in (MR_IMAGE, *ENHANCED_MR):
        raise ConversionError(f"not an MR image storage object (SOP class {pydicom.uid.UID(sop).name})")
    if "Rows" not in ds or "Columns" not in ds:
        raise ConversionError(f"no image data (SOP class {sop or 'unknown'})")
    header = _series_header(ds)
    series_uid = str(ds.get("SeriesInstanceUID", path.parent))
    series_number = int(ds.get("SeriesNumber") or 0)
    shape = (int(ds.Rows), int(ds.Columns))
    image_type = _tokens(ds.get("ImageType"))
    kind = _kind_of(image_type, header)

    if sop in ENHANCED_MR or "PerFrameFunctionalGroupsSequence" in ds:
        shared = _shared(ds)
        frames = []
        for k, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
            position = _functional(item, shared, "PlanePositionSequence")
            orient = _functional(item, shared, "PlaneOrientationSequence")
            measures = _functional(item, shared, "PixelMeasuresSequence")
            if position is None or orient is None or measures is None:
                raise ConversionError(f"frame {k + 1}: no plane position, orientation or pixel spacing")
            echo = _functional(item, shared, "MREchoSequence")
            timing = _functional(item, shared, "MRTimingAndRelatedParametersSequence")
            scaling = _functional(item, shared, "PixelValueTransformationSequence")
            frame_type = _first(item, "MRImageFrameTypeSequence")
            frame_image_type = _tokens(frame_type.get("FrameType")) if frame_type is not None else image_type
            philips = None  # Philips keeps the floating-point scale in a private per-frame sequence
            for elem in item:
                if elem.tag.group == 0x2005 and elem.VR == "SQ" and elem.value:
                    philips = _philips_scale(elem.value[0]) or philips
            frames.append(Frame(
                path=path, index=k, series_uid=series_uid, series_number=series_number, header=header,
                image_type=frame_image_type, part=_part_of(ds, frame_image_type, item),
                kind=_kind_of(frame_image_type, header) if frame_type is not None else kind,
                echo_time_ms=_decimal(echo.get("EffectiveEchoTime") if echo is not None else ds.get("EchoTime")),
                repetition_time_ms=_decimal(timing.get("RepetitionTime") if timing is not None else ds.get("RepetitionTime")),
                flip_angle_deg=_float(timing.get("FlipAngle") if timing is not None else ds.get("FlipAngle")),
                mt=_mt_of(ds, header, item),
                position=np.array([float(v) for v in position.ImagePositionPatient]),
                orientation=np.array([float(v) for v in orient.ImageOrientationPatient]),
                spacing_mm=tuple(float(v) for v in measures.PixelSpacing),
                shape=shape,
                slope=(_float(scaling.get("RescaleSlope")) if scaling is not None else None) or 1.0,
                intercept=(_float(scaling.get("RescaleIntercept")) if scaling is not None else None) or 0.0,
                philips_scale=philips if "PHILIPS" in str(ds.get("Manufacturer", "")).upper() else None,
            ))
        return frames

    for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if key not in ds:
            raise ConversionError(f"no {key} (cannot place the image in space)")
    philips = _philips_scale(ds) if "PHILIPS" in str(ds.get("Manufacturer", "")).upper() else None
    return [Frame(
        path=path, index=None, series_uid=series_uid, series_number=series_number, header=header,
        image_type=image_type, part=_part_of(ds, image_type), kind=kind,
        echo_time_ms=_decimal(ds.get("EchoTime")), repetition_time_ms=_decimal(ds.get("RepetitionTime")),
        flip_angle_deg=_float(ds.get("FlipAngle")), mt=_mt_of(ds, header),
        position=np.array([float(v) for v in ds.ImagePositionPatient]),
        orientation=np.array([float(v) for v in ds.ImageOrientationPatient]),
        spacing_mm=tuple(float(v) for v in ds.PixelSpacing), shape=shape,
        slope=_float(ds.get("RescaleSlope")) or 1.0, intercept=_float(ds.get("RescaleIntercept")) or 0.0,
        philips_scale=philips,
    )]


def scan_folder(dicom_dir: Path) -> tuple[list[Frame], list[Skipped]]:
    """Header frames of every DICOM image under ``dicom_dir`` and the files that are not usable."""
    dicom_dir = Path(dicom_dir)
    frames: list[Frame] = []
    problems: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(dicom_dir.rglob("*")):
        rel = path.relative_to(dicom_dir)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        try:
            frames += read_frames(path)
        except InvalidDicomError:
            problems["not DICOM"].append(rel)
        except ConversionError as err:
            problems[str(err)].append(rel)
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            problems[f"unreadable DICOM header ({err})"].append(rel)
    skipped = [
        Skipped(str(paths[0]) + (f" and {len(paths) - 1} more" if len(paths) > 1 else ""), len(paths), reason)
        for reason, paths in problems.items()
    ]
    return frames, skipped


# ---------------------------------------------------------------- geometry and pixels


def stack_geometry(frames: list[Frame]) -> tuple[list[Frame], np.ndarray]:
    """Frames sorted along the slice normal and the RAS affine of the stack (NIfTI convention).

    The array axes are (column, row, slice) of the DICOM images: x follows the
    row direction cosine, y the column direction cosine, z the slice positions.

    Raises
    ------
    ConversionError
        For mixed orientations, matrix sizes or pixel spacings, two images at
        one slice position, or unevenly spaced slices.
    """
    ref = frames[0]
    for frame in frames[1:]:
        if frame.shape != ref.shape:
            raise ConversionError(f"{frame.path}: matrix {frame.shape} differs from {ref.shape} in the same series")
        if not np.allclose(frame.orientation, ref.orientation, atol=1e-4):
            raise ConversionError(f"{frame.path}: images in several orientations")
        if not np.allclose(frame.spacing_mm, ref.spacing_mm, atol=1e-4):
            raise ConversionError(f"{frame.path}: pixel spacing {frame.spacing_mm} differs from {ref.spacing_mm}")
    row_cos, col_cos = ref.orientation[:3], ref.orientation[3:]
    normal = np.cross(row_cos, col_cos)
    distance = np.array([frame.position @ normal for frame in frames])
    order = np.argsort(distance, kind="stable")
    ordered = [frames[k] for k in order]
    steps = np.diff(distance[order])
    if steps.size and steps.min() < 1e-3:
        k = int(np.argmin(steps))
        raise ConversionError(
            f"{ordered[k + 1].path}: several images at slice position {distance[order][k]:.2f} mm "
            "(repetitions or dynamics are not supported)"
        )
    if steps.size and steps.max() - steps.min() > max(0.01, 1e-3 * steps.mean()):
        raise ConversionError(f"{ref.path}: uneven slice spacing ({steps.min():.3f} to {steps.max():.3f} mm)")
    if len(ordered) > 1:
        slice_vec = (ordered[-1].position - ordered[0].position) / (len(ordered) - 1)
    else:
        thickness = _float(ref.header.get("SpacingBetweenSlices")) or _float(ref.header.get("SliceThickness")) or 1.0
        slice_vec = normal * thickness
    lps = np.eye(4)
    lps[:3, 0] = row_cos * ref.spacing_mm[1]
    lps[:3, 1] = col_cos * ref.spacing_mm[0]
    lps[:3, 2] = slice_vec
    lps[:3, 3] = ordered[0].position
    return ordered, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _frame_pixels(frames: list[Frame]) -> list[np.ndarray]:
    """Stored pixel values of each frame, reading every file once."""
    cache: dict[Path, np.ndarray] = {}
    out = []
    for frame in frames:
        if frame.path not in cache:
            try:
                cache[frame.path] = pydicom.dcmread(frame.path, force=True).pixel_array
            except (RuntimeError, NotImplementedError, ValueError, OSError) as err:  # no decoder, corrupt stream
                raise ConversionError(f"{frame.path}: pixel data cannot be decoded ({err})") from None
        pixels = cache[frame.path]
        out.append(pixels[frame.index] if frame.index is not None and pixels.ndim == 3 else pixels)
    return out


def _identity_scaling(frame: Frame) -> bool:
    return frame.slope == 1.0 and float(frame.intercept).is_integer() and frame.philips_scale is None


def load_volume(frames: list[Frame]) -> tuple[np.ndarray, np.ndarray]:
    """The scaled image (x, y, slice) and its RAS affine.

    Stored values are mapped with RescaleSlope and RescaleIntercept; Philips
    images with a private floating-point scale are divided by slope x scale
    (dcm2niix's default). Integer data without scaling keep an integer type.
    """
    ordered, affine = stack_geometry(frames)
    slices = []
    for frame, pixels in zip(ordered, _frame_pixels(ordered), strict=True):
        values = pixels.astype(np.float64) * frame.slope + frame.intercept
        if frame.philips_scale:
            values /= frame.slope * frame.philips_scale
        slices.append(values.T)
    data = np.stack(slices, axis=-1)
    if all(_identity_scaling(f) for f in ordered):
        lo, hi = data.min(), data.max()
        for dtype in (np.int16, np.uint16, np.int32):
            if np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max:
                return data.astype(dtype), affine
    return data.astype(np.float32), affine


def phase_scale_to_radians(max_abs: float, manufacturer: str) -> float | None:
    """Factor that turns scanner phase values into radians, or None when the range is not a known one.

    Radians are kept; Siemens stores -4096..4095 for -pi..pi; thousandths of a
    radian are recognised by their range up to 1000 pi.
    """
    if max_abs <= np.pi * 1.001:
        return 1.0
    if "SIEMENS" in manufacturer.upper() and max_abs <= 4096:
        return np.pi / 4096
    if max_abs <= 1000 * np.pi * 1.001:
        return 1e-3
    return None


# ---------------------------------------------------------------- grouping and recognising


_PART_NAMES = {"mag": "magnitude", "phase": "phase", "real": "real", "imag": "imaginary"}


@dataclass(eq=False)
class ImageGroup:
    """Frames of one series with one part (magnitude, phase, real, imaginary) and kind."""

    frames: list[Frame]

    @property
    def first(self) -> Frame:
        return self.frames[0]

    @property
    def header(self) -> dict:
        return self.first.header

    @property
    def part(self) -> str:
        return self.first.part

    @property
    def kind(self) -> str:
        return self.first.kind

    @property
    def series_number(self) -> int:
        return self.first.series_number

    @property
    def n_files(self) -> int:
        return len({f.path for f in self.frames})

    @property
    def echo_times_ms(self) -> list[Decimal]:
        return sorted({f.echo_time_ms for f in self.frames if f.echo_time_ms is not None})

    @property
    def sequence(self) -> tuple[str, ...]:
        return _tokens(self.header.get("ScanningSequence"))

    @property
    def series_label(self) -> str:
        name = self.header.get("SeriesDescription") or self.header.get("ProtocolName") or ""
        return f"series {self.series_number} '{name}'"

    @property
    def label(self) -> str:
        return self.series_label + ("" if self.part == "mag" else f", {_PART_NAMES[self.part]}")

    def geometry(self) -> tuple:
        f = self.first
        normal = np.cross(f.orientation[:3], f.orientation[3:])
        positions = tuple(sorted({round(float(fr.position @ normal), 1) for fr in self.frames}))
        return (f.shape, tuple(np.round(f.orientation, 3)), tuple(np.round(f.spacing_mm, 3)), positions)

    def contrast_key(self) -> tuple:
        return (self.geometry(), tuple(self.echo_times_ms), self.sequence)

    def acquisition_key(self) -> tuple:
        f = self.first
        return (str(self.header.get("ProtocolName") or ""), self.sequence, self.geometry(), f.repetition_time_ms,
                round(f.flip_angle_deg or 0.0, 1), f.mt, self.kind)


def group_frames(frames: list[Frame]) -> list[ImageGroup]:
    """Frames grouped by series, part and kind, in series order."""
    groups: dict[tuple, list[Frame]] = defaultdict(list)
    for frame in frames:
        groups[(frame.series_uid, frame.part, frame.kind)].append(frame)
    order = {"mag": 0, "phase": 1, "real": 2, "imag": 3}
    return sorted((ImageGroup(g) for g in groups.values()), key=lambda g: (g.series_number, order[g.part], g.kind))


def _unusable(group: ImageGroup) -> str | None:
    """Why a group cannot be converted, or None."""
    if group.kind == "localizer":
        return "localizer / scout"
    if group.kind == "fatfraction":
        return "scanner fat-fraction map (bids_muscle computes its own)"
    if group.kind == "derived":
        return f"derived image ({'/'.join(group.first.image_type)}), not acquired data"
    if "EP" in group.sequence:
        return "echo-planar series (diffusion or functional), not a muscle-protocol input"
    if any(f.echo_time_ms is None for f in group.frames) and group.kind not in DIXON_KINDS:
        return "no EchoTime in the header"
    for te in group.echo_times_ms or [None]:
        try:
            stack_geometry([f for f in group.frames if f.echo_time_ms == te])
        except ConversionError as err:
            return str(err).split(": ", 1)[-1]
    syntax = group.header.get("TransferSyntaxUID")
    try:
        compressed = bool(syntax) and pydicom.uid.UID(syntax).is_compressed
    except ValueError:  # not a transfer syntax pydicom knows: let the decoder decide
        compressed = True
    if compressed:
        try:
            _frame_pixels([group.first])
        except ConversionError as err:
            return str(err).split(": ", 1)[-1]
    return None


@dataclass(eq=False)
class Acquisition:
    """Image groups that become one BIDS acquisition (all echoes and parts, or a pair)."""

    role: str  # MESE, MEGRE, MTR, T1w, TB1DAM
    groups: list[ImageGroup]
    rec: str | None = None
    region: str | None = None
    region_source: str = ""
    run: int | None = None

    @property
    def order(self) -> int:
        return min(g.series_number for g in self.groups)

    @property
    def label(self) -> str:
        return " + ".join(dict.fromkeys(g.series_label for g in self.groups))


def _spin_echo(sequence: tuple[str, ...]) -> bool:
    return "SE" in sequence and "GR" not in sequence and "IR" not in sequence


def _split_repeats(family: list[ImageGroup]) -> list[list[ImageGroup]]:
    """One acquisition per series when the same part and echo time come from several series (repeats)."""
    seen = set()
    for group in family:
        for te in group.echo_times_ms:
            if (group.part, te) in seen:
                return [[g] for g in family]
            seen.add((group.part, te))
    return [family]


def _multi_echo(members: list[ImageGroup]) -> tuple[list[Acquisition], list[Skipped]]:
    sequence = members[0].sequence
    if _spin_echo(sequence):
        magnitude = [g for g in members if g.part == "mag"]
        skipped = [Skipped(g.label, g.n_files, "phase, real and imaginary spin-echo images are not used") for g in members
                   if g.part != "mag"]
        if magnitude:
            return [Acquisition("MESE", magnitude)], skipped
        return [], skipped + [Skipped(members[0].label, 0, "multi-echo spin echo without magnitude images")]
    if "GR" in sequence:
        parts = {g.part for g in members}
        if "mag" in parts or {"real", "imag"} <= parts:
            return [Acquisition("MEGRE", members)], []
        return [], [Skipped(g.label, g.n_files, "gradient-echo phase without magnitude (or real and imaginary) images")
                    for g in members]
    name = "/".join(sequence) or "missing"
    return [], [Skipped(g.label, g.n_files, f"multi-echo series with ScanningSequence {name} is not recognised")
                for g in members]


def _looks_t1w(group: ImageGroup) -> bool:
    name = f"{group.header.get('SeriesDescription') or ''} {group.header.get('ProtocolName') or ''}"
    if _T1_NAME.search(name):
        return True
    f = group.first
    short = f.repetition_time_ms is not None and f.repetition_time_ms < 1000 and f.echo_time_ms < 30
    return "SE" in group.sequence and "IR" not in group.sequence and short


def _single_echo(groups: list[ImageGroup]) -> tuple[list[Acquisition], list[Skipped]]:
    acquisitions, skipped = [], []
    magnitude = []
    for g in groups:
        if g.part == "mag":
            magnitude.append(g)
        else:
            skipped.append(Skipped(g.label, g.n_files, f"{_PART_NAMES[g.part]} image of a single-echo series is not used"))
    mt_on = [g for g in magnitude if g.first.mt is True]
    mt_off = [g for g in magnitude if g.first.mt is False]
    plain = [g for g in magnitude if g.first.mt is None]
    for g_on in mt_on:
        partner = next((g for g in mt_off + plain if g.contrast_key() == g_on.contrast_key()), None)
        if partner is None:
            skipped.append(Skipped(g_on.label, g_on.n_files, "MT-on series without an MT-off series of the same geometry and TE"))
            continue
        (mt_off if partner in mt_off else plain).remove(partner)
        acquisitions.append(Acquisition("MTR", [g_on, partner]))
    skipped += [Skipped(g.label, g.n_files, "MT-off series without an MT-on series of the same geometry and TE")
                for g in mt_off]
    paired = set()
    for a in plain:
        for b in plain:
            if a in paired or b in paired or a is b:
                continue
            same = a.contrast_key() == b.contrast_key() and a.first.repetition_time_ms == b.first.repetition_time_ms
            fa, fb = a.first.flip_angle_deg, b.first.flip_angle_deg
            if same and fa and fb and abs(fb - 2 * fa) <= 0.5:
                acquisitions.append(Acquisition("TB1DAM", [a, b]))
                paired.update((a, b))
    for g in plain:
        if g in paired:
            continue
        if _looks_t1w(g):
            acquisitions.append(Acquisition("T1w", [g]))
            continue
        f = g.first
        skipped.append(Skipped(g.label, g.n_files, (
            f"single-echo series (ScanningSequence {'/'.join(g.sequence) or 'missing'}, TE {_ms(f.echo_time_ms)} ms, "
            f"TR {_ms(f.repetition_time_ms)} ms) not recognised as T1w, MT on/off or double-angle B1")))
    return acquisitions, skipped


def recognise(groups: list[ImageGroup]) -> tuple[list[Acquisition], list[Skipped]]:
    """Acquisitions bids_muscle uses, and every group left out with the reason."""
    acquisitions, skipped, pool = [], [], []
    for g in groups:
        reason = _unusable(g)
        if reason:
            skipped.append(Skipped(g.label, g.n_files, reason))
        elif g.kind in DIXON_KINDS:
            if g.part == "mag":
                acquisitions.append(Acquisition("T1w", [g], rec=g.kind))
            else:
                skipped.append(Skipped(g.label, g.n_files, f"{_PART_NAMES[g.part]} image of a scanner Dixon output is not used"))
        else:
            pool.append(g)
    families: dict[tuple, list[ImageGroup]] = defaultdict(list)
    for g in pool:
        families[g.acquisition_key()].append(g)
    single = []
    for family in families.values():
        for members in _split_repeats(family):
            if len({te for g in members for te in g.echo_times_ms}) >= 2:
                found, left = _multi_echo(members)
                acquisitions += found
                skipped += left
            else:
                single += members
    found, left = _single_echo(single)
    return sorted(acquisitions + found, key=lambda a: a.order), skipped + left


def guess_region(header: dict) -> tuple[str | None, str]:
    """Region (``thigh``/``calf``) named by the header, and which field named it.

    BodyPartExamined is read first (DICOM's ``LEG`` is the lower leg), then the
    anatomic region code, the series description and the protocol name. The
    study description is not used: it covers every series of the visit.
    """
    for key in ("BodyPartExamined", "AnatomicRegion", "SeriesDescription", "ProtocolName"):
        text = str(header.get(key) or "").strip()
        if not text:
            continue
        if text.upper() in _BODY_PART_REGION:
            return _BODY_PART_REGION[text.upper()], f"{key} {text}"
        hits = {region for region, pattern in _TEXT_REGION if pattern.search(text.lower())}
        if len(hits) == 1:
            return hits.pop(), f"{key} '{text}'"
    return None, ""


# ---------------------------------------------------------------- planning


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
        return float(_decimal(value) or 0)
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
        if siemens and _spin_echo(_tokens(header.get("ScanningSequence"))) and first.flip_angle_deg > 90:
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
                skipped.append(Skipped(g.label, g.n_files, f"echo times {', '.join(map(_ms, sorted(frames)))} ms differ "
                                       f"from the {_PART_NAMES[reference]} echoes {', '.join(map(_ms, echo_times))} ms"))
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
