"""The loss-curves figure of a comparison and its pure pieces: seeds aggregated into a mean line and a ±1 std band,
token counts written with units (1.5k, 1M), and a y range fitted to the bulk of the mechanisms with the far-off
ones shown in a full-range panel instead of squashing the rest.

Seed aggregation (:func:`aggregate_seeds`). The seeds of a comparison share a config, so against tokens they log
at the same x values; against wall-clock they never do. Two alignments:

* ``"common"``: the x values that *every* seed logged (their intersection), no interpolation; the mean and the
  sample standard deviation (n - 1) are taken over all seeds at each of them.
* ``"interpolate"``: each seed is linearly interpolated onto the sorted union of the seeds' x values inside the range
  they all cover (largest first x to smallest last x); no extrapolation beyond any seed's own range.
* ``"auto"`` (the default): ``"common"`` when the seeds share at least half the points of the seed with the fewest
  (at least 2), else ``"interpolate"``.

Either way every aggregated point has all the seeds, so the band (±1 sample std) is drawn only where at least 2
seeds contribute, i.e. only for mechanisms with 2 or more seeds; a single seed is its own mean, with no band.
Points whose x or y is not finite (NaN: a record without wall-clock; NaN or inf: a loss logged at a step that
``skip_nonfinite`` skipped) are dropped first; the training loss is smoothed (EMA) only after that, so one such step
costs that one point and not the rest of the seed's curve.

Far off (:func:`far_off`). Among the finite values, sorted, the *bulk* is the largest contiguous group of at least
half of them (and at least 2), short of all of them, such that every value outside it lies beyond the group's range
by more than ``gap = max(3 * the group's spread, 25% of its largest |value|)``; of two such groups of one size the
lower wins (these are losses: a diverged run ends high). The values outside the bulk are far off, and so is every
non-finite value; with fewer than 3 finite values, or no such group, no finite value is. So several diverged
mechanisms no longer hide one another (1.5, 1.52, 5.0, 5.01: both 5s are off), while a tight group, or values spread
without a gap, flags nothing.

Y range (:func:`fair_ylim`). The outliers are the mechanisms whose final value (mean over seeds at the last
aggregated point) is far off. With none, the axes autoscale. Otherwise the zoomed range covers the bulk: from
its lowest plotted value (seeds and band included) to its highest band top at the final point (at least its highest
final), padded by ``pad = max(spread of the bulk's finals, 10% of the largest |final|)`` above and ``pad / 10``
below; then the top is capped at the midpoint between the bulk's highest final and the lowest final of the
mechanisms off above, and the bottom at the midpoint between the bulk's lowest final and the highest final of those
off below (the cap binds only when a band top or a low reaches that far: the far-off gap is more than twice ``pad``).
So every bulk final lies inside the range and every off-scale final strictly outside it; the far-off ones are named
"off scale" in the legend and caption, and a second row of panels shows the full range (and whatever of a bulk
band the cap clipped).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["SeedStats", "FairRange", "aggregate_seeds", "far_off", "fair_ylim", "format_tokens", "token_formatter",
           "ema", "loss_curves_figure"]

Alignment = Literal["auto", "common", "interpolate"]
_ALIGNMENTS = ("auto", "common", "interpolate")

# per seed: (train tokens, train loss, eval tokens, eval loss, eval wall-clock seconds)
SeedCurves = tuple[Sequence[float], Sequence[float], Sequence[float], Sequence[float], Sequence[float]]


@dataclass(frozen=True)
class SeedStats:
    """Seeds aggregated on one x grid: ``mean`` and ``std`` (sample, n - 1; NaN with one seed) at each ``x``, over
    ``n`` seeds; ``aligned`` says whether the seeds' own common x values or an interpolation grid was used."""

    x: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    n: int
    aligned: Literal["common", "interpolate"]

    @property
    def has_band(self) -> bool:
        """Whether a ±1 std band can be drawn (2 or more seeds and at least one point)."""
        return self.n >= 2 and self.x.size > 0


