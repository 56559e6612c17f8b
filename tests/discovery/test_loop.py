"""The discovery round, the correction loop, the simulated users, the CLI and bad input (spec time_series.md D.5,
D.9 oracle 7; issue: bad input)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from attnlab.cli import main
from attnlab.discovery import (
    DiscoveryConfig,
    NoisyOracleUser,
    OracleUser,
    discover,
    generate,
    graph_metrics,
    load_result,
    read_exclusions,
    refine,
    simulate_rounds,
)
from attnlab.models.timeseries.causal import CausalForecasterConfig

TINY = DiscoveryConfig(model=CausalForecasterConfig(n_layers=1, d_model=16, n_heads=2), look_back=3, seeds=(0, 1),
                       steps=150, fine_tune_steps=40, batch_size=32, score_windows=64, threads=1)


def test_round_writes_every_output_and_reads_back(tmp_path):
    system = generate("var", n_vars=4, length=600, seed=0, max_lag=2)
    r = discover(system, out=tmp_path / "d", config=TINY, log=None)
    out = tmp_path / "d"
    for name in ("graph.json", "edges.csv", "graph.png", "scores.png", "exclusions.csv", "data.csv", "truth.json"):
        assert (out / name).is_file(), name
    assert (out / "graph.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    d = json.loads((out / "graph.json").read_text())
    assert d["columns"] == ["x0", "x1", "x2", "x3"] and len(d["test_mse"]) == 2 and d["metrics"]["auroc"] is not None
    lines = (out / "edges.csv").read_text().splitlines()
    assert lines[0] == "cause,effect,lag,score,seeds" and len(lines) == 1 + len(r.graph.edges())
    back = load_result(out)
    np.testing.assert_array_equal(back.graph.pred, r.graph.pred)
    np.testing.assert_allclose(back.graph.normalised, r.graph.normalised)
    assert back.exclude == [] and back.config == TINY
    # the two baselines a forecaster must beat, on the same test windows
    from attnlab.data.timeseries import TimeSeries
    from attnlab.tasks.causal_discovery import prepare_discovery_data

    data = prepare_discovery_data(TimeSeries(name="s", dates=None, values=system.data, columns=system.columns),
                                  look_back=3, train_fraction=0.7, test_fraction=0.2)
    x, y = data.windows("test")
    assert d["baseline_test_mse"]["persistence"] == pytest.approx(float(((x[:, :, -1] - y) ** 2).mean()))
    assert 0 < d["baseline_test_mse"]["linear"] < d["baseline_test_mse"]["persistence"]  # (a VAR: linear helps)
    assert back.baselines == d["baseline_test_mse"]


def test_true_prior_removes_the_confounded_link_and_helps(tmp_path):
    """Oracle 7 (G4): with x -/-> y excluded the spurious x -> y is gone exactly (zero score), and over seeds the
    ranking (AUPRC) and F1 at a graph-wide threshold are no worse than without the exclusion. (At the row-scaled
    default threshold F1 can drop: the next-strongest candidate cause of y is scaled up to 1; the benchmark in
    benchmarks/results/discovery measures it.)"""
    from attnlab.discovery import Threshold, estimate_graph

    system = generate("confounder", n_vars=5, length=2000, seed=0, max_lag=2)  # x, y and a 3-variable VAR
    assert system.adjacency().sum() > 0  # true cross edges exist, so F1 can move
    cfg = DiscoveryConfig(model=CausalForecasterConfig(n_layers=1, d_model=16, n_heads=2), look_back=4, seeds=(0, 1),
                          steps=300, batch_size=32, score_windows=128, threads=1)
    free = discover(system, out=tmp_path / "free", config=cfg, log=None)
    prior = discover(system, out=tmp_path / "prior", config=cfg, exclude=[("x", "y")], log=None)
    x, y = 0, 1
    assert free.graph.pred[y, x]  # the confounder makes x -> y look causal without the prior
    assert all(g.scores[y, x] == 0.0 for g in prior.per_seed) and not prior.graph.pred[y, x]

    def mean(result, what: str) -> float:
        out = []
        for g in result.per_seed:
            g = estimate_graph(g.lagged, g.columns, Threshold(scale="global"))
            out.append(getattr(graph_metrics(g.scores, g.pred, g.lags, system.adjacency(), system.lag_matrix()),
                               what))
        return float(np.mean(out))

    assert mean(prior, "auprc") >= mean(free, "auprc")
    assert mean(prior, "f1") >= mean(free, "f1")


def test_refine_finetunes_keeps_exclusions_and_reports_changes(tmp_path):
    system = generate("var", n_vars=4, length=600, seed=1, max_lag=2)
    first = discover(system, out=tmp_path / "r0", config=TINY, log=None)
    cause, effect = first.graph.edges()[0]["cause"], first.graph.edges()[0]["effect"]
    second = refine(tmp_path / "r0", exclude=[(cause, effect)], out=tmp_path / "r1", log=None)
    assert second.exclude == [[cause, effect]] and second.round == 1
    assert {(e["cause"], e["effect"]) for e in second.changes["removed"]} >= {(cause, effect)}
    assert second.metrics is not None  # the truth travels with the rounds (truth.json)
    assert json.loads((tmp_path / "r1" / "seeds" / "seed0" / "result.json").read_text())["steps"] == 40
    # a third round keeps the second's exclusions and adds its own
    other = next(e for e in second.graph.edges() if (e["cause"], e["effect"]) != (cause, effect))
    third = refine(second, exclude=[(other["cause"], other["effect"])], out=tmp_path / "r2", mode="retrain", log=None)
    assert sorted(map(tuple, third.exclude)) == sorted([(cause, effect), (other["cause"], other["effect"])])
    assert json.loads((tmp_path / "r2" / "seeds" / "seed0" / "result.json").read_text())["steps"] == 150
    with pytest.raises(ValueError, match="previous round's directory"):
        refine(tmp_path / "r1", exclude=[], out=tmp_path / "r1", log=None)


def test_simulated_users(tmp_path):
    system = generate("var", n_vars=4, length=600, seed=2, max_lag=2)
    first = discover(system, out=tmp_path / "d", config=TINY, log=None)
    truth = system.adjacency()
    exact = OracleUser(truth, per_round=5).propose(first)
    for cause, effect in exact:  # only false positives, strongest first
        i, j = system.columns.index(effect), system.columns.index(cause)
        assert not truth[i, j] and first.graph.pred[i, j]
    always_wrong = NoisyOracleUser(truth, per_round=1, error_rate=1.0).propose(first)
    if any(truth[i, j] and first.graph.pred[i, j] for i in range(4) for j in range(4) if i != j):
        cause, effect = always_wrong[0]
        assert truth[system.columns.index(effect), system.columns.index(cause)]
    records = simulate_rounds(system, OracleUser(truth, per_round=1), out=tmp_path / "sim", rounds=1,
                              config=TINY, log=None)
    assert [r["round"] for r in records] == [0, 1] and records[1]["exclude"] == records[1]["proposed"]


def test_interrupted_round_continues_and_out_is_never_overwritten(tmp_path):
    system = generate("var", n_vars=4, length=600, seed=3, max_lag=2)
    out = tmp_path / "d"
    discover(system, out=out, config=TINY, log=None)
    before = (out / "graph.json").read_bytes()
    with pytest.raises(FileExistsError, match="--force"):
        discover(system, out=out, config=TINY, log=None)
    assert (out / "graph.json").read_bytes() == before
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a discovery run directory"):
        discover(system, out=other, config=TINY, force=True, log=None)
    assert (other / "keep.txt").read_text() == "mine"
    # an interrupted round (no graph.json yet) with the same settings continues, keeping its finished seeds
    (out / "graph.json").unlink()
    seed0 = (out / "seeds" / "seed0" / "result.json").read_bytes()
    discover(system, out=out, config=TINY, log=None)
    assert (out / "seeds" / "seed0" / "result.json").read_bytes() == seed0
    discover(system, out=out, config=TINY, force=True, log=None)  # force replaces a discovery run


# ------------------------------------------------------------------------------------------------ bad input


def _csv(tmp_path: Path, text: str, name: str = "d.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _good_csv(tmp_path: Path, rows: int = 200) -> Path:
    rng = np.random.default_rng(0)
    v = rng.standard_normal((rows, 3))
    return _csv(tmp_path, "a,b,c\n" + "".join(f"{r[0]},{r[1]},{r[2]}\n" for r in v), "good.csv")


@pytest.mark.parametrize("text,match", [
    ("a,b\n1,2\n3,x\n", r"row 1 \(line 3\), column 'b': 'x' is not a number"),
    ("a,b\n1,2\n3,\n", r"column 'b': the value is missing"),
    ("a,b\n1,2\n3,nan\n", r"column 'b': 'nan' is not a finite number"),
    ("a,a\n1,2\n", r"names column 'a' twice"),
    ("a,b\n1,2\n3\n", r"expected 2 fields \(a,b\), got 1"),
])
def test_bad_csv_names_row_and_column(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        discover(_csv(tmp_path, text), out=tmp_path / "o", config=TINY, log=None)
    assert not (tmp_path / "o").exists()  # refused before anything is written


def test_constant_column_and_too_few_rows(tmp_path):
    rows = "".join(f"{i},5,{(i * 7) % 3}\n" for i in range(100))
    with pytest.raises(ValueError, match="column 'b' is constant"):
        discover(_csv(tmp_path, "a,b,c\n" + rows), out=tmp_path / "o", config=TINY, log=None)
    with pytest.raises(ValueError, match="too few for look_back=3"):
        discover(_good_csv(tmp_path, rows=5), out=tmp_path / "o", config=TINY, log=None)
    with pytest.raises(ValueError, match="look_back must be"):
        DiscoveryConfig(look_back=0)


def test_bad_exclusion_files(tmp_path):
    cols = ["a", "b", "c"]
    assert read_exclusions(_csv(tmp_path, "cause,effect,lag\na,b,2\nc,a,1\n", "e.csv"), cols) == [["a", "b"],
                                                                                                    ["c", "a"]]
    assert read_exclusions(_csv(tmp_path, '[{"cause": "a", "effect": "c"}, ["b", "a"]]', "e.json"), cols) == [
        ["a", "c"], ["b", "a"]]
    with pytest.raises(ValueError, match=r"the cause 'z' is not a variable of the series \(a, b, c\)"):
        read_exclusions(_csv(tmp_path, "cause,effect\nz,a\n", "u.csv"), cols)
    with pytest.raises(ValueError, match="own past"):
        read_exclusions(_csv(tmp_path, "cause,effect\nb,b\n", "s.csv"), cols)
    with pytest.raises(ValueError, match="'cause' and 'effect'"):
        read_exclusions(_csv(tmp_path, "from,to\na,b\n", "h.csv"), cols)
    with pytest.raises(ValueError, match="not valid JSON"):
        read_exclusions(_csv(tmp_path, "{", "bad.json"), cols)
    with pytest.raises(ValueError, match="not a variable"):
        discover(_good_csv(tmp_path), out=tmp_path / "o", config=TINY, exclude=[("a", "nope")], log=None)


# ------------------------------------------------------------------------------------------------ the CLI


def test_cli_round_and_correction(tmp_path, capsys):
    out, out2 = tmp_path / "d", tmp_path / "d2"
    common = ["--seeds", "0", "--steps", "60", "--fine-tune-steps", "20", "--look-back", "3", "--layers", "1",
              "--d-model", "16", "--score-windows", "32"]
    assert main(["discover", "--generate", "confounder", "--n-vars", "3", "--length", "500", "--out", str(out),
                 *common]) == 0
    text = capsys.readouterr().out
    assert "cause -> effect" in text and "against the true graph" in text and "--resume-from" in text
    excl = _csv(tmp_path, "cause,effect\nx,y\n", "excluded.csv")
    assert main(["discover", "--exclude", str(excl), "--resume-from", str(out), "--out", str(out2), *common]) == 0
    text = capsys.readouterr().out
    assert "since the previous round" in text
    assert json.loads((out2 / "graph.json").read_text())["exclude"] == [["x", "y"]]
    # the same --out again: refused, nothing lost
    assert main(["discover", "--generate", "var", "--out", str(out), *common]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("args,match", [
    (["--look-back", "0", "--generate", "var"], "--look-back must be >= 1"),
    (["--retrain", "--generate", "var"], "--retrain needs --resume-from"),
    ([], "name the data"),
    (["--generate", "nope"], "kind"),
])
def test_cli_bad_arguments(tmp_path, capsys, args, match):
    assert main(["discover", "--out", str(tmp_path / "o"), *args]) == 2
    assert match in capsys.readouterr().err


def test_the_task_trains_and_evaluates_through_the_generic_cli(tmp_path, capsys):
    """The forecaster is an ordinary task: attnlab train / eval run it from the ``discovery`` preset."""
    csv = _good_csv(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--task", "discovery", "--set", f"data.source={csv}", "--set", "data.look_back=2",
                 "--set", "options.exclude=[['a', 'b']]", "--steps", "6", "--set", "eval_interval=3",
                 "--set", "progress=false", "--out", str(out)]) == 0
    assert "test mse" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(out), "--data", str(csv)]) == 0
    assert "test mse" in capsys.readouterr().out
    assert main(["train", "--task", "discovery", "--steps", "2", "--out", str(tmp_path / "none")]) == 2
    assert "data.source is empty" in capsys.readouterr().err


def test_fine_tuning_starts_from_the_previous_weights_and_refuses_another_model(tmp_path):
    import torch

    from attnlab.config import ConfigError
    from attnlab.data.timeseries import TimeSeries
    from attnlab.tasks.causal_discovery import DiscoveryDataConfig, DiscoveryForecasting, DiscoveryOptions
    from attnlab.train.loading import load_required_checkpoints, load_trained

    system = generate("var", n_vars=4, length=600, seed=5, max_lag=2)
    discover(system, out=tmp_path / "r0", config=TINY, log=None)
    prev = tmp_path / "r0" / "seeds" / "seed0"
    series = TimeSeries(name="s", dates=None, values=system.data, columns=system.columns)

    def task(model, look_back=3, cols=None):
        s = series if cols is None else TimeSeries(name="s", dates=None, values=system.data, columns=cols)
        return DiscoveryForecasting(model, DiscoveryDataConfig(look_back=look_back), seed=0, series=s,
                                    options=DiscoveryOptions(init_from=str(prev), exclude=[["x1", "x0"]]))

    t = task(TINY.model.__class__(**{**vars(TINY.model), "masking": "propagate"}))  # masking may differ
    load_required_checkpoints(t)
    before = t.build_model().state_dict()
    after = load_trained(prev, device="cpu").model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    for bad, match in ((task(TINY.model, look_back=4), "another architecture or look_back"),
                       (task(TINY.model.__class__(**{**vars(TINY.model), "d_model": 8})), "another architecture"),
                       (task(TINY.model, cols=("a", "b", "c", "d")), "trained on the columns")):
        with pytest.raises(ConfigError, match=match):
            load_required_checkpoints(bad)


def test_refine_refuses_another_series_before_writing(tmp_path):
    system = generate("var", n_vars=4, length=600, seed=6, max_lag=2)
    first = discover(system, out=tmp_path / "r0", config=TINY, log=None)
    other = _good_csv(tmp_path)
    with pytest.raises(ValueError, match="previous round's graph is over x0, x1, x2, x3"):
        refine(first, exclude=[], series=other, out=tmp_path / "r1", log=None)
    assert not (tmp_path / "r1").exists()
    with pytest.raises(ValueError, match="use mode='retrain'"):
        refine(first, exclude=[], out=tmp_path / "r1", config=TINY.__class__(**{**vars(TINY), "look_back": 4}),
               log=None)
    assert not (tmp_path / "r1").exists()


def test_a_seed_without_its_result_resumes_from_its_checkpoint(tmp_path):
    """A round stopped after seed 1's last checkpoint but before its result: the trainer resumes that seed from the
    checkpoint (it is not trained again) and the round completes."""
    system = generate("var", n_vars=4, length=600, seed=7, max_lag=2)
    out = tmp_path / "d"
    cfg = TINY.__class__(**{**vars(TINY), "steps": 40})
    discover(system, out=out, config=cfg, log=None)
    run = out / "seeds" / "seed1"
    (run / "result.json").unlink()
    (out / "graph.json").unlink()
    r = discover(system, out=out, config=cfg, log=None)
    res = json.loads((run / "result.json").read_text())
    assert res["steps"] == 40 and res["resumed_from"] == 40 and len(r.test_mse) == 2


def test_cli_correction_keeps_the_previous_settings_unless_given(tmp_path, capsys):
    out = tmp_path / "d"
    common = ["--seeds", "0", "--fine-tune-steps", "10", "--layers", "1", "--d-model", "16", "--score-windows", "16"]
    assert main(["discover", "--generate", "var", "--n-vars", "4", "--length", "400", "--look-back", "3", "--steps",
                 "30", "--out", str(out), *common]) == 0
    excl = _csv(tmp_path, "cause,effect\nx1,x0\n", "excluded.csv")
    assert main(["discover", "--exclude", str(excl), "--resume-from", str(out), "--out", str(tmp_path / "d2"),
                 "--masking", "propagate", "--delta", "0.9"]) == 0
    cfg = json.loads((tmp_path / "d2" / "graph.json").read_text())["config"]
    assert cfg["model"]["masking"] == "propagate" and cfg["threshold"]["delta"] == 0.9
    assert cfg["look_back"] == 3 and cfg["steps"] == 30 and cfg["seeds"] == [0] and cfg["model"]["d_model"] == 16
    assert main(["discover", "--exclude", str(excl), "--resume-from", str(out), "--out", str(tmp_path / "d3"),
                 "--look-back", "4"]) == 2
    assert "--retrain" in capsys.readouterr().err


def test_exclusion_errors_name_the_line_and_names_with_commas_round_trip(tmp_path):
    from attnlab.discovery import exclusions_csv

    cols = ["a,1", "b", "c"]
    with pytest.raises(ValueError, match=r"e.csv, line 4: the cause 'z' is not a variable"):
        read_exclusions(_csv(tmp_path, "cause,effect\nb,c\n\nz,b\n", "e.csv"), cols)
    p = _csv(tmp_path, exclusions_csv([["a,1", "b"], ["c", "a,1"]]), "q.csv")
    assert read_exclusions(p, cols) == [["a,1", "b"], ["c", "a,1"]]
