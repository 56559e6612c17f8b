"""Checks of the light future-aware layer with visual tokens (spec ``future_mask.md`` 4.4-4.5, L1-L4), which the
generic checks cannot give it (they call layers without token types, where it is causal attention). Applied by the
config class a spec builds (never by name):

=======================  ==========================================================================================
``future-light``         with a visual layout (a text sink, an image, text, a second image on odd samples):
                         each backend vs the reference (outputs and gradients); text rows never move when later
                         inputs change, visual rows do; prefill + cached decoding equals a causal twin with the
                         same weights decoding on its own causal prefill, and the cached keys/values are the
                         causal ones; a left-padded sample equals the sample alone
=======================  ==========================================================================================
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from attnlab.layers.future_light import LightFutureAttention, LightFutureConfig
from attnlab.layers.mha import MultiHeadAttention, MultiHeadAttentionConfig
from attnlab.layers.registry import MechanismSpec
from attnlab.verify.core import (CheckResult, VerifyOptions, build_layer, check, max_abs_error, result,
                                 scaled_tolerance, skipped)

__all__ = ["visual_layout", "causal_twin"]

TOL = 1e-9  # float64: backends and decoding differ by summation order only
TOL_TEXT = 1e-12  # a text row's change when later inputs change: exact zeros
MIN_VISUAL = 1e-6  # a visual row must move at least this much when later inputs change
NAME = "future-light"


def visual_layout(batch_size: int, seq_len: int) -> Tensor:
    """``is_visual`` ``(B, T)``: position 0 is text (the sink); sample ``b`` has an image of ``n = max(1, (T - 2)
    // 3)`` tokens from position ``1 + b % 2``, and odd samples a second one ending before the last position."""
    iv = torch.zeros(batch_size, seq_len, dtype=torch.bool)
    n = max(1, (seq_len - 2) // 3)
    for b in range(batch_size):
        iv[b, 1 + b % 2: 1 + b % 2 + n] = True
        if b % 2 and seq_len - 1 - n > 2 + 2 * n:
            iv[b, seq_len - 1 - n: seq_len - 1] = True
    return iv


def causal_twin(layer: LightFutureAttention) -> MultiHeadAttention:
    """A causal :class:`MultiHeadAttention` with the layer's geometry, RoPE and weights."""
    c = layer.config
    twin = MultiHeadAttentionConfig(d_model=c.d_model, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads, head_dim=c.head_dim,
                                    rope=c.rope, rope_base=c.rope_base, bias=c.bias, impl=layer.impl).build()
    twin.load_state_dict(layer.state_dict())
    return twin.to(layer.in_proj.weight)


def _x(opts: VerifyOptions, B: int | None = None, T: int | None = None, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(opts.seed + 7000 + seed)
    x = torch.randn(B or opts.batch_size, T or opts.seq_len, opts.d_model, generator=g, dtype=torch.float64)
    return x.to(device=opts.device, dtype=opts.dtype)


def _out_and_grads(layer: LightFutureAttention, x: Tensor, iv: Tensor) -> dict[str, Tensor]:
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y = layer(x, is_visual=iv)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).view_as(y)).sum().backward()
    return {"output": y.detach(), "grad[x]": x.grad, **{f"grad[{n}]": p.grad for n, p in layer.named_parameters()}}


def _future_moves(layer: LightFutureAttention, x: Tensor, iv: Tensor, opts: VerifyOptions) -> tuple[float, float]:
    """Largest change of text rows ``<= t`` and of visual rows ``<= t`` when every input after ``t`` changes."""
    text, visual = 0.0, 0.0
    g = torch.Generator().manual_seed(opts.seed + 11)
    with torch.no_grad():
        y = layer(x, is_visual=iv)
        for t in range(x.shape[1] - 1):
            x2 = x.clone()
            x2[:, t + 1:] = 3.0 * torch.randn(x2[:, t + 1:].shape, generator=g, dtype=torch.float64).to(x)
            d = (layer(x2, is_visual=iv) - y)[:, : t + 1].abs().amax(-1)  # (B, t + 1)
            rows = iv[:, : t + 1].to(d.device)
            text = max(text, float(d[~rows].max()) if bool((~rows).any()) else 0.0)
            visual = max(visual, float(d[rows].max()) if bool(rows.any()) else 0.0)
    return text, visual


@check(NAME, "light future-aware prefill with visual tokens: backends, text rows causal, causal decoding, padding",
       applies=lambda s: s.make_config is LightFutureConfig)
def _future_light(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    B, T = opts.batch_size, opts.seq_len
    if T < 4:
        return [skipped(NAME, spec, "all", f"seq_len={T} leaves no room for a sink, an image and a later key "
                                           "(needs seq_len >= 4)")]
    iv, x, out = visual_layout(B, T), _x(opts), []
    base = build_layer(spec, opts, impl=spec.backends[0])
    ref = _out_and_grads(base, x, iv)
    for impl in spec.backends[1:]:
        layer = copy.deepcopy(base)
        layer.impl = impl
        got = _out_and_grads(layer, x, iv)
        errs = {k: max_abs_error(got[k], ref[k]) for k in ref}
        w = max(errs, key=lambda k: errs[k])
        out.append(result(NAME, spec, f"{impl} vs reference (visual)", errs[w], scaled_tolerance(opts.dtype, TOL),
                          detail=f"worst: {w}"))
    for impl in spec.backends:
        layer = build_layer(spec, opts, impl=impl)
        text, visual = _future_moves(layer, x, iv, opts)
        out.append(result(NAME, spec, f"{impl}: text rows ignore later inputs", text,
                          scaled_tolerance(opts.dtype, TOL_TEXT)))
        out.append(result(NAME, spec, f"{impl}: visual rows see later inputs", visual, MIN_VISUAL, at_least=True))
        twin = causal_twin(layer)
        steps = _x(opts, T=3, seed=1)
        with torch.no_grad():
            cache, twin_cache = layer.new_cache(B), twin.new_cache(B)
            layer(x, cache=cache, is_visual=iv)
            twin(x, cache=twin_cache)
            got = torch.cat([layer(steps[:, i: i + 1], cache=cache) for i in range(3)], 1)
            want = torch.cat([twin(steps[:, i: i + 1], cache=twin_cache) for i in range(3)], 1)
            probe = torch.zeros(B, layer.n_kv_heads, 1, layer.head_dim, dtype=opts.dtype, device=opts.device)
            kv = [c.update(probe, probe) for c in (cache, twin_cache)]
            err = max(max_abs_error(got, want), max_abs_error(kv[0][0], kv[1][0]), max_abs_error(kv[0][1], kv[1][1]))
        out.append(result(NAME, spec, f"{impl}: decode after prefill == causal decode, causal cache", err,
                          scaled_tolerance(opts.dtype, TOL), detail=f"cache.seq_len={cache.seq_len}"))
        pad = 2
        xp = torch.cat([_x(opts, B=1, T=pad, seed=2), x[:1]], 1)  # (1, pad + T, C): left-padded sample 0
        keep = torch.ones(1, pad + T, dtype=torch.bool)
        keep[:, :pad] = False
        ivp = torch.cat([torch.zeros(1, pad, dtype=torch.bool), iv[:1]], 1)
        with torch.no_grad():
            err = max_abs_error(layer(xp, is_visual=ivp, key_valid=keep.to(opts.device))[:, pad:],
                                layer(x[:1], is_visual=iv[:1]))
        out.append(result(NAME, spec, f"{impl}: left padding == the sample alone", err,
                          scaled_tolerance(opts.dtype, TOL)))
    return out
