"""The two-image digits task (future_mask.md E4): data, the patch VLM, the masks inside it, the task's metrics."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn", reason="scikit-learn is not installed (attnlab[digits], dev extra)")

from attnlab.data.digits import (  # noqa: E402
    QUESTION_KINDS,
    DigitQuestions,
    answers,
    draw_questions,
    layout,
    load_digit_images,
    vocabulary,
)
from attnlab.models.lm import LMConfig  # noqa: E402
from attnlab.models.vlm import PatchVLM, PatchVLMConfig  # noqa: E402
from attnlab.tasks.base import EvalContext  # noqa: E402
from attnlab.tasks.digits_vqa import DigitsDataConfig, DigitsOptions, DigitsVQA  # noqa: E402
from attnlab.train.config import ConfigError, TrainConfig  # noqa: E402

MASKS = ("c", "f", "v2v", "v2t")


@pytest.fixture(scope="module")
def images():
    return load_digit_images()


# ------------------------------------------------------------------------------------------------------- data
def test_splits_are_disjoint_fixed_and_cover_every_image(images) -> None:
    sizes = {k: len(v) for k, v in images.items()}
    assert sum(sizes.values()) == 1797 and sizes["train"] == 1078 and sizes["val"] == 359
    again = load_digit_images()
    for k in images:  # the split does not depend on anything but the fractions
        assert np.array_equal(images[k].labels, again[k].labels)
        assert np.array_equal(images[k].images, again[k].images)
    from sklearn.datasets import load_digits

    d = load_digits()  # the three splits together are every image once, with its own label
    whole = sorted((np.asarray(im, np.float32) / 16).tobytes() + bytes([lab]) for im, lab in zip(d.images, d.target))
    parts = sorted(im.tobytes() + bytes([int(lab)]) for v in images.values() for im, lab in zip(v.images, v.labels))
    assert parts == whole
    assert all(0.0 <= v.images.min() and v.images.max() <= 1.0 for v in images.values())


def test_answers_follow_the_labels() -> None:
    vocab = vocabulary()
    labels = np.array([3, 7, 3, 9])
    q = DigitQuestions(a=np.array([0, 0, 1, 0, 3, 1]), b=np.array([2, 1, 0, 0, 3, 3]),
                       kind=np.array([0, 0, 1, 1, 2, 2]))
    got = [vocab.tokens[i] for i in answers(labels, q, vocab)]
    assert got == ["yes", "no", "first", "equal", "18", "16"]


def test_questions_depend_on_the_rng_only_and_same_is_balanced(images) -> None:
    labels = images["train"].labels
    q1 = draw_questions(labels, 4000, np.random.default_rng(5))
    q2 = draw_questions(labels, 4000, np.random.default_rng(5))
    assert np.array_equal(q1.a, q2.a) and np.array_equal(q1.b, q2.b) and np.array_equal(q1.kind, q2.kind)
    same = q1.kind == QUESTION_KINDS.index("same")
    frac = float(np.mean(labels[q1.a[same]] == labels[q1.b[same]]))
    assert 0.5 < frac < 0.6  # half drawn as same-digit pairs, plus the ~10% of random pairs that match
    counts = np.bincount(q1.kind, minlength=3) / len(q1)
    assert np.all(np.abs(counts - 1 / 3) < 0.03)
    only_sum = draw_questions(labels, 50, np.random.default_rng(0), kinds=["sum"])
    assert set(only_sum.kind.tolist()) == {QUESTION_KINDS.index("sum")}


def test_layout_and_its_errors() -> None:
    v, p = layout(4)
    assert p == 4 and v.tolist() == [False] + [True] * 4 + [False] + [True] * 4 + [False]
    assert layout(2)[0].shape == (35,)
    with pytest.raises(ValueError, match="patch_size must divide"):
        layout(3)


# ------------------------------------------------------------------------------------------------------ model
def _model(patch: int = 4, layers: int = 2, d: int = 16) -> PatchVLM:
    torch.manual_seed(0)
    cfg = PatchVLMConfig(patch_size=patch, lm=LMConfig(n_layers=layers, d_model=d, n_heads=2, context_len=40))
    return cfg.build(vocab_size=vocabulary().size, is_visual=torch.from_numpy(layout(patch)[0])).double()


def _inputs(B: int = 3, patch: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    L = layout(patch)[0].shape[0]
    ids = torch.randint(0, vocabulary().size, (B, L), generator=g)
    return ids, torch.rand(B, 2, 8, 8, generator=g, dtype=torch.float64)


def test_patches_are_row_major_and_replace_the_visual_positions() -> None:
    m = _model(patch=4)
    ids, px = _inputs()
    e = m.embed(ids, px)
    v = m.is_visual
    assert torch.equal(e[:, ~v], m.lm.embed(ids)[:, ~v])  # text positions keep their token embeddings
    # image 2, patch 1 (row-major: rows 4-7? no: patch index 1 is the top-right 4x4 block)
    want = m.patch_emb(px[:, 1, 0:4, 4:8].reshape(3, 16)) + m.patch_pos[1]
    vis = torch.nonzero(v).flatten()
    assert torch.allclose(e[:, vis[4 + 1]], want, atol=1e-12)
    # the placeholder ids at visual positions do not matter
    ids2 = ids.clone()
    ids2[:, v] = 0
    assert torch.equal(m(ids, px), m(ids2, px))


def test_text_rows_never_change_in_one_layer_and_do_in_two() -> None:
    """Every mask keeps text rows causal, so in a 1-layer model the text rows' logits equal the causal ones under
    every mask (exactly, float64); with 2 layers the answer row reads visual rows that saw the future."""
    ids, px = _inputs()
    m1 = _model(layers=1)
    text = ~m1.is_visual
    ref = m1(ids, px, mask="c")
    for k in MASKS[1:]:
        assert torch.allclose(m1(ids, px, mask=k)[:, text], ref[:, text], atol=1e-12, rtol=0)
        assert not torch.allclose(m1(ids, px, mask=k)[:, m1.is_visual], ref[:, m1.is_visual])
    m2 = _model(layers=2)
    ref2 = m2(ids, px, mask="c")
    for k in MASKS[1:]:
        assert (m2(ids, px, mask=k)[:, -1] - ref2[:, -1]).abs().max() > 1e-6
    # under the causal mask, changing image 2 cannot change anything before it
    px2 = px.clone()
    px2[:, 1] = torch.rand(3, 8, 8, dtype=torch.float64)
    first_b = int(torch.nonzero(m2.is_visual).flatten()[4])
    assert torch.equal(m2(ids, px2, mask="c")[:, :first_b], ref2[:, :first_b])
    # under M^v2v image 1's rows see it, but the text before it (position 0) does not
    out = m2(ids, px2, mask="v2v")
    assert torch.allclose(out[:, 0], m2(ids, px, mask="v2v")[:, 0], atol=1e-12)
    assert not torch.allclose(out[:, 1], m2(ids, px, mask="v2v")[:, 1])


def test_model_errors_name_the_argument() -> None:
    m = _model()
    ids, px = _inputs()
    with pytest.raises(ValueError, match="mask must be one of"):
        m(ids, px, mask="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pixels must have shape"):
        m(ids, px[:, :1])
    with pytest.raises(ValueError, match="ids must have the layout's length"):
        m(ids[:, :5], px)
    with pytest.raises(ValueError, match="patch_size=3 must divide image_size=8"):
        PatchVLMConfig(patch_size=3)
    with pytest.raises(ValueError, match="visual positions"):
        PatchVLMConfig().build(vocab_size=29, is_visual=torch.zeros(11, dtype=torch.bool))
    with pytest.raises(ValueError, match="context_len"):
        PatchVLMConfig(patch_size=2, lm=LMConfig(n_layers=1, d_model=16, n_heads=2, context_len=16)).build(
            vocab_size=29, is_visual=torch.from_numpy(layout(2)[0]))


# ------------------------------------------------------------------------------------------------------- task
def _task(images, mask: str = "c", n_eval: int = 60) -> DigitsVQA:
    model = PatchVLMConfig(patch_size=4, lm=LMConfig(n_layers=2, d_model=16, n_heads=2, context_len=16))
    return DigitsVQA(model, DigitsDataConfig(eval_questions=n_eval), seed=3, options=DigitsOptions(train_mask=mask),
                     images=images)


def test_batches_are_a_function_of_seed_and_step(images) -> None:
    t = _task(images)
    assert t.global_batch(7, 16) == _task(images).global_batch(7, 16)
    assert t.global_batch(7, 16) != t.global_batch(8, 16)
    b = t.make_batch(t.global_batch(0, 8), torch.device("cpu"))
    assert b.n_targets == 8 and b.inputs["ids"].shape == (8, 11) and b.inputs["pixels"].shape == (8, 2, 8, 8)
    vocab = t.vocab
    assert (b.inputs["ids"][:, 0] == vocab.id("<bos>")).all() and (b.inputs["ids"][:, 5] == vocab.id("<and>")).all()
    kinds = [vocab.tokens[i] for i in b.inputs["ids"][:, -1].tolist()]
    assert kinds == [f"<{QUESTION_KINDS[k]}?>" for k in b.inputs["kind"].tolist()]


def test_evaluate_scores_every_mask_as_a_hand_count_does(images) -> None:
    t = _task(images, mask="v2v")
    torch.manual_seed(1)
    model = t.build_model()
    res = t.evaluate(model, "test", EvalContext(device=torch.device("cpu"), batch_size=25))
    x = t.tensors("test", t.questions("test"), torch.device("cpu"))
    with torch.no_grad():
        for k in MASKS:
            pred = model(x["ids"], x["pixels"], mask=k)[:, -1].argmax(-1)
            assert res.metrics[f"acc_{k}"] == pytest.approx(100 * float((pred == x["answer"]).double().mean()))
        logits = model(x["ids"], x["pixels"], mask="v2v")[:, -1].double()
        nll = torch.nn.functional.cross_entropy(logits, x["answer"])
    assert res.metrics["acc"] == res.metrics["acc_v2v"]
    assert res.loss == pytest.approx(float(nll), rel=1e-5)
    assert res.tokens == 60
    # the evaluation set is fixed: another seed's task asks the same questions
    other = DigitsVQA(t.model_cfg, t.data_cfg, seed=99, images=images)
    assert np.array_equal(other.questions("test").a, t.questions("test").a)


def test_training_under_a_mask_uses_it(images) -> None:
    t_c, t_f = _task(images, "c"), _task(images, "f")
    torch.manual_seed(2)
    model = t_c.build_model()
    b = t_c.make_batch(t_c.global_batch(0, 8), torch.device("cpu"))
    lc, lf = t_c.loss(model, b).main, t_f.loss(model, b).main
    assert lc.item() != lf.item()


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="train_mask must be one of"):
        DigitsOptions(train_mask="full")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kinds must be"):
        DigitsDataConfig(kinds=["same", "color"])
    with pytest.raises(ValueError, match="train_fraction=0.7 \\+ val_fraction=0.4"):
        DigitsDataConfig(train_fraction=0.7, val_fraction=0.4)
    with pytest.raises(ConfigError, match="context_len=8 is shorter than the task's layout of 11"):
        TrainConfig(task="digits-vqa", model=PatchVLMConfig(lm=LMConfig(n_layers=1, d_model=16, n_heads=2,
                                                                         context_len=8)))
    cfg = TrainConfig(task="digits-vqa")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(**{"options.train_mask": "v2t"}).options.train_mask == "v2t"


def test_a_short_causal_run_learns_and_its_checkpoint_evaluates_again(images, tmp_path) -> None:
    """30 steps of the quick preset learn the answer prior (above the 1/29 of a uniform guess), and the checkpoint
    is rebuilt from its own state and scores the same."""
    from attnlab.train.presets import digits_vqa_quick
    from attnlab.train.loading import load_trained
    from attnlab.train.trainer import Trainer

    cfg = replace(digits_vqa_quick(), seed=0)
    result = Trainer(cfg, out_dir=tmp_path / "run", data=images, log=lambda s: None).fit()
    assert result.test is not None and result.test.metrics["acc"] > 100 / 29
    trained = load_trained(tmp_path / "run", device="cpu")
    again = trained.task.evaluate(trained.model, "test", EvalContext(device=torch.device("cpu"), batch_size=64))
    assert again.metrics == pytest.approx(result.test.metrics)
