"""Train the IMAT patch encoders shipped in ``bids_muscle/data/models``.

Training volumes are digital-phantom participants generated in memory
(seeds ``[3100, k]``, never the evaluation seeds ``[3200, k]`` of
``bench_imat.py``): thigh and calf in turn, mild, moderate and severe
infiltration in turn, multi-echo spin echo with the phantom's noise,
fitted with the two-component (water T2, FF) and single-component (T2, PD)
EPG models. The muscle region is the phantom's true one; the weak label of
a voxel is its *fitted* fat fraction above 50 % (the truth is never used).

Four encoders are written, each ``<name>.pt`` + ``<name>.json``:

* ``imat_dcae``: water T2 + FF, triplet + reconstruction loss (method ``dcae``)
* ``imat_ae``: water T2 + FF, reconstruction only (method ``dcae-kmeans``)
* ``imat_dcae_t2pd`` and ``imat_ae_t2pd``: the same on T2 + PD

Only the encoder is saved (the decoder is not needed to classify). Each
card holds the class centroids of the training embeddings and, unless
``--no-validation``, the Table 2 figures of ``bench_imat.py`` on held-out
participants.

Usage::

    nice -n 10 python benchmarks/train_imat_encoder.py [OUT_DIR] [--anatomies 24] [--steps 2000] [--ae-steps 800]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_imat import INPUTS, SEVERITIES, evaluate, evaluation_cases, phantom_case

from bids_muscle.imat import dcae
from bids_muscle.seg.zoo import package_model_dir

TRAINING_SEED = 3100
MODELS = {
    "imat_dcae": ("water_ff", 0.5),
    "imat_ae": ("water_ff", 0.0),
    "imat_dcae_t2pd": ("t2_pd", 0.5),
    "imat_ae_t2pd": ("t2_pd", 0.0),
}


def training_cases(n: int):
    combos = [(region, severity) for severity in SEVERITIES for region in ("thigh", "calf")]
    return [phantom_case(*combos[k % len(combos)], seed=[TRAINING_SEED, k]) for k in range(n)]


def training_volumes(cases, inputs: str) -> list[dcae.TrainingVolume]:
    volumes = []
    for case in cases:
        region = case.truth.muscle_region
        channels = dcae.normalise_maps(case.maps, region, INPUTS[inputs])
        weak = region & (np.nan_to_num(case.maps["ff_percent"]) > 50.0)
        volumes.append(dcae.TrainingVolume(channels, region, weak))
    return volumes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, nargs="?", default=package_model_dir())
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--anatomies", type=int, default=24)
    parser.add_argument("--steps", type=int, default=2000, help="steps of the triplet-trained encoders")
    parser.add_argument("--ae-steps", type=int, default=800, help="steps of the reconstruction-only encoders")
    parser.add_argument("--minutes", type=float, default=15.0, help="training time limit per model")
    parser.add_argument("--embedding-dim", type=int, default=16)
    parser.add_argument("--edge-fraction", type=float, default=0.5)
    parser.add_argument("--batch-triplets", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validation-participants", type=int, default=12)
    parser.add_argument("--no-validation", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    command = " ".join(["python", "benchmarks/train_imat_encoder.py", *(shlex.quote(a) for a in sys.argv[1:])])

    start = time.perf_counter()
    cases = training_cases(args.anatomies)
    print(f"{len(cases)} training participants simulated and fitted in {time.perf_counter() - start:.0f} s")
    validation = None if args.no_validation else evaluation_cases(args.validation_participants)

    for name in args.models:
        inputs, triplet_weight = MODELS[name]
        volumes = training_volumes(cases, inputs)
        n_voxels = sum(int(v.region.sum()) for v in volumes)
        n_imat = sum(int(v.weak_imat.sum()) for v in volumes)
        print(f"\n{name}: {' + '.join(INPUTS[inputs])}, triplet weight {triplet_weight}, {n_voxels} region voxels ({n_imat} weak IMAT)")
        model, history = dcae.train_patch_autoencoder(
            volumes,
            steps=args.steps if triplet_weight > 0 else args.ae_steps,
            batch_size=args.batch_triplets,
            embedding_dim=args.embedding_dim,
            triplet_weight=triplet_weight,
            edge_fraction=args.edge_fraction,
            seed=args.seed,
            max_seconds=60.0 * args.minutes,
            log=print,
        )
        centroids = dcae.class_centroids(model.encoder, volumes, seed=args.seed)
        card = {
            "name": name,
            "inputs": list(INPUTS[inputs]),
            "loss": {
                "triplet_weight": triplet_weight,
                "reconstruction_weight": 1.0 / 6.0,
                "margin": 1.0,
                "sampling": (
                    f"anchors half weak viable, half weak IMAT; {args.edge_fraction:.0%} of draws at class edges"
                    if triplet_weight > 0 else "patches uniform over the region voxels, weak labels unused"
                ),
            },
            "weak_label": "fat fraction of the two-component MESE fit > 50 %",
            "reference_centroids": centroids.round(6).tolist(),
            "training_data": [{
                "name": "bids_muscle digital phantom",
                "origin": f"bids_muscle.phantom, seeds [{TRAINING_SEED}, k], k < {args.anatomies}",
                "participants": args.anatomies,
                "regions": ["thigh", "calf"],
                "severities": {k: list(v) for k, v in SEVERITIES.items()},
                "mese": "17 echoes, 10 ms spacing, first-echo SNR of muscle 100 (phantom default)",
                "region_voxels": n_voxels,
                "weak_imat_voxels": n_imat,
                "licence": "Apache-2.0",
            }],
            "training": {**history, "batch_triplets": args.batch_triplets, "optimiser": "Adam, lr 1e-3, cosine decay", "seed": args.seed,
                         "threads": 2, "command": command},
            "licence": "Apache-2.0",
            "description": (
                "Patch encoder for IMAT classification (Amer et al. 2022) trained on the digital phantom only; "
                "not validated on real scans."
            ),
        }
        card_path = dcae.save_encoder(model.encoder, card, args.out_dir)
        size = (card_path.parent / f"{name}.pt").stat().st_size
        print(f"wrote {card_path} ({size / 1024:.0f} KiB weights, {history['steps']} steps in {history['seconds']:.0f} s)")
        if validation is not None:
            method = "dcae" if triplet_weight > 0 else "dcae-kmeans"
            card = json.loads(card_path.read_text())
            card["validation"] = _validate(validation, inputs, method, dcae.load_encoder(card_path))
            card_path.write_text(json.dumps(card, indent=2) + "\n")
            print(f"validation: {card['validation']}")


def _validate(cases, inputs: str, method: str, encoder) -> dict:
    res = evaluate(cases, inputs, [method], encoder=encoder)
    out = {"test_set": f"{len(cases)} phantom participants, seeds [3200, k], bench_imat.py", "method": method}
    for key, value in res.items():
        figures = {k: value[k] for k in ("viable_dice", "imat_dice", "accuracy", "nmi", "ari")}
        figures["imat_fraction_r_muscle"] = value["imat_fraction"]["muscle"]["r"]
        # JSON has no NaN: an undefined figure (e.g. r of a constant prediction) is null
        out[key] = {k: round(v, 4) if np.isfinite(v) else None for k, v in figures.items()}
    return out


if __name__ == "__main__":
    main()
