"""What the pages of `evsys ui` show of replicate groups (`evsys run --seeds`).

A group's row of the runs table and its side of a comparison stand for its runs: the
statistics come from the index's `groups` and `group_metrics` views (mean over the completed
runs, 95% t-interval), and what those views do not hold (a curve, a task's pass rate) is the
mean over the group's completed runs here.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from evsys_core.history.reports import _dicts
from evsys_core.ui.pages import fmt


def statistics(con: Any, group_ids: list[str], keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each group's row of the index's `groups` view, and per metric key its mean over the
    group's completed runs with the 95% t-interval, from the `group_metrics` view."""
    if not group_ids:
        return {}
    out = {g["group_id"]: {**g, "metrics": {}} for g in _dicts(con.execute(
        "SELECT * FROM groups WHERE group_id IN (SELECT unnest(?::VARCHAR[]))", [group_ids]))}
    for gid, key, n, mean, lo, hi in con.execute(
        "SELECT group_id, key, n_runs, mean, ci95_low, ci95_high FROM group_metrics WHERE "
        "group_id IN (SELECT unnest(?::VARCHAR[])) AND key IN (SELECT unnest(?::VARCHAR[]))",
        [group_ids, list(keys)]).fetchall():
        out[gid]["metrics"][key] = {"value": mean, "ci": (lo, hi) if _num(lo) and _num(hi)
                                    else None, "n": n, "unit": "runs"}
    return out


def members(con: Any, group_ids: list[str]) -> dict[str, list[str]]:
    """group id -> its runs, by seed."""
    out: dict[str, list[str]] = {g: [] for g in group_ids}
    for gid, run_id in con.execute(
        "SELECT group_id, run_id FROM runs WHERE group_id IN (SELECT unnest(?::VARCHAR[])) "
        "ORDER BY group_id, seed NULLS LAST, name", [group_ids]).fetchall():
        out[gid].append(run_id)
    return out


def row(g: dict[str, Any], members: list[dict[str, Any]], metric_cols: list[str],
               param_cols: list[str]) -> dict[str, Any]:
    """A replicate group's row: its name, runs and seeds, statuses, the values its runs share
    (or each distinct one), the mean and interval of each metric, its newest conclusion."""
    def shared(values: list[Any]) -> Any:
        distinct = _unique([fmt(v) for v in values if v is not None])
        return distinct[0] if len(distinct) == 1 else ", ".join(distinct) or None

    statuses = [m["status"] for m in members]
    counts = {s: statuses.count(s) for s in _unique([s or "unknown" for s in statuses])}
    started = [m["started_at"] for m in members if m["started_at"]]
    concluded = [m for m in members if m["conclusion"]]
    return {
        "kind": "group", "group_id": g["group_id"], "name": g["group_name"] or g["group_id"],
        "n_runs": g["n_runs"], "n_completed": g["n_completed"], "seeds": g["seeds"] or [],
        "status": next(iter(counts)) if len(counts) == 1 else
        ", ".join(f"{n} {s}" for s, n in counts.items()), "one_status": len(counts) == 1,
        "algorithm": g["algorithm"], "model": g["model"],
        "steps": shared([m["steps"] for m in members]),
        "max_steps": shared([m["max_steps"] for m in members]),
        "started_at": min(started) if started else None,
        "conclusion": max(concluded, key=lambda m: m["started_at"] or "")["conclusion"]
        if concluded else None,
        "metrics": {k: g["metrics"].get(k, {"value": None, "ci": None, "n": None})
                    for k in metric_cols},
        "params": {k: shared([m["params"].get(k) for m in members]) for k in param_cols},
        "members": members,
    }


def pooled_rates(per_run: list[dict[str, dict[str, tuple]]]) -> dict[str, dict[str, tuple]]:
    """Benchmark -> task -> (mean pass rate over the runs that answered it, their distinct
    answers joined, instruction): one run's rates as they are, a group's averaged."""
    if len(per_run) == 1:
        return per_run[0]
    out: dict[str, dict[str, tuple]] = {}
    for bench in sorted({b for r in per_run for b in r}):
        tasks: dict[str, list[tuple]] = {}
        for r in per_run:
            for task, got in r.get(bench, {}).items():
                tasks.setdefault(task, []).append(got)
        out[bench] = {}
        for task, got in tasks.items():
            rates = [g[0] for g in got if g[0] is not None]
            answers = _unique([str(g[1]) for g in got if g[1] is not None])
            out[bench][task] = (sum(rates) / len(rates) if rates else None,
                                " · ".join(answers) if answers else None, got[0][2])
    return out


def mean_curves(per_run: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """One run's curves as they are; a group's as the mean over its runs at each step (the
    runs that logged that step), with no band."""
    if len(per_run) == 1:
        return per_run[0]
    out: dict[str, dict[str, Any]] = {}
    for key in _unique([k for c in per_run for k in c]):
        at: dict[Any, list[float]] = {}
        for c in per_run:
            for s, v in (c.get(key) or {}).get("points", []):
                at.setdefault(s, []).append(v)
        out[key] = {"points": [[s, sum(vs) / len(vs)] for s, vs in sorted(
            at.items(), key=lambda x: (x[0] is None, x[0]))], "band": None}
    return out


def _unique(xs: list[Any]) -> list[Any]:
    return list(dict.fromkeys(xs))


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