@dataclass(frozen=True)
class FairRange:
    """A y range ``(lo, hi)`` fitted to the bulk of the mechanisms, and the mechanisms outside it (``off``)."""

    lo: float
    hi: float
    off: tuple[str, ...]


def _clean(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` as float arrays sorted by x, without the points where either is not finite (NaN, ±inf)."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length; got {xa.size} and {ya.size}")
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    order = np.argsort(xa, kind="stable")
    return xa[order], ya[order]


def aggregate_seeds(series: Sequence[tuple[Sequence[float], Sequence[float]]], *,
                    align: Alignment = "auto") -> SeedStats:
    """Mean and sample std over seeds of ``series`` (one ``(x, y)`` per seed) on a common x grid; the alignment
    rules are in the module docstring. Seeds left with no point after dropping non-finite ones are ignored."""
    if align not in _ALIGNMENTS:
        raise ValueError(f"align={align!r} must be one of {', '.join(_ALIGNMENTS)}")
    seeds = [s for s in (_clean(x, y) for x, y in series) if s[0].size]
    if not seeds:
        empty = np.zeros(0)
        return SeedStats(empty, empty, empty, 0, "common")
    common = seeds[0][0]
    for x, _ in seeds[1:]:
        common = np.intersect1d(common, x)
    if align == "auto":
        fewest = min(x.size for x, _ in seeds)
        align = "common" if common.size >= min(fewest, max(2, math.ceil(fewest / 2))) else "interpolate"
    if align == "common":
        # (x values repeated within a seed: the last of them counts)
        ys = np.stack([np.array([y[np.flatnonzero(x == c)[-1]] for c in common]) for x, y in seeds])  # (seeds, X)
        grid = common
    else:
        start, stop = max(x[0] for x, _ in seeds), min(x[-1] for x, _ in seeds)
        grid = np.unique(np.concatenate([x for x, _ in seeds]))
        grid = grid[(grid >= start) & (grid <= stop)]
        ys = np.stack([np.interp(grid, x, y) for x, y in seeds])  # (seeds, X)
    mean = ys.mean(axis=0)
    std = ys.std(axis=0, ddof=1) if len(seeds) >= 2 else np.full(grid.shape, np.nan)
    return SeedStats(grid, mean, std, len(seeds), align)


def _beyond(v: float, lo: float, hi: float) -> bool:
    """Whether ``v`` lies beyond ``[lo, hi]`` by more than ``max(3 (hi - lo), 25% of max(|lo|, |hi|))``."""
    gap = max(3 * (hi - lo), 0.25 * max(abs(lo), abs(hi), 1e-12))
    return v > hi + gap or v < lo - gap


def far_off(values: Sequence[float]) -> list[bool]:
    """Which values lie far from the bulk of them, so that a plot can show them apart instead of squashing the
    others: the values outside the bulk and every non-finite value. The bulk (rule in the module docstring) is the
    largest contiguous group, at least half of the finite values and at least 2 but not all of them, that every
    other value lies beyond by more than ``max(3 * its spread, 25% of its level)``; at equal size the lower group.
    With fewer than 3 finite values, or no such group, no finite value is far off."""
    fin = sorted(float(v) for v in values if math.isfinite(v))
    n = len(fin)
    for size in range(n - 1, max(2, math.ceil(n / 2)) - 1, -1):
        for start in range(n - size + 1):  # lowest first: of two groups of one size, the lower is the bulk
            lo, hi = fin[start], fin[start + size - 1]
            if all(_beyond(v, lo, hi) for v in fin[:start] + fin[start + size:]):
                return [not math.isfinite(v) or _beyond(v, lo, hi) for v in values]
    return [not math.isfinite(v) for v in values]


def fair_ylim(finals: Mapping[str, float], *, lows: Mapping[str, float] | None = None,
              highs: Mapping[str, float] | None = None) -> FairRange | None:
    """The y range of a panel fitted to the bulk of the mechanisms (rule in the module docstring), or ``None`` when
    no mechanism is far off (autoscale, no full-range panel needed).

    ``finals``: each mechanism's final value (mean over seeds); ``lows``: the lowest value drawn for it (its seeds and
    band included), which stretches the range down; ``highs``: the highest value drawn at its final point (the top
    of its band), which stretches it up. Only the bulk's ``lows`` and ``highs`` count, and neither stretches the
    range over an off-scale final: the range is capped halfway between the bulk's finals and the nearest far-off
    final on that side, so every off-scale final lies strictly outside ``(lo, hi)``."""
    names = list(finals)
    flags = far_off([finals[n] for n in names])
    bulk = [n for n, f in zip(names, flags) if not f]
    if not any(flags) or not bulk:
        return None
    b = [finals[n] for n in bulk]
    b_lo, b_hi = min(b), max(b)
    pad = max(b_hi - b_lo, 0.1 * max(abs(v) for v in b), 1e-12)
    lo = min(b + [lows[n] for n in bulk if lows and n in lows and math.isfinite(lows[n])]) - pad / 10
    hi = max(b + [highs[n] for n in bulk if highs and n in highs and math.isfinite(highs[n])]) + pad
    off = [finals[n] for n, f in zip(names, flags) if f and math.isfinite(finals[n])]
    above, below = [v for v in off if v > b_hi], [v for v in off if v < b_lo]
    if above:
        hi = min(hi, (b_hi + min(above)) / 2)
    if below:
        lo = max(lo, (b_lo + max(below)) / 2)
    return FairRange(lo, hi, tuple(n for n, f in zip(names, flags) if f))


def format_tokens(x: float, _pos: Any = None) -> str:
    """A token count with a unit, to 3 significant digits: 0 -> "0", 950 -> "950", 1500 -> "1.5k",
    1_000_000 -> "1M", 2_340_000 -> "2.34M", 3e9 -> "3B" (billions, as token budgets are written)."""
    if x == 0 or not math.isfinite(x):
        return "0" if x == 0 else str(x)
    v = float(f"{x:.3g}")  # rounded first, so that 999,999 reads 1M and not 1000k
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"


def token_formatter() -> Any:
    """A matplotlib tick formatter of :func:`format_tokens` (for an axis of token counts)."""
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(format_tokens)


def ema(xs: Sequence[float], alpha: float = 0.1) -> list[float]:
    """The exponential moving average of ``xs`` (``m = (1 - alpha) m + alpha x``, starting at the first value).
    A NaN or inf makes every later value non-finite: drop such points first (as :func:`loss_curves_figure` does)."""
    out: list[float] = []
    m: float | None = None
    for x in xs:
        m = x if m is None else (1 - alpha) * m + alpha * x
        out.append(m)
    return out


@dataclass(frozen=True)
class _Panel:
    title: str
    xlabel: str
    tokens: bool
    markers: bool
    seeds: dict[str, list[tuple[np.ndarray, np.ndarray]]]  # per mechanism, per seed: (x, y)
    stats: dict[str, SeedStats]


def _panel_range(p: _Panel) -> FairRange | None:
    """:func:`fair_ylim` of a panel: finals, lows and end-of-band highs from its aggregated curves and seeds."""
    finals, lows, highs = {}, {}, {}
    for m, st in p.stats.items():
        if not st.x.size:
            continue
        finals[m] = float(st.mean[-1])
        band = st.std if st.has_band else np.zeros_like(st.mean)
        seed_lows = [float(np.min(y)) for _, y in p.seeds[m] if y.size]
        lows[m] = min([float(np.min(st.mean - band))] + seed_lows)
        highs[m] = float(st.mean[-1] + band[-1])
    return fair_ylim(finals, lows=lows, highs=highs)


def _draw(ax: Any, p: _Panel, colors: dict[str, str], off: tuple[str, ...], ylabel: str, *, zoomed: bool) -> None:
    """Each seed faint and thin, then per mechanism the mean line and (2 or more seeds) the ±1 std band."""
    for m, st in p.stats.items():
        c = colors[m]
        for x, y in p.seeds[m]:
            ax.plot(x, y, color=c, lw=0.6, alpha=0.3)
        if st.has_band:
            ax.fill_between(st.x, st.mean - st.std, st.mean + st.std, color=c, alpha=0.2, lw=0)
        label = m + (" (off scale)" if zoomed and m in off else "")
        ax.plot(st.x, st.mean, color=c, lw=1.6, label=label, marker="o" if p.markers else None, ms=3)
    ax.set(title=p.title + (" (full range)" if not zoomed else ""), xlabel=p.xlabel, ylabel=ylabel)
    if p.tokens:
        ax.xaxis.set_major_formatter(token_formatter())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def loss_curves_figure(curves: Mapping[str, Sequence[SeedCurves]], *, ylabel: str, plt: Any) -> tuple[Any, str]:
    """The loss-curves figure and its caption: training loss (EMA 0.1 of each seed, taken after dropping its
    non-finite points) and validation loss against tokens, validation loss against wall-clock (seeds interpolated
    onto a common time grid); per mechanism each seed faint, the mean over seeds and a ±1 std band. When a panel
    has a far-off mechanism (:func:`fair_ylim`), it is zoomed on the others and a second row shows it in full; the
    caption names the off-scale mechanisms (empty when there are none). ``plt`` is ``matplotlib.pyplot``; the
    caller saves and closes the figure."""
    def panel(title: str, xlabel: str, tokens: bool, markers: bool, align: Alignment, xi: int, yi: int,
              smooth: bool = False) -> _Panel:
        def seed(s: SeedCurves) -> tuple[np.ndarray, np.ndarray]:
            x, y = _clean(s[xi], s[yi])  # non-finite points out before the EMA, else one NaN poisons the rest
            return (x, np.asarray(ema(y.tolist()), dtype=float)) if smooth else (x, y)

        seeds = {m: [seed(s) for s in ss] for m, ss in curves.items()}
        stats = {m: aggregate_seeds(xy, align=align) for m, xy in seeds.items()}
        return _Panel(title, xlabel, tokens, markers, seeds, stats)

    panels = [panel("training loss (EMA 0.1)", "tokens", True, False, "auto", 0, 1, smooth=True),
              panel("validation loss (whole split)", "tokens", True, True, "auto", 2, 3),
              # (no markers: the points of an interpolated mean are grid points, not evaluations)
              panel("validation loss against wall-clock", "seconds since the run started", False, False,
                    "interpolate", 4, 3)]
    ranges = [_panel_range(p) for p in panels[:2]]
    ranges.append(ranges[1])  # the same validation losses: the wall-clock panel shares the validation range
    colors = {m: f"C{i}" for i, m in enumerate(curves)}
    full = any(r is not None for r in ranges)
    fig, axes = plt.subplots(2 if full else 1, 3, figsize=(16, 8.5 if full else 4.5), squeeze=False)
    notes = []
    for j, (p, r) in enumerate(zip(panels, ranges)):
        _draw(axes[0][j], p, colors, r.off if r else (), ylabel, zoomed=True)
        if r is None:
            if full:
                axes[1][j].set_axis_off()
            continue
        axes[0][j].set_ylim(r.lo, r.hi)
        _draw(axes[1][j], p, colors, r.off, ylabel, zoomed=False)
        notes.append(f"{p.title}: {', '.join(r.off)}")
    caption = ""
    if notes:
        caption = ("Off scale (final value far from the others; the top row is zoomed on the rest, the bottom row "
                   "shows the full range): " + "; ".join(notes) + ".")
    seeds = sorted({len(ss) for ss in curves.values()})
    fig.suptitle("mean over seeds, ±1 std shaded, each seed faint" if seeds[-1] >= 2 else "one seed per mechanism",
                 fontsize=10)
    if caption:
        fig.text(0.5, 0.005, caption, ha="center", va="bottom", fontsize=8, wrap=True)
    return fig, caption
