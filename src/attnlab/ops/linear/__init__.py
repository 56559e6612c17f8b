"""Linear attention: feature maps and the parallel / chunked / recurrent forms, with state in and out.

``linear_attention(q, k, v, *, feature_map="elu1", causal=True, initial_state=None, impl="auto",
chunk_size=64, eps=1e-6) -> (out, LinearState)``. The recurrent form (a loop over time) is the specification;
see :mod:`attnlab.ops.linear.reference`.
"""

from attnlab.ops.linear.api import LINEAR_IMPLS, LinearImpl, LinearState, linear_attention
from attnlab.ops.linear.feature_maps import (
    FEATURE_MAPS,
    FeatureMap,
    FeatureMapName,
    feature_dim,
    feature_map_names,
    get_feature_map,
)
from attnlab.ops.linear.reference import linear_attention_reference

__all__ = [
    "FEATURE_MAPS",
    "FeatureMap",
    "FeatureMapName",
    "LINEAR_IMPLS",
    "LinearImpl",
    "LinearState",
    "feature_dim",
    "feature_map_names",
    "get_feature_map",
    "linear_attention",
    "linear_attention_reference",
]
