"""Checkpoints: safetensors weights + safetensors optimizer tensors + a JSON state, written atomically.

Layout of a run directory::

    RUN/
      ckpt-00000500/            one complete checkpoint (the newest ``keep`` are kept)
        model.safetensors       model weights (tied weights stored once)
        optimizer.safetensors   optimizer tensors, named ``state.<param index>.<name>``
        state.json              step, config, tokenizer, RNG states, data position, optimizer hyper-parameters
      .tmp-ckpt-...             a checkpoint being written (ignored; removed by the next save)

A checkpoint is written into a hidden temporary directory, every file is flushed and fsynced, and only then
is the directory renamed to ``ckpt-<step>`` with :func:`os.replace`, which is atomic on POSIX: a crash at any
moment leaves either the old set of complete checkpoints or the new one, never a half-written one. The newest
checkpoint is the ``ckpt-*`` directory with the largest step; nothing else points at it, so there is no
pointer to go stale. No pickles: nothing in a checkpoint executes code when loaded.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file, save_model
from torch import nn

__all__ = [
    "FORMAT_VERSION",
    "save_checkpoint",
    "find_checkpoint",
    "latest_checkpoint",
    "read_state",
    "load_model_weights",
    "load_optimizer",
    "rng_state",
    "set_rng_state",
    "CheckpointError",
]

FORMAT_VERSION = 2  # 2: run configs with a task (attnlab 0.2); 1: LM-only configs with block_size
CHECKPOINT_PREFIX = _PREFIX = "ckpt-"  # a checkpoint directory is ckpt-<step, 8 digits>


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or does not fit the model."""


