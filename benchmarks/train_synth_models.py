"""Train the default segmentation models by synthesis from real label maps.

Anatomy sources (``../shared/data``, see its README):

* thigh: 28 HuashanMyo label maps (11 muscles per leg; 5 held out for the
  test, 2 for early stopping, 21 for training), the MuscleMap whole-leg map
  (13 thigh muscles and the femur) and phantom anatomies (13 muscles);
* calf: the QMRITools calf labels (7 muscles per leg) and phantom anatomies
  (10 muscles).

Maps that label only some of the table's muscles (Huashan: no adductor
longus or brevis; QMRITools: no extensor hallucis longus, flexor digitorum
longus or flexor hallucis longus) are "incomplete": their unlabelled tissue
inside the fascia is rendered but ignored by the loss, and the missing
muscles are learnt from the complete sources.

Usage::

    python benchmarks/train_synth_models.py OUT_DIR --model thigh_unet2d [--minutes 30] [--seed 0]
    python benchmarks/train_synth_models.py OUT_DIR --model calf_unet2d --calf-legs odd   # leave-one-leg-out

Models: ``<region>_<architecture>`` (unet2d, unet3d, hrnet, transunet) and
``<region>_muscleregion`` (binary muscle region, U-Net 2D).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_muscle.phantom import anatomy, signals
from bids_muscle.seg import synth
from bids_muscle.seg.infer import resample_labels
from bids_muscle.seg.labels import load_label_table
from bids_muscle.seg.legs import side_labels
from bids_muscle.seg.train import (
    Augmentation,
    LegVolume,
    prepare_leg_volumes,
    train_region_classifier,
    train_synthetic_model,
)
from bids_muscle.seg.zoo import PRECISIONS

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HUASHAN_DIR = DATA / "thigh_labels_huashan"
#: Huashan label -> thigh table index (verified by anatomy, docs/models.md).
HUASHAN_CODES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 9, 8: 10, 9: 12, 10: 13, 11: 11}
#: Held-out test maps: subjects that appear once in the set, one per source contrast.
HUASHAN_TEST = (
    "Training__Fat__THIGH_057_0000",
    "Training__T1__THIGH_040_0002",
    "Training__T2__THIGH_035_0003",
    "Training__Water__THIGH_045_0001",
    "Training__Others__THIGH_046_0003",
)
HUASHAN_VAL = ("Training__T2__THIGH_054_0003", "Training__Water__THIGH_024_0001")
#: MuscleMap thigh codes (muscle x 10 + side) -> thigh table index.
MUSCLEMAP_THIGH = {710: 3, 711: 4, 712: 5, 713: 2, 714: 1, 715: 9, 716: 13, 717: 12, 718: 10, 719: 11, 720: 6, 721: 7, 722: 8}
MUSCLEMAP_BONES = (6171, 6172, 8151, 8152, 8161, 8162, 6151, 6152, 6160)
#: QMRITools calf labels -> calf table index (odd: subject's left leg by the DTI affine, even: right).
QMRI_CALF = {13: 41, 14: 41, 15: 42, 16: 42, 17: 43, 18: 43, 19: 44, 20: 44, 21: 46, 22: 46, 23: 47, 24: 47, 25: 45, 26: 45}
VOXEL_MM = {"thigh": (2.0, 2.0), "calf": (1.5, 1.5)}
PATCH = {"thigh": (112, 112), "calf": (112, 112)}
#: Training block (H, W, slices) of the 3D networks; they keep the native slices.
BLOCK = {"thigh": (112, 112, 8), "calf": (112, 112, 8)}
#: Their sliding window at inference: the whole leg in-plane, 16 slices.
WINDOW = (256, 256, 16)


def huashan_maps(names=None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, labels, affine) of the Huashan maps (all, or ``names``)."""
    paths = sorted(HUASHAN_DIR.glob("*.nii.gz"))
    out = []
    for path in paths:
        name = path.name.split(".nii")[0]
        if names is not None and name not in names:
            continue
        image = nib.load(str(path))
        out.append((name, np.asarray(image.dataobj), image.affine))
    return out


