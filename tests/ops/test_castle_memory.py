"""The chunked form keeps no T x T tensor for backward: everything it saves is O(B H T D) (spec section 2.3)."""

from __future__ import annotations

import torch

from attnlab.ops.castle import castle_chunked, castle_parallel


def _saved_numels(fn, xs: list[torch.Tensor]) -> list[int]:
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*xs)
    out.sum().backward()
    return sizes


def test_chunked_saves_only_linear_size_tensors() -> None:
    B, H, L, D = 1, 2, 64, 4
    xs = [torch.randn(B, H, L, D, dtype=torch.float64, requires_grad=True) for _ in range(6)]
    linear = B * H * L * D  # 512, while one L x L matrix per head is B*H*L*L = 8192
    sizes = _saved_numels(lambda *a: castle_chunked(*a, chunk_size=8), xs)
    assert sizes, "the hook saw no saved tensor"
    assert max(sizes) <= linear, sizes
    assert sum(sizes) <= 9 * linear, sizes  # 6 inputs, output, the final U (each B H L D) and the log-sum-exp
    # the same probe on the Theorem-1 form does see L x L tensors, so the probe itself works
    assert max(_saved_numels(lambda *a: castle_parallel(*a), xs)) >= B * H * L * L


def test_chunked_saved_memory_grows_linearly_in_length() -> None:
    totals = []
    for L in (32, 64, 128):
        xs = [torch.randn(1, 1, L, 4, requires_grad=True) for _ in range(6)]
        totals.append(sum(_saved_numels(lambda *a: castle_chunked(*a, chunk_size=8), xs)))
    assert totals[1] == 2 * totals[0] and totals[2] == 2 * totals[1], totals
