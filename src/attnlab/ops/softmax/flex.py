"""Masked softmax attention through FlexAttention (``torch.nn.attention.flex_attention``).

Shape legend: B batch, H query heads, H_kv key/value heads (H % H_kv == 0), T query length, S key length,
D head dim, Dv value dim.

* The mask predicate becomes a ``BlockMask`` (``create_block_mask``), shifted so that query row ``i`` is
  evaluated at ``q_idx = q_offset + i``. Blocks with no visible entry are skipped by the kernel, so sparse
  masks (sliding window, strided, fixed, BigBird, documents) cost roughly their density. BlockMasks are cached
  by ``(mask object, T, S, q_offset, device, B if per-batch, H if per-head, flex_block)``; the cache keeps a
  reference to the mask so an ``id`` cannot be reused while cached.
* ``flex_block``: the side of FlexAttention's square blocks (torch's ``BLOCK_SIZE``; default 128), the
  granularity at which empty parts of the mask are skipped. Named so as not to be confused with CASTLE's
  ``chunk_size`` or a model's context length.
* Scores: ``scaled_dot`` / ``dot`` via ``scale``; ``general`` via ``q' = q @ W``. ``additive`` is not offered
  (it would need a per-element ``tanh`` over ``A`` inside ``score_mod``) and raises ``ValueError``.
* Rows with no visible key: FlexAttention returns zeros for them (its log-sum-exp is ``-inf``); tested
  against the reference on CPU and, in the GPU tier, on CUDA.
* Dropout is not supported by FlexAttention: ``dropout_p > 0`` raises ``ValueError``.
* NaN and inf at masked-out positions (measured on CPU, torch 2.13, eager; the compiled CUDA kernel not measured):
  a non-finite masked *key* never reaches a visible output (the ``mask_mod`` replaces its score), but a non-finite
  masked *value* does: ``p @ v`` multiplies its zero probability by it (``0 * NaN = NaN``), and the eager CPU path
  does this for every block, so one NaN value made every row that cannot see it NaN (T=256: all 200 earlier rows,
  also those of the fully masked block the kernel would skip on CUDA). The reference backend is immune, and
  :class:`~attnlab.layers.mha.MultiHeadAttention` zeroes padded keys and values of a ``key_padding`` mask first.
* Execution: every FlexAttention call of the package (this module, :mod:`attnlab.ops.decayed.flex`,
  :mod:`attnlab.ops.future.flex`) goes through :func:`run_flex`, which picks the implementation by device and dtype
  in one place (:func:`_flex_fn`):

  - CUDA, float16/bfloat16/float32: the ``torch.compile``-d kernel (Triton), with three adjustments found on an
    H200 (torch 2.11, triton 3.6):

    * head dims below 16 (``tl.dot`` needs ``K >= 16``; Inductor raises "NYI: embedding dimension ... must be at
      least 16"): q and k are zero-padded along D, and v along Dv, up to 16 (:func:`_pad_head_dims`), and the
      output is sliced back to Dv. Exact: zero columns add nothing to ``q . k`` or to ``p @ v``, the scale is
      always passed explicitly (the default ``1/sqrt(D)`` would change with the padding), and no ``score_mod`` of
      the package depends on D.
    * short queries with grouped heads (``T < 128``): torch picks its flex-decoding kernel, which packs the
      ``G = H / H_kv`` query heads of a KV head into one tile of ``max(16, next_pow2(T * G))`` rows and keeps only
      tiles dividing the BlockMask's query block; when none does, Inductor raises ``NoValidChoicesError`` ("No
      choices exist for backend": T=100, G=2 and T=37, G=4 with 128-blocks; T=64, G=2 passed). :func:`_kernel_options`
      then asks for the standard Triton kernel (``BACKEND="TRITON"``; ``FORCE_USE_FLEX_ATTENTION`` before torch had
      it). The cause is read from torch 2.13's lowering (also described in pytorch/pytorch#185349) and matches
      every failing and passing shape of the H200 run; the option itself has not yet run on a GPU.
    * any other compile failure (``InductorError``, ``BackendCompilerFailed``) while the call is compiled: the same
      call is run with the uncompiled FlexAttention (exact, but it materialises the ``(B, H, T, S)`` scores) and a
      :class:`FlexFallbackWarning` (a ``RuntimeWarning``) is emitted once per (dtype, kind of shapes, error type).
      Errors raised when the backward graph is compiled lazily, at ``backward()``, are not caught, nor are those of
      a caller's own ``torch.compile`` around the call (there the padded inputs and kernel options are passed to
      ``flex_attention`` directly and that compile lowers it).

  - CUDA, float64: the uncompiled FlexAttention (Triton's flex template fails an assertion in ``tl.dot`` for
    float64 inputs: its accumulator is float32). Exact and differentiable, but it materialises the scores: float64
    is a verification dtype.
  - CPU: torch 2.13 runs FlexAttention eagerly (an unfused implementation that materialises the scores; its
    "called without torch.compile" warning is silenced here) and **has no CPU backward**: calling it on CPU with
    inputs that require grad raises ``ValueError`` here rather than torch's ``NotImplementedError`` deep inside.
    CPU tests therefore cover the forward pass and the BlockMask; gradients are tested in the GPU tier.

  :func:`record_flex_fallbacks` lists the calls that ran uncompiled on CUDA (for tests and benchmarks).
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections import OrderedDict
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab._validation import check_int
from attnlab.masks import Mask
from attnlab.ops.softmax.args import SoftmaxArgs
from attnlab.ops.softmax.scores import GeneralScoreParams

__all__ = [
    "flex_softmax_attention", "block_mask_for", "FLEX_SCORES", "clear_block_mask_cache", "run_flex",
    "FlexFallbackWarning", "record_flex_fallbacks", "FLEX_MIN_HEAD_DIM",
]

FLEX_SCORES: tuple[str, ...] = ("scaled_dot", "dot", "general")
DEFAULT_FLEX_BLOCK = 128
_CACHE_SIZE = 64

_cache: "OrderedDict[tuple[Any, ...], tuple[Mask, Any]]" = OrderedDict()
_cache_lock = threading.Lock()
_compiled: Callable[..., Tensor] | None = None


def clear_block_mask_cache() -> None:
    """Forget every cached BlockMask."""
    with _cache_lock:
        _cache.clear()


def block_mask_for(
    mask: Mask,
    *,
    batch_size: int,
    n_heads: int,
    q_len: int,
    kv_len: int,
    q_offset: int = 0,
    device: torch.device | str = "cpu",
    flex_block: int = DEFAULT_FLEX_BLOCK,
):
    """The (cached) FlexAttention ``BlockMask`` of ``mask`` for query rows at ``q_offset .. q_offset + q_len``.

    The BlockMask broadcasts over batch/heads unless the mask depends on them (``per_batch``/``per_head``);
    its blocks are ``flex_block x flex_block`` (query x key positions).
    """
    from torch.nn.attention.flex_attention import create_block_mask

    check_int("flex_block", flex_block, 1)
    dev = torch.device(device)
    B = batch_size if mask.per_batch else None
    H = n_heads if mask.per_head else None
    key = (id(mask), q_len, kv_len, q_offset, str(dev), B, H, flex_block)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and hit[0] is mask:
            _cache.move_to_end(key)
            return hit[1]

    fn = mask.fn
    if q_offset:
        off = q_offset

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return fn(b, h, q_idx + off, kv_idx)

    else:

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return fn(b, h, q_idx, kv_idx)

    bm = create_block_mask(mask_mod, B=B, H=H, Q_LEN=q_len, KV_LEN=kv_len, device=dev, BLOCK_SIZE=flex_block)
    with _cache_lock:
        _cache[key] = (mask, bm)
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return bm


#: Dynamo's recompile limit while FlexAttention is compiled: every mask function (and each grad mode) is a new graph
#: of the one compiled ``flex_attention``, and at torch's default of 8 the ninth falls back to the eager, unfused
#: FlexAttention, which materialises the scores (seen on an H200: the sparsity suite's 13 masks stalled).
FLEX_RECOMPILE_LIMIT = 256


def raise_recompile_limit(limit: int = FLEX_RECOMPILE_LIMIT) -> None:
    """Raise (never lower) dynamo's per-function recompile limit, and the accumulated one, to at least ``limit``."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, name) and isinstance(getattr(cfg, name), int) and getattr(cfg, name) < limit:
            setattr(cfg, name, limit)


