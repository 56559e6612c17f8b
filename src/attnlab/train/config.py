"""The run config: which task, its model and data configs (the task's own typed objects), the optimizer and
the loop settings. Loaded from TOML with ``--set`` overrides::

    task = "lm"            # or "translation"
    steps = 2000
    batch_size = 12

    [model]                # the task's model config (LMConfig for "lm")
    n_layers = 4
    attention = "castle"

    [data]                 # the task's data config
    source = "tinyshakespeare"

    [options]              # the task's own options (translation: label_smoothing, beam_size, ...)

    [optim]
    lr = 1e-3

Each value is validated once, by the config object that owns it; :mod:`attnlab.config` only checks keys and types
and prefixes an owner's error with its section (``model: n_heads=6 must divide d_model=512``). An unknown key
names itself and the valid ones; a key of an older attnlab (``model.block_size``) names its new spelling.

Batch convention: ``batch_size`` is the *global* number of rows (sequences, sentence pairs) per optimizer step. It
is split into ``grad_accum`` micro-steps and, under DDP, over ``world_size`` ranks, so the same config trains the
same model on one process or many (see :mod:`attnlab.train.distributed`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from attnlab.config import ConfigError, apply_overrides, from_dict, load_toml, to_dict

__all__ = [
    "OptimConfig",
    "TrainConfig",
    "ConfigError",
    "config_from_dict",
    "config_to_dict",
    "upgrade_config_dict",
    "load_config",
]

Precision = Literal["auto", "float32", "bfloat16", "float64"]


def _finite(name: str, value: float, *, positive: bool = False, low: float | None = None) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


@dataclass(kw_only=True)
class OptimConfig:
    """AdamW with linear warmup then cosine decay to ``min_lr_ratio * lr`` at ``decay_steps`` (default: the run's
    ``steps``). Weight decay applies to 2-D weights (matrices, embeddings) only, never to biases or norm gains."""

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
        _finite("lr", self.lr, positive=True)
        _finite("eps", self.eps, positive=True)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        _finite("weight_decay", self.weight_decay, low=0.0)
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip is not None:
            _finite("grad_clip", self.grad_clip, positive=True)
        if self.decay_steps is not None and self.decay_steps <= 0:
            raise ValueError(f"decay_steps must be positive or None, got {self.decay_steps}")
        if self.decay_steps is not None and self.decay_steps <= self.warmup_steps:
            # lr_at has no decay span then: the rate would stay at the peak for ever instead of decaying.
            raise ValueError(
                f"decay_steps={self.decay_steps} must be larger than warmup_steps={self.warmup_steps} "
                "(the cosine decay runs from the end of warmup to decay_steps)"
            )


def _task_class(name: str) -> Any:
    from attnlab.tasks import task_class

    try:
        return task_class(name)
    except ValueError as e:
        raise ConfigError(str(e)) from None


@dataclass(kw_only=True)
class TrainConfig:
    """One training run.

    Attributes:
        task: the task name (``"lm"``, ``"translation"``); decides the classes of ``model`` and ``data``.
        model: the task's model config (default: that class's defaults).
        data: the task's data config (default: that class's defaults).
        options: the task's own options, e.g. label smoothing and beam search for translation (default: that
            class's defaults).
        optim: the optimizer and learning-rate schedule.
        steps: optimizer steps in total.
        batch_size: global rows (sequences, sentence pairs) per optimizer step, over all accumulation steps and
            ranks.
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
        eval_batch_size: rows per evaluation batch (``None``: the micro-batch size).
        tensorboard: also write TensorBoard event files.
        progress: show a tqdm progress bar.
        threads: ``torch.set_num_threads`` for the run (process-wide); ``None`` leaves torch's default. Tiny CPU
            models run best on one thread: a second one adds little and, on a busy machine, spins.
        skip_nonfinite: a step whose loss or gradient norm is not finite is skipped (no update; counted in the
            result as ``skipped_steps``) instead of stopping the run with an error naming the step.
        fsdp: under ``torchrun`` with several processes, shard the model with FSDP2 (``fully_shard``) instead of
            replicating it with DDP (:mod:`attnlab.train.fsdp`); ignored in a single process.
        fsdp_checkpoint: how an FSDP run checkpoints: ``"full"`` (gathered into attnlab's ordinary format, read by
            every tool) or ``"sharded"`` (distributed: each rank writes its own shards with
            ``torch.distributed.checkpoint``; ``attnlab consolidate`` makes them readable by eval/generate/export).
    """

    task: str = "lm"
    model: Any = None
    data: Any = None
    options: Any = None
    optim: OptimConfig = field(default_factory=OptimConfig)
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
    skip_nonfinite: bool = False
    fsdp: bool = False
    fsdp_checkpoint: str = "full"

    def __post_init__(self) -> None:
        cls = _task_class(self.task)
        if self.model is None:
            self.model = cls.model_config()
        if self.data is None:
            self.data = cls.data_config()
        if self.options is None:
            self.options = cls.options_config()
        for name, want in (("model", cls.model_config), ("data", cls.data_config), ("options", cls.options_config),
                           ("optim", OptimConfig)):
            if not isinstance(getattr(self, name), want):
                raise ConfigError(f"{name} must be a {want.__name__} for task {self.task!r}, got "
                                  f"{type(getattr(self, name)).__name__}")
        try:  # the parts together (e.g. the model against the data's sizes), before any data or training
            cls.check_config(self.model, self.data, self.options)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        for n in ("steps", "batch_size", "grad_accum", "eval_interval", "log_interval", "keep_checkpoints"):
            v = getattr(self, n)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{n} must be a positive integer, got {v!r}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"grad_accum={self.grad_accum} must divide batch_size={self.batch_size} "
                "(batch_size is the global number of rows per optimizer step)"
            )
        if self.checkpoint_interval is not None and self.checkpoint_interval <= 0:
            raise ConfigError(f"checkpoint_interval must be positive or None, got {self.checkpoint_interval}")
        if not isinstance(self.fsdp, bool):
            raise ConfigError(f"fsdp must be true or false, got {self.fsdp!r}")
        if self.fsdp_checkpoint not in ("full", "sharded"):
            raise ConfigError(f"fsdp_checkpoint must be 'full' or 'sharded', got {self.fsdp_checkpoint!r}")
        if self.fsdp_checkpoint == "sharded" and not self.fsdp:
            raise ConfigError("fsdp_checkpoint='sharded' needs fsdp=true (only an FSDP run has shards to write)")
        if self.fsdp and self.compile:
            raise ConfigError("fsdp=true with compile=true is not supported yet: pick one")
        if self.fsdp and not cls.supports_fsdp:
            raise ConfigError(f"fsdp=true is not supported by task {self.task!r}: its evaluation calls the model "
                              "through methods other than forward, which a sharded model cannot run; use DDP")
        if self.threads is not None and self.threads <= 0:
            raise ConfigError(f"threads must be a positive integer or None, got {self.threads}")
        if self.eval_batch_size is not None and self.eval_batch_size <= 0:
            raise ConfigError(f"eval_batch_size must be positive or None, got {self.eval_batch_size}")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise ConfigError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")

    @property
    def task_class(self) -> Any:
        return _task_class(self.task)

    def micro_batch_size(self, world_size: int = 1) -> int:
        """Rows per micro-step on one rank; ``world_size * grad_accum`` must divide ``batch_size``."""
        per = self.grad_accum * world_size
        if self.batch_size % per:
            raise ConfigError(
                f"batch_size={self.batch_size} must be divisible by grad_accum * world_size = "
                f"{self.grad_accum} * {world_size} = {per}"
            )
        return self.batch_size // per

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        return config_from_dict(d)

    def replace(self, **overrides: Any) -> "TrainConfig":
        """A copy with dotted-key overrides, e.g. ``cfg.replace(**{"model.n_layers": 2, "steps": 10})``."""
        return apply_overrides(self, overrides)


def config_diff(a: Any, b: Any, prefix: str) -> list[str]:
    """``"key: checkpoint A vs now B"`` for every leaf where the nested plain values ``a`` and ``b`` differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += config_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: checkpoint {a!r} vs now {b!r}"]


