"""Shared blocks' fast CPU paths equal PyTorch's modules and the formulas: RMSNorm (outputs bit for bit, gradients in
float64) and SwiGLU's split matmuls."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnlab.models.common import RMSNorm, SwiGLU


def _pair(C: int, eps: float | None, affine: bool = True) -> tuple[RMSNorm, nn.RMSNorm]:
    ours = RMSNorm(C, eps=eps, elementwise_affine=affine).double()
    theirs = nn.RMSNorm(C, eps=eps, elementwise_affine=affine).double()
    if affine:
        with torch.no_grad():
            ours.weight.copy_(torch.rand(C, dtype=torch.float64) + 0.5)
        theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@pytest.mark.parametrize("shape", [(1, 1, 8), (2, 7, 12), (3, 63, 16), (5, 6)])
@pytest.mark.parametrize("eps", [1e-5, None])
def test_rmsnorm_equals_torch_outputs_and_gradients(shape: tuple[int, ...], eps: float | None) -> None:
    torch.manual_seed(0)
    ours, theirs = _pair(shape[-1], eps)
    assert isinstance(ours, nn.RMSNorm)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight"]
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    g = torch.randn(*shape, dtype=torch.float64)
    y, y_ref = ours(x), theirs(x)
    assert torch.equal(y, y_ref)  # the same operations in the same order
    gx, gw = torch.autograd.grad(y, (x, ours.weight), g)
    gx_ref, gw_ref = torch.autograd.grad(y_ref, (x, theirs.weight), g)
    torch.testing.assert_close(gx, gx_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(gw, gw_ref, atol=1e-12, rtol=0)


def test_rmsnorm_gradcheck_and_float32() -> None:
    torch.manual_seed(1)
    norm = RMSNorm(6, eps=1e-5).double()
    with torch.no_grad():
        norm.weight.copy_(torch.rand(6, dtype=torch.float64) + 0.5)
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(norm, (x,))
    ours, theirs = RMSNorm(32), nn.RMSNorm(32)  # float32, the training dtype
    x32 = torch.randn(4, 9, 32, requires_grad=True)
    assert torch.equal(ours(x32), theirs(x32))
    (a,) = torch.autograd.grad(ours(x32).square().sum(), x32)
    (b,) = torch.autograd.grad(theirs(x32).square().sum(), x32)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # float32: summation order differs


def test_rmsnorm_other_cases_fall_back_to_torch() -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    ours, theirs = _pair(8, 1e-6, affine=False)  # no weight
    assert torch.equal(ours(x), theirs(x))
    two_d = RMSNorm([3, 8]).double()  # normalised over two dims
    assert torch.equal(two_d(x), nn.RMSNorm([3, 8]).double()(x))
    with torch.no_grad():  # no graph: same values
        ours, theirs = _pair(8, 1e-5)
        assert torch.equal(ours(x), theirs(x))


@pytest.mark.parametrize("T", [1, 7, 64])
def test_swiglu_equals_the_fused_formula(T: int) -> None:
    torch.manual_seed(3)
    mlp = SwiGLU(16, 40).double()
    x = torch.randn(2, T, 16, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, T, 16, dtype=torch.float64)
    gate, up = F.linear(x, mlp.gate_up.weight).chunk(2, dim=-1)  # one matmul, as written in the paper
    want = F.linear(F.silu(gate) * up, mlp.down.weight)
    got = mlp(x)
    torch.testing.assert_close(got, want, atol=1e-13, rtol=0)
    params = (x, mlp.gate_up.weight, mlp.down.weight)
    for a, b in zip(torch.autograd.grad(got, params, g), torch.autograd.grad(want, params, g)):
        torch.testing.assert_close(a, b, atol=1e-13, rtol=0)


def test_lm_step_under_cpu_bfloat16_autocast() -> None:
    """The fast CPU paths (RMSNorm, SwiGLU, RoPE pair order) step aside for autocast's bfloat16 projections."""
    from attnlab.models.lm import LM, LMConfig
    from attnlab.tasks.lm import lm_loss

    torch.manual_seed(4)
    model = LM(LMConfig(vocab_size=11, n_layers=2, d_model=32, n_heads=4, context_len=16))
    idx = torch.randint(0, 11, (3, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(idx)
        loss = lm_loss(logits, idx)
    loss.backward()
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    torch.testing.assert_close(loss, lm_loss(model(idx), idx), atol=2e-2, rtol=2e-2)


def test_rmsnorm_under_torch_func() -> None:
    torch.manual_seed(5)
    ours, theirs = _pair(8, 1e-5)
    x = torch.randn(3, 4, 8, dtype=torch.float64)
    assert torch.equal(torch.vmap(ours)(x), theirs(x))
    g = torch.func.grad(lambda t: ours(t).square().sum())(x)
    want = torch.func.grad(lambda t: theirs(t).square().sum())(x)
    torch.testing.assert_close(g, want, atol=1e-12, rtol=0)


def test_rmsnorm_refuses_a_second_derivative_instead_of_a_wrong_one() -> None:
    norm = RMSNorm(4).double()
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(norm(x).pow(3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()
