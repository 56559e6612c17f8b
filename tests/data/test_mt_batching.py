"""Translation batches: (seed, step)-determined length-bucketed training batches, rank splits, padding, eval order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.data import (
    IGNORE_INDEX,
    EncodedSplit,
    batches_per_epoch,
    eval_batches,
    global_batch,
    load_parallel,
    pad_batch,
    rank_rows,
)
from attnlab.data import mt_batching


def _epoch(e: int, **kw: object) -> np.ndarray:
    nb = batches_per_epoch(kw["n_examples"], kw["batch_size"])  # type: ignore[arg-type]
    return np.stack([global_batch(e * nb + k, **kw) for k in range(nb)])  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ global_batch


def test_global_batch_depends_on_seed_and_step_only() -> None:
    lengths = np.random.default_rng(1).integers(1, 40, size=1000)
    kw = dict(seed=3, n_examples=1000, batch_size=32, lengths=lengths, pool=8)
    later_first = [global_batch(s, **kw) for s in (100, 7, 31)]  # type: ignore[arg-type]
    mt_batching._epoch_batches.cache_clear()
    in_order = {s: global_batch(s, **kw) for s in range(101)}  # type: ignore[arg-type]
    for s, b in zip((100, 7, 31), later_first):
        assert np.array_equal(b, in_order[s])
    assert in_order[5].dtype == np.int64 and in_order[5].shape == (32,)
    assert not np.array_equal(global_batch(5, **{**kw, "seed": 4}), in_order[5])  # type: ignore[arg-type]
    kept = in_order[5].copy()
    in_order[5][:] = -1  # the caller owns its array: the cached epoch is not affected
    assert np.array_equal(global_batch(5, **kw), kept)  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 300), bs=st.integers(1, 40), pool=st.integers(1, 10), seed=st.integers(0, 2**32),
    epoch=st.integers(0, 3),
)
def test_each_epoch_is_a_permutation_of_full_batches(n: int, bs: int, pool: int, seed: int, epoch: int) -> None:
    if bs > n:
        with pytest.raises(ValueError, match=f"batch_size={bs} is larger than n_examples={n}"):
            global_batch(0, seed=seed, n_examples=n, batch_size=bs, lengths=np.ones(n, dtype=int), pool=pool)
        return
    lengths = np.random.default_rng(seed).integers(1, 9, size=n)
    batches = _epoch(epoch, seed=seed, n_examples=n, batch_size=bs, lengths=lengths, pool=pool)
    assert batches.shape == (n // bs, bs)
    flat = batches.reshape(-1)
    assert len(np.unique(flat)) == len(flat) == (n // bs) * bs  # no example twice in an epoch
    assert flat.min() >= 0 and flat.max() < n


def test_epochs_differ_and_cover_the_data() -> None:
    n, bs = 103, 10
    lengths = np.arange(n) % 7
    kw = dict(seed=0, n_examples=n, batch_size=bs, lengths=lengths)
    e0, e1 = _epoch(0, **kw), _epoch(1, **kw)
    assert not np.array_equal(e0, e1)
    left_out = [set(range(n)) - set(e.reshape(-1).tolist()) for e in (e0, e1)]
    assert [len(x) for x in left_out] == [3, 3]  # n % bs examples per epoch, a different random 3 each time
    seen = set()
    for e in range(20):
        seen |= set(_epoch(e, **kw).reshape(-1).tolist())
    assert seen == set(range(n))


def test_one_pool_per_epoch_gives_sorted_length_bands() -> None:
    """With one pool for the whole epoch, batches are consecutive bands of the length order: ordering the batches
    by their shortest example, each batch's longest example is at most the next batch's shortest."""
    n, bs = 500, 20
    lengths = np.random.default_rng(0).integers(1, 60, size=n)
    batches = _epoch(0, seed=1, n_examples=n, batch_size=bs, lengths=lengths, pool=n // bs)
    bands = sorted((lengths[b].min(), lengths[b].max()) for b in batches)
    assert all(hi <= lo_next for (_, hi), (lo_next, _) in zip(bands, bands[1:]))
    # the batch order is shuffled, not sorted
    mins = [lengths[b].min() for b in batches]
    assert mins != sorted(mins)


def test_pool_of_one_batch_is_not_sorted_across_batches() -> None:
    n, bs = 500, 20
    lengths = np.random.default_rng(0).integers(1, 60, size=n)
    batches = _epoch(0, seed=1, n_examples=n, batch_size=bs, lengths=lengths, pool=1)
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread > 40  # random batches: each spans most of the range 1..59


def test_bucketing_keeps_padding_small_on_multi30k() -> None:
    corpus = load_parallel("multi30k", src_lang="de", tgt_lang="en")
    src = np.array([len(s.split()) for s, _ in corpus.train])
    tgt = np.array([len(t.split()) for _, t in corpus.train])
    lengths = np.maximum(src, tgt)
    n, bs = len(lengths), 128

    def pad_fraction(batches: list[np.ndarray]) -> float:
        real = sum(int(src[b].sum() + tgt[b].sum()) for b in batches)
        total = sum(len(b) * int(src[b].max() + tgt[b].max()) for b in batches)
        return 1 - real / total

    bucketed = pad_fraction([global_batch(s, seed=0, n_examples=n, batch_size=bs, lengths=lengths) for s in range(100)])
    perm = np.random.default_rng(0).permutation(n)
    random = pad_fraction([perm[i * bs : (i + 1) * bs] for i in range(100)])
    assert bucketed < 0.15 < 0.4 < random, (bucketed, random)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(step=-1), r"step must be an int >= 0, got -1"),
        (dict(step=1.0), r"step must be an int >= 0, got 1.0"),
        (dict(seed=-2), r"seed must be an int >= 0, got -2"),
        (dict(batch_size=0), r"batch_size must be a positive int, got 0"),
        (dict(pool=0), r"pool must be a positive int, got 0"),
        (dict(lengths=np.ones(9, dtype=int)), r"lengths must be 10 integers \(one per example\), got shape \(9,\)"),
        (dict(lengths=np.ones(10)), r"lengths must be 10 integers .* float64"),
    ],
)
def test_global_batch_rejects_bad_arguments(kw: dict, message: str) -> None:
    args = dict(step=0, seed=0, n_examples=10, batch_size=2, lengths=np.ones(10, dtype=int), pool=2) | kw
    step = args.pop("step")
    with pytest.raises(ValueError, match=message):
        global_batch(step, **args)


# ---------------------------------------------------------------------------------------------------- rank_rows


@settings(max_examples=60, deadline=None)
@given(b=st.integers(0, 50), world=st.integers(1, 9))
def test_rank_rows_are_disjoint_and_cover_the_batch(b: int, world: int) -> None:
    batch = np.arange(100, 100 + b)
    parts = [rank_rows(batch, r, world) for r in range(world)]
    assert np.array_equal(np.concatenate(parts), batch)  # disjoint, covering, in order
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    if b % world == 0:
        assert sizes == [b // world] * world


def test_rank_rows_tensor_and_errors() -> None:
    t = torch.arange(10)
    assert torch.equal(torch.cat([rank_rows(t, r, 3) for r in range(3)]), t)
    assert torch.equal(rank_rows(t, 0, 1), t)
    with pytest.raises(ValueError, match=r"rank must be an int in \[0, 2\), got 2"):
        rank_rows(t, 2, 2)
    with pytest.raises(ValueError, match=r"world_size must be a positive int, got 0"):
        rank_rows(t, 0, 0)


# ---------------------------------------------------------------------------------------------------- pad_batch

BOS, EOS = 2, 3
SRC = [[5, 6, EOS], [7, EOS], [8, 9, 10, 11, EOS]]
TGT = [[BOS, 20, EOS], [BOS, 21, 22, 23, 24, EOS], [BOS, EOS]]


def test_pad_batch_layout() -> None:
    b = pad_batch(SRC, [np.array(t, dtype=np.int32) for t in TGT])
    assert torch.equal(b.src, torch.tensor([[5, 6, 3, 0, 0], [7, 3, 0, 0, 0], [8, 9, 10, 11, 3]]))
    assert torch.equal(b.tgt_in, torch.tensor([[2, 20, 0, 0, 0], [2, 21, 22, 23, 24], [2, 0, 0, 0, 0]]))
    assert torch.equal(b.tgt_out, torch.tensor([[20, 3, -1, -1, -1], [21, 22, 23, 24, 3], [3, -1, -1, -1, -1]]))
    assert torch.equal(b.src_pad_mask, b.src == 0) and b.src_pad_mask.dtype == torch.bool
    assert torch.equal(b.tgt_pad_mask, b.tgt_out == IGNORE_INDEX)
    assert all(x.dtype == torch.long for x in (b.src, b.tgt_in, b.tgt_out))
    assert b.n_tgt_tokens == 2 + 5 + 1
    assert IGNORE_INDEX == -1


def test_pad_batch_rows_equal_the_unpadded_examples() -> None:
    b = pad_batch(SRC, TGT, pad_id=0)
    for i, (s, t) in enumerate(zip(SRC, TGT)):
        assert b.src[i][~b.src_pad_mask[i]].tolist() == s
        assert b.tgt_in[i][~b.tgt_pad_mask[i]].tolist() == t[:-1]
        assert b.tgt_out[i][~b.tgt_pad_mask[i]].tolist() == t[1:]


def test_padded_targets_are_ignored_by_the_loss() -> None:
    """Summed cross-entropy over the padded batch with ignore_index=IGNORE_INDEX equals the sum over the unpadded
    examples (float64, exact up to summation order); without ignore_index the padding fails loudly."""
    b = pad_batch(SRC, TGT)
    vocab = 30
    logits = torch.randn(*b.tgt_out.shape, vocab, dtype=torch.float64)  # (B, T, V)
    padded = F.cross_entropy(logits.reshape(-1, vocab), b.tgt_out.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    per_example = sum(
        F.cross_entropy(logits[i, : len(t) - 1], torch.tensor(t[1:]), reduction="sum") for i, t in enumerate(TGT)
    )
    torch.testing.assert_close(padded, per_example, rtol=1e-12, atol=1e-12)
    with pytest.raises((IndexError, RuntimeError)):
        F.cross_entropy(logits.reshape(-1, vocab), b.tgt_out.reshape(-1))


def test_encoded_split_lengths_and_batch() -> None:
    split = EncodedSplit(src=[np.array(s, dtype=np.int32) for s in SRC], tgt=[np.array(t, dtype=np.int32) for t in TGT])
    assert len(split) == 3
    assert split.src_lengths.tolist() == [3, 2, 5]
    assert split.tgt_lengths.tolist() == [2, 5, 1]
    assert split.lengths.tolist() == [3, 5, 5]
    b = split.batch(np.array([2, 0]))
    assert b.src.shape == (2, 5) and b.tgt_in.shape == (2, 2)
    assert b.src[1].tolist() == [5, 6, 3, 0, 0]
    with pytest.raises(ValueError, match="src has 3 sentences but tgt has 2"):
        EncodedSplit(src=split.src, tgt=split.tgt[:2])


def test_pad_batch_errors_and_device() -> None:
    with pytest.raises(ValueError, match="same positive number of sequences, got 2 and 1"):
        pad_batch(SRC[:2], TGT[:1])
    with pytest.raises(ValueError, match=r"tgt\[0\] has 1 ids; a target holds at least \[bos\] ... \[eos\]"):
        pad_batch([[EOS]], [[BOS]])
    with pytest.raises(ValueError, match=r"src\[0\] is empty"):
        pad_batch([[]], [[BOS, EOS]])
    b = pad_batch(SRC, TGT, device="cpu")
    assert b.src.device.type == "cpu" and b.to("cpu").tgt_out.shape == b.tgt_out.shape


# ------------------------------------------------------------------------------------------------- eval_batches


def test_eval_batches_cover_the_split_longest_first() -> None:
    lengths = np.array([3, 9, 1, 9, 4, 4, 7])
    batches = list(eval_batches(lengths, batch_size=3))
    assert [b.tolist() for b in batches] == [[1, 3, 6], [4, 5, 0], [2]]  # descending length, ties by index
    assert all(b.dtype == np.int64 for b in batches)
    assert [b.tolist() for b in eval_batches(lengths, batch_size=3)] == [b.tolist() for b in batches]  # fixed
    # hypotheses written at the original indices come back in corpus order
    sources = [f"sentence {i}" for i in range(len(lengths))]
    out: list[str | None] = [None] * len(lengths)
    for idx in batches:
        hyps = [sources[i].upper() for i in idx]  # stands in for translating the batch
        for j, hyp in enumerate(hyps):
            out[idx[j]] = hyp
    assert out == [s.upper() for s in sources]
    assert list(eval_batches(np.zeros(0, dtype=int), batch_size=4)) == []
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        eval_batches(lengths, batch_size=0)  # checked at the call, not at the first batch
    with pytest.raises(ValueError, match="lengths must be a 1-D sequence of integers"):
        eval_batches(np.ones((2, 2), dtype=int), batch_size=1)
