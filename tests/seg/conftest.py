"""Shared fixtures of the segmentation tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """One torch thread: the test machine's two cores are shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
