"""Attention-map diagnostics (spec shared/specs/deconstructing.md 6.2) and oracle 17: known maps give known values,
and every diagnostic equals its formula written as a loop, in float64."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.layers.diagnostics import LOCAL_OFFSETS, attention_diagnostics

TOL = 1e-12
LENGTHS = (1, 7, 63, 100)


def identity(L: int, H: int = 2) -> torch.Tensor:
    return torch.eye(L, dtype=torch.float64).expand(H, L, L)


def first_token(L: int, H: int = 2) -> torch.Tensor:
    A = torch.zeros(H, L, L, dtype=torch.float64)
    A[..., 0] = 1.0
    return A


def uniform_causal(L: int, H: int = 2) -> torch.Tensor:
    A = torch.ones(L, L, dtype=torch.float64).tril()
    return (A / A.sum(-1, keepdim=True)).expand(H, L, L)


def random_causal(*lead: int, L: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(*lead, L, L, generator=g, dtype=torch.float64) * 2
    s = s.masked_fill(~torch.ones(L, L, dtype=torch.bool).tril(), float("-inf"))
    return s.softmax(-1)


@pytest.mark.parametrize("L", LENGTHS)
def test_identity_map(L: int) -> None:  # oracle 17
    d = attention_diagnostics(identity(L))
    assert torch.allclose(d.loc_foc[0], torch.ones(2, dtype=torch.float64), atol=TOL, rtol=0)
    assert torch.allclose(d.sink, torch.full((2,), 1 / L, dtype=torch.float64), atol=TOL, rtol=0)
    assert torch.equal(d.entropy, torch.zeros(2, L, dtype=torch.float64))
    assert torch.allclose(d.conc, torch.full((2,), math.sqrt(L), dtype=torch.float64), atol=TOL, rtol=0)
    for n in (1, 2, 3):
        if n < L:
            assert torch.equal(d.loc_foc[n], torch.zeros(2, dtype=torch.float64))
        else:  # no key n positions back in any row
            assert torch.isnan(d.loc_foc[n]).all()


@pytest.mark.parametrize("L", LENGTHS)
def test_all_first_token_map(L: int) -> None:  # oracle 17
    d = attention_diagnostics(first_token(L))
    assert torch.allclose(d.sink, torch.ones(2, dtype=torch.float64), atol=TOL, rtol=0)
    assert torch.allclose(d.loc_foc[0], torch.full((2,), 1 / L, dtype=torch.float64), atol=TOL, rtol=0)  # row 1 only
    assert torch.equal(d.entropy, torch.zeros(2, L, dtype=torch.float64))


@pytest.mark.parametrize("L", LENGTHS)
def test_uniform_causal_map_has_row_entropies_log_i(L: int) -> None:  # oracle 17
    d = attention_diagnostics(uniform_causal(L))
    want = torch.log(torch.arange(1, L + 1, dtype=torch.float64))  # row i (from 1) spreads over i keys
    assert torch.allclose(d.entropy, want.expand(2, L), atol=TOL, rtol=0)
    harmonic = sum(1 / i for i in range(1, L + 1))
    assert torch.allclose(d.sink, torch.full((2,), harmonic / L, dtype=torch.float64), atol=TOL, rtol=0)


def test_shifted_map_has_local_focus_one_back() -> None:
    L = 9
    A = torch.zeros(1, L, L, dtype=torch.float64)
    A[0, 0, 0] = 1.0
    A[0, torch.arange(1, L), torch.arange(L - 1)] = 1.0  # every later row attends to the previous token
    d = attention_diagnostics(A)
    assert float(d.loc_foc[1]) == pytest.approx(1.0, abs=TOL)  # mean over the L - 1 rows that have a previous key
    assert float(d.loc_foc[0]) == pytest.approx(1 / L, abs=TOL)


@pytest.mark.parametrize("L", LENGTHS)
def test_head_diversity(L: int) -> None:
    A = random_causal(3, L=L)  # (H, L, L)
    same = A[:1].expand(4, L, L)
    assert torch.equal(attention_diagnostics(same).head_div, torch.zeros((), dtype=torch.float64))
    # an identity head and a first-token head differ by 1 on the diagonal and on column 1 (except at (1, 1)):
    # 2 (L - 1) entries with population std 1/2
    two = torch.stack([identity(L, 1)[0], first_token(L, 1)[0]])
    want = 2 / (L * (L + 1)) * (L - 1)
    assert float(attention_diagnostics(two).head_div) == pytest.approx(want, abs=TOL)


def _loop_reference(A: torch.Tensor) -> dict[str, torch.Tensor]:
    """The formulas of spec 6.2, one entry at a time: A (H, L, L) -> per-head values and HeadDiv."""
    H, L, _ = A.shape
    ent = torch.zeros(H, L, dtype=torch.float64)
    conc, sink = torch.zeros(H, dtype=torch.float64), torch.zeros(H, dtype=torch.float64)
    loc = {n: torch.zeros(H, dtype=torch.float64) for n in LOCAL_OFFSETS}
    for h in range(H):
        for i in range(L):
            for j in range(L):
                a = float(A[h, i, j])
                ent[h, i] -= a * math.log(a) if a > 0 else 0.0
                conc[h] += a * a
            sink[h] += float(A[h, i, 0]) / L
            for n in LOCAL_OFFSETS:
                if i - n >= 0:
                    loc[n][h] += float(A[h, i, i - n]) / (L - n)
    div = 0.0
    for i in range(L):
        for j in range(i + 1):
            xs = [float(A[h, i, j]) for h in range(H)]
            m = sum(xs) / H
            div += math.sqrt(sum((x - m) ** 2 for x in xs) / H)
    return {"entropy": ent, "conc": conc.sqrt(), "sink": sink, "head_div": torch.tensor(div * 2 / (L * (L + 1)),
            dtype=torch.float64), **{f"loc_foc_{n}": v for n, v in loc.items()}}


@pytest.mark.parametrize("L", (1, 7, 13))
def test_every_diagnostic_equals_its_formula_and_batches(L: int) -> None:
    A = random_causal(2, 3, L=L, seed=L)  # (B, H, L, L)
    d = attention_diagnostics(A)
    assert d.entropy.shape == (2, 3, L) and d.conc.shape == d.sink.shape == (2, 3) and d.head_div.shape == (2,)
    for b in range(2):
        ref = _loop_reference(A[b])
        got = {"entropy": d.entropy[b], "conc": d.conc[b], "sink": d.sink[b], "head_div": d.head_div[b],
               **{f"loc_foc_{n}": d.loc_foc[n][b] for n in LOCAL_OFFSETS if n < L}}
        for k, v in got.items():
            assert torch.allclose(v, ref[k], atol=1e-10, rtol=0), k
        one = attention_diagnostics(A[b])  # per-example == batched
        assert torch.allclose(one.conc, d.conc[b], atol=TOL, rtol=0)
    s = d.summary()
    assert set(s) == {"entropy", "conc", "head_div", "sink", "loc_foc_0", "loc_foc_1", "loc_foc_2", "loc_foc_3"}
    assert s["sink"] == pytest.approx(float(d.sink.mean()))


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match=r"shape \(\.\.\., H, L, L\).*got \(\(4, 5\)"):
        attention_diagnostics(torch.zeros(4, 5))
    with pytest.raises(ValueError, match=r"got \(\(2, 4, 5\)"):
        attention_diagnostics(torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match="floating tensor"):
        attention_diagnostics(torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"offsets must be ints >= 0, got \(0, -1\)"):
        attention_diagnostics(identity(4), offsets=(0, -1))
