"""benchmarks/gpu/train_throughput.py on CPU: the FLOPs convention against hand counts, the steady-state window, the
deadline, the fallback between attempts, and the dry run end to end (the code path the GPU run takes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def tt(benchmark_script):
    return benchmark_script("gpu/train_throughput.py")


def test_flops_per_token_is_palm_convention(tt) -> None:
    # 6 N + 6 m L H Dh T: N = 1000, L = 2, H = 3, Dh = 4, T = 5
    assert tt.flops_per_token(n_matmul_params=1000, n_layers=2, n_heads=3, head_dim=4, context_len=5) == \
        6 * 1000 + 12 * 2 * 3 * 4 * 5  # PaLM's 6N + 12 L H Q T (m = 2)
    assert tt.flops_per_token(n_matmul_params=1000, n_layers=2, n_heads=3, head_dim=4, context_len=5,
                              attn_matmuls=6) == 6 * 1000 + 36 * 2 * 3 * 4 * 5
    assert tt.ATTN_MATMULS == {"standard": 2, "castle": 6}


@pytest.mark.parametrize("tied", [True, False])
def test_param_counts_by_hand(tt, tied: bool) -> None:
    from attnlab.models.lm import LM, LMConfig

    d, V, F = 8, 11, 64  # SwiGLU hidden: 8/3 * 8 rounded up to a multiple of 64
    std = LM(LMConfig(vocab_size=V, n_layers=1, d_model=d, n_heads=2, context_len=4, tie_embeddings=tied))
    c = tt.param_counts(std)
    attn, ffn, emb, norms = 4 * d * d, 3 * F * d, V * d, 3 * d  # q, k, v, o; gate, up, down; 2 block norms + final
    head = 0 if tied else V * d
    assert c["total"] == attn + ffn + emb + norms + head
    assert c["embedding"] == emb and c["non_embedding"] == c["total"] - emb
    # matmuls: every 2-D weight; the LM head once (tied: the shared matrix), never the input lookup
    assert c["matmul"] == attn + ffn + V * d
    assert c["tied"] == int(tied)
    castle = LM(LMConfig(vocab_size=V, n_layers=1, d_model=d, n_heads=2, context_len=4, attention="castle"))
    a = castle.blocks[0].attn
    assert (a.n_heads, a.head_dim) == (1, 4)  # heads_for_parity(2) = round(8 / 7) = 1, head dim kept
    assert tt.param_counts(castle)["matmul"] == 7 * 1 * 4 * d + ffn + V * d  # in_proj 6 H Dh d + out_proj H Dh d


def _marks(step_s: list[float], tokens_per_step: int = 100) -> list[dict[str, float]]:
    t, out = 0.0, []
    for i, s in enumerate(step_s):
        out.append({"step": i, "t_start": t, "tokens": i * tokens_per_step, "data_s": 0.01 * s,
                    "t_synced": t + 0.9 * s})
        t += s
    return out


def test_steady_state_leaves_out_the_first_steps(tt) -> None:
    marks = _marks([30.0, 5.0] + [0.5] * 10)  # a compile step and a recompile, then 10 steps of 0.5 s
    st = tt.steady_state(marks, skip=2)
    # window: steps 2 .. 10 (the start of step 11 ends it): 9 steps of 100 tokens in 4.5 s
    assert st["ok"] and not st["short_window"] and st["first_step"] == 2 and st["steps"] == 9
    assert st["tokens_per_s"] == pytest.approx(900 / 4.5)
    assert st["median_step_s"] == pytest.approx(0.5)
    # inside the steps: 0.9 of each up to the sync, 0.01 of it making batches -> overhead 1 - 0.89
    assert st["overhead_fraction"] == pytest.approx(0.11)
    short = tt.steady_state(_marks([30.0, 1.0, 1.0, 1.0]), skip=20)
    assert short["short_window"] and short["first_step"] == 2 and short["tokens_per_s"] == pytest.approx(100.0)
    assert not tt.steady_state(_marks([3.0]), skip=0)["ok"]


def test_deadline_ends_the_training_loop(tt, tmp_path: Path) -> None:
    args = tt.parse_args(["--dry-run", "--out", str(tmp_path), "--steps", "20", "--mechanisms", "standard"])
    spec = {"mechanism": "standard", "attempt": {"compile": False, "impl": None, "label": "1-eager"},
            "args": vars(args), "deadline_s": 0.0, "run_dir": str(tmp_path / "run"), "result_path": "unused",
            "log": lambda s: None}
    res = tt.run_attempt(spec)
    # the first step starts the clock, the second sees the deadline passed and becomes the last
    assert res["stopped_early_at"] == 2 and res["steps_run"] == 2 and res["steps_requested"] == 20
    assert res["trainer_result"]["steps"] == 2 and math.isfinite(res["loss"]["val"])
    assert res["config"]["optim"]["decay_steps"] == 20  # the schedule of the requested run, cut short
    assert res["steady"]["short_window"]
    # a compilation that outlasts the deadline still leaves min_window_seconds of steps to measure
    # (and --checkpoint lets the trainer write its end-of-run checkpoint, skipped by default)
    spec["args"] = vars(args) | {"min_window_seconds": 1e9, "steps": 6, "checkpoint": True}
    spec["run_dir"] = str(tmp_path / "run2")
    res = tt.run_attempt(spec)
    assert res["steps_run"] == 6 and res["checkpoint"] == "written"
    assert [p.name for p in (tmp_path / "run2").glob("ckpt-*")] == ["ckpt-00000006"]
    assert res["loss"]["val"] is not None and not list((tmp_path / "run").glob("ckpt-*"))


def test_a_failed_attempt_falls_back_and_is_recorded(tt, tmp_path: Path) -> None:
    args = tt.parse_args(["--out", str(tmp_path)])  # the GPU run's plan; the runner below replaces training
    assert [a["label"] for a in tt.attempt_plan(args, "castle")] == ["1-compiled", "2-eager", "3-compiled-chunked"]
    assert [a["label"] for a in tt.attempt_plan(args, "standard")] == ["1-compiled", "2-eager"]
    seen = []

    def runner(spec):
        seen.append((spec["attempt"]["label"], spec["deadline_s"]))
        if spec["attempt"]["impl"] != "chunked":
            return {"ok": False, "error": f"RuntimeError: boom in {spec['attempt']['label']}"}
        return {"ok": True, "attempt": spec["attempt"]["label"], "steady": {"ok": True, "tokens_per_s": 1000.0},
                "flops_per_token": 2e9}

    clock = tt.Clock(budget_s=150.0, hard_s=270.0)
    rec = tt.run_mechanism(args, "castle", clock=clock, work_dir=tmp_path / "w", out_dir=tmp_path, runner=runner,
                           log=lambda s: None)
    assert [s[0] for s in seen] == ["1-compiled", "2-eager", "3-compiled-chunked"]
    assert all(d == args.max_seconds for _, d in seen)  # the budget was not yet short
    assert rec["ok"] and rec["attempt"] == "3-compiled-chunked" and rec["fallback_after"] == ["1-compiled", "2-eager"]
    assert "boom in 1-compiled" in rec["attempts_summary"][0]
    tt.add_mfu(rec, peak_tflops=1000.0, ceiling_tflops=500.0)
    assert rec["achieved_tflops"] == pytest.approx(2.0)  # 1000 tokens/s x 2e9 FLOPs
    assert rec["mfu_vs_peak"] == pytest.approx(0.002) and rec["mfu_vs_measured_matmul"] == pytest.approx(0.004)
    # little time left: the compiled attempts are skipped for the eager one, whose deadline fits the hard limit
    seen.clear()
    short = tt.Clock(budget_s=150.0, hard_s=40.0)
    rec = tt.run_mechanism(args, "standard", clock=short, work_dir=tmp_path / "w", out_dir=tmp_path,
                           runner=runner, log=lambda s: None)
    assert [s[0] for s in seen] == ["2-eager"] and seen[0][1] == pytest.approx(20.0, abs=0.5)  # 40 - 5 - 15 s
    assert "too little to compile" in rec["attempts"][0]["error"]
    # out of time: nothing runs
    late = tt.Clock(budget_s=150.0, hard_s=1.0)
    rec = tt.run_mechanism(args, "standard", clock=late, work_dir=tmp_path / "w", out_dir=tmp_path,
                           runner=runner, log=lambda s: None)
    assert not rec["ok"] and "skipped" in rec["attempts"][0]["error"]


def test_dry_run_end_to_end(tt, tmp_path: Path) -> None:
    """The device run's code path on CPU: one worker process per attempt, both mechanisms, every output file."""
    out = tmp_path / "out"
    assert tt.main(["--dry-run", "--out", str(out), "--steps", "8", "--skip-steps", "3"]) == 0
    summary = json.loads((out / "train-throughput-cpu-dry-run.json").read_text())
    assert summary["complete"] and [r["mechanism"] for r in summary["results"]] == ["standard", "castle"]
    ceiling = summary["matmul_ceiling"]["tflops"]
    std, castle = summary["results"]
    for r in summary["results"]:
        per = json.loads((out / f"train-throughput-cpu-dry-run-{r['mechanism']}.json").read_text())
        assert per["ok"] and per["steps_run"] == 8 and per["steady"]["steps"] == 4  # steps 3 .. 6
        assert (out / "runs" / f"{r['mechanism']}-1-eager" / "metrics.jsonl").is_file()
        assert (out / "runs" / f"{r['mechanism']}-1-eager.log").is_file()
        assert r["loss"]["fell"] and math.isfinite(r["loss"]["val"])
        achieved = r["steady"]["tokens_per_s"] * r["flops_per_token"] / 1e12
        assert r["mfu_vs_peak"] == pytest.approx(achieved / 989.4)
        assert r["mfu_vs_measured_matmul"] == pytest.approx(achieved / ceiling)
        layer = r["layer"]
        n = r["params"]["matmul"]
        m = 2 if r["mechanism"] == "standard" else 6
        assert r["flops_per_token"] == 6 * n + 6 * m * 2 * layer["n_heads"] * layer["head_dim"] * 64
    assert castle["layer"]["n_heads"] == 2 and std["layer"]["n_heads"] == 4  # parity: round(16 / 7) heads of 16
    assert castle["ratio_to_standard"] == pytest.approx(
        castle["steady"]["tokens_per_s"] / std["steady"]["tokens_per_s"])
    md = (out / "train-throughput-cpu-dry-run.md").read_text()
    assert "| mechanism | attempt |" in md and "Partial" not in md and "tinyshakespeare with the char" in md


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_existing_results_are_found_per_tag(tt, tmp_path: Path) -> None:
    assert tt.existing_results(tmp_path / "missing", "cuda") == []
    (tmp_path / "train-throughput-cpu-dry-run.json").write_text("{}")
    (tmp_path / "notes.json").write_text("{}")
    assert tt.existing_results(tmp_path, "cuda") == []  # a dry run's results do not block the device run
    (tmp_path / "train-throughput-cuda-castle.json").write_text("{}")  # one mechanism's record alone is enough
    assert [p.name for p in tt.existing_results(tmp_path, "cuda")] == ["train-throughput-cuda-castle.json"]
    (tmp_path / "train-throughput-cuda.md").write_text("x")
    (tmp_path / "train-throughput-cuda.json").write_text("{}")
    assert [p.name for p in tt.existing_results(tmp_path, "cuda")] == [
        "train-throughput-cuda.json", "train-throughput-cuda.md", "train-throughput-cuda-castle.json"]


