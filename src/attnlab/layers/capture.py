"""Capturing attention probabilities ``(B, H, T, S)`` from every softmax-family layer of a model, on request.

    with capture_attention(model, keep_graph=True) as cap:
        logits = model(idx)
    p = cap.probs("blocks.0.attn")        # (B, H, T, S): the reference's probabilities, in the autograd graph
    aux = some_loss(p); (main + aux).backward()

While a capture is active, each captured :class:`~attnlab.layers.mha.MultiHeadAttention` also computes its
probabilities with :func:`~attnlab.ops.softmax.reference.reference_softmax_probs` from the same (post-RoPE,
cached) queries and keys, mask and score: they are exactly the reference's probabilities, before dropout. The
layer's output still comes from its own backend, so outputs are unchanged. ``keep_graph=False`` records detached
tensors. When no capture is active a layer pays one ``is None`` check and nothing else.

A layer whose attention has no probability matrix (linear attention's kernelised form, CASTLE's combined causal
and lookahead scores) declares why in its class attribute ``attention_probabilities``; capturing a model that
holds one is a ``ValueError`` naming the layer, unless ``layers=`` leaves it out.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

from torch import Tensor, nn

__all__ = ["capture_attention", "AttentionCapture", "active_capture"]

_ACTIVE: "AttentionCapture | None" = None


def active_capture() -> "AttentionCapture | None":
    """The capture in progress (``None`` almost always)."""
    return _ACTIVE


@dataclass
class AttentionCapture:
    """Probabilities recorded per layer name (a module path of the captured model), in call order: a layer called
    several times in one forward (cached decoding, a shared layer) has several entries."""

    keep_graph: bool
    names: dict[int, str]  # id(module) -> name, the captured layers
    records: dict[str, list[Tensor]] = field(default_factory=dict)

    def record(self, module: nn.Module, probs: Tensor) -> None:
        name = self.names.get(id(module))
        if name is None:
            return
        self.records.setdefault(name, []).append(probs if self.keep_graph else probs.detach())

    def wants(self, module: nn.Module) -> bool:
        return id(module) in self.names

    def probs(self, name: str) -> Tensor:
        """The last probabilities of layer ``name`` ``(B, H, T, S)``."""
        if name not in self.records:
            raise KeyError(f"no probabilities were recorded for layer {name!r}; recorded: {', '.join(self.records)}")
        return self.records[name][-1]

    def all(self) -> list[tuple[str, Tensor]]:
        """``(name, probs)`` of the last call of every captured layer, in model order."""
        return [(n, self.records[n][-1]) for n in self.names.values() if n in self.records]


def _attention_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if hasattr(type(m), "attention_probabilities")]


@contextlib.contextmanager
def capture_attention(model: nn.Module, *, keep_graph: bool = False,
                      layers: list[str] | None = None) -> Iterator[AttentionCapture]:
    """Record the attention probabilities of the softmax-family layers of ``model`` while the block runs.

    Args:
        model: any module holding attnlab attention layers.
        keep_graph: keep the recorded tensors in the autograd graph (for auxiliary attention losses).
        layers: module paths to capture (default: every attention layer of ``model``).

    Raises:
        ValueError: a selected layer cannot expose probabilities (the message names it and says why), a name in
            ``layers`` is not an attention layer of ``model``, or a capture is already active.
    """
    global _ACTIVE
    if _ACTIVE is not None:
        raise ValueError("capture_attention: a capture is already active; captures do not nest")
    found = _attention_layers(model)
    if layers is not None:
        known = {n for n, _ in found}
        unknown = [n for n in layers if n not in known]
        if unknown:
            raise ValueError(f"layers={unknown} are not attention layers of the model; attention layers: "
                             f"{', '.join(sorted(known))}")
        found = [(n, m) for n, m in found if n in set(layers)]
    for name, m in found:
        reason = type(m).attention_probabilities
        if reason is not None:
            raise ValueError(f"capture_attention: layer {name!r} ({type(m).__name__}) cannot expose attention "
                             f"probabilities: {reason}; pass layers= without it")
    cap = AttentionCapture(keep_graph=keep_graph, names={id(m): n for n, m in found})
    _ACTIVE = cap
    try:
        yield cap
    finally:
        _ACTIVE = None
