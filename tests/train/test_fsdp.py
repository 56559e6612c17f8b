"""FSDP2 on CPU (gloo, 2 processes): the same run as DDP (per-step losses, final weights and optimizer state in the
ordinary checkpoint format), an exact resume, and the checkpoint read back by a single process."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from attnlab.models.lm import LMConfig
from attnlab.train import distributed as ddp
from attnlab.train.config import ConfigError, OptimConfig, TrainConfig

from standin import fsdp_worker

import pytest


def test_fsdp_equals_ddp_and_resumes_exactly(tmp_path: Path) -> None:
    cfg = TrainConfig(
        model=LMConfig(n_layers=2, context_len=16, d_model=16, n_heads=2, dropout=0.0),
        optim=OptimConfig(lr=3e-2, warmup_steps=2, decay_steps=6),
        steps=6, batch_size=8, grad_accum=2, eval_interval=3, log_interval=1, precision="float64",
        progress=False, tensorboard=False, keep_checkpoints=2,
    )
    port = ddp.free_port()
    res = tmp_path / "fsdp.json"
    mp.spawn(fsdp_worker, args=(2, port, cfg.to_dict(), str(tmp_path), str(res)), nprocs=2, join=True)
    r0, r1 = (json.loads(Path(f"{res}.{k}").read_text()) for k in (0, 1))
    assert r0["fsdp"]["sharded"] and not r0["ddp"]["sharded"]
    assert len(r0["fsdp"]["losses"]) == 6
    for (sa, a), (sb, b) in zip(r0["ddp"]["losses"], r0["fsdp"]["losses"]):
        assert sa == sb and math.isclose(a, b, rel_tol=1e-10), (sa, a, b)
    assert r0["fsdp"]["losses"] == r1["fsdp"]["losses"]  # every rank logs the all-reduced loss
    assert math.isclose(r0["ddp"]["val"], r0["fsdp"]["val"], rel_tol=1e-10)
    assert r1["fsdp"]["val"] == r0["fsdp"]["val"]  # every rank evaluates the whole split alike

    def tensors(run: str, step: int, name: str) -> dict[str, torch.Tensor]:
        return load_file(str(tmp_path / run / f"ckpt-{step:08d}" / name))

    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = tensors("ddp", 6, name), tensors("fsdp", 6, name)
        assert set(a) == set(b)
        for k in a:
            assert torch.allclose(a[k], b[k], rtol=1e-9, atol=1e-12), (name, k)
    # resume: 3 steps, stop, resume to 6 == 6 straight (bitwise)
    assert r0["rest"]["resumed_from"] == 3
    assert r0["first"]["losses"] + r0["rest"]["losses"] == r0["fsdp"]["losses"]
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = tensors("fsdp", 6, name), tensors("half", 6, name)
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    # the checkpoint is an ordinary one: a single-process model loads it (names and shapes checked)
    from attnlab.train import checkpoint as ckpt

    lm = cfg.model.with_vocab_size(11).build().double()
    ckpt.load_model_weights(tmp_path / "fsdp", lm)
    assert torch.allclose(lm.blocks[1].attn.in_proj.weight, tensors("fsdp", 6, "model.safetensors")[
        "blocks.1.attn.in_proj.weight"])


def test_fsdp_config() -> None:
    with pytest.raises(ConfigError, match="fsdp must be true or false"):
        TrainConfig(fsdp="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="fsdp=true with compile=true is not supported"):
        TrainConfig(fsdp=True, compile=True)


def test_fsdp_is_refused_for_a_task_that_decodes_through_other_methods() -> None:
    with pytest.raises(ConfigError, match="fsdp=true is not supported by task 'translation'"):
        TrainConfig(task="translation", fsdp=True)
