"""CASTLE forms agree: recurrent reference == Theorem-1 parallel == blocked chunked (outputs and gradients, fp64).

Spec section 7.1 invariants 1, 2 and 7. Shapes: (B, H, T, D).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.ops.castle import castle_attention, castle_chunked, castle_parallel, castle_reference

F64 = torch.float64
TS = [1, 2, 7, 13, 32]
BLOCKS = [1, 2, 3, 4, 5, 8, 16, 32]


def _inputs(T: int, *, B: int = 2, H: int = 2, D: int = 4, dtype: torch.dtype = F64, seed: int = 0,
            requires_grad: bool = True) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g, dtype=dtype).requires_grad_(requires_grad) for _ in range(6)]


def _lookaheads(T: int) -> list[int | None]:
    return [None, 0, 1, 3, 5, max(T - 1, 0), T + 4]


def _grads(out: torch.Tensor, xs: list[torch.Tensor], go: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(out, xs, go)


def _naive_elementwise(xs: list[torch.Tensor], lookahead: int | None, scale: float) -> torch.Tensor:
    """The spec's elementwise formulas written as scalar loops (single batch/head), independent of the ops."""
    q_u, k_u, v_u, q_c, k_c, v_c = (x[0, 0].detach() for x in xs)
    T, D = q_u.shape
    out = torch.zeros(T, D, dtype=q_u.dtype)
    for t in range(T):
        logits = []
        for s in range(t + 1):
            su = 0.0
            for j in range(s + 1, t + 1):
                if lookahead is not None and j > s + lookahead:
                    continue
                su += float(q_c[t] @ v_u[j]) * scale * float(torch.sigmoid(q_u[s] @ k_u[j] * scale))
            sc = float(q_c[t] @ k_c[s]) * scale
            logits.append(sc - su / (1.0 + math.exp(-su)))  # s^C - SiLU(s^U)
        p = torch.softmax(torch.tensor(logits, dtype=q_u.dtype), dim=0)
        out[t] = p @ v_c[: t + 1]
    return out


@pytest.mark.parametrize("lookahead", [None, 0, 2])
def test_reference_matches_scalar_formulas_with_custom_scale(lookahead: int | None) -> None:
    xs = _inputs(6, B=1, H=1, D=3, requires_grad=False)
    want = _naive_elementwise(xs, lookahead, 0.37)
    got = castle_reference(*xs, lookahead=lookahead, scale=0.37)[0, 0]
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)  # exact math, fp64
    # the default scale is 1/sqrt(D) in all three places
    torch.testing.assert_close(castle_reference(*xs, lookahead=lookahead)[0, 0], _naive_elementwise(xs, lookahead, 3 ** -0.5),
                               atol=1e-12, rtol=0)


@pytest.mark.parametrize("T", TS)
def test_reference_equals_parallel(T: int) -> None:
    lookaheads = _lookaheads(T) if T < 32 else [None, 0, 3, T - 1]  # the O(T^3) loop is slow at T=32
    for lookahead in lookaheads:
        xs = _inputs(T, B=1)
        ref = castle_reference(*xs, lookahead=lookahead)
        par = castle_parallel(*xs, lookahead=lookahead)
        torch.testing.assert_close(ref, par, atol=1e-12, rtol=0)  # fp64, exact reformulation
        go = torch.randn_like(par)
        for a, b in zip(_grads(ref, xs, go), _grads(par, xs, go)):
            torch.testing.assert_close(a, b, atol=1e-11, rtol=0)  # fp64 autograd through both


