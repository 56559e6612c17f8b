"""Light future-aware attention (spec future_mask.md section 4): the SDPA-bias form against the float64 reference,
the invariants L1-L3, L5, L6, the lse_mass oracle, batch and padding invariance, the extra score work, errors."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import attnlab.ops.future.api as api
from attnlab.masks import causal, key_padding
from attnlab.ops.future import NO_VISUAL_WARNING, light_future_attention
from attnlab.ops.softmax import softmax_attention

f64 = torch.float64
B, H, HKV, L, D = 2, 4, 2, 11, 6


def _qkv(seed: int = 0, b: int = B, length: int = L, requires_grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, H, length, D, generator=g, dtype=f64)
    k = torch.randn(b, HKV, length, D, generator=g, dtype=f64)
    v = torch.randn(b, HKV, length, D, generator=g, dtype=f64)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def _layout(length: int = L) -> torch.Tensor:
    """Sample 0: sink, text, image 2..4, text, image 7..8, text; sample 1: sink, image 1..5, text after."""
    iv = torch.zeros(2, length, dtype=torch.bool)
    iv[0, 2:5] = True
    iv[0, 7:9] = True
    iv[1, 1:6] = True
    return iv


def _padding() -> torch.Tensor:
    keep = torch.ones(2, L, dtype=torch.bool)
    keep[0, -1] = False  # right padding (a "future" key mu would admit)
    return keep


@pytest.fixture(autouse=True)
def _fresh_warning(monkeypatch):
    monkeypatch.setattr(api, "_said_no_visual", False)


GRID = [dict(mu=mu, pool=pool, pool_size=k, n_slots=1, reduce=red) for mu, pool, k, red
        in itertools.product(("f", "v2v", "v2t"), ("max", "avg"), (1, 3, 7), ("max", "mean", "lse"))]
GRID += [dict(mu="f", pool=pool, pool_size=3, n_slots=2, reduce=red, slots_start=1)
         for pool, red in itertools.product(("max", "avg"), ("max", "mean", "lse"))]
GRID += [dict(mu=mu, merge_mode="lse_mass", pool_size=3) for mu in ("f", "v2t")]


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])  # unpadded: SDPA's is_causal path
@pytest.mark.parametrize("opts", GRID, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_sdpa_equals_reference_outputs_and_gradients(opts, padded):
    opts = dict(opts)
    iv = _layout()
    if opts.pop("slots_start", None):  # two sink slots need two real positions before the first image
        iv[1, 1] = False
    ref_in, fast_in = _qkv(requires_grad=True), _qkv(requires_grad=True)
    keep = _padding() if padded else None
    ref = light_future_attention(*ref_in, is_visual=iv, key_valid=keep, impl="reference", **opts)
    fast = light_future_attention(*fast_in, is_visual=iv, key_valid=keep, impl="sdpa", **opts)
    torch.testing.assert_close(fast, ref, atol=1e-12, rtol=0)
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(5), dtype=f64)
    (ref * w).sum().backward()
    (fast * w).sum().backward()
    for a, b in zip(fast_in, ref_in):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-11, rtol=0)


@pytest.mark.parametrize("opts", GRID[::7] + GRID[-2:], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_flex_forward_equals_reference(opts):
    """FlexAttention score_mod form, forward on CPU (torch has no CPU backward for it; gradients: GPU tier)."""
    opts = dict(opts)
    iv = _layout()
    if opts.pop("slots_start", None):
        iv[1, 1] = False
    q, k, v = _qkv()
    keep = _padding()
    with torch.no_grad():
        ref = light_future_attention(q, k, v, is_visual=iv, key_valid=keep, impl="reference", **opts)
        got = light_future_attention(q, k, v, is_visual=iv, key_valid=keep, impl="flex", **opts)
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)


def test_flex_refuses_gradients_on_cpu():
    q, k, v = _qkv(requires_grad=True)
    with pytest.raises(ValueError, match="impl='flex' has no backward pass on CPU"):
        light_future_attention(q, k, v, is_visual=_layout(), impl="flex")


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_no_visual_token_is_bitwise_causal_and_warns_once(impl):
    q, k, v = _qkv()
    explicit = causal() & key_padding(torch.ones(B, L, dtype=torch.bool))  # explicit causal, same backend (L3)
    with pytest.warns(UserWarning, match="no visual token"):
        out = light_future_attention(q, k, v, is_visual=torch.zeros(L, dtype=torch.bool), impl=impl)
    assert torch.equal(out, softmax_attention(q, k, v, mask=explicit, impl=impl))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: the second call is silent
        light_future_attention(q, k, v, is_visual=torch.zeros(B, L, dtype=torch.bool), impl=impl)
    assert "falls back to causal" in NO_VISUAL_WARNING


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
@pytest.mark.parametrize("mu", ["f", "v2v", "v2t"])
def test_text_rows_and_merge_free_rows_are_bitwise_causal(impl, mu):
    """L2: C is zero outside visual rows with an admitted future; those rows equal explicit causal bitwise."""
    q, k, v = _qkv()
    iv = _layout()
    out = light_future_attention(q, k, v, is_visual=iv, mu=mu, impl=impl)
    want = softmax_attention(q, k, v, mask=causal() & key_padding(torch.ones(B, L, dtype=torch.bool)), impl=impl)
    pos = torch.arange(L)
    rule = {"f": torch.ones_like(iv), "v2v": iv, "v2t": ~iv}[mu]
    has_future = ((pos[None, None, :] > pos[None, :, None]) & rule[:, None, :]).any(-1) & iv  # (B, L)
    same = ~has_future
    assert torch.equal(out.transpose(1, 2)[same], want.transpose(1, 2)[same])
    assert not torch.equal(out.transpose(1, 2)[has_future], want.transpose(1, 2)[has_future])
    if mu == "v2v":  # the last visual token of the last image has no later visual key
        assert not bool(has_future[0, 8]) and not bool(has_future[1, 5])


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_support_is_lower_triangular_keys_not_values(impl):
    """L1 + L5: future (and padded) values never reach an output; future keys move visual rows only."""
    q, k, v = _qkv()
    iv, keep = _layout(), _padding()
    out = light_future_attention(q, k, v, is_visual=iv, key_valid=keep, impl=impl)
    for i in range(L - 1):
        v2 = v.clone()
        v2[:, :, i + 1:] += 5.0
        v2[0, :, -1] = 7.0  # padding: invisible everywhere (finite: a NaN would reach rows through 0 * NaN)
        got = light_future_attention(q, k, v2, is_visual=iv, key_valid=keep, impl=impl)
        assert torch.equal(got[:, :, : i + 1], out[:, :, : i + 1])
    k2 = k.clone()
    k2[:, :, 9] += 3.0  # a later key (text in both samples)
    # the mean, not the default maximum, so that every admitted key counts in every visual row
    out = light_future_attention(q, k, v, is_visual=iv, key_valid=keep, pool="avg", impl=impl)
    got = light_future_attention(q, k2, v, is_visual=iv, key_valid=keep, pool="avg", impl=impl)
    moved = (got - out).abs().amax(dim=(1, 3))[:, :9] > 1e-6  # (B, 9): rows before the changed key
    assert torch.equal(moved, iv[:, :9])


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_lse_mass_with_pool_1_moves_the_future_mass_to_the_sink(impl):
    """Spec 4.5: lse_mass at k = 1 == attend with mu, then send every future key's weight to the sink's value."""
    q, k, v = _qkv(3)
    iv = _layout()
    for mu in ("f", "v2v", "v2t"):
        out = light_future_attention(q, k, v, is_visual=iv, mu=mu, merge_mode="lse_mass", pool_size=1, impl=impl)
        G = H // HKV
        kr, vr = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
        pos = torch.arange(L)
        rule = {"f": torch.ones_like(iv), "v2v": iv, "v2t": ~iv}[mu]
        future = (pos[None, None, :] > pos[None, :, None]) & rule[:, None, :] & iv[:, :, None]  # (B, L, L)
        allowed = (pos[None, :] <= pos[:, None])[None] | future
        p = torch.softmax((q @ kr.transpose(-2, -1) / D**0.5).masked_fill(~allowed[:, None], float("-inf")), -1)
        sink_mass = (p * future[:, None]).sum(-1, keepdim=True)  # (B, H, L, 1)
        want = (p * ~future[:, None]) @ vr + sink_mass * vr[:, :, :1]
        torch.testing.assert_close(out, want, atol=1e-12, rtol=0)


def test_default_pooling_is_k_invariant():
    """L6: pool=max, reduce=max, p=1: bitwise identical for every k in the reference's general pooling, and equal
    to the SDPA form's masked row maximum."""
    q, k, v = _qkv(4)
    iv, keep = _layout(), _padding()
    outs = [light_future_attention(q, k, v, is_visual=iv, key_valid=keep, pool_size=n, impl="reference")
            for n in (1, 3, 7, 25)]
    assert all(torch.equal(o, outs[0]) for o in outs[1:])
    fast = light_future_attention(q, k, v, is_visual=iv, key_valid=keep, impl="sdpa")
    torch.testing.assert_close(fast, outs[0], atol=1e-12, rtol=0)
    avg = [light_future_attention(q, k, v, is_visual=iv, pool="avg", pool_size=n, impl="reference") for n in (1, 7)]
    assert not torch.equal(avg[0], avg[1])  # average pooling is not k-invariant: the test can tell


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_batch_and_padding_invariance(impl):
    q, k, v = _qkv(6)
    iv = _layout()
    out = light_future_attention(q, k, v, is_visual=iv, mu="v2t", pool="avg", pool_size=3, impl=impl)
    for b in range(B):  # each sample alone
        alone = light_future_attention(q[b:b + 1], k[b:b + 1], v[b:b + 1], is_visual=iv[b], mu="v2t", pool="avg",
                                       pool_size=3, impl=impl)
        torch.testing.assert_close(alone, out[b:b + 1], atol=1e-13, rtol=0)
    for left in (True, False):  # sample 0 padded by 3 positions, on the left or the right
        pad = [t[:1].new_zeros(t[:1].shape[:2] + (3,) + t.shape[3:]) + 9.0 for t in (q, k, v)]
        cat = [torch.cat((p, t[:1]) if left else (t[:1], p), 2) for p, t in zip(pad, (q, k, v))]
        keep = torch.ones(1, L + 3, dtype=torch.bool)
        keep[:, slice(0, 3) if left else slice(L, L + 3)] = False
        ivp = torch.zeros(1, L + 3, dtype=torch.bool)
        ivp[:, slice(3, L + 3) if left else slice(0, L)] = iv[0]
        got = light_future_attention(*cat, is_visual=ivp, key_valid=keep, mu="v2t", pool="avg", pool_size=3,
                                     impl=impl)
        real = got[:, :, 3:] if left else got[:, :, :L]
        torch.testing.assert_close(real, out[:1], atol=1e-13, rtol=0)


