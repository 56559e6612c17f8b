"""LeaF and KD as objectives of the prompt-answer tasks (``stg``, ``arith-distractors``; spec causal_training.md
B.3, B.4, B.8, B.9): stage 1 over the training set (marks, spans, counterfactuals, detection figures, sample
filter), stage 2 (teacher and student read the same pruned rows, KD zero for identical models, the mixing
weights), checkpoint loading through the trainer and its errors, and the command line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from attnlab.cli import main
from attnlab.methods.leaf import leaf_kd_loss, token_kd_loss
from attnlab.models.common import IGNORE_INDEX
from attnlab.models.lm import LMConfig
from attnlab.tasks.arith import ArithDataConfig, ArithmeticDistractors
from attnlab.tasks.distill import LeafOptions, StudentOptions, TeacherOptions
from attnlab.tasks.prompt_answer import PromptAnswerOptions
from attnlab.tasks.stg import STGDataConfig, SpuriousTokenGame
from attnlab.train.config import ConfigError
from attnlab.train.loading import load_required_checkpoints, load_trained

CPU = torch.device("cpu")
MODEL = LMConfig(n_layers=1, d_model=16, n_heads=2, context_len=48)


def _train(out, *extra: str, preset: str = "stg-quick") -> str:
    assert main(["train", "--preset", preset, "--out", str(out), "--set", "tensorboard=false", *extra]) == 0
    return str(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny STG runs: a teacher on independent values, a student on the IID data, and an arithmetic run."""
    d = tmp_path_factory.mktemp("leaf")
    with torch.enable_grad():
        return {"teacher": _train(d / "teacher", "--set", "data.train_split=ood", "--set", "steps=40"),
                "student": _train(d / "student"),
                "arith": _train(d / "arith", preset="arith-distractors-quick"),
                "arith-teacher": _train(d / "arith-teacher", "--set", "data.train_split=clean+ood",
                                        preset="arith-distractors-quick")}


def _leaf_task(runs, arith: bool = False, **leaf) -> SpuriousTokenGame | ArithmeticDistractors:
    teacher, student = (runs["arith-teacher"], runs["arith"]) if arith else (runs["teacher"], runs["student"])
    opts = PromptAnswerOptions(objective="leaf", teacher=TeacherOptions(checkpoint=teacher),
                               student=StudentOptions(checkpoint=student), leaf=LeafOptions(**leaf))
    if arith:
        task = ArithmeticDistractors(replace(MODEL, context_len=40), ArithDataConfig(n_train=200, n_test=40), seed=0,
                                     options=opts)
    else:
        task = SpuriousTokenGame(MODEL, STGDataConfig(n_train=200, n_test=40), seed=0, options=opts)
    load_required_checkpoints(task)
    return task


def _marked_tokens(spans) -> set[int]:
    return {i for a, e in spans for i in range(a, e)}


@pytest.mark.parametrize("arith", [False, True], ids=["stg", "arith"])
def test_stage1_marks_spans_and_counterfactuals_over_the_training_set(runs, arith: bool) -> None:
    """(arith's sequences differ in length: each counterfactual is cut to its own row, without the batch padding)"""
    task = _leaf_task(runs, arith, p=0.3)
    data = task.leaf_data
    train = task.examples["train"]
    assert data is not None and len(data.counterfactuals) == len(data.spans) == len(train)
    n_marked = n_spur = n_hit = 0
    for ex, spans, cfs in zip(train, data.spans, data.counterfactuals):
        ids, targets = task.sequence(ex)
        a, e = task.scored_span(ex)
        marked = _marked_tokens(spans)
        assert marked <= set(range(a, e))  # scope (B8): only the statistics, never the answer or Answer:
        assert len(cfs) == len(spans)  # one counterfactual per span (B4), filter "all"
        for (s, t), (cf_ids, cf_targets) in zip(spans, cfs):
            assert cf_ids == ids[:s] + ids[t:]  # exactly that span removed, all else kept
            assert [x for x in cf_targets if x != IGNORE_INDEX] == [x for x in targets if x != IGNORE_INDEX]
        spur = _marked_tokens(ex.spurious)
        n_marked += len(marked)
        n_spur += len(spur)
        n_hit += len(marked & spur)
    # the detection figures, recounted here from the spans with plain sets
    assert data.stats["leaf_precision"] == pytest.approx(n_hit / n_marked)
    assert data.stats["leaf_recall"] == pytest.approx(n_hit / n_spur)
    assert data.stats["leaf_cf_per_sample"] == pytest.approx(sum(map(len, data.spans)) / len(train))


