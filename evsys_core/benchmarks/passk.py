"""Benchmark metrics: unbiased pass@k and mean score.

pass@k is the chance that at least one of k samples drawn (without replacement) from the n
a task got passes, given that c of the n passed (Chen et al. 2021):

    pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i)

computed with the product form, which never builds the huge binomials. A benchmark's
pass@k is the mean over its tasks. `mean_score` is the mean verifier score over all samples
of all tasks (partial credit counts; every task draws the same n, so each task weighs the same).
The per-task values are kept (`per_task_values`): evsys_core.stats turns them into a standard
error, and `evsys compare` pairs them between runs.
"""

from __future__ import annotations

import difflib
import re
from typing import Iterable, Sequence

SUPPORTED = ("pass@k", "mean_score")
METRIC_PATTERN = r"^(pass@[1-9][0-9]*|mean_score)$"   # what parse_metric accepts, for schemas
DEFAULT_MAX_TOKENS = 64
DEFAULT_METRICS = ("pass@1",)  # what a benchmark reports when its entry names no metric
_PASS = re.compile(r"pass@(\d+)")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one task with n samples of which c passed."""
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise TypeError(f"pass_at_k takes integers, got n={n!r}, c={c!r}, k={k!r}")
    if n < 1 or k < 1 or not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs n >= 1, k >= 1 and 0 <= c <= n; got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per task, got {n}; "
                         f"set num_samples >= {k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def parse_metric(name: str) -> tuple[str, int | None]:
    """"pass@4" -> ("pass", 4); "mean_score" -> ("mean_score", None). ValueError otherwise,
    with what is supported and the nearest valid spelling. The only parser of metric names
    (the config, `evsys score` and the MCP schema's METRIC_PATTERN agree with it)."""
    text = str(name).strip()
    if text == "mean_score":
        return ("mean_score", None)
    m = _PASS.fullmatch(text)
    if m:
        k = int(m.group(1))
        if k < 1:
            raise ValueError(f"metric {name!r}: k must be >= 1 (e.g. pass@1)")
        if text != f"pass@{k}":
            raise ValueError(f"metric {name!r}: write it pass@{k}, without leading zeros")
        return ("pass", k)
    guess = re.sub(r"\s+", "", text.lower())
    digits = re.fullmatch(r"pass[@_\-:]?k?(\d+)", guess)
    if digits:
        hint = f"pass@{digits.group(1)}"
    else:
        close = difflib.get_close_matches(text, ["mean_score", "pass@1"], n=1, cutoff=0.5)
        hint = close[0] if close else "pass@1"
    raise ValueError(f"unknown metric {name!r}; supported: pass@k (k a positive integer, "
                     f"e.g. pass@1, pass@8) and mean_score — did you mean {hint!r}?")


def samples_needed(metrics: Iterable[str]) -> int:
    """The default number of samples per task: the largest k among the pass@k metrics."""
    ks = [k for kind, k in map(parse_metric, metrics) if kind == "pass" and k]
    return max(ks, default=1)


def shortfalls(metrics: Sequence[str], num_samples: int | None) -> list[tuple[int, str]]:
    """(index, message) for each pass@k metric that needs more than num_samples samples
    (none when num_samples is left unset: it then defaults to the largest k)."""
    out: list[tuple[int, str]] = []
    if not num_samples:
        return out
    for i, name in enumerate(metrics):
        kind, k = parse_metric(name)
        if kind == "pass" and k and k > num_samples:
            out.append((i, f"{name} needs at least {k} samples per task but num_samples is "
                           f"{num_samples}; raise num_samples to {k} (or leave it unset) or use "
                           f"pass@{num_samples}"))
    return out


def sampling_defaults(metrics: Sequence[str], num_samples: int | None = None,
                      temperature: float | None = None, max_tokens: int | None = None
                      ) -> tuple[int, float, int]:
    """(num_samples, temperature, max_tokens) with the defaults filled in — their one home:
    num_samples = the largest k among the pass@k metrics; temperature 0.0 for one sample,
    else 1.0; max_tokens 64. ValueError for an unknown metric or too few samples."""
    short = shortfalls(metrics, num_samples)
    if short:
        raise ValueError(short[0][1])
    n = num_samples or samples_needed(metrics)
    if temperature is None:
        temperature = 0.0 if n == 1 else 1.0
    return int(n), float(temperature), int(max_tokens or DEFAULT_MAX_TOKENS)


def per_task_values(metrics: Sequence[str], per_task: Sequence[Sequence[tuple[float, bool]]]
                    ) -> dict[str, list[float]]:
    """Metric name -> one value per task, from each task's (score, passed) samples: pass@k's
    unbiased estimate, or the task's mean score. A benchmark's metric is their mean."""
    if not per_task:
        raise ValueError("no tasks to compute metrics over")
    out: dict[str, list[float]] = {}
    for name in metrics:
        kind, k = parse_metric(name)
        if kind == "pass":
            out[name] = [pass_at_k(len(s), sum(1 for _, p in s if p), k) for s in per_task]
        else:
            out[name] = [sum(score for score, _ in s) / len(s) for s in per_task]
    return out