def test_merge_costs_m_times_l_extra_scores():
    """The SDPA form scores only the m visual rows against the L keys (2 B H m L D extra matmul flops), plus the
    correction's two (m x p) @ (p x Dv) products per head (2 x 2 B H m p Dv, p = 1 slot)."""
    q, k, v = _qkv(7, length=32)
    iv = torch.zeros(B, 32, dtype=torch.bool)
    iv[0, 2:12] = True
    iv[1, 3:9] = True
    m = 10  # the most visual tokens of a sample: the rows the batch gathers
    with FlopCounterMode(display=False) as light:
        light_future_attention(q, k, v, is_visual=iv, impl="sdpa")
    with FlopCounterMode(display=False) as plain:
        softmax_attention(q, k, v, mask=causal() & key_padding(torch.ones(B, 32, dtype=torch.bool)), impl="sdpa")
    assert light.get_total_flops() - plain.get_total_flops() == 2 * B * H * m * 32 * D + 2 * 2 * B * H * m * 1 * D


@pytest.mark.parametrize("merge_mode", ["add_logit", "lse_mass"])
def test_sdpa_correction_stays_finite_and_exact_for_huge_merges(merge_mode):
    """Future scores of several hundred (a merge far beyond float32's exp range) and a sink holding almost no
    weight: the closed-form correction shifts its exponents, so float32 matches the float64 reference."""
    q, k, v = _qkv(11)
    iv = _layout()
    k = k.clone()
    k[:, :, -1] = 40.0 * q[:, :1, 3].mean(1, keepdim=True)  # the last (future, text) key aligns with visual rows
    opts = dict(merge_mode=merge_mode, pool_size=3, reduce="lse") if merge_mode == "lse_mass" else {}
    want = light_future_attention(q, k, v, is_visual=iv, impl="reference", **opts)
    got = light_future_attention(q.float(), k.float(), v.float(), is_visual=iv, impl="sdpa", **opts)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=2e-5)


