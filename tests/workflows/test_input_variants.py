"""Other acquisitions users bring: 2-echo spin echo, scanner Dixon water/fat images, double-angle B1."""

import json
import subprocess
import sys

import nibabel as nb
import numpy as np
import pytest

from bids_muscle.phantom.dataset import generate_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def variant_run(tmp_path_factory):
    root = generate_dataset(tmp_path_factory.mktemp("variants") / "bids", n_participants=1, seed=5, regions=("calf",), n_slices=4)
    anat = root / "sub-01/anat"
    truth = root / "derivatives/truth/sub-01/anat"
    load = lambda p: np.asarray(nb.load(p).dataobj, dtype=np.float32)  # noqa: E731
    affine = nb.load(anat / "sub-01_acq-calf_T1w.nii.gz").affine
    for path in list(anat.glob("*_MEGRE.*")) + list(anat.glob("*_MESE.*")):
        path.unlink()
    pd_map, ff = load(truth / "sub-01_acq-calf_PDmap.nii.gz"), load(truth / "sub-01_acq-calf_FFmap.nii.gz") / 100.0
    b1 = load(truth / "sub-01_acq-calf_TB1map.nii.gz")
    water_t2 = np.maximum(load(truth / "sub-01_acq-calf_desc-water_T2map.nii.gz"), 0.01)

    def spin_echo(te_s):  # separate single-echo acquisitions: plain bi-exponential decay
        return 1000 * pd_map * ((1 - ff) * np.exp(-te_s / water_t2) + ff * np.exp(-te_s / 0.14))

    images = {
        ("anat", "sub-01_acq-calf_echo-1_MESE"): (spin_echo(0.016), {"EchoTime": 0.016}),
        ("anat", "sub-01_acq-calf_echo-2_MESE"): (spin_echo(0.056), {"EchoTime": 0.056}),
        ("anat", "sub-01_acq-calf_rec-water_T1w"): (1000 * pd_map * (1 - ff), {"EchoTime": 0.00345}),
        ("anat", "sub-01_acq-calf_rec-fat_T1w"): (1000 * pd_map * ff, {"EchoTime": 0.00345}),
        ("fmap", "sub-01_acq-calf_flip-1_TB1DAM"): (1000 * pd_map * np.sin(np.deg2rad(60) * b1), {"FlipAngle": 60}),
        ("fmap", "sub-01_acq-calf_flip-2_TB1DAM"): (1000 * pd_map * np.sin(np.deg2rad(120) * b1), {"FlipAngle": 120}),
    }
    for (folder, stem), (data, meta) in images.items():
        (root / "sub-01" / folder).mkdir(exist_ok=True)
        nb.Nifti1Image(data.astype(np.float32), affine).to_filename(root / "sub-01" / folder / f"{stem}.nii.gz")
        (root / "sub-01" / folder / f"{stem}.json").write_text(json.dumps({**meta, "MagneticFieldStrength": 3.0}))
    out = root.parent / "out"
    proc = subprocess.run([sys.executable, "-m", "bids_muscle.cli.run", str(root), str(out), "participant", "--sloppy",
                           "--write-probseg", "-w", str(root.parent / "work")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out / "sub-01/anat", truth


def _load(path):
    return np.asarray(nb.load(path).dataobj, dtype=float)


def test_two_echo_spin_echo_gives_a_twopoint_t2(variant_run):
    out, truth = variant_run
    t2 = _load(out / "sub-01_acq-calf_desc-twopoint_T2map.nii.gz")
    muscle = (_load(truth / "sub-01_acq-calf_dseg.nii.gz") > 0) & (_load(truth / "sub-01_acq-calf_FFmap.nii.gz") < 10)
    water_t2 = _load(truth / "sub-01_acq-calf_desc-water_T2map.nii.gz")
    # two points of a water + fat decay: the water T2, lengthened a little by the small fat share
    excess_ms = (t2[muscle] - water_t2[muscle]) * 1000
    assert 0 < np.nanmedian(excess_ms) < 6
    assert not (out / "sub-01_acq-calf_desc-water_T2map.nii.gz").exists()


def test_scanner_water_fat_images_give_the_fat_fraction(variant_run):
    out, truth = variant_run
    ff = _load(out / "sub-01_acq-calf_desc-dixon_FFmap.nii.gz")
    ff_true = _load(truth / "sub-01_acq-calf_FFmap.nii.gz")
    muscle = _load(truth / "sub-01_acq-calf_dseg.nii.gz") > 0
    assert np.nanmedian(np.abs(ff[muscle] - ff_true[muscle])) < 0.5


def test_imat_falls_back_to_the_threshold_without_mese_maps(variant_run):
    out, truth = variant_run
    meta = json.loads((out / "sub-01_acq-calf_desc-imat_mask.json").read_text())
    assert meta["Method"] == "threshold" and meta["RequestedMethod"] == "dcae"
    assert not (out / "sub-01_acq-calf_desc-imat_probseg.nii.gz").exists()
    imat = _load(out / "sub-01_acq-calf_desc-imat_mask.nii.gz") > 0
    imat_true = _load(truth / "sub-01_acq-calf_desc-imat_mask.nii.gz") > 0
    assert 2 * np.sum(imat & imat_true) / (imat.sum() + imat_true.sum()) > 0.8


def test_double_angle_b1(variant_run):
    out, truth = variant_run
    b1 = _load(out / "sub-01_acq-calf_desc-dam_TB1map.nii.gz")
    b1_true = _load(truth / "sub-01_acq-calf_TB1map.nii.gz")
    muscle = _load(truth / "sub-01_acq-calf_dseg.nii.gz") > 0
    assert np.nanmedian(np.abs(b1[muscle] - b1_true[muscle])) < 0.01
    sidecar = json.loads((out / "sub-01_acq-calf_desc-dam_TB1map.json").read_text())
    assert sidecar["Sources"] == ["bids:raw:sub-01/fmap/sub-01_acq-calf_flip-1_TB1DAM.nii.gz",
                                  "bids:raw:sub-01/fmap/sub-01_acq-calf_flip-2_TB1DAM.nii.gz"]
    table = (out / "sub-01_acq-calf_biomarkers.tsv").read_text().splitlines()[0].split("\t")
    assert "ff_dixon_percent_mean" in table


def test_probabilities_are_written_with_their_label_order(variant_run):
    out, _ = variant_run
    prob = nb.load(out / "sub-01_acq-calf_desc-unet2d_probseg.nii.gz")
    dseg = _load(out / "sub-01_acq-calf_desc-unet2d_dseg.nii.gz")
    labels = json.loads((out / "sub-01_acq-calf_desc-unet2d_probseg.json").read_text())["LabelIndices"]
    assert prob.shape == dseg.shape + (len(labels),) and len(labels) == 20
    data = np.asarray(prob.dataobj)
    inside = dseg > 0
    # the label of a voxel is the channel of highest probability
    assert np.mean(np.array(labels)[np.argmax(data[inside], axis=-1)] == dseg[inside]) > 0.95
