"""Training configuration: typed, nested dataclasses loadable from TOML with ``--set`` overrides.

A :class:`TrainConfig` has three sections, each its own table in TOML::

    steps = 2000
    batch_size = 12

    [model]
    n_layers = 4
    attention = "castle"

    [data]
    source = "tinyshakespeare"

    [optim]
    lr = 1e-3

Every key is checked: an unknown key is an error that names it and lists the valid ones, a value of the wrong
type names the key, the expected type and what it got, and impossible combinations (heads that do not divide
``d_model``, a global batch that does not split over accumulation steps, ...) are refused in ``__post_init__``.
Checks that need the data (a block longer than a split) are made by the trainer when it loads the corpus.

Batch convention: ``batch_size`` is the *global* number of sequences per optimizer step. It is split into
``grad_accum`` micro-steps and, under DDP, over ``world_size`` ranks, so the same config trains the same
model on one process or many (see :mod:`attnlab.train.distributed`).
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ModelSection",
    "DataSection",
    "OptimSection",
    "TrainConfig",
    "ConfigError",
    "load_toml",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
]

Precision = Literal["auto", "float32", "bfloat16", "float64"]


class ConfigError(ValueError):
    """A configuration key or value that cannot be used."""


@dataclass(kw_only=True)
class ModelSection:
    """The decoder LM (mirrors :class:`attnlab.models.LMConfig`, without the vocabulary size, which comes from
    the tokenizer). ``attention_options`` maps a mechanism name to its layer options, e.g.
    ``{"sliding-window": {"window": 64}}`` (``--set model.attention_options.sliding-window.window=64``)."""

    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    head_dim: int | None = None
    block_size: int = 64
    attention: str | list[str] = "standard"
    schedule: Literal["uniform", "alternate"] = "uniform"
    attention_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    parity: bool = True
    ffn_hidden: int | None = None
    dropout: float = 0.0
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        _positive(self, "n_layers", "d_model", "n_heads", "block_size")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ConfigError(
                f"model.n_heads={self.n_heads} must divide model.d_model={self.d_model} "
                "(or set model.head_dim explicitly)"
            )
        if self.head_dim is not None and self.head_dim <= 0:
            raise ConfigError(f"model.head_dim must be a positive integer, got {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.ffn_hidden is not None and self.ffn_hidden <= 0:
            raise ConfigError(f"model.ffn_hidden must be positive or None, got {self.ffn_hidden}")
        # Everything else (mechanism names, causality, per-mechanism options, list length, parity heads) is
        # checked by the model config itself, now rather than when training starts.
        try:
            self.lm_config(vocab_size=2)
        except ConfigError:
            raise
        except (ValueError, TypeError) as e:
            raise ConfigError(f"model: {e}") from None

    @property
    def mechanisms(self) -> list[str]:
        return [self.attention] if isinstance(self.attention, str) else list(self.attention)

    def lm_config(self, vocab_size: int) -> Any:
        """The :class:`attnlab.models.LMConfig` for a vocabulary of ``vocab_size`` tokens."""
        from attnlab.models import LMConfig

        kw = dataclasses.asdict(self)
        return LMConfig(vocab_size=vocab_size, **kw)


@dataclass(kw_only=True)
class DataSection:
    """Which corpus and tokenizer (see :func:`attnlab.data.load_corpus`)."""

    source: str = "tinyshakespeare"
    tokenizer: Literal["char", "gpt2", "word"] = "char"
    val_fraction: float = 0.1
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if not self.source:
            raise ConfigError("data.source must name a corpus or a file, got ''")


@dataclass(kw_only=True)
class OptimSection:
    """AdamW with linear warmup then cosine decay to ``min_lr_ratio * lr``.

    Weight decay applies to 2-D weights (matrices, embeddings) only, never to biases or norm gains.
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    decay_steps: int | None = None
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be positive, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"optim.grad_clip must be positive or None, got {self.grad_clip}")
        if self.decay_steps is not None and self.decay_steps <= 0:
            raise ConfigError(f"optim.decay_steps must be positive or None, got {self.decay_steps}")
        if self.decay_steps is not None and self.decay_steps <= self.warmup_steps:
            # lr_at has no decay span then: the rate would stay at the peak for ever instead of decaying.
            raise ConfigError(
                f"optim.decay_steps={self.decay_steps} must be larger than optim.warmup_steps={self.warmup_steps} "
                "(the cosine decay runs from the end of warmup to decay_steps)"
            )


