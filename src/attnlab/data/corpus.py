"""Corpora as token arrays: bundled Tiny Shakespeare and WikiText-2, or any UTF-8 text file or directory.

:func:`load_corpus` reads the text, builds the tokenizer, and encodes every split once into memory-mapped
``.npy`` files under a cache directory (default ``$ATTNLAB_CACHE_DIR`` or ``~/.cache/attnlab``). The cache key
is a SHA-256 of the split texts, the tokenizer's vocabulary and the format version, so a changed file or
tokenizer always gets a new entry and a stale one is never read. Files are written to a temporary name and
moved into place with ``os.replace``; ``meta.json`` is written last and marks the entry complete. It records
each array's length, dtype and SHA-256, checked on every load: an entry damaged in place is rebuilt, never used.

A cache location that cannot be used (``$ATTNLAB_CACHE_DIR`` names a file, a read-only directory, a damaged entry
that cannot be replaced, a full disk) does not stop a run: the corpus is encoded in memory instead and a
``RuntimeWarning`` names the location and the cause, once per location and process. The text is encoded before
anything is written, so a failed encode leaves no empty or partial entry; a failed write removes what it wrote.

Splits: ``"tinyshakespeare"`` and user text use the first ``1 - val_fraction`` of the *characters* for
training and the rest for validation (nanoGPT's split; there is no test split); ``"wikitext2"`` has its own
train/valid/test files and ignores ``val_fraction``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from attnlab.data.bundled import read_bundled_text
from attnlab._io import atomic_write
from attnlab.data.tokenizers import (
    TOKENIZER_KINDS,
    CharTokenizer,
    GPT2Tokenizer,
    Tokenizer,
    WordTokenizer,
    _identity,
)

__all__ = ["Corpus", "load_corpus", "default_cache_dir", "BUNDLED_CORPORA", "read_text_source"]

#: Names accepted by :func:`load_corpus` besides paths.
BUNDLED_CORPORA = ("tinyshakespeare", "wikitext2")

_FORMAT_VERSION = 2  # 2: meta.json holds the SHA-256 of every token array, checked on load
_CHUNK_CHARS = 1 << 18  # characters per encode call (the progress-bar step)

TokenizerKind = Literal["char", "gpt2", "word"]


@dataclass(frozen=True, eq=False)
class Corpus:
    """Token ids of each split as read-only 1-D memmaps (``uint16`` if ``vocab_size < 65536`` else ``int32``).

    Attributes:
        name: ``"tinyshakespeare"``, ``"wikitext2"`` or the file/directory name of a user corpus.
        train, val: token arrays; ``test`` is ``None`` unless the corpus has a test split (WikiText-2).
        tokenizer: the tokenizer that produced the ids (store ``tokenizer.to_dict()`` in checkpoints).
        cache_path: the directory holding the ``.npy`` files; ``None`` when the cache location could not be used
            and the arrays live in memory (see the module docstring).
    """

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray | None
    tokenizer: Tokenizer
    cache_path: Path | None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def __repr__(self) -> str:
        test = "None" if self.test is None else f"{len(self.test):,}"
        return (
            f"Corpus(name={self.name!r}, tokenizer={self.tokenizer.name!r}, vocab_size={self.vocab_size}, "
            f"train={len(self.train):,}, val={len(self.val):,}, test={test})"
        )


def default_cache_dir() -> Path:
    """``$ATTNLAB_CACHE_DIR`` if set, else ``~/.cache/attnlab``."""
    env = os.environ.get("ATTNLAB_CACHE_DIR")
    return Path(env).expanduser() if env else Path("~/.cache/attnlab").expanduser()


# ----------------------------------------------------------------------------------------------- reading text

_HOW_TO_FIX = "pass 'tinyshakespeare', 'wikitext2', or the path of a UTF-8 text file or a directory of them"


def _read_text_file(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read corpus file {str(path)!r}: {e.strerror or e}; {_HOW_TO_FIX}") from None
    if not data.strip():
        raise ValueError(f"corpus file {str(path)!r} is empty; give a file that contains text")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise ValueError(
            f"corpus file {str(path)!r} looks binary (it contains a NUL byte at offset {nul}); "
            "give a UTF-8 text file, or remove this file from the corpus directory"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"corpus file {str(path)!r} is not valid UTF-8 (byte {e.start}: {e.reason}); convert it to UTF-8 "
            "(e.g. `iconv -f latin1 -t utf-8`) or remove it from the corpus"
        ) from None


def read_text_source(path: str | os.PathLike[str]) -> tuple[str, str]:
    """``(name, text)`` of a text file, or of a directory's files concatenated.

    A directory contributes every regular file below it (recursively, skipping names that start with ``.``), in
    sorted order of their relative paths; a ``"\\n"`` is inserted after a file that does not end with one.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"corpus source {str(path)!r} does not exist; {_HOW_TO_FIX}")
    if p.is_file():
        return p.stem or p.name, _read_text_file(p)
    if not p.is_dir():
        raise ValueError(f"corpus source {str(path)!r} is neither a file nor a directory; {_HOW_TO_FIX}")
    files = sorted(
        (f for f in p.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)),
        key=lambda f: f.relative_to(p).as_posix(),
    )
    if not files:
        raise ValueError(f"corpus directory {str(path)!r} contains no files; put UTF-8 text files in it")
    parts: list[str] = []
    for f in files:
        text = _read_text_file(f)
        parts.append(text if text.endswith("\n") else text + "\n")
    return p.resolve().name, "".join(parts)