def test_random_span_control_prunes_as_much_blindly(runs) -> None:
    """leaf.spans="random": per sample, spans of the marked spans' lengths at seeded random scored places."""
    marked = _leaf_task(runs, p=0.3)
    rand = _leaf_task(runs, p=0.3, spans="random")
    again = _leaf_task(runs, p=0.3, spans="random")
    assert rand.leaf_data.spans == again.leaf_data.spans  # seeded
    assert rand.leaf_data.spans != marked.leaf_data.spans
    for ex, sm, sr, cfs in zip(marked.examples["train"], marked.leaf_data.spans, rand.leaf_data.spans,
                               rand.leaf_data.counterfactuals):
        assert [e - a for a, e in sm] == [e - a for a, e in sr]
        lo, hi = rand.scored_span(ex)
        assert all(lo <= a < e <= hi for a, e in sr)
        ids, _ = rand.sequence(ex)
        assert [c[0] for c in cfs] == [ids[:a] + ids[e:] for a, e in sr]
    assert rand.leaf_data.stats["leaf_cf_per_sample"] == marked.leaf_data.stats["leaf_cf_per_sample"]
    with pytest.raises(ValueError, match="leaf.spans must be one of"):
        LeafOptions(spans="all")


def test_teacher_equal_to_student_marks_nothing_and_kd_is_zero(runs) -> None:
    task = _leaf_task({**runs, "teacher": runs["student"]})
    assert task.leaf_data.stats["leaf_marked_share"] == 0.0  # B5: constant difference, no marks
    assert all(not c for c in task.leaf_data.counterfactuals)
    model = task.build_model()  # starts from the student (options.student.init)
    batch = task.make_batch(task.global_batch(0, 16), CPU)
    loss = task.loss(model, batch)
    assert "cf_idx" not in batch.inputs and float(loss.main) == pytest.approx(0.0, abs=1e-6)  # B6
    assert float(loss.aux["kd_cf"]) == 0.0


def test_teacher_and_student_read_the_same_pruned_rows(runs) -> None:
    """Oracle B7: the counterfactual term feeds one padded batch of pruned rows to both models."""
    task = _leaf_task(runs, p=0.3)
    model = task.build_model()
    rows = task.global_batch(0, 16)
    batch = task.make_batch(rows, CPU)
    want = [cf for i in rows for cf in task.leaf_data.counterfactuals[int(i)]]
    assert want and batch.inputs["cf_idx"].shape[0] == len(want)
    for b, (ids, _) in enumerate(want):
        assert batch.inputs["cf_idx"][b, : len(ids)].tolist() == ids
    seen: dict[str, list[torch.Tensor]] = {"teacher": [], "student": []}
    hooks = [m.register_forward_hook(lambda mod, args, out, k=k: seen[k].append(args[0].clone()))
             for k, m in (("teacher", task.teacher), ("student", model))]
    try:
        loss = task.loss(model, batch)
    finally:
        for h in hooks:
            h.remove()
    assert len(seen["teacher"]) == len(seen["student"]) == 2
    assert torch.equal(seen["teacher"][0], batch.inputs["idx"]) and torch.equal(seen["student"][0], batch.inputs["idx"])
    assert torch.equal(seen["teacher"][1], batch.inputs["cf_idx"]) and torch.equal(seen["student"][1], batch.inputs["cf_idx"])
    # the weighted loss is KD(original) + lam KD(counterfactual), term by term
    with torch.no_grad():
        orig = (task.teacher(batch.inputs["idx"]), model(batch.inputs["idx"]), batch.inputs["targets"])
        cf = (task.teacher(batch.inputs["cf_idx"]), model(batch.inputs["cf_idx"]), batch.inputs["cf_targets"])
    assert float(loss.main) == pytest.approx(float(token_kd_loss(*orig, ignore_index=IGNORE_INDEX)), rel=1e-5)
    assert float(loss.total) == pytest.approx(float(leaf_kd_loss(orig, cf, lam=1.0, ignore_index=IGNORE_INDEX)),
                                              rel=1e-5)
    assert float(loss.aux["kd_cf"]) > 0
    task.options.leaf = LeafOptions(p=0.3, mix="mixed_rows")
    mixed = task.loss(model, batch)
    assert float(mixed.total) == pytest.approx(
        float(leaf_kd_loss(orig, cf, mix="mixed_rows", ignore_index=IGNORE_INDEX)), rel=1e-5)


