"""AutoHFormer (spec time_series.md C.6; oracles C.12 1, 6, 7): strict causality in time, the segment hierarchy,
teacher-forced parallel pass == the decoding loop fed the truth, sliding-cache decoding == recomputing the whole
sequence, config errors, and a tiny training run through the forecasting task (exact resume)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from attnlab.config import ConfigError, from_dict, to_dict
from attnlab.models.timeseries import AutoHFormer, AutoHFormerConfig, ForecastModelConfig
from attnlab.tasks.forecast import ForecastDataConfig
from attnlab.train.presets import etth1_autohformer, etth1_quick
from attnlab.train.trainer import Trainer

F64 = torch.float64


def _model(L: int = 11, T: int = 6, V: int = 3, **kw: object) -> AutoHFormer:
    opts = dict(n_layers=2, d_model=16, n_heads=2, ffn_hidden=24, window=6, segment_len=3, dropout=0.0)
    opts.update(kw)
    torch.manual_seed(0)
    m = AutoHFormer(AutoHFormerConfig(**opts), look_back=L, horizon=T, n_channels=V).double()  # type: ignore[arg-type]
    return m.eval()


def _xy(m: AutoHFormer, B: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.randn(B, m.look_back, m.n_channels, dtype=F64), torch.randn(B, m.horizon, m.n_channels, dtype=F64))


@pytest.mark.parametrize("P", [1, 7, 13, 40])
@pytest.mark.parametrize("decay", ["multiplicative", "additive"])
def test_states_are_strictly_causal(P: int, decay: str) -> None:
    """Oracle 1: perturbing the steps after p leaves f_{<=p} bit-identical; d f_p / d z_q is exactly 0 for q > p."""
    m = _model(decay=decay)
    z = torch.randn(2, P, 3, dtype=F64, requires_grad=True)
    f = m.hidden(z)
    for p in range(P):
        z2 = z.detach().clone()
        z2[:, p + 1 :] += torch.randn_like(z2[:, p + 1 :]) * 10
        assert torch.equal(m.hidden(z2)[:, : p + 1], f[:, : p + 1].detach())
        (g,) = torch.autograd.grad(f[:, p].sum(), z, retain_graph=True)
        assert bool((g[:, p + 1 :] == 0).all())
        assert float(g[:, p].abs().max()) > 0.0


def test_keys_beyond_the_window_have_no_influence() -> None:
    """One layer sees window/2 steps back: f_p of a 1-layer model ignores every step before p - window/2."""
    m = _model(n_layers=1, window=6)
    z = torch.randn(1, 20, 3, dtype=F64)
    f = m.hidden(z)
    z2 = z.clone()
    z2[:, :10] = torch.randn(1, 10, 3, dtype=F64)  # steps 0..9: outside the window of steps >= 13
    assert torch.equal(m.hidden(z2)[:, 13:], f[:, 13:])
    assert not torch.equal(m.hidden(z2)[:, 12], f[:, 12])  # step 12 sees step 9


@pytest.mark.parametrize("segment_init", ["linear", "block_transformer"])
@pytest.mark.parametrize("segment_len", [1, 2, 3, 6])
def test_teacher_forced_equals_the_loop_fed_the_truth(segment_len: int, segment_init: str) -> None:
    """Oracle 7: the parallel pass equals the sequential loop (sliding caches) fed the ground truth (1e-10)."""
    m = _model(segment_len=segment_len, segment_init=segment_init)
    x, y = _xy(m)
    torch.testing.assert_close(m.teacher_forced(x, y), m.decode(x, feed=y), rtol=0, atol=1e-10)


@pytest.mark.parametrize("L", [1, 2, 3, 11])
def test_block_transformer_guess_is_cross_attention_over_the_last_visible_states(L: int) -> None:
    """The block-transformer F_θ written out: per segment, the S queries attend (softmax over heads' scaled dot
    products) to the last min(R, visible) top-layer states before the segment, nothing padded or later; with a
    look-back shorter than R (L = 1, 2, 3 < R = 4) the parallel pass and the loop still agree."""
    m = _model(L=L, T=6, segment_len=3, segment_init="block_transformer", window=6)
    x, y = _xy(m)
    R, S, V = m.context_len, 3, 3
    assert R == 4
    head = m.segment_head
    f = m.hidden(torch.cat([x, y[:, :-1]], 1))  # (B, L + T - 1, C)
    out = m.teacher_forced(x, y)
    H, D = head.n_heads, head.head_dim
    for h in range(2):
        end = L - 1 + h * S
        ctx = f[:, max(0, end - R + 1) : end + 1]  # (B, r, C): the visible states only
        q = head.q(head.queries).view(S, H, D).transpose(0, 1)  # (H, S, D)
        k, v = head.kv(ctx).chunk(2, dim=-1)  # (B, r, H D) each
        k = k.reshape(2, -1, H, D).transpose(1, 2)  # (B, H, r, D)
        v = v.reshape(2, -1, H, D).transpose(1, 2)
        w = torch.softmax(q @ k.transpose(-1, -2) / D**0.5, dim=-1)  # (B, H, S, r)
        guess = head.out((w @ v).transpose(1, 2).reshape(2, S, H * D))  # (B, S, V)
        want = guess + m.step_head(f[:, end : end + S])
        torch.testing.assert_close(out[:, h * S : (h + 1) * S], want, rtol=0, atol=1e-12)
    torch.testing.assert_close(out, m.decode(x, feed=y), rtol=0, atol=1e-10)
    assert out.shape == (2, 6, V)


@pytest.mark.parametrize("segment_len", [1, 3])
def test_cached_decoding_equals_recomputing_the_sequence(segment_len: int) -> None:
    """Oracle 6/7: the free-running loop with sliding caches equals a plain step-by-step decoder that recomputes
    every state from the whole growing sequence (no cache); with segment_len = 1 that is a fully autoregressive
    decoder whose head is F_θ + W_o of the last state."""
    m = _model(segment_len=segment_len, window=4)
    x, _ = _xy(m)
    seq, out = x, []
    for s in range(m.horizon):
        f = m.hidden(seq)[:, -1]  # (B, C)
        if s % segment_len == 0:
            guess = m._segment_guess(f)
        y = guess[:, s % segment_len] + m.step_head(f)
        out.append(y)
        seq = torch.cat([seq, y[:, None]], 1)
    want = torch.stack(out, 1)
    torch.testing.assert_close(m(x), want, rtol=0, atol=1e-10)
    if segment_len == 1:
        seq, steps = x, []
        for _ in range(m.horizon):
            f = m.hidden(seq)[:, -1]
            y = m.segment_head(f) + m.step_head(f)  # one linear head on the last state
            steps.append(y)
            seq = torch.cat([seq, y[:, None]], 1)
        torch.testing.assert_close(m(x), torch.stack(steps, 1), rtol=0, atol=1e-10)


@pytest.mark.parametrize("segment_init", ["linear", "block_transformer"])
def test_segment_guess_sees_nothing_of_its_segment(segment_init: str) -> None:
    """Oracle 6: c_h is unchanged when any step of segment h or later changes; output length K * H = T; K = 1 is
    one coarse guess plus corrections."""
    m = _model(T=6, segment_len=2, segment_init=segment_init)
    x, y = _xy(m)
    seen: list[torch.Tensor] = []
    hook = m.segment_head.register_forward_hook(lambda mod, inp, out: seen.append(out.detach()))
    out = m.teacher_forced(x, y)
    assert out.shape == (2, 6, 3)
    for h in range(3):
        y2 = y.clone()
        y2[:, 2 * h :] += 5.0
        m.teacher_forced(x, y2)
        a, b = seen[0].view(2, 3, -1), seen[-1].view(2, 3, -1)
        assert torch.equal(a[:, h], b[:, h]) and torch.equal(a[:, :h], b[:, :h])
        if h + 1 < 3:  # the next segment's guess does see the change
            assert not torch.equal(a[:, h + 1], b[:, h + 1])
    hook.remove()
    if segment_init != "linear":
        return
    one = _model(T=6, segment_len=6)
    x, y = _xy(one)
    f = one.hidden(torch.cat([x, y[:, :-1]], 1))[:, one.look_back - 1 :]  # (B, T, C)
    want = one.segment_head(f[:, 0]).view(2, 6, 3) + one.step_head(f)
    torch.testing.assert_close(one.teacher_forced(x, y), want, rtol=0, atol=1e-12)


def test_forward_modes_and_gamma() -> None:
    m = _model()
    x, y = _xy(m)
    torch.testing.assert_close(m(x, target=y), m.decode(x), rtol=0, atol=0)  # eval: the target is not used
    m.train()
    torch.testing.assert_close(m(x, target=y), m.teacher_forced(x, y), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"target must have shape \(B, T, V\) = \(2, 6, 3\)"):
        m(x, target=y[:, :5])
    free = _model(train_mode="free_running").train()
    assert not free.uses_target
    torch.testing.assert_close(free(x, target=y), free.decode(x), rtol=0, atol=0)
    attn = m.blocks[0].attn
    assert float(attn.gamma.detach()) == pytest.approx(0.5, rel=1e-6)  # softplus(raw) starts at gamma_init
    assert float(_model(decay="none").blocks[0].attn.gamma) == 0.0
    free(x).sum().backward()  # free running is differentiable through the caches
    assert free.blocks[0].attn.gamma_raw.grad is not None


def test_scheduled_sampling_feeds_first_pass_predictions_or_the_truth() -> None:
    """train_mode="scheduled": probability 1 feeds every step the first (teacher-forced, gradient-free) pass's
    prediction; 0.5 feeds, step by step, one or the other as drawn; no gradient reaches the first pass."""
    x, y = _xy(_model())
    always = _model(train_mode="scheduled", scheduled_prob=1.0, scheduled_ramp=0)
    first = always.teacher_forced(x, y).detach()
    torch.testing.assert_close(always.scheduled(x, y), always.teacher_forced(x, first), rtol=0, atol=0)
    half = _model(train_mode="scheduled", scheduled_prob=0.5, scheduled_ramp=0, T=12)
    x, y = _xy(half, B=3)
    torch.manual_seed(7)
    pick = torch.rand(3, 12, 1) < 0.5
    assert bool(pick.any()) and not bool(pick.all())
    torch.manual_seed(7)
    out = half.scheduled(x, y)
    want = half.teacher_forced(x, torch.where(pick, half.teacher_forced(x, y), y))
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    yg = y.clone().requires_grad_(True)
    torch.manual_seed(7)
    (g,) = torch.autograd.grad(half.scheduled(x, yg).sum(), yg)  # (B, T, V)
    fed_truth = ~pick[:, :-1, 0]  # (B, T - 1): the true steps the second pass was fed (the last is never fed)
    assert bool((g[:, :-1][~fed_truth] == 0).all()) and bool((g[:, -1] == 0).all())  # nothing via the first pass
    assert bool((g[:, :-1][fed_truth].abs().sum(-1) > 0).all())
    assert int(half.scheduled_calls) == 2


def test_scheduled_probability_ramps_with_training_calls_and_is_saved() -> None:
    m = _model(train_mode="scheduled", scheduled_prob=0.4, scheduled_ramp=4).train()
    x, y = _xy(m)
    assert m.uses_target and m.scheduled_prob() == 0.0
    torch.testing.assert_close(m(x, target=y), m.teacher_forced(x, y), rtol=0, atol=0)  # call 0: probability 0
    probs = [m.scheduled_prob()]
    for _ in range(5):
        m(x, target=y)
        probs.append(m.scheduled_prob())
    assert probs == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    m.eval()
    torch.testing.assert_close(m(x, target=y), m.decode(x), rtol=0, atol=0)  # evaluation decodes, no clock tick
    assert int(m.scheduled_calls) == 6
    fresh = _model(train_mode="scheduled", scheduled_prob=0.4, scheduled_ramp=4)
    fresh.load_state_dict(m.state_dict())
    assert int(fresh.scheduled_calls) == 6 and "scheduled_calls" not in _model().state_dict()


def test_config_errors_and_round_trip() -> None:
    for kw, msg in [
        (dict(window=7), "window=7 must be even"),
        (dict(window=0), "window must be an int >= 2"),
        (dict(segment_len=0), "segment_len must be an int >= 1"),
        (dict(decay="linear"), "decay must be one of 'multiplicative', 'additive', 'none'"),
        (dict(gamma_init=0.0), "gamma_init must be a finite float > 0.0"),
        (dict(n_heads=3), "n_heads=3 must divide d_model=128"),
        (dict(impl="sdpa"), "impl='sdpa' needs decay='additive' or 'none'"),
        (dict(train_mode="sampled"), "train_mode must be one of 'teacher_forcing', 'free_running', 'scheduled'"),
        (dict(segment_init="mlp"), "segment_init must be one of 'linear', 'block_transformer'"),
        (dict(scheduled_prob=1.5), r"scheduled_prob must be a float in \[0.0, 1.0\], got 1.5"),
        (dict(scheduled_ramp=-1), "scheduled_ramp must be an int >= 0"),
        (dict(relative=1), "relative must be a bool"),
    ]:
        with pytest.raises(ValueError, match=msg):
            AutoHFormerConfig(**kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="segment_len=24 must divide horizon=100"):
        AutoHFormer(AutoHFormerConfig(), look_back=10, horizon=100, n_channels=2)
    cfg = ForecastModelConfig(arch="autohformer", autohformer=AutoHFormerConfig(window=8, decay="additive"))
    back = from_dict(ForecastModelConfig, to_dict(cfg))
    assert back == cfg and back.autohformer.lookback == 4
    assert isinstance(cfg.build(look_back=10, horizon=24, n_channels=2), AutoHFormer)
    with pytest.raises(ConfigError, match="window"):
        from_dict(ForecastModelConfig, {"arch": "autohformer", "autohformer": {"window": 5}})
    assert etth1_autohformer().model.arch == "autohformer" and etth1_autohformer().steps > 0


def _csv(path: Path, n: int = 300) -> Path:
    t = np.arange(n)
    base = np.datetime64("2021-03-01T00:00:00")
    a = np.sin(2 * np.pi * t / 24) + 0.01 * t
    b = np.cos(2 * np.pi * t / 12) - 2.0
    rows = [f"{str(base + np.timedelta64(int(i), 'h')).replace('T', ' ')},{float(a[i])!r},{float(b[i])!r}" for i in range(n)]
    path.write_text("date,load,OT\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(("train_mode", "segment_init"), [("teacher_forcing", "linear"),
                                                           ("scheduled", "block_transformer")])
def test_trains_through_the_forecast_task_and_resumes_exactly(tmp_path: Path, train_mode: str,
                                                              segment_init: str) -> None:
    """Exact resume, also mid-way through the scheduled-sampling ramp (its clock is saved with the weights)."""
    model = ForecastModelConfig(arch="autohformer", autohformer=AutoHFormerConfig(
        n_layers=1, d_model=16, n_heads=2, ffn_hidden=16, window=4, segment_len=2, dropout=0.1,
        train_mode=train_mode, segment_init=segment_init, scheduled_ramp=3))  # type: ignore[arg-type]
    data = ForecastDataConfig(source=str(_csv(tmp_path / "s.csv")), look_back=12, horizon=4, borders="ratio")
    cfg = replace(etth1_quick(), model=model, data=data, steps=4, batch_size=8, eval_interval=2, log_interval=1,
                  progress=False, tensorboard=False, device="cpu", precision="float64", threads=1, eval_batch_size=16)
    calls: list[bool] = []
    full = Trainer(cfg, out_dir=tmp_path / "full", log=None)
    hook = full.model.register_forward_pre_hook(lambda m, a, kw: calls.append("target" in kw), with_kwargs=True)
    res = full.fit()
    hook.remove()
    assert any(calls) and not all(calls)  # training passes the target (teacher forcing), evaluation does not
    assert res.test is not None and np.isfinite(res.test.metrics["mse"])
    Trainer(replace(cfg, steps=2), out_dir=tmp_path / "part", log=None).fit()
    resumed = Trainer(cfg, out_dir=tmp_path / "part", resume=True, log=None)
    resumed.fit()
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    if train_mode == "scheduled":
        assert int(resumed.model.scheduled_calls) == 4  # one call per step, none in evaluation
    a = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in a if r["kind"] == "train"] == [r["loss"] for r in b if r["kind"] == "train"]
