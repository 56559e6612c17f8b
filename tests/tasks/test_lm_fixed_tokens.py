"""The language-modelling task gives a decon_fixedseqqk model its fixed sequence t_s from the training split (spec
shared/specs/deconstructing.md 3.6): chosen by the layers' stream_seed, recorded in the task state, carried by
checkpoints, never re-chosen by a resumed or evaluated checkpoint; other models are unaffected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import attnlab.tasks.lm as lm_task
from attnlab.models.lm import LM, LMConfig
from attnlab.tasks.lm import LanguageModeling, LMDataConfig, fixed_token_window
from attnlab.train import checkpoint as ckpt
from attnlab.train.config import OptimConfig, TrainConfig
from attnlab.train.loading import load_trained
from attnlab.train.trainer import Trainer
from standin import tiny_corpus

L = 16


def _model(attention: str = "decon_fixedseqqk", schedule: str = "uniform", **options) -> LMConfig:
    return LMConfig(n_layers=2, d_model=16, n_heads=2, context_len=L, attention=attention, schedule=schedule,
                    attention_options={attention: options} if options else {})


def test_window_is_seeded_uniform_and_in_range() -> None:
    offs = [fixed_token_window(1000, L, seed=s) for s in range(200)]
    assert offs == [fixed_token_window(1000, L, seed=s) for s in range(200)]  # a function of the seed alone
    assert min(offs) >= 0 and max(offs) <= 1000 - L and len(set(offs)) > 150
    assert fixed_token_window(L, L, seed=3) == 0  # the only window
    with pytest.raises(ValueError, match=r"needs context_len=16 training tokens, the split has 15"):
        fixed_token_window(15, L, seed=0)


@pytest.mark.parametrize("schedule", ["uniform", "alternate"])
def test_fixed_tokens_are_the_chosen_training_window(schedule: str) -> None:
    corpus = tiny_corpus(n=4000, vocab=11, seed=5)
    task = LanguageModeling(_model(schedule=schedule, stream_seed=4), LMDataConfig(), seed=0, corpus=corpus)
    model = task.build_model()
    o = fixed_token_window(len(corpus.train), L, seed=4)
    want = torch.from_numpy(corpus.train[o:o + L].astype(np.int64))
    assert torch.equal(model.fixed_stream.tokens, want)
    placeholder = LM(task.resolved_model_config()).fixed_stream.tokens  # what the model starts with
    assert not torch.equal(placeholder, want)
    rec = task.state()["fixed_tokens"]
    assert rec == {"split": "train", "offset": o, "length": L, "stream_seed": 4, "sha256": rec["sha256"]}
    assert rec["sha256"] == lm_task._ids_sha256(want) and len(rec["sha256"]) == 64
    # the run's seed does not move the window; the layers' stream_seed does
    again = LanguageModeling(_model(schedule=schedule, stream_seed=4), LMDataConfig(), seed=9, corpus=corpus)
    assert torch.equal(again.build_model().fixed_stream.tokens, want)
    other = LanguageModeling(_model(schedule=schedule, stream_seed=5), LMDataConfig(), seed=0, corpus=corpus)
    other.build_model()
    assert other.fixed_tokens["offset"] != o


@pytest.mark.parametrize("attention", ["standard", "decon_rndembqk", "decon_staticembqk"])
def test_models_without_fixedseqqk_are_unaffected(attention: str) -> None:
    task = LanguageModeling(_model(attention), LMDataConfig(), seed=0, corpus=tiny_corpus())
    torch.manual_seed(1)
    got = task.build_model().state_dict()
    torch.manual_seed(1)
    want = LM(task.resolved_model_config()).state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert task.fixed_tokens is None and "fixed_tokens" not in task.state()


def _train_cfg(tmp_path: Path, steps: int) -> TrainConfig:
    from attnlab.data import read_bundled_text

    text = tmp_path / "small.txt"
    if not text.exists():
        text.write_text(read_bundled_text("tinyshakespeare")[:3000])
    return TrainConfig(model=_model(), data=LMDataConfig(source=str(text), tokenizer="char",
                                                         cache_dir=str(tmp_path / "cache")),
                       optim=OptimConfig(lr=1e-2, warmup_steps=0), steps=steps, batch_size=2, eval_interval=2,
                       log_interval=1, device="cpu", precision="float32", seed=0, tensorboard=False, progress=False,
                       threads=1)


def test_fixed_tokens_survive_checkpoints_and_are_not_rechosen(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    tr = Trainer(_train_cfg(tmp_path, 2), out_dir=out, log=None)
    tr.fit()
    train = np.asarray(tr.task.corpus.train)
    o = fixed_token_window(len(train), L, seed=0)
    want = torch.from_numpy(train[o:o + L].astype(np.int64))
    assert torch.equal(tr.model.fixed_stream.tokens, want)
    saved = ckpt.read_state(ckpt.find_checkpoint(out))["task_state"]["fixed_tokens"]
    assert saved["offset"] == o and saved["sha256"] == lm_task._ids_sha256(want)

    # evaluating the checkpoint: the ids come with the weights; nothing is chosen and no data is read
    def refuse(*a, **k):
        raise AssertionError("a checkpoint's fixed sequence was chosen again")

    monkeypatch.setattr(lm_task, "fixed_token_window", refuse)
    t = load_trained(out, device="cpu")
    assert torch.equal(t.model.fixed_stream.tokens, want)
    assert t.task.fixed_tokens == saved
    assert t.data_source is None  # the stored data path was not followed: the load read no data

    # resuming: the task chooses again (here, elsewhere) but the checkpoint's ids are loaded over the choice
    monkeypatch.setattr(lm_task, "fixed_token_window", lambda n, length, *, seed: (o + 1) % (n - length))
    tr2 = Trainer(_train_cfg(tmp_path, 3), out_dir=out, resume=True, log=None)
    assert tr2.resumed_from == 2
    assert torch.equal(tr2.model.fixed_stream.tokens, want)
    assert tr2.task.fixed_tokens["offset"] == o + 1  # it did choose again...
    rec = tr2.task.state()["fixed_tokens"]  # ...but records what the model holds, not that choice
    assert rec["sha256"] == saved["sha256"] and rec["offset"] is None
    tr2.close()
