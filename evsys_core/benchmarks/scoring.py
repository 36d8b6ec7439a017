"""Score a sampling client on a benchmark: sample, verify, compute metrics.

Every task's request is submitted before any is waited on, so the local engine runs them
as one batch (and Tinker runs them concurrently). The spec is a config `BenchmarkSpec`
(or anything with its fields: name, path, split, metrics, num_samples, max_tokens,
temperature).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from evsys_core import render, stats
from evsys_core.benchmarks import passk
from evsys_core.benchmarks.verifiers import Verdict, check_spec, verify
from evsys_core.errors import BackendError, ConfigError, DataError


@dataclass
class EvalResult:
    metrics: dict[str, float]  # "<split>/<name>/<metric>" -> value, "..._stderr", "<split>/<name>/n_tasks"
    predictions: list[dict[str, Any]] = field(default_factory=list)


def sampling_settings(spec: Any) -> tuple[int, float, int]:
    """(num_samples, temperature, max_tokens) of a spec, defaults from passk.sampling_defaults."""
    try:
        return passk.sampling_defaults(list(getattr(spec, "metrics", None) or passk.DEFAULT_METRICS),
                                       getattr(spec, "num_samples", None),
                                       getattr(spec, "temperature", None),
                                       getattr(spec, "max_tokens", None))
    except ValueError as e:
        raise ConfigError(f"benchmark {getattr(spec, 'name', '?')!r}: metrics: {e}") from None


def evaluate(sampling_client: Any, tokenizer: Any, spec: Any, tasks: Sequence[Any], *,
             system_prompt: str | None = None, seed: int = 0,
             on_task: Callable[[int], None] | None = None) -> EvalResult:
    """Sample `num_samples` answers per task, verify each, and compute the spec's metrics.

    `on_task(done)` is called after each task is verified (progress for a score run).

    Prediction rows: task_id, instruction, sample (index), answer, score, passed, reason,
    truncated (the answer stopped at max_tokens, not at the end of its turn).
    Raises ConfigError / DataError / VerifierError for a bad spec or task *before* sampling;
    verifiers themselves never raise (a failure is score 0 with its reason).
    """
    from tinker import types  # lazy: importing tinker takes seconds

    if not tasks:
        raise DataError(f"benchmark {spec.name!r} at {spec.path}: tasks.jsonl holds no tasks; "
                        "add one JSON object per line")
    n, temperature, max_tokens = sampling_settings(spec)
    task_dir = Path(spec.path)
    for task in tasks:
        check_spec(task.verifier, task_dir, task_id=task.task_id)

    stop = render.end_of_turn_tokens(tokenizer)
    futures = []
    for i, task in enumerate(tasks):
        toks = render.user_prompt_tokens(tokenizer, task.instruction, system_prompt)
        params = types.SamplingParams(max_tokens=max_tokens, temperature=temperature,
                                      stop=stop, seed=seed + i)
        futures.append(sampling_client.sample(prompt=types.ModelInput.from_ints(toks),
                                              num_samples=n, sampling_params=params))

    predictions: list[dict[str, Any]] = []
    per_task: list[list[tuple[float, bool]]] = []
    for task, future in zip(tasks, futures):
        response = future.result()
        samples: list[tuple[float, bool]] = []
        for j, seq in enumerate(response.sequences):
            answer = render.decode_completion(tokenizer, seq.tokens)
            verdict: Verdict = verify(task.verifier, answer, task_dir)
            samples.append((verdict.score, verdict.passed))
            predictions.append({
                "task_id": task.task_id, "instruction": task.instruction, "sample": j,
                "answer": answer, "score": verdict.score, "passed": verdict.passed,
                "reason": verdict.reason, "truncated": seq.stop_reason == "length",
            })
        if len(samples) != n:
            raise BackendError(f"the sampler returned {len(samples)} samples for task "
                            f"{task.task_id!r}, asked for {n}")
        per_task.append(samples)
        if on_task is not None:
            on_task(len(per_task))

    values = passk.per_task_values(list(spec.metrics or passk.DEFAULT_METRICS), per_task)
    return EvalResult(stats.with_uncertainty(f"{spec.split}/{spec.name}/", values), predictions)
