"""Time-series data: bundled ETTh1 (hash, licence), CSV edge cases, borders, train-only statistics, window counts."""

from __future__ import annotations

import hashlib
import lzma
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from attnlab.data import load_timeseries, prepare_forecast_data, read_bundled
from attnlab.data.bundled import BUNDLED_TIMESERIES
from attnlab.data.timeseries import TimeSeries, parse_timeseries_csv, split_borders, time_features

# From the spec (time_series.md section 1), independently of attnlab.data.bundled.
ETTH1_BYTES = 2_589_657
ETTH1_SHA256 = "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066"

# The spec's table (C.9): L = 336; (train, validation, test, test with drop_last at batch 128) per horizon.
WINDOW_TABLE = {
    96: (8209, 2785, 2785, 2688),
    192: (8113, 2689, 2689, 2688),
    336: (7969, 2545, 2545, 2432),
    720: (7585, 2161, 2161, 2048),
}


@pytest.fixture(scope="module")
def etth1() -> TimeSeries:
    return load_timeseries("etth1")


def test_bundled_etth1_decompresses_to_the_published_file() -> None:
    entry = BUNDLED_TIMESERIES["timeseries/etth1"]
    raw = lzma.decompress(resources.files("attnlab.data").joinpath(entry.filename).read_bytes())
    assert len(raw) == ETTH1_BYTES
    assert hashlib.sha256(raw).hexdigest() == ETTH1_SHA256
    assert read_bundled("timeseries/etth1") == raw


def test_licence_ships_beside_the_data() -> None:
    d = resources.files("attnlab.data").joinpath("corpora")
    assert "Attribution-NoDerivatives 4.0" in d.joinpath("ett/LICENSE").read_text()
    notes = d.joinpath("LICENSES.md").read_text()
    for needle in ("ETTh1", "CC BY-ND 4.0", "Informer", "zhouhaoyi/ETDataset", "unmodified"):
        assert needle in notes


def test_corrupted_etth1_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnlab.data import bundled

    entry = BUNDLED_TIMESERIES["timeseries/etth1"]
    broken = bundled.BundledFile(entry.filename, 1, "0" * 64)
    monkeypatch.setitem(bundled.BUNDLED_TIMESERIES, "timeseries/etth1", broken)
    with pytest.raises(ValueError, match="corrupted"):
        load_timeseries("etth1")


def test_etth1_content(etth1: TimeSeries) -> None:
    assert len(etth1) == 17_420
    assert etth1.columns == ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
    assert str(etth1.dates[0]) == "2016-07-01T00:00:00" and str(etth1.dates[-1]) == "2018-06-26T19:00:00"
    assert etth1.values[0, -1] == 30.5310001373291  # OT of the first row, as printed in the file


@pytest.mark.parametrize("horizon", sorted(WINDOW_TABLE))
def test_window_counts_equal_the_spec_table(etth1: TimeSeries, horizon: int) -> None:
    d = prepare_forecast_data(etth1, look_back=336, horizon=horizon)
    train, val, test, dropped = WINDOW_TABLE[horizon]
    assert (d.splits["train"].n_windows, d.splits["val"].n_windows, d.splits["test"].n_windows) == (train, val, test)
    assert d.splits["test"].n_windows_drop_last(128) == dropped
    # the first validation / test target begins at the border; the last test target ends at row 14,400
    assert d.splits["val"].start + 336 == 8640 and d.splits["test"].start + 336 == 11520
    assert d.splits["test"].end == 14400


def test_windows_are_the_rows_of_the_spec(etth1: TimeSeries) -> None:
    L, T = 24, 5
    d = prepare_forecast_data(etth1, look_back=L, horizon=T, with_time_features=True)
    norm = (etth1.values - d.mean) / d.std
    for split in ("train", "val", "test"):
        s = d.splits[split]
        for w in (0, 7, s.n_windows - 1):
            win = s.windows(np.array([w]))
            a = s.start + w
            np.testing.assert_array_equal(win["x"][0], norm[a : a + L])
            np.testing.assert_array_equal(win["y"][0], norm[a + L : a + L + T])
            np.testing.assert_array_equal(win["y_marks"][0], time_features(etth1.dates[a + L : a + L + T]))
        with pytest.raises(IndexError, match=f"in \\[0, {s.n_windows}\\)"):
            s.windows(np.array([s.n_windows]))


