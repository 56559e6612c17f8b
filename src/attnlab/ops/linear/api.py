"""Public entry point of linear attention: validation, feature map, GQA, choice of form.

Shapes (legend): B batch, H query heads, H_kv key/value heads (``H % H_kv == 0``), T query length, S key length,
D query/key head dim, Dv value head dim, F feature dim (``feature_dim(feature_map, D)``).

GQA convention: query head ``h`` uses key/value head ``h // (H // H_kv)`` (``repeat_interleave`` order). The
state is kept per *query* head, ``(B, H, F, Dv)``, so every head may carry its own initial state.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

from attnlab.ops._checks import check_kv_like_q
from attnlab.ops.linear.chunked import linear_attention_chunked
from attnlab.ops.linear.feature_maps import FeatureMapName, get_feature_map
from attnlab.ops.linear.fla_backend import check_fla_args, linear_attention_fla
from attnlab.ops.linear.parallel import linear_attention_parallel
from attnlab.ops.linear.recurrent import linear_attention_recurrent
from attnlab.ops.linear.state import LinearState

__all__ = ["LinearImpl", "LINEAR_IMPLS", "LinearState", "linear_attention"]

# "fla" (flash-linear-attention's CUDA kernels, optional dependency) is opt-in: "auto" never picks it.
LinearImpl = Literal["auto", "parallel", "chunked", "recurrent", "fla"]
LINEAR_IMPLS: tuple[str, ...] = get_args(LinearImpl)


def _check_tensor(name: str, t: object, ndim: int, shape_doc: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {shape_doc}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have shape {shape_doc} ({ndim} dims), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def _validate(
    q: Tensor, k: Tensor, v: Tensor, feature_map: str, causal: bool, initial_state: object, impl: str,
    chunk_size: int, eps: float,
) -> tuple[int, LinearState | None]:
    """Raise ``ValueError`` on any bad argument; return ``F`` and the initial state as a :class:`LinearState`."""
    if impl not in LINEAR_IMPLS:
        raise ValueError(f"impl={impl!r} is not a linear-attention form; expected one of {', '.join(LINEAR_IMPLS)}")
    fmap = get_feature_map(feature_map)
    if not isinstance(causal, bool):
        raise ValueError(f"causal must be a bool, got {causal!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite float >= 0, got {eps!r}")
    _check_tensor("q", q, 4, "(B, H, T, D)")
    _check_tensor("k", k, 4, "(B, H_kv, S, D)")
    _check_tensor("v", v, 4, "(B, H_kv, S, Dv)")
    check_kv_like_q(q, k, v)
    B, H, T, D = q.shape
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"batch sizes must match: q has B={B}, k has {k.shape[0]}, v has {v.shape[0]}")
    H_kv, S = k.shape[1], k.shape[2]
    if v.shape[1] != H_kv or v.shape[2] != S:
        raise ValueError(f"v must have shape (B, H_kv={H_kv}, S={S}, Dv) like k, got {tuple(v.shape)}")
    if k.shape[3] != D:
        raise ValueError(f"k head dim must equal q head dim D={D}, got k.shape={tuple(k.shape)}")
    if H_kv < 1 or H % H_kv:
        raise ValueError(f"key/value heads H_kv={H_kv} must divide query heads H={H}")
    if T < 1 or S < 1:
        raise ValueError(f"sequences must be non-empty, got T={T} queries and S={S} keys")
    if causal and S != T:
        raise ValueError(f"causal=True needs as many keys as queries (self-attention), got T={T} and S={S}")
    Fd, Dv = fmap.dim(D), v.shape[3]
    if impl == "fla":
        check_fla_args((B, H, T, Fd), Dv, q.dtype, q.device, causal=causal, feature_map=feature_map)
    if initial_state is None:
        return Fd, None
    if not (isinstance(initial_state, tuple) and len(initial_state) == 2):
        raise ValueError(f"initial_state must be a LinearState(kv, z) or None, got {type(initial_state).__name__}")
    kv0, z0 = initial_state
    for name, t, shape in (("initial_state.kv", kv0, (B, H, Fd, Dv)), ("initial_state.z", z0, (B, H, Fd))):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape {shape}, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} (F={Fd} for feature_map={feature_map!r}, D={D}), "
                             f"got {tuple(t.shape)}")
        if t.dtype != q.dtype:
            raise ValueError(f"{name}.dtype must equal q.dtype={q.dtype}, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name}.device must equal q.device={q.device}, got {t.device}")
    return Fd, LinearState(kv0, z0)


def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    feature_map: FeatureMapName = "elu1",
    causal: bool = True,
    initial_state: LinearState | tuple[Tensor, Tensor] | None = None,
    impl: LinearImpl = "auto",
    chunk_size: int = 64,
    eps: float = 1e-6,
) -> tuple[Tensor, LinearState]:
    """Linear attention ``out_t = phi(q_t) S_t / (phi(q_t) . z_t + eps)``; returns ``(out, final_state)``.

    Args:
        q: queries ``(B, H, T, D)``.
        k: keys ``(B, H_kv, S, D)``, ``H % H_kv == 0``.
        v: values ``(B, H_kv, S, Dv)``.
        feature_map: ``"elu1"``, ``"relu"`` or ``"taylor"`` (see :mod:`attnlab.ops.linear.feature_maps`).
        causal: ``True``: query ``t`` sees keys ``j <= t`` (needs ``S == T``); ``False``: every key.
        initial_state: state carried over from earlier keys, ``LinearState(kv (B, H, F, Dv), z (B, H, F))``;
            ``None`` means zeros. It is added to the sums for every query, causal or not.
        impl: ``"recurrent"`` (loop over time, the specification), ``"parallel"`` (masked quadratic),
            ``"chunked"`` (linear in ``T``), or ``"auto"`` (``"recurrent"`` for a single causal query, the
            decoding step; else ``"chunked"``, which for ``causal=False`` is the closed form, linear in ``S``).
            ``"fla"``: flash-linear-attention's chunked Triton kernels on CUDA, opt-in (``auto`` never picks it),
            causal only, float32/bfloat16, needs ``pip install 'attnlab[fla]'``; see
            :mod:`attnlab.ops.linear.fla_backend` (the kernel runs in the input dtype, the normaliser in float32).
        chunk_size: chunk length of the chunked form (any ``T``, divisor or not); ignored by the other forms.
        eps: added to the normaliser ``phi(q_t) . z_t``; must be ``>= 0``.

    Returns:
        ``out`` ``(B, H, T, Dv)`` and the state after all ``S`` keys (including ``initial_state``), so that
        running two segments with the state carried over equals running the whole sequence (causal).

    16-bit inputs are computed in float32 and the output and state cast back to the input dtype (``impl="fla"``:
    the feature map and normaliser in float32, fla's kernel in the input dtype).
    """
    Fd, state0 = _validate(q, k, v, feature_map, causal, initial_state, impl, chunk_size, eps)
    fmap = get_feature_map(feature_map)
    dtype = q.dtype
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    H, H_kv = q.shape[1], k.shape[1]
    fq = fmap(q.to(work))  # (B, H, T, F)
    fk = fmap(k.to(work))  # (B, H_kv, S, F)
    v = v.to(work)
    if H != H_kv:  # GQA: query head h uses kv head h // (H // H_kv)
        fk = fk.repeat_interleave(H // H_kv, dim=1)  # (B, H, S, F)
        v = v.repeat_interleave(H // H_kv, dim=1)  # (B, H, S, Dv)
    st = LinearState.zeros(fq, v) if state0 is None else LinearState(state0.kv.to(work), state0.z.to(work))
    form = impl if impl != "auto" else ("recurrent" if causal and q.shape[2] == 1 else "chunked")
    if form == "recurrent":
        out, (kv, z) = linear_attention_recurrent(fq, fk, v, st, causal=causal, eps=eps)
    elif form == "parallel":
        out, (kv, z) = linear_attention_parallel(fq, fk, v, st, causal=causal, eps=eps)
    elif form == "fla":
        out, (kv, z) = linear_attention_fla(fq, fk, v, None if state0 is None else st, eps=eps, kernel_dtype=dtype)
    else:
        out, (kv, z) = linear_attention_chunked(fq, fk, v, st, causal=causal, eps=eps, chunk_size=chunk_size)
    return out.to(dtype), LinearState(kv.to(dtype), z.to(dtype))
