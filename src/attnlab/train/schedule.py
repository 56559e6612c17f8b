"""Learning-rate schedule and the AdamW optimizer used by the trainer."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["lr_at", "make_optimizer", "param_groups"]


def lr_at(step: int, *, peak: float, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine decay to ``min_ratio*peak``.

    * warmup: ``peak * (step + 1) / warmup_steps`` for ``step < warmup_steps`` (the first step is not 0);
    * decay: ``min + (peak - min) * (1 + cos(pi * p)) / 2`` with ``p = (step - warmup) / (total - warmup)``,
      so step ``warmup_steps`` has the peak and step ``total_steps`` (and every later one) has ``min``.

    If ``total_steps <= warmup_steps`` there is no decay span and every step after warmup has the peak
    (:class:`~attnlab.train.config.OptimConfig` refuses ``decay_steps <= warmup_steps`` for that reason).
    The trainer passes ``total_steps = decay_steps or steps``; its last step is ``steps - 1``, one step before
    the floor.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    floor = min_ratio * peak
    span = total_steps - warmup_steps
    if span <= 0:
        return peak
    p = min(1.0, (step - warmup_steps) / span)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * p))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: 2-D (and higher) weights with ``weight_decay``; biases, norm gains, scalars without."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # named_parameters de-duplicates tied weights
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(
    model: nn.Module, *, lr: float, betas: tuple[float, float], eps: float, weight_decay: float
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (foreach on; deterministic on CPU)."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps)
