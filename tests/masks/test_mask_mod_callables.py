"""A FlexAttention-style ``mask_mod`` callable (as attention-gym writes them) is accepted wherever a ``Mask`` is: the
functional op (every CPU backend), a layer's configured and per-call mask, rendering; the result equals the same
predicate as an attnlab ``Mask``."""

from __future__ import annotations

import pytest
import torch

from attnlab.layers import MultiHeadAttention, MultiHeadAttentionConfig
from attnlab.masks import Mask, as_mask, causal, sliding_window
from attnlab.masks.render import render
from attnlab.ops.softmax import softmax_attention

f64 = torch.float64


def sliding_window_4(b, h, q_idx, kv_idx):  # written as in attention-gym, no attnlab import
    return (q_idx >= kv_idx) & (q_idx - kv_idx < 4)


def _qkv(T: int = 11):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 3, T, 8, generator=g, dtype=f64) for _ in range(3)]


@pytest.mark.parametrize("impl", ["reference", "sdpa", "flex"])
def test_softmax_attention_takes_a_mask_mod(impl: str) -> None:
    q, k, v = _qkv()
    want = softmax_attention(q, k, v, mask=sliding_window(4), impl="reference")
    torch.testing.assert_close(softmax_attention(q, k, v, mask=sliding_window_4, impl=impl), want,
                               atol=1e-12, rtol=0)


def test_layers_take_a_mask_mod_configured_and_per_call() -> None:
    torch.manual_seed(0)
    mine = MultiHeadAttention(MultiHeadAttentionConfig(d_model=16, n_heads=2, mask=sliding_window_4)).to(f64)
    assert isinstance(mine.mask, Mask) and mine.mask.name == "sliding_window_4" and not mine.causal
    ref = MultiHeadAttention(MultiHeadAttentionConfig(d_model=16, n_heads=2, mask=sliding_window(4))).to(f64)
    ref.load_state_dict(mine.state_dict())
    x = torch.randn(2, 9, 16, dtype=f64)
    torch.testing.assert_close(mine(x), ref(x), atol=1e-12, rtol=0)
    plain = MultiHeadAttention(MultiHeadAttentionConfig(d_model=16, n_heads=2, mask=causal())).to(f64)
    plain.load_state_dict(mine.state_dict())
    torch.testing.assert_close(plain(x, mask=sliding_window_4), ref(x), atol=1e-12, rtol=0)


def test_render_and_errors(tmp_path) -> None:
    assert render(sliding_window_4, 8, 8, tmp_path / "m.png").stat().st_size > 0
    assert as_mask(causal()) is not None
    with pytest.raises(TypeError, match="mask must be a Mask or a mask_mod callable, got int"):
        render(3, 8, 8, tmp_path / "x.png")  # type: ignore[arg-type]
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="mask must be an attnlab.masks.Mask, a mask_mod callable or None"):
        softmax_attention(q, k, v, mask="causal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mask must be an attnlab.masks.Mask, a mask_mod callable or None"):
        MultiHeadAttentionConfig(d_model=16, n_heads=2, mask=5)  # type: ignore[arg-type]
