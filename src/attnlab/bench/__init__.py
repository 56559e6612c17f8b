"""Benchmarks: a registry of suites, measurement utilities, reports and plots.

Importing this package loads every module in it, so a new suite only needs a new file here that calls
:func:`attnlab.bench.core.register_suite` (e.g. ``castle.py``).
"""

import importlib
import pkgutil

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

from attnlab.bench.core import BenchOptions, Suite, SuiteResult, Table, get_suite, register_suite, suites  # noqa: E402
from attnlab.bench.report import write_results  # noqa: E402

__all__ = ["BenchOptions", "Suite", "SuiteResult", "Table", "get_suite", "register_suite", "suites", "write_results"]
