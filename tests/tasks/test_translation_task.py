"""The translation task on a tiny aligned corpus: exact resume, token-weighted accumulation, the CLI and its errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("tokenizers")
pytest.importorskip("sacrebleu")

from attnlab.cli import main  # noqa: E402
from attnlab.train.presets import multi30k_quick  # noqa: E402
from attnlab.train.trainer import Trainer  # noqa: E402

WORDS_DE = ["ein", "mann", "hund", "frau", "kind", "läuft", "spielt", "isst", "rot", "blau", "groß", "klein"]
WORDS_EN = ["a", "man", "dog", "woman", "child", "runs", "plays", "eats", "red", "blue", "big", "small"]


def _corpus(root: Path, n: int = 80) -> Path:
    """Aligned files {train,val,test}.{de,en}: word-for-word 'translations' of varying length."""
    import random

    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n), ("val", 12), ("test", 10)):
        de, en = [], []
        for _ in range(count):
            idx = [rng.randrange(len(WORDS_DE)) for _ in range(rng.randint(2, 9))]
            de.append(" ".join(WORDS_DE[i] for i in idx) + ".")
            en.append(" ".join(WORDS_EN[i] for i in idx) + ".")
        (root / f"{split}.de").write_text("\n".join(de) + "\n")
        (root / f"{split}.en").write_text("\n".join(en) + "\n")
    return root


def _cfg(tmp_path: Path, **kw):
    base = multi30k_quick()
    cfg = replace(
        base,
        model=replace(base.model, d_model=16, n_heads=2, max_source_len=64, max_target_len=64),
        data=replace(base.data, source=str(_corpus(tmp_path / "data")), vocab_size=300,
                     cache_dir=str(tmp_path / "cache")),
        steps=4, batch_size=8, eval_interval=2, log_interval=1, progress=False, tensorboard=False,
        device="cpu", precision="float64", threads=1, eval_batch_size=6,
    )
    return replace(cfg, **kw)


def _weights(tr: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in tr.model.state_dict().items()}


def test_resume_is_exact_and_accumulation_weights_by_tokens(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    assert cfg.model.dropout == 0.1  # dropout on: the resumed run must continue every RNG stream
    full = Trainer(cfg, out_dir=tmp_path / "full", log=None)
    full.fit()
    # interrupted after 2 steps, then resumed
    Trainer(replace(cfg, steps=2), out_dir=tmp_path / "part", log=None).fit()
    resumed = Trainer(cfg, out_dir=tmp_path / "part", resume=True, log=None)
    assert resumed.step == 2
    resumed.fit()
    for k, v in _weights(full).items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    a = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(l) for l in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in a if r["kind"] == "train"] == [r["loss"] for r in b if r["kind"] == "train"]
    assert a[-1]["tokens"] == b[-1]["tokens"] > 0  # the target-token counter survives the resume
    # micro-batches of different lengths: weighting by their target tokens gives the one-batch update exactly
    nodrop = _cfg(tmp_path, model=replace(cfg.model, dropout=0.0))
    one = Trainer(nodrop, log=None)
    one.fit()
    two = Trainer(replace(nodrop, grad_accum=2), log=None)
    two.fit()
    for k, v in _weights(one).items():
        torch.testing.assert_close(v, two.model.state_dict()[k], rtol=1e-10, atol=1e-12)


def test_final_evaluation_scores_bleu_and_writes_hypotheses(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    res = Trainer(cfg, out_dir=tmp_path / "run", log=None).fit()
    assert set(res.val.metrics) == {"bleu", "chrf", "search_sentences_per_s"} and 0.0 <= res.val.metrics["bleu"] <= 100.0
    assert res.val.metrics["search_sentences_per_s"] > 0
    hyp = tmp_path / "run" / "hypotheses-test-step4.txt"
    assert len(hyp.read_text().splitlines()) == 10  # one line per source sentence, in corpus order
    recs = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    mid = [r for r in recs if r["kind"] == "eval" and r["step"] == 2]
    assert mid and "bleu" not in mid[0]  # no decoding during training unless asked


def test_cli_train_translate_eval_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(tmp_path, precision="float32")
    monkeypatch.setenv("ATTNLAB_CACHE_DIR", str(cfg.data.cache_dir))  # eval never uses a cache stored in a checkpoint
    toml = tmp_path / "mt.toml"
    sets = ["--set", f"data.source={cfg.data.source}", "--set", f"data.cache_dir={cfg.data.cache_dir}",
            "--set", "data.vocab_size=300", "--set", "model.d_model=16", "--set", "model.n_heads=2",
            "--set", "threads=1", "--set", "eval_batch_size=6", "--set", "tensorboard=false"]
    toml.write_text("")
    out = tmp_path / "mt"
    assert main(["train", "--task", "translation", "--preset", "multi30k-quick", "--steps", "3", "--batch-size", "8",
                 "--no-progress", "--out", str(out), *sets]) == 0
    capsys.readouterr()
    assert main(["translate", "--checkpoint", str(out), "ein mann läuft.", "ein hund."]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert main(["eval", "--checkpoint", str(out), "--splits", "test", "--json", "--out", str(tmp_path / "ev"),
                 "--stored-data"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["task"] == "translation" and {"bleu", "chrf"} <= set(d["test"]["metrics"])
    assert (tmp_path / "ev" / "hypotheses-test.txt").is_file()
    # a second eval never overwrites the first file
    assert main(["eval", "--checkpoint", str(out), "--splits", "test", "--json", "--out", str(tmp_path / "ev"),
                 "--stored-data"]) == 0
    capsys.readouterr()
    assert (tmp_path / "ev" / "hypotheses-test.1.txt").is_file()
    # errors
    assert main(["generate", "--checkpoint", str(out)]) == 2
    assert "is a 'translation' model" in capsys.readouterr().err
    assert main(["translate", "--checkpoint", str(out), "ein " * 200]) == 2
    assert "this model accepts at most max_source_len=" in capsys.readouterr().err
    assert main(["train", "--task", "translation", "--preset", "shakespeare-char-cpu", "--print-config"]) == 2
    assert "--task translation but the preset/config is a 'lm' run" in capsys.readouterr().err
    assert main(["train", "--preset", "multi30k-quick", "--set", "model.cross_score=bilinear", "--print-config"]) == 2
    assert "model.cross_score: expected one of 'scaled_dot', 'dot', 'general', 'additive'" in capsys.readouterr().err
    bad = tmp_path / "bad"
    _corpus(bad)
    (bad / "train.en").write_text("one line only\n")
    assert main(["train", "--preset", "multi30k-quick", "--set", f"data.source={bad}", "--out",
                 str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "train.de" in err and "train.en" in err and "80" in err


def test_lm_checkpoint_given_to_translate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "t.txt"
    text.write_text("hello world, " * 400)
    out = tmp_path / "lm"
    assert main(["train", "--preset", "shakespeare-char-cpu", "--set", f"data.source={text}", "--set",
                 f"data.cache_dir={tmp_path / 'c'}", "--set", "model.n_layers=1", "--set", "model.d_model=16",
                 "--set", "model.context_len=8", "--steps", "2", "--batch-size", "2", "--no-progress",
                 "--set", "eval_interval=2", "--set", "tensorboard=false", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["translate", "--checkpoint", str(out), "hallo"]) == 2
    assert "is a 'lm' model, but this command needs a 'translation' model; use `attnlab generate`" in \
        capsys.readouterr().err
