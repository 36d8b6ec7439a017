"""Benchmark scoring and `evsys score`, on the real local engine with the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evsys_core import render, rundir
from evsys_core.benchmarks.cli import score_benchmark
from evsys_core.benchmarks.passk import pass_at_k
from evsys_core.benchmarks.scoring import evaluate, sampling_settings
from evsys_core.cli import main as evsys_main
from evsys_core.config import BenchmarkSpec
from evsys_core.data import load_tasks
from evsys_core.errors import (
    ConfigError, ModelNotFoundError, RunError, UsageError, VerifierError,
)

NEVER = "zq-never-said-zq"


def write_bench(root: Path, tasks: list[dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return root


def basic_tasks() -> list[dict]:
    return [
        {"task_id": "any", "instruction": "Say something.",
         "verifier": {"kind": "in_process", "fn_name": "regex", "expected": "(?s).*"}},
        {"task_id": "never", "instruction": "What is the capital of France?",
         "verifier": {"kind": "in_process", "fn_name": "exact", "expected": NEVER}},
        {"task_id": "py", "instruction": "Count to three.",
         "verifier": {"kind": "python", "fn": "graders:half"}},
    ]


@pytest.fixture(scope="module")
def service():
    from evsys_core.backends import get_service

    return get_service("local", device="cpu", seed=0)


@pytest.fixture(scope="module")
def sampler(service, tiny_model_dir):
    return service.create_sampling_client(base_model=str(tiny_model_dir))


class Spy:
    """Delegates to a real sampling client and records the order of calls."""

    def __init__(self, client):
        self.client, self.events, self.prompts, self.params = client, [], [], []

    def sample(self, prompt, num_samples, sampling_params, **kw):
        self.events.append("sample")
        self.prompts.append(prompt.to_ints())
        self.params.append(sampling_params)
        future = self.client.sample(prompt=prompt, num_samples=num_samples,
                                    sampling_params=sampling_params, **kw)
        spy = self

        class Waited:
            def result(self_inner, *a, **k):
                spy.events.append("result")
                return future.result(*a, **k)

        return Waited()


@pytest.fixture
def bench(tmp_path) -> Path:
    root = write_bench(tmp_path / "bench", basic_tasks())
    (root / "graders.py").write_text("def half(answer, expected):\n    return 0.5\n")
    return root


def test_evaluate_metrics_and_predictions(sampler, bench):
    tok = sampler.get_tokenizer()
    spec = BenchmarkSpec(name="toy", path=bench, metrics=["pass@1", "pass@2", "mean_score"],
                         split="test", max_tokens=8)
    tasks = load_tasks(bench)
    spy = Spy(sampler)
    result = evaluate(spy, tok, spec, tasks)

    names = ("test/toy/pass@1", "test/toy/pass@2", "test/toy/mean_score")
    assert set(result.metrics) == {*names, *(k + "_stderr" for k in names), "test/toy/n_tasks"}
    # "any" always passes, "never" never does, "py" scores 0.5 (partial credit, no pass)
    assert result.metrics["test/toy/pass@1"] == pytest.approx(1 / 3)
    assert result.metrics["test/toy/pass@2"] == pytest.approx(1 / 3)
    assert result.metrics["test/toy/mean_score"] == pytest.approx((1 + 0 + 0.5) / 3)
    # stderr over the 3 per-task values: [1, 0, 0] -> sd sqrt(1/3), / sqrt(3) = 1/3;
    # [1, 0, 0.5] -> sd 0.5, / sqrt(3)
    assert result.metrics["test/toy/pass@1_stderr"] == pytest.approx(1 / 3)
    assert result.metrics["test/toy/mean_score_stderr"] == pytest.approx(0.5 / 3 ** 0.5)
    assert result.metrics["test/toy/n_tasks"] == 3

    rows = result.predictions
    assert len(rows) == 3 * 2                                   # num_samples = max k = 2
    assert [(r["task_id"], r["sample"]) for r in rows] == [
        ("any", 0), ("any", 1), ("never", 0), ("never", 1), ("py", 0), ("py", 1)]
    for r in rows:
        assert set(r) == {"task_id", "instruction", "sample", "answer", "score", "passed", "reason",
                          "truncated"}
        assert isinstance(r["answer"], str)
    assert all(r["passed"] and r["score"] == 1.0 for r in rows if r["task_id"] == "any")
    assert all(not r["passed"] and r["score"] == 0.0 for r in rows if r["task_id"] == "never")
    assert all(r["score"] == 0.5 and not r["passed"] for r in rows if r["task_id"] == "py")
    assert rows[2]["instruction"] == "What is the capital of France?"

    # all requests go out before any is waited on (the local engine batches them)
    assert spy.events == ["sample"] * 3 + ["result"] * 3
    # prompts are the chat-template rendering; sampling settings follow the spec
    assert spy.prompts[1] == render.user_prompt_tokens(tok, tasks[1].instruction, None)
    p = spy.params[0]
    assert (p.max_tokens, p.temperature) == (8, 1.0)
    assert list(p.stop) == render.end_of_turn_tokens(tok)


def test_evaluate_greedy_single_sample_is_deterministic_and_uses_system_prompt(sampler, bench):
    tok = sampler.get_tokenizer()
    spec = BenchmarkSpec(name="toy", path=bench, max_tokens=6)
    tasks = load_tasks(bench)
    spy = Spy(sampler)
    first = evaluate(spy, tok, spec, tasks, system_prompt="Be brief.")
    second = evaluate(sampler, tok, spec, tasks, system_prompt="Be brief.")
    assert spy.params[0].temperature == 0.0 and len(first.predictions) == 3
    assert [r["answer"] for r in first.predictions] == [r["answer"] for r in second.predictions]
    assert spy.prompts[0] == render.user_prompt_tokens(tok, tasks[0].instruction, "Be brief.")
    assert set(first.metrics) == {"val/toy/pass@1", "val/toy/pass@1_stderr", "val/toy/n_tasks"}


def test_truncated_marks_answers_that_ran_out_of_tokens(sampler, bench):
    """`truncated` is true exactly when the answer used all max_tokens without ending its turn."""
    tok = sampler.get_tokenizer()
    stop = set(render.end_of_turn_tokens(tok))
    for max_tokens in (1, 3):
        spec = BenchmarkSpec(name="toy", path=bench, metrics=["pass@4"], max_tokens=max_tokens)
        responses = []

        class Recorder:
            def sample(self, prompt, num_samples, sampling_params, **kw):
                future = sampler.sample(prompt=prompt, num_samples=num_samples,
                                        sampling_params=sampling_params, **kw)

                class Waited:
                    def result(self_inner, *a, **k):
                        responses.append(future.result(*a, **k))
                        return responses[-1]
                return Waited()

        rows = evaluate(Recorder(), tok, spec, load_tasks(bench)).predictions
        seqs = [seq for r in responses for seq in r.sequences]
        assert len(seqs) == len(rows) == 12
        want = [len(s.tokens) == max_tokens and s.tokens[-1] not in stop for s in seqs]
        assert [r["truncated"] for r in rows] == want
    assert any(r["truncated"] for r in rows)  # a random model rarely ends its turn in 3 tokens


def test_pass_at_k_agrees_with_the_prediction_rows(sampler, tmp_path):
    # a verifier that passes about half the sampled answers: "does it contain the letter e"
    bench = write_bench(tmp_path / "b", [
        {"task_id": f"t{i}", "instruction": q,
         "verifier": {"kind": "in_process", "fn_name": "regex", "expected": "(?i)e"}}
        for i, q in enumerate(["Name a color.", "Name a fruit.", "Say hi."])])
    spec = BenchmarkSpec(name="b", path=bench, metrics=["pass@1", "pass@3"], num_samples=4,
                         max_tokens=4)
    result = evaluate(sampler, sampler.get_tokenizer(), spec, load_tasks(bench))
    by_task: dict[str, list[bool]] = {}
    for r in result.predictions:
        by_task.setdefault(r["task_id"], []).append(r["passed"])
    for k in (1, 3):
        want = sum(pass_at_k(4, sum(v), k) for v in by_task.values()) / 3
        assert result.metrics[f"val/b/pass@{k}"] == pytest.approx(want)


def test_evaluate_checks_every_verifier_before_sampling(sampler, tmp_path):
    tasks = basic_tasks()[:1] + [
        {"task_id": "typo", "instruction": "x",
         "verifier": {"kind": "in_process", "fn_name": "exatc", "expected": "a"}}]
    bench = write_bench(tmp_path / "b", tasks)
    spy = Spy(sampler)
    with pytest.raises(VerifierError) as e:
        evaluate(spy, sampler.get_tokenizer(), BenchmarkSpec(name="b", path=bench),
                 load_tasks(bench))
    assert "'typo'" in str(e.value) and "did you mean 'exact'" in str(e.value)
    assert spy.events == []


def test_sampling_settings_defaults_and_errors(tmp_path):
    class Spec:  # scoring reads only these fields (BenchmarkSpec fills its own defaults)
        name, path, split, max_tokens, temperature = "b", tmp_path, "val", None, None
        metrics, num_samples = ["pass@4", "pass@1"], None

    assert sampling_settings(Spec) == (4, 1.0, 64)
    Spec.metrics = ["mean_score"]
    assert sampling_settings(Spec) == (1, 0.0, 64)
    Spec.metrics, Spec.num_samples = ["pass@8"], 2
    with pytest.raises(ConfigError, match="pass@8 needs at least 8 samples per task but num_samples is 2"):
        sampling_settings(Spec)
    Spec.metrics, Spec.num_samples = ["acc"], None
    with pytest.raises(ConfigError, match="unknown metric 'acc'"):
        sampling_settings(Spec)


# --------------------------------------------------------------------------- evsys score


def read_run(run_dir: Path):
    info = json.loads((run_dir / "run.json").read_text())
    metrics = list(rundir.read_jsonl(run_dir / "metrics.jsonl"))
    return info, metrics


def test_score_base_model_writes_a_run_directory(tmp_path, bench, tiny_model_dir):
    result = score_benchmark(tmp_path, "bench", model=str(tiny_model_dir),
                             metrics=["pass@1", "mean_score"], max_tokens=6)
    run_dir = result.run_dir
    assert run_dir.parent == tmp_path / "outputs" / "scores"
    assert run_dir.name.startswith("bench-")
    info, metrics = read_run(run_dir)
    assert info["status"] == "completed" and info["algorithm"] == "score"
    assert info["model"] == str(tiny_model_dir) and info["backend"] == "local"
    assert info["parent_run_id"] is None and info["id"] == result.run_id
    assert metrics == [{"step": 0, "split": "val",
                        "metrics": {"val/bench/pass@1": pytest.approx(1 / 3),
                                    "val/bench/pass@1_stderr": pytest.approx(1 / 3),
                                    "val/bench/mean_score": pytest.approx(0.5),
                                    "val/bench/mean_score_stderr": pytest.approx(0.5 / 3 ** 0.5),
                                    "val/bench/n_tasks": 3}}]
    assert result.metrics == metrics[0]["metrics"]
    assert info["final_metrics"] == result.metrics
    preds = list(rundir.read_jsonl(run_dir / "predictions" / "bench.jsonl"))
    assert [p["task_id"] for p in preds] == ["any", "never", "py"]
    assert all(p["step"] == 0 for p in preds)
    summary = (run_dir / "summary.md").read_text()
    assert "Status: completed" in summary and "val/bench/pass@1" in summary

    again = score_benchmark(tmp_path, bench, model=str(tiny_model_dir), max_tokens=6)
    assert again.run_dir != run_dir and again.run_dir.parent == run_dir.parent


def test_score_cli_json_and_errors(tmp_path, bench, tiny_model_dir, capsys):
    out = tmp_path / "elsewhere"
    rc = evsys_main(["score", "--benchmark", str(bench), "--model", str(tiny_model_dir),
                     "--max-tokens", "4", "--output", str(out), "--name", "capitals",
                     "--split", "test", "--json", "--workspace", str(tmp_path)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(printed["metrics"]) == {"test/capitals/pass@1", "test/capitals/pass@1_stderr",
                                       "test/capitals/n_tasks"}
    assert Path(printed["run_dir"]).parent == out
    assert (Path(printed["run_dir"]) / "predictions" / "capitals.jsonl").is_file()

    # bad input: a clear message, exit 1 or 2, and nothing written
    before = sorted(p.name for p in out.iterdir())
    assert evsys_main(["score", "--benchmark", str(tmp_path / "nope"), "--model", "x",
                       "--output", str(out)]) == 2
    assert "tasks.jsonl does not exist" in capsys.readouterr().err
    assert evsys_main(["score", "--benchmark", str(bench), "--model", str(tiny_model_dir),
                       "--metrics", "pass@9", "--num-samples", "2", "--output", str(out)]) == 1
    assert "raise num_samples to 9" in capsys.readouterr().err
    assert evsys_main(["score", "--benchmark", str(bench), "--model", str(tiny_model_dir),
                       "--metrics", "acc", "--output", str(out)]) == 2
    assert "unknown metric 'acc'" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before


def test_score_benchmark_argument_errors(tmp_path, bench):
    with pytest.raises(UsageError, match="exactly one of"):
        score_benchmark(tmp_path, bench)
    with pytest.raises(UsageError, match="exactly one of"):
        score_benchmark(tmp_path, bench, model="m", run="r")
    with pytest.raises(RunError, match="not a run directory"):
        score_benchmark(tmp_path, bench, run=tmp_path / "no-such-run")
    unfinished = tmp_path / "outputs" / "half"
    unfinished.mkdir(parents=True)
    (unfinished / "run.json").write_text(json.dumps(
        {"id": "abc", "status": "failed", "model": "m", "backend": "local"}))
    with pytest.raises(RunError, match="no final checkpoint"):
        score_benchmark(tmp_path, bench, run=unfinished)
    with pytest.raises(ModelNotFoundError, match="no-such-model-xyz"):
        score_benchmark(tmp_path, bench, model="no-such-model-xyz")
    with pytest.raises(UsageError, match="split"):
        score_benchmark(tmp_path, bench, model="SmolLM2-135M-Instruct", split="a/b")
    assert not (tmp_path / "outputs" / "scores").exists()


def test_score_a_runs_trained_weights(tmp_path, bench, service, tiny_model_dir):
    """A run directory whose final checkpoint the engine wrote is scored on its own model,
    with the run's system prompt and its benchmark entry's name and split."""
    run_dir = tmp_path / "outputs" / "my_run"
    (run_dir / "checkpoints").mkdir(parents=True)
    tc = service.create_lora_training_client(base_model=str(tiny_model_dir), rank=2)
    saved = tc.save_state(str(run_dir / "checkpoints" / "final")).result()
    (run_dir / "checkpoints" / "latest.json").write_text(json.dumps(
        {"step": 1, "path": str(saved.path), "name": "final"}))
    (run_dir / "run.json").write_text(json.dumps(
        {"id": "run123", "name": "my_run", "status": "completed", "algorithm": "sft",
         "model": str(tiny_model_dir), "backend": "local"}))
    (run_dir / "config.yaml").write_text(
        "algorithm:\n  kind: sft\n  params: {system_prompt: Be brief.}\n"
        "metadata:\n  benchmark:\n"
        f"    - {{name: caps, path: {bench}, split: heldout, metrics: [pass@1], max_tokens: 5}}\n")

    result = score_benchmark(tmp_path, bench, run="outputs/my_run")
    info, metrics = read_run(result.run_dir)
    assert info["parent_run_id"] == "run123" and info["algorithm"] == "score"
    assert info["model"] == str(tiny_model_dir)
    assert info["score"]["model_path"] == "outputs/my_run/checkpoints/final"  # relative to the workspace
    assert info["kind"] == "score" and info["step"] == info["max_steps"]  # progress: tasks scored of all
    assert info["score"]["max_tokens"] == 5
    assert set(metrics[0]["metrics"]) == {"heldout/caps/pass@1", "heldout/caps/pass@1_stderr",
                                          "heldout/caps/n_tasks"}
    assert result.run_dir.name == "caps-my_run"
    # a freshly initialised LoRA adapter is the identity: same greedy answers as the base
    base = score_benchmark(tmp_path, bench, model=str(tiny_model_dir), max_tokens=5,
                           name="caps", split="heldout", system_prompt="Be brief.")
    answers = lambda d: [p["answer"] for p in rundir.read_jsonl(d / "predictions" / "caps.jsonl")]
    assert answers(result.run_dir) == answers(base.run_dir)
