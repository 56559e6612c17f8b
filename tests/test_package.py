"""The public packages export what their ``__all__`` promises, and the version is the one in pyproject.toml."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

PACKAGES = ["attnlab.masks", "attnlab.ops", "attnlab.ops.softmax", "attnlab.ops.linear", "attnlab.ops.castle",
            "attnlab.layers", "attnlab.cache", "attnlab.models", "attnlab.data", "attnlab.verify"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_names_resolve(name: str) -> None:
    mod = importlib.import_module(name)
    assert mod.__all__, f"{name} exports nothing"
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert not missing, f"{name}.__all__ names missing attributes: {missing}"


def test_cache_classes_implement_the_one_interface() -> None:
    from attnlab.cache import AttentionCache, KVCache, RecurrentStateCache, SlidingKVCache, UQKVCache

    for cls in (KVCache, SlidingKVCache, RecurrentStateCache, UQKVCache):
        assert issubclass(cls, AttentionCache), cls


def test_version_matches_pyproject(capsys: pytest.CaptureFixture[str]) -> None:
    import attnlab
    from attnlab.cli import main

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', text, re.M).group(1) == attnlab.__version__
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"attnlab {attnlab.__version__}"
