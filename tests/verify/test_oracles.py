"""The oracle checks (vs torch.nn.MultiheadAttention and F.scaled_dot_product_attention): they pass for the
mechanisms they apply to, apply only where the oracle can represent the layer, and fail on broken layers/ops."""

from __future__ import annotations

import pytest
import torch

import attnlab.verify.oracles as oracles
from attnlab.layers import registry
from attnlab.layers.mha import MultiHeadAttentionConfig
from attnlab.verify import applicable, checks, run_check
from attnlab.verify.core import VerifyOptions

ORACLES = ["oracle-torch-mha", "oracle-sdpa"]
PAIRS = [(c.name, s.name) for s in registry.all_specs() for c in applicable(s) if c.name in ORACLES]


def test_registered() -> None:
    assert {c.name for c in checks()} >= set(ORACLES)


def test_applicability_is_decided_by_the_config() -> None:
    torch_mha = {m for c, m in PAIRS if c == "oracle-torch-mha"}
    sdpa = {m for c, m in PAIRS if c == "oracle-sdpa"}
    assert torch_mha == {"standard", "bidirectional"}
    assert sdpa == {"standard", "bidirectional", "gqa", "mqa"}


@pytest.mark.parametrize("check, mechanism", PAIRS)
def test_oracle_passes(check: str, mechanism: str) -> None:
    c = next(c for c in checks() if c.name == check)
    results = run_check(c, registry.get(mechanism))
    assert results and all(r.passed for r in results), [r for r in results if not r.passed]
    assert all(r.tolerance == oracles.TOL_ORACLE for r in results)  # float64 tolerance


def test_float32_run_uses_its_own_tolerance() -> None:
    c = next(c for c in checks() if c.name == "oracle-torch-mha")
    results = run_check(c, registry.get("standard"), VerifyOptions(dtype=torch.float32))
    assert all(r.passed and r.tolerance == 1e-5 for r in results), results


def test_torch_mha_oracle_catches_a_wrong_scale() -> None:
    layer = MultiHeadAttentionConfig(d_model=24, n_heads=4).build().double().eval()
    x = torch.randn(2, 7, 24, dtype=torch.float64)
    assert max(oracles.compare_with_torch_mha(layer, x).values()) < 1e-12
    layer.score = "dot"  # forgets 1/sqrt(D)
    assert oracles.compare_with_torch_mha(layer, x)["output"] > 1e-3


def test_torch_mha_oracle_catches_a_wrong_mask() -> None:
    from attnlab import masks

    layer = MultiHeadAttentionConfig(d_model=24, n_heads=4).build().double().eval()
    x = torch.randn(2, 7, 24, dtype=torch.float64)
    real_forward = layer.forward
    layer.forward = lambda x, **kw: real_forward(x, mask=masks.bidirectional(), **kw)  # type: ignore[method-assign]
    assert oracles.compare_with_torch_mha(layer, x)["output"] > 1e-3


def test_sdpa_oracle_catches_an_op_that_ignores_q_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    real = oracles.softmax_attention
    monkeypatch.setattr(oracles, "softmax_attention", lambda *a, q_offset=0, **k: real(*a, q_offset=0, **k))
    c = next(c for c in checks() if c.name == "oracle-sdpa")
    results = run_check(c, registry.get("standard"))
    failed = {r.case for r in results if not r.passed}
    assert failed == {r.case for r in results if "q_offset" in r.case} and failed
