"""The image of ``make image``, run as a user runs it: unprivileged, offline, input read-only."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import IMAGE, RUN_OPTIONS, THREADS_ENV, assert_same_outputs

from bids_muscle import __version__

pytestmark = [pytest.mark.container, pytest.mark.slow]

UID = GID = 1000


def _docker_run(*args: str, mounts: tuple[str, ...] = (), entrypoint: str | None = None,
                timeout: float = 900) -> subprocess.CompletedProcess:
    cmd = ["docker", "run", "--rm", "--network", "none", "-u", f"{UID}:{GID}"]
    for name, value in THREADS_ENV.items():
        cmd += ["-e", f"{name}={value}"]
    for mount in mounts:
        cmd += ["-v", mount]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    return subprocess.run([*cmd, IMAGE, *args], capture_output=True, text=True, timeout=timeout)


def _writable_by_the_container(path: Path) -> Path:
    path.mkdir(parents=True)
    if os.geteuid() == 0:
        os.chown(path, UID, GID)
    else:
        path.chmod(0o777)
    return path


def test_help_and_version(docker_image):
    version = _docker_run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"bids_muscle {__version__}", version.stderr
    usage = _docker_run("--help")
    assert usage.returncode == 0, usage.stderr
    assert usage.stdout.startswith("usage: bids_muscle") and "{participant,group}" in usage.stdout
    # and a bad call is refused with the usual one-line error and exit code 2
    bad = _docker_run("/nonexistent", "/tmp/out", "participant")
    assert bad.returncode == 2 and "/nonexistent" in bad.stderr


def test_image_is_small_cpu_only_and_keeps_no_build_tools_or_ca_bundle(docker_image):
    size = int(subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", IMAGE],
                              capture_output=True, text=True, check=True).stdout)
    assert size <= 2.5e9, f"{IMAGE} is {size / 1e9:.2f} GB"
    probe = _docker_run("-c", "import torch, sys; print(torch.__version__, torch.version.cuda, sys.prefix)",
                        entrypoint="python3")
    assert probe.returncode == 0, probe.stderr
    torch_version, cuda, prefix = probe.stdout.split()
    assert cuda == "None" and prefix == "/opt/bids_muscle", probe.stdout
    tools = _docker_run("-c", "for t in gcc cc c++ make ld; do command -v $t; done; true", entrypoint="sh")
    assert tools.stdout.strip() == "", f"build tools left in the image: {tools.stdout.split()}"
    # the CA bundle given to the build as a secret is in no file of the image that its base lacks
    bundle = Path(os.environ.get("CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))
    if bundle.is_file():
        size, digest = bundle.stat().st_size, hashlib.sha256(bundle.read_bytes()).hexdigest()
        find = f"find / -xdev -type f -size {size}c -exec sha256sum {{}} + 2>/dev/null | grep ^{digest} || true"
        found = _docker_run("-c", find, entrypoint="sh").stdout.split()[1::2]
        base = subprocess.run(["docker", "image", "inspect", "--format",
                               '{{index .Config.Labels "org.opencontainers.image.base.name"}}', IMAGE],
                              capture_output=True, text=True, check=True).stdout.strip()
        in_base = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "sh", base, "-c", find],
                                 capture_output=True, text=True).stdout.split()[1::2]
        assert set(found) <= set(in_base), f"{bundle} was left in the image: {sorted(set(found) - set(in_base))}"


def test_phantom_participant_then_group_offline_as_uid_1000(docker_image, phantom, native_outputs, tmp_path):
    out = _writable_by_the_container(tmp_path / "out")
    work = _writable_by_the_container(tmp_path / "work")
    mounts = (f"{phantom}:/data:ro", f"{out}:/out", f"{work}:/work")
    for level in ("participant", "group"):
        proc = _docker_run("/data", "/out", level, *RUN_OPTIONS, "-w", "/work", mounts=mounts)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"2 of 2 participant\(s\) finished", proc.stdout + proc.stderr) or (out / "group").is_dir()
    compared = assert_same_outputs(out, native_outputs)
    assert compared > 40
    written = [p for p in [*out.rglob("*"), *work.rglob("*")]]
    owners = {p.lstat().st_uid for p in written}
    assert owners == {UID}, f"outputs owned by {owners - {UID}}: {[str(p) for p in written if p.lstat().st_uid != UID][:5]}"
