"""tests/conftest.py's ATTNLAB_FAILURE_LOG: each failure is written when it happens (the GPU run's time limit)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _pytest(tmp_path: Path, source: str, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run a fresh pytest (not an xdist worker, whatever runs this test) on one test file that uses this conftest."""
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "conftest.py").write_text((Path(__file__).parent / "conftest.py").read_text())
    (tests / "test_x.py").write_text(source)
    log = tmp_path / "failures.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")} | {"ATTNLAB_FAILURE_LOG": str(log)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, str(tests)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return proc, log


def test_failures_are_appended_to_the_log_as_they_happen(tmp_path: Path) -> None:
    proc, log = _pytest(tmp_path, "def test_ok():\n    assert True\n\n\ndef test_bad():\n    assert 1 == 2, 'boom'\n",
                        "-p", "no:xdist")
    assert proc.returncode == 1, proc.stdout[-2000:]
    text = log.read_text()
    assert "=== " in text and "test_x.py::test_bad (call)" in text and "boom" in text
    assert "test_ok" not in text and text.count("=== ") == 1


def test_under_xdist_each_failure_is_written_once(tmp_path: Path) -> None:
    proc, log = _pytest(tmp_path, "def test_bad():\n    assert 1 == 2, 'boom'\n", "-n", "2")
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert log.read_text().count("=== ") == 1  # the controller writes it; the worker does not
