"""One malformed run file never takes the history down.

A run directory may come from anywhere, so every value the index reads from `metrics.jsonl`,
`predictions/*.jsonl` and `run.json` is hostile: out-of-range numbers and times, NaN, a pid of
2**32, wrong types, huge strings. Each is left out or cut with a warning naming the file and
line; `evsys runs`, `evsys query`, `evsys show`, MCP `list_runs` and `launch_run` keep working.
A property-based test fuzzes the values; explicit cases replay each example of the report.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evsys_core import rundir
from evsys_core.history.index import open_index
from history_fixtures import make_run, train_rows

INT64 = 2**63
BIG = 123456789012345678901234567890

# every JSON value json.loads can hand back, weighted toward the ones that break columns
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([2**32, 2**63, -(2**63) - 1, BIG, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e300, -1e300, 1e20, float("nan"), float("inf"), 2.5]),
    st.text(max_size=20), st.sampled_from(["x" * 50_000, "running", "\x00"]),
)
hostile = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6)

RUN_JSON_KEYS = ["id", "name", "status", "created_at", "started_at", "ended_at", "algorithm",
                 "model", "backend", "config_hash", "git_commit", "parent_run_id", "pid",
                 "pid_started", "step", "max_steps", "error", "config_path", "final_metrics"]


def _dumps(obj: Any) -> str:
    # json.dumps writes big ints exactly and NaN/Infinity as Python's json reads them back
    return json.dumps(obj, allow_nan=True)


def _expected_step(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if -INT64 <= v < INT64 else None
    if isinstance(v, float) and math.isfinite(v) and v.is_integer() and -INT64 <= v < INT64:
        return int(v)
    return None


def _jsonl_value(v: Any) -> Any:
    """What json.loads gives back for v once written (10**400 reads back as an int)."""
    return json.loads(_dumps(v))


@pytest.fixture(scope="module")
def fuzz_ws(tmp_path_factory) -> Path:
    """One workspace for every example: each adds its own run, so refreshes stay incremental."""
    ws = tmp_path_factory.mktemp("fuzz")
    make_run(ws / "outputs", "good", rows=train_rows(2))
    open_index(ws)
    return ws


_seen = iter(range(10**9))


@settings(max_examples=30, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(st.fixed_dictionaries(
        {"step": hostile, "split": hostile, "metrics": st.dictionaries(
            st.sampled_from(["train/loss", "val/val/pass@1", "x" * 300]), hostile, max_size=3)}),
        min_size=1, max_size=4),
    info=st.fixed_dictionaries({}, optional={k: hostile for k in RUN_JSON_KEYS}),
    pred=st.fixed_dictionaries({}, optional={"step": hostile, "task_id": hostile,
                                             "sample": hostile, "score": hostile,
                                             "passed": hostile, "answer": hostile}),
)
def test_fuzzed_run_files_are_indexed_with_warnings_never_a_traceback(fuzz_ws, lines, info, pred,
                                                                        capsys):
    capsys.readouterr()  # capsys is shared by the examples: start from nothing
    rel = f"outputs/foreign-{next(_seen)}"
    d = fuzz_ws / rel
    (d / rundir.PREDICTIONS).mkdir(parents=True)
    (d / rundir.METRICS).write_text("".join(_dumps(x) + "\n" for x in lines))
    (d / rundir.RUN_JSON).write_text(_dumps(info))
    (d / rundir.PREDICTIONS / "val.jsonl").write_text(_dumps(pred) + "\n")

    idx = open_index(fuzz_ws)
    runs = {r["path"]: r for r in idx.runs()}
    assert "outputs/good" in runs and rel in runs  # listed beside the good runs
    run_id = runs[rel]["run_id"]
    idx.show(run_id)
    for table in ("runs", "params", "predictions", "conclusions"):
        idx.query(f"select * from {table} where run_id = ?", [run_id])
    stored = idx.query("select line, step from metrics where run_id = ? order by line",
                       [run_id]).rows
    expected = {i: _expected_step(_jsonl_value(x["step"]))
                for i, x in enumerate(lines, 1) if x["metrics"]}
    assert {line: step for line, step in stored} == expected
    warnings = capsys.readouterr().err
    bad = {i for i, step in expected.items()
           if step is None and _jsonl_value(lines[i - 1]["step"]) is not None}
    named = {int(n) for n in re.findall(re.escape(rel) + r"/metrics\.jsonl:(\d+): step:", warnings)}
    assert named <= bad and len(named) == min(len(bad), 3)  # at most three a file, then a count
    if len(bad) > 3:
        assert f"{rel}/metrics.jsonl: {len(bad) - 3} more value(s)" in warnings
    assert "Traceback" not in warnings
    assert idx.refresh().changed is False  # a foreign run does not keep the index busy


# --- the reported examples, through the CLI and the MCP server ------------------------------

EXAMPLES = {
    "step_1e300": ("metrics", '{"step": 1e300, "split": "train", "metrics": {"train/loss": 0.5}}\n',
                   "metrics.jsonl:1: step: 1e+300"),
    "step_30_digits": ("metrics", f'{{"step": {BIG}, "split": "train", "metrics": {{"train/loss": 1}}}}\n',
                       f"metrics.jsonl:1: step: {BIG}"),
    "step_2_40": ("metrics", '{"step": 1099511627776, "split": "train", "metrics": {"train/loss": 0.5}}\n',
                  None),  # a whole number well inside 64 bits: kept (it overflowed the summary's ordering)
    "step_nan": ("metrics", '{"step": NaN, "split": "train", "metrics": {"train/loss": Infinity}}\n',
                 "metrics.jsonl:1: step: NaN"),
    "time_out_of_range": ("run", {"started_at": 1e300, "ended_at": float("inf"), "created_at": -5},
                          "run.json: started_at: 1e+300"),
    "pid_2_32": ("run", {"status": "running", "pid": 2**32, "pid_started": BIG}, None),
    "pid_30_digits": ("run", {"pid": BIG}, f"run.json: pid: {BIG}"),
    "wrong_types": ("run", {"id": ["a"], "name": {"x": 1}, "status": 5, "step": "many",
                            "max_steps": 1e300}, 'run.json: id: ["a"]'),
    "huge_strings": ("run", {"error": "e" * 200_000, "model": "m" * 50_000},
                     "run.json: error: \"eeee"),
}


def _plant(ws: Path, case: str) -> Path:
    kind, content, _ = EXAMPLES[case]
    d = ws / "outputs" / case
    d.mkdir(parents=True)
    info = {"id": f"id-{case}", "name": case, "status": "completed", "started_at": 1.7e9}
    if kind == "run":
        info.update(content)
        (d / rundir.METRICS).write_text('{"step": 1, "split": "train", "metrics": {"train/loss": 0.5}}\n')
    else:
        (d / rundir.METRICS).write_text(content)
    (d / rundir.RUN_JSON).write_text(_dumps(info))
    return d


def _evsys(ws: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evsys_core.cli", *argv, "--workspace", str(ws)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", sorted(EXAMPLES))
def test_each_reported_example_through_the_cli(tmp_path: Path, case: str) -> None:
    ws = tmp_path / "ws"
    make_run(ws / "outputs", "good", rows=train_rows(2))
    _plant(ws, case)
    first = _evsys(ws, "runs", "--json")
    assert first.returncode == 0 and "Traceback" not in first.stderr, first.stderr
    names = {r["path"] for r in json.loads(first.stdout)}
    assert names == {"outputs/good", f"outputs/{case}"}
    want = EXAMPLES[case][2]
    if want:
        assert f"evsys: warning: outputs/{case}/{want}" in first.stderr
    for argv in (["query", "select * from metrics"], ["show", f"outputs/{case}"]):
        p = _evsys(ws, *argv)
        assert p.returncode == 0 and "Traceback" not in p.stderr, (argv, p.stderr)
    if case == "huge_strings":
        shown = _evsys(ws, "show", f"outputs/{case}", "--json")
        assert len(json.loads(shown.stdout)["run"]["error"]) < 11_000


def _valid_config(ws: Path) -> None:
    from test_mcp_server import CONFIG

    (ws / "data").mkdir()
    (ws / "data" / "train.jsonl").write_text(
        json.dumps({"inputs": {"question": "Capital of France?"}, "expected": "Paris"}) + "\n")
    (ws / "bench" / "val").mkdir(parents=True)
    (ws / "bench" / "val" / "tasks.jsonl").write_text(json.dumps(
        {"task_id": "fr", "instruction": "Capital of France?",
         "verifier": {"kind": "in_process", "fn_name": "contains", "expected": "Paris"}}) + "\n")
    (ws / "experiments").mkdir()
    (ws / "experiments" / "go.yaml").write_text(CONFIG.format(lr=1e-4, name="go"))


def test_each_reported_example_through_mcp_list_runs_and_launch_run(tmp_path: Path) -> None:
    import anyio
    from mcp import Client

    from evsys_mcp.server import build_server

    ws = tmp_path / "ws"
    make_run(ws / "outputs", "good", rows=train_rows(2))
    for case in EXAMPLES:
        _plant(ws, case)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "evsys-run"],
                               start_new_session=True)
    try:
        make_run(ws / "outputs", "busy", status="running", pid=sleeper.pid)
        rundir.write_json_atomic(ws / "outputs" / "busy" / rundir.RUN_JSON, {
            **json.loads((ws / "outputs" / "busy" / rundir.RUN_JSON).read_text()),
            **rundir.owner(sleeper.pid)})
        _valid_config(ws)

        async def flow(c):
            listed = await c.call_tool("list_runs", {"limit": 50})
            assert not listed.is_error, listed.content[0].text
            where = await c.call_tool("list_runs", {"where": "steps is null or steps >= 0",
                                                    "sort_by": "started_at"})
            assert not where.is_error, where.content[0].text
            q = await c.call_tool("query_runs", {"sql": "select path, max_steps, pid from runs"})
            assert not q.is_error, q.content[0].text
            launch = await c.call_tool("launch_run", {"config_path": "go.yaml"})
            return listed.structured_content, q.structured_content, launch

        async def main():
            async with Client(build_server(ws)) as client:
                return await flow(client)

        listed, q, launch = anyio.run(main)
        paths = {r["run_dir"] for r in listed["runs"]}
        assert paths == {"outputs/good", "outputs/busy", *(f"outputs/{c}" for c in EXAMPLES)}
        # launch_run read the index for the concurrency limit: refused because of `busy` only
        assert launch.is_error and "already running" in launch.content[0].text
        assert "busy" in launch.content[0].text and "pid_2_32" not in launch.content[0].text
        by_path = {row[0]: row for row in q["rows"]}
        assert by_path["outputs/pid_30_digits"][2] is None
        assert by_path["outputs/wrong_types"][1] is None  # max_steps 1e300
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_step_beyond_32_bits_orders_its_metric_without_overflow(tmp_path: Path) -> None:
    """Found by the fuzz test: a step near -2**54 overflowed the final-value ordering
    (step * 2**32 + line) in 64 bits and the refresh failed."""
    make_run(tmp_path / "outputs", "huge", rows=[
        {"step": -18766623318492284, "split": "train", "metrics": {"train/mean_loss": 9.0}},
        {"step": 2**62, "split": "train", "metrics": {"train/mean_loss": 1.0}},
        {"step": 5, "split": "train", "metrics": {"train/mean_loss": 2.0}}])
    (row,) = open_index(tmp_path).query(
        "SELECT final_step, final_value, first_step FROM metric_summary WHERE key = 'train/mean_loss'").rows
    assert row == (2**62, 1.0, -18766623318492284)
