"""A checkpoint is data, never instructions (issue 8, section 4): loading one follows no path stored in it (data
source, token cache), writes nowhere it names, and its model dimensions are checked against the weights' header
before any module is built, so absurd sizes are refused without allocating."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from attnlab.cli import main
from attnlab.train import checkpoint as ckpt
from attnlab.train.loading import load_trained

from _real_run import CKPT, build_run, text_file


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_run(tmp_path_factory.mktemp("real"))


@pytest.fixture
def run(master: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ATTNLAB_CACHE_DIR", str(tmp_path / "env-cache"))  # the only cache a load may use
    return Path(shutil.copytree(master, tmp_path / "run"))


def _edit_state(run: Path, edit) -> None:
    p = run / CKPT / "state.json"
    s = json.loads(p.read_text())
    edit(s)
    p.write_text(json.dumps(s))


def _redirect(run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Point the stored data source and cache at places outside the run; returns them."""
    target, cache = tmp_path / "elsewhere" / "secret.txt", tmp_path / "elsewhere" / "cache"
    target.parent.mkdir()
    target.write_text(text_file(tmp_path).read_text())
    _edit_state(run, lambda s: s["config"]["data"].update(source=str(target), cache_dir=str(cache)))
    return target, cache


def _files_under(p: Path) -> set[Path]:
    return set(p.rglob("*")) if p.exists() else set()


# --------------------------------------------------------------------------------------------- stored paths