@dataclass(kw_only=True)
class TrainConfig:
    """One training run.

    Attributes:
        steps: optimizer steps in total.
        batch_size: global sequences per optimizer step (over all accumulation steps and ranks).
        grad_accum: micro-steps per optimizer step.
        eval_interval: evaluate (on the whole validation split) every this many steps, and at the end.
        log_interval: write a training-loss record every this many steps.
        checkpoint_interval: checkpoint every this many steps (``None``: at each evaluation), and at the end.
        keep_checkpoints: how many step checkpoints to keep (the newest).
        seed: seeds initialisation, data order and dropout.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        precision: ``"auto"`` is bfloat16 autocast on CUDA and float32 on CPU; ``"float64"`` trains in double
            (tests); ``"bfloat16"`` is autocast (CUDA only).
        compile: wrap the model in ``torch.compile``.
        eval_batch_size: sequences per evaluation batch (``None``: the micro-batch size).
        tensorboard: also write TensorBoard event files.
        progress: show a tqdm progress bar.
        threads: ``torch.set_num_threads`` for the run (process-wide); ``None`` leaves torch's default. Tiny CPU
            models run best on one thread: a second one adds little and, on a busy machine, spins.
    """

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    steps: int = 2000
    batch_size: int = 12
    grad_accum: int = 1
    eval_interval: int = 250
    log_interval: int = 10
    checkpoint_interval: int | None = None
    keep_checkpoints: int = 1
    seed: int = 1337
    device: str = "auto"
    precision: Precision = "auto"
    compile: bool = False
    eval_batch_size: int | None = None
    tensorboard: bool = True
    progress: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        for name, cls in (("model", ModelSection), ("data", DataSection), ("optim", OptimSection)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        _positive(self, "steps", "batch_size", "grad_accum", "eval_interval", "log_interval", "keep_checkpoints")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"grad_accum={self.grad_accum} must divide batch_size={self.batch_size} "
                "(batch_size is the global number of sequences per optimizer step)"
            )
        if self.checkpoint_interval is not None and self.checkpoint_interval <= 0:
            raise ConfigError(f"checkpoint_interval must be positive or None, got {self.checkpoint_interval}")
        if self.threads is not None and self.threads <= 0:
            raise ConfigError(f"threads must be a positive integer or None, got {self.threads}")
        if self.eval_batch_size is not None and self.eval_batch_size <= 0:
            raise ConfigError(f"eval_batch_size must be positive or None, got {self.eval_batch_size}")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise ConfigError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r}")

    def micro_batch_size(self, world_size: int = 1) -> int:
        """Sequences per micro-step on one rank; ``world_size * grad_accum`` must divide ``batch_size``."""
        per = self.grad_accum * world_size
        if self.batch_size % per:
            raise ConfigError(
                f"batch_size={self.batch_size} must be divisible by grad_accum * world_size = "
                f"{self.grad_accum} * {world_size} = {per}"
            )
        return self.batch_size // per

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.model.block_size

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        return config_from_dict(d)

    def replace(self, **overrides: Any) -> "TrainConfig":
        """A copy with dotted-key overrides, e.g. ``cfg.replace(**{"model.n_layers": 2, "steps": 10})``."""
        return apply_overrides(self, overrides)


def _positive(obj: Any, *names: str) -> None:
    prefix = {ModelSection: "model.", DataSection: "data.", OptimSection: "optim."}.get(type(obj), "")
    for n in names:
        v = getattr(obj, n)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ConfigError(f"{prefix}{n} must be a positive integer, got {v!r}")


