"""Code a config names (data.transform, python verifiers) comes only from the workspace, and
the MCP server never imports or runs it in its own process.

The attack: a transform `subprocess:run` over a CSV whose header is a shell command runs that
command for every row (subprocess.run(row) takes the row's keys as argv).
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from evsys_core.cli import main as evsys_main
from test_mcp_stdio import over_stdio, params

MARKER_MODULE = textwrap.dedent("""\
    import json, os, sys
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "imported.jsonl"), "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "in_server": "evsys_mcp" in sys.modules}) + "\\n")

    def to_prompt(row):
        return {"inputs": {"question": row["q"]}, "expected": row["a"]}
    """)


def config(transform: str, data: str = "data/raw.jsonl", model: str = "SmolLM2-135M-Instruct") -> str:
    return (f"model: {{name: {model}}}\nbackend: {{kind: local, device: cpu}}\n"
            f"data: {{path: {data}, transform: '{transform}'}}\n"
            "algorithm: {kind: sdft, params: {max_steps: 1, batch_size: 1}}\n")


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    w = tmp_path / "ws"
    (w / "data").mkdir(parents=True)
    # the header is argv for subprocess.run: `sh -c "touch pwned"` in the server's directory
    (w / "data" / "evil.csv").write_text("sh,-c,touch pwned\n1,2,3\n")
    (w / "data" / "raw.jsonl").write_text('{"q": "What is 2+2?", "a": "4"}\n')
    (w / "experiments").mkdir()  # where the MCP server keeps configs
    (w / "experiments" / "evil.yaml").write_text(config("subprocess:run", data="data/evil.csv"))
    (w / "mytf.py").write_text(MARKER_MODULE)
    (w / "experiments" / "marked.yaml").write_text(config("mytf:to_prompt", model="no-such-model-xyz"))
    return w


def test_mcp_server_never_runs_or_imports_config_named_code(ws, tmp_path):
    async def flow(c):
        out = {}
        for deep in (False, True):
            out[f"evil_validate_{deep}"] = await c.call_tool("validate_config", {"path": "evil.yaml", "deep": deep})
        out["evil_write"] = await c.call_tool("write_config", {"path": "evil2.yaml",
                                                               "yaml_text": (ws / "experiments" / "evil.yaml").read_text()})
        out["evil_launch"] = await c.call_tool("launch_run", {"config_path": "evil.yaml"})
        out["marked_shallow"] = await c.call_tool("validate_config", {"path": "marked.yaml"})
        out["after_shallow"] = (ws / "imported.jsonl").exists()
        out["marked_deep"] = await c.call_tool("validate_config", {"path": "marked.yaml", "deep": True})
        out["marked_launch"] = await c.call_tool("launch_run", {"config_path": "marked.yaml"})
        return out

    r = over_stdio(params(ws), tmp_path / "stderr.log", flow)
    assert not (ws / "pwned").exists()  # the shell command never ran, on any path
    for deep in (False, True):
        report = r[f"evil_validate_{deep}"].structured_content
        assert report["ok"] is False
        [issue] = report["errors"]
        assert issue["field"] == "data.transform" and issue["line"] == 3
        assert "module 'subprocess' not found" in issue["message"]
        assert "standard-library modules are never imported" in issue["message"]
    for key in ("evil_write", "evil_launch"):
        assert r[key].is_error and "module 'subprocess' not found" in r[key].content[0].text, key
    assert not (ws / "experiments" / "evil2.yaml").exists() and not (ws / "outputs").exists()

    # a workspace module is never imported by the server: not by a shallow check (it parses
    # the file), and a deep check or launch_run's pre-check imports it in a child process only
    assert r["marked_shallow"].structured_content["ok"] is True and r["after_shallow"] is False
    deep = r["marked_deep"].structured_content
    assert deep["ok"] is False and any("no-such-model-xyz" in e["message"] for e in deep["errors"])
    assert r["marked_launch"].is_error and "nothing was launched" in r["marked_launch"].content[0].text
    imports = [json.loads(line) for line in (ws / "imported.jsonl").read_text().splitlines()]
    assert len(imports) == 2 and len({i["pid"] for i in imports}) == 2
    assert not any(i["in_server"] for i in imports), imports


def test_cli_refuses_code_outside_the_workspace_and_imports_nothing_to_say_so(ws, capsys):
    w = ["--workspace", str(ws)]
    evil = str(ws / "experiments" / "evil.yaml")
    for argv in (["validate", evil, *w], ["validate", evil, "--deep", *w], ["run", evil, *w]):
        assert evsys_main(argv) == 1
        text = capsys.readouterr()
        text = text.out + text.err
        assert "evil.yaml:3:" in text and "data.transform" in text and "'subprocess' not found" in text, text
    assert not (ws / "pwned").exists() and not (ws / "outputs").exists()

    # a module file that is a symbolic link out of the workspace is refused, not imported
    outside = ws.parent / "elsewhere.py"
    outside.write_text(MARKER_MODULE)
    (ws / "linked.py").symlink_to(outside)
    (ws / "linked.yaml").write_text(config("linked:to_prompt"))
    assert evsys_main(["validate", str(ws / "linked.yaml"), "--deep", *w]) == 1
    text = capsys.readouterr().out
    assert "linked.yaml:3:" in text and f"leads to {outside}, outside {ws}" in text, text
    assert not (ws.parent / "imported.jsonl").exists()

    # a shallow check names a missing function from the file's text alone
    (ws / "nofn.yaml").write_text(config("mytf:to_rows"))
    assert evsys_main(["validate", str(ws / "nofn.yaml"), *w]) == 1
    text = capsys.readouterr().out
    assert f"{ws / 'mytf.py'} has no function 'to_rows'; it defines: " in text and "to_prompt" in text, text
    assert not (ws / "imported.jsonl").exists()


def test_a_python_verifier_from_the_standard_library_is_refused_and_never_called(tmp_path):
    from evsys_core.benchmarks.verifiers import verify

    v = verify({"kind": "python", "fn": "os:system", "expected": None}, f"touch {tmp_path}/pwned", tmp_path)
    assert v.score == 0 and "module 'os' not found" in v.reason
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "graders.py").write_text("def grade(answer, expected):\n    return answer == expected\n")
    assert verify({"kind": "python", "fn": "graders:grade", "expected": "x"}, "x", tmp_path).passed
    assert not (tmp_path / "__pycache__").exists()
    assert os.listdir(tmp_path) == ["graders.py"]


def test_score_benchmark_imports_python_verifiers_only_in_child_processes(tmp_path, tiny_model_dir):
    """score_benchmark's up-front check of a python verifier runs `evsys validate --deep` on the
    benchmark in a child (the server only parses the module); a module that fails at import is
    still refused before anything is written, with its file, line and error."""
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(tiny_model_dir, ws / "model", copy_function=os.link)
    grader = MARKER_MODULE + "\ndef grade(answer, expected):\n    return expected in answer\n"
    task = {"task_id": "t0", "instruction": "Say 4.", "verifier": {"kind": "python", "fn": "mark:grade",
                                                                      "expected": "4"}}
    for name, module in (("good", grader), ("broken", grader + "\nraise RuntimeError('no grading key')\n")):
        (ws / "bench" / name).mkdir(parents=True)
        (ws / "bench" / name / "tasks.jsonl").write_text(json.dumps(task) + "\n")
        (ws / "bench" / name / "mark.py").write_text(module)

    async def flow(c):
        broken = await c.call_tool("score_benchmark", {"benchmark": "bench/broken", "model": "model"})
        good = await c.call_tool("score_benchmark", {"benchmark": "bench/good", "model": "model"})
        done = None if good.is_error else await c.call_tool(
            "wait_for_run", {"run": good.structured_content["run_id"], "timeout_s": 300})
        return broken, good, done

    broken, good, done = over_stdio(params(ws), tmp_path / "stderr.log", flow)
    # each module was imported by child processes only: the deep check (both) and the score run (good)
    seen = {name: [json.loads(x) for x in (ws / "bench" / name / "imported.jsonl").read_text().splitlines()]
            for name in ("good", "broken")}
    assert not any(i["in_server"] for i in seen["good"] + seen["broken"]), seen
    assert len(seen["broken"]) == 1 and len(seen["good"]) == 2, seen
    assert len({i["pid"] for i in seen["good"] + seen["broken"]}) == 3, seen
    assert broken.is_error
    text = broken.content[0].text
    assert "bench/broken/tasks.jsonl:1" in text and "verifier.fn" in text, text
    assert "raised RuntimeError: no grading key" in text and "nothing was scored" in text, text
    assert not good.is_error, good.content[0].text
    assert done.structured_content["status"] == "completed", done.structured_content
    (run_dir,) = (ws / "outputs" / "scores").iterdir()  # the broken benchmark left no run behind
    assert run_dir.name.startswith("good-")
