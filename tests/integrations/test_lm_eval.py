"""The lm-evaluation-harness adapter (``--model attnlab``): a local multiple-choice task (YAML written here, JSONL
bundled beside this file: 24 lines of Tiny Shakespeare, public domain) scored through lm-eval equals the accuracy
computed directly from the model; rolling log-likelihoods, generation, ``attnlab eval --harness``, lm-eval's CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (attnlab[eval], dev extra)")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from attnlab.cli import main  # noqa: E402
from attnlab.integrations.lm_eval import AttnlabEvalLM  # noqa: E402
from attnlab.models.lm import generate  # noqa: E402
from attnlab.train.loading import load_trained  # noqa: E402

HERE = Path(__file__).parent / "lm_eval_task"
YAML = """task: attnlab_tiny
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
target_delimiter: " "
metric_list:
  - metric: acc
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hf_tiny import train_tiny_char_lm

    return train_tiny_char_lm(tmp_path_factory.mktemp("lmeval"), steps=20, batch_size=8)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tasks")
    (d / "attnlab_tiny.yaml").write_text(YAML.format(data=HERE / "attnlab_tiny.jsonl"))
    return d


def _direct_logprob(model, tok, context: str, continuation: str) -> float:
    """log p(continuation | context), token by token, straight from the model (no adapter code)."""
    ids = tok.encode(context + continuation)
    n = len(tok.encode(continuation))
    L = model.config.context_len
    total = 0.0
    for j in range(len(ids) - n, len(ids)):
        inp = torch.tensor([ids[max(0, j - L) : j]])
        total += float(F.log_softmax(model(inp)[0, -1].double(), -1)[ids[j]])
    return total


def test_multiple_choice_accuracy_equals_a_direct_computation(run: Path, task_dir: Path) -> None:
    res = lm_eval.simple_evaluate(model="attnlab", model_args={"checkpoint": str(run)}, tasks=["attnlab_tiny"],
                                  task_manager=TaskManager(include_path=str(task_dir)), batch_size=5,
                                  log_samples=False)
    acc = res["results"]["attnlab_tiny"]["acc,none"]
    t = load_trained(run, device="cpu")
    docs = [json.loads(line) for line in (HERE / "attnlab_tiny.jsonl").read_text().splitlines()]
    hits = []
    for d in docs:
        scores = [_direct_logprob(t.model, t.task.tokenizer, d["context"], " " + c) for c in d["choices"]]
        hits.append(max(range(len(scores)), key=scores.__getitem__) == d["gold"])
    assert len(hits) == 24 and acc == pytest.approx(sum(hits) / len(hits))


