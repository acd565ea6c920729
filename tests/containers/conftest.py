"""Services and references for the container and cluster tests.

- ``docker_image``: the image of ``make image`` in a running Docker daemon
  (started here when ``dockerd`` is installed, we are root and none answers),
  built here (``docker/build-image.sh``) when it is missing or was built from
  other sources than this checkout: minutes the first time, about two
  minutes from the layer cache after a change of the package.
  ``BIDS_MUSCLE_BUILD_IMAGE=0`` skips the tests instead of building; a build
  that fails (no package registry, no base image) skips them with its last
  line, unless ``BIDS_MUSCLE_BUILD_IMAGE=1`` asks for the build, where it
  fails them.
- ``slurm``: a one-node Slurm (munged, slurmctld, slurmd on localhost, 2 CPUs,
  proctrack/linuxproc, no cgroups, all state in a temporary folder), started
  for the session and stopped at its end.
- ``phantom``/``native_outputs``: a small phantom and the reference run of
  the native installation with MultiProc, participant then group.

Every test skips with the reason when its service cannot start.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from bids_muscle import __version__

REPO = Path(__file__).resolve().parents[2]
IMAGE = f"bids_muscle:{__version__}"
#: options of every run compared here: the fast dictionaries, two processes
RUN_OPTIONS = ("--sloppy", "--nprocs", "2", "--omp-nthreads", "1")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _wait_for(check, timeout: float, what: str, log: Path | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    pytest.skip(f"{what} did not start within {timeout:.0f} s {tail}".strip())


# ---------------------------------------------------------------- the phantom and the native reference


#: The environment of every compared run. BLAS takes its thread count from the environment
#: when numpy loads, and sums in a different order with another count (the MEGRE fit then
#: differs in the last bits), so every run here starts with one thread.
THREADS_ENV = {"OMP_NUM_THREADS": "1"}


def cli(*args, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """bids_muscle of this checkout, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "bids_muscle.cli.run", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**(env or os.environ), **THREADS_ENV})