class _Rigged(torch.nn.Module):
    """An LM whose greedy answer is right exactly on the rows ``right(row ids)`` says (a huge logit on the next
    token), so that the sample filters can be checked against a known truth; saliency goes through the LM."""

    def __init__(self, lm: torch.nn.Module, right) -> None:
        super().__init__()
        self.lm, self.right, self.config = lm, right, lm.config

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm.embed(idx)

    def forward(self, idx=None, inputs_embeds=None):
        if idx is None:
            return self.lm(inputs_embeds=inputs_embeds)
        logits = self.lm(idx)
        boost = torch.zeros_like(logits)
        for b in range(idx.shape[0]):
            if self.right(idx[b].tolist()):
                boost[b, :-1].scatter_(-1, idx[b, 1:, None], 1e4)
        return logits + boost


def test_sample_filters_keep_exactly_the_chosen_samples() -> None:
    from attnlab.tasks.distill import detect_training_confounders

    task = SpuriousTokenGame(MODEL, STGDataConfig(n_train=48, n_test=8), seed=0)
    torch.manual_seed(0)
    lm_t, lm_s = task.build_model().eval(), task.build_model().eval()
    first = 11  # the first statistic's name (after the request sentence)
    names = {task.ids[n] for n in ("Smoking", "Weight", "Exercise", "Hormones")}
    teacher = _Rigged(lm_t, lambda ids: True)
    pad = task.ids["<pad>"]
    # right iff the first name is one of these, or two or more tokens were pruned (the rows are 45 tokens)
    student = _Rigged(lm_s, lambda ids: ids[first] in names or sum(i != pad for i in ids) <= 43)

    def tensors(exs):
        x = task.tensors(exs, CPU)
        score = torch.zeros_like(x["idx"], dtype=torch.bool)
        for b, ex in enumerate(exs):
            a, e = task.scored_span(ex)
            score[b, a:e] = True
        return x["idx"], x["targets"], score

    train = task.examples["train"]
    out = {f: detect_training_confounders(teacher, student, train, tensors, LeafOptions(p=0.3, sample_filter=f),
                                          pad_id=task.ids["<pad>"], ignore_index=IGNORE_INDEX)
           for f in ("all", "teacher_right_student_wrong", "pruning_fixes_student")}
    assert out["all"].spans == out["teacher_right_student_wrong"].spans == out["pruning_fixes_student"].spans
    wrong = [task.ids[ex.tokens[first]] not in names for ex in train]
    assert 0 < sum(wrong) < len(train)
    for b, cfs in enumerate(out["teacher_right_student_wrong"].counterfactuals):
        assert cfs == (out["all"].counterfactuals[b] if wrong[b] else [])
    for b, cfs in enumerate(out["pruning_fixes_student"].counterfactuals):
        fixed = [cf for cf in out["all"].counterfactuals[b] if cf[0][first] in names or len(cf[0]) <= 43]
        assert cfs == (fixed if wrong[b] else [])
    kept = sum(map(len, out["pruning_fixes_student"].counterfactuals))
    assert 0 < kept < sum(len(c) for c, w in zip(out["all"].counterfactuals, wrong) if w)  # some cfs fix, some not


