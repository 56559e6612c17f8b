"""The STG task (``--task stg``): the adjacency equals spec A.4's from an annotation record, answer-only targets,
the CAT term (gating, layer selection, decay schedule from the trainer's step), metrics against a direct greedy
decode, config paths and the comparison variants."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attnlab.cli import main
from attnlab.data.stg import stg_split
from attnlab.methods.annotations import CausalRecord, causal_adjacency
from attnlab.methods.cat import CATConfig
from attnlab.models.common import IGNORE_INDEX
from attnlab.models.lm import LMConfig, generate
from attnlab.tasks.base import EvalContext
from attnlab.tasks.stg import VARIANTS, STGDataConfig, STGOptions, SpuriousTokenGame, stg_adjacency

CPU = torch.device("cpu")


def _task(objective: str = "plain", n_train: int = 64, n_test: int = 24, **cat) -> SpuriousTokenGame:
    model = LMConfig(n_layers=2, d_model=16, n_heads=2, context_len=48)
    return SpuriousTokenGame(model, STGDataConfig(n_train=n_train, n_test=n_test), seed=0,
                             options=STGOptions(objective=objective, cat=CATConfig(**cat)))


class _WordTokenizer:
    def __init__(self, vocab: tuple[str, ...]) -> None:
        self.ids = {t: i for i, t in enumerate(vocab)}

    def encode(self, text: str) -> list[int]:
        return [self.ids[w] for w in text.split()]


def test_adjacency_equals_spec_a4_from_an_annotation_record() -> None:
    t = _task()
    tok = _WordTokenizer(t.vocab)
    for ex in stg_split("iid", 20, seed=3):
        causes = tuple(" ".join(ex.tokens[a:e]) for a, e in ex.causes)
        record = CausalRecord(input=" ".join(ex.tokens) + " ", target=" ".join(ex.answer),
                              relations=((" ".join(ex.answer), causes),))
        want = causal_adjacency(record, tok, dtype=torch.bool)
        T = len(ex.tokens) + 2
        assert want.ids == [t.ids[w] for w in ex.tokens + ex.answer] and not want.missing
        assert torch.equal(stg_adjacency([ex], T)[0], want.M)


def test_targets_are_the_two_answer_tokens_only() -> None:
    t = _task()
    rows = t.global_batch(0, 8)
    assert np.array_equal(rows, _task().global_batch(0, 8))
    b = t.make_batch(rows, CPU)
    assert b.n_targets == 16 == t.count_targets(rows)
    tg = b.inputs["targets"]
    assert int((tg != IGNORE_INDEX).sum()) == 16
    for r, i in enumerate(rows):
        ex = t.examples["train"][int(i)]
        kp = len(ex.tokens)
        assert [t.vocab[x] for x in tg[r, kp - 1 : kp + 1].tolist()] == list(ex.answer)


def test_plain_loss_and_the_cat_term() -> None:
    torch.manual_seed(0)
    plain = _task()
    model = plain.build_model()
    b = plain.make_batch(plain.global_batch(0, 8), CPU)
    logits = model(b.inputs["idx"])
    want = F.cross_entropy(logits.flatten(0, 1), b.inputs["targets"].flatten(), ignore_index=IGNORE_INDEX)
    loss = plain.loss(model, b)
    assert not loss.aux and torch.allclose(loss.main, want)
    # CAT: the term appears, is finite and moves only the supervised layer's attention
    cat = _task("cat", alpha=5.0, layers=("blocks.0.attn",), decay="none")
    cat.global_batch(0, 8)
    lc = cat.loss(model, b)
    assert set(lc.aux) == {"cat"} and torch.isfinite(lc.aux["cat"]) and float(lc.aux["cat"].detach()) != 0.0
    assert torch.allclose(lc.main, want)
    model.zero_grad()
    lc.aux["cat"].backward()
    assert model.blocks[0].attn.in_proj.weight.grad.abs().sum() > 0
    assert model.blocks[1].attn.in_proj.weight.grad is None or model.blocks[1].attn.in_proj.weight.grad.abs().sum() == 0
    # gating (spec A.10.6): a threshold every row already meets gives zero loss and zero gradient
    easy = _task("cat", alpha=1e-6, decay="none")
    easy.global_batch(0, 8)
    model.zero_grad()
    le = easy.loss(model, b)
    assert float(le.aux["cat"]) == 0.0
    le.aux["cat"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.parameters())


def test_decay_follows_the_trainer_step() -> None:
    torch.manual_seed(0)
    t = _task("cat", alpha=5.0, decay="progress", n_train=64)
    model = t.build_model()
    rows = t.global_batch(0, 8)
    b = t.make_batch(rows, CPU)
    t.step_progress = (0, 100)
    first = float(t.loss(model, b).aux["cat"])
    t.step_progress = (100, 100)
    last = float(t.loss(model, b).aux["cat"])
    assert last == pytest.approx(first * np.exp(-5.0), rel=1e-6)
    e = _task("cat", alpha=5.0, decay="epoch", n_train=64)
    e.global_batch(0, 8)
    e.step_progress = (0, 100)
    l0 = float(e.loss(model, b).aux["cat"])
    e.step_progress = (16, 100)  # 16 steps of 8 = 2 epochs of 64
    assert float(e.loss(model, b).aux["cat"]) == pytest.approx(l0 * np.exp(-2.0), rel=1e-6)


def test_accuracy_equals_greedy_decoding_and_the_metrics() -> None:
    torch.manual_seed(1)
    t = _task(n_test=12)
    model = t.build_model().eval()
    res = t.evaluate(model, "test", EvalContext(device=CPU, batch_size=5))
    for split in ("iid", "ood", "flipped"):
        hits = 0
        for ex in t.examples[split]:
            ids = [t.ids[w] for w in ex.tokens]
            out = generate(model, ids, 2, temperature=0.0)[len(ids):].tolist()
            hits += [t.vocab[i] for i in out] == list(ex.answer)
        assert res.metrics[f"acc_{split}"] == pytest.approx(100 * hits / 12)
    assert res.metrics["gap"] == pytest.approx(res.metrics["acc_iid"] - res.metrics["acc_flipped"])
    assert 0 < res.metrics["cause_mass"] < 1 and 0 < res.metrics["spurious_mass"] < 1
    val = t.evaluate(model, "val", EvalContext(device=CPU, batch_size=5))
    assert "acc_ood" in val.metrics and "acc_flipped" not in val.metrics
    assert val.metrics["majority"] == res.metrics["majority"]


def test_config_variants_and_a_short_run(tmp_path, capsys) -> None:
    assert main(["train", "--task", "stg", "--set", "options.objective=cat", "--set", "options.cat.alpha=3",
                 "--print-config", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["options"]["objective"] == "cat" and d["options"]["cat"]["alpha"] == 3.0
    assert main(["train", "--task", "stg", "--set", "options.objective=leaf", "--print-config"]) == 2
    assert "options.teacher.checkpoint" in capsys.readouterr().err
    assert main(["train", "--task", "stg", "--set", "options.objective=cot", "--print-config"]) == 2
    assert "options.objective: expected one of" in capsys.readouterr().err
    assert SpuriousTokenGame.variant_overrides("cat-progress", {}) == VARIANTS["cat-progress"]
    with pytest.raises(ValueError, match="not an objective of task 'stg'"):
        SpuriousTokenGame.variant_overrides("cot", {})
    out = tmp_path / "run"
    assert main(["train", "--preset", "stg-quick", "--set", "options.objective=cat", "--out", str(out),
                 "--set", "tensorboard=false"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert {"acc_iid", "acc_ood", "acc_flipped", "gap", "majority"} <= set(result["test"]["metrics"])
    rec = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss.cat" in r for r in rec if r["kind"] == "train")
