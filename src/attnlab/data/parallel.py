"""Parallel text for translation: bundled Multi30K (English-German) or your own aligned files, as sentence pairs.

:func:`load_parallel` returns a :class:`ParallelCorpus`: for each split a list of ``(source, target)`` sentence
pairs, line ``i`` of the source file paired with line ``i`` of the target file.

Sources:

* ``"multi30k"``: Multi30K task 1 (Elliott et al. 2016), raw untokenized text bundled with the package; languages
  ``"de"`` and ``"en"`` in either direction; splits train / val / test = 29,000 / 1,014 / 1,000 pairs, ``test``
  being ``test_2016_flickr``.
* a directory holding ``train.<lang>``, ``val.<lang>`` and optionally ``test.<lang>`` for both languages (each may
  also be gzipped, ``train.<lang>.gz``), e.g. ``train.de`` + ``train.en``: the same directory serves both
  directions.
* a :class:`ParallelFiles`: explicit ``(source file, target file)`` paths per split, for any other naming.

Every file is UTF-8 text with one sentence per line. A line keeps its inner text exactly; surrounding whitespace
(including a ``"\\r"`` before the newline) is removed, because it is not part of the sentence (40 German lines of
Multi30K's training split end in a space). Lines are separated by ``"\\n"`` only (not by the other characters that
``str.splitlines`` treats as line breaks), and a final newline does not start an empty line. Empty (or
whitespace-only) lines, missing files and files of different lengths are errors that name the file.
"""

from __future__ import annotations

import gzip
import os
import re
from dataclasses import dataclass
from pathlib import Path

from attnlab.data.bundled import read_bundled

__all__ = ["ParallelCorpus", "ParallelFiles", "load_parallel", "MULTI30K_LANGUAGES", "PARALLEL_SPLITS"]

#: Split names, in order. ``test`` is optional for user files.
PARALLEL_SPLITS = ("train", "val", "test")
#: The languages of the bundled Multi30K (task 1).
MULTI30K_LANGUAGES = ("de", "en")
_MULTI30K_FILES = {"train": "train", "val": "val", "test": "test_2016_flickr"}
_LANG_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")

Pairs = list[tuple[str, str]]


@dataclass(frozen=True, eq=False)
class ParallelCorpus:
    """Aligned sentence pairs per split.

    Attributes:
        name: ``"multi30k"`` or the name of the user's directory / files.
        src_lang, tgt_lang: language tags, e.g. ``"de"`` and ``"en"`` (German to English).
        train, val: lists of ``(source sentence, target sentence)``.
        test: the same, or ``None`` when the source has no test split (Multi30K's is ``test_2016_flickr``).
    """

    name: str
    src_lang: str
    tgt_lang: str
    train: Pairs
    val: Pairs
    test: Pairs | None

    @property
    def splits(self) -> dict[str, Pairs]:
        """The splits present, by name (``train``, ``val`` and, if present, ``test``)."""
        out = {"train": self.train, "val": self.val}
        if self.test is not None:
            out["test"] = self.test
        return out

    def __repr__(self) -> str:
        test = "None" if self.test is None else f"{len(self.test):,}"
        return (
            f"ParallelCorpus(name={self.name!r}, {self.src_lang}->{self.tgt_lang}, train={len(self.train):,}, "
            f"val={len(self.val):,}, test={test})"
        )


@dataclass(frozen=True)
class ParallelFiles:
    """Explicit aligned files: for each split, ``(source file, target file)``; ``test`` may be ``None``.

    Files ending in ``.gz`` are decompressed. The language tags are given to :func:`load_parallel` separately.
    """

    train: tuple[str | os.PathLike[str], str | os.PathLike[str]]
    val: tuple[str | os.PathLike[str], str | os.PathLike[str]]
    test: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None

    def __post_init__(self) -> None:
        for split in PARALLEL_SPLITS:
            pair = getattr(self, split)
            if pair is None and split == "test":
                continue
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"ParallelFiles.{split} must be a (source file, target file) pair, got {pair!r}")


# ---------------------------------------------------------------------------------------------------- reading

