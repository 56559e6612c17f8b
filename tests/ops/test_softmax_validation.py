"""softmax_attention rejects bad input with a ValueError naming the argument, expected and received value."""

from __future__ import annotations

import pytest
import torch

from attnlab import masks as M
from attnlab.ops.softmax import SCORES, SOFTMAX_IMPLS, AdditiveScoreParams, GeneralScoreParams, softmax_attention


def base(**over):
    kw = dict(
        q=torch.randn(2, 4, 5, 6, dtype=torch.float64),
        k=torch.randn(2, 2, 7, 6, dtype=torch.float64),
        v=torch.randn(2, 2, 7, 3, dtype=torch.float64),
    )
    kw.update(over)
    return kw


def call(**over):
    kw = base(**over)
    q, k, v = kw.pop("q"), kw.pop("k"), kw.pop("v")
    return softmax_attention(q, k, v, **kw)


def test_exports() -> None:
    assert SOFTMAX_IMPLS == ("auto", "reference", "sdpa", "flex")
    assert SCORES == ("scaled_dot", "dot", "general", "additive")


def test_valid_call_runs() -> None:
    assert call().shape == (2, 4, 5, 3)


CASES = [
    ({"q": torch.randn(4, 5, 6)}, r"q must have 4 dims \(B, H, T, D\), got shape \(4, 5, 6\)"),
    ({"k": "nope"}, r"k must be a torch.Tensor of shape \(B, H_kv, S, D\), got str"),
    ({"v": torch.zeros(2, 2, 7, 3, dtype=torch.long)}, r"v must be a floating-point tensor, got dtype torch.int64"),
    ({"k": torch.randn(2, 2, 7, 6, dtype=torch.float32)}, r"k.dtype must equal q.dtype=torch.float64, got torch.float32"),
    ({"k": torch.randn(3, 2, 7, 6, dtype=torch.float64)}, r"k batch size must equal q's B=2"),
    ({"k": torch.randn(2, 2, 7, 5, dtype=torch.float64)}, r"k head dim must equal q's D=6"),
    ({"v": torch.randn(2, 2, 8, 3, dtype=torch.float64)}, r"v must have shape \(B, H_kv, S, Dv\)"),
    ({"k": torch.randn(2, 3, 7, 6, dtype=torch.float64), "v": torch.randn(2, 3, 7, 3, dtype=torch.float64)},
     r"H_kv=3 key/value heads must divide H=4"),
    ({"q": torch.randn(2, 4, 0, 6, dtype=torch.float64)}, r"T must be >= 1, got T=0"),
    ({"impl": "fast"}, r"impl must be one of \('auto', 'reference', 'sdpa', 'flex'\), got 'fast'"),
    ({"score": "cosine"}, r"score must be one of \('scaled_dot', 'dot', 'general', 'additive'\), got 'cosine'"),
    ({"score": "general"}, r"score='general' needs score_params=GeneralScoreParams\(...\), got NoneType"),
    ({"score": "dot", "score_params": GeneralScoreParams(weight=torch.zeros(4, 6, 6, dtype=torch.float64))},
     r"score='dot' takes no score_params, got GeneralScoreParams"),
    ({"score": "general", "score_params": GeneralScoreParams(weight=torch.zeros(2, 6, 6, dtype=torch.float64))},
     r"must be for H=4 heads of dim D=6, got shapes \{'weight': \(2, 6, 6\)\}"),
    ({"score": "general", "score_params": GeneralScoreParams(weight=torch.zeros(4, 6, 6))},
     r"score_params.weight must have q's dtype torch.float64"),
    ({"score": "additive", "impl": "sdpa",
      "score_params": AdditiveScoreParams(w_q=torch.zeros(4, 6, 2, dtype=torch.float64),
                                          w_k=torch.zeros(4, 6, 2, dtype=torch.float64),
                                          v=torch.zeros(4, 2, dtype=torch.float64))},
     r"impl='sdpa' does not support score='additive'; it supports \('scaled_dot', 'dot', 'general'\)"),
    ({"score": "additive", "impl": "flex",
      "score_params": AdditiveScoreParams(w_q=torch.zeros(4, 6, 2, dtype=torch.float64),
                                          w_k=torch.zeros(4, 6, 2, dtype=torch.float64),
                                          v=torch.zeros(4, 2, dtype=torch.float64))},
     r"impl='flex' does not support score='additive'"),
    ({"impl": "flex", "dropout_p": 0.2}, r"impl='flex' does not support dropout, got dropout_p=0.2"),
    ({"q_offset": -1}, r"q_offset must be an int >= 0, got -1"),
    ({"q_offset": 1.0}, r"q_offset must be an int >= 0, got 1.0"),
    ({"dropout_p": 1.0}, r"dropout_p must be a float in \[0, 1\), got 1.0"),
    ({"scale": float("nan")}, r"scale must be a finite float or None, got nan"),
    ({"mask": "causal"}, r"mask must be an attnlab.masks.Mask, a mask_mod callable or None, got str"),
    ({"mask": M.bigbird(2, 1, 1, max_len=8), "q_offset": 4},
     r"mask bigbird\(.*\) is defined for positions < max_len=8, got query positions up to q_offset \+ T = 9"),
    ({"mask": M.document(torch.tensor([0, 0, 1, 1, 1]))}, r"max_len=5, .* S=7 keys"),
]


@pytest.mark.parametrize(("over", "match"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_bad_input_raises_value_error(over, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(**over)


def test_validation_happens_before_computation(monkeypatch) -> None:
    """A bad impl is reported even when the inputs would make a backend crash: nothing runs first."""
    import attnlab.ops.softmax.api as api

    def boom(*a, **k):
        raise AssertionError("a backend ran before validation")

    monkeypatch.setattr(api, "_BACKENDS", {"reference": boom, "sdpa": boom, "flex": boom})
    with pytest.raises(ValueError, match="impl must be one of"):
        call(impl="nope")
