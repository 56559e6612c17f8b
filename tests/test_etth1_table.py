"""benchmarks/etth1_table.py: finished runs become records that outlive the run directories, records are never
overwritten, and the tables are computed from them (horizon rows, the ablations' difference and Welch test)."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from scipy import stats



@pytest.fixture(scope="module")
def table(benchmark_script):
    return benchmark_script("etth1_table.py")


def _fake_run(runs: Path, comparison: str, variant: str, seed: int, mse: float) -> None:
    d = runs / comparison / "runs" / variant / f"seed{seed}"
    d.mkdir(parents=True)
    metrics = {"mse": mse, "mae": mse / 2, "mse_drop_last": mse + 0.01, "mae_drop_last": mse / 2 + 0.01}
    (d / "result.json").write_text(json.dumps({"steps": 10, "wall_s": 5.0, "run_wall_s": 6.0,
                                               "test": {"metrics": metrics, "mse_per_step": [mse] * 3}}))


def test_collect_keeps_records_and_never_overwrites(table, tmp_path):
    runs, records = tmp_path / "runs", tmp_path / "records"
    _fake_run(runs, "etth1-h192", "dlinear", 0, 0.40)
    written = table.collect(runs, records)
    assert [p.name for p in written] == ["etth1-h192-dlinear-seed0.json"]
    rec = json.loads(written[0].read_text())
    assert rec["test"]["metrics"]["mse"] == 0.40 and rec["run_wall_s"] == 6.0 and rec["seed"] == 0
    # a later run with the same name does not replace the kept record
    (runs / "etth1-h192" / "runs" / "dlinear" / "seed0" / "result.json").unlink()
    (runs / "etth1-h192" / "runs" / "dlinear" / "seed0").rmdir()
    _fake_run(runs, "etth1-h192", "dlinear", 0, 9.0)
    assert table.collect(runs, records) == []
    assert json.loads(written[0].read_text())["test"]["metrics"]["mse"] == 0.40


def test_tables_from_records(table, tmp_path):
    runs, records = tmp_path / "runs", tmp_path / "records"
    for seed, mse in enumerate((0.40, 0.41, 0.42)):
        _fake_run(runs, "etth1-h192", "autohformer", seed, mse)
    ablation = (0.80, 0.85, 0.90)
    for seed, mse in enumerate(ablation):
        _fake_run(runs, "etth1-h96-no-decay", "autohformer", seed, mse)
    table.collect(runs, records)
    horizons = table.horizon_table(records)
    assert "| 192 | AutoHFormer, C.6 reading (attnlab) | 3 | 0.410 ± 0.010 | 0.205 ± 0.005 |" in horizons
    assert "| 96 | DLinear (attnlab, summary) |" in horizons  # T = 96 from the committed summary
    assert "| avg |" not in horizons  # only when every horizon has runs
    assert "instance norm" not in horizons  # no such runs yet
    for t in table.HORIZONS:
        for seed, mse in enumerate((0.30, 0.32)):
            _fake_run(runs, f"etth1-h{t}-instance-norm", "autohformer", seed, mse + t / 1000)
    table.collect(runs, records)
    horizons = table.horizon_table(records)
    assert "| 96 | AutoHFormer, C.6 reading + instance norm (attnlab) | 2 | 0.406 ± 0.014 |" in horizons
    avg = statistics.mean(0.31 + t / 1000 for t in table.HORIZONS)
    assert f"| avg | AutoHFormer, C.6 reading + instance norm (attnlab, seed means) | 2/2/2/2 | {avg:.3f} |" in horizons
    for t in (336, 720):  # one seed each: the plain model's average now has every horizon, 3/3/1/1 seeds behind it
        _fake_run(runs, f"etth1-h{t}", "autohformer", 0, 0.5)
    table.collect(runs, records)
    avg = statistics.mean([table.H96_SUMMARY["autohformer"][0][0], 0.41, 0.5, 0.5])
    horizons = table.horizon_table(records)
    assert f"| avg | AutoHFormer, C.6 reading (attnlab, seed means) | 3/3/1/1 | {avg:.3f} |" in horizons
    ablations = table.ablation_table(records)
    ref_mean, ref_std = table.H96_SUMMARY["autohformer"][0]
    p = stats.ttest_ind_from_stats(statistics.mean(ablation), statistics.stdev(ablation), 3, ref_mean, ref_std, 3,
                                   equal_var=False).pvalue
    row = next(line for line in ablations.splitlines() if line.startswith("| decay off"))
    assert f"| {statistics.mean(ablation) - ref_mean:+.3f} | {p:.3g} |" in row
    assert "| no (2 SE" in row  # 0.85 vs 0.969 +- 0.099 is within seed noise
