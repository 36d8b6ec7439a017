"""B5 — MCP: `list_runs` and `query_runs` latency through a real MCP client at scale.

    .venv/bin/python bench/bench_mcp.py [--quick] [--reps 5] [--calls 20]

`evsys-mcp --workspace <history>` (10,000 runs x 200 steps; 1,000 with --quick) is spawned
once and driven over stdio by the MCP SDK's client, as an agent would. The history is B4's
(bench/.cache) when bench_history.py built it in this checkout, else the same generator's
output cached in ~/.cache/evsys/bench ($EVSYS_BENCH_CACHE), generated once (~30 s) and
indexed by the first call (~30 s). After one warm-up call of each tool, each repetition makes
`--calls` calls of each tool, interleaved, and records every call's round trip; the table
gives the min / median (p50) / p90 / max over all calls, and the p50 of each repetition
(min / median / max across repetitions). Every call includes the server's index refresh (the
runs are unchanged: a settled check, with a full walk every 2 s; docs/history.md). A last row
times `--reps` fresh spawns until `tools/list` is answered (B3's measurement, here on the same
history).
  - list_runs {}: the 20 newest runs with their headline metrics;
  - list_runs {sort_by: "val/val/pass@1:desc", limit: 5}: the top 5;
  - query_runs: the top 5 by final val/val/pass@1 in SQL (latest_metrics joined to runs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import log  # noqa: E402

TITLE = "B5 — MCP latency"
TARGET = 0.050
SQL = ("SELECT r.name, l.value FROM latest_metrics l JOIN runs r USING (run_id) "
       "WHERE l.key = 'val/val/pass@1' ORDER BY l.value DESC LIMIT 5")
CALLS = [
    ("`list_runs` (default: 20 newest)", "list_runs", {}),
    ("`list_runs` top 5 by val/val/pass@1", "list_runs", {"sort_by": "val/val/pass@1:desc", "limit": 5}),
    ("`query_runs` top 5 (SQL)", "query_runs", {"sql": SQL}),
]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def measure(ws: Path, reps: int, calls: int) -> dict:
    import anyio
    from mcp import Client
    from mcp.client.stdio import stdio_client

    server = common.mcp_server(ws)
    out: dict[str, list[list[float]]] = {label: [] for label, _, _ in CALLS}

    async def go() -> None:
        with open(os.devnull, "w") as err:
            async with Client(stdio_client(server, errlog=err), read_timeout_seconds=600) as client:
                for label, tool, argsd in CALLS:  # warm-up (and, on a fresh index, the build)
                    r = await client.call_tool(tool, argsd)
                    assert not r.is_error, r
                for rep in range(reps):
                    per = {label: [] for label, _, _ in CALLS}
                    for _ in range(calls):
                        for label, tool, argsd in CALLS:
                            t = time.perf_counter()
                            r = await client.call_tool(tool, argsd)
                            per[label].append(time.perf_counter() - t)
                            assert not r.is_error, r
                    for label in per:
                        out[label].append(per[label])
                    log(f"B5 rep {rep}: " + ", ".join(f"{l.split('`')[1]} p50 {statistics.median(v) * 1e3:.1f} ms"
                                                     for l, v in per.items()))

    anyio.run(go)
    return out


STARTUP = """\
import time, anyio
from evsys_mcp.server import build_server
tools = anyio.run(build_server({ws!r}).list_tools)
assert len(tools) >= 10
print(time.process_time())
"""


def startup_cpu(ws: Path) -> float:
    """CPU seconds a fresh interpreter spends importing evsys-mcp, building the server and
    listing its tools (in-process): what spawn -> tools/list costs on an idle machine, less
    the stdio exchange, and far less sensitive to other work on the machine than wall time."""
    out = subprocess.run([sys.executable, "-c", STARTUP.format(ws=str(ws))], capture_output=True, text=True,
                         check=True, env=dict(os.environ), cwd=ws)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(ap)
    ap.add_argument("--calls", type=int, default=20, help="calls of each tool per repetition")
    ap.add_argument("--workspace", type=Path, default=None)
    args = ap.parse_args(argv)
    n_runs = 1000 if args.quick else 10_000
    ws = args.workspace or common.CACHE / f"history-{n_runs}x200"
    if not (ws / "bench_manifest.json").exists() and args.workspace is None:
        import bench_history

        ws = bench_history.ensure_history(n_runs, 200, common.SHARED_CACHE)
    import bench_startup

    loads = [common.load1()]
    res = measure(ws, args.reps, args.calls)
    spawns = [bench_startup.mcp_tools_list(ws) for _ in range(args.reps + 1)][1:]  # one warm-up
    cpus = [startup_cpu(ws) for _ in range(args.reps + 1)][1:]
    loads.append(common.load1())
    cmd = "bench/bench_mcp.py" + (" --quick" if args.quick else "")
    lines = [f"## {TITLE}", "",
             f"`{cmd}`: `evsys-mcp` over stdio, driven by the MCP SDK's client, on a history of {n_runs:,} runs "
             f"x 200 steps; {args.reps} repetitions x {args.calls} calls of each tool after a warm-up, "
             "each call timed at the client (round trip, including the server's index refresh). "
             + common.conditions(loads[0], loads[-1]), "",
             "| call | min | p50 | p90 | max | p50 per repetition (min / median / max) | target | |",
             "|---|---|---|---|---|---|---|---|"]
    for label, reps in res.items():
        flat = [x for r in reps for x in r]
        p50s = [statistics.median(r) for r in reps]
        p50 = statistics.median(flat)
        ok = common.verdict(p50 < TARGET, f"{common.fmt_s(p50 - TARGET)} over")
        if n_runs < 10_000:
            ok = f"(target is for 10,000 runs) {ok}"
        lines.append(f"| {label} | {common.fmt_s(min(flat))} | {common.fmt_s(p50)} | {common.fmt_s(pct(flat, 0.9))} | "
                     f"{common.fmt_s(max(flat))} | {common.fmt3(p50s)} | p50 < {common.fmt_s(TARGET)} | {ok} |")
    lines += ["", "| spawn → initialize → `tools/list` answered | min / median / max | target | |", "|---|---|---|---|",
              f"| `evsys-mcp`, {args.reps} fresh processes after a warm-up (wall time) | {common.fmt3(spawns)} | < 1 s | "
              f"{common.verdict(statistics.median(spawns) < 1.0, 'over')} |",
              f"| the same start-up's CPU time (import, build, list tools in-process; {args.reps} fresh processes) | "
              f"{common.fmt3(cpus)} | | (CPU time grows with the load too; see the note) |"]
    note = common.BENCH / "notes" / "mcp.md"
    if note.exists():
        lines += ["", note.read_text().strip()]
    common.finish(TITLE, "\n".join(lines) + "\n", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
