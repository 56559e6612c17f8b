"""The generic property checks, run over every registered mechanism.

Every check builds the layer from its :class:`~attnlab.layers.registry.MechanismSpec` at the small, awkward sizes
of :class:`~attnlab.verify.core.VerifyOptions` (default ``B=2, T=13, d_model=24, n_heads=4``, so ``head_dim=6``)
merged with ``spec.verify_options``, in float64 on CPU unless told otherwise, with dropout disabled (``eval()``).
No check looks at a mechanism's name: what runs is decided by the spec (``causal``, ``cache``, ``backends``,
``cross``).

========================  ======================================================================================
``backends-vs-reference``  each backend after the first (the reference) vs the reference, same weights: output
                           and gradients w.r.t. the input and every parameter (and ``context`` where ``cross``)
``causality-perturbation`` (causal) changing inputs after ``t`` leaves outputs at positions ``<= t`` unchanged
``causality-gradient``     (causal) the gradient of output ``t`` w.r.t. every input after ``t`` is zero
``sees-future``            (not causal) some output depends on a later input; fails for a wrongly causal layer
``cached-decoding``        (``cache``) prefill ``m`` tokens, then decode one at a time == the parallel output,
                           for several ``m`` including 0 and 1
``batch-consistency``      running each example alone == running the batch
========================  ======================================================================================

Every case records its tolerance next to it (``TOL_*`` below). A backend that cannot run on the device
(``"triton"`` on a CPU without ``TRITON_INTERPRET=1``, ``"flex"`` on CPU, see :func:`backend_unavailable_reason`)
gives a result marked skipped (see :func:`is_skipped`), never a silent pass; so do sizes that leave a check nothing
to compare (causality and ``sees-future`` at ``seq_len=1``, ``batch-consistency`` at ``batch_size=1``).
"""

from __future__ import annotations

import copy
import math
import os
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from attnlab.layers.registry import MechanismSpec
from attnlab.masks import Mask, dense
from attnlab.verify.core import (SKIPPED_PREFIX, CheckResult, VerifyOptions, build_layer, check, max_abs_error,
                                 result, scaled_tolerance, skipped, worst)

__all__ = [
    "TOL_BACKEND",
    "TOL_CAUSAL",
    "MIN_FUTURE_INFLUENCE",
    "TOL_CACHE",
    "TOL_BATCH",
    "build_layer",
    "backend_unavailable_reason",
    "is_skipped",
    "SKIPPED_PREFIX",
]

# Tolerances (float64 on CPU). Exact-math equivalences differ only by summation order: ~1e-15 relative.
TOL_BACKEND = 1e-9  # backend vs reference, outputs and gradients
TOL_CAUSAL = 1e-12  # change of a past output when the future changes: masked terms contribute exact zeros
MIN_FUTURE_INFLUENCE = 1e-6  # a bidirectional layer's early outputs must move at least this much
TOL_VISIBLE = 1e-9  # a visible key's influence on an output must exceed this (random weights: never exactly 0)
TOL_CACHE = 1e-9  # cached decoding vs parallel
TOL_BATCH = 1e-10  # per-example vs batched


def is_skipped(result: CheckResult) -> bool:
    """``True`` for a case that could not run here (e.g. a CUDA-only backend on CPU); it verified nothing."""
    return result.skipped


def backend_unavailable_reason(impl: str, device: str) -> str | None:
    """Why backend ``impl`` cannot run on ``device`` (``None`` when it can).

    Two backend names are device-bound: ``"triton"`` needs CUDA, or the Triton interpreter
    (``TRITON_INTERPRET=1`` set before the kernels are imported) on CPU; ``"flex"`` (FlexAttention) has no
    backward pass on CPU in torch 2.x, and the checks compare gradients.
    """
    on_cuda = str(device).startswith("cuda")
    if impl == "triton" and not on_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        return f"backend 'triton' needs CUDA or TRITON_INTERPRET=1 on {device}"
    if impl == "flex" and not on_cuda:
        return f"backend 'flex' (FlexAttention) has no backward pass on {device}"
    return None


def _inputs(opts: VerifyOptions, *, seed_offset: int = 0, seq_len: int | None = None) -> Tensor:
    g = torch.Generator().manual_seed(opts.seed + 1000 + seed_offset)
    T = opts.seq_len if seq_len is None else seq_len
    x = torch.randn(opts.batch_size, T, opts.d_model, generator=g, dtype=torch.float64)  # (B, T, d_model)
    return x.to(device=opts.device, dtype=opts.dtype)


