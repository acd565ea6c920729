from pathlib import Path

import nibabel as nb
import numpy as np

from bids_muscle.interfaces.agreement import compare_participant_segmentations, find_segmentations, reference_of


def _write(path: Path, data, affine=np.eye(4)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.Nifti1Image(np.asarray(data, np.int16), affine).to_filename(path)


def test_find_segmentations_skips_tissue_and_masks(tmp_path):
    anat = tmp_path / "sub-01/anat"
    for name in ("sub-01_acq-calf_desc-unet2d_dseg", "sub-01_acq-calf_desc-hrnet_dseg", "sub-01_acq-calf_desc-tissue_dseg",
                 "sub-01_acq-calf_desc-muscleregion_mask", "sub-01_acq-calf_dseg"):
        _write(anat / f"{name}.nii.gz", np.zeros((2, 2, 2)))
    found = find_segmentations(tmp_path)
    assert set(found) == {("01", "n/a", "calf")}
    assert set(found[("01", "n/a", "calf")]) == {"unet2d", "hrnet", ""}
    assert reference_of(found[("01", "n/a", "calf")]).name == "sub-01_acq-calf_dseg.nii.gz"
    assert reference_of({"a": Path("x"), "b": Path("y")}) is None


def test_pairs_and_reference_on_another_grid(tmp_path):
    out, ref = tmp_path / "out", tmp_path / "ref"
    labels = np.zeros((8, 8, 4), np.int16)
    labels[1:4, 1:4] = 41  # right gastrocnemius medialis
    labels[5:7, 5:7] = 61  # left one
    shifted = np.roll(labels, 1, axis=0)
    _write(out / "sub-01/anat/sub-01_acq-calf_desc-unet2d_dseg.nii.gz", labels)
    _write(out / "sub-01/anat/sub-01_acq-calf_desc-hrnet_dseg.nii.gz", shifted)
    # the reference on a grid of half the voxel size along x
    fine = np.repeat(labels, 2, axis=0)
    _write(ref / "sub-01/anat/sub-01_acq-calf_dseg.nii.gz", fine, np.diag([0.5, 1.0, 1.0, 1.0]))
    table = compare_participant_segmentations(out, ref, {"01": "siteA"})
    pairs = set(zip(table["network_a"], table["network_b"]))
    assert pairs == {("hrnet", "unet2d"), ("hrnet", "reference"), ("unet2d", "reference")}
    unet_ref = table[(table["network_a"] == "unet2d") & (table["network_b"] == "reference") & (table["label"] == 41)]
    assert unet_ref["dice"].item() > 0.85
    gm = table[(table["network_a"] == "hrnet") & (table["network_b"] == "unet2d") & (table["label"] == 41)]
    assert abs(gm["dice"].item() - 2 * 6 / 18) < 1e-9  # 3x3 squares shifted by one voxel: overlap 2x3 per slice
    absent = table[(table["label"] == 42) & (table["network_b"] == "reference")]
    assert not absent["absent"].any() and (table["site"] == "siteA").all()
