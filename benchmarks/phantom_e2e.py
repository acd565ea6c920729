"""Phantom end to end: a participant run against the phantom's truth (docs/validation.md).

Usage::

    bids_muscle-phantom ph --participants 2 --seed 0
    bids_muscle ph out participant --participant-label 01
    python benchmarks/phantom_e2e.py ph out [--participant 01] [--network NET]

Voxel-wise errors inside the true muscle labels (median absolute error; the
MESE water T2 only where the true fat fraction is at most 60 %), the mean
Dice of the muscle segmentation (each region's default network unless
``--network``) and the Dice of the IMAT mask, for the thigh and the calf.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_muscle.seg.zoo import DEFAULT_NETWORKS
from bids_muscle.stats.agreement import dice, dice_per_label

#: (row, output suffix, truth suffix, scale to the row's unit)
MAPS = (
    ("MESE water T2 (FF ≤ 60 %), ms", "desc-water_T2map", "desc-water_T2map", 1000.0),
    ("MESE fat fraction, points", "desc-mese_FFmap", "FFmap", 1.0),
    ("EPG B1", "desc-epg_TB1map", "TB1map", 1.0),
    ("Dixon fat fraction (6-echo MEGRE), points", "desc-dixon_FFmap", "FFmap", 1.0),
    ("B0, Hz", "desc-b0_fieldmap", "desc-b0_fieldmap", 1.0),
    ("MTR", "MTRmap", "MTRmap", 1.0),
)


def _load(path: Path) -> np.ndarray:
    if not path.is_file():
        raise SystemExit(f"{path}: missing (run the participant stage first)")
    return np.asarray(nib.load(str(path)).dataobj, dtype=float)


def compare(bids: Path, derivatives: Path, participant: str, network: str, region: str) -> dict[str, float]:
    stem = f"sub-{participant}/anat/sub-{participant}_acq-{region}_"
    truth_dir = bids / "derivatives" / "truth"
    labels = _load(truth_dir / f"{stem}dseg.nii.gz").astype(int)
    muscle = labels > 0
    ff_true = _load(truth_dir / f"{stem}FFmap.nii.gz")
    rows = {}
    for row, ours, theirs, scale in MAPS:
        estimate, truth = _load(derivatives / f"{stem}{ours}.nii.gz"), _load(truth_dir / f"{stem}{theirs}.nii.gz")
        if estimate.shape != truth.shape:
            raise SystemExit(f"{stem}{ours}: grid {estimate.shape} differs from the truth's {truth.shape}")
        inside = muscle & (ff_true <= 60) if "T2" in ours else muscle
        rows[row] = float(np.nanmedian(np.abs(estimate[inside] - truth[inside]))) * scale
    dseg = _load(derivatives / f"{stem}desc-{network}_dseg.nii.gz").astype(int)
    rows["muscle segmentation, mean Dice"] = float(np.mean(dice_per_label(dseg, labels, np.unique(labels[muscle]))))
    imat = _load(derivatives / f"{stem}desc-imat_mask.nii.gz") > 0
    rows["IMAT mask, Dice"] = dice(imat, _load(truth_dir / f"{stem}desc-imat_mask.nii.gz") > 0)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bids", type=Path, help="phantom BIDS dataset (with derivatives/truth)")
    parser.add_argument("derivatives", type=Path, help="bids_muscle output folder")
    parser.add_argument("--participant", default="01")
    parser.add_argument("--network", help="segmentation network (default: each region's default)")
    args = parser.parse_args()
    networks = {region: args.network or DEFAULT_NETWORKS[region] for region in ("thigh", "calf")}
    results = {region: compare(args.bids, args.derivatives, args.participant, networks[region], region)
               for region in networks}
    print(f"| sub-{args.participant}: median absolute error inside the true muscles, or Dice "
          f"| thigh (`{networks['thigh']}`) | calf (`{networks['calf']}`) |")
    print("|---|---|---|")
    for row in results["thigh"]:
        digits = 3 if "Dice" in row or "B1" in row else 2
        print(f"| {row} | {results['thigh'][row]:.{digits}f} | {results['calf'][row]:.{digits}f} |")


if __name__ == "__main__":
    main()