def test_half_precision_runs_in_float32():
    q, k, v = _qkv(8)
    iv = _layout()
    want = light_future_attention(q, k, v, is_visual=iv, impl="reference")
    got = light_future_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), is_visual=iv, impl="sdpa")
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), want, atol=0.05, rtol=0.05)  # bfloat16 input rounding


def test_errors_name_the_argument():
    q, k, v = _qkv()
    iv = _layout()
    bad_first = iv.clone()
    bad_first[1, 0] = True
    with pytest.raises(ValueError, match=r"n_slots=1: sink slot at position 0 of sample 1 is not before"):
        light_future_attention(q, k, v, is_visual=bad_first)
    with pytest.raises(ValueError, match=r"n_slots=2: sink slot at position 1 of sample 1 is not before its first "
                                         r"visual token \(position 1\)"):
        light_future_attention(q, k, v, is_visual=iv, n_slots=2)
    keep = torch.ones(B, L, dtype=torch.bool)
    keep[0, 3] = False
    with pytest.raises(ValueError, match="is_visual must be False at padded positions"):
        light_future_attention(q, k, v, is_visual=iv, key_valid=keep)
    for kwargs, match in ((dict(pool_size=4), "pool_size must be an odd int"), (dict(mu="c"), "mu must be one of"),
                          (dict(pool="min"), "pool must be one of"), (dict(reduce="sum"), "reduce must be one of"),
                          (dict(merge_mode="x"), "merge_mode must be one of"), (dict(impl="dense"), "impl must be one"),
                          (dict(n_slots=0), "n_slots must be an int"),
                          (dict(merge_mode="lse_mass", reduce="max"), "lse_mass' is defined for n_slots=1 and "
                                                                      "reduce='lse'"),
                          (dict(is_visual=iv.int()), "is_visual must be a torch.bool"),
                          (dict(is_visual=iv[:, :5]), r"is_visual must have length L=11"),
                          (dict(key_valid=keep[:, :3]), "key_valid must have length L=11"),
                          (dict(key_valid=keep[:1].expand(3, L)), "key_valid must have batch size B=2")):
        with pytest.raises(ValueError, match=match):
            light_future_attention(q, k, v, **{"is_visual": iv, **kwargs})
    with pytest.raises(ValueError, match=r"v must be a floating-point tensor \(B, H_kv, L, Dv\), got \(2, 2, 11\)"):
        light_future_attention(q, k, v[..., 0], is_visual=iv)
    with pytest.raises(ValueError, match="one prefill: as many keys as queries"):
        light_future_attention(q, k[:, :, :5], v[:, :, :5], is_visual=iv)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["sdpa", "flex"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 3e-2)])
