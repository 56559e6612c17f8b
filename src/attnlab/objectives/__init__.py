"""Training objectives that attach to a task: causal-attention supervision (CAT) and related methods.

CAT (spec ``causal_training.md`` Part A): :mod:`attnlab.objectives.annotations` reads the released JSON-lines
records (``input``, ``target``, ``important``: effect phrase <- cause phrases) and turns one into the token-level
adjacency ``M``; :mod:`attnlab.objectives.cat` is the re-attention loss over captured attention probabilities.
"""

from attnlab.objectives.annotations import (
    AdjacencyResult,
    AnnotationError,
    CausalRecord,
    causal_adjacency,
    parse_record,
    read_records,
)
from attnlab.objectives.cat import (
    CATConfig,
    CATResult,
    averaged_attention,
    cat_loss,
    re_attention_loss,
)

__all__ = [
    "AdjacencyResult",
    "AnnotationError",
    "CATConfig",
    "CATResult",
    "CausalRecord",
    "averaged_attention",
    "cat_loss",
    "causal_adjacency",
    "parse_record",
    "re_attention_loss",
    "read_records",
]