_SECTIONS = {"model": ModelSection, "data": DataSection, "optim": OptimSection}


# ----------------------------------------------------------------------------------------------------------------
# Type checking of plain values (from TOML / JSON / the command line) against the dataclass annotations.


def _check_type(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` converted to ``tp`` where lossless (int -> float, list -> tuple), else raise."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for a in args:
            try:
                return _check_type(key, value, a)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected None, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: expected one of {', '.join(map(repr, args))}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r} ({type(value).__name__})")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r} ({type(value).__name__})")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r} ({type(value).__name__})")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r} ({type(value).__name__})")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}: {value!r}")
            return tuple(_check_type(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        out = [_check_type(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise ConfigError(f"{key}: expected a table/dict, got {value!r} ({type(value).__name__})")
    return value


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build_section(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    hints = _hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in values.items():
        if k not in valid:
            raise ConfigError(f"unknown config key '{prefix}{k}'; valid keys in [{prefix.rstrip('.')}]: "
                              f"{', '.join(valid)}")
        kwargs[k] = _check_type(f"{prefix}{k}", v, hints[k])
    return cls(**kwargs)


def config_from_dict(d: Mapping[str, Any]) -> TrainConfig:
    """Build a :class:`TrainConfig` from nested plain values (TOML / JSON), checking every key and type."""
    top_valid = [f.name for f in dataclasses.fields(TrainConfig)]
    top: dict[str, Any] = {}
    for k, v in d.items():
        if k in _SECTIONS:
            if not isinstance(v, Mapping):
                raise ConfigError(f"{k} must be a table of keys, got {v!r}")
            top[k] = _build_section(_SECTIONS[k], v, f"{k}.")
        elif k in top_valid:
            top[k] = _check_type(k, v, _hints(TrainConfig)[k])
        else:
            raise ConfigError(f"unknown config key {k!r}; valid top-level keys: {', '.join(top_valid)}")
    return TrainConfig(**top)


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Nested plain values (tuples become lists) that :func:`config_from_dict` turns back into ``cfg``."""

    def plain(x: Any) -> Any:
        if isinstance(x, tuple):
            return [plain(v) for v in x]
        if isinstance(x, list):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x

    return plain(dataclasses.asdict(cfg))


def load_toml(path: str | Path) -> TrainConfig:
    """Read a :class:`TrainConfig` from a TOML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        d = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None
    return config_from_dict(d)


def parse_value(text: str) -> Any:
    """A command-line value: TOML syntax when it parses (``4``, ``1e-3``, ``true``, ``["a", "b"]``), else the
    raw string (so ``--set model.attention=castle`` needs no quotes)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["model.n_layers=2", "steps=10"]`` -> ``{"model.n_layers": 2, "steps": 10}``."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_value(v.strip())
    return out


def apply_overrides(cfg: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    """A new config with dotted-key ``overrides`` applied (validated like a TOML file)."""
    d = config_to_dict(cfg)
    for key, value in overrides.items():
        parts = key.split(".")
        if len(parts) == 1:
            d[parts[0]] = value
        elif len(parts) == 2 and parts[0] in _SECTIONS:
            d[parts[0]][parts[1]] = value
        elif len(parts) == 3 and parts[0] == "model" and parts[1] == "attention_options":
            d["model"].setdefault("attention_options", {})[parts[2]] = value  # a whole table of options
        elif len(parts) == 4 and parts[0] == "model" and parts[1] == "attention_options":
            # model.attention_options.<mechanism>.<option>=value
            d["model"].setdefault("attention_options", {}).setdefault(parts[2], {})[parts[3]] = value
        else:
            raise ConfigError(
                f"unknown config key {key!r}; use a top-level key or section.key with section in "
                f"{', '.join(_SECTIONS)}"
            )
    return config_from_dict(d)
