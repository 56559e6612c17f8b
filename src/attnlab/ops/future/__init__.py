"""Future-aware attention for vision-language prefill (spec ``future_mask.md``): the light "+merge" variant,
:func:`light_future_attention`, with its float64 reference beside the fast forms (an SDPA bias, a FlexAttention
``score_mod``)."""

from attnlab.ops.future.api import (LIGHT_FUTURE_IMPLS, MERGE_MODES, MUS, NO_VISUAL_WARNING, POOLS, REDUCES,
                                    LightFutureImpl, check_options, default_reduce, default_slots,
                                    light_future_attention, say_no_visual, sink_mass, SinkMass, visual_rows)

__all__ = ["light_future_attention", "sink_mass", "SinkMass", "LightFutureImpl", "LIGHT_FUTURE_IMPLS", "MUS", "POOLS", "REDUCES",
           "MERGE_MODES", "NO_VISUAL_WARNING", "visual_rows", "check_options", "say_no_visual", "default_reduce",
           "default_slots"]
