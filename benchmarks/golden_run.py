"""Golden run: record the app's outputs once, then check that a later version gives the same.

Usage::

    python benchmarks/golden_run.py record DIR [--participants 2] [--seed 0]
    python benchmarks/golden_run.py compare DIR [--include REGEX] [--keep RUN_DIR]

``record`` writes the digital phantom (``bids_muscle-phantom``, 2 participants,
seed 0), runs the participant level for all participants and then the group
level with the default settings, and converts the real DICOM folders
``../shared/data/thigh_mese_siemens_dicom`` and ``calf_megre_ge_dicom`` with
``bids_muscle-dicom2bids`` when they are there. Every stage goes through the
command line, as a user would type it. It then keeps, under ``DIR/recorded``,
every image (``.nii.gz``), every table (``.tsv``) and every JSON sidecar of the
derivatives (``out/``) and of the conversion (``dicom/``); reports and figures
are not kept.

``compare`` runs the same stages again in a fresh folder and checks every
recorded file against the new one: image arrays (and their affines) and the
numbers of tables equal within 1e-6 (absolute or relative), text cells and
headers equal, sidecars equal but for their timestamps and the run folder;
a file present on one side only is a difference. ``--include REGEX`` limits
the check to the recorded paths the expression matches (for example
``'(T2map|FFmap|PDmap|TB1map|MTRmap|R2starmap|fieldmap)|^dicom/'``). It
prints one line per difference and exits 1 when there is any, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: (folder under SHARED, participant label, --region or None)
DICOM_FOLDERS = (("thigh_mese_siemens_dicom", "siemens", "thigh"), ("calf_megre_ge_dicom", "ge", None))
KEPT = (".nii.gz", ".tsv", ".json")
#: sidecar keys that hold when or where a run happened, not what it computed
VOLATILE_KEYS = re.compile(r"(date|time(stamp)?|datetime|created|elapsed|duration|runtime)$", re.IGNORECASE)
TOLERANCE = 1e-6
RUN_MARK = "<RUN>"


def _stage(module: str, *args) -> None:
    command = [sys.executable, "-m", module, *map(str, args)]
    print("+ " + " ".join(command[2:]), flush=True)
    t0 = time.time()
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"golden_run: {module} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    print(f"  done in {time.time() - t0:.0f} s", flush=True)


def run_all(run_dir: Path, participants: int, seed: int) -> None:
    """Phantom, participant level, group level and the DICOM conversions, into ``run_dir``."""
    bids_dir, out_dir, work_dir = run_dir / "bids", run_dir / "out", run_dir / "work"
    _stage("bids_muscle.cli.phantom", bids_dir, "--participants", participants, "--seed", seed)
    for level in ("participant", "group"):
        _stage("bids_muscle.cli.run", bids_dir, out_dir, level, "-w", work_dir)
    for folder, label, region in DICOM_FOLDERS:
        if (SHARED / folder).is_dir():
            _stage("bids_muscle.cli.dicom2bids", SHARED / folder, run_dir / "dicom", "--participant-label", label,
                   *(["--region", region] if region else []))
        else:
            print(f"  {SHARED / folder}: absent, conversion not recorded", flush=True)


def kept_files(run_dir: Path) -> list[str]:
    """Paths (relative to ``run_dir``) of the images, tables and sidecars of ``out/`` and ``dicom/``."""
    found = []
    for top in ("out", "dicom"):
        for path in sorted((run_dir / top).rglob("*")):
            if path.is_file() and path.name.endswith(KEPT) and "figures" not in path.parts:
                found.append(path.relative_to(run_dir).as_posix())
    return found


def _clean(value, run_dir: str):
    if isinstance(value, dict):
        return {k: _clean(v, run_dir) for k, v in value.items() if not VOLATILE_KEYS.search(k)}
    if isinstance(value, list):
        return [_clean(v, run_dir) for v in value]
    if isinstance(value, str):
        return value.replace(run_dir, RUN_MARK)
    return value


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=TOLERANCE, atol=TOLERANCE, equal_nan=True))


def compare_image(old: Path, new: Path) -> str | None:
    a, b = nib.load(old), nib.load(new)
    if a.shape != b.shape:
        return f"shape {a.shape} -> {b.shape}"
    if not _close(a.affine, b.affine):
        return "affine differs"
    x, y = np.asarray(a.dataobj, dtype=np.float64), np.asarray(b.dataobj, dtype=np.float64)
    if not _close(x, y):
        diff = np.abs(np.nan_to_num(x) - np.nan_to_num(y))
        return f"{int((diff > TOLERANCE).sum())} of {x.size} voxels differ, largest by {diff.max():.3g}"
    return None


def compare_table(old: Path, new: Path, old_run: str, new_run: str) -> str | None:
    a = pd.read_csv(old, sep="\t", keep_default_na=False, na_values=["n/a", "NaN", "nan"])
    b = pd.read_csv(new, sep="\t", keep_default_na=False, na_values=["n/a", "NaN", "nan"])
    if list(a.columns) != list(b.columns):
        return f"columns {list(a.columns)} -> {list(b.columns)}"
    if len(a) != len(b):
        return f"{len(a)} rows -> {len(b)}"
    bad = []
    for column in a.columns:
        x, y = a[column], b[column]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            if not _close(x.to_numpy(float), y.to_numpy(float)):
                bad.append(column)
        elif [_clean(str(v), old_run) for v in x] != [_clean(str(v), new_run) for v in y]:
            bad.append(column)
    return f"columns differ: {', '.join(bad)}" if bad else None


def compare_sidecar(old: Path, new: Path, old_run: str, new_run: str) -> str | None:
    a = _clean(json.loads(old.read_text()), old_run)
    b = _clean(json.loads(new.read_text()), new_run)
    if a == b:
        return None
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        return f"keys differ: {', '.join(keys)}"
    return "content differs"


def compare_runs(recorded: Path, old_run: str, run_dir: Path, include: re.Pattern | None) -> list[str]:
    """One line per difference between the recorded files and those of ``run_dir``."""
    old = {p for p in (Path(r).relative_to(recorded).as_posix() for r in recorded.rglob("*")) if (recorded / p).is_file()}
    new = set(kept_files(run_dir))
    if include is not None:
        old, new = {p for p in old if include.search(p)}, {p for p in new if include.search(p)}
    problems = [f"{p}: recorded, not written now" for p in sorted(old - new)]
    problems += [f"{p}: written now, not recorded" for p in sorted(new - old)]
    for rel in sorted(old & new):
        a, b = recorded / rel, run_dir / rel
        if rel.endswith(".nii.gz"):
            why = compare_image(a, b)
        elif rel.endswith(".tsv"):
            why = compare_table(a, b, old_run, str(run_dir))
        else:
            why = compare_sidecar(a, b, old_run, str(run_dir))
        if why:
            problems.append(f"{rel}: {why}")
    return problems


def record(golden: Path, participants: int, seed: int) -> int:
    if golden.exists() and any(golden.iterdir()):
        sys.exit(f"golden_run: {golden}: exists and is not empty")
    run_dir = (golden / "run").resolve()
    run_all(run_dir, participants, seed)
    files = kept_files(run_dir)
    for rel in files:
        target = golden / "recorded" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_dir / rel, target)
    (golden / "golden.json").write_text(json.dumps(
        {"participants": participants, "seed": seed, "run_dir": str(run_dir), "files": len(files)}, indent=2) + "\n")
    shutil.rmtree(run_dir)
    print(f"recorded {len(files)} files under {golden / 'recorded'}")
    return 0


def compare(golden: Path, include: str | None, keep: Path | None) -> int:
    meta_file = golden / "golden.json"
    if not meta_file.is_file():
        sys.exit(f"golden_run: {meta_file}: missing (run 'record' first)")
    meta = json.loads(meta_file.read_text())
    run_dir = keep.resolve() if keep else Path(tempfile.mkdtemp(prefix="golden_run_"))
    if keep and keep.exists() and any(keep.iterdir()):
        sys.exit(f"golden_run: {keep}: exists and is not empty")
    try:
        run_all(run_dir, meta["participants"], meta["seed"])
        problems = compare_runs(golden / "recorded", meta["run_dir"], run_dir,
                                re.compile(include) if include else None)
    finally:
        if keep is None:
            shutil.rmtree(run_dir, ignore_errors=True)
    for line in problems:
        print(line)
    print(f"{len(problems)} difference(s)" if problems else "no differences")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="run everything once and keep its outputs in DIR")
    rec.add_argument("dir", type=Path, help="new or empty folder for the golden outputs")
    rec.add_argument("--participants", type=int, default=2, help="phantom participants")
    rec.add_argument("--seed", type=int, default=0, help="phantom random seed")
    cmp_ = sub.add_parser("compare", help="run everything again and compare with DIR")
    cmp_.add_argument("dir", type=Path, help="folder written by 'record'")
    cmp_.add_argument("--include", metavar="REGEX", help="compare only the recorded paths this expression matches")
    cmp_.add_argument("--keep", type=Path, metavar="RUN_DIR", help="run into this new folder and keep it")
    opts = parser.parse_args(argv)
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    if opts.command == "record":
        return record(opts.dir, opts.participants, opts.seed)
    return compare(opts.dir, opts.include, opts.keep)


if __name__ == "__main__":
    sys.exit(main())
