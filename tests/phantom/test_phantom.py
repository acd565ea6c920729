import json
import hashlib

import nibabel as nb
import numpy as np
import pytest

from bids_muscle.phantom import anatomy
from bids_muscle.phantom.dataset import generate_dataset
from bids_muscle.seg.labels import load_label_table


@pytest.mark.parametrize("region", ["thigh", "calf"])
def test_every_muscle_on_both_sides_on_the_correct_side(region):
    truth = anatomy.draw_region(region, np.random.default_rng(3))
    present = set(np.unique(truth.labels)) - {0}
    assert present == {lab.index for lab in load_label_table(region)}
    # the right leg lies at positive world x (RAS+)
    i_idx = np.nonzero(truth.labels)[0]
    x_mm = truth.affine[0, 0] * i_idx + truth.affine[0, 3]
    sides = np.array([{lab.index: lab.side for lab in load_label_table(region)}[v] for v in truth.labels[truth.labels > 0]])
    assert np.all(x_mm[sides == "right"] > 0) and np.all(x_mm[sides == "left"] < 0)


def test_truth_is_consistent():
    truth = anatomy.draw_region("thigh", np.random.default_rng(1), severity=0.6)
    muscles = truth.labels > 0
    assert np.all(truth.muscle_region[muscles])
    assert not np.any(truth.muscle_region & np.isin(truth.tissue, (anatomy.SUBCUT_FAT, anatomy.CORTEX, anatomy.MARROW)))
    assert np.all(truth.imat <= truth.muscle_region)
    assert truth.ff_percent[muscles].min() >= 0 and truth.ff_percent[muscles].max() <= 80
    assert truth.ff_percent[muscles].max() > 50  # severe infiltration drawn
    body = truth.tissue > 0
    assert 0.7 <= truth.b1[body].min() and truth.b1[body].max() <= 1.2
    assert 0.025 <= truth.water_t2_s[muscles].min() and truth.water_t2_s[muscles].max() <= 0.05


def test_dataset_is_deterministic_and_refuses_to_overwrite(tmp_path):
    a = generate_dataset(tmp_path / "a", n_participants=1, seed=7, regions=("calf",), n_slices=3)
    b = generate_dataset(tmp_path / "b", n_participants=1, seed=7, regions=("calf",), n_slices=3)

    def digest(root):
        return {p.relative_to(root).as_posix(): hashlib.sha256(np.asarray(nb.load(p).dataobj).tobytes()).hexdigest()
                for p in sorted(root.rglob("*.nii.gz"))}

    assert digest(a) == digest(b)
    assert len(digest(a)) > 30
    with pytest.raises(FileExistsError):
        generate_dataset(tmp_path / "a", n_participants=1)


def test_phantom_layout_and_metadata(phantom_bids):
    from bids.layout import BIDSLayout

    layout = BIDSLayout(str(phantom_bids), validate=True)
    assert layout.get_subjects() == ["01", "02"]
    mese = layout.get(subject="01", acquisition="thigh", suffix="MESE", extension=".nii.gz")
    assert len(mese) == 17
    tes = sorted(f.get_metadata()["EchoTime"] for f in mese)
    assert np.allclose(np.diff(tes), 0.010)
    megre = layout.get(subject="01", acquisition="calf", suffix="MEGRE", extension=".nii.gz")
    assert {f.entities["part"] for f in megre} == {"mag", "phase"} and len(megre) == 12
    assert layout.get(subject="02", suffix="MTR", mt="on", extension=".nii.gz")
    assert (phantom_bids / "participants.tsv").read_text().splitlines()[0].split("\t")[:2] == ["participant_id", "site"]
    truth = phantom_bids / "derivatives" / "truth" / "sub-01" / "anat"
    for name in ("desc-water_T2map", "FFmap", "PDmap", "MTRmap", "desc-imat_mask", "desc-muscleregion_mask", "dseg"):
        assert (truth / f"sub-01_acq-thigh_{name}.nii.gz").is_file(), name


def test_first_echo_snr_is_about_100(phantom_bids):
    echo = np.asarray(nb.load(phantom_bids / "sub-01/anat/sub-01_acq-thigh_echo-1_MESE.nii.gz").dataobj, float)
    labels = np.asarray(nb.load(phantom_bids / "derivatives/truth/sub-01/anat/sub-01_acq-thigh_dseg.nii.gz").dataobj)
    background = echo[:8, :8, :]
    sigma = np.sqrt(np.mean(background**2) / 2.0)  # Rayleigh second moment
    snr = np.median(echo[labels > 0]) / sigma
    assert 70 < snr < 130


