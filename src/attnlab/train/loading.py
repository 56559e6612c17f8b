"""Load a trained model (and its tokenizer and config) from a checkpoint for evaluation or generation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from attnlab.train import checkpoint as ckpt
from attnlab.train.config import TrainConfig, config_from_dict
from attnlab.train.trainer import build_model, resolve_device

__all__ = ["Trained", "load_trained"]


@dataclass
class Trained:
    model: nn.Module
    tokenizer: Any
    config: TrainConfig
    state: dict[str, Any]
    path: Path


def load_trained(path: str | Path, *, device: str = "auto") -> Trained:
    """The model of checkpoint (or run directory) ``path`` in eval mode on ``device``, with its tokenizer."""
    cdir = ckpt.find_checkpoint(path)
    state = ckpt.read_state(cdir)
    config = config_from_dict(state["config"])
    model = build_model(config.model, int(state["vocab_size"]))
    ckpt.load_model_weights(cdir, model)
    model.to(resolve_device(device)).eval()
    tok = None
    if state.get("tokenizer") is not None:
        from attnlab.data import tokenizer_from_dict

        tok = tokenizer_from_dict(state["tokenizer"])
    return Trained(model=model, tokenizer=tok, config=config, state=state, path=cdir)