@pytest.mark.parametrize("T", TS)
def test_chunked_equals_parallel_outputs_and_grads(T: int) -> None:
    for lookahead in _lookaheads(T):
        xs = _inputs(T, seed=T)
        par = castle_parallel(*xs, lookahead=lookahead)
        go = torch.randn_like(par)
        want = _grads(par, xs, go)
        for block in sorted(set(BLOCKS + [T])):
            out = castle_chunked(*xs, lookahead=lookahead, chunk_size=block)
            torch.testing.assert_close(out, par, atol=1e-12, rtol=0, msg=f"T={T} W={lookahead} block={block}")
            for name, a, b in zip(("q_u", "k_u", "v_u", "q_c", "k_c", "v_c"), _grads(out, xs, go), want):
                # custom backward vs autograd through Theorem 1, fp64
                torch.testing.assert_close(a, b, atol=1e-10, rtol=0, msg=f"d{name} T={T} W={lookahead} block={block}")


def test_chunked_float32_close_to_float64_parallel() -> None:
    xs64 = _inputs(50, D=8, seed=3)
    xs32 = [x.detach().float().requires_grad_() for x in xs64]
    want = castle_parallel(*xs64, lookahead=None)
    got = castle_chunked(*xs32, chunk_size=16)
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=0)  # fp32 rounding over T=50
    go = torch.randn_like(want)
    for a, b in zip(_grads(got, xs32, go.float()), _grads(want, xs64, go)):
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=0)  # fp32 rounding incl. the U "un-update"


def test_chunked_bfloat16_runs_in_float32_internally() -> None:
    xs = _inputs(20, D=8, seed=4, requires_grad=False)
    got = castle_chunked(*[x.bfloat16() for x in xs], chunk_size=8)
    assert got.dtype == torch.bfloat16
    want = castle_parallel(*[x.bfloat16().double() for x in xs])
    torch.testing.assert_close(got.double(), want, atol=2e-2, rtol=0)  # bf16 output rounding (8-bit mantissa)


def test_dispatch_through_castle_attention() -> None:
    xs = _inputs(9, requires_grad=False)
    want = castle_parallel(*xs, lookahead=2)
    for impl in ("auto", "reference", "parallel", "chunked"):
        got = castle_attention(*xs, lookahead=2, impl=impl, chunk_size=4)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 24), block=st.integers(1, 12), lookahead=st.one_of(st.none(), st.integers(0, 26)),
       seed=st.integers(0, 2**16))
def test_property_chunked_equals_reference(T: int, block: int, lookahead: int | None, seed: int) -> None:
    xs = _inputs(T, B=1, H=2, D=3, seed=seed)
    ref = castle_reference(*xs, lookahead=lookahead)
    out = castle_chunked(*xs, lookahead=lookahead, chunk_size=block)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)  # fp64
    go = torch.randn(ref.shape, dtype=F64, generator=torch.Generator().manual_seed(seed + 1))
    for a, b in zip(_grads(out, xs, go), _grads(ref, xs, go)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)  # fp64 custom backward vs autograd of the definition


def test_gradcheck_chunked() -> None:
    xs = _inputs(7, B=1, H=1, D=3, seed=9)
    assert torch.autograd.gradcheck(lambda *a: castle_chunked(*a, lookahead=3, chunk_size=3), xs, eps=1e-6, atol=1e-8)


def test_first_output_row_is_first_causal_value() -> None:
    xs = _inputs(11, requires_grad=False)
    for impl in ("reference", "parallel", "chunked"):
        out = castle_attention(*xs, impl=impl, chunk_size=4)
        torch.testing.assert_close(out[..., 0, :], xs[5][..., 0, :], atol=1e-14, rtol=0)  # o_1 = v^C_1 exactly


def test_standard_attention_when_v_u_is_zero() -> None:
    xs = _inputs(13, requires_grad=False)
    xs[2] = torch.zeros_like(xs[2])  # W^UV = 0 -> V^U = 0 -> S^U = 0
    want = F.scaled_dot_product_attention(xs[3], xs[4], xs[5], is_causal=True)
    for impl in ("reference", "parallel", "chunked"):
        torch.testing.assert_close(castle_attention(*xs, impl=impl, chunk_size=5), want, atol=1e-12, rtol=0)
