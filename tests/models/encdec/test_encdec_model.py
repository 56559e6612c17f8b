"""EncoderDecoder: what each position sees (encoder by gradients, decoder by perturbation), source padding invisible
(its ids change nothing; per-example equals batched-with-padding), every cross score, bad input refused.

float64. Tolerances: 1e-12 where the same math runs on differently padded or batched tensors (observed ~1e-15);
exact zeros where a position must have no influence at all.
"""

from __future__ import annotations

import pytest
import torch
from encdec_helpers import EOS, F64, PAD, V, model, padded, random_sources

from attnlab.models.encdec import CROSS_SCORES

TOL = 1e-12


def _embedding_grads(m, src: torch.Tensor, pad: torch.Tensor, b: int, i: int) -> torch.Tensor:
    """|d memory[b, i] . r / d emb[b', j]| summed over the embedding dim: (B, S)."""
    store = {}

    def hook(_mod, _inp, out):
        out.retain_grad()
        store["emb"] = out

    h = m.tok_emb.register_forward_hook(hook)
    try:
        memory = m.encode(src, pad)
    finally:
        h.remove()
    r = torch.randn(memory.shape[-1], dtype=F64, generator=torch.Generator().manual_seed(i))
    (memory[b, i] @ r).backward()
    return store["emb"].grad.abs().sum(-1)  # (B, S)


@pytest.mark.parametrize("enc, visible", [
    ("bidirectional", lambda i, j: True),
    ("prefix-lm", lambda i, j: j < 3 or j <= i),  # prefix_len=3 (helpers.OPTIONS), AND-ed with the padding mask
    ("standard", lambda i, j: j <= i),
])
def test_encoder_row_sees_every_real_source_position_and_no_padding(enc: str, visible) -> None:
    m = model(encoder_attention=enc, n_encoder_layers=1)
    lengths = [6, 3, 1]
    src = padded(random_sources(lengths, seed=1))  # (3, 6)
    pad = src == PAD
    for b, n in enumerate(lengths):
        for i in range(n):  # rows at real positions
            g = _embedding_grads(m, src, pad, b, i)
            for j in range(src.shape[1]):
                if j < n and visible(i, j):
                    assert g[b, j] > 1e-8, (enc, b, i, j)
                else:
                    assert g[b, j] == 0, (enc, b, i, j)
            others = torch.cat([g[:b], g[b + 1:]])
            assert others.abs().max() == 0  # no leak across the batch


def test_encoder_without_padding_mask_would_leak() -> None:
    """The gradient test above can fail: with an all-False padding mask the bidirectional rows see the padding."""
    m = model(encoder_attention="bidirectional", n_encoder_layers=1)
    src = padded(random_sources([6, 3], seed=1))
    g = _embedding_grads(m, src, torch.zeros_like(src, dtype=torch.bool), 1, 0)
    assert g[1, 3:].min() > 1e-8


@pytest.mark.parametrize("dec", ["standard", "sliding-window", "castle", "linear", "bahdanau"])
def test_decoder_is_causal(dec: str) -> None:
    m = model(decoder_attention=dec)
    src = padded(random_sources([7, 4], seed=2))
    tgt = torch.randint(3, V, (2, 9), generator=torch.Generator().manual_seed(3))
    y = m(src, tgt)
    for k in (0, 4, 8):
        t2 = tgt.clone()
        t2[:, k] = (t2[:, k] + 5) % V
        y2 = m(src, t2)
        assert torch.equal(y2[:, :k], y[:, :k]), (dec, k)
        assert (y2[:, k] - y[:, k]).abs().max() > 1e-6


MECHS = ["bidirectional", "prefix-lm", "standard", "sliding-window", "linear", "castle"]


@pytest.mark.parametrize("enc", MECHS)
def test_source_padding_ids_change_nothing(enc: str) -> None:
    m = model(encoder_attention=enc, decoder_attention="sliding-window")
    lengths = [8, 5, 2]
    src = padded(random_sources(lengths, seed=4))
    pad = src == PAD
    tgt = torch.randint(3, V, (3, 6), generator=torch.Generator().manual_seed(5))
    memory = m.encode(src, pad)
    logits = m.decode(tgt, memory, pad)
    other = src.clone()
    other[pad] = torch.randint(3, V, (int(pad.sum()),), generator=torch.Generator().manual_seed(6))
    memory2 = m.encode(other, pad)
    for b, n in enumerate(lengths):
        assert (memory2[b, :n] - memory[b, :n]).abs().max() <= TOL
    assert (m.decode(tgt, memory2, pad) - logits).abs().max() <= TOL
    # memory at padded positions may be anything: the decoder must not read it
    garbage = memory.masked_fill(pad[..., None], 1e3)
    assert (m.decode(tgt, garbage, pad) - logits).abs().max() <= TOL


@pytest.mark.parametrize("enc", MECHS)
@pytest.mark.parametrize("dec", ["standard", "sliding-window", "castle", "linear"])
def test_per_example_equals_batched_with_padding(enc: str, dec: str) -> None:
    m = model(encoder_attention=enc, decoder_attention=dec)
    src_lists = random_sources([9, 4, 1, 6], seed=7)
    g = torch.Generator().manual_seed(8)
    tgt_lists = [[1] + torch.randint(3, V, (n,), generator=g).tolist() for n in (3, 7, 0, 5)]
    logits = m(padded(src_lists), padded(tgt_lists))  # (4, 8, V)
    for b, (s, t) in enumerate(zip(src_lists, tgt_lists)):
        one = m(torch.tensor([s]), torch.tensor([t]))  # (1, len(t), V)
        assert (logits[b, :len(t)] - one[0]).abs().max() < TOL, (enc, dec, b)


