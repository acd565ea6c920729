"""``bids_muscle-train`` on the app's own folders, and --version / help of every command."""

from __future__ import annotations

import argparse
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from bids_muscle import __version__
from bids_muscle.cli import dicom2bids as dicom2bids_cli
from bids_muscle.cli import phantom as phantom_cli
from bids_muscle.phantom.dataset import generate_dataset
from bids_muscle.cli import train as train_cli
from bids_muscle.seg.train_data import check_label_map, find_training_pairs, region_from_name

TINY = ["--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "1", "--threads", "1",
        "--base-features", "4", "--voxel-size", "4", "4"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """One participant, both regions, two slices: derivatives/truth holds the
    thigh and calf muscle maps and the desc-tissue maps."""
    return generate_dataset(tmp_path_factory.mktemp("train_cli") / "bids", n_participants=1, seed=0,
                            regions=("thigh", "calf"), n_slices=2)


def test_trains_one_epoch_from_phantom_truth_on_thigh_muscle_maps_only(phantom, tmp_path, capsys):
    truth = phantom / "derivatives" / "truth"
    assert sorted(p.name for p in truth.rglob("*_dseg.nii.gz")) == [
        "sub-01_acq-calf_desc-tissue_dseg.nii.gz", "sub-01_acq-calf_dseg.nii.gz",
        "sub-01_acq-thigh_desc-tissue_dseg.nii.gz", "sub-01_acq-thigh_dseg.nii.gz",
    ]
    out = tmp_path / "models"
    code = train_cli.main([str(out), "--region", "thigh", "--labels", str(truth), "--images-dir", str(phantom),
                           "--name", "tiny", *TINY])
    text = capsys.readouterr()
    assert code == 0, text.err
    assert (out / "tiny.pt").is_file()
    card = json.loads((out / "tiny.json").read_text())
    assert card["region"] == "thigh" and set(card["labels"]) <= set(range(1, 14))
    assert card["training_data"] == [{
        "image": str(phantom / "sub-01" / "anat" / "sub-01_acq-thigh_T1w.nii.gz"),
        "labels": str(truth / "sub-01" / "anat" / "sub-01_acq-thigh_dseg.nii.gz"),
    }]
    assert "sub-01_acq-calf_dseg.nii.gz: a calf map" in text.out
    assert "sub-01_acq-thigh_desc-tissue_dseg.nii.gz: desc-tissue" in text.out
    assert "epoch    1" in text.out


def test_pairs_app_output_maps_and_finds_raw_images_without_images_dir(phantom, tmp_path):
    # the app's output folder: desc-<net>_dseg maps, their label table, and desc-n4 T1w images
    out_dir = tmp_path / "out"
    anat = out_dir / "sub-01" / "anat"
    anat.mkdir(parents=True)
    truth = phantom / "derivatives" / "truth" / "sub-01" / "anat"
    for region, net in (("thigh", "unet3d"), ("calf", "unet2d")):
        shutil.copy(truth / f"sub-01_acq-{region}_dseg.nii.gz", anat / f"sub-01_acq-{region}_desc-{net}_dseg.nii.gz")
        (out_dir / f"desc-{net}_dseg.tsv").write_text((phantom / "derivatives" / "truth" / "dseg.tsv").read_text())
    shutil.copy(truth / "sub-01_acq-thigh_desc-tissue_dseg.nii.gz", anat / "sub-01_acq-thigh_desc-other_dseg.nii.gz")
    (out_dir / "desc-other_dseg.tsv").write_text("index\tname\n1\tskin\n2\tsubcutaneous_fat\n")
    skipped = []
    pairs = find_training_pairs([out_dir], "T1w", phantom, region="thigh", log=skipped.append)
    assert [(i.name, lab.name) for i, lab in pairs] == [
        ("sub-01_acq-thigh_T1w.nii.gz", "sub-01_acq-thigh_desc-unet3d_dseg.nii.gz")]
    assert any("desc-other_dseg.tsv names no muscles" in line for line in skipped)
    # a derivatives folder inside the raw dataset finds its images without --images-dir
    pairs = find_training_pairs([phantom / "derivatives" / "truth"], "T1w", region="calf")
    assert [(i.name, lab.name) for i, lab in pairs] == [("sub-01_acq-calf_T1w.nii.gz", "sub-01_acq-calf_dseg.nii.gz")]


def test_label_map_with_foreign_indices_is_an_error_naming_the_file(phantom, tmp_path, capsys):
    labels = tmp_path / "labels"
    labels.mkdir()
    image = phantom / "sub-01" / "anat" / "sub-01_acq-thigh_T1w.nii.gz"
    shutil.copy(image, labels / image.name)
    truth = nib.load(phantom / "derivatives" / "truth" / "sub-01" / "anat" / "sub-01_acq-thigh_dseg.nii.gz")
    data = np.asarray(truth.dataobj).copy()
    data[data == 1] = 45  # a calf index in a thigh map
    bad = labels / "sub-01_acq-thigh_desc-manual_dseg.nii.gz"
    nib.save(nib.Nifti1Image(data, truth.affine), bad)
    code = train_cli.main([str(tmp_path / "models"), "--region", "thigh", "--labels", str(labels), *TINY])
    err = capsys.readouterr().err
    assert code == 2
    assert str(bad) in err and "[45]" in err and "thigh label table" in err
    assert not (tmp_path / "models").exists()


def test_region_from_the_name_and_the_values():
    assert region_from_name("sub-01_acq-calf_desc-unet2d_dseg.nii.gz") == "calf"
    assert region_from_name("thigh_case01_dseg.nii.gz") == "thigh"
    assert region_from_name("case01_dseg.nii.gz") is None
    calf = np.array([0, 41, 63])
    assert check_label_map(np.array([0, 1, 33]), "thigh", "a.nii.gz") is None
    # a map whose name gives no region and whose values are the other region's is skipped ...
    assert "calf labels" in check_label_map(calf, "thigh", "case_dseg.nii.gz", named=False)
    # ... one named for the region, or with mixed values, is an error naming it
    for values, named in ((calf, True), (np.array([0, 1, 41]), False)):
        with pytest.raises(ValueError, match="x_dseg.nii.gz: label map holds indices"):
            check_label_map(values, "thigh", "x_dseg.nii.gz", named=named)


@pytest.mark.parametrize("module, prog", [
    (train_cli, "bids_muscle-train"), (phantom_cli, "bids_muscle-phantom"), (dicom2bids_cli, "bids_muscle-dicom2bids"),
])
def test_every_command_prints_its_version(module, prog, capsys):
    with pytest.raises(SystemExit) as ex:
        module.build_parser().parse_args(["--version"])
    assert ex.value.code == 0
    assert capsys.readouterr().out.strip() == f"{prog} {__version__}"


def test_every_train_option_help_states_its_default():
    parser = train_cli.build_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        text = formatter._expand_help(action)
        assert "default" in text or (action.required and "required" in text), (action.option_strings, text)
        if action.default not in (None, [], ""):
            assert str(action.default) in text, (action.option_strings, text)
