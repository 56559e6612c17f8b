"""The ``future`` suite (spec future_mask.md §7 E3) at quick, tiny sizes: it writes its reports, its ratios are
finite, the targets are reported (never asserted: these are not timed tests), a failed correctness check replaces
a speed, and lengths without room for an image are refused naming the argument."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.bench import BenchOptions, get_suite
from attnlab.bench import future as fut
from attnlab.cli import main
from attnlab.masks.vlm import extra_pairs

TINY = dict(quick=True, d_model=16, n_heads=2, progress=False, budget_s=0.2)


@pytest.fixture(scope="module")
def result():
    return get_suite("future").run(BenchOptions(**TINY))


def test_quick_run_measures_every_case_with_finite_ratios(result) -> None:
    main, speedups, targets, checks = result.tables
    assert not result.failures, result.failures
    assert all(c["status"] == "ok" for c in checks.rows)
    assert {r["case"] for r in main.rows} == set(fut.case_labels(cuda=False))
    assert {r["L"] for r in main.rows} == {64, 128}
    for r in main.rows:
        for key in ("prefill ×causal", "decode ×causal", "amortised ×causal"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["case"], key, r.get(key))
        if r["case"] == fut.NATIVE:
            assert r["prefill ×causal"] == r["decode ×causal"] == 1.0
    assert len(speedups.rows) == 2 * len(fut.MUS)
    assert all(math.isfinite(s["speed-up per token"]) and s["paper speed-up (Tab. 6, 4096)"] > 1.6
               for s in speedups.rows)
    assert {t["met"] for t in targets.rows} <= {"met", "NOT met", "not measured"}
    # the 4k light-prefill target has no measurement at quick lengths: said so, not guessed
    assert {t["met"] for t in targets.rows if "prefill" in t["target"]} == {"not measured"}


def test_paper_speedups_are_the_spec_table() -> None:
    assert [round(fut.PAPER_SPEEDUP[mu], 2) for mu in fut.MUS] == [3.13, 2.43, 1.65]


def test_cli_quick_writes_markdown_csv_and_plot(tmp_path, capsys) -> None:
    out = tmp_path / "res"
    argv = ["bench", "future", "--quick", "--d-model", "16", "--n-heads", "2", "--budget", "0.2", "--lengths", "64",
            "--no-progress", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr()
    md = (out / "future-cpu.md").read_text()
    assert "paper speed-up" in md and "3.13" in md and "targets" in md
    assert (out / "future-cpu.csv").read_text().startswith("L,images,visual,case,status")
    assert (out / "future-cpu.png").stat().st_size > 0


def test_a_failed_check_replaces_the_speed(monkeypatch) -> None:
    real = fut._checks

    def broken(models, labels, options):
        rows = real(models, labels, options)
        rows[1] = {**rows[1], "status": "FAILED correctness: max error 1 > tolerance 1e-09"}  # covers "f P"
        return rows

    monkeypatch.setattr(fut, "_checks", broken)
    res = fut.run_future(BenchOptions(**{**TINY, "lengths": (64,)}))
    bad = [r for r in res.tables[0].rows if r["status"] != "ok"]
    assert [r["case"] for r in bad] == ["f P"] and "decode ms/token" not in bad[0]
    assert res.failures


def test_too_short_lengths_are_refused_naming_the_argument(capsys) -> None:
    with pytest.raises(ValueError, match="lengths: L=600 .* use L >= 662"):
        fut.run_future(BenchOptions(**{**TINY, "quick": False, "lengths": (600,)}))
    assert main(["bench", "future", "--lengths", "600", "--no-progress", "--device", "cpu", "--out", "/nonexistent"]) \
        == 2
    assert "lengths" in capsys.readouterr().err


def test_layout_and_closed_form_extra_pairs() -> None:
    vis = fut.layout(4096)
    assert int(vis.sum()) == 6 * fut.IMAGE_TOKENS and not vis[:4].any()  # 6 images of 576, a text prefix
    assert int((~vis).sum()) >= 4096 // 8
    small = fut.layout(64, 8)
    got = fut.extra_pair_counts(small)
    assert got == {k: int(extra_pairs(k, small)) for k in ("f", "v2v", "v2t")}
    assert fut.extra_pair_counts(torch.tensor([False, True, True, False]))["v2v"] == 1
