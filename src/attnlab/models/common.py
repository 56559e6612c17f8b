"""Blocks shared by every model family: RMSNorm, SwiGLU, the pre-norm residual block, RoPE and GPT-2 init.

Shape legend: B batch, T query length, S context (source) length, C ``d_model``, F SwiGLU hidden size.

A :class:`ResidualBlock` is ``x + drop(attn(norm(x)))`` [``+ drop(cross(norm(x), context))``]
``+ drop(mlp(norm(x)))``: the decoder-only LM uses it without cross-attention, the encoder-decoder's decoder with
it. RoPE lives in :mod:`attnlab.layers.rope` (layers apply it to queries and keys) and is re-exported here.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from attnlab._validation import check_float, check_int
from attnlab.layers._common import HeadGeometry
from attnlab.layers.rope import apply_rope, rope_angles

__all__ = [
    "RMSNorm",
    "SwiGLU",
    "ResidualBlock",
    "swiglu_hidden",
    "Widths",
    "check_buildable",
    "check_token_ids",
    "residual_projection",
    "gpt2_init_",
    "IGNORE_INDEX",
    "count_parameters",
    "apply_rope",
    "rope_angles",
]

class _RMSNormFunction(torch.autograd.Function):
    """``x * rsqrt(mean(x^2) + eps) * w`` over the last dim with a hand-written backward.

    The forward performs PyTorch's own CPU operations in the same order (so the output is bit for bit
    ``nn.RMSNorm``'s); the backward takes about half the kernels of autograd's decomposition. With
    ``xhat = x * rstd``: ``dw = sum(g * xhat)`` and ``dx = rstd * (g w - xhat * mean(g w * xhat))``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))  # (..., 1)
        xhat = x * rstd  # (..., C)
        ctx.save_for_backward(xhat, weight, rstd)
        return xhat * weight

    @staticmethod
    @once_differentiable  # xhat and rstd are saved as constants: a second derivative must not pass through here
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        xhat, weight, rstd = ctx.saved_tensors
        grad_w = (grad * xhat).flatten(0, -2).sum(0) if ctx.needs_input_grad[1] else None  # (C,)
        grad_x = None
        if ctx.needs_input_grad[0]:
            g_hat = grad * weight  # (..., C): the gradient with respect to xhat
            dot = (g_hat * xhat).mean(-1, keepdim=True)  # (..., 1)
            grad_x = torch.addcmul(g_hat, xhat, dot, value=-1).mul_(rstd)  # (..., C)
        return grad_x, grad_w, None


class RMSNorm(nn.RMSNorm):
    """Root-mean-square layer norm (Zhang & Sennrich 2019): PyTorch's ``nn.RMSNorm`` (same arguments, parameters
    and outputs), with a faster eager CPU path for a float32/float64 input over the last dim.

    On CPU PyTorch computes RMSNorm from several elementwise operations and differentiates them one by one; here
    the backward is written out (:class:`_RMSNormFunction`), which saves about a quarter of the forward plus backward
    time at ``d_model=128``. CUDA (which has a fused kernel), other dtypes, ``torch.compile`` (which fuses
    anyway), ``torch.func`` transforms and the module's other options use ``nn.RMSNorm.forward``. The eager CPU
    path has first derivatives only: a second backward through it (``create_graph=True``) raises a
    ``RuntimeError`` rather than treating the normalised input as a constant.
    """

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if (w is None or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64)
                or w.dtype != x.dtype or len(self.normalized_shape) != 1 or torch.compiler.is_compiling()
                or torch._C._are_functorch_transforms_active()):
            return super().forward(x)
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        return _RMSNormFunction.apply(x, w, eps)


class Widths(HeadGeometry):
    """Mixin of a model config with ``d_model``, ``n_heads``, ``head_dim`` and ``ffn_hidden`` fields: the head dim
    (as every attention layer config resolves it) and the SwiGLU width they resolve to."""

    ffn_hidden: int | None

    @property
    def resolved_ffn_hidden(self) -> int:
        """``ffn_hidden``, or :func:`swiglu_hidden` of ``d_model``."""
        return self.ffn_hidden if self.ffn_hidden is not None else swiglu_hidden(self.d_model)

    def check_widths(self) -> None:
        """The checks every transformer model config shares (``d_model``, ``n_heads`` already checked positive):
        the head dim, ``ffn_hidden``, and the ``dropout``, ``rope_base`` and ``norm_eps`` fields."""
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"n_heads={self.n_heads} must divide d_model={self.d_model} (or pass head_dim explicitly)")
        else:
            check_int("head_dim", self.head_dim, 1)
        if self.ffn_hidden is not None:
            check_int("ffn_hidden", self.ffn_hidden, 1)
        check_float("dropout", getattr(self, "dropout"), low=0.0, high=1.0)
        check_float("rope_base", getattr(self, "rope_base"), low=1.0, low_inclusive=False, high=math.inf)
        check_float("norm_eps", getattr(self, "norm_eps"), low=0.0, low_inclusive=False, high=math.inf)


