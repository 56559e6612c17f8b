"""Public entry point: :func:`light_future_attention`, the light future-aware prefill attention of spec
``future_mask.md`` section 4 (the paper's "+merge"; its equations were not available, so every free choice of the
reconstruction in section 4.3 is an argument, with the spec's default).

Shape legend: B batch, H query heads, H_kv key/value heads (H % H_kv == 0), L prompt length (queries and keys),
D head dim, Dv value dim, p sink slots.

What a visual row sees (positions 0-based, row ``i`` the query): its causal keys ``j <= i``, plus one summary of
the future scores the mask ``mu`` admits (``j > i``, not padding; ``"f"``: every later key, ``"v2v"``: later visual
keys, ``"v2t"``: later text keys), pooled and added into the logit of the sink slot(s). Text rows are causal.
The support stays lower-triangular: future *values* never enter an output, future *keys* act only through the
sink's weight. Decoding after this prefill is plain cached causal attention on the unchanged keys and values.

Sink slots: by default the first ``n_slots`` non-padded positions of each sample (BOS in LLaVA); every slot must
come before the sample's first visual token (``ValueError`` otherwise). A call without any visual token falls
back to causal attention and warns once per process.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal, TypedDict

from typing_extensions import Unpack

import torch
from torch import Tensor

from attnlab.masks.vlm import check_is_visual
from attnlab.ops._checks import check_kv_like_q
from attnlab.ops._precision import HALF_DTYPES
from attnlab.ops.future.flex import flex_light_future_attention
from attnlab.ops.future.reference import reference_light_future_attention
from attnlab.ops.future.sdpa import merge_terms, sdpa_light_future_attention

__all__ = ["light_future_attention", "sink_mass", "SinkMass", "MergeOptions", "LightFutureImpl", "LIGHT_FUTURE_IMPLS", "MUS", "POOLS", "REDUCES",
           "MERGE_MODES", "default_reduce", "default_slots", "visual_rows", "check_options", "say_no_visual",
           "NO_VISUAL_WARNING"]

LightFutureImpl = Literal["auto", "reference", "sdpa", "flex"]
LIGHT_FUTURE_IMPLS: tuple[str, ...] = ("auto", "reference", "sdpa", "flex")
MUS: tuple[str, ...] = ("f", "v2v", "v2t")
POOLS: tuple[str, ...] = ("max", "avg")
REDUCES: tuple[str, ...] = ("max", "mean", "lse")
MERGE_MODES: tuple[str, ...] = ("add_logit", "lse_mass")
NO_VISUAL_WARNING = ("light future-aware attention got no visual token (is_visual is all False): it falls back to "
                     "causal attention")

_BACKENDS = {"reference": reference_light_future_attention, "sdpa": sdpa_light_future_attention,
             "flex": flex_light_future_attention}
_said_no_visual = False  # the fallback is said once per process


def default_reduce(pool: str, merge_mode: str) -> str:
    """The spec's default ``reduce`` (section 4.3): ``"lse"`` with ``lse_mass``, else ``"max"`` with max pooling and
    ``"mean"`` with average pooling."""
    return "lse" if merge_mode == "lse_mass" else ("max" if pool == "max" else "mean")


def visual_rows(is_visual: object, batch_size: int, length: int, *, device: torch.device,
                arg: str = "is_visual") -> Tensor:
    """``is_visual`` (or another per-position flag, named ``arg``) checked by
    :func:`attnlab.masks.vlm.check_is_visual` (bool ``(B, L)`` or ``(L,)``) and expanded to bool ``(B, L)``."""
    rows = check_is_visual(is_visual, arg=arg, length=length, batch_size=batch_size)
    return rows.to(device).expand(batch_size, length)


def say_no_visual(*, stacklevel: int = 2) -> None:
    """Warn, once per process, that a call without visual tokens falls back to causal attention."""
    global _said_no_visual
    if not _said_no_visual:
        _said_no_visual = True
        warnings.warn(NO_VISUAL_WARNING, stacklevel=stacklevel + 1)


def default_slots(key_valid: Tensor, n_slots: int) -> Tensor:
    """The first ``n_slots`` non-padded positions of each sample: int64 ``(B, n_slots)``."""
    order = torch.sort((~key_valid).to(torch.int8), dim=1, stable=True).indices  # (B, L): real positions first
    return order[:, :n_slots]


def check_options(mu: object, pool: object, pool_size: object, n_slots: object, reduce: object,
                  merge_mode: object, scale: object, impl: object) -> None:
    """Raise ``ValueError`` naming the argument for a bad option (``reduce`` already resolved, not ``None``)."""
    for name, value, valid in (("mu", mu, MUS), ("pool", pool, POOLS), ("reduce", reduce, REDUCES),
                               ("merge_mode", merge_mode, MERGE_MODES), ("impl", impl, LIGHT_FUTURE_IMPLS)):
        if value not in valid:
            raise ValueError(f"{name} must be one of {valid}, got {value!r}")
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1 or pool_size % 2 == 0:
        raise ValueError(f"pool_size must be an odd int >= 1 (stride 1, padding pool_size // 2), got {pool_size!r}")
    if isinstance(n_slots, bool) or not isinstance(n_slots, int) or n_slots < 1:
        raise ValueError(f"n_slots must be an int >= 1, got {n_slots!r}")
    if merge_mode == "lse_mass" and (n_slots != 1 or reduce != "lse"):
        raise ValueError(f"merge_mode='lse_mass' is defined for n_slots=1 and reduce='lse' (spec 4.4 step 5), got "
                         f"n_slots={n_slots}, reduce={reduce!r}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale)):
        raise ValueError(f"scale must be a finite float or None, got {scale!r}")


def _check_tensors(q: object, k: object, v: object) -> None:
    given = {"q": q, "k": k, "v": v}
    legends = {"q": "(B, H, L, D)", "k": "(B, H_kv, L, D)", "v": "(B, H_kv, L, Dv)"}
    bad = [n for n, t in given.items() if not (isinstance(t, Tensor) and t.ndim == 4 and t.is_floating_point())]
    if bad:
        t = given[bad[0]]
        raise ValueError(f"{bad[0]} must be a floating-point tensor {legends[bad[0]]}, got "
                         f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
    assert isinstance(q, Tensor) and isinstance(k, Tensor) and isinstance(v, Tensor)
    check_kv_like_q(q, k, v)
    B, H, L, D = q.shape
    if min(B, H, L, D) < 1 or k.shape[0] != B or k.shape[2] != L or k.shape[3] != D or v.shape[:3] != k.shape[:3] \
            or k.shape[1] < 1 or H % k.shape[1]:
        raise ValueError(f"q (B, H, L, D), k (B, H_kv, L, D), v (B, H_kv, L, Dv) must agree, with H_kv dividing H "
                         f"(one prefill: as many keys as queries), got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")


def _check_slots(slots: Tensor, is_visual: Tensor, key_valid: Tensor, n_slots: int) -> None:
    """Every slot is a real position before the sample's first visual token (spec 4.4 step 5, L2)."""
    B, L = is_visual.shape
    first_visual = torch.where(is_visual, torch.arange(L, device=is_visual.device), L).amin(1)  # (B,): L if none
    for b in range(B):
        if int(first_visual[b]) == L:
            continue  # no visual token: nothing merges into this sample's slots
        row = slots[b].tolist()
        if len(set(row)) != n_slots or not all(0 <= s < L and bool(key_valid[b, s]) for s in row):
            raise ValueError(f"n_slots={n_slots}: sample {b} needs {n_slots} distinct non-padded sink slot(s), got "
                             f"positions {row}")
        if max(row) >= int(first_visual[b]):
            raise ValueError(f"n_slots={n_slots}: sink slot at position {max(row)} of sample {b} is not before its "
                             f"first visual token (position {int(first_visual[b])}); the light variant merges the "
                             "future into slots that precede every visual token (e.g. BOS)")


