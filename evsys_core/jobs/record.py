"""The run.json record a run starts with: one function for training runs, score runs and the
record a launcher writes before its child takes over (docs/design.md, "The run directory")."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from evsys_core import rundir

TRAIN = "train"
SCORE = "score"
KINDS = (TRAIN, SCORE)


def shown_path(path: Path | str | None, workspace: Path | None) -> str | None:
    """A path as run.json keeps it: relative to the workspace when inside it."""
    if path is None:
        return None
    p = Path(path)
    if workspace is not None:
        try:
            return str(p.resolve().relative_to(Path(workspace).resolve()))
        except (ValueError, OSError):
            pass
    return str(p)


def new_record(run_dir: Path, *, kind: str, algorithm: str, model: str, backend: str,
               run_id: str | None = None, pid: int | None = None, max_steps: int | None = None,
               config_path: str | None = None, config_hash: str | None = None,
               git_commit: str | None = None, parent_run_id: str | None = None,
               **extra: Any) -> dict[str, Any]:
    """A `running` run.json for `run_dir` owned by `pid` (default: this process)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    now = time.time()
    return {
        "id": run_id or rundir.new_run_id(), "name": run_dir.name, "kind": kind, "status": rundir.ACTIVE,
        "created_at": now, "started_at": now, "ended_at": None,
        "algorithm": algorithm, "model": model, "backend": backend,
        "config_hash": config_hash, "git_commit": git_commit, "parent_run_id": parent_run_id,
        **rundir.owner(pid if pid is not None else os.getpid()),
        "step": 0, "max_steps": max_steps, "error": None, "config_path": config_path,
        "final_metrics": {}, **extra,
    }


def kind_of(info: dict[str, Any]) -> str:
    """A run's kind; records from before `kind` existed are told apart by their algorithm."""
    kind = info.get("kind")
    if kind in KINDS:
        return kind
    return SCORE if info.get("algorithm") == SCORE else TRAIN
