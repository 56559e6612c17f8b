"""Linear attention: parallel == chunked == recurrent (outputs and gradients), segmented == whole,
causality, GQA, and the recurrent specification against the formula written out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.ops.linear import LinearState, feature_dim, get_feature_map, linear_attention, linear_attention_reference

F64 = torch.float64
MAPS = ("elu1", "relu", "taylor")
TOL = 1e-10  # float64, exact-math equivalence (observed errors ~1e-15)


def make(B=2, H=4, H_kv=2, T=13, S=None, D=12, Dv=5, fmap="elu1", state=True, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    S = T if S is None else S
    q = torch.randn(B, H, T, D, generator=g, dtype=dtype)
    k = torch.randn(B, H_kv, S, D, generator=g, dtype=dtype)
    v = torch.randn(B, H_kv, S, Dv, generator=g, dtype=dtype)
    init = None
    if state:
        Fd = feature_dim(fmap, D)
        # a state that earlier keys could have produced: z > 0 keeps the normaliser healthy for every map
        kv0 = torch.randn(B, H, Fd, Dv, generator=g, dtype=dtype)
        z0 = torch.rand(B, H, Fd, generator=g, dtype=dtype) + 0.5
        init = LinearState(kv0, z0)
    return q, k, v, init


def run_with_grads(impl, q, k, v, init, **kw):
    """Output, final state and the gradients of q, k, v, kv0, z0 for fixed random cotangents."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    st_leaves = None if init is None else [t.detach().clone().requires_grad_(True) for t in init]
    out, state = linear_attention(*leaves, initial_state=None if st_leaves is None else LinearState(*st_leaves),
                                  impl=impl, **kw)
    g = torch.Generator().manual_seed(123)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
    loss = loss + (state.kv * torch.randn(state.kv.shape, generator=g, dtype=out.dtype)).sum()
    loss = loss + (state.z * torch.randn(state.z.shape, generator=g, dtype=out.dtype)).sum()
    all_leaves = leaves + (st_leaves or [])
    grads = torch.autograd.grad(loss, all_leaves)
    return out.detach(), state, grads


def assert_same(a, b, tol, what):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("fmap", MAPS)
@pytest.mark.parametrize("T", [1, 7, 13, 63])
def test_forms_agree_outputs_and_grads(T: int, fmap: str, causal: bool) -> None:
    # D=12, Dv=5 != D, GQA (H=4, H_kv=2), with an initial state so its gradient is checked too
    q, k, v, init = make(T=T, fmap=fmap, state=True, seed=T)
    kw = dict(feature_map=fmap, causal=causal)
    ref_out, ref_state, ref_grads = run_with_grads("recurrent", q, k, v, init, **kw)
    cases = [("parallel", 64)] + [("chunked", c) for c in (1, 4, 5, 16, 64)]
    for impl, c in cases:
        out, state, grads = run_with_grads(impl, q, k, v, init, chunk_size=c, **kw)
        assert_same(out, ref_out, TOL, f"{impl}(chunk={c}) out")  # float64: 1e-10
        assert_same(state.kv, ref_state.kv, TOL, f"{impl}(chunk={c}) state.kv")
        assert_same(state.z, ref_state.z, TOL, f"{impl}(chunk={c}) state.z")
        for name, ga, gb in zip(("q", "k", "v", "kv0", "z0"), grads, ref_grads):
            assert_same(ga, gb, TOL, f"{impl}(chunk={c}) grad {name}")  # float64: 1e-10


@pytest.mark.parametrize("fmap", MAPS)
def test_forms_agree_without_initial_state(fmap: str) -> None:
    q, k, v, _ = make(T=11, fmap=fmap, state=False, H=3, H_kv=1, seed=5)
    ref_out, ref_state, ref_grads = run_with_grads("recurrent", q, k, v, None, feature_map=fmap)
    for impl, c in (("parallel", 64), ("chunked", 3), ("chunked", 11), ("chunked", 4)):
        out, state, grads = run_with_grads(impl, q, k, v, None, feature_map=fmap, chunk_size=c)
        assert_same(out, ref_out, TOL, impl)  # float64: 1e-10
        assert_same(state.kv, ref_state.kv, TOL, impl)
        for ga, gb in zip(grads, ref_grads):
            assert_same(ga, gb, TOL, impl)


