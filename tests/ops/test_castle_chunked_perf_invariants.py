"""Invariants of the chunked CASTLE form's CPU speed paths (spec section 2.2-2.3).

The chunked form walks the heads in groups of ``_heads_per_group(B*H, N)`` (cache locality); the grouping must not
change any output or gradient, must handle a ragged last group and must keep saved memory linear in T.
Shapes: (B, H, T, D).
"""

from __future__ import annotations

import pytest
import torch

from attnlab.ops.castle import castle_chunked, castle_parallel
from attnlab.ops.castle import chunked as chunked_mod

F64 = torch.float64


def _inputs(B: int, H: int, T: int, D: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g, dtype=F64).requires_grad_(True) for _ in range(6)]


def test_heads_per_group_bounds() -> None:
    items = chunked_mod._ITEMS_PER_GEMM
    assert chunked_mod._heads_per_group(10, 1) == min(10, items)  # few blocks: many heads per GEMM
    assert chunked_mod._heads_per_group(10, 10 * items) == 1  # many blocks: at least one head
    assert chunked_mod._heads_per_group(3, 2) <= 3


# items -> heads per group with N = 4 blocks (T = 13, block 4) and B*H = 6: 1 -> 1 head, 12 -> 3 heads,
# 16 -> 4 heads (ragged: groups of 4 and 2), 10**6 -> all 6 heads in one group
@pytest.mark.parametrize("items", [1, 12, 16, 10**6])
@pytest.mark.parametrize("lookahead", [None, 3])
def test_grouped_heads_equal_parallel_outputs_and_grads(monkeypatch: pytest.MonkeyPatch, items: int,
                                                         lookahead: int | None) -> None:
    monkeypatch.setattr(chunked_mod, "_ITEMS_PER_GEMM", items)
    xs = _inputs(2, 3, 13, 4)
    go = torch.randn(2, 3, 13, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    want = castle_parallel(*xs, lookahead=lookahead)
    got = castle_chunked(*xs, lookahead=lookahead, chunk_size=4)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)  # float64: rounding only
    gw = torch.autograd.grad(want, xs, go)
    gg = torch.autograd.grad(got, xs, go)
    for name, a, b in zip(("q_u", "k_u", "v_u", "q_c", "k_c", "v_c"), gg, gw):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11, msg=lambda m, name=name: f"d{name}: {m}")


def test_grouped_heads_are_independent(monkeypatch: pytest.MonkeyPatch) -> None:
    """One head per group gives bit-for-bit the same per-head result as running that head alone."""
    monkeypatch.setattr(chunked_mod, "_ITEMS_PER_GEMM", 1)
    xs = _inputs(1, 3, 11, 4, seed=3)
    full = castle_chunked(*xs, chunk_size=4)
    alone = castle_chunked(*(x[:, 1:2] for x in xs), chunk_size=4)
    assert torch.equal(full[:, 1:2], alone)


def test_grouped_heads_save_only_linear_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunked_mod, "_ITEMS_PER_GEMM", 1)
    B, H, T, D = 1, 3, 64, 4
    xs = _inputs(B, H, T, D)
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = castle_chunked(*xs, chunk_size=8)
    out.sum().backward()
    linear = B * H * T * D  # one T x T matrix per head would be B*H*T*T = 12288
    assert sizes and max(sizes) <= linear, sizes
    assert sum(sizes) <= 9 * linear, sizes  # 6 inputs, output, the final U and the log-sum-exp
