"""Training objectives that attach to a task: causal-attention supervision (CAT) and related methods.

CAT (spec ``causal_training.md`` Part A): :mod:`attnlab.methods.annotations` reads the released JSON-lines
records (``input``, ``target``, ``important``: effect phrase <- cause phrases) and turns one into the token-level
adjacency ``M``; :mod:`attnlab.methods.cat` is the re-attention loss over captured attention probabilities.

LeaF (Part B): :mod:`attnlab.methods.saliency` is the shared input-gradient saliency;
:mod:`attnlab.methods.leaf` detects confounding spans (stage 1) and is the hybrid distillation loss (stage 2).
"""

from attnlab.methods.annotations import (
    AdjacencyResult,
    AnnotationError,
    CausalRecord,
    causal_adjacency,
    parse_record,
    read_records,
)
from attnlab.methods.cat import (
    CATConfig,
    CATResult,
    averaged_attention,
    cat_loss,
    re_attention_loss,
)
from attnlab.methods.leaf import (
    Counterfactual,
    Detection,
    LeafDetectConfig,
    detect_confounders,
    leaf_kd_loss,
    token_kd_loss,
)
from attnlab.methods.saliency import input_gradient_saliency

__all__ = [
    "AdjacencyResult",
    "AnnotationError",
    "CATConfig",
    "CATResult",
    "CausalRecord",
    "Counterfactual",
    "Detection",
    "LeafDetectConfig",
    "averaged_attention",
    "cat_loss",
    "causal_adjacency",
    "detect_confounders",
    "input_gradient_saliency",
    "leaf_kd_loss",
    "parse_record",
    "re_attention_loss",
    "read_records",
    "token_kd_loss",
]
