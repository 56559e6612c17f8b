"""The ``impl="fla"`` form of linear attention: flash-linear-attention's chunked Triton kernels (CUDA, opt-in).

Shapes (legend): B batch, H heads (keys/values already expanded to the query heads by the API, so GQA works),
T sequence length (causal: keys = queries), F feature dim, Dv value head dim. Inputs are features ``fq = phi(q)``
``(B, H, T, F)``, ``fk = phi(k)`` ``(B, H, T, F)`` and values ``v`` ``(B, H, T, Dv)``, as for the other forms.

**What runs.** attnlab's normalised causal linear attention is ``out_t = phi(q_t) S_t / (phi(q_t) . z_t + eps)``
with ``S_t = S_0 + sum_{s<=t} phi(k_s)^T v_s`` and ``z_t = z_0 + sum_{s<=t} phi(k_s)``. It is split in two:

* the **numerator** ``phi(q_t) S_t`` (and the final state ``S_T``) is one call of fla's
  ``fla.ops.linear_attn.chunk_linear_attn(fq, fk, v, scale=1.0, normalize=False, initial_state=S_0,
  output_final_state=True)``: the chunked kernels of ``chunk_simple_gla`` without a decay (chunks of 64, the
  intra-chunk ``tril(Q K^T) V`` plus the inter-chunk ``Q S``; hand-written backward kernels, ``dS_0`` included).
  The features are cast to the input dtype for the kernel (16-bit operands, float32 accumulation; float32 inputs
  use TF32 dot products), fla stores the per-chunk states in the input dtype and returns the numerator in it;
* the **denominator** ``phi(q_t) . (z_0 + cumsum_{s<=t} phi(k_s)) + eps`` is computed here in float32 (the API's
  working dtype), ``O(T F)`` elementwise work, differentiated by autograd.

Why not fla's own ``normalize=True``: it divides by ``scale * phi(q_t) . z_t + 1e-10``, a fixed epsilon (attnlab's
``eps`` is an argument, default 1e-6) and a key cumsum stored in the input dtype. Why not a column of ones
appended to ``v`` (the denominator from the same kernel): ``Dv + 1`` spills into one more ``Dv`` tile of every
kernel (65 columns cost a second 64-wide block) for what a cumsum does in ``O(T F)``. The split is the formula of
:mod:`attnlab.ops.linear.recurrent` exactly, in real arithmetic.

**Supported:** ``causal=True``; float32 and bfloat16; any ``T`` (fla masks the last partial chunk); GQA (the API
repeats keys/values); ``initial_state`` and the returned state (gradients flow into both); feature maps whose ``F``
and ``Dv`` are even for bfloat16 (fla's ``chunk_bwd_dv`` asserts it for 16-bit operands: the Taylor map's
``F = 1 + D + D**2`` is odd). **Rejected with a ValueError** naming the argument: ``causal=False`` (use
``impl="chunked"``, the closed form), float64, float16 (the unnormalised state and numerator live in the input
dtype and overflow float16's range on long sequences; the numerator's gradient ``go / (phi(q).z + eps)`` overflows
it where the normaliser is ~``eps``, e.g. a relu feature row of zeros, giving NaN: seen under the interpreter),
odd ``F``/``Dv`` in bfloat16, and CPU tensors unless Triton's interpreter is active (``TRITON_INTERPRET=1`` before
triton is first imported; a testing path, see tests/ops/test_linear_fla.py, float32 only: the interpreter's
bfloat16 ``tl.dot`` is wrong in triton 3.9).

**Install.** fla is optional and imported only on the first ``impl="fla"`` call: ``pip install 'attnlab[fla]'``
(``fla-core``, the kernels of flash-linear-attention; ``pip install flash-linear-attention`` also provides them,
plus fla's layers and models, which pull in transformers). Written against fla-core 0.6.0.

**Status.** Checked on CPU through Triton's interpreter in float32 against the float64 recurrent form (forward,
backward, GQA, initial and final state, T = 1, 64, 70: relative errors <= 4e-7). On an NVIDIA H200 (fla-core
0.6.0, Triton 3.6; benchmarks/results/gpu-h200): bfloat16 <= 8.1e-3 and float32 (TF32 dots) <= 1.6e-3 against the
float64 form, T = 1000, D = 64 and 128; at B = 1, H = 16 it was slower than the ``chunked`` form from T = 4096 on.

**Autotuning.** fla's kernels autotune on first use for each (dtype, F, Dv) (up to 48 launch configurations per
kernel, several seconds to minutes on a fresh machine). :func:`set_fla_autotuning` trims the candidate lists for
tests and short benchmarks; the default leaves fla as shipped.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Literal

import torch
from torch import Tensor

from attnlab.ops.linear.state import LinearState

__all__ = ["FLA_DTYPES", "FLA_INSTALL_HINT", "check_fla_args", "fla_available", "linear_attention_fla",
           "require_fla", "set_fla_autotuning"]

FLA_DTYPES = (torch.float32, torch.bfloat16)
FLA_INSTALL_HINT = ("pip install 'attnlab[fla]' (installs fla-core, the Triton kernels of flash-linear-attention; "
                    "`pip install flash-linear-attention` also provides them)")


def _interpreter_active() -> bool:
    """True when Triton runs in interpreter mode (``TRITON_INTERPRET=1`` set before triton was first imported).

    Only asked for CPU tensors; imports triton then (False when triton is not installed)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import triton.language as tl
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return False
    return isinstance(tl.sigmoid, InterpretedFunction)