def brute_force(q, k, v, fmap, causal, init, eps):
    """The formula written out with explicit sums over (t, j): an independent check of the specification."""
    phi = get_feature_map(fmap)
    B, H, T, _ = q.shape
    group = H // k.shape[1]
    out = torch.zeros(B, H, T, v.shape[-1], dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            hk = h // group
            for t in range(T):
                fq = phi(q[b, h, t])
                keys = range(t + 1) if causal else range(k.shape[2])
                num = sum(torch.dot(fq, phi(k[b, hk, j])) * v[b, hk, j] for j in keys)
                den = sum(torch.dot(fq, phi(k[b, hk, j])) for j in keys)
                if init is not None:
                    num = num + fq @ init.kv[b, h]
                    den = den + fq @ init.z[b, h]
                out[b, h, t] = num / (den + eps)
    return out


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("fmap", MAPS)
def test_specification_matches_formula(fmap: str, causal: bool) -> None:
    q, k, v, init = make(B=1, H=2, H_kv=1, T=5, D=3, Dv=2, fmap=fmap, state=True, seed=9)
    out, _ = linear_attention_reference(*_features(q, k, v, fmap), init, causal=causal, eps=1e-3)
    want = brute_force(q, k, v, fmap, causal, init, eps=1e-3)
    assert_same(out, want, TOL, "reference vs formula")
    for impl in ("recurrent", "parallel", "chunked"):
        got, _ = linear_attention(q, k, v, feature_map=fmap, causal=causal, initial_state=init, impl=impl,
                                  chunk_size=2, eps=1e-3)
        assert_same(got, want, TOL, f"{impl} vs formula")


def _features(q, k, v, fmap):
    phi = get_feature_map(fmap)
    group = q.shape[1] // k.shape[1]
    return phi(q), phi(k).repeat_interleave(group, 1), v.repeat_interleave(group, 1)


def test_taylor_weights_are_exp_taylor_polynomial() -> None:
    # end to end: with feature_map="taylor" the weights are exactly 1 + s + s^2/2, s = q.k/sqrt(D)
    q, k, v, _ = make(B=1, H=1, H_kv=1, T=6, D=4, Dv=3, fmap="taylor", state=False, seed=2)
    s = q @ k.transpose(-1, -2) / math.sqrt(4)  # (B, H, T, S)
    w = torch.tril(1 + s + s**2 / 2)
    want = (w @ v) / (w.sum(-1, keepdim=True) + 1e-6)
    got, _ = linear_attention(q, k, v, feature_map="taylor", impl="chunked", chunk_size=4)
    assert_same(got, want, 1e-12, "taylor vs closed form")


@pytest.mark.parametrize("impl", ["recurrent", "parallel", "chunked"])
@pytest.mark.parametrize("fmap", MAPS)
def test_segmented_with_state_equals_whole(impl: str, fmap: str) -> None:
    q, k, v, init = make(T=13, fmap=fmap, state=True, seed=3)
    whole, whole_state = linear_attention(q, k, v, feature_map=fmap, initial_state=init, impl=impl, chunk_size=4)
    for cut in (1, 5, 12):
        out1, st1 = linear_attention(q[:, :, :cut], k[:, :, :cut], v[:, :, :cut], feature_map=fmap,
                                     initial_state=init, impl=impl, chunk_size=4)
        out2, st2 = linear_attention(q[:, :, cut:], k[:, :, cut:], v[:, :, cut:], feature_map=fmap,
                                     initial_state=st1, impl=impl, chunk_size=4)
        assert_same(torch.cat([out1, out2], dim=2), whole, TOL, f"cut={cut}")  # float64: 1e-10
        assert_same(st2.kv, whole_state.kv, TOL, f"cut={cut} kv")
        assert_same(st2.z, whole_state.z, TOL, f"cut={cut} z")


def test_token_by_token_equals_whole() -> None:
    q, k, v, _ = make(T=9, fmap="taylor", state=False, seed=4)
    whole, _ = linear_attention(q, k, v, feature_map="taylor", impl="parallel")
    state, outs = None, []
    for t in range(9):  # impl="auto" picks the recurrent form for one query
        o, state = linear_attention(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1],
                                    feature_map="taylor", initial_state=state)
        outs.append(o)
    assert_same(torch.cat(outs, 2), whole, TOL, "token by token")


