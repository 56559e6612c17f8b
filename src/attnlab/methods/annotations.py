"""CAT annotations: the released JSON-lines records (spec A.3) and the token-level causal adjacency M (spec A.4).

A record is one JSON object per line::

    {"input": "... Smoking: 7, ... Answer: ", "target": "High Risk",
     "important": [{"High Risk": ["Smoking: 7", "Weight: 9", "Exercise: 2"]}]}

``important`` is a list of single-key objects ``{effect_phrase: [cause_phrase, ...]}``; test and OOD records
carry none. Phrases are located in the *token* sequence of ``input + target`` (spec A.4), so any attnlab
tokenizer with ``encode`` works (char, word, gpt2, subword): a phrase the tokenizer splits into several tokens
is matched as the whole token run (for a tokenizer that turns the leading space into extra tokens found nowhere in
the text, the pattern of the plain phrase is also tried); a phrase whose tokens merge with the surrounding text (a BPE merge across
the phrase boundary) has no exact token match and, as in the released code, marks nothing. Such phrases are
reported in :attr:`AdjacencyResult.missing` instead of being dropped silently.

Index convention (spec A.4, oracle 2): an effect occupying tokens ``[kp, kp+lk)`` and a cause occupying
``[vp, vp+lv)`` with ``kp > vp + lv`` mark ``M[kp-1 : kp+lk-1, vp : vp+lv] = 1``: rows are the positions whose
next-token prediction emits the effect tokens, columns are the cause tokens. ``kp == vp + lv`` (the effect
right after the cause) marks nothing. M is therefore strictly lower-triangular.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

import torch
from torch import Tensor

__all__ = ["AnnotationError", "CausalRecord", "AdjacencyResult", "parse_record", "read_records", "causal_adjacency"]


class AnnotationError(ValueError):
    """A record that does not follow spec A.3; the message names the line and the field."""


class _Encoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True, kw_only=True)
class CausalRecord:
    """One annotated example. ``relations`` keeps the file's order: ``((effect, (cause, ...)), ...)``."""

    input: str
    target: str
    relations: tuple[tuple[str, tuple[str, ...]], ...] = ()
    line: int = 0  # 1-based line of the source file (0: not from a file)

    @property
    def text(self) -> str:
        """``input + target``, the tokenised text of spec A.4."""
        return self.input + self.target


def _fail(line: int, where: str, msg: str) -> AnnotationError:
    return AnnotationError(f"line {line}: field {where}: {msg}")


