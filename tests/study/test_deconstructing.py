"""``attnlab study deconstructing`` with the seconds-long ``tiny`` preset: runs, resumes, refuses a different study
in the same directory, writes its files; the bigram reference and the logit probe on known cases."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from attnlab.cli import main
from attnlab.study.deconstructing import bigram_loss, max_logits_per_layer, run_study
from attnlab.study.presets import get_study_preset


@pytest.fixture
def text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from attnlab.data import read_bundled_text

    monkeypatch.setenv("ATTNLAB_CACHE_DIR", str(tmp_path / "cache"))
    p = tmp_path / "small.txt"
    p.write_text(read_bundled_text("tinyshakespeare")[:12000])
    return p


def test_tiny_study_runs_resumes_and_refuses_another(tmp_path: Path, text: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    cfg = get_study_preset("tiny", str(text))
    logs: list[str] = []
    res = run_study(cfg, out, log=logs.append)
    assert len(res.runs) == 5 * 2  # (standard + 2 variants x {uniform, hybrid}) x 2 seeds
    for name in ("study.json", "bigram.json", "leaderboard.md", "leaderboard.csv", "table_12_3.md", "report.html",
                 "ppl_by_variant.png", "delta_vs_standard.png", "ppl_vs_context.png", "max_logit_per_layer.png"):
        assert (out / name).is_file(), name
    md = (out / "leaderboard.md").read_text()
    assert "SKIP (variant layers), block" in md and "Standard-SKIP (odd layers), block" in md
    assert "Paper directions (spec 12.3)" in md and "Every hybrid beats its uniform version" in md
    assert "| `decon_mlp` | no token mixing | uniform |" in md and "| `standard` | all on | uniform |" in md
    ev = json.loads((out / "runs/decon_mlp/hybrid/seed0/study_eval.json").read_text())
    assert ev["skip"]["block"]["layers"] == [1] and set(ev["context_loss"]) == {"2", "4", "8", "16"}
    assert ev["max_logit"][0] is None and ev["max_logit"][1] > 0  # MLP has no logit; the standard layer has
    # uniform MLP: the same loss at every context (spec oracle 8), up to reduction order
    mlp = json.loads((out / "runs/decon_mlp/uniform/seed0/study_eval.json").read_text())["context_loss"]
    assert max(mlp.values()) - min(mlp.values()) < 1e-5
    # resume: nothing is redone and nothing finished is rewritten
    finished = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/seed*/*.json")}
    logs.clear()
    res2 = run_study(cfg, out, log=logs.append)
    assert sum("finished earlier, kept" in line for line in logs) == 10
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/seed*/*.json")} == finished
    assert res2.runs[("standard", "uniform", 0)]["result"] == res.runs[("standard", "uniform", 0)]["result"]
    # an interrupted run (its evaluation lost) is finished on resume, the others kept
    (out / "runs/decon_nonapprox/uniform/seed1/study_eval.json").unlink()
    logs.clear()
    run_study(cfg, out, log=logs.append)
    assert sum("finished earlier, kept" in line for line in logs) == 9
    assert (out / "runs/decon_nonapprox/uniform/seed1/study_eval.json").is_file()
    # a study.json written before an option existed (here: model.rope_base) still resumes
    meta = json.loads((out / "study.json").read_text())
    assert meta["base"]["model"].pop("rope_base") == cfg.base.model.rope_base
    (out / "study.json").write_text(json.dumps(meta))
    logs.clear()
    run_study(cfg, out, log=logs.append)
    assert sum("finished earlier, kept" in line for line in logs) == 10
    # a different study in the same directory is refused
    from attnlab.train.outdir import OutputDirError

    with pytest.raises(OutputDirError, match="holds a different study .*seeds"):
        run_study(dataclasses.replace(cfg, seeds=[0, 1, 2]), out, log=logs.append)
    assert main(["study", "deconstructing", "--preset", "tiny", "--corpus", str(text), "--seeds", "5",
                 "--out", str(out)]) == 2
    assert "holds a different study" in capsys.readouterr().err


def test_parallel_jobs_train_the_same_runs(tmp_path: Path, text: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """``jobs=2`` trains the grid in two processes of one thread each: the same runs, the same results as one
    process of two threads up to float rounding, and a study started in one mode resumes in the other."""
    tiny = get_study_preset("tiny", str(text))
    cfg = dataclasses.replace(tiny, variants=["decon_mlp"], seeds=[0], base=dataclasses.replace(tiny.base, threads=2))
    seq = run_study(cfg, tmp_path / "seq", log=lambda m: None)
    logs: list[str] = []
    par = run_study(cfg, tmp_path / "par", jobs=2, log=logs.append)
    assert "3 runs, 2 at a time, 1 thread(s) each" in logs
    assert set(par.runs) == set(seq.runs) and len(par.runs) == 3  # standard + MLP x {uniform, hybrid}
    for key, rec in seq.runs.items():
        a, b = rec["result"]["val"]["loss"], par.runs[key]["result"]["val"]["loss"]
        assert math.isfinite(a) and b == pytest.approx(a, rel=1e-6, abs=1e-6), key
        assert par.runs[key]["eval"]["context_loss"] == pytest.approx(rec["eval"]["context_loss"], rel=1e-6)
    # sequential resume of the parallel study: everything kept
    logs.clear()
    run_study(cfg, tmp_path / "par", log=logs.append)
    assert sum("finished earlier, kept" in line for line in logs) == 3
    # the CLI flag, and a bad value
    assert main(["study", "deconstructing", "--preset", "tiny", "--corpus", str(text), "--variants", "decon_mlp",
                 "--jobs", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "jobs must be a positive integer, got 0" in capsys.readouterr().err


def test_study_cli_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["study", "deconstructing", "--preset", "huge", "--print-config"]) == 2
    assert "unknown study preset 'huge'" in capsys.readouterr().err
    assert main(["study", "deconstructing", "--preset", "tiny", "--variants", "decon_foo", "--print-config"]) == 2
    assert "variants must be distinct names from" in capsys.readouterr().err
    # the nine layouts need a layer count they divide: the 2-layer tiny models cannot take "middle"
    assert main(["study", "deconstructing", "--preset", "tiny", "--layouts", "all", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "decon_nonapprox middle" in err and "needs n_layers divisible by 4, got n_layers=2" in err
    assert main(["study", "deconstructing", "--preset", "tiny", "--seeds", "a", "--print-config"]) == 2
    assert "--seeds must be comma-separated integers" in capsys.readouterr().err


def test_presets_resolve() -> None:
    q = get_study_preset("quick")
    assert len(q.models()) == 13 and q.seeds == [0, 1] and q.base.data.source == "tinyshakespeare"
    f = get_study_preset("full")
    assert f.base.model.n_layers == 8 and len(f.seeds) >= 3 and f.base.data.tokenizer == "word"
    fa = dataclasses.replace(f, layouts="all")
    assert len(fa.models()) == 13 + 2 * 8
    assert fa.run_config("decon_rndembqk", "quarter", 1).model.layer_mechanisms()[3] == "standard"
    ts = get_study_preset("full", "tinyshakespeare")
    assert ts.base.data.tokenizer == "char" and ts.vocab_cap is None
    tokens = f.base.steps * f.base.batch_size * f.base.model.context_len
    assert 1_000_000 <= tokens <= 2_000_000


def test_full_preset_size_matches_its_docstring() -> None:
    """The size the ``full`` docstring (and its time estimate) claims is the size the preset declares."""
    from attnlab.models.stack import LAYOUTS
    from attnlab.study.presets import FULL_SIZE, full

    doc = " ".join(full.__doc__.split())
    for corpus in ("wikitext2", "tinyshakespeare"):
        f = get_study_preset("full", corpus)
        b, m = f.base, f.base.model
        assert (m.n_layers, m.d_model, m.n_heads, m.context_len) == (8, 64, 4, 128)
        assert (b.steps, b.batch_size, b.threads) == (FULL_SIZE["steps"], FULL_SIZE["batch_size"], 2)
        assert len(f.seeds) == FULL_SIZE["seeds"] >= 3 and len(f.models()) == 13
        tokens = b.steps * b.batch_size * m.context_len
        assert 800_000 <= tokens <= 2_000_000
        assert f"{tokens:,} training tokens per run" in doc
        assert m.n_layers % 4 == 0  # every layout rule of spec 4.2 gives whole layers
        fa = dataclasses.replace(f, layouts="all")
        assert len(fa.models()) == 13 + 2 * 8 and len(fa.models()) * len(fa.seeds) == 87
        for layout in ["uniform", "hybrid"] + [k for k in LAYOUTS if k != "even"]:
            mech = fa.run_config("decon_nonapprox", layout, 0).model.layer_mechanisms()
            assert len(mech) == 8 and (layout == "uniform" or 1 <= mech.count("standard") <= 6)
    w = get_study_preset("full")
    assert w.base.data.source == "wikitext2" and w.base.data.tokenizer == "word" and w.vocab_cap == 8192
    for claim in ("13 models x 3 seeds", "8 layers", "d_model 64", "4 heads", "context 128", "500 steps x 16 rows",
                  "2 threads", "capped at 8,192", "16 models (48 runs)", "87 runs", "first 32,768 validation tokens"):
        assert claim in doc, claim
    assert w.eval_tokens == 32768


def test_full_preset_corpus_is_capped_wikitext2_without_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The corpus the ``full`` preset trains on: 8,192 word ids, no test split, the <unk> share its docstring
    states."""
    from attnlab.study.deconstructing import study_data

    monkeypatch.setenv("ATTNLAB_CACHE_DIR", str(tmp_path / "cache"))
    c = study_data(get_study_preset("full"))
    assert c.vocab_size == 8192 and c.test is None and len(c.val) == 217_646 and len(c.train) == 2_088_628
    unk = float(np.mean(np.asarray(c.val) == c.tokenizer.unk_id))
    assert f"{100 * unk:.1f}% of validation tokens become ``<unk>``" in " ".join(full_doc().split())


