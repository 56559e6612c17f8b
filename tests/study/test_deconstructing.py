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
from attnlab.study.deconstructing import bigram_loss, get_study_preset, max_logits_per_layer, run_study


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
    # a different study in the same directory is refused
    from attnlab.train.outdir import OutputDirError

    with pytest.raises(OutputDirError, match="holds a different study .*seeds"):
        run_study(dataclasses.replace(cfg, seeds=[0, 1, 2]), out, log=logs.append)
    assert main(["study", "deconstructing", "--preset", "tiny", "--corpus", str(text), "--seeds", "5",
                 "--out", str(out)]) == 2
    assert "holds a different study" in capsys.readouterr().err


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
    assert ts.base.data.tokenizer == "char"
    tokens = f.base.steps * f.base.batch_size * f.base.model.context_len
    assert 1_000_000 <= tokens <= 2_000_000


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
