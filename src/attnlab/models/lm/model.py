"""A LLaMA-style decoder-only language model with any registered causal attention, chosen per layer.

Shape legend: B batch, T sequence length (``<= context_len``), C ``d_model``, V ``vocab_size``, F SwiGLU hidden.

    idx (B, T) -> token embedding (B, T, C) -> n_layers x [ x + Attn(RMSNorm(x)),  x + SwiGLU(RMSNorm(x)) ]
        -> RMSNorm -> LM head (tied to the embedding) -> logits (B, T, V)

Positions come from RoPE inside each attention layer (``rope=True`` wherever the layer's config supports it);
there is no learned position embedding. A layer that needs more than its input (the deconstructed variants: class
attribute ``mixer_inputs``) gets it per call as ``inputs=MixerInputs(...)`` in the block's ``attn_kwargs``: the
token embeddings ``Emb(idx)`` and/or its state of the fixed stream (:mod:`attnlab.models.lm.fixed_stream`, built
only when some layer needs it). Cached decoding passes one :class:`~attnlab.cache.AttentionCache` per
layer (:meth:`LM.new_caches`); each layer reads its absolute positions from ``cache.seq_len``. The model returns
logits only: losses belong to the task that trains it (:mod:`attnlab.tasks.lm`).

Vision-language masks: ``forward(..., token_types=TokenTypes(...))`` runs every layer under a future-aware mask
over per-position token types for that call (:mod:`attnlab.models.lm.token_types`).

Hybrid-SKIP (spec 4.1): ``with model.skipping("variant"):`` evaluates the model with chosen layers removed (whole
blocks, or ``part="mixer"`` for the mixers only), changing nothing in the model; see :mod:`attnlab.models.lm.skip`.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import Tensor, nn

from attnlab.cache import AttentionCache
from attnlab.layers import registry
from attnlab.models.common import RMSNorm, ResidualBlock, check_buildable, check_token_ids, gpt2_init_
from attnlab.models.lm.config import LMConfig
from attnlab.models.lm.fixed_stream import FixedStream, block_attn_kwargs, layer_mixer_inputs
from attnlab.models.lm.skip import SKIP_PARTS, MixerSkipped, SkipPart, resolve_skip_layers
from attnlab.models.lm.token_types import CallTypes, check_token_types, with_types
from attnlab.masks import TokenTypes

__all__ = ["LM"]


class LM(nn.Module):
    """Decoder-only LM; see the module docstring. Build with ``LM(config)`` or ``config.build()``."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        check_buildable(config, LMConfig)
        self.config = config
        stack = config.stack
        self.mechanisms: list[str] = list(stack.mechanisms)
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            ResidualBlock(d_model=config.d_model, attn=stack.config(i).build(), ffn_hidden=config.resolved_ffn_hidden,
                          dropout=config.dropout, norm_eps=config.norm_eps, mechanism=name)
            for i, name in enumerate(self.mechanisms)
        )
        self.fixed_stream = FixedStream.for_blocks(self.blocks, context_len=config.context_len, d_model=config.d_model,
                                                   vocab_size=config.vocab_size)
        self._token_emb_layers = [i for i, b in enumerate(self.blocks) if "token_emb" in layer_mixer_inputs(b.attn)]
        self.norm_f = RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self._skip: tuple[frozenset[int], str] = (frozenset(), "block")  # 0-based layers removed by skipping()
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation (:func:`attnlab.models.common.gpt2_init_`)."""
        gpt2_init_(self, list(self.blocks), d_model=self.config.d_model, embeddings=[self.tok_emb])

    # ------------------------------------------------------------------------------------------- forward
    def _validate(self, idx: object, inputs_embeds: object, caches: object,
                  token_types: object = None) -> CallTypes | None:
        cfg = self.config
        if (idx is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of idx (B, T) token ids and inputs_embeds (B, T, d_model)")
        if idx is not None:
            check_token_ids("idx", idx, cfg.vocab_size, device=self.tok_emb.weight.device)  # type: ignore[arg-type]
            T = idx.shape[1]
        else:
            w = self.tok_emb.weight
            if not isinstance(inputs_embeds, Tensor) or inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != cfg.d_model \
                    or inputs_embeds.shape[0] < 1 or inputs_embeds.shape[1] < 1:
                got = tuple(inputs_embeds.shape) if isinstance(inputs_embeds, Tensor) else type(inputs_embeds).__name__
                raise ValueError(f"inputs_embeds must have shape (B, T, d_model={cfg.d_model}), got {got}")
            if inputs_embeds.dtype != w.dtype or inputs_embeds.device != w.device:
                raise ValueError(f"inputs_embeds must have the model's dtype {w.dtype} and device {w.device}, got "
                                 f"{inputs_embeds.dtype} on {inputs_embeds.device}")
            T = inputs_embeds.shape[1]
        offset = 0
        if caches is not None:
            if not isinstance(caches, (list, tuple)) or len(caches) != cfg.n_layers:
                got = len(caches) if isinstance(caches, (list, tuple)) else type(caches).__name__
                raise ValueError(f"caches must be a list of n_layers={cfg.n_layers} caches (new_caches()), got {got}")
            lens = {c.seq_len for c in caches}
            if len(lens) != 1:
                raise ValueError(f"caches disagree on seq_len ({sorted(lens)}); use one new_caches() list per sequence")
            offset = lens.pop()
        if offset + T > cfg.context_len:
            where = f"T={T}" if offset == 0 else f"cached {offset} + new T={T} = {offset + T} tokens"
            raise ValueError(
                f"{where} exceeds context_len={cfg.context_len}; crop the input to the last {cfg.context_len} tokens"
                + (" (and re-prefill fresh caches)" if offset else "")
            )
        if token_types is None:
            return None
        B = (idx if idx is not None else inputs_embeds).shape[0]  # type: ignore[union-attr]
        return check_token_types(token_types, blocks=self.blocks, mechanisms=self.mechanisms, batch_size=B,
                                 offset=offset, T=T, cached=caches is not None)

    def embed(self, idx: Tensor) -> Tensor:
        """Token embeddings ``(B, T, C)`` of ``idx`` ``(B, T)`` (what ``inputs_embeds`` replaces)."""
        return self.tok_emb(idx)

    def forward(self, idx: Tensor | None = None, *, inputs_embeds: Tensor | None = None,
                caches: list[AttentionCache] | None = None, token_types: TokenTypes | None = None) -> Tensor:
        """Logits ``(B, T, V)`` of the next token at every position.

        Args:
            idx: token ids ``(B, T)``, ``torch.long``, values in ``[0, vocab_size)``, ``T <= context_len``.
            inputs_embeds: instead of ``idx``, the input embeddings ``(B, T, d_model)`` (e.g. to take gradients
                with respect to them: ``inputs_embeds = model.embed(idx).detach().requires_grad_()``).
            caches: per-layer decoding caches from :meth:`new_caches`; the input then continues the cached sequence
                (prefill: many tokens; decode: one) and the caches are updated in place. The cached length plus
                ``T`` may not exceed ``context_len``.
            token_types: per-position visual/text types and a future-aware mask (:class:`attnlab.masks.TokenTypes`)
                for this call only: causal softmax layers use the mask instead of their causal mask, layers that take
                ``is_visual=`` themselves (``future-light``) get the types; see :mod:`attnlab.models.lm.token_types`
                (layers, cached decoding, semantics P and R).
        """
        types = self._validate(idx, inputs_embeds, caches, token_types)
        if idx is None and self._token_emb_layers:
            i = self._token_emb_layers[0]
            raise ValueError(f"layer {i + 1} uses {self.blocks[i].mechanism!r}, whose queries and keys come from the "
                             "token embeddings Emb(idx): pass idx (token ids), not inputs_embeds")
        e = self.tok_emb(idx) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        x = self.drop(e)
        if self._skip[0]:
            if caches is not None:
                raise ValueError("cached decoding is not available while layers are skipped (LM.skipping); use the "
                                 "full forward")
            return self._forward_skipping(x, e, types)
        fixed = self._fixed_hidden(e.shape[1], caches)
        for i, block in enumerate(self.blocks):
            kw = with_types(block_attn_kwargs(block, token_emb=e, fixed_hidden=fixed[i] if fixed else None),
                            block.attn, types)
            x = block(x, caches[i] if caches is not None else None, attn_kwargs=kw)  # (B, T, C)
        return self.lm_head(self.norm_f(x))  # (B, T, V)

    # ---------------------------------------------------------------------------------------------- SKIP
    @contextlib.contextmanager
    def skipping(self, layers: str | Iterable[int], *, part: SkipPart = "block") -> Iterator[list[int]]:
        """Within the ``with`` block the model runs with ``layers`` removed (Hybrid-SKIP, spec 4.1).

        Args:
            layers: ``"variant"`` (every non-``"standard"`` layer), ``"odd"``, ``"even"``, ``"1,3"`` or a list of
                layer numbers counted from 1 (:func:`attnlab.models.lm.skip.resolve_skip_layers`).
            part: ``"block"`` removes whole residual blocks (identity on the residual stream); ``"mixer"`` removes
                only their attention/variant mixer and keeps the SwiGLU branch.

        Yields the removed layer numbers. Nothing in the model changes (no parameter, buffer or checkpoint); a
        fixed stream runs through the kept blocks only, and not at all when no kept layer reads it. Cached decoding
        is refused while skipping.

        Raises:
            ValueError: naming ``skip_layers`` or ``part``, before anything runs.
        """
        if part not in SKIP_PARTS:
            raise ValueError(f"part must be one of {SKIP_PARTS}, got {part!r}")
        numbers = resolve_skip_layers(layers, self.mechanisms)
        old = self._skip
        self._skip = (frozenset(i - 1 for i in numbers), part)
        try:
            yield numbers
        finally:
            self._skip = old

    def _forward_skipping(self, x: Tensor, e: Tensor, types: CallTypes | None) -> Tensor:
        skip, part = self._skip
        active: list[tuple[int, nn.Module]] = [
            (i, MixerSkipped(b) if i in skip else b) for i, b in enumerate(self.blocks) if i not in skip or part == "mixer"]
        fixed: list[Tensor | None] = [None] * len(self.blocks)
        if self.fixed_stream is not None and any("fixed_hidden" in layer_mixer_inputs(b.attn) for _, b in active):
            states = self.fixed_stream.hidden_states(nn.ModuleList(b for _, b in active), self.tok_emb, e.shape[1])
            for (i, _), st in zip(active, states):
                fixed[i] = st
        for i, block in active:
            kw = with_types(block_attn_kwargs(block, token_emb=e, fixed_hidden=fixed[i]), block.attn, types)
            x = block(x, None, attn_kwargs=kw)  # (B, T, C)
        return self.lm_head(self.norm_f(x))  # (B, T, V)

    def _fixed_hidden(self, T: int, caches: list[AttentionCache] | None) -> list[Tensor | None] | None:
        """Each layer's fixed-stream state ``(L, C)`` (``None`` without a fixed stream). Without caches ``L = T``
        (causality makes that the top-left block of the full stream); at a prefill (fresh caches) the whole
        ``context_len``, which the layers keep in their caches, so later decoding calls need no stream."""
        if self.fixed_stream is None or (caches is not None and caches[0].seq_len > 0):
            return None
        L = T if caches is None else self.config.context_len
        return self.fixed_stream.hidden_states(self.blocks, self.tok_emb, L)

    @torch.no_grad()
    def set_fixed_tokens(self, tokens: Tensor) -> None:
        """Install ``t_s`` ``(context_len,)`` (token ids, e.g. a chunk of the *training* split, spec 3.6) as the fixed
        sequence of a ``decon_fixedseqqk`` model (a frozen buffer, saved with checkpoints)."""
        fs = self.fixed_stream
        if fs is None or fs.kind != "text":
            raise ValueError("set_fixed_tokens needs a model with decon_fixedseqqk layers (a 'text' fixed stream)")
        L, V = self.config.context_len, self.config.vocab_size
        if not isinstance(tokens, Tensor) or tokens.dtype != torch.long or tuple(tokens.shape) != (L,):
            got = (tokens.dtype, tuple(tokens.shape)) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be a torch.long tensor of shape (context_len={L},), got {got}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= V:  # type: ignore[operator]
            raise ValueError(f"tokens must be in [0, vocab_size={V}), got min {int(tokens.min())} and max "
                             f"{int(tokens.max())}")
        fs.tokens.copy_(tokens)

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
        from attnlab.models.common import count_parameters

        return count_parameters(self, embedding=[self.tok_emb], blocks=list(self.blocks), extra_norms=[self.norm_f],
                                head=self.lm_head)

    def extra_repr(self) -> str:
        return f"mechanisms={self.mechanisms}"


LMConfig.model_class = LM
