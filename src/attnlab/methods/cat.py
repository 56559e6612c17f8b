"""CAT re-attention loss (spec ``causal_training.md`` A.5) over captured attention probabilities.

Shapes: B batch, H heads, T sequence length (queries = keys: the supervised layers are causal self-attention).

    with capture_attention(model, keep_graph=True) as cap:
        logits = model(idx)                                        # (B, T, V)
    res = cat_loss(cap.all(), M, CATConfig(alpha=2.0), epoch=e)    # M (B, T, T) from causal_adjacency
    total = ce + res.loss                                          # res.loss already carries the decay weight

Averaged attention: Abar = (1/L) sum_l (1/H) sum_h A^(l,h), accumulated layer by layer into one ``(B, T, T)``
running sum (spec section 0: no stacking of the layers' maps). Per example b and query row j, with
C_j = {j' <= j : M=1} and N_j = {j' <= j : M=0}: a1, a0 are the *mean* attention on C_j and N_j, r_j = a1/a0, and
l_j = phi(a1, a0) if r_j < alpha else 0. A row is valid when M[b, j] is neither all 0 nor all 1 and C_j, N_j
are both non-empty; L_attn = sum of l_j over the micro-batch / number of valid rows (0 when there are none).
Valid rows with r_j >= alpha count in the denominator and add 0, so the logged L_attn *rises* (towards 0 for
``div``) as rows satisfy the threshold: watch :attr:`CATResult.ratio_mean` and ``satisfied`` instead.

Deviation from the released code, by the spec: a0 is clamped to ``eps`` before the ratio and phi (the release has
no guard; a0 = 0 is possible under fp16 underflow).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Literal, get_args

import torch
from torch import Tensor

__all__ = ["CATConfig", "CATResult", "averaged_attention", "re_attention_loss", "cat_loss"]

LossType = Literal["div", "div2", "nll", "hinge"]
Decay = Literal["epoch", "progress", "none"]


@dataclass(kw_only=True)
class CATConfig:
    """Options of the CAT re-attention term.

    Attributes:
        alpha: the ratio threshold: a row is penalised while r_j = a1/a0 < alpha (released default 2.0).
            Under uniform attention r = 1, so the loss is active iff alpha > 1.
        loss_type: phi: ``div`` -log(1+a1)/log(1+a0) (released default), ``div2`` -log(1 + a1/(1+a0)),
            ``nll`` -a1/(a1+a0), ``hinge`` max(alpha - r, 0) (the release's fallback for any other name).
        weight: base weight of the term (1 in the release); multiplied by the decay.
        decay: ``epoch`` exp(-decay_rate * epoch) with the 0-based epoch (as released), ``progress``
            exp(-decay_rate * progress_scale * progress) with progress in [0, 1] the fraction of training done,
            ``none`` constant.
        decay_rate: lambda (released default 1).
        progress_scale: the factor of ``progress`` decay (5: the weight ends near exp(-5) for lambda = 1).
        layers: module names of the supervised layers (as ``capture_attention`` names them); ``None`` all
            captured layers, as released.
        eps: lower clamp of a0.
    """

    alpha: float = 2.0
    loss_type: LossType = "div"
    weight: float = 1.0
    decay: Decay = "epoch"
    decay_rate: float = 1.0
    progress_scale: float = 5.0
    layers: tuple[str, ...] | None = None
    eps: float = 1e-12

    def __post_init__(self) -> None:
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"CATConfig: alpha={self.alpha} (the ratio threshold) must be a finite number > 0")
        if self.loss_type not in get_args(LossType):
            raise ValueError(f"CATConfig: loss_type={self.loss_type!r} must be one of {list(get_args(LossType))}")
        if self.decay not in get_args(Decay):
            raise ValueError(f"CATConfig: decay={self.decay!r} must be one of {list(get_args(Decay))}")
        for name in ("weight", "decay_rate", "progress_scale"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"CATConfig: {name}={v} must be a finite number >= 0")
        if not (0 < self.eps < 1):
            raise ValueError(f"CATConfig: eps={self.eps} must be in (0, 1)")
        if self.layers is not None:
            self.layers = tuple(self.layers)
            if not self.layers:
                raise ValueError("CATConfig: layers=() supervises nothing; use None for every captured layer")

    def decay_weight(self, *, epoch: int = 0, progress: float = 0.0) -> float:
        """The term's weight at a 0-based ``epoch`` or at ``progress`` in [0, 1] (which one depends on ``decay``)."""
        if epoch < 0:
            raise ValueError(f"CATConfig.decay_weight: epoch={epoch} must be >= 0")
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"CATConfig.decay_weight: progress={progress} must be in [0, 1]")
        if self.decay == "epoch":
            return self.weight * math.exp(-self.decay_rate * epoch)
        if self.decay == "progress":
            return self.weight * math.exp(-self.decay_rate * self.progress_scale * progress)
        return self.weight