def _phrase(value: Any, line: int, where: str) -> str:
    if not isinstance(value, str):
        raise _fail(line, where, f"expected a string phrase, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise _fail(line, where, f"empty phrase {value!r}")
    return value


def parse_record(obj: Any, *, line: int = 0, require_in_text: bool = False) -> CausalRecord:
    """Validate one decoded JSON object.

    Errors (:class:`AnnotationError`, naming ``line`` and the field): a non-object record; ``input`` or
    ``target`` missing or not a string; ``important`` not a list; an entry that is not an object with exactly
    one key; a cause list that is not a non-empty list; an empty (or whitespace-only) phrase; an effect that
    lists itself as a cause (the spans would overlap). With ``require_in_text`` a phrase that is not a
    substring of ``input + target`` is also an error (the spec itself lets it pass and mark nothing).
    """
    if not isinstance(obj, dict):
        raise AnnotationError(f"line {line}: expected a JSON object, got {type(obj).__name__}")
    for name in ("input", "target"):
        if name not in obj:
            raise _fail(line, repr(name), "missing")
        if not isinstance(obj[name], str):
            raise _fail(line, repr(name), f"expected a string, got {type(obj[name]).__name__}")
    important = obj.get("important", [])
    if not isinstance(important, list):
        raise _fail(line, "'important'", f"expected a list of {{effect: [causes]}} objects, got {type(important).__name__}")
    text = obj["input"] + obj["target"]
    relations: list[tuple[str, tuple[str, ...]]] = []
    for i, rel in enumerate(important):
        where = f"'important'[{i}]"
        if not isinstance(rel, dict) or len(rel) != 1:
            raise _fail(line, where, f"expected an object with exactly one effect key, got {rel!r}")
        (effect, causes), = rel.items()
        effect = _phrase(effect, line, f"{where} key")
        if not isinstance(causes, list) or not causes:
            raise _fail(line, f"{where}[{effect!r}]", f"expected a non-empty list of cause phrases, got {causes!r}")
        cause_list = tuple(_phrase(c, line, f"{where}[{effect!r}][{k}]") for k, c in enumerate(causes))
        for k, c in enumerate(cause_list):
            if c == effect:
                raise _fail(line, f"{where}[{effect!r}][{k}]", "the effect lists itself as its own cause")
        if require_in_text:
            for k, p in [(None, effect), *enumerate(cause_list)]:
                if p not in text:
                    at = f"{where} key" if k is None else f"{where}[{effect!r}][{k}]"
                    raise _fail(line, at, f"phrase {p!r} does not occur in input + target")
        relations.append((effect, cause_list))
    return CausalRecord(input=obj["input"], target=obj["target"], relations=tuple(relations), line=line)


def read_records(source: str | os.PathLike[str] | Iterable[str], *,
                 require_in_text: bool = False) -> list[CausalRecord]:
    """Parse a JSON-lines file (a path) or an iterable of lines; blank lines are skipped, line numbers are 1-based."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, encoding="utf-8") as f:
            lines = f.read().splitlines()
    else:
        lines = list(source)
    out: list[CausalRecord] = []
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise AnnotationError(f"line {n}: malformed JSON: {e.msg} at column {e.colno}") from None
        out.append(parse_record(obj, line=n, require_in_text=require_in_text))
    return out


@dataclass(kw_only=True)
class AdjacencyResult:
    """``ids`` the (truncated) token ids of ``input + target`` (+ pad), ``M`` the ``(n, n)`` 0/1 adjacency,
    ``missing`` the phrases with no token match (they mark nothing)."""

    ids: list[int]
    M: Tensor  # (n, n)
    missing: list[str] = field(default_factory=list)


def _pattern(tok: _Encoder, phrase: str) -> list[int] | None:
    """The phrase's ids without the specials the tokenizer adds around any text (BOS, a line's EOS);
    ``None`` when it cannot be encoded or holds an unknown-word id (it would match any unknown word)."""
    try:
        ids = list(tok.encode(phrase))
    except ValueError:  # e.g. a character outside a CharTokenizer's vocabulary
        return None
    bos, eos, unk = (getattr(tok, a, None) for a in ("bos_id", "eos_id", "unk_id"))
    if bos is not None and ids and ids[0] == bos:
        ids = ids[1:]
    if eos is not None and ids and ids[-1] == eos and not phrase.endswith("\n"):
        ids = ids[:-1]
    if not ids or (unk is not None and unk in ids):
        return None
    return ids


def _contains(ids: list[int], run: list[int]) -> bool:
    m = len(run)
    return any(ids[s:s + m] == run for s in range(len(ids) - m + 1))


def _occurrences(text_ids: list[int], tok: _Encoder, phrase: str, text: str) -> list[tuple[int, int]]:
    """``(start, length)`` of every exact token match of ``" " + phrase`` (and of ``phrase`` at the text start)."""
    found: set[tuple[int, int]] = set()
    lead = _pattern(tok, " " + phrase)
    patterns = [lead]
    if text.startswith(phrase):
        patterns.append(_pattern(tok, phrase))
    plain = _pattern(tok, phrase)
    if lead and plain and len(lead) > len(plain) and lead[-len(plain):] == plain \
            and not _contains(text_ids, lead[:-len(plain)]):
        # the leading space became tokens of its own that never occur inside the text: the tokenizer already
        # prefixes every word with its space marker (attnlab's subword tokenizer prepends " " and marks words
        # with "Ġ"), so inside the text " phrase" appears as the tokens of the plain phrase
        patterns.append(plain)
    n = len(text_ids)
    for pat in patterns:
        if pat is None:
            continue
        m = len(pat)
        for s in range(n - m + 1):
            if text_ids[s:s + m] == pat:
                found.add((s, m))
    return sorted(found)


def causal_adjacency(record: CausalRecord, tokenizer: _Encoder, *, max_length: int | None = None,
                     pad_id: int | None = None, dtype: torch.dtype = torch.float32) -> AdjacencyResult:
    """Token ids of ``record.text`` and its adjacency M (spec A.4).

    Args:
        record: a parsed record (:func:`parse_record`).
        tokenizer: any attnlab tokenizer (anything with ``encode(str) -> list[int]``).
        max_length: truncate the ids (and M) to this many tokens.
        pad_id: appended once after the text, as the released loader does (its row and column stay 0).
        dtype: of M.

    Raises:
        TypeError: ``tokenizer`` has no ``encode``.
        ValueError: ``max_length`` < 1, or the text itself cannot be encoded.
    """
    if not callable(getattr(tokenizer, "encode", None)):
        raise TypeError(f"causal_adjacency: tokenizer {type(tokenizer).__name__} has no encode(text) -> ids")
    if max_length is not None and max_length < 1:
        raise ValueError(f"causal_adjacency: max_length={max_length} must be >= 1")
    text = record.text
    ids = list(tokenizer.encode(text)) + ([] if pad_id is None else [pad_id])
    if max_length is not None:
        ids = ids[:max_length]
    n = len(ids)
    M = torch.zeros(n, n, dtype=dtype)
    missing: list[str] = []
    occ: dict[str, list[tuple[int, int]]] = {}

    def where(p: str) -> list[tuple[int, int]]:
        if p not in occ:
            occ[p] = _occurrences(ids, tokenizer, p, text)
            if not occ[p]:
                missing.append(p)
        return occ[p]

    for effect, causes in record.relations:
        keys = where(effect)
        for cause in causes:
            for vp, lv in where(cause):
                for kp, lk in keys:
                    if kp > vp + lv:  # the effect starts at least one token after the cause ends
                        M[kp - 1:kp + lk - 1, vp:vp + lv] = 1
    return AdjacencyResult(ids=ids, M=M, missing=missing)