def _split_text(text: str, val_fraction: float, name: str) -> dict[str, str]:
    cut = int(len(text) * (1.0 - val_fraction))
    train, val = text[:cut], text[cut:]
    if not train.strip() or not val.strip():
        raise ValueError(
            f"corpus {name!r} is too small to split: {len(text)} characters with val_fraction={val_fraction} gives "
            f"{len(train)} training and {len(val)} validation characters; use more text or another val_fraction"
        )
    return {"train": train, "val": val}


# ------------------------------------------------------------------------------------------------ encoding

def _gpt2_safe_cut(text: str, p: int) -> bool:
    """Whether GPT-2's pre-tokeniser gives the same pieces for ``text`` and for ``text[:p]`` + ``text[p:]``.

    Two cases are provably safe for ``GPT2_PAT_STR`` (a test checks random texts too):
    * ``ws... | " " X``: a whitespace run, then a space and a non-space ``X``. In the whole text the run is one
      piece (``\\s+(?!\\S)`` backs off the space that joins ``X``); at the end of a chunk ``\\s++$`` takes the
      same run.
    * ``Y c | X`` with one non-space whitespace ``c`` (e.g. a newline) between non-spaces: ``c`` is a piece of its
      own either way.
    """
    if p <= 1 or p >= len(text):
        return False
    prev, cur = text[p - 1], text[p]
    if prev not in " \n\t\r":
        return False
    if cur == " ":
        return p + 1 < len(text) and not text[p + 1].isspace()
    return prev != " " and not cur.isspace() and not text[p - 2].isspace()


# The positions where _gpt2_safe_cut holds, as one regex (Python's \s is str.isspace): rule 2 | rule 1.
_GPT2_CUT = re.compile(r"(?<=\S[\n\t\r])(?=\S)|(?<=[ \n\t\r])(?= \S)")


def _next_cut(text: str, start: int, tokenizer: Tokenizer) -> int:
    """The first position ``>= start`` where ``text`` may be cut without changing its encoding (or ``len(text)``)."""
    n = len(text)
    if isinstance(tokenizer, CharTokenizer):
        return min(start, n)
    if isinstance(tokenizer, WordTokenizer):  # after a newline: lines encode independently
        nl = text.find("\n", start - 1)
        return n if nl < 0 else nl + 1
    if isinstance(tokenizer, GPT2Tokenizer):
        while True:
            m = _GPT2_CUT.search(text, start)
            if m is None:
                return n
            if m.start() >= 2:  # the same bounds as _gpt2_safe_cut
                return m.start()
            start = m.start() + 1
    return n  # an unknown tokenizer: no cut is known to be safe


def _chunks(text: str, tokenizer: Tokenizer, size: int = _CHUNK_CHARS) -> Iterator[str]:
    """Pieces of ``text`` (about ``size`` characters) whose encodings concatenate to the encoding of ``text``."""
    start, n = 0, len(text)
    while start < n:
        end = _next_cut(text, start + size, tokenizer)
        yield text[start:end]
        start = end


