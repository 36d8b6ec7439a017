"""Every MCP tool's answer fits an agent's context, at the largest arguments its schema allows.

A 1,500-run history (names, conclusions and errors as long as files may hold, control
characters that JSON escapes six-fold), one run with 300 metrics x 400 steps, a 2 MB summary
and log, hundreds of configs and benchmarks. Each tool is called at its schema's maximum
arguments; its text content must stay under 50,000 characters and its errors under 11,000.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from evsys_core import rundir
from evsys_mcp.server import TOOLS, build_server
from history_fixtures import config_yaml, make_run, train_rows

ANSWER_LIMIT = 50_000
ERROR_LIMIT = 11_000
WIDE = "wide_run"
WIDE_KEYS = [f"val/bench_{i:03d}/" + "pass@1_" + "k" * 60 for i in range(300)]
NASTY = "\x1b[31m\x01é" * 40  # escaped as \u001b, \u0001: six characters a byte


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("budget") / "ws"
    out = ws / "outputs"
    out.mkdir(parents=True)
    for i in range(1_500):
        d = make_run(out, f"run_{i:04d}_" + "n" * 80, rows=train_rows(4, skill=(i % 97) / 97),
                     config=config_yaml(lr=1e-4 * (1 + i % 7)), conclusion=(
                         f"## 2026-01-01T00:00:00Z — agent\n\n{NASTY}{'c' * 3000}\n\n" if i % 3 == 0 else None),
                     algorithm="score" if i % 50 == 0 else "sdft")
        if i % 10 == 0:
            info = json.loads((d / rundir.RUN_JSON).read_text())
            info["final_metrics"] = {k: 0.5 for k in WIDE_KEYS[:40]}
            rundir.write_json_atomic(d / rundir.RUN_JSON, info)
    wide = make_run(out, WIDE, status="failed", config=config_yaml(), rows=[
        {"step": s, "split": "val", "metrics": {k: s / 400 + j / 1e4 for j, k in enumerate(WIDE_KEYS)}}
        for s in range(1, 401)], summary=("é" + NASTY) * 20_000)
    info = json.loads((wide / rundir.RUN_JSON).read_text())
    info.update(error=NASTY * 2_000, final_metrics={k: 1.0 for k in WIDE_KEYS})
    rundir.write_json_atomic(wide / rundir.RUN_JSON, info)
    (wide / rundir.TRAIN_LOG).write_text((NASTY + "\n") * 10_000)
    for i in range(300):
        d = ws / "experiments" / ("sweep_" + "s" * 150) / f"cfg_{i:03d}_{'x' * 60}.yaml"
        d.parent.mkdir(parents=True, exist_ok=True)
        d.write_text(config_yaml())
        b = ws / "benchmarks" / f"bench_{i:03d}_{'b' * 150}"
        b.mkdir(parents=True)
        (b / "tasks.jsonl").write_text('{"task_id": "t"}\n')
    (ws / "data").mkdir()
    (ws / "data" / "train.jsonl").write_text(json.dumps({"inputs": {"question": "q"}, "expected": "a"}) + "\n")
    bad = "".join(f"unknown_key_{i}_{'u' * 100}: {NASTY!r}\n" for i in range(2_000))
    (ws / "experiments" / "bad.yaml").write_text(textwrap.dedent(bad))
    return ws


def cases(ws: Path) -> dict[str, list[dict[str, Any]]]:
    """The largest arguments each tool's schema allows (every tool must have an entry)."""
    wide_dir = f"outputs/{WIDE}"
    ten = [f"run_{i:04d}" for i in range(0, 90, 10)] + [WIDE]
    return {
        "list_runs": [{"limit": 100, "kind": "all"}, {"limit": 100, "metrics": WIDE_KEYS[:20], "kind": "all"},
                      {"limit": 100, "offset": 1_400, "sort_by": "name:asc"}],
        "best_runs": [{"metric": "val/val/pass@1", "limit": 100, "kind": "all"}],
        "read_summary": [{"run": wide_dir, "max_bytes": 40_000}, {"run": wide_dir, "max_bytes": 40_000, "offset": 7}],
        "get_metrics": [{"run": wide_dir, "max_points": 1_000}, {"run": wide_dir, "max_points": 1_000,
                                                                  "keys": WIDE_KEYS[:50]}],
        "plot_metrics": [{"run": wide_dir, "keys": WIDE_KEYS[:10]}, {"run": wide_dir}],
        "query_runs": [{"sql": "SELECT * FROM runs", "max_rows": 1_000},
                       {"sql": "SELECT * FROM metrics", "max_rows": 1_000, "offset": 100_000},
                       {"sql": "SELECT * FROM conclusions", "max_rows": 1_000}],
        "compare_runs": [{"runs": [ten[0], ten[-1]]}, {"runs": [ten[-1], ten[0]], "step": 400}],
        "list_configs": [{"limit": 200}],
        "list_benchmarks": [{"limit": 200}],
        "validate_config": [{"path": "bad.yaml", "deep": True}],
        "write_config": [{"path": "experiments/new.yaml",
                          "yaml_text": (ws / "experiments" / "bad.yaml").read_text()[:200_000]}],
        "run_status": [{"run": wide_dir}],
        "wait_for_run": [{"run": wide_dir, "timeout_s": 1}],
        "tail_log": [{"run": wide_dir, "max_bytes": 40_000}, {"run": wide_dir, "max_bytes": 40_000, "offset": 0}],
        "cancel_run": [{"run": wide_dir, "grace_s": 120}],
        "launch_run": [{"config_path": "bad.yaml", "overrides": [f"k{i}=" + "v" * 1990 for i in range(50)]}],
        "score_benchmark": [{"benchmark": "benchmarks", "model": "m" * 300, "metrics": ["pass@999"] * 10,
                             "num_samples": 64}],
        "record_conclusion": [{"run": wide_dir, "text": NASTY * 10 + "z" * 15_000}],
    }


def test_every_tool_has_a_budget_case(big):
    assert set(cases(big)) == {name for name, *_ in TOOLS}


@pytest.mark.parametrize("tool", [name for name, *_ in TOOLS])
def test_every_answer_fits_at_the_schemas_maximum(big, tool):
    server = build_server(big, poll_s=0.2, cancel_grace_s=1)

    async def go():
        async with Client(server) as c:
            return [await c.call_tool(tool, args) for args in cases(big)[tool]]

    for args, r in zip(cases(big)[tool], anyio.run(go)):
        assert r.content, (tool, args)
        size = sum(len(b.text) if b.type == "text" else len(b.data) for b in r.content)
        limit = ERROR_LIMIT if r.is_error else ANSWER_LIMIT
        assert size < limit, f"{tool}({list(args)}) answered {size} characters (error: {r.is_error})"
        if not r.is_error and r.structured_content is not None:
            assert len(json.dumps(r.structured_content, ensure_ascii=False)) < ANSWER_LIMIT
            assert r.content[0].text == json.dumps(r.structured_content, ensure_ascii=False,
                                                   separators=(",", ":"))  # compact, not pretty-printed
        if tool in ("list_runs", "best_runs", "read_summary", "get_metrics", "query_runs", "list_configs",
                    "list_benchmarks", "tail_log", "run_status", "compare_runs", "plot_metrics"):
            assert not r.is_error, (tool, args, r.content[0].text[:500])
