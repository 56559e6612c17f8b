"""Checks of checkpoint files that run before anything is loaded: the safetensors header (read and checked
against the file size, no tensor touched) and the parts of ``state.json`` that resuming needs. Every failure is
a :class:`CheckpointError` naming the file and what is wrong."""

from __future__ import annotations

import base64
import binascii
import json
import struct
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "MAX_HEADER_BYTES", "read_tensor_header", "check_resume_state"]


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or does not fit the model."""


def _incomplete_error(ckpt_dir: Path, missing: list[str]) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {str(ckpt_dir)!r} is incomplete: {' and '.join(str(ckpt_dir / m) for m in missing)} "
        f"{'is' if len(missing) == 1 else 'are'} missing (attnlab writes checkpoints atomically, so it was damaged "
        "after it was written); move that directory aside to use the previous checkpoint, if there is one")


def _is_int(v: Any, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _check_key(d: dict[str, Any], key: str, path: Path, expected: str, ok: Any, where: str = "") -> None:
    if key not in d:
        raise CheckpointError(f"{path}: the key {where}{key!r} is missing (expected {expected})")
    if not ok(d[key]):
        raise CheckpointError(f"{path}: {where}{key!r} must be {expected}, got {_short(d[key])}")


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def check_resume_state(ckpt_dir: str | Path, state: dict[str, Any]) -> None:
    """Check the parts of ``state`` (from :func:`read_state`) that resuming a run needs, before anything is loaded:
    ``tokens_seen``, the RNG states (decodable, of this PyTorch's size) and the optimizer section. Raises
    :class:`CheckpointError` naming ``state.json`` and the key."""
    path = Path(ckpt_dir) / "state.json"
    _check_key(state, "config", path, "an object (the run config)", lambda v: isinstance(v, dict))
    _check_key(state, "tokens_seen", path, "a non-negative integer", _is_int)
    if "skipped_steps" in state:
        _check_key(state, "skipped_steps", path, "a non-negative integer", _is_int)
    _check_key(state, "rng", path, "an object with the torch RNG state", lambda v: isinstance(v, dict))
    _check_rng(state["rng"], path, "rng")
    ranks = state.get("rng_ranks")
    if ranks is not None:
        if not isinstance(ranks, list):
            raise CheckpointError(f"{path}: 'rng_ranks' must be a list of RNG states or null, got {_short(ranks)}")
        for i, r in enumerate(ranks):
            if not isinstance(r, dict):
                raise CheckpointError(f"{path}: 'rng_ranks'[{i}] must be an object, got {_short(r)}")
            _check_rng(r, path, f"rng_ranks[{i}]")
    if "optimizer" in state:
        _check_optimizer_section(state["optimizer"], path)


def _check_rng(rng: dict[str, Any], path: Path, where: str) -> None:
    want = torch.get_rng_state().numel()
    entries = [("torch", rng.get("torch"))] + [(f"cuda[{i}]", v) for i, v in enumerate(rng.get("cuda") or [])]
    if "torch" not in rng:
        raise CheckpointError(f"{path}: {where!r} has no 'torch' entry (the CPU RNG state)")
    if "cuda" in rng and not isinstance(rng["cuda"], list):
        raise CheckpointError(f"{path}: '{where}.cuda' must be a list of RNG states, got {_short(rng['cuda'])}")
    for name, v in entries:
        try:
            n = len(_unb64(v)) if isinstance(v, str) else -1
        except (binascii.Error, ValueError):
            n = -1
        if n < 0:
            raise CheckpointError(f"{path}: '{where}.{name}' is not a base64 RNG state: {_short(v)}")
        if name == "torch" and n != want:
            raise CheckpointError(f"{path}: '{where}.torch' is an RNG state of {n} bytes; this PyTorch's CPU "
                                  f"generator state has {want}")


def _check_optimizer_section(opt: Any, path: Path) -> None:
    if not isinstance(opt, dict):
        raise CheckpointError(f"{path}: 'optimizer' must be an object, got {_short(opt)}")
    groups = opt.get("param_groups")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise CheckpointError(f"{path}: 'optimizer.param_groups' must be a list of objects, got {_short(groups)}")
    for i, g in enumerate(groups):
        params = g.get("params")
        if not isinstance(params, list) or not all(_is_int(x) for x in params):
            raise CheckpointError(f"{path}: 'optimizer.param_groups'[{i}].params must be a list of parameter "
                                  f"indices, got {_short(params)}")
    scalars = opt.get("scalars", {})
    if not isinstance(scalars, dict) or not all(isinstance(v, dict) for v in scalars.values()):
        raise CheckpointError(f"{path}: 'optimizer.scalars' must be an object of objects, got {_short(scalars)}")
    for k in scalars:
        if not k.isdigit():
            raise CheckpointError(f"{path}: 'optimizer.scalars' key {k!r} is not a parameter index")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


# ----------------------------------------------------------------------------------------------------------------
# safetensors files: the header is read and checked before any tensor

#: safetensors' own limit on the JSON header (100 MB); a larger length field means a damaged or foreign file
MAX_HEADER_BYTES = 100_000_000
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def read_tensor_header(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` of the tensors in safetensors file ``path``, read from its header alone.

    The header is checked against the file before anything is allocated: its length field fits in the file (and
    in safetensors' 100 MB limit), it is a JSON object, and every tensor has a known dtype, a shape of
    non-negative integers and a byte range that matches its shape and lies inside the file. So a truncated or
    garbage file, or one whose header claims tensors larger than the file, is a :class:`CheckpointError` naming
    the file, never an allocation.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path} is truncated: {size} bytes, shorter than the 8-byte header length of a "
                                      "safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise CheckpointError(f"{path} is not a valid safetensors file: its header length field says {n:,} "
                                      f"bytes (the limit is {MAX_HEADER_BYTES:,}); the file is damaged or not a "
                                      "checkpoint file")
            if n > size - 8:
                raise CheckpointError(f"{path} is truncated: its header length field says {n:,} bytes but only "
                                      f"{size - 8:,} follow")
            raw = f.read(n)
    except FileNotFoundError:
        raise _incomplete_error(path.parent, [path.name]) from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} is not a valid safetensors file: its header is not JSON (damaged, or not a "
                              "checkpoint file)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a valid safetensors file: its header is not a JSON object")
    data_bytes = size - 8 - n
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        bad = f"{path} is damaged: tensor {name!r} in its header"
        if not isinstance(info, dict):
            raise CheckpointError(f"{bad} is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _DTYPE_BYTES:
            raise CheckpointError(f"{bad} has an unknown dtype {_short(dtype)}")
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
            raise CheckpointError(f"{bad} has an invalid shape {_short(shape)}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
                or offsets[0] > offsets[1]):
            raise CheckpointError(f"{bad} has invalid data_offsets {_short(offsets)}")
        numel = 1
        for d in shape:
            numel *= d
        if offsets[1] - offsets[0] != numel * _DTYPE_BYTES[dtype]:
            raise CheckpointError(f"{bad} has shape {shape} ({dtype}) but {offsets[1] - offsets[0]:,} bytes of data")
        if offsets[1] > data_bytes:
            raise CheckpointError(f"{path} is truncated: tensor {name!r} ends at byte {offsets[1]:,} of the data, the "
                                  f"file holds {data_bytes:,}")
        out[name] = (dtype, tuple(shape))
    return out