def _encode(text: str, tokenizer: Tokenizer, dtype: np.dtype, bar: Any) -> np.ndarray:
    pieces = []
    for chunk in _chunks(text, tokenizer):
        pieces.append(np.asarray(tokenizer.encode(chunk), dtype=np.int64))
        bar.update(len(chunk))
    ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= tokenizer.vocab_size):
        raise ValueError(f"tokenizer {tokenizer!r} produced ids outside [0, {tokenizer.vocab_size})")
    return ids.astype(dtype)


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size < 65536 else np.dtype(np.int32)


# ------------------------------------------------------------------------------------------------- caching

def _cache_key(splits: dict[str, str], tokenizer: Tokenizer) -> str:
    h = hashlib.sha256()
    h.update(f"attnlab-tokens-v{_FORMAT_VERSION}\0{_identity(tokenizer)}\0".encode())
    for split, text in splits.items():
        data = text.encode("utf-8")
        h.update(f"{split}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def _array_digest(arr: np.ndarray) -> str:
    """SHA-256 of a token array's bytes (a few milliseconds for the bundled corpora)."""
    return hashlib.sha256(np.ascontiguousarray(arr).data).hexdigest()


def _load_cached(entry: Path, key: str, splits: list[str]) -> dict[str, np.ndarray] | None:
    meta_path = entry / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != key or meta.get("version") != _FORMAT_VERSION:
            return None
        arrays = {}
        for split in splits:
            arr = np.load(entry / f"{split}.npy", mmap_mode="r")
            if arr.ndim != 1 or len(arr) != meta["lengths"][split] or str(arr.dtype) != meta["dtype"]:
                return None
            if _array_digest(arr) != meta["sha256"][split]:  # damaged in place: rebuild, never use
                return None
            arrays[split] = arr
        return arrays
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40]
    return cleaned or "corpus"


# ---------------------------------------------------------------------------------------------------- API

def _make_tokenizer(kind: str | Tokenizer, splits: dict[str, str]) -> Tokenizer:
    if not isinstance(kind, str):
        if not isinstance(kind, Tokenizer):
            raise ValueError(
                f"tokenizer must be one of {sorted(TOKENIZER_KINDS)} or a Tokenizer, got {type(kind).__name__}"
            )
        return kind
    if kind == "char":
        return CharTokenizer.from_text(splits.values())
    if kind == "word":
        return WordTokenizer.from_text(splits["train"])
    if kind == "gpt2":
        return GPT2Tokenizer()
    raise ValueError(f"tokenizer={kind!r} is unknown; expected one of {sorted(TOKENIZER_KINDS)}")


