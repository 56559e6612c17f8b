"""LeaF stage 1/2 and the shared input-gradient saliency against the oracles of causal_training.md B.9."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.models.lm import LMConfig
from attnlab.methods.leaf import (LeafDetectConfig, detect_confounders, leaf_kd_loss, mark_confounders,
                                     marked_spans, minmax_normalise, prune_span, token_kd_loss)
from attnlab.methods.saliency import input_gradient_saliency

IGN = -100


class LinearToy(nn.Module):
    """logits_t = W e_t + b: each position sees only its own embedding, so saliency has a closed form."""

    def __init__(self, vocab_size: int = 7, d: int = 5, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.vocab_size = vocab_size
        self.emb = nn.Parameter(torch.randn(vocab_size, d, generator=g, dtype=torch.float64))
        self.head = nn.Linear(d, vocab_size, dtype=torch.float64)
        self.drop = nn.Dropout(0.5)

    def embed(self, idx: Tensor) -> Tensor:
        return self.emb[idx]

    def forward(self, *, inputs_embeds: Tensor) -> Tensor:
        return self.head(inputs_embeds)


def _lm(seed: int, vocab_size: int = 11) -> nn.Module:
    torch.manual_seed(seed)
    return LMConfig(vocab_size=vocab_size, n_layers=2, d_model=16, n_heads=2, context_len=16).build().double()


def _batch(B: int = 2, T: int = 9, prompt: int = 6, vocab: int = 11, seed: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab, (B, T), generator=g)
    targets = torch.full((B, T), IGN)
    targets[:, prompt - 1:T - 1] = idx[:, prompt:]  # response tokens prompt..T-1 are the targets
    score = torch.zeros(B, T, dtype=torch.bool)
    score[:, :prompt] = True
    return idx, targets, score


# ---- saliency -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduce", ["l2", "sq", "abs", "grad_x_input"])
def test_saliency_equals_autograd_on_linear_toy(reduce: str) -> None:
    model = LinearToy()
    idx = torch.tensor([[1, 2, 3, 4], [0, 6, 5, 5]])
    targets = torch.tensor([[2, IGN, 4, 0], [IGN, IGN, 1, IGN]])
    sal = input_gradient_saliency(model, idx, targets, reduce=reduce)
    assert sal.dtype == torch.float64 and sal.shape == (2, 4) and bool((sal >= 0).all())
    for b in range(2):  # per-sample: each sample's own mean CE, closed form (softmax - onehot) W / n
        e = model.emb[idx[b]].detach()
        p = torch.softmax(model.head(e), dim=-1).detach()
        valid = targets[b] != IGN
        onehot = F.one_hot(targets[b].clamp(min=0), 7).double()
        g = ((p - onehot) @ model.head.weight.detach()) * valid[:, None] / valid.sum()
        want = {"l2": g.norm(dim=-1), "sq": g.pow(2).sum(-1), "abs": g.abs().sum(-1),
                "grad_x_input": (g * e).sum(-1).abs()}[reduce]
        torch.testing.assert_close(sal[b], want, rtol=1e-12, atol=1e-14)
    assert float(sal[0, 1]) == 0.0 and float(sal[1, 0]) == 0.0  # unscored positions of a position-local model


def test_saliency_leaves_no_parameter_grads_and_restores_modes() -> None:
    model = LinearToy()
    model.train()
    model.drop.eval()  # a mixed state must come back exactly
    idx = torch.tensor([[1, 2, 3]])
    input_gradient_saliency(model, idx, torch.tensor([[2, 3, IGN]]))
    assert all(p.grad is None for p in model.parameters())
    assert model.training and not model.drop.training and model.head.training


def test_saliency_is_per_sample_on_the_lm() -> None:
    model = _lm(0)
    idx, targets, _ = _batch(B=3)
    whole = input_gradient_saliency(model, idx, targets)
    for b in range(3):
        one = input_gradient_saliency(model, idx[b:b + 1], targets[b:b + 1])
        torch.testing.assert_close(whole[b:b + 1], one, rtol=1e-10, atol=1e-13)
    assert all(p.grad is None for p in model.parameters())


def test_saliency_bad_input() -> None:
    model = LinearToy()
    with pytest.raises(ValueError, match="reduce must be one of"):
        input_gradient_saliency(model, torch.tensor([[1]]), torch.tensor([[1]]), reduce="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode must be one of"):
        input_gradient_saliency(model, torch.tensor([[1]]), torch.tensor([[1]]), mode="test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="idx must be"):
        input_gradient_saliency(model, torch.tensor([1, 2]), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="targets must be"):
        input_gradient_saliency(model, torch.tensor([[1, 2]]), torch.tensor([[1]]))


# ---- stage 1 pieces -------------------------------------------------------------------------------------------

def test_minmax_ranges_and_constant() -> None:
    x = torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64)
    y = minmax_normalise(x)
    assert float(y.min()) == 0.0 and float(y.max()) == 1.0
    c = torch.full((4,), 0.3, dtype=torch.float64)
    assert torch.equal(minmax_normalise(c), c)  # left as is


def test_threshold_quantile_and_cap() -> None:
    d = torch.linspace(0, 1, 21, dtype=torch.float64)  # 0, 0.05, ..., 1
    m = mark_confounders(d, p=0.10, cap=0.5)  # q = d[2] = 0.1 <= cap: floor(p n) + 1 = 3 marks
    assert m.tolist() == [True] * 3 + [False] * 18
    m = mark_confounders(d, p=0.9, cap=0.5)  # q = d[18] = 0.9, cap binds: Δ <= 0.5
    assert int(m.sum()) == 11 and bool((d[m] <= 0.5).all())
    m = mark_confounders(d, p=0.0, cap=0.0)  # at least the minimum is marked
    assert m.tolist() == [True] + [False] * 20
    ties = torch.tensor([0.0, 0.2, 0.2, 0.2, 1.0], dtype=torch.float64)
    assert int(mark_confounders(ties, p=0.2, cap=0.5).sum()) == 4  # ties add more
    assert not bool(mark_confounders(torch.zeros(5, dtype=torch.float64), p=0.5, cap=0.5).any())  # constant Δ


def test_spans_and_pruning_remove_exactly_the_span() -> None:
    assert marked_spans(torch.tensor([True, True, False, True, False, False, True])) == [(0, 2), (3, 4), (6, 7)]
    assert marked_spans(torch.tensor([False, False])) == []
    idx = torch.arange(10, 20)
    targets = torch.full((10,), IGN)
    targets[6:9] = idx[7:10]  # response tokens 7..9
    for s, e in [(0, 2), (2, 5), (5, 6)]:
        ci, ct = prune_span(idx, targets, s, e)
        assert torch.equal(ci, torch.cat([idx[:s], idx[e:]]))
        # labels stay next-token labels of the pruned sequence
        assert torch.equal(ct[:-1][ct[:-1] != IGN], ci[1:][ct[:-1] != IGN])
        assert torch.equal(ct[ct != IGN], idx[7:10])
    with pytest.raises(ValueError, match="span"):
        prune_span(idx, targets, 3, 3)


# ---- stage 1 end to end ---------------------------------------------------------------------------------------

def test_identical_teacher_and_student_mark_nothing_and_kd_is_zero() -> None:
    model = _lm(0)
    idx, targets, score = _batch()
    det = detect_confounders(model, model, idx, targets, score, LeafDetectConfig(p=0.1))
    assert not bool(det.marked.any()) and det.counterfactuals == [] and det.spans == [[], []]
    with torch.no_grad():
        logits = model(idx)
    assert float(leaf_kd_loss((logits, logits, targets), (logits, logits, targets))) == 0.0


def test_detection_counterfactuals_and_scope() -> None:
    teacher, student = _lm(0), _lm(1)
    idx, targets, score = _batch(B=3, T=12, prompt=8)
    cfg = LeafDetectConfig(p=0.25, never_mark_ids=frozenset({int(idx[0, 0])}))
    det = detect_confounders(teacher, student, idx, targets, score, cfg)
    assert det.teacher.dtype == torch.float64 and bool((det.teacher >= 0).all()) and bool((det.student >= 0).all())
    assert not bool(det.marked[~score].any())  # B8: never outside the scored tokens
    assert not bool(det.marked[idx == int(idx[0, 0])].any())  # B3: never-mark ids
    for b in range(3):
        d = det.delta[b, score[b]]
        assert float(d.min()) == 0.0 and float(d.max()) == 1.0  # B1
    n_spans = sum(len(s) for s in det.spans)
    assert n_spans >= 1 and len(det.counterfactuals) == n_spans  # B4: k spans, k counterfactuals
    for cf in det.counterfactuals:
        assert (cf.start, cf.end) in det.spans[cf.sample]
        assert bool(det.marked[cf.sample, cf.start:cf.end].all())
        assert torch.equal(cf.idx, torch.cat([idx[cf.sample, :cf.start], idx[cf.sample, cf.end:]]))
        assert torch.equal(cf.targets[cf.targets != IGN], targets[cf.sample][targets[cf.sample] != IGN])


def test_detection_bad_input() -> None:
    idx, targets, score = _batch()
    with pytest.raises(ValueError, match="share a tokenizer.*teacher vocab_size=13.*student vocab_size=11"):
        detect_confounders(_lm(0, 13), _lm(1), idx, targets, score, LeafDetectConfig())
    bad = score.clone()
    bad[:, 7] = True  # a response token
    with pytest.raises(ValueError, match="score_mask includes target tokens"):
        detect_confounders(_lm(0), _lm(1), idx, targets, bad, LeafDetectConfig())
    with pytest.raises(ValueError, match="score_mask must be a bool tensor"):
        detect_confounders(_lm(0), _lm(1), idx, targets, score.long(), LeafDetectConfig())


@pytest.mark.parametrize("kwargs, name", [({"p": 1.0}, "p"), ({"p": -0.1}, "p"), ({"cap": 1.5}, "cap"),
                                          ({"cap": math.nan}, "cap"), ({"reduce": "l1"}, "reduce"),
                                          ({"mode": "x"}, "mode"), ({"never_mark_ids": {1}}, "never_mark_ids")])
def test_config_validation_names_the_option(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} must"):
        LeafDetectConfig(**kwargs)


# ---- stage 2 --------------------------------------------------------------------------------------------------

def test_token_kd_oracles() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 5, 6, generator=g, dtype=torch.float64)
    t = torch.randn(2, 5, 8, generator=g, dtype=torch.float64)  # wider teacher: truncated
    targets = torch.tensor([[IGN, IGN, 1, 2, 3], [IGN, 4, 4, IGN, 0]])
    loss = token_kd_loss(t, s, targets)
    lp, ls = F.log_softmax(t[..., :6], -1), F.log_softmax(s, -1)
    kl = (lp.exp() * (lp - ls)).sum(-1)
    torch.testing.assert_close(loss, kl[targets != IGN].mean(), rtol=1e-12, atol=0)
    assert float(loss) > 0
    t2 = t.clone()
    t2[targets == IGN] = 100.0  # prompt positions contribute exactly 0
    assert float(token_kd_loss(t2, s, targets)) == float(loss)
    assert float(token_kd_loss(torch.cat([s, t[..., :2]], -1), s, targets)) < 1e-14  # agree after truncation
    tau = 2.0
    lp, ls = F.log_softmax(t[..., :6] / tau, -1), F.log_softmax(s / tau, -1)
    want = (lp.exp() * (lp - ls)).sum(-1)[targets != IGN].mean() * tau ** 2
    torch.testing.assert_close(token_kd_loss(t, s, targets, temperature=tau), want, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="smaller than the student"):
        token_kd_loss(s[..., :4], s, targets)
    with pytest.raises(ValueError, match="must agree"):
        token_kd_loss(t, s, targets[:, :3])


def test_leaf_kd_weighted_and_mixed_rows() -> None:
    g = torch.Generator().manual_seed(1)
    o = (torch.randn(2, 4, 5, generator=g, dtype=torch.float64), torch.randn(2, 4, 5, generator=g, dtype=torch.float64),
         torch.tensor([[IGN, 1, 2, 3], [IGN, IGN, 0, 1]]))
    c = (torch.randn(2, 3, 5, generator=g, dtype=torch.float64), torch.randn(2, 3, 5, generator=g, dtype=torch.float64),
         torch.tensor([[IGN, 2, 3], [IGN, 0, 1]]))
    ko, kc = token_kd_loss(*o), token_kd_loss(*c)
    torch.testing.assert_close(leaf_kd_loss(o, c, lam=0.5), ko + 0.5 * kc, rtol=1e-12, atol=0)
    torch.testing.assert_close(leaf_kd_loss(o, c, mix="mixed_rows"), leaf_kd_loss(o, c, lam=1.0) / 2,
                               rtol=1e-12, atol=0)  # B9 at a 1:1 ratio
    torch.testing.assert_close(leaf_kd_loss(o, None), ko, rtol=0, atol=0)
    with pytest.raises(ValueError, match="mix must be one of"):
        leaf_kd_loss(o, c, mix="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lam must be"):
        leaf_kd_loss(o, c, lam=-1.0)
