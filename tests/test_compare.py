"""`evsys compare BASE CAND` and MCP `compare_runs`: runs paired task by task, with a verdict.

The runs are hand-made run directories (the run-dir contract, written with the rundir
helpers) whose predictions are known, so every p-value and verdict is hand-computed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evsys_core import stats
from evsys_core.cli import main
from evsys_core.history.index import open_index
from history_fixtures import config_yaml, make_run
from test_mcp_server import err, ok  # the in-process MCP client helpers
from evsys_mcp.server import build_server


def eval_run(out: Path, name: str, passed: int, n: int = 300, step: int = 4, lr: float = 1e-4,
             early: int | None = None) -> Path:
    """A run evaluated at step 2 (`early` passes) and `step` (`passed` passes) on n tasks."""
    rows, preds = [], []
    for s, k in ((2, early if early is not None else passed), (step, passed)):
        rows.append({"step": s, "split": "train", "metrics": {"train/mean_loss": 1.0 / s + lr}})
        rows.append({"step": s, "split": "val", "metrics": stats.with_uncertainty(
            "val/val/", {"pass@1": [float(i < k) for i in range(n)]})})
        preds += [{"step": s, "task_id": f"t{i:03d}", "instruction": "q", "sample": 0,
                   "answer": "a", "score": float(i < k), "passed": i < k, "reason": None}
                  for i in range(n)]
    return make_run(out, name, rows=rows, config=config_yaml(lr=lr), predictions={"val": preds})


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cmp")
    eval_run(root / "outputs", "half", 150, early=150)
    eval_run(root / "outputs", "three-quarters", 225, lr=3e-4, early=151)
    eval_run(root / "outputs", "eight", 8, n=11)
    eval_run(root / "outputs", "nine", 9, n=11, lr=3e-4)
    return root


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, errs = capsys.readouterr()
    return code, out, errs


def pass1(info: dict) -> dict:
    return next(m for m in info["metrics"] if m["key"] == "val/val/pass@1")


def test_half_to_three_quarters_is_better_and_swapped_is_worse(ws, capsys):
    code, out, _ = cli(capsys, "compare", "half", "three-quarters", "--json", "--workspace", str(ws))
    assert code == 0
    info = json.loads(out)
    m = pass1(info)
    assert (m["base"], m["cand"], m["delta"], m["n_tasks"]) == (0.5, 0.75, 0.25, 300)
    assert m["test"] == "mcnemar exact" and m["p_value"] == pytest.approx(2 / 2 ** 75)
    assert m["verdict"] == "better" and m["ci_low"] > 0 and (m["base_step"], m["cand_step"]) == (4, 4)
    assert m["shown"]["base"] == "0.500 ± 0.057 (95% CI, 300 tasks)"   # 1.96 * sqrt(.25/299)
    assert all(not k.endswith(("_stderr", "/n_tasks")) for k in (x["key"] for x in info["metrics"]))
    loss = next(x for x in info["metrics"] if x["key"] == "train/mean_loss")
    assert loss["verdict"] is None and "no per-task predictions" in loss["note"]
    assert loss["delta"] == pytest.approx(2e-4)
    assert info["alpha"] == 0.05
    swapped = json.loads(cli(capsys, "compare", "three-quarters", "half", "--json",
                             "--workspace", str(ws))[1])
    assert pass1(swapped)["verdict"] == "worse" and pass1(swapped)["delta"] == -0.25


def test_one_task_of_eleven_is_inconclusive_and_the_table_says_why(ws, capsys):
    code, out, _ = cli(capsys, "compare", "eight", "nine", "--workspace", str(ws))
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("val/val/pass@1"))
    assert "0.727 ± 0.276 (95% CI, 11 tasks)" in line and "0.818 ±" in line
    assert line.rstrip().endswith("inconclusive") and " 1 " in line   # p = 1
    loss = next(x for x in out.splitlines() if x.startswith("train/mean_loss"))
    assert "no per-task predictions" in loss
    assert "delta only, no verdict" in out


def test_step_and_metric_select_what_is_paired(ws, capsys):
    info = json.loads(cli(capsys, "compare", "half", "three-quarters", "--step", "2",
                          "--metric", "val/val/pass@1", "--json", "--workspace", str(ws))[1])
    assert [m["key"] for m in info["metrics"]] == ["val/val/pass@1"]
    m = pass1(info)   # 150 vs 151 passes at step 2: one discordant task
    assert (m["base_step"], m["cand_step"], m["p_value"], m["verdict"]) == (2, 2, 1.0, "inconclusive")
    code, _, errs = cli(capsys, "compare", "half", "three-quarters", "--metric", "val/val/pass@2",
                        "--workspace", str(ws))
    assert code != 0 and "did you mean val/val/pass@1" in errs
    info = json.loads(cli(capsys, "compare", "half", "three-quarters", "--step", "3", "--json",
                          "--workspace", str(ws))[1])
    assert pass1(info)["verdict"] is None and "not logged at step 3" in pass1(info)["note"]
    code, _, errs = cli(capsys, "compare", "half", "half", "--workspace", str(ws))
    assert code != 0 and "same run" in errs


def test_runs_on_different_tasks_get_no_verdict(ws, capsys):
    info = open_index(ws).compare("half", "eight")
    m = pass1(info)   # t000..t010 are shared: 11 paired tasks, 289 left out
    assert m["n_tasks"] == 11 and m["base_only"] == 289 and m["cand_only"] == 0


def test_mcp_compare_runs_answers_the_same(ws, capsys):
    srv = build_server(ws, poll_s=0.2, cancel_grace_s=2.0)
    out = ok(srv, "compare_runs", runs=["half", "three-quarters"], metric="val/val/pass@1")
    cli_info = open_index(ws).compare("half", "three-quarters", metric="val/val/pass@1")
    got, want = out["metrics"][0], pass1(cli_info)
    assert got["verdict"] == want["verdict"] == "better"
    assert {k: got[k] for k in ("delta", "p_value", "ci_low", "n_tasks", "test")} == \
        {k: want[k] for k in ("delta", "p_value", "ci_low", "n_tasks", "test")}
    assert [r["name"] for r in out["runs"]] == ["half", "three-quarters"]
    assert "at most 2 items" in err(srv, "compare_runs", runs=["half", "eight", "nine"])


def test_show_runs_and_best_treat_stderr_and_n_tasks_as_companions(ws, capsys):
    code, out, _ = cli(capsys, "show", "nine", "--workspace", str(ws))
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("val/val/pass@1"))
    assert "0.818 ± 0.239 (95% CI, 11 tasks)" in line
    assert "pass@1_stderr" not in out and "val/val/n_tasks" not in out
    shown = json.loads(cli(capsys, "show", "nine", "--json", "--workspace", str(ws))[1])
    keys = {m["key"]: m for m in shown["metrics"]}
    assert keys["val/val/n_tasks"]["final"] == 11 and keys["val/val/n_tasks"]["shown"] is None
    assert keys["val/val/pass@1_stderr"]["final"] == pytest.approx(
        stats.mean_stderr([1.0] * 9 + [0.0] * 2)[1])
    header = cli(capsys, "runs", "--workspace", str(ws))[1].splitlines()[0].split()
    assert "val/val/pass@1" in header and not any(h.endswith(("_stderr", "n_tasks")) for h in header)
    best = json.loads(cli(capsys, "best", "val/val/pass@1", "--json", "--workspace", str(ws))[1])
    assert [r["name"] for r in best] == ["nine", "three-quarters", "eight", "half"]  # by pass@1
