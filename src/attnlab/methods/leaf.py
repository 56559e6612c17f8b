"""LeaF (Learning to Focus, Guo et al., arXiv 2506.07851): confounder detection and hybrid distillation.

Shape legend: B batch, T sequence length, V vocabulary size, n scored tokens of one sample.

Spec: ``causal_training.md`` Part B. Two pieces, both free of any training loop:

**Stage 1 (B.3), :func:`detect_confounders`.** Teacher and student saliencies (:func:`input_gradient_saliency`,
L2 norm by default) on the same tokens, restricted to the scored positions ``score_mask`` (instruction or
reasoning-prefix tokens; target tokens are refused, invariant B8). Per sample: min-max normalise each model's
saliency over the scored tokens (left as is when constant), Δ = ĝ_teacher − ĝ_student, min-max Δ again. If Δ
is constant nothing is marked (attnlab's deliberate departure from the released code, invariant B5).
Otherwise τ = min(q_p(Δ), cap) with q_p the element at position ⌊p·n⌋ of the ascending sort, and token i is
marked iff Δ_i ≤ τ and its id is not in ``never_mark_ids`` (the tokenizer's whitespace/newline/backslash
tokens). Runs of index-consecutive marked tokens form spans; each span gives one counterfactual sample
with only that span deleted (:func:`prune_span`). The released code appends a newline to each
counterfactual instruction; that is a text-level step left to the caller's tokenizer.

**Stage 2 (B.4), :func:`leaf_kd_loss`.** Token-level forward KL Σ_v p_T (log p_T − log p_S) at temperature
``temperature`` (times temperature²), averaged over the response positions (label ≠ ``ignore_index``), on the
original batch plus λ times the same on the counterfactual batch (``mix="weighted"``); ``mix="mixed_rows"``
is the released code's single file of mixed rows: the row-count-weighted mean of the two terms, so that with
a 1:1 ratio it is half the weighted loss with λ = 1 (invariant B9). Teacher logits wider than the student's
vocabulary are truncated to it. The response-level variant uses the same functions: its ``score_mask`` is
the reasoning prefix and its targets the continuation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab._validation import check_float
from attnlab.methods.saliency import SaliencyMode, SaliencyReduce, input_gradient_saliency

__all__ = [
    "LeafDetectConfig",
    "Counterfactual",
    "Detection",
    "minmax_normalise",
    "mark_confounders",
    "marked_spans",
    "prune_span",
    "detect_confounders",
    "token_kd_loss",
    "leaf_kd_loss",
]


@dataclass(kw_only=True, frozen=True)
class LeafDetectConfig:
    """Options of LeaF stage 1 (spec B.3).

    Attributes:
        p: quantile position in ``[0, 1)``: τ uses the element at ``⌊p·n⌋`` of the ascending sort of Δ
            (0.05 in the released math script, 0.10 in the code script).
        cap: upper bound on τ in ``[0, 1]`` (0.5 in the released code).
        reduce: saliency reduction over the embedding dimension (see :mod:`attnlab.methods.saliency`).
        mode: module mode during the saliency passes (``"eval"`` by default; the release uses training mode).
        never_mark_ids: token ids never marked (whitespace, newline, backslash tokens of the tokenizer).
    """

    p: float = 0.05
    cap: float = 0.5
    reduce: SaliencyReduce = "l2"
    mode: SaliencyMode = "eval"
    never_mark_ids: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        check_float("p", self.p, low=0.0, high=1.0)
        check_float("cap", self.cap, low=0.0, high=1.0, high_inclusive=True)
        if self.reduce not in get_args(SaliencyReduce):
            raise ValueError(f"reduce must be one of {list(get_args(SaliencyReduce))}, got {self.reduce!r}")
        if self.mode not in get_args(SaliencyMode):
            raise ValueError(f"mode must be one of {list(get_args(SaliencyMode))}, got {self.mode!r}")
        if not isinstance(self.never_mark_ids, frozenset) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.never_mark_ids):
            raise ValueError(f"never_mark_ids must be a frozenset of ints >= 0, got {self.never_mark_ids!r}")


@dataclass(frozen=True)
class Counterfactual:
    """One pruned sample: ``sample`` of the batch with tokens ``[start, end)`` deleted from ``idx``/``targets``."""

    sample: int
    start: int
    end: int
    idx: Tensor  # (T - (end - start),)
    targets: Tensor  # (T - (end - start),)


@dataclass(frozen=True)
class Detection:
    """Stage-1 result: saliencies, the renormalised difference, the marks and the counterfactuals."""

    teacher: Tensor  # (B, T) raw teacher saliency
    student: Tensor  # (B, T) raw student saliency
    delta: Tensor  # (B, T) renormalised Δ on scored tokens, 0 elsewhere
    marked: Tensor  # (B, T) bool
    spans: list[list[tuple[int, int]]]  # per sample, [start, end) of each span
    counterfactuals: list[Counterfactual]


def minmax_normalise(x: Tensor) -> Tensor:
    """Min-max ``x`` ``(n,)`` to ``[0, 1]``; returned unchanged when constant (as the released code does)."""
    lo, hi = x.min(), x.max()
    return x if bool(hi == lo) else (x - lo) / (hi - lo)


def mark_confounders(delta: Tensor, *, p: float, cap: float) -> Tensor:
    """Marks ``(n,)`` of one sample's renormalised Δ ``(n,)``: Δ_i ≤ min(sorted(Δ)[⌊p·n⌋], cap).

    A constant Δ marks nothing (invariant B5). Whitespace exclusion is applied by the caller.
    """
    if delta.numel() == 0 or bool(delta.max() == delta.min()):
        return torch.zeros_like(delta, dtype=torch.bool)
    q = torch.sort(delta).values[int(p * delta.numel())]
    return delta <= torch.clamp(q, max=cap)


def marked_spans(marked: Tensor) -> list[tuple[int, int]]:
    """Half-open ``[start, end)`` runs of index-consecutive ``True`` in ``marked`` ``(T,)``, in order."""
    spans: list[tuple[int, int]] = []
    start = None
    for i, m in enumerate(marked.tolist() + [False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            spans.append((start, i))
            start = None
    return spans


def prune_span(idx: Tensor, targets: Tensor, start: int, end: int) -> tuple[Tensor, Tensor]:
    """Delete tokens ``[start, end)`` from one sample's ``idx`` ``(T,)`` and re-align ``targets`` ``(T,)``.

    ``targets[t]`` labels the token after position ``t``. Removing tokens ``s..e-1`` drops the labels at
    ``s-1..e-2`` (which predicted removed tokens), so the kept token ``s-1`` now carries the old label of
    position ``e-1``: the token after the span. For ``s = 0`` the labels ``0..e-1`` go with their tokens.
    """
    T = idx.shape[0]
    if not 0 <= start < end <= T:
        raise ValueError(f"span [start, end) must satisfy 0 <= start < end <= T={T}, got [{start}, {end})")
    keep = torch.ones(T, dtype=torch.bool, device=idx.device)
    keep[start:end] = False
    keep_t = keep.clone() if start == 0 else torch.cat([keep[1:], keep.new_ones(1)])  # label t goes with token t+1
    return idx[keep], targets[keep_t]


def _vocab_size(model: nn.Module) -> int | None:
    v = getattr(getattr(model, "config", None), "vocab_size", None)
    return v if v is not None else getattr(model, "vocab_size", None)


def _check_scope(score_mask: object, targets: Tensor, ignore_index: int) -> Tensor:
    if not isinstance(score_mask, Tensor) or score_mask.dtype != torch.bool or score_mask.shape != targets.shape:
        got = (f"{tuple(score_mask.shape)} {score_mask.dtype}" if isinstance(score_mask, Tensor)
               else type(score_mask).__name__)
        raise ValueError(f"score_mask must be a bool tensor of shape {tuple(targets.shape)}, got {got}")
    is_target = torch.zeros_like(score_mask)
    is_target[:, 1:] = targets[:, :-1] != ignore_index  # token t is a target iff position t-1 predicts it
    if bool((score_mask & is_target).any()):
        raise ValueError("score_mask includes target tokens; saliency is scored on instruction or prefix tokens only")
    return score_mask


def detect_confounders(
    teacher: nn.Module,
    student: nn.Module,
    idx: Tensor,
    targets: Tensor,
    score_mask: Tensor,
    config: LeafDetectConfig,
    *,
    ignore_index: int = -100,
) -> Detection:
    """LeaF stage 1 on a batch (module docstring): marks, spans and one counterfactual per span.

    Args:
        teacher, student: models sharing one tokenizer (same vocabulary size).
        idx: token ids ``(B, T)``; targets: next-token labels ``(B, T)``, ``ignore_index`` off the response.
        score_mask: bool ``(B, T)``, the tokens to score (instruction or reasoning prefix; no target tokens).
        config: the stage-1 options.

    Raises:
        ValueError: vocabularies differ, or ``score_mask`` is malformed or covers target tokens.
    """
    vt, vs = _vocab_size(teacher), _vocab_size(student)
    if vt != vs:
        raise ValueError(f"teacher and student must share a tokenizer: teacher vocab_size={vt}, "
                         f"student vocab_size={vs}")
    score_mask = _check_scope(score_mask, targets, ignore_index)
    saliency = dict(reduce=config.reduce, mode=config.mode, ignore_index=ignore_index)
    g_t = input_gradient_saliency(teacher, idx, targets, **saliency)  # (B, T)
    g_s = input_gradient_saliency(student, idx, targets, **saliency)  # (B, T)
    never = torch.tensor(sorted(config.never_mark_ids), dtype=idx.dtype, device=idx.device)
    delta = torch.zeros_like(g_t)
    marked = torch.zeros_like(score_mask)
    spans: list[list[tuple[int, int]]] = []
    cfs: list[Counterfactual] = []
    for b in range(idx.shape[0]):
        pos = score_mask[b].nonzero().squeeze(1)  # (n,)
        if pos.numel() > 0:
            d = minmax_normalise(minmax_normalise(g_t[b, pos]) - minmax_normalise(g_s[b, pos]))  # (n,)
            delta[b, pos] = d
            marked[b, pos] = mark_confounders(d, p=config.p, cap=config.cap) & ~torch.isin(idx[b, pos], never)
        spans.append(marked_spans(marked[b]))
        for s, e in spans[-1]:
            cf_idx, cf_targets = prune_span(idx[b], targets[b], s, e)
            cfs.append(Counterfactual(b, s, e, cf_idx, cf_targets))
    return Detection(g_t, g_s, delta, marked, spans, cfs)


def token_kd_loss(teacher_logits: Tensor, student_logits: Tensor, targets: Tensor, *, temperature: float = 1.0,
                  ignore_index: int = -100) -> Tensor:
    """Forward KL(p_T ‖ p_S) per position, times temperature², averaged over positions with a label.

    Args:
        teacher_logits: ``(B, T, V_t)`` with ``V_t >= V``; the extra columns are dropped.
        student_logits: ``(B, T, V)``.
        targets: ``(B, T)``; positions with ``ignore_index`` contribute exactly 0.

    Returns:
        Scalar ``>= 0`` (0 when no position has a label).
    """
    check_float("temperature", temperature, low=0.0, low_inclusive=False, high=float("inf"))
    if student_logits.ndim != 3 or teacher_logits.ndim != 3 or teacher_logits.shape[:2] != student_logits.shape[:2] \
            or targets.shape != student_logits.shape[:2]:
        raise ValueError(f"teacher_logits (B, T, V_t), student_logits (B, T, V) and targets (B, T) must agree, got "
                         f"{tuple(teacher_logits.shape)}, {tuple(student_logits.shape)}, {tuple(targets.shape)}")
    V = student_logits.shape[-1]
    if teacher_logits.shape[-1] < V:
        raise ValueError(f"teacher vocabulary {teacher_logits.shape[-1]} is smaller than the student's {V}")
    log_pt = F.log_softmax(teacher_logits[..., :V] / temperature, dim=-1)  # (B, T, V)
    log_ps = F.log_softmax(student_logits / temperature, dim=-1)  # (B, T, V)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1)  # (B, T)
    valid = targets != ignore_index  # (B, T)
    kl = torch.where(valid, kl, torch.zeros_like(kl))
    return kl.sum() / valid.sum().clamp(min=1).to(kl.dtype) * temperature ** 2


def leaf_kd_loss(
    original: tuple[Tensor, Tensor, Tensor],
    counterfactual: tuple[Tensor, Tensor, Tensor] | None,
    *,
    lam: float = 1.0,
    mix: Literal["weighted", "mixed_rows"] = "weighted",
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> Tensor:
    """Hybrid KD of spec B.4 from ``(teacher_logits, student_logits, targets)`` of both batches.

    Teacher and student must have read the same rows (for the counterfactual batch: the same pruned X_cf).
    ``"weighted"``: KD(original) + lam · KD(counterfactual). ``"mixed_rows"``: the mean of the two terms
    weighted by their row counts (``lam`` unused). ``counterfactual=None`` (no spans found) gives KD(original).
    """
    if mix not in ("weighted", "mixed_rows"):
        raise ValueError(f"mix must be one of ['weighted', 'mixed_rows'], got {mix!r}")
    check_float("lam", lam, low=0.0, high=float("inf"))
    kd = dict(temperature=temperature, ignore_index=ignore_index)
    loss_o = token_kd_loss(*original, **kd)
    if counterfactual is None:
        return loss_o
    loss_c = token_kd_loss(*counterfactual, **kd)
    if mix == "weighted":
        return loss_o + lam * loss_c
    n_o, n_c = original[2].shape[0], counterfactual[2].shape[0]
    return (n_o * loss_o + n_c * loss_c) / (n_o + n_c)
