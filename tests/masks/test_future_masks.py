"""Future-aware vision-language masks (spec future_mask.md §2-§3, invariants I1-I5, I11-I12 at mask level).

Oracles: the worked example of spec §2.3 (row sets and extra-pair counts 10 / 13 / 23), the set algebra of §2.2,
closed-form rows (I3) computed by explicit loops over random layouts (0-3 images, interleaved text, left and right
padding), and agreement of the dense, SDPA and FlexAttention backends (float64, FlexAttention forward on CPU).
"""

from __future__ import annotations

import pytest
import torch

from attnlab import masks as M
from attnlab.masks.vlm import FUTURE_KINDS
from attnlab.ops.softmax import softmax_attention
from attnlab.ops.softmax.args import SoftmaxArgs
from attnlab.ops.softmax.flex import flex_softmax_attention

WORKED = "TT VVV T VV TT"  # spec §2.3: BOS, system, image A (2-4), "and" (5), image B (6, 7), question (8, 9)


def rows(mask: M.Mask, L: int, B: int = 1) -> torch.Tensor:
    return M.dense(mask, L, L, batch_size=B)[:, 0]  # (B, L, L)


def random_layout(g: torch.Generator, L: int, B: int, *, pad: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """``(is_visual, keep)`` ``(B, L)``: 0-3 images of random sizes between text runs, padded left or right."""
    vis = torch.zeros(B, L, dtype=torch.bool)
    keep = torch.ones(B, L, dtype=torch.bool)
    for b in range(B):
        n_pad = int(torch.randint(0, L // 3 + 1, (1,), generator=g)) if pad != "none" else 0
        n = L - n_pad
        body = torch.zeros(n, dtype=torch.bool)
        for _ in range(int(torch.randint(0, 4, (1,), generator=g))):
            start = int(torch.randint(0, n, (1,), generator=g))
            size = int(torch.randint(1, max(2, n // 3), (1,), generator=g))
            body[start:start + size] = True
        sl = slice(n_pad, L) if pad == "left" else slice(0, n)
        vis[b, sl] = body
        keep[b, :] = False
        keep[b, sl] = True
    return vis, keep


def expected(kind: str, vis: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Spec §2.1 + §1.4 by explicit loops: ``(B, L, L)``."""
    B, L = vis.shape
    out = torch.zeros(B, L, L, dtype=torch.bool)
    for b in range(B):
        for i in range(L):
            for j in range(L):
                qv, kv = bool(vis[b, i]), bool(vis[b, j])
                extra = {"c": False, "f": qv, "v2v": qv and kv, "v2t": qv and not kv}[kind]
                out[b, i, j] = ((j <= i or extra) and bool(keep[b, j])) or j == i
    return out


# ------------------------------------------------------------------------------------------------- worked example
def test_worked_example_rows_match_spec_table() -> None:
    vis = M.token_types(WORKED)
    assert vis.tolist() == [False, False, True, True, True, False, True, True, False, False]
    d = {k: rows(M.future_mask(k, vis), 10)[0] for k in FUTURE_KINDS}
    see = lambda k, i: set(torch.nonzero(d[k][i]).flatten().tolist())  # noqa: E731
    r = lambda a, b: set(range(a, b + 1))  # noqa: E731
    table = {  # row: (M^c, M^v2v, M^v2t, M^f) from spec §2.3
        2: ({0, 1, 2}, {0, 1, 2, 3, 4, 6, 7}, {0, 1, 2, 5, 8, 9}, r(0, 9)),
        4: (r(0, 4), r(0, 4) | {6, 7}, r(0, 5) | {8, 9}, r(0, 9)),
        6: (r(0, 6), r(0, 7), r(0, 6) | {8, 9}, r(0, 9)),
        7: (r(0, 7), r(0, 7), r(0, 9), r(0, 9)),
        5: (r(0, 5),) * 4,
        8: (r(0, 8),) * 4,
    }
    for i, want in table.items():
        assert [see(k, i) for k in ("c", "v2v", "v2t", "f")] == list(want), f"row {i}"
    counts = {k: int(M.extra_pairs(k, vis)) for k in FUTURE_KINDS}
    assert counts == {"c": 0, "v2v": 10, "v2t": 13, "f": 23}


def test_named_constructors_are_the_kinds() -> None:
    vis = M.token_types(WORKED)
    for ctor, kind in ((M.vlm_causal, "c"), (M.future_full, "f"), (M.future_v2v, "v2v"), (M.future_v2t, "v2t")):
        m = ctor(vis)
        assert torch.equal(rows(m, 10), rows(M.future_mask(kind, vis), 10))
        assert m.name.startswith(ctor.__name__ + "(L=10, n_visual=5")
        assert m.causal == (kind == "c") and not m.plain_causal and m.key_valid is None


# ------------------------------------------------------------------------------------------ I1-I3, I5, I11, I12
@pytest.mark.parametrize("pad", ["none", "left", "right"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_layouts_match_the_table_and_the_algebra(pad: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    B, L = 3, 13
    vis, keep = random_layout(g, L, B, pad=pad)
    d = {k: rows(M.future_mask(k, vis, keep=keep), L, B) for k in FUTURE_KINDS}
    for k in FUTURE_KINDS:  # the table of §2.1 with the padding rule of §1.4 (I3 in closed form)
        assert torch.equal(d[k], expected(k, vis, keep)), k
    c, f, vv, vt = d["c"], d["f"], d["v2v"], d["v2t"]
    # I1: M^c ⊆ M^v2v, M^v2t ⊆ M^f; union and intersection
    assert not (c & ~vv).any() and not (c & ~vt).any() and not (vv & ~f).any() and not (vt & ~f).any()
    assert torch.equal(vv | vt, f) and torch.equal(vv & vt, c)
    # I2: text rows equal causal rows in every mask
    text = ~vis[:, :, None]  # (B, L, 1)
    for k in ("f", "v2v", "v2t"):
        assert torch.equal(d[k] & text, c & text)
    # I11: pad keys visible only to themselves; I12: no empty row
    eye = torch.eye(L, dtype=torch.bool)
    for k in FUTURE_KINDS:
        assert not (d[k] & ~keep[:, None, :] & ~eye).any()
        assert d[k].any(-1).all()
    # extra-pair counts, closed form of §2.2 per sample
    upper = torch.ones(L, L, dtype=torch.bool).triu(1)
    vv_want = (vis[:, :, None] & vis[:, None, :] & keep[:, None, :] & upper).sum((1, 2))
    vt_want = (vis[:, :, None] & ~vis[:, None, :] & keep[:, None, :] & upper).sum((1, 2))
    assert torch.equal(M.extra_pairs("v2v", vis, keep=keep), vv_want)
    assert torch.equal(M.extra_pairs("v2t", vis, keep=keep), vt_want)
    assert torch.equal(M.extra_pairs("f", vis, keep=keep), vv_want + vt_want)


def test_no_visual_tokens_is_exactly_causal() -> None:
    """I4 at mask level: with V empty every kind is the causal mask (and says so)."""
    vis = torch.zeros(2, 9, dtype=torch.bool)
    for k in FUTURE_KINDS:
        m = M.future_mask(k, vis)
        assert m.causal
        assert torch.equal(rows(m, 9, 2), rows(M.causal(), 9).expand(2, 9, 9))


def test_degenerate_layouts() -> None:
    """I5: no text after the images: M^v2t == M^c; the last visual token's M^v2v row is causal; one image then
    text: M^f == M^v2t ∪ (within-image future)."""
    vis = M.token_types("TT VVVV")
    assert torch.equal(rows(M.future_v2t(vis), 6), rows(M.vlm_causal(vis), 6))
    vis = M.token_types("T VVV TT VV T")
    last = int(torch.nonzero(vis).max())
    assert torch.equal(rows(M.future_v2v(vis), 9)[0, last], rows(M.vlm_causal(vis), 9)[0, last])
    vis = M.token_types("TT VVVV TTT")
    L = vis.numel()
    within = vis[:, None] & vis[None, :]  # one image: every V pair is inside it
    assert torch.equal(rows(M.future_full(vis), L)[0], rows(M.future_v2t(vis), L)[0] | within)


def test_shared_types_with_batched_padding() -> None:
    vis = M.token_types("TVVT")  # (L,) shared by the batch
    keep = torch.tensor([[True] * 4, [False, True, True, True]])
    m = M.future_full(vis, keep=keep)
    assert m.per_batch and m.name == "future_full(B=2, L=4, n_visual=2, n_pad=1, semantics=P)"
    assert torch.equal(rows(m, 4, 2), expected("f", vis.expand(2, 4), keep))


# ------------------------------------------------------------------------------------------------ semantics P, R
def test_semantics_p_stops_future_edges_at_the_prompt_and_r_does_not() -> None:
    vis = M.token_types("T VV T")  # prompt of 4; positions 4.. are generated text
    total = 7
    P = rows(M.future_full(vis), total)[0]
    R = rows(M.future_full(vis, semantics="R"), total)[0]
    causal = rows(M.causal(), total)[0]
    assert P[1].tolist() == [True] * 4 + [False] * 3  # the first image token sees the prompt only
    assert R[1].all()  # ... and under R every generated token too
    assert torch.equal(P[4:], causal[4:]) and torch.equal(R[4:], causal[4:])  # generated rows are text rows
    # the full-sequence rule of §3: allowed_P = allowed_R and (j <= i or j < L_prompt)
    j = torch.arange(total)
    assert torch.equal(P, R & ((j[None] <= j[:, None]) | (j[None] < 4)))
    # an explicit prompt length (types that also cover generated tokens)
    vis_all = torch.cat([vis, torch.zeros(3, dtype=torch.bool)])
    assert torch.equal(rows(M.future_full(vis_all, prompt_len=4), total)[0], P)
    # M^v2v: R and P coincide (later visual keys all lie in the prompt)
    assert torch.equal(rows(M.future_v2v(vis), total), rows(M.future_v2v(vis, semantics="R"), total))
    # generated keys beyond keep are valid
    keep = torch.tensor([False, True, True, True])
    assert rows(M.future_full(vis, keep=keep, semantics="R"), total)[0, 1].tolist() == [False] + [True] * 6


# -------------------------------------------------------------------------------------------------------- backends
@pytest.mark.parametrize("kind", FUTURE_KINDS)
def test_dense_sdpa_flex_agree_float64(kind: str) -> None:
    g = torch.Generator().manual_seed(7)
    B, H, L, D = 3, 2, 21, 12
    vis, keep = random_layout(g, L, B, pad="left")
    vis[0, 3:9] = True  # at least one image
    m = M.future_mask(kind, vis, keep=keep)
    q, k, v = (torch.randn(B, H, L, D, dtype=torch.float64, generator=g) for _ in range(3))
    ref = softmax_attention(q, k, v, mask=m, impl="reference")
    # the reference is the dense definition: softmax over the allowed keys
    allowed = M.dense(m, L, L, batch_size=B)  # (B, 1, L, L)
    s = (q @ k.transpose(-1, -2) / D**0.5).masked_fill(~allowed, float("-inf"))
    torch.testing.assert_close(ref, torch.softmax(s, -1) @ v, atol=1e-12, rtol=1e-12)
    sdpa = softmax_attention(q, k, v, mask=m, impl="sdpa")
    torch.testing.assert_close(sdpa, ref, atol=1e-10, rtol=1e-10)
    args = SoftmaxArgs(mask=m, scale=D**-0.5, score="scaled_dot", q_offset=0)
    flex = flex_softmax_attention(q, k, v, args, flex_block=4)  # small blocks: some are skipped
    torch.testing.assert_close(flex, ref, atol=1e-10, rtol=1e-10)
    assert torch.isfinite(ref).all()


def test_flex_block_mask_skips_the_empty_blocks() -> None:
    from attnlab.ops.softmax.flex import block_mask_for

    vis = M.token_types("TTTT VVVVVVVV TTTT TTTT")  # 20 positions, 4x4 blocks
    L, bs = 20, 4
    for kind in ("c", "v2v", "v2t", "f"):
        m = M.future_mask(kind, vis)
        bm = block_mask_for(m, batch_size=1, n_heads=1, q_len=L, kv_len=L, flex_block=bs)
        want = M.dense(m, L, L).view(L // bs, bs, L // bs, bs).any(dim=(1, 3))  # (5, 5)
        assert torch.equal(bm.to_dense()[0, 0].to(torch.bool), want)
        assert not want.all()  # text rows above the diagonal are skipped in every kind


def test_decoding_with_shifted_queries_uses_absolute_positions() -> None:
    """A one-token step at position t evaluates the mask at q_idx = t (the same rows as the full matrix)."""
    vis = M.token_types("T VVV T")
    m = M.future_full(vis, semantics="R")
    full = M.dense(m, 8, 8)
    for t in range(8):
        assert torch.equal(M.dense(m, 1, 8, q_offset=t)[0], full[t])


# ---------------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(("bad", "msg"), [
    (torch.zeros(2, 5, dtype=torch.long), r"is_visual must be a torch.bool tensor of shape \(B, L\) or \(L,\) "
                                          r"with B, L >= 1, got torch.int64 \(2, 5\)"),
    (torch.zeros(1, 2, 5, dtype=torch.bool), r"is_visual must be .* got torch.bool \(1, 2, 5\)"),
    (torch.zeros(0, dtype=torch.bool), r"is_visual must be .* got torch.bool \(0,\)"),
    ([True, False], r"is_visual must be a torch.bool tensor of shape \(B, L\) or \(L,\), got list"),
])
def test_bad_is_visual_is_refused_by_name(bad, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        M.future_full(bad)
    with pytest.raises(ValueError, match=msg):
        M.check_is_visual(bad)


def test_other_bad_arguments() -> None:
    vis = torch.zeros(2, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"keep must have length L=5 in its last dim, got shape \(2, 4\)"):
        M.future_full(vis, keep=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"keep must have batch size B=2 \(or shape \(L,\)\), got shape \(3, 5\)"):
        M.future_full(vis, keep=torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"keep must be a torch.bool tensor"):
        M.future_full(vis, keep=torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"kind must be one of \('c', 'f', 'v2v', 'v2t'\), got 'full'"):
        M.future_mask("full", vis)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"semantics must be one of \('P', 'R'\), got 'p'"):
        M.future_full(vis, semantics="p")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prompt_len is only used with semantics='P'"):
        M.future_full(vis, semantics="R", prompt_len=3)
    with pytest.raises(ValueError, match="prompt_len must be an int >= 0, got -1"):
        M.future_full(vis, prompt_len=-1)
    with pytest.raises(ValueError, match=r"is_visual must have batch size B=3"):
        M.check_is_visual(vis, batch_size=3)
    with pytest.raises(ValueError, match=r"layout must hold at least one 'V' or 'T'"):
        M.token_types("TVX")


# --------------------------------------------------------------------------------------------------------- gallery
def test_gallery_renders_each_kind_on_a_two_image_layout(tmp_path) -> None:
    from attnlab.masks.render import example_masks, example_vlm_layout, render

    layout = example_vlm_layout(32)
    assert layout == "TTTT" + "V" * 8 + "TT" + "V" * 8 + "T" * 10  # prefix, image A, text, image B, question
    assert example_vlm_layout(4) == "TVTV"
    names = [m.name for m in example_masks(32)][-4:]
    assert names == [f"{n}(L=32, n_visual=16{'' if n == 'vlm_causal' else ', semantics=P'})"
                     for n in ("vlm_causal", "future_full", "future_v2v", "future_v2t")]
    p = render(example_masks(32)[-1], 32, 32, tmp_path / "v2t.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
