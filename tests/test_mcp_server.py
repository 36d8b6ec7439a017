"""evsys-mcp in-process: the SDK's Client against build_server(tmp workspace).

Every tool on success and on each class of bad input. Read tools run over hand-made run
directories written with the rundir helpers; launch and cancel use real processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from evsys_core import rundir
from evsys_mcp.server import TOOLS, WRITE_TOOLS, build_server

ALL_TOOLS = {
    "list_runs", "best_runs", "read_summary", "get_metrics", "plot_metrics", "write_config", "validate_config",
    "launch_run", "run_status", "wait_for_run", "tail_log", "cancel_run", "score_benchmark", "record_conclusion",
    "query_runs", "compare_runs", "list_configs", "list_benchmarks",
}

CONFIG = textwrap.dedent("""\
    model: {{ name: SmolLM2-135M-Instruct }}
    backend: {{ kind: local }}
    data: {{ path: data/train.jsonl }}
    algorithm:
      kind: sdft
      params: {{ learning_rate: {lr}, max_steps: 1, batch_size: 1, lora_rank: 1, topk: 5 }}
    metadata:
      benchmark:
        - {{ name: val, path: bench/val, metrics: [pass@1], split: val }}
    callbacks:
      - {{ kind: local_logger, params: {{ output_dir: outputs, run_name: {name} }} }}
    """)


# --- a workspace with hand-made runs ---------------------------------------------------------

def make_run(ws: Path, name: str, *, status: str = "completed", lr: float = 1e-4, pid: int | None = None,
             steps: int = 3, summary: str | None = None, log: str | None = None) -> dict[str, Any]:
    """A hand-made run directory; `pid` (with its real start time) stands for its process."""
    d = ws / "outputs" / name
    (d / rundir.PREDICTIONS).mkdir(parents=True)
    now = time.time()
    info = {
        "id": rundir.new_run_id(), "name": name, "status": status, "created_at": now - 100,
        "started_at": now - 100, "ended_at": None if status == "running" else now - 10,
        "algorithm": "sdft", "model": "SmolLM2-135M-Instruct", "backend": "local",
        "config_hash": "abc", "git_commit": None, "parent_run_id": None,
        **(rundir.owner(pid) if pid else {"pid": 999_999_999, "pid_started": 1}),
        "step": steps, "max_steps": steps, "error": None, "config_path": "experiments/x.yaml",
        "final_metrics": {"train/mean_loss": 0.5 - lr * 1000, "val/val/pass@1": 0.5 + lr * 1000},
    }
    rundir.write_json_atomic(d / rundir.RUN_JSON, info)
    (d / "config.yaml").write_text(CONFIG.format(lr=lr, name=name))
    for step in range(1, steps + 1):
        rundir.append_jsonl(d / rundir.METRICS, {"step": step, "split": "train",
                                                 "metrics": {"train/mean_loss": 1.0 / step}})
        rundir.append_jsonl(d / rundir.METRICS, {"step": step, "split": "val",
                                                 "metrics": {"val/val/pass@1": step / steps}})
        rundir.append_jsonl(d / rundir.PREDICTIONS / "val.jsonl", {
            "step": step, "task_id": "t1", "instruction": "Capital of France?", "sample": 0,
            "answer": "Paris", "score": 1.0, "passed": True, "reason": None})
    if status != "running":
        (d / rundir.SUMMARY).write_text(summary or f"# {name}\n\nStatus: {status}\n\n- val/val/pass@1: 1.0\n")
    if log is not None:
        (d / rundir.TRAIN_LOG).write_text(log)
    return {**info, "dir": d}


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    w = tmp_path / "ws"
    (w / "data").mkdir(parents=True)
    (w / "bench" / "val").mkdir(parents=True)
    (w / "experiments").mkdir()
    rows = [{"inputs": {"question": f"What is the capital of {c}?"}, "expected": a}
            for c, a in [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome")]]
    (w / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = [{"task_id": "fr", "instruction": "What is the capital of France? Answer in one word.",
              "verifier": {"kind": "in_process", "fn_name": "contains", "expected": "Paris"}}]
    (w / "bench" / "val" / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return w


@pytest.fixture
def runs(ws: Path) -> dict[str, dict[str, Any]]:
    return {
        "lr_small": make_run(ws, "sdft_lr_small", lr=1e-4),
        "lr_large": make_run(ws, "sdft_lr_large", lr=3e-4, steps=50,
                             summary="# big\n" + "".join(f"line {i} of a long summary\n" for i in range(2000))),
        "failed": make_run(ws, "rl_broken", status="failed", log="".join(f"log line {i}\n" for i in range(5000))),
    }


@pytest.fixture
def sleeper(ws):
    """A live process that looks like the run `name` (its own session, the run dir in its argv)."""
    procs: list[subprocess.Popen] = []

    def start(name: str, ignore_term: bool = False) -> subprocess.Popen:
        code = ("import signal, time\n"
                + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else "")
                + "time.sleep(120)\n")
        p = subprocess.Popen([sys.executable, "-c", code, "--run-dir", str(ws / "outputs" / name)],
                             start_new_session=True)
        procs.append(p)
        time.sleep(0.3)  # let it install its handler
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


# --- calling the server ---------------------------------------------------------------------

def session(server, fn):
    async def main():
        async with Client(server) as client:
            return await fn(client)
    return anyio.run(main)


def call(server, tool: str, **args):
    return session(server, lambda c: c.call_tool(tool, args))


def ok(server, tool: str, **args) -> dict[str, Any]:
    r = call(server, tool, **args)
    assert not r.is_error, r.content[0].text
    return r.structured_content


def err(server, tool: str, **args) -> str:
    r = call(server, tool, **args)
    assert r.is_error, f"{tool} succeeded: {r.structured_content}"
    return r.content[0].text


@pytest.fixture
def srv(ws: Path):
    return build_server(ws, poll_s=0.2, cancel_grace_s=2.0)


# --- tools/list -----------------------------------------------------------------------------

def test_tools_list_names_and_annotations(srv):
    tools = session(srv, lambda c: c.list_tools()).tools
    by_name = {t.name: t for t in tools}
    assert set(by_name) == ALL_TOOLS
    for name in ALL_TOOLS - WRITE_TOOLS:
        assert by_name[name].annotations.read_only_hint is True, name
        assert by_name[name].annotations.destructive_hint is False, name
    for name in WRITE_TOOLS:
        assert by_name[name].annotations.read_only_hint is False, name
    assert by_name["cancel_run"].annotations.destructive_hint is True
    assert by_name["write_config"].annotations.destructive_hint is True  # overwrite=true replaces a file
    assert by_name["launch_run"].annotations.idempotent_hint is False
    assert by_name["list_runs"].annotations.idempotent_hint is True
    assert by_name["read_summary"].output_schema["properties"]["next_offset"]
    assert "ctx" not in by_name["wait_for_run"].input_schema["properties"]
    assert by_name["wait_for_run"].input_schema["properties"]["timeout_s"]["maximum"] == 600
    assert {name for name, *_ in TOOLS} == ALL_TOOLS


def test_read_only_mode_hides_write_tools(ws, runs):
    server = build_server(ws, read_only=True)
    names = {t.name for t in session(server, lambda c: c.list_tools()).tools}
    assert names == ALL_TOOLS - WRITE_TOOLS
    assert WRITE_TOOLS == {"write_config", "launch_run", "cancel_run", "score_benchmark", "record_conclusion"}
    text = err(server, "write_config", path="a.yaml", yaml_text="x: 1")
    assert "write_config" in text and not (ws / "experiments" / "a.yaml").exists()
    assert ok(server, "list_runs")["count"] == 3


def test_build_server_refuses_missing_workspace(tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        build_server(tmp_path / "nope")


# --- list_runs / read_summary / get_metrics ------------------------------------------------

def test_list_runs(srv, runs):
    out = ok(srv, "list_runs")
    assert out["count"] == 3 and out["next_offset"] is None and out["total"] == 3
    by_name = {r["name"]: r for r in out["runs"]}
    assert by_name["rl_broken"]["status"] == "failed"
    small = by_name["sdft_lr_small"]
    assert small["id"] == runs["lr_small"]["id"]
    assert small["run_dir"] == "outputs/sdft_lr_small"
    assert small["metrics"]["val/val/pass@1"] == pytest.approx(1.0)

    only = ok(srv, "list_runs", where="status = 'failed'")
    assert [r["name"] for r in only["runs"]] == ["rl_broken"]
    limited = ok(srv, "list_runs", limit=1)
    assert limited["count"] == 1 and limited["next_offset"] == 1 and limited["total"] is None
    pages = [limited["runs"][0]["name"]]
    offset = limited["next_offset"]
    while offset is not None:
        page = ok(srv, "list_runs", limit=1, offset=offset)
        pages += [r["name"] for r in page["runs"]]
        offset = page["next_offset"]
    assert pages == [r["name"] for r in out["runs"]]
    slim = ok(srv, "list_runs", fields=["name"], status="failed")
    assert slim["runs"] == [{"id": runs["failed"]["id"], "name": "rl_broken"}]
    by_name_sorted = ok(srv, "list_runs", sort_by="name:asc")
    assert [r["name"] for r in by_name_sorted["runs"]] == sorted(r["name"] for r in out["runs"])


def test_list_runs_refuses_sql_in_where(srv, runs):
    for where, why in [("1=1; DROP TABLE runs", "syntax error"),  # as the index wraps it: (1=1; DROP ...)
                       ("run_id IN (SELECT * FROM read_csv('/etc/passwd'))", "read_csv"),
                       ("1=1) UNION SELECT * FROM read_text('/etc/passwd') --", "read_text")]:
        assert why in err(srv, "list_runs", where=where)
    assert "sort_by" in err(srv, "list_runs", sort_by="name; DROP TABLE runs")
    assert "no such column" in err(srv, "list_runs", sort_by="nonexistent_column")
    assert ok(srv, "query_runs", sql="SELECT count(*) FROM runs")["rows"] == [[3]]  # nothing was dropped


def test_read_summary_pages_through_a_long_file(srv, runs):
    full = (runs["lr_large"]["dir"] / "summary.md").read_text()
    parts, offset = [], 0
    while offset is not None:
        page = ok(srv, "read_summary", run="sdft_lr_large", offset=offset, max_bytes=10_000)
        assert len(page["text"].encode()) <= 10_000
        assert page["size"] == len(full.encode())
        parts.append(page["text"])
        offset = page["next_offset"]
    assert "".join(parts) == full and len(parts) == -(-len(full) // 10_000)
    assert "less than or equal to 40000" in err(srv, "read_summary", run="sdft_lr_large", max_bytes=1_000_000)
    past_end = ok(srv, "read_summary", run="sdft_lr_large", offset=10**9)
    assert past_end["text"] == "" and past_end["next_offset"] is None


def test_unknown_and_ambiguous_runs(srv, runs):
    for tool in ("read_summary", "get_metrics", "run_status", "tail_log", "cancel_run", "record_conclusion"):
        extra = {"text": "x"} if tool == "record_conclusion" else {}
        text = err(srv, tool, run="no_such_run", **extra)
        assert "no_such_run" in text, (tool, text)
    text = err(srv, "read_summary", run="sdft_lr")  # a prefix of two names
    assert "sdft_lr_small" in text and "sdft_lr_large" in text
    assert ok(srv, "read_summary", run=runs["lr_small"]["id"])["run_id"] == runs["lr_small"]["id"]
    assert ok(srv, "read_summary", run="outputs/sdft_lr_small")["run_id"] == runs["lr_small"]["id"]


def test_get_metrics_downsamples(srv, runs):
    out = ok(srv, "get_metrics", run="sdft_lr_large", max_points=20)  # shared by the two curves
    assert set(out["available_keys"]) == {"train/mean_loss", "val/val/pass@1"}
    assert out["splits"] == ["train", "val"] and out["keys_total"] == 2 and out["next_offset"] is None
    loss = next(s for s in out["series"] if s["key"] == "train/mean_loss")
    assert loss["total_points"] == 50 and loss["downsampled"] and len(loss["points"]) == 10
    assert loss["points"][0] == [1, 1.0]
    assert loss["points"][-1][0] == 50
    steps = [p[0] for p in loss["points"]]
    assert steps == sorted(steps)

    val = ok(srv, "get_metrics", run="sdft_lr_large", keys=["val/val/pass@1"], split="val")
    assert [s["key"] for s in val["series"]] == ["val/val/pass@1"]
    assert val["series"][0]["points"][-1] == [50, 1.0]
    hint = err(srv, "get_metrics", run="sdft_lr_large", split="validation")
    assert "'validation'" in hint and "train, val" in hint
    text = err(srv, "get_metrics", run="sdft_lr_large", keys=["nope/metric"])
    assert "nope/metric" in text and "train/mean_loss" in text  # says which keys exist


# --- path confinement -----------------------------------------------------------------------

def test_paths_outside_the_workspace_are_refused(srv, ws, runs, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "c.yaml").write_text(CONFIG.format(lr=1e-4, name="x"))
    (ws / "experiments" / "escape").symlink_to(outside)
    (ws / "experiments" / "sneaky.yaml").symlink_to(outside / "c.yaml")
    good = CONFIG.format(lr=1e-4, name="x")
    cases = {
        "../outside/c.yaml": "'..'",
        "experiments/../../outside/c.yaml": "'..'",
        str(outside / "c.yaml"): "outside the workspace",
        "/etc/passwd.yaml": "outside the workspace",
        "experiments/escape/c.yaml": "outside the workspace",
        "sneaky.yaml": "outside the workspace",
        "experiments/sneaky.yaml": "outside the workspace",
        "experiments/a\x00.yaml": "NUL",
        "experiments/" + "a" * 300 + ".yaml": "longer than",
        "": "at least 1 character",
        "   ": "empty",
    }
    for path, why in cases.items():
        for tool, args in [("validate_config", {}), ("write_config", {"yaml_text": good, "overwrite": True}),
                           ("launch_run", {})]:
            text = err(srv, tool, path=path, **args) if tool != "launch_run" else err(srv, tool, config_path=path)
            assert why in text, (tool, path, text)
    assert (outside / "c.yaml").read_text() == good  # never overwritten through the symlinks
    assert not list((ws / "outputs").glob("x*"))
    assert "outside the workspace" in err(srv, "read_summary", run=str(runs["lr_small"]["dir"].parent.parent.parent))
    assert "'..'" in err(srv, "run_status", run="../../etc")
    assert "'..'" in err(srv, "score_benchmark", benchmark="../bench", model="SmolLM2-135M-Instruct")


def test_files_symlinked_out_of_a_run_are_not_read(srv, runs, tmp_path):
    secret = tmp_path / "secret.md"
    secret.write_text("top secret")
    summary = runs["lr_small"]["dir"] / "summary.md"
    summary.unlink()
    summary.symlink_to(secret)
    text = err(srv, "read_summary", run="sdft_lr_small")
    assert "outside the workspace" in text and "top secret" not in text


# --- write_config / validate_config ---------------------------------------------------------

def test_write_config_validates_then_writes(srv, ws):
    text = CONFIG.format(lr=2e-4, name="lr2")
    out = ok(srv, "write_config", path="lr2.yaml", yaml_text=text)
    target = ws / "experiments" / "lr2.yaml"
    assert out["path"] == "experiments/lr2.yaml" and out["written"] and not out["overwritten"]
    assert out["report"]["ok"] is True
    assert target.read_text() == text

    refused = err(srv, "write_config", path="lr2.yaml", yaml_text=CONFIG.format(lr=5e-4, name="lr2"))
    assert "already exists" in refused and "overwrite" in refused
    assert target.read_text() == text

    again = ok(srv, "write_config", path="experiments/lr2.yaml", yaml_text=CONFIG.format(lr=5e-4, name="lr2"),
               overwrite=True)
    assert again["overwritten"] and "learning_rate: 0.0005" in target.read_text()
    assert sorted(p.name for p in (ws / "experiments").iterdir()) == ["lr2.yaml"]  # no temp files left

    nested = ok(srv, "write_config", path="experiments/sweep/a.yml", yaml_text=text)
    assert nested["path"] == "experiments/sweep/a.yml" and (ws / "experiments/sweep/a.yml").exists()


def test_write_config_refuses_invalid_and_non_yaml(srv, ws):
    bad = CONFIG.format(lr=1e-4, name="bad").replace("topk: 5", "topk: 5, lerning_rate: 1")
    text = err(srv, "write_config", path="bad.yaml", yaml_text=bad)
    assert "nothing was written" in text and "lerning_rate" in text
    assert "bad.yaml:6" in text  # names the file the agent asked for, and the line
    assert "candidate" not in text
    broken = err(srv, "write_config", path="broken.yaml", yaml_text="model: [unclosed\n")
    assert "nothing was written" in broken
    for name in ("notes.txt", "config.json", "script.py", "experiments/x.yaml.sh"):
        assert ".yaml or .yml" in err(srv, "write_config", path=name, yaml_text=CONFIG.format(lr=1e-4, name="x"))
    assert "nothing was written" in err(srv, "write_config", path="experiments/new/deeper/bad.yaml", yaml_text=bad)
    assert list((ws / "experiments").iterdir()) == []  # not even the folders made for it


def test_write_config_refuses_paths_inside_the_config_that_leave_the_workspace(srv, ws):
    text = CONFIG.format(lr=1e-4, name="x").replace("output_dir: outputs", "output_dir: /tmp/evsys_escape")
    assert "outside the workspace" in err(srv, "write_config", path="esc.yaml", yaml_text=text)
    text = CONFIG.format(lr=1e-4, name="x").replace("data/train.jsonl", "/etc/hosts")
    assert "outside the workspace" in err(srv, "write_config", path="esc2.yaml", yaml_text=text)
    assert list((ws / "experiments").iterdir()) == []


def test_validate_config(srv, ws):
    (ws / "experiments" / "good.yaml").write_text(CONFIG.format(lr=1e-4, name="good"))
    (ws / "experiments" / "bad.yaml").write_text(
        CONFIG.format(lr=1e-4, name="bad").replace("kind: sdft", "kind: sdtf"))
    good = ok(srv, "validate_config", path="good.yaml")
    assert good["ok"] is True and good["config_path"] == "experiments/good.yaml" and good["errors"] == []
    deep = ok(srv, "validate_config", path="experiments/good.yaml", deep=True)
    assert deep["ok"] is True and deep["deep"] is True
    bad = ok(srv, "validate_config", path="bad.yaml")
    assert bad["ok"] is False
    issue = next(i for i in bad["errors"] if "algorithm.kind" in i["field"])
    assert issue["line"] == 5 and "sdft" in issue["message"]
    assert "does not exist" in err(srv, "validate_config", path="missing.yaml")


# --- launch_run / run_status / cancel_run / wait_for_run -----------------------------------

def test_launch_refused_beyond_max_concurrent_runs(srv, ws, sleeper):
    p = sleeper("busy")
    make_run(ws, "busy", status="running", pid=p.pid)
    (ws / "experiments" / "go.yaml").write_text(CONFIG.format(lr=1e-4, name="go"))
    text = err(srv, "launch_run", config_path="go.yaml")
    assert "already running" in text and "busy" in text and "cancel_run" in text
    assert not (ws / "outputs" / "go").exists()

    two = build_server(ws, max_concurrent_runs=2)
    p.kill()
    p.wait()
    # the dead one no longer counts (its run.json reads as interrupted)
    assert ok(two, "run_status", run="busy")["status"] == "interrupted"


def test_launch_refuses_invalid_config_and_overrides(srv, ws):
    (ws / "experiments" / "go.yaml").write_text(CONFIG.format(lr=1e-4, name="go"))
    text = err(srv, "launch_run", config_path="go.yaml", overrides=["algorithm.params.lerning_rate=1"])
    assert "nothing was launched" in text and "lerning_rate" in text
    assert "pattern" in err(srv, "launch_run", config_path="go.yaml", overrides=["--workspace=/"])
    assert "run_name" in err(srv, "launch_run", config_path="go.yaml", run_name="../evil")
    assert not (ws / "outputs").exists()


def test_launch_status_tail_and_cancel_a_real_process(srv, ws):
    (ws / "experiments" / "go.yaml").write_text(CONFIG.format(lr=1e-4, name="go"))

    async def flow(c):
        r = await c.call_tool("launch_run", {"config_path": "go.yaml",
                                             "overrides": ["algorithm.params.max_steps=1"]})
        assert not r.is_error, r.content[0].text
        launched = r.structured_content
        run_dir = ws / launched["run_dir"]
        assert launched["run_dir"] == "outputs/go" and launched["status"] == "running"
        info = json.loads((run_dir / "run.json").read_text())
        assert info["id"] == launched["run_id"] and info["pid"] == launched["pid"]
        assert os.getpgid(launched["pid"]) == launched["pid"]  # its own session and group
        status = await c.call_tool("run_status", {"run": launched["run_id"]})
        assert status.structured_content["status"] == "running"
        second = await c.call_tool("launch_run", {"config_path": "go.yaml"})
        assert second.is_error and "already running" in second.content[0].text
        log = await c.call_tool("tail_log", {"run": launched["run_id"]})
        assert "evsys_core.cli run" in log.structured_content["text"]
        cancel = await c.call_tool("cancel_run", {"run": launched["run_id"]})
        assert not cancel.is_error, cancel.content[0].text
        return launched, cancel.structured_content

    launched, cancelled = session(srv, flow)
    assert cancelled["was_running"] and cancelled["status"] == "interrupted"
    assert not rundir.pid_alive(launched["pid"])
    assert json.loads((ws / "outputs/go/run.json").read_text())["status"] == "interrupted"
    again = ok(srv, "cancel_run", run=launched["run_id"])
    assert again["was_running"] is False and again["signal"] is None


def test_cancel_escalates_to_sigkill(ws, sleeper):
    server = build_server(ws, cancel_grace_s=0.5)
    stubborn = sleeper("stubborn", ignore_term=True)
    run = make_run(ws, "stubborn", status="running", pid=stubborn.pid)
    out = ok(server, "cancel_run", run="stubborn")
    assert out["signal"] == "SIGKILL" and out["status"] == "interrupted"
    assert stubborn.wait(timeout=5) == -signal.SIGKILL
    assert json.loads((run["dir"] / "run.json").read_text())["status"] == "interrupted"


def test_cancel_refuses_a_reused_pid(srv, ws):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        make_run(ws, "old", status="running", pid=other.pid)
        assert "no longer an evsys process" in err(srv, "cancel_run", run="old")
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_cancel_never_signals_the_server_itself(srv, ws):
    make_run(ws, "scoring_inside", status="running", pid=os.getpid())
    assert "this process" in err(srv, "cancel_run", run="scoring_inside")
    assert ok(srv, "run_status", run="scoring_inside")["status"] == "running"


def test_run_status_reports_a_dead_run_as_interrupted(srv, ws, runs):
    make_run(ws, "ghost", status="running", pid=999_999_999)
    out = ok(srv, "run_status", run="ghost")
    assert out["status"] == "interrupted" and "ended" in out["error"]
    done = ok(srv, "run_status", run="sdft_lr_small")
    assert done["status"] == "completed" and done["latest_metrics"]["val/val/pass@1"] == 1.0
    assert done["final_metrics"]["val/val/pass@1"] == pytest.approx(0.6)
    failed = ok(srv, "run_status", run="rl_broken")
    assert failed["log_tail"][-1] == "log line 4999"


def test_wait_for_run_times_out_with_progress(srv, ws, sleeper):
    p = sleeper("slow")
    make_run(ws, "slow", status="running", pid=p.pid)
    progress: list[tuple[float, float | None, str | None]] = []

    async def cb(done, total, message):
        progress.append((done, total, message))

    t0 = time.monotonic()
    r = session(srv, lambda c: c.call_tool("wait_for_run", {"run": "slow", "timeout_s": 1.5}, progress_callback=cb))
    assert not r.is_error, r.content[0].text
    out = r.structured_content
    assert out["timed_out"] is True and out["status"] == "running" and "wait_for_run again" in out["message"]
    assert 1.4 <= time.monotonic() - t0 < 10
    assert len(progress) >= 3 and progress[0][1] == 3 and "slow" in progress[0][2]
    assert p.poll() is None  # waiting never touches the run
    assert "less than or equal to 600" in err(srv, "wait_for_run", run="slow", timeout_s=601)
    assert "greater than 0" in err(srv, "wait_for_run", run="slow", timeout_s=0)


def test_wait_for_run_returns_when_the_run_ends(srv, ws, sleeper):
    p = sleeper("finishing")
    run = make_run(ws, "finishing", status="running", pid=p.pid)

    def finish():  # as the runner does: run.json final first, summary.md a moment later
        time.sleep(0.8)
        info = json.loads((run["dir"] / "run.json").read_text())
        info.update(status="completed", ended_at=time.time())
        rundir.write_json_atomic(run["dir"] / "run.json", info)
        time.sleep(1.0)
        (run["dir"] / "summary.md").write_text("# finishing\n\nStatus: completed\n")

    threading.Thread(target=finish).start()
    out = ok(srv, "wait_for_run", run="finishing", timeout_s=30)
    assert out["status"] == "completed" and out["timed_out"] is False and out["waited_s"] < 10
    assert ok(srv, "read_summary", run="finishing")["text"].startswith("# finishing")  # there once wait returns


def test_cancelling_a_wait_request_leaves_the_run_alone(srv, ws, sleeper):
    p = sleeper("keep")
    make_run(ws, "keep", status="running", pid=p.pid)

    async def flow(c):
        with anyio.move_on_after(0.7):
            await c.call_tool("wait_for_run", {"run": "keep", "timeout_s": 60})
        return await c.call_tool("run_status", {"run": "keep"})

    r = session(srv, flow)
    assert r.structured_content["status"] == "running" and p.poll() is None


def test_tail_log(srv, ws, runs):
    log = (runs["failed"]["dir"] / "train.log").read_bytes()
    out = ok(srv, "tail_log", run="rl_broken", max_bytes=100)
    assert out["size"] == len(log) and out["next_offset"] is None
    assert out["text"].endswith("log line 4999\n") and out["text"].startswith("log line")  # a whole line first
    assert len(out["text"].encode()) <= 100
    parts, offset = [], 0
    while offset is not None:
        page = ok(srv, "tail_log", run="rl_broken", offset=offset, max_bytes=40_000)
        parts.append(page["text"])
        offset = page["next_offset"]
    assert "".join(parts).encode() == log
    (runs["failed"]["dir"] / "train.log").write_text("é" * 30)  # 60 bytes: a page never splits a character
    first = ok(srv, "tail_log", run="rl_broken", offset=0, max_bytes=7)
    assert first["text"] == "ééé" and first["next_offset"] == 6
    assert "no train.log" in err(srv, "tail_log", run="sdft_lr_small")
    assert "less than or equal to 40000" in err(srv, "tail_log", run="rl_broken", max_bytes=10**6)
    assert "Extra inputs" in err(srv, "tail_log", run="rl_broken", lines=10)  # an argument it does not take


# --- record_conclusion / compare_runs / query_runs ----------------------------------------

def test_record_conclusion_appends_and_indexes(srv, ws, runs):
    out = ok(srv, "record_conclusion", run="sdft_lr_small", text="lr 1e-4 is stable; try 3e-4 next")
    assert out["path"] == "outputs/sdft_lr_small/conclusion.md"
    ok(srv, "record_conclusion", run="sdft_lr_small", text="second thought")
    body = (runs["lr_small"]["dir"] / "conclusion.md").read_text()
    assert body.index("stable") < body.index("second thought") and "agent" in body
    rows = ok(srv, "query_runs", sql="SELECT text FROM conclusions ORDER BY ordinal")["rows"]
    assert [r[0] for r in rows] == ["lr 1e-4 is stable; try 3e-4 next", "second thought"]
    listed = {r["name"]: r for r in ok(srv, "list_runs")["runs"]}
    assert "second thought" in listed["sdft_lr_small"]["conclusion"]
    assert "blank" in err(srv, "record_conclusion", run="sdft_lr_small", text="   ")
    assert "at most 20000" in err(srv, "record_conclusion", run="sdft_lr_small", text="x" * 20_001)


def test_compare_runs(srv, runs):
    out = ok(srv, "compare_runs", runs=["sdft_lr_small", "sdft_lr_large"])
    assert [r["name"] for r in out["runs"]] == ["sdft_lr_small", "sdft_lr_large"]
    lr = next(v for k, v in out["config_diff"].items() if k.endswith("learning_rate"))
    assert [float(x) for x in lr] == [1e-4, 3e-4]
    pass1 = next(m for m in out["metrics"] if m["key"] == "val/val/pass@1")
    assert pass1["delta"] == pytest.approx(0.0) and "verdict" in pass1  # both end at 1.0
    assert "at least 2" in err(srv, "compare_runs", runs=["sdft_lr_small"])
    assert "nope" in err(srv, "compare_runs", runs=["sdft_lr_small", "nope"])


def test_query_runs(srv, runs):
    out = ok(srv, "query_runs", sql="SELECT name, status FROM runs ORDER BY name")
    assert out["columns"] == ["name", "status"]
    assert out["rows"] == [["rl_broken", "failed"], ["sdft_lr_large", "completed"], ["sdft_lr_small", "completed"]]
    assert out["truncated"] is False
    cut = ok(srv, "query_runs", sql="SELECT step, value FROM metrics ORDER BY run_id, step, key", max_rows=5)
    assert cut["row_count"] == 5 and cut["truncated"] and "next_offset" in cut["note"] and cut["next_offset"] == 5
    on = ok(srv, "query_runs", sql="SELECT step, value FROM metrics ORDER BY run_id, step, key", max_rows=5, offset=5)
    every = ok(srv, "query_runs", sql="SELECT step, value FROM metrics ORDER BY run_id, step, key", max_rows=10)
    assert cut["rows"] + on["rows"] == every["rows"]
    big = ok(srv, "query_runs", sql="SELECT repeat('x', 100000) AS s")
    assert len(big["rows"][0][0]) <= 2001
    many = ok(srv, "query_runs", sql="SELECT repeat('y', 1900) FROM range(1000)", max_rows=1000)
    assert many["truncated"] and many["row_count"] < 1000 and "to fit" in many["note"]
    assert many["next_offset"] == many["row_count"]
    assert ok(srv, "query_runs", sql="SELECT 1;")["rows"] == [[1]]


@pytest.mark.parametrize("sql, why", [
    ("DROP TABLE runs", "DROP"),
    ("DELETE FROM runs", "DELETE"),
    ("INSERT INTO runs (name) VALUES ('x')", "INSERT"),
    ("UPDATE runs SET name = 'x'", "UPDATE"),
    ("ATTACH '/tmp/x.db' AS x", "ATTACH"),
    ("COPY runs TO '/tmp/out.csv'", "COPY"),
    ("INSTALL httpfs", "INSTALL"),
    ("LOAD httpfs", "LOAD"),
    ("PRAGMA database_list", "PRAGMA"),
    ("SET enable_external_access = true", "SET"),
    ("SELECT * FROM read_csv('/etc/passwd')", "read_csv"),
    ("SELECT * FROM read_text('/etc/passwd')", "read_text"),
    ("SELECT * FROM '/etc/passwd'", "quoted table name"),
    ("SELECT * FROM \"/etc/hosts.csv\"", "quoted table name"),
    ("SELECT 1; DROP TABLE runs", "more than one statement"),
    ("SELECT 1; SELECT 2", "more than one statement"),
    ("WITH x AS (SELECT 1) DELETE FROM runs", "DELETE"),
    ("SELECT getenv('HOME')", "getenv"),
    ("select * from glob('/*')", "glob"),
    ("SELECT * FROM parquet_scan('/x.parquet')", "parquet_scan"),
    ("-- just a comment", "empty"),
    ("CALL pragma_version()", "CALL"),
])
def test_query_runs_refuses_writes_and_file_access(srv, runs, sql, why):
    text = err(srv, "query_runs", sql=sql)
    assert why.lower() in text.lower(), text
    assert ok(srv, "query_runs", sql="SELECT count(*) FROM runs")["rows"] == [[3]]


def test_query_runs_is_bounded_in_time(ws, runs):
    server = build_server(ws, query_timeout_s=1.0)
    t0 = time.monotonic()
    text = err(server, "query_runs", sql="SELECT count(*) FROM range(100000000000) a")
    assert "longer than" in text and time.monotonic() - t0 < 15


def test_strings_that_look_like_sql_are_fine(srv, runs):
    out = ok(srv, "query_runs", sql="SELECT 'DROP TABLE runs; read_csv(x)' AS harmless, \"name\" FROM runs LIMIT 1")
    assert out["rows"][0][0] == "DROP TABLE runs; read_csv(x)"


# --- score_benchmark (bad input; success runs the real model in test_mcp_stdio) -------------

def test_score_benchmark_bad_input(srv, ws, runs):
    assert "exactly one" in err(srv, "score_benchmark", benchmark="bench/val")
    assert "exactly one" in err(srv, "score_benchmark", benchmark="bench/val", model="m", run="sdft_lr_small")
    assert "tasks.jsonl" in err(srv, "score_benchmark", benchmark="data", model="SmolLM2-135M-Instruct")
    assert "outside the workspace" in err(srv, "score_benchmark", benchmark="/etc", model="SmolLM2-135M-Instruct")
    assert "no_such" in err(srv, "score_benchmark", benchmark="bench/val", run="no_such")
    assert "pattern" in err(srv, "score_benchmark", benchmark="bench/val", model="x", metrics=["accuracy"])
    assert "model" in err(srv, "score_benchmark", benchmark="bench/val", model="/etc/passwd")
    assert "no final checkpoint" in err(srv, "score_benchmark", benchmark="bench/val", run="rl_broken")


# --- resources and prompt -------------------------------------------------------------------

def test_resources(srv, runs):
    rid = runs["lr_small"]["id"]

    async def read(c):
        out = {}
        for part in ("summary", "config", "metrics"):
            res = await c.read_resource(f"evsys://runs/{rid}/{part}")
            out[part] = res.contents[0].text
        templates = await c.list_resource_templates()
        return out, {t.uri_template for t in templates.resource_templates}

    out, templates = session(srv, read)
    assert templates == {f"evsys://runs/{{run_id}}/{p}" for p in ("summary", "config", "metrics")}
    assert out["summary"].startswith("# sdft_lr_small")
    assert "learning_rate: 0.0001" in out["config"]
    assert json.loads(out["metrics"].splitlines()[0])["step"] == 1

    async def missing(c):
        with pytest.raises(Exception, match="nope"):
            await c.read_resource("evsys://runs/nope/summary")
        return True

    assert session(srv, missing)


def test_autoresearch_prompt(srv):
    async def get(c):
        prompts = await c.list_prompts()
        p = await c.get_prompt("autoresearch", {"goal": "beat 0.8 pass@1"})
        return [x.name for x in prompts.prompts], p.messages[0].content.text

    names, text = session(srv, get)
    assert names == ["autoresearch"]
    assert "beat 0.8 pass@1" in text
    for tool in ("list_runs", "write_config", "validate_config", "launch_run", "wait_for_run",
                 "read_summary", "record_conclusion"):
        assert tool in text


# --- the boundary ---------------------------------------------------------------------------

def test_an_unexpected_error_is_a_tool_error_and_the_server_keeps_serving(srv, runs, monkeypatch):
    from evsys_mcp.tools import EvsysTools

    def boom(self, *a, **k):
        raise ZeroDivisionError("division by zero in the index")

    monkeypatch.setattr(EvsysTools, "_row", boom)

    async def flow(c):
        bad = await c.call_tool("list_runs", {})
        good = await c.call_tool("run_status", {"run": "sdft_lr_small"})
        return bad, good

    bad, good = session(srv, flow)
    assert bad.is_error and "internal error in list_runs: ZeroDivisionError" in bad.content[0].text
    assert not good.is_error


def test_wrong_argument_types_are_tool_errors(srv, runs):
    assert "valid integer" in err(srv, "list_runs", limit="lots")
    assert "limit" in err(srv, "list_runs", limit=0)
    assert "Field required" in err(srv, "read_summary")
    assert "Unknown tool" in err(srv, "rm_rf")


def test_import_is_light():
    code = ("import sys, evsys_mcp.server as s; s.build_server('.'); "
            "heavy = [m for m in ('duckdb', 'torch', 'transformers', 'evsys_core.history.index', "
            "'evsys_core.benchmarks.scoring') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- abuse: fuzzed arguments, many calls ----------------------------------------------------

def test_fuzzed_arguments_get_a_result_or_a_tool_error(ws, runs, tmp_path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    server = build_server(ws, poll_s=0.05)
    before_outside = sorted(p.name for p in tmp_path.iterdir())
    junk = st.one_of(st.text(max_size=200), st.integers(-10**12, 10**12), st.none(), st.booleans(),
                     st.lists(st.text(max_size=40), max_size=4), st.floats(allow_nan=True))
    path_like = st.one_of(
        st.text(max_size=120),
        st.sampled_from(["../x.yaml", "/etc/passwd", "experiments/../../x.yaml", "a\x00b.yaml", "~/.ssh/id_rsa",
                         "sdft_lr", "rl_broken", "outputs/sdft_lr_small", "bench/val", ".", "..", "x" * 2000]))
    tool_args = {
        "list_runs": {"where": junk, "sort_by": junk, "limit": junk, "offset": junk, "status": junk,
                      "kind": junk, "fields": junk, "metrics": junk},
        "best_runs": {"metric": junk, "where": junk, "by": junk, "limit": junk, "offset": junk},
        "plot_metrics": {"run": path_like, "keys": junk, "split": junk},
        "list_configs": {"under": path_like, "offset": junk, "limit": junk},
        "list_benchmarks": {"under": path_like, "offset": junk, "limit": junk},
        "read_summary": {"run": path_like, "offset": junk, "max_bytes": junk},
        "get_metrics": {"run": path_like, "keys": junk, "split": junk, "max_points": junk},
        "write_config": {"path": path_like, "yaml_text": junk, "overwrite": junk},
        "validate_config": {"path": path_like, "deep": junk},
        "launch_run": {"config_path": path_like, "overrides": junk, "run_name": junk},
        "run_status": {"run": path_like},
        "wait_for_run": {"run": path_like, "timeout_s": st.floats(-1, 0.2)},
        "tail_log": {"run": path_like, "offset": junk, "max_bytes": junk},
        "cancel_run": {"run": st.sampled_from(["sdft_lr_small", "rl_broken", "nope", "../x"])},
        "score_benchmark": {"benchmark": path_like, "run": path_like, "metrics": junk, "num_samples": junk},
        "record_conclusion": {"run": path_like, "text": junk},
        "query_runs": {"sql": st.one_of(st.text(max_size=200), st.sampled_from([
            "SELECT * FROM runs", "select 1; select 2", "COPY runs TO 'x'", "SELECT * FROM read_csv('x')"])),
            "max_rows": junk},
        "compare_runs": {"runs": st.lists(path_like, max_size=12)},
    }
    calls = st.sampled_from(sorted(tool_args)).flatmap(
        lambda name: st.fixed_dictionaries({}, optional=tool_args[name]).map(lambda a: (name, a)))

    @settings(max_examples=120, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(calls)
    def one(call_):
        name, args = call_
        r = session(server, lambda c: c.call_tool(name, args))
        assert r.is_error or r.structured_content is not None or r.content[0].type == "image"
        if r.is_error:
            assert "Error executing tool" in r.content[0].text
            assert "internal error" not in r.content[0].text, (name, args, r.content[0].text)

    one()
    assert ok(server, "list_runs")["count"] >= 3  # still serving
    assert sorted(p.name for p in tmp_path.iterdir()) == before_outside  # nothing written outside the workspace


def test_many_calls_leak_no_file_descriptors(srv, runs):
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def burst(c):
        for i in range(60):
            await c.call_tool("list_runs", {"limit": 5})
            await c.call_tool("read_summary", {"run": "sdft_lr_large", "offset": i * 100, "max_bytes": 100})
            await c.call_tool("query_runs", {"sql": "SELECT count(*) FROM metrics"})
            await c.call_tool("tail_log", {"run": "rl_broken", "max_bytes": 300})
            await c.call_tool("read_summary", {"run": "../escape"})
            await c.call_tool("query_runs", {"sql": "DROP TABLE runs"})

    session(srv, burst)  # warm up (index built, threads started)
    before = fds()
    session(srv, burst)
    assert fds() - before <= 2


def test_sql_check_reads_sql_as_duckdb_parses_it(srv, runs):
    # a typo is a syntax error, not a refusal
    typo = err(srv, "query_runs", sql="selec name from runs")
    assert "syntax error" in typo and 'near "selec"' in typo and "not allowed" not in typo
    assert "syntax error" in err(srv, "list_runs", where="status = = 'x'")
    # a keyword used as an alias, or inside a string or a quoted name, is fine
    assert ok(srv, "query_runs", sql="select count(*) as load from runs")["rows"] == [[3]]
    out = ok(srv, "query_runs", sql='select 1 as "set", \'attach x\' as copy, name as "into" from runs limit 1')
    assert out["columns"] == ["set", "copy", "into"]
    assert ok(srv, "query_runs", sql="explain select name from runs")["row_count"] >= 1
    # real writes, file access and settings are still refused, EXPLAIN or not
    for sql, why in [("explain copy runs to '/tmp/x.csv'", "COPY"), ("insert into runs (name) values ('x')", "INSERT"),
                     ("select * from memory.main.t", "another database"), ("select load_aws_credentials()", "load_aws")]:
        assert why in err(srv, "query_runs", sql=sql), sql
    assert ok(srv, "query_runs", sql="SELECT count(*) FROM runs")["rows"] == [[3]]
