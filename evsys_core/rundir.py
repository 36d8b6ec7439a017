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

RUN_JSON = "run.json"
METRICS = "metrics.jsonl"
PREDICTIONS = "predictions"
SUMMARY = "summary.md"
CONCLUSION = "conclusion.md"
CHECKPOINTS = "checkpoints"
TRAIN_LOG = "train.log"

ACTIVE = "running"
FINAL_STATUSES = ("completed", "failed", "interrupted")


def claim_run_dir(output_dir: Path, run_name: str) -> Path:
    """Create and return a fresh directory for `run_name`, never reusing an existing one."""
    output_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = output_dir / (run_name if n == 1 else f"{run_name}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise RuntimeError(f"too many runs named {run_name!r} in {output_dir}")


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line, written whole with a single write and flushed to disk."""
    line = json.dumps(row, ensure_ascii=False, allow_nan=True) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


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
            except json.JSONDecodeError:
                continue


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON through a temp file and rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def read_run_json(run_dir: Path) -> dict[str, Any]:
    """run.json with a `running` run whose process is gone reported (and saved) as interrupted."""
    path = run_dir / RUN_JSON
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if info.get("status") == ACTIVE and not pid_alive(info.get("pid")):
        info["status"] = "interrupted"
        info.setdefault("ended_at", time.time())
        info["error"] = info.get("error") or "the run's process ended without finishing"
        try:
            write_json_atomic(path, info)
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
