"""A FlexAttention-style ``mask_mod`` callable (as attention-gym writes them) is accepted wherever a ``Mask`` is: the
functional op (every CPU backend), a layer's configured and per-call mask, rendering; the result equals the same
predicate as an attnlab ``Mask``. ``&`` and ``|`` combine a ``Mask`` with such a callable on either side."""

from __future__ import annotations

import pytest
import torch

from attnlab.layers import MultiHeadAttention, MultiHeadAttentionConfig
from attnlab.masks import Mask, and_masks, as_mask, causal, dense, key_padding, or_masks, sliding_window, strided
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


def test_mask_mod_on_either_side_of_and_or() -> None:
    """``fn & mask`` / ``fn | mask`` (reflected) equal ``and_masks(fn, mask)`` / ``or_masks(fn, mask)`` densely, keep
    the written operand order in the name and the Mask's facts, as ``mask & fn`` / ``mask | fn`` do."""
    m = strided(2)  # causal; overlaps the 4-wide window only partly, so & and | differ from both operands
    T = 13
    win, st = dense(sliding_window_4, T, T), dense(m, T, T)
    assert (win & ~st).any() and (st & ~win).any()
    for got, want, op in [(sliding_window_4 & m, and_masks(sliding_window_4, m), torch.logical_and),
                          (sliding_window_4 | m, or_masks(sliding_window_4, m), torch.logical_or),
                          (m & sliding_window_4, and_masks(m, sliding_window_4), torch.logical_and),
                          (m | sliding_window_4, or_masks(m, sliding_window_4), torch.logical_or)]:
        assert isinstance(got, Mask) and got.name == want.name
        assert torch.equal(dense(got, T, T), dense(want, T, T))
        assert torch.equal(dense(got, T, T), op(win, st))
        assert (got.causal, got.window) == (want.causal, want.window)
    assert (sliding_window_4 & m).name == "and(sliding_window_4, strided(stride=2))"
    assert (sliding_window_4 | m).name == "or(sliding_window_4, strided(stride=2))"
    assert (sliding_window_4 & m).causal and not (sliding_window_4 | m).causal  # the callable assumes nothing
    valid = torch.tensor([True] * 10 + [False] * 3)
    padded = sliding_window_4 & key_padding(valid)  # the Mask's key_valid survives the reflected AND
    assert padded.key_valid is not None and torch.equal(padded.key_valid, valid)
    with pytest.raises(TypeError, match="must be a Mask or a mask_mod callable, got int"):
        3 & m  # type: ignore[operator]