def check_buildable(config: object, cls: type) -> None:
    """A model's constructor check: ``config`` is a ``cls`` whose ``vocab_size`` has been set."""
    if not isinstance(config, cls):
        article = "an" if cls.__name__[0] in "AEIOU" else "a"
        raise ValueError(f"config must be {article} {cls.__name__}, got {type(config).__name__}")
    if getattr(config, "vocab_size", None) is None:
        raise ValueError("config.vocab_size is None: set it (a task sets it from its tokenizer) before building")


def check_token_ids(arg: str, ids: object, vocab_size: int, *, device: torch.device, length: str = "T") -> Tensor:
    """A model's input check: ``ids`` is a ``(B, <length>)`` int64 tensor with ``B, <length> >= 1`` on ``device``
    whose values lie in ``[0, vocab_size)``; ``ValueError`` naming ``arg`` otherwise."""
    if not isinstance(ids, Tensor):
        raise ValueError(f"{arg} must be a torch.Tensor of shape (B, {length}) token ids, got {type(ids).__name__}")
    if ids.dtype != torch.long:
        raise ValueError(f"{arg} must have dtype torch.long (int64), got {ids.dtype}; use {arg}.long()")
    if ids.ndim != 2 or ids.shape[0] < 1 or ids.shape[1] < 1:
        raise ValueError(f"{arg} must have shape (B, {length}) with B, {length} >= 1, got {tuple(ids.shape)}")
    if ids.device != device:
        raise ValueError(f"{arg} is on {ids.device} but the model is on {device}")
    lo, hi = torch.stack([*torch.aminmax(ids)]).tolist()  # one host sync
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"{arg} values must be in [0, vocab_size={vocab_size}), got min {lo} and max {hi}")
    return ids


