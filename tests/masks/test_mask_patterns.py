"""Every mask pattern against a dense reference written here with explicit loops over (i, j).

Conventions under test (from attnlab.masks.patterns): ``i`` is the absolute query position (``q_offset + row``),
``j`` the absolute key position (``column``).

* causal: ``j <= i``;  bidirectional: always
* sliding_window(w): ``0 <= i - j < w`` -- the window COUNTS THE QUERY ITSELF (w=1 sees only itself);
  non-causal: ``|i - j| < w``
* strided(s): ``j <= i`` and (``i - j < s`` or ``(i - j) % s == 0``); non-causal: same on ``|i - j|``
* fixed(block, summary): (``j // block == i // block`` or ``j % block >= block - summary``), and ``j <= i`` if causal
* prefix_lm(p): ``j <= i`` or ``j < p``
* document(ids): ``ids[i] == ids[j]`` (per batch row for (B, T) ids)
* bigbird: window | global (``j < g`` or ``i < g``) | random keys; restricted to ``j <= i`` when causal
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab import masks as M

EX = settings(max_examples=25, deadline=None)
lengths = st.integers(1, 37)
offsets = st.integers(0, 19)


def loop_dense(pred, T: int, S: int, q_offset: int = 0) -> torch.Tensor:
    out = torch.zeros(T, S, dtype=torch.bool)
    for r in range(T):
        i = q_offset + r
        for j in range(S):
            out[r, j] = bool(pred(i, j))
    return out


def check(mask, pred, T, S, off) -> None:
    got = M.dense(mask, T, S, q_offset=off)
    want = loop_dense(pred, T, S, off)
    assert got.dtype == torch.bool and got.shape == (T, S)
    assert torch.equal(got, want), f"{mask.name} T={T} S={S} q_offset={off}\n{got.int()}\n{want.int()}"


# ------------------------------------------------------------------------------------------------ simple masks
@EX
@given(T=lengths, S=lengths, off=offsets)
def test_causal_and_bidirectional(T, S, off) -> None:
    check(M.causal(), lambda i, j: j <= i, T, S, off)
    check(M.bidirectional(), lambda i, j: True, T, S, off)


@EX
@given(T=lengths, S=lengths, off=offsets, w=st.integers(1, 9))
def test_sliding_window(T, S, off, w) -> None:
    check(M.sliding_window(w), lambda i, j: 0 <= i - j < w, T, S, off)
    check(M.sliding_window(w, causal=False), lambda i, j: abs(i - j) < w, T, S, off)


def test_sliding_window_counts_the_query_itself() -> None:
    """The convention peers disagree on, pinned: window=3 -> the query and exactly 2 keys before it."""
    d = M.dense(M.sliding_window(3), 6, 6)
    assert d[5].nonzero().flatten().tolist() == [3, 4, 5]
    assert M.dense(M.sliding_window(1), 4, 4).equal(torch.eye(4, dtype=torch.bool))
    assert d.sum(-1).tolist() == [1, 2, 3, 3, 3, 3]


@EX
@given(T=lengths, S=lengths, off=offsets, s=st.integers(1, 8))
def test_strided(T, S, off, s) -> None:
    check(M.strided(s), lambda i, j: j <= i and (i - j < s or (i - j) % s == 0), T, S, off)
    check(M.strided(s, causal=False), lambda i, j: abs(i - j) < s or abs(i - j) % s == 0, T, S, off)


@EX
@given(T=lengths, S=lengths, off=offsets, block=st.integers(1, 8), data=st.data())
def test_fixed(T, S, off, block, data) -> None:
    summary = data.draw(st.integers(1, block))
    vis = lambda i, j: j // block == i // block or j % block >= block - summary  # noqa: E731
    check(M.fixed(block, summary), lambda i, j: vis(i, j) and j <= i, T, S, off)
    check(M.fixed(block, summary, causal=False), vis, T, S, off)


@EX
@given(T=lengths, S=lengths, off=offsets, p=st.integers(0, 12))
def test_prefix_lm(T, S, off, p) -> None:
    check(M.prefix_lm(p), lambda i, j: j <= i or j < p, T, S, off)


# ---------------------------------------------------------------------------------------------------- document
@EX
@given(L=st.integers(1, 30), seed=st.integers(0, 10**6), data=st.data())
def test_document_shared_ids(L, seed, data) -> None:
    g = torch.Generator().manual_seed(seed)
    ids = torch.sort(torch.randint(0, 4, (L,), generator=g)).values
    T = data.draw(st.integers(1, L))
    off = data.draw(st.integers(0, L - T))
    check(M.document(ids), lambda i, j: ids[i] == ids[j], T, L, off)
    check(M.document(ids) & M.causal(), lambda i, j: ids[i] == ids[j] and j <= i, T, L, off)


def test_document_per_batch_ids() -> None:
    ids = torch.tensor([[0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 1, 3, 3]])
    m = M.document(ids)
    assert m.per_batch and not m.per_head
    d = M.dense(m, 7, 7, batch_size=2, n_heads=3)
    assert d.shape == (2, 3, 7, 7)
    for b in range(2):
        want = loop_dense(lambda i, j: ids[b, i] == ids[b, j], 7, 7)
        for h in range(3):
            assert torch.equal(d[b, h], want)
    assert not torch.equal(d[0], d[1])


def test_document_cross_attention_ids() -> None:
    q_ids = torch.tensor([0, 1, 1, 2])
    kv_ids = torch.tensor([0, 0, 1, 2, 2, 2])
    check(M.document(q_ids, kv_ids), lambda i, j: q_ids[i] == kv_ids[j], 4, 6, 0)


def test_document_cross_attention_mixed_batch_ids() -> None:
    """(B, T) query ids with (S,) key ids shared by the batch, and the reverse (used to raise IndexError for b > 0)."""
    q_b = torch.tensor([[0, 0, 1], [0, 1, 1]])
    kv = torch.tensor([0, 1, 1, 1])
    for m, pred in ((M.document(q_b, kv), lambda b, i, j: q_b[b, i] == kv[j]),
                    (M.document(kv, q_b.repeat(1, 2)[:, :3]), lambda b, i, j: kv[i] == q_b.repeat(1, 2)[b, j])):
        assert m.per_batch
        d = M.dense(m, 3, 3, batch_size=2)
        for b in range(2):
            assert torch.equal(d[b, 0], loop_dense(lambda i, j: pred(b, i, j), 3, 3))
    with pytest.raises(ValueError, match=r"kv_doc_ids must have the batch size of doc_ids \(B=2\), got shape \(3, 4\)"):
        M.document(q_b, kv.expand(3, -1))


# ------------------------------------------------------------------------------------------------------ bigbird
@EX
@given(T=lengths, S=lengths, off=offsets, w=st.integers(1, 6), g=st.integers(0, 4))
def test_bigbird_without_random_keys_is_window_plus_global(T, S, off, w, g) -> None:
    check(M.bigbird(w, g, 0), lambda i, j: j <= i and (i - j < w or j < g or i < g), T, S, off)
    check(M.bigbird(w, g, 0, causal=False), lambda i, j: abs(i - j) < w or j < g or i < g, T, S, off)


@EX
@given(T=st.integers(1, 30), off=offsets, w=st.integers(1, 4), g=st.integers(0, 3), r=st.integers(1, 4),
       seed=st.integers(0, 2**40))
def test_bigbird_random_keys_structure(T, off, w, g, r, seed) -> None:
    """Causal: random keys only add keys in [0, i], at most n_random of them per row, on top of window|global."""
    S = off + T
    d = M.dense(M.bigbird(w, g, r, seed=seed), T, S, q_offset=off)
    base = loop_dense(lambda i, j: j <= i and (i - j < w or j < g or i < g), T, S, off)
    assert (d | base).equal(d)  # window and global keys are all there
    extra = d & ~base
    assert (extra.sum(-1) <= r).all()
    assert not (d & ~loop_dense(lambda i, j: j <= i, T, S, off)).any()  # never the future


def test_bigbird_random_keys_count_per_row() -> None:
    """window=1, no globals, non-causal over 1000 keys: each row holds itself + n_random draws (rare repeats)."""
    r, S = 3, 1000
    d = M.dense(M.bigbird(1, 0, r, seed=11, causal=False, kv_len=S), 50, S)
    counts = d.sum(-1)
    assert (counts <= 1 + r).all() and (counts >= 1).all()
    assert counts.float().mean() > 1 + r - 0.2  # collisions among 3 draws from 1000 are rare
    assert d.diagonal().all()


def test_bigbird_causal_draws_cover_the_past_uniformly_enough() -> None:
    """Random keys of row i are drawn from [0, i]: over many rows every region of the past gets hits."""
    d = M.dense(M.bigbird(1, 0, 2, seed=4), 400, 400) & ~torch.eye(400, dtype=torch.bool)
    cols = d.nonzero()[:, 1]
    rows = d.nonzero()[:, 0]
    frac = (cols.float() / rows.float().clamp(min=1)).histc(bins=4, min=0, max=1)
    assert (frac > 0.15 * frac.sum()).all(), frac


def test_bigbird_reproducible_seeded_and_per_head() -> None:
    a = M.dense(M.bigbird(2, 1, 3, seed=5), 40, 40)
    assert torch.equal(a, M.dense(M.bigbird(2, 1, 3, seed=5), 40, 40))
    assert not torch.equal(a, M.dense(M.bigbird(2, 1, 3, seed=6), 40, 40))
    shared = M.dense(M.bigbird(2, 1, 3, seed=5), 40, 40, n_heads=4)
    assert all(torch.equal(shared[0, h], a) for h in range(4))
    ph = M.bigbird(2, 1, 3, seed=5, n_heads=4)
    assert ph.per_head
    d = M.dense(ph, 40, 40, n_heads=4)[0]  # (H, T, S)
    assert all(not torch.equal(d[0], d[h]) for h in range(1, 4))
    # independent of the length it is evaluated at, and of q_offset: rows are rows of the long mask
    long = M.dense(ph, 60, 60, n_heads=4)[0]
    assert torch.equal(long[:, :40, :40], d)
    assert torch.equal(M.dense(ph, 7, 60, n_heads=4, q_offset=30)[0], long[:, 30:37])


# --------------------------------------------------------------------------------------- offsets, cross, combos
@EX
@given(T=lengths, S=lengths, off=offsets, w=st.integers(1, 6), s=st.integers(1, 5))
def test_combinators(T, S, off, w, s) -> None:
    a, b = M.sliding_window(w), M.strided(s)
    pa = lambda i, j: 0 <= i - j < w  # noqa: E731
    pb = lambda i, j: j <= i and (i - j < s or (i - j) % s == 0)  # noqa: E731
    check(M.and_masks(a, b), lambda i, j: pa(i, j) and pb(i, j), T, S, off)
    check(M.or_masks(a, b), lambda i, j: pa(i, j) or pb(i, j), T, S, off)
    check(a & M.prefix_lm(3), lambda i, j: pa(i, j) and (j <= i or j < 3), T, S, off)
    check(a | M.prefix_lm(3), lambda i, j: pa(i, j) or j <= i or j < 3, T, S, off)


def test_combinator_flags() -> None:
    c, sw, bi = M.causal(), M.sliding_window(4), M.bidirectional()
    assert (c & bi).plain_causal and not (c & bi).full
    assert (c | bi).full and not (c | bi).plain_causal
    assert (sw & M.prefix_lm(2)).causal and (sw & M.prefix_lm(2)).window == 4
    assert (sw | M.sliding_window(6)).window == 6 and (sw | M.sliding_window(6)).causal
    assert (sw | M.prefix_lm(2)).window is None and not (sw | M.prefix_lm(2)).causal
    assert M.and_masks(M.bigbird(2, 0, 1, max_len=50), M.bigbird(2, 0, 1, max_len=30)).max_len == 30
    assert (M.bigbird(2, 0, 1, n_heads=2) & c).per_head
    with pytest.raises(ValueError, match="needs at least one mask"):
        M.and_masks()
    with pytest.raises(ValueError, match="needs at least one mask"):
        M.or_masks()


def test_flags_match_behaviour() -> None:
    """A mask flagged causal never shows a future key; a window flag bounds how far back keys are visible."""
    masks = [M.causal(), M.sliding_window(3), M.strided(3), M.fixed(4, 1), M.bigbird(3, 1, 2), M.prefix_lm(0),
             M.sliding_window(3) & M.prefix_lm(2), M.sliding_window(2) | M.sliding_window(5)]
    for m in masks:
        d = loop_dense(lambda i, j: True, 20, 20) & M.dense(m, 20, 20)
        if m.causal:
            assert not d.triu(1).any(), m.name
        if m.window is not None:
            i, j = d.nonzero().unbind(-1)
            assert ((i - j) < m.window).all(), m.name
    assert M.causal().plain_causal and not M.sliding_window(3).plain_causal and M.bidirectional().full


def test_cross_attention_shapes_and_4d() -> None:
    m = M.sliding_window(3)
    d2 = M.dense(m, 5, 11, q_offset=6)
    d4 = M.dense(m, 5, 11, batch_size=2, n_heads=3, q_offset=6)
    assert d2.shape == (5, 11) and d4.shape == (2, 3, 5, 11)
    assert torch.equal(d4[1, 2], d2)
    assert torch.equal(d2, loop_dense(lambda i, j: 0 <= i - j < 3, 5, 11, 6))


# ----------------------------------------------------------------------------------------- names and errors
def test_names_carry_parameters() -> None:
    assert M.causal().name == "causal"
    assert M.bidirectional().name == "bidirectional"
    assert M.sliding_window(4).name == "sliding_window(window=4)"
    assert M.sliding_window(4, causal=False).name == "sliding_window(window=4, causal=False)"
    assert M.strided(3).name == "strided(stride=3)"
    assert M.fixed(8, 2).name == "fixed(block=8, summary=2)"
    assert M.fixed(8, 2, causal=False).name == "fixed(block=8, summary=2, causal=False)"
    assert M.bigbird(3, 1, 2, seed=9, n_heads=4).name == "bigbird(window=3, n_global=1, n_random=2, seed=9, n_heads=4)"
    assert M.prefix_lm(5).name == "prefix_lm(prefix_len=5)"
    assert M.document(torch.tensor([0, 0, 1])).name == "document(n_docs=2, len=3)"
    assert (M.causal() & M.sliding_window(2)).name == "and(causal, sliding_window(window=2))"
    assert (M.causal() | M.prefix_lm(1)).name == "or(causal, prefix_lm(prefix_len=1))"
    assert repr(M.strided(3)) == str(M.strided(3)) == "strided(stride=3)"


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: M.sliding_window(0), r"window must be an int >= 1, got 0"),
        (lambda: M.sliding_window(2.5), r"window must be an int >= 1, got 2.5"),
        (lambda: M.sliding_window(True), r"window must be an int >= 1, got True"),
        (lambda: M.strided(0), r"stride must be an int >= 1, got 0"),
        (lambda: M.fixed(0), r"block must be an int >= 1, got 0"),
        (lambda: M.fixed(4, 5), r"summary must be an int in \[1, block=4\], got 5"),
        (lambda: M.fixed(4, 0), r"summary must be an int in \[1, block=4\], got 0"),
        (lambda: M.bigbird(0, 1, 1), r"window must be an int >= 1, got 0"),
        (lambda: M.bigbird(2, -1, 1), r"n_global must be an int >= 0, got -1"),
        (lambda: M.bigbird(2, 1, -1), r"n_random must be an int >= 0, got -1"),
        (lambda: M.bigbird(2, 1, 1, seed=-3), r"seed must be an int >= 0, got -3"),
        (lambda: M.bigbird(2, 1, 1, n_heads=0), r"n_heads must be an int >= 1, got 0"),
        (lambda: M.bigbird(2, 1, 1, causal=False), r"needs kv_len"),
        (lambda: M.prefix_lm(-1), r"prefix_len must be an int >= 0, got -1"),
        (lambda: M.document(torch.tensor([0.0, 1.0])), r"doc_ids must be an integer tensor of shape \(T,\) or \(B, T\)"),
        (lambda: M.document(torch.zeros(2, 2, 2, dtype=torch.long)), r"doc_ids must be an integer tensor"),
        (lambda: M.dense(M.causal(), -1, 3), r"q_len must be a non-negative int, got -1"),
        (lambda: M.dense(M.causal(), 3, 3, q_offset=-2), r"q_offset must be a non-negative int, got -2"),
        (lambda: M.dense(M.causal(), 3, 3, batch_size=0), r"batch_size must be None or an int >= 1, got 0"),
        (lambda: M.dense(M.causal(), 3, 3, n_heads=-1), r"n_heads must be None or an int >= 1, got -1"),
        (lambda: M.dense(M.bigbird(2, 1, 1, max_len=10), 4, 4, q_offset=7), r"max_len=10"),
    ],
)
def test_invalid_parameters_raise(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()
