"""The public CASTLE op: one function, several executions chosen by ``impl=``.

Shape legend: B batch, H heads, T sequence length, D head dim. All six inputs are ``(B, H, T, D)``.

Two CASTLE-specific names, used with this one meaning throughout ``attnlab.ops.castle``, the CASTLE layer and its
cache:

* ``lookahead``: CASTLE-SWL's ``W`` (the paper's W, eq. 9). ``lookahead=W``: the lookahead key of token ``s``
  summarises ``x_{s+1..s+W}``; the current token is not counted, so ``W = 0`` is allowed (no lookahead: standard
  causal attention) and ``W >= T - 1`` equals full CASTLE. ``None`` is full CASTLE (unbounded lookahead). This is not
  a ``window``: everywhere else in attnlab (``masks.sliding_window``, the ``sliding-window`` layer,
  ``SlidingKVCache``) a ``window`` counts the current token (``window=w``: query ``i`` sees keys ``i-w+1 .. i``).
* ``chunk_size``: positions per chunk of the chunked (blocked) algorithm, the paper's block size; unrelated to a
  model's context length.

Precision and non-finite inputs, per form (measured on CPU, torch 2.13; the Triton kernel not measured for NaN):

* float16/bfloat16: ``reference``, ``parallel`` and ``chunked`` compute in float32 and cast the output back;
  ``triton`` runs its own half-precision path (see ``attnlab.ops.castle.triton_kernel``).
* A NaN or inf at a future position ``j`` (one a row ``t < j`` must not depend on): ``reference`` never reads it
  (row ``t`` slices positions ``0..t``). ``parallel`` and ``chunked`` do for two of the six inputs: a non-finite
  ``v_c[j]`` (``p @ V^C`` with ``p = 0``: ``0 * NaN``) or ``k_u[j]`` (gate entries of a future contributor times
  zeroed ``Q^C V^U`` entries) made every row before ``j`` NaN in ``parallel`` (for ``k_u``: every row) and the
  earlier rows of ``j``'s own chunk in ``chunked`` (T=16, chunk_size=4, NaN at 13: rows 12-15 only).
  ``q_u``, ``v_u``, ``q_c``, ``k_c`` do not leak.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, get_args

import torch
from torch import Tensor

from attnlab.ops.castle.chunked import castle_chunked
from attnlab.ops.castle.parallel import castle_parallel
from attnlab.ops.castle.reference import castle_reference

__all__ = ["CastleImpl", "IMPLS", "castle_attention", "triton_available", "validate_chunk_size", "validate_inputs", "validate_lookahead"]

CastleImpl = Literal["auto", "reference", "parallel", "chunked", "triton"]
IMPLS: tuple[str, ...] = get_args(CastleImpl)
_NAMES = ("q_u", "k_u", "v_u", "q_c", "k_c", "v_c")


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether ``impl="triton"`` can run here: CUDA present and the Triton kernel module imports."""
    if not torch.cuda.is_available():
        return False
    try:
        import attnlab.ops.castle.triton_kernel  # noqa: F401
    except Exception:
        return False
    return True


def validate_lookahead(lookahead: int | None) -> int | None:
    """``None`` (full CASTLE) or an int ``W >= 0`` (CASTLE-SWL); anything else is a ValueError.

    ``lookahead=W``: the lookahead key of token ``s`` summarises ``x_{s+1..s+W}`` (the current token is not counted;
    the paper's W, eq. 9), so ``W = 0`` is valid.
    """
    if lookahead is None:
        return None
    if isinstance(lookahead, bool) or not isinstance(lookahead, int):
        raise ValueError(f"lookahead must be None or an int >= 0, got lookahead={lookahead!r}")
    if lookahead < 0:
        raise ValueError(f"lookahead must be None or an int >= 0, got lookahead={lookahead}")
    return lookahead