def full_doc() -> str:
    from attnlab.study.presets import full

    return full.__doc__ or ""


def test_capped_word_tokenizer() -> None:
    from attnlab.data.tokenizers import WordTokenizer
    from attnlab.study.deconstructing import capped_word_tokenizer

    text = "a b a c\nd a b e\nb a f\n"
    tok = WordTokenizer.from_text(text)
    ids = np.array(tok.encode(text))
    capped = capped_word_tokenizer(tok, ids, 4)  # <eos>, <unk> and the two most frequent words: a (4), b (3)
    assert capped.vocab_size == 4 and set(capped.words) == {"a", "b", "<eos>", "<unk>"}
    assert [w for w in tok.words if w in capped.words] == capped.words  # the original order is kept
    assert capped.decode(capped.encode("a c b\n")) == "a <unk> b\n"
    # ties go to the first word seen: c, d, e, f occur once each
    assert "c" in capped_word_tokenizer(tok, ids, 5).words and "d" not in capped_word_tokenizer(tok, ids, 5).words
    assert capped_word_tokenizer(tok, ids, tok.vocab_size) is tok
    from attnlab.config import ConfigError
    from attnlab.data.tokenizers import CharTokenizer

    with pytest.raises(ConfigError, match="word-level tokenizer"):
        capped_word_tokenizer(CharTokenizer.from_text("abc"), np.array([0, 1]), 2)
    with pytest.raises(ConfigError, match="vocab_cap applies to word-level corpora only"):
        dataclasses.replace(get_study_preset("tiny"), vocab_cap=10)
    with pytest.raises(ConfigError, match="vocab_cap must be an integer >= 2"):
        dataclasses.replace(get_study_preset("full"), vocab_cap=1)


