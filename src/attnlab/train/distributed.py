"""Distributed data parallel: process-group setup and deterministic data sharding.

Launch the ordinary trainer under ``torchrun``::

    torchrun --standalone --nproc-per-node 2 -m attnlab.cli train --preset shakespeare-char-cpu --out runs/x

``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``; :func:`init` joins the
group with NCCL on CUDA and gloo on CPU. The model is wrapped in ``DistributedDataParallel``; only rank 0
writes (checkpoints, metrics, progress).

Data sharding. Every optimizer step ``s`` draws ``batch_size`` global window offsets from a generator seeded
by ``(seed, s)`` alone (:func:`batch_offsets`), so every rank knows the whole global batch without talking
to the others, and a resumed run knows it from the step number. Rows are laid out ``[micro-step][rank][row]``:
on micro-step ``m`` rank ``r`` reads rows ``(m * world + r) * micro .. + micro``. For one process the rows of
micro-step ``m`` are therefore exactly the union of what the ranks read at ``m``, and since each rank's loss is
a mean over equal-sized micro-batches and DDP averages gradients over ranks, the update equals the
single-process update with the same global batch (up to float summation order).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init", "shutdown", "batch_offsets", "rank_rows", "free_port", "gather_windows"]


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


def batch_offsets(step: int, *, seed: int, n_tokens: int, block_size: int, batch_size: int) -> torch.Tensor:
    """Start offsets ``(batch_size,)`` of the global batch of optimizer step ``step``.

    Windows are ``tokens[o : o + block_size + 1]`` (inputs and shifted targets), so ``o`` is uniform in
    ``[0, n_tokens - block_size - 1]``. Depends on ``(seed, step)`` only.
    """
    high = n_tokens - block_size
    if high <= 0:
        raise ValueError(f"block_size={block_size} needs more than {block_size + 1} tokens, the split has {n_tokens}")
    g_seed = int(np.random.SeedSequence([seed, step, 0x5EED]).generate_state(1, dtype=np.uint64)[0] >> 1)
    g = torch.Generator().manual_seed(g_seed)
    return torch.randint(0, high, (batch_size,), generator=g)


def rank_rows(offsets: torch.Tensor, *, micro_step: int, rank: int, world_size: int, micro: int) -> torch.Tensor:
    """The offsets rank ``rank`` reads on micro-step ``micro_step`` (layout ``[micro-step][rank][row]``)."""
    start = (micro_step * world_size + rank) * micro
    return offsets[start : start + micro]


def gather_windows(tokens: np.ndarray, offsets: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``x`` and targets ``y`` ``(len(offsets), block_size)`` int64 for windows starting at ``offsets``."""
    idx = offsets.numpy()[:, None] + np.arange(block_size + 1)[None, :]  # (B, T+1)
    win = torch.from_numpy(np.asarray(tokens[idx]).astype(np.int64))  # (B, T+1)
    return win[:, :-1], win[:, 1:]
