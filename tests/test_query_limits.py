"""One time limit for every read of the index that runs user SQL, and Ctrl-C that works.

`evsys query`, `evsys runs --where`, `evsys best --where`, MCP `query_runs` and
`list_runs(where=...)` all go through `Index._read`, which runs the work in a helper thread
and interrupts DuckDB at the limit or on Ctrl-C (DuckDB does not look at Python's signals
while it executes). Real processes, a real SIGINT, a real MCP client.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client

from evsys_mcp.server import build_server
from history_fixtures import make_run, train_rows

# runs for many minutes: a trillion rows, filtered so nothing can skip them
SLOW_SQL = "select count(*) from range(1000000000000) t(i) where i % 7 = 3"
SLOW_WHERE = f"({SLOW_SQL}) > 0"


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    w = tmp_path / "ws"
    make_run(w / "outputs", "a", rows=train_rows(4))
    make_run(w / "outputs", "b", rows=train_rows(4, skill=0.9))
    return w


def _evsys(ws: Path, *argv: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "evsys_core.cli", *argv, "--workspace", str(ws)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_ctrl_c_stops_a_slow_evsys_query_with_one_line_and_exit_130(ws: Path) -> None:
    # no time limit: only the SIGINT can end it
    p = _evsys(ws, "query", SLOW_SQL, "--timeout", "0",  # a shell's background job ignores SIGINT
               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    snapshot = ws / ".evsys" / "state.marshal"  # written once the refresh is done
    deadline = time.monotonic() + 120
    while not snapshot.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # into the query
    assert p.poll() is None, p.communicate()
    p.send_signal(signal.SIGINT)
    try:
        out, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail("evsys query ignored Ctrl-C")
    assert p.returncode == 130
    assert err.strip().splitlines() == ["evsys query: interrupted"], err
    assert out == ""


@pytest.mark.parametrize("argv", [
    ["query", SLOW_SQL],
    ["runs", "--where", SLOW_WHERE],
    ["best", "val/val/pass@1", "--where", SLOW_WHERE],
], ids=["query", "runs--where", "best--where"])
def test_every_cli_path_with_user_sql_stops_at_the_time_limit(ws: Path, argv: list[str]) -> None:
    p = _evsys(ws, *argv, "--timeout", "1")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1, err
    assert "ran longer than 1 s and was stopped" in err and "Traceback" not in err
    assert out == ""


def test_the_time_limit_is_documented_and_refuses_a_negative_value(ws: Path) -> None:
    p = _evsys(ws, "runs", "--help")
    out, _ = p.communicate(timeout=60)
    assert "--timeout S" in out and "default 10" in out
    p = _evsys(ws, "runs", "--timeout", "-1")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "--timeout must be 0" in err


def test_a_slow_mcp_query_does_not_block_the_other_index_tools(ws: Path) -> None:
    server = build_server(ws, query_timeout_s=2.0)
    results: dict[str, object] = {}

    async def main() -> None:
        async with Client(server) as client:
            async def slow(tool: str, args: dict) -> None:
                results[tool] = await client.call_tool(tool, args)

            with anyio.fail_after(90):  # without the limit the slow calls never return
                async with anyio.create_task_group() as tg:
                    tg.start_soon(slow, "list_runs", {"where": SLOW_WHERE})
                    tg.start_soon(slow, "query_runs", {"sql": SLOW_SQL})
                    await anyio.sleep(0.5)
                    results["plain"] = await client.call_tool("list_runs", {})
                    results["sorted"] = await client.call_tool(
                        "list_runs", {"sort_by": "val/val/pass@1:desc", "limit": 1})

    anyio.run(main)
    for tool in ("list_runs", "query_runs"):
        r = results[tool]
        assert r.is_error and "ran longer than 2 s and was stopped" in r.content[0].text, tool
    plain = results["plain"]
    assert not plain.is_error and {r["name"] for r in plain.structured_content["runs"]} == {"a", "b"}
    top = results["sorted"].structured_content["runs"]
    assert [r["name"] for r in top] == ["b"]
