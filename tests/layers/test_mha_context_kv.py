"""MultiHeadAttention.project_context + forward(x, context_kv=(k, v)): attending to a context whose keys and values
were projected once equals attending to the context itself, for every score, GQA, biases and a key-padding mask,
outputs and gradients; bad pairs are refused with the argument named.

float64; TOL = 1e-12 (identical math, the only difference is where the context projection is computed).
"""

from __future__ import annotations

import pytest
import torch

from attnlab import masks
from attnlab.layers.mha import MultiHeadAttention, MultiHeadAttentionConfig

F64 = torch.float64
TOL = 1e-12


def _layer(**kw) -> MultiHeadAttention:
    kw.setdefault("d_model", 20)
    kw.setdefault("n_heads", 4)
    kw.setdefault("mask", None)
    kw.setdefault("cross", True)
    return MultiHeadAttentionConfig(**kw).build().to(F64).eval()


def _x(B: int, T: int, d: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, T, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("score", ["scaled_dot", "dot", "general", "additive"])
@pytest.mark.parametrize("n_kv_heads, bias", [(None, False), (2, True), (1, False)])
@pytest.mark.parametrize("T, S", [(1, 7), (5, 3), (9, 1)])
def test_context_kv_equals_context(score: str, n_kv_heads: int | None, bias: bool, T: int, S: int) -> None:
    layer = _layer(score=score, n_kv_heads=n_kv_heads, bias=bias, head_dim=6)
    x = _x(3, T).requires_grad_()
    c = _x(3, S, seed=1).requires_grad_()
    valid = torch.arange(S)[None, :] < torch.tensor([[S], [max(1, S - 2)], [1]])  # (B, S): right padding
    for mask in (None, masks.key_padding(valid)):
        want = layer(x, context=c, mask=mask)
        k, v = layer.project_context(c)
        assert k.shape == v.shape == (3, layer.n_kv_heads, S, 6)
        got = layer(x, context_kv=(k, v), mask=mask)
        assert (got - want).abs().max() < TOL
        g = torch.randn_like(want)
        gw = torch.autograd.grad(want, (x, c, *layer.parameters()), g)
        gg = torch.autograd.grad(got, (x, c, *layer.parameters()), g)
        for a, b in zip(gw, gg):
            assert (a - b).abs().max() < TOL


def test_self_attention_layer_accepts_context_kv() -> None:
    """A causal self-attention layer attends to a context unmasked (as with context=); context_kv is the same."""
    layer = _layer(mask=masks.causal(), cross=False, rope=True, head_dim=6)
    x, c = _x(2, 6), _x(2, 4, seed=2)
    assert (layer(x, context_kv=layer.project_context(c)) - layer(x, context=c)).abs().max() < TOL


def test_context_path_projects_through_project_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """One code path: forward(context=...) calls project_context once; forward(context_kv=...) never does."""
    layer = _layer()
    calls = []
    orig = layer.project_context
    monkeypatch.setattr(layer, "project_context", lambda c: calls.append(c.shape) or orig(c))
    x, c = _x(2, 3), _x(2, 5, seed=1)
    layer(x, context=c)
    assert calls == [torch.Size([2, 5, 20])]
    kv = orig(c)
    for _ in range(3):
        layer(x, context_kv=kv)
    assert len(calls) == 1


def test_bad_context_kv() -> None:
    layer = _layer(n_kv_heads=2)
    x, c = _x(2, 3), _x(2, 5, seed=1)
    k, v = layer.project_context(c)
    with pytest.raises(ValueError, match="pass at most one of context .* and context_kv"):
        layer(x, context=c, context_kv=(k, v))
    with pytest.raises(ValueError, match="context_kv must be a pair \\(k, v\\) of tensors from project_context\\(\\), "
                                         "got Tensor"):
        layer(x, context_kv=k)
    with pytest.raises(ValueError,
                       match=r"context_kv k must have shape \(B=3, H_kv=2, S >= 1, D=5\), got \(2, 2, 5, 5\)"):
        layer(_x(3, 3), context_kv=(k, v))
    with pytest.raises(ValueError, match=r"context_kv v must have shape .*, got \(2, 4, 5, 5\)"):
        layer(x, context_kv=(k, v.repeat(1, 2, 1, 1)))
    with pytest.raises(ValueError, match="context_kv k and v must have the same length S, got 5 and 4"):
        layer(x, context_kv=(k, v[:, :, :4]))
    with pytest.raises(ValueError, match="context_kv k must have the layer's dtype torch.float64"):
        layer(x, context_kv=(k.float(), v))
    with pytest.raises(ValueError, match=r"context must have shape \(B >= 1, S >= 1, d_model=20\), got \(2, 5\)"):
        layer.project_context(c[:, :, 0])
    with pytest.raises(ValueError, match="context must have the layer's dtype torch.float64"):
        layer.project_context(c.float())
    self_attn = _layer(mask=masks.causal(), cross=False)
    with pytest.raises(ValueError, match="cache is not supported together with context_kv"):
        self_attn(x, context_kv=self_attn.project_context(c), cache=self_attn.new_cache(2))
    with pytest.raises(ValueError, match=r"forward needs context=\(B, S, d_model\) or context_kv=\(k, v\)"):
        layer(x)


def test_max_len_of_mask_is_checked_against_context_length() -> None:
    layer = _layer()
    x, c = _x(2, 2), _x(2, 6, seed=1)
    bounded = masks.bigbird(2, 1, 0, causal=False, max_len=4)
    with pytest.raises(ValueError, match="defined for positions < max_len=4.* and S=6 keys"):
        layer(x, context_kv=layer.project_context(c), mask=bounded)
