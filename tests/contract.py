"""The run-directory contract (docs/design.md), as one assertion helper shared by the tests."""

from __future__ import annotations

import json
from pathlib import Path


CEILING_KEYS = {"train/teacher_pass@1", "train/teacher_pass@1_stderr", "train/student_pass@1",
                "train/student_pass@1_stderr", "train/n_tasks"}


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_run_dir(run_dir: Path, steps: int, benches: dict[str, tuple[str, int, list[int]]]) -> list[dict]:
    """Check every file of a completed run; `benches` maps name -> (split, tasks, eval steps).

    Returns the training rows of metrics.jsonl."""
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed", info.get("error")
    assert info["step"] == steps and info["max_steps"] == steps
    for key in ("id", "name", "created_at", "started_at", "ended_at", "algorithm", "model", "backend",
                "config_hash", "git_commit", "parent_run_id", "pid", "final_metrics"):
        assert key in info, key
    rows = read_rows(run_dir / "metrics.jsonl")
    assert all(set(r) == {"step", "split", "metrics"} for r in rows)
    train = [r for r in rows if r["split"] == "train" and r["step"] > 0]
    assert [r["step"] for r in train] == list(range(1, steps + 1))
    before = [r for r in rows if r["split"] == "train" and r["step"] == 0]  # sdft's teacher ceiling
    assert info["algorithm"] == "sdft" or not before
    assert all(set(r["metrics"]) == CEILING_KEYS for r in before)
    assert all("train/mean_loss" in r["metrics"] and all(k.startswith("train/") for k in r["metrics"])
               for r in train)
    summary = (run_dir / "summary.md").read_text()
    assert "Status: completed" in summary
    for name, (split, n_tasks, eval_steps) in benches.items():
        key = f"{split}/{name}/pass@1"
        evals = [r for r in rows if key in r["metrics"]]
        assert [r["step"] for r in evals] == eval_steps, key
        assert all(r["split"] == split and 0.0 <= r["metrics"][key] <= 1.0 for r in evals)
        for r in evals:  # every eval metric carries its stderr, and the row its task count
            m = r["metrics"]
            assert m[f"{split}/{name}/n_tasks"] == n_tasks
            scores = [k for k in m if not k.endswith("_stderr") and not k.endswith("/n_tasks")]
            assert scores and all(k + "_stderr" in m for k in scores), m
            assert all(m[k + "_stderr"] >= 0 or n_tasks == 1 for k in scores)
        preds = read_rows(run_dir / "predictions" / f"{name}.jsonl")
        assert len(preds) == n_tasks * len(eval_steps)
        assert all({"step", "task_id", "instruction", "answer", "score", "passed"} <= set(p) for p in preds)
        assert sorted({p["step"] for p in preds}) == eval_steps
        assert key in info["final_metrics"]
        assert sum(f"{key}=" in line for line in summary.splitlines() if line.startswith("- step ")) == len(eval_steps)
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "final" / "adapter_model.safetensors").is_file()
    return train