def huashan_legs(names) -> list[synth.LegAnatomy]:
    legs = []
    for name, labels, affine in huashan_maps(names):
        legs += synth.leg_anatomies(labels, affine, "thigh", HUASHAN_CODES, voxel_size_mm=VOXEL_MM["thigh"],
                                    complete=False, source=name)
    return legs


def musclemap_legs() -> list[synth.LegAnatomy]:
    image = nib.load(str(DATA / "thigh_labels_musclemap" / "test_dseg.nii.gz"))
    labels = np.asarray(image.dataobj).astype(np.int64)
    codes = {code: index for base, index in MUSCLEMAP_THIGH.items() for code in (base * 10 + 1, base * 10 + 2)}
    other = [int(c) for c in np.unique(labels) if c and c not in codes and c not in MUSCLEMAP_BONES]
    return synth.leg_anatomies(labels, image.affine, "thigh", codes, other_muscle_codes=other, bone_codes=MUSCLEMAP_BONES,
                               voxel_size_mm=VOXEL_MM["thigh"], complete=True, source="musclemap")


def phantom_legs(region: str, seeds, n_slices: int = 6) -> list[synth.LegAnatomy]:
    legs = []
    for seed in seeds:
        truth = anatomy.draw_region(region, np.random.default_rng(seed), n_slices=n_slices)
        bone = np.isin(truth.tissue, (anatomy.CORTEX, anatomy.MARROW))
        legs += synth.leg_anatomies(truth.labels, truth.affine, region, bone_mask=bone, voxel_size_mm=VOXEL_MM[region],
                                    complete=True, source=f"phantom {seed}")
    return legs


def calf_labels() -> tuple[np.ndarray, np.ndarray]:
    """QMRITools calf labels with the DTI affine (voxel-aligned with DTIdata;
    the label file's own affine is a default one)."""
    labels = np.asarray(nib.load(str(DATA / "calf_mese_philips" / "labels.nii.gz")).dataobj).astype(np.int64)
    affine = nib.load(str(DATA / "calf_mese_philips" / "DTIdata.nii.gz")).affine
    return labels, affine


def calf_legs(parity: str) -> list[synth.LegAnatomy]:
    """Canonical legs of the QMRITools labels: ``odd`` or ``even`` codes only, or ``both``."""
    labels, affine = calf_labels()
    if parity != "both":
        keep = (labels % 2 == 1) if parity == "odd" else (labels % 2 == 0)
        labels = np.where(keep & (labels > 0), labels, 0)
    return synth.leg_anatomies(labels, affine, "calf", QMRI_CALF, voxel_size_mm=VOXEL_MM["calf"], complete=False,
                               source=f"qmritools {parity}")


