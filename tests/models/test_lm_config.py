"""LMConfig: schedules, layer options, the SwiGLU default and validation messages."""

from __future__ import annotations

import pytest

from attnlab.layers import registry
from attnlab.models import LMConfig, swiglu_hidden

BASE = dict(vocab_size=50, n_layers=5, d_model=32, n_heads=4, context_len=16)
HAS_SW = "sliding-window" in registry.names()


def test_uniform_schedule() -> None:
    assert LMConfig(**BASE).layer_mechanisms() == ["standard"] * 5


def test_alternate_schedule_puts_the_variant_on_odd_layers(tiny_mechanisms: None) -> None:
    cfg = LMConfig(**BASE, attention="test-tiny", schedule="alternate")
    # layers 1, 3, 5 (1-indexed) get the variant; 2 and 4 get standard
    assert cfg.layer_mechanisms() == ["test-tiny", "standard", "test-tiny", "standard", "test-tiny"]
    m = cfg.build()
    assert m.mechanisms == cfg.layer_mechanisms()
    assert [type(b.attn).__name__ for b in m.blocks] == [
        "TinyAttention", "MultiHeadAttention", "TinyAttention", "MultiHeadAttention", "TinyAttention"
    ]


def test_explicit_list_overrides_the_schedule(tiny_mechanisms: None) -> None:
    names = ["standard", "standard", "test-tiny", "standard", "test-tiny"]
    cfg = LMConfig(**BASE, attention=names, schedule="alternate")
    assert cfg.layer_mechanisms() == names
    assert [b.mechanism for b in cfg.build().blocks] == names


@pytest.mark.skipif(not HAS_SW, reason="'sliding-window' not registered")
def test_attention_options_reach_the_layer() -> None:
    cfg = LMConfig(**BASE, attention="sliding-window", schedule="alternate",
                   attention_options={"sliding-window": {"window": 5}, "standard": {"impl": "reference"}})
    m = cfg.build()
    assert m.blocks[0].attn.mask.window == 5
    assert m.blocks[1].attn.impl == "reference"


def test_rope_and_dropout_are_passed_where_supported(tiny_mechanisms: None) -> None:
    cfg = LMConfig(**BASE, attention="test-tiny", rope_base=500.0, dropout=0.1)
    lc = cfg.layer_config("test-tiny")
    assert (lc.rope, lc.rope_base, lc.dropout, lc.head_dim) == (True, 500.0, 0.1, 8)
    off = LMConfig(**BASE, attention="test-tiny", attention_options={"test-tiny": {"rope": False}})
    assert off.layer_config("test-tiny").rope is False
    assert LMConfig(**BASE).layer_config("standard").rope is True


def test_swiglu_default_hidden() -> None:
    # 8/3 d rounded up to a multiple of 64
    assert [swiglu_hidden(d) for d in (16, 32, 128, 384, 768, 4096)] == [64, 128, 384, 1024, 2048, 10944]
    assert LMConfig(**BASE).resolved_ffn_hidden == 128
    assert LMConfig(**BASE, ffn_hidden=100).resolved_ffn_hidden == 100


