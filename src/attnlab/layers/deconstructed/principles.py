"""The principles view of the deconstructed variants (spec ``shared/specs/deconstructing.md`` 1.1-1.2 and 3.9): which
of Standard attention's four design principles a mechanism keeps, and the mechanism that a set of principles names.

==========================  =============  ==================  ===============  ====================
mechanism                   token_mixing   form                seq_dependent    qk_source
==========================  =============  ==================  ===============  ====================
``standard``                True           ``softmax``         True             ``current``
``decon_mlp``               False          ``None`` (n/a)      ``None`` (n/a)   ``None`` (n/a)
``decon_approx``            True           ``approximate``     True             ``current``
``decon_nonapprox``         True           ``non_approximate`` True             ``current``
``decon_rndembqk``          True           ``softmax``         False            ``fixed_random``
``decon_fixedseqqk``        True           ``softmax``         False            ``fixed_text``
``decon_staticembqk``       True           ``softmax``         True             ``static_embeddings``
==========================  =============  ==================  ===============  ====================

Every principle on (the defaults of :class:`Principles`) is ``"standard"``, and :func:`build_mixer` then builds the
registry's Standard layer itself, not a look-alike (spec 9, oracle 15). Each variant relaxes exactly one principle;
a combination that relaxes two names no mechanism and is refused. The principles are a label (for leaderboards and
reports): a model is still configured by its mechanism names, so nothing here changes what a model computes.

Paper: Xue, Moosavi and Aletras, "Deconstructing Attention" (arXiv:2510.11602v1), section 1 and the colour groups of
Tbl. 1; the field names are the spec's proposal (3.9).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

from torch import nn

from attnlab.layers import registry

__all__ = ["Form", "QKSource", "Principles", "PRINCIPLES", "principles_of", "mechanism_for", "build_mixer"]

Form = Literal["softmax", "approximate", "non_approximate"]
QKSource = Literal["current", "fixed_random", "fixed_text", "static_embeddings"]
_FORMS: tuple[str, ...] = ("softmax", "approximate", "non_approximate")
_SOURCES: tuple[str, ...] = ("current", "fixed_random", "fixed_text", "static_embeddings")
_FIXED: tuple[str, ...] = ("fixed_random", "fixed_text")


@dataclass(frozen=True, kw_only=True)
class Principles:
    """The four principles of spec 1.1; the defaults (all on) are Standard attention.

    Attributes:
        token_mixing: information moves between positions (``False``: each position is mixed with nothing, and the
            other three principles do not apply, so they must be ``None``).
        form: the map's mathematical form: ``"softmax"`` (dot product then softmax), ``"approximate"`` (the softmax
            approximated by a Taylor polynomial), ``"non_approximate"`` (a self-gated, query-free softmax).
        seq_dependent: the attention weights change with the input sequence. ``False`` exactly when Q and K come from
            a fixed sequence (``qk_source`` ``"fixed_random"`` or ``"fixed_text"``).
        qk_source: where Q and K come from: ``"current"`` (this layer's hidden states), ``"fixed_random"`` (a fixed
            stream started at random embeddings), ``"fixed_text"`` (a fixed stream started at a fixed token sequence),
            ``"static_embeddings"`` (the input's own token embeddings, before any block).

    Raises:
        ValueError: an unknown value, or fields that contradict each other (naming both).
    """

    token_mixing: bool = True
    form: Form | None = "softmax"
    seq_dependent: bool | None = True
    qk_source: QKSource | None = "current"

    def __post_init__(self) -> None:
        if not isinstance(self.token_mixing, bool):
            raise ValueError(f"token_mixing must be a bool, got {self.token_mixing!r}")
        if not self.token_mixing:
            set_ = {f.name: getattr(self, f.name) for f in fields(self)[1:] if getattr(self, f.name) is not None}
            if set_:
                raise ValueError(f"token_mixing=False leaves no map, so form, seq_dependent and qk_source must be None "
                                 f"(not applicable), got {set_}")
            return
        if self.form not in _FORMS:
            raise ValueError(f"form must be one of {_FORMS} when token_mixing=True, got {self.form!r}")
        if not isinstance(self.seq_dependent, bool):
            raise ValueError(f"seq_dependent must be a bool when token_mixing=True, got {self.seq_dependent!r}")
        if self.qk_source not in _SOURCES:
            raise ValueError(f"qk_source must be one of {_SOURCES} when token_mixing=True, got {self.qk_source!r}")
        if self.seq_dependent == (self.qk_source in _FIXED):
            raise ValueError(f"seq_dependent={self.seq_dependent} contradicts qk_source={self.qk_source!r}: the map "
                             "is independent of the input exactly when Q and K come from a fixed sequence "
                             f"{_FIXED}")

    def relaxed(self) -> tuple[str, ...]:
        """The principles turned off, in the order of spec 1.1 (empty for Standard); a fixed-sequence source relaxes
        Sequence-Dependency (it is filed there, spec 1.2), not Current QK."""
        if not self.token_mixing:
            return ("token_mixing",)
        out = []
        if self.form != "softmax":
            out.append("form")
        if not self.seq_dependent:
            out.append("seq_dependent")
        elif self.qk_source != "current":
            out.append("qk_source")
        return tuple(out)

    def label(self) -> str:
        """A short label for a leaderboard row: ``"all on"`` or what is relaxed, e.g. ``"form: approximate"``."""
        relaxed = self.relaxed()
        if not relaxed:
            return "all on"
        what = {"token_mixing": "no token mixing", "form": f"form: {self.form}",
                "seq_dependent": f"not seq.-dependent ({self.qk_source})", "qk_source": f"QK from {self.qk_source}"}
        return "; ".join(what[r] for r in relaxed)


#: The principles of every mechanism of the study (spec 1.2), Standard first.
PRINCIPLES: dict[str, Principles] = {
    "standard": Principles(),
    "decon_mlp": Principles(token_mixing=False, form=None, seq_dependent=None, qk_source=None),
    "decon_approx": Principles(form="approximate"),
    "decon_nonapprox": Principles(form="non_approximate"),
    "decon_rndembqk": Principles(seq_dependent=False, qk_source="fixed_random"),
    "decon_fixedseqqk": Principles(seq_dependent=False, qk_source="fixed_text"),
    "decon_staticembqk": Principles(qk_source="static_embeddings"),
}


def principles_of(mechanism: str) -> Principles:
    """The principles a mechanism keeps; ``ValueError`` listing the known mechanisms for any other name."""
    if mechanism not in PRINCIPLES:
        raise ValueError(f"mechanism {mechanism!r} has no principles view; known: {', '.join(PRINCIPLES)}")
    return PRINCIPLES[mechanism]


def mechanism_for(principles: Principles) -> str:
    """The registry name of the mechanism with exactly these principles (all on: ``"standard"``).

    Raises:
        ValueError: no mechanism has this combination (every variant relaxes one principle).
    """
    if not isinstance(principles, Principles):
        raise ValueError(f"principles must be a Principles, got {type(principles).__name__}")
    for name, p in PRINCIPLES.items():
        if p == principles:
            return name
    raise ValueError(f"no mechanism relaxes {', '.join(principles.relaxed())} together ({principles}); each variant "
                     f"relaxes one principle: {', '.join(f'{n} ({p.label()})' for n, p in PRINCIPLES.items())}")


def build_mixer(principles: Principles, *, d_model: int, n_heads: int, **options: Any) -> nn.Module:
    """Build the mixer of :func:`mechanism_for` ``(principles)`` through the registry (with its defaults), so that
    all principles on builds the registry's ``"standard"`` layer, drawing the same initialisation from the global
    RNG as ``registry.build("standard", ...)``."""
    return registry.build(mechanism_for(principles), d_model=d_model, n_heads=n_heads, **options)
