"""``attnlab masks --length N`` outside ``[4, MAX_RENDER_LENGTH]`` is refused before any mask is materialised or any
file written: ``attnlab: error: ...`` naming ``--length`` and the maximum on stderr, exit status 2. The library
functions refuse the same sizes with a ``ValueError``."""

from __future__ import annotations

import pytest

from attnlab.cli import main
from attnlab.masks import patterns
from attnlab.masks import render as render_mod
from attnlab.masks.render import MAX_RENDER_LENGTH, gallery, render


def _no_materialising(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a mask was materialised before the length was checked")

    monkeypatch.setattr(render_mod, "dense", refuse)


def test_max_render_length_is_1024() -> None:
    assert MAX_RENDER_LENGTH == 1024


@pytest.mark.parametrize("length", [MAX_RENDER_LENGTH + 1, 100_000, 10**12, 3, 0, -5])
def test_masks_refuses_lengths_it_cannot_draw(length: int, tmp_path, capsys, monkeypatch) -> None:
    _no_materialising(monkeypatch)
    out = tmp_path / "masks"
    assert main(["masks", "--length", str(length), "--out", str(out)]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    assert cap.err.startswith("attnlab: error: --length must be between 4 and 1024")
    assert f"got --length {length}" in cap.err
    assert not out.exists()


def test_masks_at_the_maximum_is_accepted(tmp_path, capsys, monkeypatch) -> None:
    """The bound is inclusive: the command gets past the check at exactly MAX_RENDER_LENGTH (the drawing itself is
    replaced here, it takes seconds)."""
    calls = []
    monkeypatch.setattr("attnlab.masks.render.gallery",
                        lambda length, out: calls.append(length) or [tmp_path / "a.png", tmp_path / "gallery.png"])
    assert main(["masks", "--length", str(MAX_RENDER_LENGTH), "--out", str(tmp_path)]) == 0
    assert calls == [MAX_RENDER_LENGTH]
    assert capsys.readouterr().err == ""


def test_library_refuses_the_same_sizes(tmp_path, monkeypatch) -> None:
    _no_materialising(monkeypatch)
    with pytest.raises(ValueError, match=r"length must be an int in \[4, 1024\].*got 1025"):
        gallery(MAX_RENDER_LENGTH + 1, tmp_path / "g")
    assert not (tmp_path / "g").exists()
    with pytest.raises(ValueError, match="kv_len must be <= MAX_RENDER_LENGTH=1024.*got 5000"):
        render(patterns.causal(), 4, 5000, tmp_path / "x.png")
    with pytest.raises(ValueError, match="q_len must be <= MAX_RENDER_LENGTH=1024.*got 1025"):
        render(patterns.causal(), 1025, 4, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
