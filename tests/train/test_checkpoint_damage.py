"""Damaged checkpoints and run directories: one clear error naming the file, from the Python API, ``attnlab eval``,
``attnlab generate`` and ``attnlab train --resume`` alike; a torn metrics line does not block a resume; a full disk
while writing a checkpoint says which one failed and that the previous one is intact (issue 8, section 1)."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path
from typing import Callable

import pytest

from attnlab.cli import main
from attnlab.train import checkpoint as ckpt
from attnlab.train.loading import load_trained
from attnlab.train.trainer import Trainer

from _real_run import CKPT, build_run, saved_config, train_args


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_run(tmp_path_factory.mktemp("real"))


@pytest.fixture
def run(master: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(master, tmp_path / "run"))


def _resume_args(run: Path, steps: int) -> list[str]:
    """``attnlab train --resume`` of the copied run (the same data and cache as the master run)."""
    return train_args(Path(saved_config(run).data.source).parent, run, steps=steps) + ["--resume"]


def _truncate(name: str, n: int) -> Callable[[Path], None]:
    def f(c: Path) -> None:
        (c / name).write_bytes((c / name).read_bytes()[:n])
    return f


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda c: (c / name).write_bytes(data)


def _state(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def f(c: Path) -> None:
        s = json.loads((c / "state.json").read_text())
        edit(s)
        (c / "state.json").write_text(json.dumps(s))
    return f


HUGE_HEADER = (2**62).to_bytes(8, "little") + b"{}"

# (damage, the file the error must name, a phrase of the error); each breaks what loading a model needs
MODEL_DAMAGE = {
    "model truncated in its header": (_truncate("model.safetensors", 100), "model.safetensors", "is truncated"),
    "model truncated in its data": (_truncate("model.safetensors", 1500), "model.safetensors", "is truncated"),
    "model garbage": (_write("model.safetensors", b"garbage!" * 10), "model.safetensors", "not a valid safetensors"),
    "model huge header length": (_write("model.safetensors", HUGE_HEADER), "model.safetensors", "header length"),
    "model empty": (_write("model.safetensors", b""), "model.safetensors", "is truncated: 0 bytes"),
    "model header not json": (_write("model.safetensors", (4).to_bytes(8, "little") + b"\xff\xfe{}"),
                              "model.safetensors", "header is not JSON"),
    "model missing": (lambda c: (c / "model.safetensors").unlink(), "model.safetensors", "is incomplete"),
    "state.json missing": (lambda c: (c / "state.json").unlink(), "state.json", "is incomplete"),
    "state.json garbage": (_write("state.json", b"{ not json"), "state.json", "not valid JSON"),
    "state.json a list": (_write("state.json", b"[1, 2]"), "state.json", "must hold a JSON object, got a list"),
    "state.json binary": (_write("state.json", b"\xff\xfe\x00"), "state.json", "not UTF-8"),
    "step missing": (_state(lambda s: s.pop("step")), "state.json", "'step' is missing"),
    "step wrong type": (_state(lambda s: s.update(step="two")), "state.json", "'step' must be a non-negative integer"),
    "config missing": (_state(lambda s: s.pop("config")), "state.json", "'config' is missing"),
    "config wrong type": (_state(lambda s: s.update(config=[1])), "state.json", "'config' must be an object"),
    "task_state wrong type": (_state(lambda s: s.update(task_state="x")), "state.json", "'task_state' must be"),
}
# ... and what resuming needs besides
RESUME_DAMAGE = {
    "optimizer truncated": (_truncate("optimizer.safetensors", 200), "optimizer.safetensors", "is truncated"),
    "optimizer garbage": (_write("optimizer.safetensors", b"\x00" * 3), "optimizer.safetensors", "is truncated"),
    "optimizer huge header": (_write("optimizer.safetensors", HUGE_HEADER), "optimizer.safetensors", "header length"),
    "optimizer missing": (lambda c: (c / "optimizer.safetensors").unlink(), "", "optimizer.safetensors is missing"),
    "tokens_seen missing": (_state(lambda s: s.pop("tokens_seen")), "state.json", "'tokens_seen' is missing"),
    "tokens_seen negative": (_state(lambda s: s.update(tokens_seen=-1)), "state.json", "'tokens_seen' must be"),
    "rng missing": (_state(lambda s: s.pop("rng")), "state.json", "'rng' is missing"),
    "rng wrong size": (_state(lambda s: s.update(rng={"torch": "AAAA"})), "state.json", "RNG state of 3 bytes"),
    "rng not base64": (_state(lambda s: s.update(rng={"torch": "%%%"})), "state.json", "not a base64 RNG state"),
    "rng no torch": (_state(lambda s: s.update(rng={})), "state.json", "no 'torch' entry"),
    "optimizer groups wrong": (_state(lambda s: s["optimizer"].update(param_groups="x")), "state.json",
                               "optimizer.param_groups"),
}


def _check(err: str, ckpt_dir: Path, file: str, phrase: str) -> None:
    assert phrase in err
    assert str(ckpt_dir / file) in err if file else str(ckpt_dir) in err
    assert "Traceback" not in err


@pytest.mark.parametrize("case", list(MODEL_DAMAGE))
def test_damaged_checkpoint_is_one_clear_error_everywhere(run: Path, case: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    damage, file, phrase = MODEL_DAMAGE[case]
    cfg, resume_args = saved_config(run, steps=4), _resume_args(run, 4)
    damage(run / CKPT)
    with pytest.raises(ckpt.CheckpointError) as e:
        load_trained(run, device="cpu")
    _check(str(e.value), run / CKPT, file, phrase)
    with pytest.raises(ckpt.CheckpointError) as e:
        Trainer(cfg, out_dir=run, resume=True, log=None)
    _check(str(e.value), run / CKPT, file, phrase)
    for cmd in (["eval", "--checkpoint", str(run)], ["generate", "--checkpoint", str(run), "--max-new-tokens", "2"],
                resume_args):
        capsys.readouterr()
        assert main(cmd) == 2, cmd
        err = capsys.readouterr().err
        assert err.startswith("attnlab: error: ") and err.count("\n") == 1, err
        _check(err, run / CKPT, file, phrase)


@pytest.mark.parametrize("case", list(RESUME_DAMAGE))
def test_damage_to_what_resuming_needs_is_a_clear_error(run: Path, case: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    damage, file, phrase = RESUME_DAMAGE[case]
    cfg, resume_args = saved_config(run, steps=4), _resume_args(run, 4)
    damage(run / CKPT)
    with pytest.raises(ckpt.CheckpointError) as e:
        Trainer(cfg, out_dir=run, resume=True, log=None)
    _check(str(e.value), run / CKPT, file, phrase)
    capsys.readouterr()
    assert main(resume_args) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnlab: error: ")
    _check(err, run / CKPT, file, phrase)
    assert ckpt.latest_checkpoint(run) == run / CKPT  # nothing was written


def test_a_damaged_newest_checkpoint_is_never_skipped_silently(run: Path) -> None:
    """An older complete checkpoint beside a damaged newer one: resuming from the older one would silently go
    back in time (and a run directory whose only checkpoint is damaged would restart from step 0)."""
    shutil.copytree(run / CKPT, run / "ckpt-00000001")
    (run / CKPT / "model.safetensors").unlink()
    with pytest.raises(ckpt.CheckpointError, match=r"ckpt-00000002' is incomplete: .*ckpt-00000002/model.safetensors is missing"):
        ckpt.latest_checkpoint(run)
    with pytest.raises(ckpt.CheckpointError, match="move that directory aside"):
        Trainer(saved_config(run, steps=4), out_dir=run, resume=True, log=None)
    shutil.move(run / CKPT, run.parent / "aside")  # what the message says to do
    assert ckpt.latest_checkpoint(run) == run / "ckpt-00000001"


def test_api_checks_work_on_their_own(run: Path) -> None:
    """The building blocks: header reading, shape checking, optimizer name checking, set_rng_state."""
    import torch
    from safetensors.torch import save_file

    header = ckpt.read_tensor_header(run / CKPT / "model.safetensors")
    assert header["blocks.0.attn.out_proj.weight"] == ("F32", (16, 16))
    save_file({"weird": torch.zeros(2)}, str(run / CKPT / "optimizer.safetensors"))
    state = ckpt.read_state(run)
    model = load_trained(run, device="cpu", stored_data=True).model
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(ckpt.CheckpointError, match=r"optimizer.safetensors holds a tensor 'weird'; expected names"):
        ckpt.load_optimizer(run, opt, state)
    with pytest.raises(ckpt.CheckpointError, match="invalid RNG state"):
        ckpt.set_rng_state({"torch": "AAAA"})
    # a crafted header whose tensor claims more bytes than its shape
    bad = run / "bad.safetensors"
    hdr = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    bad.write_bytes(len(hdr).to_bytes(8, "little") + hdr + b"\0" * 8)
    with pytest.raises(ckpt.CheckpointError, match=r"tensor 'w' in its header has shape \[4\] \(F32\) but 8 bytes"):
        ckpt.read_tensor_header(bad)


# ---------------------------------------------------------------------------------------------- metrics.jsonl


def test_torn_last_metrics_line_does_not_block_resume(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jsonl = run / "metrics.jsonl"
    good = jsonl.read_text()
    jsonl.write_text(good + '{"kind": "train", "step": 3, "lo')  # a crash in the middle of a write
    logs: list[str] = []
    t = Trainer(saved_config(run, steps=4), out_dir=run, resume=True, log=logs.append)
    t.fit()
    torn = list(run.glob("metrics.jsonl.torn-*"))
    assert len(torn) == 1 and torn[0].read_text() == '{"kind": "train", "step": 3, "lo\n'
    assert sum("torn line" in m for m in logs) == 1 and str(torn[0]) in next(m for m in logs if "torn line" in m)
    recs = [json.loads(line) for line in jsonl.read_text().splitlines()]  # every line is a record again
    steps = [r["step"] for r in recs if r["kind"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 4  # one run's records, continued


def test_torn_metrics_line_through_the_cli(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text() + '{"kind": "tr')
    assert main(_resume_args(run, 3)) == 0
    assert "ended with a torn line" in capsys.readouterr().out
    assert len(list(run.glob("metrics.jsonl.torn-*"))) == 1


def test_a_bad_line_before_the_last_is_a_clear_error(run: Path) -> None:
    from attnlab.train.metrics import read_jsonl

    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not a JSON record"):
        read_jsonl(run / "metrics.jsonl")
    with pytest.raises(ValueError, match="line 2"):
        Trainer(saved_config(run, steps=4), out_dir=run, resume=True, log=None)


def test_read_jsonl_leaves_out_a_torn_last_line(tmp_path: Path) -> None:
    from attnlab.train.metrics import read_jsonl

    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 1}\n{"step": 2}\n{"st')
    assert read_jsonl(p) == [{"step": 1}, {"step": 2}]


# ----------------------------------------------------------------------------------------------- a full disk


def test_disk_full_while_writing_a_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from standin import TinyLM

    model = TinyLM(11)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ckpt.save_checkpoint(tmp_path, step=5, model=model, optimizer=opt, state={"note": "five"})

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", full)  # model.safetensors is written, then the disk is full
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.save_checkpoint(tmp_path, step=10, model=model, optimizer=opt, state={"note": "ten"})
    msg = str(e.value)
    assert f"could not write checkpoint {str(tmp_path / 'ckpt-00000010')!r}: the disk is full" in msg
    assert f"the previous checkpoint {str(tmp_path / 'ckpt-00000005')!r} is intact" in msg
    assert "the partial temporary directory was removed" in msg
    assert isinstance(e.value.__cause__, OSError) and e.value.__cause__.errno == errno.ENOSPC
    assert not list(tmp_path.glob(".tmp-ckpt-*"))
    assert ckpt.read_state(tmp_path)["note"] == "five"

    # the temporary directory cannot be removed either: its path is given
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(ckpt.CheckpointError, match=r"the partial temporary directory '.*\.tmp-ckpt-00000010-\w+' "
                                                   r"could not be removed"):
        ckpt.save_checkpoint(tmp_path, step=10, model=model, optimizer=opt, state={})


def test_disk_full_during_training_through_the_cli(run: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_model", full)
    capsys.readouterr()
    assert main(_resume_args(run, 4)) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnlab: error: could not write checkpoint") and "ckpt-00000004" in err
    assert f"the previous checkpoint {str(run / CKPT)!r} is intact" in err
    assert ckpt.latest_checkpoint(run) == run / CKPT


def test_resave_of_a_step_that_fails_keeps_the_old_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from standin import TinyLM

    model = TinyLM(11)
    ckpt.save_checkpoint(tmp_path, step=5, model=model, optimizer=None, state={"note": "first"})
    import os

    real = os.replace
    calls = {"n": 0}

    def second_rename_fails(a, b):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real(a, b)

    monkeypatch.setattr(os, "replace", second_rename_fails)
    with pytest.raises(ckpt.CheckpointError, match="Input/output error"):
        ckpt.save_checkpoint(tmp_path, step=5, model=model, optimizer=None, state={"note": "second"})
    monkeypatch.undo()
    assert ckpt.read_state(tmp_path)["note"] == "first"


def test_disk_full_while_writing_metrics_through_the_cli(run: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from attnlab.train.metrics import MetricsWriter

    def full(self, rec):
        raise OSError(errno.ENOSPC, "No space left on device", str(run / "metrics.jsonl"))

    monkeypatch.setattr(MetricsWriter, "log", full)
    capsys.readouterr()
    assert main(_resume_args(run, 4)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"attnlab: error: could not write {run / 'metrics.jsonl'} in {run}: No space left")
    assert f"the newest complete checkpoint {str(run / CKPT)!r} is intact (continue with --resume)" in err
    assert "Traceback" not in err
