"""Checkpoints: atomic writes, exact resume, architecture mismatches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attnlab.train import checkpoint as ckpt
from attnlab.models.lm import LMConfig
from attnlab.train.config import OptimConfig, TrainConfig
from attnlab.train.metrics import read_jsonl
from attnlab.train.trainer import Trainer

from standin import TinyLM, tiny_corpus


def _cfg(**kw) -> TrainConfig:
    base = dict(
        model=LMConfig(context_len=16, d_model=16, n_heads=2, dropout=0.1),
        optim=OptimConfig(lr=3e-2, warmup_steps=4),
        steps=20, batch_size=8, grad_accum=2, eval_interval=5, log_interval=1, precision="float64",
        progress=False, tensorboard=False, keep_checkpoints=2,
    )
    base.update(kw)
    return TrainConfig(**base)


def _trainer(cfg: TrainConfig, out: Path | None, **kw) -> Trainer:
    torch.manual_seed(123)  # the trainer must not depend on the caller's RNG: it seeds itself
    return Trainer(cfg, data=tiny_corpus(), model=TinyLM(11, dropout=cfg.model.dropout), out_dir=out, log=None, **kw)


class Crash(RuntimeError):
    pass


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path: Path) -> None:
    """Crash in the middle of step 13 (after the checkpoint of step 10), resume: same losses and weights,
    bitwise on CPU (float64, dropout on, gradient accumulation on)."""
    cfg = _cfg()
    whole = _trainer(cfg, tmp_path / "whole").fit()

    t = _trainer(cfg, tmp_path / "cut")
    real_step = t.optimizer.step
    calls = {"n": 0}

    def crashing_step(*a, **k):
        calls["n"] += 1
        if calls["n"] == 13:
            raise Crash("power cut")
        return real_step(*a, **k)

    t.optimizer.step = crashing_step  # type: ignore[method-assign]
    with pytest.raises(Crash):
        t.fit()
    assert ckpt.latest_checkpoint(tmp_path / "cut").name == "ckpt-00000010"

    resumed_trainer = _trainer(cfg, tmp_path / "cut", resume=True)
    assert resumed_trainer.step == 10
    saved_elapsed = json.loads((tmp_path / "cut" / "ckpt-00000010" / "state.json").read_text())["elapsed_s"]
    assert saved_elapsed > 0 and resumed_trainer.elapsed_before == saved_elapsed
    resumed = resumed_trainer.fit()
    assert resumed.resumed_from == 10
    # every counter covers the whole run: steps and tokens equal the uninterrupted run's, wall time keeps counting
    assert (resumed.steps, resumed.tokens) == (whole.steps, whole.tokens) == (20, whole.tokens)
    assert resumed.run_wall_s == pytest.approx(saved_elapsed + resumed.wall_s)
    elapsed = [r["elapsed_s"] for r in read_jsonl(tmp_path / "cut" / "metrics.jsonl") if r["kind"] == "train"]
    assert elapsed == sorted(elapsed) and elapsed[10] > saved_elapsed  # continues, never restarts at 0
    # Losses of steps 11..20 and the final validation loss: identical (tolerance 0: bitwise).
    assert resumed.train_losses == whole.train_losses[10:]
    assert resumed.val.loss == whole.val.loss
    a = ckpt.latest_checkpoint(tmp_path / "whole")
    b = ckpt.latest_checkpoint(tmp_path / "cut")
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # The resumed run's logs read as one run: each training step once.
    steps = [r["step"] for r in read_jsonl(tmp_path / "cut" / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == list(range(1, 21))
    # the JSON state holds the schedule step, RNG state and data position
    state = json.loads((b / "state.json").read_text())
    assert state["step"] == 20 and state["data"]["next_step"] == 20 and "torch" in state["rng"]
    # the rate of the last step taken (step index 19 of 20): one step before the floor of 10% of peak
    from attnlab.train.schedule import lr_at

    assert state["lr"] == lr_at(19, peak=3e-2, warmup_steps=4, total_steps=20, min_ratio=0.1)


def test_crash_during_save_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = TinyLM(11)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 4, dtype=torch.long))[0].sum().backward()
    opt.step()
    ckpt.save_checkpoint(tmp_path, step=5, model=model, optimizer=opt, state={"note": "five"})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    def boom(*a, **k):
        raise Crash("disk died while writing the optimizer")

    monkeypatch.setattr(ckpt, "save_file", boom)  # model.safetensors is written, then the crash
    with pytest.raises(Crash):
        ckpt.save_checkpoint(tmp_path, step=10, model=model, optimizer=opt, state={"note": "ten"})
    monkeypatch.undo()
    assert list(tmp_path.glob(".tmp-ckpt-*"))  # the half-written one is there, hidden
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "ckpt-00000005"
    assert ckpt.find_checkpoint(tmp_path) == latest
    assert ckpt.read_state(tmp_path)["note"] == "five"
    fresh = TinyLM(11)
    ckpt.load_model_weights(tmp_path, fresh)
    assert all(torch.equal(fresh.state_dict()[k], before[k]) for k in before)
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    ckpt.load_optimizer(latest, opt2, ckpt.read_state(latest))
    assert int(opt2.state_dict()["state"][0]["step"]) == 1
    # the next successful save removes the debris
    ckpt.save_checkpoint(tmp_path, step=10, model=model, optimizer=opt, state={})
    assert not list(tmp_path.glob(".tmp-ckpt-*"))
    assert ckpt.latest_checkpoint(tmp_path).name == "ckpt-00000010"


def test_keep_newest_checkpoints_only(tmp_path: Path) -> None:
    model = TinyLM(5)
    for s in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step=s, model=model, optimizer=None, state={}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-00000003", "ckpt-00000004"]


def test_other_architecture_is_a_clear_error(tmp_path: Path) -> None:
    ckpt.save_checkpoint(tmp_path, step=1, model=TinyLM(11, d=16), optimizer=None, state={})
    with pytest.raises(ckpt.CheckpointError, match=r"different architecture: shape mismatches: .*\(11, 16\) vs model \(11, 8\)"):
        ckpt.load_model_weights(tmp_path, TinyLM(11, d=8))
    with pytest.raises(ckpt.CheckpointError, match=r"not in model: .*"):
        ckpt.load_model_weights(tmp_path, torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.find_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint in"):
        ckpt.find_checkpoint(tmp_path / "empty")


def test_resume_with_a_different_model_config_is_refused(tmp_path: Path) -> None:
    cfg = _cfg(steps=5)
    _trainer(cfg, tmp_path).fit()
    other = _cfg(steps=10, model=LMConfig(context_len=16, d_model=32, n_heads=2, dropout=0.1))
    with pytest.raises(ckpt.CheckpointError, match=r"model.d_model: checkpoint 16 vs now 32"):
        _trainer(other, tmp_path, resume=True)


def test_resume_from_a_checkpoint_of_an_earlier_version(tmp_path: Path) -> None:
    """A checkpoint written before an option existed (its saved config lacks the key) resumes when today's value is
    the option's default; a saved key today's config no longer has is still refused, by name."""
    cfg = _cfg(steps=5)
    _trainer(cfg, tmp_path).fit()
    (state_path,) = tmp_path.glob("ckpt-*/state.json")
    state = json.loads(state_path.read_text())
    assert state["config"]["model"].pop("rope_base") == cfg.model.rope_base  # as if saved before rope_base existed
    state_path.write_text(json.dumps(state))
    resumed = _trainer(_cfg(steps=10), tmp_path, resume=True)
    assert resumed.step == 5
    state["config"]["model"]["retired_option"] = 3  # an option removed since
    state_path.write_text(json.dumps(state))
    with pytest.raises(ckpt.CheckpointError, match=r"model.retired_option: checkpoint 3 vs now None"):
        _trainer(_cfg(steps=10), tmp_path, resume=True)


def test_block_longer_than_the_data_is_refused() -> None:
    from attnlab.train.config import ConfigError

    cfg = _cfg(model=LMConfig(context_len=5000, d_model=16, n_heads=2))
    with pytest.raises(ConfigError, match=r"model.context_len=5000 is longer than the training split \(3200 tokens"):
        _trainer(cfg, None)


@pytest.mark.parametrize("mechanism", ["standard", "castle", "linear"])
def test_real_lm_resume_is_exact(tmp_path: Path, mechanism: str) -> None:
    """The trainer-built LM on real text (characters): 8 steps straight == 4 steps, crash, resume 4; bitwise."""
    from attnlab.data import load_corpus, read_bundled_text

    src = tmp_path / "t.txt"
    src.write_text(read_bundled_text("tinyshakespeare")[:5000])
    corpus = load_corpus(str(src), cache_dir=tmp_path / "c", progress=False)
    cfg = TrainConfig(model=LMConfig(n_layers=1, d_model=16, n_heads=2, context_len=16, attention=mechanism,
                                         dropout=0.1),
                      optim=OptimConfig(lr=1e-2, warmup_steps=2), steps=8, batch_size=4, eval_interval=4,
                      log_interval=1, precision="float64", progress=False, tensorboard=False)
    whole = Trainer(cfg, data=corpus, out_dir=tmp_path / "a", log=None).fit()
    t = Trainer(cfg, data=corpus, out_dir=tmp_path / "b", log=None)
    orig = t.optimizer.step
    n = {"k": 0}

    def step(*a, **k):
        n["k"] += 1
        if n["k"] == 6:
            raise Crash("killed")
        return orig(*a, **k)

    t.optimizer.step = step  # type: ignore[method-assign]
    with pytest.raises(Crash):
        t.fit()
    rest = Trainer(cfg, data=corpus, out_dir=tmp_path / "b", resume=True, log=None).fit()
    assert rest.train_losses == whole.train_losses[4:] and rest.val.loss == whole.val.loss
    assert whole.train_losses[-1][1] < whole.train_losses[0][1]  # it learns something


def test_checkpoint_of_another_mechanism_is_refused(tmp_path: Path) -> None:
    """A CASTLE LM's weights do not load into a standard LM of the same size: the error names the tensors."""
    from attnlab.models import LM, LMConfig

    kw = dict(vocab_size=11, n_layers=1, d_model=16, n_heads=2, context_len=8)
    ckpt.save_checkpoint(tmp_path, step=1, model=LM(LMConfig(attention="castle", **kw)), optimizer=None, state={})
    with pytest.raises(ckpt.CheckpointError, match=r"different architecture: .*blocks\.0\.attn"):
        ckpt.load_model_weights(tmp_path, LM(LMConfig(attention="standard", **kw)))


