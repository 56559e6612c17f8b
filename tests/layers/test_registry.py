"""MechanismSpec: renamed options are refused with an error naming the new option (not a bare TypeError)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from attnlab.layers import registry
from attnlab.layers.registry import MechanismSpec


@dataclass(kw_only=True)
class _ToyConfig:
    d_model: int
    n_heads: int
    new_a: int = 1
    new_b: int = 2

    def build(self) -> None:  # not used here
        raise NotImplementedError


def _spec(**kw) -> MechanismSpec:
    return MechanismSpec(name="toy", description="toy", make_config=_ToyConfig, causal=True,
                         renamed={"old_a": ("new_a", "what a means"), "old_b": ("new_b", "what b means")}, **kw)


def test_old_option_names_the_new_one() -> None:
    spec = _spec()
    with pytest.raises(ValueError, match=r"^toy: option 'old_a' was renamed 'new_a' \(what a means\); "
                                         r"pass new_a=5 instead$"):
        spec.config(d_model=8, n_heads=2, old_a=5)
    with pytest.raises(ValueError, match=r"'old_a' was renamed 'new_a'.*\. option 'old_b' was renamed 'new_b'"):
        spec.config(d_model=8, n_heads=2, old_a=5, old_b=6)  # every renamed option is reported
    with pytest.raises(ValueError, match="'old_b' was renamed 'new_b'"):
        spec.build(d_model=8, n_heads=2, old_b=6)  # build goes through config
    assert spec.config(d_model=8, n_heads=2, new_a=5).new_a == 5
    with pytest.raises(TypeError):  # a name that never existed is still the config's own error
        spec.config(d_model=8, n_heads=2, nwe_a=5)


def test_defaults_and_verify_options_must_use_the_new_names() -> None:
    with pytest.raises(ValueError, match="toy: defaults uses the old option name 'old_a'; use 'new_a'"):
        _spec(defaults={"old_a": 3})
    with pytest.raises(ValueError, match="toy: verify_options uses the old option name 'old_b'; use 'new_b'"):
        _spec(verify_options={"old_b": 3})
    with pytest.raises(ValueError, match=r"renamed\['x'\] must be a pair \(new name, meaning\), got 'y'"):
        MechanismSpec(name="toy", description="toy", make_config=_ToyConfig, causal=True, renamed={"x": "y"})
    with pytest.raises(ValueError, match=r"renamed\['x'\] names the same option 'x'"):
        MechanismSpec(name="toy", description="toy", make_config=_ToyConfig, causal=True, renamed={"x": ("x", "")})


@pytest.mark.parametrize("name", ["castle", "castle-swl"])
def test_castle_renamed_window_and_block_size(name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name}: option 'window' was renamed 'lookahead' \(the paper's W: .*"
                                         r"current token not counted\); pass lookahead=3 instead$"):
        registry.build(name, d_model=24, n_heads=4, window=3)
    with pytest.raises(ValueError, match=rf"^{name}: option 'block_size' was renamed 'chunk_size' .*"
                                         r"pass chunk_size=16 instead$"):
        registry.get(name).config(d_model=24, n_heads=4, block_size=16)
    cfg = registry.get(name).config(d_model=24, n_heads=4, lookahead=3, chunk_size=16)
    assert (cfg.lookahead, cfg.chunk_size) == (3, 16)


def test_every_registered_spec_uses_current_names() -> None:
    # MechanismSpec.__post_init__ already refuses old names in defaults/verify_options; the old names must also not
    # be real config fields any more (a rename that left the old field behind would be ambiguous)
    for spec in registry.all_specs():
        for old, (new, _) in spec.renamed.items():
            cfg = spec.config(d_model=24, n_heads=4, **spec.verify_options)
            assert hasattr(cfg, new) and not hasattr(cfg, old), (spec.name, old, new)


def test_every_mechanism_builds_and_shows_its_fields() -> None:
    """``repr_fields`` names attributes the layer (or its config) has, and configs that build by ``layer_class``
    build their own layer."""
    from attnlab.layers import build, names

    for name in names():
        layer = build(name, d_model=12, n_heads=2)
        shown = layer.extra_repr()
        assert shown.startswith("d_model=12"), (name, shown)
        assert all(f"{field}=" in shown for field in layer.repr_fields), (name, shown)
        assert type(layer.config.build()) is type(layer), name
