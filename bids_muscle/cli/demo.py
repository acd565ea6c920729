"""``bids_muscle-demo [FOLDER]``: the whole app on the digital phantom, as ``make demo`` runs it.

Writes the phantom to ``FOLDER/bids`` (kept when it exists), runs the
participant level with the default settings into ``FOLDER/out`` (work folder
``FOLDER/work``), then the group level, and prints where the reports and
tables are. Each stage runs through the ``bids_muscle`` command line, exactly
as a user would type it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from bids_muscle import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bids_muscle-demo",
        description="Run bids_muscle on its digital phantom: phantom dataset, participant level, group level.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("folder", type=Path, nargs="?", default=Path("demo"),
                        help="demo folder: bids/ (the phantom), out/ (derivatives) and work/ are made inside it")
    parser.add_argument("--participants", type=int, default=2, help="phantom participants")
    parser.add_argument("--seed", type=int, default=0, help="phantom random seed")
    parser.add_argument("--version", action="version", version=f"bids_muscle-demo {__version__}")
    return parser


def _stage(*args) -> int:
    command = [sys.executable, "-m", *map(str, args)]
    print("+ " + " ".join(map(str, [Path(command[0]).name, *command[1:]])), flush=True)
    return subprocess.run(command).returncode


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    bids_dir, out_dir, work_dir = (opts.folder / name for name in ("bids", "out", "work"))
    if not bids_dir.is_dir():
        code = _stage("bids_muscle.cli.phantom", bids_dir, "--participants", opts.participants, "--seed", opts.seed)
        if code:
            return code
    for level in ("participant", "group"):
        code = _stage("bids_muscle.cli.run", bids_dir, out_dir, level, "-w", work_dir)
        if code:
            print(f"bids_muscle-demo: the {level} level failed (exit {code}); see the messages above", file=sys.stderr)
            return code
    out = out_dir.resolve()
    print()
    print("Participant reports: " + ", ".join(str(p) for p in sorted(out.glob("sub-*.html"))))
    print(f"Per-muscle tables:   {out}/sub-*/anat/*_biomarkers.tsv")
    print(f"Group report:        {out / 'group' / 'report.html'}")
    print(f"Group tables:        {out / 'group'}/*.tsv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
