"""Do the per-muscle standard errors cover the truth? (docs/validation.md)

Usage::

    python benchmarks/uncertainty_coverage.py WORK [--participants 3] [--sessions 2] [--seed 5] [--nprocs 1]

Writes a phantom follow-up study to ``WORK/bids`` (when absent: every
participant in ``--sessions`` visits, the same anatomy, fat fractions rising
at known per-muscle rates, new noise), runs the participant and group levels
with the default settings into ``WORK/out`` (when not done yet) and compares
with the truth:

1. per visit, every muscle's ``<map>_mean`` with the true per-muscle value
   (the mean of the true map over the true label): the share of muscles
   whose true value lies inside ``mean +- 1.96 se`` (nominal 95 %), the same
   with the noise part alone, the median ``|mean - truth| / se`` and the
   mean signed error (a bias no standard error can cover);
2. per muscle, the change between the first and a later visit of
   ``group/longitudinal.tsv`` with the true change: the share of 95 %
   intervals holding it, and how often a true rise of at least 2 points
   of fat fraction was detected (``exceeds_error``).

Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bids_muscle.phantom.dataset import generate_dataset
from bids_muscle.seg.zoo import DEFAULT_NETWORKS

#: app column -> column of the phantom's truth table
TRUTH_COLUMNS = {
    "ff_dixon_percent": "ff_percent",
    "ff_mese_percent": "ff_percent",
    "water_t2_ms": "water_t2_ms",
    "mtr_percent": "mtr_percent",
    "b1": "b1",
}
Z95 = 1.959964


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"])


def coverage(bids_dir: Path, out_dir: Path) -> pd.DataFrame:
    """One row per region and quantity: muscles compared, coverage of the 95 % intervals."""
    rows = []
    for table_path in sorted(out_dir.glob("sub-*/**/anat/*_biomarkers.tsv")):
        truth_path = bids_dir / "derivatives" / "truth" / table_path.relative_to(out_dir)
        ours, truth = _read(table_path), _read(truth_path).set_index("label")
        region = table_path.name.split("_acq-")[1].split("_")[0]
        ours = ours[(ours["network"] == DEFAULT_NETWORKS[region]) & (ours["label"] > 0)].set_index("label")
        quantities = {f"{c}_mean": f"{t}_mean" for c, t in TRUTH_COLUMNS.items()} | {"volume_ml": "volume_ml"}
        for column, truth_column in quantities.items():
            if column not in ours.columns:
                continue
            se_column = column.removesuffix("_mean") + "_se"
            both = ours[[column, se_column]].join(truth[truth_column].rename("truth")).dropna()
            error = (both[column] - both["truth"]).to_numpy()
            se = both[se_column].to_numpy()
            noise = ours.loc[both.index, column.removesuffix("_mean") + "_se_noise"].to_numpy() \
                if column != "volume_ml" else np.zeros_like(se)
            rows.append(pd.DataFrame({"region": region, "quantity": column, "error": error, "se": se, "se_noise": noise}))
    if not rows:
        raise SystemExit(f"{out_dir}: no biomarker tables; run the participant level first")
    data = pd.concat(rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        data["inside"] = np.abs(data["error"]) <= Z95 * data["se"]
        data["inside_noise"] = np.abs(data["error"]) <= Z95 * data["se_noise"]
        data["z"] = np.abs(data["error"]) / data["se"]
    return data.groupby(["region", "quantity"]).agg(
        muscles=("error", "size"), coverage_95=("inside", "mean"), coverage_noise_only=("inside_noise", "mean"),
        median_abs_error=("error", lambda e: float(np.median(np.abs(e)))), median_se=("se", "median"),
        median_abs_z=("z", "median"), mean_error=("error", "mean")).reset_index()


def change_coverage(bids_dir: Path, out_dir: Path) -> pd.DataFrame:
    """Coverage of the 95 % intervals of ``group/longitudinal.tsv`` by the true change, by region and metric."""
    changes = pd.read_csv(out_dir / "group" / "longitudinal.tsv", sep="\t", na_values=["n/a"],
                          dtype={"participant": str, "session_from": str, "session_to": str})
    truth = []
    for path in sorted((bids_dir / "derivatives" / "truth").glob("sub-*/ses-*/anat/*_biomarkers.tsv")):
        table = _read(path)
        participant, session = path.parts[-4].removeprefix("sub-"), path.parts[-3].removeprefix("ses-")
        region = path.name.split("_acq-")[1].split("_")[0]
        truth.append(table.assign(participant=participant, session=session, region=region))
    truth = pd.concat(truth)
    columns = {f"{c}_mean": f"{t}_mean" for c, t in TRUTH_COLUMNS.items()} | {"volume_ml": "volume_ml"}
    rows = []
    for metric, truth_column in columns.items():
        mine = changes[(changes["metric"] == metric)
                       & (changes["network"] == changes["region"].map(DEFAULT_NETWORKS))].dropna(subset=["se_change"])
        if mine.empty:
            continue
        keys = ["participant", "region", "side", "muscle"]
        start = truth[keys + ["session", truth_column]].rename(columns={"session": "session_from", truth_column: "from"})
        end = truth[keys + ["session", truth_column]].rename(columns={"session": "session_to", truth_column: "to"})
        both = mine.merge(start, on=keys + ["session_from"]).merge(end, on=keys + ["session_to"])
        both["true_change"] = both["to"] - both["from"]
        rows.append(both.assign(inside=(both["ci95_low"] <= both["true_change"]) & (both["true_change"] <= both["ci95_high"])))
    data = pd.concat(rows)
    rising = data["true_change"] >= 2.0
    summary = data.groupby(["region", "metric"]).agg(
        muscles=("change", "size"), coverage_95=("inside", "mean"),
        median_abs_error=("change", lambda c: float(np.median(np.abs(c - data.loc[c.index, "true_change"])))),
        median_se_change=("se_change", "median")).reset_index()
    detected = data[rising & data["metric"].str.startswith("ff_")].groupby(["region", "metric"])["exceeds_error"].mean()
    summary["detected_rise_2pp"] = [detected.get((r, m), np.nan) for r, m in zip(summary["region"], summary["metric"])]
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--participants", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=2)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--nprocs", type=int, default=1)
    args = parser.parse_args(argv)
    bids_dir, out_dir = args.work / "bids", args.work / "out"
    if not bids_dir.exists():
        generate_dataset(bids_dir, n_participants=args.participants, seed=args.seed, sessions=args.sessions)
    run = [sys.executable, "-m", "bids_muscle.cli.run", str(bids_dir), str(out_dir)]
    options = ["-w", str(args.work / "work"), "--nprocs", str(args.nprocs), "--omp-nthreads", "1"]
    if not list(out_dir.glob("sub-*/**/anat/*_biomarkers.tsv")):
        subprocess.run([*run, "participant", *options], check=True)
    if args.sessions > 1 and not (out_dir / "group" / "longitudinal.tsv").is_file():
        subprocess.run([*run, "group", *options], check=True)
    table = coverage(bids_dir, out_dir)
    print("| region | quantity | muscles | 95 % coverage | noise part only | median abs error | median se | median abs z | mean error |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in table.itertuples():
        print(f"| {r.region} | {r.quantity} | {r.muscles} | {r.coverage_95:.2f} | {r.coverage_noise_only:.2f} "
              f"| {r.median_abs_error:.3g} | {r.median_se:.3g} | {r.median_abs_z:.2f} | {r.mean_error:+.3g} |")
    if args.sessions > 1:
        changes = change_coverage(bids_dir, out_dir)
        print("\n| region | metric | muscles | 95 % coverage of the true change | median abs error | median se | "
              "true rises >= 2 points detected |")
        print("|---|---|---|---|---|---|---|")
        for r in changes.itertuples():
            print(f"| {r.region} | {r.metric} | {r.muscles} | {r.coverage_95:.2f} | {r.median_abs_error:.3g} "
                  f"| {r.median_se_change:.3g} | {r.detected_rise_2pp:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
