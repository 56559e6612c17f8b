"""The ``castle`` suite's correctness gates: every benchmarked path against its float64 reference on CPU.

Layers: output, input gradient and every parameter gradient; decode: prefill + single steps against the full
reference forward; the naive parallel op against the reference op. Errors are relative
(``max|got - ref| / (1 + max|ref|)``, :func:`attnlab.bench.steps.relative_error`); a failed gate replaces the
speed of the cases it covers.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from attnlab.bench.castle.sizes import CHECK_T, op_inputs, sizes
from attnlab.bench.core import BenchOptions
from attnlab.bench.steps import check_tolerance, correctness_status, relative_error, short_error
from attnlab.ops.castle import castle_attention

__all__ = ["CHECK_COLUMNS", "DECODE_STEPS_CHECKED", "check_layer", "check_decode", "check_parallel"]

CHECK_COLUMNS = ["case", "T", "max error", "tolerance", "status"]
DECODE_STEPS_CHECKED = 6  # decode check: prefill CHECK_T - 6 tokens, then 6 single steps


def _check_row(case: str, T: int, err: float, tol: float) -> dict[str, Any]:
    return {"case": case, "T": T, "max error": err, "tolerance": tol, "status": correctness_status(err, tol)}


def check_layer(layer: nn.Module, options: BenchOptions, reference_impl: str, case: str) -> dict[str, Any]:
    """The layer as benchmarked (its ``impl``, the bench dtype and device) against a float64 copy on CPU with
    ``impl=reference_impl``: output, input gradient and every parameter gradient (relative max error)."""
    T = CHECK_T
    try:
        ref = copy.deepcopy(layer).to(device="cpu", dtype=torch.float64)
        ref.impl = reference_impl
        gen = torch.Generator().manual_seed(1)
        x64 = torch.randn(options.batch_size, T, options.d_model, dtype=torch.float64, generator=gen)
        g64 = torch.randn(options.batch_size, T, options.d_model, dtype=torch.float64, generator=gen)
        xr = x64.clone().requires_grad_(True)
        y_ref = ref(xr)
        y_ref.backward(g64)
        xb = x64.to(device=options.device, dtype=options.dtype).requires_grad_(True)
        layer.zero_grad(set_to_none=True)
        y = layer(xb)
        y.backward(g64.to(device=options.device, dtype=options.dtype))
        errs = [relative_error(y, y_ref.detach()), relative_error(xb.grad, xr.grad)]
        ref_params = dict(ref.named_parameters())
        errs += [relative_error(p.grad, ref_params[n].grad) for n, p in layer.named_parameters()]
        layer.zero_grad(set_to_none=True)
        return _check_row(case, T, max(errs), check_tolerance(options.dtype))
    except Exception as exc:  # reported, not hidden
        return {"case": case, "T": T, "status": short_error(exc)}


def check_decode(layer: nn.Module, options: BenchOptions, case: str) -> dict[str, Any]:
    """Cached decoding as benchmarked (prefill, then one token at a time) against the float64 reference forward
    of the whole sequence (``impl="reference"``, no cache)."""
    T = CHECK_T
    try:
        ref = copy.deepcopy(layer).to(device="cpu", dtype=torch.float64)
        ref.impl = "reference"
        x64 = torch.randn(1, T, options.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            y_ref = ref(x64)
            x = x64.to(device=options.device, dtype=options.dtype)
            cache = layer.new_cache(1)
            n0 = T - DECODE_STEPS_CHECKED
            outs = [layer(x[:, :n0], cache=cache)]
            outs += [layer(x[:, t : t + 1], cache=cache) for t in range(n0, T)]
            y = torch.cat(outs, dim=1)
        return _check_row(case, T, relative_error(y, y_ref), check_tolerance(options.dtype))
    except Exception as exc:
        return {"case": case, "T": T, "status": short_error(exc)}


def check_parallel(options: BenchOptions) -> dict[str, Any]:
    """``castle_attention(impl="parallel")`` in the bench dtype against ``impl="reference"`` in float64."""
    _, n_c, _ = sizes(options)
    T = CHECK_T
    case = "castle parallel op (memory table)"
    try:
        xs64 = op_inputs(6, options, n_c, T, requires_grad=False, dtype=torch.float64, device="cpu", seed=3)
        ref = castle_attention(*xs64, impl="reference")
        got = castle_attention(*(x.to(device=options.device, dtype=options.dtype) for x in xs64), impl="parallel")
        return _check_row(case, T, relative_error(got, ref), check_tolerance(options.dtype))
    except Exception as exc:
        return {"case": case, "T": T, "status": short_error(exc)}
