"""The six "Deconstructing Attention" variants (spec shared/specs/deconstructing.md, sections 3 and 9): the oracles
of spec section 9 that concern the layers and the LM, in float64 on CPU (tolerance ~1e-10 for exact identities)."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.layers import registry
from attnlab.layers.deconstructed import DECON_MECHANISMS, MixerInputs
from attnlab.layers.deconstructed.fixed_map import FixedMapAttention, standalone_eps
from attnlab.models import LM, LMConfig
from attnlab.models.common import RMSNorm
from attnlab.ops.linear.feature_maps import taylor
from attnlab.train.checkpoint import load_model_weights, save_checkpoint

TOL = 1e-10
D_MODEL, N_HEADS = 24, 2  # head_dim 12 (the spec's awkward d_h)
FIXED = ("decon_rndembqk", "decon_fixedseqqk")


def layer(name: str, seed: int = 0, **options) -> torch.nn.Module:
    """The layer as an LM builds it (RoPE on where the config has it), float64, eval mode."""
    torch.manual_seed(seed)
    opts = options if name == "decon_mlp" else {"rope": True, **options}
    return registry.build(name, d_model=D_MODEL, n_heads=N_HEADS, **opts).double().eval()


def rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def model_inputs(name: str, x: torch.Tensor, seed: int = 2) -> MixerInputs | None:
    """What a model would pass a layer: a fixed stream of 100 rows, or token embeddings, and a pre-norm."""
    norm = RMSNorm(D_MODEL).double()
    if name in FIXED:
        return MixerInputs(fixed_hidden=rand(100, D_MODEL, seed=seed), norm=norm)
    if name == "decon_staticembqk":
        return MixerInputs(token_emb=rand(*x.shape, seed=seed), norm=norm)
    return None


def call(lyr, name, x, inputs=None, **kw):
    return lyr(x, inputs=inputs, **kw) if inputs is not None else lyr(x, **kw)


def lm(name: str, schedule: str = "uniform", *, seed: int = 0, n_layers: int = 4, context_len: int = 16,
       options: dict | None = None) -> LM:
    torch.manual_seed(seed)
    cfg = LMConfig(vocab_size=50, n_layers=n_layers, d_model=D_MODEL, n_heads=N_HEADS, context_len=context_len,
                   attention=name, schedule=schedule, attention_options={name: options} if options else {})
    return LM(cfg).double().eval()


# ------------------------------------------------------------------------------------------------- registry
def test_all_six_registered_with_caches() -> None:
    assert set(DECON_MECHANISMS) <= set(registry.names())
    for name in DECON_MECHANISMS:
        spec = registry.get(name)
        assert spec.causal and spec.cache is not None


@pytest.mark.parametrize("name", DECON_MECHANISMS)
@pytest.mark.parametrize("T", [1, 7, 63, 100])
def test_shape(name: str, T: int) -> None:  # oracle 1
    lyr = layer(name)
    x = rand(2, T, D_MODEL)
    with torch.no_grad():
        assert call(lyr, name, x, model_inputs(name, x)).shape == (2, T, D_MODEL)
        assert lyr(x).shape == (2, T, D_MODEL)  # standalone (verify, bench)


@pytest.mark.parametrize("name", FIXED)
def test_fixed_sequence_shorter_than_input_is_refused(name: str) -> None:  # oracle 1
    lyr = layer(name)
    x = rand(1, 12, D_MODEL)
    with pytest.raises(ValueError, match=r"position 12.*L_max=10"):
        lyr(x, inputs=MixerInputs(fixed_hidden=rand(10, D_MODEL)))


# ---------------------------------------------------------------------------------------- causality, prefix
@pytest.mark.parametrize("name", DECON_MECHANISMS)
@pytest.mark.parametrize("standalone", [False, True])
def test_causality_by_perturbation_and_prefix(name: str, standalone: bool) -> None:  # oracles 3, 5
    lyr = layer(name)
    x = rand(2, 13, D_MODEL)
    inp = None if standalone else model_inputs(name, x)
    with torch.no_grad():
        y = call(lyr, name, x, inp)
        for t in (0, 5, 11):
            x2 = x.clone()
            x2[:, t + 1:] = 5 * rand(2, 12 - t, D_MODEL, seed=9)
            inp2 = inp
            if inp is not None and inp.token_emb is not None:  # the token (embedding) changes with the input
                e2 = inp.token_emb.clone()
                e2[:, t + 1:] = rand(2, 12 - t, D_MODEL, seed=10)
                inp2 = MixerInputs(token_emb=e2, norm=inp.norm)
            y2 = call(lyr, name, x2, inp2)
            assert (y2[:, : t + 1] - y[:, : t + 1]).abs().max() <= TOL
            assert (y2[:, t + 1:] - y[:, t + 1:]).abs().max() > 1e-6  # the perturbation does reach later outputs
        inp7 = inp if inp is None or inp.token_emb is None else MixerInputs(token_emb=inp.token_emb[:, :7], norm=inp.norm)
        assert (call(lyr, name, x[:, :7], inp7) - y[:, :7]).abs().max() <= TOL


@pytest.mark.parametrize("name", DECON_MECHANISMS)
@pytest.mark.parametrize("schedule", ["uniform", "alternate"])
def test_lm_causality_and_batch_independence(name: str, schedule: str) -> None:  # oracle 3, full LM
    m = lm(name, schedule)
    idx = torch.randint(50, (4, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = m(idx)
        idx2 = idx.clone()
        idx2[:, 6:] = (idx2[:, 6:] + 7) % 50
        y2 = m(idx2)
        assert (y2[:, :6] - y[:, :6]).abs().max() <= TOL
        assert (y2[:, 6:] - y[:, 6:]).abs().max() > 1e-6
        assert (m(idx[1:2]) - y[1:2]).abs().max() <= TOL  # batch of 1 == batch of 4


# ---------------------------------------------------------------------------------------------------- MLP
def test_mlp_has_no_cross_position_dependence() -> None:  # oracle 8
    lyr = layer("decon_mlp")
    x = rand(1, 7, D_MODEL)
    jac = torch.autograd.functional.jacobian(lambda t: lyr(t), x)  # (1, 7, C, 1, 7, C)
    per_pos = jac.abs().amax(dim=(0, 2, 3, 5))  # (7, 7): |d out_i / d in_j|
    off = per_pos - torch.diag(torch.diag(per_pos))
    assert off.max() == 0.0 and torch.diag(per_pos).min() > 0


def test_uniform_mlp_lm_is_a_bigram_model() -> None:  # oracle 8: position i's logits from token i alone
    m = lm("decon_mlp")
    a = torch.randint(50, (1, 10), generator=torch.Generator().manual_seed(4))
    b = torch.randint(50, (1, 10), generator=torch.Generator().manual_seed(5))
    b[0, -1] = a[0, -1]
    with torch.no_grad():
        assert (m(a)[0, -1] - m(b)[0, -1]).abs().max() <= TOL


@pytest.mark.parametrize("width, d", [("d", 24), ("4/3", 24)])
def test_mlp_widths_have_four_d_squared(width: str, d: int) -> None:
    n = sum(p.numel() for p in registry.build("decon_mlp", d_model=d, n_heads=2, width=width).parameters())
    assert n == 4 * d * d


def test_mlp_width_four_thirds_needs_three_to_divide_d() -> None:
    with pytest.raises(ValueError, match="width='4/3' needs d_model divisible by 3.*d_model=128"):
        registry.build("decon_mlp", d_model=128, n_heads=4, width="4/3")


# ------------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("name", DECON_MECHANISMS)
def test_parameter_parity_with_standard(name: str) -> None:  # oracle 2
    std = lm("standard").parameter_counts()
    for schedule in ("uniform", "alternate"):
        m = lm(name, schedule)
        c = m.parameter_counts()
        assert c["total"] == std["total"] and c["attention"] == std["attention"]
        per_mixer = sum(p.numel() for p in m.blocks[0].attn.parameters())
        assert per_mixer == 4 * D_MODEL * D_MODEL
        names = {n for n, _ in m.named_parameters()}
        for key in m.state_dict():
            if key.startswith("fixed_stream."):
                assert key not in names  # a buffer, not a parameter
    if name in FIXED:
        assert any(k.startswith("fixed_stream.") for k in lm(name).state_dict())


# -------------------------------------------------------------------------------- maps, row-stochastic
def _maps(name: str, x: torch.Tensor) -> torch.Tensor:
    lyr = layer(name)
    inp = model_inputs(name, x)
    if name in FIXED:
        return lyr.attention_map(x.shape[1], inp)
    if name == "decon_staticembqk":
        return lyr.attention_map(x, inp)
    return lyr.attention_map(x)


@pytest.mark.parametrize("name", ["decon_approx", "decon_nonapprox", *FIXED, "decon_staticembqk"])
def test_maps_are_row_stochastic_and_causal(name: str) -> None:  # oracle 4
    A = _maps(name, rand(2, 13, D_MODEL))
    assert A.min() >= 0
    assert A.triu(1).abs().max() == 0
    assert (A.sum(-1) - 1).abs().max() <= TOL
    if name == "decon_approx":
        assert A.tril().masked_select(torch.ones(13, 13, dtype=torch.bool).tril()).min() > 0


@pytest.mark.parametrize("name", DECON_MECHANISMS)
def test_output_is_the_map_times_values(name: str) -> None:
    """Where a map exists, O = W_O concat(A V) (A from attention_map): the maps the tests inspect are the ones used."""
    if name == "decon_mlp":
        return
    lyr = layer(name)
    x = rand(2, 9, D_MODEL)
    inp = model_inputs(name, x)
    A = _maps(name, x)
    v = lyr.v_proj(x).view(2, 9, N_HEADS, -1).transpose(1, 2)
    want = lyr.out_proj((A @ v).transpose(1, 2).reshape(2, 9, D_MODEL))
    with torch.no_grad():
        assert (call(lyr, name, x, inp) - want).abs().max() <= TOL


# ------------------------------------------------------------------------------------- fixed-map variants
@pytest.mark.parametrize("name", FIXED)
def test_fixed_map_independent_of_input(name: str) -> None:  # oracle 11: only V changes with the input
    lyr = layer(name)
    x, x2 = rand(2, 13, D_MODEL), rand(2, 13, D_MODEL, seed=7)
    inp = model_inputs(name, x)
    with torch.no_grad():
        # with a fixed map the layer is linear in its input: O(a x + b x') = a O(x) + b O(x')
        lhs = lyr(0.3 * x - 2.0 * x2, inputs=inp)
        rhs = 0.3 * lyr(x, inputs=inp) - 2.0 * lyr(x2, inputs=inp)
        assert (lhs - rhs).abs().max() <= TOL
        full = lyr.attention_map(100, inp)
        assert (lyr.attention_map(13, inp) - full[:, :, :13, :13]).abs().max() <= TOL  # top-left block


@pytest.mark.parametrize("name", FIXED)
def test_lm_fixed_stream_is_the_blocks_run_on_eps(name: str) -> None:  # oracle 12
    m = lm(name, "alternate")
    L = 10
    got = m.fixed_stream.hidden_states(m.blocks, m.tok_emb, L)
    x = (m.fixed_stream.eps[:L] if name == "decon_rndembqk" else m.tok_emb(m.fixed_stream.tokens[:L]))[None]
    for i, block in enumerate(m.blocks[:3]):
        assert (got[i] - x[0]).abs().max() <= TOL
        h = block.attn_norm(x)
        a = block.attn
        if isinstance(a, FixedMapAttention):  # in its own row the layer is Standard self-attention on h
            q, k = a.fixed_qk(h[0])
            v = a.v_proj(h).view(1, L, N_HEADS, -1).transpose(1, 2)
            s = (q @ k.transpose(-1, -2)) / math.sqrt(a.head_dim)
            s = s.masked_fill(~torch.ones(L, L, dtype=torch.bool).tril(), -math.inf)
            o = a.out_proj((s.softmax(-1) @ v).transpose(1, 2).reshape(1, L, D_MODEL))
        else:
            o = a(h)
        x = x + o
        x = x + block.mlp(block.mlp_norm(x))


def test_same_seed_gives_same_eps() -> None:  # oracle 12
    a, b = lm("decon_rndembqk", seed=0), lm("decon_rndembqk", seed=1)
    assert torch.equal(a.fixed_stream.eps, b.fixed_stream.eps)  # eps from stream_seed, not the global RNG
    assert torch.equal(a.fixed_stream.eps.double(),
                       standalone_eps(16, D_MODEL, sigma=0.02, seed=0, dtype=torch.float64).float().double())
    c = lm("decon_rndembqk", options={"stream_seed": 3})
    assert not torch.equal(a.fixed_stream.eps, c.fixed_stream.eps)


def test_fixed_stream_gradient_reaches_block_weights_only_with_grad() -> None:  # oracle 12
    grads = {}
    for grad in (True, False):
        m = lm("decon_rndembqk", options={"fixed_stream_grad": grad}).train()
        states = m.fixed_stream.hidden_states(m.blocks, m.tok_emb, 8)
        if grad:
            (g,) = torch.autograd.grad(states[1].sum(), m.blocks[0].mlp.down.weight)
            grads[grad] = g.abs().max().item()
        else:
            grads[grad] = 0.0 if not states[1].requires_grad else float("nan")
    assert grads[True] > 0 and grads[False] == 0.0


# --------------------------------------------------------------------------------------------- StaticEmbQK
def test_staticembqk_map_comes_from_embeddings_not_input() -> None:  # oracle 13
    lyr = layer("decon_staticembqk")
    x = rand(2, 13, D_MODEL)
    inp = model_inputs("decon_staticembqk", x)
    noise = rand(2, 13, D_MODEL, seed=11)
    with torch.no_grad():
        assert (lyr.attention_map(x, inp) - lyr.attention_map(noise, inp)).abs().max() == 0
        assert (lyr(x, inputs=inp) - lyr(noise, inputs=inp)).abs().max() > 1e-6  # O changes, A does not
        twin = layer("decon_staticembqk", seed=5)
        twin.q_proj.load_state_dict(lyr.q_proj.state_dict())
        twin.k_proj.load_state_dict(lyr.k_proj.state_dict())
        assert (twin.attention_map(noise, inp) - lyr.attention_map(x, inp)).abs().max() == 0  # equal W_Q, W_K


def test_staticembqk_lm_refuses_inputs_embeds() -> None:  # bad input
    m = lm("decon_staticembqk", "alternate")
    e = m.embed(torch.randint(50, (1, 5)))
    with pytest.raises(ValueError, match="layer 1 uses 'decon_staticembqk'.*pass idx \\(token ids\\), not inputs_embeds"):
        m(inputs_embeds=e)
    for name in ("decon_rndembqk", "decon_approx"):  # the others do accept embeddings
        mm = lm(name)
        with torch.no_grad():
            idx = torch.randint(50, (1, 5))
            assert (mm(inputs_embeds=mm.embed(idx)) - mm(idx)).abs().max() <= TOL


def test_layer_inputs_must_be_mixer_inputs_and_complete() -> None:
    x = rand(1, 4, D_MODEL)
    with pytest.raises(ValueError, match="inputs must be a MixerInputs"):
        layer("decon_staticembqk")(x, inputs={"token_emb": x})
    with pytest.raises(ValueError, match="needs inputs.token_emb"):
        layer("decon_staticembqk")(x, inputs=MixerInputs(fixed_hidden=rand(4, D_MODEL)))
    with pytest.raises(ValueError, match="needs inputs.fixed_hidden"):
        layer("decon_rndembqk")(x, inputs=MixerInputs(token_emb=x))


def test_one_model_runs_one_fixed_stream() -> None:
    cfg = LMConfig(vocab_size=50, n_layers=2, d_model=D_MODEL, n_heads=N_HEADS, context_len=8,
                   attention=["decon_rndembqk", "decon_fixedseqqk"])
    with pytest.raises(ValueError, match="layers 1 and 2 need different fixed streams"):
        LM(cfg)


def test_set_fixed_tokens() -> None:
    m = lm("decon_fixedseqqk")
    ids = torch.arange(16) % 50
    m.set_fixed_tokens(ids)
    assert torch.equal(m.fixed_stream.tokens, ids)
    with pytest.raises(ValueError, match=r"shape \(context_len=16,\)"):
        m.set_fixed_tokens(ids[:5])
    with pytest.raises(ValueError, match="decon_fixedseqqk"):
        lm("decon_rndembqk").set_fixed_tokens(ids)


# ------------------------------------------------------------------------------- frozen buffers: train, save
@pytest.mark.parametrize("name", FIXED)
def test_frozen_buffers_survive_training_and_checkpoints(name: str, tmp_path) -> None:  # oracles 2, 12
    m = lm(name).float().train()
    key = "fixed_stream.eps" if name == "decon_rndembqk" else "fixed_stream.tokens"
    before = m.state_dict()[key].clone()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
    q_before = m.blocks[0].attn.q_proj.weight.detach().clone()
    for step in range(3):
        idx = torch.randint(50, (2, 9), generator=torch.Generator().manual_seed(step))
        loss = torch.nn.functional.cross_entropy(m(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(m.state_dict()[key], before)  # frozen
    assert not torch.equal(m.blocks[0].attn.q_proj.weight, q_before)  # while the weights did train
    save_checkpoint(tmp_path, step=3, model=m, optimizer=None, state={})
    fresh = lm(name, options={"stream_seed": 7}).float()  # another seed: another buffer, until loaded
    assert not torch.equal(fresh.state_dict()[key], before)
    load_model_weights(tmp_path, fresh)
    assert torch.equal(fresh.state_dict()[key], before)  # bit for bit
    idx = torch.randint(50, (2, 9))
    with torch.no_grad():
        assert torch.equal(fresh.eval()(idx), m.eval()(idx))


# ------------------------------------------------------------------------------------ decode == parallel
@pytest.mark.parametrize("name", DECON_MECHANISMS)
@pytest.mark.parametrize("schedule", ["uniform", "alternate"])
def test_lm_decode_equals_parallel(name: str, schedule: str) -> None:  # oracle 6
    m = lm(name, schedule)
    idx = torch.randint(50, (2, 13), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        y = m(idx)
        for prefill in (1, 6):
            caches = m.new_caches(2)
            outs = [m(idx[:, :prefill], caches=caches)]
            outs += [m(idx[:, t: t + 1], caches=caches) for t in range(prefill, 13)]
            assert (torch.cat(outs, 1) - y).abs().max() <= 1e-9


@pytest.mark.parametrize("name", DECON_MECHANISMS)
def test_layer_decode_equals_parallel_with_model_inputs(name: str) -> None:  # oracle 6
    lyr = layer(name)
    x = rand(2, 11, D_MODEL)
    inp = model_inputs(name, x)
    with torch.no_grad():
        y = call(lyr, name, x, inp)
        cache = lyr.new_cache(2)
        outs = []
        for t in range(11):
            it = inp
            if inp is not None and inp.token_emb is not None:
                it = MixerInputs(token_emb=inp.token_emb[:, t: t + 1], norm=inp.norm)
            elif inp is not None and t > 0:
                it = MixerInputs(norm=inp.norm)  # later calls: the cache holds the fixed queries and keys
            outs.append(call(lyr, name, x[:, t: t + 1], it, cache=cache))
        assert (torch.cat(outs, 1) - y).abs().max() <= 1e-9
        assert cache.seq_len == 11


# --------------------------------------------------------------------------------------------- Approximate
def test_taylor_feature_product() -> None:  # oracle 9
    q, k = rand(5, 12), rand(5, 12, seed=2)
    s = (q * k).sum(-1) / math.sqrt(12)
    assert ((taylor(q) * taylor(k)).sum(-1) - (1 + s + s * s / 2)).abs().max() <= 1e-12


def test_taylor_map_matches_softmax_to_third_order() -> None:  # oracle 9: halving q divides the deviation by ~8
    x = rand(1, 9, D_MODEL)
    base = layer("decon_approx", rope=False)
    devs = []
    for scale in (0.1, 0.05):
        lyr = layer("decon_approx", rope=False)
        with torch.no_grad():
            lyr.q_proj.weight.copy_(base.q_proj.weight * scale)
            q = lyr.q_proj(x).view(1, 9, N_HEADS, -1).transpose(1, 2)
            k = lyr.k_proj(x).view(1, 9, N_HEADS, -1).transpose(1, 2)
            s = (q @ k.transpose(-1, -2)) / math.sqrt(12)
            soft = s.masked_fill(~torch.ones(9, 9, dtype=torch.bool).tril(), -math.inf).softmax(-1)
            devs.append((lyr.attention_map(x) - soft).abs().max().item())
    assert 6.0 < devs[0] / devs[1] < 10.0


@pytest.mark.parametrize("impl", ["recurrent", "parallel"])
def test_printed_form_forms_agree_and_o0_is_prefix_mean(impl: str) -> None:  # oracles 6, 9
    ref = layer("decon_approx", form="printed", impl="recurrent")
    lyr = layer("decon_approx", form="printed", impl=impl)
    x = rand(2, 13, D_MODEL).requires_grad_(True)
    y_ref, y = ref(x), lyr(x)
    assert (y - y_ref).abs().max() <= TOL
    (g_ref,) = torch.autograd.grad(y_ref.sum(), x)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert (g - g_ref).abs().max() <= 1e-9
    with torch.no_grad():
        lyr.q_proj.weight.zero_()  # q = 0: o1 = o2 = 0 (guarded denominators), the output is W_O (prefix mean of v)
        v = lyr.v_proj(x)
        mean = v.cumsum(1) / torch.arange(1, 14, dtype=torch.float64)[None, :, None]
        assert (lyr(x) - lyr.out_proj(mean)).abs().max() <= TOL


def test_printed_form_rejects_chunked() -> None:
    with pytest.raises(ValueError, match="impl='chunked' exists for form='taylor' only"):
        registry.build("decon_approx", d_model=24, n_heads=2, form="printed", impl="chunked")


# ------------------------------------------------------------------------------------------ Non-approximate
def test_nonapprox_map_formula_ratio_and_rope() -> None:  # oracle 10
    lyr = layer("decon_nonapprox")
    x = rand(2, 9, D_MODEL)
    A = lyr.attention_map(x)
    q = torch.nn.functional.silu(lyr.q_proj(x)).view(2, 9, N_HEADS, -1).transpose(1, 2)
    k = lyr.k_proj(x).view(2, 9, N_HEADS, -1).transpose(1, 2)
    s = (q * k).sum(-1) / math.sqrt(12)  # (B, H, T)
    for i in range(9):
        want = torch.exp(s[..., : i + 1]) / torch.exp(s[..., : i + 1]).sum(-1, keepdim=True)
        assert (A[..., i, : i + 1] - want).abs().max() <= TOL
    for i in range(3, 9):  # A[i, j] / A[i, k] = exp(s_j - s_k) for every i >= max(j, k)
        assert (A[..., i, 1] / A[..., i, 2] - torch.exp(s[..., 1] - s[..., 2])).abs().max() <= 1e-9
    off = layer("decon_nonapprox")
    off.rope = False
    with torch.no_grad():
        assert (off(x) - lyr(x)).abs().max() <= TOL  # RoPE cancels in q_j . k_j


def test_nonapprox_recurrence_is_stable_for_huge_scores() -> None:  # oracle 10
    from attnlab.layers.deconstructed.nonapprox import nonapprox_parallel, nonapprox_recurrent
    s = torch.tensor([[[1e3, -1e3, 5e2, 1e3, -7e2]]], dtype=torch.float64)
    v = rand(1, 1, 5, 4)
    st = (torch.zeros(1, 1, 4, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64),
          torch.full((1, 1), -math.inf, dtype=torch.float64))
    out, _ = nonapprox_recurrent(s, v, st)
    assert torch.isfinite(out).all()
    assert (out - nonapprox_parallel(s, v)).abs().max() <= TOL


# ------------------------------------------------------------------------------------------------ layouts
def test_layouts_reproduce_table_11_for_24_layers() -> None:  # oracle 14 (spec 4.2; paper Appx P Tbl. 11)
    from attnlab.models.stack import standard_layers
    want = {"even": list(range(2, 25, 2)), "odd": list(range(1, 24, 2)), "top": list(range(1, 13)),
            "middle": [*range(1, 7), *range(19, 25)], "bottom": list(range(13, 25)),
            "quarter": [4, 8, 12, 16, 20, 24], "first": [1], "last": [24], "bilateral": [1, 24]}
    for layout, layers in want.items():
        assert standard_layers(layout, 24) == layers, layout
    assert standard_layers("quarter", 8) == [4, 8] and standard_layers("middle", 8) == [1, 2, 7, 8]


def test_layout_schedules_in_the_lm_and_their_errors() -> None:  # oracle 14, bad input
    cfg = LMConfig(vocab_size=50, n_layers=8, d_model=D_MODEL, n_heads=N_HEADS, attention="decon_nonapprox",
                   schedule="quarter")
    assert [i + 1 for i, m in enumerate(cfg.layer_mechanisms()) if m == "standard"] == [4, 8]
    even = LMConfig(vocab_size=50, n_layers=8, d_model=D_MODEL, n_heads=N_HEADS, attention="decon_mlp", schedule="even")
    alt = LMConfig(vocab_size=50, n_layers=8, d_model=D_MODEL, n_heads=N_HEADS, attention="decon_mlp",
                   schedule="alternate")
    assert even.layer_mechanisms() == alt.layer_mechanisms()  # Hybrid = alternate = "even"
    with pytest.raises(ValueError, match=r"layout 'middle' .* needs n_layers divisible by 4, got n_layers=6"):
        LMConfig(vocab_size=50, n_layers=6, d_model=D_MODEL, n_heads=N_HEADS, attention="decon_mlp", schedule="middle")
    with pytest.raises(ValueError, match="schedule must be one of"):
        LMConfig(vocab_size=50, n_layers=8, d_model=D_MODEL, n_heads=N_HEADS, attention="decon_mlp", schedule="sideways")
