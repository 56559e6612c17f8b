"""Future-aware masks for vision-language sequences (Pei et al. 2025, arXiv:2505.18605; spec future_mask.md §2-§3).

A decoder sequence mixes **visual** tokens (image-feature positions, ``V``) and **text** tokens (everything else,
``T``: BOS, system prompt, role tags, text between images, the question and every generated token). The token types
are a ``torch.bool`` tensor ``is_visual`` of shape ``(B, L)`` (one row per sample) or ``(L,)`` (shared by the
batch), ``True`` at visual positions. The masks change **visual query rows only**; ``i`` is the absolute query
position ``q_idx``, ``j`` the absolute key position ``kv_idx``:

=============================  ========================================  ========================================
constructor (spec name)        allowed(i, j) before padding               visual row ``i`` sees
=============================  ========================================  ========================================
``vlm_causal`` (``M^c``)       ``j <= i``                                 past + self
``future_full`` (``M^f``)      ``j <= i or (j > i and i in V)``           every position
``future_v2v`` (``M^v2v``)     ``j <= i or (j > i and i, j in V)``        past + self + later visual
``future_v2t`` (``M^v2t``)     ``j <= i or (j > i and i in V, j in T)``   past + self + later text
=============================  ========================================  ========================================

Text rows are causal rows in all four. Padding (spec §1.4): every allowed pair is AND-ed with the key validity
``keep[b, j]`` (``False`` at padding), then the diagonal ``j == i`` is OR-ed back, so no row is ever empty (a pad
query under left padding sees only itself; its output is meaningless but finite).

Positions beyond the tensors (``j >= L``) are **generated tokens**: text (``T``) and valid keys. Which future keys a
visual row may use is the runtime semantics (spec §3):

* ``semantics="P"`` (prefill-only, default): future edges reach only keys inside the prompt, ``j < prompt_len``
  (default: ``L``, the length of ``is_visual``; for a left-padded batch the padded prompt length). The full-sequence
  rule is ``allowed_P(i, j) = allowed(i, j) and (j <= i or j < prompt_len)``. Prefilling the prompt in one call
  and decoding one cached token at a time then equals recomputing the whole sequence under ``allowed_P`` at every
  step: nothing in the prompt depends on generated tokens.
* ``semantics="R"`` (recompute): future edges reach every later key, generated ones included; under ``M^f`` and
  ``M^v2t`` visual rows see the tokens generated so far, so every step must recompute the whole sequence (a cached
  layer refuses such a prefill: its queries see the next, not yet cached, position). Under ``M^v2v`` the later keys
  a visual row admits are visual, hence in the prompt, so R and P coincide exactly and caching stays valid.

The masks are ordinary :class:`~attnlab.masks.core.Mask` objects (dense, SDPA and FlexAttention backends, block
skipping, rendering). They carry no ``key_valid``: a pad key stays visible to its own (pad) query through the
diagonal, which that attribute's contract ("hidden from every query") forbids.

:func:`extra_pairs` counts the non-causal allowed pairs per sample (spec §2.2), :func:`token_types` reads a layout
written as a string (``"TT VVV T VV TT"``), and :class:`TokenTypes` bundles a layout with a mask choice for a model
call (:class:`attnlab.models.lm.LM` takes it as ``token_types=``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torch import Tensor

from attnlab.masks.core import Mask

__all__ = [
    "FUTURE_KINDS",
    "SEMANTICS",
    "FutureKind",
    "Semantics",
    "check_is_visual",
    "token_types",
    "future_mask",
    "vlm_causal",
    "future_full",
    "future_v2v",
    "future_v2t",
    "extra_pairs",
    "TokenTypes",
]

FutureKind = Literal["c", "f", "v2v", "v2t"]
Semantics = Literal["P", "R"]
#: The mask kinds of spec §2.1: causal, full future, visual-to-visual, visual-to-text.
FUTURE_KINDS: tuple[str, ...] = ("c", "f", "v2v", "v2t")
#: The runtime semantics of spec §3: prefill-only and recompute.
SEMANTICS: tuple[str, ...] = ("P", "R")
_NAMES = {"c": "vlm_causal", "f": "future_full", "v2v": "future_v2v", "v2t": "future_v2t"}


def _check_rows(arg: str, t: object, *, length: int | None, batch_size: int | None) -> Tensor:
    if not isinstance(t, Tensor):
        raise ValueError(f"{arg} must be a torch.bool tensor of shape (B, L) or (L,), got {type(t).__name__}")
    if t.dtype != torch.bool or t.ndim not in (1, 2) or t.shape[-1] < 1 or t.numel() < 1:
        raise ValueError(f"{arg} must be a torch.bool tensor of shape (B, L) or (L,) with B, L >= 1, got "
                         f"{t.dtype} {tuple(t.shape)}")
    if length is not None and t.shape[-1] != length:
        raise ValueError(f"{arg} must have length L={length} in its last dim, got shape {tuple(t.shape)}")
    if batch_size is not None and t.ndim == 2 and t.shape[0] != batch_size:
        raise ValueError(f"{arg} must have batch size B={batch_size} (or shape (L,)), got shape {tuple(t.shape)}")
    return t


def check_is_visual(is_visual: object, *, arg: str = "is_visual", length: int | None = None,
                    batch_size: int | None = None) -> Tensor:
    """``is_visual`` must be a ``torch.bool`` tensor ``(B, L)`` or ``(L,)`` with ``B, L >= 1``; returns it unchanged.

    Args:
        is_visual: the token types, ``True`` at visual positions.
        arg: the argument's name in error messages.
        length: when given, the required ``L``.
        batch_size: when given, the required ``B`` of a 2-d tensor (a 1-d tensor is shared by any batch).

    Raises:
        ValueError: naming ``arg``, the expected dtype/shape and what was received (e.g. ``"is_visual must be a
            torch.bool tensor of shape (B, L) or (L,) with B, L >= 1, got torch.int64 (2, 5)"``).
    """
    return _check_rows(arg, is_visual, length=length, batch_size=batch_size)


def token_types(layout: str) -> Tensor:
    """``is_visual`` ``(L,)`` from a layout string: ``V``/``v`` visual, ``T``/``t`` text; spaces are ignored.

    ``token_types("TT VVV T VV TT")`` is the layout of spec §2.3 (BOS, system, image A, "and", image B, question).
    """
    if not isinstance(layout, str):
        raise ValueError(f"layout must be a string of 'V' and 'T' characters, got {type(layout).__name__}")
    chars = layout.replace(" ", "").upper()
    bad = sorted(set(chars) - {"V", "T"})
    if not chars or bad:
        raise ValueError(f"layout must hold at least one 'V' or 'T' (spaces ignored), got {layout!r}")
    return torch.tensor([c == "V" for c in chars], dtype=torch.bool)


def _lookup(rows: Tensor, *, per_batch: bool, beyond: bool) -> Callable[[Tensor, Tensor], Tensor]:
    """``get(b, pos)``: ``rows[b, pos]`` (row 0 when ``rows`` is shared), ``beyond`` at ``pos >= L``. Bounds-safe
    (positions are clamped before indexing) and free of Python branches on values, so it works under ``vmap``."""
    L = rows.shape[1]
    on_device: dict[str, Tensor] = {}

    def get(b: Tensor, pos: Tensor) -> Tensor:
        key = str(pos.device)
        if key not in on_device:
            on_device[key] = rows.to(pos.device)
        bb = b if per_batch else torch.zeros_like(b)
        inside = on_device[key][bb, pos.clamp(0, L - 1)]
        return (inside & (pos < L)) | (pos >= L) if beyond else inside & (pos < L)

    return get


def _rows(t: Tensor, n: int) -> Tensor:
    return (t if t.ndim == 2 else t.unsqueeze(0)).expand(n, -1)  # (B or 1, L)


def _n_rows(*ts: Tensor | None) -> int:
    """``B`` of the 2-d tensors among ``ts`` (1 when all are shared ``(L,)`` rows)."""
    return max([t.shape[0] for t in ts if t is not None and t.ndim == 2], default=1)


def future_mask(kind: FutureKind, is_visual: Tensor, *, keep: Tensor | None = None, semantics: Semantics = "P",
                prompt_len: int | None = None) -> Mask:
    """The mask ``kind`` of spec §2.1 (see the module docstring) over the token types ``is_visual``.

    Args:
        kind: ``"c"`` (``M^c``), ``"f"`` (``M^f``), ``"v2v"`` (``M^v2v``) or ``"v2t"`` (``M^v2t``).
        is_visual: ``torch.bool`` ``(B, L)`` or ``(L,)``, ``True`` at visual positions; positions ``>= L`` are text.
        keep: key validity, ``torch.bool`` of the same ``L``, ``(B, L)`` or ``(L,)``; ``False`` at padding;
            positions ``>= L`` are valid. ``None``: no padding.
        semantics: ``"P"`` (prefill-only: future edges only to keys ``j < prompt_len``) or ``"R"`` (recompute:
            future edges to every later key).
        prompt_len: with ``"P"``, the (padded) prompt length; default ``L``. Not accepted with ``"R"``.

    Returns:
        A :class:`Mask` named after the constructor and its sizes, ``per_batch`` when either tensor is 2-d,
        ``causal`` when no pair beyond the causal ones can be allowed (``kind="c"`` or no visual token).
    """
    if kind not in FUTURE_KINDS:
        raise ValueError(f"kind must be one of {FUTURE_KINDS}, got {kind!r}")
    if semantics not in SEMANTICS:
        raise ValueError(f"semantics must be one of {SEMANTICS}, got {semantics!r}")
    vis = check_is_visual(is_visual)
    L = vis.shape[-1]
    if keep is not None:
        _check_rows("keep", keep, length=L, batch_size=vis.shape[0] if vis.ndim == 2 else None)
    if semantics == "R" and prompt_len is not None:
        raise ValueError(f"prompt_len is only used with semantics='P', got prompt_len={prompt_len!r} with 'R'")
    if prompt_len is not None and (isinstance(prompt_len, bool) or not isinstance(prompt_len, int) or prompt_len < 0):
        raise ValueError(f"prompt_len must be an int >= 0, got {prompt_len!r}")
    limit = (L if prompt_len is None else prompt_len) if semantics == "P" else None
    per_batch = vis.ndim == 2 or (keep is not None and keep.ndim == 2)
    n = _n_rows(vis, keep)
    visual = _lookup(_rows(vis, n), per_batch=per_batch, beyond=False)
    valid = None if keep is None else _lookup(_rows(keep, n), per_batch=per_batch, beyond=True)
    n_visual = int(vis.sum())

    def extra(b: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        """Future pairs the kind admits (before padding and the prompt limit)."""
        qv = visual(b, q)
        if kind == "f":
            return qv
        if kind == "v2v":
            return qv & visual(b, kv)
        return qv & ~visual(b, kv)

    def fn(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        allowed = kv <= q
        if kind != "c":
            future = (kv > q) & extra(b, q, kv)
            allowed = allowed | (future & (kv < limit) if limit is not None else future)
        if valid is not None:
            allowed = allowed & valid(b, kv)
        return allowed | (kv == q)

    parts = ([f"B={n}"] if per_batch else []) + [f"L={L}", f"n_visual={n_visual}"]
    if keep is not None:
        parts.append(f"n_pad={int((~keep).sum())}")
    if kind != "c":
        parts.append(f"semantics={semantics}" + (f", prompt_len={limit}" if limit is not None and limit != L else ""))
    return Mask(name=f"{_NAMES[kind]}({', '.join(parts)})", fn=fn, causal=kind == "c" or n_visual == 0,
                per_batch=per_batch)


def vlm_causal(is_visual: Tensor, *, keep: Tensor | None = None) -> Mask:
    """``M^c``: the causal mask with the padding rule of the future masks (``j <= i``, AND ``keep``, OR diagonal);
    ``is_visual`` only fixes the sizes. The baseline the other three are compared with."""
    return future_mask("c", is_visual, keep=keep)


def future_full(is_visual: Tensor, *, keep: Tensor | None = None, semantics: Semantics = "P",
                prompt_len: int | None = None) -> Mask:
    """``M^f``: visual rows see every (valid) position; text rows are causal. See :func:`future_mask`."""
    return future_mask("f", is_visual, keep=keep, semantics=semantics, prompt_len=prompt_len)


def future_v2v(is_visual: Tensor, *, keep: Tensor | None = None, semantics: Semantics = "P",
               prompt_len: int | None = None) -> Mask:
    """``M^v2v``: visual rows also see every later visual token, across images; text rows are causal."""
    return future_mask("v2v", is_visual, keep=keep, semantics=semantics, prompt_len=prompt_len)


def future_v2t(is_visual: Tensor, *, keep: Tensor | None = None, semantics: Semantics = "P",
               prompt_len: int | None = None) -> Mask:
    """``M^v2t``: visual rows also see every later text token (within the prompt under P); text rows are causal."""
    return future_mask("v2t", is_visual, keep=keep, semantics=semantics, prompt_len=prompt_len)


def extra_pairs(kind: FutureKind, is_visual: Tensor, *, keep: Tensor | None = None) -> Tensor:
    """Non-causal allowed pairs per sample inside the prompt (spec §2.2): ``E_v2v = sum_{i in V} |{j in V: j > i}|``,
    ``E_v2t = sum_{i in V} |{j in T: j > i, keep[j]}|``, ``E_f = E_v2v + E_v2t`` (pad keys excluded in all;
    ``E_c = 0``).

    Returns ``torch.long`` ``(B,)`` for 2-d inputs, else a 0-d tensor. Computed from :func:`future_mask`'s dense
    form, so it also checks the mask against the closed forms in the tests.
    """
    from attnlab.masks.core import dense

    m = future_mask(kind, is_visual, keep=keep)
    L = is_visual.shape[-1]
    d = dense(m, L, L, batch_size=_n_rows(is_visual, keep))[:, 0]  # (B, L, L)
    upper = torch.ones(L, L, dtype=torch.bool).triu(1)  # (L, L): j > i
    counts = (d & upper).sum(dim=(1, 2))  # (B,)
    return counts if m.per_batch else counts[0]


@dataclass(frozen=True, kw_only=True, eq=False)  # eq on tensors would be ambiguous: compare by identity
class TokenTypes:
    """Token types and the mask to build from them, for one model call (``LM(idx, token_types=...)``).

    Attributes:
        is_visual: ``torch.bool`` ``(B, L)`` or ``(L,)``: the prompt's layout; positions ``>= L`` are text.
        kind: which mask of spec §2.1 (``"c"``, ``"f"``, ``"v2v"``, ``"v2t"``); default ``"f"``.
        keep: key validity ``(B, L)`` / ``(L,)``, ``False`` at padding; ``None`` for none.
        semantics: ``"P"`` or ``"R"`` (spec §3; module docstring).
        prompt_len: with ``"P"``, the prompt length (default ``L``).

    The mask is built once, in ``__post_init__`` (:attr:`mask`), so every layer and every decoding step of a call
    shares one :class:`Mask` (and FlexAttention one cached BlockMask per shape).
    """

    is_visual: Tensor
    kind: FutureKind = "f"
    keep: Tensor | None = None
    semantics: Semantics = "P"
    prompt_len: int | None = None
    mask: Mask = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mask", future_mask(self.kind, self.is_visual, keep=self.keep,
                                                     semantics=self.semantics, prompt_len=self.prompt_len))

    @property
    def length(self) -> int:
        """``L``, the number of typed positions."""
        return int(self.is_visual.shape[-1])

    @property
    def batch_size(self) -> int | None:
        """``B`` of the 2-d tensors, ``None`` when both are shared by any batch."""
        sizes = [t.shape[0] for t in (self.is_visual, self.keep) if t is not None and t.ndim == 2]
        return sizes[0] if sizes else None

    @property
    def needs_recompute(self) -> bool:
        """``True`` when cached decoding cannot reproduce the full-sequence mask: semantics R with ``M^f`` or
        ``M^v2t`` (visual rows see generated tokens)."""
        return self.semantics == "R" and self.kind in ("f", "v2t")
