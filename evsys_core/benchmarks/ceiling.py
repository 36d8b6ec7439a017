"""The SDFT teacher's ceiling: what the hinted teacher itself gets right, beside the student.

Before the first step the frozen teacher answers the training prompts greedily with the hint
shown (its `demo_template`), and the untrained student answers the plain prompts the same
way; each answer is scored by the `contains` verifier against the row's `expected` (the
answer appears as a whole word, accents and case ignored). Logged as one `train` row at
step 0: `train/teacher_pass@1`, `train/student_pass@1`, each with its `_stderr` (over the
prompts), and `train/n_tasks` (prompts scored: the first MAX_PROMPTS rows; the key stats.n_tasks_key names,
so the row is shown like an eval row). A teacher that
is wrong cannot teach: `summary_lines` turns a low ceiling, or one not above the student,
into a warning in summary.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from evsys_core import render, stats

MAX_PROMPTS = 256
VERIFIER = "contains"
LOW_CEILING = 0.5  # a teacher right on fewer than half of the training prompts is flagged
TEACHER, STUDENT, N = "train/teacher_pass@1", "train/student_pass@1", "train/n_tasks"


def greedy_scores(sampler: Any, tokenizer: Any, prompts: Sequence[list[int]], expected: Sequence[Any],
                  max_tokens: int) -> list[float]:
    """One greedy answer per prompt (all submitted before any is awaited), each scored 0..1."""
    from tinker import types

    from evsys_core.benchmarks.verifiers import verify
    from evsys_core.data import VerifierSpec

    params = types.SamplingParams(max_tokens=max_tokens, temperature=0.0,
                                  stop=render.end_of_turn_tokens(tokenizer))
    futures = [sampler.sample(types.ModelInput.from_ints(p), 1, params) for p in prompts]
    scores = []
    for future, exp in zip(futures, expected):
        answer = render.decode_completion(tokenizer, future.result().sequences[0].tokens)
        spec = VerifierSpec(kind="in_process", fn_name=VERIFIER, expected=exp)
        scores.append(float(verify(spec, answer, Path(".")).score))
    return scores


def measure(teacher: Any, student: Any, tokenizer: Any, teacher_prompts: Sequence[list[int]],
            student_prompts: Sequence[list[int]], expected: Sequence[Any], max_tokens: int) -> dict[str, float]:
    """The step-0 metrics (without the `train/` prefix the training context adds)."""
    n = min(len(expected), MAX_PROMPTS)
    out: dict[str, float] = {}
    for key, client, prompts in (("teacher_pass@1", teacher, teacher_prompts),
                                 ("student_pass@1", student, student_prompts)):
        mean, se = stats.mean_stderr(greedy_scores(client, tokenizer, prompts[:n], expected[:n], max_tokens))
        out[key], out[key + "_stderr"] = mean, se
    out["n_tasks"] = n
    return out


def summary_lines(final: dict[str, Any]) -> list[str]:
    """The summary.md section of an SDFT run; empty for runs without a ceiling."""
    if TEACHER not in final or STUDENT not in final:
        return []
    t, s, n = final[TEACHER], final[STUDENT], int(final.get(N) or 0)
    lines = ["", "## Teacher ceiling (step 0, training prompts, greedy)", "",
             f"- teacher with the hint: {stats.format_score(t, final.get(TEACHER + '_stderr'), n)}",
             f"- student without it: {stats.format_score(s, final.get(STUDENT + '_stderr'), n)}"]
    if t < LOW_CEILING:
        lines.append(f"- WARNING: the teacher answers only {round(t * n)} of {n} training prompts right "
                     "even with the answer in its prompt; what it does not know it cannot teach "
                     "(try another demo_template, or a stronger model)")
    if t <= s:
        lines.append(f"- WARNING: the teacher ({t:.3f}) is not above the student ({s:.3f}); there is "
                     "little for distillation to add on these prompts")
    return lines
