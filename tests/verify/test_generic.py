"""The generic checks pass on a correct layer and catch deliberately broken ones (so they can fail)."""

from __future__ import annotations

import math

import pytest

from attnlab.verify import VerifyOptions, checks, run_check
from attnlab.verify.core import Check
from attnlab.verify.generic import (
    TOL_BACKEND,
    TOL_CACHE,
    TOL_CAUSAL,
    backend_unavailable_reason,
    is_skipped,
)
from attnlab.verify.toys import toy_spec

GENERIC = ["backends-vs-reference", "causality-perturbation", "causality-gradient", "sees-future",
           "cached-decoding", "batch-consistency"]


def _check(name: str) -> Check:
    return {c.name: c for c in checks()}[name]


def _failed(name: str, spec, opts: VerifyOptions | None = None):
    return [r for r in run_check(_check(name), spec, opts) if not r.passed]


def test_generic_checks_are_registered():
    assert set(GENERIC) <= {c.name for c in checks()}


@pytest.mark.parametrize("causal", [True, False])
def test_correct_toy_passes_every_applicable_check(causal):
    spec = toy_spec(causal=causal)
    ran = [c.name for c in checks() if c.applies(spec) and c.name in GENERIC]
    assert ("sees-future" in ran) is (not causal)
    assert ("causality-perturbation" in ran) is causal
    for name in ran:
        results = run_check(_check(name), spec)
        assert results and all(r.passed for r in results), results
        assert not any(is_skipped(r) for r in results)


def test_applicability_follows_the_spec():
    causal, bidi = toy_spec(causal=True), toy_spec(causal=False)
    assert _check("cached-decoding").applies(causal) and not _check("cached-decoding").applies(bidi)
    assert _check("causality-gradient").applies(causal) and not _check("causality-gradient").applies(bidi)
    assert _check("sees-future").applies(bidi) and not _check("sees-future").applies(causal)


def test_future_leak_is_caught_by_both_causality_checks():
    spec = toy_spec(fault="leak-future")
    for name in ("causality-perturbation", "causality-gradient"):
        bad = _failed(name, spec)
        assert {r.case for r in bad} == {"reference", "sdpa"}
        assert all(r.max_error > 1e3 * TOL_CAUSAL for r in bad)
        assert all("t=" in r.detail for r in bad)


def test_causal_layer_declared_bidirectional_fails_sees_future():
    wrong = toy_spec(causal=True, declared_causal=False)
    bad = _failed("sees-future", wrong)
    assert len(bad) == 2 and all(r.max_error == 0.0 for r in bad)


def test_differing_backend_is_caught_with_its_case_and_worst_tensor():
    bad = _failed("backends-vs-reference", toy_spec(fault="backend-differs"))
    assert len(bad) == 1 and bad[0].case == "sdpa vs reference"
    assert bad[0].max_error > TOL_BACKEND and bad[0].tolerance == TOL_BACKEND
    assert bad[0].detail.startswith("worst: ")


def test_drifting_cache_is_caught_for_every_prefill_length():
    bad = _failed("cached-decoding", toy_spec(fault="cache-drifts"))
    cases = {r.case for r in bad}
    # prefill 12 of 13 decodes one token at offset 12, which drifts too
    assert {"reference, prefill 0", "reference, prefill 1", "reference, prefill 6", "sdpa, prefill 12"} <= cases
    assert all(r.max_error > TOL_CACHE for r in bad)


def test_batch_mixing_is_caught():
    assert _failed("batch-consistency", toy_spec(fault="batch-mixes"))


def test_crash_is_a_failure_not_a_pass():
    for name in ("backends-vs-reference", "causality-perturbation", "batch-consistency"):
        (r,) = run_check(_check(name), toy_spec(fault="crash"))
        assert not r.passed and "toy fault: crash" in r.detail and math.isnan(r.max_error)


def test_awkward_sizes_and_other_seeds_still_pass():
    opts = VerifyOptions(batch_size=3, seq_len=7, d_model=12, n_heads=2, seed=5)
    spec = toy_spec()
    for name in ("causality-perturbation", "cached-decoding", "batch-consistency"):
        assert all(r.passed for r in run_check(_check(name), spec, opts))