def _prepare(q: Tensor, is_visual: Tensor, key_valid: Tensor | None, n_slots: int,
             scale: float | None) -> tuple[Tensor, Tensor, Tensor, float]:
    """``(is_visual (B, L), key_valid (B, L), slots (B, p), scale)`` of a checked call: token types expanded, no visual
    pad, every sink slot a real position before the first visual token."""
    B, _, L, D = q.shape
    vis = visual_rows(is_visual, B, L, device=q.device)
    keep = torch.ones(B, L, dtype=torch.bool, device=q.device) if key_valid is None \
        else visual_rows(key_valid, B, L, device=q.device, arg="key_valid")
    if bool((vis & ~keep).any()):
        raise ValueError("is_visual must be False at padded positions (key_valid False), got a visual pad")
    slots = default_slots(keep, n_slots)  # (B, p)
    _check_slots(slots, vis, keep, n_slots)
    return vis, keep, slots, float(scale) if scale is not None else 1.0 / math.sqrt(D)


def light_future_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    is_visual: Tensor,
    key_valid: Tensor | None = None,
    mu: Literal["f", "v2v", "v2t"] = "f",
    pool: Literal["max", "avg"] = "max",
    pool_size: int = 7,
    n_slots: int = 1,
    reduce: Literal["max", "mean", "lse"] | None = None,
    merge_mode: Literal["add_logit", "lse_mass"] = "add_logit",
    scale: float | None = None,
    impl: LightFutureImpl = "auto",
) -> Tensor:
    """Light future-aware attention over one prefill (module docstring; spec section 4.4).

    Args:
        q: queries ``(B, H, L, D)``; ``k``, ``v``: ``(B, H_kv, L, D)``, ``(B, H_kv, L, Dv)`` (GQA: ``H_kv | H``).
        is_visual: bool ``(B, L)`` or ``(L,)``: True at visual (image-feature) positions; never at padding.
        key_valid: bool ``(B, L)`` or ``(L,)``, False at padding (left or right); ``None``: no padding.
        mu: the admitted future region: ``"f"`` (every later key), ``"v2v"`` (later visual), ``"v2t"`` (later text).
        pool: 1-D pooling of the admitted future scores along the keys, ``"max"`` or ``"avg"`` (masked mean).
        pool_size: the odd window ``k`` (stride 1, padding ``k // 2``); the paper's grid is 1, 3, 7, 25.
        n_slots: number of sink slots ``p`` (the first ``p`` real positions of each sample).
        reduce: pooled vector to ``p`` values, ``"max"``, ``"mean"`` or ``"lse"``; ``None``: the spec's default
            (:func:`default_reduce`).
        merge_mode: ``"add_logit"`` (add the summary to the sink's logit) or ``"lse_mass"`` (the sink's logit
            becomes ``log(exp S_sink + exp c)``; needs ``n_slots=1`` and ``reduce="lse"``).
        scale: score multiplier; ``None``: ``1 / sqrt(D)``.
        impl: ``"reference"`` (float64-exact, step by step), ``"sdpa"`` (causal SDPA, then the visual rows corrected in
            closed form for their merge: ``O(m L)`` extra work, no ``(L, L)`` tensor), ``"flex"`` (the same merge as a FlexAttention ``score_mod`` on the causal
            ``BlockMask``; no backward on CPU) or ``"auto"`` (``"sdpa"``).

    Returns:
        ``(B, H, L, Dv)``. Scores, pooling and softmax run in float32 for half-precision inputs.

    Raises:
        ValueError: for any bad argument, before any computation; a sink slot not before the first visual token.
    """
    reduce = default_reduce(pool, merge_mode) if reduce is None else reduce
    check_options(mu, pool, pool_size, n_slots, reduce, merge_mode, scale, impl)
    _check_tensors(q, k, v)
    vis, keep, slots, s = _prepare(q, is_visual, key_valid, n_slots, scale)
    if not bool(vis.any()):
        say_no_visual(stacklevel=3)
    fn = _BACKENDS["sdpa" if impl == "auto" else impl]
    opts = dict(mu=mu, pool=pool, pool_size=pool_size, reduce=reduce, merge_mode=merge_mode, scale=s)
    if q.dtype in HALF_DTYPES:  # spec 4.3: scores, pooling and softmax in float32
        return fn(q.float(), k.float(), v.float(), vis, keep, slots, **opts).to(q.dtype)
    return fn(q, k, v, vis, keep, slots, **opts)  # (B, H, L, Dv)


