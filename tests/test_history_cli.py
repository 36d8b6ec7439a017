"""`evsys runs | show | best | compare | query | plot | conclude` on a fixture workspace,
run in-process through evsys_core.cli.main, plain output and --json."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from evsys_core.cli import main
from history_fixtures import age, config_yaml, dead_pid, make_run, train_rows

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ws")
    out = root / "outputs"
    make_run(out, "sdft-a", rows=train_rows(6, skill=0.5), config=config_yaml(lr=1e-4),
             predictions={"val": [{"step": 6, "task_id": "t1", "answer": "Paris", "score": 1.0,
                                   "passed": True}]})
    make_run(out, "sdft-b", rows=train_rows(6, skill=0.8), config=config_yaml(lr=3e-4))
    make_run(out, "sft-c", status="running", pid=dead_pid(), algorithm="sft",
             rows=train_rows(2, val_key="val/math/pass@4"))
    age(root)
    return root


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv: str):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_runs_table_and_json(ws: Path, capsys) -> None:
    code, out, _ = run(capsys, "runs", "--workspace", str(ws))
    assert code == 0
    lines = out.splitlines()
    header = lines[0].split()
    assert header[:5] == ["name", "status", "algorithm", "model", "steps"]
    assert "val/val/pass@1" in header and "val/math/pass@4" in header and header[-1] == "age"
    body = {ln.split()[0]: ln for ln in lines[1:]}
    assert set(body) == {"sdft-a", "sdft-b", "sft-c"}
    assert "interrupted" in body["sft-c"] and "completed" in body["sdft-b"]
    assert "6/10" in body["sdft-a"] and "0.48" in body["sdft-b"]
    data = run_json(capsys, "runs", "--workspace", str(ws))
    assert {r["name"]: r["metrics"] for r in data} == {
        "sdft-a": {"val/val/pass@1": 0.3}, "sdft-b": {"val/val/pass@1": 0.48},
        "sft-c": {"val/math/pass@4": 0.1}}
    assert all(isinstance(r["age_s"], float) for r in data)


def test_runs_where_sort_limit(ws: Path, capsys) -> None:
    data = run_json(capsys, "runs", "--workspace", str(ws), "--sort", "val/val/pass@1",
                    "--limit", "2")
    assert [r["name"] for r in data] == ["sdft-b", "sdft-a"]
    data = run_json(capsys, "runs", "--workspace", str(ws), "--where",
                    "algorithm = 'sft' or \"val/val/pass@1\" > 0.4")
    assert sorted(r["name"] for r in data) == ["sdft-b", "sft-c"]
    code, _, err = run(capsys, "runs", "--workspace", str(ws), "--where", "nonsense >")
    assert code == 1 and "--where" in err


def test_show(ws: Path, capsys) -> None:
    code, out, _ = run(capsys, "show", "sdft-a", "--workspace", str(ws))
    assert code == 0
    assert out.startswith("sdft-a  (id ")
    for section in ("config", "metrics", "predictions", "files"):
        assert f"\n{section}" in out
    assert "algorithm.params.learning_rate  0.0001" in out
    data = run_json(capsys, "show", "sdft-a", "--workspace", str(ws))
    assert set(data) == {"run", "config", "metrics", "predictions", "conclusions", "paths"}
    assert data["run"]["status"] == "completed"
    assert data["config"]["algorithm"]["params"]["learning_rate"] == 1e-4
    assert {m["key"]: m["final"] for m in data["metrics"]}["val/val/pass@1"] == 0.3
    assert data["paths"]["metrics"].endswith("outputs/sdft-a/metrics.jsonl")


def test_best(ws: Path, capsys) -> None:
    code, out, _ = run(capsys, "best", "val/val/pass@1", "--workspace", str(ws))
    assert code == 0
    rows = out.splitlines()[1:]
    assert rows[0].split()[:3] == ["1", "sdft-b", "0.48"] and rows[1].split()[1] == "sdft-a"
    data = run_json(capsys, "best", "train/mean_loss", "--min", "--workspace", str(ws),
                    "--where", "algorithm = 'sdft'", "--limit", "1")
    assert len(data) == 1 and data[0]["name"] in ("sdft-a", "sdft-b")  # equal losses
    assert data[0]["value"] == pytest.approx(1 / 6) and data[0]["step"] == 6
    code, _, err = run(capsys, "best", "val/val/pass@9", "--workspace", str(ws))
    assert code == 1 and "did you mean val/val/pass@1" in err


def test_compare(ws: Path, capsys) -> None:
    code, out, _ = run(capsys, "compare", "sdft-a", "sdft-b", "--workspace", str(ws))
    assert code == 0
    assert "config differences" in out and "algorithm.params.learning_rate" in out
    line = next(x for x in out.splitlines() if x.startswith("val/val/pass@1"))
    assert line.split()[1:4] == ["0.3", "0.48", "+0.18"] and "no per-task predictions" in line
    data = run_json(capsys, "compare", "sdft-a", "sdft-b", "--workspace", str(ws))
    diff = {c["key"]: c["values"] for c in data["config"]}
    assert diff == {"algorithm.params.learning_rate": [1e-4, 3e-4]}
    pass1 = next(m for m in data["metrics"] if m["key"] == "val/val/pass@1")
    assert (pass1["base"], pass1["cand"]) == (0.3, 0.48) and pass1["delta"] == pytest.approx(0.18)
    assert pass1["verdict"] is None  # sdft-b has no predictions/val.jsonl: delta, no verdict


def test_query_table_csv_json_and_refusal(ws: Path, capsys) -> None:
    sql = ("select name, value from runs join latest_metrics using (run_id) "
           "where key = 'val/val/pass@1' order by value desc")
    code, out, _ = run(capsys, "query", sql, "--workspace", str(ws))
    assert code == 0 and out.splitlines()[0].split() == ["name", "value"]
    assert out.splitlines()[1].split() == ["sdft-b", "0.48"]
    code, out, _ = run(capsys, "query", sql, "--csv", "--workspace", str(ws))
    assert list(csv.reader(io.StringIO(out))) == [["name", "value"], ["sdft-b", "0.48"],
                                                  ["sdft-a", "0.3"]]
    data = run_json(capsys, "query", sql, "--workspace", str(ws))
    assert data == {"columns": ["name", "value"], "rows": [["sdft-b", 0.48], ["sdft-a", 0.3]],
                    "truncated": False}
    code, out, err = run(capsys, "query", "select * from metrics", "--max-rows", "2",
                         "--json", "--workspace", str(ws))
    assert code == 0 and json.loads(out)["truncated"] and "--max-rows 0" in err
    code, out, err = run(capsys, "query", "delete from runs", "--workspace", str(ws))
    assert code == 1 and out == "" and "read-only" in err
    code, out, err = run(capsys, "query", "select * from read_csv('/etc/passwd')",
                         "--workspace", str(ws))
    assert code == 1 and "root:" not in out + err and "refused" in err
    assert run_json(capsys, "query", "select count(*) as n from runs",
                    "--workspace", str(ws))["rows"] == [[3]]


def test_plot(ws: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "curves.png"
    code, out, _ = run(capsys, "plot", "sdft-a", "sdft-b", "--metric", "val/val/pass@1",
                       "-o", str(target), "--workspace", str(ws))
    assert code == 0 and out.strip() == f"wrote {target}"
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = run_json(capsys, "plot", "sdft-a", "--metric", "train/mean_loss",
                    "--metric", "val/val/pass@1", "-o", str(tmp_path / "two.png"),
                    "--max-points", "3", "--workspace", str(ws))
    assert [(s["metric"], len(s["points"])) for s in data["series"]] == [
        ("train/mean_loss", 3), ("val/val/pass@1", 3)]
    code, _, err = run(capsys, "plot", "sdft-a", "--metric", "nope", "-o",
                       str(tmp_path / "x.png"), "--workspace", str(ws))
    assert code == 1 and "has no metric 'nope'" in err


def test_conclude_then_show(tmp_path: Path, capsys) -> None:
    d = make_run(tmp_path / "outputs", "r1", rows=train_rows(2))
    age(tmp_path)
    code, out, _ = run(capsys, "conclude", "r1", "lr 1e-4 is too low", "--author", "claude",
                       "--workspace", str(tmp_path))
    assert code == 0 and out.strip() == f"recorded in {d / 'conclusion.md'}"
    assert " — claude\n\nlr 1e-4 is too low\n\n" in (d / "conclusion.md").read_text()
    data = run_json(capsys, "show", "r1", "--workspace", str(tmp_path))
    assert [(c["author"], c["text"]) for c in data["conclusions"]] == [
        ("claude", "lr 1e-4 is too low")]
    code, out, _ = run(capsys, "show", "r1", "--workspace", str(tmp_path))
    assert "conclusions" in out and "lr 1e-4 is too low" in out
    data = run_json(capsys, "conclude", "r1", "second", "--workspace", str(tmp_path))
    assert data["author"] == "human" and data["text"] == "second"
    code, _, err = run(capsys, "conclude", "nope", "text", "--workspace", str(tmp_path))
    assert code == 1 and "no run matches 'nope'" in err


def test_errors_name_the_problem(ws: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, "show", "sdft", "--workspace", str(ws))
    assert code == 1 and "matches 2 runs" in err and "sdft-a" in err and "sdft-b" in err
    code, _, err = run(capsys, "show", "sdft-x", "--workspace", str(ws))
    assert code == 1 and "close names" in err
    code, _, err = run(capsys, "runs", "--workspace", str(tmp_path / "absent"))
    assert code == 2 and "not a directory" in err
    code, _, err = run(capsys, "query", "select 1", "--csv", "--json", "--workspace", str(ws))
    assert code == 2


def test_empty_workspace(tmp_path: Path, capsys) -> None:
    code, out, _ = run(capsys, "runs", "--workspace", str(tmp_path))
    assert code == 0 and out.startswith("no runs under")
    assert run_json(capsys, "runs", "--workspace", str(tmp_path)) == []


def test_history_modules_import_nothing_heavy() -> None:
    code = ("import sys; import evsys_core.history.cli, evsys_core.history.index; "
            "heavy = [m for m in ('matplotlib', 'torch', 'transformers', 'tinker', 'yaml', 'rich') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"
