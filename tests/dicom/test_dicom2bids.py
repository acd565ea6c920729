"""DICOM to BIDS conversion: synthetic series built with pydicom, and the real Siemens and GE folders.

Synthetic series carry a pixel pattern unique to every voxel, so the tests
check where each DICOM pixel lands in scanner space, not only that files exist.
"""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import nibabel as nb
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bids_muscle import bids, dicom
from bids_muscle.cli.dicom2bids import main as cli_main

ROWS, COLS = 12, 10
# oblique axial slices: rows and columns tilted, so a wrong axis order or sign moves every voxel
ROW_COS = np.array([0.96, 0.28, 0.0])
COL_COS = np.array([-0.28 * 0.99, 0.96 * 0.99, np.sqrt(1 - 0.99**2)])
SPACING = (1.5, 1.25)  # between rows, between columns (mm)
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "SECRET1234", "PatientBirthDate": "19610203"}


def _pattern(rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """A value unique to every in-plane pixel."""
    return 100 + 10 * np.arange(rows)[:, None] + np.arange(cols)[None, :]


def _slice_positions(n_slices: int, gap_mm: float = 4.0) -> list[np.ndarray]:
    normal = np.cross(ROW_COS, COL_COS)
    return [np.array([-20.0, 15.0, 30.0]) + k * gap_mm * normal for k in range(n_slices)]


def _base(sop_class: str, series_uid: str, number: int, description: str, manufacturer: str, body_part: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDescription = description.replace("#", "")
    ds.ProtocolName = description.split("#")[0]
    ds.Manufacturer = manufacturer
    ds.MagneticFieldStrength = "3"
    ds.BodyPartExamined = body_part
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    return ds


def write_series(folder: Path, number: int, description: str, echo_times_ms=("10",), *, n_slices: int = 3,
                 sequence: str = "SE", image_type=("ORIGINAL", "PRIMARY", "M", "ND"), tr_ms: str = "3000",
                 flip_deg: str = "90", manufacturer: str = "SIEMENS", body_part: str = "THIGH", values=None,
                 extra=None) -> None:
    """Classic single-frame MR files, one per slice and echo, written in shuffled order.

    ``values(echo_index, slice_index)`` gives the stored 2D pixels (int16);
    ``extra(ds)`` edits each dataset before it is saved.
    ``description`` may carry ``#suffix`` to differ from the protocol name.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    values = values or (lambda e, s: _pattern() + 1000 * e + 200 * s)
    rng = np.random.default_rng(number)
    jobs = [(e, s) for e in range(len(echo_times_ms)) for s in range(n_slices)]
    for instance, k in enumerate(rng.permutation(len(jobs)), start=1):
        e, s = jobs[k]
        ds = _base(dicom.MR_IMAGE, series_uid, number, description, manufacturer, body_part)
        ds.InstanceNumber = instance
        ds.ImageType = list(image_type)
        ds.ScanningSequence = sequence
        ds.EchoTime = echo_times_ms[e]
        ds.EchoNumbers = e + 1
        ds.RepetitionTime = tr_ms
        ds.FlipAngle = flip_deg
        ds.ImagePositionPatient = [f"{v:.6f}" for v in _slice_positions(n_slices)[s]]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in np.concatenate([ROW_COS, COL_COS])]
        ds.PixelSpacing = [str(v) for v in SPACING]
        ds.SliceThickness = "4"
        pixels = np.asarray(values(e, s), dtype=np.int16)
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.tobytes()
        if extra:
            extra(ds)
        pydicom.dcmwrite(folder / f"s{number:03d}_{series_uid[-6:]}_{instance:04d}.dcm", ds, enforce_file_format=True)


def _load(path: Path) -> np.ndarray:
    return np.asarray(nb.load(path).dataobj)


def _sidecars(root: Path) -> list[Path]:
    return sorted(root.rglob("*.json"))


# ---------------------------------------------------------------- classic series


def test_classic_multi_echo_spin_echo_lands_where_the_headers_say(tmp_path):
    write_series(tmp_path / "dicom", 4, "se_mc_17", ("10.9", "21.8", "32.7"), n_slices=4, flip_deg="180")
    plan = dicom.convert(tmp_path / "dicom", tmp_path / "bids", "01")
    anat = tmp_path / "bids/sub-01/anat"
    assert [img.relpath.name for img in plan.images] == [f"sub-01_acq-thigh_echo-{k}_MESE.nii.gz" for k in (1, 2, 3)]
    assert not plan.skipped
    for k, te in enumerate(("10.9", "21.8", "32.7"), start=1):
        meta = json.loads((anat / f"sub-01_acq-thigh_echo-{k}_MESE.json").read_text())
        assert Decimal(repr(meta["EchoTime"])) * 1000 == Decimal(te)
        assert meta["RepetitionTime"] == 3.0 and meta["MagneticFieldStrength"] == 3.0
        assert meta["Manufacturer"] == "SIEMENS" and meta["RefocusingFlipAngle"] == 180.0
    # every DICOM pixel (row i, column j) of every slice sits at its LPS position in the NIfTI
    img = nb.load(anat / "sub-01_acq-thigh_echo-2_MESE.nii.gz")
    data, to_voxel = np.asarray(img.dataobj), np.linalg.inv(img.affine)
    i, j = np.meshgrid(np.arange(ROWS), np.arange(COLS), indexing="ij")
    for s, position in enumerate(_slice_positions(4)):
        lps = position + j[..., None] * SPACING[1] * ROW_COS + i[..., None] * SPACING[0] * COL_COS
        ras = lps * [-1, -1, 1]
        voxel = ras @ to_voxel[:3, :3].T + to_voxel[:3, 3]
        assert np.allclose(voxel, np.round(voxel), atol=1e-4)
        x, y, z = np.round(voxel).astype(int).transpose(2, 0, 1)
        assert np.array_equal(data[x, y, z], _pattern() + 1000 + 200 * s)
    assert data.dtype == np.int16


def test_orientation_matches_dcm2niix(tmp_path):
    dcm2niix = pytest.importorskip("dcm2niix")
    write_series(tmp_path / "dicom", 4, "se_mc", ("15", "30"), n_slices=5)
    dicom.convert(tmp_path / "dicom", tmp_path / "bids", "01")
    (tmp_path / "ref").mkdir()
    subprocess.run([dcm2niix.bin, "-z", "y", "-b", "n", "-f", "e%e", "-o", tmp_path / "ref", tmp_path / "dicom"],
                   check=True, capture_output=True)
    ours = nb.as_closest_canonical(nb.load(tmp_path / "bids/sub-01/anat/sub-01_acq-thigh_echo-2_MESE.nii.gz"))
    ref = nb.as_closest_canonical(nb.load(tmp_path / "ref/e2.nii.gz"))
    assert np.allclose(ours.affine, ref.affine, atol=1e-3)
    assert np.array_equal(np.asarray(ours.dataobj), np.asarray(ref.dataobj))


def test_unrecognised_series_are_skipped_with_a_reason(tmp_path):
    dicom_dir = tmp_path / "dicom"
    write_series(dicom_dir, 2, "localizer", ("5",), image_type=("ORIGINAL", "PRIMARY", "M", "ND"), sequence="GR")
    write_series(dicom_dir, 3, "ep2d_diff", ("80",), sequence="EP")
    write_series(dicom_dir, 4, "se_mc", ("10", "20", "30"))
    write_series(dicom_dir, 5, "gre_single", ("4",), sequence="GR", tr_ms="20", flip_deg="15")
    write_series(dicom_dir, 6, "t2_map", ("0",), image_type=("DERIVED", "PRIMARY", "T2_MAP", "ND"))
    (dicom_dir / "notes.txt").write_text("not an image")
    screen = _base("1.2.840.10008.5.1.4.1.1.7", generate_uid(), 9, "screen save", "SIEMENS", "THIGH")
    screen.Rows = screen.Columns = 2
    screen.PixelData = np.zeros((2, 2), np.int16).tobytes()
    pydicom.dcmwrite(dicom_dir / "screen.dcm", screen, enforce_file_format=True)
    plan = dicom.convert(dicom_dir, tmp_path / "bids", "01")
    assert [img.relpath.name for img in plan.images] == [f"sub-01_acq-thigh_echo-{k}_MESE.nii.gz" for k in (1, 2, 3)]
    reasons = {item.what.split("'")[1] if "'" in item.what else item.what: item.reason for item in plan.skipped}
    assert reasons["localizer"] == "localizer / scout"
    assert "echo-planar" in reasons["ep2d_diff"]
    assert "not recognised as T1w, MT on/off or double-angle B1" in reasons["gre_single"]
    assert "derived image" in reasons["t2_map"]
    assert reasons["notes.txt"] == "not DICOM"
    assert reasons["screen.dcm"] == "not an MR image storage object (SOP class Secondary Capture Image Storage)"
    report = plan.report()
    assert "skipped 6:" in report and "gre_single" in report


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    write_series(tmp_path / "dicom", 4, "se_mc", ("10", "20"))
    rc = cli_main([str(tmp_path / "dicom"), str(tmp_path / "bids"), "--participant-label", "sub-07",
                   "--session-label", "ses-2", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "sub-07/ses-2/anat/sub-07_ses-2_acq-thigh_echo-2_MESE.nii.gz" in out
    assert not (tmp_path / "bids").exists()


def test_existing_files_are_kept_without_overwrite(tmp_path, capsys):
    write_series(tmp_path / "dicom", 4, "se_mc", ("10", "20"))
    args = [str(tmp_path / "dicom"), str(tmp_path / "bids"), "--participant-label", "01"]
    assert cli_main(args) == 0
    target = tmp_path / "bids/sub-01/anat/sub-01_acq-thigh_echo-1_MESE.json"
    target.write_text("{}")
    assert cli_main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert target.read_text() == "{}"
    assert cli_main([*args, "--overwrite"]) == 0
    assert json.loads(target.read_text())["EchoTime"] == 0.01
    assert (tmp_path / "bids/participants.tsv").read_text() == "participant_id\nsub-01\n"


def test_sidecars_hold_no_patient_data(tmp_path):
    write_series(tmp_path / "dicom", 4, "se_mc", ("10", "20"),
                 extra=lambda ds: setattr(ds, "PatientAge", "064Y") or setattr(ds, "InstitutionName", "St Elsewhere"))
    dicom.convert(tmp_path / "dicom", tmp_path / "bids", "01")
    texts = [p.read_text() for p in _sidecars(tmp_path / "bids")] + [(tmp_path / "bids/participants.tsv").read_text()]
    assert len(texts) == 4
    for text in texts:
        for forbidden in ("PatientName", "PatientID", "PatientBirthDate", "Doe", "SECRET1234", "19610203", "1961-02-03",
                          "064Y", "Elsewhere", "1.2.3.4"):
            assert forbidden not in text


def test_region_is_guessed_from_the_header_or_refused():
    assert dicom.guess_region({"BodyPartExamined": "LEG"})[0] == "calf"  # DICOM LEG is the lower leg
    assert dicom.guess_region({"BodyPartExamined": "THIGH"})[0] == "thigh"
    assert dicom.guess_region({"BodyPartExamined": "EXTREMITY", "SeriesDescription": "T2 calves"})[0] == "calf"
    assert dicom.guess_region({"ProtocolName": "Oberschenkel MESE"})[0] == "thigh"
    assert dicom.guess_region({"SeriesDescription": "thigh and calf"}) == (None, "")
    assert dicom.guess_region({"SeriesDescription": "mese"}) == (None, "")


def test_unknown_region_needs_the_option(tmp_path):
    write_series(tmp_path / "dicom", 4, "se_mc", ("10", "20"), body_part="EXTREMITY")
    with pytest.raises(dicom.ConversionError, match="--region thigh or --region calf"):
        dicom.plan_conversion(tmp_path / "dicom", "01")
    plan = dicom.plan_conversion(tmp_path / "dicom", "01", region="calf")
    assert plan.images[0].relpath.name == "sub-01_acq-calf_echo-1_MESE.nii.gz"


def test_ge_phase_comes_from_the_real_and_imaginary_images(tmp_path):
    rng = np.random.default_rng(3)
    truth = rng.uniform(-np.pi, np.pi, (2, 3, ROWS, COLS))  # echo, slice
    amplitude = 2000 + 100 * rng.random((2, 3, ROWS, COLS))
    parts = {0: amplitude, 1: truth * 1386, 2: amplitude * np.cos(truth), 3: amplitude * np.sin(truth)}
    for ge_type, image in parts.items():
        def tag(ds, ge_type=ge_type):
            ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x2F, "SS", ge_type)
        write_series(tmp_path / "dicom", 18, f"Ax B0map#{ge_type}", ("3.9", "6.3"), sequence="GR", tr_ms="700",
                     flip_deg="50", manufacturer="GE MEDICAL SYSTEMS", body_part="LEG",
                     image_type=("ORIGINAL", "PRIMARY", "OTHER"), values=lambda e, s, im=image: np.rint(im[e, s]),
                     extra=tag)
    plan = dicom.convert(tmp_path / "dicom", tmp_path / "bids", "01")
    names = {img.relpath.name for img in plan.images}
    assert names == {f"sub-01_acq-calf_echo-{e}_part-{p}_MEGRE.nii.gz" for e in (1, 2) for p in ("mag", "phase", "real", "imag")}
    (phase_skip,) = plan.skipped
    assert "computed in radians from the real and imaginary" in phase_skip.reason
    anat = tmp_path / "bids/sub-01/anat"
    phase = _load(anat / "sub-01_acq-calf_echo-2_part-phase_MEGRE.nii.gz")
    expected = np.stack([truth[1, s].T for s in range(3)], axis=-1)
    assert np.abs(np.angle(np.exp(1j * (phase - expected)))).max() < 2e-3  # integer rounding of real/imaginary
    meta = json.loads((anat / "sub-01_acq-calf_echo-2_part-phase_MEGRE.json").read_text())
    assert meta["Units"] == "rad" and meta["EchoTime"] == 0.0063 and meta["MagneticFieldStrength"] == 3.0


# ---------------------------------------------------------------- enhanced multi-frame


def write_enhanced_megre(path: Path, echo_times_ms=(2.3, 4.6, 6.9), n_slices: int = 3) -> np.ndarray:
    """One enhanced MR file: magnitude and phase frames of a multi-echo GRE, echo times per frame.

    Returns the phase in radians, shape (echo, slice, rows, cols).
    """
    ds = _base(dicom.ENHANCED_MR[0], generate_uid(), 7, "mFFE calf", "Philips Medical Systems", "CALF")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.EchoPulseSequence = "GRADIENT"
    shared = Dataset()
    shared.PlaneOrientationSequence = [Dataset()]
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [f"{v:.6f}" for v in np.concatenate([ROW_COS, COL_COS])]
    shared.PixelMeasuresSequence = [Dataset()]
    shared.PixelMeasuresSequence[0].PixelSpacing = [str(v) for v in SPACING]
    shared.PixelMeasuresSequence[0].SliceThickness = "4"
    shared.MRTimingAndRelatedParametersSequence = [Dataset()]
    shared.MRTimingAndRelatedParametersSequence[0].RepetitionTime = 25.0
    shared.MRTimingAndRelatedParametersSequence[0].FlipAngle = 12.0
    ds.SharedFunctionalGroupsSequence = [shared]
    phase = np.random.default_rng(0).uniform(-3.1, 3.1, (len(echo_times_ms), n_slices, ROWS, COLS))
    frames, pixels = [], []
    for component in ("MAGNITUDE", "PHASE"):
        for e, te in enumerate(echo_times_ms):
            for s in range(n_slices)[::-1]:
                item = Dataset()
                item.PlanePositionSequence = [Dataset()]
                item.PlanePositionSequence[0].ImagePositionPatient = [f"{v:.6f}" for v in _slice_positions(n_slices)[s]]
                item.MREchoSequence = [Dataset()]
                item.MREchoSequence[0].EffectiveEchoTime = te
                item.MRImageFrameTypeSequence = [Dataset()]
                item.MRImageFrameTypeSequence[0].FrameType = ["ORIGINAL", "PRIMARY", component[0], "NONE"]
                item.MRImageFrameTypeSequence[0].ComplexImageComponent = component
                item.PixelValueTransformationSequence = [Dataset()]
                scaling = item.PixelValueTransformationSequence[0]
                if component == "PHASE":
                    scaling.RescaleSlope, scaling.RescaleIntercept = "0.001", "0"
                    pixels.append(np.rint(phase[e, s] * 1000))
                else:
                    scaling.RescaleSlope, scaling.RescaleIntercept = "1", "0"
                    pixels.append(_pattern() + 1000 * e + 200 * s)
                frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = ROWS, COLS
    ds.PixelData = np.asarray(pixels, dtype=np.int16).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return phase


def test_enhanced_multiframe_echo_times_come_from_the_frames(tmp_path):
    (tmp_path / "dicom").mkdir()
    phase = write_enhanced_megre(tmp_path / "dicom/enhanced.dcm")
    plan = dicom.convert(tmp_path / "dicom", tmp_path / "bids", "01")
    assert not plan.skipped
    anat = tmp_path / "bids/sub-01/anat"
    for k, te in enumerate((0.0023, 0.0046, 0.0069), start=1):
        mag = anat / f"sub-01_acq-calf_echo-{k}_part-mag_MEGRE"
        meta = json.loads(mag.with_suffix(".json").read_text())
        assert meta["EchoTime"] == te and meta["RepetitionTime"] == 0.025 and meta["FlipAngle"] == 12.0
        data = _load(mag.with_suffix(".nii.gz"))
        assert np.array_equal(data[..., 0], (_pattern() + 1000 * (k - 1)).T)  # slices sorted along the normal
        ph = _load(anat / f"sub-01_acq-calf_echo-{k}_part-phase_MEGRE.nii.gz")
        assert np.allclose(ph[..., 2], phase[k - 1, 2].T, atol=6e-4)
        assert json.loads((anat / f"sub-01_acq-calf_echo-{k}_part-phase_MEGRE.json").read_text())["Units"] == "rad"


# ---------------------------------------------------------------- the app reads what is written


def test_app_finds_every_recognised_series(tmp_path):
    dicom_dir = tmp_path / "dicom"
    write_series(dicom_dir, 2, "se_mc", ("10", "20", "30"), flip_deg="160")
    write_series(dicom_dir, 3, "gre_me", ("2.5", "5", "7.5"), sequence="GR", tr_ms="30", flip_deg="10")
    write_series(dicom_dir, 4, "gre_me#_phase", ("2.5", "5", "7.5"), sequence="GR", tr_ms="30", flip_deg="10",
                 image_type=("ORIGINAL", "PRIMARY", "P", "ND"), values=lambda e, s: _pattern() * 20 - 4096,
                 extra=lambda ds: setattr(ds, "RescaleIntercept", "0"))
    write_series(dicom_dir, 5, "gre_MT_off", ("4",), sequence="GR", tr_ms="35", flip_deg="8")
    write_series(dicom_dir, 6, "gre_MT_on", ("4",), sequence="GR", tr_ms="45", flip_deg="8")
    for number, dixon in ((7, "WATER"), (8, "FAT"), (9, "IN_PHASE")):
        write_series(dicom_dir, number, f"vibe_dixon#_{dixon}", ("2.4",), sequence="GR", tr_ms="7", flip_deg="9",
                     image_type=("DERIVED", "PRIMARY", "DIXON", dixon))
    write_series(dicom_dir, 10, "b1_dam#60", ("14",), flip_deg="60", tr_ms="4000")
    write_series(dicom_dir, 11, "b1_dam#120", ("14",), flip_deg="120", tr_ms="4000")
    write_series(dicom_dir, 12, "t1_tse_tra", ("12",), tr_ms="600")
    plan = dicom.convert(dicom_dir, tmp_path / "bids", "01")
    assert not plan.skipped, plan.report()
    assert len(plan.notes) == 8

    (rin,) = bids.collect_inputs(bids.load_layout(tmp_path / "bids"), "01", None)
    assert rin.region == "thigh"
    assert rin.mese.echo_times_s == [0.01, 0.02, 0.03] and rin.refocusing_flip_angle_deg == 160.0
    assert rin.megre_mag.echo_times_s == rin.megre_phase.echo_times_s == [0.0025, 0.005, 0.0075]
    assert rin.field_strength_t == 3.0
    assert rin.mt_on.name == "sub-01_acq-thigh_mt-on_MTR.nii.gz" and rin.mt_off.name == "sub-01_acq-thigh_mt-off_MTR.nii.gz"
    assert rin.dixon_water.name == "sub-01_acq-thigh_rec-water_T1w.nii.gz" and rin.dixon_fat is not None
    assert rin.t1w.name == "sub-01_acq-thigh_T1w.nii.gz"
    assert [p.name for p in rin.b1_dam.files] == ["sub-01_acq-thigh_flip-1_TB1DAM.nii.gz", "sub-01_acq-thigh_flip-2_TB1DAM.nii.gz"]
    assert [m["FlipAngle"] for m in rin.b1_dam.metadata] == [60.0, 120.0]
    assert (tmp_path / "bids/sub-01/anat/sub-01_acq-thigh_rec-inphase_T1w.nii.gz").exists()
    # Siemens phase -4096..4095 is -pi..pi
    phase = _load(rin.megre_phase.files[0])
    assert np.allclose(phase[..., 0], ((_pattern() * 20 - 4096) * np.pi / 4096).T, atol=1e-5)


# ---------------------------------------------------------------- real scans, then the app


@pytest.fixture(scope="module")
def real_bids(shared_data, tmp_path_factory):
    """Both real DICOM folders converted into one dataset, as two participants."""
    siemens, ge = shared_data / "thigh_mese_siemens_dicom", shared_data / "calf_megre_ge_dicom"
    if not (siemens.is_dir() and ge.is_dir()):
        pytest.skip("real DICOM folders not available")
    root = tmp_path_factory.mktemp("dicom2bids") / "bids"
    # the Siemens header says CALF but the images are thighs
    plans = {
        "siemens": dicom.convert(siemens, root, "siemens", region="thigh"),
        "ge": dicom.convert(ge, root, "ge"),
    }
    return root, plans, {"siemens": siemens, "ge": ge}


def _header_echo_times(folder: Path) -> set[Decimal]:
    return {Decimal(str(pydicom.dcmread(p, stop_before_pixels=True).EchoTime)) for p in folder.iterdir()}


def test_real_echo_times_match_the_headers_exactly(real_bids):
    _, plans, folders = real_bids
    for label, n_echoes in (("siemens", 17), ("ge", 2)):
        sidecars = [img.sidecar for img in plans[label].images]
        converted = {Decimal(repr(meta["EchoTime"])) * 1000 for meta in sidecars}
        assert len(converted) == n_echoes
        assert converted == _header_echo_times(folders[label])
        assert all(meta.get("MagneticFieldStrength") == 3.0 for meta in sidecars)
    ge_names = {img.relpath.name for img in plans["ge"].images}
    assert "sub-ge_acq-calf_echo-2_part-imag_MEGRE.nii.gz" in ge_names  # LEG in the GE header means calf
    assert len(ge_names) == 8 and len(plans["siemens"].images) == 17


def test_real_voxel_centres_match_dcm2niix(real_bids, tmp_path):
    dcm2niix = pytest.importorskip("dcm2niix")
    root, _, folders = real_bids
    pairs = {"siemens": ("sub-siemens/anat/sub-siemens_acq-thigh_echo-17_MESE.nii.gz", "17"),
             "ge": ("sub-ge/anat/sub-ge_acq-calf_echo-2_part-mag_MEGRE.nii.gz", "2")}
    for label, (ours, echo) in pairs.items():
        out = tmp_path / label
        out.mkdir()
        subprocess.run([dcm2niix.bin, "-z", "y", "-b", "n", "-f", "e%e", "-o", out, folders[label]], check=True,
                       capture_output=True)
        # dcm2niix names GE phase, real and imaginary images e<n>_ph, e<n>_real, e<n>_imaginary
        a, b = nb.as_closest_canonical(nb.load(root / ours)), nb.as_closest_canonical(nb.load(out / f"e{echo}.nii.gz"))
        assert np.allclose(a.affine, b.affine, atol=1e-3), label
        assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)), label


@pytest.mark.slow
def test_app_gives_t2_maps_and_refuses_an_inseparable_dixon_from_real_conversions(real_bids):
    root, _, _ = real_bids
    out = root.parent / "out"
    proc = subprocess.run([sys.executable, "-m", "bids_muscle.cli.run", str(root), str(out), "participant", "--sloppy",
                           "-w", str(root.parent / "work")], check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    thigh = out / "sub-siemens/anat"
    water_t2_ms = _load(thigh / "sub-siemens_acq-thigh_desc-water_T2map.nii.gz") * 1000
    region = _load(thigh / "sub-siemens_acq-thigh_desc-muscleregion_mask.nii.gz") > 0
    assert (thigh / "sub-siemens_acq-thigh_T2map.nii.gz").exists()
    assert 25 < np.nanmedian(water_t2_ms[region]) < 45  # muscle water T2 at 3 T
    # the GE 2-echo GRE (TE 3.9 / 6.3 ms at 3 T) cannot separate water from fat: no fat fraction, a warning,
    # and the calves are still segmented on its first echo
    calf = out / "sub-ge/anat"
    assert not list(calf.glob("*FFmap*"))
    assert "sub-ge_acq-calf_echo-1_part-mag_MEGRE.nii.gz: echo times 3.90, 6.30 ms cannot separate water" in proc.stdout
    assert "cannot separate water from fat" in (out / "sub-ge.html").read_text()
    dseg = nb.load(next(calf.glob("sub-ge_acq-calf_*_dseg.nii.gz")))
    source = nb.load(root / "sub-ge/anat/sub-ge_acq-calf_echo-1_part-mag_MEGRE.nii.gz")
    assert dseg.shape == source.shape[:3] and np.allclose(dseg.affine, source.affine, atol=1e-4)
    assert len(np.unique(np.asarray(dseg.dataobj))) > 10


def test_former_module_name_gives_the_same_converter():
    from bids_muscle import dicom2bids

    assert set(dicom2bids.__all__) == set(dicom.__all__)
    assert all(getattr(dicom2bids, name) is getattr(dicom, name) for name in dicom.__all__)
