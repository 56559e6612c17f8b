"""The principles view of the deconstructed variants (spec shared/specs/deconstructing.md 1.2, 3.9) and oracle 15:
Standard is the limit where every principle is on, in float64 on CPU."""

from __future__ import annotations

import pytest
import torch

from attnlab.layers import registry
from attnlab.layers.deconstructed import DECON_MECHANISMS
from attnlab.layers.deconstructed.principles import (PRINCIPLES, Principles, build_mixer, mechanism_for,
                                                     principles_of)
from attnlab.layers.mha import MultiHeadAttention
from attnlab.models import LM, LMConfig
from attnlab.models.stack import SCHEDULES

D_MODEL, N_HEADS = 24, 2  # head_dim 12


def test_every_study_mechanism_has_principles_and_round_trips() -> None:
    assert list(PRINCIPLES) == ["standard", *DECON_MECHANISMS]
    for name in PRINCIPLES:
        assert name in registry.names()
        assert mechanism_for(principles_of(name)) == name
    # each variant relaxes exactly one principle, and the one of spec 1.2
    relaxed = {n: principles_of(n).relaxed() for n in DECON_MECHANISMS}
    assert relaxed == {"decon_mlp": ("token_mixing",), "decon_approx": ("form",), "decon_nonapprox": ("form",),
                       "decon_rndembqk": ("seq_dependent",), "decon_fixedseqqk": ("seq_dependent",),
                       "decon_staticembqk": ("qk_source",)}
    assert Principles().relaxed() == () and Principles().label() == "all on"
    assert principles_of("decon_mlp").label() == "no token mixing"
    assert principles_of("decon_approx").label() == "form: approximate"


def test_all_principles_on_is_standard() -> None:
    assert mechanism_for(Principles()) == "standard"
    assert mechanism_for(Principles(token_mixing=True, form="softmax", seq_dependent=True,
                                    qk_source="current")) == "standard"


@pytest.mark.parametrize("rope", [False, True])
def test_all_on_builds_the_standard_mixer_itself(rope: bool) -> None:  # oracle 15
    torch.manual_seed(5)
    got = build_mixer(Principles(), d_model=D_MODEL, n_heads=N_HEADS, rope=rope).double().eval()
    torch.manual_seed(5)
    want = registry.build("standard", d_model=D_MODEL, n_heads=N_HEADS, rope=rope).double().eval()
    assert type(got) is type(want) is MultiHeadAttention
    assert repr(got.config) == repr(want.config)  # (a Mask compares by identity)
    sd_got, sd_want = got.state_dict(), want.state_dict()
    assert list(sd_got) == list(sd_want)
    assert all(torch.equal(sd_got[k], sd_want[k]) for k in sd_want)  # same initialisation under the same seed
    x = torch.randn(3, 7, D_MODEL, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(got(x), want(x))  # same output, bit for bit


@pytest.mark.parametrize("name", DECON_MECHANISMS)
def test_build_mixer_builds_each_variant(name: str) -> None:
    torch.manual_seed(0)
    got = build_mixer(principles_of(name), d_model=D_MODEL, n_heads=N_HEADS)
    torch.manual_seed(0)
    want = registry.build(name, d_model=D_MODEL, n_heads=N_HEADS)
    assert type(got) is type(want)
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), want.state_dict().values()))


def _lm(attention, schedule: str) -> LM:
    torch.manual_seed(3)
    cfg = LMConfig(vocab_size=40, n_layers=8, d_model=D_MODEL, n_heads=N_HEADS, context_len=16,
                   attention=attention, schedule=schedule)
    return LM(cfg).double().eval()


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_all_standard_layout_is_the_uniform_standard_lm(schedule: str) -> None:  # oracle 15
    """Every schedule and layout of the all-on mechanism (and an explicit list of it) is the uniform Standard LM:
    the same state dict and the same logits, bit for bit."""
    ref = _lm("standard", "uniform")
    idx = torch.randint(40, (2, 13), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ref(idx)
    for attention in (mechanism_for(Principles()), [mechanism_for(Principles())] * 8):
        m = _lm(attention, schedule)
        assert m.mechanisms == ["standard"] * 8
        sd, sd_ref = m.state_dict(), ref.state_dict()
        assert list(sd) == list(sd_ref)
        assert all(torch.equal(sd[k], sd_ref[k]) for k in sd_ref)
        with torch.no_grad():
            assert torch.equal(m(idx), want)


def test_contradictory_or_unknown_principles_are_refused() -> None:
    with pytest.raises(ValueError, match="token_mixing=False leaves no map"):
        Principles(token_mixing=False)
    with pytest.raises(ValueError, match="seq_dependent=False contradicts qk_source='current'"):
        Principles(seq_dependent=False)
    with pytest.raises(ValueError, match="seq_dependent=True contradicts qk_source='fixed_text'"):
        Principles(qk_source="fixed_text")
    with pytest.raises(ValueError, match="form must be one of"):
        Principles(form="linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="qk_source must be one of"):
        Principles(qk_source="previous")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no mechanism relaxes form, qk_source together"):
        mechanism_for(Principles(form="approximate", qk_source="static_embeddings"))
    with pytest.raises(ValueError, match="'castle' has no principles view; known: standard, decon_mlp"):
        principles_of("castle")
    with pytest.raises(ValueError, match="principles must be a Principles"):
        mechanism_for("standard")  # type: ignore[arg-type]
