"""Pictures of a discovered graph: the graph (edges labelled with lags, thickness by score) and the score heat map.

Both use matplotlib's Agg backend (no screen needed) and write PNG files.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["plot_graph", "plot_scores"]


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.figure import Figure  # (a Figure renders with Agg on savefig; pyplot's global state is not used)

    return Figure(figsize=size, dpi=110)


def plot_graph(graph: Any, path: str | Path, *, title: str = "", excluded: Sequence[Sequence[str]] = (),
               truth: np.ndarray | None = None) -> Path:
    """Draw ``graph``'s predicted edges (self-edges left out) on a circle: an arrow cause -> effect whose width grows
    with the normalised score, labelled with its lag. With ``truth`` ``(N, N)`` (row = effect), true edges are drawn
    in blue and false ones in red, and missed true edges as dotted grey arrows. Excluded links are listed below."""
    cols = graph.columns
    N = len(cols)
    fig = _figure((6.4, 6.8))
    ax = fig.add_subplot(111)
    ang = [math.pi / 2 - 2 * math.pi * k / N for k in range(N)]
    pos = np.array([[math.cos(a), math.sin(a)] for a in ang])
    for k, c in enumerate(cols):
        ax.add_patch(_circle(pos[k], 0.11))
        ax.text(*pos[k], c, ha="center", va="center", fontsize=9 if len(c) < 6 else 7, zorder=4)
    edges = graph.edges()
    idx = {c: k for k, c in enumerate(cols)}

    def arrow(j: int, i: int, width: float, color: str, style: str, label: str | None) -> None:
        a, b = pos[j], pos[i]
        d = b - a
        u = d / (np.linalg.norm(d) or 1.0)
        start, end = a + 0.13 * u, b - 0.13 * u
        ax.annotate("", xy=end, xytext=start, zorder=2,
                    arrowprops={"arrowstyle": "-|>", "lw": width, "color": color, "linestyle": style,
                                "connectionstyle": "arc3,rad=0.12", "shrinkA": 0, "shrinkB": 0})
        if label:
            mid = (start + end) / 2 + 0.06 * np.array([-u[1], u[0]])
            ax.text(*mid, label, fontsize=7, ha="center", va="center", color=color, zorder=3,
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})

    for e in edges:
        j, i = idx[e["cause"]], idx[e["effect"]]
        color = "black" if truth is None else ("tab:blue" if truth[i, j] else "tab:red")
        arrow(j, i, 0.6 + 2.4 * min(max(e["score"], 0.0), 1.0), color, "-", f"lag {e['lag']}")
    if truth is not None:
        for i in range(N):
            for j in range(N):
                if i != j and truth[i, j] and not graph.pred[i, j]:
                    arrow(j, i, 0.8, "0.6", ":", None)
    ax.set_xlim(-1.35, 1.35)
    ax.set_ylim(-1.35, 1.35)
    ax.set_aspect("equal")
    ax.axis("off")
    note = "arrow: cause -> effect, width: score, label: lag"
    if truth is not None:
        note += "\nblue: true edge, red: false edge, dotted grey: missed true edge"
    if excluded:
        shown = ", ".join(f"{c}->{e}" for c, e in list(excluded)[:12]) + (" ..." if len(excluded) > 12 else "")
        note += f"\nexcluded: {shown}"
    ax.set_title(title or f"{len(edges)} edges", fontsize=10)
    fig.text(0.5, 0.02, note, ha="center", fontsize=7.5)
    fig.savefig(path, format="png")
    return Path(path)


def _circle(xy: np.ndarray, r: float) -> Any:
    from matplotlib.patches import Circle

    return Circle(tuple(xy), r, fc="#eef3fb", ec="0.3", zorder=3)


def plot_scores(graph: Any, path: str | Path, *, title: str = "") -> Path:
    """Heat map of the scaled scores (row = effect, column = cause; the colour scale stops at 1), predicted edges
    outlined, each cell labelled with its lag when the edge is predicted."""
    cols = graph.columns
    N = len(cols)
    side = min(3.0 + 0.45 * N, 14.0)
    fig = _figure((side + 1.2, side))
    ax = fig.add_subplot(111)
    s = np.array(graph.normalised, dtype=np.float64)
    # the colour scale stops at 1 (the strongest candidate cause): a variable's own past often scores several times
    # higher and would otherwise wash out every other cell
    im = ax.imshow(np.minimum(s, 1.0), cmap="viridis", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="scaled score (1 and above: brightest)")
    ax.set_xticks(range(N), cols, rotation=90 if N > 8 else 0, fontsize=8)
    ax.set_yticks(range(N), cols, fontsize=8)
    ax.set_xlabel("cause")
    ax.set_ylabel("effect")
    if N <= 25:
        for i in range(N):
            for j in range(N):
                if graph.pred[i, j] and i != j:
                    ax.add_patch(_rect(j, i))
                    ax.text(j, i, str(int(graph.lags[i, j])), ha="center", va="center", fontsize=7,
                            color="black" if s[i, j] > 0.6 else "white")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return Path(path)


def _rect(x: int, y: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, ec="red", lw=1.2)
