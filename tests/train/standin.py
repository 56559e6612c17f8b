"""A tiny stand-in language model and corpus for trainer tests (fast, deterministic, dependency-free)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

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
    to ``steps`` (dir ``fsdp``), FSDP stopped at ``steps // 2`` (dir ``half``) and resumed to ``steps``; saves each
    run's per-step losses."""
    import json

    from attnlab.train.config import TrainConfig
    from attnlab.train.trainer import Trainer

    with gloo_group(rank, world_size, port):
        cfg = TrainConfig.from_dict(cfg_dict)
        runs = {}
        for name, fsdp, steps, resume, out in (("ddp", False, cfg.steps, False, "ddp"),
                                               ("fsdp", True, cfg.steps, False, "fsdp"),
                                               ("first", True, cfg.steps // 2, False, "half"),
                                               ("rest", True, cfg.steps, True, "half")):
            t = Trainer(cfg.replace(steps=steps, fsdp=fsdp), data=tiny_corpus(), out_dir=f"{out_dir}/{out}", log=None,
                        resume=resume)
            r = t.fit()
            runs[name] = {"losses": r.train_losses, "val": r.val.loss, "resumed_from": r.resumed_from,
                          "sharded": t.sharding is not None}
        with open(f"{result_path}.{rank}", "w") as f:
            json.dump(runs, f)
