"""The two layers the ``castle`` suite compares, at equal parameters, and the inputs of their attention ops.

The standard layer has ``options.n_heads`` heads of ``D = d_model / n_heads``; CASTLE has
``heads_for_parity(n_heads)`` heads of the same ``D``. Both are built from the registry with ``rope=True`` (as
the language models build them) and no dropout.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnlab.bench.core import BenchOptions
from attnlab.layers.castle import heads_for_parity
from attnlab.layers.registry import MECHANISMS
from attnlab.ops.castle import triton_available

__all__ = ["CHECK_T", "sizes", "layers", "n_params", "castle_impl_of", "op_inputs"]

CHECK_T = 80  # correctness checks run at this length: > the chunked form's chunk_size 64, with a ragged last chunk


def sizes(options: BenchOptions) -> tuple[int, int, int]:
    """``(standard heads, CASTLE heads, head dim)``."""
    n_std = options.n_heads
    return n_std, heads_for_parity(n_std), options.d_model // n_std


def layers(options: BenchOptions) -> tuple[nn.Module, nn.Module]:
    """``(standard, castle)`` in eval mode on CPU in float32 (seeded); move them with ``.to`` before use."""
    n_std, n_c, D = sizes(options)
    torch.manual_seed(0)
    std = MECHANISMS.get("standard").build(d_model=options.d_model, n_heads=n_std, rope=True, dropout=0.0).eval()
    cas = MECHANISMS.get("castle").build(d_model=options.d_model, n_heads=n_c, head_dim=D, rope=True,
                                         dropout=0.0).eval()
    return std, cas


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def castle_impl_of(cas: nn.Module, options: BenchOptions) -> str:
    """The form the CASTLE layer runs as benchmarked (``impl="auto"`` resolved: Triton on CUDA, else chunked)."""
    impl = str(getattr(cas, "impl", "auto"))
    if impl == "auto":
        return "triton" if options.is_cuda and triton_available() else "chunked"
    return impl


def op_inputs(n: int, options: BenchOptions, H: int, T: int, *, requires_grad: bool,
              dtype: torch.dtype | None = None, device: str | None = None, seed: int = 0) -> list[Tensor]:
    """``n`` seeded ``(B, H, T, D)`` inputs of an attention op (3 for softmax attention, 6 for CASTLE)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (options.batch_size, H, T, options.d_model // options.n_heads)
    return [torch.randn(shape, generator=gen, dtype=torch.float64).to(
        device=device or options.device, dtype=dtype or options.dtype).requires_grad_(requires_grad)
        for _ in range(n)]