def compiled_flex() -> Callable[..., Tensor]:
    """The package's one ``torch.compile``-d FlexAttention (CUDA), with the recompile limit raised."""
    global _compiled
    from torch.nn.attention.flex_attention import flex_attention

    if _compiled is None:
        raise_recompile_limit()
        _compiled = torch.compile(flex_attention, dynamic=False)
    return _compiled


def _uses_compiled(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether FlexAttention runs compiled for inputs of ``dtype`` on ``device``: CUDA, except float64."""
    return device.type == "cuda" and dtype != torch.float64


def _flex_fn(device: torch.device, dtype: torch.dtype) -> Callable[..., Tensor]:
    """The FlexAttention for ``device`` and ``dtype`` (see the module docstring): the package's one compiled
    FlexAttention on CUDA, the uncompiled one for float64 on CUDA and on every other device."""
    from torch.nn.attention.flex_attention import flex_attention

    return compiled_flex() if _uses_compiled(device, dtype) else flex_attention


#: The smallest head dim the compiled (Triton) FlexAttention accepts for q/k and for v (``tl.dot`` needs ``K >= 16``).
FLEX_MIN_HEAD_DIM = 16


def _needs_pad(d: int) -> bool:
    """Whether a head dim ``d`` is zero-padded before the compiled FlexAttention."""
    return d < FLEX_MIN_HEAD_DIM


def _pad_head_dims(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q and k zero-padded along D, and v along Dv, to :data:`FLEX_MIN_HEAD_DIM` where shorter (else unchanged).

    Attention over the padded tensors with the same explicit ``scale`` equals the original plus zero output columns
    beyond Dv (to slice off): the zero columns add nothing to ``q . k`` or to ``p @ v``, and gradients flow back
    through the padding to the original columns only.
    """
    if _needs_pad(q.shape[-1]):
        n = FLEX_MIN_HEAD_DIM - q.shape[-1]
        q, k = F.pad(q, (0, n)), F.pad(k, (0, n))
    if _needs_pad(v.shape[-1]):
        v = F.pad(v, (0, FLEX_MIN_HEAD_DIM - v.shape[-1]))
    return q, k, v


_DECODE_MAX_Q_LEN = 128  # torch picks flex-decoding for fewer query rows than this (torch 2.11 and 2.13)


def _decode_tile_misfits(q_len: int, group: int, q_block: int | None) -> bool:
    """Whether torch's flex-decoding kernel would find no tile (``NoValidChoicesError``) for ``q_len`` query rows,
    ``group`` query heads per KV head and a BlockMask with query blocks of ``q_block`` rows (``None``: no BlockMask,
    torch then uses one huge block).

    The decoding kernel packs the group into one tile of ``max(16, next_pow2(q_len * group))`` rows and keeps only
    tiles that divide the query block; with 128-blocks this fails for T=100, G=2 and T=37, G=4 (H200, torch 2.11),
    not for T=64, G=2. Whether torch would pick the decoding kernel at all (static batch and heads, a power-of-two
    group, a BlockMask not per head under GQA) is not checked: the standard kernel is always a valid choice.
    """
    if q_block is None or not 0 < q_len < _DECODE_MAX_Q_LEN:
        return False
    tile = max(16, 1 << (q_len * group - 1).bit_length())
    return q_block % tile != 0


_backend_option: bool | None = None  # whether this torch's FlexKernelOptions has BACKEND (set on first use)


def _has_backend_option() -> bool:
    global _backend_option
    if _backend_option is None:
        try:
            from torch.nn.attention.flex_attention import FlexKernelOptions

            _backend_option = "BACKEND" in getattr(FlexKernelOptions, "__annotations__", {})
        except ImportError:
            _backend_option = False
    return _backend_option


def _kernel_options(q_len: int, group: int, block_mask: Any) -> dict[str, Any] | None:
    """``kernel_options`` for the compiled call: the standard Triton kernel where flex-decoding has no tile
    (:func:`_decode_tile_misfits`), else ``None`` (torch's own choice)."""
    size = getattr(block_mask, "BLOCK_SIZE", None) if block_mask is not None else None
    q_block = int(size[0]) if isinstance(size, (tuple, list)) and size else None
    if not _decode_tile_misfits(q_len, group, q_block):
        return None
    # BACKEND="TRITON" is documented as "Standard Triton flex_attention kernel"; the legacy knob, which torch
    # refuses together with BACKEND, does the same on versions without BACKEND
    return {"BACKEND": "TRITON"} if _has_backend_option() else {"FORCE_USE_FLEX_ATTENTION": True}


class FlexFallbackWarning(RuntimeWarning):
    """The compiled FlexAttention failed to compile and the uncompiled one was used instead (exact, unfused)."""


def _compile_errors() -> tuple[type[BaseException], ...]:
    """The exception types a failed ``torch.compile`` of FlexAttention raises (those this torch has)."""
    found: list[type[BaseException]] = []
    for module, name in (("torch._inductor.exc", "InductorError"), ("torch._dynamo.exc", "BackendCompilerFailed")):
        try:
            cls = getattr(__import__(module, fromlist=[name]), name)
        except (ImportError, AttributeError):
            continue
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)


