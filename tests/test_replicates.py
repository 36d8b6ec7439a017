"""Replicate groups (`evsys run --seeds`) on the tiny model: reproducibility of one seed, a
three-seed group end to end with its index statistics recomputed from the run files, and the
refusals."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from evsys_core import cli, rundir
from evsys_core.errors import UsageError
from evsys_core.history.groups import t_quantile
from evsys_core.history.index import open_index
from evsys_core.replicates import parse_seeds
from test_runner import make_workspace, run


@pytest.fixture
def one_thread(monkeypatch):
    """EVSYS_NUM_THREADS=1 for the runs of a test; torch's thread count restored afterwards."""
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("EVSYS_NUM_THREADS", "1")
    yield
    torch.set_num_threads(before)


def metric_rows(run_dir: Path) -> list[dict]:
    return list(rundir.read_jsonl(run_dir / rundir.METRICS))


def final_values(run_dir: Path) -> dict[str, float]:
    """Each key's value at its highest step, read from metrics.jsonl."""
    out: dict[str, tuple[int, float]] = {}
    for row in metric_rows(run_dir):
        for k, v in row["metrics"].items():
            if k not in out or row["step"] >= out[k][0]:
                out[k] = (row["step"], v)
    return {k: v for k, (_, v) in out.items()}


def test_same_config_seed_and_threads_reproduce_every_metric_exactly(tmp_path, tiny_model_dir, one_thread):
    ws = make_workspace(tmp_path, tiny_model_dir, "sdft", "topk: 5, max_tokens: 6")
    first, _ = run(ws)
    second, _ = run(ws)
    assert (first.status, second.status) == ("completed", "completed")
    assert first.run_dir != second.run_dir
    a, b = metric_rows(first.run_dir), metric_rows(second.run_dir)
    assert len(a) == len(b) > 3
    assert a == b  # every value, bit for bit (JSON floats round-trip exactly)
    preds = sorted(p.name for p in (first.run_dir / rundir.PREDICTIONS).glob("*.jsonl"))
    for name in preds:
        assert (first.run_dir / rundir.PREDICTIONS / name).read_text() == \
               (second.run_dir / rundir.PREDICTIONS / name).read_text()


