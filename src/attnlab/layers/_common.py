"""What the attention layers share: their configs' head geometry, a base class that keeps a layer's config and
geometry, and a backend attribute limited to its choices.

(A leading underscore: :mod:`attnlab.layers` imports every other module of the package to register mechanisms;
this one registers none.)
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, Sequence, TypeVar

from torch import nn

from attnlab._validation import check_bool, check_float

__all__ = ["HeadGeometry", "AttentionLayer", "Choice"]

V = TypeVar("V")


class HeadGeometry:
    """Mixin of a layer config with ``d_model``, ``n_heads``, ``head_dim`` (``None``: ``d_model // n_heads``) and,
    where the layer groups its key/value heads, ``n_kv_heads`` (``None``: ``n_heads``)."""

    d_model: int
    n_heads: int
    head_dim: int | None

    @property
    def resolved_head_dim(self) -> int:
        """``head_dim``, or ``d_model // n_heads`` when it is ``None``."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    def check_rope(self, *, base: bool) -> None:
        """``rope`` must be a bool (and, with ``base``, ``rope_base`` a number > 1); rotary pairs need an even
        head dim. Raises ``ValueError`` naming the field."""
        check_bool("rope", getattr(self, "rope"))
        if base:
            check_float("rope_base", getattr(self, "rope_base"), low=1.0, low_inclusive=False)
        if getattr(self, "rope") and self.resolved_head_dim % 2:
            raise ValueError(f"rope=True needs an even head_dim, got head_dim={self.resolved_head_dim}")

    @property
    def resolved_n_kv_heads(self) -> int:
        """``n_kv_heads``, or ``n_heads`` when it is ``None`` (or the layer has no grouped heads)."""
        n_kv_heads = getattr(self, "n_kv_heads", None)
        return n_kv_heads if n_kv_heads is not None else self.n_heads


class AttentionLayer(nn.Module):
    """Base of the attention layers: checks that the config is a ``config_class``, and keeps it and its head
    geometry as ``config``, ``d_model``, ``n_heads``, ``n_kv_heads`` and ``head_dim``."""

    config_class: ClassVar[type]
    #: what :meth:`extra_repr` shows: attributes of the layer, else of its config (strings quoted)
    repr_fields: ClassVar[tuple[str, ...]] = ("d_model", "n_heads", "head_dim")
    #: why attention probabilities cannot be captured (:mod:`attnlab.layers.capture`); ``None`` when they can
    attention_probabilities: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Tell the subclass's ``config_class`` its layer (``config.layer_class``), for configs that build by it."""
        super().__init_subclass__(**kwargs)
        config_class = cls.__dict__.get("config_class")
        if config_class is not None and "layer_class" not in config_class.__dict__:
            config_class.layer_class = cls

    def __init__(self, config: Any) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ValueError(f"config must be a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.d_model = config.d_model
        self.n_heads = config.n_heads
        self.n_kv_heads = config.resolved_n_kv_heads
        self.head_dim = config.resolved_head_dim

    def extra_repr(self) -> str:
        values = ((n, getattr(self, n) if hasattr(self, n) else getattr(self.config, n)) for n in self.repr_fields)
        return ", ".join(f"{n}={v!r}" if isinstance(v, str) else f"{n}={v}" for n, v in values)


class Choice(Generic[V]):
    """A reassignable attribute (e.g. a layer's ``impl``) that only takes one of ``choices``: assigning another
    value raises ``ValueError("impl must be one of (...), got 'x'")``. Stored as ``_<name>`` on the instance."""

    def __init__(self, choices: Sequence[V], doc: str = "") -> None:
        self.choices = tuple(choices)
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.slot = name, f"_{name}"

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else getattr(obj, self.slot)

    def __set__(self, obj: Any, value: V) -> None:
        if value not in self.choices:
            raise ValueError(f"{self.name} must be one of {self.choices}, got {value!r}")
        setattr(obj, self.slot, value)
