"""Rebuilding any attnlab tokenizer from the dict it stored in a checkpoint (``tokenizer.to_dict()``)."""

from __future__ import annotations

from typing import Any

from attnlab.data.tokenizers import TOKENIZER_KINDS, Tokenizer

__all__ = ["tokenizer_from_dict"]


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from its :meth:`~Tokenizer.to_dict` (e.g. from a checkpoint).

    Besides :data:`TOKENIZER_KINDS` (the kinds :func:`~attnlab.data.load_corpus` builds), kind ``"subword"`` rebuilds
    the translation tokenizer :class:`attnlab.data.SubwordTokenizer` (which needs ``pip install attnlab[mt]``).
    """
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind == "subword":
        from attnlab.data.subword import SubwordTokenizer  # imported here: it needs the optional `tokenizers`

        return SubwordTokenizer.from_dict(d)
    if kind not in TOKENIZER_KINDS:
        raise ValueError(
            f"tokenizer dict kind={kind!r} is unknown; expected one of {sorted(TOKENIZER_KINDS)} or 'subword'"
        )
    return TOKENIZER_KINDS[kind].from_dict(d)