def test_three_seed_group_runs_end_to_end_and_its_statistics_match_the_files(tmp_path, tiny_model_dir,
                                                                           one_thread, capsys):
    ws = make_workspace(tmp_path, tiny_model_dir, "sft", "")
    code = cli.main(["run", str(ws / "config.yaml"), "--seeds", "0,1,2", "--workspace", str(ws)])
    out = capsys.readouterr().out
    assert code == 0, out
    dirs = [ws / "outputs" / f"demo-s{s}" for s in (0, 1, 2)]
    infos = [json.loads((d / rundir.RUN_JSON).read_text()) for d in dirs]
    assert [i["status"] for i in infos] == ["completed"] * 3
    group_id = infos[0]["group_id"]
    assert group_id and {i["group_id"] for i in infos} == {group_id}
    assert {i["group_name"] for i in infos} == {"demo"}
    assert f"Group demo ({group_id}): seed 0 completed, seed 1 completed, seed 2 completed" in out
    assert ["seed: 0", "seed: 1", "seed: 2"] == [
        next(ln for ln in (d / "config.yaml").read_text().splitlines() if ln.startswith("seed:"))
        for d in dirs]
    finals = [final_values(d) for d in dirs]
    losses = [f["train/mean_loss"] for f in finals]
    assert len(set(losses)) > 1, "the seeds changed nothing"

    idx = open_index(ws)
    (g,) = idx.groups()
    assert (g["group_id"], g["group_name"], g["n_runs"], g["n_completed"], g["seeds"]) == \
           (group_id, "demo", 3, 3, [0, 1, 2])
    shown = idx.group("demo")
    assert [r["name"] for r in shown["runs"]] == ["demo-s0", "demo-s1", "demo-s2"]
    by_key = {m["key"]: m for m in shown["metrics"]}
    assert set(by_key) == {k for k in finals[0] if not k.endswith("_stderr")}  # companions not averaged
    t2 = 4.302652729911275  # t(0.975, 2 degrees of freedom), from a printed table
    for key, m in by_key.items():
        values = [f[key] for f in finals]
        mean, sd = statistics.fmean(values), statistics.stdev(values)
        half = t2 * sd / math.sqrt(3)
        assert m["n_runs"] == 3
        assert m["mean"] == pytest.approx(mean, abs=1e-12)
        assert m["sd"] == pytest.approx(sd, abs=1e-12)
        assert m["ci95_low"] == pytest.approx(mean - half, abs=1e-9)
        assert m["ci95_high"] == pytest.approx(mean + half, abs=1e-9)
        assert (m["min_value"], m["max_value"]) == (min(values), max(values))

    # the same figures through the commands
    assert cli.main(["show", "demo", "--workspace", str(ws), "--json"]) == 0
    shown_cli = json.loads(capsys.readouterr().out)
    assert shown_cli["group"]["group_id"] == group_id and len(shown_cli["runs"]) == 3
    assert cli.main(["best", "train/mean_loss", "--min", "--groups", "--workspace", str(ws), "--json"]) == 0
    (best,) = json.loads(capsys.readouterr().out)
    assert best["value"] == pytest.approx(statistics.fmean(losses), abs=1e-12)
    assert cli.main(["runs", "--groups", "--workspace", str(ws)]) == 0
    table = capsys.readouterr().out
    assert "demo" in table and group_id in table and "0,1,2" in table
    # a run's own name still shows the run, not the group
    assert cli.main(["show", "demo-s1", "--workspace", str(ws), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run"]["name"] == "demo-s1"


def test_group_query_views_are_queryable(tmp_path):
    ws = tmp_path
    for seed, value in ((0, 0.5), (1, 0.75)):
        d = ws / "outputs" / f"x-s{seed}"
        d.mkdir(parents=True)
        (d / rundir.RUN_JSON).write_text(json.dumps({
            "id": f"r{seed}", "name": d.name, "status": "completed", "group_id": "gabc123",
            "group_name": "x", "step": 1}))
        (d / "config.yaml").write_text(f"seed: {seed}\n")
        (d / rundir.METRICS).write_text(json.dumps(
            {"step": 1, "split": "val", "metrics": {"val/val/pass@1": value,
                                                     "val/val/pass@1_stderr": 0.1}}) + "\n")
    q = open_index(ws).query("select key, n_runs, mean, ci95_low, ci95_high from group_metrics")
    ((key, n, mean, lo, hi),) = q.rows  # the _stderr companion is not averaged
    half = 12.706204736174704 * statistics.stdev([0.5, 0.75]) / math.sqrt(2)
    assert (key, n, mean) == ("val/val/pass@1", 2, 0.625)
    assert (lo, hi) == (pytest.approx(0.625 - half), pytest.approx(0.625 + half))


@pytest.mark.parametrize("df,expected", [(1, 12.7062047), (2, 4.3026527), (4, 2.7764451),
                                         (10, 2.2281389), (30, 2.0422725), (99, 1.9842169)])
def test_t_quantile_matches_the_printed_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("text,why", [("", "not a seed"), ("0,,1", "not a seed"), ("-1", "not a seed"),
                                      ("a", "not a seed"), ("1.5", "not a seed"), ("0,1,0", "twice")])
def test_bad_seeds_are_refused_with_the_fix(text, why):
    with pytest.raises(UsageError, match=why):
        parse_seeds(text)


def test_seeds_conflicting_options_are_refused_before_anything_is_written(tmp_path, tiny_model_dir, capsys):
    ws = make_workspace(tmp_path, tiny_model_dir, "sft", "")
    cfg = str(ws / "config.yaml")
    assert cli.main(["run", cfg, "--seeds", "0,1", "--set", "seed=4", "--workspace", str(ws)]) == 2
    assert "--seeds alone" in capsys.readouterr().err
    assert cli.main(["run", cfg, "--seeds", "0,1", "--resume", str(ws), "--workspace", str(ws)]) == 2
    assert "resume each replicate" in capsys.readouterr().err
    assert cli.main(["run", cfg, "--seeds", "0,1", "--set", "algorithm.params.batch_size=-1",
                     "--workspace", str(ws)]) == 1
    assert "batch_size" in capsys.readouterr().err
    assert not (ws / "outputs").exists()


def test_mcp_launch_run_with_seeds_runs_one_group_and_compare_runs_pools_it(tmp_path, tiny_model_dir):
    """launch_run(seeds="0,1,2") through a real MCP client: one process, three replicates one after
    another, one place under the run limit; then compare_runs and best_runs take the group."""
    import shutil

    from evsys_mcp.server import build_server
    from test_mcp_server import err, ok

    shutil.copytree(tiny_model_dir, tmp_path / "model")   # the server runs only models inside the workspace
    ws = make_workspace(tmp_path, tmp_path / "model", "sft", "")
    (ws / "experiments").mkdir()
    (ws / "config.yaml").rename(ws / "experiments" / "demo.yaml")
    srv = build_server(ws, max_concurrent_runs=1, poll_s=0.2)
    assert "twice" in err(srv, "launch_run", config_path="demo.yaml", seeds="0,1,0")
    assert "seeds alone" in err(srv, "launch_run", config_path="demo.yaml", seeds="0,1", overrides=["seed=4"])
    assert "pattern" in err(srv, "launch_run", config_path="demo.yaml", seeds="0;1")
    assert not (ws / "outputs").exists() or not any((ws / "outputs").iterdir())

    out = ok(srv, "launch_run", config_path="demo.yaml", seeds="0,1,2")
    reps = out["replicates"]
    assert [(r["seed"], r["run_name"]) for r in reps] == [(0, "demo-s0"), (1, "demo-s1"), (2, "demo-s2")]
    assert out["run_id"] == reps[0]["run_id"] and out["group_name"] == "demo" and out["group_id"].startswith("g")
    infos = [json.loads((ws / r["run_dir"] / rundir.RUN_JSON).read_text()) for r in reps]
    assert {i["group_id"] for i in infos} == {out["group_id"]} and {i["pid"] for i in infos} == {out["pid"]}
    # the group is one process: it holds the one place, and a second launch is refused
    assert "already running" in err(srv, "launch_run", config_path="demo.yaml")
    waited = ok(srv, "wait_for_run", run=reps[-1]["run_id"], timeout_s=600)
    logs = [(ws / r["run_dir"] / rundir.TRAIN_LOG).read_text() for r in reps]
    assert waited["status"] == "completed", logs[0][-3000:] + logs[-1][-3000:]
    assert [ok(srv, "run_status", run=r["run_id"])["status"] for r in reps] == ["completed"] * 3
    for r, log in zip(reps, logs):   # each replicate's progress in its own train.log
        assert f"outputs/{r['run_name']}" in log and "val/val/pass@1" in log, log[-2000:]
    assert ["seed: 0", "seed: 1", "seed: 2"] == [
        next(ln for ln in (ws / r["run_dir"] / "config.yaml").read_text().splitlines() if ln.startswith("seed:"))
        for r in reps]

    single = ok(srv, "launch_run", config_path="demo.yaml", run_name="single")
    assert ok(srv, "wait_for_run", run=single["run_id"], timeout_s=600)["status"] == "completed"
    cmp = ok(srv, "compare_runs", runs=["single", "demo"], metric="val/val/pass@1")
    assert [(s["kind"], s["seeds"]) for s in cmp["sides"]] == [("run", [3]), ("group", [0, 1, 2])]
    m = cmp["metrics"][0]
    assert (m["base_seeds"], m["cand_seeds"], m["n_tasks"]) == (1, 3, 3)
    want = open_index(ws).compare("single", "demo", metric="val/val/pass@1")["metrics"][0]
    assert (m["verdict"], m["p_value"], m["delta"]) == (want["verdict"], want["p_value"], want["delta"])
    finals = [final_values(ws / r["run_dir"])["val/val/pass@1"] for r in reps]
    assert m["cand"] == pytest.approx(statistics.fmean(finals), abs=1e-12)   # same tasks every seed
    best = ok(srv, "best_runs", metric="val/val/pass@1", groups=True)
    assert [(r["name"], r["seeds"]) for r in best["runs"]] == [("demo", [0, 1, 2])]


def test_evsys_launch_seeds_refuses_bad_seeds_before_claiming_anything(tmp_path, tiny_model_dir, capsys):
    ws = make_workspace(tmp_path, tiny_model_dir, "sft", "")
    for seeds, why in (("0,1,0", "twice"), ("x", "not a seed")):
        assert cli.main(["launch", str(ws / "config.yaml"), "--seeds", seeds, "--workspace", str(ws)]) == 2
        err = capsys.readouterr().err
        assert why in err and "nothing was launched" in err
    assert cli.main(["launch", str(ws / "config.yaml"), "--seeds", "0,1", "--set", "seed=2",
                     "--workspace", str(ws)]) == 2
    assert "seeds alone" in capsys.readouterr().err
    assert not (ws / "outputs").exists()


def test_cancelling_a_launched_group_stops_every_replicate_not_yet_run(tmp_path, tiny_model_dir):
    from evsys_core.jobs.engine import Engine

    ws = make_workspace(tmp_path, tiny_model_dir, "sft", "")
    engine = Engine(ws, max_concurrent=1)
    launch = engine.launch_run(ws / "config.yaml", seeds="0,1,2")
    assert [r.seed for r in launch.replicates] == [0, 1, 2]
    assert len({r.pid for r in launch.replicates}) == 1
    out = engine.cancel(launch.run_dir, grace_s=30)
    assert out["was_running"] and not rundir.pid_alive(launch.pid)
    statuses = [engine.status(r.run_dir) for r in launch.replicates]
    assert statuses[0]["status"] in ("interrupted", "failed")
    for st in statuses[1:]:   # their turn never came: said so, not "failed"
        assert st["status"] == "interrupted" and "before this replicate's turn" in st["error"]
