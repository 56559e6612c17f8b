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
from attnlab.verify.core import Check, CheckResult, VerifyOptions, register_check

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

SKIPPED_PREFIX = "skipped: "


def is_skipped(result: CheckResult) -> bool:
    """``True`` for a case that could not run here (e.g. a CUDA-only backend on CPU); it verified nothing."""
    return result.skipped


def _tol(dtype: torch.dtype, tol64: float) -> float:
    """Scale a float64 tolerance to a lower precision run (``attnlab verify --dtype float32``)."""
    if dtype == torch.float64:
        return tol64
    return max(tol64, {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}.get(dtype, 1e-4))


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


def build_layer(spec: MechanismSpec, opts: VerifyOptions, *, impl: str | None = None) -> nn.Module:
    """The layer at verification sizes, in ``opts.dtype`` on ``opts.device``, weights from ``opts.seed``, eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(opts.seed)
        layer = spec.build(d_model=opts.d_model, n_heads=opts.n_heads, **spec.verify_options)
    layer = layer.to(device=opts.device, dtype=opts.dtype).eval()
    if impl is not None:
        layer.impl = impl
    return layer


def _inputs(opts: VerifyOptions, *, seed_offset: int = 0, seq_len: int | None = None) -> Tensor:
    g = torch.Generator().manual_seed(opts.seed + 1000 + seed_offset)
    T = opts.seq_len if seq_len is None else seq_len
    x = torch.randn(opts.batch_size, T, opts.d_model, generator=g, dtype=torch.float64)  # (B, T, d_model)
    return x.to(device=opts.device, dtype=opts.dtype)


def _runnable_backends(spec: MechanismSpec, opts: VerifyOptions) -> Iterator[tuple[str, str | None]]:
    for impl in spec.backends:
        yield impl, backend_unavailable_reason(impl, opts.device)


def _result(check: str, spec: MechanismSpec, case: str, err: float, tol: float, *, detail: str = "",
            higher_is_better: bool = False) -> CheckResult:
    ok = (err >= tol) if higher_is_better else (err <= tol)
    if math.isnan(err):
        ok = False
    return CheckResult(check=check, mechanism=spec.name, case=case, max_error=float(err), tolerance=tol,
                       passed=bool(ok), detail=detail, at_least=higher_is_better)


def _skip(check: str, spec: MechanismSpec, case: str, reason: str) -> CheckResult:
    return CheckResult(check=check, mechanism=spec.name, case=case, max_error=float("nan"), tolerance=0.0,
                       passed=False, detail=SKIPPED_PREFIX + reason, skipped=True)


def _max_abs(a: Tensor, b: Tensor) -> float:
    if a.shape != b.shape:
        return float("nan")
    if a.numel() == 0:
        return 0.0
    return float((a.detach() - b.detach()).abs().max())


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


def _backends_vs_reference(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    name = "backends-vs-reference"
    ref_impl = spec.backends[0]
    base = build_layer(spec, opts, impl=ref_impl)
    x = _inputs(opts)
    contexts: list[tuple[str, Tensor | None]] = [("self", None)]
    if spec.cross:
        contexts.append(("cross", _inputs(opts, seed_offset=1, seq_len=max(1, opts.seq_len // 2 + 1))))
    tol = _tol(opts.dtype, TOL_BACKEND)
    results = []
    for impl, reason in list(_runnable_backends(spec, opts))[1:]:
        for kind, ctx in contexts:
            case = f"{impl} vs {ref_impl}" + ("" if kind == "self" else " (cross)")
            if reason:
                results.append(_skip(name, spec, case, reason))
                continue
            ref = _forward_and_grads(base, x, ctx)
            layer = copy.deepcopy(base)
            layer.impl = impl
            got = _forward_and_grads(layer, x, ctx)
            errs = {k: _max_abs(got[k], ref[k]) if k in got else float("nan") for k in ref}
            worst = max(errs, key=lambda k: float("inf") if math.isnan(errs[k]) else errs[k])
            err = errs[worst]
            detail = f"worst: {worst}" + (" (missing or shape mismatch)" if math.isnan(err) else "")
            results.append(_result(name, spec, case, err, tol, detail=detail))
    return results


# --------------------------------------------------------------------------------------------------------------
# causality and its negation


def _future_influence(layer: nn.Module, x: Tensor, positions: list[int], seed: int) -> tuple[float, int]:
    """Largest change of outputs ``<= t`` when every input after ``t`` is replaced, over ``t`` in ``positions``."""
    worst, worst_t = 0.0, -1
    with torch.no_grad():
        y = layer(x)  # (B, T, d_model)
        g = torch.Generator().manual_seed(seed)
        for t in positions:
            x2 = x.clone()
            noise = torch.randn(x[:, t + 1:].shape, generator=g, dtype=torch.float64).to(x)
            x2[:, t + 1:] = 3.0 * noise  # a large change of every later input
            y2 = layer(x2)
            d = _max_abs(y2[:, : t + 1], y[:, : t + 1])
            if math.isnan(d) or d > worst:
                worst, worst_t = d, t
                if math.isnan(d):
                    break
    return worst, worst_t


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
            results.append(_skip(name, spec, impl, reason))
            continue
        results.append(body(build_layer(spec, opts, impl=impl), impl))
    return results


def _causality_perturbation(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    name = "causality-perturbation"
    x = _inputs(opts)

    def body(layer: nn.Module, impl: str) -> CheckResult:
        err, t = _future_influence(layer, x, _positions(opts.seq_len), opts.seed)
        return _result(name, spec, impl, err, _tol(opts.dtype, TOL_CAUSAL),
                       detail=f"worst t={t}: outputs <= t moved when inputs > t changed")

    return _per_backend(name, spec, opts, body, vacuous=_no_future(opts))


def _causality_gradient(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    name = "causality-gradient"
    x0 = _inputs(opts)
    T = opts.seq_len

    def body(layer: nn.Module, impl: str) -> CheckResult:
        x = x0.detach().clone().requires_grad_(True)
        y = layer(x)  # (B, T, d_model)
        g = torch.Generator().manual_seed(opts.seed + 3)
        w = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y)
        worst, worst_t = 0.0, -1
        for t in range(T - 1):
            (gx,) = torch.autograd.grad((y[:, t] * w[:, t]).sum(), x, retain_graph=True)  # (B, T, d_model)
            d = float(gx[:, t + 1:].abs().max())
            if math.isnan(d) or d > worst:
                worst, worst_t = d, t
        return _result(name, spec, impl, worst, _tol(opts.dtype, TOL_CAUSAL),
                       detail=f"worst t={worst_t}: |d out[t] / d in[>t]|")

    return _per_backend(name, spec, opts, body, vacuous=_no_future(opts))


def _sees_future(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    name = "sees-future"
    x = _inputs(opts)

    def body(layer: nn.Module, impl: str) -> CheckResult:
        infl, t = _future_influence(layer, x, _positions(opts.seq_len), opts.seed)
        return _result(name, spec, impl, infl, MIN_FUTURE_INFLUENCE, higher_is_better=True,
                       detail=f"largest influence of later inputs on outputs <= t (at t={t}); must be >= tolerance")

    return _per_backend(name, spec, opts, body, vacuous=_no_future(opts))


# --------------------------------------------------------------------------------------------------------------
# cached decoding


def _prefill_lengths(T: int) -> list[int]:
    return sorted({0, 1, T // 2, T - 1} & set(range(T)))


def _cached_decoding(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    name = "cached-decoding"
    x = _inputs(opts)
    T, B = opts.seq_len, opts.batch_size
    tol = _tol(opts.dtype, TOL_CACHE)
    results = []
    for impl, reason in _runnable_backends(spec, opts):
        if reason:
            results.append(_skip(name, spec, impl, reason))
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
                err = _max_abs(got, y)
                detail = ""
                if cache.seq_len != T:
                    err, detail = float("nan"), f"cache.seq_len={cache.seq_len} after {T} tokens, expected {T}"
                elif not math.isnan(err):
                    per_t = (got - y).abs().amax(dim=(0, 2))
                    detail = f"worst position {int(per_t.argmax())}"
                results.append(_result(name, spec, f"{impl}, prefill {m}", err, tol, detail=detail))
            # reset(): the same cache object replays the sequence from position 0
            cache.reset()
            got = torch.cat([layer(x[:, t: t + 1], cache=cache) for t in range(T)], dim=1)
            results.append(_result(name, spec, f"{impl}, after reset", _max_abs(got, y), tol))
    return results


# --------------------------------------------------------------------------------------------------------------
# batch consistency


def _batch_consistency(spec: MechanismSpec, opts: VerifyOptions) -> list[CheckResult]:
    name = "batch-consistency"
    x = _inputs(opts)
    tol = _tol(opts.dtype, TOL_BATCH)

    def body(layer: nn.Module, impl: str) -> CheckResult:
        with torch.no_grad():
            y = layer(x)
            err = max(_max_abs(layer(x[i: i + 1]), y[i: i + 1]) for i in range(x.shape[0]))
        return _result(name, spec, impl, err, tol, detail="per-example vs batched output")

    # one example alone *is* the batch: the comparison could not fail
    vacuous = f"batch_size={opts.batch_size} (needs batch_size >= 2)" if opts.batch_size < 2 else None
    return _per_backend(name, spec, opts, body, vacuous=vacuous)



# --------------------------------------------------------------------------------------------------------------
# mask-respected


def _declares_mask(spec: MechanismSpec) -> bool:
    """Whether the mechanism's layer attends through a :class:`~attnlab.masks.Mask` it exposes as ``layer.mask``."""
    layer = build_layer(spec, VerifyOptions())
    return isinstance(getattr(layer, "mask", None), Mask) and not getattr(layer, "cross", False)


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
        tol = _tol(opts.dtype, TOL_CAUSAL)
        if weakest <= TOL_VISIBLE:
            return _result(name, spec, impl, float("inf"), tol,
                           detail=f"a visible key has no influence: |d out / d in| = {weakest:.3g} at {weak_at}")
        hidden = f"worst hidden key at {leak_at}" if leak_at != "-" else "every hidden key has exactly zero influence"
        return _result(name, spec, impl, leak, tol, detail=f"{hidden}; weakest visible key {weakest:.3g} at {weak_at}")

    return _per_backend(name, spec, opts, body, vacuous="needs T >= 2" if T < 2 else None)

register_check(Check(
    name="backends-vs-reference",
    description="every backend equals the reference: outputs and gradients (input, context, parameters)",
    applies=lambda s: len(s.backends) > 1,
    run=_backends_vs_reference,
))
register_check(Check(
    name="causality-perturbation",
    description="outputs at positions <= t do not change when inputs after t change",
    applies=lambda s: s.causal,
    run=_causality_perturbation,
))
register_check(Check(
    name="causality-gradient",
    description="the gradient of output t w.r.t. inputs after t is zero",
    applies=lambda s: s.causal,
    run=_causality_gradient,
))
register_check(Check(
    name="sees-future",
    description="a bidirectional layer's outputs depend on later inputs",
    applies=lambda s: not s.causal,
    run=_sees_future,
))
register_check(Check(
    name="cached-decoding",
    description="prefill + one token at a time equals the parallel output",
    applies=lambda s: s.cache is not None,
    run=_cached_decoding,
))
register_check(Check(
    name="mask-respected",
    description="output i depends on input j != i exactly where the layer's mask lets query i see key j",
    applies=_declares_mask,
    run=_mask_respected,
))
register_check(Check(
    name="batch-consistency",
    description="each example alone equals the batched output",
    applies=lambda s: True,
    run=_batch_consistency,
))