def test_cuda_fast_forms_equal_the_float64_reference(impl, dtype, tol):
    """GPU tier: SDPA with the float bias and the compiled FlexAttention score_mod on CUDA, outputs and gradients
    (through the merge terms too); tolerances of the input dtype."""
    q, k, v = _qkv(9)
    iv, keep = _layout(), _padding()
    ref_in = [t.clone().requires_grad_(True) for t in (q, k, v)]
    ref = light_future_attention(*ref_in, is_visual=iv, key_valid=keep, pool="avg", pool_size=3, impl="reference")
    cuda_in = [t.to("cuda", dtype).requires_grad_(True) for t in (q, k, v)]
    from attnlab.ops.softmax.flex import record_flex_fallbacks

    with record_flex_fallbacks() as taken:  # head dim 6: the flex path pads it to 16 (H200 run: "at least 16")
        got = light_future_attention(*cuda_in, is_visual=iv.cuda(), key_valid=keep.cuda(), pool="avg", pool_size=3,
                                     impl=impl)
    if taken:  # printed, not failed on: the uncompiled FlexAttention is exact
        print(f"[flex fallback] {impl} {dtype}: " + " | ".join(sorted(set(taken))))
    torch.testing.assert_close(got.double().cpu(), ref, atol=tol, rtol=tol)
    ref.sum().backward()
    got.float().sum().backward()
    for a, b in zip(cuda_in, ref_in):
        torch.testing.assert_close(a.grad.double().cpu(), b.grad, atol=10 * tol, rtol=10 * tol)


def test_sdpa_gradients_stay_finite_when_a_slot_weight_underflows():
    """A sink whose score is far below the row's (its causal weight underflows in float32) and huge merges: the rows
    are computed directly, and autograd through the closed form they replace yields no NaN (log space, clamped)."""
    q, k, v = _qkv(12)
    iv = _layout()
    k = k.clone()
    k[:, :, 0] = -60.0 * q[:, :1, 3].mean(1, keepdim=True)  # the sink slot: a very low score for visual rows
    k[:, :, -1] = 40.0 * q[:, :1, 3].mean(1, keepdim=True)  # a future key: a huge merge
    ref_in = [t.clone().requires_grad_() for t in (q, k, v)]
    fast_in = [t.float().clone().requires_grad_() for t in (q, k, v)]
    want = light_future_attention(*ref_in, is_visual=iv, impl="reference")
    got = light_future_attention(*fast_in, is_visual=iv, impl="sdpa")
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=2e-5)
    w = torch.randn(want.shape, generator=torch.Generator().manual_seed(3), dtype=f64)
    (want * w).sum().backward()
    (got * w.float()).sum().backward()
    for a, b in zip(fast_in, ref_in):
        assert torch.isfinite(a.grad).all()
        torch.testing.assert_close(a.grad.double(), b.grad, atol=1e-3, rtol=1e-3)
