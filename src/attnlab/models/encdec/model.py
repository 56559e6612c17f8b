"""A pre-norm Transformer encoder-decoder (Vaswani et al. 2017, LLaMA-style blocks) with any registered attention.

Shape legend: B batch, S source length (``<= max_source_len``), T target length (``<= max_target_len``),
C ``d_model``, V ``vocab_size``.

    src (B, S) -> embedding -> n_enc x [ x + SelfAttn(RMSNorm(x)),  x + SwiGLU(RMSNorm(x)) ] -> RMSNorm -> memory
    tgt_in (B, T) -> embedding -> n_dec x [ x + CausalSelfAttn(RMSNorm(x)),  x + CrossAttn(RMSNorm(x), memory),
                                            x + SwiGLU(RMSNorm(x)) ] -> RMSNorm -> head (tied) -> logits (B, T, V)

Conventions
    * **Padding.** Sources are right-padded with ``config.pad_id``; ``src_pad_mask`` ``(B, S)`` is ``True`` at
      padding (``src == pad_id``). Non-causal encoder layers get a :func:`~attnlab.masks.key_padding` mask AND-ed
      with their own; causal ones need none (padding comes after every real position). Cross-attention gets the
      same key-padding mask, so no output depends on the padded positions or on the ids they hold. Targets are
      right-padded too; the decoder is causal, so real positions never see target padding.
    * **Positions.** RoPE inside the self-attention layers (source positions from 0, target positions from 0 or
      from the cache's ``seq_len``); cross-attention uses no positions.
    * **Cached decoding.** :meth:`EncoderDecoder.new_caches` projects the memory into every cross-attention
      layer's keys and values once and creates each decoder layer's own self-attention cache; :meth:`decode` with
      ``caches`` then consumes the next target tokens. Prefill and token-by-token decoding equal the full decoder.
    * The model returns logits only; the loss belongs to the task (:mod:`attnlab.tasks`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnlab.layers import registry
from attnlab.masks import Mask, key_padding
from attnlab.models.common import (RMSNorm, ResidualBlock, check_buildable, check_token_ids, count_parameters,
                                   gpt2_init_)
from attnlab.models.encdec.cache import EncDecCache
from attnlab.models.encdec.config import EncDecConfig, layer_is_causal

__all__ = ["EncoderDecoder"]


class _Stack(nn.Module):
    """A container for one side's residual blocks and final norm (parameters ``encoder.*`` / ``decoder.*``)."""

    def __init__(self, blocks: list[ResidualBlock], norm: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm


class EncoderDecoder(nn.Module):
    """Encoder-decoder for translation; see the module docstring. Build with ``EncoderDecoder(config)`` or
    ``config.build()``."""

    def __init__(self, config: EncDecConfig) -> None:
        super().__init__()
        check_buildable(config, EncDecConfig)
        self.config = config
        C, F, eps, p = config.d_model, config.resolved_ffn_hidden, config.norm_eps, config.dropout
        enc, dec = config.encoder_stack, config.decoder_stack
        self.encoder_mechanisms: list[str] = list(enc.mechanisms)
        self.decoder_mechanisms: list[str] = list(dec.mechanisms)
        # which encoder layers need the key-padding mask: the non-causal ones (the config refused those that
        # cannot take a per-call mask)
        self._encoder_masked = [not layer_is_causal(name, enc.config(i)) for i, name in enumerate(enc.mechanisms)]
        self.tok_emb = nn.Embedding(config.vocab_size, C)
        self.drop = nn.Dropout(p)
        self.encoder = _Stack(
            [ResidualBlock(d_model=C, attn=enc.config(i).build(), ffn_hidden=F, dropout=p, norm_eps=eps, mechanism=name)
             for i, name in enumerate(enc.mechanisms)],
            RMSNorm(C, eps=eps),
        )
        self.decoder = _Stack(
            [ResidualBlock(d_model=C, attn=dec.config(i).build(), ffn_hidden=F, dropout=p, norm_eps=eps,
                           cross=config.cross_config.build(), mechanism=name)
             for i, name in enumerate(dec.mechanisms)],
            RMSNorm(C, eps=eps),
        )
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation (:func:`attnlab.models.common.gpt2_init_`), the residual projections scaled by the
        depth of their own stack."""
        for stack in (self.encoder, self.decoder):
            gpt2_init_(stack, list(stack.blocks), d_model=self.config.d_model, embeddings=[])
        gpt2_init_(self.lm_head, [], d_model=self.config.d_model, embeddings=[self.tok_emb])

    # ------------------------------------------------------------------------------------------- validation
    def _check_ids(self, arg: str, ids: object, max_len: int, max_name: str, offset: int = 0) -> Tensor:
        V = self.config.vocab_size
        ids = check_token_ids(arg, ids, V, device=self.tok_emb.weight.device, length="L")  # type: ignore[arg-type]
        L = ids.shape[1]
        if offset + L > max_len:
            where = f"length {L}" if offset == 0 else f"cached {offset} + new {L} = {offset + L} positions"
            raise ValueError(f"{arg} has {where}, more than {max_name}={max_len}")
        return ids

    def _check_pad_mask(self, src_pad_mask: object, B: int, S: int, *, right: bool) -> Tensor | None:
        if src_pad_mask is None:
            return None
        if not isinstance(src_pad_mask, Tensor) or src_pad_mask.dtype != torch.bool \
                or tuple(src_pad_mask.shape) != (B, S):
            got = (f"{src_pad_mask.dtype} {tuple(src_pad_mask.shape)}" if isinstance(src_pad_mask, Tensor)
                   else type(src_pad_mask).__name__)
            raise ValueError(f"src_pad_mask must be a torch.bool tensor of shape (B={B}, S={S}), True at padding, "
                             f"got {got}")
        if src_pad_mask.device != self.tok_emb.weight.device:
            raise ValueError(f"src_pad_mask is on {src_pad_mask.device} but the model is on "
                             f"{self.tok_emb.weight.device}")
        if right and S > 1 and bool((src_pad_mask[:, :-1] & ~src_pad_mask[:, 1:]).any()):
            rows = torch.nonzero((src_pad_mask[:, :-1] & ~src_pad_mask[:, 1:]).any(1)).flatten().tolist()
            raise ValueError(
                f"src_pad_mask must mark right padding (real tokens first, then padding), but rows {rows} have a real "
                f"token after padding (is pad_id={self.config.pad_id} used inside a sentence?)"
            )
        return src_pad_mask

    def _check_memory(self, memory: object, B: int) -> Tensor:
        w = self.tok_emb.weight
        C = self.config.d_model
        if not isinstance(memory, Tensor) or memory.ndim != 3 or memory.shape[0] != B or memory.shape[2] != C \
                or memory.shape[1] < 1:
            got = tuple(memory.shape) if isinstance(memory, Tensor) else type(memory).__name__
            raise ValueError(f"memory must be the encoder output of shape (B={B}, S >= 1, d_model={C}), got {got}")
        if memory.dtype != w.dtype or memory.device != w.device:
            raise ValueError(f"memory must have the model's dtype {w.dtype} and device {w.device}, got {memory.dtype} "
                             f"on {memory.device}")
        if memory.shape[1] > self.config.max_source_len:
            raise ValueError(f"memory has S={memory.shape[1]} positions, more than "
                             f"max_source_len={self.config.max_source_len}")
        return memory

    # ---------------------------------------------------------------------------------------------- encoder
    def padding_mask(self, src: Tensor) -> Tensor:
        """``src == pad_id``: ``(B, S)`` bool, ``True`` at padding."""
        return src == self.config.pad_id

    def encode(self, src: Tensor, src_pad_mask: Tensor | None = None) -> Tensor:
        """The encoder output ``memory`` ``(B, S, C)`` of right-padded source ids ``src`` ``(B, S)``.

        Args:
            src: ``torch.long`` ids in ``[0, vocab_size)``, ``S <= max_source_len``.
            src_pad_mask: ``(B, S)`` bool, ``True`` at padding; ``None`` means :meth:`padding_mask` (``src ==
                pad_id``). Must be a right padding. Rows at padded positions of ``memory`` are not meaningful.
        """
        cfg = self.config
        src = self._check_ids("src", src, cfg.max_source_len, "max_source_len")
        B, S = src.shape
        pad = self.padding_mask(src) if src_pad_mask is None else src_pad_mask
        pad = self._check_pad_mask(pad, B, S, right=True)
        kp = key_padding(~pad) if pad is not None and bool(pad.any()) else None
        x = self.drop(self.tok_emb(src))  # (B, S, C)
        for i, block in enumerate(self.encoder.blocks):
            if kp is not None and self._encoder_masked[i]:
                own: Mask | None = block.attn.mask
                x = block(x, attn_kwargs={"mask": kp if own is None else own & kp})  # (B, S, C)
            else:
                x = block(x)  # (B, S, C)
        return self.encoder.norm(x)  # (B, S, C)

    # ---------------------------------------------------------------------------------------------- decoder
    def decode(self, tgt_in: Tensor, memory: Tensor | None, src_pad_mask: Tensor | None,
               caches: EncDecCache | None = None) -> Tensor:
        """Next-token logits ``(B, T, V)`` of the decoder inputs ``tgt_in`` ``(B, T)`` (``[bos] y``, right-padded).

        Args:
            tgt_in: ``torch.long`` ids; the cached length plus ``T`` may not exceed ``max_target_len``.
            memory: :meth:`encode`'s output ``(B, S, C)``. With ``caches`` it may be ``None`` (the caches hold the
                source's projected keys and values); if given it must be the caches' own ``memory``.
            src_pad_mask: ``(B, S)`` bool, ``True`` at padded source positions, or ``None`` when no source position
                is padding. With ``caches``: ``None`` or the caches' own mask (set by :meth:`new_caches`).
            caches: from :meth:`new_caches`; ``tgt_in`` then continues the cached target (prefill: many tokens;
                decode: one) and the caches are updated in place.
        """
        cfg = self.config
        offset = 0
        if caches is not None:
            if not isinstance(caches, EncDecCache):
                raise ValueError(f"caches must be an EncDecCache from new_caches(), got {type(caches).__name__}")
            if len(caches.self_caches) != cfg.n_decoder_layers:
                raise ValueError(f"caches hold {len(caches.self_caches)} layers, the decoder has "
                                 f"n_decoder_layers={cfg.n_decoder_layers}")
            offset = caches.seq_len
        tgt_in = self._check_ids("tgt_in", tgt_in, cfg.max_target_len, "max_target_len", offset)
        B = tgt_in.shape[0]
        if caches is not None:
            if caches.batch_size != B:
                raise ValueError(f"tgt_in has B={B} rows but the caches hold {caches.batch_size}")
            if memory is not None and memory is not caches.memory:
                raise ValueError("memory must be None or the caches' own memory (caches.memory): the caches hold the "
                                 "keys and values projected from it")
            if src_pad_mask is not None and src_pad_mask is not caches.src_pad_mask:
                raise ValueError("src_pad_mask must be None or the caches' own mask (caches.src_pad_mask)")
            cross_mask = caches.cross_mask
        else:
            if memory is None:
                raise ValueError("memory is None: pass the encoder output (B, S, d_model), or caches from new_caches()")
            memory = self._check_memory(memory, B)
            pad = self._check_pad_mask(src_pad_mask, B, memory.shape[1], right=False)
            cross_mask = key_padding(~pad) if pad is not None else None
        x = self.drop(self.tok_emb(tgt_in))  # (B, T, C)
        for i, block in enumerate(self.decoder.blocks):
            if caches is None:
                x = block(x, cross_kwargs={"context": memory, "mask": cross_mask})  # (B, T, C)
            else:
                x = block(x, caches.self_caches[i],
                          cross_kwargs={"context_kv": caches.cross_kv[i], "mask": cross_mask})  # (B, T, C)
        return self.lm_head(self.decoder.norm(x))  # (B, T, V)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Logits ``(B, T, V)`` of ``tgt_in`` given ``src`` (padding: ``src == pad_id``); teacher forcing."""
        if isinstance(src, Tensor) and isinstance(tgt_in, Tensor) and src.ndim == tgt_in.ndim == 2 \
                and src.shape[0] != tgt_in.shape[0]:
            raise ValueError(f"src and tgt_in must have the same batch size, got {src.shape[0]} and {tgt_in.shape[0]}")
        pad = self.padding_mask(src) if isinstance(src, Tensor) else None
        memory = self.encode(src, pad)
        return self.decode(tgt_in, memory, pad if bool(pad.any()) else None)  # type: ignore[union-attr]

    # -------------------------------------------------------------------------------------------- caches
    def new_caches(self, memory: Tensor, src_pad_mask: Tensor | None) -> EncDecCache:
        """Decoding state for the sources behind ``memory`` ``(B, S, C)``: each decoder layer's empty self-attention
        cache, and every cross-attention layer's keys and values of ``memory``, projected here, once.

        ``src_pad_mask`` as for :meth:`decode` (``None``: no padding). Device and dtype are the memory's.
        """
        if not isinstance(memory, Tensor) or memory.ndim != 3:
            got = tuple(memory.shape) if isinstance(memory, Tensor) else type(memory).__name__
            raise ValueError(f"memory must be the encoder output of shape (B, S, d_model={self.config.d_model}), "
                             f"got {got}")
        B = memory.shape[0]
        memory = self._check_memory(memory, B)
        pad = self._check_pad_mask(src_pad_mask, B, memory.shape[1], right=False)
        self_caches = []
        for i, block in enumerate(self.decoder.blocks):
            spec = registry.get(block.mechanism)
            if spec.cache is None or not hasattr(block.attn, "new_cache"):
                raise ValueError(
                    f"decoder layer {i + 1} uses mechanism {block.mechanism!r}, which has no decoding cache; decode "
                    "without caches (use_cache=False)"
                )
            self_caches.append(block.attn.new_cache(B, device=memory.device, dtype=memory.dtype))
        cross_kv = [block.cross.project_context(memory) for block in self.decoder.blocks]
        return EncDecCache(self_caches=self_caches, cross_kv=cross_kv, src_pad_mask=pad, memory=memory)

    # ------------------------------------------------------------------------------------------ counting
    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component, shared (tied) tensors counted once.

        Keys: ``embedding`` (the shared token embedding); ``encoder.attention``, ``encoder.attention.<mechanism>``,
        ``encoder.mlp``, ``encoder.norms``, ``encoder.total``; ``decoder.attention``,
        ``decoder.attention.<mechanism>``, ``decoder.cross_attention``, ``decoder.mlp``, ``decoder.norms``,
        ``decoder.total``; ``lm_head`` (0 when tied) and ``total``, with
        ``embedding + encoder.total + decoder.total + lm_head == total == sum of p.numel()``.
        """
        counts: dict[str, int] = {}
        for side, stack in (("encoder", self.encoder), ("decoder", self.decoder)):
            part = count_parameters(stack, embedding=[], blocks=list(stack.blocks), extra_norms=[stack.norm],
                                    head=None, prefix=f"{side}.")  # type: ignore[arg-type]
            counts.update({k: v for k, v in part.items() if k not in (f"{side}.embedding", f"{side}.lm_head")})
        emb = self.tok_emb.weight.numel()
        head = 0 if self.lm_head.weight is self.tok_emb.weight else self.lm_head.weight.numel()
        total = sum(p.numel() for p in self.parameters())
        if emb + counts["encoder.total"] + counts["decoder.total"] + head != total:
            raise RuntimeError("parameter counts do not add up to the model's total")
        return {"embedding": emb, **counts, "lm_head": head, "total": total}

    def extra_repr(self) -> str:
        return f"encoder={self.encoder_mechanisms}, decoder={self.decoder_mechanisms}"


EncDecConfig.model_class = EncoderDecoder