def _runnable_backends(spec: MechanismSpec, opts: VerifyOptions) -> Iterator[tuple[str, str | None]]:
    for impl in spec.backends:
        yield impl, backend_unavailable_reason(impl, opts.device)


# --------------------------------------------------------------------------------------------------------------
# backends-vs-reference


def _forward_and_grads(layer: nn.Module, x: Tensor, context: Tensor | None) -> dict[str, Tensor]:
    """Output and the gradients of a fixed random projection of it w.r.t. input, context and every parameter."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    ctx = None if context is None else context.detach().clone().requires_grad_(True)
    y = layer(x) if ctx is None else layer(x, context=ctx)
    g = torch.Generator().manual_seed(7)
    w = torch.randn(y.shape, generator=g, dtype=torch.float64).to(device=y.device, dtype=y.dtype)
    (y * w).sum().backward()
    out = {"output": y.detach(), "grad[x]": x.grad}
    if ctx is not None:
        out["grad[context]"] = ctx.grad
    for name, p in layer.named_parameters():
        if p.requires_grad:
            out[f"grad[{name}]"] = p.grad if p.grad is not None else torch.zeros_like(p)
    return out


@check("backends-vs-reference",
       "every backend equals the reference: outputs and gradients (input, context, parameters)",
       applies=lambda s: len(s.backends) > 1)
def _backends_vs_reference(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    name = "backends-vs-reference"
    ref_impl = spec.backends[0]
    base = build_layer(spec, opts, impl=ref_impl)
    x = _inputs(opts)
    contexts: list[tuple[str, Tensor | None]] = [("self", None)]
    if spec.cross:
        contexts.append(("cross", _inputs(opts, seed_offset=1, seq_len=max(1, opts.seq_len // 2 + 1))))
    tol = scaled_tolerance(opts.dtype, TOL_BACKEND)
    results = []
    for impl, reason in list(_runnable_backends(spec, opts))[1:]:
        for kind, ctx in contexts:
            case = f"{impl} vs {ref_impl}" + ("" if kind == "self" else " (cross)")
            if reason:
                results.append(skipped(name, spec, case, reason))
                continue
            ref = _forward_and_grads(base, x, ctx)
            layer = copy.deepcopy(base)
            layer.impl = impl
            got = _forward_and_grads(layer, x, ctx)
            errs = {k: max_abs_error(got[k], ref[k]) if k in got else float("nan") for k in ref}
            w = worst(errs)
            detail = f"worst: {w}" + (" (missing or shape mismatch)" if math.isnan(errs[w]) else "")
            results.append(result(name, spec, case, errs[w], tol, detail=detail))
    return results


# --------------------------------------------------------------------------------------------------------------
# causality and its negation


def _future_influence(layer: nn.Module, x: Tensor, positions: list[int], seed: int) -> tuple[float, int]:
    """Largest change of outputs ``<= t`` when every input after ``t`` is replaced, over ``t`` in ``positions``."""
    largest, largest_t = 0.0, -1
    with torch.no_grad():
        y = layer(x)  # (B, T, d_model)
        g = torch.Generator().manual_seed(seed)
        for t in positions:
            x2 = x.clone()
            noise = torch.randn(x[:, t + 1:].shape, generator=g, dtype=torch.float64).to(x)
            x2[:, t + 1:] = 3.0 * noise  # a large change of every later input
            y2 = layer(x2)
            d = max_abs_error(y2[:, : t + 1], y[:, : t + 1])
            if math.isnan(d) or d > largest:
                largest, largest_t = d, t
                if math.isnan(d):
                    break
    return largest, largest_t


def _positions(T: int) -> list[int]:
    return list(range(T - 1))  # every t that has a future


def _no_future(opts: VerifyOptions) -> str | None:
    """A sequence of one token has no later input to perturb: a causality check would pass having checked nothing."""
    return f"seq_len={opts.seq_len} has no later position (needs seq_len >= 2)" if opts.seq_len < 2 else None


def _per_backend(name: str, spec: MechanismSpec, opts: VerifyOptions,
                 body: Callable[[nn.Module, str], CheckResult], *, vacuous: str | None = None) -> list[CheckResult]:
    """``body`` on a fresh layer per backend; ``vacuous`` (why the sizes leave nothing to check) skips them all."""
    results = []
    for impl, reason in _runnable_backends(spec, opts):
        reason = reason or vacuous
        if reason:
            results.append(skipped(name, spec, impl, reason))
            continue
        results.append(body(build_layer(spec, opts, impl=impl), impl))
    return results


def _future_influence_check(name: str, spec: MechanismSpec, opts: VerifyOptions, tol: float, *, at_least: bool,
                            detail: str) -> list[CheckResult]:
    """Per backend, the largest influence of later inputs on outputs ``<= t`` (:func:`_future_influence`) against
    ``tol``: at most ``tol`` for a causal layer, at least ``tol`` (``at_least``) for a bidirectional one.
    ``detail`` is formatted with the worst position ``t``."""
    x = _inputs(opts)

    def body(layer: nn.Module, impl: str) -> CheckResult:
        infl, t = _future_influence(layer, x, _positions(opts.seq_len), opts.seed)
        return result(name, spec, impl, infl, tol, at_least=at_least, detail=detail.format(t=t))

    return _per_backend(name, spec, opts, body, vacuous=_no_future(opts))


@check("causality-perturbation", "outputs at positions <= t do not change when inputs after t change",
       applies=lambda s: s.causal)
def _causality_perturbation(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    return _future_influence_check("causality-perturbation", spec, opts, scaled_tolerance(opts.dtype, TOL_CAUSAL),
                                   at_least=False, detail="worst t={t}: outputs <= t moved when inputs > t changed")


@check("causality-gradient", "the gradient of output t w.r.t. inputs after t is zero", applies=lambda s: s.causal)
def _causality_gradient(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    name = "causality-gradient"
    x0 = _inputs(opts)
    T = opts.seq_len

    def body(layer: nn.Module, impl: str) -> CheckResult:
        x = x0.detach().clone().requires_grad_(True)
        y = layer(x)  # (B, T, d_model)
        g = torch.Generator().manual_seed(opts.seed + 3)
        w = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y)
        largest, largest_t = 0.0, -1
        for t in range(T - 1):
            (gx,) = torch.autograd.grad((y[:, t] * w[:, t]).sum(), x, retain_graph=True)  # (B, T, d_model)
            d = float(gx[:, t + 1:].abs().max())
            if math.isnan(d) or d > largest:
                largest, largest_t = d, t
        return result(name, spec, impl, largest, scaled_tolerance(opts.dtype, TOL_CAUSAL),
                      detail=f"worst t={largest_t}: |d out[t] / d in[>t]|")

    return _per_backend(name, spec, opts, body, vacuous=_no_future(opts))


@check("sees-future", "a bidirectional layer's outputs depend on later inputs", applies=lambda s: not s.causal)
def _sees_future(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    return _future_influence_check("sees-future", spec, opts, MIN_FUTURE_INFLUENCE, at_least=True,
                                   detail="largest influence of later inputs on outputs <= t (at t={t}); "
                                          "must be >= tolerance")


# --------------------------------------------------------------------------------------------------------------
# cached decoding


def _prefill_lengths(T: int) -> list[int]:
    return sorted({0, 1, T // 2, T - 1} & set(range(T)))


@check("cached-decoding", "prefill + one token at a time equals the parallel output",
       applies=lambda s: s.cache is not None)
def _cached_decoding(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    name = "cached-decoding"
    x = _inputs(opts)
    T, B = opts.seq_len, opts.batch_size
    tol = scaled_tolerance(opts.dtype, TOL_CACHE)
    results = []
    for impl, reason in _runnable_backends(spec, opts):
        if reason:
            results.append(skipped(name, spec, impl, reason))
            continue
        layer = build_layer(spec, opts, impl=impl)
        with torch.no_grad():
            y = layer(x)  # (B, T, d_model)
            for m in _prefill_lengths(T):
                cache = layer.new_cache(B, device=opts.device, dtype=opts.dtype)
                outs = []
                if m > 0:
                    outs.append(layer(x[:, :m], cache=cache))
                for t in range(m, T):
                    outs.append(layer(x[:, t: t + 1], cache=cache))
                got = torch.cat(outs, dim=1)
                err = max_abs_error(got, y)
                detail = ""
                if cache.seq_len != T:
                    err, detail = float("nan"), f"cache.seq_len={cache.seq_len} after {T} tokens, expected {T}"
                elif not math.isnan(err):
                    per_t = (got - y).abs().amax(dim=(0, 2))
                    detail = f"worst position {int(per_t.argmax())}"
                results.append(result(name, spec, f"{impl}, prefill {m}", err, tol, detail=detail))
            # reset(): the same cache object replays the sequence from position 0
            cache.reset()
            got = torch.cat([layer(x[:, t: t + 1], cache=cache) for t in range(T)], dim=1)
            results.append(result(name, spec, f"{impl}, after reset", max_abs_error(got, y), tol))
    return results


# --------------------------------------------------------------------------------------------------------------
# mask-respected


def _declares_mask(spec: MechanismSpec) -> bool:
    """Whether the mechanism's layer attends through a :class:`~attnlab.masks.Mask` it exposes as ``layer.mask``."""
    layer = build_layer(spec, VerifyOptions())
    return isinstance(getattr(layer, "mask", None), Mask) and not getattr(layer, "cross", False)


