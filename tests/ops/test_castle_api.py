"""castle_attention input validation: clear ValueErrors raised before any matmul."""

from __future__ import annotations

import pytest
import torch

from attnlab.ops.castle import castle_attention

F64 = torch.float64


def _inputs(shape=(1, 2, 5, 4), dtype=F64) -> list[torch.Tensor]:
    return [torch.randn(*shape, dtype=dtype) for _ in range(6)]


def test_mismatched_shapes() -> None:
    xs = _inputs()
    xs[4] = torch.randn(1, 2, 6, 4, dtype=F64)
    with pytest.raises(ValueError, match=r"k_c must have the shape of q_u \(1, 2, 5, 4\), got \(1, 2, 6, 4\)"):
        castle_attention(*xs)


def test_wrong_rank_and_dtype() -> None:
    xs = _inputs()
    xs[0] = xs[0][0]
    with pytest.raises(ValueError, match=r"q_u must have shape \(B, H, T, D\) \(4 dims\), got shape \(2, 5, 4\)"):
        castle_attention(*xs)
    xs = _inputs()
    xs[2] = xs[2].float()
    with pytest.raises(ValueError, match=r"v_u must have the dtype of q_u \(torch.float64\), got torch.float32"):
        castle_attention(*xs)
    xs = [torch.ones(1, 1, 2, 2, dtype=torch.long) for _ in range(6)]
    with pytest.raises(ValueError, match="q_u must be a floating tensor, got dtype=torch.int64"):
        castle_attention(*xs)


@pytest.mark.parametrize("lookahead", [-1, -7])
def test_negative_lookahead(lookahead: int) -> None:
    with pytest.raises(ValueError, match=f"lookahead must be None or an int >= 0, got lookahead={lookahead}"):
        castle_attention(*_inputs(), lookahead=lookahead)


def test_non_int_window() -> None:
    with pytest.raises(ValueError, match="lookahead must be None or an int >= 0, got lookahead=2.5"):
        castle_attention(*_inputs(), lookahead=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lookahead must be None or an int >= 0, got lookahead=True"):
        castle_attention(*_inputs(), lookahead=True)  # type: ignore[arg-type]


def test_empty_sequence() -> None:
    with pytest.raises(ValueError, match=r"sequence length T must be >= 1, got q_u of shape \(1, 2, 0, 4\) \(T=0\)"):
        castle_attention(*_inputs((1, 2, 0, 4)))


def test_bad_impl_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"impl must be one of 'auto', 'reference', 'parallel', 'chunked', 'triton', "
                                         r"got impl='flash'"):
        castle_attention(*_inputs(), impl="flash")  # type: ignore[arg-type]


def test_bad_chunk_size_and_scale() -> None:
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1, got chunk_size=0"):
        castle_attention(*_inputs(), impl="chunked", chunk_size=0)
    with pytest.raises(ValueError, match="scale must be None or a finite float, got scale=nan"):
        castle_attention(*_inputs(), scale=float("nan"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error path of impl='triton'")
def test_triton_on_cpu_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="impl='triton' needs CUDA tensors, got device=cpu; use impl='chunked'"):
        castle_attention(*_inputs(), impl="triton")


def test_auto_on_cpu_is_chunked() -> None:
    xs = [x.requires_grad_() for x in _inputs()]
    out = castle_attention(*xs, impl="auto")
    assert type(out.grad_fn).__name__ == "_CastleChunkedBackward"


@pytest.mark.gpu
def test_triton_dispatch_on_cuda_matches_parallel() -> None:
    from attnlab.ops.castle import castle_parallel, triton_available

    assert triton_available(), "CUDA is present but attnlab.ops.castle.triton_kernel does not import"
    xs = [torch.randn(2, 3, 70, 32, device="cuda") for _ in range(6)]
    want = castle_parallel(*[x.double() for x in xs], lookahead=5)
    for impl in ("triton", "auto"):
        got = castle_attention(*xs, lookahead=5, impl=impl)
        torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=0)  # fp32 kernel vs fp64 Theorem 1
