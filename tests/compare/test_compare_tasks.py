"""Comparisons over another task (translation cross-attention scores) and the resolve-once rule for mechanisms."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest

from attnlab.compare import CompareConfig, run_compare
from attnlab.compare.presets import tiny
from attnlab.config import ConfigError


def test_translation_scores_comparison_ranks_by_bleu(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    pytest.importorskip("sacrebleu")
    import sys

    sys.path.insert(0, str(Path(__file__).parent.parent / "tasks"))
    from test_translation_task import _cfg  # the tiny aligned corpus and model of the task tests

    base = replace(_cfg(tmp_path), steps=2, eval_interval=2, precision="float32")
    cfg = CompareConfig(base=base, variants=["scaled_dot", "additive", "general"], seeds=[0, 1])
    assert cfg.key == "model.cross_score" and cfg.variant_label == "cross score"
    assert cfg.run_config("additive", 1).model.cross_score == "additive"
    res = run_compare(cfg, tmp_path / "cmp", log=lambda s: None)
    md = res.files["leaderboard_md"].read_text()
    assert "| cross score |" in md and "val bleu (mean ± std)" in md and "Δ bleu vs baseline" in md
    rows = list(csv.DictReader(res.files["leaderboard_csv"].open()))
    assert [r["mechanism"] for r in rows] == ["scaled_dot", "additive", "general"]
    assert all(r["val_bleu_mean"] != "" for r in rows)
    with pytest.raises(ConfigError, match=r"options given for \['bilinear'\], which are not cross scores; valid: "
                                          r"scaled_dot, dot, general, additive"):
        CompareConfig(base=base, variants=["dot"], options={"bilinear": {}})
    with pytest.raises(ConfigError, match="cross score 'bilinear': model.cross_score: expected one of"):
        CompareConfig(base=base, variants=["dot", "bilinear"])


def test_a_mechanism_name_is_resolved_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """CompareConfig builds each variant's layer config once; a run's model is then built from it without another
    look-up of the name or another layer-config build."""
    from attnlab.layers import registry
    from attnlab.tasks.lm import LanguageModeling

    built: list[str] = []
    original = registry.MechanismSpec.config

    def counting(self, **kw):  # type: ignore[no-untyped-def]
        built.append(self.name)
        return original(self, **kw)

    monkeypatch.setattr(registry.MechanismSpec, "config", counting)
    base = tiny().base
    built.clear()
    cfg = CompareConfig(base=base, variants=["castle", "linear"], seeds=[0, 1])
    # the base config is rebuilt per variant by the overrides (standard: once each), each variant's once
    assert built.count("castle") <= 2 and built.count("linear") <= 2  # probe + final build at most
    n = len(built)
    run = cfg.run_config("castle", 1)
    task = LanguageModeling(run.model, run.data, seed=1, tokenizer=type("T", (), {"vocab_size": 65})())
    task.build_model()
    assert len(built) == n  # building the run's model looks no mechanism up again


def test_forecast_variants_are_checked_against_the_data_before_any_training(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every variant's whole run config (model against data) is checked when the comparison is made: AutoHFormer's
    24-step segments do not divide a horizon of 36, which once failed only when its model was built, after the other
    models had trained."""
    from attnlab.cli import main
    from attnlab.compare.presets import forecast_quick

    base = forecast_quick().base.replace(**{"data.horizon": 36})  # DLinear (the base's model) takes any horizon
    msg = r"model\.autohformer\.segment_len=24 must divide data\.horizon=36"
    with pytest.raises(ConfigError, match=r"model 'autohformer': " + msg):
        CompareConfig(base=base, variants=["dlinear", "transformer", "autohformer"])
    out = tmp_path / "cmp"
    assert main(["compare", "--task", "forecast", "--preset", "forecast-quick", "--set", "data.horizon=36",
                 "--out", str(out)]) == 2
    assert "model.autohformer.segment_len=24 must divide data.horizon=36" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written or trained
    # a single run is checked when its config is made (attnlab train), not when its model is built
    assert main(["train", "--preset", "etth1-autohformer", "--set", "data.horizon=36", "--print-config"]) == 2
    assert "model.autohformer.segment_len=24 must divide data.horizon=36" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=msg):
        base.replace(**{"model.arch": "autohformer"})
    # sizes that fit: every variant is accepted (segments of 24 divide 48; the other models take any horizon)
    ok = CompareConfig(base=forecast_quick().base.replace(**{"data.horizon": 48}),
                       variants=["dlinear", "transformer", "autohformer"])
    assert ok.run_config("autohformer", 0).data.horizon == 48


def test_the_report_intro_names_a_data_source_only_where_there_is_one() -> None:
    from attnlab.compare.presets import get_compare_preset

    stg = get_compare_preset("stg-objectives-quick").describe(1000)
    assert "1,000 target tokens per run, seeds 0, 1" in stg and "?" not in stg
    lm = get_compare_preset("tiny").describe(1000)
    assert "target tokens per run on `" in lm