# ----------------------------------------------------------------------------------------------------------------
# Writing


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _optimizer_split(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state_dict -> (flat tensors, JSON-able rest)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def save_checkpoint(
    run_dir: str | Path,
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    keep: int = 1,
) -> Path:
    """Write ``ckpt-<step>`` atomically into ``run_dir`` and keep only the newest ``keep`` checkpoints.

    ``model`` must be the bare module (not DDP / compiled wrappers). ``state`` is merged into ``state.json``
    (it must be JSON-serialisable). Returns the checkpoint directory.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob(".tmp-ckpt-*"):  # leftovers of a crashed save
        shutil.rmtree(stale, ignore_errors=True)
    tmp = run_dir / f".tmp-ckpt-{step:08d}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    full_state = {"format": FORMAT_VERSION, "step": int(step), **state}
    save_model(model, str(tmp / "model.safetensors"))
    if optimizer is not None:
        tensors, rest = _optimizer_split(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        full_state["optimizer"] = rest
    with open(tmp / "state.json", "w") as f:
        json.dump(full_state, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    for p in tmp.iterdir():
        _fsync_file(p)
    _fsync_dir(tmp)
    final = run_dir / f"{_PREFIX}{step:08d}"
    if final.exists():  # re-saving a step: move the old one out of the way first (it is complete; so is tmp)
        trash = run_dir / f".tmp-ckpt-old-{uuid.uuid4().hex[:8]}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(run_dir)
    for old in _complete_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------------------------------------------
# Finding and reading


def _complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints in ``run_dir``, oldest first."""
    found = []
    for p in run_dir.glob(f"{_PREFIX}*"):
        if p.is_dir() and (p / "state.json").is_file() and (p / "model.safetensors").is_file():
            try:
                found.append((int(p.name[len(_PREFIX) :]), p))
            except ValueError:
                continue
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint in ``run_dir``, or ``None``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    found = _complete_checkpoints(run_dir)
    return found[-1] if found else None


def find_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a checkpoint directory, else the newest checkpoint in run directory ``path``."""
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"checkpoint path {str(path)!r} does not exist")
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise CheckpointError(
            f"no checkpoint in {str(path)!r}: expected a directory with state.json, or a run directory "
            f"holding {_PREFIX}<step>/ directories"
        )
    return ckpt


def read_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """The JSON state of a checkpoint."""
    ckpt_dir = find_checkpoint(ckpt_dir)
    try:
        state = json.loads((ckpt_dir / "state.json").read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{ckpt_dir / 'state.json'} is not valid JSON: {e}") from None
    if state.get("format") != FORMAT_VERSION:
        hint = (" (written by attnlab 0.1, before tasks and the renamed config keys; retrain, or load its "
                "model.safetensors by hand)" if state.get("format") == 1 else "")
        raise CheckpointError(
            f"{ckpt_dir}: checkpoint format {state.get('format')!r} is not supported (expected {FORMAT_VERSION}){hint}"
        )
    return state


def load_model_weights(ckpt_dir: str | Path, model: nn.Module) -> None:
    """Load the weights of ``ckpt_dir`` into ``model``; any mismatch of names or shapes is a clear error."""
    ckpt_dir = find_checkpoint(ckpt_dir)
    path = ckpt_dir / "model.safetensors"
    own = model.state_dict()
    with safe_open(str(path), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    unexpected = sorted(set(shapes) - set(own))
    wrong = [f"{k}: checkpoint {shapes[k]} vs model {tuple(own[k].shape)}"
             for k in shapes if k in own and tuple(own[k].shape) != shapes[k]]
    # Tied weights are stored once under one of their names: a missing key is fine when it shares storage
    # with a stored one.
    stored_ptrs = {own[k].data_ptr() for k in shapes if k in own}
    missing = sorted(k for k in set(own) - set(shapes) if own[k].data_ptr() not in stored_ptrs)
    if unexpected or wrong or missing:
        parts = []
        if wrong:
            parts.append("shape mismatches: " + "; ".join(wrong[:8]) + (" ..." if len(wrong) > 8 else ""))
        if missing:
            parts.append(f"missing in checkpoint: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
        if unexpected:
            parts.append(f"not in model: {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else ""))
        raise CheckpointError(
            f"checkpoint {str(ckpt_dir)!r} was saved from a different architecture: " + " | ".join(parts)
        )
    tensors = load_file(str(path), device="cpu")
    with torch.no_grad():
        for k, t in tensors.items():
            own[k].copy_(t.to(own[k].dtype))


def load_optimizer(ckpt_dir: str | Path, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Restore optimizer tensors and hyper-parameters saved by :func:`save_checkpoint`."""
    ckpt_dir = find_checkpoint(ckpt_dir)
    if "optimizer" not in state or not (ckpt_dir / "optimizer.safetensors").is_file():
        raise CheckpointError(f"checkpoint {str(ckpt_dir)!r} holds no optimizer state (weights only)")
    tensors = load_file(str(ckpt_dir / "optimizer.safetensors"), device="cpu")
    opt_state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        _, idx, name = key.split(".", 2)
        opt_state.setdefault(int(idx), {})[name] = t
    for idx, rest in state["optimizer"].get("scalars", {}).items():
        opt_state.setdefault(int(idx), {}).update(rest)
    groups = []
    for g in state["optimizer"]["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    n_own = sum(len(g["params"]) for g in optimizer.param_groups)
    n_saved = sum(len(g["params"]) for g in groups)
    if n_own != n_saved or len(groups) != len(optimizer.param_groups):
        raise CheckpointError(
            f"optimizer state in {str(ckpt_dir)!r} covers {n_saved} parameters in {len(groups)} groups; "
            f"this optimizer has {n_own} in {len(optimizer.param_groups)}"
        )
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})


# ----------------------------------------------------------------------------------------------------------------
# RNG states (JSON-able: base64 of the raw generator state bytes)


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state() -> dict[str, Any]:
    """The global torch RNG states (CPU and every CUDA device) as JSON-able strings."""
    out: dict[str, Any] = {"torch": _b64(torch.get_rng_state())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        saved = [_unb64(s) for s in state["cuda"]]
        if len(saved) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(saved)
