"""``attnlab consolidate CHECKPOINT``: the ``model.safetensors`` of a sharded FSDP checkpoint.

An FSDP run with ``fsdp_checkpoint="sharded"`` writes distributed checkpoints (each rank's shards, in
``ckpt-<step>/shards/``); ``eval``, ``generate`` and ``export`` read ``model.safetensors``.
This command assembles it from the shards in one process (:func:`attnlab.train.checkpoint.consolidate`); the
shards stay, so an FSDP run still resumes from them. Exit status 2 with ``attnlab: error: ...`` for a checkpoint
that is not sharded or is consolidated already (nothing is overwritten).
"""

from __future__ import annotations

import argparse

HELP = "write the model.safetensors of a sharded FSDP checkpoint (so that eval, generate and export read it)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory, or a run directory (its newest checkpoint)")


def run(args: argparse.Namespace) -> int:
    from attnlab.commands._config_args import fail
    from attnlab.train.checkpoint import CheckpointError, consolidate

    try:
        out = consolidate(args.checkpoint)
    except CheckpointError as exc:
        return fail(str(exc))
    print(f"wrote {out}")
    return 0