_COMPILE_ERRORS = _compile_errors()
_fallback_lock = threading.Lock()
_warned: set[tuple[str, str, str]] = set()
_recorders: list[list[str]] = []


def _shape_kind(q: Tensor, k: Tensor, v: Tensor) -> str:
    """The kind of shapes a fallback warning is issued once for: short/long queries, GQA or not, head dims."""
    T, H, Hkv = q.shape[-2], q.shape[1], k.shape[1]
    return (f"{'short' if T < _DECODE_MAX_Q_LEN else 'long'} queries, {'GQA' if H != Hkv else 'MHA'}, "
            f"D={q.shape[-1]}, Dv={v.shape[-1]}")


def _note_eager(what: str) -> None:
    with _fallback_lock:
        for rec in _recorders:
            rec.append(what)


@contextlib.contextmanager
def record_flex_fallbacks() -> Iterator[list[str]]:
    """Within the block, list every FlexAttention call on CUDA that ran uncompiled (float64, or a compile failure),
    as a line saying why. Unlike the warning, which is emitted once per kind, every call is listed."""
    taken: list[str] = []
    with _fallback_lock:
        _recorders.append(taken)
    try:
        yield taken
    finally:
        with _fallback_lock:
            for i, rec in enumerate(_recorders):
                if rec is taken:
                    del _recorders[i]
                    break


