"""Longitudinal data: sessions in, sessions out, and the group stage keeps them apart."""

import shutil
import subprocess
import sys

import pandas as pd
import pytest

from bids_muscle.phantom.dataset import generate_dataset

pytestmark = pytest.mark.slow


def test_two_sessions_participant_and_group(tmp_path):
    root = generate_dataset(tmp_path / "bids", n_participants=1, seed=11, regions=("calf",), n_slices=3, sessions=2)
    shutil.move(str(root / "derivatives"), str(tmp_path / "truth"))
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
    # the change of every muscle between the visits, with the interval of the tables' standard errors
    changes = pd.read_csv(out / "group/longitudinal.tsv", sep="\t", na_values=["n/a"],
                          dtype={"session_from": str, "session_to": str})
    ff = changes[(changes["metric"] == "ff_dixon_percent_mean") & (changes["muscle"] != "whole_region")]
    assert set(zip(ff["session_from"], ff["session_to"])) == {("1", "2")} and len(ff) >= 10
    assert (ff["ci95_low"] < ff["change"]).all() and (ff["change"] < ff["ci95_high"]).all()
    # and the interval holds the phantom's true change of the muscle in most muscles (95 % nominal)
    truth = {s: pd.read_csv(tmp_path / f"truth/truth/sub-01/ses-{s}/anat/sub-01_ses-{s}_acq-calf_biomarkers.tsv",
                            sep="\t").set_index(["side", "muscle"])["ff_percent_mean"] for s in ("1", "2")}
    true_change = (truth["2"] - truth["1"]).rename("true_change")
    held = ff.join(true_change, on=["side", "muscle"])
    inside = (held["ci95_low"] <= held["true_change"]) & (held["true_change"] <= held["ci95_high"])
    assert held["true_change"].notna().all() and inside.mean() >= 0.8, held[["muscle", "side", "change", "true_change"]]
    table = pd.read_csv(out / "sub-01/ses-2/anat/sub-01_ses-2_acq-calf_biomarkers.tsv", sep="\t", na_values=["n/a"])
    assert (table["ff_dixon_percent_se"] >= table["ff_dixon_percent_se_noise"]).all()
    assert table["ff_dixon_percent_se_seg"].notna().any()  # three ensemble members
