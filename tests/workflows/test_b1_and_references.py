"""Inputs beyond the default protocol: a double-angle B1 pair alone, a PDw as the only anatomy, a dataset B1 map.

One run of the app on three calf participants of the phantom:

* sub-01 has only the ``fmap`` TB1DAM pair;
* sub-02 has only a PDw image (made from the truth);
* sub-03 has MESE, T1w, the TB1DAM pair and a ``TB1map`` deliberately
  scaled to 70 % of the true B1, so that the fits show they used it.
"""

import json
import subprocess
import sys

import nibabel as nb
import numpy as np
import pytest

from bids_muscle.phantom import anatomy
from bids_muscle.phantom.dataset import generate_dataset
from bids_muscle.phantom.signals import SIGNAL_SCALE, add_rician_noise
from bids_muscle.stats.agreement import dice_per_label

pytestmark = pytest.mark.slow

B1_MAP_SCALE = 0.7


def _load(path):
    return np.asarray(nb.load(path).dataobj, dtype=float)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = generate_dataset(tmp_path_factory.mktemp("b1ref") / "bids", n_participants=3, seed=2, regions=("calf",),
                            n_slices=4, b1=("tb1map", "tb1dam"))
    for path in (root / "sub-01/anat").iterdir():  # sub-01: the double-angle pair only
        path.unlink()
    for path in (root / "sub-01/fmap").glob("*_TB1map.*"):
        path.unlink()
    for folder in ("anat", "fmap"):  # sub-02: a PDw only
        for path in (root / "sub-02" / folder).iterdir():
            path.unlink()
    truth = root / "derivatives/truth/sub-02/anat"
    pd_map, ff = _load(truth / "sub-02_acq-calf_PDmap.nii.gz"), _load(truth / "sub-02_acq-calf_FFmap.nii.gz") / 100
    tissue = _load(truth / "sub-02_acq-calf_desc-tissue_dseg.nii.gz")
    weight = pd_map * ((1 - ff) * 0.6 + ff * 1.0)  # proton density weighting: fat a little brighter than muscle
    weight[tissue == anatomy.CORTEX] = 0.02
    clean = weight * SIGNAL_SCALE * _load(truth / "sub-02_acq-calf_desc-receive_biasfield.nii.gz")
    pdw = add_rician_noise(clean, float(np.median(clean[tissue > 0]) / 60), np.random.default_rng(0))
    affine = nb.load(truth / "sub-02_acq-calf_PDmap.nii.gz").affine
    nb.Nifti1Image(pdw, affine).to_filename(root / "sub-02/anat/sub-02_acq-calf_PDw.nii.gz")
    (root / "sub-02/anat/sub-02_acq-calf_PDw.json").write_text(json.dumps({"EchoTime": 0.02, "RepetitionTime": 3.0}))
    for pattern in ("*_MEGRE.*", "*_MTR.*"):  # sub-03: MESE, T1w and B1 (fewer maps, faster)
        for path in (root / "sub-03/anat").glob(pattern):
            path.unlink()
    tb1 = root / "sub-03/fmap/sub-03_acq-calf_TB1map.nii.gz"
    img = nb.load(tb1)
    nb.Nifti1Image(np.asarray(img.dataobj, np.float32) * B1_MAP_SCALE, img.affine).to_filename(tb1)
    out = root.parent / "out"
    proc = subprocess.run([sys.executable, "-m", "bids_muscle.cli.run", str(root), str(out), "participant", "--sloppy",
                           "--nprocs", "1", "-w", str(root.parent / "work")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root, out


def test_a_double_angle_pair_alone_gives_its_b1_map_and_a_report(run):
    root, out = run
    anat, truth = out / "sub-01/anat", root / "derivatives/truth/sub-01/anat"
    b1 = _load(anat / "sub-01_acq-calf_desc-dam_TB1map.nii.gz")
    b1_true = _load(truth / "sub-01_acq-calf_TB1map.nii.gz")
    muscle = _load(truth / "sub-01_acq-calf_dseg.nii.gz") > 0
    assert np.nanmedian(np.abs(b1[muscle] - b1_true[muscle])) < 0.02
    assert sorted(p.name for p in anat.glob("*.nii.gz")) == ["sub-01_acq-calf_desc-dam_TB1map.nii.gz"]  # no N4, no labels
    html = (out / "sub-01.html").read_text()
    assert "only a double-angle B1 acquisition" in html and "double-angle method (60 and 120 deg)" in html
    assert (out / "sub-01/figures/sub-01_acq-calf_desc-dam_TB1map.png").is_file()


def test_a_pdw_alone_is_the_reference_and_is_segmented(run):
    root, out = run
    anat, truth = out / "sub-02/anat", root / "derivatives/truth/sub-02/anat"
    n4 = anat / "sub-02_acq-calf_desc-n4_PDw.nii.gz"
    assert json.loads(n4.with_name(n4.name.replace(".nii.gz", ".json")).read_text())["Sources"] == [
        "bids:raw:sub-02/anat/sub-02_acq-calf_PDw.nii.gz"]
    labels = _load(truth / "sub-02_acq-calf_dseg.nii.gz").astype(int)
    dseg = _load(anat / "sub-02_acq-calf_desc-unet2d_dseg.nii.gz").astype(int)
    assert np.mean(dice_per_label(dseg, labels, np.unique(labels[labels > 0]))) > 0.75  # 0.85 on 2026-12-07
    assert (anat / "sub-02_acq-calf_biomarkers.tsv").is_file()
    assert "sub-02_acq-calf_PDw.nii.gz" in (out / "sub-02.html").read_text()


def test_the_dataset_b1_map_constrains_the_mese_fits(run):
    root, out = run
    anat, truth = out / "sub-03/anat", root / "derivatives/truth/sub-03/anat"
    uri = "bids:raw:sub-03/fmap/sub-03_acq-calf_TB1map.nii.gz"
    for name in ("T2map", "desc-water_T2map", "desc-mese_FFmap", "desc-epg_TB1map"):
        sidecar = json.loads((anat / f"sub-03_acq-calf_{name}.json").read_text())
        assert sidecar["B1Source"] == uri and uri in sidecar["Sources"], name  # the map beats the TB1DAM pair
        regularisation = sidecar["B1Regularisation"]
        assert regularisation["MeasuredB1Coverage"] > 0.9
    assert abs(regularisation["MeasuredB1Median"] - B1_MAP_SCALE * 0.95) < 0.1  # read as percent, then scaled
    muscle = _load(truth / "sub-03_acq-calf_dseg.nii.gz") > 0
    b1_true = _load(truth / "sub-03_acq-calf_TB1map.nii.gz")[muscle]
    b1_fit = _load(anat / "sub-03_acq-calf_desc-epg_TB1map.nii.gz")[muscle]
    # the fit B1 stays near the (wrong) map, within the tolerance and one step of
    # sub-grid refinement, instead of finding the truth
    assert np.nanmedian(b1_fit - b1_true) < -0.05
    limit = regularisation["B1Tolerance"] + regularisation["DictionaryB1Step"] + 0.01
    assert np.nanpercentile(np.abs(b1_fit - B1_MAP_SCALE * b1_true), 95) <= limit
    # and the sidecar flags the disagreement: the fit sits at the top of the allowed window
    assert regularisation["MedianWaterFatB1MinusMeasured"] > 0.8 * regularisation["B1Tolerance"]
    assert "sub-03_acq-calf_TB1map.nii.gz), resampled to the grid" in (out / "sub-03.html").read_text()
