"""``bids_muscle-phantom OUT``: write the digital thigh/calf phantom as a BIDS dataset."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bids_muscle import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bids_muscle-phantom",
        description=(
            "Generate a digital thigh and calf phantom as a BIDS dataset: multi-echo spin echo (17 echoes), "
            "multi-echo gradient echo (6 echoes, magnitude and phase), MT on/off and T1w images of both legs, "
            "with the ground truth (water T2, fat fraction, PD, MTR, B1, muscle labels, muscle region, IMAT) "
            "under OUT/derivatives/truth. The same seed gives the same dataset."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("out_dir", type=Path, help="new (or empty) folder to write the dataset into")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--participants", type=int, default=2, help="number of participants (labelled 01, 02, ...)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--regions", nargs="+", choices=["thigh", "calf"], default=["thigh", "calf"], help="regions to draw")
    parser.add_argument("--slices", type=int, default=8, help="axial slices per region")
    parser.add_argument("--sessions", type=int, default=1,
                        help="visits per participant (ses-1, ses-2, ...): the same anatomy, the disease progressing, "
                             "new noise; the truth of every visit is kept, so the true change is known")
    parser.add_argument("--b1", nargs="+", choices=["tb1map", "tb1dam"], default=[],
                        help="also write measured B1 under fmap/: a B1 map in percent on a 2x coarser grid "
                             "(TB1map) and/or a double-angle pair at 60/120 deg (TB1DAM); other images are unchanged")
    return parser


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    from bids_muscle.phantom.dataset import generate_dataset

    t0 = time.time()
    try:
        out = generate_dataset(
            opts.out_dir, opts.participants, opts.seed, tuple(dict.fromkeys(opts.regions)), opts.slices, progress=print,
            b1=tuple(dict.fromkeys(opts.b1)), sessions=opts.sessions,
        )
    except (FileExistsError, ValueError) as err:
        print(f"bids_muscle-phantom: error: {err}", file=sys.stderr)
        return 2
    print(f"phantom dataset written to {out} in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
