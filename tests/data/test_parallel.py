"""Parallel text: the bundled Multi30K (exact counts, digests, licence) and aligned user files, with clear errors."""

from __future__ import annotations

import gzip
import hashlib
import lzma
import re
from importlib import resources
from pathlib import Path

import pytest

from attnlab.data import ParallelCorpus, ParallelFiles, load_parallel, read_bundled_text
from attnlab.data.bundled import BUNDLED_PARALLEL

# Decompressed sizes and SHA-256 of the Multi30K task-1 raw files (multi30k/dataset data/task1/raw/*.gz, gunzipped),
# measured from the originals independently of attnlab.data.bundled.
EXPECTED = {
    "multi30k/train.de": (2_110_398, "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72"),
    "multi30k/train.en": (1_801_238, "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6"),
    "multi30k/val.de": (75_981, "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660"),
    "multi30k/val.en": (63_297, "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227"),
    "multi30k/test_2016_flickr.de": (70_649, "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16"),
    "multi30k/test_2016_flickr.en": (62_076, "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182"),
}

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def de_en() -> ParallelCorpus:
    return load_parallel("multi30k", src_lang="de", tgt_lang="en")


# ------------------------------------------------------------------------------------------------ the bundle


def test_bundled_multi30k_files_match_the_originals() -> None:
    assert set(BUNDLED_PARALLEL) == set(EXPECTED)
    for name, (size, sha) in EXPECTED.items():
        raw = lzma.decompress(resources.files("attnlab.data").joinpath(BUNDLED_PARALLEL[name].filename).read_bytes())
        assert (len(raw), hashlib.sha256(raw).hexdigest()) == (size, sha), name


