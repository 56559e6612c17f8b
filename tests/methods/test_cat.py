"""CAT (spec causal_training.md Part A): records, the adjacency M (A.4) and the re-attention loss (A.5), against the
numbered oracles of A.10 (cited as "oracle k")."""

from __future__ import annotations

import json
import math

import pytest
import torch

from attnlab.data.tokenizers import CharTokenizer, WordTokenizer
from attnlab.layers.capture import capture_attention
from attnlab.models import LM, LMConfig
from attnlab.methods import (
    AnnotationError,
    CATConfig,
    CausalRecord,
    averaged_attention,
    cat_loss,
    causal_adjacency,
    re_attention_loss,
    read_records,
)

F64 = torch.float64

# ---------------------------------------------------------------- records


def test_read_records_parses_and_test_records_have_no_relations(tmp_path) -> None:
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({"input": "a b Answer: ", "target": "c", "important": [{"c": ["a", "b"]}]}) + "\n\n"
                 + json.dumps({"input": "x", "target": "y"}) + "\n")
    a, b = read_records(p)
    assert a.relations == (("c", ("a", "b")),) and a.line == 1 and a.text == "a b Answer: c"
    assert b.relations == () and b.line == 3


@pytest.mark.parametrize("line, match", [
    ('{"input": "a", "target": ', r"line 2: malformed JSON"),
    ('[1, 2]', r"line 2: expected a JSON object"),
    ('{"target": "c"}', r"line 2: field 'input': missing"),
    ('{"input": "a", "target": 3}', r"line 2: field 'target': expected a string"),
    ('{"input": "a", "target": "c", "important": {"c": ["a"]}}', r"line 2: field 'important': expected a list"),
    ('{"input": "a", "target": "c", "important": [{"c": ["a"], "d": ["a"]}]}', r"'important'\[0\]: expected an object"),
    ('{"input": "a", "target": "c", "important": [{"c": []}]}', r"'important'\[0\]\['c'\]: expected a non-empty list"),
    ('{"input": "a", "target": "c", "important": [{"  ": ["a"]}]}', r"'important'\[0\] key: empty phrase"),
    ('{"input": "a", "target": "c", "important": [{"c": ["a", ""]}]}', r"'important'\[0\]\['c'\]\[1\]: empty phrase"),
    ('{"input": "a", "target": "c", "important": [{"c": ["a", 5]}]}', r"\[1\]: expected a string phrase"),
    ('{"input": "a c", "target": "c", "important": [{"c": ["c"]}]}', r"\[0\]: the effect lists itself"),
])
def test_bad_records_name_line_and_field(line: str, match: str) -> None:
    good = json.dumps({"input": "a", "target": "c"})
    with pytest.raises(AnnotationError, match=match):
        read_records([good, line])


def test_phrase_outside_text_is_an_error_only_when_required() -> None:
    line = json.dumps({"input": "a b ", "target": "c", "important": [{"c": ["a", "zz"]}]})
    assert read_records([line])[0].relations == (("c", ("a", "zz")),)  # the spec: marks nothing, raises nothing
    with pytest.raises(AnnotationError, match=r"line 1: field 'important'\[0\]\['c'\]\[1\]: phrase 'zz' does not"):
        read_records([line], require_in_text=True)


# ---------------------------------------------------------------- adjacency (A.4)

WORDS = WordTokenizer(["<eos>", "<unk>", "Risk:", "Smoking:", "7", "Weight:", "9", "Gene:", "3", "Answer:", "High",
                       "Low"])


def _rec(inp: str, target: str, rel: dict[str, list[str]]) -> CausalRecord:
    return CausalRecord(input=inp, target=target, relations=tuple((k, tuple(v)) for k, v in rel.items()))


