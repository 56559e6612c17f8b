"""Bad inputs to linear attention raise ValueError naming the argument, the expected and the received value."""

from __future__ import annotations

import pytest
import torch

from attnlab.ops.linear import LinearState, linear_attention

F64 = torch.float64


def qkv(B=1, H=2, H_kv=1, T=4, S=None, D=3, Dv=2, dtype=F64):
    S = T if S is None else S
    return (torch.randn(B, H, T, D, dtype=dtype), torch.randn(B, H_kv, S, D, dtype=dtype),
            torch.randn(B, H_kv, S, Dv, dtype=dtype))


def test_unknown_impl_lists_valid() -> None:
    with pytest.raises(ValueError, match=r"impl='fast'.*auto, parallel, chunked, recurrent"):
        linear_attention(*qkv(), impl="fast")


def test_unknown_feature_map_lists_valid() -> None:
    with pytest.raises(ValueError, match=r"feature_map='exp'.*elu1, relu, taylor"):
        linear_attention(*qkv(), feature_map="exp")


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda q, k, v: (q[0], k, v), r"q must have shape \(B, H, T, D\) \(4 dims\), got shape \(2, 4, 3\)"),
        (lambda q, k, v: (q, k[0], v), r"k must have shape"),
        (lambda q, k, v: (q, k, v.float()), r"v.dtype must equal q.dtype=torch.float64, got torch.float32"),
        (lambda q, k, v: (q, k.to("meta"), v), r"k.device must equal q.device=cpu, got meta"),
        (lambda q, k, v: (q.long(), k, v), r"q must be a floating-point tensor, got dtype torch.int64"),
        (lambda q, k, v: (q, k[..., :2], v), r"k head dim must equal q head dim D=3"),
        (lambda q, k, v: (q, k, v[:, :, :3]), r"v must have shape \(B, H_kv=1, S=4, Dv\) like k"),
        (lambda q, k, v: (q, torch.cat([k] * 3, 0)[:, :1], v), r"batch sizes must match"),
        (lambda q, k, v: (q[:, :, :0], k[:, :, :0], v[:, :, :0]), r"non-empty, got T=0"),
        (lambda q, k, v: (q[:, :, :3], k, v), r"causal=True needs as many keys as queries.*T=3 and S=4"),
        (lambda q, k, v: ([1.0], k, v), r"q must be a torch.Tensor"),
    ],
)
def test_bad_tensors(mutate, pattern) -> None:
    with pytest.raises(ValueError, match=pattern):
        linear_attention(*mutate(*qkv()))


def test_heads_must_divide() -> None:
    with pytest.raises(ValueError, match=r"H_kv=2 must divide query heads H=3"):
        linear_attention(*qkv(H=3, H_kv=2))


@pytest.mark.parametrize("chunk_size", [0, -1, 2.0, True])
def test_bad_chunk_size(chunk_size) -> None:
    with pytest.raises(ValueError, match=rf"chunk_size must be an int >= 1, got {chunk_size!r}"):
        linear_attention(*qkv(), chunk_size=chunk_size)


@pytest.mark.parametrize("eps", [-1e-6, float("nan"), float("inf")])
def test_bad_eps(eps) -> None:
    with pytest.raises(ValueError, match="eps must be a finite float >= 0"):
        linear_attention(*qkv(), eps=eps)


def test_bad_initial_state() -> None:
    q, k, v = qkv()  # B=1, H=2, D=3 -> F=3 for elu1, Dv=2
    good = LinearState(torch.zeros(1, 2, 3, 2, dtype=F64), torch.zeros(1, 2, 3, dtype=F64))
    linear_attention(q, k, v, initial_state=good)
    with pytest.raises(ValueError, match=r"initial_state.kv must have shape \(1, 2, 3, 2\).*got \(1, 2, 4, 2\)"):
        linear_attention(q, k, v, initial_state=(torch.zeros(1, 2, 4, 2, dtype=F64), good.z))
    with pytest.raises(ValueError, match=r"initial_state.kv must have shape \(1, 2, 13, 2\) \(F=13 for "
                                         r"feature_map='taylor'"):
        linear_attention(q, k, v, feature_map="taylor", initial_state=good)
    with pytest.raises(ValueError, match=r"initial_state.z.dtype must equal q.dtype=torch.float64"):
        linear_attention(q, k, v, initial_state=(good.kv, good.z.float()))
    with pytest.raises(ValueError, match=r"initial_state must be a LinearState\(kv, z\) or None, got Tensor"):
        linear_attention(q, k, v, initial_state=good.kv)