def _req(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def test_loglikelihood_rolling_and_generation(run: Path) -> None:
    lm = AttnlabEvalLM(checkpoint=str(run), batch_size=3)
    t = load_trained(run, device="cpu")
    text = "First Citizen:\nBefore we proceed any further, hear me speak."  # 60 characters: 4 windows of 16
    (got,) = lm.loglikelihood_rolling([_req("loglikelihood_rolling", text)])
    # the same windows as (context, continuation) pairs: tokens 1-16 | 17-32 | 33-48 | 49-59
    pairs = [(text[0:1], text[1:17]), (text[16:17], text[17:33]), (text[32:33], text[33:49]),
             (text[43:49], text[49:])]
    want = sum(_direct_logprob(t.model, t.task.tokenizer, c, x) for c, x in pairs)
    assert got == pytest.approx(want, abs=1e-6)
    short = "hear me speak."
    (g2,) = lm.loglikelihood_rolling([_req("loglikelihood_rolling", short)])
    assert g2 == pytest.approx(_direct_logprob(t.model, t.task.tokenizer, short[:1], short[1:]), abs=1e-6)
    scores = lm.loglikelihood([_req("loglikelihood", "Before we", " proceed"), _req("loglikelihood", "hear", " me")])
    assert scores[0][0] == pytest.approx(_direct_logprob(t.model, t.task.tokenizer, "Before we", " proceed"), abs=1e-6)
    (out,) = lm.generate_until([_req("generate_until", "First", {"until": ["\n"], "max_gen_toks": 8})])
    ids = t.task.tokenizer.encode("First")
    full = t.task.tokenizer.decode(generate(t.model, ids, 8, temperature=0.0)[len(ids):].tolist())
    assert out == full.split("\n")[0]
    with pytest.raises(ValueError, match="unknown model_args for attnlab: pretrained"):
        AttnlabEvalLM(checkpoint=str(run), pretrained="gpt2")
    with pytest.raises(ValueError, match="cannot encode"):
        lm.loglikelihood([_req("loglikelihood", "Before", " \u2603")])


def test_eval_harness_command_and_lm_eval_cli(run: Path, task_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--checkpoint", str(run), "--harness", "attnlab_tiny", "--harness-include",
                 str(task_dir), "--json"]) == 0
    acc = json.loads(capsys.readouterr().out)["attnlab_tiny"]["acc,none"]
    assert 0.0 <= acc <= 1.0
    assert main(["eval", "--checkpoint", str(run), "--harness-limit", "3"]) == 2
    assert "go with --harness" in capsys.readouterr().err
    from attnlab.integrations.lm_eval import main as lm_eval_main

    assert lm_eval_main(["run", "--model", "attnlab", "--model_args", f"checkpoint={run}", "--tasks",
                         "attnlab_tiny", "--include_path", str(task_dir)]) == 0
    assert "attnlab_tiny" in capsys.readouterr().out


@pytest.mark.parametrize("attention", ["castle", "linear", "sliding-window"])
def test_other_mechanisms_score_and_generate_with_their_own_cache(tmp_path: Path, attention: str) -> None:
    """The adapter with a non-standard mechanism: log-likelihoods equal full uncached forwards, and generation (the
    mechanism's own cache, one token per step) equals greedy decoding by full uncached forwards."""
    from hf_tiny import train_tiny_char_lm

    run = train_tiny_char_lm(tmp_path, steps=4, batch_size=4, attention=attention)
    lm = AttnlabEvalLM(checkpoint=str(run), batch_size=2)
    t = load_trained(run, device="cpu")
    assert t.model.config.attention == attention
    tok = t.task.tokenizer
    pairs = [("Before we", " proceed"), ("hear", " me speak"), ("Citizen", ":\nBefore")]  # within one context
    scores = lm.loglikelihood([_req("loglikelihood", c, x) for c, x in pairs])
    for (c, x), (got, _) in zip(pairs, scores):
        assert got == pytest.approx(_direct_logprob(t.model, tok, c, x), abs=1e-6), (c, x)
    text = "First Citizen:\nBefore we proceed any further, hear me speak."
    (rolled,) = lm.loglikelihood_rolling([_req("loglikelihood_rolling", text)])
    windows = [(text[0:1], text[1:17]), (text[16:17], text[17:33]), (text[32:33], text[33:49]),
               (text[43:49], text[49:])]
    assert rolled == pytest.approx(sum(_direct_logprob(t.model, tok, c, x) for c, x in windows), abs=1e-6)
    lengths: list[int] = []  # tokens fed per model call: the prompt once, then one token per step (the cache)
    hook = lm.model.register_forward_pre_hook(lambda m, args: lengths.append(int(args[0].shape[1])))
    try:
        (out,) = lm.generate_until([_req("generate_until", "First", {"until": ["\n\n"], "max_gen_toks": 9})])
    finally:
        hook.remove()
    assert lengths[0] == len(tok.encode("First")) and set(lengths[1:]) == {1}, lengths
    ids = tok.encode("First")
    for _ in range(9):  # 5 + 9 tokens < the context of 16: plain greedy over the whole prefix
        ids.append(int(t.model(torch.tensor([ids]))[0, -1].argmax()))
    assert out == tok.decode(ids[len(tok.encode("First")):]).split("\n\n")[0]
