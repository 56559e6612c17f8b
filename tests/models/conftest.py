from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from lm_tiny_mechanism import registered


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # These models are tiny: with several intra-op threads on a busy machine each op waits for thread hand-offs
    # (measured: 29 ms instead of 10 us per small float64 matmul). Restore the setting afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_mechanisms() -> Iterator[None]:
    with registered():
        yield