@check("mask-respected", "output i depends on input j != i exactly where the layer's mask lets query i see key j",
       applies=_declares_mask)
def _mask_respected(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    """Self-attention through ``layer.mask``: output ``i`` depends on input ``j != i`` exactly where the mask lets
    query ``i`` see key ``j`` (in any head). Hidden keys must have a zero gradient (tolerance ``TOL_CAUSAL``);
    visible keys a non-zero one (> ``TOL_VISIBLE``: with random weights an exact zero would mean the layer
    ignores a key its mask allows), so a layer that ignores, loosens or tightens its mask fails."""
    name = "mask-respected"
    x0 = _inputs(opts)
    B, T = x0.shape[0], x0.shape[1]

    def body(layer: nn.Module, impl: str) -> CheckResult:
        vis = dense(layer.mask, T, T, batch_size=B, n_heads=getattr(layer, "n_heads", 1)).any(dim=1)  # (B, T, T)
        vis = vis.to(x0.device)
        x = x0.detach().clone().requires_grad_(True)
        y = layer(x)  # (B, T, d_model)
        g = torch.Generator().manual_seed(opts.seed + 5)
        w = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y)
        leak, leak_at, weakest, weak_at = 0.0, "-", math.inf, "-"
        for i in range(T):
            (gx,) = torch.autograd.grad((y[:, i] * w[:, i]).sum(), x, retain_graph=True)  # (B, T, d_model)
            infl = gx.abs().amax(dim=-1)  # (B, T): influence of each input position on output i
            for b in range(B):
                for j in range(T):
                    if j == i:
                        continue
                    v = float(infl[b, j])
                    if bool(vis[b, i, j]):
                        if v < weakest:
                            weakest, weak_at = v, f"b={b} i={i} j={j}"
                    elif math.isnan(v) or v > leak:
                        leak, leak_at = v, f"b={b} i={i} j={j}"
        tol = scaled_tolerance(opts.dtype, TOL_CAUSAL)
        if weakest <= TOL_VISIBLE:
            return result(name, spec, impl, float("inf"), tol,
                          detail=f"a visible key has no influence: |d out / d in| = {weakest:.3g} at {weak_at}")
        hidden = f"worst hidden key at {leak_at}" if leak_at != "-" else "every hidden key has exactly zero influence"
        return result(name, spec, impl, leak, tol, detail=f"{hidden}; weakest visible key {weakest:.3g} at {weak_at}")

    return _per_backend(name, spec, opts, body, vacuous="needs T >= 2" if T < 2 else None)


# --------------------------------------------------------------------------------------------------------------
# batch consistency


@check("batch-consistency", "each example alone equals the batched output", applies=lambda s: True)
def _batch_consistency(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    name = "batch-consistency"
    x = _inputs(opts)
    tol = scaled_tolerance(opts.dtype, TOL_BATCH)

    def body(layer: nn.Module, impl: str) -> CheckResult:
        with torch.no_grad():
            y = layer(x)
            err = max(max_abs_error(layer(x[i: i + 1]), y[i: i + 1]) for i in range(x.shape[0]))
        return result(name, spec, impl, err, tol, detail="per-example vs batched output")

    # one example alone *is* the batch: the comparison could not fail
    vacuous = f"batch_size={opts.batch_size} (needs batch_size >= 2)" if opts.batch_size < 2 else None
    return _per_backend(name, spec, opts, body, vacuous=vacuous)
