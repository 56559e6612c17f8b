"""The reference (specification) of linear attention **is the recurrent form**.

Decision: linear attention is *defined* by its recurrence (state in, one key at a time, state out; see
:mod:`attnlab.ops.linear.recurrent`), an explicit loop over time that reads line by line as the formulas and
is exact in float64. Writing a second, separate "readable" form would only add a third implementation of the
same formula that the parallel form (the masked quadratic matrix form) already provides. So this module
re-exports the recurrent loop under the name ``linear_attention_reference``; the parallel and chunked forms
are tested against it for outputs and gradients (``tests/ops/test_linear_forms.py``), and neither imports it.
"""

from __future__ import annotations

from attnlab.ops.linear.recurrent import linear_attention_recurrent as linear_attention_reference

__all__ = ["linear_attention_reference"]
