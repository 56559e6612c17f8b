"""attnlab tokenizers in their Hugging Face form (``tokenizer.json`` + ``tokenizer_config.json``), for exports.

* ``gpt2`` (the bundled byte-level BPE ranks): a ``tokenizers`` byte-level BPE whose vocabulary and merge list are
  rebuilt from the ranks. tiktoken stores only ranks; the merges follow from them, because BPE builds each token
  of rank ``r`` from exactly two tokens of lower rank: running the merge loop on the token's bytes with the ranks
  below ``r`` leaves those two parts. Bytes map to printable characters with GPT-2's published byte-to-unicode
  table (printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100 onwards in byte order), and the
  pre-tokenizer is ``ByteLevel`` with GPT-2's split pattern and no prefix space. ``encode`` equals attnlab's
  (tiktoken's ``encode_ordinary``) token for token; the test compares them on real text. As in attnlab, a literal
  ``<|endoftext|>`` in the text is plain text (``split_special_tokens=True``); id 50256 decodes to it.
* ``char``: a BPE model with the characters as its vocabulary and no merges (each character one token) and a
  decoder that joins tokens without spaces. One difference: a character outside the vocabulary raises in attnlab
  and is dropped by the Hugging Face tokenizer (it has no unknown token).
* ``word`` (WikiText's words with ``<eos>`` per line) has no exact Hugging Face form here and is not written
  (:func:`hf_tokenizer` returns ``None``); ``attnlab_export.json`` keeps the attnlab tokenizer for it.

``tokenizers`` and ``transformers`` are imported here only.
"""

from __future__ import annotations

from typing import Any

__all__ = ["hf_tokenizer", "gpt2_bpe_merges", "byte_to_unicode"]


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte-to-character table: bytes ``!``..``~``, ``¡``..``¬`` and ``®``..``ÿ`` are their own Latin-1
    characters; the remaining 68 bytes map, in increasing byte order, to U+0100, U+0101, ..."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _split_below(ranks: dict[bytes, int], token: bytes, limit: int) -> list[bytes]:
    """The BPE merge loop on ``token``'s bytes using only ranks ``< limit``: the lowest-ranked adjacent pair first."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best: tuple[int, int] | None = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < limit and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def gpt2_bpe_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list of byte-level BPE ranks, in rank order (module docstring); raises ``ValueError`` for a token
    that lower ranks do not build from exactly two parts."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = _split_below(ranks, token, rank)
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) is not one merge of two lower-ranked tokens: {parts!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _gpt2() -> Any:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    from attnlab.data.bundled import read_bundled
    from attnlab.data.tokenizers import GPT2_EOT, parse_tiktoken_ranks

    ranks = parse_tiktoken_ranks(read_bundled("gpt2.tiktoken"))
    table = byte_to_unicode()

    def text(b: bytes) -> str:
        return "".join(table[x] for x in b)

    vocab = {text(t): r for t, r in ranks.items()}
    merges = [(text(a), text(b)) for a, b in gpt2_bpe_merges(ranks)]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    assert tok.token_to_id("<|endoftext|>") == GPT2_EOT
    return tok, {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}


def _char(chars: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models

    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[]))
    tok.decoder = decoders.Fuse()
    return tok, {}


def hf_tokenizer(tokenizer: Any) -> Any | None:
    """A ``transformers.PreTrainedTokenizerFast`` equal to the attnlab ``tokenizer`` (module docstring), or
    ``None`` when it has no Hugging Face form here."""
    from transformers import PreTrainedTokenizerFast

    from attnlab.data.tokenizers import CharTokenizer, GPT2Tokenizer

    if isinstance(tokenizer, GPT2Tokenizer):
        tok, special = _gpt2()
    elif isinstance(tokenizer, CharTokenizer):
        tok, special = _char(tokenizer.chars)
    else:
        return None
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, split_special_tokens=True,
                                   **special)