@pytest.mark.parametrize("impl", ["recurrent", "parallel", "chunked"])
def test_bidirectional_state_and_segments(impl: str) -> None:
    # bidirectional: the final state of two segments equals the whole; each query sees all keys + initial state
    q, k, v, init = make(T=10, fmap="elu1", state=True, seed=6)
    _, whole_state = linear_attention(q, k, v, causal=False, initial_state=init, impl=impl, chunk_size=3)
    _, st1 = linear_attention(q[:, :, :4], k[:, :, :4], v[:, :, :4], causal=False, initial_state=init, impl=impl)
    _, st2 = linear_attention(q[:, :, 4:], k[:, :, 4:], v[:, :, 4:], causal=False, initial_state=st1, impl=impl)
    assert_same(st2.kv, whole_state.kv, TOL, "kv")
    assert_same(st2.z, whole_state.z, TOL, "z")
    out, _ = linear_attention(q, k, v, causal=False, initial_state=init, impl=impl)
    k2, v2 = k.clone(), v.clone()
    v2[:, :, -1] += 1.0
    out2, _ = linear_attention(q, k2, v2, causal=False, initial_state=init, impl=impl)
    assert (out2[:, :, 0] - out[:, :, 0]).abs().max() > 1e-3  # the first query sees the last key


@pytest.mark.parametrize("impl", ["recurrent", "parallel", "chunked"])
@pytest.mark.parametrize("fmap", MAPS)
def test_causality_by_perturbation(impl: str, fmap: str) -> None:
    q, k, v, init = make(T=13, fmap=fmap, state=True, seed=7)
    out, _ = linear_attention(q, k, v, feature_map=fmap, initial_state=init, impl=impl, chunk_size=5)
    t0 = 6
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for t in (q2, k2, v2):
        t[:, :, t0 + 1 :] = torch.randn_like(t[:, :, t0 + 1 :]) * 3
    out2, _ = linear_attention(q2, k2, v2, feature_map=fmap, initial_state=init, impl=impl, chunk_size=5)
    torch.testing.assert_close(out2[:, :, : t0 + 1], out[:, :, : t0 + 1], rtol=1e-13, atol=1e-13)  # past unchanged
    assert (out2[:, :, t0 + 1 :] - out[:, :, t0 + 1 :]).abs().max() > 1e-3  # and the future did change


def test_gqa_equals_repeated_heads_and_group_convention() -> None:
    q, k, v, init = make(H=6, H_kv=2, T=8, state=True, seed=8)
    got, st = linear_attention(q, k, v, initial_state=init, impl="chunked", chunk_size=3)
    want, st_want = linear_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), initial_state=init,
                                     impl="recurrent")
    assert_same(got, want, TOL, "GQA")
    assert_same(st.kv, st_want.kv, TOL, "GQA state")
    # query head 4 uses kv head 4 // 3 = 1
    one, _ = linear_attention(q[:, 4:5], k[:, 1:2], v[:, 1:2], initial_state=LinearState(init.kv[:, 4:5],
                              init.z[:, 4:5]), impl="parallel")
    assert_same(one, got[:, 4:5], TOL, "head 4 -> kv head 1")


def test_cross_attention_bidirectional_s_ne_t() -> None:
    q, k, v, init = make(T=5, S=9, state=True, seed=10)
    ref, _ = linear_attention(q, k, v, causal=False, initial_state=init, impl="recurrent")
    for impl in ("parallel", "chunked"):
        out, _ = linear_attention(q, k, v, causal=False, initial_state=init, impl=impl, chunk_size=2)
        assert_same(out, ref, TOL, impl)


def test_relu_zero_normaliser_gives_zeros_not_nan() -> None:
    q = -torch.ones(1, 1, 3, 4, dtype=F64)  # relu(q) = 0: nothing is visible
    k = torch.randn(1, 1, 3, 4, dtype=F64)
    v = torch.randn(1, 1, 3, 2, dtype=F64)
    for impl in ("recurrent", "parallel", "chunked"):
        out, _ = linear_attention(q, k, v, feature_map="relu", impl=impl)
        assert torch.equal(out, torch.zeros_like(out))


def test_float32_and_bfloat16() -> None:
    q, k, v, init = make(T=20, state=True, seed=11, dtype=torch.float32)
    ref, _ = linear_attention(q.double(), k.double(), v.double(), initial_state=LinearState(*(t.double() for t in init)),
                              impl="recurrent")
    for impl in ("recurrent", "parallel", "chunked"):
        out, st = linear_attention(q, k, v, initial_state=init, impl=impl, chunk_size=6)
        assert out.dtype == torch.float32 and st.kv.dtype == torch.float32
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)  # float32 round-off
        outb, stb = linear_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), impl=impl, chunk_size=6,
                                     initial_state=LinearState(*(t.bfloat16() for t in init)))
        assert outb.dtype == torch.bfloat16 and stb.z.dtype == torch.bfloat16
        torch.testing.assert_close(outb.double(), ref, rtol=0.05, atol=0.05)  # bf16 inputs (8-bit mantissa)


