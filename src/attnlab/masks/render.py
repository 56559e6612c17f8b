"""Render masks as pictures: one PNG per pattern and a combined gallery (matplotlib, Agg backend).

A picture shows the dense ``(q_len, kv_len)`` mask of :func:`attnlab.masks.dense`: rows are query positions ``i``
(top to bottom), columns key positions ``j`` (left to right), dark cells are visible keys. The title carries the
mask's name (with its parameters) and its density, the fraction of visible (query, key) pairs.

Sizes are bounded by :data:`MAX_RENDER_LENGTH` (1024) per side: a picture is about 500 pixels wide (a gallery panel
about 420), so at 1024 two positions already share a pixel and a longer side would draw nothing more, while the
dense mask, its float copy for ``imshow`` and the float64 copy for the density grow as ``length^2`` (a gallery at
1024 took 7.5 s and 0.46 GB; at 16384 each mask alone would need 2 GiB for the density). Larger sizes are refused
with a ``ValueError`` before anything is allocated.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from attnlab.masks import patterns, vlm
from attnlab.masks.core import Mask, as_mask, dense

__all__ = ["density", "example_masks", "example_vlm_layout", "render", "gallery", "MAX_RENDER_LENGTH",
           "MIN_GALLERY_LENGTH"]

#: Longest side (query or key positions) that :func:`render` and :func:`gallery` draw; see the module docstring.
MAX_RENDER_LENGTH = 1024
#: Shortest ``length`` of :func:`example_masks` / :func:`gallery` (the patterns' parameters need room).
MIN_GALLERY_LENGTH = 4


def density(mask: Mask, q_len: int, kv_len: int) -> float:
    """Fraction of visible (query, key) pairs of ``mask`` at these sizes (``b = h = 0``)."""
    if q_len == 0 or kv_len == 0:
        return 0.0
    return float(dense(mask, q_len, kv_len).double().mean())


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _draw(ax, mask: Mask, q_len: int, kv_len: int, title: str | None, *, fontsize: float = 10) -> None:
    m = dense(mask, q_len, kv_len).to(torch.float32).numpy()  # (T, S)
    ax.imshow(m, cmap="Greys", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="equal")
    ax.set_title(f"{title or mask.name}\ndensity {density(mask, q_len, kv_len):.1%}", fontsize=fontsize)
    ax.set_xlabel("key position j", fontsize=fontsize * 0.9)
    ax.set_ylabel("query position i", fontsize=fontsize * 0.9)
    ax.tick_params(labelsize=fontsize * 0.8)


def render(mask: Mask, q_len: int, kv_len: int, path: str | Path, title: str | None = None) -> Path:
    """Draw ``mask`` at ``(q_len, kv_len)`` to the PNG ``path`` (parents are created); returns the path.

    ``title`` defaults to the mask's name; the density is always appended.
    """
    mask = as_mask(mask, "mask")  # a Mask, or a FlexAttention-style mask_mod callable
    for arg, val in (("q_len", q_len), ("kv_len", kv_len)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"{arg} must be an int >= 1, got {val!r}")
        if val > MAX_RENDER_LENGTH:
            raise ValueError(f"{arg} must be <= MAX_RENDER_LENGTH={MAX_RENDER_LENGTH} (a picture is about 500 pixels "
                             f"wide), got {val}")
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    side = 4.2
    fig, ax = plt.subplots(figsize=(side * max(1.0, kv_len / q_len) ** 0.5, side), dpi=120)
    _draw(ax, mask, q_len, kv_len, _wrap(title or mask.name, 38))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def example_vlm_layout(length: int) -> str:
    """A two-image prompt of ``length`` positions as a :func:`~attnlab.masks.vlm.token_types` string: text prefix
    (BOS, system), image A, text between the images, image B, question (spec future_mask.md §2.3, scaled)."""
    if isinstance(length, bool) or not isinstance(length, int) or length < MIN_GALLERY_LENGTH:
        raise ValueError(f"length must be an int >= {MIN_GALLERY_LENGTH}, got {length!r}")
    prefix, image, between = max(1, length // 8), max(1, length // 4), max(1, length // 16)
    question = length - prefix - 2 * image - between
    return "T" * prefix + "V" * image + "T" * between + "V" * image + "T" * question


def example_masks(length: int) -> list[Mask]:
    """One example of every pattern in :mod:`attnlab.masks.patterns`, with parameters scaled to ``length``, then the
    four vision-language masks of :mod:`attnlab.masks.vlm` on the two-image layout of :func:`example_vlm_layout`.

    Causal and bidirectional variants are both shown where a pattern has both.
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < MIN_GALLERY_LENGTH:
        raise ValueError(f"length must be an int >= {MIN_GALLERY_LENGTH}, got {length!r}")
    w = max(2, length // 8)
    stride = max(2, round(math.sqrt(length)))
    block = max(2, length // 4)
    n_docs = 3
    ids = torch.div(torch.arange(length) * n_docs, length, rounding_mode="floor")
    doc = patterns.document(ids)
    return [
        patterns.causal(),
        patterns.bidirectional(),
        patterns.sliding_window(w),
        patterns.sliding_window(w, causal=False),
        patterns.strided(stride),
        patterns.strided(stride, causal=False),
        patterns.fixed(block, summary=max(1, block // 4)),
        patterns.fixed(block, summary=max(1, block // 4), causal=False),
        patterns.bigbird(w, n_global=max(1, length // 16), n_random=2, seed=0, max_len=max(length, 16)),
        patterns.bigbird(w, n_global=max(1, length // 16), n_random=2, seed=0, causal=False, kv_len=length,
                         max_len=max(length, 16)),
        patterns.prefix_lm(length // 4),
        doc,
        doc & patterns.causal(),
        *(vlm.future_mask(kind, vlm.token_types(example_vlm_layout(length)))  # type: ignore[arg-type]
          for kind in vlm.FUTURE_KINDS),
    ]


def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()
    return s or "mask"


def gallery(length: int, out_dir: str | Path) -> list[Path]:
    """Render every example mask of :func:`example_masks` at ``length`` into ``out_dir``.

    Writes one ``<name>.png`` per mask and ``gallery.png`` with all of them; returns the written paths
    (the gallery last). ``length`` must be in ``[MIN_GALLERY_LENGTH, MAX_RENDER_LENGTH]`` = ``[4, 1024]``; anything
    else is a ``ValueError`` raised before a directory or a mask is made.
    """
    if isinstance(length, bool) or not isinstance(length, int) or not \
            MIN_GALLERY_LENGTH <= length <= MAX_RENDER_LENGTH:
        raise ValueError(f"length must be an int in [{MIN_GALLERY_LENGTH}, {MAX_RENDER_LENGTH}] "
                         f"(MAX_RENDER_LENGTH: a picture is about 500 pixels wide), got {length!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    masks = example_masks(length)
    paths = []
    seen: set[str] = set()
    for m in masks:
        slug = _slug(m.name)
        while slug in seen:
            slug += "-x"
        seen.add(slug)
        paths.append(render(m, length, length, out / f"{slug}.png"))
    plt = _pyplot()
    cols = 4
    rows = math.ceil(len(masks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 4.2, rows * 4.4), dpi=100)
    for ax, m in zip(axes.flat, masks):
        _draw(ax, m, length, length, _wrap(m.name), fontsize=9)
    for ax in list(axes.flat)[len(masks):]:
        ax.axis("off")
    fig.suptitle(f"attnlab mask patterns at length {length} (dark = visible key)", fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (rows * 4.4)))
    g = out / "gallery.png"
    fig.savefig(g)
    plt.close(fig)
    paths.append(g)
    return paths


def _wrap(name: str, width: int = 42) -> str:
    """Break a long mask name after commas so gallery titles stay inside their panel."""
    if len(name) <= width:
        return name
    lines, cur = [], ""
    for part in re.split(r"(?<=,) ", name):
        if cur and len(cur) + len(part) + 1 > width:
            lines.append(cur)
            cur = part
        else:
            cur = f"{cur} {part}" if cur else part
    lines.append(cur)
    return "\n".join(lines)