def test_package_data_globs_cover_the_multi30k_files() -> None:
    """A built wheel contains every bundled file: each matches a package-data glob of pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text()
    globs = re.findall(r'"(data/corpora/[^"]*)"', re.search(r"\[tool\.setuptools\.package-data\]\n(.*)", text).group(1))
    pkg = ROOT / "src" / "attnlab"
    shipped = {p.relative_to(pkg / "data").as_posix() for g in globs for p in pkg.glob(g) if p.is_file()}
    for entry in BUNDLED_PARALLEL.values():
        assert entry.filename in shipped
    assert "corpora/LICENSES.md" in shipped


def test_multi30k_licence_and_citation_ship_with_the_data() -> None:
    notes = resources.files("attnlab.data").joinpath("corpora/LICENSES.md").read_text()
    for needle in ("Multi30K", "Elliott", "Multilingual English-German Image Descriptions", "non-commercial", "Flickr30K"):
        assert needle in notes
    docs = (ROOT / "docs" / "data.md").read_text()
    assert "Elliott" in docs and "non-commercial" in docs


# -------------------------------------------------------------------------------------------------- multi30k


def test_multi30k_exact_counts_and_alignment(de_en: ParallelCorpus) -> None:
    assert (len(de_en.train), len(de_en.val), len(de_en.test)) == (29_000, 1_014, 1_000)
    assert (de_en.name, de_en.src_lang, de_en.tgt_lang) == ("multi30k", "de", "en")
    assert de_en.train[0] == (
        "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche.",
        "Two young, White males are outside near many bushes.",
    )
    # test is test_2016_flickr: its last pair
    assert de_en.test[-1] == (
        "Ein Mädchen an einer Küste mit einem Berg im Hintergrund.",
        "A girl at the shore of a beach with a mountain in the distance.",
    )
    assert list(de_en.splits) == ["train", "val", "test"]
    assert repr(de_en) == "ParallelCorpus(name='multi30k', de->en, train=29,000, val=1,014, test=1,000)"


def test_multi30k_other_direction_swaps_the_pairs(de_en: ParallelCorpus) -> None:
    en_de = load_parallel("multi30k", src_lang="en", tgt_lang="de")
    for split in ("train", "val", "test"):
        assert getattr(en_de, split) == [(t, s) for s, t in getattr(de_en, split)]


def test_multi30k_lines_are_the_file_lines_stripped(de_en: ParallelCorpus) -> None:
    raw = read_bundled_text("multi30k/train.de").split("\n")
    assert raw[-1] == "" and len(raw) == 29_001
    padded = [i for i, line in enumerate(raw[:-1]) if line != line.strip()]
    assert len(padded) == 40  # German lines ending in a space
    for i in padded:
        assert de_en.train[i][0] == raw[i].strip() == raw[i].rstrip(" ")
    assert all(s == s.strip() and s for pair in de_en.train + de_en.val + de_en.test for s in pair)


@pytest.mark.parametrize(
    ("src", "tgt", "message"),
    [
        ("fr", "en", r"src_lang='fr' is not a language of multi30k; expected one of \['de', 'en'\]"),
        ("de", "EN", r"tgt_lang='EN' is not a language of multi30k; expected one of \['de', 'en'\]"),
        ("de", "de", r"src_lang and tgt_lang must differ, got 'de' for both"),
    ],
)
def test_multi30k_unknown_language(src: str, tgt: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_parallel("multi30k", src_lang=src, tgt_lang=tgt)


# ---------------------------------------------------------------------------------------------- user files


def _write(path: Path, lines: list[str], *, gz: bool = False) -> Path:
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _dir(tmp_path: Path, *, test: bool = True) -> Path:
    _write(tmp_path / "train.xx", ["eins", "zwei", "drei"])
    _write(tmp_path / "train.yy.gz", ["one", "two", "three"], gz=True)
    _write(tmp_path / "val.xx", ["vier"])
    _write(tmp_path / "val.yy", ["four"])
    if test:
        _write(tmp_path / "test.xx", ["fünf „fünf“"])
        _write(tmp_path / "test.yy", ["five"])
    return tmp_path


def test_directory_source_both_directions_and_gz(tmp_path: Path) -> None:
    (tmp_path / "mydata").mkdir()
    root = _dir(tmp_path / "mydata")
    c = load_parallel(root, src_lang="xx", tgt_lang="yy")
    assert (c.name, c.train, c.val, c.test) == (
        "mydata", [("eins", "one"), ("zwei", "two"), ("drei", "three")], [("vier", "four")], [("fünf „fünf“", "five")],
    )
    back = load_parallel(str(root), src_lang="yy", tgt_lang="xx", name="back")
    assert back.name == "back" and back.train == [(t, s) for s, t in c.train]


def test_directory_without_test_split(tmp_path: Path) -> None:
    c = load_parallel(_dir(tmp_path, test=False), src_lang="xx", tgt_lang="yy")
    assert c.test is None and list(c.splits) == ["train", "val"]
    assert "test=None" in repr(c)


def test_directory_missing_file_is_named(tmp_path: Path) -> None:
    root = _dir(tmp_path, test=False)
    _write(root / "test.xx", ["fünf"])  # test on one side only
    with pytest.raises(ValueError, match=r"has no test\.yy \(or test\.yy\.gz\)"):
        load_parallel(root, src_lang="xx", tgt_lang="yy")
    with pytest.raises(ValueError, match=r"has no train\.zz"):
        load_parallel(root, src_lang="xx", tgt_lang="zz")


def test_files_source_and_line_conventions(tmp_path: Path) -> None:
    # CRLF and surrounding blanks are removed, inner text is kept exactly; U+2028 / U+0085 are not line breaks;
    # a last line without a newline counts.
    (tmp_path / "a.src").write_bytes("Hallo  Welt \r\nzwei\u2028drei\x85da\n  vier".encode())
    (tmp_path / "a.tgt").write_bytes(b"hello  world\ntwo three\nfour\n")
    files = ParallelFiles(train=(tmp_path / "a.src", tmp_path / "a.tgt"), val=(str(tmp_path / "a.src"), tmp_path / "a.tgt"))
    c = load_parallel(files, src_lang="de", tgt_lang="en")
    assert c.train == [("Hallo  Welt", "hello  world"), ("zwei\u2028drei\x85da", "two three"), ("vier", "four")]
    assert c.name == "a" and c.test is None


def test_different_line_counts_name_both_files(tmp_path: Path) -> None:
    src = _write(tmp_path / "s.txt", ["a", "b", "c"])
    tgt = _write(tmp_path / "t.txt", ["a", "b"])
    with pytest.raises(ValueError, match=rf"source file '{re.escape(str(src))}' has 3 lines but target file "
                                         rf"'{re.escape(str(tgt))}' has 2"):
        load_parallel(ParallelFiles(train=(src, tgt), val=(src, src)), src_lang="a", tgt_lang="b")


def test_empty_line_names_file_and_line(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.txt", ["a", "b", "c"])
    bad = tmp_path / "bad.txt"
    bad.write_text("a\n  \nc\n")
    with pytest.raises(ValueError, match=rf"'{re.escape(str(bad))}': line 2 is empty"):
        load_parallel(ParallelFiles(train=(good, good), val=(good, bad)), src_lang="a", tgt_lang="b")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"ok\n\xff\xfe\n", r"not valid UTF-8 \(line 2"),
        (b"notgz", "not valid gzip"),
    ],
)
def test_unreadable_files(tmp_path: Path, content: bytes | None, message: str) -> None:
    good = _write(tmp_path / "good.txt", ["a"])
    bad = tmp_path / ("bad.gz" if content == b"notgz" else "bad.txt")
    if content is not None:
        bad.write_bytes(content)
    with pytest.raises(ValueError, match=rf"parallel text file '{re.escape(str(bad))}' .*{message}"):
        load_parallel(ParallelFiles(train=(good, bad), val=(good, good)), src_lang="a", tgt_lang="b")


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"source='nowhere' is neither 'multi30k' nor a directory"):
        load_parallel("nowhere", src_lang="de", tgt_lang="en")
    with pytest.raises(ValueError, match=r"src_lang='' must be a language tag"):
        load_parallel(tmp_path, src_lang="", tgt_lang="en")
    with pytest.raises(ValueError, match=r"tgt_lang='e n' must be a language tag"):
        load_parallel(ParallelFiles(train=("a", "b"), val=("a", "b")), src_lang="de", tgt_lang="e n")
    with pytest.raises(ValueError, match=r"ParallelFiles.val must be a \(source file, target file\) pair"):
        ParallelFiles(train=("a", "b"), val="a")  # type: ignore[arg-type]
