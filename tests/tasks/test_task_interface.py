"""The task interface: the trainer drives any task; auxiliary loss terms, a frozen teacher, exact accumulation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from attnlab.models.lm import LMConfig
from attnlab.tasks import Loss
from attnlab.tasks.lm import LanguageModeling, LMDataConfig, lm_loss, window_offsets
from attnlab.train.config import OptimConfig, TrainConfig
from attnlab.train.trainer import Trainer
from standin import tiny_corpus


def _cfg(**kw) -> TrainConfig:
    base = TrainConfig(
        model=LMConfig(n_layers=1, d_model=16, n_heads=2, context_len=8),
        optim=OptimConfig(lr=1e-2, warmup_steps=0, grad_clip=None, weight_decay=0.0),
        steps=3, batch_size=4, eval_interval=3, log_interval=1, progress=False, tensorboard=False,
        device="cpu", precision="float64", seed=3,
    )
    return replace(base, **kw)


class DistilledLM(LanguageModeling):
    """A task that adds two auxiliary terms: a KL to a frozen teacher's next-token distribution, and an L2 on the
    logits; it holds the teacher itself (the hook distillation methods use)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        torch.manual_seed(99)
        self.teacher = self.build_model()
        self.teacher_before = {k: v.clone() for k, v in self.teacher.state_dict().items()}

    def loss(self, model, batch) -> Loss:
        logits = model(batch.inputs["idx"])
        with torch.no_grad():
            t = self.teacher(batch.inputs["idx"])
        kl = F.kl_div(logits.log_softmax(-1), t.log_softmax(-1), log_target=True, reduction="batchmean")
        return Loss(main=lm_loss(logits, batch.inputs["targets"]),
                    aux={"kl": 0.5 * kl, "l2": 1e-3 * logits.pow(2).mean()})


def test_auxiliary_terms_are_logged_and_the_teacher_stays_frozen(tmp_path: Path) -> None:
    cfg = _cfg()
    corpus = tiny_corpus()
    task = DistilledLM(cfg.model, cfg.data, seed=cfg.seed, corpus=corpus)
    tr = Trainer(cfg, out_dir=tmp_path / "run", task=task, log=None)
    assert all(p.requires_grad is False for p in task.teacher.parameters())
    in_optimizer = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert not in_optimizer & {id(p) for p in task.teacher.parameters()}
    tr.fit()
    for k, v in task.teacher.state_dict().items():
        assert torch.equal(v, task.teacher_before[k].to(v.dtype)), k
    recs = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["kind"] == "train"]
    assert len(train) == 3
    for r in train:  # every term logged, and the logged total is their sum
        assert {"loss.main", "loss.kl", "loss.l2"} <= set(r)
        assert abs(r["loss"] - (r["loss.main"] + r["loss.kl"] + r["loss.l2"])) < 1e-12
        assert r["loss.kl"] > 0
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"loss.main", "loss.kl", "loss.l2"} <= set(header)
    ckpt = next((tmp_path / "run").glob("ckpt-*"))
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:  # the teacher is not checkpointed
        keys = set(f.keys())
    own = set(tr.model.state_dict())
    assert keys <= own and len(own - keys) <= 1  # the student's tensors only (a tied weight stored once)


def test_grad_accum_equals_one_big_batch() -> None:
    """An independent expectation (not the code against itself): 2 micro-batches of 2 rows give the update of one
    batch of 4 rows, to float64 precision."""
    corpus = tiny_corpus()
    results = []
    for accum in (1, 2):
        tr = Trainer(_cfg(grad_accum=accum, steps=2), data=corpus, log=None)
        tr.fit()
        results.append({k: v.clone() for k, v in tr.model.state_dict().items()})
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-12, atol=1e-13)


def test_one_step_equals_a_hand_written_adamw_step_on_the_global_batch() -> None:
    """The trainer's first update equals torch.optim.AdamW applied by hand to the mean loss over the task's global
    batch of step 0 (rows from window_offsets(0, seed)), with and without clipping."""
    corpus = tiny_corpus()
    for clip in (None, 1e-3):
        cfg = _cfg(steps=1, optim=OptimConfig(lr=1e-2, warmup_steps=0, grad_clip=clip, weight_decay=0.0))
        torch.manual_seed(cfg.seed)
        task = LanguageModeling(cfg.model, cfg.data, seed=cfg.seed, corpus=corpus)
        ref = task.build_model().double()
        tr = Trainer(cfg, data=corpus, log=None)
        for k, v in tr.model.state_dict().items():
            assert torch.equal(v, ref.state_dict()[k])
        tr.fit()
        rows = window_offsets(0, seed=cfg.seed, n_tokens=len(corpus.train), context_len=8, batch_size=4)
        batch = task.make_batch(rows, torch.device("cpu"))
        loss = lm_loss(ref(batch.inputs["idx"]), batch.inputs["targets"])
        loss.backward()
        if clip is not None:
            norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in ref.parameters()))
            assert norm > clip  # the clip really bites
            for p in ref.parameters():
                p.grad.mul_(clip / (norm + 1e-6))
        # lr_at(0) with no warmup is the peak; the cosine starts at the peak
        opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
        opt.step()
        for k, v in tr.model.state_dict().items():
            torch.testing.assert_close(v, ref.state_dict()[k], rtol=1e-12, atol=1e-14)