def _eager_flex(q: Tensor, k: Tensor, v: Tensor, **kw: Any) -> Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        return flex_attention(q, k, v, **kw)


def run_flex(q: Tensor, k: Tensor, v: Tensor, *, scale: float, block_mask: Any = None,
             score_mod: Callable[..., Tensor] | None = None, enable_gqa: bool = False) -> Tensor:
    """FlexAttention on ``q (B, H, T, D)``, ``k (B, H_kv, S, D)``, ``v (B, H_kv, S, Dv)`` -> ``(B, H, T, Dv)``,
    run as the module docstring says (compiled on CUDA with padding, kernel options and the eager fallback;
    uncompiled for float64 and off CUDA). ``scale`` is required: it must not follow a padded D."""
    from torch.nn.attention.flex_attention import flex_attention

    kw: dict[str, Any] = {"score_mod": score_mod, "block_mask": block_mask, "scale": scale, "enable_gqa": enable_gqa}
    dtype = torch.float64 if torch.float64 in (q.dtype, k.dtype, v.dtype) else q.dtype
    if not _uses_compiled(q.device, dtype):
        if q.device.type == "cuda":
            _note_eager(f"uncompiled: {dtype} on CUDA, shapes q {tuple(q.shape)} k {tuple(k.shape)} "
                        f"v {tuple(v.shape)}")
        return _eager_flex(q, k, v, **kw)
    Dv = v.shape[-1]
    qp, kp, vp = _pad_head_dims(q, k, v)
    opts = _kernel_options(q.shape[-2], q.shape[1] // k.shape[1], block_mask)
    if torch.compiler.is_compiling():  # inside a caller's torch.compile: that compile lowers FlexAttention
        out = flex_attention(qp, kp, vp, kernel_options=opts, **kw)
        return out[..., :Dv] if out.shape[-1] != Dv else out
    try:
        out = compiled_flex()(qp, kp, vp, kernel_options=opts, **kw)
    except _COMPILE_ERRORS as e:
        kind = _shape_kind(q, k, v)
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith("backend=")]
        what = f"{type(e).__name__} ({lines[0][:300] if lines else 'no message'})"
        _note_eager(f"uncompiled after a compile failure: {dtype}, shapes q {tuple(q.shape)} k {tuple(k.shape)} "
                    f"v {tuple(v.shape)}: {what}")
        key = (str(dtype), kind, type(e).__name__)
        with _fallback_lock:
            first = key not in _warned
            _warned.add(key)
        if first:
            warnings.warn(
                f"attnlab: the compiled FlexAttention failed for {dtype} inputs ({kind}; this call: q "
                f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}) with {what}. The fused kernel was not "
                "used: the call ran with the uncompiled FlexAttention (exact, but it materialises the scores). "
                "Warned once per dtype, kind of shapes and error type.",
                FlexFallbackWarning, stacklevel=3,
            )
        return _eager_flex(q, k, v, **kw)
    return out[..., :Dv] if out.shape[-1] != Dv else out


