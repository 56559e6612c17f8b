"""The CLI commands train / eval / generate / compare, end to end on a small text file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnlab.cli import main


@pytest.fixture
def text(tmp_path: Path) -> Path:
    from attnlab.data import read_bundled_text

    p = tmp_path / "small.txt"
    p.write_text(read_bundled_text("tinyshakespeare")[:8000])
    return p


def _small(text: Path, tmp_path: Path) -> list[str]:
    return ["--set", f"data.source={text}", "--set", f"data.cache_dir={tmp_path / 'cache'}",
            "--set", "model.n_layers=1", "--set", "model.d_model=32", "--set", "model.context_len=32",
            "--set", "eval_interval=4", "--set", "tensorboard=true", "--steps", "8", "--batch-size", "4",
            "--no-progress"]


def test_train_eval_generate(tmp_path: Path, text: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNLAB_CACHE_DIR", str(tmp_path / "cache"))  # eval never uses a cache stored in a checkpoint
    out = tmp_path / "run"
    assert main(["train", "--preset", "shakespeare-char-cpu", "--mechanism", "castle", "--out", str(out),
                 *_small(text, tmp_path)]) == 0
    assert (out / "ckpt-00000008" / "model.safetensors").is_file()
    assert (out / "metrics.jsonl").is_file() and (out / "metrics.csv").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 8 and 0 <= result["overhead_fraction"] < 1
    capsys.readouterr()

    assert main(["eval", "--checkpoint", str(out), "--json", "--data", str(text)]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["val"]["loss"] == pytest.approx(result["val"]["loss"], rel=1e-6)
    assert ev["val"]["bits_per_char"] == pytest.approx(ev["val"]["loss"] / 0.6931471805599453, rel=1e-9)
    assert "test" not in ev  # a plain text file has no test split

    assert main(["generate", "--checkpoint", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "20",
                 "--seed", "3", "--temperature", "1.0", "--top-k", "10"]) == 0
    a = capsys.readouterr().out
    assert a.startswith("ROMEO:") and len(a.rstrip("\n")) >= len("ROMEO:") + 15
    assert main(["generate", "--checkpoint", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "20",
                 "--seed", "3", "--temperature", "1.0", "--top-k", "10", "--no-cache"]) == 0
    assert capsys.readouterr().out == a  # cached == uncached through the CLI too

    # the run directory is protected; --resume continues (nothing to do), --force moves it aside
    assert main(["train", "--out", str(out), *_small(text, tmp_path), "--mechanism", "castle"]) == 2
    assert "already holds results" in capsys.readouterr().err
    assert main(["train", "--out", str(out), *_small(text, tmp_path), "--mechanism", "castle", "--resume",
                 "--steps", "10"]) == 0
    assert (out / "ckpt-00000010").is_dir()
    assert main(["train", "--out", str(out), *_small(text, tmp_path), "--force"]) == 0
    assert len(list(tmp_path.glob("run.old-*"))) == 1


def test_train_errors_are_clear(tmp_path: Path, text: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "--out", str(tmp_path / "x"), *_small(text, tmp_path)]
    assert main([*args, "--set", "model.n_layer=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'model.n_layer'" in err and "n_layers" in err
    assert main([*args, "--set", "model.n_heads=5"]) == 2
    assert "model: n_heads=5 must divide d_model=32" in capsys.readouterr().err
    assert main([*args, "--set", "model.context_len=9000"]) == 2
    assert "model.context_len=9000 is longer than the training split" in capsys.readouterr().err
    assert main([*args, "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    # bad data files through the data API
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 10)
    assert main([*args, "--set", f"data.source={binary}"]) == 2
    assert str(binary) in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main([*args, "--set", f"data.source={empty}"]) == 2
    assert "empty" in capsys.readouterr().err
    assert main([*args, "--set", f"data.source={tmp_path / 'missing.txt'}"]) == 2
    assert "missing.txt" in capsys.readouterr().err
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[optim]\nlr = 'fast'\n")
    assert main([*args, "--config", str(bad_toml)]) == 2
    assert "optim.lr: expected a number, got 'fast'" in capsys.readouterr().err


def test_eval_and_generate_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--checkpoint", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["generate", "--checkpoint", str(tmp_path / "empty")]) == 2
    assert "no checkpoint in" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "empty"), "--batch-size", "0"]) == 2
    assert "--batch-size must be a positive number of rows, got 0" in capsys.readouterr().err


def test_compare_cli(tmp_path: Path, text: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--preset", "tiny", "--mechanisms", "standard,sliding-window", "--seeds", "0",
            "--set", f"data.source={text}", "--set", f"data.cache_dir={tmp_path / 'cache'}", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| `sliding-window` |" in printed and "report:" in printed
    assert (out / "report.html").is_file() and (out / "leaderboard.csv").is_file()
    assert main(args) == 2
    assert "already holds results" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0


def test_presets_resolve() -> None:
    from attnlab.compare.presets import COMPARE_PRESETS, get_compare_preset
    from attnlab.train.presets import PRESETS, get_preset

    for name in PRESETS:
        assert get_preset(name).steps > 0
    for name in COMPARE_PRESETS:
        assert get_compare_preset(name).variants
