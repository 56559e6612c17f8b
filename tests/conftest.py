"""Shared test configuration: deterministic seeds and the GPU tier."""

from __future__ import annotations

import pytest
import torch


# Tests use small tensors: one intra-op thread per test process avoids oversubscribing the cores
# (the suite runs under pytest-xdist with one worker per core).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread for every test, restored afterwards: a run config's ``threads`` (the trainer calls
    torch.set_num_threads, process-wide) must not leak into the next test."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="GPU tier: no CUDA device on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def benchmark_script():
    """Load a script of ``benchmarks/`` (not a package) as a module: ``benchmark_script("etth1_table.py")``."""
    import importlib.util
    import sys
    from pathlib import Path

    def load(relative: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / relative
        name = "bench_" + path.stem
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # (dataclasses look their module up there)
        spec.loader.exec_module(mod)
        return mod

    return load


_XDIST_WORKER = False  # set by pytest_configure: this process is a pytest-xdist worker


def pytest_configure(config: pytest.Config) -> None:
    global _XDIST_WORKER
    _XDIST_WORKER = hasattr(config, "workerinput")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """With ``ATTNLAB_FAILURE_LOG=path`` set, append each failure (node id, phase, traceback) to that file as it
    happens, so that a run stopped at a time limit (``benchmarks/gpu/run_all.sh``) still says what failed and why."""
    import os

    path = os.environ.get("ATTNLAB_FAILURE_LOG")
    # under pytest-xdist the controller receives every worker's report: write there only, once per failure
    if not path or not report.failed or _XDIST_WORKER:
        return
    with open(path, "a") as f:
        f.write(f"=== {report.nodeid} ({report.when})\n{report.longreprtext[-6000:]}\n\n")
