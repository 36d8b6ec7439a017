"""evsys-mcp: the MCP server through which a coding agent drives evsys (stdio transport).

    evsys-mcp [--workspace DIR] [--max-concurrent-runs N] [--read-only]

`build_server()` assembles the server (tests use it in-process); `main()` is the console
script. Logs go to stderr; stdout carries only the protocol.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from mcp_types import ToolAnnotations
from pydantic import ConfigDict

from evsys_core.errors import EvsysError, RunError
from evsys_core.jobs import pages

from . import budget, paths
from .tools import EvsysTools

log = logging.getLogger("evsys_mcp")

def _hints(read_only: bool, destructive: bool, idempotent: bool, open_world: bool = False) -> ToolAnnotations:
    return ToolAnnotations(read_only_hint=read_only, destructive_hint=destructive, idempotent_hint=idempotent,
                           open_world_hint=open_world)


_RO = _hints(True, False, True)
_RO_LIVE = _hints(True, False, False)  # reads a state that changes while a run goes on

# (tool name, title, annotations, writes or launches)
TOOLS: list[tuple[str, str, ToolAnnotations, bool]] = [
    ("list_runs", "List runs", _RO, False),
    ("best_runs", "Rank runs by a metric", _RO, False),
    ("read_summary", "Read a run's summary", _RO, False),
    ("get_metrics", "Get a run's metric curves", _RO, False),
    ("plot_metrics", "Plot a run's learning curves", _RO, False),
    ("query_runs", "Query the run index (SQL)", _RO, False),
    ("compare_runs", "Compare runs", _RO, False),
    ("list_configs", "List configs", _RO, False),
    ("list_benchmarks", "List benchmarks", _RO, False),
    ("validate_config", "Validate a config", _RO, False),
    ("run_status", "Run status", _RO_LIVE, False),
    ("wait_for_run", "Wait for a run", _RO_LIVE, False),
    ("tail_log", "Read a run's log", _RO_LIVE, False),
    # writing a file that exists needs overwrite=true, so a repeated call is refused: not idempotent
    ("write_config", "Write a config", _hints(False, True, False), True),
    ("launch_run", "Launch a training run", _hints(False, False, False, True), True),
    ("cancel_run", "Cancel a run", _hints(False, True, True), True),
    ("score_benchmark", "Score a model on a benchmark", _hints(False, False, False, True), True),
    ("record_conclusion", "Record a conclusion", _hints(False, False, False), True),
]
WRITE_TOOLS = frozenset(name for name, _, _, writes in TOOLS if writes)
# arguments of which exactly one must be given
ONE_OF: dict[str, tuple[str, ...]] = {"score_benchmark": ("model", "run")}

INSTRUCTIONS = """\
evsys trains and evaluates language models from YAML configs. Every run leaves a directory
(run.json, metrics.jsonl, predictions/, summary.md, conclusion.md) and an index over all of
them. Loop: list_runs / query_runs and read past conclusions first; write_config one change
(experiments/<name>.yaml); validate_config; launch_run; wait_for_run; read_summary /
get_metrics; record_conclusion; repeat. Paths are relative to the workspace: {workspace}"""

AUTORESEARCH = """\
You are running experiments with evsys through the evsys-mcp tools. Goal: {goal}

Work in a loop, one experiment per iteration:
1. Read what is known. list_runs (newest first), best_runs for the metric you care about,
   and query_runs, e.g.
   SELECT r.name, r.status, c.text FROM runs r JOIN conclusions c ON c.run_id = r.run_id
   — read every past conclusion before deciding anything. Keep a short research log.
2. Decide ONE change to test (one hyperparameter, one data or algorithm option) and say
   what you expect and why. Never repeat a run whose conclusion already answers the question.
3. write_config to experiments/<short_name>.yaml (start from the best config so far;
   list_configs and list_benchmarks show what exists), then
   validate_config; fix every issue it reports before going on.
4. launch_run (it returns at once), then wait_for_run until the status is final
   (call it again if it times out; tail_log shows the output, cancel_run stops a run that
   is clearly broken).
5. Measure: read_summary, get_metrics (or plot_metrics to see the curves); score_benchmark
   (a detached score run: wait_for_run on it too) if the config has no in-loop benchmark for
   what you care about; compare_runs against the best run so far.