def _lines(data: bytes, where: str) -> list[str]:
    """The stripped lines of a UTF-8 file's contents; ``where`` names the file in errors."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(f"{where} is not valid UTF-8 (line {line}, byte {e.start}: {e.reason})") from None
    if not text.strip():
        raise ValueError(f"{where} is empty; expected one sentence per line")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # "a\nb\n" is two lines
    out = [line.strip() for line in lines]
    for n, line in enumerate(out, 1):
        if not line:
            raise ValueError(f"{where}: line {n} is empty; every line must hold one sentence")
    return out


def _read_file(path: str | os.PathLike[str]) -> list[str]:
    p = Path(path).expanduser()
    where = f"parallel text file {str(path)!r}"
    if not p.is_file():
        raise ValueError(f"{where} does not exist (or is not a file)")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {where}: {e.strerror or e}") from None
    if p.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise ValueError(f"{where} ends in .gz but is not valid gzip: {e}") from None
    return _lines(data, where)


def _pair(src: list[str], tgt: list[str], src_name: str, tgt_name: str) -> Pairs:
    if len(src) != len(tgt):
        raise ValueError(
            f"source file {src_name!r} has {len(src):,} lines but target file {tgt_name!r} has {len(tgt):,}; "
            "aligned files must have one line per sentence pair"
        )
    return list(zip(src, tgt))


def _check_langs(src_lang: object, tgt_lang: object, allowed: tuple[str, ...] | None, source: str) -> None:
    for arg, lang in (("src_lang", src_lang), ("tgt_lang", tgt_lang)):
        if allowed is not None:
            if lang not in allowed:
                raise ValueError(f"{arg}={lang!r} is not a language of {source}; expected one of {list(allowed)}")
        elif not isinstance(lang, str) or not _LANG_RE.fullmatch(lang):
            raise ValueError(f"{arg}={lang!r} must be a language tag such as 'de' or 'en' (letters, digits, - and _)")
    if src_lang == tgt_lang:
        raise ValueError(f"src_lang and tgt_lang must differ, got {src_lang!r} for both")


def _load_multi30k(src_lang: str, tgt_lang: str) -> dict[str, Pairs]:
    out: dict[str, Pairs] = {}
    for split, stem in _MULTI30K_FILES.items():
        names = [f"multi30k/{stem}.{lang}" for lang in (src_lang, tgt_lang)]
        sides = [_lines(read_bundled(n), f"bundled file {n!r}") for n in names]
        out[split] = _pair(sides[0], sides[1], *names)
    return out


def _dir_file(root: Path, split: str, lang: str) -> Path | None:
    for name in (f"{split}.{lang}", f"{split}.{lang}.gz"):
        if (root / name).is_file():
            return root / name
    return None


def _files_from_dir(root: Path, src_lang: str, tgt_lang: str) -> ParallelFiles:
    found: dict[str, tuple[Path, Path] | None] = {}
    for split in PARALLEL_SPLITS:
        paths = [_dir_file(root, split, lang) for lang in (src_lang, tgt_lang)]
        if split == "test" and paths == [None, None]:
            found[split] = None
            continue
        for lang, path in zip((src_lang, tgt_lang), paths):
            if path is None:
                raise ValueError(
                    f"parallel text directory {str(root)!r} has no {split}.{lang} (or {split}.{lang}.gz); expected "
                    f"train.<lang>, val.<lang> and optionally test.<lang> for both {src_lang!r} and {tgt_lang!r}"
                )
        found[split] = (paths[0], paths[1])  # type: ignore[assignment]
    return ParallelFiles(train=found["train"], val=found["val"], test=found["test"])  # type: ignore[arg-type]


def load_parallel(
    source: str | os.PathLike[str] | ParallelFiles,
    *,
    src_lang: str,
    tgt_lang: str,
    name: str | None = None,
) -> ParallelCorpus:
    """Load aligned sentence pairs for translation from ``src_lang`` into ``tgt_lang``.

    Args:
        source: ``"multi30k"`` (bundled, offline; takes precedence over a path of that name, write ``./multi30k``
            for a local directory), a directory of ``{train,val,test}.<lang>[.gz]`` files, or a
            :class:`ParallelFiles`.
        src_lang, tgt_lang: language tags; for ``"multi30k"`` one of ``"de"``, ``"en"`` each (either direction).
            For a directory they are the file suffixes; for :class:`ParallelFiles` they are recorded as given.
        name: the corpus name (default ``"multi30k"``, the directory's name, or the training source file's stem).

    Raises:
        ValueError: unknown or equal languages; a missing, empty or non-UTF-8 file; an empty line (file and line
            number); source and target files with different line counts (both files and both counts).
    """
    if isinstance(source, ParallelFiles):
        _check_langs(src_lang, tgt_lang, None, "the given files")
        files = source
        default_name = Path(source.train[0]).name.split(".")[0] or "parallel"
    else:
        src = os.fspath(source)
        if src == "multi30k":
            _check_langs(src_lang, tgt_lang, MULTI30K_LANGUAGES, "multi30k")
            splits = _load_multi30k(src_lang, tgt_lang)
            return ParallelCorpus(
                name=name or "multi30k", src_lang=src_lang, tgt_lang=tgt_lang,
                train=splits["train"], val=splits["val"], test=splits["test"],
            )
        root = Path(src).expanduser()
        if not root.is_dir():
            raise ValueError(
                f"source={src!r} is neither 'multi30k' nor a directory; pass 'multi30k', a directory of "
                "{train,val,test}.<lang> files, or a ParallelFiles"
            )
        _check_langs(src_lang, tgt_lang, None, src)
        files = _files_from_dir(root, src_lang, tgt_lang)
        default_name = root.resolve().name or "parallel"

    pairs: dict[str, Pairs | None] = {}
    for split in PARALLEL_SPLITS:
        given = getattr(files, split)
        if given is None:
            pairs[split] = None
            continue
        src_file, tgt_file = given
        pairs[split] = _pair(_read_file(src_file), _read_file(tgt_file), os.fspath(src_file), os.fspath(tgt_file))
    return ParallelCorpus(
        name=name or default_name, src_lang=src_lang, tgt_lang=tgt_lang,
        train=pairs["train"], val=pairs["val"], test=pairs["test"],  # type: ignore[arg-type]
    )