def calf_images() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Real QMRITools calf images and their affines (all in the DTI
    convention): DTI b0 and mean diffusion-weighted image, MESE echoes 1, 6
    and 12, Dixon water and fat."""
    folder = DATA / "calf_mese_philips"
    dti = nib.load(str(folder / "DTIdata.nii.gz"))
    diffusion = np.asarray(dti.dataobj).astype(np.float32)
    bvals = np.loadtxt(folder / "DTIdata.bval").ravel()
    t2 = nib.load(str(folder / "T2data.nii.gz"))
    stack = np.asarray(t2.dataobj).astype(np.float32)
    flat = stack.reshape(stack.shape[:2] + (-1,), order="F")  # slices x 17 echoes, echo fastest
    # the Dixon files' affine is a default one: their field of view is the DTI
    # one (480 mm) at half the voxel size; 23 of the 25 DTI slice positions,
    # centred (a +-1 slice shift changes the image correlation by < 0.1 %)
    dixon_affine = dti.affine @ np.diag([0.5, 0.5, 1.0, 1.0])
    dixon_affine[:3, 3] = dti.affine[:3, :3] @ np.array([-0.25, -0.25, 1.0]) + dti.affine[:3, 3]
    images = {
        "dti_b0": (diffusion[..., bvals < 50].mean(axis=-1), dti.affine),
        "dti_dwi": (diffusion[..., bvals >= 50].mean(axis=-1), dti.affine),
    }
    for echo in (1, 6, 12):
        images[f"mese_echo{echo}"] = (flat[..., echo - 1 : 221 : 17], t2.affine)
    for part in ("water", "fat"):
        images[f"dixon_{part}"] = (np.asarray(nib.load(str(folder / f"{part}.nii.gz")).dataobj).astype(np.float32), dixon_affine)
    return images


def calf_truth(parity: str) -> tuple[np.ndarray, np.ndarray]:
    """QMRITools calf labels as calf table indices (odd codes: left leg) of
    the ``odd`` or ``even`` leg or ``both``, with the DTI affine."""
    codes, affine = calf_labels()
    truth = np.zeros(codes.shape, np.int16)
    for code, index in QMRI_CALF.items():
        if parity == "both" or (code % 2 == 1) == (parity == "odd"):
            truth[codes == code] = index
    truth = np.where(codes % 2 == 1, side_labels(truth, "calf", "left"), truth).astype(np.int16)
    return truth, affine


def calf_real_legs(parity: str, label_indices, contrasts=None) -> list[LegVolume]:
    """Real labelled calf legs (``odd``/``even``/``both``) in every real
    contrast on the model grid, ``IGNORE`` on unlabelled tissue inside the
    fascia (the extensor hallucis longus and the deep flexors, bones)."""
    truth, truth_affine = calf_truth(parity)
    images, labels, affines = [], [], []
    for name, (image, affine) in calf_images().items():
        if contrasts is not None and name not in contrasts:
            continue
        images.append(image)
        labels.append(resample_labels(truth, truth_affine, image.shape, affine))
        affines.append(affine)
    legs = prepare_leg_volumes(images, labels, affines, "calf", label_indices, list(VOXEL_MM["calf"]) + [None], 2)
    legs = [leg for leg in legs if (leg.classes > 0).any()]
    for leg in legs:
        leg.classes = synth.mark_unlabelled(leg.classes, VOXEL_MM["calf"][0])
    return legs


def phantom_val_legs(region: str, label_indices, seeds) -> list[LegVolume]:
    images, labels, affines = [], [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        truth = anatomy.draw_region(region, rng)
        images.append(signals.t1w_image(truth, rng))
        labels.append(truth.labels)
        affines.append(truth.affine)
    return prepare_leg_volumes(images, labels, affines, region, label_indices, list(VOXEL_MM[region]) + [None], 2)


def synthetic_val_legs(legs, region, label_indices, families, seed) -> list[LegVolume]:
    out = []
    for k, leg in enumerate(legs):
        family = families[k % len(families)]
        image, classes = synth.synthesise_volume(leg, region, label_indices, np.random.default_rng([seed, k]), family=family)
        out.append(LegVolume(image=image, classes=classes, group=1000 + k))
    return out


def build(region: str, calf_parity: str = "both", seed: int = 0):
    """Anatomy groups, weights, validation legs and training-data records."""
    labels = [lab.index for lab in load_label_table(region) if lab.side == "right"]
    if region == "thigh":
        train_names = [n for n, _, _ in huashan_maps() if n not in HUASHAN_TEST + HUASHAN_VAL]
        groups = [huashan_legs(train_names), musclemap_legs(), phantom_legs("thigh", [[3000, k] for k in range(8)])]
        weights = [0.6, 0.25, 0.15]
        val = phantom_val_legs("thigh", labels, [[4000, 0], [4000, 1]])
        val += synthetic_val_legs(huashan_legs(HUASHAN_VAL), "thigh", labels, ("t1w", "water", "t2", "fat"), seed + 7)
        data = [
            {"name": "HuashanMyo thigh label maps", "origin": "Hirriririir/Multimodal-Multiethnic-Thigh-Muscle-MRI-analysis d2bd5873",
             "images": len(train_names), "licence": "Apache-2.0", "use": "anatomy for synthesis (labels only)"},
            {"name": "MuscleMap whole-leg label map", "origin": "MuscleMap/MuscleMap 524dede images/test_dseg.nii.gz",
             "images": 1, "licence": "MIT", "use": "anatomy for synthesis (labels only)"},
            {"name": "bids_muscle digital phantom anatomies", "origin": "bids_muscle.phantom.anatomy seeds [3000, k], k < 8",
             "images": 8, "licence": "Apache-2.0", "use": "anatomy for synthesis"},
        ]
    else:
        qmri = calf_legs(calf_parity)
        real = calf_real_legs(calf_parity, labels)
        groups = [qmri, phantom_legs("calf", [[3000, k] for k in range(8)]), real]
        weights = [0.35, 0.3, 0.35]
        val = phantom_val_legs("calf", labels, [[4000, 0], [4000, 1]])
        val += synthetic_val_legs(qmri, "calf", labels, ("water", "pd"), seed + 7)
        data = [
            {"name": "QMRITools calf demo labels", "origin": "mfroeling/QMRITools 5394bc39 QMRITools/Resources/DemoData/labels",
             "images": 1, "legs": calf_parity, "licence": "BSD-3-Clause", "use": "anatomy for synthesis (labels only)"},
            {"name": "QMRITools calf demo images with their labels", "origin": "mfroeling/QMRITools 5394bc39 QMRITools/Resources/DemoData",
             "images": len(real), "legs": calf_parity, "licence": "BSD-3-Clause",
             "use": "real labelled slices (DTI b0 and mean DWI, MESE echoes 1/6/12, Dixon water/fat), randomly degraded"},
            {"name": "bids_muscle digital phantom anatomies", "origin": "bids_muscle.phantom.anatomy seeds [3000, k], k < 8",
             "images": 8, "licence": "Apache-2.0", "use": "anatomy for synthesis"},
        ]
    return labels, groups, weights, val, data


def two_leg_volume(legs, region, family, seed) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic image of both legs (left mirrored back, placed on the
    subject's left) with a RAS affine: an input for the region classifier."""
    labels = [lab.index for lab in load_label_table(region) if lab.side == "right"]
    parts = []
    for k, leg in enumerate(legs[:2]):
        image, _ = synth.synthesise_volume(leg, region, labels, np.random.default_rng([seed, k]), family=family)
        parts.append(image if k == 0 else image[::-1])
    nz = min(p.shape[2] for p in parts)
    ny = max(p.shape[1] for p in parts)
    floor = min(float(np.percentile(p, 1.0)) for p in parts)
    padded = [np.pad(p[..., :nz], ((0, 0), (0, ny - p.shape[1]), (0, 0)), constant_values=floor) for p in parts]
    voxel = legs[0].voxel_mm
    gap = np.full((int(np.random.default_rng(seed).uniform(0, 60) / voxel[0]),) + padded[0].shape[1:], floor, np.float32)
    image = np.concatenate([padded[1], gap, padded[0]] if len(padded) == 2 else padded, axis=0)  # left leg at low x (RAS)
    affine = np.diag([voxel[0], voxel[1], voxel[2], 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(image.shape) - 1) / 2.0)
    return image, affine


