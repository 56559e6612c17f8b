"""EncDecConfig: validation (each error names its field), stacks resolved once, the encoder padding rule, parameter
counts that add up, parity across decoder mechanisms, tied embeddings and GPT-2 init."""

from __future__ import annotations

import math

import pytest
import torch
from encdec_helpers import V, config, model

from attnlab.layers.mha import MultiHeadAttention
from attnlab.models.encdec import CROSS_SCORES, EncDecConfig, EncoderDecoder


@pytest.mark.parametrize("kw, match", [
    (dict(cross_score="bilinear"), r"cross_score must be one of \('scaled_dot', 'dot', 'general', 'additive'\), "
                                   r"got 'bilinear'"),
    (dict(decoder_attention="bidirectional"),
     r"decoder_attention: mechanism 'bidirectional' \(layer 1\) is not causal"),
    (dict(decoder_attention=["standard", "prefix-lm"], decoder_attention_options={}),
     r"decoder_attention: mechanism 'prefix-lm' \(layer 2\) is not causal"),
    (dict(encoder_attention="nope"), r"encoder_attention: layer 1 has unknown mechanism 'nope'"),
    (dict(encoder_attention=["bidirectional"]), r"encoder_attention is a list of 1 mechanism names but n_layers=2"),
    (dict(encoder_schedule="zigzag"), r"encoder_schedule must be one of \('uniform', 'alternate', 'even', .*\), got 'zigzag'"),
    (dict(decoder_attention_options={"sliding-window": {"window": 2}}),
     r"decoder_attention_options has options for 'sliding-window', which no layer uses"),
    (dict(encoder_attention="sliding-window", encoder_attention_options={"sliding-window": {"width": 2}}),
     r"encoder_attention 'sliding-window' with d_model=.*: invalid layer options .*unknown option\(s\) 'width'"),
    (dict(encoder_attention="linear", encoder_attention_options={"linear": {"causal": False}}),
     r"encoder_attention: mechanism 'linear' is not causal and its layer takes no per-call mask"),
    (dict(vocab_size=1), r"vocab_size must be an int >= 2, got 1"),
    (dict(pad_id=-1), r"pad_id must be an int >= 0, got -1"),
    (dict(pad_id=37), r"pad_id=37 must be < vocab_size=37"),
    (dict(d_model=25), r"n_heads=4 must divide d_model=25"),
    (dict(n_encoder_layers=0), r"n_encoder_layers must be an int >= 1, got 0"),
    (dict(n_decoder_layers=1.0), r"n_decoder_layers must be an int >= 1, got 1.0"),
    (dict(max_source_len=0), r"max_source_len must be an int >= 1, got 0"),
    (dict(max_target_len=None), r"max_target_len must be an int >= 1, got None"),
    (dict(head_dim=0), r"head_dim must be an int >= 1, got 0"),
    (dict(ffn_hidden=0), r"ffn_hidden must be an int >= 1, got 0"),
    (dict(dropout=1.0), r"dropout must be a float in \[0.0, 1.0\), got 1.0"),
    (dict(parity=1), r"parity must be a bool, got 1"),
    (dict(tie_embeddings="yes"), r"tie_embeddings must be a bool, got 'yes'"),
])
def test_config_errors_name_the_field(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        config(**kw)


def test_build_needs_vocab_size() -> None:
    cfg = config(vocab_size=None)
    with pytest.raises(ValueError, match="config.vocab_size is None"):
        cfg.build()
    with pytest.raises(ValueError, match="config must be an EncDecConfig, got dict"):
        EncoderDecoder({})  # type: ignore[arg-type]


def test_stacks_and_cross_config_are_resolved_once() -> None:
    cfg = config(encoder_attention="sliding-window", encoder_schedule="alternate", n_encoder_layers=3,
                 decoder_attention=["standard", "castle"], cross_score="general")
    assert cfg.encoder_stack.mechanisms == ("sliding-window", "standard", "sliding-window")
    assert cfg.decoder_stack.mechanisms == ("standard", "castle")
    m = cfg.build()
    assert m.encoder.blocks[0].attn.mask.window == 3
    cross = cfg.cross_config
    assert cross.cross and cross.mask is None and not cross.rope and cross.score == "general"
    for block in m.decoder.blocks:
        assert isinstance(block.cross, MultiHeadAttention) and block.cross.score == "general"
        assert block.cross.n_heads == 4  # cross-attention always has n_heads
    for block in m.encoder.blocks:
        assert block.cross is None
    assert m.decoder.blocks[1].attn.rope and m.encoder.blocks[1].attn.rope  # RoPE in self-attention


@pytest.mark.parametrize("enc", ["bidirectional", "prefix-lm", "standard", "linear", "castle", "sliding-window"])
def test_encoder_mechanisms_that_can_hide_padding_are_accepted(enc: str) -> None:
    config(encoder_attention=enc)


def test_to_dict_round_trip() -> None:
    cfg = config(encoder_attention=["bidirectional", "sliding-window"], cross_score="additive", dropout=0.1)
    again = EncDecConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.encoder_stack.mechanisms == cfg.encoder_stack.mechanisms


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("cross_score", CROSS_SCORES)
def test_parameter_counts_add_up(tie: bool, cross_score: str) -> None:
    m = config(tie_embeddings=tie, cross_score=cross_score, encoder_attention=["bidirectional", "sliding-window"],
               decoder_attention=["standard", "linear"]).build()
    c = m.parameter_counts()
    assert c["total"] == sum(p.numel() for p in m.parameters())
    assert c["embedding"] + c["encoder.total"] + c["decoder.total"] + c["lm_head"] == c["total"]
    assert c["encoder.total"] == sum(p.numel() for p in m.encoder.parameters())
    assert c["decoder.total"] == sum(p.numel() for p in m.decoder.parameters())
    for side in ("encoder", "decoder"):
        parts = ["attention", "mlp", "norms"] + (["cross_attention"] if side == "decoder" else [])
        assert sum(c[f"{side}.{k}"] for k in parts) == c[f"{side}.total"]
        mechs = [k for k in c if k.startswith(f"{side}.attention.")]
        assert sum(c[k] for k in mechs) == c[f"{side}.attention"]
    assert "encoder.cross_attention" not in c
    assert c["embedding"] == V * 24
    assert c["lm_head"] == (0 if tie else V * 24)
    assert (m.lm_head.weight is m.tok_emb.weight) == tie
    C, F, L = 24, m.config.resolved_ffn_hidden, 2
    assert c["encoder.mlp"] == c["decoder.mlp"] == L * 3 * C * F
    assert c["encoder.norms"] == (2 * L + 1) * C and c["decoder.norms"] == (3 * L + 1) * C
    std_cross = {"scaled_dot": 0, "dot": 0, "general": 4 * 6 * 6, "additive": 2 * 4 * 6 * 6 + 4 * 6}[cross_score]
    assert c["decoder.cross_attention"] == L * (4 * C * C + std_cross)


def test_parity_gives_equal_parameters_across_decoder_mechanisms() -> None:
    """d_model=28, n_heads=7, head_dim=4: CASTLE gets 4 heads (7 n D C parameters = 4 standard heads' 4 n D C)."""
    totals = {}
    for dec in ("standard", "sliding-window", "castle", "linear", "luong-dot", "strided"):
        m = config(d_model=28, n_heads=7, decoder_attention=dec).build()
        totals[dec] = m.parameter_counts()["total"]
    assert len(set(totals.values())) == 1, totals
    castle = config(d_model=28, n_heads=7, decoder_attention="castle").build()
    assert castle.decoder.blocks[0].attn.n_heads == 4
    no_parity = config(d_model=28, n_heads=7, decoder_attention="castle", parity=False).build()
    assert no_parity.parameter_counts()["total"] > totals["castle"]


def test_gpt2_init() -> None:
    torch.manual_seed(0)
    m = config(d_model=64, n_heads=4, n_encoder_layers=3, n_decoder_layers=5, vocab_size=300).build()
    for stack, L in ((m.encoder, 3), (m.decoder, 5)):
        resid = torch.cat([b.mlp.down.weight.flatten() for b in stack.blocks]
                          + [b.attn.out_proj.weight.flatten() for b in stack.blocks])
        assert abs(resid.std().item() - 0.02 / math.sqrt(2 * L)) < 0.15 * 0.02 / math.sqrt(2 * L)
    crosses = torch.cat([b.cross.out_proj.weight.flatten() for b in m.decoder.blocks])
    assert abs(crosses.std().item() - 0.02 / math.sqrt(10)) < 0.15 * 0.02 / math.sqrt(10)
    assert abs(m.tok_emb.weight.std().item() - 0.02) < 0.002
    assert all(torch.equal(b.attn_norm.weight, torch.ones(64)) for b in m.decoder.blocks)


def test_model_helper_is_float64_eval() -> None:
    m = model()
    assert not m.training and m.tok_emb.weight.dtype == torch.float64
