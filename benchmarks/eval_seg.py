"""Evaluate the synthesis-trained segmentation models (docs/validation.md).

Every test image goes through :func:`bids_muscle.seg.infer.segment`, as in
the app:

* ``thigh``: synthetic test volumes from the 5 held-out Huashan label maps
  (never used for training or early stopping), 1 mm in-plane, in 5
  contrasts (T1w-, water-, fat-, T2- and STIR-like). Voxels the Huashan maps
  do not label (adductor longus and brevis, inside the fascia) are left out
  of the scores, and so are those two muscles.
* ``calf``: leave-one-leg-out on the real QMRITools calf images (DTI b0,
  first MESE echo, Dixon water): a model trained with one leg's labels
  segments the other leg.
* ``real`` (or ``real-thigh``): real thighs without labels (Dixon echo
  at 4.60 ms, first MESE echo, MT-off); ``real-calf``: real calves without
  labels (Siemens 3D Dixon echo at 4.60 ms, first GE MEGRE echo): overlay
  montages in docs/figures and left/right volumes.
* ``phantom``: 4 phantom participants (seeds ``[2000, k]``), T1w.
* ``ideal`` and ``dafne``: the real labelled images ``thigh_ideal_labelled``
  (IDEAL water and fat of a patient, nnU-Net labels) and ``calf_t1_dafne``
  (T1w slice, manual masks), segmented as the app does (the ensemble of
  contrasts and ``--scales``; :mod:`real_seg_tasks`): per-muscle Dice, Dice
  per fat-fraction band, and how the per-muscle confidence ranks and flags
  the muscles (Spearman correlation with Dice, share of muscles below Dice
  0.7 that are flagged). These real images, not the synthetic tests, decide
  what ships.

Usage::

    python benchmarks/eval_seg.py --models MODEL_DIR [--tasks thigh calf real phantom ideal dafne] [--calf-lolo DIR]
        [--networks unet2d hrnet] [--scales 0.9 1.0 1.1] [--contrasts water fat water+fat]
        [--figures docs/figures] [--out results_dir]

Prints per-muscle tables (Dice, HD95, ASSD, absence) and summary lines.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_seg_tasks
import train_synth_models as sources
from scipy.stats import spearmanr

from bids_muscle.phantom import anatomy, signals
from bids_muscle.seg import synth
from bids_muscle.seg.infer import resample_labels, segment
from bids_muscle.seg.labels import load_label_table
from bids_muscle.seg.legs import side_labels, voxel_sizes
from bids_muscle.seg.zoo import load_model
from bids_muscle.stats.agreement import compare_segmentations

THIGH_TEST_CONTRASTS = ("t1w", "water", "fat", "t2", "stir")


def _scores(dseg: np.ndarray, truth: np.ndarray, labels, spacing, ignore: np.ndarray | None = None) -> pd.DataFrame:
    dseg = dseg.astype(np.int32).copy()
    if ignore is not None:
        dseg[ignore] = 0
    table = compare_segmentations(dseg, truth.astype(np.int32), labels, spacing)
    return table[table["present_b"]]


def thigh_synthetic(model_name: str, model_dir: Path) -> pd.DataFrame:
    model, card = load_model(model_name, model_dir)
    table = {lab.index: lab for lab in load_label_table("thigh")}
    labels = [i for i in card.labels]
    rows = []
    for name, label_map, affine in sources.huashan_maps(sources.HUASHAN_TEST):
        legs = synth.leg_anatomies(label_map, affine, "thigh", sources.HUASHAN_CODES, voxel_size_mm=(1.0, 1.0),
                                   complete=False, source=name)
        for k, leg in enumerate(legs):
            for c, family in enumerate(THIGH_TEST_CONTRASTS):
                rng = np.random.default_rng([5000, sum(map(ord, name)), k, c])
                image, classes = synth.synthesise_volume(leg, "thigh", labels, rng, family=family)
                leg_affine = np.diag([1.0, 1.0, leg.voxel_mm[2], 1.0])
                leg_affine[0, 3] = 20.0  # a right leg: centred right of the midline
                t0 = time.monotonic()
                dseg = segment(image, leg_affine, model, card, num_threads=2)["dseg"]
                seconds = time.monotonic() - t0
                truth = np.where(classes > 0, np.asarray([0] + labels)[np.clip(classes, 0, None)], 0)
                scores = _scores(dseg, truth, [table[i] for i in labels], voxel_sizes(leg_affine), classes < 0)
                scores = scores.assign(map=name, leg=k, contrast=family, seconds=seconds)
                rows.append(scores)
    return pd.concat(rows, ignore_index=True)


#: Real calf test contrasts (the issue's three; the training leg also saw them).
CALF_TEST_CONTRASTS = ("dti_b0", "mese_echo1", "dixon_water")


def calf_lolo(model_dir: Path, network: str = "unet2d") -> pd.DataFrame:
    """Leave-one-leg-out: models ``calf_<network>_lolo_odd`` / ``_even`` in
    ``model_dir`` were trained on the odd (left) / even (right) labels and are
    tested on the other leg.

    Two scores per muscle: ``dice`` leaves out the unlabelled tissue inside
    the fascia of the tested leg (the extensor hallucis longus and the deep
    flexors the QMRITools labels lack, as the Huashan adductors in the thigh
    test) and ``dice_strict`` counts every voxel."""
    table = {lab.index: lab for lab in load_label_table("calf")}
    images = {name: value for name, value in sources.calf_images().items() if name in CALF_TEST_CONTRASTS}
    rows = []
    for trained, tested, side, other_side in (("odd", "even", "right", "left"), ("even", "odd", "left", "right")):
        model, card = load_model(f"calf_{network}_lolo_{trained}", model_dir)
        truth, dti_affine = sources.calf_truth(tested)
        labels = sorted(set(side_labels(np.array(list(sources.QMRI_CALF.values())), "calf", side).tolist()))
        for contrast, (image, affine) in images.items():
            truth_grid = resample_labels(truth, dti_affine, image.shape, affine)
            t0 = time.monotonic()
            dseg = segment(image, affine, model, card, num_threads=2)["dseg"]
            seconds = time.monotonic() - t0
            other_leg = np.isin(dseg, [i for i in table if table[i].side == other_side])
            dseg = np.where(other_leg, 0, dseg)
            spacing = voxel_sizes(affine)
            unlabelled = synth.mark_unlabelled(truth_grid, float(spacing[0])) == synth.IGNORE
            scores = _scores(dseg, truth_grid, [table[i] for i in labels], spacing, unlabelled)
            strict = _scores(dseg, truth_grid, [table[i] for i in labels], spacing)
            scores = scores.assign(dice_strict=strict["dice"].to_numpy())
            rows.append(scores.assign(trained=trained, tested=tested, contrast=contrast, seconds=seconds))
    return pd.concat(rows, ignore_index=True)


def real_legs(model_name: str, model_dir: Path, figures: Path | None) -> pd.DataFrame:
    """Unlabelled real scans of the model's region: volumes per side and
    overlay montages."""
    model, card = load_model(model_name, model_dir)
    table = load_label_table(card.region)
    cases = {}
    if card.region == "thigh":
        cases["thigh_dixon_siemens (TE 4.60 ms)"] = sources.nifti("thigh_dixon_siemens/0008-Dixon_TE_460_th.nii.gz")
        cases["thigh_mese_siemens_dicom (echo 1)"] = sources.dicom_first_echo("thigh_mese_siemens_dicom")
        cases["thigh_mt (MT off)"] = sources.nifti("thigh_mt/mt_off.nii.gz")
    else:
        cases["calf_dixon3d_siemens (TE 4.60 ms)"] = sources.nifti("calf_dixon3d_siemens/0028-dix3d_TR23_448m_fa05_460.nii.gz")
        cases["calf_megre_ge_dicom (echo 1)"] = sources.dicom_first_echo("calf_megre_ge_dicom")
    rows = []
    for name, (image, affine) in cases.items():
        if image.ndim == 4:
            image = image[..., 0]
        t0 = time.monotonic()
        dseg = segment(image, affine, model, card, num_threads=2)["dseg"]
        seconds = time.monotonic() - t0
        voxel_ml = float(np.prod(voxel_sizes(affine))) / 1000.0
        for lab in table:
            if lab.side != "right" or lab.index not in card.labels:
                continue
            right = np.count_nonzero(dseg == lab.index) * voxel_ml
            left = np.count_nonzero(dseg == int(side_labels(np.array([lab.index]), card.region, "left")[0])) * voxel_ml
            rows.append({"image": name, "muscle": lab.muscle, "abbreviation": lab.abbreviation.rsplit("_", 1)[0],
                         "right_ml": right, "left_ml": left, "seconds": seconds})
        if figures is not None:
            _montage(image, affine, dseg, figures / f"seg_{name.split(' ')[0]}_{model_name}.png", name, card.region)
    return pd.DataFrame(rows)


def _montage(image: np.ndarray, affine: np.ndarray, dseg: np.ndarray, path: Path, title: str, region: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bids_muscle.seg.legs import reorient_to_ras

    image_ras, _, _ = reorient_to_ras(image, affine)
    dseg_ras, _, _ = reorient_to_ras(dseg, affine)
    nz = image_ras.shape[2]
    picks = np.unique(np.linspace(0.2 * (nz - 1), 0.8 * (nz - 1), 3).round().astype(int))
    colours = {lab.index: lab.color for lab in load_label_table(region)}
    lut = np.zeros((max(colours) + 1, 4))
    for index, colour in colours.items():
        lut[index] = matplotlib.colors.to_rgba(colour, 0.45)
    fig, axes = plt.subplots(1, len(picks), figsize=(5 * len(picks), 3.2))
    for ax, z in zip(np.atleast_1d(axes), picks):
        ax.imshow(image_ras[..., z].T, origin="lower", cmap="gray", vmax=np.percentile(image_ras, 99.5))
        ax.imshow(lut[np.clip(dseg_ras[..., z], 0, len(lut) - 1)].transpose(1, 0, 2), origin="lower")
        ax.set_title(f"slice {z}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{title}: subject's right on the right of each panel (RAS)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=70)
    plt.close(fig)


def phantom(model_name: str, model_dir: Path, region: str) -> pd.DataFrame:
    model, card = load_model(model_name, model_dir)
    table = load_label_table(region)
    rows = []
    for k in range(4):
        rng = np.random.default_rng([2000, k])
        truth = anatomy.draw_region(region, rng)
        dseg = segment(signals.t1w_image(truth, rng), truth.affine, model, card, num_threads=2)["dseg"]
        rows.append(_scores(dseg, truth.labels, table, voxel_sizes(truth.affine)).assign(participant=k))
    return pd.concat(rows, ignore_index=True)


def muscle_region_phantom(model_dir: Path) -> pd.DataFrame:
    """Dice of the muscle-region models against the phantom's truth
    (muscles and the fat between them), T1w of 4 participants."""
    from bids_muscle.seg.infer import muscle_region_mask

    rows = []
    for region in ("thigh", "calf"):
        model, card = load_model(f"{region}_muscleregion", model_dir)
        for k in range(4):
            rng = np.random.default_rng([2000, k])
            truth = anatomy.draw_region(region, rng)
            mask = muscle_region_mask(signals.t1w_image(truth, rng), truth.affine, model, card, num_threads=2)
            reference = truth.muscle_region
            dice = 2 * np.count_nonzero(mask & reference) / (np.count_nonzero(mask) + np.count_nonzero(reference))
            rows.append({"region": region, "participant": k, "dice": dice})
    return pd.DataFrame(rows)


def region_classifier_real(model_dir: Path) -> pd.DataFrame:
    """Thigh or calf on the real scans the classifier did not see in training
    (``train_synth_models.real_region_images("test")``)."""
    from bids_muscle.seg.infer import classify_region

    model, card = load_model("region_classifier", model_dir)
    rows = []
    for name, truth, image, affine in sources.real_region_images("test"):
        predicted, probabilities = classify_region(image, affine, model, card, num_threads=2)
        rows.append({"image": name, "truth": truth, "predicted": predicted, "confidence": probabilities[predicted]})
    return pd.DataFrame(rows)


def real_labelled(task_name: str, model_name: str, model_dir: Path, scales, contrasts) -> pd.DataFrame:
    """A real labelled task (:data:`real_seg_tasks.TASKS`) through the app's ensemble."""
    task = real_seg_tasks.TASKS[task_name]()
    model, card = load_model(model_name, model_dir)
    table, seconds = real_seg_tasks.segment_task(task, model, card, contrasts, scales)
    return table.assign(task=task["name"], model=model_name, seconds=seconds)


