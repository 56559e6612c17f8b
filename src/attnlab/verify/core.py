"""The property checks shared by the test-suite and ``attnlab verify``.

A :class:`Check` applies to some registered mechanisms and returns one :class:`CheckResult` per case it ran.
Tests parametrise over ``(check, mechanism)`` pairs and assert ``result.passed``; the CLI prints the same
results as a table. Checks register themselves in :data:`CHECKS` (an :class:`attnlab.registry.Registry`) with
:func:`register_check` when their module is imported.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from attnlab.layers.registry import MECHANISMS, MechanismSpec
from attnlab.registry import Registry

__all__ = ["CheckResult", "Check", "VerifyOptions", "CHECKS", "register_check", "checks", "applicable", "run_check",
           "run_checks"]


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
    run: Callable[[MechanismSpec, VerifyOptions], list[CheckResult]]
    extra: dict = field(default_factory=dict)


def _load_builtin() -> None:
    import attnlab.verify  # noqa: F401  (importing the package imports every check module)


CHECKS: Registry[Check] = Registry("check", load=_load_builtin)


def register_check(check: Check) -> Check:
    """Add a check; its name must be new."""
    return CHECKS.register(check.name, check)


def checks() -> list[Check]:
    """Every registered check, in registration order (the built-in ones are loaded on first use)."""
    return CHECKS.items()


def applicable(spec: MechanismSpec) -> list[Check]:
    """The registered checks that apply to ``spec``."""
    return [c for c in checks() if c.applies(spec)]


def run_check(check: Check, spec: MechanismSpec, options: VerifyOptions | None = None) -> list[CheckResult]:
    """Run one check; an exception becomes a failed result carrying the error, never a silent pass."""
    opts = options or VerifyOptions()
    try:
        results = check.run(spec, opts)
    except Exception as exc:  # a crash is a failure to report, not to hide
        return [CheckResult(check=check.name, mechanism=spec.name, case="-", max_error=float("nan"),
                            tolerance=0.0, passed=False, detail=f"{type(exc).__name__}: {exc}")]
    if not results:
        return [CheckResult(check=check.name, mechanism=spec.name, case="-", max_error=float("nan"),
                            tolerance=0.0, passed=False, detail="check ran no case")]
    return results


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