def test_sizes_that_leave_nothing_to_compare_are_skipped_not_passed():
    # T=1: no later input to perturb, so even a leaking layer would "pass"; B=1: the example alone is the batch
    leak, mixes = toy_spec(fault="leak-future"), toy_spec(fault="batch-mixes")
    one_token = VerifyOptions(seq_len=1)
    for name, spec, opts in (("causality-perturbation", leak, one_token), ("causality-gradient", leak, one_token),
                             ("sees-future", toy_spec(causal=False), one_token),
                             ("batch-consistency", mixes, VerifyOptions(batch_size=1))):
        results = run_check(_check(name), spec, opts)
        assert len(results) == 2 and all(is_skipped(r) and not r.passed for r in results), (name, results)
        assert all("needs" in r.detail for r in results)
    # at the smallest sizes that do compare something, the faults are caught
    assert _failed("causality-perturbation", leak, VerifyOptions(seq_len=2))
    assert _failed("batch-consistency", mixes, VerifyOptions(batch_size=2))


def test_float32_uses_a_looser_written_tolerance():
    import torch

    opts = VerifyOptions(dtype=torch.float32)
    results = run_check(_check("backends-vs-reference"), toy_spec(), opts)
    assert all(r.passed and r.tolerance == 1e-4 for r in results)


def test_triton_backend_availability(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET" in backend_unavailable_reason("triton", "cpu")
    assert backend_unavailable_reason("triton", "cuda") is None
    assert backend_unavailable_reason("sdpa", "cpu") is None
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend_unavailable_reason("triton", "cpu") is None


def test_a_backend_that_cannot_run_here_is_reported_skipped_not_passed(monkeypatch, capsys):
    """FlexAttention has no CPU backward: a spec listing it (as on a CUDA machine) verified on CPU gets a visible
    skip for that backend, never a pass; the CLI counts it apart and still exits 0 when everything else passed."""
    import dataclasses

    from attnlab.cli import main
    from attnlab.layers import registry

    spec = dataclasses.replace(registry.get("standard"), name="standard-with-flex",
                               backends=("reference", "sdpa", "flex"))
    monkeypatch.setitem(registry.MECHANISMS.entries, spec.name, spec)
    results = run_check(_check("backends-vs-reference"), spec, VerifyOptions())
    flex = [r for r in results if "flex" in r.case]
    assert flex and all(is_skipped(r) and not r.passed for r in flex)
    assert any(r.passed for r in results if "sdpa" in r.case)
    assert main(["verify", "standard-with-flex", "--check", "backends-vs-reference", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "skip" in out and "skipped (could not run on this device" in out


def _mask_fault_spec(name: str, used_mask):
    """``strided`` as registered, but its layer attends through ``used_mask`` while exposing its own mask."""
    import dataclasses
    import types

    from torch import nn

    from attnlab.layers import registry

    base = registry.get("strided")

    class Wrapped(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.mask, self.n_heads, self.cross = inner.mask, inner.n_heads, inner.cross

        @property
        def impl(self) -> str:
            return self.inner.impl

        @impl.setter
        def impl(self, value: str) -> None:
            self.inner.impl = value

        def forward(self, x, **kwargs):
            return self.inner(x, mask=used_mask)

    def make_config(**kw):
        return types.SimpleNamespace(build=lambda: Wrapped(base.make_config(**kw).build()))

    return dataclasses.replace(base, name=name, make_config=make_config)


def test_mask_respected_catches_a_loosened_and_a_tightened_mask():
    """The check fails for a layer that attends through a looser mask (a hidden key leaks) or a tighter one (a
    visible key has no influence) than the mask it declares, and passes for the honest layer."""
    from attnlab.layers import registry
    from attnlab.masks import causal, sliding_window

    check = _check("mask-respected")
    honest = run_check(check, registry.get("strided"), VerifyOptions())
    assert honest and all(r.passed for r in honest), honest
    loose = run_check(check, _mask_fault_spec("strided-loose", causal()), VerifyOptions())
    assert loose and all(not r.passed and "worst hidden key at" in r.detail for r in loose), loose
    tight = run_check(check, _mask_fault_spec("strided-tight", sliding_window(2)), VerifyOptions())
    assert tight and all(not r.passed and "a visible key has no influence" in r.detail for r in tight), tight


def test_mask_respected_applies_only_to_masked_self_attention_layers():
    from attnlab.layers import registry

    check = _check("mask-respected")
    assert check.applies(registry.get("strided")) and check.applies(registry.get("prefix-lm"))
    assert not check.applies(registry.get("linear")) and not check.applies(registry.get("castle"))
