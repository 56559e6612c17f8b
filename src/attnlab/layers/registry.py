"""The registry of attention mechanisms: one name, one way to build a layer.

Every mechanism registers a :class:`MechanismSpec` in :data:`MECHANISMS`, an :class:`attnlab.registry.Registry`
that imports :mod:`attnlab.layers` on first use (so every built-in mechanism is there). Models, the verifier, the
benchmarks and the CLI look mechanisms up here by name and never special-case one.

Every registered layer is an ``nn.Module`` with

* ``forward(x, *, context=None, cache=None) -> Tensor``: ``x`` is ``(B, T, d_model)``; ``context``
  ``(B, S, d_model)`` for cross-attention (only where ``spec.cross``); ``cache`` an
  :class:`~attnlab.cache.AttentionCache` from ``new_cache`` (only where ``spec.cache`` is not ``None``);
* ``new_cache(batch_size, *, device=None, dtype=None) -> AttentionCache`` where decoding is supported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from attnlab.registry import Registry

__all__ = ["MechanismSpec", "MECHANISMS", "register", "get", "names", "all_specs", "build"]


def _same_heads(n_standard_heads: int) -> int:
    return n_standard_heads


@dataclass(frozen=True, kw_only=True)
class MechanismSpec:
    """What a mechanism is and what it supports.

    Attributes:
        name: registry name, e.g. ``"standard"`` or ``"castle-swl"``.
        description: one line for ``attnlab list``.
        make_config: ``make_config(d_model=..., n_heads=..., **options) -> config``; the config has ``build()``.
            ``options`` are the mechanism's own typed config fields (e.g. ``window=``); unknown ones raise.
        causal: ``True`` if the layer is autoregressive (outputs never depend on later positions).
        cross: ``True`` if ``forward(x, context=...)`` is supported.
        mixes_tokens: ``False`` for a layer whose output ``i`` depends on input ``i`` only (``decon_mlp``), so checks
            that a change reaches later positions do not apply to it.
        cache: the kind of decoding cache (``"kv"``, ``"sliding-kv"``, ``"recurrent"``, ``"uq-kv"``), or ``None``.
        backends: the ``impl=`` values of the functional op behind the layer (``"reference"`` first).
        heads_for_parity: number of heads that gives this mechanism the parameter count of a standard layer
            with ``n_standard_heads`` heads of the same head dim (identity for most; 4/7 rule for CASTLE).
        defaults: default option values (e.g. a window size) used when a model builds the layer.
        verify_options: option overrides for the small sizes of ``attnlab verify`` (e.g. ``window=4`` at
            ``T=13``, so that a window really masks something).
        renamed: options that were renamed, ``{old: (new, what new means)}``, e.g. ``{"window": ("lookahead",
            "the paper's W, current token not counted")}``. :meth:`config` refuses an old name with a ``ValueError``
            that names the new one (instead of the config's bare ``TypeError``); ``defaults`` and
            ``verify_options`` must use the new names.
    """

    name: str
    description: str
    make_config: Callable[..., Any]
    causal: bool
    cross: bool = False
    mixes_tokens: bool = True
    cache: str | None = None
    backends: tuple[str, ...] = ("reference",)
    heads_for_parity: Callable[[int], int] = _same_heads
    defaults: dict[str, Any] = field(default_factory=dict)
    verify_options: dict[str, Any] = field(default_factory=dict)
    renamed: dict[str, tuple[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for old, new in self.renamed.items():
            if not (isinstance(new, tuple) and len(new) == 2 and all(isinstance(x, str) for x in new)):
                raise ValueError(f"{self.name}: renamed[{old!r}] must be a pair (new name, meaning), got {new!r}")
            if new[0] == old:
                raise ValueError(f"{self.name}: renamed[{old!r}] names the same option {old!r}")
            for where, opts in (("defaults", self.defaults), ("verify_options", self.verify_options)):
                if old in opts:
                    raise ValueError(f"{self.name}: {where} uses the old option name {old!r}; use {new[0]!r}")

    def _refuse_renamed(self, options: dict[str, Any]) -> None:
        """A ``ValueError`` naming the new option for every renamed option in ``options``."""
        hints = [f"option {old!r} was renamed {new!r} ({meaning}); pass {new}={options[old]!r} instead"
                 for old, (new, meaning) in self.renamed.items() if old in options]
        if hints:
            raise ValueError(f"{self.name}: " + ". ".join(hints))

    def config(self, *, d_model: int, n_heads: int, **options: Any) -> Any:
        """A validated config with this spec's defaults, overridden by ``options`` (renamed options refused)."""
        self._refuse_renamed(options)
        return self.make_config(d_model=d_model, n_heads=n_heads, **{**self.defaults, **options})

    def build(self, *, d_model: int, n_heads: int, **options: Any) -> nn.Module:
        """Build the layer."""
        return self.config(d_model=d_model, n_heads=n_heads, **options).build()


# importing attnlab.layers registers the built-in ones
MECHANISMS: Registry[MechanismSpec] = Registry("mechanism", load="attnlab.layers")
_REGISTRY = MECHANISMS.entries  # the live dict under its older name (tests still patch toy mechanisms into it)


def register(spec: MechanismSpec) -> MechanismSpec:
    """Add a mechanism; its name must be new."""
    return MECHANISMS.register(spec.name, spec)


def get(name: str) -> MechanismSpec:
    """The spec registered under ``name``; unknown names list the valid ones."""
    return MECHANISMS.get(name)


def names() -> list[str]:
    """Every registered mechanism name, in registration order."""
    return MECHANISMS.names()


def all_specs() -> list[MechanismSpec]:
    """Every registered spec, in registration order."""
    return MECHANISMS.items()


def build(name: str, *, d_model: int, n_heads: int, **options: Any) -> nn.Module:
    """Build the layer registered as ``name``."""
    return get(name).build(d_model=d_model, n_heads=n_heads, **options)
