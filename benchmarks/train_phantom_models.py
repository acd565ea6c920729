"""Train the phantom segmentation models shipped in ``bids_muscle/data/models``.

These models are trained on the digital phantom only: images of every phantom
contrast (T1w, first MESE echo, first MEGRE magnitude echo, MT-off) drawn
from phantom anatomies with seeds that the test and demo datasets never use
(``[1000, k]``). They make the demo and the end-to-end tests run the whole
chain; they are not meant for real scans.

Usage::

    python benchmarks/train_phantom_models.py OUT_DIR [--regions thigh calf] [--architecture unet2d] [--minutes 8]

Writes ``<region>_<architecture>.pt`` and ``.json`` (card with the validation Dice)
into OUT_DIR and prints the Dice of each model on 4 fresh phantom
participants (seeds ``[2000, k]``) after running it through
:func:`bids_muscle.seg.infer.segment` on their T1w images.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bids_muscle.phantom import anatomy, signals
from bids_muscle.seg.infer import segment
from bids_muscle.seg.labels import load_label_table
from bids_muscle.seg.train import train_model
from bids_muscle.seg.zoo import load_model

CONTRASTS = ("t1w", "mese", "megre", "mt_off")


def phantom_image(truth: anatomy.RegionTruth, contrast: str, rng: np.random.Generator) -> np.ndarray:
    if contrast == "t1w":
        return signals.t1w_image(truth, rng)
    if contrast == "mese":
        return signals.mese_images(truth, rng)[0][..., 0]
    if contrast == "megre":
        return signals.megre_images(truth, rng)[0][..., 0]
    return signals.mt_images(truth, rng)[0]


def training_set(region: str, n_anatomies: int, n_slices: int = 6):
    images, labels, affines = [], [], []
    for k in range(n_anatomies):
        rng = np.random.default_rng([1000, k])
        truth = anatomy.draw_region(region, rng, n_slices=n_slices)
        contrast = CONTRASTS[k % len(CONTRASTS)]
        images.append(phantom_image(truth, contrast, rng))
        labels.append(truth.labels)
        affines.append(truth.affine)
    return images, labels, affines


def evaluate(region: str, architecture: str, model_dir: Path, n: int = 4) -> float:
    model, card = load_model(f"{region}_{architecture}", model_dir)
    dices = []
    for k in range(n):
        rng = np.random.default_rng([2000, k])
        truth = anatomy.draw_region(region, rng)
        dseg = segment(signals.t1w_image(truth, rng), truth.affine, model, card)["dseg"]
        for lab in load_label_table(region):
            a, b = truth.labels == lab.index, dseg == lab.index
            if a.any():
                dices.append(2 * np.sum(a & b) / (a.sum() + b.sum()))
    return float(np.mean(dices))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--regions", nargs="+", default=["thigh", "calf"])
    parser.add_argument("--architecture", default="unet2d", choices=["unet2d", "unet3d", "transunet", "hrnet"])
    parser.add_argument("--minutes", type=float, default=8.0, help="training time limit per model")
    parser.add_argument("--anatomies", type=int, default=24)
    args = parser.parse_args()
    for region in args.regions:
        t0 = time.time()
        images, labels, affines = training_set(region, args.anatomies)
        result = train_model(
            images, labels, affines, region, args.architecture, args.out_dir,
            arguments={"base_features": 8},
            voxel_size_mm=(2.0, 2.0, None),
            epochs=200, steps_per_epoch=25, batch_size=8, patience=15, seed=0,
            time_limit_s=args.minutes * 60,
            training_data=[{"name": "bids_muscle digital phantom", "origin": "bids_muscle.phantom (seeds [1000, k])",
                            "images": len(images), "contrasts": list(CONTRASTS), "licence": "Apache-2.0"}],
            licence="Apache-2.0",
            description=f"{args.architecture} for the {region} muscles, trained on the digital phantom only (demo and tests); "
                        "not validated on real scans.",
            progress=lambda r: print(f"{region} epoch {r['epoch']} loss {r['train_loss']:.3f} val Dice {r['val_dice']:.3f}", flush=True),
        )
        dice = evaluate(region, args.architecture, args.out_dir)
        card = json.loads(result.card_path.read_text())
        card["validation"]["test_dice_phantom_t1w"] = round(dice, 4)
        card["validation"]["test_set"] = "4 phantom participants, seeds [2000, k], T1w, through segment()"
        result.card_path.write_text(json.dumps(card, indent=2) + "\n")
        print(f"{region}: best validation Dice {result.best_val_dice:.3f}; Dice on 4 new phantom T1w {dice:.3f}; "
              f"{time.time() - t0:.0f} s; card {result.card_path}")


if __name__ == "__main__":
    main()