@settings(max_examples=30, deadline=None)
@given(
    B=st.integers(1, 2), H_kv=st.integers(1, 2), group=st.integers(1, 3), T=st.integers(1, 20),
    D=st.integers(1, 6), Dv=st.integers(1, 5), chunk=st.integers(1, 9), fmap=st.sampled_from(MAPS),
    causal=st.booleans(), with_state=st.booleans(), seed=st.integers(0, 2**16),
)
def test_property_forms_agree(B, H_kv, group, T, D, Dv, chunk, fmap, causal, with_state, seed) -> None:
    q, k, v, init = make(B=B, H=H_kv * group, H_kv=H_kv, T=T, D=D, Dv=Dv, fmap=fmap, state=with_state, seed=seed)
    ref, ref_st = linear_attention(q, k, v, feature_map=fmap, causal=causal, initial_state=init, impl="recurrent")
    for impl in ("parallel", "chunked"):
        out, st_ = linear_attention(q, k, v, feature_map=fmap, causal=causal, initial_state=init, impl=impl,
                                    chunk_size=chunk)
        assert_same(out, ref, 1e-9, impl)  # float64; relu can make normalisers tiny, so 1e-9 relative
        assert_same(st_.kv, ref_st.kv, 1e-10, impl)
        assert_same(st_.z, ref_st.z, 1e-10, impl)


@settings(max_examples=20, deadline=None)
@given(T=st.integers(2, 24), cut=st.integers(1, 23), chunk=st.integers(1, 9), fmap=st.sampled_from(MAPS),
       impl=st.sampled_from(["recurrent", "parallel", "chunked"]), seed=st.integers(0, 2**16))
def test_property_segmented_equals_whole(T, cut, chunk, fmap, impl, seed) -> None:
    cut = min(cut, T - 1)
    q, k, v, init = make(B=1, H=2, H_kv=1, T=T, D=3, Dv=2, fmap=fmap, state=True, seed=seed)
    kw = dict(feature_map=fmap, impl=impl, chunk_size=chunk)
    whole, st_w = linear_attention(q, k, v, initial_state=init, **kw)
    o1, st1 = linear_attention(q[:, :, :cut], k[:, :, :cut], v[:, :, :cut], initial_state=init, **kw)
    o2, st2 = linear_attention(q[:, :, cut:], k[:, :, cut:], v[:, :, cut:], initial_state=st1, **kw)
    assert_same(torch.cat([o1, o2], 2), whole, TOL, "segmented")  # float64: 1e-10
    assert_same(st2.kv, st_w.kv, TOL, "segmented kv")


@pytest.mark.gpu
@pytest.mark.parametrize("fmap", MAPS)
def test_cuda_forms_agree_with_cpu(fmap: str) -> None:
    q, k, v, init = make(T=37, fmap=fmap, state=True, seed=12)
    ref, ref_st = linear_attention(q, k, v, feature_map=fmap, initial_state=init, impl="recurrent")
    dev = [t.cuda() for t in (q, k, v)]
    init_dev = LinearState(*(t.cuda() for t in init))
    for impl in ("recurrent", "parallel", "chunked"):
        out, st_ = linear_attention(*dev, feature_map=fmap, initial_state=init_dev, impl=impl, chunk_size=8)
        assert_same(out.cpu(), ref, TOL, f"cuda {impl}")  # float64 on CUDA: 1e-10
        assert_same(st_.kv.cpu(), ref_st.kv, TOL, f"cuda {impl} kv")


def test_auto_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    import attnlab.ops.linear.api as api

    used: list[str] = []
    for form in ("recurrent", "parallel", "chunked"):
        real = getattr(api, f"linear_attention_{form}")
        monkeypatch.setattr(api, f"linear_attention_{form}",
                            lambda *a, _r=real, _f=form, **kw: (used.append(_f), _r(*a, **kw))[1])
    q, k, v, _ = make(T=1, S=1, state=False)
    linear_attention(q, k, v)  # a causal decoding step: the recurrent form
    q5, k5, v5, _ = make(T=5, state=False)
    linear_attention(q5, k5, v5)  # training / prefill: chunked
    linear_attention(q, k5, v5, causal=False)  # one query, many keys, bidirectional: the closed form
    assert used == ["recurrent", "chunked", "chunked"]
