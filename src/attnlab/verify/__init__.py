"""Verification: property checks over every registered mechanism (see :mod:`attnlab.verify.core`).

Importing this package loads every check module in it.
"""

import importlib
import pkgutil

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _m.name.startswith("_") and _m.name != "core":
        importlib.import_module(f"{__name__}.{_m.name}")

from attnlab.verify.core import (  # noqa: E402
    CHECKS, Check, CheckResult, VerifyOptions, applicable, checks, register_check, run_check, run_checks)

__all__ = ["CHECKS", "Check", "CheckResult", "VerifyOptions", "applicable", "checks", "register_check", "run_check",
           "run_checks"]
