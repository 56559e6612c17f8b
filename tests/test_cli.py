"""The CLI subcommands list, verify, masks, bench and demo, run in-process with tiny sizes."""

from __future__ import annotations

import pytest

from attnlab.cli import main
from attnlab.layers import registry
from attnlab.verify.toys import toy_spec


@pytest.fixture
def toys(monkeypatch):
    """Register a correct and a future-leaking toy mechanism for the duration of one test."""
    good, bad = toy_spec("toy-ok"), toy_spec("toy-leaky", fault="leak-future")
    registry.names()  # load the built-in mechanisms first
    monkeypatch.setitem(registry.MECHANISMS.entries, good.name, good)
    monkeypatch.setitem(registry.MECHANISMS.entries, bad.name, bad)
    return good, bad


def test_list_prints_an_aligned_table_of_every_mechanism(toys, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    header = out[0]
    assert header.split()[:3] == ["mechanism", "masking", "cross"]
    row = next(line for line in out if line.startswith("toy-ok "))
    # aligned: each column starts at the same offset as its header
    assert row.index("causal") == header.index("masking")
    assert row.index("kv") == header.index("cached decoding")
    assert "reference, sdpa" in row
    for name in registry.names():
        assert any(line.startswith(name + " ") for line in out), name


def test_list_names(toys, capsys):
    assert main(["list", "--names"]) == 0
    assert capsys.readouterr().out.split() == registry.names()


def test_verify_passes_on_a_correct_mechanism(toys, capsys):
    assert main(["verify", "toy-ok", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "causality-gradient" in out and "cached-decoding" in out and "FAIL" not in out
    assert "max error" in out and "tolerance" in out
    assert "0 failed" in out


def test_verify_exits_1_and_shows_the_failing_check(toys, capsys):
    assert main(["verify", "toy-ok", "toy-leaky", "--no-progress", "--failures-only"]) == 1
    out = capsys.readouterr().out
    failed = [line for line in out.splitlines() if " FAIL " in line]
    assert failed and all("toy-leaky" in line for line in failed)
    assert any(line.startswith("causality-perturbation") for line in failed)


def test_verify_check_filter_and_unknown_names(toys, capsys):
    assert main(["verify", "toy-leaky", "--check", "batch-consistency", "--no-progress"]) == 0
    assert "causality" not in capsys.readouterr().out
    assert main(["verify", "no-such-mechanism", "--no-progress"]) == 2
    assert "unknown mechanism 'no-such-mechanism'" in capsys.readouterr().err
    assert main(["verify", "toy-ok", "--check", "nope", "--no-progress"]) == 2
    assert "unknown check 'nope'; registered: " in capsys.readouterr().err


def test_masks_writes_every_png_and_a_gallery(tmp_path, capsys):
    assert main(["masks", "--length", "12", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "gallery.png").exists() and "gallery" in out
    assert len(list(tmp_path.glob("*.png"))) >= 10


def test_bench_writes_reports_refuses_to_overwrite_and_fails_on_a_wrong_layer(toys, tmp_path, capsys):
    argv = ["bench", "mechanisms", "--mechanisms", "toy-ok", "--lengths", "8,16", "--quick", "--d-model", "16",
            "--n-heads", "2", "--device", "cpu", "--out", str(tmp_path), "--no-progress", "--budget", "1",
            "--min-time", "0.2"]
    assert main(argv) == 0
    md = (tmp_path / "mechanisms-cpu.md").read_text()
    assert "--budget 1 --min-time 0.2" in md  # the command line that reproduces the run
    assert "attnlab bench mechanisms --device cpu" in md and "torch:" in md and "cpu:" in md
    assert "| toy-ok | reference | 16 | ok |" in md and "sdpa-causal (baseline)" in md
    assert (tmp_path / "mechanisms-cpu.csv").read_text().startswith("mechanism,impl,T,status")
    assert (tmp_path / "mechanisms-cpu.png").exists()
    capsys.readouterr()
    assert main(argv) == 2  # never overwrite silently
    assert "--force" in capsys.readouterr().err
    # a plot alone is also refused before anything is measured (not after, by write_results)
    (tmp_path / "mechanisms-cpu.md").rename(tmp_path / "kept.md")
    (tmp_path / "mechanisms-cpu.csv").rename(tmp_path / "kept.csv")
    assert main(argv) == 2
    assert "mechanisms-cpu.png" in capsys.readouterr().err

    # a layer whose benchmarked backend (sdpa) disagrees with its reference reports the failure, not a speed
    import dataclasses

    broken = dataclasses.replace(toy_spec("toy-sdpa-off", fault="backend-differs"), defaults={"impl": "sdpa"})
    registry.MECHANISMS.entries[broken.name] = broken
    try:
        argv2 = [a if a != "toy-ok" else broken.name for a in argv] + ["--force", "--dtype", "float64"]
        assert main(argv2) == 1
        md = (tmp_path / "mechanisms-cpu.md").read_text()
        assert "| toy-sdpa-off |  | 8 | FAILED correctness: max error" in md
    finally:
        del registry.MECHANISMS.entries[broken.name]


def test_bench_list_and_bad_arguments(capsys):
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    for s in ("mechanisms", "overhead", "sparsity"):
        assert s in out
    assert main(["bench", "no-such-suite", "--no-progress"]) == 2
    with pytest.raises(SystemExit):
        main(["bench", "--lengths", "a,b"])


def test_demo_runs_every_step_into_a_fresh_directory(toys, tmp_path, capsys):
    argv = ["demo", "--out", str(tmp_path), "--mechanisms", "toy-ok", "--mask-length", "8",
            "--bench-lengths", "8,16", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    (run_dir,) = tmp_path.iterdir()
    assert (run_dir / "verify.txt").exists() and (run_dir / "masks" / "gallery.png").exists()
    assert (run_dir / "bench" / "mechanisms-cpu.md").exists()
    assert str(run_dir / "masks" / "gallery.png") in out and "## Where everything went" in out
    assert main(argv + ["--skip-bench", "--skip-masks"]) == 0  # a second run gets its own directory
    assert len(list(tmp_path.iterdir())) == 2


def test_demo_fails_when_verification_fails(toys, tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--mechanisms", "toy-leaky", "--mask-length", "8",
                 "--skip-bench", "--skip-masks", "--no-progress"]) == 1


def test_demo_refuses_unknown_mechanisms_before_writing_anything(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--mechanisms", "standard,nope", "--no-progress"]) == 2
    assert "attnlab demo: unknown mechanism 'nope'; registered: " in capsys.readouterr().out
    assert not tmp_path.exists() or not list(tmp_path.iterdir())


def test_demo_counts_a_case_that_cannot_run_here_as_skipped_not_failed(tmp_path):
    # castle-forms' Triton case cannot run on CPU without the interpreter: the tour reports it as skipped and still
    # passes. A fresh process without TRITON_INTERPRET (this one may have the interpreter active).
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "attnlab.cli", "demo", "--out", str(tmp_path), "--mechanisms",
                           "castle", "--skip-bench", "--skip-masks", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "0 failed, 1 skipped (cannot run on this device)" in proc.stdout
