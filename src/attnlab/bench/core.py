"""The benchmark registry: named suites that measure and return tables.

A :class:`Suite` has a ``run(options) -> SuiteResult`` and, optionally, ``plot(result, path_stem) -> [paths]``.
Suites register themselves in :data:`SUITES` (an :class:`attnlab.registry.Registry`) with :func:`register_suite`
when their module is imported; importing :mod:`attnlab.bench` imports every module of the package, so a plugin
only needs a new module or subpackage there (e.g. ``bench/castle/`` registering a ``"castle"`` suite).

Every figure is measured against a baseline timed in the same process (raw PyTorch SDPA with causal masking),
and every case runs a correctness check first: a case that fails it reports the failure instead of a speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from attnlab._validation import check_float, check_int
from attnlab.layers.registry import MECHANISMS
from attnlab.registry import Registry

__all__ = ["default_device", "BenchOptions", "Table", "SuiteResult", "Suite", "SUITES", "register_suite", "suites", "get_suite"]


def default_device() -> str:
    """``"cuda"`` where a CUDA device is available, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True, kw_only=True)
class BenchOptions:
    """What and how to measure.

    Attributes:
        device: ``"cpu"`` or ``"cuda"`` (``"cuda:N"``).
        dtype: the dtype of the timed runs (correctness checks compare against float64).
        lengths: sequence lengths ``T``; ``None`` takes the suite's default for the device.
        quick: a short run (the demo): small lengths (unless ``lengths`` is given) and, replacing ``warmup`` and
            ``repeats``, 1 warm-up call and at least 3 timed calls (see :meth:`timing`).
        warmup, repeats: calls before timing, and the least number of timed calls (the median is reported;
            fast cases take more, see :meth:`timing`).
        budget_s: stop repeating a case after this many seconds (at least 3 timed calls always run).
        min_time_s: keep repeating a case (up to 200 calls) until this many seconds of timing have passed, so that
            fast cases take many samples (default 1 s; a GPU run of many cases may lower it).
        mechanisms: restrict the suites to these registry names (``None``: all registered); unknown names are
            refused.
        d_model, n_heads, batch_size: layer and batch sizes.
        progress: show a progress bar on stderr.
    """

    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    lengths: tuple[int, ...] | None = None
    quick: bool = False
    warmup: int = 2
    repeats: int = 7
    budget_s: float = 15.0
    min_time_s: float = 1.0
    mechanisms: tuple[str, ...] | None = None
    d_model: int = 256
    n_heads: int = 4
    batch_size: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        if self.lengths is not None:
            if not self.lengths or any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in self.lengths):
                raise ValueError(f"lengths must be positive ints, got {self.lengths!r}")
        check_int("d_model", self.d_model, 1)
        check_int("n_heads", self.n_heads, 1)
        check_int("batch_size", self.batch_size, 1)
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} must divide d_model={self.d_model}")
        if torch.device(self.device).type not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        check_float("budget_s", self.budget_s, low=0.0, low_inclusive=False, high=math.inf)
        check_float("min_time_s", self.min_time_s, low=0.0, high=math.inf)
        if self.warmup < 0 or self.repeats < 1:
            raise ValueError(f"need warmup >= 0, repeats >= 1 and budget_s > 0; got warmup={self.warmup}, "
                             f"repeats={self.repeats}, budget_s={self.budget_s}")
        if self.mechanisms is not None:
            MECHANISMS.get_all(self.mechanisms)  # unknown names: a ValueError listing the registered ones

    def timing(self) -> dict[str, Any]:
        """The keyword arguments of :func:`attnlab.bench.measure.time_fns` that the suites time with.

        A case is warmed up ``warmup`` times, then timed at least ``repeats`` times and until ``min_time_s`` of
        timing have passed (so fast cases take many samples), at most ``max_repeats`` times; once ``budget_s`` is
        spent it stops after ``min_repeats``. ``quick`` uses 1 warm-up call, 3 repeats and 0.05 s instead.
        """
        kw: dict[str, Any] = dict(device=self.device, warmup=self.warmup, repeats=self.repeats, min_repeats=3,
                                  min_time_s=self.min_time_s, max_repeats=200, budget_s=self.budget_s)
        if self.quick:
            kw.update(warmup=1, repeats=3, min_time_s=0.05)
        return kw

    @property
    def is_cuda(self) -> bool:
        return torch.device(self.device).type == "cuda"

    def lengths_or(self, *, cpu: tuple[int, ...], cuda: tuple[int, ...], quick: tuple[int, ...]) -> tuple[int, ...]:
        """The lengths to use: explicit ones, else the quick ones, else the device's defaults."""
        if self.lengths is not None:
            return self.lengths
        if self.quick:
            return quick
        return cuda if self.is_cuda else cpu


@dataclass(kw_only=True)
class Table:
    """One table of a result: ``rows`` are dicts keyed by ``columns`` (missing keys print as empty)."""

    title: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass(kw_only=True)
class SuiteResult:
    suite: str
    options: BenchOptions
    tables: list[Table]
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # raw numbers for the suite's plot

    @property
    def failures(self) -> list[dict[str, Any]]:
        """Rows whose status is not ``"ok"`` (correctness failures or errors)."""
        return [r for t in self.tables for r in t.rows if r.get("status", "ok") != "ok"]


@dataclass(frozen=True, kw_only=True)
class Suite:
    name: str
    description: str
    run: Callable[[BenchOptions], SuiteResult]
    plot: Callable[[SuiteResult, Path], list[Path]] | None = None


# importing attnlab.bench registers the built-in ones
SUITES: Registry[Suite] = Registry("benchmark suite", load="attnlab.bench")


def register_suite(suite: Suite) -> Suite:
    """Add a suite; its name must be new."""
    return SUITES.register(suite.name, suite)


def suites() -> list[Suite]:
    """Every registered suite, in registration order (the built-in ones are loaded on first use)."""
    return SUITES.items()


def get_suite(name: str) -> Suite:
    """The suite registered as ``name``; unknown names list the valid ones."""
    return SUITES.get(name)