def test_a_second_run_into_the_same_folder_is_refused_unless_forced(tt, tmp_path: Path, capsys) -> None:
    """Re-running into a folder with an earlier run's results exits 2 before writing anything; --force runs."""
    out = tmp_path / "out"
    quick = ["--dry-run", "--out", str(out), "--steps", "4", "--skip-steps", "1", "--no-isolate"]
    assert tt.main(quick + ["--mechanisms", "standard"]) == 0
    first = _snapshot(out)
    assert {"train-throughput-cpu-dry-run.json", "train-throughput-cpu-dry-run.md",
            "train-throughput-cpu-dry-run-standard.json"} <= set(first)
    capsys.readouterr()
    assert tt.main(quick + ["--mechanisms", "castle"]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--out" in err and "--force" in err and "train-throughput-cpu-dry-run.json" in err
    assert _snapshot(out) == first  # byte for byte, nothing added
    # only a mechanism's record left (the summary deleted by hand): still refused
    (out / "train-throughput-cpu-dry-run.json").unlink()
    (out / "train-throughput-cpu-dry-run.md").unlink()
    assert tt.main(quick + ["--mechanisms", "castle"]) == 2
    assert (out / "train-throughput-cpu-dry-run-standard.json").read_bytes() == \
        first["train-throughput-cpu-dry-run-standard.json"]
    assert not (out / "train-throughput-cpu-dry-run.json").exists()
    # --force runs and writes this run's results; the other mechanism's record is left as it was
    assert tt.main(quick + ["--mechanisms", "castle", "--force"]) == 0
    summary = json.loads((out / "train-throughput-cpu-dry-run.json").read_text())
    assert summary["complete"] and [r["mechanism"] for r in summary["results"]] == ["castle"]
    assert json.loads((out / "train-throughput-cpu-dry-run-castle.json").read_text())["ok"]
    assert (out / "train-throughput-cpu-dry-run-standard.json").read_bytes() == \
        first["train-throughput-cpu-dry-run-standard.json"]


def test_the_refusal_comes_before_the_cuda_check_and_the_help_names_force(tt, tmp_path: Path) -> None:
    """From the command line, as run_all.sh calls it: an earlier device run's folder is refused at once."""
    import subprocess
    import sys

    (tmp_path / "train-throughput-cuda.json").write_text('{"earlier": 1}')
    script = str(Path(tt.__file__))
    proc = subprocess.run([sys.executable, script, "--out", str(tmp_path), "--mechanisms", "castle"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "already holds an earlier run's results" in proc.stderr
    assert str(tmp_path) in proc.stderr and "--force" in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["train-throughput-cuda.json"]
    assert (tmp_path / "train-throughput-cuda.json").read_text() == '{"earlier": 1}'
    help_text = " ".join(subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                                        timeout=120).stdout.split())
    assert "--force" in help_text and "overwriting its train-throughput-<tag>.{json,md}" in help_text


def test_worker_error_comes_back(tt, tmp_path: Path) -> None:
    args = tt.parse_args(["--dry-run", "--out", str(tmp_path)])
    a = vars(args) | {"n_heads": 3}  # 3 heads do not divide d_model 64: the config is refused in the worker
    spec = {"mechanism": "standard", "attempt": {"compile": False, "impl": None, "label": "1-eager"}, "args": a,
            "deadline_s": 10.0, "run_dir": str(tmp_path / "run"), "result_path": str(tmp_path / "res.json")}
    res = tt.run_isolated(spec, timeout_s=120, log_path=tmp_path / "w.log")
    assert not res["ok"] and "n_heads=3" in res["error"] and "Traceback" in res["traceback"]


def test_sigterm_stops_the_worker_and_writes_the_report(tt, tmp_path: Path) -> None:
    """``timeout`` around the script sends SIGTERM: the worker (its own session) is killed and the report says what
    happened."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    script = Path(tt.__file__)
    work = tmp_path / "work"
    proc = subprocess.Popen([sys.executable, str(script), "--dry-run", "--out", str(out), "--steps", "1000000",
                             "--max-seconds", "600", "--mechanisms", "standard", "--work-dir", str(work)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def workers() -> list[str]:
        found = []
        for pid in os.listdir("/proc"):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "--worker" in cmd and str(work) in cmd:
                found.append(pid)
        return found

    t0 = time.time()
    while not (workers() and list(work.glob("standard-1-eager/metrics.jsonl"))):  # the worker is training
        assert proc.poll() is None and time.time() - t0 < 120
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 124, stdout
    md = (out / "train-throughput-cpu-dry-run.md").read_text()
    assert "Stopped from outside" in md and "Terminated" in md
    summary = json.loads((out / "train-throughput-cpu-dry-run.json").read_text())
    assert summary["terminated"] and not summary["results"][0]["ok"]
    assert not workers()