def check_fla_args(fq_shape: tuple[int, ...], dv: int, dtype: torch.dtype, device: torch.device, *, causal: bool,
                   feature_map: str) -> None:
    """Raise ``ValueError`` for what ``impl="fla"`` cannot compute (called by the API before any work).

    ``fq_shape`` is ``(B, H, T, F)`` after the feature map; ``dv`` the value head dim."""
    if not causal:
        raise ValueError("impl='fla' computes causal linear attention only, got causal=False; use impl='chunked' "
                         "(the bidirectional closed form, already linear in S)")
    if dtype == torch.float16:
        raise ValueError("impl='fla' needs q.dtype float32 or bfloat16, got torch.float16: fla keeps the unnormalised "
                         "state and numerator in the input dtype, which overflow float16 on long sequences, and the "
                         "numerator's gradient go / (phi(q).z + eps) overflows it where the normaliser is ~eps (a relu "
                         "feature row of zeros gives NaN gradients); use bfloat16, or impl='chunked'")
    if dtype not in FLA_DTYPES:
        raise ValueError(f"impl='fla' needs q.dtype float32 or bfloat16 (fla's Triton kernels), got {dtype}; "
                         "use impl='chunked' for float64")
    Fd = fq_shape[-1]
    if dtype == torch.bfloat16 and (Fd % 2 or dv % 2):
        raise ValueError(f"impl='fla' with {dtype} needs an even feature dim F and value head dim Dv (fla's "
                         f"chunk_bwd_dv asserts it), got F={Fd} (feature_map={feature_map!r}) and Dv={dv}")
    if device.type != "cuda" and not (device.type == "cpu" and _interpreter_active()):
        raise ValueError(f"impl='fla' needs CUDA tensors (fla's Triton kernels), got q.device={device}; use "
                         "impl='chunked' on CPU (CPU tensors run only under Triton's interpreter, TRITON_INTERPRET=1 "
                         "set before triton is first imported, for tests)")


def fla_available() -> bool:
    """Whether fla's linear-attention kernels import here (does not check for a GPU)."""
    try:
        require_fla()
    except ImportError:
        return False
    return True


@functools.cache
def _chunk_linear_attn() -> Any:
    from fla.ops.linear_attn import chunk_linear_attn

    return chunk_linear_attn


def require_fla() -> Any:
    """fla's ``chunk_linear_attn``; an ``ImportError`` saying what to install when fla is missing."""
    try:
        return _chunk_linear_attn()
    except ImportError as exc:
        raise ImportError(f"impl='fla' needs flash-linear-attention's kernels (module 'fla'), which did not import "
                          f"({type(exc).__name__}: {exc}): {FLA_INSTALL_HINT}") from exc


def linear_attention_fla(fq: Tensor, fk: Tensor, v: Tensor, state: LinearState | None, *, eps: float,
                         kernel_dtype: torch.dtype) -> tuple[Tensor, LinearState]:
    """Causal linear attention through fla: returns ``out (B, H, T, Dv)`` and the state after all keys.

    ``fq``, ``fk``, ``v`` and ``state`` are in the API's working dtype (float32 for 16-bit inputs); ``state=None``
    means zeros (fla then skips the initial-state loads and its gradient). The kernel runs on operands cast to
    ``kernel_dtype`` (the input dtype). The caller has validated the arguments (:func:`check_fla_args`)."""
    chunk_linear_attn = require_fla()

    def fla_layout(t: Tensor) -> Tensor:  # (B, H, T, X) -> fla's (B, T, H, X), contiguous, kernel dtype
        return t.transpose(1, 2).to(kernel_dtype).contiguous()

    kv0 = None if state is None else state.kv.float().contiguous()  # (B, H, F, Dv)
    num, kv = chunk_linear_attn(fla_layout(fq), fla_layout(fk), fla_layout(v), scale=1.0, initial_state=kv0,
                                output_final_state=True, normalize=False)  # (B, T, H, Dv) kernel dtype; (B, H, F, Dv)
    num = num.transpose(1, 2).to(fq.dtype)  # (B, H, T, Dv)
    zc = fk.cumsum(dim=2)  # (B, H, T, F): z_t - z_0, inclusive of key t
    if state is not None:
        zc = zc + state.z.unsqueeze(2)
    den = (fq * zc).sum(-1) + eps  # (B, H, T)
    out = num / den.unsqueeze(-1)  # (B, H, T, Dv)
    return out, LinearState(kv.to(fq.dtype), zc[:, :, -1])


