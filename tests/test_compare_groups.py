"""`evsys compare` / `evsys best` and MCP `compare_runs` / `best_runs` on replicate groups: a
group's tasks are pooled over its completed replicates (a task's score is the mean of their
values) and paired with the other side's. The history is hand-made run directories with known
predictions, so each p-value is hand-computed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evsys_core import rundir, stats
from evsys_core.cli import main
from evsys_core.history.index import open_index
from evsys_mcp.server import build_server
from history_fixtures import config_yaml, make_run
from test_mcp_server import err, ok  # the in-process MCP client helpers

N = 40


def replicate(out: Path, group: str, seed: int, passed: int, lr: float, status: str = "completed",
              n: int = N) -> Path:
    """One replicate of group `group` (id g<hex of its name>) that passes tasks t00..t<passed-1>."""
    rows = [{"step": 4, "split": "train", "metrics": {"train/mean_loss": 1.0 + seed / 10}},
            {"step": 4, "split": "val", "metrics": stats.with_uncertainty(
                "val/val/", {"pass@1": [float(i < passed) for i in range(n)]})}]
    preds = [{"step": 4, "task_id": f"t{i:02d}", "instruction": "q", "sample": 0, "answer": "a",
              "score": float(i < passed), "passed": i < passed, "reason": None} for i in range(n)]
    d = make_run(out, f"{group}-s{seed}", status=status, rows=rows, predictions={"val": preds},
                 config=config_yaml(lr=lr).replace("seed: 0", f"seed: {seed}"))
    info = json.loads((d / rundir.RUN_JSON).read_text())
    info.update(group_id="g" + group.encode().hex()[:12], group_name=group)
    rundir.write_json_atomic(d / rundir.RUN_JSON, info)
    return d


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("groups")
    out = root / "outputs"
    for seed in (0, 1, 2):
        replicate(out, "low", seed, 20, lr=1e-4)                   # 0.5 every seed
    for seed, k in ((0, 30), (1, 28), (2, 32)):
        replicate(out, "high", seed, k, lr=3e-4)                   # 0.75 on average
    replicate(out, "high", 3, 0, lr=3e-4, status="failed")         # not pooled: not completed
    make_run(out, "single", rows=[{"step": 4, "split": "val", "metrics": stats.with_uncertainty(
        "val/val/", {"pass@1": [float(i < 21) for i in range(N)]})}], config=config_yaml(lr=1e-4),
        predictions={"val": [{"step": 4, "task_id": f"t{i:02d}", "sample": 0, "score": float(i < 21),
                              "passed": i < 21} for i in range(N)]})
    return root


def cli_json(capsys, *argv: str) -> dict:
    code = main([*argv, "--json"])
    out, errs = capsys.readouterr()
    assert code == 0, errs
    return json.loads(out)


def pass1(info: dict) -> dict:
    return next(m for m in info["metrics"] if m["key"] == "val/val/pass@1")


def test_groups_are_compared_over_every_replicates_tasks(ws, capsys):
    info = cli_json(capsys, "compare", "low", "high", "--workspace", str(ws))
    assert [(r["kind"], r["name"], r["seeds"], r["status"]) for r in info["runs"]] == \
        [("group", "low", [0, 1, 2], "3/3 completed"), ("group", "high", [0, 1, 2], "3/4 completed")]
    m = pass1(info)
    # per task, high - low: t20..t27 +1 (all three seeds pass), t28-29 +2/3, t30-31 +1/3
    assert (m["base_seeds"], m["cand_seeds"], m["n_tasks"], m["base_tasks"]) == (3, 3, N, N)
    assert m["base"] == pytest.approx(0.5) and m["cand"] == pytest.approx(0.75)
    assert m["delta"] == pytest.approx(10 / N)
    assert m["test"] == "sign-flip exact" and m["p_value"] == pytest.approx(2 / 2 ** 12)
    assert m["verdict"] == "better" and m["ci_low"] > 0
    assert m["shown"]["cand"].endswith(f"(95% CI, {N} tasks, 3 seeds)")
    assert "seed" not in {c["key"] for c in info["config"]}   # both sides ran seeds 0, 1, 2
    lr = next(c for c in info["config"] if c["key"] == "algorithm.params.learning_rate")
    assert lr["values"] == [1e-4, 3e-4]
    loss = next(x for x in info["metrics"] if x["key"] == "train/mean_loss")
    assert loss["verdict"] is None and loss["delta"] == pytest.approx(0.0) and loss["cand_seeds"] == 3
    swapped = pass1(cli_json(capsys, "compare", "high", "low", "--workspace", str(ws)))
    assert swapped["verdict"] == "worse" and swapped["p_value"] == m["p_value"]


def test_a_run_against_a_group_and_the_table_names_the_seeds(ws, capsys):
    info = cli_json(capsys, "compare", "single", "low", "--workspace", str(ws))
    assert next(c for c in info["config"] if c["key"] == "seed")["values"] == [0, [0, 1, 2]]
    m = pass1(info)
    # one task (t20) differs, by -1 on every low replicate: p = 1
    assert (m["base_seeds"], m["cand_seeds"], m["delta"], m["p_value"], m["verdict"]) == \
        (1, 3, pytest.approx(-1 / N), 1.0, "inconclusive")
    assert main(["compare", "single", "high", "--workspace", str(ws)]) == 0
    out = capsys.readouterr().out
    assert "seeds" in out and "0,1,2" in out and "group" in out
    line = next(x for x in out.splitlines() if x.startswith("val/val/pass@1"))
    assert "3 seeds" in line and line.rstrip().endswith("better")


def test_a_group_is_not_compared_with_its_own_replicate(ws, capsys):
    assert main(["compare", "low", "low-s1", "--workspace", str(ws)]) != 0
    assert "share 1 run" in capsys.readouterr().err
    assert main(["compare", "low", "low", "--workspace", str(ws)]) != 0
    assert "same run" in capsys.readouterr().err


def test_best_groups_pairs_the_leader_with_each_group(ws, capsys):
    rows = cli_json(capsys, "best", "val/val/pass@1", "--groups", "--workspace", str(ws))
    assert [(r["group_name"], r["seeds"]) for r in rows] == [("high", [0, 1, 2]), ("low", [0, 1, 2])]
    assert rows[0]["vs_top"] is None
    vs = rows[1]["vs_top"]
    assert (vs["verdict"], vs["n_tasks"], vs["base_seeds"], vs["cand_seeds"]) == ("better", N, 3, 3)
    assert vs["delta"] == pytest.approx(10 / N) and vs["p_value"] == pytest.approx(2 / 2 ** 12)
    runs = cli_json(capsys, "best", "val/val/pass@1", "--workspace", str(ws))
    assert runs[0]["name"] == "high-s2" and runs[0]["vs_top"] is None
    second = runs[1]   # high-s0 (30) vs the leader high-s2 (32): two discordant tasks
    assert second["name"] == "high-s0" and second["vs_top"]["p_value"] == pytest.approx(0.5)
    assert second["vs_top"]["verdict"] == "inconclusive"
    page = cli_json(capsys, "best", "val/val/pass@1", "--workspace", str(ws), "--limit", "1")
    assert main(["best", "val/val/pass@1", "--workspace", str(ws)]) == 0
    assert "#1 vs this" in capsys.readouterr().out and len(page) == 1


def test_mcp_compare_runs_and_best_runs_pool_groups_as_the_cli_does(ws):
    srv = build_server(ws, poll_s=0.2, cancel_grace_s=2.0)
    out = ok(srv, "compare_runs", runs=["low", "high"], metric="val/val/pass@1")
    want = pass1(open_index(ws).compare("low", "high", metric="val/val/pass@1"))
    got = out["metrics"][0]
    assert {k: got[k] for k in ("verdict", "delta", "p_value", "n_tasks", "base_seeds", "cand_seeds")} == \
        {k: want[k] for k in ("verdict", "delta", "p_value", "n_tasks", "base_seeds", "cand_seeds")}
    assert [(s["kind"], s["name"], s["seeds"], len(s["run_ids"])) for s in out["sides"]] == \
        [("group", "low", [0, 1, 2], 3), ("group", "high", [0, 1, 2], 3)]
    best = ok(srv, "best_runs", metric="val/val/pass@1", groups=True)
    assert best["groups"] is True and [r["name"] for r in best["runs"]] == ["high", "low"]
    assert best["runs"][1]["vs_top"]["verdict"] == "better" and best["runs"][1]["seeds"] == [0, 1, 2]
    assert best["runs"][0]["ci95_low"] < 0.75 < best["runs"][0]["ci95_high"]
    second_page = ok(srv, "best_runs", metric="val/val/pass@1", offset=1, limit=1)
    assert second_page["runs"][0]["rank"] == 2 and second_page["runs"][0]["vs_top"]["p_value"] == 0.5
    assert "apply to runs only" in err(srv, "best_runs", metric="val/val/pass@1", groups=True, by="best")
