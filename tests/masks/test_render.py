"""Mask rendering: files written, titles carry name and density, every pattern is in the gallery."""

from __future__ import annotations

import pytest

from attnlab.masks import patterns
from attnlab.masks.render import density, example_masks, gallery, render

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_density_of_causal_and_window_is_exact():
    T = 10
    assert density(patterns.causal(), T, T) == pytest.approx((T + 1) / (2 * T))  # T(T+1)/2 of T^2
    # window 3 counts the query itself: rows see 1, 2, 3, 3, ... keys
    assert density(patterns.sliding_window(3), T, T) == pytest.approx((1 + 2 + 3 * (T - 2)) / T**2)
    assert density(patterns.bidirectional(), 4, 7) == 1.0


def test_render_writes_a_png_with_name_and_density_in_the_title(tmp_path, monkeypatch):
    import matplotlib.axes

    titles: list[str] = []
    orig = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda self, label, *a, **k: (titles.append(label), orig(self, label, *a, **k))[1])
    p = render(patterns.sliding_window(3), 12, 12, tmp_path / "sub" / "w.png")
    assert p.read_bytes()[:8] == PNG_MAGIC
    assert titles == ["sliding_window(window=3)\ndensity 22.9%"]  # (1 + 2 + 3*10) / 144


def test_render_rejects_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="q_len must be an int >= 1, got 0"):
        render(patterns.causal(), 0, 4, tmp_path / "x.png")
    with pytest.raises(TypeError, match="mask must be a Mask or a mask_mod callable"):
        render("causal", 4, 4, tmp_path / "x.png")  # type: ignore[arg-type]


def test_gallery_covers_every_pattern_and_writes_one_file_each(tmp_path):
    masks = example_masks(16)
    covered = {m.name.split("(")[0] for m in masks} | {
        part.split("(")[0] for m in masks for part in m.name.removeprefix("and(").split(", ")}
    missing = [p for p in patterns.__all__ if p not in covered]
    assert not missing, f"patterns without a gallery example: {missing}"
    paths = gallery(16, tmp_path)
    assert len(paths) == len(masks) + 1 and paths[-1].name == "gallery.png"
    assert len({p.name for p in paths}) == len(paths)
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC


def test_example_masks_rejects_tiny_length():
    with pytest.raises(ValueError, match="length must be an int >= 4"):
        example_masks(2)
