"""Model families built from the attention registry, one folder each, sharing :mod:`attnlab.models.common`.

* :mod:`attnlab.models.lm`: the decoder-only language model :class:`LM` and its :class:`LMConfig`.
* :mod:`attnlab.models.encdec`: the encoder-decoder (translation) model.
"""

from attnlab.models.common import IGNORE_INDEX, ResidualBlock, RMSNorm, SwiGLU, swiglu_hidden
from attnlab.models.encdec import EncDecConfig, EncoderDecoder, beam_search, greedy_decode
from attnlab.models.lm import LM, LMConfig
from attnlab.models.stack import SCHEDULES

__all__ = ["IGNORE_INDEX", "EncDecConfig", "EncoderDecoder", "beam_search", "greedy_decode", "LM", "LMConfig", "RMSNorm", "ResidualBlock", "SCHEDULES", "SwiGLU", "swiglu_hidden"]
