"""Two sides compared metric by metric: eval metrics task by task, with a verdict.

A side is one run or one replicate group (its completed runs, `evsys run --seeds`). An eval
metric `<split>/<bench>/<metric>` is recomputed per task from the indexed rows of
`predictions/<bench>.jsonl` at each run's final evaluation of that key (or at `step`); a
group's value on a task is the list of its replicates' values there, and
`stats.paired_compare` pairs the two sides' tasks by task_id (a task's score is the mean of
its list). A metric without per-task predictions (training losses, a benchmark whose
predictions are gone) gets its delta and no verdict, with a note saying so. Every eval metric
is taken as higher-is-better.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Sequence

from evsys_core import stats
from evsys_core.benchmarks import passk
from evsys_core.errors import UsageError

NO_TASKS = "no per-task predictions: delta only, no paired test and no verdict"


def pooled_scores(con: Any, run_ids: Sequence[str], key: str,
                  steps: Sequence[int | None]) -> tuple[dict[str, list[float]], int]:
    """task_id -> one value per replicate that scored the task (in `run_ids`' order), and how
    many of `run_ids` had per-task predictions for `key` at their step. A run's value on a task
    is the metric recomputed from its indexed prediction rows at that step (the last line of a
    sample wins); a run has none when the key is not `<split>/<bench>/<pass@k | mean_score>`,
    it has no rows there, or (pass@k) it has fewer samples than k. One query for all the runs."""
    parts = key.split("/")
    at = {r: s for r, s in zip(run_ids, steps) if s is not None}
    try:
        metric = passk.parse_metric(parts[2]) if len(parts) == 3 else None
    except ValueError:
        metric = None
    if metric is None or not at:
        return {}, 0
    samples: dict[str, dict[str, dict[Any, tuple[float, bool]]]] = {r: {} for r in at}
    for run_id, step, task_id, sample, score, passed in con.execute(
        "SELECT run_id, step, task_id, sample, score, passed FROM predictions WHERE benchmark = ? "
        "AND run_id IN (SELECT unnest(?::VARCHAR[])) AND step IN (SELECT unnest(?::BIGINT[])) "
        "AND task_id IS NOT NULL ORDER BY line", [parts[1], list(at), sorted(set(at.values()))]).fetchall():
        if at[run_id] == step:
            score = float(score) if score is not None and math.isfinite(score) else 0.0
            samples[run_id].setdefault(str(task_id), {})[sample] = (score, bool(passed))
    pooled: dict[str, list[float]] = {}
    used = 0
    for run_id in at:
        per_task = [list(s.values()) for s in samples[run_id].values()]
        if not per_task or (metric[0] == "pass" and min(map(len, per_task)) < metric[1]):
            continue  # no rows, or fewer samples than k: the estimate cannot be formed
        used += 1
        values = passk.per_task_values([parts[2]], per_task)[parts[2]]
        for task, value in zip(samples[run_id], values):
            pooled.setdefault(task, []).append(value)
    return pooled, used


def _values_at(con: Any, run_ids: Sequence[str], keys: Sequence[str],
               step: int | None) -> dict[str, list[tuple[Any, int | None]]]:
    """key -> (value, step) of the metric in each of `run_ids` (in their order) at `step`, or
    its final value when step is None; (None, None) for a run without it. One query for all
    the runs and keys."""
    ids, keys = list(run_ids), list(keys)
    if step is None:
        rows = con.execute("SELECT key, run_id, final_value, final_step FROM metric_summary WHERE "
                           "key IN (SELECT unnest(?::VARCHAR[])) AND run_id IN (SELECT unnest(?::VARCHAR[]))",
                           [keys, ids])
    else:
        rows = con.execute("SELECT key, run_id, arg_max(value, line), any_value(step) FROM metrics "
                           "WHERE key IN (SELECT unnest(?::VARCHAR[])) AND step = ? AND run_id IN "
                           "(SELECT unnest(?::VARCHAR[])) GROUP BY key, run_id", [keys, step, ids])
    got = {(k, r): (v, s) for k, r, v, s in rows.fetchall()}
    return {k: [got.get((k, r), (None, None)) for r in ids] for k in keys}


def side_keys(con: Any, run_ids: Sequence[str]) -> dict[str, str]:
    """key -> split of every metric that each of `run_ids` logged."""
    rows = con.execute("SELECT key, any_value(split), count(DISTINCT run_id) FROM metric_summary "
                       "WHERE run_id IN (SELECT unnest(?::VARCHAR[])) GROUP BY key",
                       [list(run_ids)]).fetchall()
    return {k: s for k, s, n in rows if n == len(run_ids)}


def compare_metrics(con: Any, base: dict[str, Any], cand: dict[str, Any], *,
                    metric: str | None = None, step: int | None = None) -> list[dict[str, Any]]:
    """One entry per metric every run of both sides logged (companion keys folded in): both
    values (a group's: the mean over its replicates), the delta CAND − BASE and, for eval
    metrics with predictions, the paired test over all replicates' tasks and its verdict.
    `base` and `cand` are sides: {"name": ..., "run_ids": [...]} (one id for a run)."""
    kb, kc = side_keys(con, base["run_ids"]), side_keys(con, cand["run_ids"])
    shared = sorted((k for k in kb if k in kc and not stats.is_companion(k)),
                    key=lambda k: (kb[k] == "train", k))
    if metric is not None:
        if metric not in shared:
            close = difflib.get_close_matches(metric, shared, n=3, cutoff=0.4)
            hint = f"; did you mean {', '.join(close)}?" if close else (
                f"; shared metrics: {', '.join(shared[:15]) or 'none'}")
            raise UsageError(f"--metric {metric!r}: not a metric both {base['name']} and "
                             f"{cand['name']} logged{hint}")
        shared = [metric]
    values = {side: _values_at(con, s["run_ids"], shared, step) for side, s in (("base", base), ("cand", cand))}
    return [_compare_key(con, base, cand, key, kb[key], step, {side: v[key] for side, v in values.items()})
            for key in shared]


def _compare_key(con: Any, base: dict[str, Any], cand: dict[str, Any], key: str, split: str,
                 step: int | None, at: dict[str, list[tuple[Any, int | None]]]) -> dict[str, Any]:
    """One metric's entry; `at`: each side's (value, step) per run (`_values_at`)."""
    value = {side: _mean([v for v, _ in vals]) for side, vals in at.items()}
    last = {side: max((s for _, s in vals if s is not None), default=None)
            for side, vals in at.items()}
    entry: dict[str, Any] = {
        "key": key, "split": split, "base": value["base"], "cand": value["cand"],
        "base_step": last["base"], "cand_step": last["cand"],
        "delta": value["cand"] - value["base"] if _num(value["base"]) and _num(value["cand"])
        else None,
        "verdict": None, "base_seeds": len(base["run_ids"]), "cand_seeds": len(cand["run_ids"])}
    missing = [s["name"] for side, s in (("base", base), ("cand", cand))
               if any(st is None for _, st in at[side])]
    if step is not None and missing:
        entry["note"] = f"not logged at step {step} by " + " and ".join(missing)
        return entry
    if split == "train":
        entry["note"] = NO_TASKS
        return entry
    pools = [pooled_scores(con, s["run_ids"], key, [st for _, st in at[side]])
             for side, s in (("base", base), ("cand", cand))]
    entry.update(_paired(base, cand, *pools))
    return entry


def _paired(base: dict[str, Any], cand: dict[str, Any], pool_b: tuple[dict[str, list[float]], int],
            pool_c: tuple[dict[str, list[float]], int]) -> dict[str, Any]:
    """The paired test's fields for two pooled sides, or a note saying why there is none."""
    (tb, ub), (tc, uc) = pool_b, pool_c
    entry: dict[str, Any] = {}
    if not tb or not tc or not set(tb) & set(tc):
        entry["note"] = NO_TASKS if not (tb and tc) else \
            "the sides share no task_id: not scored on the same tasks; no verdict"
        return entry
    p = stats.paired_compare(tb, tc)
    entry.update(p.as_dict())  # base and cand become the means over the paired tasks
    entry.update(base_seeds=ub, cand_seeds=uc, base_tasks=len(tb), cand_tasks=len(tc))
    both = set(tb) & set(tc)
    entry["shown"] = {side: stats.format_score(
        *stats.mean_stderr([_mean(scores[t]) for t in both]), p.n_tasks, seeds=used)
        for side, scores, used in (("base", tb, ub), ("cand", tc, uc))}
    left_out = [f"{s['name']}: {len(s['run_ids']) - u} of {len(s['run_ids'])} replicates have "
                "no per-task predictions and are not pooled"
                for s, u in ((base, ub), (cand, uc)) if u < len(s["run_ids"])]
    if left_out:
        entry["note"] = "; ".join(left_out)
    return entry


def versus_top(con: Any, sides: list[dict[str, Any]], key: str) -> list[dict[str, Any] | None]:
    """For `best`: each side after the first (the leader) paired with the leader on the eval
    metric `key` at their final evaluations, all replicates' tasks pooled: delta = leader − this
    side, its 95% CI, p, tasks, seeds and verdict (`better`: the leader is really ahead).
    None for the leader and where there is nothing to pair (training metrics)."""
    out: list[dict[str, Any] | None] = [None] * len(sides)
    if len(sides) < 2:
        return out

    def pool(s: dict[str, Any]) -> tuple[dict[str, list[float]], int]:
        steps = [st for _, st in _values_at(con, s["run_ids"], [key], None)[key]]
        return pooled_scores(con, s["run_ids"], key, steps)

    top = pool(sides[0])
    if not top[0]:
        return out
    for i, s in enumerate(sides[1:], 1):
        e = _paired(s, sides[0], pool(s), top)
        out[i] = {k: e.get(k) for k in ("delta", "ci_low", "ci_high", "p_value", "test", "n_tasks",
                                        "base_seeds", "cand_seeds", "verdict", "note")
                  if e.get(k) is not None}
    return out


def _mean(values: Sequence[Any]) -> Any:
    """The mean of numeric values; a single non-numeric value (a text metric) as it is."""
    nums = [v for v in values if _num(v)]
    if len(nums) == len(values) and nums:
        return math.fsum(nums) / len(nums)
    return values[0] if len(values) == 1 else None


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
