"""The encoder-decoder (translation) model: :class:`EncDecConfig`, :class:`EncoderDecoder`, its decoding state
:class:`EncDecCache`, greedy decoding and beam search."""

from attnlab.models.encdec.cache import EncDecCache
from attnlab.models.encdec.config import CROSS_SCORES, EncDecConfig
from attnlab.models.encdec.model import EncoderDecoder
from attnlab.models.encdec.search import (
    beam_search,
    beam_search_with_scores,
    greedy_decode,
    greedy_decode_with_logits,
    length_penalty_factor,
)

__all__ = [
    "CROSS_SCORES",
    "EncDecCache",
    "EncDecConfig",
    "EncoderDecoder",
    "beam_search",
    "beam_search_with_scores",
    "greedy_decode",
    "greedy_decode_with_logits",
    "length_penalty_factor",
]
