"""Hybrid-SKIP: evaluating a trained LM with chosen layers removed, without retraining (spec 4.1; paper section 4.2).

A removed layer is the identity on the residual stream. Two readings of "removing a layer" (the paper is ambiguous,
spec 4.1 and 10):

* ``part="block"`` (default): the whole residual block goes, SwiGLU included: ``x -> x``.
* ``part="mixer"``: only the block's mixer (attention or variant) goes: ``x -> x + FFN(Norm(x))``.

Layers are named from 1, as the layouts of :mod:`attnlab.models.stack` are. :func:`resolve_skip_layers` turns a
specification into layer numbers:

* ``"variant"``: every layer whose mechanism is not ``"standard"`` (the SKIP of a trained hybrid);
* ``"odd"`` / ``"even"``: layers 1, 3, 5, ... / 2, 4, 6, ... (``"odd"`` on a uniform Standard model is the
  Standard-SKIP control, an attnlab proposal, spec 12.1);
* ``"1,3,5"`` or a list of ints: those layers.

:meth:`attnlab.models.lm.LM.skipping` applies it for the duration of a ``with`` block; nothing in the model (its
parameters, buffers, the checkpoint it came from) changes. A fixed stream (RndEmbQK, FixedSeqQK) runs through the
kept blocks only, and not at all when no kept layer reads it; cached decoding is refused while layers are skipped.
"""

from __future__ import annotations

from typing import Iterable, Literal, Sequence

from torch import Tensor, nn

__all__ = ["SkipPart", "SKIP_PARTS", "resolve_skip_layers", "MixerSkipped"]

SkipPart = Literal["block", "mixer"]
SKIP_PARTS: tuple[str, ...] = ("block", "mixer")


def resolve_skip_layers(spec: str | Iterable[int], mechanisms: Sequence[str], *, name: str = "skip_layers"
                        ) -> list[int]:
    """The layer numbers (from 1, sorted) that ``spec`` names in a model whose layers use ``mechanisms``.

    Args:
        spec: ``"variant"``, ``"odd"``, ``"even"``, a comma-separated list of layer numbers, or an iterable of ints.
        mechanisms: the mechanism of each layer, layer 1 first (``LM.mechanisms``).
        name: the argument's name in error messages (``"--skip-layers"`` for the command line).

    Raises:
        ValueError: naming ``name``, what was given and the valid layers: an unknown word, a number that is not a
            layer of this model, a duplicate, an empty selection, or ``"variant"`` on a model with no variant layer.
    """
    n = len(mechanisms)
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s == "variant":
            layers = [i + 1 for i, m in enumerate(mechanisms) if m != "standard"]
            if not layers:
                raise ValueError(f"{name}='variant': every layer of this model is 'standard', so there is no variant "
                                 f"layer to remove; for the Standard-SKIP control use {name}=odd")
            return layers
        if s in ("odd", "even"):
            layers = [i for i in range(1, n + 1) if i % 2 == (1 if s == "odd" else 0)]
            if not layers:
                raise ValueError(f"{name}={s!r} selects no layer of this {n}-layer model")
            return layers
        parts = [p.strip() for p in s.split(",")]
        if not parts or any(not p for p in parts) or not all(p.lstrip("-").isdigit() for p in parts):
            raise ValueError(f"{name} must be 'variant', 'odd', 'even' or comma-separated layer numbers from 1 to "
                             f"{n}, got {spec!r}")
        items: list[int] = [int(p) for p in parts]
    else:
        try:
            items = list(spec)
        except TypeError:
            raise ValueError(f"{name} must be a string or a list of layer numbers, got {spec!r}") from None
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            raise ValueError(f"{name} must hold integer layer numbers (from 1), got {items!r}")
    if not items:
        raise ValueError(f"{name} selects no layer; give layer numbers from 1 to {n}")
    bad = [i for i in items if not 1 <= i <= n]
    if bad:
        raise ValueError(f"{name}: layer{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} do"
                         f"{'' if len(bad) > 1 else 'es'} not exist; this model has layers 1 to {n} (numbered from 1)")
    if len(set(items)) != len(items):
        raise ValueError(f"{name} names a layer twice: {items}")
    return sorted(items)


class MixerSkipped(nn.Module):
    """A residual block without its mixer: ``x + FFN(Norm(x))`` (a transient view of ``block``; no parameters of
    its own). ``attn`` is an identity that reads no :class:`MixerInputs`, so the fixed stream passes it by."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "block", block)  # not a submodule: the view owns nothing
        self.attn = nn.Identity()

    def forward(self, x: Tensor, cache: object = None, *, attn_kwargs: object = None) -> Tensor:
        b = self.block
        if b.cross is not None:  # pragma: no cover - decoder-only LM blocks have no cross-attention
            raise ValueError("mixer-only SKIP is defined for decoder-only blocks")
        return x + b._drop(b.mlp(b.mlp_norm(x)))  # (B, T, C)
