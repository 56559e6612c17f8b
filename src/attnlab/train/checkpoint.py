"""Checkpoints: safetensors weights + safetensors optimizer tensors + a JSON state, written atomically.

Layout of a run directory::

    RUN/
      ckpt-00000500/            one complete checkpoint (the newest ``keep`` are kept)
        model.safetensors       model weights (tied weights stored once)
        optimizer.safetensors   optimizer tensors, named ``state.<param index>.<name>``
        state.json              step, config, tokenizer, RNG states, data position, optimizer hyper-parameters
      ckpt-00001000/            a sharded (distributed) checkpoint of an FSDP run (``fsdp_checkpoint="sharded"``)
        shards/                 torch.distributed.checkpoint: each rank's shards of the model and optimizer state
                                (``__<rank>_0.distcp``) and the index (``.metadata``)
        state.json              as above
        model.safetensors       only after :func:`consolidate` (``attnlab consolidate``), for eval/generate/export
      .tmp-ckpt-...             a checkpoint being written (ignored; removed by the next save)

A checkpoint is written into a hidden temporary directory, every file is flushed and fsynced, and only then
is the directory renamed to ``ckpt-<step>`` with :func:`os.replace`, which is atomic on POSIX: a crash at any
moment leaves either the old set of complete checkpoints or the new one, never a half-written one. The newest
checkpoint is the ``ckpt-*`` directory with the largest step; nothing else points at it, so there is no
pointer to go stale. No pickles: nothing in a checkpoint executes code when loaded.
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import os
import re
import shlex
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, save_model
from torch import nn

from attnlab.train.checkpoint_checks import (
    MAX_HEADER_BYTES,
    CheckpointError,
    _check_key,
    _check_optimizer_section,
    _incomplete_error,
    _is_int,
    _unb64,
    check_resume_state,
    read_tensor_header,
)

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
    "read_tensor_header",
    "check_resume_state",
    "CheckpointError",
    "SHARDS",
    "is_sharded",
    "weights_file",
    "consolidate",
    "MAX_HEADER_BYTES",
]

FORMAT_VERSION = 2  # 2: run configs with a task (attnlab 0.2); 1: LM-only configs with block_size
CHECKPOINT_PREFIX = _PREFIX = "ckpt-"  # a checkpoint directory is ckpt-<step, 8 digits>
SHARDS = "shards"  # a sharded checkpoint's torch.distributed.checkpoint directory


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


def _fsync_tree(path: Path) -> None:
    """fsync every file under ``path`` and every directory, deepest first."""
    for p in sorted(path.rglob("*"), key=lambda q: len(q.parts), reverse=True):
        _fsync_dir(p) if p.is_dir() else _fsync_file(p)
    _fsync_dir(path)


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
    model: nn.Module | None,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    keep: int = 1,
    tmp: Path | None = None,
) -> Path:
    """Write ``ckpt-<step>`` atomically into ``run_dir`` and keep only the newest ``keep`` checkpoints.

    ``model`` must be the bare module (not DDP / compiled wrappers). ``state`` is merged into ``state.json``
    (it must be JSON-serialisable). Returns the checkpoint directory. ``tmp``: a temporary directory of
    ``run_dir`` (``.tmp-ckpt-...``) already holding the tensors (a sharded checkpoint's ``shards/``, written by
    every rank); then ``model`` and ``optimizer`` are ``None`` and only ``state.json`` is added before the rename.

    Raises:
        CheckpointError: the files could not be written (e.g. the disk is full: ``errno.ENOSPC``). The message
            names the checkpoint that failed and the previous one, which is intact; the partial temporary
            directory is removed (or, if that fails too, its path is given).
    """
    run_dir = Path(run_dir)
    final = run_dir / f"{_PREFIX}{step:08d}"
    prefilled = tmp is not None
    tmp = tmp if tmp is not None else temporary_dir(run_dir, step)
    trash: Path | None = None
    try:
        if not prefilled:
            run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(run_dir)
            tmp.mkdir()
        full_state = {"format": FORMAT_VERSION, "step": int(step), **state}
        if model is not None:
            save_model(model, str(tmp / "model.safetensors"))
        if optimizer is not None:
            tensors, rest = _optimizer_split(optimizer)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            full_state["optimizer"] = rest
        with open(tmp / "state.json", "w") as f:
            json.dump(full_state, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        _fsync_tree(tmp)
        if final.exists():  # re-saving a step: move the old one out of the way first (it is complete; so is tmp)
            trash = run_dir / f".tmp-ckpt-old-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
            trash = None
        else:
            os.replace(tmp, final)
        _fsync_dir(run_dir)
    except (OSError, SafetensorError) as e:
        os_error = _os_error(e)
        raise _save_error(os_error, run_dir, final, tmp, trash) from os_error
    for old in _complete_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def temporary_dir(run_dir: Path, step: int) -> Path:
    """A fresh name for the temporary directory of checkpoint ``step`` (not created)."""
    return run_dir / f".tmp-ckpt-{step:08d}-{uuid.uuid4().hex[:8]}"


def remove_stale_temporaries(run_dir: Path) -> None:
    """Remove the leftovers of crashed saves (``.tmp-ckpt-*``) from ``run_dir``."""
    for stale in run_dir.glob(".tmp-ckpt-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _os_error(e: Exception) -> OSError:
    """``e`` as an ``OSError``: safetensors' writer reports I/O failures (a full disk too) as a ``SafetensorError``
    whose message ends in ``(os error N)``; the errno is recovered from it."""
    if isinstance(e, OSError):
        return e
    m = re.search(r"\(os error (\d+)\)", str(e))
    code = int(m.group(1)) if m else errno.EIO
    return OSError(code, os.strerror(code) if m else str(e))


def _save_error(e: OSError, run_dir: Path, final: Path, tmp: Path, trash: Path | None) -> CheckpointError:
    """The error of a failed save: which checkpoint, what failed, that the previous one is intact, where the debris
    is. Removes the partial temporary directory (and puts back a re-saved step's old checkpoint)."""
    if trash is not None and trash.is_dir() and not final.exists():
        try:  # a re-save of a step failed between its two renames: the old complete checkpoint goes back
            os.replace(trash, final)
        except OSError:  # pragma: no cover
            pass
    if tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    debris = (f"the partial temporary directory {str(tmp)!r} could not be removed (remove it by hand; the next save "
              "also removes it)" if tmp.exists() else "the partial temporary directory was removed")
    what = e.strerror or str(e)
    if e.errno == errno.ENOSPC:
        what = f"the disk is full ({what})"
    elif e.filename:
        what = f"{what}: {e.filename}"
    try:
        previous = _complete_checkpoints(run_dir) if run_dir.is_dir() else []
    except OSError:  # pragma: no cover
        previous = []
    prev = (f"the previous checkpoint {str(previous[-1])!r} is intact" if previous
            else "there is no previous checkpoint in this run directory")
    return CheckpointError(f"could not write checkpoint {str(final)!r}: {what}; {prev}; {debris}")


# ----------------------------------------------------------------------------------------------------------------
# Finding and reading


def _checkpoint_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """Every ``ckpt-<step>`` directory of ``run_dir`` (complete or not), oldest first."""
    found = []
    for p in run_dir.glob(f"{_PREFIX}*"):
        if p.is_dir():
            try:
                found.append((int(p.name[len(_PREFIX) :]), p))
            except ValueError:
                continue
    return sorted(found)


def is_sharded(ckpt_dir: str | Path) -> bool:
    """Whether ``ckpt_dir`` holds a sharded (torch.distributed.checkpoint) model and optimizer state."""
    return (Path(ckpt_dir) / SHARDS / ".metadata").is_file()


def _has_weights(ckpt_dir: Path) -> bool:
    """Whether ``ckpt_dir`` holds model weights of either kind: ``model.safetensors`` or sharded ones."""
    return (ckpt_dir / "model.safetensors").is_file() or is_sharded(ckpt_dir)


def _missing_files(ckpt_dir: Path) -> list[str]:
    missing = [] if (ckpt_dir / "state.json").is_file() else ["state.json"]
    if not _has_weights(ckpt_dir):  # named by the file of its kind
        missing.append(f"{SHARDS}/.metadata" if (ckpt_dir / SHARDS).is_dir() else "model.safetensors")
    return missing


def _complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints in ``run_dir``, oldest first."""
    return [p for _, p in _checkpoint_dirs(run_dir) if not _missing_files(p)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint in ``run_dir``, or ``None`` if there is none.

    Raises:
        CheckpointError: the newest ``ckpt-<step>`` directory lacks ``state.json``, or ``model.safetensors`` (of a
            sharded checkpoint, ``shards/.metadata``) (it was
            damaged: the atomic save never leaves one so). Quietly falling back to an older checkpoint would
            continue a run from the wrong step.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    found = _checkpoint_dirs(run_dir)
    if not found:
        return None
    newest = found[-1][1]
    missing = _missing_files(newest)
    if missing:
        raise _incomplete_error(newest, missing)
    return newest


def find_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a checkpoint directory, else the newest checkpoint in run directory ``path``."""
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"checkpoint path {str(path)!r} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint path {str(path)!r} is not a directory: expected a checkpoint directory "
                              f"(with state.json) or a run directory holding {_PREFIX}<step>/ directories")
    if path.name.startswith(_PREFIX) and _has_weights(path):
        raise _incomplete_error(path, ["state.json"])
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise CheckpointError(
            f"no checkpoint in {str(path)!r}: expected a directory with state.json, or a run directory "
            f"holding {_PREFIX}<step>/ directories"
        )
    return ckpt


