"""The app on a real (one-node) Slurm: the job array of docs/slurm_array.sh with the native
installation, and Nipype's SLURM and SLURMGraph plugins through --plugin-settings.

The three runs are submitted together and then waited for, so that one run's queue and
polling waits overlap the others' work; each test then reads its jobs' exit states from
Slurm's job completion log and compares the outputs with the MultiProc run.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, assert_same_outputs

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SLURM_SCRIPT = REPO / "docs" / "slurm_array.sh"
BIDS_MUSCLE = Path(sys.executable).parent / "bids_muscle"
#: what each job may use: the node has 2 CPUs, so two jobs run at once
JOB_ARGS = "--cpus-per-task=1 --mem=1G --time=00:20:00"
PLUGIN_SETTINGS = {
    "SLURM": {"plugin_args": {"sbatch_args": JOB_ARGS, "max_jobs": 4, "retry_timeout": 2}},
    "SLURMGraph": {"plugin_args": {"sbatch_args": JOB_ARGS, "dont_resubmit_completed_jobs": True}},
}
TIMEOUT = 1500


class Run:
    def __init__(self, folder: Path):
        self.folder = folder
        self.out = folder / "out"
        self.work = folder / "work"
        self.proc: subprocess.Popen | None = None
        self.log = ""
        self.returncode: int | None = None
        self.jobs: dict[str, dict[str, str]] = {}


def _jobs_of(slurm, folder: Path) -> dict[str, dict[str, str]]:
    """Finished jobs submitted from ``folder`` (their working directory)."""
    return {job_id: job for job_id, job in slurm.finished_jobs().items()
            if Path(job.get("WorkDir", "/")).resolve().is_relative_to(folder.resolve())}


@pytest.fixture(scope="module")
def cluster_runs(slurm, phantom, request, tmp_path_factory) -> dict[str, Run]:
    runs = {name: Run(tmp_path_factory.mktemp(f"slurm_{name}")) for name in ("array", "SLURM", "SLURMGraph")}
    if not BIDS_MUSCLE.is_file():
        pytest.skip(f"{BIDS_MUSCLE}: no bids_muscle executable beside this Python (pip install -e .)")
    # Jobs start without a login environment: no LOGNAME, which nipype's SLURM plugin uses
    env = {k: v for k, v in slurm.env.items() if k != "LOGNAME"}
    start = time.monotonic()

    # 1. the job array over the participants (native installation), then the group level once all succeeded
    array = runs["array"]
    n = len(phantom.joinpath("participants.tsv").read_text().splitlines()) - 1
    array_env = {**env, "BIDS_DIR": str(phantom), "OUT_DIR": str(array.out), "WORK_ROOT": str(array.work),
                 "BIDS_MUSCLE": str(BIDS_MUSCLE)}
    submit = {"env": array_env, "cwd": array.folder, "capture_output": True, "text": True, "timeout": 60}
    proc = subprocess.run(["sbatch", "--parsable", f"--array=1-{n}", *shlex.split(JOB_ARGS),
                           f"--output={array.folder}/bids_muscle_%A_%a.log", str(SLURM_SCRIPT), "--sloppy"], **submit)
    assert proc.returncode == 0, proc.stderr
    array_id = proc.stdout.strip()
    group = shlex.join([str(BIDS_MUSCLE), str(phantom), str(array.out), "group", "--sloppy", "--nprocs", "1",
                        "-w", str(array.work / "group")])
    proc = subprocess.run(["sbatch", "--parsable", f"--dependency=afterok:{array_id}", *shlex.split(JOB_ARGS),
                           f"--output={array.folder}/group_%j.log", "--wrap", group], **submit)
    assert proc.returncode == 0, proc.stderr

    # 2. and 3. one job per node, through Nipype's plugins, for participant 01
    for plugin in ("SLURM", "SLURMGraph"):
        run = runs[plugin]
        settings = run.folder / "plugin.json"
        settings.write_text(json.dumps(PLUGIN_SETTINGS[plugin]))
        run.proc = subprocess.Popen(
            [sys.executable, "-m", "bids_muscle.cli.run", str(phantom), str(run.out), "participant",
             "--participant-label", "01", "--sloppy", "-w", str(run.work), "--plugin", plugin,
             "--plugin-settings", str(settings)],
            cwd=run.folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # the MultiProc reference meanwhile (if no other test made it yet)
    request.getfixturevalue("native_outputs")
    for plugin in ("SLURM", "SLURMGraph"):
        run = runs[plugin]
        run.log, _ = run.proc.communicate(timeout=max(60, TIMEOUT - (time.monotonic() - start)))
        run.returncode = run.proc.returncode
    slurm.wait_idle(timeout=max(60, TIMEOUT - (time.monotonic() - start)))
    for run in runs.values():
        run.jobs = _jobs_of(slurm, run.folder)
    print(f"Slurm runs: {time.monotonic() - start:.0f} s; jobs: " + ", ".join(f"{k} {len(r.jobs)}" for k, r in runs.items()))
    return runs


def _assert_all_completed(run: Run, at_least: int) -> None:
    states = {job_id: (job["JobState"], job["ExitCode"]) for job_id, job in run.jobs.items()}
    assert len(states) >= at_least, f"{len(states)} finished jobs in the completion log, expected {at_least}: {states}"
    failed = {job_id: state for job_id, state in states.items() if state != ("COMPLETED", "0:0")}
    logs = "".join(p.read_text(errors="replace")[-1500:] for p in sorted(run.folder.glob("*.log")))
    assert not failed, f"jobs that did not complete: {failed}\n{logs}"


def test_job_array_over_participants_then_group(cluster_runs, native_outputs):
    run = cluster_runs["array"]
    # two array tasks and the group job that waited for both (afterok)
    _assert_all_completed(run, at_least=3)
    assert len(run.jobs) == 3
    names = sorted(job["Name"] for job in run.jobs.values())
    assert names == ["bids_muscle", "bids_muscle", "wrap"], names
    logs = sorted(run.folder.glob("bids_muscle_*_*.log"))
    assert len(logs) == 2
    assert {log.read_text().split(":")[1].split()[0] for log in logs} == {"sub-01", "sub-02"}
    assert all("with " + str(BIDS_MUSCLE) in log.read_text() for log in logs)
    # one work folder per participant, as the script promises
    assert sorted(p.name for p in run.work.iterdir()) == ["group", "sub-01", "sub-02"]
    assert assert_same_outputs(run.out, native_outputs) > 40


@pytest.mark.parametrize("plugin", ["SLURM", "SLURMGraph"])
def test_nipype_slurm_plugin(cluster_runs, native_outputs, plugin):
    run = cluster_runs[plugin]
    assert run.returncode == 0, run.log
    # every node was a job of its own (a few light nodes run in the submitting process)
    _assert_all_completed(run, at_least=8)
    assert not list((run.work / "crash").glob("crash-*")), run.log
    assert assert_same_outputs(run.out, native_outputs, participants=("01",)) > 20
    assert os.path.getsize(run.out / "sub-01.html") > 0
