"""A joint byte-level BPE subword tokenizer for translation, trained with Hugging Face ``tokenizers``, and the
encoding of a :class:`~attnlab.data.ParallelCorpus` into id arrays.

The tokenizer (:class:`SubwordTokenizer`, kind ``"subword"``) is trained on the training split of *both*
languages together (the languages in sorted order, so ``de->en`` and ``en->de`` share one vocabulary). Its ids:

* ``<pad>`` = 0, ``<unk>`` = 1, ``<bos>`` = 2, ``<eos>`` = 3 (:data:`PAD_ID`, :data:`UNK_ID`, :data:`BOS_ID`,
  :data:`EOS_ID`), then the 256 byte symbols, then the learned merges (``vocab_size`` in all, default 8,000).
* Byte-level, so every string encodes (``<unk>`` is reserved but never produced) and ``decode(encode(s)) == s``
  exactly for every string ``s`` (``s.lower()`` with ``lowercase=True``): umlauts, typographic quotes, repeated or
  leading spaces included. The pipeline: the normalizer prepends one space (so a sentence's first word gets the
  same token as the word inside a sentence), GPT-2's byte-level pre-tokenizer splits words, and the decoder maps
  bytes back and removes that one space.
* ``encode`` treats its input as plain text: a literal ``"<eos>"`` in a sentence is five characters, never the
  special id. ``decode`` drops the special ids (``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``); cut a generated
  sequence at its first ``<eos>`` before decoding it.

Training is deterministic (same sentences and settings give the same vocabulary, checked by a test) and takes
about 1-2 seconds on Multi30K. :func:`build_subword_tokenizer` caches the result under
``<cache_dir>/subword/<name>-bpe<vocab_size>-<key>.json`` (``cache_dir`` defaults to
:func:`attnlab.data.default_cache_dir`, beside the ``tokens/`` caches), keyed by a SHA-256 of the training
sentences, the settings and the ``tokenizers`` version; the file is written atomically and holds the SHA-256 of the
tokenizer JSON, checked on load (a damaged entry is retrained, never used). A cache location that cannot be
written (a file in the way, a read-only directory, a full disk) does not stop a run: the tokenizer is used from
memory and a ``RuntimeWarning`` names the location, once per location and process.

:func:`encode_parallel` encodes every split: sources as ``x [eos]``, targets as ``[bos] y [eos]`` (see
:mod:`attnlab.data.mt_batching` for the batches made from them).

``tokenizers`` is an optional dependency (``pip install attnlab[mt]``), imported only when a tokenizer is trained
or rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from attnlab.data.mt_batching import EncodedSplit
from attnlab.data.parallel import ParallelCorpus
from attnlab.data.tokenizers import _check_ids, _check_kind

__all__ = [
    "SubwordConfig",
    "SubwordTokenizer",
    "build_subword_tokenizer",
    "encode_parallel",
    "SPECIAL_TOKENS",
    "PAD_ID",
    "UNK_ID",
    "BOS_ID",
    "EOS_ID",
]

#: The special tokens, in id order.
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3

_CACHE_VERSION = 1
_N_BYTES = 256
_MIN_VOCAB = len(SPECIAL_TOKENS) + _N_BYTES


def _hf() -> Any:
    """The ``tokenizers`` package, or an ImportError that says how to install it."""
    try:
        import tokenizers
    except ImportError as e:
        raise ImportError(
            "the subword tokenizer needs the Hugging Face 'tokenizers' package (>= 0.15.1): "
            "pip install attnlab[mt]"
        ) from e
    return tokenizers


@dataclass(kw_only=True, frozen=True)
class SubwordConfig:
    """Settings of the joint BPE tokenizer.

    Attributes:
        vocab_size: total number of ids, specials and the 256 bytes included (at least 260). Training may stop
            short of it if no pair of symbols occurs ``min_frequency`` times any more.
        min_frequency: a merge is learned only from a pair seen at least this often.
        lowercase: lowercase all text before encoding (then ``decode(encode(s)) == s.lower()``).
    """

    vocab_size: int = 8000
    min_frequency: int = 2
    lowercase: bool = False

    def __post_init__(self) -> None:
        v = self.vocab_size
        if isinstance(v, bool) or not isinstance(v, int) or v < _MIN_VOCAB:
            raise ValueError(
                f"vocab_size must be an int >= {_MIN_VOCAB} (4 special tokens + 256 bytes), got {v!r}"
            )
        m = self.min_frequency
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"min_frequency must be an int >= 1, got {m!r}")
        if not isinstance(self.lowercase, bool):
            raise ValueError(f"lowercase must be a bool, got {self.lowercase!r}")

    def build(self, corpus: ParallelCorpus, *, cache_dir: str | os.PathLike[str] | None = None) -> SubwordTokenizer:
        """:func:`build_subword_tokenizer` of ``corpus`` with these settings."""
        return build_subword_tokenizer(corpus, self, cache_dir=cache_dir)


class SubwordTokenizer:
    """A trained joint BPE tokenizer (see the module docstring); follows the :class:`~attnlab.data.Tokenizer`
    protocol.

    Build one with :func:`build_subword_tokenizer` (cached) or :meth:`train`; rebuild one from a checkpoint with
    :func:`attnlab.data.tokenizer_from_dict` (``to_dict()`` holds the full tokenizer JSON).
    """

    name: ClassVar[str] = "subword"
    pad_id: ClassVar[int] = PAD_ID
    unk_id: ClassVar[int] = UNK_ID
    bos_id: ClassVar[int] = BOS_ID
    eos_id: ClassVar[int] = EOS_ID

    def __init__(self, tokenizer_json: str) -> None:
        hf = _hf()
        if not isinstance(tokenizer_json, str):
            raise ValueError(
                f"SubwordTokenizer: tokenizer_json must be a JSON string, got {type(tokenizer_json).__name__}"
            )
        try:
            tok = hf.Tokenizer.from_str(tokenizer_json)
        except Exception as e:  # the Rust parser raises a plain Exception
            raise ValueError(f"SubwordTokenizer: tokenizer_json is not a valid tokenizer: {e}") from None
        for i, special in enumerate(SPECIAL_TOKENS):
            if tok.token_to_id(special) != i:
                raise ValueError(
                    f"SubwordTokenizer: {special} must have id {i}, got {tok.token_to_id(special)}; the special "
                    f"tokens must be {list(SPECIAL_TOKENS)} in this order"
                )
        tok.encode_special_tokens = True  # plain text: "<eos>" in a sentence is not the special token
        if EOS_ID in tok.encode(SPECIAL_TOKENS[EOS_ID], add_special_tokens=False).ids:
            raise ImportError(  # tokenizers 0.15.0 accepts the attribute but ignores it
                f"tokenizers {hf.__version__} cannot encode special-token text as plain text; "
                "install tokenizers >= 0.15.1 (pip install attnlab[mt])"
            )
        self._tok = tok
        self._json = tokenizer_json

    # ------------------------------------------------------------------------------------------------ training

    @classmethod
    def train(cls, sentences: Iterable[str], config: SubwordConfig | None = None) -> SubwordTokenizer:
        """Train on ``sentences`` (one string each; not cached: see :func:`build_subword_tokenizer`)."""
        config = SubwordConfig() if config is None else config
        hf = _hf()
        from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

        tok = hf.Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS[UNK_ID]))
        prepend = normalizers.Prepend(" ")
        tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), prepend]) if config.lowercase else prepend
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])
        trainer = trainers.BpeTrainer(
            vocab_size=config.vocab_size,
            min_frequency=config.min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(sentences, trainer=trainer)
        return cls(tok.to_str())

    # ---------------------------------------------------------------------------------------------- the protocol

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` (no ``<bos>`` / ``<eos>`` added)."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` of many strings at once (in parallel inside ``tokenizers``)."""
        encode = getattr(self._tok, "encode_batch_fast", None) or self._tok.encode_batch  # _fast: no offsets (>= 0.21)
        return [list(e.ids) for e in encode(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special ids are dropped."""
        return self._tok.decode(_check_ids(ids, self.vocab_size, "SubwordTokenizer"), skip_special_tokens=True)

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        checked = [_check_ids(ids, self.vocab_size, "SubwordTokenizer") for ids in batch]
        return list(self._tok.decode_batch(checked, skip_special_tokens=True))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.name, "tokenizer_json": self._json}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SubwordTokenizer:
        _check_kind(d, cls.name)
        if "tokenizer_json" not in d:
            raise ValueError("SubwordTokenizer.from_dict: the dict has no 'tokenizer_json'")
        return cls(d["tokenizer_json"])

    def id_to_token(self, i: int) -> str | None:
        """The vocabulary entry of id ``i`` (byte-level symbols: ``"Ġ"`` stands for a space)."""
        return self._tok.id_to_token(int(i))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SubwordTokenizer) and other._json == self._json

    def __hash__(self) -> int:
        return hash(self._json)

    def __repr__(self) -> str:
        return f"SubwordTokenizer(vocab_size={self.vocab_size})"


# ------------------------------------------------------------------------------------------------------ caching

def _training_sentences(corpus: ParallelCorpus) -> dict[str, list[str]]:
    """The training split's sentences per language, languages in sorted order."""
    sides = {corpus.src_lang: [s for s, _ in corpus.train], corpus.tgt_lang: [t for _, t in corpus.train]}
    return {lang: sides[lang] for lang in sorted(sides)}


def _cache_key(sentences: dict[str, list[str]], config: SubwordConfig, version: str) -> str:
    h = hashlib.sha256()
    settings = json.dumps({**asdict(config), "tokenizers": version}, sort_keys=True)
    h.update(f"attnlab-subword-v{_CACHE_VERSION}\0{settings}\0".encode())
    for lang, sents in sentences.items():
        data = "\n".join(sents).encode("utf-8")
        h.update(f"{lang}\0{len(sents)}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def _load_cached(path: Path, key: str) -> SubwordTokenizer | None:
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        if entry.get("version") != _CACHE_VERSION or entry.get("key") != key:
            return None
        blob = entry["tokenizer_json"]
        if hashlib.sha256(blob.encode("utf-8")).hexdigest() != entry["tokenizer_sha256"]:
            return None  # damaged in place: retrain, never use
        return SubwordTokenizer(blob)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def build_subword_tokenizer(
    corpus: ParallelCorpus,
    config: SubwordConfig | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> SubwordTokenizer:
    """The joint BPE tokenizer of ``corpus``'s training split (both languages), trained once and cached.

    The cache file is ``<cache_dir>/subword/<name>-bpe<vocab_size>-<key[:20]>.json``; see the module docstring.
    """
    from attnlab._io import atomic_write_text
    from attnlab.data.corpus import _safe_name, default_cache_dir

    config = SubwordConfig() if config is None else config
    if not isinstance(config, SubwordConfig):
        raise ValueError(f"config must be a SubwordConfig, got {type(config).__name__}")
    if not isinstance(corpus, ParallelCorpus):
        raise ValueError(
            f"corpus must be a ParallelCorpus (see attnlab.data.load_parallel), got {type(corpus).__name__}"
        )
    version = _hf().__version__
    sentences = _training_sentences(corpus)
    key = _cache_key(sentences, config, version)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = root / "subword" / f"{_safe_name(corpus.name)}-bpe{config.vocab_size}-{key[:20]}.json"

    cached = _load_cached(path, key)
    if cached is not None:
        return cached
    tok = SubwordTokenizer.train([s for sents in sentences.values() for s in sents], config)
    blob = tok.to_dict()["tokenizer_json"]
    entry = {
        "version": _CACHE_VERSION,
        "key": key,
        "name": corpus.name,
        "languages": list(sentences),
        "settings": asdict(config),
        "tokenizers_version": version,
        "vocab_size": tok.vocab_size,
        "tokenizer_sha256": hashlib.sha256(blob.encode("utf-8")).hexdigest(),
        "tokenizer_json": blob,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(entry, ensure_ascii=False))
    except OSError as e:  # an unusable cache location: the tokenizer is used from memory (one warning)
        from attnlab.data.corpus import warn_cache_unusable

        warn_cache_unusable(root, "training the subword tokenizer", e)
    return tok


# ----------------------------------------------------------------------------------------------------- encoding

def encode_parallel(corpus: ParallelCorpus, tokenizer: SubwordTokenizer) -> dict[str, EncodedSplit]:
    """Encode every split of ``corpus``: ``{"train", "val"[, "test"]} -> EncodedSplit``.

    Source sentence ``x`` becomes ``x [eos]`` (no ``bos``) and target ``y`` becomes ``[bos] y [eos]``, so that
    :func:`~attnlab.data.pad_batch` gives ``tgt_in = [bos] y`` and ``tgt_out = y [eos]``. Ids are ``int32``.
    """
    if not isinstance(corpus, ParallelCorpus):
        raise ValueError(f"corpus must be a ParallelCorpus, got {type(corpus).__name__}")
    for attr in ("bos_id", "eos_id"):
        if not isinstance(getattr(tokenizer, attr, None), int):
            raise ValueError(f"tokenizer must have an int {attr} (e.g. a SubwordTokenizer), got {tokenizer!r}")
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    batch = getattr(tokenizer, "encode_batch", None) or (lambda texts: [tokenizer.encode(t) for t in texts])
    out: dict[str, EncodedSplit] = {}
    for split, pairs in corpus.splits.items():
        src_ids = batch([s for s, _ in pairs])
        tgt_ids = batch([t for _, t in pairs])
        out[split] = EncodedSplit(
            src=[np.asarray([*ids, eos], dtype=np.int32) for ids in src_ids],
            tgt=[np.asarray([bos, *ids, eos], dtype=np.int32) for ids in tgt_ids],
        )
    return out
