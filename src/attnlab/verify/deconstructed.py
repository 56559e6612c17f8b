"""Checks specific to the "Deconstructing Attention" variants (spec ``shared/specs/deconstructing.md`` section 9),
applied by the layer class a spec builds (never by name):

=======================  ==========================================================================================
``decon-map``            (every variant with an ``attention_map``) the map is row-stochastic and causal (oracle 4)
                         and the output is ``W_O concat(A V)`` with that map; for the fixed-map variants the map
                         does not depend on the input (the layer is linear in it) and the length-T map is the
                         top-left block of a longer one; for StaticEmbQK the map ignores ``x`` given embeddings
                         (oracles 11, 13)
``decon-forms``          Approximate's printed form: recurrent == parallel and, with ``q = 0``, the output is the
                         causal prefix mean of ``v`` (oracle 9); Non-approximate: scores of +-1e3 stay finite in
                         the recurrence and equal the parallel form (oracle 10)
``decon-no-mixing``      (``mixes_tokens=False``) ``d out_i / d in_j = 0`` for ``j != i`` (oracle 8)
=======================  ==========================================================================================
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnlab.layers.deconstructed import MixerInputs
from attnlab.layers.deconstructed.approx import ApproxAttention, ApproxConfig
from attnlab.layers.deconstructed.fixed_map import FixedMapAttention, FixedMapConfig
from attnlab.layers.deconstructed.nonapprox import NonApproxConfig, nonapprox_parallel, nonapprox_recurrent
from attnlab.layers.deconstructed.staticembqk import StaticEmbQKAttention, StaticEmbQKConfig
from attnlab.layers.registry import MechanismSpec
from attnlab.verify.core import CheckResult, VerifyOptions, build_layer, check, result, scaled_tolerance

__all__ = ["TOL"]

TOL = 1e-10  # float64, exact identities (observed ~1e-15)
_MAPPED = (ApproxConfig, NonApproxConfig, FixedMapConfig, StaticEmbQKConfig)



def _builds(spec: MechanismSpec, configs: tuple[type, ...]) -> bool:
    """Whether the spec's config class is one of ``configs`` (the layer classes follow from them)."""
    return spec.make_config in configs


