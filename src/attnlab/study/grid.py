"""The grid of ``attnlab study deconstructing``: the variants and layouts it trains (shared by the runner and the
report)."""

from __future__ import annotations

from attnlab.models.stack import LAYOUTS

__all__ = ["VARIANTS", "ABLATION_VARIANTS", "ABLATION_LAYOUTS"]

#: The six variants of spec 3, in the order of the paper's Tbl. 1.
VARIANTS = ["decon_mlp", "decon_approx", "decon_nonapprox", "decon_rndembqk", "decon_fixedseqqk",
            "decon_staticembqk"]
#: The variants of the nine-layout ablation (paper section 6, Tbl. 11).
ABLATION_VARIANTS = ["decon_rndembqk", "decon_nonapprox"]
#: Layout names of a study: ``uniform``, ``hybrid`` (= the ``alternate`` schedule = layout ``even``) and the other
#: eight layouts of :data:`attnlab.models.stack.LAYOUTS`.
ABLATION_LAYOUTS = [k for k in LAYOUTS if k != "even"]
