"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for the trainer: ``TrainConfig(fsdp=True)`` under ``torchrun``.

Each residual block (:class:`attnlab.models.common.ResidualBlock`) becomes its own FSDP unit, then the whole model
(embeddings, output head, anything outside the blocks). Parameters, gradients and optimizer state are sharded over
the ranks; a forward all-gathers each unit's parameters in turn. Gradients are averaged over the ranks as DDP does,
so the trainer's loss scaling is the same and a run equals the DDP run with the same global batch (tested with 2
CPU processes over gloo).

Checkpoints stay in attnlab's ordinary format (``model.safetensors``, ``optimizer.safetensors``, ``state.json``), so
an FSDP checkpoint is read by ``attnlab eval``, ``generate``, ``export`` and by a DDP or single-process resume alike:
at a save every rank joins the gathering of the full model and optimizer state
(``torch.distributed.checkpoint.state_dict``, offloaded to the CPU on rank 0), rank 0 loads it into a CPU copy of
the unsharded model made before sharding (:class:`Sharding.template`) and writes that; a resume reads the
checkpoint into the copy on rank 0 and broadcasts it into the shards. The CPU copy costs one full model (and, while
saving, its optimizer state) of host memory on rank 0.

Evaluation: every rank evaluates the whole split (a sharded forward is a collective, so the ranks must run the same
calls), and each gets the same metrics.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

__all__ = ["Sharding", "shard", "plain_tensor"]


def shard(model: nn.Module) -> nn.Module:
    """``fully_shard`` every residual block, then the model (in place); returns the model."""
    from torch.distributed.fsdp import fully_shard

    from attnlab.models.common import ResidualBlock

    for m in model.modules():
        if isinstance(m, ResidualBlock):
            fully_shard(m)
    fully_shard(model)
    return model


def plain_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (e.g. the gradient norm of sharded parameters); any other tensor unchanged."""
    full = getattr(t, "full_tensor", None)
    return full() if callable(full) else t


class Sharding:
    """The FSDP2 state of one trainer (module docstring). Build it before the optimizer: sharding replaces the
    parameters.

    Args:
        model: the unsharded model, on its device; sharded in place.
        is_main: rank 0, which keeps the CPU copy used for checkpoints.
        make_optimizer: the trainer's optimizer factory, for the copy's optimizer.
    """

    def __init__(self, model: nn.Module, *, is_main: bool, make_optimizer: Callable[[nn.Module], Any]) -> None:
        self.template = None
        if is_main:  # through the CPU, so that the device never holds two full copies
            device = next(model.parameters()).device
            self.template = copy.deepcopy(model.to("cpu"))
            model.to(device)
        self._make_optimizer = make_optimizer
        self.is_main = is_main
        shard(model)

    @contextlib.contextmanager
    def sync(self, model: nn.Module, *, last: bool) -> Iterator[None]:
        """Reduce gradients only on the last micro-step (the counterpart of DDP's ``no_sync``)."""
        model.set_requires_gradient_sync(last)  # type: ignore[operator]
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)  # type: ignore[operator]

    def gather(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module | None, Any]:
        """Collective: the full model and optimizer state, loaded into the CPU copy and its optimizer on rank 0
        (``(None, None)`` elsewhere), ready for :func:`attnlab.train.checkpoint.save_checkpoint`."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict, set_optimizer_state_dict)

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd = get_model_state_dict(model, options=opts)
        optim_sd = get_optimizer_state_dict(model, optimizer, options=opts)
        if not self.is_main:
            return None, None
        assert self.template is not None
        self.template.load_state_dict(model_sd)
        opt = self._make_optimizer(self.template)
        for g_copy, g in zip(opt.param_groups, optimizer.param_groups):
            g_copy["lr"] = g["lr"]
        set_optimizer_state_dict(self.template, opt, optim_sd, options=StateDictOptions(full_state_dict=True))
        return self.template, opt

    def load(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Collective: the checkpoint ``path`` into the shards (rank 0 reads it and broadcasts)."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict, set_model_state_dict,
                                                             set_optimizer_state_dict)

        from attnlab.train import checkpoint as ckpt

        model_sd: dict[str, Any] = {}
        optim_sd: dict[str, Any] = {}
        if self.is_main:
            assert self.template is not None
            ckpt.load_model_weights(path, self.template)
            opt = self._make_optimizer(self.template)
            ckpt.load_optimizer(path, opt, state)
            full = StateDictOptions(full_state_dict=True)
            model_sd = get_model_state_dict(self.template, options=full)
            optim_sd = get_optimizer_state_dict(self.template, opt, options=full)
        opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(model, model_sd, options=opts)
        set_optimizer_state_dict(model, optimizer, optim_sd, options=opts)