def swiglu_hidden(d_model: int, multiple_of: int = 64) -> int:
    """Default SwiGLU hidden size: ``8/3 * d_model`` rounded **up** to a multiple of ``multiple_of``.

    ``8/3 d`` keeps the parameter count of a ``4 d`` GELU MLP (SwiGLU has three matrices instead of two), as in
    LLaMA. Examples: ``d_model=128 -> 384``, ``384 -> 1024``, ``768 -> 2048``.
    """
    raw = (8 * d_model) // 3
    return multiple_of * -(-raw // multiple_of)


class SwiGLU(nn.Module):
    """``down(silu(x W_gate) * (x W_up))`` (Shazeer 2020); one parameter ``gate_up`` holds ``[W_gate | W_up]``.

    On CPU the gate and up products are two matmuls over the two halves of ``gate_up.weight`` (the ``(B T, 2F)``
    output of one matmul is slower to write than two ``(B T, F)`` ones: about 4 % of an LM training step at
    ``d_model=128``, ``benchmarks/lm_step.py``); elsewhere one fused matmul.
    """

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and not torch.compiler.is_compiling():
            w_gate, w_up = self.gate_up.weight.split(self.hidden)  # (F, C) each
            gate, up = F.linear(x, w_gate), F.linear(x, w_up)  # (B, T, F) each
        else:
            gate, up = self.gate_up(x).chunk(2, dim=-1)  # (B, T, F) each
        return self.down(F.silu(gate) * up)  # (B, T, C)


class ResidualBlock(nn.Module):
    """Pre-norm residual block around a self-attention layer, an optional cross-attention layer and SwiGLU.

    Args:
        d_model: residual stream width ``C``.
        attn: the self-attention layer (any registered mechanism): ``attn(h, cache=...) -> (B, T, C)``.
        ffn_hidden: SwiGLU hidden size ``F``.
        dropout: on each residual branch.
        norm_eps: RMSNorm epsilon.
        cross: a cross-attention layer ``cross(h, context=..., ...)`` (encoder-decoder decoders), or ``None``.
        mechanism: the registry name of ``attn`` (kept for parameter counts and error messages).
    """

    def __init__(self, *, d_model: int, attn: nn.Module, ffn_hidden: int, dropout: float = 0.0,
                 norm_eps: float = 1e-5, cross: nn.Module | None = None, mechanism: str = "") -> None:
        super().__init__()
        self.mechanism = mechanism
        self.attn_norm = RMSNorm(d_model, eps=norm_eps)
        self.attn = attn
        self.cross_norm = RMSNorm(d_model, eps=norm_eps) if cross is not None else None
        self.cross = cross
        self.mlp_norm = RMSNorm(d_model, eps=norm_eps)
        self.mlp = SwiGLU(d_model, ffn_hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, cache: Any = None, *, cross_kwargs: dict[str, Any] | None = None,
                attn_kwargs: dict[str, Any] | None = None) -> Tensor:
        """``x`` ``(B, T, C)``; ``cache`` for the self-attention layer; ``cross_kwargs`` (e.g. ``context``, a
        padding ``mask``) for the cross-attention layer, required when the block has one; ``attn_kwargs`` (e.g. a
        per-call key-padding ``mask``) for the self-attention layer."""
        h = self.attn_norm(x)
        if cache is None and not attn_kwargs:
            a = self.attn(h)  # (B, T, C)
        else:
            kw = dict(attn_kwargs) if attn_kwargs else {}
            if cache is not None:
                kw["cache"] = cache
            a = self.attn(h, **kw)  # (B, T, C)
        x = x + self._drop(a)
        if self.cross is not None:
            if cross_kwargs is None:
                raise ValueError("this block has cross-attention: pass cross_kwargs (e.g. context=(B, S, C))")
            x = x + self._drop(self.cross(self.cross_norm(x), **cross_kwargs))  # (B, T, C)
        return x + self._drop(self.mlp(self.mlp_norm(x)))

    def _drop(self, t: Tensor) -> Tensor:
        """``self.drop(t)``, skipped where it is the identity (``p == 0`` or eval mode): one module call less per
        branch in the hot path."""
        return self.drop(t) if self.drop.p > 0 and self.drop.training else t


def residual_projection(attn: nn.Module, d_model: int) -> nn.Linear | None:
    """The attention layer's output projection: ``out_proj`` (every registered layer's convention), else the
    last ``nn.Linear`` that maps to ``d_model``."""
    out = getattr(attn, "out_proj", None)
    if isinstance(out, nn.Linear):
        return out
    last = None
    for m in attn.modules():
        if isinstance(m, nn.Linear) and m.out_features == d_model:
            last = m
    return last


@torch.no_grad()
def gpt2_init_(model: nn.Module, blocks: list[ResidualBlock], *, d_model: int, embeddings: list[nn.Embedding],
               std: float = 0.02) -> None:
    """GPT-2 initialisation: every ``nn.Linear`` and embedding ~ N(0, ``std``), biases 0, RMSNorm weights 1; the
    residual projections (attention and cross-attention ``out_proj``, MLP ``down``) ~ N(0, std / sqrt(2 L)) with
    ``L = len(blocks)``. Parameters that are neither (a Luong ``W``, CASTLE's own weights) keep their layer's init."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.RMSNorm):
            nn.init.ones_(m.weight)
    for emb in embeddings:
        nn.init.normal_(emb.weight, mean=0.0, std=std)
    resid_std = std / math.sqrt(2 * max(1, len(blocks)))
    for block in blocks:
        nn.init.normal_(block.mlp.down.weight, mean=0.0, std=resid_std)
        for layer in (block.attn, block.cross):
            proj = residual_projection(layer, d_model) if layer is not None else None
            if proj is not None:
                nn.init.normal_(proj.weight, mean=0.0, std=resid_std)


#: Target value that losses leave out (padding, positions without a target).
IGNORE_INDEX = -1


def count_parameters(model: nn.Module, *, embedding: list[nn.Module], blocks: list[ResidualBlock],
                     extra_norms: list[nn.Module], head: nn.Module, prefix: str = "") -> dict[str, int]:
    """Parameters per component of a model made of residual blocks, shared (tied) tensors counted once.

    Keys (each with ``prefix``): ``embedding``, ``attention`` and ``attention.<mechanism>``, ``cross_attention``
    (only when some block has one), ``mlp``, ``norms``, ``lm_head`` (0 when tied to the embedding) and ``total``;
    the components sum to ``total == sum(p.numel() for p in model.parameters())`` (else RuntimeError: a module
    outside every component was not counted)."""
    seen: set[int] = set()

    def count(*modules: nn.Module | None) -> int:
        n = 0
        for m in modules:
            if m is None:
                continue
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    n += p.numel()
        return n

    counts: dict[str, int] = {"embedding": count(*embedding)}
    per_mech: dict[str, int] = {}
    for block in blocks:
        per_mech[block.mechanism] = per_mech.get(block.mechanism, 0) + count(block.attn)
    counts["attention"] = sum(per_mech.values())
    counts.update({f"attention.{k}": v for k, v in per_mech.items()})
    if any(b.cross is not None for b in blocks):
        counts["cross_attention"] = sum(count(b.cross) for b in blocks)
    counts["mlp"] = sum(count(b.mlp) for b in blocks)
    counts["norms"] = sum(count(b.attn_norm, b.cross_norm, b.mlp_norm) for b in blocks) + count(*extra_norms)
    counts["lm_head"] = count(head)
    total = sum(p.numel() for p in model.parameters())
    covered = sum(v for k, v in counts.items() if "." not in k)
    if covered != total:
        raise RuntimeError(f"parameter counts cover {covered} of {total} parameters")
    counts["total"] = total
    return {f"{prefix}{k}": v for k, v in counts.items()}
