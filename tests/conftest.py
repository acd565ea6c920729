"""Shared fixtures.

Real-data tests read ``../shared/data`` relative to the repository root and
skip cleanly when it is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bids_muscle.config import apply_environment_defaults

apply_environment_defaults()

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of real scans; skips the test when it is not present."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available at {SHARED_DATA}")
    return SHARED_DATA


def shared_path(*parts: str) -> Path:
    """Path of one item under ``../shared/data``; skips the test when missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


@pytest.fixture(scope="session")
def phantom_bids(tmp_path_factory) -> Path:
    """A 2-participant phantom dataset, written once per test session (treat as read-only)."""
    from bids_muscle.phantom.dataset import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("phantom") / "bids", n_participants=2, seed=0)
