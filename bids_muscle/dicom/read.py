"""Reading DICOM: headers of classic and enhanced MR files into frames, and
the pixels of a stack of frames into an image and its affine.

Pixel data are read with pydicom (rescale slope and intercept applied; Philips
floating-point scale when present) and stacked along the slice normal; the
affine is built from ``ImagePositionPatient``/``ImageOrientationPatient``, so
every voxel has the same scanner position as in dcm2niix's output.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

ENHANCED_MR = ("1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.4")  # enhanced, legacy converted enhanced
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
DICOMDIR = "1.2.840.10008.1.3.10"

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


def header_decimal(value) -> Decimal | None:
    """A header number as Decimal with the digits written in the header (``10.9`` stays ``10.9``)."""
    if value is None or value == "":
        return None
    text = str(value) if isinstance(value, str | pydicom.valuerep.DSfloat) else repr(float(value))
    number = Decimal(text.strip())
    return number.normalize() if number != 0 else None


def ms_text(value: Decimal | None) -> str:
    """A time in ms as plain digits (``4100``, not ``4.1E+3``)."""
    return "n/a" if value is None else format(value, "f")


def _float(value) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def header_tokens(value) -> tuple[str, ...]:
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
    if any(t == "MT" or t.startswith("MT_") for t in header_tokens(header.get("ScanOptions"))):
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
    image_type = header_tokens(ds.get("ImageType"))
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
            frame_image_type = header_tokens(frame_type.get("FrameType")) if frame_type is not None else image_type
            philips = None  # Philips keeps the floating-point scale in a private per-frame sequence
            for elem in item:
                if elem.tag.group == 0x2005 and elem.VR == "SQ" and elem.value:
                    philips = _philips_scale(elem.value[0]) or philips
            frames.append(Frame(
                path=path, index=k, series_uid=series_uid, series_number=series_number, header=header,
                image_type=frame_image_type, part=_part_of(ds, frame_image_type, item),
                kind=_kind_of(frame_image_type, header) if frame_type is not None else kind,
                echo_time_ms=header_decimal(echo.get("EffectiveEchoTime") if echo is not None else ds.get("EchoTime")),
                repetition_time_ms=header_decimal(timing.get("RepetitionTime") if timing is not None else ds.get("RepetitionTime")),
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
        echo_time_ms=header_decimal(ds.get("EchoTime")), repetition_time_ms=header_decimal(ds.get("RepetitionTime")),
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


def frame_pixels(frames: list[Frame]) -> list[np.ndarray]:
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
    for frame, pixels in zip(ordered, frame_pixels(ordered), strict=True):
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


