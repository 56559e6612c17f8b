"""TrainConfig: TOML loading, --set overrides, unknown keys and impossible values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from attnlab.models.lm import LMConfig
from attnlab.config import ConfigError, apply_overrides, parse_set
from attnlab.train.config import OptimConfig, TrainConfig, config_from_dict
from attnlab.train.config import load_config as load_toml


def test_toml_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "run.toml"
    p.write_text(
        'steps = 50\nbatch_size = 8\ngrad_accum = 2\n\n[model]\nn_layers = 2\nd_model = 32\nn_heads = 4\n'
        'attention = "sliding-window"\nschedule = "alternate"\n[model.attention_options.sliding-window]\nwindow = 8\n\n'
        '[optim]\nlr = 3e-4\nbetas = [0.9, 0.99]\n'
    )
    cfg = load_toml(p)
    assert cfg.steps == 50 and cfg.grad_accum == 2 and cfg.model.n_layers == 2
    assert cfg.model.attention == "sliding-window" and cfg.model.attention_options == {"sliding-window": {"window": 8}}
    assert cfg.optim.betas == (0.9, 0.99) and cfg.optim.lr == 3e-4
    assert cfg.data.source == "tinyshakespeare"  # default kept
    assert config_from_dict(cfg.to_dict()) == cfg


def test_overrides_from_command_line() -> None:
    cfg = TrainConfig()
    new = apply_overrides(cfg, parse_set(["model.n_layers=2", "optim.lr=1e-2", "model.attention=castle",
                                          "tensorboard=false", "model.attention=sliding-window",
                                          "model.attention_options.sliding-window.window=16",
                                          "optim.grad_clip=0.5"]))
    assert new.model.n_layers == 2 and new.optim.lr == 1e-2 and new.model.attention == "sliding-window"
    assert new.tensorboard is False and new.model.attention_options == {"sliding-window": {"window": 16}}
    listed = apply_overrides(cfg, parse_set(['model.attention=["castle", "standard", "linear", "standard"]']))
    assert listed.model.attention == ["castle", "standard", "linear", "standard"]
    assert new.optim.grad_clip == 0.5
    assert cfg.model.n_layers == 4  # the original is untouched
    # an int where a float is expected is accepted and converted
    assert apply_overrides(cfg, {"optim.lr": 1}).optim.lr == 1.0


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"model.n_layer": 2}, ["model.n_layer", "n_layers", "d_model"]),
        ({"stepz": 2}, ["stepz", "steps", "batch_size"]),
        ({"optimizer.lr": 2}, ["'optimizer'", "model", "optim"]),
    ],
)
def test_unknown_keys_name_the_key_and_the_valid_ones(overrides: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        apply_overrides(TrainConfig(), overrides)
    for w in words:
        assert w in str(e.value)


def test_unknown_key_in_toml(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[data]\nsorce = 'x'\n")
    with pytest.raises(ConfigError, match=r"'data\.sorce'.*source"):
        load_toml(p)
    p.write_text("steps = [1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"model.n_heads": 5}, r"model: n_heads=5 must divide d_model=128"),
        ({"batch_size": 10, "grad_accum": 4}, r"grad_accum=4 must divide batch_size=10"),
        ({"steps": 0}, r"steps must be a positive integer, got 0"),
        ({"steps": "many"}, r"steps: expected an integer, got 'many'"),
        ({"model.dropout": 1.5}, r"model: dropout must be a float in \[0.0, 1.0\), got 1.5"),
        ({"precision": "float16"}, r"precision: expected one of 'auto', 'float32', 'bfloat16', 'float64'"),
        ({"optim.betas": [0.9]}, r"optim.betas: expected 2 values"),
        ({"optim.lr": -1.0}, r"optim: lr must be positive, got -1.0"),
        ({"data.tokenizer": "bpe"}, r"data.tokenizer: expected one of 'char', 'gpt2', 'word'"),
        ({"tensorboard": 1}, r"tensorboard: expected true/false"),
        ({"device": "tpu"}, r"device must be"),
        ({"optim.lr": float("inf")}, r"optim: lr must be a finite number, got inf"),
        ({"optim.grad_clip": float("nan")}, r"optim: grad_clip must be a finite number, got nan"),
        ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*63\), got -1"),
        ({"task": "vision"}, r"task='vision' is unknown; tasks: lm, translation"),
        ({"model.block_size": 32}, r"config key 'model.block_size' was renamed 'model.context_len'"),
        ({"model.attention": "nope"}, r"model: attention: layer 1 has unknown mechanism 'nope'; registered: .*castle"),
        ({"model.attention": "bidirectional"}, r"model: .*not causal"),
        ({"model.attention": ["standard", "castle"]}, r"model: attention is a list of 2 .* n_layers=4"),
        ({"model.attention_options.sliding-window.window": 8}, r"model: attention_options has options for 'sliding-window', which no layer uses"),
        # no decay span: the rate would stay at the peak after warmup instead of decaying
        ({"optim.warmup_steps": 100, "optim.decay_steps": 100},
         r"optim: decay_steps=100 must be larger than warmup_steps=100"),
    ],
)
def test_impossible_values_are_refused(overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        apply_overrides(TrainConfig(), overrides)


def test_explicit_head_dim_allows_non_dividing_heads() -> None:
    m = LMConfig(d_model=96, n_heads=5, head_dim=16)
    assert m.head_dim == 16


def test_micro_batch_over_ranks() -> None:
    cfg = TrainConfig(batch_size=12, grad_accum=2)
    assert cfg.micro_batch_size(1) == 6 and cfg.micro_batch_size(2) == 3
    with pytest.raises(ConfigError, match=r"batch_size=12 must be divisible by grad_accum \* world_size = 2 \* 4"):
        cfg.micro_batch_size(4)


def test_sections_are_kw_only_dataclasses() -> None:
    for cls in (TrainConfig, LMConfig, OptimConfig):
        assert dataclasses.is_dataclass(cls)
        with pytest.raises(TypeError):
            cls(1)  # type: ignore[misc]


def test_decay_steps_just_past_warmup_is_accepted() -> None:
    assert apply_overrides(TrainConfig(), {"optim.warmup_steps": 10, "optim.decay_steps": 11}).optim.decay_steps == 11


def test_old_toml_names_the_new_key(tmp_path: Path) -> None:
    p = tmp_path / "old.toml"
    p.write_text("[model]\nblock_size = 128\n")
    with pytest.raises(ConfigError, match=r"'model.block_size' was renamed 'model.context_len'"):
        load_toml(p)


def test_the_task_decides_the_section_classes() -> None:
    from attnlab.tasks.lm import LMDataConfig

    cfg = TrainConfig()
    assert cfg.task == "lm" and isinstance(cfg.model, LMConfig) and isinstance(cfg.data, LMDataConfig)
    with pytest.raises(ConfigError, match="model must be a LMConfig for task 'lm', got OptimConfig"):
        TrainConfig(model=OptimConfig())
    # each value is validated by its owner, once: the run config does not repeat the model's fields
    assert not {f.name for f in dataclasses.fields(TrainConfig)} & {f.name for f in dataclasses.fields(LMConfig)}
