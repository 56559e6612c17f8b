"""The loss-curves figure of `attnlab compare`: seeds aggregated into mean ± std on aligned x, token tick labels with
units, the y range fitted to the bulk of the mechanisms with far-off ones flagged and shown in full, and the figure
built from them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attnlab.compare.curves import aggregate_seeds, fair_ylim, format_tokens, loss_curves_figure, token_formatter


def test_aggregate_seeds_on_common_x_by_hand() -> None:
    # seed A logged one more point (x = 30) than seed B and one NaN: both dropped, the common x are 0, 10, 20
    a = ([0, 10, 20, 25, 30], [3.0, 2.0, 1.0, float("nan"), 0.5])
    b = ([0, 10, 20], [5.0, 4.0, 3.0])
    st = aggregate_seeds([a, b])
    assert st.aligned == "common" and st.n == 2 and st.has_band
    np.testing.assert_array_equal(st.x, [0, 10, 20])
    np.testing.assert_allclose(st.mean, [4.0, 3.0, 2.0], rtol=0, atol=1e-15)
    # sample std (n - 1) of two values 2 apart: 2 / sqrt(2) (a population std would read 1.0)
    np.testing.assert_allclose(st.std, [math.sqrt(2)] * 3, rtol=1e-15)
    # three seeds: 3, 5, 4 at x = 0 -> mean 4, sample std 1
    st3 = aggregate_seeds([a, b, ([0, 10, 20], [4.0, 3.0, 2.0])], align="common")
    np.testing.assert_allclose(st3.mean, [4.0, 3.0, 2.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(st3.std, [1.0, 1.0, 1.0], rtol=1e-15)


def test_aggregate_seeds_interpolates_when_the_seeds_log_at_different_x() -> None:
    a = ([0, 10, 20], [0.0, 10.0, 20.0])
    b = ([5, 15, 25], [1.0, 1.0, 1.0])
    st = aggregate_seeds([a, b])  # no shared x: "auto" interpolates
    assert st.aligned == "interpolate" and st.n == 2
    # the union of the seeds' x inside the range both cover (5 .. 20); no extrapolation
    np.testing.assert_array_equal(st.x, [5, 10, 15, 20])
    np.testing.assert_allclose(st.mean, [3.0, 5.5, 8.0, 10.5], rtol=1e-15)
    np.testing.assert_allclose(st.std, np.array([4.0, 9.0, 14.0, 19.0]) / math.sqrt(2), rtol=1e-14)
    # asked for explicitly on shared x: the seeds' own points, interpolation changes nothing
    same = aggregate_seeds([([0, 1, 2], [1.0, 2.0, 3.0]), ([0, 1, 2], [3.0, 2.0, 1.0])], align="interpolate")
    np.testing.assert_allclose(same.mean, [2.0, 2.0, 2.0])


def test_aggregate_one_seed_has_no_band_and_bad_alignment_is_refused() -> None:
    st = aggregate_seeds([([2, 0, 1], [3.0, 1.0, 2.0])])
    assert st.n == 1 and not st.has_band and np.isnan(st.std).all()
    np.testing.assert_array_equal(st.x, [0, 1, 2])
    np.testing.assert_array_equal(st.mean, [1.0, 2.0, 3.0])  # sorted by x
    with pytest.raises(ValueError, match="align='union' must be one of auto, common, interpolate"):
        aggregate_seeds([([0], [1.0])], align="union")  # type: ignore[arg-type]


def test_fair_ylim_flags_the_far_off_mechanism_and_fits_the_rest() -> None:
    finals = {"standard": 1.50, "castle": 1.52, "swa": 1.49, "linear": 3.9}
    r = fair_ylim(finals)
    assert r is not None and r.off == ("linear",)
    pad = 0.1 * 1.52  # > the bulk's spread 0.03
    assert r.hi == pytest.approx(1.52 + pad) and r.lo == pytest.approx(1.49 - pad / 10)
    assert r.lo < 1.49 and 1.52 < r.hi < 3.9  # the bulk inside, the far-off final outside
    # far off below: flagged as well, left under the range
    low = fair_ylim({**finals, "linear": 0.2})
    assert low is not None and low.off == ("linear",) and low.lo > 0.2
    # the bulk's lowest drawn value and band top stretch the range; the far-off one's do not
    r2 = fair_ylim(finals, lows={"standard": 1.3, "linear": 0.0}, highs={"castle": 1.6, "linear": 9.0})
    assert r2 is not None and r2.lo == pytest.approx(1.3 - pad / 10) and r2.hi == pytest.approx(1.6 + pad)
    # nobody far off: no zoom, no full-range panel
    assert fair_ylim({"standard": 1.50, "castle": 1.52, "swa": 1.49, "linear": 1.55}) is None
    assert fair_ylim({"standard": 1.0, "linear": 2.0}) is None  # two: nothing to compare with


def test_token_tick_labels_have_units() -> None:
    cases = {0: "0", 950: "950", 1500: "1.5k", 12_345: "12.3k", 1_000_000: "1M", 999_999: "1M", 2_340_000: "2.34M",
             3e9: "3B", -2000: "-2k"}
    assert {x: format_tokens(x) for x in cases} == cases
    assert token_formatter()(1_000_000, 0) == "1M"


def _seed(final: float, shift: float, *, x0: float = 0.0) -> tuple[list[float], ...]:
    t = np.arange(0, 1_000_001, 50_000, dtype=float)
    loss = final + 2.5 * np.exp(-t / 2e5) + shift
    ev = t[::4]
    return (t.tolist(), loss.tolist(), ev.tolist(), (final + 2.5 * np.exp(-ev / 2e5) + shift).tolist(),
            (x0 + ev / 1e4 * (1 + shift)).tolist())


def _figure(curves: dict) -> tuple[object, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return loss_curves_figure(curves, ylabel="loss", plt=plt), plt


def test_loss_curves_figure_bands_token_axis_and_full_range_row() -> None:
    from matplotlib.collections import PolyCollection
    from matplotlib.ticker import FuncFormatter

    curves = {"standard": [_seed(1.50, 0.0), _seed(1.50, 0.02)], "castle": [_seed(1.52, 0.0), _seed(1.52, 0.01)],
              "solo": [_seed(1.49, 0.0)], "linear": [_seed(3.9, 0.0), _seed(3.9, 0.05)]}
    (fig, caption), plt = _figure(curves)
    try:
        assert len(fig.axes) == 6  # zoomed row + full-range row
        train, val, wall = fig.axes[:3]
        for ax in (train, val, fig.axes[3], fig.axes[4]):
            fmt = ax.xaxis.get_major_formatter()
            assert isinstance(fmt, FuncFormatter) and ax.get_xlabel() == "tokens" and fmt(1_000_000, 0) == "1M"
        assert not isinstance(wall.xaxis.get_major_formatter(), FuncFormatter)  # seconds
        for ax in fig.axes:  # a band per mechanism with 2 seeds (not for "solo")
            assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 3
        # each seed drawn faint under the mean lines (7 seeds), one mean line per mechanism
        assert sum(l.get_alpha() is not None and l.get_alpha() < 0.5 for l in val.lines) == 7
        assert sum(l.get_alpha() is None for l in val.lines) == 4
        for ax in (train, val, wall):  # zoomed on the bulk: their mean lines inside, the far one's end off scale
            lo, hi = ax.get_ylim()
            ends = {l.get_label(): l.get_ydata()[-1] for l in ax.lines if l.get_alpha() is None}
            assert set(ends) == {"standard", "castle", "solo", "linear (off scale)"}
            far = ends.pop("linear (off scale)")
            assert all(lo < v < hi for v in ends.values()) and far > hi
            assert hi - lo < 1.0  # (the full range is about 4)
        for ax in fig.axes[3:]:
            assert ax.get_ylim()[1] > 3.9 and "(full range)" in ax.get_title()
        assert "linear" in caption and "Off scale" in caption and "standard" not in caption
    finally:
        plt.close(fig)

    del curves["linear"]
    (fig, caption), plt = _figure(curves)
    try:
        assert len(fig.axes) == 3 and caption == ""  # nobody far off: one row, no caption
        assert not any("off scale" in t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts())
    finally:
        plt.close(fig)


def test_far_off_flags_every_member_of_a_diverged_group() -> None:
    from attnlab.compare.curves import far_off

    # two diverged mechanisms used to hide each other (each was within the other's range); both are off now
    assert far_off([1.5, 1.52, 5.0, 5.01]) == [False, False, True, True]
    assert far_off([5.01, 1.5, 5.0, 1.52, 1.49]) == [True, False, True, False, False]
    # one far below and one far above the bulk: both off
    assert far_off([0.2, 1.50, 1.52, 1.49, 3.9]) == [True, False, False, False, True]
    # a tight group, or values spread without a gap, flags nothing; nor do fewer than 3 values
    assert far_off([1.50, 1.52, 1.49, 1.55]) == [False] * 4
    assert far_off([1.0, 1.3, 1.6, 1.9, 2.2]) == [False] * 5
    assert far_off([1.0, 5.0]) == [False, False] and far_off([]) == []
    # the bulk is at least half of the values: one tight pair among five spread ones is not a bulk
    assert far_off([1.0, 1.01, 3.0, 6.0, 12.0]) == [False] * 5
    # a non-finite value is off any scale (the rest are judged without it)
    assert far_off([1.50, 1.52, float("nan"), 1.49]) == [False, False, True, False]
    r = fair_ylim({"a": 1.5, "b": 1.52, "x": 5.0, "y": 5.01})
    assert r is not None and r.off == ("x", "y") and 1.52 < r.hi < 5.0


def test_fair_ylim_keeps_flagged_finals_outside_despite_band_tops_and_lows() -> None:
    finals = {"a": 2.0, "b": 2.0, "c": 2.01, "x": 2.6}
    # a's band top (3.0) used to stretch the range past x's final (hi was 3.2 while x was called off scale)
    r = fair_ylim(finals, highs={"a": 3.0})
    assert r is not None and r.off == ("x",)
    assert r.lo < 2.0 and 2.01 < r.hi < 2.6
    assert r.hi == pytest.approx((2.01 + 2.6) / 2)  # capped halfway between the bulk's top final and x's
    # the same below: a bulk low under a far-low final
    low = fair_ylim({"a": 2.0, "b": 2.0, "c": 2.01, "x": 1.4}, lows={"a": 1.0})
    assert low is not None and low.off == ("x",)
    assert 1.4 < low.lo < 2.0 and low.hi > 2.01 and low.lo == pytest.approx((2.0 + 1.4) / 2)
    # without a clash the band tops and lows still stretch the range as before
    r2 = fair_ylim(finals, lows={"a": 1.9}, highs={"c": 2.1})
    pad = 0.1 * 2.01
    assert r2 is not None and r2.lo == pytest.approx(1.9 - pad / 10) and r2.hi == pytest.approx(2.1 + pad)


def test_training_curve_survives_a_nonfinite_loss() -> None:
    # a skipped step (skip_nonfinite) logs a NaN or inf training loss: it is dropped before the EMA, so that seed's
    # smoothed curve goes on to the end and the mechanism's mean is not cut short by the common alignment
    bad_nan, bad_inf = _seed(1.50, 0.02), _seed(1.52, 0.01)
    bad_nan[1][5] = float("nan")
    bad_inf[1][7] = float("inf")
    curves = {"standard": [_seed(1.50, 0.0), bad_nan], "castle": [_seed(1.52, 0.0), bad_inf]}
    (fig, caption), plt = _figure(curves)
    try:
        train = fig.axes[0]
        means = {l.get_label(): l for l in train.lines if l.get_alpha() is None}
        assert set(means) == {"standard", "castle"}
        for line in means.values():
            y = np.asarray(line.get_ydata(), dtype=float)
            assert line.get_xdata()[-1] == 1_000_000 and np.isfinite(y).all() and y.size == 20  # 21 points, 1 dropped
        seeds = [l for l in train.lines if l.get_alpha() is not None]
        assert all(np.isfinite(np.asarray(l.get_ydata(), dtype=float)).all() for l in seeds)
        assert all(l.get_xdata()[-1] == 1_000_000 for l in seeds)
    finally:
        plt.close(fig)
