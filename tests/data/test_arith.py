"""The arithmetic-with-distractors generator (spec causal_training.md B.8, a reconstruction): the answer is the
problem's arithmetic, cause and distractor spans hold what they should, the planted correlation per split,
seeding and bad arguments."""

from __future__ import annotations

import numpy as np
import pytest

from attnlab.data.arith import arith_example, arith_split, arith_vocabulary


@pytest.mark.parametrize("split", ["iid", "ood", "flipped", "clean"])
def test_answers_spans_and_tokens(split: str) -> None:
    vocab = set(arith_vocabulary())
    for ex in arith_split(split, 300, seed=2):
        assert set(ex.tokens) | set(ex.answer) <= vocab and ex.tokens[-1] == "Answer:"
        # the answer is the problem's arithmetic, read back from the words
        (a_lo, a_hi), (b_lo, b_hi) = ex.causes
        a_words, b_words = ex.tokens[a_lo:a_hi], ex.tokens[b_lo:b_hi]
        assert a_words[0] == "has" and int(a_words[1]) == ex.a
        n = int(b_words[-1])
        sign = 1 if b_words[0] in ("buys", "finds") else -1
        assert b_words[:-1] in (("buys",), ("finds",), ("gives", "away"), ("loses",)) and sign * n == ex.b
        value = ex.a + ex.b
        assert 0 <= value <= 18 and ex.answer == (str(value // 10), str(value % 10))
        # the asked name and item are those of the question sentences
        name, item = ex.tokens[a_lo - 1], ex.tokens[a_hi]
        assert ex.tokens[-9:-1] == ("How", "many", item, "does", name, "have", "now", "?")
        if split == "clean":
            assert ex.spurious == () and ex.year_digit is None
        else:
            spans = [ex.tokens[s:e] for s, e in ex.spurious]
            assert sorted(s[:3] for s in spans) == [("The", "shop", "opened"), ("The", "shop", "sells")]
            year = next(s for s in spans if s[2] == "opened")
            assert year[4:6] == ("1", "9") and int(year[7]) == ex.year_digit and year[-1] == "."
            assert not set(range(a_lo, a_hi)) & {i for s, e in ex.spurious for i in range(s, e)}


def test_the_planted_correlation_per_split() -> None:
    def rate(split: str, **kw: float) -> float:
        exs = arith_split(split, 4000, seed=5, **kw)  # type: ignore[arg-type]
        return float(np.mean([ex.year_digit == int(ex.answer[1]) for ex in exs]))

    assert rate("iid") == pytest.approx(0.9 + 0.1 * 0.1, abs=0.02)  # copied 90 %, else uniform (hits 1 in 10)
    assert rate("iid", correlation=1.0) == 1.0
    assert rate("ood") == pytest.approx(0.1, abs=0.02)
    assert rate("flipped") == 0.0


def test_seeding_and_bad_arguments() -> None:
    assert arith_split("iid", 20, seed=3) == arith_split("iid", 20, seed=3)
    assert arith_split("iid", 20, seed=3) != arith_split("iid", 20, seed=4)
    assert arith_split("ood", 20, seed=3) != arith_split("iid", 20, seed=3)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        arith_split("iid", 0, seed=0)
    with pytest.raises(ValueError, match="split must be one of"):
        arith_split("test", 5, seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="split must be one of"):
        arith_example(np.random.default_rng(0), "sideways")  # type: ignore[arg-type]