def read_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """The JSON state of a checkpoint, checked: a JSON object with the format version, an integer ``step`` and, if
    present, the run ``config`` and ``task_state`` as objects; anything else is a :class:`CheckpointError` naming
    ``state.json``."""
    ckpt_dir = find_checkpoint(ckpt_dir)
    path = ckpt_dir / "state.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got a {type(state).__name__}")
    if state.get("format") != FORMAT_VERSION:
        hint = (" (written by attnlab 0.1, before tasks and the renamed config keys; retrain, or load its "
                "model.safetensors by hand)" if state.get("format") == 1 else "")
        raise CheckpointError(
            f"{ckpt_dir}: checkpoint format {state.get('format')!r} is not supported (expected {FORMAT_VERSION}){hint}"
        )
    _check_key(state, "step", path, "a non-negative integer", _is_int)
    for key, what in (("config", "an object (the run config)"), ("task_state", "an object")):
        if key in state:
            _check_key(state, key, path, what, lambda v: isinstance(v, dict))
    return state


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """``load_file`` with any failure as a :class:`CheckpointError` naming the file (the header was checked)."""
    from safetensors import SafetensorError

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None


def _tie_groups(model: nn.Module) -> dict[str, int]:
    """State-dict name -> an id shared by names of the same tensor (tied weights), without touching storage (works
    on the meta device, where every ``data_ptr`` is 0)."""
    ids: dict[str, int] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        ids[name] = id(p)
    for name, b in model.named_buffers(remove_duplicate=False):
        ids[name] = id(b)
    return ids


