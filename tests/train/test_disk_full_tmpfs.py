"""Fault test: a checkpoint written to a really full file system (a small tmpfs), where the machine allows it.

Mounting needs root and a kernel that lets this process mount (not most CI containers); elsewhere the test is
skipped with the reason, and the ENOSPC path is still covered by the monkeypatched tests in
test_checkpoint_damage.py.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import torch

from attnlab.train import checkpoint as ckpt


@pytest.fixture
def small_fs(tmp_path: Path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real small file system needs root and mount(8); ENOSPC is covered by monkeypatched tests")
    size_kb = 96
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", f"attnlab-test-{uuid.uuid4().hex[:6]}",
                        str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); ENOSPC is covered by "
                    "monkeypatched tests")
    try:
        yield mnt, size_kb * 1024
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_checkpoint_on_a_full_file_system(small_fs: tuple[Path, int]) -> None:
    run, capacity = small_fs
    model = torch.nn.Linear(64, 64)  # 4,160 float32 parameters: about 17 KB of weights, 33 KB of AdamW state
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 64)).sum().backward()
    opt.step()
    ckpt.save_checkpoint(run, step=1, model=model, optimizer=opt, state={"note": "one"})
    used = sum(f.stat().st_size for f in (run / "ckpt-00000001").iterdir())
    assert 2 * used > capacity, "the file system must be too small for a second checkpoint beside the first"
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.save_checkpoint(run, step=2, model=model, optimizer=opt, state={"note": "two"})
    msg = str(e.value)
    assert f"could not write checkpoint {str(run / 'ckpt-00000002')!r}: the disk is full" in msg
    assert f"the previous checkpoint {str(run / 'ckpt-00000001')!r} is intact" in msg
    assert isinstance(e.value.__cause__, OSError) and e.value.__cause__.errno == errno.ENOSPC
    assert not list(run.glob(".tmp-ckpt-*")), "the partial temporary directory is removed"
    assert ckpt.latest_checkpoint(run) == run / "ckpt-00000001"
    assert ckpt.read_state(run)["note"] == "one"
    fresh = torch.nn.Linear(64, 64)
    ckpt.load_model_weights(run / "ckpt-00000001", fresh)  # the previous checkpoint still loads
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
