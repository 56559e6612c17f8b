"""The property checks shared by the test-suite and ``attnlab verify``.

A :class:`Check` applies to some registered mechanisms and returns one :class:`CheckResult` per case it ran.
Tests parametrise over ``(check, mechanism)`` pairs and assert ``result.passed``; the CLI prints the same
results as a table. Checks register themselves in :data:`CHECKS` (an :class:`attnlab.registry.Registry`) when their
module is imported, with the :func:`check` decorator on their ``run`` function.

The building blocks every check module writes its cases with are here too: :func:`build_layer` (the layer at
verification sizes), :func:`max_abs_error` / :func:`relative_error`, :func:`scaled_tolerance` (a float64
tolerance loosened for lower precisions), :func:`result` / :func:`worst_result` and :func:`skipped`.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from attnlab._validation import check_int
from attnlab.layers.registry import MECHANISMS, MechanismSpec
from attnlab.registry import Registry

__all__ = ["CheckResult", "Check", "VerifyOptions", "CHECKS", "register_check", "check", "checks", "applicable",
           "run_check", "run_checks", "SKIPPED_PREFIX", "build_layer", "scaled_tolerance", "max_abs_error",
           "relative_error", "worst", "result", "worst_result", "skipped"]


@dataclass(frozen=True, kw_only=True)
class VerifyOptions:
    """Sizes and numerics for a verification run (small enough for a 2-core CPU)."""

    dtype: torch.dtype = torch.float64
    device: str = "cpu"
    batch_size: int = 2
    seq_len: int = 13
    d_model: int = 24
    n_heads: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("batch_size", self.batch_size, 1)
        check_int("seq_len", self.seq_len, 1)  # T=1 (or B=1): the checks that need more are skipped, not passed
        check_int("d_model", self.d_model, 1)
        check_int("n_heads", self.n_heads, 1)
        check_int("seed", self.seed, 0)
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} must divide d_model={self.d_model}")
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point torch.dtype, got {self.dtype!r}")


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    check: str
    mechanism: str
    case: str
    max_error: float
    tolerance: float
    passed: bool
    detail: str = ""
    skipped: bool = False  # the case could not run here (e.g. a CUDA-only backend on CPU): it verified nothing
    at_least: bool = False  # the tolerance is a lower bound: the case passes when max_error >= tolerance


RunFn = Callable[[MechanismSpec, VerifyOptions], list[CheckResult]]


@dataclass(frozen=True, kw_only=True)
class Check:
    """A named property check.

    Attributes:
        name: e.g. ``"backend-vs-reference"``.
        description: one line, for the CLI.
        applies: whether the check is meaningful for a mechanism.
        run: runs the check, returning one result per case (e.g. per backend).
    """

    name: str
    description: str
    applies: Callable[[MechanismSpec], bool]
    run: RunFn
    extra: dict = field(default_factory=dict)


# importing attnlab.verify registers the built-in ones
CHECKS: Registry[Check] = Registry("check", load="attnlab.verify")


def register_check(check: Check) -> Check:
    """Add a check; its name must be new."""
    return CHECKS.register(check.name, check)


def checks() -> list[Check]:
    """Every registered check, in registration order (the built-in ones are loaded on first use)."""
    return CHECKS.items()


def check(name: str, description: str, *, applies: Callable[[MechanismSpec], bool]) -> Callable[[RunFn], RunFn]:
    """Decorator: register the decorated ``run(spec, options) -> [CheckResult]`` as the check ``name``."""
    def register(run: RunFn) -> RunFn:
        register_check(Check(name=name, description=description, applies=applies, run=run))
        return run

    return register


def applicable(spec: MechanismSpec) -> list[Check]:
    """The registered checks that apply to ``spec``."""
    return [c for c in checks() if c.applies(spec)]


def run_check(check: Check, spec: MechanismSpec, options: VerifyOptions | None = None) -> list[CheckResult]:
    """Run one check; an exception becomes a failed result carrying the error, never a silent pass."""
    opts = options or VerifyOptions()
    try:
        results = check.run(spec, opts)
    except Exception as exc:  # a crash is a failure to report, not to hide
        return [result(check.name, spec, "-", math.nan, 0.0, detail=f"{type(exc).__name__}: {exc}")]
    return results or [result(check.name, spec, "-", math.nan, 0.0, detail="check ran no case")]


def run_checks(names: Sequence[str] | None, options: VerifyOptions | None = None, *,
               only: Sequence[str] | None = None, progress: bool = True) -> list[CheckResult]:
    """Every applicable check (or only the checks named in ``only``) over the named mechanisms (``None`` or
    empty: every registered one). Unknown mechanism or check names raise a ``ValueError`` before anything runs."""
    specs = MECHANISMS.get_all(names) if names else MECHANISMS.items()
    wanted = {c.name for c in CHECKS.get_all(only)} if only else None
    pairs = [(c, s) for s in specs for c in applicable(s) if wanted is None or c.name in wanted]
    if progress:
        from tqdm.auto import tqdm

        pairs = tqdm(pairs, desc="verify", file=sys.stderr, leave=False)
    return [r for c, s in pairs for r in run_check(c, s, options)]


# --------------------------------------------------------------------------------------------------------------
# building blocks of a check: the layer at verification sizes, errors, tolerances, results and skips

SKIPPED_PREFIX = "skipped: "
_LOW_PRECISION_TOL = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}


def build_layer(spec: MechanismSpec, opts: VerifyOptions, *, impl: str | None = None) -> nn.Module:
    """The layer at verification sizes, in ``opts.dtype`` on ``opts.device``, weights from ``opts.seed``, eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(opts.seed)
        layer = spec.build(d_model=opts.d_model, n_heads=opts.n_heads, **spec.verify_options)
    layer = layer.to(device=opts.device, dtype=opts.dtype).eval()
    if impl is not None:
        layer.impl = impl
    return layer


