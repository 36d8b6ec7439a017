"""The run directory: the contract every reader (index, CLI, MCP server) relies on.

    <output_dir>/<run_name>/
      run.json  config.yaml  metrics.jsonl  predictions/<bench>.jsonl
      summary.md  conclusion.md  checkpoints/  train.log

JSONL lines are written whole and flushed, so a killed run leaves valid files; readers
ignore a partial last line. A finished run directory is never reused: a rerun with the
same run_name gets `<run_name>-2`, `-3`, ... (claimed atomically with mkdir).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

from evsys_core import safefs

RUN_JSON = "run.json"
METRICS = "metrics.jsonl"
PREDICTIONS = "predictions"
SUMMARY = "summary.md"
CONCLUSION = "conclusion.md"
CHECKPOINTS = "checkpoints"
TRAIN_LOG = "train.log"

ACTIVE = "running"
FINAL_STATUSES = ("completed", "failed", "interrupted")


def claim_run_dir(output_dir: Path, run_name: str, workspace: Path | None = None) -> Path:
    """Create and return a fresh directory for `run_name`, never reusing an existing one.

    With `workspace`, an output_dir inside it must not lead out of it through a link."""
    root = safefs.root_for(output_dir, workspace) if workspace is not None else None
    safefs.makedirs(output_dir, root)
    for n in range(1, 10_000):
        candidate = output_dir / (run_name if n == 1 else f"{run_name}-{n}")
        try:
            safefs.mkdir_new(candidate, root)
        except FileExistsError:
            continue
        return candidate
    raise RuntimeError(f"too many runs named {run_name!r} in {output_dir}")


MIN_FREE_BYTES = 50 * 2**20


def output_dir_problem(output_dir: Path, workspace: Path | None = None) -> str | None:
    """Why run files could not be written under `output_dir` (created or not), or None.

    Probes the nearest existing folder by creating (and removing) a temporary file in it:
    permission bits alone say nothing for root or read-only mounts. Also refuses less than
    MIN_FREE_BYTES of free space there, and (with `workspace`) an output_dir inside the
    workspace that a symbolic link leads out of it."""
    import tempfile

    probe = Path(output_dir)
    if safefs.long_name(probe) is not None:
        return (f"output_dir {str(output_dir)[:120]}... has a name longer than "
                f"{safefs.NAME_MAX_BYTES} bytes")
    if workspace is not None:
        escape = safefs.problem(probe, safefs.root_for(probe, workspace))
        if escape:
            return escape
    while not os.path.exists(probe) and probe != probe.parent:  # os.path: False, never OSError
        probe = probe.parent
    if not os.path.isdir(probe):
        return f"{probe} is a file, so output_dir {output_dir} cannot be created"
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        return f"cannot write in {probe} ({e.strerror or e})"
    try:
        st = os.statvfs(probe)
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize
    if free < MIN_FREE_BYTES:
        return (f"only {free / 2**20:.1f} MB free under {probe} (the disk is full or nearly); "
                f"free some space (at least {MIN_FREE_BYTES // 2**20} MB)")
    return None


def append_jsonl(path: Path, row: dict[str, Any], root: Path | None = None) -> None:
    """Append one JSON line, written whole with a single write (or not at all: a full disk
    leaves no partial line). `root`: the run directory the file must stay in (safefs)."""
    line = json.dumps(row, ensure_ascii=False, allow_nan=True) + "\n"
    safefs.append(path, line, root)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the whole lines of a JSONL file; a partial or corrupt trailing line is skipped."""
    if not path.exists():
        return
    with path.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                return  # a line still being written
            try:
                yield json.loads(raw)
            except (json.JSONDecodeError, RecursionError):
                continue


def write_json_atomic(path: Path, data: dict[str, Any], root: Path | None = None) -> None:
    """Write JSON through a temp file and rename, so readers never see half a file."""
    safefs.write_atomic(path, json.dumps(data, indent=2, default=str) + "\n", root)


def write_text_atomic(path: Path, text: str, root: Path | None = None) -> None:
    safefs.write_atomic(path, text, root)


def pid_alive(pid: int | None, started: int | None = None) -> bool:
    """Is process `pid` alive? With `started` (its start time, `process_start_time`), a live
    process that started at another time is a different process that reused the pid: dead."""
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2**31:  # run.json is just a file
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    # a zombie child of ours counts as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return True  # no procfs: trust the pid
    if fields[0] == "Z":
        return False
    return started is None or int(fields[19]) == int(started)


def process_start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks after boot, /proc/PID/stat field 22); None without procfs.

    Stored in run.json as `pid_started` beside `pid`, so a reused pid is not taken for the run."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(") ", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def owner(pid: int | None = None) -> dict[str, Any]:
    """The run.json fields naming the process that runs a run (default: this one)."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "pid_started": process_start_time(pid)}


def run_alive(info: dict[str, Any]) -> bool:
    """Is the process named by a run.json (`pid`, `pid_started`) still the run's process?"""
    started = info.get("pid_started")
    return pid_alive(info.get("pid"), started if isinstance(started, int) else None)


def read_run_json(run_dir: Path) -> dict[str, Any]:
    """run.json with a `running` run whose process is gone reported (and saved) as interrupted."""
    path = run_dir / RUN_JSON
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(info, dict):
        return {}
    if info.get("status") == ACTIVE and not run_alive(info):
        info["status"] = "interrupted"
        info["ended_at"] = info.get("ended_at") or time.time()
        info["error"] = info.get("error") or "the run's process ended without finishing"
        try:
            write_json_atomic(path, info, run_dir)
        except OSError:
            pass
    return info


def new_run_id() -> str:
    import uuid

    return uuid.uuid4().hex[:12]


def inferred_run_id(run_dir: Path) -> str:
    """A stable id for a run directory that has no run.json (runs from before it existed)."""
    import hashlib

    return hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12]