@dataclass(kw_only=True)
class CATResult:
    """``loss`` = weight * ``attn_loss``; ``ratio`` r_j (B, T), meaningful where ``valid``; ``ratio_mean`` and
    ``satisfied`` (fraction of valid rows with r >= alpha) are detached floats over the valid rows (nan if none)."""

    loss: Tensor
    attn_loss: Tensor
    weight: float
    ratio: Tensor  # (B, T)
    valid: Tensor  # (B, T) bool
    n_valid: int
    ratio_mean: float
    satisfied: float


def averaged_attention(probs: Iterable[Tensor]) -> Tensor:
    """Abar (B, T, T): the mean over layers of each layer's head mean, summed into one running tensor.

    Raises ValueError for no layers, a tensor that is not (B, H, T, T), or layers of different shapes.
    """
    acc: Tensor | None = None
    n = 0
    for i, p in enumerate(probs):
        if p.dim() != 4 or p.shape[-1] != p.shape[-2]:
            raise ValueError(f"averaged_attention: layer {i} probabilities must be (B, H, T, T), got {tuple(p.shape)}")
        head_mean = p.mean(dim=1)  # (B, T, T)
        if acc is None:
            acc = head_mean
        elif acc.shape != head_mean.shape:
            raise ValueError(f"averaged_attention: layer {i} gives {tuple(head_mean.shape)}, "
                             f"earlier layers {tuple(acc.shape)}")
        else:
            acc = acc.add_(head_mean)  # in place: add keeps nothing for backward
        n += 1
    if acc is None:
        raise ValueError("averaged_attention: no attention probabilities were given")
    return acc.div_(n)


def _phi(loss_type: LossType, a1: Tensor, a0: Tensor, r: Tensor, alpha: float) -> Tensor:
    if loss_type == "div":
        return -torch.log1p(a1) / torch.log1p(a0)
    if loss_type == "div2":
        return -torch.log1p(a1 / (1 + a0))
    if loss_type == "nll":
        return -a1 / (a1 + a0)
    return (alpha - r).clamp_min(0)


def re_attention_loss(abar: Tensor, M: Tensor, config: CATConfig, *, epoch: int = 0,
                      progress: float = 0.0) -> CATResult:
    """The vectorised loss of spec A.5 on an averaged map ``abar`` (B, T, T) and adjacency ``M`` (B, T, T)."""
    if abar.dim() != 3 or abar.shape[-1] != abar.shape[-2]:
        raise ValueError(f"re_attention_loss: abar must be (B, T, T), got {tuple(abar.shape)}")
    if M.shape != abar.shape:
        raise ValueError(f"re_attention_loss: M must match abar {tuple(abar.shape)}, got {tuple(M.shape)}")
    n = abar.shape[-1]
    M = M.to(abar.dtype)
    tril = torch.ones(n, n, dtype=abar.dtype, device=abar.device).tril()  # (T, T), diagonal included
    C, N = M * tril, (1 - M) * tril  # (B, T, T)
    nc, nn_ = C.sum(-1), N.sum(-1)  # (B, T)
    row = M.sum(-1)  # (B, T)
    ok = (row > 0) & (row < n) & (nc > 0) & (nn_ > 0)  # (B, T)
    a1 = (abar * C).sum(-1) / nc.clamp_min(1)  # (B, T)
    a0 = ((abar * N).sum(-1) / nn_.clamp_min(1)).clamp_min(config.eps)  # (B, T)
    r = a1 / a0  # (B, T)
    active = ok & (r < config.alpha)
    ell = torch.where(active, _phi(config.loss_type, a1, a0, r, config.alpha), torch.zeros_like(a1))  # (B, T)
    n_valid = int(ok.sum())
    attn_loss = ell.sum() / max(n_valid, 1)
    weight = config.decay_weight(epoch=epoch, progress=progress)
    rv = r.detach()[ok]
    return CATResult(loss=weight * attn_loss, attn_loss=attn_loss, weight=weight, ratio=r.detach(), valid=ok,
                     n_valid=n_valid, ratio_mean=float(rv.mean()) if n_valid else float("nan"),
                     satisfied=float((rv >= config.alpha).to(torch.float64).mean()) if n_valid else float("nan"))


def cat_loss(captured: Iterable[tuple[str, Tensor]], M: Tensor, config: CATConfig, *, epoch: int = 0,
             progress: float = 0.0) -> CATResult:
    """The CAT term from captured ``(layer name, probs (B, H, T, T))`` pairs (e.g. ``AttentionCapture.all()``),
    keeping the layers of ``config.layers`` (all when ``None``).

    Raises ValueError naming any layer of ``config.layers`` that was not captured.
    """
    pairs = list(captured)
    if config.layers is not None:
        names = [n for n, _ in pairs]
        absent = [n for n in config.layers if n not in names]
        if absent:
            raise ValueError(f"cat_loss: config.layers names {absent}, which were not captured; captured: {names}")
        pairs = [(n, p) for n, p in pairs if n in config.layers]
    abar = averaged_attention(p for _, p in pairs)
    return re_attention_loss(abar, M, config, epoch=epoch, progress=progress)
