"""``bids_muscle-dicom2bids DICOM_DIR BIDS_DIR --participant-label L``: muscle-protocol DICOM series to BIDS.

Exit codes: 0 converted (possibly with skipped series), 2 bad arguments or
input (nothing recognised, region unknown, files exist without --overwrite).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bids_muscle import __version__

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bids_muscle-dicom2bids",
        description=(
            "Convert a folder of thigh or calf DICOM series into a BIDS dataset for bids_muscle: multi-echo spin echo "
            "(echo-<n>_MESE), multi-echo gradient echo (echo-<n>_part-<mag|phase|real|imag>_MEGRE, phase in radians), "
            "MT on/off (mt-<on|off>_MTR), T1w and scanner Dixon water/fat/in-phase/out-of-phase (rec-<type>_T1w) and "
            "double-angle B1 (fmap/flip-<1|2>_TB1DAM). Series are recognised from their headers; the rest is listed "
            "with the reason it was skipped. Sidecars hold acquisition parameters only (no patient data)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("dicom_dir", type=Path, help="folder with the DICOM files (searched recursively)")
    parser.add_argument("bids_dir", type=Path, help="BIDS dataset to write into (created if missing)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--participant-label", "--participant_label", required=True, metavar="LABEL",
                        help="participant label (with or without 'sub-')")
    parser.add_argument("--session-label", metavar="LABEL", help="session label (with or without 'ses-')")
    parser.add_argument("--region", choices=["thigh", "calf"],
                        help="region of every series (acq-<region>); guessed per series from BodyPartExamined, "
                             "SeriesDescription or ProtocolName when omitted")
    parser.add_argument("--dry-run", action="store_true", help="print the planned file names and write nothing")
    parser.add_argument("--overwrite", action="store_true", help="replace files that already exist")
    return parser


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    from bids_muscle.dicom import ConversionError, plan_conversion, write_plan

    t0 = time.time()
    try:
        plan = plan_conversion(opts.dicom_dir, opts.participant_label, opts.session_label, opts.region)
        print(plan.report())
        if not plan.images:
            raise ConversionError(f"{opts.dicom_dir}: no series recognised (reasons above)")
        if opts.dry_run:
            print("dry run: nothing written")
            return EXIT_OK
        written = write_plan(plan, opts.bids_dir, overwrite=opts.overwrite)
    except ConversionError as err:
        print(f"bids_muscle-dicom2bids: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {len(written)} image(s) with sidecars to {opts.bids_dir} in {time.time() - t0:.1f} s")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
