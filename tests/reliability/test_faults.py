"""Faults around a run: bad participants beside good ones, kill -9 and resume, hostile file systems, two runs at once.

Every run here goes through the command line in a subprocess, as a user would
start it. Read-only inputs and a full output disk use a private mount
namespace (``unshare -m``) when the machine allows one: a read-only bind
mount binds root too, and a small tmpfs fills up for real.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from fuzz import KINDS, copy_participant

from bids_muscle.cli.run import main
from bids_muscle.phantom.dataset import generate_dataset
from bids_muscle.preflight import LOCK_NAME, folder_lock, lock_name

SUB_LOCK = lock_name("sub-01")

CLI = [sys.executable, "-m", "bids_muscle.cli.run"]


def _mount_namespaces() -> bool:
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True) if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


@pytest.fixture(scope="module")
def tiny_bids(tmp_path_factory) -> Path:
    root = generate_dataset(tmp_path_factory.mktemp("faults") / "bids", n_participants=1, seed=3, regions=("calf",),
                            n_slices=2)
    shutil.rmtree(root / "derivatives")
    return root


def _args(bids_dir, out, work, *extra):
    return [*CLI, str(bids_dir), str(out), "participant", "--sloppy", "-w", str(work), "--nprocs", "2", *extra]


def _snapshot(root: Path):
    return sorted((p.relative_to(root).as_posix(), p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*"))


def _complete(out: Path) -> list[str]:
    """Files under ``out`` with a final name that are not complete (empty when all are)."""
    bad = []
    for path in sorted(p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            if path.name.endswith(".nii.gz"):
                np.asanyarray(nb.load(path).dataobj)
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".tsv":
                pd.read_csv(path, sep="\t")
            elif path.suffix == ".png":
                assert path.read_bytes().endswith(b"IEND\xaeB`\x82")
            elif path.suffix == ".html":
                assert path.read_text().rstrip().endswith("</html>")
        except Exception as err:  # any failure to read is what this looks for
            bad.append(f"{path}: {type(err).__name__}: {err}")
    return bad


# ---------------------------------------------------------------- bad participants


@pytest.mark.slow
def test_corrupted_participants_beside_an_intact_one_read_only(tiny_bids, tmp_path):
    root = tmp_path / "bids"
    shutil.copytree(tiny_bids, root)
    kinds = ["json_invalid", "sidecar_string", "nifti_truncated", "echo_grid", "image_nan"]
    named = {}
    for k, kind in enumerate(kinds):
        label = f"bad{k}"
        sub = copy_participant(root / "sub-01", root, label)
        _, files = KINDS[kind](sub, np.random.default_rng([20, k]))
        named[label] = files
    before = _snapshot(root)
    command = _args(root, tmp_path / "out", tmp_path / "work")
    if _mount_namespaces():  # read-only for root too
        script = f"mount --bind {root} {root} && mount -o remount,bind,ro {root} {root} && exec {shlex.join(command)}"
        proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=600)
    else:
        for p in [root, *root.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
        finally:
            for p in [root, *root.rglob("*")]:
                p.chmod(0o755 if p.is_dir() else 0o644)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    for label, files in named.items():
        lines = [ln for ln in out.splitlines() if f"sub-{label}:" in ln]
        assert len(lines) == 1 and "skipped" in lines[0] and any(str(f) in lines[0] for f in files), lines
        assert not (tmp_path / "out" / f"sub-{label}").exists()
    assert "sub-01: done" in out
    assert (tmp_path / "out" / "sub-01" / "anat" / "sub-01_acq-calf_desc-water_T2map.nii.gz").is_file()
    assert _snapshot(root) == before


# ---------------------------------------------------------------- kill -9 and resume

#: Where the run is killed, in the order the graph reaches them: (name, path that appears then).
KILL_POINTS = (
    ("N4", "work/sub_01_wf/calf_wf/mese_wf/n4_mese"),
    ("the EPG fits", "work/sub_01_wf/calf_wf/mese_wf/fit_mese"),
    ("the writers", "out/sub-01/anat/sub-01_acq-calf_desc-unet2d_dseg.json"),  # segmentation done, IMAT to come
    ("the report", "work/sub_01_wf/report"),
)


def _outputs(out: Path) -> dict:
    """Image arrays, tables and sidecars under ``out`` (the report and its figures left aside)."""
    found = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = path.relative_to(out).as_posix()
        if path.name.endswith(".nii.gz"):
            found[rel] = np.asanyarray(nb.load(path).dataobj)
        elif path.suffix in (".tsv", ".json"):
            found[rel] = path.read_text()
    return found


@pytest.mark.slow
def test_kill_9_at_several_points_then_resume_gives_the_uninterrupted_outputs(tiny_bids, tmp_path):
    reference = subprocess.run(_args(tiny_bids, tmp_path / "ref_out", tmp_path / "ref_work"), capture_output=True,
                               text=True, timeout=600)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    out, work = tmp_path / "out", tmp_path / "work"
    killed_at = []
    for name, marker in KILL_POINTS:
        proc = subprocess.Popen(_args(tiny_bids, out, work), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.time() + 300
        while proc.poll() is None and not (tmp_path / marker).exists() and time.time() < deadline:
            time.sleep(0.02)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole run: the main process and its workers
            killed_at.append(name)
        proc.wait(timeout=60)
        assert _complete(out) == [], name  # never a half-written file under a final name
        finished = {p: p.stat().st_mtime_ns for p in work.rglob("result_*.pklz")}
    assert killed_at == [name for name, _ in KILL_POINTS]  # each point reached while the run was alive
    assert (out / SUB_LOCK).is_file()  # left by the killed run, taken over below
    rerun = subprocess.run(_args(tiny_bids, out, work), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert not list(out.rglob(".*.tmp*")) and not (out / SUB_LOCK).exists()
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # what was finished is reused
    got, want = _outputs(out), _outputs(tmp_path / "ref_out")
    assert sorted(got) == sorted(want)
    for rel, value in want.items():
        if isinstance(value, str):
            assert got[rel] == value, rel
        else:
            assert np.array_equal(got[rel], value, equal_nan=value.dtype.kind == "f"), rel


# ---------------------------------------------------------------- file systems and folders


@pytest.mark.slow
def test_a_full_output_disk_is_named_and_leaves_no_truncated_file(tiny_bids, tmp_path):
    if not _mount_namespaces():
        pytest.skip("no mount namespace (unshare -m) to mount a small tmpfs in")
    out, copy = tmp_path / "out", tmp_path / "copy"
    out.mkdir()
    copy.mkdir()
    command = shlex.join(_args(tiny_bids, out, tmp_path / "work"))
    script = (f"mount -t tmpfs -o size=160k tmpfs {out} && {{ {command}; code=$?; }}; "
              f"cp -a {out}/. {copy}/; exit $code")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    # the summary of the run: one line per writer that failed, naming the folder (nipype logs the details before)
    full = [ln for ln in proc.stdout.splitlines() if ln.startswith("[bids_muscle") and "No space left on device" in ln]
    assert full and all("FAILED node" in ln and f"OSError: [Errno 28] {out}" in ln for ln in full), text
    assert _complete(copy) == []
    assert not list(copy.rglob(".*.tmp*"))


def test_a_second_run_on_the_same_participant_is_refused(tiny_bids, tmp_path, capsys):
    """Runs on other participants of the same output folder (a job array) go on; one on the same participant
    is refused."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from bids_muscle.preflight import folder_lock\n"
                               f"with folder_lock({str(out)!r}, {SUB_LOCK!r}):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code = main([str(tiny_bids), str(out), "participant", "-w", str(tmp_path / "work"), "--sloppy"])
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"{out}: in use by another bids_muscle run (pid {holder.pid} " in err[0]
    assert sorted(p.name for p in out.iterdir()) == [SUB_LOCK]  # nothing written by the refused run


