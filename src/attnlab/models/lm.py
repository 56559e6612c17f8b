"""A LLaMA-style decoder-only language model with any registered causal attention, chosen per layer.

Shape legend: B batch, T sequence length (``<= block_size``), C ``d_model``, V ``vocab_size``, F SwiGLU hidden.

    idx (B, T) -> token embedding (B, T, C) -> n_layers x [ x + Attn(RMSNorm(x)),  x + SwiGLU(RMSNorm(x)) ]
        -> RMSNorm -> LM head (tied to the embedding) -> logits (B, T, V)

Positions come from RoPE inside each attention layer (``rope=True`` wherever the layer's config supports it);
there is no learned position embedding. Cached decoding passes one :class:`~attnlab.cache.AttentionCache` per
layer (:meth:`LM.new_caches`); each layer reads its absolute positions from ``cache.seq_len``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.cache import AttentionCache
from attnlab.layers import registry
from attnlab.models.config import LMConfig

__all__ = ["LM", "SwiGLU", "Block", "IGNORE_INDEX"]

#: Target value that :meth:`LM.forward` leaves out of the loss.
IGNORE_INDEX = -1


class SwiGLU(nn.Module):
    """``down(silu(x W_gate) * (x W_up))`` (Shazeer 2020), gate and up projections fused in one matmul."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # (B, T, F) each
        return self.down(F.silu(gate) * up)  # (B, T, C)


class Block(nn.Module):
    """Pre-norm residual block: ``x + drop(attn(norm(x)))``, then ``x + drop(mlp(norm(x)))``."""

    def __init__(self, config: LMConfig, mechanism: str) -> None:
        super().__init__()
        self.mechanism = mechanism
        self.attn_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = config.layer_config(mechanism).build()
        self.mlp_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = SwiGLU(config.d_model, config.resolved_ffn_hidden)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, cache: AttentionCache | None = None) -> Tensor:
        h = self.attn_norm(x)
        a = self.attn(h, cache=cache) if cache is not None else self.attn(h)  # (B, T, C)
        x = x + self.drop(a)
        return x + self.drop(self.mlp(self.mlp_norm(x)))


def _residual_projection(attn: nn.Module, d_model: int) -> nn.Linear | None:
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


