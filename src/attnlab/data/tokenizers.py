"""Tokenizers: characters, WikiText words and GPT-2 byte-level BPE, behind one small protocol.

Every tokenizer has a ``name`` (its kind: ``"char"``, ``"word"``, ``"gpt2"``), a ``vocab_size``,
``encode(str) -> list[int]``, ``decode(list[int]) -> str`` and ``to_dict()`` / ``from_dict()`` so that a
checkpoint can store it as JSON and rebuild exactly the same vocabulary (:func:`attnlab.data.tokenizer_from_dict`).

The GPT-2 tokenizer is built from the ranks file shipped with the package; it never touches the network
(``tiktoken.get_encoding("gpt2")`` would download the ranks, so it is never called).
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from attnlab.data.bundled import BUNDLED, read_bundled

__all__ = [
    "Tokenizer",
    "CharTokenizer",
    "WordTokenizer",
    "GPT2Tokenizer",
    "GPT2_PAT_STR",
    "GPT2_EOT",
    "TOKENIZER_KINDS",
    "parse_tiktoken_ranks",
]


@runtime_checkable
class Tokenizer(Protocol):
    """What the corpus builder, the trainer and generation need from a tokenizer."""

    name: str

    @property
    def vocab_size(self) -> int:
        """Number of token ids; every id is in ``[0, vocab_size)``."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids (a lossy join for word tokenizers)."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description; ``tokenizer_from_dict(t.to_dict())`` rebuilds ``t``."""
        ...

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tokenizer:
        """Inverse of :meth:`to_dict`."""
        ...


def _check_ids(ids: Sequence[int], vocab_size: int, who: str) -> list[int]:
    out = [int(i) for i in ids]
    bad = [i for i in out if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"{who}.decode: ids must be in [0, {vocab_size}), got {bad[:5]}")
    return out


def _check_kind(d: dict[str, Any], kind: str) -> None:
    if not isinstance(d, dict) or d.get("kind") != kind:
        got = d.get("kind") if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"tokenizer dict must have kind={kind!r}, got {got!r}")


class CharTokenizer:
    """One token per Unicode character; ids are positions in the sorted character list.

    Build it with :meth:`from_text` on the corpus text (as nanoGPT's ``shakespeare_char`` does: 65 characters
    for Tiny Shakespeare). Characters outside the vocabulary raise ``ValueError`` in :meth:`encode`.
    """

    name: ClassVar[str] = "char"

    def __init__(self, chars: Sequence[str]) -> None:
        chars = list(chars)
        if not chars:
            raise ValueError("CharTokenizer: chars must be a non-empty list of single characters, got []")
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"CharTokenizer: every entry of chars must be one character, got {bad[:5]!r}")
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer: chars must not repeat")
        self.chars: list[str] = chars
        self._stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str | Iterable[str]) -> CharTokenizer:
        """The sorted set of characters of ``text`` (a string or several strings)."""
        seen: set[str] = set()
        for part in [text] if isinstance(text, str) else text:
            seen.update(part)
        if not seen:
            raise ValueError("CharTokenizer.from_text: the text is empty")
        return cls(sorted(seen))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        stoi = self._stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            missing = sorted(set(text) - stoi.keys())
            raise ValueError(
                f"CharTokenizer.encode: {len(missing)} character(s) not in the vocabulary: {missing[:10]!r}; "
                "build the tokenizer from text that contains them"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] for i in _check_ids(ids, self.vocab_size, "CharTokenizer"))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.name, "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CharTokenizer:
        _check_kind(d, cls.name)
        return cls(list(d["chars"]))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and other.chars == self.chars

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class WordTokenizer:
    """Whitespace-split words with an end-of-line token, the WikiText convention.

    ``encode`` splits the text into lines at ``"\\n"`` (a final newline does not start an empty line) and each
    line into ``line.split() + ["<eos>"]``, exactly as pytorch/examples ``word_language_model`` does. The
    vocabulary (:meth:`from_text`) is the words of the training text in order of first appearance, plus
    ``"<unk>"`` if the text lacks it; words outside the vocabulary encode as ``"<unk>"``. ``decode`` joins words
    with spaces and turns ``"<eos>"`` back into newlines (whitespace is normalised, so it is not an exact
    inverse).
    """

    name: ClassVar[str] = "word"

    def __init__(self, words: Sequence[str], *, eos: str = "<eos>", unk: str = "<unk>") -> None:
        words = list(words)
        if len(set(words)) != len(words):
            raise ValueError("WordTokenizer: words must not repeat")
        for special in (eos, unk):
            if special not in words:
                raise ValueError(f"WordTokenizer: words must contain the special token {special!r}")
        bad = [w for w in words if not isinstance(w, str) or not w or w.split() != [w]]
        if bad:
            raise ValueError(f"WordTokenizer: words must be non-empty strings without whitespace, got {bad[:5]!r}")
        self.words: list[str] = words
        self.eos = eos
        self.unk = unk
        self._stoi = {w: i for i, w in enumerate(words)}
        self.eos_id = self._stoi[eos]
        self.unk_id = self._stoi[unk]

    @staticmethod
    def _lines(text: str) -> list[str]:
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # "a\nb\n" is two lines, as when iterating over a file
        return lines

    @classmethod
    def from_text(cls, text: str, *, eos: str = "<eos>", unk: str = "<unk>") -> WordTokenizer:
        """Vocabulary of ``text`` in order of first appearance (``eos`` after the first line; ``unk`` last if absent)."""
        seen: dict[str, None] = {}
        for line in cls._lines(text):
            for w in line.split():
                seen[w] = None
            seen[eos] = None
        if unk not in seen:
            seen[unk] = None
        if eos not in seen:
            seen[eos] = None
        return cls(list(seen), eos=eos, unk=unk)

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        stoi, unk, eos = self._stoi, self.unk_id, self.eos_id
        out: list[int] = []
        for line in self._lines(text):
            out.extend(stoi.get(w, unk) for w in line.split())
            out.append(eos)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        parts: list[str] = []
        line: list[str] = []
        for i in _check_ids(ids, self.vocab_size, "WordTokenizer"):
            if i == self.eos_id:
                parts.append(" ".join(line) + "\n")
                line = []
            else:
                line.append(self.words[i])
        parts.append(" ".join(line))
        return "".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.name, "words": list(self.words), "eos": self.eos, "unk": self.unk}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WordTokenizer:
        _check_kind(d, cls.name)
        return cls(d["words"], eos=d["eos"], unk=d["unk"])

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, WordTokenizer)
            and other.words == self.words
            and (other.eos, other.unk) == (self.eos, self.unk)
        )

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size})"


#: GPT-2's pre-tokenisation regex (the one tiktoken uses for ``gpt2`` / ``r50k_base``).
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
#: Id of ``<|endoftext|>``.
GPT2_EOT = 50256


def parse_tiktoken_ranks(contents: bytes) -> dict[bytes, int]:
    """Parse a ``.tiktoken`` ranks file (``base64(token) rank`` per line).

    The same format and result as ``tiktoken.load.load_tiktoken_bpe`` (a test checks it on the bundled file); we
    parse the decompressed bytes in memory because ``load_tiktoken_bpe`` takes a path and copies the file into
    tiktoken's download cache (``$TIKTOKEN_CACHE_DIR`` or ``/tmp/data-gym-cache``).
    """
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(contents.splitlines(), 1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as e:
            raise ValueError(f"tiktoken ranks: cannot parse line {n}: {line[:80]!r} ({e})") from None
    return ranks


@functools.lru_cache(maxsize=1)
def _gpt2_encoding() -> Any:
    import tiktoken

    ranks = parse_tiktoken_ranks(read_bundled("gpt2.tiktoken"))
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": GPT2_EOT},
        explicit_n_vocab=GPT2_EOT + 1,
    )


class GPT2Tokenizer:
    """GPT-2 byte-level BPE (50,257 tokens) through ``tiktoken``, built offline from the bundled ranks.

    ``encode`` treats every string as plain text (``encode_ordinary``: a literal ``"<|endoftext|>"`` in the text is
    not the special token, as in nanoGPT's data preparation); :attr:`eot_id` is the id of ``<|endoftext|>``.
    """

    name: ClassVar[str] = "gpt2"
    eot_id: ClassVar[int] = GPT2_EOT
    ranks_sha256: ClassVar[str] = BUNDLED["gpt2.tiktoken"].sha256

    def __init__(self) -> None:
        self._enc = _gpt2_encoding()

    @property
    def vocab_size(self) -> int:
        return int(self._enc.n_vocab)

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode(_check_ids(ids, self.vocab_size, "GPT2Tokenizer"))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.name, "ranks_sha256": self.ranks_sha256}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPT2Tokenizer:
        _check_kind(d, cls.name)
        if d.get("ranks_sha256", cls.ranks_sha256) != cls.ranks_sha256:
            raise ValueError(
                f"GPT2Tokenizer.from_dict: ranks_sha256={d['ranks_sha256']!r} does not match the bundled GPT-2 ranks "
                f"({cls.ranks_sha256})"
            )
        return cls()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GPT2Tokenizer)

    def __repr__(self) -> str:
        return "GPT2Tokenizer(vocab_size=50257)"


TOKENIZER_KINDS: dict[str, type] = {"char": CharTokenizer, "word": WordTokenizer, "gpt2": GPT2Tokenizer}


def _identity(tokenizer: Tokenizer) -> str:
    """A stable hash of a tokenizer's vocabulary (part of the token-cache key)."""
    import json

    blob = json.dumps(tokenizer.to_dict(), sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()
