"""Mask predicates in the FlexAttention ``mask_mod`` form.

A mask is a pure predicate ``mask_mod(b, h, q_idx, kv_idx) -> bool tensor``: ``True`` means the query at
absolute position ``q_idx`` may attend to the key at absolute position ``kv_idx``. The same predicate feeds the
dense reference (:func:`dense`), PyTorch SDPA (as a boolean mask) and FlexAttention (as a BlockMask).

Index conventions, used by every mask in this package:

* **Indices are absolute positions.** In cached decoding the query at step ``t`` has ``q_idx = t``; the ops take
  a ``q_offset`` so that one mask serves training and decoding alike.
* A mask must be written with tensor operations only (no Python ``if`` on tensor values), so that it works both
  with broadcast index grids (``dense``) and under ``torch.vmap`` (FlexAttention).

Shapes: b, h, q_idx, kv_idx are integer tensors that broadcast against each other.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

MaskFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]

__all__ = [
    "Mask",
    "MaskFn",
    "as_mask",
    "and_masks",
    "or_masks",
    "dense",
]


@dataclass(frozen=True, eq=False)
class Mask:
    """A named mask predicate.

    Attributes:
        name: readable name carrying the parameters, e.g. ``sliding_window(window=4)``.
        fn: the predicate ``fn(b, h, q_idx, kv_idx) -> bool tensor``.
        causal: ``True`` when the mask never lets a query see a later key (``kv_idx <= q_idx`` wherever it is
            ``True``). Used by the causality checks and to pick decoding strategies.
        plain_causal: ``True`` only for the exact causal mask, which unlocks SDPA's ``is_causal`` fast path.
        full: ``True`` only for the all-visible mask (no masking needed at all).
        max_len: largest absolute position (exclusive) the mask is defined for, or ``None`` for unbounded.
        window: for a causal mask whose visible keys always lie in ``(q_idx - window, q_idx]``, that bound; a
            cache may then keep only the last ``window`` keys. ``None`` when keys arbitrarily far back are visible.
        per_batch: ``True`` when the predicate depends on ``b`` (e.g. documents with a batch of id rows).
        per_head: ``True`` when the predicate depends on ``h``.
        key_valid: ``None``, or a ``torch.bool`` tensor ``(B, S)`` / ``(S,)`` that the mask guarantees: wherever it
            is ``False`` (and at every position ``>= S``), key ``j`` of batch row ``b`` is hidden from **every**
            query. Set by :func:`~attnlab.masks.key_padding`; :func:`and_masks` keeps it (AND of the operands'),
            :func:`or_masks` keeps it only when every operand has one (OR). Attention layers use it to zero the
            hidden keys and values before attending, so that a NaN or inf in a padded position cannot reach a
            visible output on any backend (``0 * NaN = NaN`` inside a kernel's ``p @ v``). It never changes which
            keys are visible: that is the predicate's job alone.
    """

    name: str
    fn: MaskFn = field(repr=False)
    causal: bool = False
    plain_causal: bool = False
    full: bool = False
    max_len: int | None = None
    window: int | None = None
    per_batch: bool = False
    per_head: bool = False
    key_valid: Tensor | None = field(default=None, repr=False)

    def __call__(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return self.fn(b, h, q_idx, kv_idx)

    def __repr__(self) -> str:  # the name already carries every parameter
        return self.name

    __str__ = __repr__

    def __and__(self, other: "Mask | MaskFn") -> "Mask":
        """``self & other``: :func:`and_masks` of the two (``other`` may be a ``mask_mod`` callable)."""
        return and_masks(self, other)

    def __rand__(self, other: "Mask | MaskFn") -> "Mask":
        """``other & self`` for a plain ``mask_mod`` callable ``other``: ``and_masks(other, self)``, operands in
        the order written (the name reads ``and(other, self)``)."""
        return and_masks(other, self)

    def __or__(self, other: "Mask | MaskFn") -> "Mask":
        """``self | other``: :func:`or_masks` of the two (``other`` may be a ``mask_mod`` callable)."""
        return or_masks(self, other)

    def __ror__(self, other: "Mask | MaskFn") -> "Mask":
        """``other | self`` for a plain ``mask_mod`` callable ``other``: ``or_masks(other, self)``, operands in
        the order written."""
        return or_masks(other, self)


def as_mask(m: Mask | MaskFn, what: str = "mask") -> Mask:
    """``m`` itself when it is a :class:`Mask`; a FlexAttention-style ``mask_mod(b, h, q_idx, kv_idx) -> bool``
    callable (e.g. from attention-gym) wrapped as a :class:`Mask` named after it, with no facts assumed (not causal,
    no window: every backend then applies it as a general mask). ``TypeError`` naming ``what`` otherwise."""
    if isinstance(m, Mask):
        return m
    if callable(m):
        return Mask(name=getattr(m, "__name__", "custom"), fn=m)
    raise TypeError(f"{what} must be a Mask or a mask_mod callable, got {type(m).__name__}")


_as_mask = as_mask


def _operands(func: str, masks: tuple[Mask | MaskFn, ...]) -> list[Mask]:
    """The operands of ``and_masks``/``or_masks`` (named ``func`` in errors) as :class:`Mask` objects."""
    if not masks:
        raise ValueError(f"{func}() needs at least one mask, got none")
    return [_as_mask(m, f"masks[{i}]") for i, m in enumerate(masks)]


def _fold(ms: list[Mask], op: Callable[[Tensor, Tensor], Tensor]) -> MaskFn:
    """The predicate ``op(...op(op(ms[0], ms[1]), ms[2])..., ms[-1])``, evaluated left to right."""

    def fn(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        out = ms[0](b, h, q, kv)
        for m in ms[1:]:
            out = op(out, m(b, h, q, kv))
        return out

    return fn


def _combine_key_valid(ms: list[Mask], op: Callable[[Tensor, Tensor], Tensor]) -> Tensor | None:
    """The ``key_valid`` of ``and``/``or`` of ``ms`` (``op``): ``None`` when an operand has none (``or``) or all
    have none (``and``), or when their batch sizes disagree. Positions beyond an operand's ``S`` are padding."""
    vs = [m.key_valid for m in ms if m.key_valid is not None]
    if not vs or (op is operator.or_ and len(vs) < len(ms)):
        return None
    if len(vs) == 1:
        return vs[0]
    rows = [v if v.ndim == 2 else v.unsqueeze(0) for v in vs]  # (B or 1, S_i)
    batch = {r.shape[0] for r in rows} - {1}
    if len(batch) > 1:
        return None
    S = max(r.shape[1] for r in rows)
    dev = rows[0].device
    padded = [torch.nn.functional.pad(r.to(dev), (0, S - r.shape[1]), value=False) for r in rows]  # (B or 1, S)
    out = padded[0]
    for r in padded[1:]:
        out = op(out, r)
    return out if any(v.ndim == 2 for v in vs) else out[0]


def and_masks(*masks: Mask | MaskFn) -> Mask:
    """Intersection: a key is visible only if every mask allows it."""
    ms = _operands("and_masks", masks)
    if len(ms) == 1:
        return ms[0]
    fn = _fold(ms, operator.and_)
    windows = [m.window for m in ms if m.window is not None]
    lens = [m.max_len for m in ms if m.max_len is not None]
    return Mask(
        name="and(" + ", ".join(m.name for m in ms) + ")",
        fn=fn,
        causal=any(m.causal for m in ms),
        plain_causal=all(m.plain_causal or m.full for m in ms) and any(m.plain_causal for m in ms),
        full=all(m.full for m in ms),
        max_len=min(lens) if lens else None,
        window=min(windows) if windows and any(m.causal for m in ms) else None,
        per_batch=any(m.per_batch for m in ms),
        per_head=any(m.per_head for m in ms),
        key_valid=_combine_key_valid(ms, operator.and_),
    )


def or_masks(*masks: Mask | MaskFn) -> Mask:
    """Union: a key is visible if any mask allows it."""
    ms = _operands("or_masks", masks)
    if len(ms) == 1:
        return ms[0]
    fn = _fold(ms, operator.or_)
    lens = [m.max_len for m in ms if m.max_len is not None]
    all_windowed = all(m.window is not None for m in ms)
    return Mask(
        name="or(" + ", ".join(m.name for m in ms) + ")",
        fn=fn,
        causal=all(m.causal for m in ms),
        plain_causal=all(m.plain_causal for m in ms),
        full=any(m.full for m in ms),
        max_len=min(lens) if lens else None,
        window=max(m.window for m in ms if m.window is not None) if all_windowed and all(m.causal for m in ms) else None,
        per_batch=any(m.per_batch for m in ms),
        per_head=any(m.per_head for m in ms),
        key_valid=_combine_key_valid(ms, operator.or_),
    )


def dense(
    mask: Mask | MaskFn,
    q_len: int,
    kv_len: int,
    *,
    batch_size: int | None = None,
    n_heads: int | None = None,
    q_offset: int = 0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Materialise a mask as a boolean tensor.

    Args:
        mask: the mask predicate.
        q_len: number of queries ``T``; query row ``i`` has absolute position ``q_offset + i``.
        kv_len: number of keys ``S``; key column ``j`` has absolute position ``j``.
        batch_size, n_heads: when either is given the result is ``(B, H, T, S)`` (missing ones default to 1);
            otherwise it is ``(T, S)`` evaluated at ``b = h = 0``.
        q_offset: absolute position of the first query (decoding step ``t`` uses ``q_offset = t``).
        device: where to build the tensor.

    Returns:
        A ``torch.bool`` tensor, ``True`` where attention is allowed.
    """
    m = _as_mask(mask, "mask")
    for arg, val in (("q_len", q_len), ("kv_len", kv_len)):
        if not isinstance(val, int) or val < 0:
            raise ValueError(f"{arg} must be a non-negative int, got {val!r}")
    if not isinstance(q_offset, int) or q_offset < 0:
        raise ValueError(f"q_offset must be a non-negative int, got {q_offset!r}")
    if m.max_len is not None and (q_offset + q_len > m.max_len or kv_len > m.max_len):
        raise ValueError(
            f"mask {m.name} is defined for positions < max_len={m.max_len}, "
            f"got q positions up to {q_offset + q_len} and kv_len={kv_len}"
        )
    for arg, val in (("batch_size", batch_size), ("n_heads", n_heads)):
        if val is not None and (isinstance(val, bool) or not isinstance(val, int) or val < 1):
            raise ValueError(f"{arg} must be None or an int >= 1, got {val!r}")
    four_d = batch_size is not None or n_heads is not None
    B = batch_size if batch_size is not None else 1
    H = n_heads if n_heads is not None else 1
    b = torch.arange(B, device=device).view(B, 1, 1, 1)
    h = torch.arange(H, device=device).view(1, H, 1, 1)
    q = (torch.arange(q_len, device=device) + q_offset).view(1, 1, q_len, 1)
    kv = torch.arange(kv_len, device=device).view(1, 1, 1, kv_len)
    out = m(b, h, q, kv)
    out = torch.as_tensor(out, device=device).to(torch.bool).expand(B, H, q_len, kv_len)
    return out.contiguous() if four_d else out[0, 0].contiguous()
