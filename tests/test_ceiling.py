"""The SDFT teacher's ceiling: logged at step 0 beside the student's score, shown (with a
warning when it cannot teach) in summary.md."""

from __future__ import annotations

import json
import math

import pytest

from evsys_core import rundir
from evsys_core.benchmarks.ceiling import summary_lines
from contract import CEILING_KEYS
from test_runner import CAPITALS, check_contract, make_workspace, run


def test_sdft_logs_the_teacher_ceiling_at_step_0_and_summary_shows_it(tmp_path, tiny_model_dir):
    ws = make_workspace(tmp_path, tiny_model_dir, "sdft", "topk: 5, max_tokens: 6")
    result, printed = run(ws)
    assert result.status == "completed", printed
    check_contract(result.run_dir, 2, [0, 1, 2])
    rows = list(rundir.read_jsonl(result.run_dir / rundir.METRICS))
    (first,) = [r for r in rows if r["split"] == "train" and r["step"] == 0]
    assert rows.index(first) < min(i for i, r in enumerate(rows) if r["step"] == 1)
    m = first["metrics"]
    assert set(m) == CEILING_KEYS and m["train/n_tasks"] == len(CAPITALS)
    for who in ("teacher", "student"):
        p, se = m[f"train/{who}_pass@1"], m[f"train/{who}_pass@1_stderr"]
        assert p * len(CAPITALS) == pytest.approx(round(p * len(CAPITALS)))  # a count of prompts
        # the stderr of 0/1 scores: sqrt(p (1 - p) / (n - 1))
        assert se == pytest.approx(math.sqrt(p * (1 - p) / (len(CAPITALS) - 1)), abs=1e-12)
    assert result.metrics["train/teacher_pass@1"] == m["train/teacher_pass@1"]  # kept in final metrics
    summary = (result.run_dir / rundir.SUMMARY).read_text()
    assert "## Teacher ceiling (step 0, training prompts, greedy)" in summary
    assert f"- teacher with the hint: {m['train/teacher_pass@1']:.3f}" in summary
    # a random model's teacher knows nothing: both warnings
    assert m["train/teacher_pass@1"] < 0.5 and "WARNING: the teacher answers only" in summary


def test_resumed_sdft_run_does_not_measure_the_ceiling_again(tmp_path, tiny_model_dir):
    ws = make_workspace(tmp_path, tiny_model_dir, "sdft", "topk: 5, max_tokens: 6, checkpoint_every: 1")
    first, _ = run(ws)
    run_dir = first.run_dir
    # as if the process died after step 2 but before its final checkpoint
    (run_dir / "checkpoints" / "latest.json").write_text(json.dumps(
        {"step": 1, "path": str(run_dir / "checkpoints" / "step_000001")}))
    info = json.loads((run_dir / rundir.RUN_JSON).read_text())
    rundir.write_json_atomic(run_dir / rundir.RUN_JSON, {**info, "status": "interrupted"})
    again, printed = run(ws, resume=run_dir)
    assert again.status == "completed", printed
    rows = list(rundir.read_jsonl(run_dir / rundir.METRICS))
    assert [r["step"] for r in rows if r["split"] == "train"] == [0, 1, 2]
    assert sum(1 for r in rows if "train/teacher_pass@1" in r["metrics"]) == 1


def test_other_algorithms_log_no_ceiling(tmp_path, tiny_model_dir):
    ws = make_workspace(tmp_path, tiny_model_dir, "sft", "")
    result, _ = run(ws, "algorithm.params.max_steps=1")
    assert not [r for r in rundir.read_jsonl(result.run_dir / rundir.METRICS) if r["step"] == 0 and r["split"] == "train"]
    assert "Teacher ceiling" not in (result.run_dir / rundir.SUMMARY).read_text()


@pytest.mark.parametrize("teacher,student,warnings", [
    (0.9, 0.5, []),
    (0.4, 0.1, ["answers only 4 of 10"]),
    (0.8, 0.8, ["is not above the student"]),
    (0.3, 0.6, ["answers only 3 of 10", "is not above the student (0.600)"]),
])
def test_summary_warns_when_the_teacher_cannot_teach(teacher, student, warnings):
    lines = summary_lines({"train/teacher_pass@1": teacher, "train/teacher_pass@1_stderr": 0.1,
                           "train/student_pass@1": student, "train/student_pass@1_stderr": 0.1,
                           "train/n_tasks": 10})
    warned = [ln for ln in lines if "WARNING" in ln]
    assert len(warned) == len(warnings)
    for w, line in zip(warnings, warned):
        assert w in line
    assert f"- teacher with the hint: {teacher:.3f} ± 0.196 (95% CI, 10 tasks)" in lines
    assert summary_lines({"train/mean_loss": 1.0}) == []
