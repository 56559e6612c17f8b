"""``--print-config`` writes TOML that ``--config`` reads back unchanged: every training preset, every comparison
preset (with its ``[compare]`` table), merged over the task's default preset, and after ``--set`` overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnlab.cli import main
from attnlab.compare.presets import COMPARE_PRESETS
from attnlab.train.presets import PRESETS


def _print(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


@pytest.mark.parametrize("preset", list(PRESETS))
def test_train_config_reads_back_unchanged(preset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml_text = _print(["train", "--preset", preset, "--print-config"], capsys)
    want = json.loads(_print(["train", "--preset", preset, "--print-config", "json"], capsys))
    f = tmp_path / "run.toml"
    f.write_text(toml_text)
    task = want["task"]
    back = json.loads(_print(["train", "--task", task, "--config", str(f), "--print-config", "json"], capsys))
    assert back == want
    # without --task, the file's own task picks the preset it is merged over
    assert json.loads(_print(["train", "--config", str(f), "--print-config", "json"], capsys)) == want
    # and printing the read-back config gives the same TOML
    assert _print(["train", "--task", task, "--config", str(f), "--print-config"], capsys) == toml_text


@pytest.mark.parametrize("preset", list(COMPARE_PRESETS))
def test_compare_config_reads_back_unchanged(preset: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    toml_text = _print(["compare", "--preset", preset, "--print-config"], capsys)
    assert "[compare]" in toml_text
    want = json.loads(_print(["compare", "--preset", preset, "--print-config", "json"], capsys))
    f = tmp_path / "cmp.toml"
    f.write_text(toml_text)
    back = json.loads(_print(["compare", "--task", want["task"], "--config", str(f), "--print-config", "json"],
                             capsys))
    assert back == want


def test_overrides_and_the_compare_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = _print(["compare", "--preset", "tiny", "--seeds", "3,4", "--mechanisms", "standard,linear", "--set",
                   "optim.lr=0.01", "--print-config"], capsys)
    f = tmp_path / "c.toml"
    f.write_text(text)
    d = json.loads(_print(["compare", "--config", str(f), "--print-config", "json"], capsys))
    assert d["seeds"] == [3, 4] and d["variants"] == ["standard", "linear"] and d["base"]["optim"]["lr"] == 0.01
    # flags still win over the file
    d = json.loads(_print(["compare", "--config", str(f), "--seeds", "7", "--print-config", "json"], capsys))
    assert d["seeds"] == [7]
    f.write_text(text + "\n[compare.extra]\n")
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("[compare]", "[compare]\nmechanisms = [\"x\"]"))
    assert main(["compare", "--config", str(bad), "--print-config"]) == 2
    assert "compare.mechanisms: unknown key" in capsys.readouterr().err
    # a [compare] table means nothing to train: an unknown key there
    assert main(["train", "--config", str(f), "--print-config"]) == 2
    assert "compare" in capsys.readouterr().err


SMOKE = {"tiny", "multi30k-scores-tiny", "digits-masks-quick", "stg-objectives-quick"}


@pytest.mark.parametrize("preset", [p for p in COMPARE_PRESETS if p not in SMOKE])
def test_comparison_presets_draw_ten_validation_points(preset: str) -> None:
    from attnlab.compare.presets import get_compare_preset

    base = get_compare_preset(preset).base
    assert base.steps // base.eval_interval >= 10, (preset, base.steps, base.eval_interval)


# Comparison presets that write no TensorBoard logs, each with its reason; every other one logs by default.
NO_TENSORBOARD = {
    "tiny": "a seconds-long smoke comparison for the test-suite: event files would only cost time there",
    "multi30k-scores-tiny": "the same, for translation",
}


@pytest.mark.parametrize("preset", list(COMPARE_PRESETS))
def test_comparison_presets_log_to_tensorboard(preset: str) -> None:
    """Every run of a comparison preset (each variant, each seed) writes TensorBoard logs, except the smoke presets
    listed in ``NO_TENSORBOARD`` with their reason."""
    cfg = COMPARE_PRESETS[preset]()
    want = preset not in NO_TENSORBOARD
    runs = [(v, s, cfg.run_config(v, s).tensorboard) for v in cfg.variants for s in cfg.seeds]
    assert all(tb is want for *_, tb in runs), runs


def test_make_demo_preset_logs_to_tensorboard() -> None:
    """``make demo`` runs a comparison preset whose runs write TensorBoard logs."""
    import re

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    target = re.search(r"^demo:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert target is not None, "no demo target in the Makefile"
    presets = re.findall(r"attnlab compare .*--preset (\S+)", target.group(1))
    assert presets == ["quick"], presets
    cfg = COMPARE_PRESETS[presets[0]]()
    assert all(cfg.run_config(v, s).tensorboard for v in cfg.variants for s in cfg.seeds)
