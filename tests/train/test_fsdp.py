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

from standin import fsdp_worker, tiny_corpus

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
    assert r0["fsdp"]["built_on"] == r1["fsdp"]["built_on"] == "meta"  # no rank built the LM for real to shard it
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

    # sharded (distributed) checkpoints: the same run; each rank wrote its own shards, nothing else
    assert r0["sharded"]["losses"] == r0["fsdp"]["losses"]
    assert r0["fsdp"]["template"] and not r0["sharded"]["template"]  # rank 0's CPU copy freed when only shards save
    sdir = tmp_path / "sharded" / "ckpt-00000006"
    assert ckpt.is_sharded(sdir) and not (sdir / "model.safetensors").exists()
    assert sorted(p.name for p in (sdir / "shards").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert sorted(p.name for p in (tmp_path / "sharded").glob("*ckpt*")) == ["ckpt-00000003", "ckpt-00000006"]
    # resume from the sharded step-3 checkpoint: bitwise the uninterrupted run
    assert r0["srest"]["resumed_from"] == 3
    assert r0["sfirst"]["losses"] + r0["srest"]["losses"] == r0["sharded"]["losses"]
    # not readable by the single-process tools until consolidated; then equal to the full checkpoint's weights
    with pytest.raises(ckpt.CheckpointError, match="attnlab consolidate"):
        ckpt.load_model_weights(sdir, cfg.model.with_vocab_size(11).build().double())
    from attnlab.cli import main

    assert main(["consolidate", str(tmp_path / "shalf")]) == 0  # the run directory: its newest checkpoint
    assert main(["consolidate", str(tmp_path / "shalf")]) == 2  # never overwritten
    out = ckpt.consolidate(sdir)
    full, cons = tensors("fsdp", 6, "model.safetensors"), load_file(str(out))
    lm2 = cfg.model.with_vocab_size(11).build().double()
    ckpt.load_model_weights(sdir, lm2)
    for k, v in lm.state_dict().items():
        assert torch.equal(v, lm2.state_dict()[k]), k
    assert set(cons) == set(full)  # tied weights stored once, under the same name as the full checkpoint's
    for k in full:
        assert torch.equal(full[k], cons[k]), k
    with pytest.raises(ckpt.CheckpointError, match="is not a sharded checkpoint.*an ordinary checkpoint"):
        ckpt.consolidate(tmp_path / "fsdp")
    for k, v in load_file(str(tmp_path / "shalf" / "ckpt-00000006" / "model.safetensors")).items():
        assert torch.equal(v, cons[k]), k
    # a sharded checkpoint is resumed only by an FSDP run (its optimizer state exists only as shards)
    from attnlab.train.trainer import Trainer

    with pytest.raises(ckpt.CheckpointError, match="only an FSDP run"):
        Trainer(cfg.replace(steps=8), data=tiny_corpus(), out_dir=tmp_path / "sharded", log=None, resume=True)


def test_build_on_meta_and_its_refusals() -> None:
    from attnlab.models.lm import LMConfig
    from attnlab.train.fsdp import build_on_meta

    from standin import BufferedStack

    lm = build_on_meta(lambda: LMConfig(n_layers=2, context_len=16, d_model=16, n_heads=2).with_vocab_size(11).build())
    assert lm is not None and all(p.is_meta for p in lm.parameters())
    assert build_on_meta(BufferedStack) is not None
    assert build_on_meta(lambda: BufferedStack(plain=True)) is None  # a plain tensor attribute: to_empty misses it

    def tensor_in_a_list() -> torch.nn.Module:
        m = BufferedStack()
        m.tables = [torch.zeros(2)]  # (not a buffer: to_empty would miss it too)
        return m

    assert build_on_meta(tensor_in_a_list) is None

    def needs_values() -> torch.nn.Module:
        n = int(torch.ones(()).sum().item())  # data-dependent: raises on meta
        return torch.nn.Linear(n, n)

    assert build_on_meta(needs_values) is None


@pytest.mark.parametrize("plain", [False, True], ids=["meta", "cpu"])
def test_sharding_build_gives_every_rank_rank0s_values(tmp_path: Path, plain: bool) -> None:
    """Each rank seeds differently, so only the broadcast can make them agree; the reference is rank 0's seed."""
    from standin import BufferedStack, fsdp_build_worker

    res = tmp_path / "build.json"
    mp.spawn(fsdp_build_worker, args=(2, ddp.free_port(), plain, str(res)), nprocs=2, join=True)
    r0, r1 = (json.loads(Path(f"{res}.{k}").read_text()) for k in (0, 1))
    torch.manual_seed(100)
    ref = BufferedStack(plain).double()
    for r in (r0, r1):
        assert r["built_on"] == ("cpu" if plain else "meta")
        assert r["dtype"] == "torch.float64"
        assert set(r["state"]) == set(ref.state_dict())
        for k, v in ref.state_dict().items():
            assert torch.equal(torch.tensor(r["state"][k], dtype=torch.float64), v), k
        assert torch.equal(torch.tensor(r["noise"], dtype=torch.float64), ref.noise)  # non-persistent: broadcast
    assert r0["has_template"] and not r1["has_template"]
    # sharded: each rank holds about half of every parameter (dim 0 split in 2)
    for n, p in ref.named_parameters():
        assert r0["local_numel"][n] + r1["local_numel"][n] == p.numel(), n
        assert r1["local_numel"][n] < p.numel(), n


def test_a_failed_sharded_save_raises_on_every_rank(tmp_path: Path) -> None:
    from standin import fsdp_save_failure_worker

    (tmp_path / "blocked").write_text("a file where the run directory should be")
    res = tmp_path / "fail.json"
    mp.spawn(fsdp_save_failure_worker, args=(2, ddp.free_port(), str(tmp_path), str(res)), nprocs=2, join=True)
    r0, r1 = (json.loads(Path(f"{res}.{k}").read_text()) for k in (0, 1))
    for r in (r0, r1):
        assert "could not write the sharded checkpoint of step 1" in r["error"]
        assert "cannot create its temporary directory" in r["error"]
    assert (tmp_path / "blocked").read_text() == "a file where the run directory should be"  # untouched
    assert r0["path"] == str(tmp_path / "good" / "ckpt-00000002") and r1["path"] is None
    assert (tmp_path / "good" / "ckpt-00000002" / "shards" / ".metadata").is_file()
    assert not list((tmp_path / "good").glob(".tmp-*"))


def test_fsdp_config() -> None:
    with pytest.raises(ConfigError, match="fsdp must be true or false"):
        TrainConfig(fsdp="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="fsdp_checkpoint must be 'full' or 'sharded', got 'dcp'"):
        TrainConfig(fsdp=True, fsdp_checkpoint="dcp")
    with pytest.raises(ConfigError, match="fsdp_checkpoint='sharded' needs fsdp=true"):
        TrainConfig(fsdp_checkpoint="sharded")
    with pytest.raises(ConfigError, match="fsdp=true with compile=true is not supported"):
        TrainConfig(fsdp=True, compile=True)


def test_fsdp_is_refused_for_a_task_that_decodes_through_other_methods() -> None:
    with pytest.raises(ConfigError, match="fsdp=true is not supported by task 'translation'"):
        TrainConfig(task="translation", fsdp=True)
