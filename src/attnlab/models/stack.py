"""Choosing the attention mechanism of every layer of a stack, shared by every model family.

A stack of ``n_layers`` residual blocks takes its self-attention from the mechanism registry
(:mod:`attnlab.layers.registry`): one name for every layer (``schedule="uniform"``), a name on the odd layers and
``"standard"`` on the even ones (``"alternate"``, counting layers from 1), one of the nine layouts of the
"Deconstructing Attention" ablation (:data:`LAYOUTS`, named by where the Standard layers go), or an explicit list.
:func:`resolve_stack` checks every name and every option and builds each distinct layer config **once**; the
models build their layers from these configs and never look a name up again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from attnlab._validation import check_int
from attnlab.layers import registry

__all__ = ["Schedule", "SCHEDULES", "LAYOUTS", "standard_layers", "ResolvedStack", "layer_mechanisms", "resolve_stack"]

Schedule = Literal["uniform", "alternate", "even", "odd", "top", "middle", "bottom", "quarter", "first", "last",
                   "bilateral"]

#: Layouts of Xue et al., "Deconstructing Attention" (arXiv:2510.11602v1), section 6 and Appx P Tbl. 11: which layers
#: (numbered from 1) are ``"standard"``; the others get the variant. The rules for ``n`` layers are the spec's
#: reconstruction from Tbl. 11's n = 24 (shared/specs/deconstructing.md 4.2): the rule, and what must divide n.
LAYOUTS: dict[str, tuple[str, int]] = {
    "even": ("i % 2 == 0", 1),              # the main hybrid, = "alternate"
    "odd": ("i % 2 == 1", 1),
    "top": ("i <= n / 2", 2),               # variant in the top half
    "middle": ("i <= n / 4 or i > 3 n / 4", 4),  # variant in the middle half
    "bottom": ("i > n / 2", 2),             # variant in the bottom half (Tbl. 11, not the prose of section 6)
    "quarter": ("i % 4 == 0", 4),           # the paper's "25%"
    "first": ("i == 1", 1),
    "last": ("i == n", 1),
    "bilateral": ("i in (1, n)", 1),
}
SCHEDULES: tuple[str, ...] = ("uniform", "alternate", *LAYOUTS)


def standard_layers(layout: str, n_layers: int) -> list[int]:
    """The layers (numbered from 1) that a :data:`LAYOUTS` layout makes ``"standard"``.

    Raises:
        ValueError: an unknown layout, or ``n_layers`` that the layout's rule does not divide into whole layers.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {tuple(LAYOUTS)}, got {layout!r}")
    rule, divisor = LAYOUTS[layout]
    n = n_layers
    if n % divisor:
        raise ValueError(f"layout {layout!r} ({rule}) needs n_layers divisible by {divisor}, got n_layers={n}")
    keep = {"even": lambda i: i % 2 == 0, "odd": lambda i: i % 2 == 1, "top": lambda i: i <= n // 2,
            "middle": lambda i: i <= n // 4 or i > 3 * n // 4, "bottom": lambda i: i > n // 2,
            "quarter": lambda i: i % 4 == 0, "first": lambda i: i == 1, "last": lambda i: i == n,
            "bilateral": lambda i: i in (1, n)}[layout]
    return [i for i in range(1, n + 1) if keep(i)]

# Options a model sets itself for every layer; they may not appear in the per-mechanism options.
OWNED = ("d_model", "n_heads", "head_dim")


@dataclass(frozen=True)
class ResolvedStack:
    """The mechanism of each layer (layer 1 first) and the validated layer config of each distinct mechanism."""

    mechanisms: tuple[str, ...]
    configs: dict[str, Any]

    def config(self, i: int) -> Any:
        """The layer config of layer ``i`` (0-based)."""
        return self.configs[self.mechanisms[i]]


def layer_mechanisms(attention: str | list[str], schedule: str, n_layers: int) -> list[str]:
    """The mechanism name of each layer, layer 1 first (see the module docstring)."""
    if isinstance(attention, (list, tuple)):
        return list(attention)
    if schedule == "alternate":  # 1-indexed: odd layers (index 0, 2, ...) get the variant, even ones "standard"
        return [attention if i % 2 == 0 else "standard" for i in range(n_layers)]
    if schedule in LAYOUTS:
        std = set(standard_layers(schedule, n_layers))
        return ["standard" if i + 1 in std else attention for i in range(n_layers)]
    return [attention] * n_layers