def confidence_summary(table: pd.DataFrame) -> str:
    low = table[table["dice"] < 0.7]
    rho = spearmanr(table["confidence"], table["dice"])[0] if table["confidence"].nunique() > 1 else float("nan")
    flagged = f"{int(low['flagged'].sum())} of {len(low)}" if len(low) else "none below 0.7"
    return (f"confidence: Spearman with Dice {rho:.2f}; muscles with Dice < 0.7 flagged: {flagged}; "
            f"flagged with Dice >= 0.7: {int(table[table['dice'] >= 0.7]['flagged'].sum())}")


def summary(table: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    grouped = table.groupby(by) if by else table.assign(all="all").groupby("all")
    return grouped.agg(dice=("dice", "mean"), hd95_mm=("hd95_mm", "median"), assd_mm=("assd_mm", "mean"),
                       absence_rate=("absent", "mean"), n=("dice", "size")).round(3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, required=True, help="folder of the models under test")
    parser.add_argument("--calf-lolo", type=Path, help="folder of calf_<net>_lolo_{odd,even} models (default --models)")
    parser.add_argument("--tasks", nargs="+", default=["thigh", "calf", "real", "phantom"])
    parser.add_argument("--networks", nargs="+", default=["unet2d"])
    parser.add_argument("--scales", type=float, nargs="+", default=[0.9, 1.0, 1.1],
                        help="model voxel-size factors of the ensemble (ideal, dafne)")
    parser.add_argument("--contrasts", nargs="+", help="ensemble images used (ideal: water fat water+fat; default all)")
    parser.add_argument("--figures", type=Path, help="folder for the real-thigh montages")
    parser.add_argument("--out", type=Path, help="folder for the per-muscle TSV tables")
    args = parser.parse_args()
    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 200)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)

    def save(table: pd.DataFrame, name: str) -> None:
        if args.out:
            table.to_csv(args.out / f"{name}.tsv", sep="\t", index=False, float_format="%.4f")

    for network in args.networks:
        if "thigh" in args.tasks:
            result = thigh_synthetic(f"thigh_{network}", args.models)
            save(result, f"thigh_synthetic_{network}")
            print(f"\n## thigh_{network}: held-out Huashan maps, synthetic contrasts")
            print(summary(result, ["contrast"]).to_string())
            print(summary(result).to_string())
            print(summary(result, ["abbreviation"]).to_string())
            print(f"inference: {result.groupby(['map', 'leg', 'contrast'])['seconds'].first().max():.1f} s per leg volume at most")
        if "calf" in args.tasks:
            result = calf_lolo(args.calf_lolo or args.models, network)
            save(result, f"calf_lolo_{network}")
            print(f"\n## calf_{network}: leave-one-leg-out on real images")
            print(summary(result, ["contrast"]).to_string())
            print(summary(result, ["trained", "contrast"]).to_string())
            print(summary(result).to_string())
            print(f"every voxel counted (dice_strict): mean {result['dice_strict'].mean():.3f}; by contrast "
                  + ", ".join(f"{c} {v:.3f}" for c, v in result.groupby("contrast")["dice_strict"].mean().items()))
            result["muscle"] = result["abbreviation"].str.rsplit("_", n=1).str[0]
            print(summary(result, ["muscle"]).to_string())
        for region in ("thigh", "calf"):
            if f"real-{region}" not in args.tasks and not (region == "thigh" and "real" in args.tasks):
                continue
            result = real_legs(f"{region}_{network}", args.models, args.figures)
            save(result, f"real_{region}_{network}")
            result["diff_percent"] = 200 * (result["right_ml"] - result["left_ml"]) / (result["right_ml"] + result["left_ml"])
            print(f"\n## {region}_{network}: real scans without labels, volumes per side")
            print(result.round(1).to_string())
            totals = result.groupby("image")[["right_ml", "left_ml"]].sum()
            totals["diff_percent"] = 200 * (totals["right_ml"] - totals["left_ml"]) / (totals["right_ml"] + totals["left_ml"])
            print(totals.round(1).to_string())
        for task_name, region in (("ideal", "thigh"), ("dafne", "calf")):
            if task_name not in args.tasks:
                continue
            result = real_labelled(task_name, f"{region}_{network}", args.models, args.scales, args.contrasts)
            save(result, f"real_{task_name}_{network}")
            print(f"\n## {region}_{network}: {result['task'].iloc[0]} (real, labelled), scales {args.scales}, "
                  f"{result['seconds'].iloc[0]:.1f} s")
            print(result[["abbreviation", "dice", "hd95_mm", "assd_mm", "confidence", "flagged"]
                         + (["ff_median"] if "ff_median" in result else [])].round(3).to_string())
            print(summary(result).to_string())
            if "ff_band" in result:
                print(summary(result, ["ff_band"]).to_string())
            print(confidence_summary(result))
        if "muscleregion" in args.tasks:
            result = muscle_region_phantom(args.models)
            save(result, "muscleregion_phantom")
            print("\n## muscle region models: phantom T1w, Dice with the truth region")
            print(result.groupby("region")["dice"].agg(["mean", "min"]).round(3).to_string())
        if "classifier" in args.tasks:
            result = region_classifier_real(args.models)
            save(result, "region_classifier_real")
            print("\n## region classifier on real images")
            print(result.round(3).to_string())
            print(f"accuracy {np.mean(result['truth'] == result['predicted']):.3f} on {len(result)} images")
        if "phantom" in args.tasks:
            for region in ("thigh", "calf"):
                result = phantom(f"{region}_{network}", args.models, region)
                save(result, f"phantom_{region}_{network}")
                print(f"\n## {region}_{network}: phantom T1w, 4 participants")
                print(summary(result).to_string())


if __name__ == "__main__":
    main()
