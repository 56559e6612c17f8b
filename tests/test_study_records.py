"""benchmarks/study_records.py: a study's finished runs are saved without checkpoints, restored into a new
directory where the study resumes without retraining them, and nothing that exists is overwritten."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from attnlab.study.deconstructing import run_study
from attnlab.study.presets import get_study_preset



@pytest.fixture(scope="module")
def records(benchmark_script):
    return benchmark_script("study_records.py")


def test_save_restore_resume(records, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attnlab.data import read_bundled_text

    monkeypatch.setenv("ATTNLAB_CACHE_DIR", str(tmp_path / "cache"))
    text = tmp_path / "small.txt"
    text.write_text(read_bundled_text("tinyshakespeare")[:12000])
    cfg = dataclasses.replace(get_study_preset("tiny", str(text)), variants=["decon_mlp"], seeds=[0])
    first = run_study(cfg, tmp_path / "a", log=lambda m: None)
    # one run is unfinished (its evaluation lost): it is not saved
    (tmp_path / "a/runs/decon_mlp/hybrid/seed0/study_eval.json").unlink()
    kept = tmp_path / "kept"
    assert records.main(["save", str(tmp_path / "a"), str(kept)]) == 0
    saved = sorted(str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file())
    assert saved == ["bigram.json", "runs/decon_mlp/uniform/seed0/result.json",
                     "runs/decon_mlp/uniform/seed0/study_eval.json", "runs/standard/uniform/seed0/result.json",
                     "runs/standard/uniform/seed0/study_eval.json", "study.json"]
    # restored into a fresh directory, the study keeps the two saved runs and trains only the third
    assert records.main(["restore", str(kept), str(tmp_path / "b")]) == 0
    logs: list[str] = []
    second = run_study(cfg, tmp_path / "b", log=logs.append)
    assert sum("finished earlier, kept" in m for m in logs) == 2
    key = ("standard", "uniform", 0)
    assert second.runs[key]["result"] == first.runs[key]["result"]
    assert (tmp_path / "b/leaderboard.md").is_file()
    # saving again adds the newly finished run; a file with other contents is never overwritten
    assert records.main(["save", str(tmp_path / "b"), str(kept)]) == 0
    assert (kept / "runs/decon_mlp/hybrid/seed0/study_eval.json").is_file()
    (kept / "bigram.json").write_text("{}")
    with pytest.raises(FileExistsError, match="bigram.json exists with other contents"):
        records.copy_finished(tmp_path / "b", kept)
    assert (kept / "bigram.json").read_text() == "{}"
    assert records.main(["save", str(tmp_path / "b")]) == 2
