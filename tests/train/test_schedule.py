"""Learning-rate schedule values and AdamW parameter groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attnlab.train.schedule import lr_at, make_optimizer


def test_warmup_then_cosine_to_ten_percent() -> None:
    kw = dict(peak=1e-3, warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(1e-4, rel=1e-12)  # (0 + 1) / 10 of peak
    assert lr_at(4, **kw) == pytest.approx(5e-4, rel=1e-12)
    assert lr_at(9, **kw) == pytest.approx(1e-3, rel=1e-12)
    assert lr_at(10, **kw) == pytest.approx(1e-3, rel=1e-12)  # peak at the end of warmup
    # half-way through the decay: min + (peak - min) / 2
    assert lr_at(60, **kw) == pytest.approx(1e-4 + 0.5 * 9e-4, rel=1e-12)
    # a quarter: cos(pi/4)
    assert lr_at(35, **kw) == pytest.approx(1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi / 4)), rel=1e-12)
    assert lr_at(110, **kw) == pytest.approx(1e-4, rel=1e-12)
    assert lr_at(500, **kw) == pytest.approx(1e-4, rel=1e-12)  # stays at the floor
    lrs = [lr_at(s, **kw) for s in range(120)]
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:11]))  # warmup rises
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # decay falls


def test_no_warmup_and_degenerate_span() -> None:
    assert lr_at(0, peak=2.0, warmup_steps=0, total_steps=10, min_ratio=0.1) == 2.0
    assert lr_at(5, peak=2.0, warmup_steps=10, total_steps=10) == pytest.approx(1.2)
    assert lr_at(20, peak=2.0, warmup_steps=10, total_steps=10) == 2.0
    with pytest.raises(ValueError, match="step must be >= 0"):
        lr_at(-1, peak=1.0, warmup_steps=0, total_steps=1)


def test_weight_decay_only_on_matrices() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 4))
    opt = make_optimizer(model, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {tuple(p.shape) for p in decay["params"]} == {(10, 4), (4, 4)}
    assert {tuple(p.shape) for p in no_decay["params"]} == {(4,)} and len(no_decay["params"]) == 3
    assert decay["betas"] == (0.9, 0.95)
    assert isinstance(opt, torch.optim.AdamW)
