"""How sure a score is: standard errors, 95% intervals and paired tests between two runs.

The unit of every figure is the *task*: a benchmark's score is the mean of its per-task values
(pass@k's unbiased estimate, or the task's mean verifier score), its standard error is the
sample standard deviation of those values over sqrt(number of tasks), and its 95% interval is
mean ± 1.96 · stderr. Two runs are compared task by task on the tasks both answered: the
p-value is from an exact McNemar test when every paired value is pass/fail, else from a
sign-flip test on the per-task differences (exact up to 16 non-zero differences, else
20,000 seeded random flips); beyond 2,000 discordant tasks both use their normal
approximation, so that a huge benchmark answers in milliseconds. `verdict` is `better`/`worse` when p < ALPHA, else `inconclusive`.
Every eval metric is taken as higher-is-better. docs/benchmarks.md gives the formulas.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

ALPHA = 0.05
Z95 = 1.959963984540054           # the standard normal's 97.5% quantile
EXACT_FLIPS = 16                  # up to 2**16 sign vectors are enumerated
FLIP_DRAWS = 20_000
LARGE = 2_000                     # beyond this many non-zero differences: normal approximation
STDERR_SUFFIX = "_stderr"
N_TASKS = "n_tasks"


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """(mean, standard error of the mean): sd with ddof=1 over sqrt(n); stderr NaN for n < 2."""
    x = [float(v) for v in values]
    n = len(x)
    if n == 0:
        raise ValueError("no values to average")
    mean = math.fsum(x) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in x) / (n - 1) / n)


def ci95(mean: float, stderr: float) -> tuple[float, float]:
    return mean - Z95 * stderr, mean + Z95 * stderr


# ---- metric keys: K, K_stderr and <split>/<bench>/n_tasks ----------------------------------

def stderr_key(key: str) -> str:
    return key + STDERR_SUFFIX


def n_tasks_key(key: str) -> str:
    """'val/val/pass@1' -> 'val/val/n_tasks' (the count shared by a benchmark's metrics)."""
    return key.rsplit("/", 1)[0] + "/" + N_TASKS


def is_companion(key: str) -> bool:
    """True for the keys that describe another metric (K_stderr, .../n_tasks), not a score."""
    return key.endswith(STDERR_SUFFIX) or key.rsplit("/", 1)[-1] == N_TASKS


def with_uncertainty(prefix: str, per_task: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """{metric: per-task values} -> {prefix+metric: mean, prefix+metric_stderr: se,
    prefix+'n_tasks': count}: the keys an eval row of metrics.jsonl carries."""
    out: dict[str, Any] = {}
    for name, values in per_task.items():
        mean, se = mean_stderr(values)
        out[prefix + name], out[prefix + stderr_key(name)] = mean, se
        out[prefix + N_TASKS] = len(values)
    return out


# ---- how a score is shown ------------------------------------------------------------------

def format_score(value: Any, stderr: Any = None, n_tasks: Any = None, seeds: int | None = None) -> str:
    """'0.727 ± 0.276 (95% CI, 11 tasks)'; without a usable stderr '0.727 (1 task)' or '0.727';
    `seeds` > 1 (a replicate group's pooled score) adds ', 3 seeds'."""
    if not _finite(value):
        return str(value)
    n = f"{int(n_tasks)} task{'s' if int(n_tasks) != 1 else ''}" if _finite(n_tasks) else None
    if n and seeds is not None and seeds > 1:
        n += f", {seeds} seeds"
    if _finite(stderr):
        return f"{value:.3f} ± {Z95 * stderr:.3f} (95% CI" + (f", {n})" if n else ")")
    return f"{value:.3f}" + (f" ({n})" if n else "")


def format_metrics(metrics: Mapping[str, Any]) -> dict[str, str]:
    """Every metric that is a score, shown with its interval where the row carries one; the
    companion keys (K_stderr, n_tasks) are folded into the scores they describe."""
    out = {}
    for key, value in metrics.items():
        if is_companion(key):
            continue
        if stderr_key(key) in metrics:
            out[key] = format_score(value, metrics[stderr_key(key)], metrics.get(n_tasks_key(key)))
        else:
            out[key] = f"{value:.4g}" if isinstance(value, float) else str(value)
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ---- paired tests --------------------------------------------------------------------------

def exact_mcnemar(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs (a binomial sign test);
    beyond LARGE pairs, its normal approximation with continuity correction."""
    m, k = b + c, min(b, c)
    if m == 0:
        return 1.0
    if m > LARGE:
        return min(1.0, math.erfc(max(0.0, abs(b - c) - 1) / math.sqrt(2 * m)))
    return min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m)


def sign_flip_p(diffs: Sequence[float], seed: int = 0, draws: int = FLIP_DRAWS) -> tuple[float, str]:
    """Two-sided p-value of the paired sign-flip test on |sum of differences|, and its kind:
    exact enumeration up to EXACT_FLIPS non-zero differences, `draws` seeded flips up to
    LARGE, the normal approximation (sum of d_i**2 is the statistic's variance) beyond."""
    import numpy as np  # here, so that commands that only print scores do not load numpy

    d = np.asarray(diffs, dtype=float)
    d = d[d != 0]
    if d.size == 0:
        return 1.0, "sign-flip exact"
    observed = abs(d.sum()) * (1 - 1e-12)
    if d.size <= EXACT_FLIPS:
        signs = 1 - 2 * ((np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1)
        return float(np.mean(np.abs(signs @ d) >= observed)), "sign-flip exact"
    if d.size > LARGE:
        z = abs(float(d.sum())) / math.sqrt(float(np.sum(d * d)))
        return math.erfc(z / math.sqrt(2)), "sign-flip, normal approximation"
    rng, total, hits = np.random.default_rng(seed), d.sum(), 0
    for start in range(0, draws, 1000):   # flip matrices of at most 1000 x LARGE
        n = min(1000, draws - start)
        # one random bit per difference (1: flipped), unpacked from seeded bytes: the signed
        # sum is the total minus twice the flipped part (7x faster than drawing signs)
        raw = np.frombuffer(rng.bytes(n * ((d.size + 7) // 8)), np.uint8).reshape(n, -1)
        flipped = np.unpackbits(raw, axis=1, count=d.size).astype(np.float64)
        hits += int(np.count_nonzero(np.abs(total - 2.0 * (flipped @ d)) >= observed))
    return (1 + hits) / (1 + draws), f"sign-flip, {draws} seeded draws"


@dataclass(frozen=True)
class Paired:
    base: float              # mean per-task score of BASE on the paired tasks
    cand: float              # the same for CAND
    delta: float             # cand - base
    ci_low: float            # 95% interval of delta (normal, over per-task differences)
    ci_high: float
    p_value: float
    test: str                # "mcnemar exact", "sign-flip exact", "sign-flip, N seeded draws", ...
    n_tasks: int             # tasks both sides answered
    verdict: str             # better | worse | inconclusive (p < alpha decides)
    base_only: int = 0       # tasks only BASE has (left out)
    cand_only: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_compare(base: Mapping[str, Sequence[float]], cand: Mapping[str, Sequence[float]], *,
                   alpha: float = ALPHA, seed: int = 0) -> Paired:
    """Compare CAND with BASE task by task. Each maps task_id -> that task's scores, one per
    replicate run (one entry for a single run); a task's value is the mean of its list. Only
    tasks on both sides count. Deterministic: the same inputs and seed give the same answer."""
    shared = sorted(set(base) & set(cand))
    if not shared:
        raise ValueError("the two sides share no task_id; they were not scored on the same tasks")
    for side, scores in (("base", base), ("cand", cand)):
        empty = [t for t in shared if len(scores[t]) == 0]
        if empty:
            raise ValueError(f"{side}: task {empty[0]!r} has no scores")
    b = [mean_stderr(base[t])[0] for t in shared]
    c = [mean_stderr(cand[t])[0] for t in shared]
    d = [y - x for x, y in zip(b, c)]
    delta, se = mean_stderr(d)
    lo, hi = ci95(delta, se)
    single = all(len(base[t]) == 1 and len(cand[t]) == 1 for t in shared)
    if single and set(b) | set(c) <= {0.0, 1.0}:
        b_only, c_only = sum(v < 0 for v in d), sum(v > 0 for v in d)
        p = exact_mcnemar(b_only, c_only)
        test = "mcnemar exact" if b_only + c_only <= LARGE else "mcnemar, normal approximation"
    else:
        p, test = sign_flip_p(d, seed=seed)
    verdict = "inconclusive" if not p < alpha else ("better" if delta > 0 else "worse")
    return Paired(mean_stderr(b)[0], mean_stderr(c)[0], delta, lo, hi, p, test, len(shared),
                  verdict, len(set(base) - set(cand)), len(set(cand) - set(base)))
