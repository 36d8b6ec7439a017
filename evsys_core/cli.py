"""`evsys` command line: one sub-command per user task.

Each command lives in the module that owns its concern and registers itself through a
`register(subparsers)` function. Those modules import nothing heavy at top level (no torch,
transformers or tinker), so commands that do not train answer in well under a second.
Exit codes: 0 ok, 1 invalid input or failed run, 2 usage.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from evsys_core.errors import EvsysError, UsageError

COMMAND_MODULES = (
    "evsys_core.validate",        # validate
    "evsys_core.runner",          # run
    "evsys_core.benchmarks.cli",  # score
    "evsys_core.history.cli",     # runs, show, best, compare, query, plot, conclude
    "evsys_core.tinker_local",    # tinker-local
    "evsys_core.jobs.cli",        # launch, status, wait, cancel, logs
    "evsys_core.ui.server",       # ui
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evsys",
        description="Train and evaluate language models from a YAML config.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"evsys {args.command}: error: {e}", file=sys.stderr)
        return 2
    except EvsysError as e:
        print(f"evsys {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"evsys {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