def scaled_tolerance(dtype: torch.dtype, tol64: float) -> float:
    """A float64 tolerance, loosened for a lower precision run (``attnlab verify --dtype float32``)."""
    if dtype == torch.float64:
        return tol64
    return max(tol64, _LOW_PRECISION_TOL.get(dtype, 1e-4))


def max_abs_error(a: Tensor | None, b: Tensor | None) -> float:
    """``max |a - b|``; ``nan`` for a missing tensor or a shape mismatch (a failure), ``0`` for empty tensors."""
    if a is None or b is None or a.shape != b.shape:
        return float("nan")
    return float((a.detach() - b.detach()).abs().max()) if a.numel() else 0.0


def relative_error(got: Tensor, want: Tensor) -> float:
    """``max |got - want| / max(1, max |want|)``; ``nan`` for a shape mismatch."""
    if got.shape != want.shape:
        return float("nan")
    return max_abs_error(got, want) / max(1.0, float(want.detach().abs().max()))


def worst(errors: dict[str, float]) -> str:
    """The key of the largest error (a ``nan`` counts as the largest)."""
    return max(errors, key=lambda k: math.inf if math.isnan(errors[k]) else errors[k])


def result(check: str, spec: MechanismSpec, case: str, err: float, tol: float, *, detail: str = "",
           at_least: bool = False) -> CheckResult:
    """A case that passes when ``err <= tol`` (``err >= tol`` with ``at_least``); ``nan`` always fails."""
    passed = not math.isnan(err) and (err >= tol if at_least else err <= tol)
    return CheckResult(check=check, mechanism=spec.name, case=case, max_error=float(err), tolerance=tol,
                       passed=passed, detail=detail, at_least=at_least)


def worst_result(check: str, spec: MechanismSpec, case: str, errors: dict[str, float], tol: float) -> CheckResult:
    """:func:`result` of the largest of ``errors``, named in the detail (``"worst: grad[x]"``)."""
    w = worst(errors)
    return result(check, spec, case, errors[w], tol, detail=f"worst: {w}")


def skipped(check: str, spec: MechanismSpec, case: str, reason: str, *, tol: float = 0.0) -> CheckResult:
    """A case that could not run here (e.g. a CUDA-only backend on CPU): visibly skipped, it verified nothing."""
    return CheckResult(check=check, mechanism=spec.name, case=case, max_error=float("nan"), tolerance=tol,
                       passed=False, detail=SKIPPED_PREFIX + reason, skipped=True)