def test_data_config_validates_its_own_values() -> None:
    import pytest

    with pytest.raises(ValueError, match="val_fraction must be a float in"):
        LMDataConfig(val_fraction=1.5)
    with pytest.raises(ValueError, match="model must be a LMConfig for task 'lm'"):
        LanguageModeling(LMDataConfig(), LMDataConfig(), seed=0)


def test_a_non_finite_loss_stops_the_run_before_the_update(tmp_path: Path) -> None:
    """A task whose loss turns NaN at step 3: the run stops with an error naming the step, the checkpoint of step 2
    stays the newest and finite; with skip_nonfinite the step is skipped (no update) and counted."""
    import math

    import pytest

    from attnlab.train import checkpoint as ckpt
    from attnlab.train.trainer import NonFiniteError

    class Poisoned(LanguageModeling):
        calls = 0

        def loss(self, model, batch) -> Loss:
            out = super().loss(model, batch)
            Poisoned.calls += 1
            return Loss(main=out.main * (math.nan if Poisoned.calls == 3 else 1.0))

    cfg = _cfg(steps=4, eval_interval=2)
    corpus = tiny_corpus()
    tr = Trainer(cfg, out_dir=tmp_path / "run", task=Poisoned(cfg.model, cfg.data, seed=3, corpus=corpus), log=None)
    with pytest.raises(NonFiniteError, match=r"step 3: non-finite loss nan; .*newest checkpoint \(step 2\)"):
        tr.fit()
    newest = ckpt.latest_checkpoint(tmp_path / "run")
    assert newest is not None and newest.name == "ckpt-00000002"
    for p in tr.model.parameters():
        assert torch.isfinite(p).all()
    Poisoned.calls = 0
    skip = Trainer(replace(cfg, skip_nonfinite=True), task=Poisoned(cfg.model, cfg.data, seed=3, corpus=corpus), log=None)
    res = skip.fit()
    assert res.skipped_steps == 1 and res.steps == 4
    assert all(torch.isfinite(p).all() for p in skip.model.parameters())


def test_the_trainer_uses_decay_steps_not_steps(tmp_path: Path) -> None:
    """The learning rate logged at chosen steps equals the schedule's formula written out here, for a run whose
    decay_steps (10) differs from steps (14): warm-up 2, cosine to 10% at step 10, then the floor."""
    import math

    cfg = _cfg(steps=14, eval_interval=14, optim=OptimConfig(lr=1e-2, warmup_steps=2, decay_steps=10,
                                                              min_lr_ratio=0.1, grad_clip=None, weight_decay=0.0))
    Trainer(cfg, out_dir=tmp_path / "run", data=tiny_corpus(), log=None).fit()
    lr = {r["step"]: r["lr"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
          if r["kind"] == "train"}

    def expected(s: int) -> float:  # s: 0-based optimizer step; the record of step s is logged as step s + 1
        if s < 2:
            return 1e-2 * (s + 1) / 2
        p = min(1.0, (s - 2) / (10 - 2))
        return 1e-3 + (1e-2 - 1e-3) * 0.5 * (1 + math.cos(math.pi * p))

    for s in (0, 1, 2, 5, 9, 10, 13):
        assert lr[s + 1] == pytest.approx(expected(s), rel=1e-12, abs=0), s
    assert lr[12] == pytest.approx(1e-3) and lr[6] > 2 * 1e-3  # past decay_steps: the floor; before: still decaying


def test_eval_files_get_the_step_label_and_are_never_overwritten(tmp_path: Path) -> None:
    task = LanguageModeling(LMConfig(vocab_size=8, n_layers=1, d_model=8, n_heads=2), LMDataConfig(), seed=0)
    with pytest.raises(ValueError, match="set_output_dir"):
        task.write_eval_file("hypotheses-val", ".txt", "a\n")
    task.set_output_dir(tmp_path / "run")
    task.step_label = "-step5"
    first = task.write_eval_file("hypotheses-val", ".txt", "a\n")
    second = task.write_eval_file("hypotheses-val", ".txt", "b\n")
    assert (first.name, second.name) == ("hypotheses-val-step5.txt", "hypotheses-val-step5.1.txt")
    assert (first.read_text(), second.read_text()) == ("a\n", "b\n")
    assert task.written_files == [first, second]