def nifti(path: str) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(DATA / path))
    data = np.asarray(image.dataobj).astype(np.float32)
    return (data[..., 0] if data.ndim == 4 else data), image.affine


def dicom_first_echo(folder: str) -> tuple[np.ndarray, np.ndarray]:
    from bids_muscle.dicom2bids import load_volume, scan_folder

    frames, _ = scan_folder(DATA / folder)
    frames = [f for f in frames if f.part in (None, "mag")]
    first = min(f.echo_time_ms for f in frames if f.echo_time_ms is not None)
    image, affine = load_volume([f for f in frames if f.echo_time_ms == first])
    return image.astype(np.float32), affine


def real_region_images(split: str) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(name, region, image, affine) of real scans of known region: the
    ``train`` split (QMRITools calf contrasts, Siemens thigh Dixon echoes, thigh
    MT) or the ``test`` split (every other dataset)."""
    out = []
    if split == "train":
        out += [(f"calf_mese_philips {n}", "calf", *v) for n, v in calf_images().items()]
        out += [(f"thigh_dixon_siemens {p}", "thigh", *nifti(f"thigh_dixon_siemens/{p}-Dixon_TE_{te}_th.nii.gz"))
                for p, te in (("0006", 345), ("0008", 460), ("0010", 575))]  # magnitudes
        out += [(f"thigh_mt {p}", "thigh", *nifti(f"thigh_mt/{p}.nii.gz")) for p in ("mt_off", "mt_on")]
        return out
    out += [(f"calf_dixon3d_siemens {p.name[:4]}", "calf", *nifti(f"calf_dixon3d_siemens/{p.name}"))
            for p in sorted((DATA / "calf_dixon3d_siemens").glob("*.nii.gz"))]
    out.append(("calf_megre_ge_dicom", "calf", *dicom_first_echo("calf_megre_ge_dicom")))
    out.append(("thigh_mese_siemens_dicom", "thigh", *dicom_first_echo("thigh_mese_siemens_dicom")))
    out += [(f"thigh_t2_se2echo {p}", "thigh", *nifti(f"thigh_t2_se2echo/{p}.nii.gz")) for p in ("t2_te16ms",)]
    out += [(f"thigh_b1_dam {p}", "thigh", *nifti(f"thigh_b1_dam/{p}.nii.gz")) for p in ("se_fa060",)]
    out += [(f"thigh_dixon_ge_masked {p.name[:5]}", "thigh", *nifti(f"thigh_dixon_ge_masked/{p.name}"))
            for p in sorted((DATA / "thigh_dixon_ge_masked").glob("4*.nii.gz"))]
    return out


def region_classifier_data(seed: int = 0):
    """Synthetic two-leg thigh and calf volumes from the training label maps
    (Huashan training maps, MuscleMap, QMRITools, phantom anatomies), plus
    the real scans of the ``train`` split of :func:`real_region_images`
    (each real calf image twice, to balance the regions)."""
    families = ("t1w", "water", "fat", "t2", "stir", "pd")
    thigh_names = [n for n, _, _ in huashan_maps() if n not in HUASHAN_TEST + HUASHAN_VAL]
    sets = [("thigh", synth.leg_anatomies(lab, aff, "thigh", HUASHAN_CODES, voxel_size_mm=(2.0, 2.0), complete=False))
            for n, lab, aff in huashan_maps(thigh_names)]
    sets.append(("thigh", musclemap_legs()))
    sets += [("thigh", phantom_legs("thigh", [[3100, k]])) for k in range(6)]
    calf = calf_legs("both")
    sets += [("calf", calf)] * 8
    sets += [("calf", phantom_legs("calf", [[3100, k]], n_slices=10)) for k in range(14)]
    images, affines, regions = [], [], []
    for k, (region, legs) in enumerate(sets):
        image, affine = two_leg_volume(legs, region, families[k % len(families)], [seed, k])
        images.append(image)
        affines.append(affine)
        regions.append(region)
    n_synthetic = len(images)
    for _, region, image, affine in real_region_images("train"):
        for _ in range(2 if region == "calf" else 1):
            images.append(image)
            affines.append(affine)
            regions.append(region)
    return images, affines, regions, n_synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--model", required=True, help="<region>_<unet2d|unet3d|hrnet|transunet|muscleregion>")
    parser.add_argument("--calf-legs", default="both", choices=["both", "odd", "even"], help="QMRITools legs used (calf)")
    parser.add_argument("--name", help="model name (default: --model)")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--base-features", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--steps-per-epoch", type=int, default=40)
    parser.add_argument("--pool-size", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init-from", help="model card (path) whose weights start the training")
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--patience", type=int, default=15)
    parser.add_argument("--group-weights", type=float, nargs="+",
                        help="share of each anatomy source (thigh: Huashan MuscleMap phantom, default 0.6 0.25 0.15; "
                             "calf: QMRITools-synthetic phantom QMRITools-real, default 0.35 0.3 0.35)")
    parser.add_argument("--rotation-deg", type=float, default=10.0, help="largest in-plane rotation of the augmentation")
    parser.add_argument("--lr-patience", type=int, default=4, help="epochs without gain before the learning rate is halved")
    parser.add_argument("--precision", default="float32", choices=PRECISIONS,
                        help="weight storage: float16 halves the file, int8 (per-channel scales) quarters it")
    args = parser.parse_args()
    if args.model == "region_classifier":
        t0 = time.time()
        images, affines, regions, n_synthetic = region_classifier_data(args.seed)
        print(f"{len(images)} synthetic volumes ({regions.count('thigh')} thigh) in {time.time() - t0:.0f} s", flush=True)
        result = train_region_classifier(
            images, affines, regions, args.out_dir, arguments={"base_features": 8}, epochs=400, steps_per_epoch=20,
            batch_size=16, seed=args.seed, patience=args.patience, time_limit_s=args.minutes * 60, num_threads=args.threads,
            licence="Apache-2.0",
            training_data=[{"name": "synthetic two-leg volumes from the thigh and calf training label maps",
                            "origin": "benchmarks/train_synth_models.py region_classifier_data",
                            "images": n_synthetic, "licence": "Apache-2.0 (sources: Apache-2.0, MIT, BSD-3-Clause)"},
                           {"name": "real scans: QMRITools calf demo (7 contrasts, each twice), musclemap Siemens thigh Dixon "
                                    "magnitudes (3) and thigh MT on/off (2)",
                            "origin": "mfroeling/QMRITools 5394bc39 DemoData; SWastling/musclemap bb20bfe5 tests/test_data",
                            "images": len(images) - n_synthetic, "licence": "BSD-3-Clause, MIT"}],
            progress=lambda r: print(f"epoch {r['epoch']} loss {r['train_loss']:.3f} val loss {r['val_loss']:.3f} "
                                     f"accuracy {r['val_accuracy']:.3f} {r['elapsed_s']:.0f} s", flush=True),
        )
        print(f"wrote {result.card_path}", flush=True)
        return
    region, kind = args.model.split("_", 1)
    architecture = "unet2d" if kind == "muscleregion" else kind
    target = "muscleregion" if kind == "muscleregion" else "muscles"
    t0 = time.time()
    labels, groups, weights, val, data = build(region, args.calf_legs, args.seed)
    if args.group_weights:
        if len(args.group_weights) != len(groups):
            parser.error(f"--group-weights needs {len(groups)} values for the {region}")
        weights = args.group_weights
    if target == "muscleregion":  # real labelled legs say nothing of the fascia: synthesis only
        keep = [k for k, group in enumerate(groups) if not any(isinstance(leg, LegVolume) for leg in group)]
        groups, weights = [groups[k] for k in keep], [weights[k] for k in keep]
        for leg in val:
            leg.classes = (leg.classes != 0).astype(np.int64)
    print(f"sources ready in {time.time() - t0:.0f} s: {[len(g) for g in groups]} legs, {len(val)} validation legs", flush=True)
    what = "the muscle region (inside the fascia, without bone)" if target == "muscleregion" else f"the {region} muscles"
    description = (f"{architecture} for {what}, trained on images synthesised from real label maps with random contrast, "
                   "fat infiltration, bias field, noise, resolution and deformation (bids_muscle.seg.synth); any contrast.")
    if region == "calf" and target == "muscles":
        description += " Real labelled slices of the QMRITools calf images (randomly degraded) are mixed in."
    if target == "muscleregion":
        description += " Output class 1 is the muscle region; the label listed is a placeholder for it."
    if architecture == "unet3d":
        description += (f" Trained on blocks of {BLOCK[region][2]} slices (every k-th slice of thin-slice sources, 3-12 mm "
                        "apart); keeps the native slices at inference.")
    result = train_synthetic_model(
        groups, region, architecture, args.out_dir,
        label_indices=labels, val_legs=val, group_weights=weights, name=args.name or args.model,
        arguments={"base_features": args.base_features}, voxel_size_mm=VOXEL_MM[region],
        patch_size=BLOCK[region] if architecture == "unet3d" else PATCH[region], precision=args.precision,
        inference_patch=WINDOW if architecture == "unet3d" else None,
        target=target, pool_size=args.pool_size, refresh_fraction=0.2, epochs=1000,
        steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, seed=args.seed, patience=args.patience,
        lr_patience=args.lr_patience, augmentation=Augmentation(rotation_deg=args.rotation_deg), learning_rate=args.learning_rate, init_from=args.init_from,
        training_data=data, licence="Apache-2.0", description=description,
        time_limit_s=args.minutes * 60, num_threads=args.threads,
        progress=lambda r: print(f"epoch {r['epoch']} loss {r['train_loss']:.3f} val Dice {r['val_dice']:.3f} "
                                 f"best {r['best_val_dice']:.3f} lr {r['learning_rate']:.1e} {r['elapsed_s']:.0f} s "
                                 f"(synthesis {r['synthesis_s']:.0f} s)", flush=True),
    )
    print(f"wrote {result.card_path}: best validation Dice {result.best_val_dice:.3f} in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
