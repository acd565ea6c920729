"""Checks of the arguments and the input folder that need no heavy import.

The command line runs them before nipype, pybids and torch are imported, so
a typo in a path is refused in well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path


class InputError(ValueError):
    """Bad or inconsistent input; the message names the file and the problem."""


def check_dataset(bids_dir: Path) -> None:
    """Fail with :class:`InputError` when ``bids_dir`` is not a BIDS dataset."""
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise InputError(f"{bids_dir}: input folder does not exist")
    desc = bids_dir / "dataset_description.json"
    if not desc.is_file():
        raise InputError(f"{bids_dir}: not a BIDS dataset (no dataset_description.json)")
    try:
        content = json.loads(desc.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{desc}: invalid JSON ({getattr(err, 'msg', err)})") from None
    if not isinstance(content, dict) or "BIDSVersion" not in content:
        raise InputError(f"{desc}: BIDSVersion is missing")


def check_folders(bids_dir: Path, output_dir: Path, work_dir: Path) -> None:
    """Refuse output and work folders that would write into the input dataset.

    The output may be ``bids_dir/derivatives/<name>`` (the BIDS convention);
    nothing else under ``bids_dir`` is ever written, so the work folder must
    lie outside it. All paths are absolute (resolved).
    """
    if output_dir == bids_dir:
        raise InputError(f"{output_dir}: output_dir must differ from bids_dir: the input dataset is never written to")
    if bids_dir in output_dir.parents and (bids_dir / "derivatives") not in output_dir.parents:
        raise InputError(f"{output_dir}: output_dir inside the input dataset must be bids_dir/derivatives/<name>")
    if work_dir == bids_dir or bids_dir in work_dir.parents:
        raise InputError(f"{work_dir}: the work folder is inside the input dataset {bids_dir}, which is never written "
                         "to; choose one outside it with -w (e.g. -w /tmp/bids_muscle_work)")