def resolve_stack(
    *,
    attention: str | list[str],
    schedule: str,
    n_layers: int,
    options: dict[str, dict[str, Any]],
    parity: bool,
    d_model: int,
    n_heads: int,
    head_dim: int,
    rope_base: float,
    dropout: float,
    causal: bool,
    options_name: str = "attention_options",
    owner: str = "the model",
) -> ResolvedStack:
    """Validate a stack's choice of mechanisms and build each distinct layer config once.

    Each layer gets ``d_model``, ``heads_for_parity(n_heads)`` heads under ``parity`` (else ``n_heads``) and
    ``head_dim``; then, where the mechanism's config has the field, ``rope=True``, ``rope_base`` and ``dropout``;
    then ``options[name]``, which win. With ``causal=True`` every mechanism (and its options) must be causal.

    Raises:
        ValueError: naming the layer, the mechanism or the option that cannot be used.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if isinstance(attention, (list, tuple)):
        if len(attention) != n_layers:
            raise ValueError(
                f"attention is a list of {len(attention)} mechanism names but n_layers={n_layers}; "
                "give one name per layer (or a single name and a schedule)"
            )
    elif not isinstance(attention, str):
        raise ValueError(f"attention must be a mechanism name or a list of them, got {attention!r}")
    valid = registry.names()
    mechanisms = layer_mechanisms(attention, schedule, n_layers)
    for i, name in enumerate(mechanisms):
        if not isinstance(name, str) or name not in valid:
            raise ValueError(f"attention: layer {i + 1} has unknown mechanism {name!r}; registered: {', '.join(valid)}")
        if causal and not registry.get(name).causal:
            causal_names = [n for n in valid if registry.get(n).causal]
            raise ValueError(
                f"attention: mechanism {name!r} (layer {i + 1}) is not causal, so {owner} would see the tokens it "
                f"predicts; causal mechanisms: {', '.join(causal_names)}"
            )
    if not isinstance(options, dict):
        raise ValueError(f"{options_name} must be a dict of dicts, got {options!r}")
    for name, opts in options.items():
        if name not in mechanisms:
            raise ValueError(
                f"{options_name} has options for {name!r}, which no layer uses; this model uses "
                f"{', '.join(dict.fromkeys(mechanisms))}"
            )
        if not isinstance(opts, dict):
            raise ValueError(f"{options_name}[{name!r}] must be a dict of options, got {opts!r}")
        owned = sorted(set(opts) & set(OWNED))
        if owned:
            raise ValueError(
                f"{options_name}[{name!r}] sets {', '.join(owned)}, which {owner} sets for every layer; set them on "
                "the model config instead"
            )
    configs = {
        name: _layer_config(name, options.get(name, {}), parity=parity, d_model=d_model, n_heads=n_heads,
                            head_dim=head_dim, rope_base=rope_base, dropout=dropout, causal=causal, owner=owner)
        for name in dict.fromkeys(mechanisms)
    }
    return ResolvedStack(tuple(mechanisms), configs)


def _layer_heads(name: str, n_heads: int, parity: bool) -> int:
    if not parity:
        return n_heads
    heads = registry.get(name).heads_for_parity(n_heads)
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ValueError(
            f"parity: mechanism {name!r} gives {heads!r} heads for n_heads={n_heads}; choose a larger n_heads or "
            "parity=False"
        )
    return heads


def _layer_config(name: str, user: dict[str, Any], *, parity: bool, d_model: int, n_heads: int, head_dim: int,
                  rope_base: float, dropout: float, causal: bool, owner: str) -> Any:
    spec = registry.get(name)
    base = dict(d_model=d_model, n_heads=_layer_heads(name, n_heads, parity), head_dim=head_dim)
    try:
        probe = spec.config(**base, **user)
        fields = {f.name for f in dataclasses.fields(probe)} if dataclasses.is_dataclass(probe) else set()
        extra: dict[str, Any] = {}
        if "rope" in fields and "rope" not in user:
            extra["rope"] = True
        if "rope_base" in fields and "rope_base" not in user:
            extra["rope_base"] = float(rope_base)
        if "dropout" in fields and "dropout" not in user:
            extra["dropout"] = float(dropout)
        cfg = spec.config(**base, **extra, **user) if extra else probe
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"attention {name!r} with d_model={d_model}, n_heads={n_heads} (head_dim={head_dim}): invalid layer "
            f"options ({e})"
        ) from None
    if bool(getattr(cfg, "rope", False)) and "rope_base" not in fields and rope_base != 10000.0:
        raise ValueError(
            f"rope_base={rope_base} cannot be passed to mechanism {name!r}, whose config has no rope_base field (it "
            "uses 10000); use rope_base=10000.0"
        )
    if causal and getattr(cfg, "causal", True) is False:
        raise ValueError(f"attention {name!r}: the options {user!r} make the layer non-causal, which {owner} cannot use")
    return cfg


#: the most layers a stack may have: a larger count is a typo, and checking or building it would take minutes or
#: exhaust memory before any error (found by the fuzz test of ``train --set``)
MAX_LAYERS = 4096


def check_positive_ints(owner: object, *names: str) -> None:
    """Each ``owner.<name>`` must be an int >= 1, and a layer count (a name ending in ``layers``) at most
    :data:`MAX_LAYERS` (the message names the field)."""
    for name in names:
        value = check_int(name, getattr(owner, name), 1)
        if name.endswith("layers") and value > MAX_LAYERS:
            raise ValueError(f"{name}={value} is more layers than a stack may have ({MAX_LAYERS} at most)")