def test_measured_b1_option_matches_the_truth_and_leaves_the_rest_alone(tmp_path):
    from bids_muscle.qmri.b1 import b1_double_angle, b1_on_grid, relative_b1

    plain = generate_dataset(tmp_path / "plain", n_participants=1, seed=4, regions=("calf",), n_slices=3)
    root = generate_dataset(tmp_path / "b1", n_participants=1, seed=4, regions=("calf",), n_slices=3,
                            b1=("tb1map", "tb1dam"))
    for path in plain.rglob("*.nii.gz"):  # every other image is unchanged
        other = root / path.relative_to(plain)
        assert np.array_equal(np.asarray(nb.load(path).dataobj), np.asarray(nb.load(other).dataobj)), path.name
    truth_img = nb.load(root / "derivatives/truth/sub-01/anat/sub-01_acq-calf_TB1map.nii.gz")
    truth = np.asarray(truth_img.dataobj, float)
    muscle = np.asarray(nb.load(root / "derivatives/truth/sub-01/anat/sub-01_acq-calf_dseg.nii.gz").dataobj) > 0
    fmap = root / "sub-01/fmap"
    tb1 = nb.load(fmap / "sub-01_acq-calf_TB1map.nii.gz")
    assert tb1.shape == (truth.shape[0] // 2, truth.shape[1] // 2, truth.shape[2])  # a coarse scanner map
    assert json.loads((fmap / "sub-01_acq-calf_TB1map.json").read_text())["Units"] == "percent"
    measured = b1_on_grid(relative_b1(np.asarray(tb1.dataobj), "percent"), tb1.affine, truth.shape, truth_img.affine)
    assert np.nanmedian(np.abs(measured[muscle] - truth[muscle])) < 0.015
    meta = [json.loads((fmap / f"sub-01_acq-calf_flip-{k}_TB1DAM.json").read_text()) for k in (1, 2)]
    assert [m["FlipAngle"] for m in meta] == [60.0, 120.0]
    s1, s2 = (np.asarray(nb.load(fmap / f"sub-01_acq-calf_flip-{k}_TB1DAM.nii.gz").dataobj, float) for k in (1, 2))
    dam = b1_double_angle(s1, s2, nominal_deg=60.0)
    assert np.nanmedian(np.abs(dam[muscle] - truth[muscle])) < 0.015
    with pytest.raises(ValueError, match="unknown B1"):
        generate_dataset(tmp_path / "bad", n_participants=1, b1=("afi",))


def test_follow_up_sessions_keep_the_anatomy_and_raise_fat_at_the_stated_rates(tmp_path):
    root = generate_dataset(tmp_path / "ses", n_participants=1, seed=4, regions=("calf",), n_slices=2, sessions=3)
    truth = root / "derivatives" / "truth" / "sub-01"
    tables, labels, images = [], [], []
    for s in (1, 2, 3):
        stem = f"ses-{s}/anat/sub-01_ses-{s}_acq-calf_"
        tables.append(np.genfromtxt(truth / f"{stem}biomarkers.tsv", delimiter="\t", names=True, dtype=None, encoding=None))
        labels.append(np.asarray(nb.load(truth / f"{stem}dseg.nii.gz").dataobj))
        images.append(np.asarray(nb.load(root / "sub-01" / f"ses-{s}" / "anat" / f"sub-01_ses-{s}_acq-calf_T1w.nii.gz").dataobj))
    assert all(np.array_equal(labels[0], other) for other in labels[1:])
    assert np.array_equal(tables[0]["volume_ml"], tables[2]["volume_ml"])
    states = json.loads((truth / "ses-2/anat/sub-01_ses-2_acq-calf_muscles.json").read_text())
    rise = {int(k): v["ff_rise_per_visit"] for k, v in states.items()}
    ff = np.asarray(nb.load(truth / "ses-1/anat/sub-01_ses-1_acq-calf_FFmap.nii.gz").dataobj)
    ff3 = np.asarray(nb.load(truth / "ses-3/anat/sub-01_ses-3_acq-calf_FFmap.nii.gz").dataobj)
    tissue = np.asarray(nb.load(truth / "ses-1/anat/sub-01_ses-1_acq-calf_desc-tissue_dseg.nii.gz").dataobj)
    muscle = (tissue == anatomy.MUSCLE) & (labels[0] > 0)
    expected = np.minimum(ff[muscle] + 2 * np.vectorize(rise.get)(labels[0][muscle]), 100.0)
    assert np.allclose(ff3[muscle], expected, atol=1e-3)
    assert np.array_equal(ff3[~muscle], ff[~muscle])
    changes = tables[2]["ff_percent_mean"][:-1] - tables[0]["ff_percent_mean"][:-1]
    assert (changes >= -1e-6).all() and changes.max() > 1.0
    assert not np.array_equal(images[0], images[1])  # new noise at every visit
    with pytest.raises(ValueError, match="sessions"):
        generate_dataset(tmp_path / "bad", n_participants=1, sessions=2, b1=("tb1map",))
