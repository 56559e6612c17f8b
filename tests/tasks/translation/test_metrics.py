"""BLEU and chrF: the sacreBLEU wrappers equal a BLEU computed by hand, score a corpus against itself at 100, and
say how to install sacreBLEU when it is missing."""

from __future__ import annotations

import math
import sys

import pytest

from attnlab.tasks.translation.metrics import corpus_bleu, corpus_chrf


def test_a_corpus_against_itself_scores_100() -> None:
    from attnlab.data import load_parallel

    refs = [tgt for _, tgt in load_parallel("multi30k", src_lang="de", tgt_lang="en").val]
    assert corpus_bleu(refs, refs) == pytest.approx(100.0, abs=1e-9)
    assert corpus_chrf(refs, refs) == pytest.approx(100.0, abs=1e-9)
    assert corpus_chrf(refs, refs, word_order=2) == pytest.approx(100.0, abs=1e-9)


def test_bleu_equals_a_hand_computation() -> None:
    """Corpus BLEU of two sentences, written out (lowercase words, no punctuation: 13a tokenization is a split).

    Pair 1  ref: the cat is on the mat          (6 words)
            hyp: the cat sat on the mat         (6 words)
        1-grams: the x2, cat, on, mat match; sat does not               5/6
        2-grams: the cat | cat sat | sat on | on the | the mat  -> the cat, on the, the mat   3/5
        3-grams: the cat sat | cat sat on | sat on the | on the mat -> on the mat            1/4
        4-grams: the cat sat on | cat sat on the | sat on the mat -> none                    0/3
    Pair 2  ref: there is a dog in the small garden   (8 words)
            hyp: a dog in the garden                  (5 words)
        1-grams: a, dog, in, the, garden all match                      5/5
        2-grams: a dog | dog in | in the | the garden -> a dog, dog in, in the             3/4
        3-grams: a dog in | dog in the | in the garden -> a dog in, dog in the            2/3
        4-grams: a dog in the | dog in the garden -> a dog in the                          1/2
    Corpus precisions (matches and totals summed over sentences): 10/11, 6/9, 3/7, 1/5.
    Hypothesis length c = 11, reference length r = 14: brevity penalty exp(1 - r/c).
    """
    refs = ["the cat is on the mat", "there is a dog in the small garden"]
    hyps = ["the cat sat on the mat", "a dog in the garden"]
    precisions = [10 / 11, 6 / 9, 3 / 7, 1 / 5]
    bp = math.exp(1 - 14 / 11)
    expected = 100 * bp * math.exp(sum(math.log(p) for p in precisions) / 4)
    assert expected == pytest.approx(36.345, abs=1e-3)
    assert corpus_bleu(hyps, refs) == pytest.approx(expected, rel=1e-12)
    # a longer hypothesis has no brevity penalty: "the cat is on the mat today" vs the first reference
    # 1-grams 6/7, 2-grams 5/6, 3-grams 4/5, 4-grams 3/4, c = 7 > r = 6
    long = 100 * math.exp((math.log(6 / 7) + math.log(5 / 6) + math.log(4 / 5) + math.log(3 / 4)) / 4)
    assert corpus_bleu(["the cat is on the mat today"], refs[:1]) == pytest.approx(long, rel=1e-12)


def test_options_and_chrf_bounds() -> None:
    hyp, ref = ["The Cat sat on the Mat"], ["the cat sat on the mat"]
    assert corpus_bleu(hyp, ref) < 50 and corpus_bleu(hyp, ref, lowercase=True) == pytest.approx(100)
    assert corpus_bleu(["the cat sat on the mat ."], ["the cat sat on the mat."], tokenize="none") < 100
    assert corpus_bleu(["the cat sat on the mat ."], ["the cat sat on the mat."]) == pytest.approx(100)  # 13a
    assert corpus_chrf(["xyz"], ["abc"]) == pytest.approx(0.0)
    assert 0 < corpus_chrf(["a dog runs"], ["a dog is running"]) < 100


@pytest.mark.parametrize(
    ("hyps", "refs", "message"),
    [
        (["a", "b"], ["a"], "got 2 hypotheses but 1 references"),
        ([], [], "empty"),
        ("a b", ["a b"], "hypotheses must be a sequence of strings"),
        (["a"], [["a"]], r"references\[0\] must be a string"),
    ],
)
def test_bad_inputs(hyps: object, refs: object, message: str) -> None:
    for metric in (corpus_bleu, corpus_chrf):
        with pytest.raises(ValueError, match=message):
            metric(hyps, refs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="word_order must be an int >= 0"):
        corpus_chrf(["a"], ["a"], word_order=-1)


def test_missing_sacrebleu_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # makes `import sacrebleu` raise ImportError
    for metric in (corpus_bleu, corpus_chrf):
        with pytest.raises(ImportError, match=r"pip install attnlab\[mt\]"):
            metric(["a"], ["a"])
