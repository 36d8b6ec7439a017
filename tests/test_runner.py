"""The runner end to end on the tiny random model: every algorithm, the run-directory contract,
reruns, resume, and the sdft teacher/student prompts."""

from __future__ import annotations

import io
import re
import json
from pathlib import Path

import pytest

import evsys_core
from evsys_core import rundir
from evsys_core.errors import ConfigError, RunError
from contract import assert_run_dir

CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Peru", "Lima")]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tasks(n: int = 3, fn: str = "contains") -> list[dict]:
    return [{"task_id": f"t{i}", "instruction": f"What is the capital of {c}?",
             "verifier": {"kind": "in_process", "fn_name": fn, "expected": cap}}
            for i, (c, cap) in enumerate(CAPITALS[:n])]


def make_workspace(tmp_path: Path, model: Path, kind: str, params: str, bench: str = "run_every: 1, split: val") -> Path:
    if kind == "sdft":
        rows = [{"inputs": {"question": f"What is the capital of {c}?"}, "expected": cap} for c, cap in CAPITALS]
    elif kind == "sft":
        rows = [{"messages": [{"role": "user", "content": f"What is the capital of {c}?"},
                              {"role": "assistant", "content": cap}]} for c, cap in CAPITALS]
    else:
        rows = tasks(4)
    write_jsonl(tmp_path / "data" / "train.jsonl", rows)
    write_jsonl(tmp_path / "data" / "val" / "tasks.jsonl", tasks())
    (tmp_path / "config.yaml").write_text(f"""
model: {{ name: "{model}" }}
backend: {{ kind: local }}
data: {{ source_kind: jsonl, path: data/train.jsonl }}
algorithm:
  kind: {kind}
  params: {{ learning_rate: 1.0e-3, max_steps: 2, batch_size: 2, lora_rank: 2, {params} }}
metadata:
  benchmark:
    - {{ name: val, path: data/val, {bench}, metrics: [pass@1], max_tokens: 6 }}
callbacks:
  - {{ kind: local_logger, params: {{ output_dir: outputs, run_name: demo }} }}
seed: 3
""")
    return tmp_path


def run(ws: Path, *overrides: str, **kw):
    out = io.StringIO()
    result = evsys_core.run(ws / "config.yaml", list(overrides), workspace=ws, stream=out, **kw)
    return result, out.getvalue()


def check_contract(run_dir: Path, steps: int, eval_steps: list[int], n_tasks: int = 3) -> list[dict]:
    return assert_run_dir(run_dir, steps, {"val": ("val", n_tasks, eval_steps)})


@pytest.mark.parametrize("kind,params,extra", [
    ("sft", "", set()),
    ("sdft", "topk: 5, max_tokens: 6", {"train/kl", "train/completion_len", "train/teacher_top1_agree"}),
    ("sdft", "topk: 5, max_tokens: 6, kl: reverse, skip_first_tokens: 1, loss_reduction: sequence_mean",
     {"train/kl", "train/reverse_kl"}),
    ("rl", "group_size: 3, max_tokens: 6", {"train/mean_reward", "train/completion_len"}),
])
def test_each_algorithm_writes_the_run_directory_contract(tmp_path, tiny_model_dir, kind, params, extra):
    ws = make_workspace(tmp_path, tiny_model_dir, kind, params)
    result, printed = run(ws)
    assert result.status == "completed", printed
    assert result.run_dir == ws / "outputs" / "demo"
    train = check_contract(result.run_dir, 2, [0, 1, 2])
    assert extra <= set(train[-1]["metrics"])
    assert "Status: completed" in printed and "Metrics: {" in printed
    assert "(metrics.jsonl, predictions/, summary.md)" in printed
    assert "val/val/pass@1" in result.metrics and result.metrics["val/val/n_tasks"] == 3
    # scores are shown with their interval: progress lines, the Metrics line and summary.md
    shown = re.compile(r"val/val/pass@1'?(?:=|:? )'?\d\.\d{3} ± \d\.\d{3} \(95% CI, 3 tasks\)")
    assert "'val/val/pass@1': '" in printed   # the Metrics line holds the shown text too
    assert len(shown.findall(printed)) >= 4   # eval steps 0, 1, 2 and the final Metrics line
    summary = (result.run_dir / "summary.md").read_text()
    assert len(shown.findall(summary)) == 4 and "pass@1_stderr" not in summary
    assert result.metrics["train/mean_loss"] == train[-1]["metrics"]["train/mean_loss"]


