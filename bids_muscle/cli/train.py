"""``bids_muscle-train OUT_DIR --region R --labels DIR | --pair IMAGE LABELS``: train or fine-tune a muscle segmenter.

Exit codes: 0 trained (the model and its card written), 2 bad arguments or
input (no label maps, a label map with foreign indices, unreadable files).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bids_muscle import __version__
from bids_muscle.seg.labels import REGIONS
from bids_muscle.seg.nets import SEGMENTATION_NETWORKS


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` unless the help already states its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.required:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``bids_muscle-train``."""
    parser = argparse.ArgumentParser(
        prog="bids_muscle-train",
        description=(
            "Train or fine-tune a muscle segmentation model from (image, label map) NIfTI pairs. --labels folders "
            "are searched for *_dseg.nii[.gz]; maps of the other region (acq-<region> or a region word in the "
            "name) and non-muscle maps (desc-tissue, or a label table naming no muscles) are skipped with the "
            "reason; each map is paired with the image of the same name entities (desc- aside) and --image-suffix."
        ),
        formatter_class=_DefaultsHelpFormatter,
    )
    parser.add_argument("out_dir", type=Path, help="folder for <name>.pt and <name>.json")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--region", required=True, choices=REGIONS, help="region of the model (required)")
    parser.add_argument("--architecture", default="unet2d", choices=SEGMENTATION_NETWORKS, help="network")
    parser.add_argument("--labels", nargs="+", type=Path, default=[], metavar="DIR",
                        help="folders with *_dseg.nii[.gz] label maps: a plain folder, BIDS derivatives "
                             "(e.g. a phantom's derivatives/truth) or a bids_muscle output folder (default: none)")
    parser.add_argument("--images-dir", type=Path,
                        help="where to look for the images, e.g. the raw BIDS dataset (default: the label folder, "
                             "then the raw dataset of a derivatives folder)")
    parser.add_argument("--image-suffix", default="T1w", help="suffix of the image files")
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("IMAGE", "LABELS"), type=Path,
                        help="one explicit (image, label map) pair; repeatable (default: none)")
    parser.add_argument("--name", help="model name (default: <region>_<architecture>)")
    parser.add_argument("--base-features", type=int, help="network width of the first level (default: the network's)")
    parser.add_argument("--voxel-size", nargs=2, type=float, metavar=("X_MM", "Y_MM"),
                        help="in-plane model voxel size in mm (default: 1 1, or that of --init-from)")
    parser.add_argument("--slice-mm", type=float, help="model slice spacing for 3D networks (default: native)")
    parser.add_argument("--epochs", type=int, default=100, help="most epochs")
    parser.add_argument("--steps-per-epoch", type=int, default=50, help="batches per epoch")
    parser.add_argument("--batch-size", type=int, default=8, help="patches per batch")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="AMSGrad Adam learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, split, sampling and augmentation")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of images held out for early stopping")
    parser.add_argument("--patience", type=int, default=10, help="epochs without validation gain before stopping")
    parser.add_argument("--init-from", help="model card path or name to fine-tune (default: none, train from scratch)")
    parser.add_argument("--model-dir", type=Path, help="user model folder for --init-from names (default: none)")
    parser.add_argument("--contrast", default="any", help="input contrast written to the card")
    parser.add_argument("--licence", default="", help="licence of the weights, for the card (default: empty)")
    parser.add_argument("--time-limit", type=float, help="stop after the epoch that passes this many seconds (default: none)")
    parser.add_argument("--threads", type=int, help="torch threads (default: all available cores)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``bids_muscle-train``."""
    args = build_parser().parse_args(argv)
    from bids_muscle.seg.train import train_model
    from bids_muscle.seg.train_data import check_label_map, find_training_pairs, load_training_pair, region_from_name

    def log(message: str) -> None:
        print(message, flush=True)

    try:
        pairs = [(Path(i), Path(lab), True) for i, lab in args.pair]
        if args.labels:
            found = find_training_pairs(args.labels, args.image_suffix, args.images_dir, args.region, log)
            pairs += [(i, lab, region_from_name(lab) is not None) for i, lab in found]
        if not pairs:
            where = f" under {', '.join(str(p) for p in args.labels)}" if args.labels else ""
            raise ValueError(f"no {args.region} muscle label maps{where}; give --labels DIR or --pair IMAGE LABELS")
        images, labels, affines, used = [], [], [], []
        for image_path, label_path, named in pairs:
            image, label, affine = load_training_pair(image_path, label_path)
            skip = check_label_map(label, args.region, label_path, named=named)
            if skip is not None:
                log(f"skipped {label_path}: {skip}")
                continue
            images.append(image)
            labels.append(label)
            affines.append(affine)
            used.append((image_path, label_path))
        if not used:
            raise ValueError(f"no {args.region} muscle label maps left to train on (reasons above)")
        arguments = {} if args.base_features is None else {"base_features": args.base_features}
        voxel = list(args.voxel_size) + [args.slice_mm] if args.voxel_size else None
        if voxel is None and args.slice_mm is not None:
            voxel = [1.0, 1.0, args.slice_mm]
        log(f"training {args.architecture} on {len(used)} image(s) of the {args.region}:")
        for image_path, label_path in used:
            log(f"  {label_path} with {image_path}")

        def report(record: dict[str, Any]) -> None:
            print(
                f"epoch {record['epoch']:4d}  loss {record['train_loss']:.4f}  val Dice {record['val_dice']:.4f}"
                f"  best {record['best_val_dice']:.4f}  lr {record['learning_rate']:.2e}  {record['elapsed_s']:.0f} s",
                flush=True,
            )

        result = train_model(
            images,
            labels,
            affines,
            args.region,
            args.architecture,
            args.out_dir,
            name=args.name,
            arguments=arguments,
            voxel_size_mm=voxel,
            epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            seed=args.seed,
            val_fraction=args.val_fraction,
            patience=args.patience,
            init_from=args.init_from,
            model_dir=args.model_dir,
            input_contrast=args.contrast,
            training_data=[{"image": str(i), "labels": str(lab)} for i, lab in used],
            licence=args.licence,
            time_limit_s=args.time_limit,
            num_threads=args.threads,
            progress=report,
        )
    except ValueError as error:
        print(f"bids_muscle-train: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {result.card_path} (validation Dice {result.best_val_dice:.4f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
