"""Autoregressive text generation with each mechanism's decoding cache.

``generate(model, prompt_ids, max_new_tokens, temperature=..., top_k=..., seed=..., use_cache=True)``.

* ``use_cache=True`` prefills ``model.new_caches(...)`` (a KV cache, a sliding-window KV cache, CASTLE's UQ-KV
  state or a linear-attention recurrent state: whatever each layer's mechanism keeps) with the prompt and then
  feeds one token at a time.
* ``use_cache=False`` recomputes the full forward over the context for every new token (the specification the
  cached path is tested against, token for token and logit for logit).

Context policy (the same for both paths, so they stay equal past the model's ``context_len``): the context is
``tokens[start:]``; when it would grow beyond ``context_len`` the start jumps forward so that the last
``keep = 3/4 * context_len`` tokens remain, and the cached path re-prefills fresh caches with them. (Sliding the
window by one token per step would force a full re-prefill at every step for position-dependent caches.)

Vision-language prompts: ``token_types=`` (:class:`attnlab.masks.TokenTypes`, typing the prompt's positions; every
generated token is text) goes to every model call. Under semantics P the cached path (masked prefill, then cached
causal decoding) equals recomputing the whole sequence under the P mask; semantics R with ``kind="f"``/``"v2t"``
needs ``use_cache=False`` (:mod:`attnlab.models.lm.token_types`). Positions must stay absolute, so the prompt plus
``max_new_tokens`` must fit ``context_len`` (no context restart).

Sampling: ``temperature == 0`` is greedy (argmax). Otherwise logits are divided by ``temperature``, cut to the
``top_k`` largest if given, then to the nucleus if ``top_p < 1`` (Holtzman et al. 2020: the most likely tokens
whose probabilities, in decreasing order, first reach a total of ``top_p``; the most likely token always stays),
and sampled on the CPU from a ``torch.Generator`` seeded with ``seed``, so a seed
gives the same text on every device (for the same logits).
"""

from __future__ import annotations

from typing import Sequence, TypedDict

import torch
from torch import Tensor, nn
from typing_extensions import Unpack

from attnlab.masks.vlm import TokenTypes
from attnlab.models.lm.token_types import check_generate_token_types

__all__ = ["generate", "generate_with_logits", "sample_next", "GenerateOptions"]


class GenerateOptions(TypedDict, total=False):
    """The keyword options of :func:`generate` and :func:`generate_with_logits` (see :func:`generate`)."""

    temperature: float
    top_k: int | None
    top_p: float
    seed: int | None
    use_cache: bool
    context_len: int | None
    token_types: TokenTypes | None


def sample_next(logits: Tensor, *, temperature: float, top_k: int | None, generator: torch.Generator,
                top_p: float = 1.0) -> Tensor:
    """Next token ids ``(B, 1)`` from last-position logits ``(B, V)`` (module docstring: greedy, top-k, top-p)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.double().cpu() / temperature  # (B, V)
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        p, order = torch.softmax(logits, dim=-1).sort(dim=-1, descending=True)  # (B, V) each
        before = p.cumsum(-1) - p  # (B, V): the mass of the more likely tokens
        drop = before >= top_p  # (B, V): the nucleus is complete without this token (the first is always kept)
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator)  # (B, 1)


def _model_context_len(model: nn.Module, context_len: int | None) -> int:
    if context_len is not None:
        return context_len
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "context_len"):
        raise ValueError("pass context_len=: the model has no config.context_len")
    return int(cfg.context_len)


def _as_batch(prompt_ids: Tensor | Sequence[int], device: torch.device) -> tuple[Tensor, bool]:
    if not isinstance(prompt_ids, Tensor):
        prompt_ids = torch.tensor(list(prompt_ids), dtype=torch.long)
    squeeze = prompt_ids.ndim == 1
    idx = prompt_ids[None] if squeeze else prompt_ids
    if idx.ndim != 2 or idx.size(1) < 1:
        raise ValueError(f"prompt_ids must be (T,) or (B, T) with T >= 1, got shape {tuple(prompt_ids.shape)}")
    return idx.to(device=device, dtype=torch.long), squeeze


@torch.no_grad()
def generate_with_logits(
    model: nn.Module,
    prompt_ids: Tensor | Sequence[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    seed: int | None = None,
    use_cache: bool = True,
    context_len: int | None = None,
    token_types: TokenTypes | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """Like :func:`generate`, and also the next-token logits ``(B, V)`` the model gave at each step."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be a number in (0, 1] (1 = no nucleus cut), got {top_p!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise ValueError(f"seed must be an int in [0, 2**63) or None, got {seed!r}")
    block = _model_context_len(model, context_len)
    keep = max(1, (3 * block) // 4)
    param = next(model.parameters())
    idx, squeeze = _as_batch(prompt_ids, param.device)
    B = idx.size(0)
    if token_types is not None:
        check_generate_token_types(token_types, prompt_len=idx.size(1), max_new_tokens=max_new_tokens,
                                   context_len=block, use_cache=use_cache)
    kw = {} if token_types is None else {"token_types": token_types}
    gen = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))
    was_training = model.training
    model.eval()
    step_logits: list[Tensor] = []
    try:
        start = 0 if idx.size(1) <= block else idx.size(1) - keep
        caches = None
        for i in range(max_new_tokens):
            L = idx.size(1)
            restart = L - start > block
            if restart:
                start = L - keep
            if not use_cache:
                logits = model(idx[:, start:], **kw)[:, -1]  # (B, V)
            elif caches is None or restart:
                caches = model.new_caches(B, device=param.device, dtype=param.dtype)
                logits = model(idx[:, start:], caches=caches, **kw)[:, -1]  # prefill: (B, V)
            else:
                logits = model(idx[:, -1:], caches=caches, **kw)[:, -1]  # one step: (B, V)
            step_logits.append(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits)
            nxt = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=gen).to(idx.device)
            idx = torch.cat([idx, nxt], dim=1)  # (B, L + 1)
    finally:
        model.train(was_training)
    return (idx[0] if squeeze else idx), step_logits


def generate(
    model: nn.Module, prompt_ids: Tensor | Sequence[int], max_new_tokens: int, **options: Unpack[GenerateOptions]
) -> Tensor:
    """Prompt followed by ``max_new_tokens`` generated ids: ``(T + N,)`` for a ``(T,)`` prompt, ``(B, T + N)`` for
    a batch.

    Args:
        model: an :class:`attnlab.models.LM` (or any model with ``forward(idx, caches=...) -> logits``,
            ``new_caches`` and ``config.context_len``).
        prompt_ids: token ids, at least one.
        temperature: 0 for greedy decoding, else the softmax temperature.
        top_k: sample among the ``top_k`` most likely tokens only.
        top_p: nucleus sampling: among the most likely tokens whose probabilities first sum to ``top_p`` (in
            ``(0, 1]``; 1 keeps every token).
        seed: seeds the sampler (``None``: a random seed).
        use_cache: decode with the layers' caches (``False``: full recomputation each step).
        context_len: the context limit (default ``model.config.context_len``).
        token_types: the prompt's visual/text types and future-aware mask, passed to every model call (module
            docstring).
    """
    out, _ = generate_with_logits(model, prompt_ids, max_new_tokens, **options)
    return out
