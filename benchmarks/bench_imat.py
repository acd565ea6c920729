"""IMAT classification on the digital phantom: Amer et al. 2022, Table 2 and Eq. 4.

Held-out phantom participants (seeds ``[3200, k]``; the shipped encoders are
trained on ``[3100, k]``), thigh and calf, mild / moderate / severe
infiltration (share of infiltrated muscles 0.05-0.25 / 0.35-0.55 /
0.75-1.0). Multi-echo spin echo images are fitted with the two-component
EPG model (water T2, FF) and the single-component model (T2, PD); the
classifiers see only these fitted maps. Truth is the phantom's own IMAT:
muscle-region voxels whose true fat fraction is above 50 %.

Every method runs on two muscle regions: the true one and the one closed
from the true muscle labels (:func:`bids_muscle.imat.region.muscle_region_from_labels`,
what the app uses after segmentation). Metrics are computed over the
voxels of that region: viable-muscle Dice, IMAT Dice, accuracy, NMI, ARI
(pooled over all voxels of a participant, then averaged over
participants), and the IMAT fraction (Eq. 4) per muscle territory, per
slice and per region against the truth (Pearson r, bias).

Usage::

    python benchmarks/bench_imat.py [--participants 18] [--snr 100] [--inputs water_ff t2_pd] [--erode-voxels 0 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from bids_muscle.imat.classify import METHODS, classify_imat
from bids_muscle.imat.metrics import fraction_agreement, imat_agreement, imat_fraction
from bids_muscle.imat.region import muscle_region_from_labels
from bids_muscle.phantom import anatomy, signals
from bids_muscle.qmri.t2 import fit_t2_single, fit_t2_water_fat
from bids_muscle.seg.labels import load_label_table
from bids_muscle.stats.biomarkers import muscle_territories

SEVERITIES = {"mild": (0.05, 0.25), "moderate": (0.35, 0.55), "severe": (0.75, 1.0)}
EVALUATION_SEED = 3200
INPUTS = {"water_ff": ("water_t2_s", "ff_percent"), "t2_pd": ("t2_s", "pd")}


@dataclass
class PhantomCase:
    """One phantom region with its fitted maps and truth."""

    truth: anatomy.RegionTruth
    maps: dict[str, np.ndarray]
    severity: str
    spacing_mm: tuple[float, float, float]


@contextlib.contextmanager
def first_echo_snr(snr: float | None) -> Iterator[None]:
    """Temporarily set the phantom's first-echo SNR of muscle (None: keep the default)."""
    previous = signals.SNR_FIRST_ECHO
    if snr is not None:
        signals.SNR_FIRST_ECHO = float(snr)
    try:
        yield
    finally:
        signals.SNR_FIRST_ECHO = previous


def phantom_case(region: str, severity: str, seed, snr: float | None = None, n_slices: int = 7) -> PhantomCase:
    """Draw a phantom region, simulate its MESE and fit both T2 models on the body."""
    rng = np.random.default_rng(seed)
    low, high = SEVERITIES[severity]
    truth = anatomy.draw_region(region, rng, n_slices=n_slices, severity=float(rng.uniform(low, high)))
    with first_echo_snr(snr):
        echoes, te_s = signals.mese_images(truth, rng)
    body = truth.tissue > 0
    water_fat = fit_t2_water_fat(echoes, te_s, mask=body)
    single = fit_t2_single(echoes, te_s, mask=body)
    maps = {
        "water_t2_s": water_fat["water_t2_s"],
        "ff_percent": water_fat["ff_percent"],
        "t2_s": single["t2_s"],
        "pd": single["pd"],
    }
    spacing = tuple(float(abs(truth.affine[i, i])) for i in range(3))
    return PhantomCase(truth, maps, severity, spacing)


def evaluation_cases(n: int, snr: float | None = None) -> list[PhantomCase]:
    """``n`` held-out participants cycling through region x severity."""
    combos = [(region, severity) for severity in SEVERITIES for region in ("thigh", "calf")]
    return [phantom_case(*combos[k % len(combos)], seed=[EVALUATION_SEED, k], snr=snr) for k in range(n)]


def _groups(case: PhantomCase, region: np.ndarray) -> dict[str, np.ndarray]:
    """Muscle territories, slices and the whole region as group maps for Eq. 4."""
    labels = [lab.index for lab in load_label_table(case.truth.region)]
    return {
        "muscle": muscle_territories(case.truth.labels, case.spacing_mm, labels, region),
        "slice": np.where(region, np.arange(region.shape[2])[None, None, :] + 1, 0),
        "region": region.astype(int),
    }