def upgrade_config_dict(d: Any) -> Any:
    """A run config's plain values as an earlier attnlab saved them (a checkpoint's ``state.json``, a comparison's
    ``compare.json``), read back through today's config classes: keys added since take their defaults, so a saved
    config equal to today's compares equal and a resume is not refused over an option it never set. Values that no
    longer parse (a key removed or renamed since) are returned unchanged, and the comparison names the key."""
    if not isinstance(d, Mapping):
        return d
    try:
        return config_to_dict(config_from_dict(d))
    except (ConfigError, ValueError, TypeError):
        return d


def config_from_dict(d: Mapping[str, Any]) -> TrainConfig:
    """Build a :class:`TrainConfig` from nested plain values (TOML / JSON), checking every key and type; the
    ``task`` key (default ``"lm"``) decides the classes of the ``model`` and ``data`` tables."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"a run config must be a table of keys, got {d!r}")
    task = d.get("task", "lm")
    if not isinstance(task, str):
        raise ConfigError(f"task: expected a string, got {task!r}")
    cls = _task_class(task)
    return from_dict(TrainConfig, d, field_types={"model": cls.model_config, "data": cls.data_config,
                                                  "options": cls.options_config})


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Nested plain values that :func:`config_from_dict` turns back into ``cfg``."""
    return to_dict(cfg)


def load_config(path: str | Path) -> TrainConfig:
    """Read a :class:`TrainConfig` from a TOML file."""
    return config_from_dict(load_toml(path))


