"""Every Python example in README.md runs as written (the examples assert what they promise)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_example_runs(i: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNLAB_CACHE_DIR", str(tmp_path / "cache"))  # never touch the user's token cache
    exec(compile(BLOCKS[i], f"README.md python block {i}", "exec"), {"__name__": "readme_example"})


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_example_checks_its_promise(i: int) -> None:
    """An example that only runs proves little: each one asserts what its comments promise."""
    assert re.search(r"^assert ", BLOCKS[i], re.M), f"README.md python block {i} asserts nothing"