def test_benchmark_without_run_every_runs_once_after_training(tmp_path, tiny_model_dir):
    ws = make_workspace(tmp_path, tiny_model_dir, "sft", "", bench="split: test")
    result, _ = run(ws)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in rows if r["split"] != "train"] == [(2, "test")]
    assert "test/val/pass@1" in result.metrics


def test_at_start_false_skips_the_step_0_evaluation_only(tmp_path, tiny_model_dir):
    ws = make_workspace(tmp_path, tiny_model_dir, "sft", "", bench="run_every: 1, at_start: false")
    result, _ = run(ws)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "val"] == [1, 2]
    preds = [json.loads(x) for x in (result.run_dir / "predictions" / "val.jsonl").read_text().splitlines()]
    assert sorted({p["step"] for p in preds}) == [1, 2]


def test_rerun_never_overwrites_a_finished_run(tmp_path, tiny_model_dir):
    ws = make_workspace(tmp_path, tiny_model_dir, "sft", "")
    first, _ = run(ws, "algorithm.params.max_steps=1")
    before = (first.run_dir / "metrics.jsonl").read_text()
    second, _ = run(ws, "algorithm.params.max_steps=1")
    assert second.run_dir == ws / "outputs" / "demo-2"
    assert (first.run_dir / "metrics.jsonl").read_text() == before
    assert json.loads((second.run_dir / "run.json").read_text())["id"] != first.run_id


def test_resume_continues_from_the_last_checkpoint_without_logging_a_step_twice(tmp_path, tiny_model_dir):
    ws = make_workspace(tmp_path, tiny_model_dir, "sft", "checkpoint_every: 1", bench="run_every: 2")
    first, _ = run(ws, "algorithm.params.max_steps=3")
    run_dir = first.run_dir
    # Pretend the process died after logging step 3 but before its final checkpoint.
    latest = run_dir / "checkpoints" / "latest.json"
    latest.write_text(json.dumps({"step": 2, "path": str(run_dir / "checkpoints" / "step_000002")}))
    info = json.loads((run_dir / "run.json").read_text())
    rundir.write_json_atomic(run_dir / "run.json", {**info, "status": "interrupted"})

    resumed, printed = run(ws, resume=run_dir)
    assert resumed.status == "completed", printed
    assert resumed.run_dir == run_dir
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3]
    assert [r["step"] for r in rows if r["split"] == "val"] == [0, 2, 3]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_resume_of_a_completed_run_is_refused_and_writes_nothing(tmp_path, tiny_model_dir):
    from evsys_core.cli import main

    ws = make_workspace(tmp_path, tiny_model_dir, "sft", "")
    first, _ = run(ws, "algorithm.params.max_steps=1")
    before = _tree(first.run_dir)
    with pytest.raises(RunError, match="already completed"):
        run(ws, resume=first.run_dir)
    assert main(["run", "--resume", str(first.run_dir), "--workspace", str(ws)]) != 0
    assert _tree(first.run_dir) == before  # no duplicate eval, no rewritten file