def test_trainer_refuses_an_output_directory_with_results_unless_resuming(tmp_path: Path) -> None:
    """Without resume, a used directory is an error (its checkpoints and metrics would be replaced / mixed);
    nothing in it is touched."""
    from attnlab.train.outdir import OutputDirError

    cfg = _cfg(steps=5)
    _trainer(cfg, tmp_path).fit()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert {"metrics.jsonl", "result.json"} <= set(before)
    with pytest.raises(OutputDirError, match=r"already holds results \(ckpt-00000005, metrics.csv, metrics.jsonl, "
                                             r"result.json\); pass resume=True"):
        _trainer(cfg, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert _trainer(cfg, tmp_path, resume=True).step == 5  # resuming is allowed
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("unrelated")  # files that are not results do not block a run
    assert _trainer(cfg, tmp_path / "other").step == 0


def test_result_json_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash while writing result.json (the "finished" marker compare relies on) leaves the previous file
    intact and no temporary behind."""
    import os

    from attnlab.train.outdir import atomic_write_text

    target = tmp_path / "result.json"
    atomic_write_text(target, '{"old": 1}')

    def boom(fd: int) -> None:
        raise Crash("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(Crash):
        atomic_write_text(target, '{"new": 2, "half": ')
    monkeypatch.undo()
    assert target.read_text() == '{"old": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
