"""Recognising DICOM series: frames grouped by series, part and kind, then
joined into the acquisitions bids_muscle reads (MESE, MEGRE, MTR, T1w,
TB1DAM), with the region each was taken of.

Echoes of one acquisition split over several series (one series per echo, or
magnitude and phase apart) are joined when protocol name, geometry, TR and
flip angle agree. Everything not recognised is reported with the reason it
was skipped.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import pydicom

from bids_muscle.dicom.read import ConversionError, Frame, Skipped, frame_pixels, header_tokens, ms_text, stack_geometry

DIXON_KINDS = ("water", "fat", "inphase", "outphase")

_BODY_PART_REGION = {
    "THIGH": "thigh", "UPPERLEG": "thigh", "UPPER LEG": "thigh", "FEMUR": "thigh",
    # DICOM's LEG (SNOMED T-D9400) is the lower leg
    "LEG": "calf", "LOWERLEG": "calf", "LOWER LEG": "calf", "CALF": "calf", "TIBIA": "calf", "FIBULA": "calf",
}
_TEXT_REGION = (
    ("thigh", re.compile(r"thigh|femur|femoral|upper[\s_-]?leg|quadriceps|hamstring|oberschenkel|cuisse|coscia")),
    ("calf", re.compile(r"calf|calves|lower[\s_-]?leg|tibia|fibula|shank|unterschenkel|mollet|polpaccio")),
)
_T1_NAME = re.compile(r"(?<![a-z0-9])t1(?!\s*[_-]?\s*map)(w|[\s_-]|$|(?=[a-z]))", re.IGNORECASE)
#: Part entity value -> the word a report uses.
PART_NAMES = {"mag": "magnitude", "phase": "phase", "real": "real", "imag": "imaginary"}


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
        return header_tokens(self.header.get("ScanningSequence"))

    @property
    def series_label(self) -> str:
        name = self.header.get("SeriesDescription") or self.header.get("ProtocolName") or ""
        return f"series {self.series_number} '{name}'"

    @property
    def label(self) -> str:
        return self.series_label + ("" if self.part == "mag" else f", {PART_NAMES[self.part]}")

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
            frame_pixels([group.first])
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


def is_spin_echo(sequence: tuple[str, ...]) -> bool:
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
    if is_spin_echo(sequence):
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
            skipped.append(Skipped(g.label, g.n_files, f"{PART_NAMES[g.part]} image of a single-echo series is not used"))
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
            f"single-echo series (ScanningSequence {'/'.join(g.sequence) or 'missing'}, TE {ms_text(f.echo_time_ms)} ms, "
            f"TR {ms_text(f.repetition_time_ms)} ms) not recognised as T1w, MT on/off or double-angle B1")))
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
                skipped.append(Skipped(g.label, g.n_files, f"{PART_NAMES[g.part]} image of a scanner Dixon output is not used"))
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