def test_resume_records_its_overrides_and_reads_weights_from_its_own_copy(tmp_path, tiny_model_dir):
    import shutil

    ws = make_workspace(tmp_path, tiny_model_dir, "sft", "checkpoint_every: 1", bench="run_every: 2")
    first, _ = run(ws, "algorithm.params.max_steps=3")
    latest = json.loads((first.run_dir / "checkpoints" / "latest.json").read_text())
    assert latest["path"] == "checkpoints/final"  # relative to the run directory
    # a copy of a run that died after step 2, its pointer as older versions wrote it (absolute,
    # into the original) — and the original's weights gone: the copy must use its own
    run_dir = ws / "outputs" / "copied"
    shutil.copytree(first.run_dir, run_dir)
    (run_dir / "checkpoints" / "latest.json").write_text(json.dumps(
        {"step": 2, "path": str(first.run_dir / "checkpoints" / "step_000002")}))
    shutil.rmtree(first.run_dir / "checkpoints")
    info = json.loads((run_dir / "run.json").read_text())
    rundir.write_json_atomic(run_dir / "run.json", {**info, "status": "interrupted"})

    resumed, printed = run(ws, "algorithm.params.max_steps=4", resume=run_dir)
    assert resumed.status == "completed", printed
    info = json.loads((run_dir / "run.json").read_text())
    assert info["step"] == 4 and info["resumes"][-1]["overrides"] == ["algorithm.params.max_steps=4"]
    assert info["resumes"][-1]["from_step"] == 2
    assert "max_steps: 4" in (run_dir / "config.yaml").read_text()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4]


def test_resume_without_a_checkpoint_starts_over_logging_each_step_once(tmp_path, tiny_model_dir):
    import shutil

    ws = make_workspace(tmp_path, tiny_model_dir, "sft", "checkpoint_every: 0", bench="run_every: 1")
    first, _ = run(ws, "algorithm.params.max_steps=2")
    shutil.rmtree(first.run_dir / "checkpoints")  # killed before its first checkpoint
    info = json.loads((first.run_dir / "run.json").read_text())
    rundir.write_json_atomic(first.run_dir / "run.json", {**info, "status": "interrupted"})
    resumed, printed = run(ws, resume=first.run_dir)
    assert resumed.status == "completed", printed
    check_contract(first.run_dir, 2, [0, 1, 2])


def test_bad_input_fails_before_any_file_is_written(tmp_path, tiny_model_dir):
    ws = make_workspace(tmp_path, tiny_model_dir, "sft", "")
    (ws / "data" / "train.jsonl").write_text('{"inputs": {"question": "q"}, "expected": "a"}\n')
    with pytest.raises(ConfigError) as e:
        run(ws)
    # the algorithm/data fit has one home (validate's): the same field and line as `evsys validate --deep`
    [issue] = e.value.issues
    assert issue.field == "algorithm.kind" and issue.line is not None
    assert "sft trains on" in issue.message and "use kind sdft for this data" in issue.message
    assert not (ws / "outputs").exists()


def test_sdft_teacher_sees_the_gold_answer_and_the_student_does_not(tiny_model_dir):
    from transformers import AutoTokenizer

    from evsys_core.algorithms.sdft import student_prompt, teacher_prompt
    from evsys_core.config import SDFTParams
    from evsys_core.data import PromptExample

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ex = PromptExample(inputs={"question": "What is the capital of Brazil?"}, expected="Brasilia")
    params = SDFTParams()
    student = tok.decode(student_prompt(tok, params, ex))
    teacher = tok.decode(teacher_prompt(tok, params, ex))
    assert "Brazil" in student and "Brasilia" not in student
    assert "Brazil" in teacher and "Hint: the answer is Brasilia." in teacher


