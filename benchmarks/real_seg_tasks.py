"""Real labelled segmentation tasks of ``../shared/data`` (no model was trained on them).

* ``thigh_ideal_labelled``: one real thigh (IDEAL water and fat, 512x512x16,
  0.74x0.74x24 mm, a patient with fat-infiltrated posterior muscles) with
  nnU-Net reference labels (Huashan codes; both legs share each value, so
  the side is taken from the world x of each voxel). Only slices whose
  labelled area is at least half the largest are scored, as the data
  README says. Dice is also reported per fat-fraction band of the
  reference muscle (median fat / (water + fat)), as Hostin et al. 2023 do.
* ``calf_t1_dafne``: one real T1w calf slice with expert manual masks of
  six muscles per leg (rows anterior to posterior, columns from the
  patient's right to left; 5 mm slice assumed).

:func:`segment_task` runs :func:`bids_muscle.seg.ensemble.segment_ensemble`
as the app does; :func:`score` gives the per-muscle table.
"""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from bids_muscle.seg.ensemble import DEFAULT_SCALES, ensemble_contrasts, flag_muscles, segment_ensemble
from bids_muscle.seg.labels import load_label_table
from bids_muscle.seg.legs import side_labels, voxel_sizes
from bids_muscle.stats.agreement import compare_segmentations
from train_synth_models import DATA, HUASHAN_CODES

DAFNE_MUSCLES = {"Gastrocnemius Medialis": 41, "Gastrocnemius Lateralis": 42, "Soleus": 43, "Tibialis Anterior": 44,
                 "Peroneus": 46, "Extensor Longus Digitorum": 47}
FF_BANDS = (0.0, 0.2, 0.5, 1.01)


def thigh_ideal(data: Path = DATA) -> dict:
    folder = data / "thigh_ideal_labelled"
    water_img = nib.load(folder / "water.nii.gz")
    water = water_img.get_fdata(dtype=np.float32)
    fat = nib.load(folder / "fat.nii.gz").get_fdata(dtype=np.float32)
    codes = np.asarray(nib.load(folder / "labels.nii.gz").dataobj).astype(np.int16)
    affine = water_img.affine
    right = np.zeros_like(codes)
    for code, ours in HUASHAN_CODES.items():
        right[codes == code] = ours
    left = np.where(right > 0, side_labels(right, "thigh", "left"), 0)
    ij = np.indices(codes.shape[:2]).reshape(2, -1)
    x = (affine[0, :2] @ ij + affine[0, 3]).reshape(codes.shape[:2])
    total = water + fat
    body = total > 0.1 * np.percentile(total, 99)
    midline = float(np.median(np.broadcast_to(x[..., None], codes.shape)[body]))
    truth = np.where((x > midline)[..., None], right, left).astype(np.int16)  # RAS+: +x towards the subject's right
    area = (codes > 0).sum(axis=(0, 1))
    fat_fraction = np.where(total > 0, fat / np.maximum(total, 1e-6), np.nan)
    return {"name": "thigh_ideal_labelled", "region": "thigh", "images": ensemble_contrasts(water, fat),
            "affine": affine, "truth": truth, "scored": area >= 0.5 * area.max(), "ff": fat_fraction}


def calf_dafne(data: Path = DATA) -> dict:
    folder = data / "calf_t1_dafne"
    loaded = np.load(folder / "image.npz")
    rois = np.load(folder / "manual_rois.npz")
    image = loaded["image"].astype(np.float32)[..., None]
    mm = float(loaded["resolution"][0])
    truth = np.zeros(image.shape, np.int16)
    for key in rois.files:
        muscle, side = key.rsplit("_", 1)
        truth[rois[key].astype(bool)] = DAFNE_MUSCLES[muscle] + (20 if side == "L" else 0)
    # rows: world y decreasing (anterior to posterior); columns: world x decreasing (right to left)
    affine = np.array([[0.0, -mm, 0, 0], [-mm, 0, 0, 0], [0, 0, 5.0, 0], [0, 0, 0, 1]])
    return {"name": "calf_t1_dafne", "region": "calf", "images": ensemble_contrasts(image), "affine": affine,
            "truth": truth, "scored": np.array([True]), "ff": None}


TASKS = {"ideal": thigh_ideal, "dafne": calf_dafne}


def score(dseg: np.ndarray, task: dict) -> pd.DataFrame:
    """Per-muscle Dice, HD95, ASSD on the scored slices, with the reference
    muscle's median fat fraction where the task has one."""
    scored = task["scored"][None, None, :]
    test = np.where(scored, dseg, 0).astype(np.int32)
    truth = np.where(scored, task["truth"], 0).astype(np.int32)
    present = [lab for lab in load_label_table(task["region"]) if (truth == lab.index).any()]
    table = compare_segmentations(test, truth, present, voxel_sizes(task["affine"]))
    if task["ff"] is not None:
        table["ff_median"] = [float(np.nanmedian(task["ff"][truth == lab.index])) for lab in present]
        table["ff_band"] = pd.cut(table["ff_median"], FF_BANDS, right=False,
                                  labels=[f"{int(100 * a)}-{min(100, int(100 * b))} %" for a, b in zip(FF_BANDS, FF_BANDS[1:])])
    return table


def segment_task(task: dict, model, card, contrasts=None, scales=DEFAULT_SCALES, num_threads: int = 2) -> tuple[pd.DataFrame, float]:
    """Segment a task as the app does and score it; also the seconds taken.
    The table gets ``confidence`` (expected Dice) and ``flagged``."""
    images = {k: v for k, v in task["images"].items() if contrasts is None or k in contrasts}
    t0 = time.monotonic()
    result = segment_ensemble(images, task["affine"], model, card, scales=scales, num_threads=num_threads)
    seconds = time.monotonic() - t0
    table = score(result["dseg"], task)
    voxel_ml = float(np.prod(voxel_sizes(task["affine"]))) / 1000.0
    volumes = {k: np.count_nonzero(result["dseg"] == k) * voxel_ml for k in result["confidence"]}
    flags = flag_muscles(result["confidence"], volumes, task["region"])
    table["confidence"] = [result["confidence"].get(int(k), 0.0) for k in table["label"]]
    table["flagged"] = [bool(flags.get(int(k), ["not found"])) for k in table["label"]]
    return table, seconds