def test_a_lock_left_by_a_dead_run_is_taken_over_and_released(tmp_path):
    (tmp_path / LOCK_NAME).write_text("pid 999999999 on elsewhere since 2026-01-01 00:00:00\n")
    with folder_lock(tmp_path) as locked:
        assert locked
        assert (tmp_path / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} ")
    assert not (tmp_path / LOCK_NAME).exists()


def test_another_apps_derivatives_are_not_overwritten(tiny_bids, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    foreign = {"Name": "fMRIPrep outputs", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
               "GeneratedBy": [{"Name": "fMRIPrep", "Version": "24.1.1"}]}
    (out / "dataset_description.json").write_text(json.dumps(foreign))
    before = _snapshot(out)
    code = main([str(tiny_bids), str(out), "participant", "-w", str(tmp_path / "work"), "--sloppy"])
    assert code == 2
    assert "holds derivatives of fMRIPrep; choose another output folder" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_a_writer_that_fails_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    import errno

    from bids_muscle import bids

    target = tmp_path / "sub-01" / "anat" / "sub-01_T2map.nii.gz"
    bids.save_nifti_atomic(target, np.ones((4, 4, 2), np.float32), np.eye(4))
    before = target.read_bytes()

    def full_disk(image, path):
        Path(path).write_bytes(b"\x1f\x8b half")  # what a full disk leaves: the start of the file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bids.nb, "save", full_disk)
    with pytest.raises(OSError, match=f"{target.parent}: cannot write {target.name} \\(No space left on device\\)"):
        bids.save_nifti_atomic(target, np.zeros((4, 4, 2), np.float32), np.eye(4))
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
    stale = bids._atomic_target(target)  # as a killed run leaves it
    assert bids.remove_temporaries(tmp_path) == [stale] and not stale.exists() and target.exists()