def tied_names(model: nn.Module) -> list[list[str]]:
    """The groups of state-dict names that are one tensor (tied weights), each sorted, only groups of two or more
    (``save_model`` stores each group once, under its first name)."""
    groups: dict[int, list[str]] = {}
    for name, gid in _tie_groups(model).items():
        groups.setdefault(gid, []).append(name)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def check_model_shapes(path: str | Path, model: nn.Module, *, what: str | None = None) -> None:
    """Compare ``model``'s state dict (names and shapes; ``model`` may live on the meta device) with the tensors
    in safetensors file ``path`` (read from its header only); any difference is a :class:`CheckpointError`."""
    path = Path(path)
    shapes = {k: shape for k, (_, shape) in read_tensor_header(path).items()}
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    groups = _tie_groups(model)
    unexpected = sorted(set(shapes) - set(own))
    wrong = [f"{k}: checkpoint {shapes[k]} vs model {own[k]}" for k in shapes if k in own and own[k] != shapes[k]]
    # Tied weights are stored once under one of their names: a missing key is fine when it is the same tensor
    # as a stored one.
    stored = {groups.get(k, hash(k)) for k in shapes if k in own}
    missing = sorted(k for k in set(own) - set(shapes) if groups.get(k, hash(k)) not in stored)
    if unexpected or wrong or missing:
        parts = []
        if wrong:
            parts.append("shape mismatches: " + "; ".join(wrong[:8]) + (" ..." if len(wrong) > 8 else ""))
        if missing:
            parts.append(f"missing in checkpoint: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
        if unexpected:
            parts.append(f"not in model: {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else ""))
        raise CheckpointError(
            (what or f"checkpoint {str(path.parent)!r} was saved from a different architecture") + ": "
            + " | ".join(parts)
        )


def load_model_weights(ckpt_dir: str | Path, model: nn.Module) -> None:
    """Load the weights of ``ckpt_dir`` into ``model``; a damaged file or any mismatch of names or shapes is a
    clear :class:`CheckpointError`."""
    ckpt_dir = find_checkpoint(ckpt_dir)
    path = weights_file(ckpt_dir)
    check_model_shapes(path, model, what=f"checkpoint {str(ckpt_dir)!r} was saved from a different architecture")
    tensors = _load_tensors(path)
    own = model.state_dict()
    with torch.no_grad():
        for k, t in tensors.items():
            own[k].copy_(t.to(own[k].dtype))


def weights_file(ckpt_dir: str | Path) -> Path:
    """``ckpt_dir/model.safetensors``; a sharded checkpoint not yet consolidated is a :class:`CheckpointError` that
    says how to consolidate it."""
    path = Path(ckpt_dir) / "model.safetensors"
    if not path.is_file() and is_sharded(ckpt_dir):
        raise CheckpointError(
            f"checkpoint {str(ckpt_dir)!r} is a sharded FSDP checkpoint ({SHARDS}/): an FSDP run resumes from it "
            f"as it is; to evaluate, generate or export it, first write its model.safetensors with "
            f"`attnlab consolidate {shlex.quote(str(ckpt_dir))}`")
    return path


def consolidate(ckpt_dir: str | Path) -> Path:
    """Write ``model.safetensors`` of a sharded checkpoint from its ``shards/`` in one process (no process group;
    the full tensors are assembled from every rank's shards), so that every tool reads it; returns the file.

    The optimizer state stays sharded (a resume with FSDP reads it from ``shards/``). The file is
    written to a temporary name, fsynced and renamed, so a crash never leaves a partial ``model.safetensors``.

    Raises:
        CheckpointError: ``ckpt_dir`` is not a sharded checkpoint, or it has a ``model.safetensors`` already
            (never overwritten).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    ckpt_dir = find_checkpoint(ckpt_dir)
    out = ckpt_dir / "model.safetensors"
    if not is_sharded(ckpt_dir):
        ordinary = " (it is an ordinary checkpoint, read by every tool as it is)" if out.exists() else ""
        raise CheckpointError(f"{str(ckpt_dir)!r} is not a sharded checkpoint: it has no {SHARDS}/.metadata{ordinary}")
    if out.exists():
        raise CheckpointError(f"{str(out)!r} exists already: {str(ckpt_dir)!r} is consolidated (nothing written)")
    reader = dcp.FileSystemReader(str(ckpt_dir / SHARDS))
    try:
        meta = reader.read_metadata().state_dict_metadata
    except (OSError, ValueError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"cannot read {str(ckpt_dir / SHARDS / '.metadata')!r}: {e}") from None
    # tied weights: stored once, under the first name of each group, as save_model does (state.json "tied")
    dropped = {n for g in read_state(ckpt_dir).get("tied", []) for n in sorted(g)[1:]}
    tensors = {k[len("model."):]: torch.empty(tuple(m.size), dtype=m.properties.dtype)
               for k, m in meta.items() if k.startswith("model.") and isinstance(m, TensorStorageMetadata)
               and k[len("model."):] not in dropped}
    if not tensors:
        raise CheckpointError(f"{str(ckpt_dir / SHARDS)!r} holds no model tensors")
    tmp = ckpt_dir / f".tmp-model-{uuid.uuid4().hex[:8]}.safetensors"
    try:
        with warnings.catch_warnings():  # torch warns that it loads "in a single process": that is the intent
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
            dcp.load({"model": tensors}, storage_reader=reader, no_dist=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        _fsync_file(tmp)
        os.replace(tmp, out)
        _fsync_dir(ckpt_dir)
    except (OSError, SafetensorError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"could not consolidate {str(ckpt_dir)!r}: {type(e).__name__}: {str(e)[:500]}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def load_optimizer(ckpt_dir: str | Path, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Restore optimizer tensors and hyper-parameters saved by :func:`save_checkpoint`."""
    ckpt_dir = find_checkpoint(ckpt_dir)
    path = ckpt_dir / "optimizer.safetensors"
    if "optimizer" not in state or not path.is_file():
        raise CheckpointError(f"checkpoint {str(ckpt_dir)!r} holds no optimizer state (weights only"
                              f"{'' if 'optimizer' not in state else '; optimizer.safetensors is missing'})")
    _check_optimizer_section(state["optimizer"], ckpt_dir / "state.json")
    header = read_tensor_header(path)
    opt_names: dict[str, tuple[int, str]] = {}
    for key in header:
        parts = key.split(".", 2)
        if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit() or not parts[2]:
            raise CheckpointError(f"{path} holds a tensor {key!r}; expected names state.<parameter index>.<name>")
        opt_names[key] = (int(parts[1]), parts[2])
    tensors = _load_tensors(path)
    opt_state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        idx, name = opt_names[key]
        opt_state.setdefault(idx, {})[name] = t
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
    try:
        optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"the optimizer state in {str(ckpt_dir)!r} does not fit this optimizer: {e}") from None


# ----------------------------------------------------------------------------------------------------------------
# RNG states (JSON-able: base64 of the raw generator state bytes)


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def rng_state() -> dict[str, Any]:
    """The global torch RNG states (CPU and every CUDA device) as JSON-able strings."""
    out: dict[str, Any] = {"torch": _b64(torch.get_rng_state())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (check a checkpoint's with :func:`check_resume_state` first)."""
    try:
        torch.set_rng_state(_unb64(state["torch"]))
    except (KeyError, TypeError, ValueError, RuntimeError, binascii.Error) as e:
        raise CheckpointError(f"invalid RNG state: {e}") from None
    if "cuda" in state and torch.cuda.is_available():
        saved = [_unb64(s) for s in state["cuda"]]
        if len(saved) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(saved)
