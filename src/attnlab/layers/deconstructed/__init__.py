"""The six relaxed attention variants of "Deconstructing Attention" (Xue, Moosavi and Aletras, arXiv:2510.11602v1,
2025), one module per variant, each registering its mechanism on import (spec ``shared/specs/deconstructing.md``
section 3):

==========================  ===================  =====================================================
``decon_mlp``               :mod:`.mlp`          Token Mixing relaxed: a per-position gated MLP
``decon_approx``            :mod:`.approx`       Mathematical Form: 2nd-order Taylor map (or Eq. 14-17)
``decon_nonapprox``         :mod:`.nonapprox`    Mathematical Form: self-gated, query-free softmax
``decon_rndembqk``          :mod:`.fixed_map`    Sequence-Dependency: Q, K from fixed random embeddings
``decon_fixedseqqk``        :mod:`.fixed_map`    Sequence-Dependency: Q, K from a fixed token sequence
``decon_staticembqk``       :mod:`.staticembqk`  Current QK: Q, K from the static token embeddings
==========================  ===================  =====================================================

Variants that need more than the layer input declare it in the class attribute ``mixer_inputs`` and receive it per
call as ``inputs=`` :class:`MixerInputs` from their model.
"""

# importing each module registers its mechanism(s), in this order
from attnlab.layers.deconstructed import mlp, approx, nonapprox, fixed_map, staticembqk  # noqa: F401, I001
from attnlab.layers.deconstructed._common import MixerInputs

__all__ = ["MixerInputs", "DECON_MECHANISMS", "mlp", "approx", "nonapprox", "fixed_map", "staticembqk"]

DECON_MECHANISMS: tuple[str, ...] = ("decon_mlp", "decon_approx", "decon_nonapprox", "decon_rndembqk",
                                     "decon_fixedseqqk", "decon_staticembqk")
