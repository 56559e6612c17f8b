"""The joint BPE subword tokenizer: exact round trips on Multi30K, special ids, determinism, the cache, checkpoints,
the encoding convention, and that attnlab imports without the optional 'tokenizers' and 'sacrebleu'."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from attnlab.data import (
    CharTokenizer,
    ParallelCorpus,
    SubwordConfig,
    SubwordTokenizer,
    Tokenizer,
    build_subword_tokenizer,
    encode_parallel,
    load_parallel,
    tokenizer_from_dict,
)
from attnlab.data import subword as submod

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def multi30k() -> ParallelCorpus:
    return load_parallel("multi30k", src_lang="de", tgt_lang="en")


@pytest.fixture(scope="session")
def bpe_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("subword-cache")


@pytest.fixture(scope="session")
def bpe8k(multi30k: ParallelCorpus, bpe_cache: Path) -> SubwordTokenizer:
    """The default 8,000-id tokenizer of Multi30K, trained once per test session."""
    return build_subword_tokenizer(multi30k, cache_dir=bpe_cache)


def _small(n: int = 3000) -> ParallelCorpus:
    corpus = load_parallel("multi30k", src_lang="de", tgt_lang="en")
    return ParallelCorpus(name="small", src_lang="de", tgt_lang="en", train=corpus.train[:n], val=corpus.val[:50], test=None)


# ------------------------------------------------------------------------------------------- the 8k tokenizer


def test_special_ids_and_vocab_size(bpe8k: SubwordTokenizer) -> None:
    assert bpe8k.vocab_size == 8000
    assert [bpe8k.id_to_token(i) for i in range(4)] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert (bpe8k.pad_id, bpe8k.unk_id, bpe8k.bos_id, bpe8k.eos_id) == (0, 1, 2, 3)
    assert (submod.PAD_ID, submod.UNK_ID, submod.BOS_ID, submod.EOS_ID) == (0, 1, 2, 3)
    assert isinstance(bpe8k, Tokenizer) and bpe8k.name == "subword"


def test_round_trip_every_multi30k_sentence(bpe8k: SubwordTokenizer, multi30k: ParallelCorpus) -> None:
    sentences = [s for pairs in multi30k.splits.values() for pair in pairs for s in pair]
    assert len(sentences) == 2 * (29_000 + 1_014 + 1_000)
    ids = bpe8k.encode_batch(sentences)
    assert ids[:3] == [bpe8k.encode(s) for s in sentences[:3]]
    decoded = bpe8k.decode_batch(ids)
    bad = [(s, d) for s, d in zip(sentences, decoded) if s != d]
    assert not bad, bad[:3]
    assert all(i >= 4 for seq in ids for i in seq)  # no special id (in particular no <unk>) inside a sentence
    umlauts = [s for s in sentences if any(c in s for c in "äöüÄÖÜß„“–")]
    assert len(umlauts) > 10_000 and all(bpe8k.decode(bpe8k.encode(s)) == s for s in umlauts[:500])


@pytest.mark.parametrize(
    "text",
    ["", " ", "  zwei  Leerzeichen ", "\tTab\nZeile\r\n", "Größe: 3,5 km – „Straße“!", "emoji 🙂 ✓", "naïve café",
     "<eos> und <pad>", "ÄÖÜ äöü ß", "x" * 300],
)
def test_round_trip_is_exact_for_any_text(bpe8k: SubwordTokenizer, text: str) -> None:
    ids = bpe8k.encode(text)
    assert bpe8k.decode(ids) == text
    assert all(i >= 4 for i in ids)  # literal special-token text is plain text, and bytes never need <unk>


def test_first_word_gets_the_same_token_as_inside_a_sentence(bpe8k: SubwordTokenizer) -> None:
    assert bpe8k.encode("Männer") == bpe8k.encode("Zwei Männer")[len(bpe8k.encode("Zwei")):]


def test_decode_drops_special_ids_and_checks_range(bpe8k: SubwordTokenizer) -> None:
    ids = bpe8k.encode("Ein Hund.")
    assert bpe8k.decode([2, *ids, 3, 0, 0]) == "Ein Hund."
    with pytest.raises(ValueError, match=r"ids must be in \[0, 8000\), got \[8000\]"):
        bpe8k.decode([5, 8000])


def test_encode_parallel_convention(bpe8k: SubwordTokenizer, multi30k: ParallelCorpus) -> None:
    data = encode_parallel(multi30k, bpe8k)
    assert {k: len(v) for k, v in data.items()} == {"train": 29_000, "val": 1_014, "test": 1_000}
    for split, enc in data.items():
        pairs = multi30k.splits[split]
        for i in (0, len(pairs) // 2, len(pairs) - 1):
            src, tgt = enc.src[i], enc.tgt[i]
            assert src.dtype == np.int32 and tgt.dtype == np.int32
            assert src[-1] == 3 and 2 not in src.tolist()  # x [eos], no bos
            assert tgt[0] == 2 and tgt[-1] == 3  # [bos] y [eos]
            assert bpe8k.decode(src[:-1]) == pairs[i][0] and bpe8k.decode(tgt[1:-1]) == pairs[i][1]
    train = data["train"]
    # measured facts (docs/data.md): ~14.8 de / ~14.3 en tokens per sentence, at most 53 / 48
    assert 12 < float(np.mean(train.src_lengths - 1)) < 17 and 12 < float(np.mean(train.tgt_lengths - 1)) < 17
    assert int(train.src_lengths.max()) < 64 and int(train.tgt_lengths.max()) < 64


def test_checkpoint_round_trip(bpe8k: SubwordTokenizer) -> None:
    d = json.loads(json.dumps(bpe8k.to_dict()))  # what a checkpoint stores
    assert d["kind"] == "subword" and isinstance(d["tokenizer_json"], str)
    again = tokenizer_from_dict(d)
    assert isinstance(again, SubwordTokenizer) and again == bpe8k
    text = "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt."
    assert again.encode(text) == bpe8k.encode(text)
    # the existing kinds still rebuild, and unknown kinds are still rejected
    assert tokenizer_from_dict(CharTokenizer.from_text("ab").to_dict()) == CharTokenizer.from_text("ab")
    with pytest.raises(ValueError, match=r"kind='nope' is unknown; expected one of \['char', 'gpt2', 'word'\] or 'subword'"):
        tokenizer_from_dict({"kind": "nope"})
    with pytest.raises(ValueError, match="kind='subword'"):
        SubwordTokenizer.from_dict({"kind": "char", "chars": "ab"})
    with pytest.raises(ValueError, match="not a valid tokenizer"):
        tokenizer_from_dict({"kind": "subword", "tokenizer_json": "{}"})


def test_cache_file_is_reused(bpe8k: SubwordTokenizer, multi30k: ParallelCorpus, bpe_cache: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    files = sorted((bpe_cache / "subword").iterdir())
    assert len(files) == 1 and files[0].name.startswith("multi30k-bpe8000-") and files[0].suffix == ".json"
    entry = json.loads(files[0].read_text())
    assert entry["settings"] == {"vocab_size": 8000, "min_frequency": 2, "lowercase": False}
    assert entry["languages"] == ["de", "en"] and entry["vocab_size"] == 8000

    def no_training(*a: object, **k: object) -> None:
        raise AssertionError("trained again instead of reading the cache")

    monkeypatch.setattr(SubwordTokenizer, "train", classmethod(no_training))
    assert build_subword_tokenizer(multi30k, cache_dir=bpe_cache) == bpe8k
    # the other direction has the same training sentences: the same cache entry
    en_de = load_parallel("multi30k", src_lang="en", tgt_lang="de")
    assert build_subword_tokenizer(en_de, cache_dir=bpe_cache) == bpe8k


# ------------------------------------------------------------------------------------- small vocabularies


def test_training_is_deterministic_across_processes() -> None:
    """Same sentences and settings give the identical tokenizer JSON, in this process and in a fresh one with
    another thread count (the Rust trainer's hash maps are seeded per process)."""
    corpus = _small()
    sentences = [s for pair in corpus.train for s in pair]
    cfg = SubwordConfig(vocab_size=600)
    a = SubwordTokenizer.train(sentences, cfg)
    b = SubwordTokenizer.train(sentences, cfg)
    assert a.to_dict() == b.to_dict() and a.vocab_size == 600
    code = textwrap.dedent(
        """
        import hashlib, sys
        from attnlab.data import SubwordConfig, SubwordTokenizer, load_parallel
        c = load_parallel("multi30k", src_lang="de", tgt_lang="en")
        t = SubwordTokenizer.train([s for pair in c.train[:3000] for s in pair], SubwordConfig(vocab_size=600))
        sys.stdout.write(hashlib.sha256(t.to_dict()["tokenizer_json"].encode()).hexdigest())
        """
    )
    env = {**os.environ, "RAYON_NUM_THREADS": "1", "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=True)
    import hashlib

    assert out.stdout == hashlib.sha256(a.to_dict()["tokenizer_json"].encode()).hexdigest()


def test_lowercase_setting(tmp_path: Path) -> None:
    tok = build_subword_tokenizer(_small(1000), SubwordConfig(vocab_size=400, lowercase=True), cache_dir=tmp_path)
    for s in ("Zwei Männer ÜBER der Straße.", "A DOG"):
        assert tok.decode(tok.encode(s)) == s.lower()


def test_cache_key_and_damaged_entries(tmp_path: Path) -> None:
    small = _small(1000)
    cfg = SubwordConfig(vocab_size=400)
    tok = build_subword_tokenizer(small, cfg, cache_dir=tmp_path)
    (entry,) = (tmp_path / "subword").iterdir()
    # other settings or other data: new entries
    build_subword_tokenizer(small, SubwordConfig(vocab_size=400, min_frequency=3), cache_dir=tmp_path)
    other = ParallelCorpus(name="small", src_lang="de", tgt_lang="en", train=small.train[:-1], val=small.val, test=None)
    build_subword_tokenizer(other, cfg, cache_dir=tmp_path)
    names = sorted(p.name for p in (tmp_path / "subword").iterdir())
    assert len(names) == 3 and not [n for n in names if n.startswith(".")]  # atomic writes leave no temporaries
    # damaged in place (valid JSON, altered vocabulary): retrained, never used
    data = json.loads(entry.read_text())
    data["tokenizer_json"] = data["tokenizer_json"].replace('"<eos>"', '"<EOS>"', 1)
    entry.write_text(json.dumps(data))
    assert build_subword_tokenizer(small, cfg, cache_dir=tmp_path) == tok
    assert json.loads(entry.read_text())["tokenizer_json"] == tok.to_dict()["tokenizer_json"]
    entry.write_text("not json")
    assert build_subword_tokenizer(small, cfg, cache_dir=tmp_path) == tok


def test_default_cache_dir_is_the_token_cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNLAB_CACHE_DIR", str(tmp_path))
    build_subword_tokenizer(_small(500), SubwordConfig(vocab_size=300))
    assert len(list((tmp_path / "subword").glob("small-bpe300-*.json"))) == 1


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(vocab_size=259), r"vocab_size must be an int >= 260 \(4 special tokens \+ 256 bytes\), got 259"),
        (dict(vocab_size=8000.0), r"vocab_size must be an int >= 260"),
        (dict(min_frequency=0), r"min_frequency must be an int >= 1, got 0"),
        (dict(lowercase="yes"), r"lowercase must be a bool, got 'yes'"),
    ],
)
def test_config_validation(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SubwordConfig(**kw)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="corpus must be a ParallelCorpus"):
        build_subword_tokenizer(["a", "b"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="config must be a SubwordConfig"):
        build_subword_tokenizer(_small(10), {"vocab_size": 300})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tokenizer must have an int bos_id"):
        encode_parallel(_small(10), CharTokenizer.from_text("abc"))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ optional dependencies


def test_attnlab_imports_without_the_mt_extra() -> None:
    """With 'tokenizers' and 'sacrebleu' made unimportable, attnlab and attnlab.data import, and using the
    tokenizer or a metric raises an ImportError that names the extra."""
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tokenizers", "sacrebleu"):
                    raise ImportError(f"blocked: {name}")
                return None
        sys.meta_path.insert(0, Block())
        import attnlab, attnlab.data
        import attnlab.data.subword, attnlab.data.parallel, attnlab.data.mt_batching
        assert "tokenizers" not in sys.modules and "sacrebleu" not in sys.modules
        c = attnlab.data.load_parallel("multi30k", src_lang="de", tgt_lang="en")
        try:
            attnlab.data.SubwordTokenizer.train(["a b"])
        except ImportError as e:
            assert "pip install attnlab[mt]" in str(e), e
        else:
            raise AssertionError("no ImportError")
        try:
            attnlab.data.tokenizer_from_dict({"kind": "subword", "tokenizer_json": "{}"})
        except ImportError as e:
            assert "pip install attnlab[mt]" in str(e), e
        else:
            raise AssertionError("no ImportError")
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