@dataclass(frozen=True)
class SinkMass:
    """The attention probability on the sink slot(s), summed over the slots and averaged over every merging visual
    row and head of a call, before (causal) and after the merge (spec section 4.7), and how many (row, head) pairs
    were averaged."""

    before: float
    after: float
    rows: int


class MergeOptions(TypedDict, total=False):
    """The merge options of :func:`light_future_attention` (same names, meanings and defaults)."""

    mu: Literal["f", "v2v", "v2t"]
    pool: Literal["max", "avg"]
    pool_size: int
    n_slots: int
    reduce: Literal["max", "mean", "lse"] | None
    merge_mode: Literal["add_logit", "lse_mass"]
    scale: float | None


@torch.no_grad()
def sink_mass(q: Tensor, k: Tensor, *, is_visual: Tensor, key_valid: Tensor | None = None,
              **options: Unpack[MergeOptions]) -> SinkMass:
    """The diagnostic of spec section 4.7: how much of a visual row's attention the sink slots hold before and after
    the merge (a large positive merge in ``add_logit`` mode can send nearly all of it there; a negative one lowers
    it). Arguments as in :func:`light_future_attention` (values are not needed). Costs ``O(m L)`` per head; rows
    without an admitted future are left out; with no merging row, ``rows`` is 0 and both means are ``nan``."""
    unknown = set(options) - set(MergeOptions.__annotations__)
    if unknown:
        raise TypeError(f"sink_mass got unknown options {sorted(unknown)}; it takes {sorted(MergeOptions.__annotations__)}")
    mu, pool = options.get("mu", "f"), options.get("pool", "max")
    pool_size, n_slots = options.get("pool_size", 7), options.get("n_slots", 1)
    merge_mode, scale = options.get("merge_mode", "add_logit"), options.get("scale")
    reduce = options.get("reduce") or default_reduce(pool, merge_mode)
    check_options(mu, pool, pool_size, n_slots, reduce, merge_mode, scale, "auto")
    _check_tensors(q, k, k)
    B, H, L, _ = q.shape
    vis, keep, slots, s = _prepare(q, is_visual, key_valid, n_slots, scale)
    q, k = (q.float(), k.float()) if q.dtype in HALF_DTYPES else (q, k)
    G = H // k.shape[1]
    merged = merge_terms(q, k.repeat_interleave(G, dim=1) if G > 1 else k, vis, keep, slots, mu=mu, pool=pool,
                         pool_size=pool_size, reduce=reduce, merge_mode=merge_mode, scale=s)
    if merged is None:
        return SinkMass(before=float("nan"), after=float("nan"), rows=0)
    rows, delta, merges, s_v = merged
    m, p = rows.shape[1], slots.shape[1]
    pos = torch.arange(L, device=q.device)  # (L,)
    hidden = ~(((pos <= rows[..., None]) & keep[:, None, :]) | (pos == rows[..., None]))[:, None]  # (B, 1, m, L)
    at_slots = slots[:, None, None, :].expand(B, H, m, p)  # (B, H, m, p)
    before = torch.softmax(s_v.masked_fill(hidden, float("-inf")), -1).gather(-1, at_slots).sum(-1)  # (B, H, m)
    merged_s = s_v.scatter_add(-1, at_slots, delta).masked_fill(hidden, float("-inf"))  # (B, H, m, L)
    after = torch.softmax(merged_s, -1).gather(-1, at_slots).sum(-1)  # (B, H, m)
    w = merges[..., 0].expand(B, H, m)  # (B, H, m)
    n = int(w.sum())
    return SinkMass(before=float(before[w].double().mean()), after=float(after[w].double().mean()), rows=n)
