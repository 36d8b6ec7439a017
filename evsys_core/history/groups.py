"""Replicate groups in the index: runs that share a `group_id` (`evsys run --seeds`).

Views (created with the schema, documented in docs/history.md):
  groups         one row per group: name, runs, completed runs, seeds, statuses, algorithm, model
  group_metrics  per group and final metric, over the group's completed runs: n_runs, mean,
                 sd, stderr (sd / sqrt(n_runs)), and the 95% t-interval
                 mean ± t(0.975, n_runs − 1) · stderr (NULL for a single run)

A group is named by its id, its exact name (the run name without `-s<seed>`; a name that
several groups share is refused with the list), or a unique prefix of its id.
"""

from __future__ import annotations

import math
from typing import Any

from evsys_core.errors import RunError

MAX_DF = 99  # the t table covers groups of up to MAX_DF + 1 runs (replicates.MAX_SEEDS)


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (0.5 < p < 1) of Student's t with `df` degrees of freedom, by bisection
    on its CDF (the regularised incomplete beta function, below); good to ~1e-10."""
    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _t_cdf(t: float, df: int) -> float:
    x = df / (df + t * t)
    return 1.0 - 0.5 * _betainc(df / 2.0, 0.5, x)


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b), by its continued fraction (modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(ln_front) * f / a


def _t_table() -> str:
    return ", ".join(f"({df}, {t_quantile(0.975, df)!r})" for df in range(1, MAX_DF + 1))


def views_sql() -> str:
    return f"""
CREATE VIEW groups AS
    SELECT group_id, any_value(group_name) AS group_name, count(*) AS n_runs,
           count(*) FILTER (WHERE status = 'completed') AS n_completed,
           list(seed ORDER BY seed) AS seeds, list(run_id ORDER BY seed) AS run_ids,
           list(DISTINCT status) AS statuses, any_value(algorithm) AS algorithm,
           any_value(model) AS model, min(created_at) AS created_at, max(ended_at) AS ended_at
    FROM runs WHERE group_id IS NOT NULL GROUP BY group_id;

CREATE VIEW group_metrics AS
    WITH t(df, t975) AS (VALUES {_t_table()}),
    per AS (
        SELECT r.group_id, m.key, any_value(m.split) AS split, count(*) AS n_runs,
               avg(m.final_value) AS mean, stddev_samp(m.final_value) AS sd,
               min(m.final_value) AS min_value, max(m.final_value) AS max_value
        FROM metric_summary m JOIN runs r USING (run_id)
        WHERE r.group_id IS NOT NULL AND r.status = 'completed' AND m.final_value IS NOT NULL
              AND NOT isnan(m.final_value) AND NOT ends_with(m.key, '_stderr')
        GROUP BY r.group_id, m.key)
    SELECT per.group_id, key, split, n_runs, mean, sd, sd / sqrt(n_runs) AS stderr,
           mean - t975 * sd / sqrt(n_runs) AS ci95_low, mean + t975 * sd / sqrt(n_runs) AS ci95_high,
           min_value, max_value
    FROM per LEFT JOIN t ON t.df = least(per.n_runs - 1, {MAX_DF});
