"""The checks behind the fuzzing: broken sidecars by place, sessions, labels, symbolic links, real scans."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fuzz import base_participant, copy_participant

from bids_muscle import bids
from bids_muscle.preflight import InputError, check_image, check_sidecars


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return base_participant(tmp_path_factory.mktemp("inputs") / "base")


def _dataset(source: Path, root: Path, labels=("01", "02")) -> Path:
    root.mkdir()
    shutil.copyfile(source.parent / "dataset_description.json", root / "dataset_description.json")
    for label in labels:
        copy_participant(source, root, label)
    return root


def test_a_broken_sidecar_leaves_out_its_participant_only(source, tmp_path):
    root = _dataset(source, tmp_path / "bids")
    broken = root / "sub-02" / "anat" / "sub-02_acq-calf_T1w.json"
    broken.write_text('{"EchoTime": 0.01,')
    found = check_sidecars(root)
    assert list(found) == [("02", None)] and found[("02", None)].startswith(f"{broken}: invalid JSON")
    layout = bids.load_layout(root, exclude=found)
    assert layout.get_subjects() == ["01"]
    # named on the command line, it is still known (and then skipped), not "not found"
    assert bids.participants_and_sessions(layout, ["02"], None, found) == [("02", None)]
    assert bids.participants_and_sessions(layout, [], None, found) == [("01", None), ("02", None)]


def test_a_broken_sidecar_in_a_session_leaves_out_that_session(source, tmp_path):
    root = tmp_path / "bids"
    root.mkdir()
    shutil.copyfile(source.parent / "dataset_description.json", root / "dataset_description.json")
    for ses in ("1", "2"):
        anat = root / "sub-01" / f"ses-{ses}" / "anat"
        anat.mkdir(parents=True)
        for path in (source / "anat").iterdir():
            shutil.copyfile(path, anat / path.name.replace("sub-01", f"sub-01_ses-{ses}"))
    (root / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_acq-calf_T1w.json").write_text("[1, 2]")
    found = check_sidecars(root)
    assert list(found) == [("01", "2")] and "must hold a JSON object, not list" in found[("01", "2")]
    layout = bids.load_layout(root, exclude=found)
    assert layout.get_sessions() == ["1"]
    assert bids.participants_and_sessions(layout, [], None, found) == [("01", "1"), ("01", "2")]
    assert bids.collect_inputs(layout, "01", "1", ("calf",))


def test_a_broken_dataset_level_sidecar_stops_the_run(source, tmp_path):
    root = _dataset(source, tmp_path / "bids", labels=("01",))
    (root / "acq-calf_MESE.json").write_text("{'RepetitionTime': 3}")
    with pytest.raises(InputError, match="acq-calf_MESE.json: invalid JSON .* applies to every participant"):
        check_sidecars(root)


def test_symbolic_links_keep_their_names_in_the_sources(source, tmp_path):
    elsewhere = tmp_path / "store"
    root = _dataset(source, tmp_path / "bids", labels=("01",))
    elsewhere.mkdir()
    image = root / "sub-01" / "anat" / "sub-01_acq-calf_T1w.nii.gz"
    stored = elsewhere / "a8f3c2.nii.gz"  # as a git-annex object would be named
    shutil.move(image, stored)
    image.symlink_to(stored)
    (rin,) = bids.collect_inputs(bids.load_layout(root), "01", None, ("calf",))
    assert bids.bids_uri(rin.t1w, root) == "bids:raw:sub-01/anat/sub-01_acq-calf_T1w.nii.gz"


def test_sidecar_values_are_named_with_their_problem(source, tmp_path):
    root = _dataset(source, tmp_path / "bids", labels=("01",))
    echo = root / "sub-01" / "anat" / "sub-01_acq-calf_echo-2_MESE.json"
    meta = json.loads(echo.read_text())
    for value, problem in (("ten", 'must be a number in s (MESE), got "ten"'), (float("nan"), "is nan"),
                           (-0.01, "must be above 0 s"), (12.0, "looks like milliseconds"),
                           (1e30, "is not plausible")):
        echo.write_text(json.dumps({**meta, "EchoTime": value}))
        with pytest.raises(InputError) as err:
            bids.collect_inputs(bids.load_layout(root), "01", None, ("calf",))
        assert str(err.value).startswith(str(echo.with_suffix("").with_suffix(".nii.gz"))) and problem in str(err.value)


def test_every_real_scan_passes_the_image_checks(shared_data):
    images = sorted(p for p in shared_data.rglob("*.nii*") if "reference" not in p.parts)
    assert len(images) > 30
    for path in images:
        assert len(check_image(path).shape) in (3, 4), path
