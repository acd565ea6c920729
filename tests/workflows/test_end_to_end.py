"""The whole app through its command line on a 2-participant phantom, as a user runs it."""

import json
import subprocess
import sys

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def _cli(*args):
    proc = subprocess.run([sys.executable, "-m", "bids_muscle.cli.run", *map(str, args)], capture_output=True, text=True, timeout=900)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def derivatives(phantom_bids, tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "out"
    work = out.parent / "work"
    code, log = _cli(phantom_bids, out, "participant", "--participant-label", "01", "02", "--sloppy", "-w", work, "--nprocs", "2",
                     "--networks", "unet2d", "hrnet")
    assert code == 0, log
    code, log = _cli(phantom_bids, out, "group", "-w", work, "--reference-seg", phantom_bids / "derivatives" / "truth")
    assert code == 0, log
    return out


def test_pybids_indexes_every_output_and_every_image_has_sources(derivatives):
    from bids.layout import BIDSLayout

    layout = BIDSLayout(str(derivatives), validate=False)
    images = layout.get(extension=".nii.gz")
    on_disk = sorted(derivatives.glob("sub-*/anat/*.nii.gz"))
    assert len(images) == len(on_disk) > 20
    for img in images:
        sidecar = json.loads((derivatives / img.relpath.replace(".nii.gz", ".json")).read_text())
        assert sidecar["Sources"] and all(s.startswith("bids:raw:sub-") for s in sidecar["Sources"]), img.filename
        assert "Units" in sidecar or img.entities["suffix"] in ("dseg", "mask", "T1w")
    desc = json.loads((derivatives / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "bids_muscle"
    assert (derivatives / ".bidsignore").is_file() and (derivatives / "descriptions.tsv").is_file()
    for sub in ("01", "02"):
        for region in ("thigh", "calf"):
            for name in ("T2map", "desc-water_T2map", "PDmap", "desc-epg_TB1map", "desc-mese_FFmap"):
                assert (derivatives / f"sub-{sub}/anat/sub-{sub}_acq-{region}_{name}.nii.gz").is_file()


def test_maps_recover_the_phantom_truth(derivatives, phantom_bids):
    truth_dir = phantom_bids / "derivatives/truth/sub-01/anat"
    out_dir = derivatives / "sub-01/anat"
    load = lambda p: np.asarray(nb.load(p).dataobj, dtype=float)  # noqa: E731
    for region in ("thigh", "calf"):
        muscle = load(truth_dir / f"sub-01_acq-{region}_dseg.nii.gz") > 0
        ff_true = load(truth_dir / f"sub-01_acq-{region}_FFmap.nii.gz")
        ff = load(out_dir / f"sub-01_acq-{region}_desc-mese_FFmap.nii.gz")
        wt2_true = load(truth_dir / f"sub-01_acq-{region}_desc-water_T2map.nii.gz")
        wt2 = load(out_dir / f"sub-01_acq-{region}_desc-water_T2map.nii.gz")
        lean = muscle & (ff_true <= 60)
        # --sloppy uses coarse dictionaries: looser than the benchmark targets
        assert np.nanmedian(np.abs(ff[muscle] - ff_true[muscle])) < 2.0
        assert np.nanmedian(np.abs(wt2[lean] - wt2_true[lean])) * 1000 < 1.5
        assert np.mean(np.isfinite(wt2[lean])) > 0.95


def test_muscle_table_matches_the_truth_table(derivatives, phantom_bids):
    """Per-muscle values of the whole chain (segmentation + fits) against the phantom's truth table.

    Medians: a mean also carries the fat septa a network adds at a muscle's
    border (partial volume), which is the segmentation's error, scored elsewhere.
    """
    for sub in ("01", "02"):
        for region in ("thigh", "calf"):
            name = f"sub-{sub}/anat/sub-{sub}_acq-{region}_biomarkers.tsv"
            truth = pd.read_csv(phantom_bids / "derivatives/truth" / name, sep="\t", na_values="n/a")
            ours = pd.read_csv(derivatives / name, sep="\t", na_values="n/a")
            both = ours[ours["network"] == "unet2d"].merge(truth, on="label", suffixes=("", "_true"))
            both = both[(both["label"] > 0) & (both["voxel_count_true"] > 0)]
            assert len(both) >= 10
            ff_error = (both["ff_mese_percent_median"] - both["ff_percent_median"]).abs()
            t2_error = (both["water_t2_ms_median"] - both["water_t2_ms_median_true"]).abs()
            assert np.nanmedian(ff_error) <= 1.0, (sub, region, ff_error.describe())
            assert np.nanmedian(t2_error) <= 1.0, (sub, region, t2_error.describe())


def test_imat_by_the_patch_autoencoder(derivatives, phantom_bids):
    for region in ("thigh", "calf"):
        stem = f"sub-01/anat/sub-01_acq-{region}_desc-imat"
        meta = json.loads((derivatives / f"{stem}_mask.json").read_text())
        assert meta["Method"] == "dcae" and meta["Encoder"] == "imat_dcae"
        imat = np.asarray(nb.load(derivatives / f"{stem}_mask.nii.gz").dataobj) > 0
        truth = np.asarray(nb.load(phantom_bids / "derivatives/truth" / f"{stem}_mask.nii.gz").dataobj) > 0
        assert 2 * np.sum(imat & truth) / (imat.sum() + truth.sum()) > 0.85
        probability = np.asarray(nb.load(derivatives / f"{stem}_probseg.nii.gz").dataobj)
        assert probability.min() >= 0 and probability.max() <= 1
        assert np.median(probability[imat]) > 0.5 > np.median(probability[~imat & (probability > 0)])


def test_segmentation_tables_and_reports(derivatives, phantom_bids):
    for sub in ("01", "02"):
        html = (derivatives / f"sub-{sub}.html").read_text()
        assert html.count("<figure>") >= 3
        assert 'class="dataframe"' in html and "&lt;table" not in html
        table = pd.read_csv(derivatives / f"sub-{sub}/anat/sub-{sub}_acq-thigh_biomarkers.tsv", sep="\t", na_values="n/a")
        assert {"volume_ml", "water_t2_ms_mean", "ff_mese_percent_mean", "imat_fraction", "network"} <= set(table.columns)
        truth = np.asarray(nb.load(phantom_bids / f"derivatives/truth/sub-{sub}/anat/sub-{sub}_acq-thigh_dseg.nii.gz").dataobj)
        dseg = np.asarray(nb.load(derivatives / f"sub-{sub}/anat/sub-{sub}_acq-thigh_desc-unet2d_dseg.nii.gz").dataobj)
        labels = np.unique(truth[truth > 0])
        dice = [2 * np.sum((truth == v) & (dseg == v)) / (np.sum(truth == v) + np.sum(dseg == v)) for v in labels]
        assert np.mean(dice) > 0.5
    assert (derivatives / "desc-unet2d_dseg.tsv").read_text().startswith("index\tname\tabbreviation\tcolor")


def test_group_outputs(derivatives):
    group = derivatives / "group"
    tidy = pd.read_csv(group / "biomarkers.tsv", sep="\t", na_values="n/a")
    assert set(tidy["participant"].astype(str).str.zfill(2)) == {"01", "02"}
    assert set(tidy["site"]) == {"siteA", "siteB"}
    assert set(tidy["region"]) == {"thigh", "calf"}
    assert set(tidy["network"]) == {"unet2d", "hrnet"}
    for name in ("biomarkers_wide.tsv", "site_summary.tsv", "excluded.tsv", "report.html", "network_differences.tsv",
                 "bland_altman.tsv"):
        assert (group / name).is_file(), name
    assert pd.read_csv(group / "excluded.tsv", sep="\t").empty


def test_rerun_keeps_outputs_whole(derivatives, phantom_bids):
    before = {p: p.read_bytes() for p in derivatives.glob("sub-01/anat/*.json")}
    lost = derivatives / "sub-01/anat/sub-01_acq-thigh_desc-water_T2map.nii.gz"
    lost.unlink()  # a user deletes an output; the rerun (cached work dir) must bring it back
    code, log = _cli(phantom_bids, derivatives, "participant", "--participant-label", "01", "--sloppy",
                     "-w", derivatives.parent / "work", "--networks", "unet2d", "hrnet")  # the first run's options
    assert code == 0, log
    assert not list(derivatives.rglob("*.tmp*"))
    assert {p: p.read_bytes() for p in derivatives.glob("sub-01/anat/*.json")} == before
    assert lost.is_file()


def test_rerun_with_nothing_changed_recomputes_and_rewrites_nothing(derivatives, phantom_bids):
    work = derivatives.parent / "work"

    def stamps():
        outputs = {p: p.stat().st_mtime_ns for p in derivatives.rglob("*") if p.is_file() and "group" not in p.parts}
        results = {p: p.stat().st_mtime_ns for p in work.rglob("result_*.pklz")}
        return outputs, results

    args = (phantom_bids, derivatives, "participant", "--participant-label", "01", "--sloppy", "-w", work,
            "--networks", "unet2d", "hrnet")
    code, log = _cli(*args)  # brings everything to a finished state (the test above removed a file)
    assert code == 0, log
    before = stamps()
    code, log = _cli(*args)
    assert code == 0, log
    after = stamps()
    assert after[0] == before[0], "a rerun rewrote outputs"
    assert after[1] == before[1], "a rerun recomputed nodes"


def test_group_agreement_with_the_reference(derivatives):
    group = derivatives / "group"
    summary = pd.read_csv(group / "agreement_summary.tsv", sep="\t", na_values="n/a")
    vs_truth = summary[summary["network_b"] == "reference"]
    assert set(vs_truth["region"]) == {"thigh", "calf"}
    assert (vs_truth["dice_mean"] > 0.8).all() and (vs_truth["absence_rate"] == 0).all()
    rows = pd.read_csv(group / "agreement.tsv", sep="\t", na_values="n/a")
    assert {"dice", "hd95_mm", "assd_mm", "volume_diff_ml", "delta_ff_mese_percent", "delta_water_t2_ms"} <= set(rows.columns)
    # 2 networks x 2 participants x (thigh + calf labels)
    assert len(rows[rows["network_b"] == "reference"]) == 2 * 2 * (26 + 20)
    between = summary[(summary["network_a"] == "hrnet") & (summary["network_b"] == "unet2d")]
    assert set(between["region"]) == {"thigh", "calf"} and (between["dice_mean"] > 0.6).all()
    for name in ("agreement_bland_altman.tsv", "agreement_g20.tsv", "figures/dice_per_muscle.png"):
        assert (group / name).is_file(), name
    report = (group / "report.html").read_text()
    assert "Segmentation agreement" in report and 'class="dataframe"' in report and "&lt;table" not in report
