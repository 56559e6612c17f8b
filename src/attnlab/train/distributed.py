"""Distributed data parallel: process-group setup and deterministic data sharding.

Launch the ordinary trainer under ``torchrun``::

    torchrun --standalone --nproc-per-node 2 -m attnlab.cli train --preset shakespeare-char-cpu --out runs/x

``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``; :func:`init` joins the
group with NCCL on CUDA and gloo on CPU. The model is wrapped in ``DistributedDataParallel``; only rank 0
writes (checkpoints, metrics, progress).

Data sharding. The task gives the rows of the global batch of step ``s`` as a function of ``(seed, s)`` alone
(:meth:`attnlab.tasks.Task.global_batch`), so every rank knows the whole global batch without talking to the
others, and a resumed run knows it from the step number. Rows are laid out ``[micro-step][rank][row]``: on
micro-step ``m`` rank ``r`` reads rows ``(m * world + r) * micro .. + micro`` (:func:`rank_rows`). For one process
the rows of micro-step ``m`` are therefore exactly the union of what the ranks read at ``m``; the trainer weights
each micro-batch by its share of the global batch's loss targets and DDP averages gradients over ranks, so the
update equals the single-process update with the same global batch (up to float summation order).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init", "shutdown", "rank_rows", "free_port", "resolve_device"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init(device_type: str) -> DistInfo:
    """Join the process group described by the ``torchrun`` environment (no-op for a single process).

    If a group is already initialised (tests that spawn processes themselves), it is used as is.
    """
    if dist.is_available() and dist.is_initialized():
        backend = dist.get_backend()
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), backend)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local, backend)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port free on localhost right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_rows(rows: Any, *, micro_step: int, rank: int, world_size: int, micro: int) -> Any:
    """The rows rank ``rank`` reads on micro-step ``micro_step`` (layout ``[micro-step][rank][row]``)."""
    start = (micro_step * world_size + rank) * micro
    return rows[start : start + micro]


def resolve_device(name: str) -> torch.device:
    """The device of a run config's ``device`` (``"auto"``: CUDA when available); CUDA asked for but absent is a
    :class:`~attnlab.config.ConfigError`."""
    from attnlab.config import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available on this machine")
    return dev
