"""Hand-made run directories for the history tests, written with evsys_core.rundir helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from evsys_core import rundir

OLD = time.time() - 3600  # file times used by `age()`: well outside the "too recent" window


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def make_run(
    out: Path,
    name: str,
    *,
    status: str | None = "completed",
    pid: int | None = None,
    rows: Iterable[dict[str, Any]] = (),
    config: str | None = None,
    summary: str | None = None,
    predictions: dict[str, list[dict[str, Any]]] | None = None,
    conclusion: str | None = None,
    started_at: float | None = None,
    algorithm: str = "sdft",
) -> Path:
    """A run directory; `status=None` writes no run.json (a run from before run.json)."""
    d = rundir.claim_run_dir(out, name)
    if status is not None:
        t = started_at if started_at is not None else time.time() - 600
        rundir.write_json_atomic(d / rundir.RUN_JSON, {
            "id": rundir.new_run_id(), "name": d.name, "status": status,
            "created_at": t - 1, "started_at": t,
            "ended_at": None if status == "running" else t + 60,
            "algorithm": algorithm, "model": "SmolLM2-135M-Instruct", "backend": "local",
            "config_hash": "abc", "git_commit": "deadbeef", "parent_run_id": None,
            "pid": pid if pid is not None else (os.getpid() if status == "running" else None),
            "step": None, "max_steps": 10, "error": None, "config_path": "config.yaml",
            "final_metrics": {},
        })
    if config is not None:
        (d / "config.yaml").write_text(config)
    for row in rows:
        rundir.append_jsonl(d / rundir.METRICS, row)
    if not (d / rundir.METRICS).exists():
        (d / rundir.METRICS).touch()
    if summary is not None:
        (d / rundir.SUMMARY).write_text(summary)
    for bench, preds in (predictions or {}).items():
        (d / rundir.PREDICTIONS).mkdir(exist_ok=True)
        for p in preds:
            rundir.append_jsonl(d / rundir.PREDICTIONS / f"{bench}.jsonl", p)
    if conclusion is not None:
        (d / rundir.CONCLUSION).write_text(conclusion)
    return d


def config_yaml(lr: float = 1e-4, topk: int = 20, max_steps: int = 10) -> str:
    return (
        "model: {name: SmolLM2-135M-Instruct}\n"
        "backend: {kind: local}\n"
        "data: {source_kind: jsonl, path: data/train.jsonl}\n"
        "algorithm:\n  kind: sdft\n"
        f"  params: {{learning_rate: {lr}, max_steps: {max_steps}, batch_size: 4, topk: {topk}}}\n"
        "seed: 0\n"
    )


def train_rows(steps: int, start: int = 1, val_every: int = 2, val_key: str = "val/val/pass@1",
               skill: float = 0.5) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for s in range(start, start + steps):
        rows.append({"step": s, "split": "train", "metrics": {"train/mean_loss": 1.0 / s}})
        if val_every and s % val_every == 0:
            rows.append({"step": s, "split": "val",
                         "metrics": {val_key: round(min(1.0, skill * s / 10), 4)}})
    return rows


def age(root: Path, when: float = OLD) -> None:
    """Set every file and folder under `root` (not .evsys) to an old time."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [n for n in dirnames if n != ".evsys"]
        for n in filenames:
            os.utime(os.path.join(dirpath, n), (when, when))
        os.utime(dirpath, (when, when))


def touch_dir(path: Path) -> None:
    """Give a folder a fresh, old-but-different mtime (as an entry change would)."""
    t = OLD + 10
    os.utime(path, (t, t))