"""


# ------------------------------------------------------------------------- reports


def resolve_group(con: Any, ref: str) -> dict[str, Any] | None:
    """The `groups` row named by `ref` (id, exact name, unique id prefix), or None if no group
    matches; several groups of one name raise RunError with the list."""
    from evsys_core.history.reports import _dicts

    s = str(ref).strip()
    if not s:
        return None
    for where, args in (("group_id = ?", [s]), ("group_name = ?", [s]),
                        ("starts_with(group_id, ?)", [s])):
        hit = _dicts(con.execute(f"SELECT * FROM groups WHERE {where} ORDER BY created_at", args))
        if len(hit) == 1:
            return hit[0]
        if hit:
            shown = "\n".join(f"  {g['group_name']}  id={g['group_id']}  {g['n_runs']} runs  "
                              f"created {g['created_at']}" for g in hit[:20])
            raise RunError(f"{s!r} matches {len(hit)} groups; pass a group id instead:\n{shown}")
    return None


def group_metrics(con: Any, group_id: str) -> list[dict[str, Any]]:
    from evsys_core.history.reports import _dicts

    return _dicts(con.execute(
        "SELECT key, split, n_runs, mean, sd, stderr, ci95_low, ci95_high, min_value, max_value "
        "FROM group_metrics WHERE group_id = ? ORDER BY split = 'train', key", [group_id]))


def list_groups(con: Any, limit: int | None = None) -> list[dict[str, Any]]:
    """Every group, newest first, with its eval metrics (mean and 95% interval)."""
    from evsys_core.history.reports import _dicts

    rows = _dicts(con.execute("SELECT * FROM groups ORDER BY created_at DESC NULLS LAST, group_id"
                              + (f" LIMIT {int(limit)}" if limit is not None else "")))
    for g in rows:
        g["metrics"] = {m["key"]: {k: m[k] for k in ("mean", "ci95_low", "ci95_high", "n_runs")}
                        for m in group_metrics(con, g["group_id"]) if m["split"] != "train"}
    return rows


def show_group(con: Any, group: dict[str, Any]) -> dict[str, Any]:
    from evsys_core.history.reports import _dicts

    runs = _dicts(con.execute(
        "SELECT run_id, name, path, status, seed, steps FROM runs WHERE group_id = ? ORDER BY seed",
        [group["group_id"]]))
    return {"group": group, "runs": runs, "metrics": group_metrics(con, group["group_id"])}


def best_groups(con: Any, metric: str, maximize: bool = True,
                limit: int | None = 5) -> list[dict[str, Any]]:
    """Groups ranked by the mean final value of `metric` over their completed runs; when
    higher is better, each group after the first carries `vs_top`: the leader paired with it
    over all replicates' tasks (paired.versus_top)."""
    from evsys_core.history import paired
    from evsys_core.history.reports import _dicts

    sql = ("SELECT g.group_id, g.group_name, m.n_runs, m.mean AS value, m.ci95_low, m.ci95_high, "
           "g.algorithm, g.model FROM group_metrics m JOIN groups g USING (group_id) "
           f"WHERE m.key = ? ORDER BY m.mean {'DESC' if maximize else 'ASC'}, g.created_at DESC")
    if limit:
        sql += f" LIMIT {int(limit)}"
    rows = _dicts(con.execute(sql, [metric]))
    sides = [{"name": r["group_name"], "run_ids": group_run_ids(con, r["group_id"])} for r in rows]
    for r, s in zip(rows, sides):
        r["seeds"] = [v for (v,) in con.execute(
            "SELECT seed FROM runs WHERE run_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY seed",
            [s["run_ids"]]).fetchall()]
    for r, vs in zip(rows, paired.versus_top(con, sides, metric) if maximize else [None] * len(rows)):
        r["vs_top"] = vs
    return rows


def group_run_ids(con: Any, group_id: str) -> list[str]:
    """The group's completed runs (the ones its statistics are over)."""
    return [r for (r,) in con.execute(
        "SELECT run_id FROM runs WHERE group_id = ? AND status = 'completed' ORDER BY seed",
        [group_id]).fetchall()]


def find_group(con: Any, ref: str) -> dict[str, Any] | None:
    """The group `ref` names, unless it names a run: a run id or an exact run name wins over a
    group name; a group id prefix counts only in the group id's own form (g + hex)."""
    import re

    s = str(ref).strip()
    if not s or con.execute("SELECT 1 FROM runs WHERE run_id = ? OR name = ? OR path = ? LIMIT 1",
                            [s, s, s]).fetchone():
        return None
    for where in ("group_id = ?", "group_name = ?"):
        if con.execute(f"SELECT 1 FROM groups WHERE {where} LIMIT 1", [s]).fetchone():
            return resolve_group(con, s)
    return resolve_group(con, s) if re.fullmatch(r"g[0-9a-f]{3,}", s) else None