def validate_chunk_size(chunk_size: int) -> int:
    """An int ``>= 1`` (positions per chunk of the chunked form); anything else is a ValueError."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got chunk_size={chunk_size!r}")
    return chunk_size


def validate_inputs(*tensors: Tensor, names: tuple[str, ...] = _NAMES, allow_empty: bool = False) -> None:
    """Six ``(B, H, T, D)`` floating tensors of one shape, dtype and device (``T >= 1`` unless ``allow_empty``)."""
    for name, x in zip(names, tensors):
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape (B, H, T, D), got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, T, D) (4 dims), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor, got dtype={x.dtype}")
    ref_name, ref = names[0], tensors[0]
    for name, x in zip(names[1:], tensors[1:]):
        if x.shape != ref.shape:
            raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(x.shape)}")
        if x.dtype != ref.dtype:
            raise ValueError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {x.dtype}")
        if x.device != ref.device:
            raise ValueError(f"{name} must be on the device of {ref_name} ({ref.device}), got {x.device}")
    B, H, T, D = ref.shape
    if T == 0 and not allow_empty:
        raise ValueError(f"sequence length T must be >= 1, got {ref_name} of shape {tuple(ref.shape)} (T=0)")
    if B == 0 or H == 0 or D == 0:
        raise ValueError(f"B, H and D must be >= 1, got {ref_name} of shape {tuple(ref.shape)}")


def _resolve_scale(scale: float | None, D: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(D)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be None or a finite float, got scale={scale!r}")
    return float(scale)


def castle_attention(q_u: Tensor, k_u: Tensor, v_u: Tensor, q_c: Tensor, k_c: Tensor, v_c: Tensor, *,
                     lookahead: int | None = None, scale: float | None = None, impl: CastleImpl = "auto",
                     chunk_size: int = 64) -> Tensor:
    """CASTLE attention (Song et al. 2025, arXiv:2509.07301): causal attention with lookahead keys.

    For output row ``t`` (0-based)::

        u^t_s = sum_{s < j <= min(t, s+W)} sigmoid(q^U_s . k^U_j * scale) v^U_j
        o_t   = softmax_s( q^C_t . k^C_s * scale - SiLU(q^C_t . u^t_s * scale) ) v^C_s,   s <= t

    Args:
        q_u, k_u, v_u: lookahead-branch queries, keys, values, ``(B, H, T, D)``.
        q_c, k_c, v_c: causal-branch queries, keys, values, ``(B, H, T, D)``.
        lookahead: CASTLE-SWL's ``W`` (the paper's W, eq. 9): the lookahead key of token ``s`` summarises
            ``x_{s+1..s+W}``; the current token is not counted, so ``W = 0`` gives standard causal attention and
            ``W >= T - 1`` full CASTLE. ``None`` for full CASTLE. (A ``window`` elsewhere in attnlab counts the
            current token; this does not.)
        scale: default ``1/sqrt(D)``; the same factor is used inside the sigmoid, in ``s^C`` and in ``s^U``.
        impl: ``"reference"`` (recurrent definition, O(T^3 D)), ``"parallel"`` (Theorem 1, T x T matrices),
            ``"chunked"`` (blocked O(T^2 D) algorithm with a custom O(T D)-memory backward), ``"triton"`` (CUDA
            kernel), or ``"auto"`` (triton on CUDA when available, else chunked).
        chunk_size: positions per chunk of ``"chunked"`` (any ``T`` works; the last chunk may be ragged). The
            ``"triton"`` form picks its own power-of-two chunk; the other forms do not chunk.

    Returns:
        ``(B, H, T, D)``.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}, got impl={impl!r}")
    validate_inputs(q_u, k_u, v_u, q_c, k_c, v_c)
    lookahead = validate_lookahead(lookahead)
    scale = _resolve_scale(scale, q_u.shape[-1])
    validate_chunk_size(chunk_size)
    args = (q_u, k_u, v_u, q_c, k_c, v_c)
    if impl == "auto":
        impl = "triton" if q_u.is_cuda and triton_available() else "chunked"
    if impl == "reference":
        return castle_reference(*args, lookahead=lookahead, scale=scale)
    if impl == "parallel":
        return castle_parallel(*args, lookahead=lookahead, scale=scale)
    if impl == "chunked":
        return castle_chunked(*args, lookahead=lookahead, scale=scale, chunk_size=chunk_size)
    # impl == "triton"
    if not q_u.is_cuda:
        raise ValueError(f"impl='triton' needs CUDA tensors, got device={q_u.device}; use impl='chunked' on CPU")
    try:
        from attnlab.ops.castle.triton_kernel import castle_triton
    except Exception as exc:  # triton missing, or the kernel module failed to import
        raise RuntimeError(f"impl='triton' is unavailable: cannot import attnlab.ops.castle.triton_kernel "
                           f"({type(exc).__name__}: {exc}); use impl='chunked'") from exc
    return castle_triton(q_u, k_u, v_u, q_c, k_c, v_c, lookahead, scale)
