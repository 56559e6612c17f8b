"""``compile=True`` (torch.compile of the model) trains the same model as eager mode on CPU."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from attnlab.models.lm import LMConfig
from attnlab.train.config import OptimConfig, TrainConfig
from attnlab.train.trainer import Trainer

from standin import TinyLM, tiny_corpus


@pytest.mark.slow
def test_compiled_training_matches_eager() -> None:
    """Four steps of the stand-in LM, eager vs torch.compile (Inductor on CPU), float32, no dropout: the same
    losses up to float32 reordering inside fused kernels (rel 1e-4, observed ~1e-7) and the model really is
    compiled (an OptimizedModule)."""
    cfg = TrainConfig(model=LMConfig(context_len=16, d_model=16, n_heads=2, dropout=0.0),
                      optim=OptimConfig(lr=1e-2, warmup_steps=1), steps=4, batch_size=4, eval_interval=4,
                      log_interval=1, precision="float32", progress=False, tensorboard=False)

    def run(compile_: bool):
        torch.manual_seed(0)
        t = Trainer(dataclasses.replace(cfg, compile=compile_), data=tiny_corpus(),
                    model=TinyLM(11), out_dir=None, log=None)
        return t, t.fit()

    _, eager = run(False)
    t, compiled = run(True)
    assert type(t.forward_model).__name__ == "OptimizedModule"
    assert [s for s, _ in compiled.train_losses] == [s for s, _ in eager.train_losses] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(compiled.train_losses, eager.train_losses):
        assert a == pytest.approx(b, rel=1e-4)
    assert compiled.val.loss == pytest.approx(eager.val.loss, rel=1e-4)
