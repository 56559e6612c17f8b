"""Checks specific to recurrent-state (linear-attention) mechanisms.

=========================  =====================================================================================
``linear-segmented-state``  (``spec.cache == "recurrent"``) running on two segments with the state carried over
                            equals running the whole sequence, for every form in ``spec.backends``: at the op
                            level (:func:`~attnlab.ops.linear.linear_attention` with the layer's feature map,
                            ``eps``, heads and ``chunk_size``, from a non-zero initial state; outputs and final
                            state) and at the layer level (``new_cache`` + two calls vs one call without cache)
``linear-forms-agree``      (``spec.cache == "recurrent"`` and the backends include ``parallel``, ``chunked`` and
                            ``recurrent``) parallel == chunked == recurrent, outputs and gradients w.r.t. ``q``,
                            ``k``, ``v`` and the initial state, causal and bidirectional (with ``S != T``), for
                            chunk sizes 1, 4, 5, ``T``, ``T + 3`` and the layer's own
=========================  =====================================================================================

The op-level cases need the op's parameters, which they read from a :class:`~attnlab.layers.linear.LinearAttention`
layer built from the spec (by type, not by name). Another layer with a recurrent cache gets the layer-level
segmented case only, and ``linear-forms-agree`` reports it as a failure to investigate (the check would verify
nothing).

Errors are ``max |got - want| / max(1, max |want|)`` (outputs of linear attention are convex combinations of
values, but a ``relu`` map may leave tiny normalisers and larger outputs). Tolerances are written below.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.layers.linear import LinearAttention
from attnlab.layers.registry import MechanismSpec
from attnlab.ops.linear import LINEAR_IMPLS, LinearState, linear_attention
from attnlab.verify.core import (CheckResult, VerifyOptions, build_layer, check, relative_error, result,
                                 scaled_tolerance, worst_result)

__all__ = ["TOL_SEGMENTED", "TOL_FORMS", "linear_op_inputs"]

TOL_SEGMENTED = 1e-10  # float64: segmented vs whole, outputs and final state (observed ~1e-15)
TOL_FORMS = 1e-10  # float64: parallel / chunked vs recurrent, outputs and gradients (observed ~1e-15)
_FORMS = ("recurrent", "parallel", "chunked")
_err = relative_error  # max |got - want| / max(1, max |want|)


def linear_op_inputs(layer: LinearAttention, opts: VerifyOptions, *, seq_len: int | None = None,
                     kv_len: int | None = None, seed_offset: int = 0) -> tuple[Tensor, Tensor, Tensor, LinearState]:
    """Random ``q (B, H, T, Dqk)``, ``k (B, H_kv, S, Dqk)``, ``v (B, H_kv, S, Dv)`` and a non-zero initial state
    with the layer's head layout and feature dim, in ``opts.dtype`` on ``opts.device``."""
    g = torch.Generator().manual_seed(opts.seed + 2000 + seed_offset)
    B, T = opts.batch_size, opts.seq_len if seq_len is None else seq_len
    S = T if kv_len is None else kv_len
    H, Hkv, Dqk, Dv, Fd = layer.n_heads, layer.n_kv_heads, layer.qk_head_dim, layer.head_dim, layer.feature_dim

    def rnd(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    q, k, v = rnd(B, H, T, Dqk), rnd(B, Hkv, S, Dqk), rnd(B, Hkv, S, Dv)
    kv0 = rnd(B, H, Fd, Dv)  # (B, H, F, Dv)
    z0 = torch.rand(B, H, Fd, generator=g, dtype=torch.float64) + 0.5  # (B, H, F): a healthy normaliser
    to = dict(device=opts.device, dtype=opts.dtype)
    return q.to(**to), k.to(**to), v.to(**to), LinearState(kv0.to(**to), z0.to(**to))


def _forms(spec: MechanismSpec) -> list[str]:
    return [b for b in spec.backends if b in LINEAR_IMPLS and b != "auto"]


# --------------------------------------------------------------------------------------------------------------
# linear-segmented-state


@check("linear-segmented-state",
       "two segments with the recurrent state carried over == the whole sequence, every form",
       applies=lambda spec: spec.cache == "recurrent")
def _segmented_state(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    name = "linear-segmented-state"
    tol = scaled_tolerance(opts.dtype, TOL_SEGMENTED)
    layer = build_layer(spec, opts)
    T = opts.seq_len
    cuts = sorted({c for c in (1, T // 2, T - 1) if 0 < c < T})
    results: list[CheckResult] = []
    if isinstance(layer, LinearAttention):
        q, k, v, init = linear_op_inputs(layer, opts)
        op = dict(feature_map=layer.feature_map, causal=layer.causal, eps=layer.eps, chunk_size=layer.chunk_size)
        for form in _forms(spec):
            whole, st_whole = linear_attention(q, k, v, initial_state=init, impl=form, **op)
            for c in cuts:
                o1, st1 = linear_attention(q[:, :, :c], k[:, :, :c], v[:, :, :c], initial_state=init, impl=form, **op)
                o2, st2 = linear_attention(q[:, :, c:], k[:, :, c:], v[:, :, c:], initial_state=st1, impl=form, **op)
                errs = {"output": _err(torch.cat([o1, o2], dim=2), whole) if layer.causal else 0.0,
                        "state.kv": _err(st2.kv, st_whole.kv), "state.z": _err(st2.z, st_whole.z)}
                results.append(worst_result(name, spec, f"op {form} cut={c}", errs, tol))
    if spec.causal:
        g = torch.Generator().manual_seed(opts.seed + 3000)
        x = torch.randn(opts.batch_size, T, opts.d_model, generator=g, dtype=torch.float64)
        x = x.to(device=opts.device, dtype=opts.dtype)  # (B, T, d_model)
        with torch.no_grad():
            for form in spec.backends:
                layer.impl = form
                whole = layer(x)
                for c in cuts:
                    cache = layer.new_cache(opts.batch_size, device=opts.device, dtype=opts.dtype)
                    got = torch.cat([layer(x[:, :c], cache=cache), layer(x[:, c:], cache=cache)], dim=1)
                    results.append(result(name, spec, f"layer {form} cut={c}", _err(got, whole), tol))
    return results


# --------------------------------------------------------------------------------------------------------------
# linear-forms-agree


def _with_grads(q: Tensor, k: Tensor, v: Tensor, init: LinearState, impl: str, **op) -> dict[str, Tensor]:
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in
              (("q", q), ("k", k), ("v", v), ("kv0", init.kv), ("z0", init.z))}
    out, st = linear_attention(leaves["q"], leaves["k"], leaves["v"],
                               initial_state=LinearState(leaves["kv0"], leaves["z0"]), impl=impl, **op)
    g = torch.Generator().manual_seed(11)

    def w(t: Tensor) -> Tensor:
        return torch.randn(t.shape, generator=g, dtype=torch.float64).to(device=t.device, dtype=t.dtype)

    loss = (out * w(out)).sum() + (st.kv * w(st.kv)).sum() + (st.z * w(st.z)).sum()
    # a form that ignores an input gets zero gradients for it (then compared), not a crash
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    res = {"output": out.detach(), "state.kv": st.kv.detach(), "state.z": st.z.detach()}
    res.update({f"grad[{n}]": torch.zeros_like(t) if gr is None else gr
                for (n, t), gr in zip(leaves.items(), grads)})
    return res


@check("linear-forms-agree",
       "linear attention: parallel == chunked == recurrent, outputs and gradients, several chunk sizes",
       applies=lambda spec: spec.cache == "recurrent" and set(_FORMS) <= set(spec.backends))
def _forms_agree(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    name = "linear-forms-agree"
    tol = scaled_tolerance(opts.dtype, TOL_FORMS)
    layer = build_layer(spec, opts)
    if not isinstance(layer, LinearAttention):
        return [result(name, spec, "-", float("nan"), tol, detail=f"{type(layer).__name__} is not a LinearAttention "
                                                                 "layer: this check cannot read its op parameters")]
    T = opts.seq_len
    chunks = sorted({1, 4, 5, T, T + 3, layer.chunk_size})
    results: list[CheckResult] = []
    for causal in (True, False):
        S = T if causal else T + 2  # bidirectional: also cross-attention lengths
        q, k, v, init = linear_op_inputs(layer, opts, kv_len=S, seed_offset=int(causal))
        op = dict(feature_map=layer.feature_map, causal=causal, eps=layer.eps)
        ref = _with_grads(q, k, v, init, "recurrent", chunk_size=1, **op)
        mode = "causal" if causal else "bidirectional"
        cases = [("parallel", layer.chunk_size)] + [("chunked", c) for c in chunks]
        for impl, c in cases:
            got = _with_grads(q, k, v, init, impl, chunk_size=c, **op)
            case = f"{mode} {impl}" + (f" chunk={c}" if impl == "chunked" else "") + " vs recurrent"
            results.append(worst_result(name, spec, case, {key: _err(got[key], ref[key]) for key in ref}, tol))
    return results
