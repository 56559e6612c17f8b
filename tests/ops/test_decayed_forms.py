"""Windowed decayed attention (AutoHFormer; spec time_series.md C.12 oracles 2-5, 8): the reference, dense, banded,
SDPA and FlexAttention forms agree in float64 (outputs and gradients; FlexAttention's gradients only on CUDA: torch 2.13
has no CPU backward for it), the window's index convention, the decay, the limit case and the relative term."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.masks import causal, dense, sliding_window
from attnlab.ops.decayed import (
    DecayScoreMod,
    decayed_window_attention,
    reference_decayed_probs,
    relative_table,
    sinusoidal_offsets,
    window_mask,
)
from attnlab.ops.softmax import softmax_attention

F64 = torch.float64


def _qkv(B: int, H: int, T: int, D: int, *, grad: bool = False, device: str = "cpu") -> list[torch.Tensor]:
    return [torch.randn(B, H, T, D, dtype=F64, device=device, requires_grad=grad) for _ in range(3)]


def _rel(q: torch.Tensor, lookback: int) -> torch.Tensor:
    D = q.shape[-1]
    return relative_table(q, sinusoidal_offsets(lookback + 1, D, dtype=F64, device=q.device), 1 / math.sqrt(D))


CASES = [(1, 0), (7, 3), (13, 16), (63, 16), (100, 5)]  # (T, lookback)


@pytest.mark.parametrize(("T", "lookback"), CASES)
@pytest.mark.parametrize("decay", ["multiplicative", "additive", "none"])
@pytest.mark.parametrize("with_rel", [False, True])
def test_forms_agree_outputs_and_gradients(T: int, lookback: int, decay: str, with_rel: bool) -> None:
    q, k, v = _qkv(2, 3, T, 12, grad=True)
    gamma = torch.tensor(0.7, dtype=F64, requires_grad=True)
    impls = ["reference", "dense", "banded"] + (["sdpa"] if decay != "multiplicative" else [])
    outs, grads = {}, {}
    for impl in impls:
        rel = _rel(q, lookback) if with_rel else None
        o = decayed_window_attention(q, k, v, lookback=lookback, decay=decay, gamma=gamma, rel=rel, impl=impl)
        w = torch.randn_like(o, generator=torch.Generator().manual_seed(1))
        outs[impl] = o
        grads[impl] = torch.autograd.grad((o * w).sum(), [q, k, v, gamma], allow_unused=True)
    for impl in impls[1:]:
        torch.testing.assert_close(outs[impl], outs["reference"], rtol=0, atol=1e-12)
        for g, g_ref in zip(grads[impl], grads["reference"]):
            if g_ref is None:
                assert g is None or float(g.abs().max()) == 0.0
            else:
                torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-11)
    with torch.no_grad():  # FlexAttention: forward only on CPU
        rel = _rel(q, lookback) if with_rel else None
        flex = decayed_window_attention(q, k, v, lookback=lookback, decay=decay, gamma=gamma, rel=rel, impl="flex")
    torch.testing.assert_close(flex, outs["reference"].detach(), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("T", "lookback", "want"), [(40, 3, "banded"), (40, 18, "banded"), (40, 19, "dense"),
                                                     (40, 100, "dense")])
def test_auto_picks_dense_when_the_window_covers_half_the_keys(T: int, lookback: int, want: str) -> None:
    """On CPU ``impl="auto"`` is the banded form for narrow windows and the dense one for wide windows (bitwise)."""
    q, k, v = _qkv(1, 2, T, 8)
    rel = _rel(q, lookback)
    kw = dict(lookback=lookback, decay="multiplicative", gamma=0.5, rel=rel)
    auto = decayed_window_attention(q, k, v, impl="auto", **kw)
    assert torch.equal(auto, decayed_window_attention(q, k, v, impl=want, **kw))


def test_resolve_impl_names_the_form_auto_runs() -> None:
    from attnlab.ops.decayed import resolve_impl

    assert resolve_impl("auto", device_type="cpu", lookback=16, kv_len=431) == "banded"
    assert resolve_impl("auto", device_type="cuda", lookback=16, kv_len=431) == "flex"
    assert resolve_impl("auto", device_type="cuda", lookback=16, kv_len=431, dtype=torch.float32) == "flex"
    assert resolve_impl("auto", device_type="cuda", lookback=16, kv_len=431, dtype=torch.float64) == "banded"
    assert resolve_impl("auto", device_type="cpu", lookback=432, kv_len=431) == "dense"
    assert resolve_impl("auto", device_type="cuda", lookback=432, kv_len=431) == "flex"
    assert resolve_impl("reference", device_type="cpu", lookback=16, kv_len=431) == "reference"


def test_the_decay_and_the_relative_term_change_the_output() -> None:
    """The agreement above would hold for forms that all ignore the score modification: they do not."""
    q, k, v = _qkv(1, 2, 20, 8)
    base = decayed_window_attention(q, k, v, lookback=6, decay="none", gamma=0.0, impl="reference")
    for impl in ("reference", "dense", "banded", "flex"):
        with torch.no_grad():
            mult = decayed_window_attention(q, k, v, lookback=6, decay="multiplicative", gamma=0.5, impl=impl)
            rel = decayed_window_attention(q, k, v, lookback=6, decay="none", gamma=0.0, rel=_rel(q, 6), impl=impl)
        assert float((mult - base).abs().max()) > 1e-3 and float((rel - base).abs().max()) > 1e-3


@pytest.mark.parametrize("impl", ["reference", "dense", "banded", "flex"])
def test_cached_keys_with_kv_start_equal_the_whole_sequence(impl: str) -> None:
    q, k, v = _qkv(2, 2, 30, 6)
    rel = _rel(q, 4)
    whole = decayed_window_attention(q, k, v, lookback=4, gamma=0.3, rel=rel, impl="reference")
    with torch.no_grad():  # keys 16.. as a sliding cache returns them, queries 20..
        part = decayed_window_attention(q[:, :, 20:], k[:, :, 16:], v[:, :, 16:], lookback=4, gamma=0.3,
                                        rel=rel[:, :, 20:], q_offset=20, kv_start=16, impl=impl)
    torch.testing.assert_close(part, whole[:, :, 20:], rtol=0, atol=1e-12)


@pytest.mark.gpu
def test_flex_gradients_agree_on_cuda() -> None:
    """float64 on CUDA runs the uncompiled FlexAttention by design (the H200 run: Triton's tl.dot assertion); its
    uncompiled backward fails for a 0-dim score_mod tensor that requires grad (the H200 probe, torch 2.11), so a
    call with a learnable ``gamma`` is refused with a clear error and ``impl="auto"`` picks the banded form;
    gradients of q, k, v and of the relative table (a captured per-score table) agree with the reference."""
    from attnlab.ops.softmax.flex import record_flex_fallbacks

    q, k, v = _qkv(2, 2, 100, 16, grad=True, device="cuda")
    gamma = torch.tensor(0.4, dtype=F64, device="cuda", requires_grad=True)
    with pytest.raises(ValueError, match="cannot differentiate gamma"):
        decayed_window_attention(q, k, v, lookback=16, gamma=gamma, rel=_rel(q, 16), impl="flex")
    res = {}
    for impl in ("reference", "flex"):
        rel = _rel(q, 16).detach().requires_grad_(True)
        with record_flex_fallbacks() as taken:
            o = decayed_window_attention(q, k, v, lookback=16, gamma=gamma.detach(), rel=rel, impl=impl)
        res[impl] = (o, *torch.autograd.grad(o.square().sum(), [q, k, v, rel]))
    print(f"[flex] uncompiled calls: {taken}")
    assert len(taken) == 1 and "float64" in taken[0]
    for a, b in zip(res["flex"], res["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("T", "lookback"), [(1, 3), (9, 3), (40, 16)])
def test_window_weights(T: int, lookback: int) -> None:
    """Oracle 2: zero weight after the query and more than lookback before it; rows sum to 1; at most lookback + 1
    keys; clamped at the start of the series. The window counts the current step."""
    q, k, _ = _qkv(2, 3, T, 8)
    mod = DecayScoreMod(decay="multiplicative", gamma=torch.tensor(0.5, dtype=F64), rel=_rel(q, lookback))
    p = reference_decayed_probs(q, k, mask=window_mask(lookback), mod=mod, scale=8**-0.5)  # (B, H, T, T)
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    inside = (j <= i) & (j >= i - lookback)
    assert torch.equal(inside, dense(sliding_window(lookback + 1), T, T))
    assert bool((p[..., ~inside] == 0).all())
    assert bool((p[..., inside] > 0).all())
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 3, T, dtype=F64), rtol=0, atol=1e-14)
    assert int((p[0, 0] > 0).sum(-1).max()) == min(T, lookback + 1)
    assert (p[0, 0, 0] > 0).sum() == 1  # the first step sees only itself


def test_decay_factor() -> None:
    """Oracle 3: tau(p, p) = 1 and tau strictly decreases with the distance (multiplicative); with the additive form
    the weights of equal logits decrease with the distance."""
    T = 10
    g = torch.tensor(0.3, dtype=F64)
    ones = torch.ones(1, 1, T, T, dtype=F64)
    b, h = torch.zeros(1, 1, 1, 1, dtype=torch.long), torch.zeros(1, 1, 1, 1, dtype=torch.long)
    qi, kj = torch.arange(T).view(1, 1, T, 1), torch.arange(T).view(1, 1, 1, T)
    tau = DecayScoreMod(decay="multiplicative", gamma=g)(ones, b, h, qi, kj)[0, 0]  # (T, T): the factor itself
    assert torch.equal(tau.diagonal(), torch.ones(T, dtype=F64))
    row = tau[T - 1, :].flip(0)  # distances 0 .. T-1
    assert bool((row[1:] < row[:-1]).all())
    q, k, v = torch.zeros(1, 1, T, 4, dtype=F64), torch.zeros(1, 1, T, 4, dtype=F64), torch.eye(T, dtype=F64)[None, None]
    w = decayed_window_attention(q, k, v, lookback=T, decay="additive", gamma=0.3, impl="reference")[0, 0, -1]
    assert bool((w[1:] > w[:-1]).all())  # equal logits: nearer keys weigh more
    torch.testing.assert_close(w, torch.softmax(-0.3 * torch.arange(T - 1, -1, -1, dtype=F64), 0), rtol=0,
                               atol=1e-15)


@pytest.mark.parametrize("T", [1, 7, 33])
def test_limit_case_is_causal_softmax_attention(T: int) -> None:
    """Oracle 4: gamma = 0, no relative term and a window over the whole sequence give causal softmax attention;
    decay 'none' with a window is plain sliding-window attention."""
    q, k, v = _qkv(2, 2, T, 12)
    want = softmax_attention(q, k, v, mask=causal(), impl="reference")
    for decay in ("multiplicative", "additive", "none"):
        for impl in ("reference", "banded"):
            got = decayed_window_attention(q, k, v, lookback=T, decay=decay, gamma=0.0, impl=impl)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    plain = softmax_attention(q, k, v, mask=sliding_window(4), impl="reference")
    torch.testing.assert_close(decayed_window_attention(q, k, v, lookback=3, decay="none", gamma=0.0), plain,
                               rtol=0, atol=1e-10)


def test_relative_term_equals_q_dot_k_plus_r_and_is_shift_invariant() -> None:
    """Oracle 5: the gathered table equals the dense q . (k + r_{i-j}) scores; shifting the sequence leaves the
    weights inside matching windows unchanged (no absolute positions)."""
    T, D, lb = 12, 6, 4
    q, k, _ = _qkv(1, 2, T, D)
    r = sinusoidal_offsets(lb + 1, D, dtype=F64)
    mod = DecayScoreMod(decay="none", gamma=torch.zeros((), dtype=F64), rel=relative_table(q, r, 1.0))
    p = reference_decayed_probs(q, k, mask=window_mask(lb), mod=mod, scale=1.0)
    for i in range(T):
        js = list(range(max(0, i - lb), i + 1))
        scores = torch.stack([(q[:, :, i] * (k[:, :, j] + r[i - j])).sum(-1) for j in js], -1)  # (B, H, n)
        torch.testing.assert_close(p[:, :, i, js], torch.softmax(scores, -1), rtol=0, atol=1e-14)
    pad = torch.randn(1, 2, 3, D, dtype=F64)
    q2, k2 = torch.cat([pad, q], 2), torch.cat([pad, k], 2)
    mod2 = DecayScoreMod(decay="none", gamma=torch.zeros((), dtype=F64), rel=relative_table(q2, r, 1.0))
    p2 = reference_decayed_probs(q2, k2, mask=window_mask(lb), mod=mod2, scale=1.0)
    for i in range(lb, T):  # full windows: the same keys at the same offsets
        torch.testing.assert_close(p2[:, :, i + 3, i + 3 - lb : i + 4], p[:, :, i, i - lb : i + 1], rtol=0,
                                   atol=1e-14)


@pytest.mark.parametrize(("T", "S", "R", "q_offset", "kv_start"),
                         [(1, 1, 1, 0, 0), (7, 7, 3, 0, 0), (5, 12, 4, 7, 0), (1, 9, 20, 40, 32), (6, 6, 20, 0, 0),
                          (4, 10, 5, 3, 0), (3, 5, 2, 0, 4)])
def test_dense_relative_term_equals_the_reference_gather(T: int, S: int, R: int, q_offset: int, kv_start: int) -> None:
    """The dense form's gathered relative term puts ``rel[b, h, i, d]`` at ``(i, j)`` with
    ``d = (q_offset + i) - (kv_start + j)`` and 0 outside ``0 .. R - 1``, as the reference's gather does, forward
    and backward; the cases cover a table wider and narrower than the keys, decoding offsets and future keys."""
    from attnlab.ops.decayed.dense import relative_term

    rel = torch.randn(2, 3, T, R, dtype=F64, requires_grad=True)
    got = relative_term(rel, S, q_offset=q_offset, kv_start=kv_start)
    want = torch.zeros(2, 3, T, S, dtype=F64)
    for i in range(T):
        for j in range(S):
            d = (q_offset + i) - (kv_start + j)
            if 0 <= d < R:
                want[:, :, i, j] = rel[:, :, i, d].detach()
    assert got.shape == (2, 3, T, S)
    assert torch.equal(got.detach(), want)
    w = torch.randn(2, 3, T, S, dtype=F64)
    (grad,) = torch.autograd.grad((got * w).sum(), [rel])
    want_grad = torch.zeros_like(grad)
    for i in range(T):
        for j in range(S):
            d = (q_offset + i) - (kv_start + j)
            if 0 <= d < R:
                want_grad[:, :, i, d] += w[:, :, i, j]
    assert torch.equal(grad, want_grad)


@pytest.mark.parametrize("decay", ["multiplicative", "additive", "none"])
def test_dense_form_with_offsets_and_rows_without_keys(decay: str) -> None:
    """Called directly (the public function only passes keys that end at the last query), the dense form equals the
    reference, outputs and gradients, with decoding offsets, future keys and query rows that see no key at all
    (those give 0, not NaN)."""
    from attnlab.ops.decayed.dense import dense_decayed_attention
    from attnlab.ops.decayed.reference import reference_decayed_attention

    for T, S, q_offset, kv_start, lookback in [(1, 17, 100, 84, 16), (5, 9, 3, 6, 2), (4, 6, 0, 0, 2)]:
        q = torch.randn(2, 3, T, 8, dtype=F64, requires_grad=True)
        k, v = (torch.randn(2, 3, S, 8, dtype=F64, requires_grad=True) for _ in range(2))
        rel = torch.randn(2, 3, T, lookback + 1, dtype=F64, requires_grad=True)
        gamma = torch.tensor(0.3, dtype=F64, requires_grad=True)
        mask = window_mask(lookback, kv_start=kv_start)
        res = {}
        for name, form in (("reference", reference_decayed_attention), ("dense", dense_decayed_attention)):
            mod = DecayScoreMod(decay=decay, gamma=gamma, rel=rel, q_offset=q_offset, kv_start=kv_start)
            o = form(q, k, v, mask=mask, mod=mod, scale=0.3)
            w = torch.randn(o.shape, dtype=F64, generator=torch.Generator().manual_seed(3))
            res[name] = (o, *torch.autograd.grad((o * w).sum(), [q, k, v, rel, gamma], allow_unused=True))
        assert bool(torch.isfinite(res["dense"][0]).all())
        for got, want in zip(res["dense"], res["reference"]):
            if want is None:
                assert got is None or float(got.abs().max()) == 0.0
            else:
                torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        if (T, S, q_offset, kv_start) == (5, 9, 3, 6):  # queries at 3..7, keys at 6..14: those at 3, 4, 5 see none
            out = res["dense"][0]
            assert bool((out[:, :, :3] == 0).all()) and bool((out[:, :, 3:].abs().sum(-1) > 0).all())


def test_banded_memory_is_linear_in_length() -> None:
    """Oracle 8 (memory part, measured without timing): the banded form's largest intermediate grows like T, the
    reference's like T^2 (the band holds T * (lookback + 1) scores)."""
    sizes = []
    for T in (64, 128, 256):
        q, k, v = _qkv(1, 1, T, 4)
        with torch.profiler.profile(profile_memory=True) as prof:
            decayed_window_attention(q, k, v, lookback=16, impl="banded")
        sizes.append(max(e.cpu_memory_usage for e in prof.key_averages()))
    assert sizes[2] / sizes[0] < 4.5  # linear: x4 (quadratic would be x16)


def test_errors_name_the_argument() -> None:
    q, k, v = _qkv(1, 1, 5, 4)
    with pytest.raises(ValueError, match="lookback must be an int >= 0"):
        decayed_window_attention(q, k, v, lookback=-1)
    with pytest.raises(ValueError, match="decay must be one of"):
        decayed_window_attention(q, k, v, lookback=2, decay="linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gamma must be"):
        decayed_window_attention(q, k, v, lookback=2, gamma=-0.1)
    with pytest.raises(ValueError, match=r"impl='sdpa' supports decay='additive' or 'none'"):
        decayed_window_attention(q, k, v, lookback=2, impl="sdpa")
    with pytest.raises(ValueError, match="impl must be one of"):
        decayed_window_attention(q, k, v, lookback=2, impl="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"rel must be None or a tensor \(B=1, H=1, T=5, R >= 1\)"):
        decayed_window_attention(q, k, v, lookback=2, rel=torch.zeros(1, 1, 4, 3, dtype=F64))
    with pytest.raises(ValueError, match="the keys must end at the last query"):
        decayed_window_attention(q, k, v, lookback=2, q_offset=3)
    qg = q.clone().requires_grad_()
    with pytest.raises(ValueError, match="impl='flex' has no backward pass on CPU"):
        decayed_window_attention(qg, k, v, lookback=2, impl="flex")
