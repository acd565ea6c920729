"""Longitudinal data: sessions in, sessions out, and the group stage keeps them apart."""

import shutil
import subprocess
import sys

import pandas as pd
import pytest

from bids_muscle.phantom.dataset import generate_dataset

pytestmark = pytest.mark.slow


def _as_session(root, session):
    """Move sub-01's raw files into ses-<session> (names and folders)."""
    sub = root / "sub-01"
    target = sub / f"ses-{session}" / "anat"
    target.mkdir(parents=True)
    for path in sorted((sub / "anat").iterdir()):
        path.rename(target / path.name.replace("sub-01_", f"sub-01_ses-{session}_"))
    (sub / "anat").rmdir()


def test_two_sessions_participant_and_group(tmp_path):
    root = generate_dataset(tmp_path / "bids", n_participants=1, seed=11, regions=("calf",), n_slices=3)
    shutil.rmtree(root / "derivatives")
    second = generate_dataset(tmp_path / "second", n_participants=1, seed=12, regions=("calf",), n_slices=3)
    _as_session(root, "1")
    _as_session(second, "2")
    shutil.move(str(second / "sub-01" / "ses-2"), str(root / "sub-01" / "ses-2"))
    out, work = tmp_path / "out", tmp_path / "work"

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "bids_muscle.cli.run", str(root), str(out), *args, "-w", str(work)],
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    cli("participant", "--sloppy", "--session-label", "ses-2")
    assert (out / "sub-01/ses-2/anat/sub-01_ses-2_acq-calf_desc-water_T2map.nii.gz").is_file()
    assert not (out / "sub-01/ses-1").exists()
    cli("participant", "--sloppy")
    for ses in ("1", "2"):
        assert (out / f"sub-01/ses-{ses}/anat/sub-01_ses-{ses}_acq-calf_biomarkers.tsv").is_file()
        assert (out / f"sub-01_ses-{ses}.html").is_file()
    cli("group")
    tidy = pd.read_csv(out / "group/biomarkers.tsv", sep="\t", dtype={"session": str})
    assert set(tidy["session"]) == {"1", "2"}
