"""Presets: the published settings they copy, their derivations, and equal parameters across mechanisms."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from attnlab.models import LM
from attnlab.compare.presets import get_compare_preset, quick, tiny
from attnlab.train.presets import (
    castle_s,

    get_preset,

    shakespeare_char,
    shakespeare_char_cpu,

    wikitext2,
)


def test_shakespeare_char_is_nanogpt() -> None:
    c = shakespeare_char()
    m = c.model
    assert (m.n_layers, m.n_heads, m.d_model, m.context_len, m.dropout) == (6, 6, 384, 256, 0.2)
    assert (c.batch_size, c.steps, c.optim.lr, c.optim.min_lr_ratio, c.optim.warmup_steps) == (64, 5000, 1e-3, 0.1, 100)
    assert c.optim.betas == (0.9, 0.99) and c.data.source == "tinyshakespeare" and c.data.tokenizer == "char"


def test_cpu_variant_derives_from_it() -> None:
    c = shakespeare_char_cpu()
    m = c.model
    assert (m.n_layers, m.n_heads, m.d_model, m.context_len, m.dropout) == (4, 4, 128, 64, 0.0)
    assert (c.batch_size, c.steps, c.optim.lr) == (12, 2000, 1e-3)
    assert c.optim == shakespeare_char().optim  # only the size changes


def test_wikitext2_is_word_level() -> None:
    c = wikitext2()
    assert c.data.source == "wikitext2" and c.data.tokenizer == "word"


def test_castle_s_matches_the_paper_sizes() -> None:
    c = castle_s()
    m = c.model
    assert (m.n_layers, m.d_model, m.n_heads, m.head_dim, m.context_len) == (12, 896, 14, 64, 2048)
    base = replace(m, vocab_size=50257)
    castle = replace(m, vocab_size=50257, attention="castle")
    assert base.layer_config("standard").n_heads == 14 and castle.layer_config("castle").n_heads == 8
    with torch.device("meta"):  # count parameters without allocating them
        n_base = sum(p.numel() for p in LM(base).parameters())
        n_castle = sum(p.numel() for p in LM(castle).parameters())
    assert 150e6 < n_base < 175e6, n_base  # "160M" with the GPT-2 vocabulary, tied embeddings
    assert abs(n_castle - n_base) / n_base < 0.01


@pytest.mark.parametrize("preset", [quick, tiny])
def test_compare_presets_have_equal_parameters(preset) -> None:
    cfg = preset()
    assert {"standard", "castle", "castle-swl", "sliding-window", "linear"} <= set(cfg.variants)
    counts = {}
    for mech in cfg.variants:
        run = cfg.run_config(mech, cfg.seeds[0])
        counts[mech] = sum(p.numel() for p in LM(replace(run.model, vocab_size=65)).parameters())
        assert run.seed == cfg.seeds[0] and run.model.attention == mech
        # every run has the same token budget
        assert run.steps * run.batch_size * run.model.context_len == cfg.base.steps * cfg.base.batch_size * cfg.base.model.context_len
    ref = counts["standard"]
    assert all(abs(n - ref) / ref < 0.06 for n in counts.values()), counts
    windowed = cfg.run_config("castle-swl", 0).model.attention_options["castle-swl"]["lookahead"]
    assert windowed < cfg.base.model.context_len  # the window really limits attention


def test_quick_fits_the_cpu_budget_on_paper() -> None:
    """Sized for <= 10 minutes on 2 CPU cores: ~1M training tokens per run, five runs, tiny models."""
    q = quick()
    assert len(q.variants) * len(q.seeds) <= 10 and q.base.threads == 1
    assert q.base.steps * q.base.batch_size * q.base.model.context_len <= 1_100_000
    assert q.base.device == "cpu"


def test_unknown_preset_names_the_valid_ones() -> None:
    from attnlab.train.config import ConfigError

    with pytest.raises(ConfigError, match="unknown preset 'big'; training presets: shakespeare-char, .*quick"):
        get_preset("big")
    with pytest.raises(ConfigError, match="unknown preset 'big'"):
        get_compare_preset("big")