def load_corpus(
    source: str | os.PathLike[str],
    *,
    tokenizer: TokenizerKind | Tokenizer = "char",
    cache_dir: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.1,
    progress: bool = True,
) -> Corpus:
    """Load a corpus as token arrays, encoding it once and caching the result.

    Args:
        source: ``"tinyshakespeare"`` or ``"wikitext2"`` (bundled, offline), or the path of a UTF-8 text file or a
            directory of text files (see :func:`read_text_source`). The bundled names take precedence over
            paths of the same name (write ``./tinyshakespeare`` for a local file).
        tokenizer: ``"char"`` (vocabulary: the sorted characters of the whole corpus, so validation text always
            encodes), ``"word"`` (vocabulary of the training split, unknown words -> ``<unk>``), ``"gpt2"``, or a
            :class:`~attnlab.data.tokenizers.Tokenizer` instance to reuse (e.g. rebuilt from a checkpoint).
        cache_dir: where token arrays are cached (default :func:`default_cache_dir`).
        val_fraction: fraction of the characters (at the end) held out for validation; in ``(0, 1)``. Ignored by
            ``"wikitext2"``, which has its own splits.
        progress: show a tqdm progress bar while encoding.

    Raises:
        ValueError: unknown tokenizer; missing, empty, binary or non-UTF-8 input; a corpus too small to split.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    if isinstance(tokenizer, str) and tokenizer not in TOKENIZER_KINDS:
        raise ValueError(f"tokenizer={tokenizer!r} is unknown; expected one of {sorted(TOKENIZER_KINDS)}")

    src = os.fspath(source)
    if src == "tinyshakespeare":
        name = src
        splits = _split_text(read_bundled_text("tinyshakespeare"), val_fraction, name)
    elif src == "wikitext2":
        name = src
        splits = {s: read_bundled_text(f"wikitext2-{f}") for s, f in (("train", "train"), ("val", "valid"), ("test", "test"))}
    else:
        name, text = read_text_source(src)
        splits = _split_text(text, val_fraction, src)

    tok = _make_tokenizer(tokenizer, splits)
    key = _cache_key(splits, tok)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    entry = root / "tokens" / f"{_safe_name(name)}-{tok.name}-{key[:20]}"

    arrays = _load_cached(entry, key, list(splits))
    cache_path: Path | None = entry
    if arrays is None:
        arrays, cache_path = _build(root, entry, key, name, splits, tok, progress)
    return Corpus(
        name=name,
        train=arrays["train"],
        val=arrays["val"],
        test=arrays.get("test"),
        tokenizer=tok,
        cache_path=cache_path,
    )


_WARNED: set[str] = set()  # cache locations already warned about in this process


def warn_cache_unusable(root: Path, what: str, e: OSError) -> None:
    """One ``RuntimeWarning`` per cache location and process: ``what`` could not be cached under ``root``."""
    if str(root) in _WARNED:
        return
    _WARNED.add(str(root))
    cause = e.strerror or str(e)
    if e.filename:
        cause += f": {e.filename}"
    warnings.warn(f"token cache {str(root)!r} cannot be used ({cause}); {what} in memory instead (nothing is "
                  "cached; set $ATTNLAB_CACHE_DIR or cache_dir to a writable directory)", RuntimeWarning, stacklevel=3)


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _build(
    root: Path, entry: Path, key: str, name: str, splits: dict[str, str], tok: Tokenizer, progress: bool
) -> tuple[dict[str, np.ndarray], Path | None]:
    """Encode every split, then write the cache entry: (arrays, the entry, or ``None`` if it could not be written
    and the arrays are in memory)."""
    encoded = _encode_splits(name, splits, tok, progress)  # before anything is written: no partial entry
    try:
        return _write_entry(entry, key, name, encoded, tok), entry
    except OSError as e:
        warn_cache_unusable(root, "encoding the corpus", e)
        return {k: _read_only(v) for k, v in encoded.items()}, None


def _encode_splits(name: str, splits: dict[str, str], tok: Tokenizer, progress: bool) -> dict[str, np.ndarray]:
    from tqdm.auto import tqdm

    dtype = _token_dtype(tok.vocab_size)
    total = sum(len(t) for t in splits.values())
    with tqdm(
        total=total, unit="char", unit_scale=True, desc=f"tokenizing {name} ({tok.name})", disable=not progress
    ) as bar:
        return {split: _encode(text, tok, dtype, bar) for split, text in splits.items()}


def _write_entry(
    entry: Path, key: str, name: str, encoded: dict[str, np.ndarray], tok: Tokenizer
) -> dict[str, np.ndarray]:
    """Write a cache entry (the ``.npy`` files, then ``meta.json``) and read it back; on failure remove what was
    written (and the directory, if this call created it) and re-raise."""
    created = not entry.exists()
    written: list[Path] = []
    try:
        entry.mkdir(parents=True, exist_ok=True)
        for split, ids in encoded.items():
            written.append(entry / f"{split}.npy")
            atomic_write(entry / f"{split}.npy", lambda f, ids=ids: np.save(f, ids, allow_pickle=False))
        arrays = _write_meta(entry, key, name, encoded, tok)
    except OSError:
        for f in written:
            try:
                f.unlink(missing_ok=True)
            except OSError:
                pass
        if created and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        raise
    return arrays


def _write_meta(
    entry: Path, key: str, name: str, encoded: dict[str, np.ndarray], tok: Tokenizer
) -> dict[str, np.ndarray]:
    dtype = _token_dtype(tok.vocab_size)
    lengths = {split: int(len(ids)) for split, ids in encoded.items()}
    digests = {split: _array_digest(ids) for split, ids in encoded.items()}
    meta = {
        "version": _FORMAT_VERSION,
        "key": key,
        "name": name,
        "dtype": str(dtype),
        "lengths": lengths,
        "sha256": digests,
        "tokenizer": tok.to_dict(),
    }
    atomic_write(entry / "meta.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))
    arrays = _load_cached(entry, key, list(encoded))
    if arrays is None:  # pragma: no cover - only if the cache directory is being modified concurrently
        raise OSError(f"token cache entry {str(entry)!r} could not be read back after writing it")
    return arrays