@pytest.fixture(scope="session")
def phantom(tmp_path_factory) -> Path:
    """Two participants, thigh only, 4 slices: small enough for a container and a cluster round trip."""
    from bids_muscle.phantom.dataset import generate_dataset

    bids_dir = generate_dataset(tmp_path_factory.mktemp("small_phantom") / "bids", n_participants=2, seed=0,
                                regions=("thigh",), n_slices=4)
    # readable by any uid (a container runs as uid 1000), never written by a test
    for path in [bids_dir.parent, bids_dir, *bids_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return bids_dir


@pytest.fixture(scope="session")
def native_outputs(phantom, tmp_path_factory) -> Path:
    """The native installation with MultiProc: participant then group."""
    out = tmp_path_factory.mktemp("native") / "out"
    work = out.parent / "work"
    for level in ("participant", "group"):
        proc = cli(phantom, out, level, *RUN_OPTIONS, "-w", work)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def _load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nb.load(path)
    return np.asanyarray(img.dataobj), img.affine


def assert_same_outputs(ours: Path, reference: Path, participants: tuple[str, ...] | None = None) -> int:
    """The derivatives under ``ours`` equal those of ``reference``: the same files, the same
    image data and affines, the same tables and sidecars; reports (which hold the date and
    the command line) only have to exist. ``participants`` limits the comparison to those
    participants' files and the dataset-level ones (no group level). Returns the number of
    files compared."""

    def kept(name: str) -> bool:
        if participants is None:
            return True
        label = re.match(r"(?:logs/)?sub-([^/_.]+)", name)  # sub-<label>/..., sub-<label>.html, logs/sub-<label>_...
        return label.group(1) in participants if label else not name.startswith("group/")

    def files(root: Path) -> set[str]:
        names = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
        return {n for n in names if kept(n)} - {".bids_muscle.lock"} - {n for n in names if n.startswith(".bids_muscle-")}

    names = files(reference)
    assert names, f"{reference}: no outputs to compare"
    assert files(ours) == names, (sorted(files(ours) - names), sorted(names - files(ours)))
    for name in sorted(names):
        a, b = ours / name, reference / name
        if name.endswith(".nii.gz"):
            (data_a, affine_a), (data_b, affine_b) = _load_nifti(a), _load_nifti(b)
            assert data_a.dtype == data_b.dtype and data_a.shape == data_b.shape, name
            np.testing.assert_array_equal(data_a, data_b, err_msg=name)
            np.testing.assert_array_equal(affine_a, affine_b, err_msg=name)
        elif name.endswith(".tsv"):
            pd.testing.assert_frame_equal(pd.read_csv(a, sep="\t"), pd.read_csv(b, sep="\t"), obj=name)
        elif name.endswith(".json"):
            ours_json, reference_json = json.loads(a.read_text()), json.loads(b.read_text())
            if name == "dataset_description.json":
                # the link to the input dataset is the path the run saw (/data in a container)
                assert ours_json.pop("DatasetLinks")["raw"].startswith("file://")
                assert reference_json.pop("DatasetLinks")["raw"].startswith("file://")
            assert ours_json == reference_json, name
        elif not name.endswith(".html"):
            assert a.read_bytes() == b.read_bytes(), name
    return len(names)


# ---------------------------------------------------------------- Docker


def _docker_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0


@pytest.fixture(scope="session")
def docker(tmp_path_factory) -> str:
    """A Docker daemon that answers: the running one, else one started here (root only)."""
    if shutil.which("docker") is None:
        pytest.skip("docker is not installed")
    if _docker_answers():
        yield "docker"
        return
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        pytest.skip("the Docker daemon does not answer and cannot be started here (dockerd needs root)")
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with log.open("w") as handle:
        proc = subprocess.Popen(["dockerd"], stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: proc.poll() is None and _docker_answers(), 60, "dockerd", log)
        yield "docker"
    finally:
        _stop(proc)


def _package_sources() -> dict[str, str]:
    """sha256 of the package's files in this checkout, by their path inside the installed package."""
    import tomllib

    folders = {"": REPO / "bids_muscle"}
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text()).get("tool", {}).get("setuptools", {})
    for package, folder in setuptools.get("package-dir", {}).items():
        if package.startswith("bids_muscle."):
            folders[package.removeprefix("bids_muscle.").replace(".", "/") + "/"] = REPO / folder
    return {prefix + p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for prefix, root in folders.items() for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def _stale_sources(docker: str) -> list[str]:
    """Package files that differ between the image and this checkout (all of them without an image)."""
    here = _package_sources()
    if subprocess.run([docker, "image", "inspect", IMAGE], capture_output=True, timeout=60).returncode != 0:
        return sorted(here)
    listing = subprocess.run(
        [docker, "run", "--rm", "--network", "none", "--entrypoint", "python3", IMAGE, "-c",
         "import hashlib, json, pathlib, bids_muscle; root = pathlib.Path(bids_muscle.__file__).parent; "
         "print(json.dumps({p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() "
         "for p in root.rglob('*') if p.is_file() and '__pycache__' not in p.parts}))"],
        capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    in_image = json.loads(listing.stdout)
    return sorted(n for n in set(here) | set(in_image) if here.get(n) != in_image.get(n)
                  and (n.endswith(".py") or (n in here and n in in_image)))


@pytest.fixture(scope="session")
def docker_image(docker) -> str:
    """``bids_muscle:<version>`` built from this checkout's package (built here when it is not)."""
    stale = _stale_sources(docker)
    if stale:
        if os.environ.get("BIDS_MUSCLE_BUILD_IMAGE") == "0":
            pytest.skip(f"image {IMAGE} is missing or was built from other sources than this checkout "
                        f"({', '.join(stale[:3])}{' ...' if len(stale) > 3 else ''}) and BIDS_MUSCLE_BUILD_IMAGE=0")
        proc = subprocess.run(["docker/build-image.sh"], cwd=REPO, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            log = (proc.stdout + proc.stderr).strip().splitlines()
            if os.environ.get("BIDS_MUSCLE_BUILD_IMAGE") == "1":  # asked for: a failed build is a failure
                pytest.fail("make image failed:\n" + "\n".join(log[-40:]))
            pytest.skip(f"make image failed here (exit {proc.returncode}: {log[-1] if log else 'no output'}); "
                        "BIDS_MUSCLE_BUILD_IMAGE=1 makes this a failure")
        stale = _stale_sources(docker)
        assert not stale, f"the image built from this checkout differs from it: {stale[:5]}"
    return IMAGE


# ---------------------------------------------------------------- Slurm


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Slurm:
    """A running one-node cluster; ``env`` is the environment its clients need."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, **THREADS_ENV, "SLURM_CONF": str(self.conf)}
        self.jobcomp = root / "jobcomp.txt"

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=self.env)

    def sbatch(self, *args: str, cwd: Path | None = None) -> int:
        proc = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, timeout=60,
                              env=self.env, cwd=cwd)
        assert proc.returncode == 0, proc.stderr
        return int(proc.stdout.strip().split(";")[0])

    def finished_jobs(self) -> dict[str, dict[str, str]]:
        """Completed jobs from the job completion log: JobId (array tasks as <job>_<task>) -> fields."""
        jobs = {}
        if self.jobcomp.exists():
            for line in self.jobcomp.read_text().splitlines():
                fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
                if "JobId" in fields:
                    jobs[fields["JobId"]] = fields
        return jobs

    def queued(self) -> list[str]:
        proc = self.run("squeue", "--noheader", "--format=%i %T")
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split("\n")[:-1]

    def wait_idle(self, timeout: float) -> None:
        """Wait until no job is pending or running."""
        end = time.monotonic() + timeout
        while self.queued():
            assert time.monotonic() < end, f"jobs still queued after {timeout:.0f} s: {self.queued()}"
            time.sleep(1)


SLURM_CONF = """\
ClusterName=bidsmuscle
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
MinJobAge=600
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> Slurm:
    """munged, slurmctld and slurmd on localhost, for this session only."""
    missing = [exe for exe in ("munged", "slurmctld", "slurmd", "sbatch", "squeue") if shutil.which(exe) is None]
    if missing:
        pytest.skip(f"Slurm cannot start: {', '.join(missing)} not installed (apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("Slurm cannot start: slurmd must run as root to start jobs")
    root = tmp_path_factory.mktemp("slurm")
    root.chmod(0o755)
    for sub in ("munge", "state", "spool"):
        (root / sub).mkdir()
    (root / "munge").chmod(0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    cluster = Slurm(root)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 - 1024
    cluster.conf.write_text(SLURM_CONF.format(root=root, host=socket.gethostname().split(".")[0], node="node1",
                                              ctld_port=_free_port(), slurmd_port=_free_port(), memory=memory))
    procs = []
    try:
        munge_log = root / "munge" / "munged.log"
        procs.append(subprocess.Popen(
            ["munged", "--foreground", "--force", f"--socket={root}/munge/munge.socket", f"--key-file={key}",
             f"--pid-file={root}/munge/munged.pid", f"--log-file={munge_log}", f"--seed-file={root}/munge/seed"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True))
        _wait_for(lambda: (root / "munge" / "munge.socket").exists(), 30, "munged", munge_log)
        for daemon, args in (("slurmctld", ["-D", "-i"]), ("slurmd", ["-D", "-N", "node1"])):
            with (root / f"{daemon}.out").open("w") as handle:
                procs.append(subprocess.Popen([daemon, *args, "-f", str(cluster.conf)], stdout=handle,
                                              stderr=subprocess.STDOUT, env=cluster.env, start_new_session=True))
        _wait_for(lambda: all(p.poll() is None for p in procs)
                  and "idle" in cluster.run("sinfo", "--noheader", "--format=%t").stdout,
                  60, "Slurm (slurmctld, slurmd)", root / "slurmctld.log")
        yield cluster
    finally:
        if procs and shutil.which("scancel"):
            cluster.run("scancel", "--user=root", timeout=30)
        for proc in reversed(procs):
            _stop(proc)
