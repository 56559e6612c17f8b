"""The Spurious Token Game generator (spec causal_training.md A.7, A.9): label rule, split rules, token layout,
cause spans, seeding, and the released training-label imbalance at the spec's sizes."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from attnlab.data.stg import (CAUSAL, LABELS, STG_NAMES, stg_example, stg_label, stg_split, stg_vocabulary)


def test_label_rule_and_the_middle_quirk() -> None:
    assert stg_label(10, 10, 1) == "High Risk"  # 12 + 7 - 1 = 18
    assert stg_label(1, 1, 10) == "Low Risk"
    assert stg_label(6, 1, 5) == "Low Risk"  # 7.2 + 0.7 - 5 = 2.9
    # v == 2.7 exactly in float64 only for some triples: 1.2*3 + 0.7*3 - 3 = 2.7000000000000006 (not Middle)
    assert stg_label(3, 3, 3) == ("Middle Risk" if 1.2 * 3.0 + 0.7 * 3.0 - 3.0 == 2.7 else "Low Risk")
    middles = [(s, w, e) for s in range(1, 11) for w in range(1, 11) for e in range(1, 11)
               if stg_label(s, w, e) == "Middle Risk"]
    assert middles and all(1.2 * s + 0.7 * w - e == 2.7 for s, w, e in middles)
    # > 7.2 is strict
    assert stg_label(6, 0, 0) == "Low Risk"  # 7.199999999999999 in float64


@pytest.mark.parametrize("split", ["iid", "ood", "flipped"])
def test_split_rules(split: str) -> None:
    exs = stg_split(split, 300, seed=1)
    for ex in exs:
        v = ex.values
        assert set(v) == set(STG_NAMES) and all(1 <= v[n] <= 10 for n in CAUSAL)
        assert ex.label == stg_label(v["Smoking"], v["Weight"], v["Exercise"])
        s, w, e = v["Smoking"], v["Weight"], v["Exercise"]
        if split == "iid":
            assert (v["Yellow_fingers"], v["Clothing_size"], v["Hormones"]) == (int(1.5 * s), w, int(0.5 * e))
        elif split == "flipped":
            assert (v["Yellow_fingers"], v["Clothing_size"], v["Hormones"]) == (int(1.5 * (11 - s)), 11 - w,
                                                                              int(0.5 * (11 - e)))
    if split == "ood":  # independent: the IID ratio holds only by chance
        share = np.mean([ex.values["Clothing_size"] == ex.values["Weight"] for ex in exs])
        assert share < 0.2


def test_tokens_spans_and_vocabulary() -> None:
    ex = stg_example(np.random.default_rng(0))
    vocab = set(stg_vocabulary())
    assert set(ex.tokens) <= vocab and set(ex.answer) <= vocab and ex.tokens[-1] == "Answer:"
    assert len(ex.causes) == 3
    for a, b in ex.causes:
        name, colon, value = ex.tokens[a:b]
        assert name in CAUSAL and colon == ":" and int(value) == ex.values[name]
    names = [t for t in ex.tokens if t in STG_NAMES]
    assert sorted(names) == sorted(STG_NAMES)  # every name once, in shuffled order
    assert len(stg_vocabulary()) == len(set(stg_vocabulary()))
    assert {str(k) for k in range(16)} <= vocab  # int(1.5 * 10) = 15


def test_seeded_and_the_released_imbalance() -> None:
    a, b = stg_split("iid", 50, seed=42), stg_split("iid", 50, seed=42)
    assert [x.tokens for x in a] == [x.tokens for x in b]
    assert [x.tokens for x in stg_split("iid", 50, seed=43)] != [x.tokens for x in a]
    counts = collections.Counter(ex.label for ex in stg_split("iid", 4000, seed=0))
    # the released training file: Low 1,049 / High 545 / Middle 6 of 1,600 (65.6% Low); the rule gives about that
    assert 0.60 < counts["Low Risk"] / 4000 < 0.70 and 0.30 < counts["High Risk"] / 4000 < 0.40
    assert counts["Middle Risk"] < 40 and set(counts) <= set(LABELS)
    with pytest.raises(ValueError, match="split must be"):
        stg_split("test", 3, seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        stg_split("iid", 0, seed=0)