def test_word_study_with_a_vocab_cap_extends_to_all_layouts(tmp_path: Path, text: Path) -> None:
    """A word-level study with a capped vocabulary trains and evaluates on the capped corpus; the same study with
    ``layouts="all"`` on the same directory keeps the finished runs and trains only the ablation."""
    tiny = get_study_preset("tiny", str(text))
    base = tiny.base.replace(**{"data.tokenizer": "word", "model.n_layers": 4})
    cfg = dataclasses.replace(tiny, base=base, variants=["decon_nonapprox"], seeds=[0], vocab_cap=40)
    out = tmp_path / "study"
    logs: list[str] = []
    res = run_study(cfg, out, log=logs.append)
    assert len(res.runs) == 3 and json.loads((out / "study.json").read_text())["vocab_cap"] == 40
    assert res.bigram["vocab_size"] == 40 and 0 < res.bigram["val_unk_share"] < 1
    from attnlab.train.loading import load_trained

    t = load_trained(out / "runs/decon_nonapprox/hybrid/seed0", device="cpu")
    assert t.model.config.vocab_size == 40 and t.task.tokenizer.vocab_size == 40
    finished = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/seed*/*.json")}
    logs.clear()
    res_all = run_study(dataclasses.replace(cfg, layouts="all"), out, log=logs.append)
    assert any("extending the study" in line for line in logs)
    assert sum("finished earlier, kept" in line for line in logs) == 3 and len(res_all.runs) == 3 + 8
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    assert json.loads((out / "study.json").read_text())["layouts"] == "all"
    from attnlab.train.outdir import OutputDirError

    with pytest.raises(OutputDirError, match="holds a different study .*layouts"):  # all -> main is not a shrink
        run_study(cfg, out, log=logs.append)


def test_bigram_reference() -> None:
    rng = np.random.default_rng(0)
    # a deterministic cycle: the bigram model predicts it almost perfectly
    train = np.tile(np.arange(5), 400)
    assert bigram_loss(train, np.tile(np.arange(5), 20), 5) < 0.01
    # i.i.d. uniform tokens: about log V
    iid = rng.integers(0, 7, 20000)
    assert bigram_loss(iid, rng.integers(0, 7, 5000), 7) == pytest.approx(math.log(7), abs=0.02)
    # an unseen bigram still has a finite probability
    assert math.isfinite(bigram_loss(np.array([0, 1, 0, 1, 0]), np.array([1, 1, 2]), 3))


def test_max_logits_per_layer_matches_the_map() -> None:
    from attnlab.models.lm import LMConfig

    torch.manual_seed(0)
    m = LMConfig(vocab_size=11, n_layers=2, d_model=16, n_heads=2, context_len=8, attention="decon_rndembqk",
                 schedule="alternate").build().double().eval()
    x = torch.randint(11, (2, 8))
    got = max_logits_per_layer(m, x)
    assert len(got) == 2 and all(g is not None and g > 0 for g in got)
    # the fixed map's logits do not depend on the input (spec oracle 11)
    assert max_logits_per_layer(m, torch.randint(11, (2, 8)))[0] == pytest.approx(got[0], rel=1e-12)
    with torch.no_grad():  # scaling W_Q scales the logits
        m.blocks[0].attn.q_proj.weight.mul_(3.0)
    assert max_logits_per_layer(m, x)[0] == pytest.approx(3 * got[0], rel=1e-9)


def test_layout_table_places_the_standard_layers_and_tests_the_deltas() -> None:
    """The nine-layout section: each layout's Standard layers for n = 8 (spec 4.2), and Δ against uniform Standard and
    against the variant's hybrid with the Welch 2-SE verdict, from synthetic per-seed losses."""
    from types import SimpleNamespace

    from attnlab.study.report import layout_table

    cfg = dataclasses.replace(get_study_preset("full"), layouts="all", variants=["decon_rndembqk"])
    assert cfg.base.model.n_layers == 8
    runs = {}
    noise = [-0.01, 0.0, 0.01]
    for s, e in enumerate(noise):
        runs[("standard", "uniform", s)] = {"result": {"val": {"loss": 5.0 + e}}}
        runs[("decon_rndembqk", "hybrid", s)] = {"result": {"val": {"loss": 5.0 + e}}}
        runs[("decon_rndembqk", "first", s)] = {"result": {"val": {"loss": 5.5 + e}}}
    runs[("decon_rndembqk", "last", 0)] = {"diverged": True}
    res = SimpleNamespace(runs=runs)
    lines = layout_table(cfg, res)
    rows = {ln.split(" | ")[0].strip("| "): [c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]}
    assert list(rows) == ["uniform", "hybrid (even)", "odd", "top", "middle", "bottom", "quarter", "first", "last",
                          "bilateral"]
    assert rows["middle"][1:3] == ["1, 2, 7, 8", "4"] and rows["quarter"][1:3] == ["4, 8", "2"]
    assert rows["bottom"][1] == "5, 6, 7, 8" and rows["bilateral"][1:3] == ["1, 8", "2"]
    assert rows["uniform"][1:3] == ["none", "0"] and rows["hybrid (even)"][1] == "2, 4, 6, 8"
    assert rows["first"][3:] == ["5.5000 ± 0.010", "+0.500 (beyond noise)", "+0.500 (beyond noise)"]
    assert rows["hybrid (even)"][3:] == ["5.0000 ± 0.010", "+0.000 (noise)", "—"]
    assert rows["last"][3:] == ["—", "—", "—"]  # the only seed diverged: no mean, never a made-up number
    assert layout_table(dataclasses.replace(cfg, layouts="main"), res) == []