class LM(nn.Module):
    """Decoder-only LM; see the module docstring. Build with ``LM(config)`` or ``config.build()``."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        if not isinstance(config, LMConfig):
            raise ValueError(f"config must be an LMConfig, got {type(config).__name__}")
        self.config = config
        self.mechanisms: list[str] = config.layer_mechanisms()
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, name) for name in self.mechanisms)
        self.norm_f = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 initialisation: every ``nn.Linear`` and the embedding ~ N(0, 0.02), biases 0; the residual
        projections (attention ``out_proj`` and MLP ``down``) ~ N(0, 0.02 / sqrt(2 n_layers)); RMSNorm weights 1.
        Parameters that are neither (e.g. a Luong ``W`` or CASTLE's own weights) keep their layer's init."""
        std = 0.02
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.RMSNorm):
                nn.init.ones_(m.weight)
        nn.init.normal_(self.tok_emb.weight, mean=0.0, std=std)
        resid_std = std / math.sqrt(2 * self.config.n_layers)
        for block in self.blocks:
            nn.init.normal_(block.mlp.down.weight, mean=0.0, std=resid_std)
            proj = _residual_projection(block.attn, self.config.d_model)
            if proj is not None:
                nn.init.normal_(proj.weight, mean=0.0, std=resid_std)

    # ------------------------------------------------------------------------------------------- forward
    def _validate(self, idx: object, targets: object, caches: object) -> int:
        cfg = self.config
        if not isinstance(idx, Tensor):
            raise ValueError(f"idx must be a torch.Tensor of shape (B, T), got {type(idx).__name__}")
        if idx.dtype != torch.long:
            raise ValueError(f"idx must have dtype torch.long (int64), got {idx.dtype}; use idx.long()")
        if idx.ndim != 2 or idx.shape[0] < 1 or idx.shape[1] < 1:
            raise ValueError(f"idx must have shape (B, T) with B, T >= 1, got {tuple(idx.shape)}")
        offset = 0
        if caches is not None:
            if not isinstance(caches, (list, tuple)) or len(caches) != cfg.n_layers:
                got = len(caches) if isinstance(caches, (list, tuple)) else type(caches).__name__
                raise ValueError(f"caches must be a list of n_layers={cfg.n_layers} caches (new_caches()), got {got}")
            lens = {c.seq_len for c in caches}
            if len(lens) != 1:
                raise ValueError(f"caches disagree on seq_len ({sorted(lens)}); use one new_caches() list per sequence")
            offset = lens.pop()
        T = idx.shape[1]
        if offset + T > cfg.block_size:
            where = f"T={T}" if offset == 0 else f"cached {offset} + new T={T} = {offset + T} tokens"
            raise ValueError(
                f"{where} exceeds block_size={cfg.block_size}; crop the input to the last {cfg.block_size} tokens"
                + (" (and re-prefill fresh caches)" if offset else "")
            )
        if targets is not None and (
            not isinstance(targets, Tensor) or targets.dtype != torch.long or targets.shape != idx.shape
        ):
            got = f"{targets.dtype} {tuple(targets.shape)}" if isinstance(targets, Tensor) else type(targets).__name__
            raise ValueError(f"targets must be a torch.long tensor of shape {tuple(idx.shape)}, got {got}")
        # one host sync for both range checks
        ranges = [*torch.aminmax(idx)] + ([*torch.aminmax(targets)] if targets is not None else [])
        lo_v, hi_v, *t_range = torch.stack(ranges).tolist()
        if lo_v < 0 or hi_v >= cfg.vocab_size:
            raise ValueError(
                f"idx values must be in [0, vocab_size={cfg.vocab_size}), got min {lo_v} and max {hi_v}"
            )
        if t_range and (t_range[0] < IGNORE_INDEX or t_range[1] >= cfg.vocab_size):
            raise ValueError(
                f"targets must be in [0, vocab_size={cfg.vocab_size}) or {IGNORE_INDEX} (ignored), got min "
                f"{t_range[0]} and max {t_range[1]}"
            )
        return offset

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, *, caches: list[AttentionCache] | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Logits of the next token at every position, and the mean cross-entropy when ``targets`` are given.

        Args:
            idx: token ids ``(B, T)``, ``torch.long``, values in ``[0, vocab_size)``, ``T <= block_size``.
            targets: next-token ids ``(B, T)``, ``torch.long``; positions set to ``-1`` are left out of the mean.
            caches: per-layer decoding caches from :meth:`new_caches`; ``idx`` then continues the cached sequence
                (prefill: many tokens; decode: one) and the caches are updated in place. The cached length plus
                ``T`` may not exceed ``block_size``.

        Returns:
            ``(logits (B, T, V), loss)``; ``loss`` is a scalar (float32 or wider) or ``None``.
        """
        self._validate(idx, targets, caches)
        x = self.drop(self.tok_emb(idx))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, caches[i] if caches is not None else None)  # (B, T, C)
        logits = self.lm_head(self.norm_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float() if logits.dtype in (torch.float16, torch.bfloat16)
                else logits.reshape(-1, logits.shape[-1]),
                targets.reshape(-1),
                ignore_index=IGNORE_INDEX,
            )
        return logits, loss

    # -------------------------------------------------------------------------------------------- caches
    def new_caches(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> list[AttentionCache]:
        """One empty decoding cache per layer (device and dtype default to the model's)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        w = self.tok_emb.weight
        device = w.device if device is None else device
        dtype = w.dtype if dtype is None else dtype
        caches = []
        for i, block in enumerate(self.blocks):
            spec = registry.get(block.mechanism)
            if spec.cache is None or not hasattr(block.attn, "new_cache"):
                with_cache = [n for n in registry.names() if registry.get(n).cache is not None and registry.get(n).causal]
                raise ValueError(
                    f"layer {i + 1} uses mechanism {block.mechanism!r}, which has no decoding cache, so this model "
                    f"cannot decode with caches (use the full forward); mechanisms with caches: {', '.join(with_cache)}"
                )
            caches.append(block.attn.new_cache(batch_size, device=device, dtype=dtype))
        return caches

    # ------------------------------------------------------------------------------------------ counting
    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component, shared (tied) tensors counted once.

        Keys: ``embedding``, ``attention`` (all layers), ``attention.<mechanism>`` (per mechanism, summing to
        ``attention``), ``mlp``, ``norms``, ``lm_head`` (0 when tied) and ``total``; ``embedding + attention +
        mlp + norms + lm_head == total == sum of p.numel() over model.parameters()``.
        """
        seen: set[int] = set()

        def count(*modules: nn.Module) -> int:
            n = 0
            for m in modules:
                for p in m.parameters():
                    if id(p) not in seen:
                        seen.add(id(p))
                        n += p.numel()
            return n

        counts: dict[str, int] = {"embedding": count(self.tok_emb)}
        per_mech: dict[str, int] = {}
        for block in self.blocks:
            per_mech[block.mechanism] = per_mech.get(block.mechanism, 0) + count(block.attn)
        counts["attention"] = sum(per_mech.values())
        counts.update({f"attention.{k}": v for k, v in per_mech.items()})
        counts["mlp"] = sum(count(b.mlp) for b in self.blocks)
        counts["norms"] = sum(count(b.attn_norm, b.mlp_norm) for b in self.blocks) + count(self.norm_f)
        counts["lm_head"] = count(self.lm_head)
        counts["total"] = sum(p.numel() for p in self.parameters())
        covered = counts["embedding"] + counts["attention"] + counts["mlp"] + counts["norms"] + counts["lm_head"]
        if covered != counts["total"]:  # a parameter outside every component: a new module was not counted
            raise RuntimeError(f"parameter_counts covers {covered} of {counts['total']} parameters")
        return counts

    def extra_repr(self) -> str:
        return f"mechanisms={self.mechanisms}"