def test_adjacency_hand_checked_word_example() -> None:
    # tokens: 0 Risk: 1 Smoking: 2 7 3 Gene: 4 3 5 Weight: 6 9 7 Answer: 8 High 9 <eos>
    r = _rec("Risk: Smoking: 7 Gene: 3 Weight: 9 Answer: ", "High", {"High": ["Smoking: 7", "Weight: 9"]})
    res = causal_adjacency(r, WORDS)
    assert len(res.ids) == 10 and res.missing == []
    want = torch.zeros(10, 10)
    want[7, [1, 2, 5, 6]] = 1  # effect at kp = 8 (lk = 1): row kp - 1 = 7; cause columns [1, 3) and [5, 7)
    assert torch.equal(res.M, want)  # oracle 2
    # oracle 1: binary, strictly lower-triangular
    assert set(res.M.unique().tolist()) <= {0.0, 1.0} and torch.equal(res.M.triu(), torch.zeros(10, 10))


def test_multi_token_effect_marks_shifted_rows() -> None:
    # 0 Smoking: 1 7 2 Answer: 3 High 4 Low 5 <eos>; effect "High Low" = [3, 5) -> rows [2, 4)
    res = causal_adjacency(_rec("Smoking: 7 Answer: ", "High Low", {"High Low": ["Smoking: 7"]}), WORDS)
    want = torch.zeros(6, 6)
    want[2:4, 0:2] = 1
    assert torch.equal(res.M, want)


def test_gap_rule() -> None:  # oracle 3
    adjacent = causal_adjacency(_rec("Smoking: 7 ", "High", {"High": ["Smoking: 7"]}), WORDS)  # kp = vp + lv
    assert adjacent.M.sum() == 0
    gap = causal_adjacency(_rec("Smoking: 7 Answer: ", "High", {"High": ["Smoking: 7"]}), WORDS)  # kp = vp + lv + 1
    want = torch.zeros(5, 5)
    want[2, 0:2] = 1
    assert torch.equal(gap.M, want)


def test_every_occurrence_pair_and_missing_phrases() -> None:  # oracle 4
    # 0 7 1 High 2 7 3 Gene: 4 High 5 <eos>: key "High" at 1, 4; value "7" at 0, 2
    res = causal_adjacency(_rec("7 High 7 Gene: ", "High", {"High": ["7", "Weight: 9", "Low"]}), WORDS)
    want = torch.zeros(6, 6)
    want[0, 0] = 0  # (kp=1, vp=0): kp = vp + lv, no mark
    want[3, 0] = want[3, 2] = 1  # kp=4 with vp=0 and vp=2
    assert torch.equal(res.M, want)
    assert res.missing == ["Weight: 9", "Low"]  # absent phrases mark nothing and raise nothing


def test_char_tokenizer_splits_phrases_and_pad_truncation() -> None:
    text = "ab cd: x"
    tok = CharTokenizer.from_text(text + "#")
    r = _rec("ab cd: ", "x", {"x": ["ab"], "cd:": ["ab"]})
    res = causal_adjacency(r, tok, pad_id=tok.encode("#")[0])
    # "ab" at the text start matches without the leading space: [0, 2); " cd:" = [2, 6); " x" = [6, 8); pad at 8
    want = torch.zeros(9, 9)
    want[5:7, 0:2] = 1  # effect " x" rows [5, 7)
    want[1:5, 0:2] = 0  # " cd:" starts at kp = 2 = vp + lv: no mark
    assert torch.equal(res.M, want) and res.ids[-1] == tok.encode("#")[0]
    short = causal_adjacency(r, tok, max_length=6)
    assert short.M.shape == (6, 6) and short.M.sum() == 0 and short.missing == ["x"]


def test_subword_tokenizer_phrases_split_into_pieces_are_found() -> None:
    pytest.importorskip("tokenizers")
    from attnlab.data.subword import SubwordTokenizer

    tok = SubwordTokenizer.train(["Smoking: 7, Weight: 9, Gene: 3 Answer: High Risk"] * 30
                                 + ["Low Risk, Yellow fingers: 4"] * 30)
    r = _rec("Gene: 3, Smoking: 7, Weight: 9 Answer: ", "High Risk", {"High Risk": ["Smoking: 7", "Weight: 9"]})
    res = causal_adjacency(r, tok)
    assert res.missing == []
    ids = res.ids

    def span(phrase: str, after: int = 0) -> tuple[int, int]:
        pat = tok.encode(phrase)
        s = next(i for i in range(after, len(ids)) if ids[i:i + len(pat)] == pat)
        return s, len(pat)

    (kp, lk), (v1, l1), (v2, l2) = span("High Risk"), span("Smoking: 7"), span("Weight: 9")
    assert lk >= 1 and l1 >= 2  # "Smoking: 7" is several tokens
    want = torch.zeros(len(ids), len(ids))
    want[kp - 1:kp + lk - 1, v1:v1 + l1] = 1
    want[kp - 1:kp + lk - 1, v2:v2 + l2] = 1
    assert torch.equal(res.M, want)


