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

The work is split by job: :mod:`bids_muscle.dicom.read` reads headers and
pixels, :mod:`bids_muscle.dicom.recognise` groups frames into acquisitions,
:mod:`bids_muscle.dicom.write` plans the BIDS files and writes them. The
command line is ``bids_muscle-dicom2bids`` (:mod:`bids_muscle.cli.dicom2bids`).
"""

from bids_muscle.dicom.read import (
    DICOMDIR,
    ENHANCED_MR,
    MR_IMAGE,
    SIDECAR_FIELDS,
    ConversionError,
    Frame,
    Skipped,
    load_volume,
    phase_scale_to_radians,
    read_frames,
    scan_folder,
    stack_geometry,
)
from bids_muscle.dicom.recognise import DIXON_KINDS, Acquisition, ImageGroup, group_frames, guess_region, recognise
from bids_muscle.dicom.write import CONVERTER, ConversionPlan, PlannedImage, convert, image_data, plan_conversion, write_plan

__all__ = [
    "CONVERTER",
    "DICOMDIR",
    "DIXON_KINDS",
    "ENHANCED_MR",
    "MR_IMAGE",
    "SIDECAR_FIELDS",
    "Acquisition",
    "ConversionError",
    "ConversionPlan",
    "Frame",
    "ImageGroup",
    "PlannedImage",
    "Skipped",
    "convert",
    "group_frames",
    "guess_region",
    "image_data",
    "load_volume",
    "phase_scale_to_radians",
    "plan_conversion",
    "read_frames",
    "recognise",
    "scan_folder",
    "stack_geometry",
    "write_plan",
]
