"""B3 — start-up: how long the commands an agent calls most take, from a cold process.

    .venv/bin/python bench/bench_startup.py [--quick] [--reps 5] [--runs-workspace DIR]

Each measurement starts a fresh process (`.venv/bin/evsys`, `.venv/bin/evsys-mcp`), as an
agent would, with the model cache warm (the GGUF already converted); one warm-up, then
`--reps` repetitions:
  - `evsys run` to the first finished step: the wall time from spawning `evsys run` on an SDFT
    config (the SDFT walkthrough's settings: batch 4, <= 32 tokens, top-K 20, LoRA r8, no
    benchmark) until the step-1 train row is in metrics.jsonl, and until the process exits;
  - `evsys validate --deep` on that config;
  - `evsys runs` in the B4 history workspace (1,000 runs with --quick, else 10,000; the index
    already built, so this is a nothing-changed refresh plus the query and the table);
  - `evsys-mcp` answering `tools/list`: spawn, MCP initialize, tools/list, through the SDK's
    stdio client.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import capitals  # noqa: E402
import common  # noqa: E402
from common import log  # noqa: E402

TITLE = "B3 — start-up"
BIN = common.ROOT / ".venv" / "bin"
TARGETS = {"first_step": 10.0, "validate": 1.0, "runs": 1.0, "mcp": 1.0}

CONFIG = textwrap.dedent("""\
    model: { name: SmolLM2-135M-Instruct }
    backend: { kind: local, device: cpu }
    data: { source_kind: jsonl, path: data/train.jsonl }
    algorithm:
      kind: sdft
      params: { learning_rate: 1.0e-4, max_steps: 1, batch_size: 4, lora_rank: 8, topk: 20,
                max_tokens: 32, user_template: "{question}" }
    callbacks:
      - { kind: local_logger, params: { output_dir: outputs, run_name: startup } }
    seed: 0
    """)


def make_workspace() -> Path:
    ws = Path(tempfile.mkdtemp(prefix="evsys-bench-startup-"))
    (ws / "data").mkdir()
    (ws / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in capitals.rows()[:16]))
    (ws / "config.yaml").write_text(CONFIG)
    return ws


def first_step(ws: Path, rep: int) -> tuple[float, float]:
    """(seconds to the step-1 train row, seconds to exit) of one `evsys run`."""
    name = f"startup-{rep}-{os.getpid()}"
    metrics = ws / "outputs" / name / "metrics.jsonl"
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(BIN / "evsys"), "run", "config.yaml", "--run-name", name], cwd=ws,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = None
    while proc.poll() is None:
        if first is None and metrics.exists():
            for line in metrics.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if row.get("split") == "train" and row.get("step") == 1:
                    first = time.perf_counter() - t0
        time.sleep(0.01)
    end = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"evsys run failed ({proc.returncode}): {proc.stderr.read()[-2000:]}")
    return (first if first is not None else end), end


def cli(args: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([str(BIN / "evsys"), *args], cwd=cwd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"evsys {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return dt


def mcp_tools_list(ws: Path) -> float:
    import anyio
    from mcp import Client
    from mcp.client.stdio import stdio_client

    server = common.mcp_server(ws)

    async def go() -> float:
        t0 = time.perf_counter()
        with open(os.devnull, "w") as err:
            async with Client(stdio_client(server, errlog=err), read_timeout_seconds=120) as client:
                tools = await client.list_tools()
                dt = time.perf_counter() - t0
        assert len(tools.tools) >= 10, tools
        return dt

    return anyio.run(go)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(ap)
    ap.add_argument("--runs-workspace", type=Path, default=None,
                    help="workspace for `evsys runs` (default: the B4 history in bench/.cache)")
    args = ap.parse_args(argv)
    n_runs = 1000 if args.quick else 10_000
    runs_ws = args.runs_workspace or common.CACHE / f"history-{n_runs}x200"
    loads = [common.load1()]
    ws = make_workspace()
    res: dict[str, list[float]] = {"first_step": [], "run_exit": [], "validate": [], "runs": [], "mcp": []}
    try:
        for rep in range(args.reps + 1):  # rep 0 is the warm-up
            f, e = first_step(ws, rep)
            v = cli(["validate", "--deep", "config.yaml"], ws)
            r = cli(["runs"], runs_ws) if runs_ws.exists() else float("nan")
            m = mcp_tools_list(ws)
            log(f"B3 rep {rep}: first step {f:.2f} s (exit {e:.2f} s), validate --deep {v:.2f} s, "
                f"runs {r:.2f} s, mcp tools/list {m:.2f} s")
            if rep:
                for k, x in zip(("first_step", "run_exit", "validate", "runs", "mcp"), (f, e, v, r, m)):
                    res[k].append(x)
    finally:
        shutil.rmtree(ws, ignore_errors=True)
    loads.append(common.load1())

    cmd = "bench/bench_startup.py" + (" --quick" if args.quick else "")
    rows = [
        ("`evsys run` → first finished step (SDFT, batch 4, <= 32 tokens)", "first_step"),
        ("`evsys run` → process exit (1 step, checkpoint, summary)", "run_exit"),
        ("`evsys validate --deep`", "validate"),
        (f"`evsys runs` ({n_runs:,} runs indexed)", "runs"),
        ("`evsys-mcp`: spawn → initialize → `tools/list` answered", "mcp"),
    ]
    lines = [f"## {TITLE}", "",
             f"`{cmd}`: a fresh process each time, model cache warm, {args.reps} repetitions after a warm-up, "
             f"{common.usable_cores()} cores. " + common.conditions(loads[0], loads[-1]), "",
             "| command | min | median | max | target | |", "|---|---|---|---|---|---|"]
    for label, key in rows:
        xs = res[key]
        if not xs or any(x != x for x in xs):
            lines.append(f"| {label} | | | | | not measured (no history workspace: run bench_history.py first) |")
            continue
        lo, mid, hi = common.stats(xs)
        tgt = TARGETS.get(key)
        ok = "" if tgt is None else common.verdict(mid < tgt, f"{common.fmt_s(mid - tgt)} over")
        lines.append(f"| {label} | {common.fmt_s(lo)} | {common.fmt_s(mid)} | {common.fmt_s(hi)} | "
                     f"{'< ' + common.fmt_s(tgt) if tgt else ''} | {ok} |")
    note = common.BENCH / "notes" / "startup.md"
    if note.exists():
        lines += ["", note.read_text().strip()]
    common.finish(TITLE, "\n".join(lines) + "\n", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
