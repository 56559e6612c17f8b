"""DDP on CPU (gloo): two processes equal one process with the same global batch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.multiprocessing as mp

from attnlab.train import distributed as ddp
from attnlab.models.lm import LMConfig
from attnlab.train.config import OptimConfig, TrainConfig
from attnlab.tasks.lm import window_offsets
from attnlab.train.trainer import Trainer

from standin import TinyLM, ddp_resume_worker, ddp_worker, tiny_corpus


def test_rank_rows_partition_the_global_batch() -> None:
    off = window_offsets(3, seed=7, n_tokens=1000, context_len=16, batch_size=12)
    assert torch.equal(off, window_offsets(3, seed=7, n_tokens=1000, context_len=16, batch_size=12))
    assert not torch.equal(off, window_offsets(4, seed=7, n_tokens=1000, context_len=16, batch_size=12))
    assert int(off.max()) <= 1000 - 16 - 1 and int(off.min()) >= 0
    for m in range(2):  # grad_accum = 2, world = 3, micro = 2
        single = ddp.rank_rows(off, micro_step=m, rank=0, world_size=1, micro=6)
        parts = [ddp.rank_rows(off, micro_step=m, rank=r, world_size=3, micro=2) for r in range(3)]
        assert torch.equal(torch.cat(parts), single)


def test_two_cpu_processes_equal_one(tmp_path: Path) -> None:
    """Same global batch (8 sequences, 2 accumulation steps): per-step losses and final weights of a 2-process
    gloo run equal a 1-process run. float64; tolerance 1e-12 relative (only the summation order of the
    gradient average differs)."""
    cfg = TrainConfig(
        model=LMConfig(context_len=16, d_model=16, n_heads=2),
        optim=OptimConfig(lr=3e-2, warmup_steps=2),
        steps=6, batch_size=8, grad_accum=2, eval_interval=3, log_interval=1, precision="float64",
        progress=False, tensorboard=False,
    )
    torch.manual_seed(0)
    model = TinyLM(11)
    single_t = Trainer(cfg, data=tiny_corpus(), model=model, out_dir=tmp_path / "one", log=None)
    single = single_t.fit()

    port = ddp.free_port()
    res = tmp_path / "ddp.json"
    mp.spawn(ddp_worker, args=(2, port, cfg.to_dict(), str(tmp_path / "two"), str(res)), nprocs=2, join=True)
    r0 = json.loads(Path(f"{res}.0").read_text())
    r1 = json.loads(Path(f"{res}.1").read_text())
    assert r0["world"] == 2
    assert len(r0["losses"]) == len(single.train_losses) == 6
    for (s_a, a), (s_b, b), (_, c) in zip(single.train_losses, r0["losses"], r1["losses"]):
        assert s_a == s_b
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
        assert b == c  # every rank logs the all-reduced loss
    assert math.isclose(single.val.loss, r0["val"], rel_tol=1e-12)
    for k, v in single_t.model.state_dict().items():
        assert torch.allclose(v, torch.tensor(r0["weights"][k], dtype=v.dtype), rtol=1e-12, atol=1e-14), k
    assert r0["weights"] == r1["weights"]  # DDP keeps ranks in lockstep
    # only rank 0 wrote files
    assert (tmp_path / "two" / "metrics.jsonl").is_file()
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == len(
        (tmp_path / "one" / "metrics.jsonl").read_text().splitlines())


def test_two_process_resume_with_dropout_is_exact(tmp_path: Path) -> None:
    """2 gloo processes, dropout 0.3: 6 steps straight == 3 steps, stop, resume to 6 (the schedule is fixed by
    optim.decay_steps). Every rank restores its own dropout RNG stream, so losses and weights are identical
    (tolerance 0: bitwise on CPU)."""
    cfg = TrainConfig(
        model=LMConfig(context_len=16, d_model=16, n_heads=2, dropout=0.3),
        optim=OptimConfig(lr=3e-2, warmup_steps=2, decay_steps=6),
        steps=6, batch_size=8, grad_accum=2, eval_interval=3, log_interval=1, precision="float64",
        progress=False, tensorboard=False,
    )
    port = ddp.free_port()
    res = tmp_path / "resume.json"
    mp.spawn(ddp_resume_worker, args=(2, port, cfg.to_dict(), str(tmp_path), str(res)), nprocs=2, join=True)
    for rank in (0, 1):
        r = json.loads(Path(f"{res}.{rank}").read_text())
        whole, first, rest = r["whole"], r["first"], r["rest"]
        assert rest["resumed_from"] == 3 and len(whole["losses"]) == 6
        assert first["losses"] == whole["losses"][:3]
        assert rest["losses"] == whole["losses"][3:]
        assert rest["val"] == whole["val"]
        assert rest["weights"] == whole["weights"]
