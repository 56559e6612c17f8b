"""Windowed causal attention with exponential decay and relative sinusoidal keys (AutoHFormer): reference, dense,
banded, SDPA and FlexAttention forms. See :func:`decayed_window_attention`."""

from attnlab.ops.decayed.api import DECAYED_IMPLS, DecayedImpl, decayed_window_attention, resolve_impl, window_mask
from attnlab.ops.decayed.reference import reference_decayed_probs
from attnlab.ops.decayed.score_mod import DECAYS, Decay, DecayScoreMod, relative_table, sinusoidal_offsets

__all__ = ["decayed_window_attention", "resolve_impl", "window_mask", "reference_decayed_probs", "DecayScoreMod",
           "relative_table", "sinusoidal_offsets", "DECAYED_IMPLS", "DECAYS", "Decay", "DecayedImpl"]
