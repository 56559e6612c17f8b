"""RoPE: the cached tables equal freshly computed angles, the rotation equals the rotate-half formula (outputs and
gradients), both layouts agree, and the cache survives inference mode, growth and dtype changes."""

from __future__ import annotations

import pytest
import torch

from attnlab.layers import rope
from attnlab.layers.rope import (
    apply_rope,
    clear_rope_cache,
    pair_rows,
    rope_angles,
    rope_freqs,
    rope_tables,
    rotate_pairs,
)


def _rope_by_formula(x: torch.Tensor, offset: int, base: float = 10000.0) -> torch.Tensor:
    """``x * cos + [-x2, x1] * sin`` with angles computed from scratch, ``x`` ``(B, H, T, D)``."""
    T, D = x.shape[-2], x.shape[-1]
    cos, sin = rope_angles(torch.arange(offset, offset + T), D, base)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def test_rope_angles_by_hand() -> None:
    cos, sin = rope_angles(torch.tensor([0, 3]), 4, base=100.0)
    # inv_freq = 1 / 100^(i/4) for i = 0, 2: (1, 0.1); columns repeat: (1, 0.1, 1, 0.1)
    ang = torch.tensor([[0.0, 0.0, 0.0, 0.0], [3.0, 0.3, 3.0, 0.3]], dtype=torch.float64)
    torch.testing.assert_close(cos, ang.cos(), atol=1e-15, rtol=0)
    torch.testing.assert_close(sin, ang.sin(), atol=1e-15, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cached_tables_equal_fresh_angles_through_growth(dtype: torch.dtype) -> None:
    clear_rope_cache()
    D = 12
    for offset, T in [(0, 5), (3, 7), (60, 10), (200, 1), (0, 300), (299, 1)]:  # grows the entry twice
        cos, sin = rope_tables(offset, T, D, 500.0, dtype=dtype)
        c, s = rope_angles(torch.arange(offset, offset + T), D, 500.0)
        assert cos.shape == sin.shape == (T, D) and cos.dtype == dtype
        assert torch.equal(cos, c.to(dtype))
        assert torch.equal(sin[:, D // 2 :], s[:, D // 2 :].to(dtype))
        assert torch.equal(sin[:, : D // 2], -s[:, : D // 2].to(dtype))  # the signed table: first half negated


def test_cache_keys_on_dim_base_and_dtype() -> None:
    clear_rope_cache()
    a = rope_tables(0, 4, 8, 10000.0, dtype=torch.float32)[0]
    b = rope_tables(0, 4, 8, 10000.0, dtype=torch.float64)[0]
    c = rope_tables(0, 4, 8, 100.0, dtype=torch.float32)[0]
    d = rope_tables(0, 4, 6, 10000.0, dtype=torch.float32)[0]
    assert a.dtype == torch.float32 and b.dtype == torch.float64 and d.shape == (4, 6)
    assert not torch.equal(a, c)
    assert len(rope._CACHE) == 4
    assert rope_tables(1, 2, 8, 10000.0, dtype=torch.float32)[0].data_ptr() == a[1:].data_ptr()  # a slice, no copy


@pytest.mark.parametrize("offset, T, D", [(0, 1, 2), (0, 7, 12), (5, 63, 16), (100, 3, 32)])
def test_apply_rope_equals_the_formula_outputs_and_gradients(offset: int, T: int, D: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, T, D, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, T, D, dtype=torch.float64)
    got = apply_rope(x, offset)
    want = _rope_by_formula(x, offset)
    assert torch.equal(got, want)  # same products, same order: bit for bit
    (gx_got,) = torch.autograd.grad(got, x, g)
    (gx_want,) = torch.autograd.grad(want, x, g)
    torch.testing.assert_close(gx_got, gx_want, atol=1e-14, rtol=0)


def test_apply_rope_gradcheck() -> None:
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, 3), (x,))


def test_bthd_layout_equals_bhtd() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 9, 4, 8, dtype=torch.float64)  # (B, T, H, D)
    got = apply_rope(x, 4, seq_dim=-3)
    want = apply_rope(x.transpose(1, 2), 4).transpose(1, 2)
    assert torch.equal(got, want)


def test_tables_first_made_under_inference_mode_can_be_saved_for_backward() -> None:
    clear_rope_cache()
    with torch.inference_mode():
        apply_rope(torch.randn(1, 1, 4, 8), 0)
    x = torch.randn(1, 1, 4, 8, requires_grad=True)
    apply_rope(x, 0).sum().backward()  # would raise if the cached tables were inference tensors
    assert x.grad is not None


def test_errors() -> None:
    with pytest.raises(ValueError, match="even head dim, got head_dim=5"):
        apply_rope(torch.randn(1, 1, 2, 5))
    with pytest.raises(ValueError, match="even head dim, got head_dim=3"):
        rope_tables(0, 2, 3)
    with pytest.raises(ValueError, match=r"seq_dim must be -2 .* got 1"):
        apply_rope(torch.randn(1, 2, 2, 4), seq_dim=1)


# ---------------------------------------------------------------------------------------------- adjacent pairs


def test_pair_rows_by_hand() -> None:
    # two heads of D=4: head 0 rows (0, 2), (1, 3); head 1 rows (4, 6), (5, 7)
    assert pair_rows(2, 4).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    with pytest.raises(ValueError, match="even head dim, got head_dim=3"):
        pair_rows(2, 3)


@pytest.mark.parametrize("dtype, complex_dtype", [(torch.float32, torch.complex64), (torch.float64, torch.complex128)])
def test_rope_freqs_are_the_rounded_angles(dtype: torch.dtype, complex_dtype: torch.dtype) -> None:
    clear_rope_cache()
    f = rope_freqs(3, 70, 8, 1000.0, dtype=dtype)  # grows past the first 64 positions
    cos, sin = rope_angles(torch.arange(3, 73), 8, 1000.0)
    assert f.dtype == complex_dtype and f.shape == (70, 4)
    assert torch.equal(f.real, cos[:, :4].to(dtype)) and torch.equal(f.imag, sin[:, :4].to(dtype))
    with pytest.raises(ValueError, match="float32 or float64, got torch.bfloat16"):
        rope_freqs(0, 2, 8, dtype=torch.bfloat16)


@pytest.mark.parametrize("offset, T, H, D", [(0, 1, 1, 2), (0, 7, 3, 12), (9, 63, 2, 16)])
def test_rotate_pairs_is_apply_rope_in_pair_order(offset: int, T: int, H: int, D: int) -> None:
    torch.manual_seed(2)
    x = torch.randn(2, T, H, D, dtype=torch.float64, requires_grad=True)  # (B, T, H, D), rotate-half layout
    g = torch.randn(2, T, H, D, dtype=torch.float64)
    order = pair_rows(1, D)  # the same permutation in every head
    want = apply_rope(x, offset, seq_dim=-3)[..., order]
    got = rotate_pairs(x[..., order], rope_freqs(offset, T, D, dtype=torch.float64)[:, None])
    torch.testing.assert_close(got, want, atol=1e-14, rtol=0)
    (gx_got,) = torch.autograd.grad(got, x, g[..., order])
    (gx_want,) = torch.autograd.grad(want, x, g[..., order])
    torch.testing.assert_close(gx_got, gx_want, atol=1e-14, rtol=0)


def test_rotate_pairs_accepts_any_strides() -> None:
    torch.manual_seed(3)
    base = torch.randn(3, 5, 9, dtype=torch.float64)
    x = base[:, :, 1:9]  # odd storage offset: view_as_complex would refuse it
    f = rope_freqs(0, 5, 8, dtype=torch.float64)
    torch.testing.assert_close(rotate_pairs(x, f), rotate_pairs(x.contiguous(), f), atol=0, rtol=0)


@pytest.mark.slow
def test_compiled_rope_reads_the_cached_tables() -> None:
    """Under torch.compile the tables come from the opaque attnlab::rope_tables op (one graph, no break): the
    same rotation and gradient as eager mode."""
    torch.manual_seed(4)
    x = torch.randn(2, 9, 3, 8, requires_grad=True)  # (B, T, H, D)
    f = torch.compile(lambda t: apply_rope(t, 5, seq_dim=-3), fullgraph=True)
    got, want = f(x), apply_rope(x, 5, seq_dim=-3)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    (a,) = torch.autograd.grad(got.square().sum(), x)
    (b,) = torch.autograd.grad(want.square().sum(), x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    cos, sin = torch.ops.attnlab.rope_tables(5, 9, 8, 10000.0, torch.device("cpu"), torch.float32)
    want_cos, want_sin = rope_tables(5, 9, 8)
    assert torch.equal(cos, want_cos) and torch.equal(sin, want_sin)


def test_apply_rope_under_torch_func() -> None:
    """vmap and grad from torch.func see plain operations (the autograd Function is for eager autograd only)."""
    x = torch.randn(4, 2, 5, 6, dtype=torch.float64)
    batched = torch.vmap(lambda t: apply_rope(t, 2))(x)  # (2, 5, 6) per vmapped example
    assert torch.equal(batched, apply_rope(x, 2))
    g = torch.func.grad(lambda t: apply_rope(t, 2).square().sum())(x)
    (want,) = torch.autograd.grad(apply_rope(x.requires_grad_(), 2).square().sum(), x)
    torch.testing.assert_close(g, want, atol=1e-12, rtol=0)
