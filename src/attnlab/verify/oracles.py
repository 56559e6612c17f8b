"""Checks against PyTorch's own implementations, which attnlab does not write and therefore cannot get wrong
in the same way.

===================  ============================================================================================
``oracle-torch-mha``  the layer, its weights copied into ``torch.nn.MultiheadAttention(batch_first=True)`` (bias
                      matching), gives the same output and input gradients: self-attention with the layer's mask
                      passed as ``attn_mask``, and cross-attention to a context of another length where the
                      mechanism supports it. Applies to plain multi-head layers (scaled dot score, as many
                      key/value heads as query heads, ``n_heads * head_dim == d_model``, no RoPE, causal or no mask).
``oracle-sdpa``       the functional op :func:`attnlab.ops.softmax.softmax_attention`, with the mechanism's head
                      layout (GQA/MQA included), vs ``F.scaled_dot_product_attention`` on repeated key/value heads:
                      causal (``T == S``), causal decoding rows (``T < S``, ``q_offset = S - T``, against an explicit
                      bottom-right triangle) and no mask (``T != S``); outputs and gradients. Applies to layers
                      with the scaled dot score and a causal or no mask.
===================  ============================================================================================

Both run every backend in ``spec.backends``. FlexAttention has no CPU backward in torch 2.13, so on CPU the
``flex`` cases compare outputs only (the case name says so).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.layers.mha import MultiHeadAttention, MultiHeadAttentionConfig
from attnlab.layers.registry import MechanismSpec
from attnlab.masks import Mask, dense
from attnlab.ops.softmax import softmax_attention
from attnlab.verify.core import CheckResult, VerifyOptions, build_layer, check, max_abs_error, worst_result

__all__ = ["TOL_ORACLE", "to_torch_mha", "plain_mha_config", "compare_with_torch_mha", "compare_with_sdpa"]

#: float64: both sides compute the same sums in a different order (~1e-15 relative); float32 gets 1e-5.
TOL_ORACLE = 1e-10


def _tol(dtype: torch.dtype) -> float:
    return TOL_ORACLE if dtype == torch.float64 else {torch.float32: 1e-5}.get(dtype, 2e-2)


def _config(spec: MechanismSpec, opts: VerifyOptions) -> object:
    return spec.config(d_model=opts.d_model, n_heads=opts.n_heads, **spec.verify_options)


def _simple_mask(mask: Mask | None) -> bool:
    return mask is None or mask.full or mask.plain_causal


def plain_mha_config(cfg: object) -> bool:
    """Whether ``cfg`` describes a layer that ``torch.nn.MultiheadAttention`` can represent exactly."""
    return (
        isinstance(cfg, MultiHeadAttentionConfig)
        and cfg.score == "scaled_dot"
        and cfg.resolved_n_kv_heads == cfg.n_heads
        and cfg.resolved_head_dim * cfg.n_heads == cfg.d_model
        and not cfg.rope
        and _simple_mask(cfg.mask)
    )


def _applies_torch_mha(spec: MechanismSpec) -> bool:
    try:
        return plain_mha_config(_config(spec, VerifyOptions()))
    except Exception:
        return False


def _applies_sdpa(spec: MechanismSpec) -> bool:
    try:
        cfg = _config(spec, VerifyOptions())
    except Exception:
        return False
    return isinstance(cfg, MultiHeadAttentionConfig) and cfg.score == "scaled_dot" and _simple_mask(cfg.mask)


def to_torch_mha(layer: MultiHeadAttention) -> nn.MultiheadAttention:
    """A ``torch.nn.MultiheadAttention(batch_first=True)`` with ``layer``'s weights (same dtype and device)."""
    w = layer.in_proj.weight
    ref = nn.MultiheadAttention(layer.d_model, layer.n_heads, bias=layer.in_proj.bias is not None,
                                batch_first=True, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        ref.in_proj_weight.copy_(w)  # rows [q | k | v], the same layout as ours
        ref.out_proj.weight.copy_(layer.out_proj.weight)
        if layer.in_proj.bias is not None:
            ref.in_proj_bias.copy_(layer.in_proj.bias)
            ref.out_proj.bias.copy_(layer.out_proj.bias)
    return ref.eval()


def _errors(y: Tensor, y_ref: Tensor, ins: dict[str, Tensor], ins_ref: list[Tensor], *,
            seed: int | None) -> dict[str, float]:
    """Max abs differences of the outputs and, with a ``seed`` for the random output weights, of the gradients of
    ``sum(y * w)`` w.r.t. each of ``ins`` (and of ``sum(y_ref * w)`` w.r.t. ``ins_ref``)."""
    errs = {"output": max_abs_error(y, y_ref)}
    if seed is not None:
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(y)
        got = torch.autograd.grad((y * w).sum(), list(ins.values()))
        want = torch.autograd.grad((y_ref * w).sum(), ins_ref)
        for n, a, b in zip(ins, got, want):
            errs[f"grad[{n}]"] = max_abs_error(a, b)
    return errs


def _grads_ok(impl: str, device: torch.device) -> bool:
    return not (impl == "flex" and device.type != "cuda")


def compare_with_torch_mha(layer: MultiHeadAttention, x: Tensor, context: Tensor | None = None,
                           *, grads: bool = True) -> dict[str, float]:
    """Max abs differences (output, input gradients) between ``layer`` and its ``nn.MultiheadAttention`` copy.

    Self-attention uses the layer's mask (``attn_mask = ~allowed``, True = blocked); ``context`` is unmasked.
    """
    ref = to_torch_mha(layer)
    T = x.shape[1]
    ins = [x] if context is None else [x, context]
    ins = [t.detach().clone().requires_grad_(grads) for t in ins]
    ins_ref = [t.detach().clone().requires_grad_(grads) for t in ins]
    if context is None:
        y = layer(ins[0])
        m = layer.mask
        attn_mask = None if m is None or m.full else ~dense(m, T, T, device=x.device)  # (T, T) True = blocked
        y_ref, _ = ref(ins_ref[0], ins_ref[0], ins_ref[0], attn_mask=attn_mask, need_weights=False)
    else:
        y = layer(ins[0], context=ins[1])
        y_ref, _ = ref(ins_ref[0], ins_ref[1], ins_ref[1], need_weights=False)
    return _errors(y, y_ref, dict(zip(["x", "context"], ins)), ins_ref, seed=11 if grads else None)


@check("oracle-torch-mha", "equals torch.nn.MultiheadAttention with the same weights (outputs, input gradients)",
       applies=_applies_torch_mha)
def _torch_mha_check(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    name = "oracle-torch-mha"
    tol = _tol(opts.dtype)
    gen = torch.Generator().manual_seed(opts.seed + 2000)
    x = torch.randn(opts.batch_size, opts.seq_len, opts.d_model, generator=gen, dtype=torch.float64)
    c = torch.randn(opts.batch_size, max(1, opts.seq_len // 2 + 2), opts.d_model, generator=gen, dtype=torch.float64)
    x, c = x.to(opts.device, opts.dtype), c.to(opts.device, opts.dtype)
    results = []
    for impl in spec.backends:
        layer = build_layer(spec, opts, impl=impl)
        grads = _grads_ok(impl, x.device)
        suffix = "" if grads else ", outputs only (no CPU backward)"
        errs = compare_with_torch_mha(layer, x, grads=grads)
        results.append(worst_result(name, spec, f"{impl}, self{suffix}", errs, tol))
        if spec.cross:
            errs = compare_with_torch_mha(layer, x, c, grads=grads)
            results.append(worst_result(name, spec, f"{impl}, cross S={c.shape[1]}{suffix}", errs, tol))
    return results


def compare_with_sdpa(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, impl: str, q_offset: int = 0,
                      grads: bool = True) -> dict[str, float]:
    """Max abs differences between :func:`softmax_attention` and ``F.scaled_dot_product_attention``.

    ``causal`` with ``T == S`` uses SDPA's ``is_causal``; with ``T < S`` (``q_offset = S - T``) an explicit
    triangle ``torch.ones(T, S).tril(q_offset)`` (bottom-right for ``q_offset = S - T``), built without
    :mod:`attnlab.masks`.
    """
    from attnlab.masks import causal as causal_mask

    T, S, H, Hkv = q.shape[2], k.shape[2], q.shape[1], k.shape[1]
    ins = [t.detach().clone().requires_grad_(grads) for t in (q, k, v)]
    ins_ref = [t.detach().clone().requires_grad_(grads) for t in (q, k, v)]
    y = softmax_attention(*ins, mask=causal_mask() if causal else None, q_offset=q_offset, impl=impl)  # (B, H, T, D)
    qr, kr, vr = ins_ref
    kr = kr.repeat_interleave(H // Hkv, dim=1)  # (B, H, S, D)
    vr = vr.repeat_interleave(H // Hkv, dim=1)  # (B, H, S, D)
    if causal and T == S and q_offset == 0:
        y_ref = F.scaled_dot_product_attention(qr, kr, vr, is_causal=True)
    elif causal:
        allowed = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(q_offset)  # (T, S): j <= q_offset + i
        y_ref = F.scaled_dot_product_attention(qr, kr, vr, attn_mask=allowed)
    else:
        y_ref = F.scaled_dot_product_attention(qr, kr, vr)
    return _errors(y, y_ref, dict(zip("qkv", ins)), ins_ref, seed=12 if grads else None)


@check("oracle-sdpa", "the softmax op equals F.scaled_dot_product_attention (causal, decoding rows, no mask)",
       applies=_applies_sdpa)
def _sdpa_check(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    name = "oracle-sdpa"
    cfg = _config(spec, opts)
    assert isinstance(cfg, MultiHeadAttentionConfig)
    H, Hkv, D = cfg.n_heads, cfg.resolved_n_kv_heads, cfg.resolved_head_dim
    B, T = opts.batch_size, opts.seq_len
    tol = _tol(opts.dtype)
    gen = torch.Generator().manual_seed(opts.seed + 3000)

    def rand(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(opts.device, opts.dtype)

    S_short, S_long = max(1, T // 2 + 1), T + 4
    cases = []
    if cfg.causal:
        cases.append(("causal T=S", True, rand(B, H, T, D), rand(B, Hkv, T, D), rand(B, Hkv, T, D), 0))
        cases.append((f"causal T={T} S={S_long} q_offset={S_long - T}", True,
                      rand(B, H, T, D), rand(B, Hkv, S_long, D), rand(B, Hkv, S_long, D), S_long - T))
    cases.append((f"no mask T={T} S={S_short}", False, rand(B, H, T, D), rand(B, Hkv, S_short, D),
                  rand(B, Hkv, S_short, D), 0))
    results = []
    for impl in spec.backends:
        grads = _grads_ok(impl, torch.device(opts.device))
        suffix = "" if grads else ", outputs only (no CPU backward)"
        for case, is_causal, q, k, v, off in cases:
            errs = compare_with_sdpa(q, k, v, causal=is_causal, impl=impl, q_offset=off, grads=grads)
            results.append(worst_result(name, spec, f"{impl}, {case}{suffix}", errs, tol))
    return results