def test_stage1_keeps_the_teachers_device_dtype_and_the_random_state(runs) -> None:
    task = _leaf_task(runs, p=0.3)
    marks = task.leaf_data.spans
    task.teacher.double()
    task.leaf_data = None
    task._student = load_trained(runs["student"], device="cpu").model
    before = torch.get_rng_state()
    task._leaf()
    assert next(task.teacher.parameters()).dtype == torch.float64
    assert torch.equal(torch.get_rng_state(), before)
    assert task.leaf_data.spans == marks  # the same marks again (what a resume recomputes)


def test_resume_refuses_other_teacher_weights_behind_the_same_path(runs, tmp_path, capsys) -> None:
    import shutil

    teacher = tmp_path / "teacher"
    shutil.copytree(runs["teacher"], teacher)
    out = tmp_path / "leaf"
    args = ["--set", "options.objective=leaf", "--set", f"options.teacher.checkpoint={teacher}",
            "--set", f"options.student.checkpoint={runs['student']}", "--set", "options.leaf.p=0.3"]
    with torch.enable_grad():
        _train(out, *args, "--set", "steps=10")
        ckpt = next(teacher.glob("ckpt-*"))
        other = next(Path(runs["student"]).glob("ckpt-*")) / "model.safetensors"
        shutil.copyfile(other, ckpt / "model.safetensors")  # the teacher run was replaced
        assert main(["train", "--preset", "stg-quick", "--out", str(out), "--set", "tensorboard=false", *args,
                     "--set", "steps=20", "--resume"]) == 2
    assert "options.teacher.checkpoint: checkpoint" in capsys.readouterr().err

def test_kd_objective_and_student_initialisation(runs) -> None:
    opts = PromptAnswerOptions(objective="kd", teacher=TeacherOptions(checkpoint=runs["teacher"]),
                               student=StudentOptions(checkpoint=runs["student"]))
    task = SpuriousTokenGame(MODEL, STGDataConfig(n_train=200, n_test=40), seed=0, options=opts)
    load_required_checkpoints(task)
    assert task.leaf_data is None
    model = task.build_model()
    student = load_trained(runs["student"], device="cpu").model
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), student.state_dict().values()))
    batch = task.make_batch(task.global_batch(0, 8), CPU)
    loss = task.loss(model, batch)
    assert not loss.aux and float(loss.main) > 0 and "cf_idx" not in batch.inputs
    fresh = SpuriousTokenGame(MODEL, STGDataConfig(n_train=200, n_test=40), seed=0,
                              options=replace(opts, student=StudentOptions(checkpoint=runs["student"], init=False)))
    load_required_checkpoints(fresh)
    assert not all(torch.equal(a, b) for a, b in zip(fresh.build_model().state_dict().values(),
                                                     student.state_dict().values()))


def test_seed_placeholder_in_checkpoint_paths(runs, tmp_path) -> None:
    opts = PromptAnswerOptions(objective="kd", teacher=TeacherOptions(checkpoint="runs/t/seed{seed}"))
    task = SpuriousTokenGame(MODEL, STGDataConfig(), seed=3, options=opts)
    assert task.required_checkpoints() == {"teacher": "runs/t/seed3"}


