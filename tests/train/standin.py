"""A tiny stand-in language model and corpus for trainer tests (fast, deterministic, dependency-free)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn


class TinyLM(nn.Module):
    """Embedding -> causal mixing (cumulative mean) -> MLP -> tied head. Has 2-D weights, biases, a norm."""

    def __init__(self, vocab_size: int, d: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab_size, d)
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(d, vocab_size, bias=False)
        self.head.weight = self.emb.weight
        nn.init.normal_(self.emb.weight, std=0.1)

    def forward(self, idx, *, caches=None):
        h = self.emb(idx)  # (B, T, d)
        n = torch.arange(1, idx.size(1) + 1, device=idx.device, dtype=h.dtype)[None, :, None]
        h = h + self.drop(torch.tanh(self.fc(self.norm(h.cumsum(1) / n))))
        return self.head(h)  # logits (B, T, V): the task computes the loss


@dataclass
class Tok:
    name: str = "char"
    vocab_size: int = 11

    def to_dict(self):
        return {"name": self.name}


@dataclass
class TinyCorpus:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray | None
    vocab_size: int
    tokenizer: Tok
    name: str = "tiny"


def tiny_corpus(n: int = 4000, vocab: int = 11, seed: int = 0) -> TinyCorpus:
    rng = np.random.default_rng(seed)
    # a learnable sequence: mostly "next = prev + 1 mod vocab", with noise
    toks = np.zeros(n, dtype=np.uint16)
    for i in range(1, n):
        toks[i] = (toks[i - 1] + 1) % vocab if rng.random() < 0.8 else rng.integers(vocab)
    a, b = int(n * 0.8), int(n * 0.9)
    return TinyCorpus(toks[:a], toks[a:b], toks[b:], vocab, Tok(vocab_size=vocab))


@contextlib.contextmanager
def gloo_group(rank: int, world_size: int, port: int) -> Iterator[None]:
    """Join a gloo process group on localhost for the block (one intra-op thread); nobody leaves while another rank
    still talks to it."""
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        yield
    finally:
        dist.barrier()
        dist.destroy_process_group()


def ddp_worker(rank: int, world_size: int, port: int, cfg_dict: dict, out_dir: str, result_path: str) -> None:
    """Body of one spawned DDP process: join a gloo group on localhost, train, save its view of the losses."""
    import json

    from attnlab.train.config import TrainConfig
    from attnlab.train.trainer import Trainer

    with gloo_group(rank, world_size, port):
        cfg = TrainConfig.from_dict(cfg_dict)
        torch.manual_seed(0)  # the injected stand-in model is initialised by the caller, as in the test
        model = TinyLM(11)
        torch.manual_seed(1000 + rank)  # the trainer must not depend on the caller's RNG after that
        t = Trainer(cfg, data=tiny_corpus(), model=model, out_dir=out_dir, log=None)
        r = t.fit()
        weights = {k: v.tolist() for k, v in t.model.state_dict().items()}
        with open(f"{result_path}.{rank}", "w") as f:
            json.dump({"losses": r.train_losses, "val": r.val.loss, "weights": weights, "world": t.dist.world_size}, f)


def ddp_resume_worker(rank: int, world_size: int, port: int, cfg_dict: dict, out_dir: str, result_path: str) -> None:
    """Two ranks with dropout: an uninterrupted run of ``steps`` (dir ``a``), a run stopped at ``steps // 2``
    (dir ``b``, same schedule through ``optim.decay_steps``) and its resumption to ``steps``; saves both views."""
    import json

    from attnlab.train.config import TrainConfig
    from attnlab.train.trainer import Trainer

    with gloo_group(rank, world_size, port):
        cfg = TrainConfig.from_dict(cfg_dict)
        runs = {}
        for name, steps, resume in (("whole", cfg.steps, False), ("first", cfg.steps // 2, False),
                                    ("rest", cfg.steps, True)):
            torch.manual_seed(0)
            model = TinyLM(11, dropout=cfg.model.dropout)
            out = f"{out_dir}/{'a' if name == 'whole' else 'b'}"
            t = Trainer(cfg.replace(steps=steps), data=tiny_corpus(), model=model, out_dir=out, log=None,
                        resume=resume)
            r = t.fit()
            runs[name] = {"losses": r.train_losses, "val": r.val.loss, "resumed_from": r.resumed_from,
                          "weights": {k: v.tolist() for k, v in t.model.state_dict().items()}}
        with open(f"{result_path}.{rank}", "w") as f:
            json.dump(runs, f)


def fsdp_worker(rank: int, world_size: int, port: int, cfg_dict: dict, out_dir: str, result_path: str) -> None:
    """Two ranks, attnlab's LM (residual blocks, so FSDP2 shards per block): DDP to ``steps`` (dir ``ddp``), FSDP
    to ``steps`` (dir ``fsdp``), FSDP stopped at ``steps // 2`` (dir ``half``) and resumed to ``steps``, and the
    last two again with sharded checkpoints (dirs ``sharded``, ``shalf``); saves each run's per-step losses."""
    import json

    from attnlab.train.config import TrainConfig
    from attnlab.train.trainer import Trainer

    with gloo_group(rank, world_size, port):
        cfg = TrainConfig.from_dict(cfg_dict)
        runs = {}
        for name, fsdp, steps, resume, out in (("ddp", False, cfg.steps, False, "ddp"),
                                               ("fsdp", True, cfg.steps, False, "fsdp"),
                                               ("first", True, cfg.steps // 2, False, "half"),
                                               ("rest", True, cfg.steps, True, "half"),
                                               ("sharded", "sharded", cfg.steps, False, "sharded"),
                                               ("sfirst", "sharded", cfg.steps // 2, False, "shalf"),
                                               ("srest", "sharded", cfg.steps, True, "shalf")):
            how = {"fsdp_checkpoint": "sharded"} if fsdp == "sharded" else {}
            t = Trainer(cfg.replace(steps=steps, fsdp=bool(fsdp), **how), data=tiny_corpus(),
                        out_dir=f"{out_dir}/{out}", log=None, resume=resume)
            r = t.fit()
            runs[name] = {"losses": r.train_losses, "val": r.val.loss, "resumed_from": r.resumed_from,
                          "sharded": t.sharding is not None,
                          "built_on": t.sharding.built_on if t.sharding is not None else None,
                          "template": t.sharding is not None and t.sharding.template is not None}
        with open(f"{result_path}.{rank}", "w") as f:
            json.dump(runs, f)


class BufferedStack(torch.nn.Module):
    """Two residual blocks and a head, with a non-persistent buffer drawn at construction (``plain=True`` also keeps
    a plain tensor attribute, which rules out the meta-device build)."""

    def __init__(self, plain: bool = False) -> None:
        super().__init__()
        from attnlab.models.common import ResidualBlock

        self.blocks = torch.nn.ModuleList(ResidualBlock(d_model=4, attn=torch.nn.Linear(4, 4), ffn_hidden=8)
                                          for _ in range(2))
        self.head = torch.nn.Linear(4, 3)
        self.register_buffer("noise", torch.randn(5), persistent=False)
        if plain:
            self.table = torch.arange(3.0)


def fsdp_build_worker(rank: int, world_size: int, port: int, plain: bool, result_path: str) -> None:
    """``Sharding.build`` of :class:`BufferedStack` with a different seed on each rank: every rank must end with rank
    0's values (parameters through the state dict, the non-persistent buffer through the buffer broadcast)."""
    import json

    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from attnlab.train.fsdp import Sharding

    with gloo_group(rank, world_size, port):
        torch.manual_seed(100 + rank)
        sh = Sharding.build(lambda: BufferedStack(plain), is_main=rank == 0, device=torch.device("cpu"),
                            dtype=torch.float64, make_optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
        full = get_model_state_dict(sh.model, options=StateDictOptions(full_state_dict=True))
        local = {n: p.to_local().numel() for n, p in sh.model.named_parameters()}
        with open(f"{result_path}.{rank}", "w") as f:
            json.dump({"built_on": sh.built_on, "has_template": sh.template is not None,
                       "state": {k: v.tolist() for k, v in full.items()}, "noise": sh.model.noise.tolist(),
                       "dtype": str(sh.model.noise.dtype), "local_numel": local}, f)


def fsdp_save_failure_worker(rank: int, world_size: int, port: int, run_dir: str, result_path: str) -> None:
    """A sharded save into ``run_dir`` that rank 0 cannot create (a file is in the way): every rank must raise the
    same ``CheckpointError`` (none may hang in a collective), then a save into a good directory still works."""
    import json
    from pathlib import Path

    from attnlab.train.checkpoint import CheckpointError
    from attnlab.train.fsdp import Sharding

    with gloo_group(rank, world_size, port):
        torch.manual_seed(0)
        sh = Sharding.build(BufferedStack, is_main=rank == 0, device=torch.device("cpu"), dtype=torch.float64,
                            make_optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
        opt = torch.optim.SGD(sh.model.parameters(), lr=0.1)
        state = {"note": "test"} if rank == 0 else None
        out: dict[str, Any] = {}
        try:
            sh.save_sharded(Path(run_dir) / "blocked", step=1, model=sh.model, optimizer=opt, state=state, keep=1)
        except CheckpointError as e:
            out["error"] = str(e)
        path = sh.save_sharded(Path(run_dir) / "good", step=2, model=sh.model, optimizer=opt, state=state, keep=1)
        out["path"] = str(path) if path is not None else None
        with open(f"{result_path}.{rank}", "w") as f:
            json.dump(out, f)