def test_sdft_teacher_targets_asked_for_the_completion_only_equal_those_of_the_whole_prompt(tiny_model_dir):
    """SDFT asks the teacher for top-K at the completion positions only (prompt_logprobs_last_n);
    the distillation targets are the ones a request for every position gives."""
    import numpy as np
    from tinker import types

    from evsys_core.algorithms.sdft import teacher_topk
    from evsys_core.backends import get_service

    sc = get_service("local", device="cpu", seed=0).create_sampling_client(base_model=str(tiny_model_dir))
    tp, c = list(range(5, 30)), [40, 41, 42, 7, 9]
    score = types.SamplingParams(max_tokens=1, temperature=0.0)
    full, last = [sc.sample(types.ModelInput.from_ints(tp + c), 1, score, include_prompt_logprobs=True,
                            topk_prompt_logprobs=5, prompt_logprobs_last_n=n).result() for n in (None, len(c))]
    (ids_f, p_f), (ids_l, p_l) = teacher_topk(full, len(tp), len(c), 5), teacher_topk(last, len(tp), len(c), 5)
    assert (ids_f == ids_l).all() and np.allclose(p_f, p_l, atol=1e-6) and p_f.sum() > 0
    assert last.topk_prompt_logprobs[len(tp) - 1] is None and full.topk_prompt_logprobs[len(tp) - 1] is not None


def test_inputs_named_like_the_demo_templates_own_fields_train(tmp_path, tiny_model_dir, capsys):
    """Rows whose inputs hold `prompt` and `expected` (the demo_template's own names) used to
    pass validate and crash the run ("got multiple values for keyword argument 'prompt'");
    the demo is filled from the prompt and the answer only, so `evsys run` trains on them."""
    from evsys_core.cli import main

    ws = make_workspace(tmp_path, tiny_model_dir, "sdft", "topk: 5, max_tokens: 4", bench="split: val")
    rows = [{"inputs": {"question": f"Capital of {c}?", "prompt": "p", "expected": "e"}, "expected": cap}
            for c, cap in CAPITALS[:2]]
    write_jsonl(ws / "data" / "train.jsonl", rows)
    argv = [str(ws / "config.yaml"), "--workspace", str(ws), "--set", "algorithm.params.max_steps=1"]
    assert main(["validate", *argv[:3], "--deep"]) == 0
    assert main(["run", *argv]) == 0, capsys.readouterr()
    assert "Status: completed" in capsys.readouterr().out


def test_sdft_ema_teacher_follows_the_student(tmp_path, tiny_model_dir):
    ws = make_workspace(tmp_path, tiny_model_dir, "sdft", "topk: 5, max_tokens: 6, teacher: ema, ema_rate: 0.5")
    result, printed = run(ws)
    assert result.status == "completed", printed
    check_contract(result.run_dir, 2, [0, 1, 2])


def test_ema_sampler_is_the_moving_average_of_the_adapter(tiny_model_dir):
    import torch
    from tinker import types

    from evsys_core.backends import get_service

    tc = get_service("local", seed=0).create_lora_training_client(base_model=str(tiny_model_dir), rank=2)
    ema = tc.ema_sampling_client(0.25)
    expected = [p.detach().clone() for _, p in tc._engine.params]
    datum = types.Datum(model_input=types.ModelInput.from_ints([1, 2, 3, 4]),
                        loss_fn_inputs={"target_tokens": [2, 3, 4, 5], "weights": [1.0] * 4})
    for _ in range(2):
        tc.forward_backward([datum], "cross_entropy").result()
        tc.optim_step(types.AdamParams(learning_rate=1e-2)).result()
        expected = [0.75 * e + 0.25 * p.detach() for e, (_, p) in zip(expected, tc._engine.params)]
    for e, got, (_, now) in zip(expected, ema._weights.tensors, tc._engine.params):
        assert torch.allclose(got, e, atol=1e-7)
    assert any(not torch.equal(got, now) for got, (_, now) in zip(ema._weights.tensors, tc._engine.params))


def test_ema_teacher_is_refused_on_tinker_at_validation(tmp_path):
    from evsys_core.config import parse_config_text

    text = """
model: { name: Qwen/Qwen3.5-4B }
backend: { kind: tinker }
data: { path: d.jsonl }
algorithm: { kind: sdft, params: { teacher: ema } }
"""
    with pytest.raises(ConfigError, match=r"algorithm.params.teacher: teacher: ema needs backend.kind: local") as e:
        parse_config_text(text, "c.yaml", workspace=tmp_path)
    assert e.value.issues[0].line == 5