def test_round_trip_through_dict(tiny_mechanisms: None) -> None:
    cfg = LMConfig(**BASE, attention=["standard", "test-tiny"] * 2 + ["standard"],
                   attention_options={"test-tiny": {"impl": "reference"}}, dropout=0.1)
    assert LMConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown config key 'n_layer'; valid keys at the top level: vocab_size, "):
        LMConfig.from_dict({**cfg.to_dict(), "n_layer": 3})
    with pytest.raises(ValueError, match="config key 'block_size' was renamed 'context_len'"):
        LMConfig.from_dict({**cfg.to_dict(), "block_size": 3})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(n_heads=3), "n_heads=3 must divide d_model=32 \\(or pass head_dim explicitly\\)"),
        (dict(n_layers=0), "n_layers must be an int >= 1, got 0"),
        (dict(vocab_size=2.5), "vocab_size must be an int >= 1, got 2.5"),
        (dict(head_dim=0), "head_dim must be an int >= 1, got 0"),
        (dict(attention="nope"), "layer 1 has unknown mechanism 'nope'; registered: .*standard, .*sliding-window"),
        (dict(attention=["standard"] * 4), "attention is a list of 4 mechanism names but n_layers=5"),
        (dict(schedule="every-third"), "schedule must be one of \\('uniform', 'alternate', 'even', .*\\), got 'every-third'"),
        (dict(dropout=1.0), "dropout must be a float in \\[0.0, 1.0\\), got 1.0"),
        (dict(rope_base=1), "rope_base must be a finite float > 1.0, got 1"),
        (dict(rope_base=float("inf")), "rope_base must be a finite float > 1.0, got inf"),
        (dict(norm_eps=0), "norm_eps must be a finite float > 0.0, got 0"),
        (dict(norm_eps=float("inf")), "norm_eps must be a finite float > 0.0, got inf"),
        (dict(ffn_hidden=-1), "ffn_hidden must be an int >= 1, got -1"),
        (dict(parity=1), "parity must be a bool, got 1"),
        (dict(attention_options={"gqa": {}}), "options for 'gqa', which no layer uses; this model uses standard"),
        (dict(attention_options={"standard": {"n_heads": 2}}), "sets n_heads, which a decoder-only LM sets for every layer"),
        (dict(attention_options={"standard": {"windw": 3}}), "attention 'standard' with d_model=.*: invalid layer options .*windw"),
        (dict(attention_options={"standard": 3}), "attention_options\\['standard'\\] must be a dict of options"),
    ],
)
def test_validation_messages(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LMConfig(**{**BASE, **overrides})


@pytest.mark.parametrize("name", [s.name for s in registry.all_specs() if not s.causal])
def test_non_causal_mechanisms_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match=f"mechanism '{name}' \\(layer 1\\) is not causal.*causal mechanisms: .*standard"):
        LMConfig(**BASE, attention=name)


def test_parity_needs_at_least_one_head(tiny_mechanisms: None) -> None:
    with pytest.raises(ValueError, match="gives 0 heads for n_heads=1"):
        LMConfig(**{**BASE, "n_heads": 1}, attention="test-tiny-4of7")


@pytest.mark.parametrize("n", [4097, 10**8, 10**11])
def test_a_huge_layer_count_is_refused_at_once(n: int) -> None:
    """Found by the fuzz test of ``train --set``: ``model.n_layers=99999999999`` used to run out of memory (and 1e8
    to take minutes) while the stack was checked layer by layer, before any error."""
    from attnlab.models.encdec import EncDecConfig
    from attnlab.models.timeseries import TransformerForecasterConfig

    with pytest.raises(ValueError, match=rf"n_layers={n} is more layers than a stack may have \(4096 at most\)"):
        LMConfig(vocab_size=8, n_layers=n)
    with pytest.raises(ValueError, match=rf"n_encoder_layers={n} is more layers"):
        EncDecConfig(vocab_size=8, n_encoder_layers=n)
    with pytest.raises(ValueError, match=rf"n_layers={n} is more layers"):
        TransformerForecasterConfig(n_layers=n)


def test_pickles_and_resolves_its_stack_again() -> None:
    """A config crosses process boundaries (a study's worker processes): its resolved stack holds mask closures,
    so it is left out of the pickle and resolved again, giving an equal config that builds the same model."""
    import pickle

    import torch

    cfg = LMConfig(**BASE, attention=["standard", "decon_mlp", "standard", "decon_nonapprox", "standard"])
    back = pickle.loads(pickle.dumps(cfg))
    assert back == cfg and back.layer_mechanisms() == cfg.layer_mechanisms()
    assert back.stack.configs.keys() == cfg.stack.configs.keys()
    torch.manual_seed(0)
    a = cfg.build()
    torch.manual_seed(0)
    b = back.build()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