def evaluate(cases: list[PhantomCase], inputs: str = "water_ff", methods=METHODS, erode_voxels=(0,), encoder=None) -> dict:
    """Metrics per region kind, method and erosion, and IMAT-fraction agreement.

    ``erode_voxels`` lists the boundary erosions tried with the patch
    methods (``kmeans`` and ``threshold`` classify single voxels and run
    once); ``encoder`` is passed to :func:`classify_imat`.
    """
    names = INPUTS[inputs]
    variants = [(m, e) for m in methods for e in (erode_voxels if m.startswith("dcae") else (0,))]
    prepared = []
    for case in cases:
        regions = {"truth": case.truth.muscle_region,
                   "from_labels": muscle_region_from_labels(case.truth.labels, case.spacing_mm)}
        prepared.append({kind: (region, _groups(case, region)) for kind, region in regions.items()})
    results: dict = {}
    for region_kind in ("truth", "from_labels"):
        for method, erode in variants:
            rows, fractions, seconds = [], {"muscle": [], "slice": [], "region": []}, []
            for case, prep in zip(cases, prepared):
                region, groups = prep[region_kind]
                true_imat = region & (case.truth.ff_percent > 50.0)
                maps = {name: case.maps[name] for name in names}
                start = time.perf_counter()
                pred, _ = classify_imat(maps, region, method, weak_ff_percent=case.maps["ff_percent"], encoder=encoder,
                                        erode_voxels=erode)
                seconds.append(time.perf_counter() - start)
                row = imat_agreement(pred, true_imat, region)
                row["imat_fraction_true"] = imat_fraction(true_imat, region)
                row["severity"] = case.severity
                rows.append(row)
                for kind, group in groups.items():
                    fractions[kind].append(np.column_stack([imat_fraction(pred, region, group), imat_fraction(true_imat, region, group)]))
            summary = {key: float(np.nanmean([r[key] for r in rows])) for key in ("viable_dice", "imat_dice", "accuracy", "nmi", "ari")}
            by_severity = {
                sev: {key: float(np.nanmean([r[key] for r in rows if r["severity"] == sev]))
                      for key in ("viable_dice", "imat_dice", "imat_fraction_true")}
                for sev in SEVERITIES
                if any(r["severity"] == sev for r in rows)
            }
            agreement = {}
            for kind, pairs in fractions.items():
                both = np.concatenate(pairs)
                agreement[kind] = fraction_agreement(both[:, 0], both[:, 1])
            name = method if not erode else f"{method} erode {erode}"
            results[f"{region_kind}/{name}"] = {
                **summary,
                "by_severity": by_severity,
                "imat_fraction": agreement,
                "seconds_per_volume": float(np.mean(seconds)),
            }
    return results


def print_table(results: dict) -> None:
    """Markdown table: Table 2 columns (percent) and IMAT-fraction agreement."""
    print("| region | method | viable Dice | IMAT Dice | ACC | NMI | ARI | r muscle | bias muscle | r slice | r region | bias region | s/volume |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key, res in results.items():
        region, method = key.split("/")
        f = res["imat_fraction"]
        print(
            f"| {region} | {method} | {100 * res['viable_dice']:.1f} | {100 * res['imat_dice']:.1f} | {100 * res['accuracy']:.1f} "
            f"| {100 * res['nmi']:.1f} | {100 * res['ari']:.1f} | {f['muscle']['r']:.4f} | {100 * f['muscle']['bias']:+.2f} pp "
            f"| {f['slice']['r']:.4f} | {f['region']['r']:.4f} | {100 * f['region']['bias']:+.2f} pp | {res['seconds_per_volume']:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=18)
    parser.add_argument("--snr", type=float, default=None, help="first-echo SNR of muscle (default: the phantom's 100)")
    parser.add_argument("--inputs", nargs="+", default=["water_ff", "t2_pd"], choices=sorted(INPUTS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--erode-voxels", type=int, nargs="+", default=[0, 8],
                        help="boundary erosions tried with the patch methods (8: the paper's 16 x 16 kernel)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    start = time.perf_counter()
    cases = evaluation_cases(args.participants, args.snr)
    print(f"{len(cases)} participants simulated and fitted in {time.perf_counter() - start:.0f} s; "
          f"true IMAT fraction {', '.join(f'{imat_fraction(c.truth.imat, c.truth.muscle_region):.3f}' for c in cases)}")
    everything = {}
    for inputs in args.inputs:
        methods = [m for m in args.methods if not (inputs != "water_ff" and m == "threshold")]
        print(f"\ninputs {' + '.join(INPUTS[inputs])}, weak labels from the MESE fat fraction > 50 %")
        results = evaluate(cases, inputs, methods, args.erode_voxels)
        print_table(results)
        everything[inputs] = results
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"participants": args.participants, "snr": args.snr, "erode_voxels": args.erode_voxels, "results": everything}, handle, indent=2)


if __name__ == "__main__":
    main()
