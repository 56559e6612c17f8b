"""Character, word and GPT-2 tokenizers: round trips, vocabularies, serialisation, and no network access."""

from __future__ import annotations

import os
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.data import CharTokenizer, GPT2Tokenizer, Tokenizer, WordTokenizer, read_bundled_text, tokenizer_from_dict
from attnlab.data import tokenizers as tokmod

# ------------------------------------------------------------------------------------------------- char


def test_char_vocab_is_sorted_and_round_trips() -> None:
    tok = CharTokenizer.from_text("hello world\n")
    assert tok.chars == ["\n", " ", "d", "e", "h", "l", "o", "r", "w"]
    assert tok.vocab_size == 9
    assert tok.encode("hold") == [4, 6, 5, 2]
    assert tok.decode(tok.encode("hello world\n")) == "hello world\n"
    assert isinstance(tok, Tokenizer)


def test_char_tiny_shakespeare_has_65_characters() -> None:
    tok = CharTokenizer.from_text(read_bundled_text("tinyshakespeare"))
    assert tok.vocab_size == 65
    assert tok.chars[:3] == ["\n", " ", "!"]


def test_char_unknown_character_is_an_error() -> None:
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"not in the vocabulary: \['z'\]"):
        tok.encode("abz")
    with pytest.raises(ValueError, match=r"ids must be in \[0, 3\), got \[3\]"):
        tok.decode([0, 3])


def test_char_serialisation() -> None:
    tok = CharTokenizer.from_text("ünïcode ✓")
    again = tokenizer_from_dict(tok.to_dict())
    assert again == tok and again.encode("✓ü") == tok.encode("✓ü")
    with pytest.raises(ValueError, match="kind='char'"):
        CharTokenizer.from_dict({"kind": "word"})


# ------------------------------------------------------------------------------------------------- word


def test_word_lines_and_eos() -> None:
    tok = WordTokenizer.from_text(" a b \n \n b c \n")
    assert tok.words == ["a", "b", "<eos>", "c", "<unk>"]
    # three lines: "a b", "", "b c"
    assert tok.encode(" a b \n \n b c \n") == [0, 1, 2, 2, 1, 3, 2]
    # a last line without newline still ends with <eos>; unknown words map to <unk>
    assert tok.encode("a zzz") == [0, 4, 2]
    assert tok.decode([0, 1, 2, 3]) == "a b\nc"


def test_word_wikitext2_counts_match_the_readme() -> None:
    train = read_bundled_text("wikitext2-train")
    tok = WordTokenizer.from_text(train)
    assert tok.vocab_size == 33_278
    counts = {}
    for split in ("train", "valid", "test"):
        text = train if split == "train" else read_bundled_text(f"wikitext2-{split}")
        ids = tok.encode(text)
        counts[split] = len(ids)
        # no word outside the training vocabulary: every <unk> id is a literal <unk> in the text
        assert ids.count(tok.unk_id) == text.split().count("<unk>")
    assert counts == {"train": 2_088_628, "valid": 217_646, "test": 245_569}


def test_word_serialisation_and_validation() -> None:
    tok = WordTokenizer.from_text("x y\nz\n")
    assert tokenizer_from_dict(tok.to_dict()) == tok
    with pytest.raises(ValueError, match="special token '<eos>'"):
        WordTokenizer(["a", "<unk>"])
    with pytest.raises(ValueError, match="without whitespace"):
        WordTokenizer(["a b", "<unk>", "<eos>"])


# ------------------------------------------------------------------------------------------------- gpt2


def test_gpt2_known_ids() -> None:
    tok = GPT2Tokenizer()
    assert tok.vocab_size == 50_257
    # Reference ids of the GPT-2 encoder (e.g. HF `gpt2`: "Hello world" -> [15496, 995]).
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the") == [262]
    assert tok.decode([GPT2Tokenizer.eot_id]) == "<|endoftext|>"
    # the special token's text is plain text to encode (as in nanoGPT's data preparation)
    assert GPT2Tokenizer.eot_id not in tok.encode("<|endoftext|>")
    text = "naïve café — 日本語 ✓\n\n  x"
    assert tok.decode(tok.encode(text)) == text


