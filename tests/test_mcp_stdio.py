"""evsys-mcp as a real subprocess, driven over stdio by the SDK's client.

The slow test is the whole research loop on the real default model:
write_config → validate_config → launch_run → wait_for_run → read_summary → get_metrics →
score_benchmark → query_runs → record_conclusion → list_runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from evsys_mcp.server import TOOLS, WRITE_TOOLS

EVSYS_MCP = Path(sys.executable).parent / "evsys-mcp"

CONFIG = textwrap.dedent("""\
    model: { name: SmolLM2-135M-Instruct }
    backend: { kind: local, device: cpu }
    data: { path: data/train.jsonl }
    algorithm:
      kind: sdft
      params: { learning_rate: 1.0e-4, max_steps: 1, batch_size: 1, lora_rank: 1, topk: 5, max_tokens: 8 }
    metadata:
      benchmark:
        - { name: val, path: bench/val, run_every: 1, metrics: [pass@1], split: val, max_tokens: 8 }
    callbacks:
      - { kind: local_logger, params: { output_dir: outputs, run_name: stdio_loop } }
    """)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    w = tmp_path / "ws"
    (w / "data").mkdir(parents=True)
    (w / "bench" / "val").mkdir(parents=True)
    rows = [{"inputs": {"question": f"What is the capital of {c}? Answer in one word."}, "expected": a}
            for c, a in [("France", "Paris"), ("Germany", "Berlin")]]
    (w / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = [{"task_id": c.lower(), "instruction": f"What is the capital of {c}? Answer in one word.",
              "verifier": {"kind": "in_process", "fn_name": "contains", "expected": a}}
             for c, a in [("France", "Paris"), ("Italy", "Rome")]]
    (w / "bench" / "val" / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return w


def params(ws: Path, *extra: str) -> StdioServerParameters:
    assert EVSYS_MCP.exists(), f"the evsys-mcp console script is not installed in {EVSYS_MCP.parent}"
    # the whole environment (PYTHONPATH included), so that the server runs this checkout's code
    return StdioServerParameters(command=str(EVSYS_MCP), args=["--workspace", str(ws), *extra], cwd=str(ws),
                                 env=dict(os.environ))


def over_stdio(server: StdioServerParameters, errlog: Path, fn):
    async def main():
        with errlog.open("w") as err:
            async with Client(stdio_client(server, errlog=err), read_timeout_seconds=900) as client:
                return await fn(client)
    return anyio.run(main)


def test_stdio_tools_list_and_calls(ws, tmp_path):
    errlog = tmp_path / "stderr.log"

    async def flow(c):
        t0 = time.monotonic()
        tools = await c.list_tools()
        listed_in = time.monotonic() - t0
        write = await c.call_tool("write_config", {"path": "first.yaml", "yaml_text": CONFIG})
        bad = await c.call_tool("validate_config", {"path": "../../etc/passwd.yaml"})
        valid = await c.call_tool("validate_config", {"path": "first.yaml", "deep": True})
        query = await c.call_tool("query_runs", {"sql": "SELECT count(*) AS n FROM runs"})
        runs = await c.call_tool("list_runs", {})
        return tools, listed_in, write, bad, valid, query, runs

    t0 = time.monotonic()
    tools, listed_in, write, bad, valid, query, runs = over_stdio(params(ws), errlog, flow)
    assert time.monotonic() - t0 < 30
    assert listed_in < 1.0  # tools/list itself answers at once
    assert len(tools.tools) == len(TOOLS) == 18
    assert not write.is_error and write.structured_content["path"] == "experiments/first.yaml"
    assert (ws / "experiments" / "first.yaml").read_text() == CONFIG
    assert bad.is_error and "'..'" in bad.content[0].text
    assert not valid.is_error and valid.structured_content["ok"] is True, valid.structured_content
    assert not query.is_error and query.structured_content["rows"] == [[0]]
    assert runs.structured_content["runs"] == []
    assert "serving workspace" in errlog.read_text()  # logs go to stderr, never stdout


def test_stdio_read_only(ws, tmp_path):
    tools = over_stdio(params(ws, "--read-only"), tmp_path / "stderr.log", lambda c: c.list_tools())
    names = {t.name for t in tools.tools}
    assert names and not names & WRITE_TOOLS


def test_refuses_to_start_on_a_missing_workspace(tmp_path):
    for cmd in ([str(EVSYS_MCP)], [sys.executable, "-m", "evsys_mcp"]):
        out = subprocess.run([*cmd, "--workspace", str(tmp_path / "missing")], capture_output=True, text=True,
                             timeout=60, stdin=subprocess.DEVNULL)
        assert out.returncode == 2
        assert "does not exist" in out.stderr and out.stdout == ""


@pytest.mark.slow
def test_full_research_loop_on_the_real_model(ws, tmp_path):
    errlog = tmp_path / "stderr.log"
    progress: list[str] = []

    async def on_progress(done, total, message):
        progress.append(message or "")

    async def flow(c):
        async def tool(name, **args):
            r = await c.call_tool(name, args, progress_callback=on_progress if name == "wait_for_run" else None)
            assert not r.is_error, f"{name}: {r.content[0].text}"
            return r.structured_content

        out = {"write": await tool("write_config", path="loop.yaml", yaml_text=CONFIG)}
        out["validate"] = await tool("validate_config", path="loop.yaml", deep=True)
        out["launch"] = await tool("launch_run", config_path="loop.yaml")
        run = out["launch"]["run_id"]
        out["wait"] = await tool("wait_for_run", run=run, timeout_s=600)
        if out["wait"]["status"] != "completed":
            out["log"] = await tool("tail_log", run=run)
            return out
        out["summary"] = await tool("read_summary", run=run)
        out["metrics"] = await tool("get_metrics", run=run)
        out["score"] = await tool("score_benchmark", benchmark="bench/val", run=run)
        out["scored"] = await tool("wait_for_run", run=out["score"]["run_id"], timeout_s=600)
        out["scores"] = await tool("list_runs", kind="score")
        out["query"] = await tool("query_runs", sql=(
            "SELECT r.name, m.key, m.value FROM runs r JOIN latest_metrics m ON m.run_id = r.run_id "
            f"WHERE r.run_id = '{run}' ORDER BY m.key"))
        out["conclude"] = await tool("record_conclusion", run=run, text="one SDFT step at lr 1e-4 runs end to end")
        out["list"] = await tool("list_runs")
        return out

    out = over_stdio(params(ws), errlog, flow)
    assert out["write"]["written"] and out["validate"]["ok"]
    assert out["wait"]["status"] == "completed", (out["wait"], out.get("log"), errlog.read_text()[-3000:])
    assert out["wait"]["timed_out"] is False and progress
    run_dir = ws / out["launch"]["run_dir"]
    assert (run_dir / "train.log").stat().st_size > 0 and (run_dir / "summary.md").exists()
    assert "Status: completed" in out["summary"]["text"]
    keys = {s["key"] for s in out["metrics"]["series"]}
    assert "val/val/pass@1" in keys and any(k.startswith("train/") for k in keys)
    assert out["score"]["kind"] == "score" and out["score"]["status"] == "running"
    scored = out["scored"]
    assert scored["status"] == "completed" and scored["kind"] == "score", scored
    assert scored["step"] == scored["max_steps"] == 2 and "val/val/pass@1" in scored["final_metrics"]
    assert any("tasks 2/2" in m or "tasks" in m for m in progress)
    assert "val/val/pass@1_stderr" in scored["final_metrics"] and "val/val/pass@1_stderr" in keys
    assert scored["scores"]["val/val/pass@1"].endswith("(95% CI, 2 tasks)")
    assert out["wait"]["scores"]["val/val/pass@1"].endswith("(95% CI, 2 tasks)")
    assert ["stdio_loop", "val/val/pass@1"] in [r[:2] for r in out["query"]["rows"]]
    listed = {r["id"]: r for r in out["list"]["runs"]}
    mine = listed[out["launch"]["run_id"]]
    assert mine["status"] == "completed" and "val/val/pass@1" in mine["metrics"]
    assert "end to end" in mine["conclusion"]
    assert out["score"]["run_id"] not in listed  # a score run is not a training run: not ranked with them
    assert out["score"]["run_id"] in {r["id"] for r in out["scores"]["runs"]}  # but it is indexed