def test_gpt2_text_start_and_leading_space_forms() -> None:
    from attnlab.data.tokenizers import GPT2Tokenizer

    tok = GPT2Tokenizer()
    r = _rec("Smoking: 7, Weight: 9 Answer: ", "High Risk", {"High Risk": ["Smoking: 7", "Weight: 9"]})
    res = causal_adjacency(r, tok)
    # Sm|oking|:| 7|,| Weight|:| 9| Answer|:| High| Risk: "Smoking: 7" matches at the start without the space
    assert len(res.ids) == 12 and res.missing == []
    want = torch.zeros(12, 12)
    want[9:11, [0, 1, 2, 3, 5, 6, 7]] = 1  # effect [10, 12) -> rows [9, 11)
    assert torch.equal(res.M, want)


def test_phrase_with_unknown_words_or_characters_is_missing_not_matched() -> None:
    res = causal_adjacency(_rec("Smoking: 7 Answer: ", "High", {"High": ["Smoking: banana"]}), WORDS)
    assert res.M.sum() == 0 and res.missing == ["Smoking: banana"]
    tok = CharTokenizer.from_text("ab x")
    assert causal_adjacency(_rec("ab ", "x", {"x": ["q"]}), tok).missing == ["q"]


def test_adjacency_refuses_non_tokenizers() -> None:
    with pytest.raises(TypeError, match="has no encode"):
        causal_adjacency(_rec("a", "b", {}), object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_length=0"):
        causal_adjacency(_rec("a", "b", {}), WORDS, max_length=0)


# ---------------------------------------------------------------- loss (A.5)


def _loop_loss(abar: torch.Tensor, M: torch.Tensor, cfg: CATConfig) -> float:
    """Per-row Python loop of spec A.5, written independently of the vectorised form."""
    total, valid = 0.0, 0
    B, n, _ = M.shape
    for b in range(B):
        for j in range(n):
            if M[b, j].sum() == 0 or M[b, j].sum() == n:
                continue
            c = [abar[b, j, k].item() for k in range(j + 1) if M[b, j, k] == 1]
            o = [abar[b, j, k].item() for k in range(j + 1) if M[b, j, k] == 0]
            if not c or not o:
                continue
            valid += 1
            a1, a0 = sum(c) / len(c), max(sum(o) / len(o), cfg.eps)
            r = a1 / a0
            if r < cfg.alpha:
                total += {"div": -math.log1p(a1) / math.log1p(a0), "div2": -math.log1p(a1 / (1 + a0)),
                          "nll": -a1 / (a1 + a0), "hinge": max(cfg.alpha - r, 0.0)}[cfg.loss_type]
    return total / max(valid, 1)


def _random_case(seed: int, B: int = 3, n: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, n, n, generator=g, dtype=F64).masked_fill(torch.ones(n, n).triu(1).bool(), -math.inf)
    M = (torch.rand(B, n, n, generator=g) < 0.4).to(F64)  # random, diagonal and future included
    return s.softmax(-1), M


@pytest.mark.parametrize("loss_type", ["div", "div2", "nll", "hinge"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_equals_loop(loss_type: str, seed: int) -> None:  # oracle 9
    abar, M = _random_case(seed)
    for alpha in (0.5, 1.5, 3.0):
        cfg = CATConfig(alpha=alpha, loss_type=loss_type)  # type: ignore[arg-type]
        got = re_attention_loss(abar, M, cfg).attn_loss.item()
        assert got == pytest.approx(_loop_loss(abar, M, cfg), abs=1e-12)


def test_batch_normalisation_is_sum_over_valid_rows_not_mean_of_examples() -> None:  # oracle 10
    abar, M = _random_case(5, B=2)
    M[1, :, :] = 0
    M[1, 6, 0] = 1  # example 1: one valid row; example 0: several
    cfg = CATConfig(alpha=5.0)
    per = [re_attention_loss(abar[b:b + 1], M[b:b + 1], cfg) for b in range(2)]
    S = sum(p.attn_loss.item() * p.n_valid for p in per)
    V = sum(p.n_valid for p in per)
    whole = re_attention_loss(abar, M, cfg).attn_loss.item()
    assert per[0].n_valid > 1 and per[1].n_valid == 1
    assert whole == pytest.approx(S / V, abs=1e-12)
    assert whole != pytest.approx(sum(p.attn_loss.item() for p in per) / 2, abs=1e-6)


def test_gating_uniform_attention_and_jump_at_threshold() -> None:  # oracle 6
    n = 6
    abar = (torch.ones(n, n, dtype=F64).tril() / torch.arange(1, n + 1, dtype=F64)[:, None])[None]  # uniform
    M = torch.zeros(1, n, n, dtype=F64)
    M[0, 4, 1] = M[0, 5, 2] = 1
    below, at = CATConfig(alpha=1.0 + 1e-9), CATConfig(alpha=1.0)
    r = re_attention_loss(abar, M, at)
    assert r.n_valid == 2 and r.ratio_mean == pytest.approx(1.0) and r.satisfied == 1.0
    assert r.attn_loss.item() == 0.0
    assert re_attention_loss(abar, M, below).attn_loss.item() < -0.9  # ~ -r: the value jumps at r = alpha


def test_sign_and_monotonicity_of_div() -> None:  # oracle 7
    a1 = torch.tensor([0.3], dtype=F64, requires_grad=True)
    a0 = torch.tensor([0.1], dtype=F64, requires_grad=True)
    phi = -torch.log1p(a1) / torch.log1p(a0)
    g1, g0 = torch.autograd.grad(phi.sum(), (a1, a0))
    assert phi.item() <= 0 and g1.item() < 0 and g0.item() > 0
    abar, M = _random_case(3)
    assert re_attention_loss(abar, M, CATConfig(alpha=10.0)).attn_loss.item() <= 0


def test_averaged_attention_is_mean_of_layer_head_means() -> None:  # oracle 5
    g = torch.Generator().manual_seed(0)
    layers = [torch.rand(2, 3, 5, 5, generator=g, dtype=F64).tril().softmax(-1) for _ in range(4)]
    want = torch.stack([p.mean(1) for p in layers]).mean(0)
    torch.testing.assert_close(averaged_attention(iter([p.clone() for p in layers])), want, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="no attention probabilities"):
        averaged_attention([])
    with pytest.raises(ValueError, match=r"layer 1 probabilities must be \(B, H, T, T\)"):
        averaged_attention([layers[0], torch.zeros(2, 3, 5, 4)])


def _tiny_lm() -> LM:
    torch.manual_seed(0)
    return LM(LMConfig(vocab_size=12, n_layers=3, d_model=16, n_heads=2, context_len=10)).double()


def _M_for(B: int, T: int) -> torch.Tensor:
    M = torch.zeros(B, T, T, dtype=F64)
    M[:, 6, 1:3] = 1
    M[:, 8, [0, 4]] = 1
    return M


def test_real_lm_rows_sum_to_one_and_gradient_only_into_supervised_layers() -> None:  # oracles 5 and layer choice
    m = _tiny_lm()
    idx = torch.randint(0, 12, (2, 9))
    with capture_attention(m, keep_graph=True) as cap:
        m(idx)
    abar = averaged_attention(p for _, p in cap.all())
    torch.testing.assert_close(abar.sum(-1), torch.ones(2, 9, dtype=F64), rtol=0, atol=1e-12)
    assert torch.equal(abar.triu(1), torch.zeros_like(abar))
    cfg = CATConfig(alpha=50.0, layers=("blocks.1.attn",))
    res = cat_loss(cap.all(), _M_for(2, 9), cfg)
    res.loss.backward()
    grads = [b.attn.in_proj.weight.grad for b in m.blocks]
    assert grads[1] is not None and grads[1].abs().sum() > 0  # query/key projections of the supervised layer
    assert grads[0] is not None and grads[0].abs().sum() > 0  # block 0 feeds block 1's queries and keys
    # nothing downstream of the supervised layer, nor its value/output path, receives gradient
    for name, p in m.named_parameters():
        if name.startswith("blocks.2.") or name.startswith("blocks.1.attn.out_proj"):
            assert p.grad is None or p.grad.abs().sum() == 0, name
    with pytest.raises(ValueError, match=r"names \['blocks.7.attn'\], which were not captured"):
        cat_loss(cap.all(), _M_for(2, 9), CATConfig(layers=("blocks.7.attn",)))


def test_reduction_to_ce_when_no_supervision_or_all_satisfied() -> None:  # oracles 8 and 6 (gradients)
    m = _tiny_lm()
    idx = torch.randint(0, 12, (2, 9))
    for M, alpha in ((torch.zeros(2, 9, 9, dtype=F64), 2.0), (_M_for(2, 9), 1e-6)):
        m.zero_grad(set_to_none=True)
        with capture_attention(m, keep_graph=True) as cap:
            logits = m(idx)
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 12), idx[:, 1:].reshape(-1))
        res = cat_loss(cap.all(), M, CATConfig(alpha=alpha))
        assert res.loss.item() == 0.0
        (ce + res.loss).backward()
        with_cat = [p.grad.clone() for p in m.parameters()]
        m.zero_grad(set_to_none=True)
        ce2 = torch.nn.functional.cross_entropy(m(idx)[:, :-1].reshape(-1, 12), idx[:, 1:].reshape(-1))
        ce2.backward()
        for g, p in zip(with_cat, m.parameters()):
            torch.testing.assert_close(g, p.grad, rtol=0, atol=1e-14)


def test_decay_schedules() -> None:  # oracle 11
    ep = CATConfig()
    assert [ep.decay_weight(epoch=e) for e in range(4)] == pytest.approx([1, math.exp(-1), math.exp(-2), math.exp(-3)])
    assert ep.decay_weight(epoch=0) == 1.0
    pr = CATConfig(decay="progress", decay_rate=1.0, progress_scale=5.0, weight=2.0)
    assert pr.decay_weight(progress=0.0) == 2.0 and pr.decay_weight(progress=0.4) == pytest.approx(2 * math.exp(-2))
    assert CATConfig(decay="none", weight=0.5).decay_weight(epoch=9) == 0.5
    abar, M = _random_case(1)
    res = re_attention_loss(abar, M, CATConfig(alpha=10.0), epoch=2)
    assert res.weight == pytest.approx(math.exp(-2))
    assert res.loss.item() == pytest.approx(math.exp(-2) * res.attn_loss.item(), abs=1e-15)
    with pytest.raises(ValueError, match="progress=1.5"):
        pr.decay_weight(progress=1.5)
    with pytest.raises(ValueError, match="epoch=-1"):
        ep.decay_weight(epoch=-1)


@pytest.mark.parametrize("kw, name", [
    ({"alpha": 0.0}, "alpha=0.0"), ({"alpha": math.inf}, "alpha=inf"), ({"alpha": -1.0}, "alpha=-1.0"),
    ({"loss_type": "mse"}, "loss_type='mse'"), ({"decay": "cosine"}, "decay='cosine'"),
    ({"decay_rate": -1.0}, "decay_rate=-1.0"), ({"weight": math.nan}, "weight=nan"), ({"eps": 0.0}, "eps=0.0"),
    ({"layers": ()}, "layers=()"),
])
def test_config_validation_names_the_field(kw: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"CATConfig: {name}"):
        CATConfig(**kw)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"M must match abar \(1, 3, 3\)"):
        re_attention_loss(torch.zeros(1, 3, 3), torch.zeros(1, 4, 4), CATConfig())
    with pytest.raises(ValueError, match=r"abar must be \(B, T, T\)"):
        re_attention_loss(torch.zeros(3, 3), torch.zeros(3, 3), CATConfig())