@pytest.mark.parametrize("score", CROSS_SCORES)
def test_every_cross_score_trains_and_decodes(score: str) -> None:
    m = model(cross_score=score)
    src = padded(random_sources([5, 3], seed=9))
    tgt = torch.randint(3, V, (2, 4), generator=torch.Generator().manual_seed(10))
    logits = m(src, tgt)
    assert logits.shape == (2, 4, V) and torch.isfinite(logits).all()
    logits.logsumexp(-1).sum().backward()
    cross = m.decoder.blocks[0].cross
    assert cross.score == score
    for name, p in cross.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, (score, name)
    # the cross score matters: another score on the same weights gives other logits
    other = model(cross_score="dot" if score != "dot" else "scaled_dot")
    assert (other(src, tgt) - logits).abs().max() > 1e-6


def test_fully_padded_source_gives_finite_logits() -> None:
    m = model()
    src = torch.tensor([[5, 6, EOS], [PAD, PAD, PAD]])
    logits = m(src, torch.tensor([[1, 4], [1, 4]]))
    assert torch.isfinite(logits).all()


def test_dropout_only_in_training() -> None:
    m = model(dropout=0.3)
    src, tgt = padded(random_sources([5, 3])), torch.tensor([[1, 4, 5], [1, 6, 7]])
    assert torch.equal(m(src, tgt), m(src, tgt))
    m.train()
    assert not torch.equal(m(src, tgt), m(src, tgt))


# ----------------------------------------------------------------------------------------------- bad input
def _bad_calls():
    m = model()
    src = padded(random_sources([4, 2]))
    tgt = torch.tensor([[1, 5], [1, 6]])
    mem = m.encode(src)
    pad = src == PAD
    return m, src, tgt, mem, pad


@pytest.mark.parametrize("call, match", [
    (lambda m, s, t, mem, pad: m.encode(torch.full((1, 17), 5)), r"src has length 17, more than max_source_len=16"),
    (lambda m, s, t, mem, pad: m(s, torch.full((2, 15), 5)), r"tgt_in has length 15, more than max_target_len=14"),
    (lambda m, s, t, mem, pad: m.encode(s.float()), r"src must have dtype torch.long \(int64\), got torch.float32"),
    (lambda m, s, t, mem, pad: m.encode(s[0]), r"src must have shape \(B, L\) with B, L >= 1, got \(4,\)"),
    (lambda m, s, t, mem, pad: m.encode([[1, 2]]), r"src must be a torch.Tensor of shape \(B, L\)"),
    (lambda m, s, t, mem, pad: m.encode(s + V), r"src values must be in \[0, vocab_size=37\)"),
    (lambda m, s, t, mem, pad: m(s, t.int()), r"tgt_in must have dtype torch.long"),
    (lambda m, s, t, mem, pad: m(s, t[:1]), r"src and tgt_in must have the same batch size, got 2 and 1"),
    (lambda m, s, t, mem, pad: m.encode(s, pad.long()), r"src_pad_mask must be a torch.bool tensor of shape "
                                                         r"\(B=2, S=4\), True at padding, got torch.int64 \(2, 4\)"),
    (lambda m, s, t, mem, pad: m.encode(s, pad[:, :3]), r"src_pad_mask must be a torch.bool tensor .* \(2, 3\)"),
    (lambda m, s, t, mem, pad: m.encode(s, pad.flip(1)), r"src_pad_mask must mark right padding .* rows \[1\]"),
    (lambda m, s, t, mem, pad: m.decode(t, mem.float(), pad), r"memory must have the model's dtype torch.float64"),
    (lambda m, s, t, mem, pad: m.decode(t, mem[:1], pad), r"memory must be the encoder output of shape "
                                                          r"\(B=2, S >= 1, d_model=24\), got \(1, 4, 24\)"),
    (lambda m, s, t, mem, pad: m.decode(t, None, pad), r"memory is None"),
    (lambda m, s, t, mem, pad: m.decode(t, mem, pad, caches=[]), r"caches must be an EncDecCache"),
    (lambda m, s, t, mem, pad: m.decode(t, mem.clone(), None, caches=m.new_caches(mem, pad)),
     r"memory must be None or the caches' own memory"),
    (lambda m, s, t, mem, pad: m.decode(t[:1], None, None, caches=m.new_caches(mem, pad)),
     r"tgt_in has B=1 rows but the caches hold 2"),
    (lambda m, s, t, mem, pad: m.new_caches(mem[0], pad), r"memory must be the encoder output of shape"),
    (lambda m, s, t, mem, pad: m.new_caches(torch.zeros(2, 17, 24, dtype=F64), None),
     r"memory has S=17 positions, more than max_source_len=16"),
])
def test_bad_input_is_refused_naming_the_argument(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(*_bad_calls())


def test_cached_decode_cannot_pass_max_target_len() -> None:
    m, src, _, mem, pad = _bad_calls()
    caches = m.new_caches(mem, pad)
    m.decode(torch.full((2, 13), 5), None, None, caches=caches)
    m.decode(torch.full((2, 1), 5), None, None, caches=caches)
    with pytest.raises(ValueError, match=r"tgt_in has cached 14 \+ new 1 = 15 positions, more than max_target_len=14"):
        m.decode(torch.full((2, 1), 5), None, None, caches=caches)
