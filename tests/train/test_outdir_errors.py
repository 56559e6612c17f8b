"""Output and cache locations that cannot be used (issue 8, sections 1 and 6): an --out under a regular file, an
unwritable one, a non-empty one holding files that are not attnlab results; a token cache location that is a file,
read-only or damaged (built in memory, one warning); a failed encode leaves no cache entry behind."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from attnlab.cli import main
from attnlab.train.outdir import OutputDirError, prepare_out_dir, refuse_used_out_dir, run_lock

from _real_run import text_file, train_args

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ------------------------------------------------------------------------------------------------------ --out


def test_out_under_a_regular_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "run"
    assert main(train_args(tmp_path, out)) == 2
    err = capsys.readouterr().err
    assert err == (f"attnlab: error: output directory {str(out)!r} cannot be created: {str(tmp_path / 'afile')!r} is "
                   "a file, not a directory\n")
    with pytest.raises(OutputDirError, match="is a file, not a directory"):
        prepare_out_dir(out)
    with pytest.raises(OutputDirError, match="is a file, not a directory"):
        run_lock(out).acquire()


def test_out_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.write_text("x")
    assert main(train_args(tmp_path, out)) == 2
    assert f"output path {str(out)!r} exists and is not a directory" in capsys.readouterr().err
    with pytest.raises(OutputDirError, match="exists and is not a directory"):
        refuse_used_out_dir(out)


def test_trainer_api_out_under_a_file(tmp_path: Path) -> None:
    from attnlab.train.trainer import Trainer
    from standin import TinyLM, tiny_corpus
    from attnlab.models.lm import LMConfig
    from attnlab.train.config import TrainConfig

    (tmp_path / "afile").write_text("x")
    cfg = TrainConfig(model=LMConfig(context_len=16, d_model=16, n_heads=2), steps=1, batch_size=2,
                      progress=False, tensorboard=False, device="cpu")
    with pytest.raises(OutputDirError, match="is a file, not a directory"):
        Trainer(cfg, data=tiny_corpus(), model=TinyLM(11), out_dir=tmp_path / "afile" / "run", log=None)


@pytest.mark.skipif(IS_ROOT, reason="running as root: permissions do not stop root from writing (the file-in-the-way "
                                    "cases above cover the error path)")
def test_unwritable_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "run").mkdir()
    ro.chmod(0o555)
    (ro / "run").chmod(0o555)
    try:
        with pytest.raises(OutputDirError, match="not writable|cannot create"):
            prepare_out_dir(ro / "run")
        assert main(train_args(tmp_path, ro / "new")) == 2
        assert "cannot create" in capsys.readouterr().err
    finally:
        (ro / "run").chmod(0o755)
        ro.chmod(0o755)


def test_unwritable_out_detected_by_a_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same check as root would see on a read-only mount: the probe write fails."""
    out = tmp_path / "run"
    real = Path.write_bytes

    def refuse(self, data):
        if self.name.startswith(".attnlab-write-test"):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", refuse)
    with pytest.raises(OutputDirError, match=rf"output directory {str(out)!r} is not writable: Permission denied"):
        prepare_out_dir(out)


def test_unrelated_files_get_their_own_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError) as e:
        prepare_out_dir(out)
    msg = str(e.value)
    assert "already holds results" not in msg
    assert f"output directory {str(out)!r} is not empty: it holds files that are not attnlab results (notes.txt)" in msg
    assert main(train_args(tmp_path, out)) == 2
    err = capsys.readouterr().err
    assert "not attnlab results (notes.txt)" in err and "already holds results" not in err
    assert (out / "notes.txt").read_text() == "mine"  # untouched
    # with a result among them, the results are named
    (out / "metrics.jsonl").write_text("")
    (out / "ckpt-00000001").mkdir()
    with pytest.raises(OutputDirError, match=r"already holds results; pass --resume .*\(it holds ckpt-00000001, metrics.jsonl\)"):
        prepare_out_dir(out)


def test_a_comparison_directory_counts_as_results(tmp_path: Path) -> None:
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "compare.json").write_text("{}")
    with pytest.raises(OutputDirError, match=r"already holds results; .*\(it holds compare.json\)"):
        prepare_out_dir(tmp_path / "cmp")


# ----------------------------------------------------------------------------------------------- token cache