def _x(opts: VerifyOptions, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(opts.seed + 6000 + seed)
    x = torch.randn(opts.batch_size, opts.seq_len, opts.d_model, generator=g, dtype=torch.float64)
    return x.to(device=opts.device, dtype=opts.dtype)


def _map(layer, x: Tensor, inputs: MixerInputs | None) -> Tensor:
    if isinstance(layer, FixedMapAttention):
        return layer.attention_map(x.shape[1], inputs, like=x)
    if isinstance(layer, StaticEmbQKAttention):
        return layer.attention_map(x, inputs)
    return layer.attention_map(x)


def _inputs(layer, x: Tensor, opts: VerifyOptions) -> MixerInputs | None:
    if isinstance(layer, FixedMapAttention):
        return MixerInputs(fixed_hidden=_x(opts, 1)[0].repeat(3, 1))  # 3T rows of a fixed stream
    if isinstance(layer, StaticEmbQKAttention):
        return MixerInputs(token_emb=_x(opts, 2))
    return None


@check("decon-map", "Deconstructing Attention: row-stochastic causal map, used by the output; fixed maps ignore x",
       applies=lambda s: _builds(s, _MAPPED))
def _decon_map(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    name, tol = "decon-map", scaled_tolerance(opts.dtype, TOL)
    layer = build_layer(spec, opts)
    if isinstance(layer, ApproxAttention) and layer.form != "taylor":
        return [result(name, spec, "form printed has no single map", 0.0, tol)]
    x = _x(opts)
    inp = _inputs(layer, x, opts)
    out: list[CheckResult] = []
    with torch.no_grad():
        A = _map(layer, x, inp)  # (B or 1, H, T, T)
        T = x.shape[1]
        err = max(float((A.sum(-1) - 1).abs().max()), float(A.triu(1).abs().max()), float((-A).clamp_min(0).max()))
        out.append(result(name, spec, "row-stochastic, causal", err, tol))
        v = layer.v_proj(x).view(x.shape[0], T, layer.n_heads, -1).transpose(1, 2)
        want = layer.out_proj((A @ v).transpose(1, 2).reshape(x.shape[0], T, -1))
        got = layer(x, inputs=inp) if inp is not None else layer(x)
        out.append(result(name, spec, "output = W_O (A V)", float((got - want).abs().max()), tol))
        if isinstance(layer, FixedMapAttention):
            x2 = _x(opts, 3)
            lin = layer(0.5 * x - 2 * x2, inputs=inp) - (0.5 * layer(x, inputs=inp) - 2 * layer(x2, inputs=inp))
            out.append(result(name, spec, "map independent of x (linear in x)", float(lin.abs().max()), tol))
            big = layer.attention_map(3 * T, inp, like=x)
            out.append(result(name, spec, "length-T map = top-left block", float((big[..., :T, :T] - A).abs().max()), tol))
        if isinstance(layer, StaticEmbQKAttention):
            err = float((layer.attention_map(_x(opts, 4), inp) - A).abs().max())
            out.append(result(name, spec, "map ignores x given embeddings", err, tol))
    return out


@check("decon-forms", "Deconstructing Attention: printed Taylor form and running-max recurrence",
       applies=lambda s: _builds(s, (ApproxConfig, NonApproxConfig)))
def _decon_forms(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    name, tol = "decon-forms", scaled_tolerance(opts.dtype, TOL)
    x = _x(opts)
    out: list[CheckResult] = []
    with torch.no_grad():
        probe = build_layer(spec, opts)
        if isinstance(probe, ApproxAttention):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(opts.seed)
                layer = spec.build(d_model=opts.d_model, n_heads=opts.n_heads,
                                   **{**spec.verify_options, "form": "printed"}).to(device=opts.device, dtype=opts.dtype)
            layer.impl = "recurrent"
            ref = layer(x)
            layer.impl = "parallel"
            out.append(result(name, spec, "printed: parallel vs recurrent", float((layer(x) - ref).abs().max()), tol))
            layer.q_proj.weight.zero_()
            v = layer.v_proj(x)
            n = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)[None, :, None]
            err = float((layer(x) - layer.out_proj(v.cumsum(1) / n)).abs().max())
            out.append(result(name, spec, "printed, q = 0: prefix mean of v", err, tol))
        else:
            g = torch.Generator().manual_seed(opts.seed)
            s = (torch.rand(2, 2, 9, generator=g, dtype=torch.float64) * 2 - 1) * 1e3
            v = torch.randn(2, 2, 9, 4, generator=g, dtype=torch.float64)
            st = (torch.zeros(2, 2, 4, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64),
                  torch.full((2, 2), -math.inf, dtype=torch.float64))
            rec, _ = nonapprox_recurrent(s, v, st)
            err = float((rec - nonapprox_parallel(s, v)).abs().max()) if torch.isfinite(rec).all() else math.nan
            out.append(result(name, spec, "scores +-1e3: finite, recurrent = parallel", err, TOL))
    return out


@check("decon-no-mixing", "output i depends on input i only (a layer declared mixes_tokens=False)",
       applies=lambda s: not s.mixes_tokens)
def _no_mixing(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    layer = build_layer(spec, opts)
    x = _x(opts)[:1].detach().requires_grad_(True)
    y = layer(x)
    worst = 0.0
    for i in range(x.shape[1]):
        (g,) = torch.autograd.grad(y[0, i].sum(), x, retain_graph=True)
        g = g.clone()
        g[0, i] = 0
        worst = max(worst, float(g.abs().max()))
    return [result("decon-no-mixing", spec, "d out_i / d in_j, j != i", worst, 0.0)]
