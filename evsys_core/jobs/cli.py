"""`evsys launch | status | wait | cancel | logs`: the job engine at a terminal.

    evsys launch CONFIG [--set KEY=VALUE]... [--run-name NAME] [--seeds 0,1,2] [--max-concurrent N] [--json]
    evsys status RUN [--json]
    evsys wait RUN [--timeout S] [--json]          (progress on stderr)
    evsys cancel RUN [--grace S] [--json]
    evsys logs RUN [--offset BYTES] [--max-bytes N] [--json]

RUN is a run id, a unique prefix of its id or name, or its directory. The same functions
answer the MCP tools launch_run, run_status, wait_for_run, cancel_run and tail_log.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from evsys_core.errors import UsageError


def register(subparsers: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", default=".", metavar="DIR",
                        help="workspace root relative paths resolve against (default: .)")
    common.add_argument("--json", action="store_true", help="print one JSON object")

    p = subparsers.add_parser("launch", parents=[common], help="start a training run detached and return",
                              description="Check CONFIG as `evsys run` would, start the run in its own "
                                          "process and session (output in RUN_DIR/train.log) and return.")
    p.add_argument("config", metavar="CONFIG", help="path to the YAML config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value")
    p.add_argument("--run-name", help="name of the run directory (default: the local_logger run_name)")
    p.add_argument("--seeds", metavar="S,S,...",
                   help="launch one replicate group: the config once per seed, one after another in one "
                        "process (directories <run_name>-s<seed>), e.g. --seeds 0,1,2")
    p.add_argument("--max-concurrent", type=int, metavar="N",
                   help="refuse while N runs are already running (default: no limit)")
    p.set_defaults(func=_launch)

    for name, help_text, func in (("status", "a run's status, step and latest metrics", _status),
                                  ("wait", "wait until a run ends, showing progress", _wait),
                                  ("cancel", "stop a running run (SIGTERM, then SIGKILL)", _cancel),
                                  ("logs", "a page of a launched run's train.log", _logs)):
        p = subparsers.add_parser(name, parents=[common], help=help_text)
        p.add_argument("run", metavar="RUN", help="run id, name (or unique prefix), or directory")
        if name == "wait":
            p.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                           help="give up after S seconds (exit 3; default 3600)")
        if name == "cancel":
            p.add_argument("--grace", type=float, default=30.0, metavar="S",
                           help="seconds between SIGTERM and SIGKILL (default 30)")
        if name == "logs":
            p.add_argument("--offset", type=int, metavar="BYTES", help="start here (default: the last page)")
            p.add_argument("--max-bytes", type=int, default=20_000, metavar="N", help="page size (default 20000)")
        p.set_defaults(func=func)


def _engine(args: argparse.Namespace, max_concurrent: int | None = None):
    from evsys_core.jobs.engine import Engine

    return Engine(Path(args.workspace), max_concurrent=max_concurrent)


def _print(obj: dict[str, Any], as_json: bool, lines: list[str]) -> None:
    if as_json:
        print(json.dumps({k: v for k, v in obj.items() if not k.startswith("_")}, default=str))
    else:
        print("\n".join(lines))


def print_launch(launch: Any, as_json: bool) -> int:
    from evsys_core.jobs.record import SCORE

    d = {"run_id": launch.run_id, "run_name": launch.run_name, "run_dir": str(launch.run_dir),
         "pid": launch.pid, "kind": launch.kind, "status": "running", "log_path": str(launch.log_path)}
    what = "score" if launch.kind == SCORE else "run"
    lines = [f"Launched {what} {launch.run_name} ({launch.run_id}), pid {launch.pid}",
             f"Logs: {launch.log_path}",
             f"Follow: evsys wait {launch.run_id}  ·  stop: evsys cancel {launch.run_id}"]
    if launch.group_id:
        d.update(group_id=launch.group_id, group_name=launch.group_name,
                 replicates=[{"seed": r.seed, "run_id": r.run_id, "run_name": r.run_name,
                              "run_dir": str(r.run_dir)} for r in launch.replicates])
        lines = [f"Launched group {launch.group_name} ({launch.group_id}), pid {launch.pid}: "
                 + ", ".join(f"seed {r.seed} {r.run_name} ({r.run_id})" for r in launch.replicates),
                 "the seeds run one after another; each replicate logs to its own train.log",
                 f"Follow: evsys wait {launch.replicates[-1].run_id} (the last seed)  ·  "
                 f"stop all: evsys cancel {launch.run_id}  ·  then: evsys show {launch.group_name}"]
    _print(d, as_json, lines)
    return 0


def _launch(args: argparse.Namespace) -> int:
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UsageError(f"--max-concurrent must be at least 1, got {args.max_concurrent}")
    engine = _engine(args, args.max_concurrent)
    return print_launch(engine.launch_run(args.config, args.overrides, args.run_name, seeds=args.seeds),
                        args.json)


def _status_lines(st: dict[str, Any]) -> list[str]:
    from evsys_core.stats import format_metrics

    step = f"{st.get('step')}/{st.get('max_steps')}" if st.get("max_steps") else f"{st.get('step')}"
    lines = [f"{st.get('name')} ({st.get('id')}): {st.get('status')} · {st.get('kind')} · "
             f"step {step} · {st.get('elapsed_s')} s", f"Dir: {st.get('run_dir')}"]
    if st.get("error"):
        lines.append(f"Error: {st['error']}")
    metrics = st.get("final_metrics") or st.get("latest_metrics") or {}
    if metrics:
        shown = format_metrics(dict(list(metrics.items())[:60]))
        lines.append("Metrics: " + ", ".join(f"{k}={v}" for k, v in list(shown.items())[:20]))
    lines += [f"  | {line}" for line in st.get("log_tail") or []]
    return lines


def _status(args: argparse.Namespace) -> int:
    engine = _engine(args)
    st = engine.status(engine.resolve(args.run)[1])
    _print(st, args.json, _status_lines(st))
    return 0


def _printer() -> Any:
    """Progress lines on stderr, each only when it says something new."""
    last: list[str] = [""]

    def show(done: float, total: float | None, message: str) -> None:
        if message != last[0]:
            last[0] = message
            print(message, file=sys.stderr, flush=True)

    return show


def _wait(args: argparse.Namespace) -> int:
    engine = _engine(args)
    out = engine.wait(engine.resolve(args.run)[1], args.timeout, on_progress=_printer())
    _print(out, args.json, [*_status_lines(out), out["message"]])
    if out["timed_out"]:
        return 3
    return 0 if out.get("status") == "completed" else 1


def _cancel(args: argparse.Namespace) -> int:
    engine = _engine(args)
    out = engine.cancel(engine.resolve(args.run)[1], args.grace, on_progress=_printer())
    _print(out, args.json, [out["message"]])
    return 0


def _logs(args: argparse.Namespace) -> int:
    if args.max_bytes < 1:
        raise UsageError(f"--max-bytes must be at least 1, got {args.max_bytes}")
    engine = _engine(args)
    page = engine.logs(engine.resolve(args.run)[1], args.offset, args.max_bytes)
    if args.json:
        _print(page, True, [])
    else:
        sys.stdout.write(page["text"])
        if page["next_offset"] is not None:
            print(f"(more from --offset {page['next_offset']} of {page['size']} bytes)", file=sys.stderr)
    return 0
