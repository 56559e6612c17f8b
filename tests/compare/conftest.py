"""Trainer tests: the stand-in model lives next to them; one intra-op thread (tiny tensors, and on a shared
2-core machine a second spinning thread costs 100x more than it saves)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
