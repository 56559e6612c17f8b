"""Generation: cached decoding equals full recomputation, token for token and logit for logit, for every causal
registered mechanism with a cache; greedy and seeded sampling; past block_size (re-prefill)."""

from __future__ import annotations

import pytest
import torch

from attnlab.layers import registry
from attnlab.models import LM, LMConfig
from attnlab.models.lm import generate, generate_with_logits, sample_next

CACHED = [s.name for s in registry.all_specs() if s.causal and s.cache is not None]


def _model(name: str, block: int = 12) -> LM:
    spec = registry.get(name)
    opts = {name: dict(spec.verify_options)} if spec.verify_options else {}
    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=17, n_layers=2, d_model=32, n_heads=4, context_len=block, attention=name,
                   attention_options=opts)
    model = LM(cfg).double()
    with torch.no_grad():  # larger weights than the 0.02 init, so that logits are far from uniform
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(10.0)
    return model


def test_every_causal_cached_mechanism_is_covered() -> None:
    assert {"standard", "sliding-window", "castle", "castle-swl", "linear"} <= set(CACHED)


@pytest.mark.parametrize("name", CACHED)
@pytest.mark.parametrize("temperature, top_k", [(0.0, None), (1.0, 5)])
def test_cached_equals_uncached(name: str, temperature: float, top_k: int | None) -> None:
    """Prompt of 5, 16 new tokens with block_size 12: crosses the context limit once (re-prefill). float64;
    logits agree to 1e-9 absolute, tokens exactly."""
    model = _model(name)
    prompt = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    a, la = generate_with_logits(model, prompt, 16, temperature=temperature, top_k=top_k, seed=11, use_cache=True)
    b, lb = generate_with_logits(model, prompt, 16, temperature=temperature, top_k=top_k, seed=11, use_cache=False)
    assert a.shape == (2, 21) and torch.equal(a[:, :5], prompt)
    assert torch.equal(a, b)
    for x, y in zip(la, lb):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-9)
    # the generated text is not degenerate: different rows / steps produce different tokens
    assert len(set(a[:, 5:].flatten().tolist())) > 2


def test_seed_makes_sampling_reproducible_and_varies() -> None:
    model = _model("standard")
    p = [1, 2, 3]
    a = generate(model, p, 10, temperature=1.0, seed=1)
    assert a.shape == (13,)
    assert torch.equal(a, generate(model, p, 10, temperature=1.0, seed=1))
    assert not torch.equal(a, generate(model, p, 10, temperature=1.0, seed=2))
    assert model.training  # the mode is restored


def test_sampling_rules() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.9]])
    assert sample_next(logits, temperature=0.0, top_k=None, generator=g).item() == 1
    draws = {sample_next(logits, temperature=1.0, top_k=2, generator=g).item() for _ in range(200)}
    assert draws == {1, 3}  # top-2 only, both drawn


def test_nucleus_sampling_keeps_the_smallest_prefix_reaching_top_p() -> None:
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([[0.05, 0.5, 0.3, 0.15]])  # decreasing order: 1 (0.5), 2 (0.3), 3 (0.15), 0 (0.05)
    logits = probs.log()
    for top_p, want in ((0.5, {1}), (0.51, {1, 2}), (0.8, {1, 2}), (0.81, {1, 2, 3}), (0.96, {0, 1, 2, 3}),
                        (0.01, {1})):
        draws = {sample_next(logits, temperature=1.0, top_k=None, top_p=top_p, generator=g).item()
                 for _ in range(400)}
        assert draws == want, (top_p, draws)
    # with top_k first: top-2 leaves {1: 0.625, 2: 0.375}; top_p 0.6 keeps 1 only
    draws = {sample_next(logits, temperature=1.0, top_k=2, top_p=0.6, generator=g).item() for _ in range(200)}
    assert draws == {1}
    # a batch: each row its own nucleus
    two = torch.tensor([[0.9, 0.05, 0.05], [0.34, 0.33, 0.33]]).log()
    rows = [set(), set()]
    for _ in range(300):
        out = sample_next(two, temperature=1.0, top_k=None, top_p=0.5, generator=g)
        for r in range(2):
            rows[r].add(int(out[r, 0]))
    assert rows == [{0}, {0, 1}]


def test_bad_arguments() -> None:
    model = _model("standard")
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        generate(model, [1], 3, temperature=-1)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        generate(model, [1], 3, top_k=0)
    for bad in (0.0, 1.5, -0.1, True):
        with pytest.raises(ValueError, match="top_p must be a number in \\(0, 1\\]"):
            generate(model, [1], 3, top_p=bad)
    for bad in (-1, 2**63, -(2**63) - 1, 1.5, True):  # (found by the CLI fuzz: torch's overflow named no argument)
        with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*63\) or None"):
            generate(model, [1], 3, seed=bad)
    with pytest.raises(ValueError, match=r"prompt_ids must be \(T,\) or \(B, T\)"):
        generate(model, [], 3)
