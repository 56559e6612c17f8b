"""The fixed stream of the ``decon_rndembqk`` / ``decon_fixedseqqk`` variants (spec 3.5-3.6, 3.9): one extra row
run through the model's own blocks, whose state entering block ``l`` gives that layer its fixed queries and keys.

Shape legend: L stream length (``<= context_len``), C ``d_model``.

    x^(1) = eps          (stream "random": a frozen, persistent buffer ``eps`` (context_len, C) ~ N(0, sigma^2))
    x^(1) = Emb(t_s)     (stream "text": a frozen, persistent id buffer ``tokens`` (context_len,), the model's Emb)
    x^(l+1) = Block_l(x^(l))                                      the same blocks and weights as the main pass

In the stream's row every layer gets ``MixerInputs(fixed_hidden=x^(l), token_emb=x^(1), norm=block.attn_norm)``, so
a fixed-map layer is Standard self-attention there (spec 3.5). Both buffers are in the state dict (checkpoints)
and never in ``parameters()``, so the mixers keep Standard's parameter count (spec 9, oracle 2). ``t_s`` starts
as ``context_len`` ids drawn from ``stream_seed`` (a placeholder); the paper uses a chunk of real text (spec 3.6),
which :meth:`attnlab.models.lm.LM.set_fixed_tokens` installs (the language-modelling task does so when it builds
a fresh model: a window of its training split chosen by ``stream_seed``, :func:`attnlab.tasks.lm.fixed_token_window`).

Paper: Xue, Moosavi and Aletras, "Deconstructing Attention" (arXiv:2510.11602v1), section 3.4, Eq. 9-12; running the
stream once per forward as one row through the blocks is the spec's reconstruction from the paper's Tbl. 6 and 8.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

from attnlab.layers.deconstructed._common import MixerInputs
from attnlab.layers.deconstructed.fixed_map import FixedMapConfig, standalone_eps

__all__ = ["FixedStream", "layer_mixer_inputs", "block_attn_kwargs"]


def layer_mixer_inputs(layer: nn.Module) -> tuple[str, ...]:
    """What ``layer`` reads from :class:`MixerInputs` (its class attribute ``mixer_inputs``; empty for most)."""
    return tuple(getattr(type(layer), "mixer_inputs", ()))


def block_attn_kwargs(block: nn.Module, *, token_emb: Tensor | None, fixed_hidden: Tensor | None
                      ) -> dict[str, Any] | None:
    """``attn_kwargs`` for a :class:`~attnlab.models.common.ResidualBlock` whose layer needs :class:`MixerInputs`
    (``None`` for a layer that needs nothing)."""
    needs = layer_mixer_inputs(block.attn)
    if not needs:
        return None
    return {"inputs": MixerInputs(token_emb=token_emb if "token_emb" in needs else None,
                                  fixed_hidden=fixed_hidden if "fixed_hidden" in needs else None,
                                  norm=block.attn_norm)}


class FixedStream(nn.Module):
    """The fixed stream of a model; see the module docstring. Build with :meth:`for_blocks`."""

    def __init__(self, config: FixedMapConfig, *, context_len: int, d_model: int, vocab_size: int) -> None:
        super().__init__()
        self.kind = config.stream
        self.grad = config.fixed_stream_grad
        self.context_len = context_len
        self.stream_seed = config.stream_seed  # also chooses the window of training text for t_s (tasks.lm)
        if self.kind == "random":
            eps = standalone_eps(context_len, d_model, sigma=config.sigma, seed=config.stream_seed,
                                 dtype=torch.get_default_dtype())  # (L, C), on the CPU
            self.register_buffer("eps", eps, persistent=True)
        else:
            g = torch.Generator().manual_seed(config.stream_seed)
            ids = torch.randint(vocab_size, (context_len,), generator=g, device="cpu")  # (L,)
            self.register_buffer("tokens", ids, persistent=True)

    @staticmethod
    def for_blocks(blocks: nn.ModuleList, *, context_len: int, d_model: int, vocab_size: int) -> "FixedStream | None":
        """The stream the blocks' fixed-map layers need (``None`` when none does). Every such layer must agree on
        ``stream``, ``sigma``, ``stream_seed`` and ``fixed_stream_grad``: one model runs one fixed stream."""
        configs = [(i, b.attn.config) for i, b in enumerate(blocks) if "fixed_hidden" in layer_mixer_inputs(b.attn)]
        if not configs:
            return None
        key = lambda c: (c.stream, c.sigma, c.stream_seed, c.fixed_stream_grad)  # noqa: E731
        first_i, first = configs[0]
        for i, c in configs[1:]:
            if key(c) != key(first):
                raise ValueError(
                    f"layers {first_i + 1} and {i + 1} need different fixed streams (stream, sigma, stream_seed, "
                    f"fixed_stream_grad) = {key(first)} vs {key(c)}; one model runs one fixed stream, so use one of "
                    "decon_rndembqk / decon_fixedseqqk with the same options")
        return FixedStream(first, context_len=context_len, d_model=d_model, vocab_size=vocab_size)

    def start(self, tok_emb: nn.Embedding, L: int) -> Tensor:
        """``x^(1)`` ``(L, C)``."""
        if self.kind == "random":
            return self.eps[:L].to(tok_emb.weight.dtype)
        return tok_emb(self.tokens[:L])

    def hidden_states(self, blocks: nn.ModuleList, tok_emb: nn.Embedding, L: int) -> list[Tensor | None]:
        """``[x^(1), ..., x^(n)]``, each ``(L, C)``: the state entering each block (with gradients unless
        ``fixed_stream_grad=False``); ``None`` after the last block with a fixed-map layer (not computed)."""
        last = max(i for i, b in enumerate(blocks) if "fixed_hidden" in layer_mixer_inputs(b.attn))
        states: list[Tensor | None] = [None] * len(blocks)
        with torch.no_grad() if not self.grad else contextlib.nullcontext():
            x1 = self.start(tok_emb, L)  # (L, C)
            x = x1[None]  # (1, L, C)
            for i, block in enumerate(blocks):
                states[i] = x[0]
                if i == last:
                    break
                x = block(x, None, attn_kwargs=block_attn_kwargs(block, token_emb=x1[None], fixed_hidden=x[0]))
        return states

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, context_len={self.context_len}, grad={self.grad}"
