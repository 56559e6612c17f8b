"""Attention capture: exact probabilities, kept in the graph on request, outputs unchanged, clear refusals."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.layers.capture import capture_attention
from attnlab.layers.mha import MultiHeadAttention, MultiHeadAttentionConfig
from attnlab.layers.rope import apply_rope
from attnlab.models import LM, LMConfig


def _naive_causal_probs(layer: MultiHeadAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(D) + causal -inf) written out independently of attnlab's ops, and v."""
    B, T, _ = x.shape
    H, D = layer.n_heads, layer.head_dim
    q, k, v = layer.in_proj(x).split(layer._split, dim=-1)
    q = q.view(B, T, H, D).transpose(1, 2)
    k = k.view(B, T, H, D).transpose(1, 2)
    v = v.view(B, T, H, D).transpose(1, 2)
    if layer.rope:
        q, k = apply_rope(q, 0, layer.rope_base), apply_rope(k, 0, layer.rope_base)
    s = torch.einsum("bhtd,bhsd->bhts", q, k) / math.sqrt(D)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    s = s.masked_fill(future, float("-inf"))
    return torch.softmax(s, dim=-1), v


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_captured_probabilities_are_exact_and_outputs_unchanged(impl: str) -> None:
    torch.manual_seed(0)
    layer = MultiHeadAttention(MultiHeadAttentionConfig(d_model=24, n_heads=3, rope=True, impl=impl)).double()
    x = torch.randn(2, 7, 24, dtype=torch.float64)
    plain = layer(x)
    with capture_attention(layer) as cap:
        out = layer(x)
    assert torch.equal(out, plain)  # the output still comes from the layer's own backend
    p = cap.probs("")
    ref, v = _naive_causal_probs(layer, x)
    assert p.shape == (2, 3, 7, 7)
    torch.testing.assert_close(p, ref, rtol=0, atol=1e-14)
    assert torch.equal(p.triu(1), torch.zeros_like(p))  # the future gets exactly 0
    # the probabilities reproduce the layer: out_proj(p @ v)
    mixed = (p @ v).transpose(1, 2).reshape(2, 7, 24)
    torch.testing.assert_close(layer.out_proj(mixed), plain, rtol=0, atol=1e-13)
    assert not p.requires_grad  # keep_graph=False detaches


def test_keep_graph_gives_gradients_and_every_layer_of_a_model() -> None:
    torch.manual_seed(1)
    m = LM(LMConfig(vocab_size=20, n_layers=3, d_model=16, n_heads=2, context_len=10,
                    attention=["standard", "luong-general", "sliding-window"],
                    attention_options={"sliding-window": {"window": 3}})).double()
    idx = torch.randint(0, 20, (2, 9))
    with capture_attention(m, keep_graph=True) as cap:
        m(idx)
    names = [n for n, _ in cap.all()]
    assert names == ["blocks.0.attn", "blocks.1.attn", "blocks.2.attn"]
    for _, p in cap.all():
        assert p.shape == (2, 2, 9, 9) and p.requires_grad
        torch.testing.assert_close(p.sum(-1), torch.ones(2, 2, 9, dtype=torch.float64), rtol=0, atol=1e-12)
    window = cap.probs("blocks.2.attn")
    i, j = torch.meshgrid(torch.arange(9), torch.arange(9), indexing="ij")
    assert torch.equal(window[..., (j > i) | (j <= i - 3)], torch.zeros_like(window[..., (j > i) | (j <= i - 3)]))
    # an attention loss reaches the query/key projections of the captured layer
    (cap.probs("blocks.1.attn")[..., 0] ** 2).sum().backward()
    assert m.blocks[1].attn.in_proj.weight.grad.abs().sum() > 0
    assert m.blocks[1].attn.score_weight.grad.abs().sum() > 0


def test_layers_without_probabilities_are_refused_by_name() -> None:
    m = LM(LMConfig(vocab_size=20, n_layers=2, d_model=16, n_heads=2, context_len=10, attention=["standard", "linear"]))
    with pytest.raises(ValueError, match=r"layer 'blocks.1.attn' \(LinearAttention\) cannot expose attention "
                                         r"probabilities: linear attention"):
        with capture_attention(m):
            pass
    c = LM(LMConfig(vocab_size=20, n_layers=1, d_model=16, n_heads=2, context_len=10, attention="castle"))
    with pytest.raises(ValueError, match=r"'blocks.0.attn' \(CastleAttention\).*CASTLE normalises"):
        with capture_attention(c):
            pass
    with capture_attention(m, layers=["blocks.0.attn"]) as cap:  # leaving the linear layer out
        m(torch.randint(0, 20, (1, 5)))
    assert [n for n, _ in cap.all()] == ["blocks.0.attn"]
    with pytest.raises(ValueError, match=r"layers=\['blocks.9.attn'\] are not attention layers"):
        with capture_attention(m, layers=["blocks.9.attn"]):
            pass


def test_no_capture_records_nothing_and_captures_do_not_nest() -> None:
    layer = MultiHeadAttention(MultiHeadAttentionConfig(d_model=8, n_heads=2))
    with capture_attention(layer) as cap:
        with pytest.raises(ValueError, match="already active"):
            with capture_attention(layer):
                pass
    layer(torch.randn(1, 3, 8))  # after the block: nothing is recorded any more
    assert cap.records == {}