# ------------------------------------------------------------------------------------------------ autotuning

AutotuneMode = Literal["full", "small", "single"]
_MISSING = object()
# id(autotuner) -> (autotuner, fla's configuration list, its early_config_prune, its own do_bench or _MISSING)
_ORIGINAL: dict[int, tuple[Any, list[Any], Any, Any]] = {}


def _autotuner_of(obj: Any) -> Any:
    """The ``triton.runtime.autotuner.Autotuner`` inside a kernel object (``heuristics`` may wrap it), or None."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import KernelInterface

    for _ in range(4):
        if isinstance(obj, Autotuner):
            return obj
        if not isinstance(obj, KernelInterface):
            return None
        obj = getattr(obj, "fn", None)
    return None


def _trimmed(configs: list[Any], single: bool) -> list[Any]:
    """One configuration per tile size (the ``kwargs``: BK, BV, ...), the one with ``num_warps`` nearest 4 and the
    fewest pipeline stages; at least two per kernel when it has them (a second candidate in case the first runs
    out of shared memory). ``single``: only the first of those."""
    groups: dict[str, list[Any]] = {}
    for c in configs:
        groups.setdefault(repr(sorted(c.kwargs.items())), []).append(c)
    ranked = [sorted(g, key=lambda c: (abs(c.num_warps - 4), c.num_stages)) for g in groups.values()]
    kept = [g[0] for g in ranked]
    if single:
        return kept[:1]
    if len(kept) < 2:
        kept += ranked[0][1:2]
    return kept


def _small_prune(configs: list[Any], nargs: dict[str, Any], previous: Any = None, **kwargs: Any) -> list[Any]:
    """``early_config_prune`` of the ``"small"`` mode, called by Triton with the launch's arguments: drops tiles
    wider than the problem (``BK`` above ``K``'s next power of two, at least 16; likewise ``BV``/``V``), then
    :func:`_trimmed`."""
    if previous is not None:
        configs = previous(configs, nargs, **kwargs)
    dims = {"BK": kwargs.get("K", nargs.get("K")), "BV": kwargs.get("V", nargs.get("V"))}

    def fits(c: Any) -> bool:
        for tile, dim in dims.items():
            if isinstance(dim, int) and tile in c.kwargs and c.kwargs[tile] > max(16, 1 << (dim - 1).bit_length()):
                return False
        return True

    return _trimmed([c for c in configs if fits(c)] or list(configs), single=False)


def _quick_bench(kernel_call: Any, quantiles: Any = None) -> Any:
    import triton.testing

    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


def set_fla_autotuning(mode: AutotuneMode = "full") -> int:
    """How many launch configurations fla's kernels try on first use; returns the number of kernels changed.

    fla autotunes each kernel once per (dtype, F, Dv, ...) over up to 48 configurations (~160 compilations for a
    forward+backward, each 0.3-1 s, plus 125 ms of timing each). Process-wide; applies to every kernel module of
    ``fla.ops`` loaded by then (importing fla's linear attention loads them all).

    * ``"full"``: fla as shipped (undoes an earlier call).
    * ``"small"``: at each launch, drop tiles wider than the head dims, keep one configuration per tile size
      (``num_warps`` nearest 4, fewest stages; at least two per kernel) and time each for 5/20 ms instead of
      Triton's 25/100: about 18 compilations for a forward+backward at F = Dv = 64. For short benchmarks.
    * ``"single"``: one fixed configuration per kernel (the first tile fla lists, ``num_warps`` nearest 4, fewest
      stages), nothing timed: for correctness tests, and for Triton's interpreter, which cannot time.
    """
    if mode not in ("full", "small", "single"):
        raise ValueError(f"mode={mode!r} is not an autotuning mode; expected one of full, small, single")
    require_fla()
    changed = 0
    for name, mod in list(sys.modules.items()):
        if not name.startswith("fla.ops") or mod is None:
            continue
        for obj in list(vars(mod).values()):
            tuner = _autotuner_of(obj)
            if tuner is None:
                continue
            if id(tuner) not in _ORIGINAL:
                _ORIGINAL[id(tuner)] = (tuner, list(tuner.configs), tuner.early_config_prune,
                                        tuner.__dict__.get("do_bench", _MISSING))
            _, configs, prune, bench = _ORIGINAL[id(tuner)]
            tuner.configs = _trimmed(configs, single=True) if mode == "single" else list(configs)
            tuner.early_config_prune = functools.partial(_small_prune, previous=prune) if mode == "small" else prune
            tuner.cache.clear()
            tuner.__dict__.pop("do_bench", None)
            if mode == "small":
                tuner.do_bench = _quick_bench  # an instance attribute over Triton's (cached) property
            elif bench is not _MISSING:
                tuner.do_bench = bench
            changed += 1
    return changed
