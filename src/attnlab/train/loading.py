"""Load a trained model with its task (tokenizer, configs) from a checkpoint, for evaluation or generation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from attnlab.tasks import Task
from attnlab.train import checkpoint as ckpt
from attnlab.train.config import ConfigError, TrainConfig, config_from_dict
from attnlab.train.trainer import resolve_device

__all__ = ["Trained", "load_trained"]


@dataclass
class Trained:
    """A checkpoint's model (eval mode), its task (rebuilt from the checkpoint, no data loaded), run config and
    JSON state."""

    model: nn.Module
    task: Task
    config: TrainConfig
    state: dict[str, Any]
    path: Path

    @property
    def tokenizer(self) -> Any:
        return getattr(self.task, "tokenizer", None)


def load_trained(path: str | Path, *, device: str = "auto", task: str | None = None) -> Trained:
    """The model of checkpoint (or run directory) ``path`` in eval mode on ``device``, with its task.

    Args:
        task: the task the caller needs (e.g. ``"lm"`` for generation); a checkpoint of another task is a
            ``CheckpointError`` that names both.
    """
    cdir = ckpt.find_checkpoint(path)
    state = ckpt.read_state(cdir)
    try:
        config = config_from_dict(state["config"])
    except (KeyError, ConfigError) as e:
        raise ckpt.CheckpointError(f"{cdir / 'state.json'}: the run config cannot be read ({e})") from None
    if task is not None and config.task != task:
        raise ckpt.CheckpointError(
            f"checkpoint {str(cdir)!r} is a {config.task!r} model, but this command needs a {task!r} model")
    t = config.task_class.from_state(config.model, config.data, state.get("task_state", {}), seed=config.seed,
                                     options=config.options)
    model = t.build_model()
    ckpt.load_model_weights(cdir, model)
    model.to(resolve_device(device)).eval()
    return Trained(model=model, task=t, config=config, state=state, path=cdir)