def test_eval_does_not_follow_a_stored_data_path(run: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    target, cache = _redirect(run, tmp_path)
    before = _files_under(tmp_path / "elsewhere")
    assert main(["eval", "--checkpoint", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnlab: error: ") and f"trained on {str(target)!r}, a path stored in the checkpoint" in err
    assert "--data PATH" in err and "--stored-data" in err
    assert _files_under(tmp_path / "elsewhere") == before and not cache.exists()  # nothing read into, nothing written


def test_eval_with_stored_data_shows_the_path_and_still_uses_its_own_cache(run: Path, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    target, cache = _redirect(run, tmp_path)
    assert main(["eval", "--checkpoint", str(run), "--stored-data", "--splits", "val"]) == 0
    out = capsys.readouterr().out
    assert f"data: {target} (the path stored in the checkpoint, --stored-data)" in out
    assert not cache.exists()  # the stored cache directory is never used
    assert list((tmp_path / "env-cache" / "tokens").iterdir())  # $ATTNLAB_CACHE_DIR is
    assert main(["eval", "--checkpoint", str(run), "--stored-data", "--data", str(target)]) == 2
    assert "--data and --stored-data both choose the data" in capsys.readouterr().err


def test_eval_with_data_named_on_the_command_line(run: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    target, cache = _redirect(run, tmp_path)
    mine = tmp_path / "mine.txt"
    mine.write_text(target.read_text())
    assert main(["eval", "--checkpoint", str(run), "--data", str(mine), "--splits", "val", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["data"] == str(mine) and d["val"]["loss"] > 0
    assert not cache.exists()


def test_a_bundled_corpus_name_is_kept(run: Path, tmp_path: Path) -> None:
    """Names of corpora shipped with attnlab are names, not paths: kept (with the caller's cache)."""
    _edit_state(run, lambda s: s["config"]["data"].update(source="tinyshakespeare",
                                                          cache_dir=str(tmp_path / "evil-cache")))
    t = load_trained(run, device="cpu")
    assert t.data_source == "tinyshakespeare" and t.task.data_cfg.cache_dir is None
    assert t.stored_source == "tinyshakespeare"


def test_generate_follows_no_stored_path(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target, cache = _redirect(run, tmp_path)
    before = _files_under(tmp_path)
    assert main(["generate", "--checkpoint", str(run), "--prompt", "A", "--max-new-tokens", "3", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("A")
    assert _files_under(tmp_path) == before  # generate writes nothing anywhere

    # a checkpoint without its tokenizer would need the data to rebuild one: not from a stored path
    _edit_state(run, lambda s: s["task_state"].update(tokenizer=None))
    assert main(["generate", "--checkpoint", str(run)]) == 2
    assert "attnlab: error:" in capsys.readouterr().err
    assert _files_under(tmp_path) == before and not cache.exists()


def test_python_api_refuses_data_from_a_stored_path(run: Path, tmp_path: Path) -> None:
    from attnlab.tasks import EvalContext

    target, cache = _redirect(run, tmp_path)
    t = load_trained(run, device="cpu")
    assert t.data_source is None and t.stored_source == str(target)
    assert t.task.data_cfg.cache_dir is None
    with pytest.raises(ckpt.CheckpointError, match=r"a path stored in the checkpoint, which attnlab does not follow"):
        t.task.evaluate(t.model, "val", EvalContext(device=torch.device("cpu"), batch_size=2))
    t2 = load_trained(run, device="cpu", stored_data=True, cache_dir=str(tmp_path / "c2"))
    assert t2.data_source == str(target)
    assert t2.task.evaluate(t2.model, "val", EvalContext(device=torch.device("cpu"), batch_size=2)).loss > 0
    assert (tmp_path / "c2" / "tokens").is_dir() and not cache.exists()


def test_every_task_has_a_guard_for_unfollowed_data() -> None:
    """A task not listed would make load_trained refuse every checkpoint of it trained on a path."""
    from attnlab.tasks import task_names
    from attnlab.train.loading import _DATA_ATTRIBUTE

    assert set(task_names()) == set(_DATA_ATTRIBUTE)


def test_translation_task_data_is_guarded_too() -> None:
    from attnlab.tasks.translation.task import Translation, TranslationDataConfig
    from attnlab.models.encdec.config import EncDecConfig
    from attnlab.train.loading import _DATA_ATTRIBUTE, _UnfollowedData

    t = Translation(EncDecConfig(d_model=16, n_heads=2), TranslationDataConfig(source="/somewhere/else"), seed=0)
    assert getattr(t, _DATA_ATTRIBUTE["translation"]) is None
    setattr(t, _DATA_ATTRIBUTE["translation"], _UnfollowedData("not followed"))
    with pytest.raises(ckpt.CheckpointError, match="not followed"):
        t.data.encoded


# ---------------------------------------------------------------------------------------- crafted dimensions


def test_crafted_huge_d_model_is_refused_before_allocating(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attnlab.tasks.lm import LanguageModeling

    devices: list[str] = []
    real = LanguageModeling.build_model

    def spy(self):
        devices.append(str(torch.get_default_device()))
        return real(self)

    monkeypatch.setattr(LanguageModeling, "build_model", spy)
    _edit_state(run, lambda s: s["config"]["model"].update(d_model=2**20, n_heads=2))
    t0 = time.perf_counter()
    with pytest.raises(ckpt.CheckpointError, match=r"the model config in state.json does not match the tensors in "
                                                   r"model.safetensors: shape mismatches: .*\(16, 16\) vs model "
                                                   r"\(1048576, 1048576\)"):
        load_trained(run, device="cpu")
    assert devices == ["meta"]  # the model was only ever built on the meta device
    assert time.perf_counter() - t0 < 5


def test_crafted_header_claiming_huge_tensors_is_refused(run: Path) -> None:
    """state.json and the header agree on d_model = 2**20, but the file cannot hold such tensors."""
    _edit_state(run, lambda s: s["config"]["model"].update(d_model=2**20))
    path = run / CKPT / "model.safetensors"
    hdr = json.dumps({"tok_emb.weight": {"dtype": "F32", "shape": [52, 2**20], "data_offsets": [0, 52 * 2**22]}})
    path.write_bytes(len(hdr).to_bytes(8, "little") + hdr.encode() + b"\0" * 64)
    with pytest.raises(ckpt.CheckpointError, match=r"model.safetensors is truncated: tensor 'tok_emb.weight' ends at"):
        load_trained(run, device="cpu")


@pytest.mark.parametrize("key,value,match", [
    ("n_layers", 2**30, r"model.n_layers=1073741824 is absurd"),
    ("n_layers", 4_000, r"more than \d+ parameter tensors but model.safetensors holds \d+"),
    ("n_layers", 200_000, r"the run config cannot be read \(model: n_layers=200000 is more layers than a stack may "
                          r"have \(4096 at most\)\)"),
    ("context_len", 2**40, r"model.context_len=1099511627776 is absurd"),
    ("n_layers", 2, r"missing in checkpoint: blocks.1"),
    ("vocab_size", 7, r"state.json: no model can be built from its config: model.vocab_size=7"),
])
def test_crafted_dimensions_are_refused_quickly(run: Path, key: str, value: int, match: str) -> None:
    _edit_state(run, lambda s: s["config"]["model"].update({key: value}))
    t0 = time.perf_counter()
    with pytest.raises(ckpt.CheckpointError, match=match):
        load_trained(run, device="cpu")
    assert time.perf_counter() - t0 < 5


def test_crafted_tokenizer_that_does_not_fit_the_weights(run: Path) -> None:
    _edit_state(run, lambda s: s["task_state"]["tokenizer"].update(chars=[chr(c) for c in range(32, 132)]))
    with pytest.raises(ckpt.CheckpointError, match=r"lm_head.weight: checkpoint \(52, 16\) vs model \(100, 16\)"):
        load_trained(run, device="cpu")
