"""Two runs compared metric by metric: eval metrics task by task, with a verdict.

An eval metric `<split>/<bench>/<metric>` is recomputed per task from the indexed rows of
`predictions/<bench>.jsonl` at the run's final evaluation of that key (or at `step`), and
`stats.paired_compare` pairs the two runs' tasks by task_id. A metric without per-task
predictions (training losses, a benchmark whose predictions are gone) gets its delta and no
verdict, with a note saying so. Every eval metric is taken as higher-is-better.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from evsys_core import stats
from evsys_core.benchmarks import passk
from evsys_core.errors import UsageError

NO_TASKS = "no per-task predictions: delta only, no paired test and no verdict"


def task_scores(con: Any, run_id: str, key: str, step: int | None) -> dict[str, float] | None:
    """task_id -> the metric's value on that task at `step`, from the indexed predictions;
    None when the key is not `<split>/<bench>/<pass@k | mean_score>` or no rows exist."""
    parts = key.split("/")
    if len(parts) != 3 or step is None:
        return None
    try:
        metric = passk.parse_metric(parts[2])
    except ValueError:
        return None
    samples: dict[str, dict[Any, tuple[float, bool]]] = {}
    for task_id, sample, score, passed in con.execute(
        "SELECT task_id, sample, score, passed FROM predictions WHERE run_id = ? AND "
        "benchmark = ? AND step = ? AND task_id IS NOT NULL ORDER BY line",
        [run_id, parts[1], step]).fetchall():
        score = float(score) if score is not None and math.isfinite(score) else 0.0
        samples.setdefault(str(task_id), {})[sample] = (score, bool(passed))  # last line wins
    if not samples:
        return None
    per_task = [list(s.values()) for s in samples.values()]
    if metric[0] == "pass" and min(map(len, per_task)) < metric[1]:
        return None  # fewer samples than k: the estimate cannot be formed
    values = passk.per_task_values([parts[2]], per_task)[parts[2]]
    return dict(zip(samples, values))


def _value_at(con: Any, run_id: str, key: str, step: int | None) -> tuple[Any, int | None]:
    """(value, step) of a metric at `step`, or its final value when step is None."""
    if step is None:
        row = con.execute("SELECT final_value, final_step FROM metric_summary WHERE run_id = ? "
                          "AND key = ?", [run_id, key]).fetchone()
    else:
        row = con.execute("SELECT value, step FROM metrics WHERE run_id = ? AND key = ? AND "
                          "step = ? ORDER BY line DESC LIMIT 1", [run_id, key, step]).fetchone()
    return (row[0], row[1]) if row else (None, None)


def compare_metrics(con: Any, base: dict[str, Any], cand: dict[str, Any], *,
                    metric: str | None = None, step: int | None = None) -> list[dict[str, Any]]:
    """One entry per metric both runs logged (companion keys folded in): both values, the
    delta CAND − BASE and, for eval metrics with predictions, the paired test and verdict."""
    def keys(run_id: str) -> dict[str, str]:
        return dict(con.execute("SELECT key, split FROM metric_summary WHERE run_id = ?",
                                [run_id]).fetchall())

    kb, kc = keys(base["run_id"]), keys(cand["run_id"])
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
    out = []
    for key in shared:
        (bv, bs), (cv, cs) = (_value_at(con, r["run_id"], key, step) for r in (base, cand))
        entry: dict[str, Any] = {"key": key, "split": kb[key], "base": bv, "cand": cv,
                                 "base_step": bs, "cand_step": cs,
                                 "delta": cv - bv if _num(bv) and _num(cv) else None,
                                 "verdict": None}
        if step is not None and (bs is None or cs is None):
            entry["note"] = f"not logged at step {step} by " + " and ".join(
                r["name"] for r, s in ((base, bs), (cand, cs)) if s is None)
            out.append(entry)
            continue
        tb = task_scores(con, base["run_id"], key, bs) if kb[key] != "train" else None
        tc = task_scores(con, cand["run_id"], key, cs) if tb else None
        if not tb or not tc or not set(tb) & set(tc):
            entry.update(note=NO_TASKS if not (tb and tc) else
                         "the runs share no task_id: not scored on the same tasks; no verdict")
            out.append(entry)
            continue
        p = stats.paired_compare({t: [v] for t, v in tb.items()}, {t: [v] for t, v in tc.items()})
        entry.update(p.as_dict())  # base and cand become the means over the paired tasks
        both = set(tb) & set(tc)
        entry["shown"] = {side: stats.format_score(
            *stats.mean_stderr([scores[t] for t in both]), p.n_tasks)
            for side, scores in (("base", tb), ("cand", tc))}
        out.append(entry)
    return out


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
