"""CASTLE structure, causality and reductions (spec section 7.1 invariants 4, 5 and 6), fp64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnlab.ops.castle import (
    castle_attention,
    castle_parallel,
    lookahead_keys_at,
    lookahead_scores,
)

F64 = torch.float64
IMPLS = ("reference", "parallel", "chunked")


def _inputs(T: int, *, B: int = 2, H: int = 2, D: int = 4, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g, dtype=F64) for _ in range(6)]


@pytest.mark.parametrize("lookahead", [None, 0, 1, 3])
def test_lookahead_scores_strictly_lower_triangular(lookahead: int | None) -> None:
    xs = _inputs(11)
    s_u = lookahead_scores(xs[0], xs[1], xs[2], xs[3], lookahead=lookahead)  # (B, H, T, T)
    assert torch.equal(s_u.triu(), torch.zeros_like(s_u))  # diagonal and above exactly 0
    if lookahead != 0:
        assert s_u.tril(-1).abs().sum() > 0  # the check is not vacuous: the strict lower part is populated


@pytest.mark.parametrize("W", [0, 1, 2, 4])
def test_lookahead_W_covers_exactly_the_next_W_tokens(W: int) -> None:
    # the convention: lookahead=W -> the lookahead key of token s summarises x_{s+1..s+W}; the current token s is
    # not counted (unlike a `window`, which counts it), so W=0 covers nothing. Probe each contributor j alone.
    T, t, s = 10, 9, 3
    xs = _inputs(T)
    base = lookahead_keys_at(*xs[:3], t, lookahead=W)[:, :, s]  # (B, H, D)
    covered = []
    for j in range(T):
        v_u = xs[2].clone()
        v_u[:, :, j] += 1.0
        if not torch.equal(lookahead_keys_at(xs[0], xs[1], v_u, t, lookahead=W)[:, :, s], base):
            covered.append(j)
    assert covered == list(range(s + 1, s + W + 1))
    assert not lookahead_keys_at(*xs[:3], t, lookahead=0).any()  # W=0: no lookahead at all


@pytest.mark.parametrize("lookahead", [None, 2])
def test_newest_lookahead_key_is_zero_and_rows_depend_only_on_their_span(lookahead: int | None) -> None:
    T = 9
    xs = _inputs(T)
    for t in range(T):
        u = lookahead_keys_at(*xs[:3], t, lookahead=lookahead)  # (B, H, t+1, D)
        assert torch.equal(u[:, :, t], torch.zeros_like(u[:, :, t]))  # u^t_t = 0 exactly
    # row s of U^t depends only on x_{s..t}: q^U_s and the contributors k^U, v^U at s+1..t
    t, s = 6, 3
    base = lookahead_keys_at(*xs[:3], t, lookahead=lookahead)[:, :, s]
    pert = [x.clone() for x in xs[:3]]
    pert[0][:, :, :s] += 1.0
    pert[0][:, :, s + 1 :] += 1.0  # other owners' queries
    pert[1][:, :, : s + 1] += 1.0
    pert[2][:, :, : s + 1] += 1.0  # contributors at or before s
    pert[1][:, :, t + 1 :] += 1.0
    pert[2][:, :, t + 1 :] += 1.0  # contributors after t
    torch.testing.assert_close(lookahead_keys_at(*pert, t, lookahead=lookahead)[:, :, s], base, atol=1e-14, rtol=0)
    pert[2][:, :, s + 1] += 1.0  # a real contributor does change it
    assert not torch.allclose(lookahead_keys_at(*pert, t, lookahead=lookahead)[:, :, s], base)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("lookahead", [None, 0, 2])
def test_causality_by_perturbation(impl: str, lookahead: int | None) -> None:
    T, m = 12, 7
    xs = _inputs(T)
    out = castle_attention(*xs, lookahead=lookahead, impl=impl, chunk_size=5)  # type: ignore[arg-type]
    pert = [x.clone() for x in xs]
    for x in pert:
        x[:, :, m:] = torch.randn_like(x[:, :, m:])
    out2 = castle_attention(*pert, lookahead=lookahead, impl=impl, chunk_size=5)  # type: ignore[arg-type]
    torch.testing.assert_close(out2[:, :, :m], out[:, :, :m], atol=1e-14, rtol=0)  # bitwise-level in fp64
    assert not torch.allclose(out2[:, :, m:], out[:, :, m:])
    # f(X[:m]) == f(X)[:m]
    torch.testing.assert_close(castle_attention(*[x[:, :, :m] for x in xs], lookahead=lookahead, impl=impl, chunk_size=5),
                               out[:, :, :m], atol=1e-13, rtol=0)


@pytest.mark.parametrize("impl", ("parallel", "chunked"))
def test_causality_by_gradient(impl: str) -> None:
    T = 10
    xs = [x.requires_grad_() for x in _inputs(T)]
    out = castle_attention(*xs, impl=impl, chunk_size=3)  # type: ignore[arg-type]
    for t in range(T):
        grads = torch.autograd.grad(out[:, :, t].sum(), xs, retain_graph=True)
        for g in grads:
            assert torch.equal(g[:, :, t + 1 :], torch.zeros_like(g[:, :, t + 1 :]))  # no path from the future


@pytest.mark.parametrize("impl", IMPLS)
def test_reductions_to_standard_attention(impl: str) -> None:
    T = 13
    xs = _inputs(T)
    standard = F.scaled_dot_product_attention(xs[3], xs[4], xs[5], is_causal=True)
    zero_vu = list(xs)
    zero_vu[2] = torch.zeros_like(xs[2])
    # W^UV = 0 -> S^U = 0 -> standard causal attention on (Q^C, K^C, V^C)
    torch.testing.assert_close(castle_attention(*zero_vu, impl=impl, chunk_size=4), standard, atol=1e-12, rtol=0)
    # SWL with W = 0 -> standard
    torch.testing.assert_close(castle_attention(*xs, lookahead=0, impl=impl, chunk_size=4), standard, atol=1e-12, rtol=0)
    # SWL with W >= L-1 -> full CASTLE
    full = castle_parallel(*xs)
    for w in (T - 1, T, 100):
        torch.testing.assert_close(castle_attention(*xs, lookahead=w, impl=impl, chunk_size=4), full, atol=1e-12, rtol=0)
    # and a real lookahead differs from both (the checks above are not vacuous)
    mid = castle_attention(*xs, lookahead=2, impl=impl, chunk_size=4)
    assert not torch.allclose(mid, full) and not torch.allclose(mid, standard)


def test_lookahead_term_only_lowers_logits_by_silu_bound() -> None:
    # s^C - SiLU(s^U) <= s^C + 0.2785 (SiLU >= -0.27846): the lookahead term raises a logit by at most ~0.28
    xs = _inputs(16, seed=5)
    s_u = lookahead_scores(xs[0], xs[1], xs[2], xs[3])
    assert (-F.silu(s_u)).max() <= 0.27847