def _load(src: Path, cache: Path | None = None):
    from attnlab.data import load_corpus

    return load_corpus(str(src), cache_dir=cache, progress=False)


def test_cache_dir_that_is_a_file_falls_back_to_memory_with_one_warning(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    src = text_file(tmp_path)
    bad = tmp_path / "cachefile"
    bad.write_text("not a directory")
    monkeypatch.setenv("ATTNLAB_CACHE_DIR", str(bad))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        a = _load(src)
        b = _load(src)
    msgs = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
    assert len(msgs) == 1 and f"token cache {str(bad)!r} cannot be used" in msgs[0] and "in memory instead" in msgs[0]
    assert a.cache_path is None and np.array_equal(a.train, b.train)
    assert not a.train.flags.writeable
    good = _load(src, tmp_path / "good")
    assert np.array_equal(good.train, a.train) and good.cache_path is not None
    assert bad.read_text() == "not a directory"


def test_damaged_cache_location_falls_back(tmp_path: Path) -> None:
    """``tokens`` is a file where the cache expects a directory: encoded in memory, the file left alone."""
    src = text_file(tmp_path)
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / "tokens").write_text("junk")
    with pytest.warns(RuntimeWarning, match="cannot be used"):
        c = _load(src, cache)
    assert c.cache_path is None and len(c.train) > 0 and (cache / "tokens").read_text() == "junk"


def test_cache_entry_that_cannot_be_replaced(tmp_path: Path) -> None:
    """An entry whose train.npy is a directory: the rebuild cannot write there; memory, and no debris."""
    src = text_file(tmp_path)
    cache = tmp_path / "c"
    c = _load(src, cache)
    entry = c.cache_path
    (entry / "train.npy").unlink()
    (entry / "train.npy").mkdir()
    with pytest.warns(RuntimeWarning, match="cannot be used"):
        again = _load(src, cache)
    assert again.cache_path is None and np.array_equal(again.train, c.train)
    assert not [p for p in entry.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(IS_ROOT, reason="running as root: a read-only directory does not stop root from writing (the "
                                    "file-in-the-way cases above cover the fallback)")
def test_read_only_cache_dir_falls_back(tmp_path: Path) -> None:
    src = text_file(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.warns(RuntimeWarning, match="cannot be used"):
            assert _load(src, ro).cache_path is None
    finally:
        ro.chmod(0o755)


def test_failed_encode_leaves_no_cache_entry(tmp_path: Path) -> None:
    from attnlab.data import load_corpus
    from attnlab.data.tokenizers import CharTokenizer

    src = text_file(tmp_path)
    cache = tmp_path / "c"
    with pytest.raises(ValueError):
        load_corpus(str(src), tokenizer=CharTokenizer(list("abc")), cache_dir=cache, progress=False)
    assert not (cache / "tokens").exists() or not list((cache / "tokens").iterdir())


def test_failed_cache_write_leaves_no_partial_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import attnlab.data.corpus as corpus_mod

    src = text_file(tmp_path)
    real = corpus_mod.atomic_write

    def full_at_meta(path, write):
        if Path(path).name == "meta.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, write)

    monkeypatch.setattr(corpus_mod, "atomic_write", full_at_meta)
    with pytest.warns(RuntimeWarning, match="No space left on device"):
        c = _load(src, tmp_path / "c")
    assert c.cache_path is None
    assert not list((tmp_path / "c" / "tokens").iterdir())  # the .npy files written before meta.json are gone


def test_subword_cache_dir_that_is_a_file(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    from attnlab.data import SubwordConfig, build_subword_tokenizer, load_parallel

    d = tmp_path / "par"
    d.mkdir()
    for split, n in (("train", 40), ("val", 5), ("test", 5)):
        (d / f"{split}.de").write_text("".join(f"ein hund {i} läuft.\n" for i in range(n)))
        (d / f"{split}.en").write_text("".join(f"a dog {i} runs.\n" for i in range(n)))
    corpus = load_parallel(str(d), src_lang="de", tgt_lang="en")
    bad = tmp_path / "cachefile"
    bad.write_text("x")
    with pytest.warns(RuntimeWarning, match="training the subword tokenizer in memory instead"):
        tok = build_subword_tokenizer(corpus, SubwordConfig(vocab_size=300, min_frequency=1), cache_dir=bad)
    assert tok.encode("ein hund") and bad.read_text() == "x"