6. record_conclusion on the run: what changed, the compare_runs verdict with its delta, 95% CI,
   p-value, paired tasks and seeds, whether the expectation held, and what to try next. Call a
   change better only on a `better` verdict; `inconclusive` is not an improvement: add
   replicates (launch_run with seeds="0,1,2" for both configs, then compare_runs on the two
   group names, which pools every replicate's tasks) or tasks before concluding. A run without
   a conclusion is a wasted run.
7. Go back to 1. Stop when the budget is spent or the last changes stopped helping, and end
   with a summary of the best config and the evidence for it.
"""


def build_server(workspace: Path | str, max_concurrent_runs: int = 1, read_only: bool = False,
                 *, poll_s: float | None = None, cancel_grace_s: float | None = None,
                 query_timeout_s: float | None = None) -> MCPServer:
    """The evsys MCP server over `workspace` (the tests use it in-process)."""
    ws = Path(workspace).resolve()
    if not ws.is_dir():
        raise EvsysError(f"workspace {workspace} does not exist or is not a directory; create it or pass "
                         "--workspace DIR")
    if max_concurrent_runs < 1:
        raise EvsysError(f"--max-concurrent-runs must be at least 1, got {max_concurrent_runs}")
    extra: dict[str, Any] = {}
    if poll_s is not None:
        extra["poll_s"] = poll_s
    if cancel_grace_s is not None:
        extra["cancel_grace_s"] = cancel_grace_s
    if query_timeout_s is not None:
        if query_timeout_s <= 0:
            raise EvsysError(f"--query-timeout must be more than 0 seconds, got {query_timeout_s:g}")
        extra["query_timeout_s"] = query_timeout_s
    tools = EvsysTools(ws, max_concurrent_runs, **extra)
    server = MCPServer("evsys", instructions=INSTRUCTIONS.format(workspace=ws), version=_version(),
                       log_level="WARNING")
    for name, title, annotations, writes in TOOLS:
        if writes and read_only:
            continue
        server.add_tool(getattr(tools, name), name=name, title=title, annotations=annotations)
        _strict(server, name)
    # resources are read, not watched, and the tool list never changes: advertise neither
    # resources.subscribe nor change notifications (the listen stream is what grants them)
    for method in ("resources/subscribe", "resources/unsubscribe", "subscriptions/listen"):
        server._lowlevel_server._request_handlers.pop(method, None)
    _add_resources(server, tools)
    _add_prompt(server)
    server.evsys_tools = tools  # type: ignore[attr-defined]  # for tests and introspection
    return server


def _strict(server: MCPServer, name: str) -> None:
    """Refuse arguments the tool does not take (a typo is an error, not silently ignored), and
    declare the arguments of which exactly one must be given."""
    tool = server._tool_manager.get_tool(name)
    base = tool.fn_metadata.arg_model
    strict = type(base.__name__, (base,), {"model_config": ConfigDict(extra="forbid", arbitrary_types_allowed=True),
                                           "__module__": base.__module__})
    tool.fn_metadata.arg_model = strict
    schema = strict.model_json_schema(by_alias=True)
    if name in ONE_OF:
        schema["oneOf"] = [{"required": [arg]} for arg in ONE_OF[name]]
    tool.parameters = schema


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("evsys")
    except Exception:  # noqa: BLE001
        return "0"


def _resource_text(tools: EvsysTools, run_id: str, filename: str) -> str:
    try:
        rid, run_dir = tools._resolve(run_id)
    except RunError as e:
        raise ResourceNotFoundError(str(e)) from e
    except EvsysError as e:
        raise ResourceError(str(e)) from e
    path = run_dir / filename
    if not path.is_file():
        raise ResourceNotFoundError(f"run {rid} has no {filename} yet")
    try:
        safe = paths.confined_file(tools.workspace, path, filename)
    except EvsysError as e:
        raise ResourceError(str(e)) from e
    page = budget.page(lambda o, n: pages.read_bytes(safe, o, n), 0, budget.FIT_CHARS)
    text = page.text.replace(str(tools.workspace) + os.sep, "")  # paths as the tools show them
    if page.next_offset is not None:
        text += (f"\n… [cut at {page.next_offset} of {page.size} bytes; read_summary and get_metrics page "
                 "through the rest]\n")
    return text


def _add_resources(server: MCPServer, tools: EvsysTools) -> None:
    @server.resource("evsys://runs/{run_id}/summary", mime_type="text/markdown",
                     description="the run's summary.md")
    def run_summary(run_id: str) -> str:
        return _resource_text(tools, run_id, "summary.md")

    @server.resource("evsys://runs/{run_id}/config", mime_type="application/yaml",
                     description="the resolved config the run ran with")
    def run_config(run_id: str) -> str:
        return _resource_text(tools, run_id, "config.yaml")

    @server.resource("evsys://runs/{run_id}/metrics", mime_type="application/jsonl",
                     description="the run's metrics.jsonl")
    def run_metrics(run_id: str) -> str:
        return _resource_text(tools, run_id, "metrics.jsonl")


def _add_prompt(server: MCPServer) -> None:
    @server.prompt(name="autoresearch", description="the experiment loop an agent follows with these tools")
    def autoresearch(goal: str = "improve the held-out pass@1 of the SDFT walkthrough") -> str:
        return AUTORESEARCH.format(goal=goal)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="evsys-mcp", description="MCP server (stdio) for driving evsys from an agent.")
    p.add_argument("--workspace", default=".", metavar="DIR",
                   help="root that every path is confined to and relative paths resolve against (default: .)")
    p.add_argument("--max-concurrent-runs", type=int, default=1, metavar="N",
                   help="refuse launch_run while N runs are running (default 1)")
    p.add_argument("--read-only", action="store_true",
                   help="offer only tools that read (no write_config, launch_run, cancel_run, score_benchmark, "
                        "record_conclusion)")
    p.add_argument("--query-timeout", type=float, default=None, metavar="S",
                   help="stop any index query (query_runs, list_runs where/sort_by) after S seconds "
                        "(default: the index's limit, 10 s)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("evsys-mcp %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=args.log_level, handlers=[handler], force=True)
    try:
        server = build_server(args.workspace, args.max_concurrent_runs, args.read_only,
                              query_timeout_s=args.query_timeout)
    except EvsysError as e:
        print(f"evsys-mcp: error: {e}", file=sys.stderr)
        return 2
    log.info("serving workspace %s over stdio (max %d concurrent runs%s)", Path(args.workspace).resolve(),
             args.max_concurrent_runs, ", read-only" if args.read_only else "")
    try:
        server.run("stdio")
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
