"""MultiHeadAttention with RoPE and no cache rotates queries and keys in pair order (projection rows permuted, one
complex multiplication): the same outputs and gradients as the rotate-half formula written out, in float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnlab.layers.mha import MultiHeadAttention, MultiHeadAttentionConfig
from attnlab.layers.rope import apply_rope


def _by_formula(layer: MultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    """in_proj -> heads -> rotate-half RoPE -> causal softmax attention -> out_proj, written out."""
    B, T, _ = x.shape
    H, Hkv, D = layer.n_heads, layer.n_kv_heads, layer.head_dim
    q, k, v = layer.in_proj(x).split(layer._split, dim=-1)
    q = apply_rope(q.view(B, T, H, D).transpose(1, 2), 0, layer.rope_base)
    k = apply_rope(k.view(B, T, Hkv, D).transpose(1, 2), 0, layer.rope_base)
    v = v.view(B, T, Hkv, D).transpose(1, 2)
    k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
    scale = 1 / math.sqrt(D) if layer.score == "scaled_dot" else 1.0
    s = torch.einsum("bhtd,bhsd->bhts", q, k) * scale
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    out = torch.einsum("bhts,bhsd->bhtd", s.softmax(-1), v)
    return layer.out_proj(out.transpose(1, 2).reshape(B, T, H * D))


@pytest.mark.parametrize("T", [1, 7, 63])
@pytest.mark.parametrize("n_kv_heads, score, bias", [(None, "scaled_dot", False), (2, "scaled_dot", True),
                                                     (1, "dot", False)])
def test_pair_order_equals_rotate_half(T: int, n_kv_heads: int | None, score: str, bias: bool) -> None:
    torch.manual_seed(0)
    layer = MultiHeadAttention(MultiHeadAttentionConfig(
        d_model=48, n_heads=4, n_kv_heads=n_kv_heads, head_dim=12, score=score, bias=bias, rope=True,
        rope_base=500.0)).double()
    x = torch.randn(2, T, 48, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, T, 48, dtype=torch.float64)
    got, want = layer(x), _by_formula(layer, x)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    params = [x, *layer.parameters()]
    for a, b in zip(torch.autograd.grad(got, params, g), torch.autograd.grad(want, params, g)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_pair_order_is_taken_and_cached_per_device() -> None:
    layer = MultiHeadAttention(MultiHeadAttentionConfig(d_model=16, n_heads=2, rope=True))
    layer(torch.randn(1, 3, 16))
    rows = layer._pair_rows_by_device[torch.device("cpu")]  # the fast path ran and kept its row order
    # two q and two k heads of 8 dims, each in pair order (i, i + 4), then the v rows unchanged
    per_head = [0, 4, 1, 5, 2, 6, 3, 7]
    assert rows.tolist() == [8 * h + i for h in range(4) for i in per_head] + list(range(32, 48))
    assert "_pair_rows_by_device" not in layer.state_dict() and not list(layer.buffers())


def test_float32_training_step_matches_float64() -> None:
    """The float32 path (the one LM training takes) against float64 within float32 rounding."""
    torch.manual_seed(1)
    layer = MultiHeadAttention(MultiHeadAttentionConfig(d_model=32, n_heads=4, rope=True))
    x = torch.randn(3, 20, 32)
    want = _by_formula(layer.double(), x.double())
    got = layer.float()(x)
    assert F.mse_loss(got.double(), want).sqrt() < 1e-6


def test_autocast_takes_the_rotate_half_path() -> None:
    """Under autocast the projections are bfloat16 (no complex dtype): the layer rotates them the plain way."""
    torch.manual_seed(2)
    layer = MultiHeadAttention(MultiHeadAttentionConfig(d_model=32, n_heads=4, n_kv_heads=2, rope=True))
    x = torch.randn(2, 9, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), layer(x), atol=3e-2, rtol=3e-2)
