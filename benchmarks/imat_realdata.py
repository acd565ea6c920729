"""IMAT on real multi-echo spin echo scans, through the whole app.

Builds two small BIDS datasets in a temporary folder (the Siemens thigh
DICOMs through ``bids_muscle-dicom2bids``; the Philips calf NIfTI with its
flatten quirk undone, see ../shared/data/README.md), runs the participant
workflow with the default settings, prints the IMAT fraction of the whole
muscle region and per side, and copies the report's IMAT overlay to
``docs/figures/imat_<dataset>.png``.

Run: ``.venv/bin/python benchmarks/imat_realdata.py``
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def calf_dataset(bids: Path) -> None:
    img = nib.load(SHARED / "calf_mese_philips" / "T2data.nii.gz")
    data = np.asarray(img.dataobj, dtype=np.float32)
    images = data.reshape(data.shape[0], data.shape[1], -1, order="F")
    echoes = images[..., :221].reshape(data.shape[0], data.shape[1], 13, 17)
    anat = bids / "sub-calf" / "anat"
    anat.mkdir(parents=True)
    for k in range(17):
        stem = anat / f"sub-calf_acq-calf_echo-{k + 1}_MESE"
        nib.Nifti1Image(echoes[..., k], img.affine).to_filename(f"{stem}.nii.gz")
        Path(f"{stem}.json").write_text(json.dumps({"EchoTime": round(0.0076 * (k + 1), 6), "MagneticFieldStrength": 3.0}))
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "calf", "BIDSVersion": "1.9.0"}))


def run(bids: Path, out: Path, work: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bids_muscle.cli.run", str(bids), str(out), "participant",
                           "-w", str(work)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout + proc.stderr)


def report(out: Path, sub: str, region: str, name: str) -> None:
    table = pd.read_csv(out / f"sub-{sub}/anat/sub-{sub}_acq-{region}_biomarkers.tsv", sep="\t", na_values="n/a")
    meta = json.loads((out / f"sub-{sub}/anat/sub-{sub}_acq-{region}_desc-imat_mask.json").read_text())
    whole = table[table["label"] == 0].iloc[0]
    muscles = table[(table["label"] > 0) & (table["voxel_count"] > 0)]
    by_side = muscles.groupby("side")[["territory_volume_ml", "imat_volume_ml"]].sum()
    print(f"{name}: method {meta['Method']}, whole-region IMAT fraction {100 * whole['imat_fraction']:.1f} % "
          f"({whole['imat_volume_ml']:.1f} of {whole['territory_volume_ml']:.1f} ml); "
          + ", ".join(f"{side} {100 * r.imat_volume_ml / r.territory_volume_ml:.1f} %" for side, r in by_side.iterrows())
          + f"; median muscle FF {np.nanmedian(muscles['ff_mese_percent_median']):.1f} %")
    figure = out / f"sub-{sub}/figures/sub-{sub}_acq-{region}_desc-imat_mask.png"
    target = ROOT / "docs" / "figures" / f"imat_{name}.png"
    shutil.copyfile(figure, target)
    print(f"  overlay: {target.relative_to(ROOT)}")


def main() -> None:
    if not SHARED.is_dir():
        raise SystemExit("../shared/data not found")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-m", "bids_muscle.cli.dicom2bids", str(SHARED / "thigh_mese_siemens_dicom"),
                        str(tmp / "thigh"), "--participant-label", "thigh", "--region", "thigh"], check=True,
                       capture_output=True)
        run(tmp / "thigh", tmp / "out_thigh", tmp / "work_thigh")
        report(tmp / "out_thigh", "thigh", "thigh", "thigh_mese_siemens_dicom")
        calf_dataset(tmp / "calf")
        run(tmp / "calf", tmp / "out_calf", tmp / "work_calf")
        report(tmp / "out_calf", "calf", "calf", "calf_mese_philips")


if __name__ == "__main__":
    main()
