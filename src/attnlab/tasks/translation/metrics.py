"""Corpus-level translation metrics: BLEU and chrF, as thin wrappers over sacreBLEU.

Both take detokenized text, one hypothesis and one reference per sentence in corpus order, and return sacreBLEU's
score on its 0-100 scale, so numbers compare with published sacreBLEU results (BLEU with the default ``13a``
tokenization, exponential smoothing, case-sensitive; chrF with character order 6, beta 2, no word n-grams).

sacreBLEU is an optional dependency (``pip install attnlab[mt]``), imported when a metric is computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["corpus_bleu", "corpus_chrf"]


def _sacrebleu() -> Any:
    try:
        import sacrebleu
    except ImportError as e:
        raise ImportError("BLEU and chrF need the 'sacrebleu' package: pip install attnlab[mt]") from e
    return sacrebleu


def _check(hypotheses: Sequence[str], references: Sequence[str], who: str) -> tuple[list[str], list[str]]:
    for arg, seq in (("hypotheses", hypotheses), ("references", references)):
        if isinstance(seq, str) or not isinstance(seq, Sequence):
            raise ValueError(f"{who}: {arg} must be a sequence of strings (one per sentence), got {type(seq).__name__}")
        bad = next((i for i, s in enumerate(seq) if not isinstance(s, str)), None)
        if bad is not None:
            raise ValueError(
                f"{who}: {arg}[{bad}] must be a string (one sentence per entry), got {type(seq[bad]).__name__}"
            )
    if len(hypotheses) != len(references):
        raise ValueError(
            f"{who}: got {len(hypotheses)} hypotheses but {len(references)} references; give one reference per "
            "hypothesis, in the same order"
        )
    if not hypotheses:
        raise ValueError(f"{who}: hypotheses and references are empty; a corpus metric needs at least one sentence")
    return list(hypotheses), list(references)


def corpus_bleu(
    hypotheses: Sequence[str], references: Sequence[str], *, tokenize: str = "13a", lowercase: bool = False
) -> float:
    """sacreBLEU corpus BLEU (0-100) of ``hypotheses`` against one reference each.

    ``tokenize`` is sacreBLEU's tokenizer name (``"13a"``, the WMT standard, by default; ``"intl"``, ``"none"``,
    ...); ``lowercase`` makes the score case-insensitive.
    """
    hyps, refs = _check(hypotheses, references, "corpus_bleu")
    sacrebleu = _sacrebleu()
    return float(sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize, lowercase=lowercase).score)


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str], *, word_order: int = 0) -> float:
    """sacreBLEU corpus chrF (0-100) of ``hypotheses`` against one reference each (``word_order=2``: chrF++)."""
    hyps, refs = _check(hypotheses, references, "corpus_chrf")
    if isinstance(word_order, bool) or not isinstance(word_order, int) or word_order < 0:
        raise ValueError(f"corpus_chrf: word_order must be an int >= 0 (0: chrF, 2: chrF++), got {word_order!r}")
    sacrebleu = _sacrebleu()
    return float(sacrebleu.corpus_chrf(hyps, [refs], word_order=word_order).score)
