"""sample_batch and iterate_eval_batches: shapes, shifts, determinism and full coverage of a split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.data import count_eval_targets, iterate_eval_batches, sample_batch


def _tokens(n: int, dtype: type = np.uint16) -> np.ndarray:
    return (np.arange(n) * 7 % 65521).astype(dtype)  # distinct values: a window identifies its start


def test_sample_batch_windows_are_shifted_slices() -> None:
    tokens = _tokens(1000)
    x, y = sample_batch(tokens, 5, 16, torch.Generator().manual_seed(1), "cpu")
    assert x.shape == y.shape == (5, 16) and x.dtype == y.dtype == torch.long
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        start = int(np.flatnonzero(tokens == row_x[0])[0])
        assert row_x == tokens[start : start + 16].tolist()
        assert row_y == tokens[start + 1 : start + 17].tolist()


def test_sample_batch_is_deterministic_per_generator_state() -> None:
    tokens = _tokens(500)
    a = sample_batch(tokens, 4, 8, torch.Generator().manual_seed(3))
    b = sample_batch(tokens, 4, 8, torch.Generator().manual_seed(3))
    c = sample_batch(tokens, 4, 8, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 40), st.integers(1, 6), st.integers(0, 2**31))
def test_sample_batch_stays_in_range(n: int, batch: int, seed: int) -> None:
    block = max(1, n - 1 - seed % n)
    block = min(block, n - 1)
    tokens = _tokens(n)
    x, y = sample_batch(tokens, batch, block, torch.Generator().manual_seed(seed))
    assert x.shape == (batch, block)
    # y's last token exists, so the window never ran past the end; the last possible window is reachable
    assert set(y[:, -1].tolist()) <= set(tokens[block:].tolist())


def test_sample_batch_can_reach_both_ends() -> None:
    tokens = _tokens(12)
    x, y = sample_batch(tokens, 400, 10, torch.Generator().manual_seed(0))
    assert set(x[:, 0].tolist()) == set(tokens[:2].tolist())  # starts 0 and 1 = len - block - 1


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 120), st.integers(1, 5), st.integers(1, 30))
def test_eval_batches_cover_the_whole_split_once(n: int, batch: int, block: int) -> None:
    tokens = _tokens(n)
    if block + 1 > n:
        with pytest.raises(ValueError, match=f"context_len={block} needs at least"):
            list(iterate_eval_batches(tokens, batch, block))
        return
    xs, ys, partial_seen = [], [], False
    for x, y in iterate_eval_batches(tokens, batch, block):
        assert x.dtype == torch.long and x.shape == y.shape and x.shape[0] <= batch
        assert not partial_seen, "the partial window must come last"
        if x.shape[1] != block:
            partial_seen = True
            assert x.shape[0] == 1 and x.shape[1] < block
        xs.extend(x.reshape(-1).tolist())
        ys.extend(y.reshape(-1).tolist())
    assert xs == tokens[:-1].tolist()
    assert ys == tokens[1:].tolist()
    assert len(ys) == count_eval_targets(tokens)


def test_eval_batches_concrete_layout() -> None:
    tokens = _tokens(12)  # 11 targets, block 4: two full windows in one batch, then a window of 3
    batches = list(iterate_eval_batches(tokens, 2, 4))
    assert [tuple(x.shape) for x, _ in batches] == [(2, 4), (1, 3)]
    assert batches[1][1].tolist() == [tokens[9:12].tolist()]


def test_bad_arguments() -> None:
    tokens = _tokens(10)
    with pytest.raises(ValueError, match="context_len=10 needs at least context_len \\+ 1 = 11 tokens, but the split has 10"):
        sample_batch(tokens, 2, 10, torch.Generator())
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        sample_batch(tokens, 0, 4, torch.Generator())
    with pytest.raises(ValueError, match=r"tokens must be a 1-D numpy array, got shape \(2, 5\)"):
        list(iterate_eval_batches(tokens.reshape(2, 5), 1, 2))
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        sample_batch(tokens, 1, 2, 0)  # type: ignore[arg-type]


def test_memmap_input(tmp_path) -> None:
    path = tmp_path / "t.npy"
    np.save(path, _tokens(100))
    mm = np.load(path, mmap_mode="r")
    x, y = sample_batch(mm, 3, 5, torch.Generator().manual_seed(0))
    assert x.shape == (3, 5)
    assert sum(y.numel() for _, y in iterate_eval_batches(mm, 4, 7)) == 99
