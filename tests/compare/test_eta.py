"""The time-left estimate of `attnlab compare` prices each run by its own variant's measured runs."""

from __future__ import annotations

from types import SimpleNamespace

from attnlab.compare.runner import _eta


def _cfg(tmp_path):
    return SimpleNamespace(variants=["dlinear", "transformer", "autohformer"], seeds=[0, 1],
                           run_dir=lambda out, m, s: out / m / f"seed{s}")


def test_eta_uses_each_variants_own_time_and_names_untimed_ones(tmp_path):
    cfg = _cfg(tmp_path)
    walls = {"dlinear": [60.0], "transformer": [600.0, 1200.0]}
    # at transformer seed 1: itself (900 s) left of the timed variants; autohformer x2 not timed yet
    assert _eta(cfg, tmp_path, walls, "transformer", 1) == (
        " (about 15 min left for 1 run of variants timed so far, plus 2 of autohformer (not timed yet))")
    # runs finished earlier (result.json present) are not counted
    d = tmp_path / "autohformer" / "seed0"
    d.mkdir(parents=True)
    (d / "result.json").write_text("{}")
    walls["autohformer"] = [3000.0]
    # 60 + 900 + 900 + 3000 s
    assert _eta(cfg, tmp_path, walls, "dlinear", 1) == " (about 81 min left for 4 runs of variants timed so far)"
    assert _eta(cfg, tmp_path, {}, "dlinear", 0) == ""  # nothing timed: no guess


def test_the_leaderboard_names_each_variants_own_budget():
    from attnlab.compare.presets import etth1_models, stg_objectives_quick

    text = etth1_models().describe(1)
    assert "`dlinear` 2,600 steps x 32 rows, `transformer` 1,000 steps x 32 rows" in text
    assert "target tokens per run" not in text  # (one figure would be wrong for two of the three)
    assert "1 target tokens per run" in stg_objectives_quick().describe(1)
