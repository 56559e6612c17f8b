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


def test_licence_file_and_spdx_metadata() -> None:
    """A LICENSE at the root (setuptools puts it in the wheel's dist-info) and an SPDX licence string."""
    from pathlib import Path

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    root = Path(__file__).parent.parent
    assert (root / "LICENSE").read_text().startswith("MIT License")
    meta = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "MIT" and meta["license-files"] == ["LICENSE"]


def test_built_wheel_carries_the_licence(tmp_path: Path) -> None:
    """The wheel that setuptools (this environment's, as ``pip wheel --no-build-isolation`` would use) builds from a
    copy of the sources has the LICENSE in its dist-info and ``License-Expression: MIT`` in its METADATA. About a
    second, no network. (The editable install's dist-info would not do: it is written once, at install time.)"""
    import shutil
    import subprocess
    import sys
    import zipfile
    from email.parser import HeaderParser
    from importlib.metadata import version

    if int(version("setuptools").split(".")[0]) < 77:
        pytest.skip(f"setuptools {version('setuptools')} here; the build backend needs >= 77 (pyproject.toml)")
    root = Path(__file__).parent.parent
    src = tmp_path / "attnlab-src"
    src.mkdir()
    for name in ("pyproject.toml", "LICENSE", "README.md"):
        shutil.copy2(root / name, src / name)
    shutil.copytree(root / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    code = "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "dist")], cwd=src, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = tmp_path / "dist" / r.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        meta = HeaderParser().parsestr(z.read(f"{info}/METADATA").decode())
        assert f"{info}/licenses/LICENSE" in names, [n for n in names if n.startswith(info)]
        assert z.read(f"{info}/licenses/LICENSE") == (root / "LICENSE").read_bytes()
    assert meta["License-Expression"] == "MIT" and meta.get_all("License-File") == ["LICENSE"]
    assert "attnlab/__init__.py" in names


def test_public_layer_names() -> None:
    import attnlab.layers
    import attnlab.layers.castle
    from attnlab.layers import (CastleAttention, CastleAttentionConfig, CastleConfig, LinearAttention,
                                LinearAttentionConfig, MultiHeadAttention, MultiHeadAttentionConfig)

    assert CastleAttentionConfig is CastleConfig  # the alias named like the other configs; the old name stays
    assert {"CastleAttentionConfig", "CastleConfig"} <= set(attnlab.layers.__all__)
    assert {"CastleAttentionConfig", "CastleConfig"} <= set(attnlab.layers.castle.__all__)

    for cls, cfg in ((MultiHeadAttention, MultiHeadAttentionConfig(d_model=8, n_heads=2)),
                     (CastleAttention, CastleConfig(d_model=8, n_heads=2)),
                     (LinearAttention, LinearAttentionConfig(d_model=8, n_heads=2))):
        assert isinstance(cfg.build(), cls)