def test_bad_teachers_and_options_are_refused(runs, tmp_path) -> None:
    def task(**kw) -> SpuriousTokenGame:
        return SpuriousTokenGame(kw.pop("model", MODEL), STGDataConfig(n_train=50, n_test=10), seed=0,
                                 options=PromptAnswerOptions(**kw))

    with pytest.raises(ConfigError,
                       match="the teacher checkpoint '.*' cannot be loaded: checkpoint path .* does not exist"):
        load_required_checkpoints(task(objective="kd", teacher=TeacherOptions(checkpoint=str(tmp_path / "missing"))))
    with pytest.raises(ConfigError, match="options.teacher.checkpoint=.*arith-distractors.*its own vocabulary"):
        load_required_checkpoints(task(objective="kd", teacher=TeacherOptions(checkpoint=runs["arith"])))
    wide = task(objective="kd", teacher=TeacherOptions(checkpoint=runs["teacher"]),
                student=StudentOptions(checkpoint=runs["student"]), model=replace(MODEL, d_model=32))
    load_required_checkpoints(wide)
    with pytest.raises(ValueError, match="options.student.checkpoint holds another model"):
        wide.build_model()
    with pytest.raises(ValueError, match="needs a teacher: set options.teacher.checkpoint"):
        PromptAnswerOptions(objective="kd")
    with pytest.raises(ValueError, match="needs the detection student .* options.student.checkpoint"):
        PromptAnswerOptions(objective="leaf", teacher=TeacherOptions(checkpoint="t"))
    for bad, match in (({"p": 1.0}, "leaf.p"), ({"cap": 1.5}, "leaf.cap"), ({"lam": -1.0}, "leaf.lam"),
                       ({"temperature": 0.0}, "leaf.temperature"), ({"mix": "sum"}, "leaf.mix"),
                       ({"sample_filter": "some"}, "leaf.sample_filter")):
        with pytest.raises(ValueError, match=match):
            LeafOptions(**bad)
    with pytest.raises(ValueError, match="teacher.checkpoint must be a checkpoint path"):
        TeacherOptions(checkpoint="")


def test_leaf_run_from_the_command_line(runs, tmp_path) -> None:
    out = tmp_path / "leaf"
    with torch.enable_grad():
        _train(out, "--set", "options.objective=leaf", "--set", f"options.teacher.checkpoint={runs['teacher']}",
               "--set", f"options.student.checkpoint={runs['student']}", "--set", "options.leaf.p=0.3")
    result = json.loads((out / "result.json").read_text())
    m = result["test"]["metrics"]
    assert {"acc_iid", "acc_ood", "acc_flipped", "leaf_precision", "leaf_recall", "leaf_stage1_s"} <= set(m)
    rec = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("loss.kd_cf" in r for r in rec if r["kind"] == "train")
    # the trained student evaluates from its checkpoint alone (no teacher needed)
    trained = load_trained(out, device="cpu")
    assert trained.task.options.objective == "leaf" and trained.task.teacher is None
    assert main(["eval", "--checkpoint", str(out)]) == 0


def test_arith_task_on_the_same_objectives(runs) -> None:
    task = ArithmeticDistractors(replace(MODEL, context_len=40), ArithDataConfig(n_train=64, n_test=16), seed=0)
    longest = max(len(ex.tokens) + len(ex.answer) for s in task.examples.values() for ex in s)
    assert longest <= ArithmeticDistractors.min_context
    ex = task.examples["train"][0]
    ids, targets = task.sequence(ex)
    assert [task.vocab[t] for t in targets if t != IGNORE_INDEX] == list(ex.answer)
    assert task.scored_span(ex) == (0, len(ex.tokens) - 1)
    with pytest.raises(ValueError, match="model.context_len=30 is shorter than a arith-distractors sequence"):
        ArithmeticDistractors.check_config(replace(MODEL, context_len=30), ArithDataConfig(), None)
    teacher = ArithmeticDistractors(MODEL, ArithDataConfig(n_train=64, n_test=16, train_split="clean+ood"), seed=0)
    kinds = [bool(e.spurious) for e in teacher.examples["train"]]
    assert kinds.count(False) == 32 and kinds.count(True) == 32
