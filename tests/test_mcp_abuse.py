"""Abuse of the MCP server beyond tests/test_mcp_server.py: every path argument of every tool
against every way out of the workspace, outputs bounded however large a run's files are, and
thousands of calls without leaking file descriptors or threads.

Covered elsewhere, not repeated here: SQL refusals through query_runs and list_runs(where)
(test_mcp_server.py), the index's read-only connection refusing on its own
(test_history.py::test_reader_connection_refuses_on_its_own), hypothesis fuzzing of every
tool (test_mcp_server.py::test_fuzzed_arguments_get_a_result_or_a_tool_error).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from evsys_core import rundir
from evsys_mcp.server import build_server
from test_mcp_server import CONFIG, make_run

SECRET = "SECRET-OUTSIDE-THE-WORKSPACE"


def tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    """A workspace with one real run, and outside it a config, a finished run, a benchmark and
    a model directory, each also reachable through a symlink planted inside the workspace."""
    ws = tmp_path / "ws"
    for d in ("experiments", "bench/val", "data"):
        (ws / d).mkdir(parents=True)
    (ws / "data" / "train.jsonl").write_text(json.dumps({"inputs": {"question": "q"}, "expected": "a"}) + "\n")
    (ws / "experiments" / "inside.yaml").write_text(CONFIG.format(lr=1e-4, name="inside"))
    (ws / "bench" / "val" / "tasks.jsonl").write_text(json.dumps({
        "task_id": "t", "instruction": "q", "verifier": {"kind": "in_process", "fn_name": "contains",
                                                         "expected": "a"}}) + "\n")
    inside = make_run(ws, "inside_run")

    out = tmp_path / "outside"
    out.mkdir()
    (out / "c.yaml").write_text(CONFIG.format(lr=1e-4, name="x") + f"# {SECRET}\n")
    secret_run = make_run(out, "secret_run", summary=f"# {SECRET}\n", log=f"{SECRET}\n")
    (secret_run["dir"] / rundir.CHECKPOINTS / "final").mkdir(parents=True)
    (out / "bench").mkdir()
    (out / "bench" / "tasks.jsonl").write_text((ws / "bench" / "val" / "tasks.jsonl").read_text())
    (out / "model").mkdir()
    (out / "model" / "config.json").write_text(json.dumps({"secret": SECRET}))

    (ws / "experiments" / "escape.yaml").symlink_to(out / "c.yaml")
    (ws / "outputs" / "escape").symlink_to(secret_run["dir"])
    (ws / "bench" / "escape").symlink_to(out / "bench")
    (ws / "escape_model").symlink_to(out / "model")
    return {"ws": ws, "out": out, "outside_run": secret_run["dir"], "inside_run": inside}


# (tool, the path argument, the other arguments, {attack: value})
def _attacks(w: dict[str, Any], kind: str) -> dict[str, Any]:
    out, long_name = w["out"], "a" * 300
    if kind == "config":
        return {"dotdot": "../outside/c.yaml", "absolute": str(out / "c.yaml"),
                "symlink": "experiments/escape.yaml", "bare_symlink": "escape.yaml",
                "nul": "experiments/a\x00.yaml", "long": f"experiments/{long_name}.yaml"}
    if kind == "run":
        return {"dotdot": "../outside/outputs/secret_run", "absolute": str(w["outside_run"]),
                "symlink": "outputs/escape", "symlinked_name": "secret_run",
                "nul": "outputs/a\x00b", "long": f"outputs/{long_name}", "long_bare": long_name}
    if kind == "benchmark":
        return {"dotdot": "../outside/bench", "absolute": str(out / "bench"), "symlink": "bench/escape",
                "nul": "bench/a\x00b", "long": f"bench/{long_name}"}
    return {"dotdot": "../outside/model", "absolute": str(out / "model"), "symlink": "escape_model",
            "nul": "model\x00", "long": long_name}


PATH_ARGS = [
    ("validate_config", "path", "config", {}),
    ("write_config", "path", "config", {"yaml_text": CONFIG.format(lr=1e-4, name="w"), "overwrite": True}),
    ("launch_run", "config_path", "config", {}),
    ("read_summary", "run", "run", {}),
    ("get_metrics", "run", "run", {}),
    ("run_status", "run", "run", {}),
    ("wait_for_run", "run", "run", {"timeout_s": 0.2}),
    ("tail_log", "run", "run", {}),
    ("cancel_run", "run", "run", {}),
    ("record_conclusion", "run", "run", {"text": "written through an escape"}),
    ("compare_runs", "runs", "run", {}),
    ("score_benchmark", "run", "run", {"benchmark": "bench/val"}),
    ("score_benchmark", "benchmark", "benchmark", {"model": "SmolLM2-135M-Instruct"}),
    ("score_benchmark", "model", "model", {"benchmark": "bench/val"}),
]
ATTACK_NAMES = ["dotdot", "absolute", "symlink", "nul", "long"]


@pytest.mark.parametrize("tool,arg,kind,extra", PATH_ARGS, ids=[f"{t}.{a}" for t, a, *_ in PATH_ARGS])
def test_every_path_argument_refuses_every_way_out(world, tool, arg, kind, extra):
    ws, out = world["ws"], world["out"]
    outside_before, inside_before = tree(out), tree(ws / "outputs" / "inside_run")
    server = build_server(ws, poll_s=0.05, cancel_grace_s=1)
    attacks = _attacks(world, kind)

    async def go():
        results = {}
        async with Client(server) as c:
            for name, value in attacks.items():
                args = {**extra, arg: [value, "inside_run"] if arg == "runs" else value}
                results[name] = await c.call_tool(tool, args)
            still = await c.call_tool("list_runs", {})
        return results, still

    results, still = anyio.run(go)
    assert set(ATTACK_NAMES) <= set(results)
    for name, r in results.items():
        text = r.content[0].text if r.content else ""
        assert r.is_error, f"{tool}({arg}={attacks[name]!r}) [{name}] was answered: {text[:500]}"
        assert SECRET not in text, (tool, name)
        assert "internal error" not in text, (tool, name, text)
    assert tree(out) == outside_before  # nothing written outside: no conclusion, no score run, no config
    assert tree(ws / "outputs" / "inside_run") == inside_before
    assert not still.is_error  # the server keeps serving
    assert not (ws / "outputs" / "scores").exists() and not (ws / "outputs" / "w").exists()


def test_a_symlinked_model_directory_is_refused_in_configs_too(world):
    """model.name naming a symlink that leads out of the workspace: write_config and launch_run
    refuse it (a plain model name, which is not a path, is fine)."""
    ws = world["ws"]
    server = build_server(ws)
    text = CONFIG.format(lr=1e-4, name="m").replace("SmolLM2-135M-Instruct", "escape_model")

    async def go():
        async with Client(server) as c:
            w = await c.call_tool("write_config", {"path": "m.yaml", "yaml_text": text})
            (ws / "experiments" / "m2.yaml").write_text(text)
            launch = await c.call_tool("launch_run", {"config_path": "m2.yaml"})
            plain = await c.call_tool("write_config", {"path": "ok.yaml", "yaml_text": CONFIG.format(lr=1e-4, name="ok")})
        return w, launch, plain

    w, launch, plain = anyio.run(go)
    assert w.is_error and "model.name = escape_model is a path outside the workspace" in w.content[0].text
    assert launch.is_error and "outside the workspace" in launch.content[0].text
    assert not (ws / "experiments" / "m.yaml").exists() and not (ws / "outputs" / "m").exists()
    assert not plain.is_error


# --- huge outputs -------------------------------------------------------------------------------

def test_huge_run_files_give_bounded_answers(world):
    """A run.json with a 2 MB error and 20 000 final metrics, a metrics row of 5 000 keys, a 2 MB
    summary, a train.log of one 2 MB line: every tool answers in bounded size."""
    ws = world["ws"]
    run = make_run(ws, "huge", status="failed", log="x" * 2_000_000 + "\n")
    info = json.loads((run["dir"] / rundir.RUN_JSON).read_text())
    info.update(error="E" * 2_000_000, final_metrics={f"m{i}": float(i) for i in range(20_000)},
                step="many", pid=[1])  # and fields of the wrong type: run.json is just a file
    rundir.write_json_atomic(run["dir"] / rundir.RUN_JSON, info)
    (run["dir"] / rundir.SUMMARY).write_text("s" * 2_000_000)
    rundir.append_jsonl(run["dir"] / rundir.METRICS, {"step": 4, "split": "val",
                                                      "metrics": {f"k{i}": 1.0 for i in range(5_000)}})
    server = build_server(ws, poll_s=0.05)
    calls = [("run_status", {"run": "huge"}), ("wait_for_run", {"run": "huge", "timeout_s": 1}),
             ("read_summary", {"run": "huge"}), ("tail_log", {"run": "huge", "max_bytes": 40_000}),
             ("list_runs", {}), ("get_metrics", {"run": "huge"}),
             ("compare_runs", {"runs": ["huge", "inside_run"]}),
             ("query_runs", {"sql": "SELECT * FROM metrics", "max_rows": 1000})]

    async def go():
        async with Client(server) as c:
            return [(name, await c.call_tool(name, args)) for name, args in calls]

    answers = anyio.run(go)
    for name, r in answers:
        assert not r.is_error, (name, r.content[0].text[:300])
        size = len(r.content[0].text)
        assert size < 50_000, f"{name} answered {size} characters"
    status = dict(answers)["run_status"].structured_content
    assert len(status["error"]) < 5_000 and "more characters" in status["error"]
    assert status["step"] is None and status["pid"] is None
    for key in ("final_metrics", "latest_metrics"):  # as many as fit their share of the answer
        assert 100 < len(status[key]) and len(json.dumps(status[key])) <= 13_000, key
    assert "get_metrics" in status["note"]
    metrics = dict(answers)["get_metrics"].structured_content
    assert len(metrics["series"]) <= 20 and len(metrics["available_keys"]) <= 100 and "keys=" in metrics["note"]


# --- thousands of calls ----------------------------------------------------------------------

@pytest.mark.slow
def test_thousands_of_calls_leak_no_file_descriptors_or_threads(world):
    """2 000 calls in one session, good and bad: every fourth opens the DuckDB index, the rest
    read run files, configs and logs by path or are refused. Open fds and live threads are the
    same afterwards (within a small slack for pools)."""
    ws = world["ws"]
    server = build_server(ws, poll_s=0.01)
    calls = [
        ("list_runs", {"limit": 3}), ("run_status", {"run": "outputs/inside_run"}),
        ("read_summary", {"run": "outputs/inside_run", "max_bytes": 50}), ("validate_config", {"path": "inside.yaml"}),
        ("query_runs", {"sql": "SELECT count(*) FROM metrics"}), ("tail_log", {"run": "outputs/inside_run"}),
        ("read_summary", {"run": "../escape"}), ("query_runs", {"sql": "DROP TABLE runs"}),
    ]
    bad = 3  # tail_log (the run has no train.log), the '..' path, the DROP
    n = 2000

    async def burst(count: int):
        async with Client(server) as c:
            errors = 0
            for i in range(count):
                name, args = calls[i % len(calls)]
                r = await c.call_tool(name, args)
                errors += r.is_error
            return errors

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    anyio.run(burst, 50)  # warm up: index built, worker threads started
    before_fds, before_threads = fds(), threading.active_count()
    t0 = time.monotonic()
    errors = anyio.run(burst, n)
    took = time.monotonic() - t0
    assert errors == n * bad // len(calls)  # exactly the bad calls failed, and nothing else
    assert fds() - before_fds <= 3, f"{fds() - before_fds} file descriptors leaked over {n} calls"
    assert threading.active_count() - before_threads <= 2
    assert took < 600
