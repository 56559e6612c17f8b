"""Checks specific to CASTLE (``castle`` and ``castle-swl``; any spec whose config is :class:`CastleConfig`).

====================  ==============================================================================================
``castle-forms``      reference == parallel == chunked (chunk sizes 1, 3, 4, 13, incl. non-divisors of T), outputs
                      and the gradients w.r.t. all six projections, on the layer's own projections; and the layer
                      with every other backend == the layer with ``parallel`` (a backend that cannot run on the
                      device, e.g. ``triton`` on CPU without ``TRITON_INTERPRET=1``, is a skipped case)
``castle-decode``     decoding token by token from an empty UQ-KV cache, and prefill of T//2 tokens then decoding,
                      == the parallel layer output; the final cached ``U`` == ``U^L`` computed directly
``castle-reductions`` ``W^{UV} = 0`` gives standard causal attention on ``(Q^C, K^C, V^C)``; SWL with ``W = 0`` ==
                      standard; SWL with ``W >= L - 1`` == full CASTLE
``castle-structure``  ``S^U`` strictly lower triangular; ``u^t_t = 0`` for every ``t``; first output ``o_1 = v^C_1``
``castle-params``     parameter count ``= 7 n d d_model``; ``heads_for_parity(14) == 8``, ``(16) == 9``
====================  ==============================================================================================

``W`` in case names is the layer's ``lookahead`` (CASTLE-SWL's W: a lookahead key covers the next W tokens, the current
token not counted; ``None`` for full CASTLE).

Errors are ``max |got - want| / max(1, max |want|)``. Tolerances are for float64 (observed errors ~1e-15) and are
loosened for lower precisions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.layers.castle import CastleAttention, CastleConfig
from attnlab.layers.registry import MechanismSpec
from attnlab.ops.castle import castle_attention, lookahead_keys_at, lookahead_scores
from attnlab.verify.core import (CheckResult, VerifyOptions, build_layer, check, relative_error, result,
                                 scaled_tolerance, skipped, worst_result)
from attnlab.verify.generic import backend_unavailable_reason

__all__ = ["TOL"]

TOL = 1e-10  # float64: exact reformulations (observed ~1e-15)
_NAMES = ("q_u", "k_u", "v_u", "q_c", "k_c", "v_c")
_CPU_FORMS = ("reference", "parallel", "chunked")


def _tol(dtype: torch.dtype) -> float:
    return scaled_tolerance(dtype, TOL)


def _applies(spec: MechanismSpec) -> bool:
    return spec.make_config is CastleConfig


def _build(spec: MechanismSpec, opts: VerifyOptions) -> CastleAttention:
    layer = build_layer(spec, opts)
    if not isinstance(layer, CastleAttention):
        raise TypeError(f"{spec.name} builds {type(layer).__name__}, not CastleAttention")
    return layer


def _x(opts: VerifyOptions, offset: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(opts.seed + 4000 + offset)
    x = torch.randn(opts.batch_size, opts.seq_len, opts.d_model, generator=g, dtype=torch.float64)
    return x.to(device=opts.device, dtype=opts.dtype)  # (B, T, d_model)


def _projections(layer: CastleAttention, opts: VerifyOptions) -> list[Tensor]:
    with torch.no_grad():
        return [p.detach().clone() for p in layer.project(_x(opts))]  # six (B, H, T, D)


_err = relative_error  # max |got - want| / max(1, max |want|)


def _errors(pairs: dict[str, tuple[Tensor, Tensor]]) -> dict[str, float]:
    return {k: _err(a, b) for k, (a, b) in pairs.items()}


# --------------------------------------------------------------------------------------------------------------


def _triton_vs_parallel(spec: MechanismSpec, opts: VerifyOptions, xs: list[Tensor], W: int | None, go: Tensor,
                        want: Tensor, want_g: tuple[Tensor, ...], tol: float) -> CheckResult:
    """The Triton kernels (forward and backward) against Theorem 1 at the op level: compiled on CUDA, in Triton's
    interpreter on CPU (``TRITON_INTERPRET=1`` set before triton is first imported); otherwise a visible skip."""
    name, case = "castle-forms", f"triton vs parallel (W={W})"

    def skip(reason: str) -> CheckResult:
        return skipped(name, spec, case, reason, tol=tol)

    try:
        from attnlab.ops.castle import triton_kernel
    except Exception as exc:  # triton not installed, or the kernels fail to import
        return skip(f"the Triton kernels do not import ({type(exc).__name__}: {exc})")
    if not str(opts.device).startswith("cuda") and not triton_kernel._interpreter_active():
        return skip(f"triton needs CUDA, or TRITON_INTERPRET=1 set before triton is first imported, on {opts.device}")
    out = triton_kernel.castle_triton(*xs, W, xs[0].shape[-1] ** -0.5)
    grads = torch.autograd.grad(out, xs, go)
    pairs = {"output": (out, want)} | {f"d{n}": (a, b) for n, a, b in zip(_NAMES, grads, want_g)}
    return worst_result(name, spec, case, _errors(pairs), tol)


@check("castle-forms", "CASTLE reference == parallel == chunked (outputs, grads)", applies=_applies)
def _forms(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    name, tol = "castle-forms", _tol(opts.dtype)
    layer = _build(spec, opts)
    W = layer.lookahead
    xs = [p.requires_grad_() for p in _projections(layer, opts)]
    want = castle_attention(*xs, lookahead=W, impl="parallel")
    go = torch.randn(want.shape, generator=torch.Generator().manual_seed(opts.seed + 5), dtype=torch.float64)
    go = go.to(want)
    want_g = torch.autograd.grad(want, xs, go)
    results = []
    cases = [("reference", 64)] + [("chunked", b) for b in (1, 3, 4, 13)]
    for impl, chunk in cases:
        out = castle_attention(*xs, lookahead=W, impl=impl, chunk_size=chunk)  # type: ignore[arg-type]
        grads = torch.autograd.grad(out, xs, go)
        pairs = {"output": (out, want)} | {f"d{n}": (a, b) for n, a, b in zip(_NAMES, grads, want_g)}
        label = impl if impl == "reference" else f"chunked chunk_size={chunk}"
        results.append(worst_result(name, spec, f"{label} vs parallel (W={W})", _errors(pairs), tol))
    results.append(_triton_vs_parallel(spec, opts, xs, W, go, want, want_g, tol))
    x = _x(opts, 1)
    layer.impl = "parallel"
    with torch.no_grad():
        base = layer(x)
        for impl in spec.backends:
            if impl == "parallel":
                continue
            case = f"layer impl={impl} vs parallel"
            reason = backend_unavailable_reason(impl, opts.device)
            if reason:  # e.g. triton on a CPU without the interpreter: visibly skipped, never silently left out
                results.append(skipped(name, spec, case, reason, tol=tol))
                continue
            layer.impl = impl
            results.append(result(name, spec, case, _err(layer(x), base), tol))
    return results


@check("castle-decode", "CASTLE UQ-KV decoding (scratch, prefill+decode) == parallel", applies=_applies)
def _decode(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    name, tol = "castle-decode", _tol(opts.dtype)
    layer = _build(spec, opts)
    layer.impl = "parallel"
    x = _x(opts, 2)
    B, T = x.shape[:2]
    results = []
    with torch.no_grad():
        want = layer(x)
        for m in (0, T // 2):
            cache = layer.new_cache(B)
            outs = [layer(x[:, :m], cache=cache)] if m else []
            outs += [layer(x[:, t : t + 1], cache=cache) for t in range(m, T)]
            label = "from scratch" if m == 0 else f"prefill {m} + decode"
            results.append(result(name, spec, f"{label} vs parallel", _err(torch.cat(outs, dim=1), want), tol))
            q_u, k_u, v_u, *_ = layer.project(x)
            u_l = lookahead_keys_at(q_u, k_u, v_u, T - 1, lookahead=layer.lookahead)
            results.append(result(name, spec, f"{label}: cached U == U^L", _err(cache.state().u, u_l), tol))
    return results


@check("castle-reductions", "CASTLE reduces to standard attention (V^U=0, W=0)", applies=_applies)
def _reductions(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    name, tol = "castle-reductions", _tol(opts.dtype)
    layer = _build(spec, opts)
    x = _x(opts, 3)
    B, T, _ = x.shape
    HD = layer.n_heads * layer.head_dim
    results = []
    with torch.no_grad():
        # W^UV = 0 -> the whole layer is standard causal attention with (Q^C, K^C, V^C)
        layer.in_proj.weight[2 * HD : 3 * HD].zero_()
        _, _, _, q_c, k_c, v_c = layer.project(x)
        std = F.scaled_dot_product_attention(q_c, k_c, v_c, is_causal=True)  # (B, H, T, D)
        std_layer = layer.out_proj(std.transpose(1, 2).reshape(B, T, HD))
        for impl in _CPU_FORMS:
            layer.impl = impl
            err = _err(layer(x), std_layer)
            results.append(result(name, spec, f"W^UV=0 == standard (layer, {impl})", err, tol))
        xs = _projections(_build(spec, opts), opts)
        std = F.scaled_dot_product_attention(xs[3], xs[4], xs[5], is_causal=True)
        full = castle_attention(*xs, lookahead=None, impl="parallel")
        for impl in _CPU_FORMS:
            out = castle_attention(*xs, lookahead=0, impl=impl, chunk_size=4)  # type: ignore[arg-type]
            results.append(result(name, spec, f"SWL W=0 == standard ({impl})", _err(out, std), tol))
            for w in (T - 1, T + 3):
                out = castle_attention(*xs, lookahead=w, impl=impl, chunk_size=4)  # type: ignore[arg-type]
                results.append(result(name, spec, f"SWL W={w} >= L-1 == full ({impl})", _err(out, full), tol))
    return results


@check("castle-structure", "CASTLE S^U strictly lower, u^t_t = 0, o_1 = v^C_1", applies=_applies)
def _structure(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    name, tol = "castle-structure", _tol(opts.dtype)
    layer = _build(spec, opts)
    W = layer.lookahead
    q_u, k_u, v_u, q_c, k_c, v_c = xs = _projections(layer, opts)
    T = q_u.shape[2]
    s_u = lookahead_scores(q_u, k_u, v_u, q_c, lookahead=W)  # (B, H, T, T)
    results = [result(name, spec, "S^U strictly lower triangular: max |triu(S^U)|", float(s_u.triu().abs().max()),
                      0.0)]
    newest = max(float(lookahead_keys_at(q_u, k_u, v_u, t, lookahead=W)[:, :, t].abs().max()) for t in range(T))
    results.append(result(name, spec, "u^t_t = 0 for every t: max |u^t_t|", newest, 0.0))
    for impl in _CPU_FORMS:
        out = castle_attention(*xs, lookahead=W, impl=impl, chunk_size=4)  # type: ignore[arg-type]
        results.append(result(name, spec, f"o_1 == v^C_1 ({impl})", _err(out[:, :, 0], v_c[:, :, 0]), tol))
    return results


@check("castle-params", "CASTLE parameter count 7 n d d_model and 4/7 head parity", applies=_applies)
def _params(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    name = "castle-params"
    results = []
    for d_model, n_heads, head_dim in ((opts.d_model, opts.n_heads, None), (32, 3, 6)):
        layer = spec.build(d_model=d_model, n_heads=n_heads, head_dim=head_dim)
        d = layer.head_dim
        got = sum(p.numel() for p in layer.parameters())
        want = 7 * n_heads * d * d_model
        results.append(result(name, spec, f"params == 7 n d d_model (n={n_heads}, d={d}, d_model={d_model})",
                              float(abs(got - want)), 0.0, detail=f"got {got}, want {want}"))
    for n_std, n_castle in ((14, 8), (16, 9)):
        got = spec.heads_for_parity(n_std)
        results.append(result(name, spec, f"heads_for_parity({n_std}) == {n_castle}", float(abs(got - n_castle)),
                              0.0, detail=f"got {got}"))
    return results
