"""Fuzzed inputs: every corrupted participant is skipped with one line naming the file, the others are processed.

The cases come from the seeded generator of ``fuzz.py``; the checks are those
the command line runs before any graph (sidecars before indexing, then
:func:`bids_muscle.cli.run.participant_inputs` for each participant).
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
from fuzz import KINDS, base_participant, copy_participant, make_cases

from bids_muscle import bids
from bids_muscle.cli.run import participant_inputs
from bids_muscle.config import Config
from bids_muscle.preflight import InputError, check_sidecars


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return base_participant(tmp_path_factory.mktemp("fuzz") / "base")


def _dataset(source: Path, root: Path, n_cases: int, seed: int, first: int = 0):
    """A dataset of ``n_cases`` corrupted participants beside an intact one."""
    root.mkdir()
    shutil.copyfile(source.parent / "dataset_description.json", root / "dataset_description.json")
    copy_participant(source, root, "intact")
    return make_cases(source, root, n_cases, seed, first=first)


def _failures(root: Path, cases) -> list[str]:
    """What went wrong with each case (empty when every one was refused as it should)."""
    config = Config(bids_dir=root, output_dir=root.parent / "out", analysis_level="participant",
                    work_dir=root.parent / "work", regions=("calf",))
    broken = check_sidecars(root)
    layout = bids.load_layout(root, exclude=broken)
    pairs = bids.participants_and_sessions(layout, [], None, broken)
    assert sorted(sub for sub, _ in pairs) == sorted([c.subject for c in cases] + ["intact"])
    assert [r.region for r in participant_inputs(layout, broken, "intact", None, config)] == ["calf"]
    failures = []
    for case in cases:
        try:
            participant_inputs(layout, broken, case.subject, None, config)
        except InputError as err:
            message = str(err)
            if "\n" in message or "cannot collect its inputs" in message:
                failures.append(f"{case}: not a one-line message of a foreseen problem: {message}")
            elif not any(str(f) in message for f in case.files):
                failures.append(f"{case}: the message does not name the file: {message}")
        else:
            failures.append(f"{case}: accepted")
    return failures


def test_one_case_of_each_kind(source, tmp_path):
    cases = _dataset(source, tmp_path / "bids", len(KINDS), seed=0)
    assert {c.kind for c in cases} == set(KINDS)
    assert _failures(tmp_path / "bids", cases) == []


def test_the_generator_is_seeded(source, tmp_path):
    first = make_cases(source, tmp_path / "a", 6, seed=3)
    again = make_cases(source, tmp_path / "b", 6, seed=3)
    assert [c.detail for c in first] == [c.detail for c in again]
    for case in first:
        for path in case.files:
            twin = tmp_path / "b" / path.relative_to(tmp_path / "a")
            assert path.read_bytes() == twin.read_bytes()
    other = make_cases(source, tmp_path / "c", 6, seed=4)
    assert [c.detail for c in other] != [c.detail for c in first]


@pytest.mark.slow
def test_fuzzed_inputs(source, tmp_path):
    """15 cases of each kind, in datasets of one case per kind (pybids queries slow down with the dataset's size)."""
    per_kind, failures, kinds = 15, [], Counter()
    for k in range(per_kind):
        root = tmp_path / f"bids{k}"
        cases = _dataset(source, root, len(KINDS), seed=1, first=k * len(KINDS))
        kinds.update(c.kind for c in cases)
        failures += _failures(root, cases)
        shutil.rmtree(root)
    assert sum(kinds.values()) >= 300 and set(kinds.values()) == {per_kind}
    assert failures == []