def test_statistics_come_from_the_training_rows_only(etth1: TimeSeries) -> None:
    d = prepare_forecast_data(etth1, look_back=336, horizon=96)
    np.testing.assert_allclose(d.mean, etth1.values[:8640].mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(d.std, etth1.values[:8640].std(0), rtol=0, atol=1e-12)
    # changing every validation / test value (and the unused tail) leaves the statistics unchanged
    changed = etth1.values.copy()
    changed[8640:] = changed[8640:] * 5.0 + 1000.0
    e = prepare_forecast_data(TimeSeries("x", etth1.dates, changed, etth1.columns), look_back=336, horizon=96)
    np.testing.assert_array_equal(d.mean, e.mean)
    np.testing.assert_array_equal(d.std, e.std)
    np.testing.assert_array_equal(d.splits["train"].values, e.splits["train"].values)
    # ... and the training split is z-scored
    np.testing.assert_allclose(d.splits["train"].values.mean(0), 0.0, atol=1e-10)
    np.testing.assert_allclose(d.splits["train"].values.std(0), 1.0, atol=1e-10)


def test_univariate_setting_uses_the_target_column(etth1: TimeSeries) -> None:
    d = prepare_forecast_data(etth1, look_back=96, horizon=24, features="S", target="OT")
    assert d.columns == ("OT",)
    assert d.splits["train"].values.shape == (8640, 1)
    assert d.mean[0] == pytest.approx(etth1.values[:8640, -1].mean(), abs=1e-12)
    with pytest.raises(ValueError, match="target column 'oil' is missing; its columns are HUFL, HULL"):
        prepare_forecast_data(etth1, look_back=96, horizon=24, features="S", target="oil")


def test_time_features_are_in_range_and_known_values() -> None:
    dates = np.array(["2016-07-01T00:00:00", "2016-07-04T23:00:00", "2016-12-31T12:00:00"], dtype="datetime64[s]")
    f = time_features(dates)
    # 2016-07-01 was a Friday (weekday 4), day 183 of the leap year 2016; 2016-07-04 a Monday
    np.testing.assert_allclose(f[0], [-0.5, 4 / 6 - 0.5, -0.5, 182 / 365 - 0.5])
    np.testing.assert_allclose(f[1], [0.5, -0.5, 3 / 30 - 0.5, 185 / 365 - 0.5])
    assert f[2, 3] == pytest.approx(365 / 365 - 0.5)
    assert f.min() >= -0.5 and f.max() <= 0.5


def test_ratio_borders_for_any_series() -> None:
    assert split_borders(1000, 10, borders="ratio") == {"train": (0, 700), "val": (690, 800), "test": (790, 1000)}
    assert split_borders(20000, 0 + 5, borders="ett_hour") == {"train": (0, 8640), "val": (8635, 11520),
                                                              "test": (11515, 14400)}
    assert split_borders(60000, 5, borders="ett_minute")["test"] == (46080 - 5, 57600)
    with pytest.raises(ValueError, match="has 14399 rows; borders='ett_hour' needs at least 14400"):
        split_borders(14399, 5, borders="ett_hour")


# ---------------------------------------------------------------------------------------------------------- CSVs


def _csv(tmp_path: Path, text: str, name: str = "s.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _rows(n: int, start: str = "2020-01-01", freq_h: int = 1) -> str:
    base = np.datetime64(start + "T00:00:00")
    lines = ["date,a,b"]
    for i in range(n):
        d = base + np.timedelta64(i * freq_h, "h")
        lines.append(f"{str(d).replace('T', ' ')},{np.sin(i / 5):.6f},{-3.5 + i * 0.01:.4f}")
    return "\n".join(lines) + "\n"


def test_any_csv_of_the_layout_works(tmp_path: Path) -> None:
    s = load_timeseries(_csv(tmp_path, _rows(300)))
    assert s.columns == ("a", "b") and len(s) == 300
    assert s.values[0, 1] == -3.5  # negative values are data, not errors
    d = prepare_forecast_data(s, look_back=20, horizon=4, borders="ratio")
    assert d.splits["train"].n_windows == 210 - 24 + 1
    assert d.splits["val"].n_windows == 30 - 4 + 1 and d.splits["test"].n_windows == 60 - 4 + 1


@pytest.mark.parametrize(("text", "match"), [
    ("", "the file is empty"),
    ("time,a\n2020-01-01,1\n", "the first column must be 'date'"),
    ("date\n2020-01-01\n", "only a 'date' column"),
    ("date,a,a\n2020-01-01,1,2\n", "names column 'a' twice"),
    ("date,a\n", "a header but no rows"),
    ("date,a,b\n2020-01-01 00:00:00,1,2\n2020-01-01 01:00:00,1\n", r"row 1 \(line 3\): expected 3 fields"),
    ("date,a\n2020-01-01 00:00:00,1\n2020-13-01 00:00:00,2\n", r"row 1 \(line 3\): date '2020-13-01 00:00:00' cannot "
     "be parsed"),
    ("date,a\nyesterday,1\n", r"row 0 \(line 2\): date 'yesterday' cannot be parsed"),
    ("date,a\n2020-01-01 01:00:00,1\n2020-01-01 00:00:00,2\n", r"row 1 \(line 3\): date '2020-01-01 00:00:00' is not "
     "after the previous row's '2020-01-01 01:00:00'; dates must strictly increase"),
    ("date,a\n2020-01-01 00:00:00,1\n2020-01-01 00:00:00,2\n", "is not after the previous row"),
    ("date,a,b\n2020-01-01,1,2\n2020-01-02,1,abc\n", r"row 1 \(line 3\), column 'b': 'abc' is not a number"),
    ("date,a,b\n2020-01-01,1,2\n2020-01-02,nan,2\n", r"row 1 \(line 3\), column 'a': 'nan' is not a finite number; "
     "NaN and infinite values are refused"),
    ("date,a\n2020-01-01,inf\n", r"row 0 \(line 2\), column 'a': 'inf' is not a finite number"),
    ("date,a,b\n2020-01-01,1,\n", r"row 0 \(line 2\), column 'b': the value is missing"),
    ("date,a\n2020-01-01T00:00:00+02:00,1\n", "has a time zone"),
])
def test_bad_csv_is_one_error_naming_file_row_and_column(tmp_path: Path, text: str, match: str) -> None:
    p = _csv(tmp_path, text, "bad.csv")
    with pytest.raises(ValueError, match=match) as e:
        load_timeseries(p)
    assert str(p) in str(e.value)


def test_blank_lines_and_bom_are_tolerated() -> None:
    s = parse_timeseries_csv("\ufeffdate, a \n2020-01-01,1\n\n2020-01-02,2\n\n", name="x")
    assert s.columns == ("a",) and s.values[:, 0].tolist() == [1.0, 2.0]


def test_series_shorter_than_a_window_is_refused(tmp_path: Path) -> None:
    s = load_timeseries(_csv(tmp_path, _rows(30)))
    with pytest.raises(ValueError, match=r"has 30 rows, fewer than look_back \+ horizon = 28 \+ 4 = 32"):
        prepare_forecast_data(s, look_back=28, horizon=4, borders="ratio")
    with pytest.raises(ValueError, match=r"the train split has 21 rows \(rows \[0, 21\)\), fewer than look_back "
                       r"\+ horizon = 24"):
        prepare_forecast_data(s, look_back=20, horizon=4, borders="ratio")
    with pytest.raises(ValueError, match=r"the val split has 18 rows \(rows \[6, 24\)\), fewer than look_back "
                       r"\+ horizon = 19"):
        prepare_forecast_data(s, look_back=15, horizon=4, borders="ratio")


def test_unknown_source_and_bad_settings(tmp_path: Path, etth1: TimeSeries) -> None:
    with pytest.raises(ValueError, match="neither a bundled series \\(etth1\\) nor a CSV file"):
        load_timeseries(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="look_back must be an int >= 1, got 0"):
        prepare_forecast_data(etth1, look_back=0, horizon=4)
    with pytest.raises(ValueError, match="features must be 'M'"):
        prepare_forecast_data(etth1, look_back=4, horizon=4, features="MS")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stats must be a mean and a positive std per channel"):
        prepare_forecast_data(etth1, look_back=4, horizon=4, stats=(np.zeros(3), np.ones(3)))


def test_constant_training_column_is_only_centred(tmp_path: Path) -> None:
    text = "date,a,c\n" + "".join(f"2020-01-{1 + i // 24:02d} {i % 24:02d}:00:00,{i},{7}\n" for i in range(100))
    d = prepare_forecast_data(load_timeseries(_csv(tmp_path, text)), look_back=5, horizon=2, borders="ratio")
    assert d.std[1] == 1.0 and d.mean[1] == 7.0
    assert np.all(d.splits["test"].values[:, 1] == 0.0)
