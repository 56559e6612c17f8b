"""CASTLE blocked algorithm (spec §2.2 Algorithm 1, §2.3 Algorithm 3) as Triton kernels.

Shape legend: B batch, H heads, T sequence length, D head dim, BH = B * H, Dp = D padded to a power of two (>= 16),
C = chunk_size (positions per block; score tiles are C x C), Tp = T rounded up to a multiple of C, N = Tp // C blocks.
Positions are 0-based. W = lookahead (CASTLE-SWL, the paper's W: a lookahead key covers the next W tokens, the current
one not counted).

Public entry point: :func:`castle_triton` (an autograd ``Function`` underneath), differentiable with respect to all
six inputs. The math it computes is Theorem 1 (spec eqs. 11-12)::

    G   = sigmoid(Q^U K^U^T * scale)  where s < j (and j <= s + W for CASTLE-SWL), else 0       # (T, T)
    S^U = ((Q^C V^U^T * scale) ⊙ tril) G^T                                                     # (T, T)
    out = softmax(Q^C K^C^T * scale + causal - SiLU(S^U)) V^C                                  # (T, D)

Kernels
-------
The forward step kernel (the paper's wavefront: one launch per block diagonal, an online softmax per row block) is in
:mod:`attnlab.ops.castle.triton_fwd`, the backward step kernel (the reverse wavefront of Algorithm 3) in
:mod:`attnlab.ops.castle.triton_bwd`; each module's docstring describes its schedule. This module is the host side:
validation, padding, the scratch buffers, the launches and the autograd ``Function``.

Design decisions
----------------
* **Precision.** Scores, sigmoid/SiLU, softmax statistics, D, dD and every accumulator are float32 (float64 for
  float64 inputs). For bf16/fp16 inputs the matmul operands are cast to the input dtype (as FlashAttention casts P),
  so tensor cores are used; for float32 inputs the dots use ``input_precision="ieee"`` (no TF32), so the kernel
  agrees with a float32 PyTorch reference to ~1e-6 rather than TF32's ~1e-3. Exception: under the interpreter,
  bfloat16 operands are upcast to float32 because Triton 3.9's interpreter computes bf16 ``tl.dot`` wrongly (see
  ``_mm_dtype``); float16 runs the same low-precision path as the GPU. Measured (interpreter, T=256, D=64, C=64,
  relative Frobenius error vs float64 Theorem 1 on the same inputs): float16 out 3.7e-4, gradients <= 1.3e-3, below
  a float16 PyTorch Theorem-1 evaluation (6.1e-4 / 1.4e-3); float32 out 2.6e-7, gradients <= 7.2e-7.
* **float64** runs (interpreter: yes, tested; CUDA: Triton's FMA path). Triton passes Python floats to kernels as
  float32, so for float64 inputs the scale is folded into Q^U and Q^C on the host (and into their gradients) and the
  kernel runs with scale 1: the result is then float64-exact.
* **Any T.** Loads of rows/columns >= T are masked (zeros); the sigmoid mask also requires the contributor j < T and
  the softmax mask requires the key s < T. Scratch buffers are padded to Tp so they need no masks.
* **Head dim.** D is zero-padded to Dp = max(16, next power of two) on the host. Zero columns change no dot product
  (the scale is explicit), and the padded output/gradient columns are sliced off, so the result is exact. D > 128 is
  rejected with a ValueError (the backward's per-program tiles would not fit in registers).
* **Chunk size** C = ``chunk_size`` (rows = columns of a tile; it also defines the D-state partition): on CUDA 64
  for float16/bfloat16 with Dp <= 64, else 32 (float32's backward at C=64 needs ~180 KB of shared memory); CPU
  (interpreter) runs use 16 unless ``chunk_size`` is given. ``chunk_size`` must be a power of two >= 16.
* **CASTLE-SWL skipping.** With lookahead=W, G(c, b) is identically zero when b*C - (c*C + C - 1) > W; the kernels
  then skip the eq. (23) update and the within-block term (and their gradients). Skipping only removes exact zeros.
* **CPU.** CPU tensors run through Triton's interpreter, which must be active: ``TRITON_INTERPRET=1`` set before
  triton is first imported in the process (triton decorates its own library functions at import). Otherwise a
  RuntimeError says so. This module imports triton, so set the variable before importing it. Slow; meant for tests at
  tiny sizes. The kernels are wrapped (``triton.jit`` or the interpreter) lazily on first use.
* **Cost.** 2N launches per forward+backward; O(T^2 D) compute and O(T D) extra memory per head. Parallelism per
  launch is BH * (N - k) programs (the wavefront's limitation noted in spec §6).
* **Status.** Checked against Theorem 1 under the interpreter (float64 to 1e-12, float32, float16, bfloat16 with
  upcast operands) and compiled ahead of time for sm_90 with Triton 3.9 (no register spills; backward shared memory
  64 KB bf16 C=64 Dp=64, 131 KB float32 C=32 Dp=128). Executed on an NVIDIA H200 (torch 2.11, Triton 3.6;
  benchmarks/results/gpu-h200): relative errors against Theorem 1 and the chunked form (float64, T = 1000) of
  6.4e-6 (float32) and 1.7e-2 (bfloat16) for the worst of the six gradients; forward+backward 8.9x FlashAttention
  at equal parameters (D = 64, T = 8192). The launch sweep there confirmed C = 64 with 4 warps at D = 64 bf16
  (C = 32 took 1.9x as long, 8 warps 1.5x); other settings were not reached.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

# triton is an optional (dev) dependency: without it this module fails to import, which is how
# attnlab.ops.castle.api.triton_available() detects that impl="triton" cannot run.
import triton
import triton.language as tl

# the kernels are plain functions, wrapped by triton.jit or the interpreter in _kernels()
from attnlab.ops.castle.triton_bwd import castle_bwd_step
from attnlab.ops.castle.triton_fwd import castle_fwd_step

__all__ = ["castle_triton", "MAX_HEAD_DIM", "SUPPORTED_DTYPES"]

MAX_HEAD_DIM = 128
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_KERNEL_CACHE: dict[bool, tuple[Any, Any]] = {}


def _interpreter_active() -> bool:
    """True when Triton runs in interpreter mode, i.e. TRITON_INTERPRET=1 was set before triton was imported.

    The interpreter needs triton's own library functions (tl.sigmoid, tl.max, ...) to have been decorated in
    interpreter mode at import time; setting the variable later is not enough, so this inspects one of them.
    """
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.sigmoid, InterpretedFunction)


def _kernels(device: torch.device) -> tuple[Any, Any]:
    """(forward step, backward step) kernels for ``device``; CPU needs the Triton interpreter."""
    interpret = _interpreter_active()
    if device.type == "cpu" and not interpret:
        raise RuntimeError(
            "castle_triton: CPU tensors need Triton's interpreter, i.e. TRITON_INTERPRET=1 in the environment before "
            "triton is first imported in this process (got TRITON_INTERPRET="
            f"{os.environ.get('TRITON_INTERPRET')!r}, interpreter inactive); or pass CUDA tensors"
        )
    if interpret not in _KERNEL_CACHE:
        if interpret:
            from triton.runtime.interpreter import InterpretedFunction

            _KERNEL_CACHE[interpret] = (InterpretedFunction(castle_fwd_step), InterpretedFunction(castle_bwd_step))
        else:
            # k (the diagonal) and lookahead change between launches: do not specialise on k == 1 etc., which would
            # compile extra variants of each kernel
            nospec = ["k", "lookahead"]
            _KERNEL_CACHE[interpret] = (
                triton.jit(castle_fwd_step, do_not_specialize=nospec),
                triton.jit(castle_bwd_step, do_not_specialize=nospec),
            )
    return _KERNEL_CACHE[interpret]


# ----------------------------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------------------------

_NAMES = ("q_u", "k_u", "v_u", "q_c", "k_c", "v_c")


def _validate(tensors: tuple[Tensor, ...], lookahead: int | None, scale: float, chunk_size: int | None,
              num_warps: int | None = None, num_stages: int | None = None) -> None:
    ref = tensors[0]
    for name, t in zip(_NAMES, tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"castle_triton: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"castle_triton: {name} must have shape (B, H, T, D), got {tuple(t.shape)}")
        if t.shape != ref.shape:
            raise ValueError(f"castle_triton: {name} shape {tuple(t.shape)} must equal q_u shape {tuple(ref.shape)}")
        if t.dtype != ref.dtype:
            raise ValueError(f"castle_triton: {name} dtype {t.dtype} must equal q_u dtype {ref.dtype}")
        if t.device != ref.device:
            raise ValueError(f"castle_triton: {name} device {t.device} must equal q_u device {ref.device}")
    if ref.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"castle_triton: dtype must be one of {SUPPORTED_DTYPES}, got {ref.dtype}")
    if ref.device.type not in ("cuda", "cpu"):
        raise ValueError(f"castle_triton: device must be cuda (or cpu via the Triton interpreter), got {ref.device}")
    head_dim = ref.shape[-1]
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"castle_triton: head dim D must be in [1, {MAX_HEAD_DIM}], got D={head_dim}")
    if lookahead is not None and (isinstance(lookahead, bool) or not isinstance(lookahead, int) or lookahead < 0):
        raise ValueError(f"castle_triton: lookahead must be None or an int >= 0, got lookahead={lookahead!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"castle_triton: scale must be a finite float, got scale={scale!r}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int)
        or chunk_size < 16
        or chunk_size & (chunk_size - 1)
    ):
        raise ValueError(f"castle_triton: chunk_size must be None or a power of two >= 16, got {chunk_size!r}")
    for name, val in (("num_warps", num_warps), ("num_stages", num_stages)):
        if val is not None and (isinstance(val, bool) or not isinstance(val, int) or val < 1):
            raise ValueError(f"castle_triton: {name} must be None or an int >= 1, got {name}={val!r}")
    if num_warps is not None and num_warps & (num_warps - 1):
        raise ValueError(f"castle_triton: num_warps must be a power of two, got num_warps={num_warps!r}")


def _mm_dtype(dtype: torch.dtype) -> Any:
    """Triton dtype of the matmul operands: the input dtype, except bfloat16 under the interpreter (float32).

    Triton 3.9's interpreter computes ``tl.dot`` on bfloat16 operands wrongly (errors of order 1e10 on a 16x16
    product of randn values, while bf16 loads/stores/conversions are exact), so interpreted bfloat16 runs upcast the
    operands; compiled runs use bfloat16 tensor-core dots.
    """
    if dtype == torch.bfloat16 and _interpreter_active():
        return tl.float32
    return {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
            torch.float64: tl.float64}[dtype]


def _padded_head_dim(head_dim: int) -> int:
    return max(16, 1 << (head_dim - 1).bit_length())


def _default_chunk(head_dim_padded: int, dtype: torch.dtype, device: torch.device) -> int:
    if device.type == "cpu":
        return 16
    # compiled for sm_90 (Triton 3.9): the backward step at C=64, Dp=64 needs ~80 KB shared memory with 16-bit
    # operands but ~180 KB with float32 ones (over an A100's 164 KB); C=32 keeps float32 near 80 KB.
    return 64 if head_dim_padded <= 64 and dtype in (torch.float16, torch.bfloat16) else 32


def _prep(x: Tensor, head_dim_padded: int) -> Tensor:
    """(B, H, T, D) -> contiguous (BH, T, Dp), zero-padded on the last dim."""
    b, h, t, d = x.shape
    if d != head_dim_padded:
        x = F.pad(x, (0, head_dim_padded - d))
    return x.reshape(b * h, t, head_dim_padded).contiguous()


def _unprep(x: Tensor, shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """(BH, Tp, Dp) accumulator -> (B, H, T, D) in ``dtype``."""
    b, h, t, d = shape
    return x[:, :t, :d].reshape(b, h, t, d).to(dtype)


class _CastleTritonFn(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q_u: Tensor, k_u: Tensor, v_u: Tensor, q_c: Tensor, k_c: Tensor, v_c: Tensor,
        lookahead: int | None, scale: float, chunk_size: int, launch: dict[str, int],
    ) -> Tensor:
        shape = q_u.shape
        b, h, t, d = shape
        dtype = q_u.dtype
        dp = _padded_head_dim(d)
        kscale = float(scale)
        prescale = dtype == torch.float64  # Triton float scalars are float32: fold the scale into the queries
        if prescale:
            q_u, q_c, kscale = q_u * scale, q_c * scale, 1.0
        qu, ku, vu, qc, kc, vc = (_prep(x, dp) for x in (q_u, k_u, v_u, q_c, k_c, v_c))
        bh = b * h
        n_blocks = triton.cdiv(t, chunk_size)
        tp = n_blocks * chunk_size
        acc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        dev = qu.device
        out = torch.empty((bh, t, dp), device=dev, dtype=dtype)
        lse = torch.empty((bh, tp), device=dev, dtype=acc_dtype)
        d_state = torch.zeros((bh, tp, dp), device=dev, dtype=acc_dtype)
        m_state = torch.full((bh, tp), float("-inf"), device=dev, dtype=acc_dtype)
        l_state = torch.zeros((bh, tp), device=dev, dtype=acc_dtype)
        a_state = torch.zeros((bh, tp, dp), device=dev, dtype=acc_dtype)
        w_arg = 0 if lookahead is None else min(int(lookahead), t)  # the kernels' lookahead argument
        prec = "ieee" if dtype in (torch.float32, torch.float64) else "tf32"
        mm_dt = _mm_dtype(dtype)
        fwd, _ = _kernels(dev)
        for k in range(n_blocks):
            fwd[(bh, n_blocks - k)](
                qu, ku, vu, qc, kc, vc, out, lse, d_state, m_state, l_state, a_state,
                t, k, w_arg, kscale,
                t * dp, tp * dp, dp, tp,
                HAS_LOOKAHEAD=lookahead is not None, CHUNK=chunk_size, HEAD_D=dp, PREC=prec, MM_DT=mm_dt, **launch,
            )
        ctx.save_for_backward(qu, ku, vu, qc, kc, vc, out, lse, d_state)
        ctx.meta = (shape, lookahead, w_arg, float(scale), kscale, prescale, chunk_size, prec, mm_dt, launch)
        return out[:, :, :d].reshape(b, h, t, d)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        qu, ku, vu, qc, kc, vc, out, lse, d_saved = ctx.saved_tensors
        shape, lookahead, w_arg, scale, kscale, prescale, chunk_size, prec, mm_dt, launch = ctx.meta
        b, h, t, d = shape
        dtype = qu.dtype
        bh, _, dp = qu.shape
        tp = lse.shape[1]
        n_blocks = tp // chunk_size
        acc_dtype = lse.dtype
        do = _prep(grad_out.to(dtype), dp)  # (BH, T, Dp)
        delta = torch.zeros((bh, tp), device=qu.device, dtype=acc_dtype)
        delta[:, :t] = (do.to(acc_dtype) * out.to(acc_dtype)).sum(-1)
        d_state = d_saved.clone()  # un-updated in place; keep the saved copy for a second backward
        grads = [torch.zeros((bh, tp, dp), device=qu.device, dtype=acc_dtype) for _ in range(9)]
        dd_state, dqu, dku_a, dku_b, dvu_a, dvu_b, dqc, dkc, dvc = grads
        _, bwd = _kernels(qu.device)
        for k in range(n_blocks - 1, -1, -1):
            bwd[(bh, n_blocks - k)](
                qu, ku, vu, qc, kc, vc, do, lse, delta, d_state, dd_state,
                dqu, dku_a, dku_b, dvu_a, dvu_b, dqc, dkc, dvc,
                t, k, w_arg, kscale,
                t * dp, tp * dp, dp, tp,
                HAS_LOOKAHEAD=lookahead is not None, CHUNK=chunk_size, HEAD_D=dp, PREC=prec, MM_DT=mm_dt, **launch,
            )
        if prescale:
            dqu, dqc = dqu * scale, dqc * scale
        return (
            _unprep(dqu, shape, dtype),
            _unprep(dku_a + dku_b, shape, dtype),
            _unprep(dvu_a + dvu_b, shape, dtype),
            _unprep(dqc, shape, dtype),
            _unprep(dkc, shape, dtype),
            _unprep(dvc, shape, dtype),
            None,
            None,
            None,
            None,
        )


# Under torch.compile the kernels run as they are, outside the graph (a graph break): Dynamo would otherwise trace the
# host loop of 2N launches per call into the graph, and compiling a 12-layer CASTLE LM that way did not finish in
# 71 s on an H200 (benchmarks/results/gpu-h200/train); the launches themselves are the cost either way.
@torch.compiler.disable
def castle_triton(
    q_u: Tensor,
    k_u: Tensor,
    v_u: Tensor,
    q_c: Tensor,
    k_c: Tensor,
    v_c: Tensor,
    lookahead: int | None,
    scale: float,
    *,
    chunk_size: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> Tensor:
    """CASTLE / CASTLE-SWL attention with Triton kernels (blocked wavefront, spec Algorithms 1 and 3).

    Args:
        q_u, k_u, v_u: lookahead-branch projections, each (B, H, T, D).
        q_c, k_c, v_c: causal-branch projections, each (B, H, T, D).
        lookahead: None for full CASTLE; an int W >= 0 for CASTLE-SWL, the paper's W (eq. 9): token s's lookahead
            key summarises x_{s+1..s+W} (contributors s < j <= s + W; the current token is not counted). W = 0 is
            standard causal attention; W >= T - 1 equals full CASTLE.
        scale: the factor applied to Q^U K^U^T, Q^C K^C^T and Q^C V^U^T (usually D ** -0.5).
        chunk_size: positions per block (rows = columns of a tile), a power of two >= 16; None picks 64 (16-bit
            dtypes, Dp <= 64) or 32 on CUDA and 16 on CPU. It sets the blocking of the D state; the result does not
            depend on it beyond rounding.
        num_warps, num_stages: Triton launch settings of both kernels (warps per program, software-pipelining
            depth); None keeps Triton's defaults. For tuning (``benchmarks/gpu/castle_kernel.py`` sweeps them);
            they change speed only, not the result beyond rounding.

    Returns:
        (B, H, T, D) in the input dtype; differentiable (first order only: the backward is itself not
        differentiable, and a double backward raises) with respect to all six inputs.

    All six tensors must share shape, dtype (float16, bfloat16, float32 or float64) and device (CUDA, or CPU, which
    runs the Triton interpreter: slow, for tests). Any T >= 0; any D in [1, 128] (padded internally to a power of
    two >= 16; exact).
    """
    tensors = (q_u, k_u, v_u, q_c, k_c, v_c)
    _validate(tensors, lookahead, scale, chunk_size, num_warps, num_stages)
    b, h, t, d = q_u.shape
    if b * h * t == 0:  # nothing to compute; keep the autograd graph connected
        return (q_u + k_u + v_u + q_c + k_c + v_c) * 0.0
    chunk = chunk_size if chunk_size is not None else _default_chunk(_padded_head_dim(d), q_u.dtype, q_u.device)
    launch = {k: v for k, v in (("num_warps", num_warps), ("num_stages", num_stages)) if v is not None}
    return _CastleTritonFn.apply(q_u, k_u, v_u, q_c, k_c, v_c, lookahead, float(scale), chunk, launch)
