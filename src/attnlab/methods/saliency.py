"""Input-gradient saliency: how sensitive a model's loss is to each input token.

Shape legend: B batch, T sequence length, C embedding width (d_model), V vocabulary size.

One definition serves LeaF's confounding-token detection (spec ``causal_training.md`` B.3) and any other
caller that needs per-token sensitivities:

* **Loss.** Teacher-forced cross-entropy of ``model(inputs_embeds=e)`` against ``targets`` (aligned with the
  logits: ``targets[b, t]`` is the token predicted at position ``t``; ``ignore_index`` marks unscored
  positions). Each sample's loss is the **mean** over its own scored positions (a sample with none
  contributes 0), and the batch objective is the **sum** of the per-sample losses. Samples do not interact in
  a decoder LM, so the gradient of that sum w.r.t. sample ``b``'s embeddings is exactly the gradient of
  sample ``b``'s own loss: the result is per-sample even though one backward pass serves the batch.
* **Reduction** over the embedding dimension of ``G = ∂ℓ/∂e`` ``(B, T, C)``:
  ``"l2"`` ‖G_t‖₂ (the released LeaF code), ``"sq"`` ‖G_t‖₂², ``"abs"`` Σ_c |G_tc| (L1),
  ``"grad_x_input"`` |Σ_c G_tc · e_tc| (gradient × input). All are ``>= 0``.
* **Side effects.** Gradients are taken with :func:`torch.autograd.grad` w.r.t. the embeddings only, so no
  parameter ``.grad`` is created or changed. The model is put in the requested mode (``"eval"`` by default, so
  that dropout cannot make the saliency random; the released code uses training mode, available as
  ``mode="train"``) and its previous mode is restored afterwards, also on error.

The model must offer ``embed(idx) -> (B, T, C)`` and ``model(inputs_embeds=...) -> (B, T, V)`` (attnlab's LM
does).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SaliencyReduce", "SaliencyMode", "input_gradient_saliency", "per_sample_ce"]

SaliencyReduce = Literal["l2", "sq", "abs", "grad_x_input"]
SaliencyMode = Literal["eval", "train", "keep"]


def per_sample_ce(logits: Tensor, targets: Tensor, *, ignore_index: int = -100) -> Tensor:
    """Per-sample mean cross-entropy ``(B,)`` over each sample's positions with ``targets != ignore_index``.

    A sample without scored positions gets 0 (not NaN).
    """
    B, T, V = logits.shape
    ce = F.cross_entropy(logits.reshape(B * T, V), targets.reshape(B * T), ignore_index=ignore_index,
                         reduction="none").reshape(B, T)  # (B, T), 0 at ignored positions
    n = (targets != ignore_index).sum(dim=1)  # (B,)
    return ce.sum(dim=1) / n.clamp(min=1).to(ce.dtype)  # (B,)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_batch(idx: object, targets: object) -> None:
    if not isinstance(idx, Tensor) or idx.ndim != 2 or idx.dtype not in (torch.int64, torch.int32) or idx.numel() == 0:
        got = f"{tuple(idx.shape)} {idx.dtype}" if isinstance(idx, Tensor) else type(idx).__name__
        raise ValueError(f"idx must be a non-empty (B, T) integer tensor of token ids, got {got}")
    if not isinstance(targets, Tensor) or targets.shape != idx.shape or targets.dtype not in (torch.int64, torch.int32):
        got = f"{tuple(targets.shape)} {targets.dtype}" if isinstance(targets, Tensor) else type(targets).__name__
        raise ValueError(f"targets must be an integer tensor of the shape of idx {tuple(idx.shape)}, got {got}")


def input_gradient_saliency(
    model: nn.Module,
    idx: Tensor,
    targets: Tensor,
    *,
    reduce: SaliencyReduce = "l2",
    mode: SaliencyMode = "eval",
    ignore_index: int = -100,
) -> Tensor:
    """Per-sample, per-token saliency ``(B, T)`` of ``model``'s loss w.r.t. its input embeddings.

    Args:
        model: module with ``embed(idx)`` and ``forward(inputs_embeds=...)`` returning logits ``(B, T, V)``.
        idx: token ids ``(B, T)``.
        targets: next-token labels ``(B, T)`` aligned with the logits; ``ignore_index`` where not scored.
        reduce: reduction over the embedding dimension (module docstring).
        mode: ``"eval"``/``"train"`` set that mode for the pass, ``"keep"`` leaves the current one; the
            previous mode is always restored.
        ignore_index: label of unscored positions.

    Returns:
        Detached saliency ``(B, T)`` in the embeddings' dtype, ``>= 0`` everywhere.

    Raises:
        ValueError: bad ``reduce``/``mode``, or ``idx``/``targets`` of the wrong shape or dtype.
    """
    _check_choice("reduce", reduce, get_args(SaliencyReduce))
    _check_choice("mode", mode, get_args(SaliencyMode))
    _check_batch(idx, targets)
    modes = [(m, m.training) for m in model.modules()]  # restored module by module, not just the root
    try:
        if mode != "keep":
            model.train(mode == "train")
        with torch.enable_grad():
            e = model.embed(idx).detach().requires_grad_(True)  # (B, T, C)
            logits = model(inputs_embeds=e)  # (B, T, V)
            loss = per_sample_ce(logits, targets.long(), ignore_index=ignore_index).sum()
            (g,) = torch.autograd.grad(loss, e)  # (B, T, C); parameters' .grad untouched
    finally:
        for m, was_training in modes:
            m.training = was_training
    if reduce == "l2":
        return g.norm(dim=-1)  # (B, T)
    if reduce == "sq":
        return g.pow(2).sum(dim=-1)  # (B, T)
    if reduce == "abs":
        return g.abs().sum(dim=-1)  # (B, T)
    return (g * e.detach()).sum(dim=-1).abs()  # (B, T)
