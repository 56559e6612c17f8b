"""load_corpus: published split sizes, the token cache (keys, staleness, atomic files) and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from attnlab.data import CharTokenizer, Corpus, GPT2Tokenizer, WordTokenizer, load_corpus
from attnlab.data import corpus as corpus_mod


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("attnlab-cache")


def _no_build(*args: object, **kwargs: object) -> None:
    raise AssertionError("the cache should have been used")


# ------------------------------------------------------------------------------------ bundled corpora


def test_tinyshakespeare_char_matches_nanogpt(cache: Path) -> None:
    c = load_corpus("tinyshakespeare", cache_dir=cache, progress=False)
    assert (len(c.train), len(c.val)) == (1_003_854, 111_540)
    assert c.test is None and c.vocab_size == 65 and c.name == "tinyshakespeare"
    assert isinstance(c.train, np.memmap) and c.train.dtype == np.uint16
    assert c.tokenizer.decode(c.train[:14].tolist()) == "First Citizen:"
    assert isinstance(c.tokenizer, CharTokenizer)


def test_tinyshakespeare_gpt2_matches_nanogpt(cache: Path) -> None:
    c = load_corpus("tinyshakespeare", tokenizer="gpt2", cache_dir=cache, progress=False)
    assert (len(c.train), len(c.val)) == (301_966, 36_059)
    assert c.vocab_size == 50_257 and c.train.dtype == np.uint16
    assert isinstance(c.tokenizer, GPT2Tokenizer)
    assert c.tokenizer.decode(c.train[:3].tolist()) == "First Citizen:"


def test_wikitext2_word_counts(cache: Path) -> None:
    c = load_corpus("wikitext2", tokenizer="word", cache_dir=cache, progress=False)
    assert (len(c.train), len(c.val), len(c.test)) == (2_088_628, 217_646, 245_569)
    assert c.vocab_size == 33_278 and isinstance(c.tokenizer, WordTokenizer)
    assert c.train.dtype == np.uint16
    # the cached arrays equal a direct encoding
    assert c.val[:50].tolist() == c.tokenizer.encode(corpus_mod.read_bundled_text("wikitext2-valid"))[:50]


def test_second_load_uses_the_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_corpus("tinyshakespeare", cache_dir=cache, progress=False)
    monkeypatch.setattr(corpus_mod, "_build", _no_build)
    again = load_corpus("tinyshakespeare", cache_dir=cache, progress=False)
    assert again.cache_path == first.cache_path
    assert np.array_equal(again.train, first.train)


# ----------------------------------------------------------------------------------------- user text


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_user_file_split_and_round_trip(tmp_path: Path) -> None:
    text = "".join(f"line {i}: the quick brown fox\n" for i in range(50))
    f = _write(tmp_path / "my.txt", text)
    c = load_corpus(f, cache_dir=tmp_path / "cache", progress=False)
    cut = int(len(text) * 0.9)
    assert c.name == "my"
    assert c.tokenizer.decode(c.train.tolist()) == text[:cut]
    assert c.tokenizer.decode(c.val.tolist()) == text[cut:]
    c2 = load_corpus(f, cache_dir=tmp_path / "cache", val_fraction=0.5, progress=False)
    assert len(c2.train) == int(len(text) * 0.5) and c2.cache_path != c.cache_path


def test_user_directory_sorted_and_concatenated(tmp_path: Path) -> None:
    d = tmp_path / "books"
    _write(d / "b.txt", "second\n" * 20)
    _write(d / "a.txt", "first" * 20)  # no final newline: one is inserted
    _write(d / "sub" / "c.txt", "third\n" * 20)
    _write(d / ".hidden", "\x00 not read")
    c = load_corpus(d, cache_dir=tmp_path / "cache", val_fraction=0.2, progress=False)
    whole = c.tokenizer.decode(c.train.tolist() + c.val.tolist())
    assert whole == "first" * 20 + "\n" + "second\n" * 20 + "third\n" * 20
    assert c.name == "books"


def test_changed_content_gets_a_new_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = _write(tmp_path / "t.txt", "abcdefghij\n" * 30)
    cache = tmp_path / "cache"
    first = load_corpus(f, cache_dir=cache, progress=False)
    _write(f, "abcdefghij\n" * 29 + "abcdefghiX\n")  # same length, one character changed
    second = load_corpus(f, cache_dir=cache, progress=False)
    assert second.cache_path != first.cache_path
    assert "X" in second.tokenizer.decode(second.val.tolist())
    # and the old entry is still valid for the old content
    _write(f, "abcdefghij\n" * 30)
    monkeypatch.setattr(corpus_mod, "_build", _no_build)
    assert load_corpus(f, cache_dir=cache, progress=False).cache_path == first.cache_path


def test_tokenizer_is_part_of_the_key(tmp_path: Path) -> None:
    f = _write(tmp_path / "t.txt", "to be or not to be\n" * 30)
    a = load_corpus(f, cache_dir=tmp_path, tokenizer="char", progress=False)
    b = load_corpus(f, cache_dir=tmp_path, tokenizer="word", progress=False)
    assert a.cache_path != b.cache_path
    assert b.tokenizer.decode(b.train[:7].tolist()) == "to be or not to be\n"  # 6 words + <eos>


def test_damaged_cache_is_rebuilt_not_used(tmp_path: Path) -> None:
    f = _write(tmp_path / "t.txt", "hello there\n" * 40)
    c = load_corpus(f, cache_dir=tmp_path / "cache", progress=False)
    expected = np.array(c.train)
    np.save(c.cache_path / "train.npy", expected[:-3])  # wrong length
    again = load_corpus(f, cache_dir=tmp_path / "cache", progress=False)
    assert np.array_equal(again.train, expected)
    (again.cache_path / "meta.json").write_text("{ not json")
    assert np.array_equal(load_corpus(f, cache_dir=tmp_path / "cache", progress=False).train, expected)
    damaged = expected.copy()
    damaged[5] = (int(damaged[5]) + 1) % c.vocab_size  # same length and dtype, one token changed
    np.save(c.cache_path / "train.npy", damaged)
    assert np.array_equal(load_corpus(f, cache_dir=tmp_path / "cache", progress=False).train, expected)


def test_cache_files_are_complete_and_no_temporaries_remain(tmp_path: Path) -> None:
    f = _write(tmp_path / "t.txt", "xyz\n" * 100)
    c = load_corpus(f, cache_dir=tmp_path / "cache", progress=False)
    assert sorted(p.name for p in c.cache_path.iterdir()) == ["meta.json", "train.npy", "val.npy"]
    assert c.cache_path.parent == tmp_path / "cache" / "tokens"


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNLAB_CACHE_DIR", str(tmp_path / "envcache"))
    f = _write(tmp_path / "t.txt", "xyz\n" * 100)
    c = load_corpus(f, progress=False)
    assert c.cache_path.is_relative_to(tmp_path / "envcache")


class _BigVocab:
    """A tokenizer with more than 65,535 ids (the arrays must then be int32)."""

    name = "bigvocab"
    vocab_size = 70_000

    def encode(self, text: str) -> list[int]:
        return [69_000 + ord(c) % 1000 for c in text]

    def decode(self, ids: list[int]) -> str:
        return ""

    def to_dict(self) -> dict:
        return {"kind": "bigvocab"}

    @classmethod
    def from_dict(cls, d: dict) -> _BigVocab:
        return cls()


def test_large_vocabularies_use_int32(tmp_path: Path) -> None:
    f = _write(tmp_path / "t.txt", "abc\n" * 50)
    c = load_corpus(f, tokenizer=_BigVocab(), cache_dir=tmp_path, progress=False)
    assert c.train.dtype == np.int32 and int(c.train.max()) >= 69_000
    assert isinstance(c, Corpus) and c.vocab_size == 70_000


# ------------------------------------------------------------------------------------------- bad input


def test_missing_source(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(ValueError, match=rf"{missing}.*does not exist; pass 'tinyshakespeare', 'wikitext2'"):
        load_corpus(missing, cache_dir=tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    f = _write(tmp_path / "empty.txt", "")
    with pytest.raises(ValueError, match=rf"{f}.*is empty"):
        load_corpus(f, cache_dir=tmp_path)
    _write(f, "  \n\n")
    with pytest.raises(ValueError, match="is empty"):
        load_corpus(f, cache_dir=tmp_path)


def test_binary_file_with_nul(tmp_path: Path) -> None:
    f = tmp_path / "data.bin"
    f.write_bytes(b"hello\x00world" * 10)
    with pytest.raises(ValueError, match=rf"{f}.*looks binary.*NUL byte at offset 5.*UTF-8 text file"):
        load_corpus(f, cache_dir=tmp_path)


def test_non_utf8_file(tmp_path: Path) -> None:
    f = tmp_path / "latin1.txt"
    f.write_bytes("café au lait\n".encode("latin-1") * 10)
    with pytest.raises(ValueError, match=rf"{f}.*is not valid UTF-8 \(byte 3.*convert it to UTF-8"):
        load_corpus(f, cache_dir=tmp_path)


def test_directory_names_the_bad_file(tmp_path: Path) -> None:
    d = tmp_path / "d"
    _write(d / "ok.txt", "fine text\n" * 10)
    (d / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ValueError, match=r"img\.png.*looks binary.*remove this file"):
        load_corpus(d, cache_dir=tmp_path)
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(ValueError, match="contains no files"):
        load_corpus(tmp_path / "emptydir", cache_dir=tmp_path)


def test_too_small_and_bad_arguments(tmp_path: Path) -> None:
    f = _write(tmp_path / "t.txt", "abcd\n")  # validation would be just "\n"
    with pytest.raises(ValueError, match="too small to split: 5 characters with val_fraction=0.1 gives 4 training"):
        load_corpus(f, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"val_fraction must be a number in \(0, 1\), got 1.5"):
        load_corpus("tinyshakespeare", val_fraction=1.5, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"tokenizer='bpe' is unknown; expected one of \['char', 'gpt2', 'word'\]"):
        load_corpus("tinyshakespeare", tokenizer="bpe", cache_dir=tmp_path)  # type: ignore[arg-type]


def test_progress_bar_only_when_building(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = _write(tmp_path / "t.txt", "some text\n" * 50)
    load_corpus(f, cache_dir=tmp_path / "c", progress=True)
    assert "tokenizing t (char)" in capsys.readouterr().err
    load_corpus(f, cache_dir=tmp_path / "c", progress=True)  # cached: nothing to build
    load_corpus(f, cache_dir=tmp_path / "c2", progress=False)
    assert "tokenizing" not in capsys.readouterr().err
