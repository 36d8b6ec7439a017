"""The deep check of a config or a benchmark, in a child process: the server never runs
config-named code.

A deep check runs code the config names: `data.transform` is applied to every row, and python
verifiers are imported to see that they load. That code is the agent's, so it runs where the
run itself would run it, in a process of its own (`evsys validate --deep --json`, in its own
session, killed with its group if it runs past DEEP_CHECK_TIMEOUT_S), never inside the server:
for `validate_config(deep=true)` and `launch_run` on the config, for `score_benchmark` on the
benchmark directory (when a task has a python verifier). The server's own checks
(`validate_config(deep=false)`, `write_config`, score_benchmark's arguments) only parse: see
evsys_core.usercode.check_defines.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from evsys_core.jobs.process import child_env as _child_env

DEEP_CHECK_TIMEOUT_S = 120.0
MAX_REPORT_BYTES = 4 * 2**20


def deep_validate(workspace: Path, config: Path, overrides: Sequence[str] = (),
                  timeout_s: float = DEEP_CHECK_TIMEOUT_S) -> dict[str, Any]:
    """The `evsys validate --deep --json` report of `config` (a config file or a benchmark
    directory), as a dict (Report's fields)."""
    cmd = [sys.executable, "-m", "evsys_core.cli", "validate", str(config), "--deep", "--json",
           "--workspace", str(workspace)]
    for item in overrides:
        cmd += ["--set", item]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=workspace,
                                env=_child_env(), start_new_session=True, close_fds=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return _failed(config, f"the deep check took more than {timeout_s:.0f} s and was stopped "
                           "(a data.transform or a verifier module that is that slow, or hangs); "
                           "make it faster, or check it with `evsys validate --deep` yourself")
        out.seek(0)
        text = out.read(MAX_REPORT_BYTES).decode("utf-8", "replace")
        err.seek(0)
        tail = err.read()[-2000:].decode("utf-8", "replace").strip()
    try:
        report = json.loads(text)
    except ValueError:
        report = None
    if code not in (0, 1) or not isinstance(report, dict):
        return _failed(config, f"the deep check exited with status {code} without a report"
                       + (f": {tail}" if tail else ""))
    return report


def _failed(config: Path, message: str) -> dict[str, Any]:
    issue = {"file": str(config), "line": None, "column": None, "field": "", "message": message,
             "severity": "error"}
    return {"ok": False, "config_path": str(config), "deep": True, "errors": [issue], "warnings": []}