def test_gpt2_serialisation() -> None:
    tok = GPT2Tokenizer()
    assert tokenizer_from_dict(tok.to_dict()) == tok
    with pytest.raises(ValueError, match="does not match the bundled GPT-2 ranks"):
        GPT2Tokenizer.from_dict({"kind": "gpt2", "ranks_sha256": "0" * 64})
    with pytest.raises(ValueError, match=r"kind='bpe' is unknown; expected one of \['char', 'gpt2', 'word'\]"):
        tokenizer_from_dict({"kind": "bpe"})


def test_ranks_parser_equals_tiktoken_loader(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tiktoken.load import load_tiktoken_bpe

    from attnlab.data import read_bundled

    raw = read_bundled("gpt2.tiktoken")
    path = tmp_path / "gpt2.tiktoken"
    path.write_bytes(raw)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken: "" disables its cache
    ranks = tokmod.parse_tiktoken_ranks(raw)
    assert ranks == load_tiktoken_bpe(str(path), expected_hash=GPT2Tokenizer.ranks_sha256)
    assert len(ranks) == 50_256


def test_gpt2_never_touches_network_or_tiktoken_cache(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tiktoken
    import tiktoken.load

    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(cache))

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(tiktoken, "get_encoding", no_network)
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)  # the downloader behind tiktoken's loaders
    tokmod._gpt2_encoding.cache_clear()  # build from scratch inside the sandbox
    try:
        tok = GPT2Tokenizer()
        assert tok.encode("Hello world") == [15496, 995]
    finally:
        tokmod._gpt2_encoding.cache_clear()
    assert os.listdir(cache) == []


# The corpus builder encodes long texts in chunks cut where GPT-2's pre-tokeniser cannot join across the cut.
_ALPHABET = st.sampled_from(list("ab1.' \n\n\t\r") + ["é", "  ", "\n\n", " \n", "'s", "ll"])


@settings(max_examples=200, deadline=None)
@given(st.lists(_ALPHABET, min_size=0, max_size=40).map("".join))
def test_gpt2_safe_cuts_do_not_change_the_encoding(text: str) -> None:
    from attnlab.data.corpus import _gpt2_safe_cut

    tok = GPT2Tokenizer()
    whole = tok.encode(text)
    for p in range(len(text) + 1):
        if _gpt2_safe_cut(text, p):
            assert tok.encode(text[:p]) + tok.encode(text[p:]) == whole, (text, p)


@settings(max_examples=100, deadline=None)
@given(st.lists(_ALPHABET, min_size=0, max_size=60).map("".join), st.integers(1, 7))
def test_chunked_encoding_equals_whole_encoding(text: str, size: int) -> None:
    from attnlab.data.corpus import _chunks

    for tok in (GPT2Tokenizer(), WordTokenizer.from_text(text + " a"), CharTokenizer.from_text(text + "a")):
        pieces = list(_chunks(text, tok, size))
        assert "".join(pieces) == text
        assert [i for piece in pieces for i in tok.encode(piece)] == tok.encode(text), (tok, text, pieces)


@settings(max_examples=200, deadline=None)
@given(st.lists(_ALPHABET, min_size=0, max_size=40).map("".join))
def test_fast_cut_search_finds_exactly_the_safe_cuts(text: str) -> None:
    from attnlab.data.corpus import _gpt2_safe_cut, _next_cut

    tok = GPT2Tokenizer()
    safe = [p for p in range(len(text) + 1) if _gpt2_safe_cut(text, p)]
    found, p = [], 0
    while (p := _next_cut(text, p, tok)) < len(text):
        found.append(p)
        p += 1
    assert found == safe