def flex_softmax_attention(
    q: Tensor, k: Tensor, v: Tensor, args: SoftmaxArgs, *, flex_block: int = DEFAULT_FLEX_BLOCK
) -> Tensor:
    """Masked softmax attention via FlexAttention; see the module docstring. Inputs are assumed validated."""
    mask, scale, score, score_params, q_offset, dropout_p = (
        args.mask, args.scale, args.score, args.score_params, args.q_offset, args.dropout_p)
    if score not in FLEX_SCORES:
        raise ValueError(f"impl='flex' does not support score={score!r}; it supports {FLEX_SCORES}")
    if dropout_p > 0.0:
        raise ValueError(f"impl='flex' does not support dropout, got dropout_p={dropout_p}; use impl='sdpa'")
    grads = [t for t in (q, k, v) if t.requires_grad]
    if score_params is not None:
        grads += [t for t in score_params.tensors().values() if t.requires_grad]
    if q.device.type == "cpu" and torch.is_grad_enabled() and grads:
        raise ValueError(
            "impl='flex' has no backward pass on CPU (FlexAttention in torch "
            f"{torch.__version__} implements CPU forward only); got inputs that require grad. "
            "Use impl='sdpa' or impl='reference', or call under torch.no_grad()"
        )
    if q.device.type == "cpu" and not torch.is_grad_enabled():
        # torch refuses CPU inputs with requires_grad=True even under no_grad; nothing is recorded anyway
        q, k, v = q.detach(), k.detach(), v.detach()
        if score_params is not None:
            score_params = GeneralScoreParams(weight=score_params.weight.detach())  # type: ignore[union-attr]
    B, H, T, _ = q.shape
    Hkv, S = k.shape[1], k.shape[2]

    if score == "general":
        assert isinstance(score_params, GeneralScoreParams)
        q = torch.einsum("bhtd,hde->bhte", q, score_params.weight)  # (B, H, T, D)  q' = q W

    block_mask = None
    if mask is not None and not mask.full:
        block_mask = block_mask_for(
            mask, batch_size=B, n_heads=H, q_len=T, kv_len=S, q_offset=q_offset, device=q.device,
            flex_block=flex_block,
        )
    return run_flex(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=Hkv != H)  # (B, H, T, Dv)
