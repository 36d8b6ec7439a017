"""The questions people ask of the index: which runs, which was best, how do two differ.

Each function takes an open read-only connection (see `store.connect`) and returns plain
Python values: str, int, float, bool, None, lists and dicts; timestamps as ISO-8601 UTC
strings. Floats may be NaN or infinite (a metric can be); `jsonable` turns those into
strings for strict JSON.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import time
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Sequence

import duckdb

from evsys_core import rundir, stats
from evsys_core.errors import RunError, UsageError
from evsys_core.history.ingest import CONFIG, flatten
from evsys_core.history.schema import COLUMNS, PUBLIC_TABLES
from evsys_core.history.store import QueryError

MAX_PIVOT_KEYS = 500
RUN_COLUMNS = [name for name, _ in COLUMNS["runs"]]


# ------------------------------------------------------------------------- values


def iso(v: Any) -> Any:
    if isinstance(v, datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=timezone.utc)
        return v.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, Decimal):
        return float(v)
    return v


def jsonable(obj: Any) -> Any:
    """Strict-JSON form: NaN and ±inf as "NaN"/"Infinity"/"-Infinity", times as ISO strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (datetime, date, Decimal)):
        return iso(obj)
    if isinstance(obj, (bytes, bytearray)):
        return obj.hex()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def epoch(v: Any) -> float | None:
    if isinstance(v, datetime):
        return (v if v.tzinfo else v.replace(tzinfo=timezone.utc)).timestamp()
    return None


def sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def sql_ident(s: str) -> str:
    return '"' + s.replace('"', '""') + '"'


def _dicts(cur: Any) -> list[dict[str, Any]]:
    cols = [d[0] for d in cur.description]
    return [{c: iso(v) for c, v in zip(cols, row)} for row in cur.fetchall()]


def metric_value(value: Any, text: Any) -> Any:
    return value if value is not None else text


# --------------------------------------------------------------------- the wide view


def metric_keys(con: Any) -> list[tuple[str, str, int]]:
    """(key, split, number of runs) of every metric in the index, most common first."""
    return con.execute(
        "SELECT key, any_value(split), count(*) AS n FROM metric_summary "
        "GROUP BY key ORDER BY n DESC, key"
    ).fetchall()


def wide_cte(keys: Sequence[str]) -> str:
    """`WITH _wide AS (...)`: every runs column, `sort_time`, and one column per metric key
    holding the run's final value (quote it: "val/val/pass@1")."""
    keys = [k for k in keys if k not in RUN_COLUMNS and k != "sort_time"][:MAX_PIVOT_KEYS]
    sort_time = "coalesce(started_at, created_at, last_modified) AS sort_time"
    if not keys:
        return f"WITH _wide AS (SELECT runs.*, {sort_time} FROM runs)"
    cols = "".join(
        f", max(final_value) FILTER (WHERE key = {sql_str(k)}) AS {sql_ident(k)}" for k in keys
    )
    return (
        f"WITH _m AS (SELECT run_id{cols} FROM metric_summary "
        f"WHERE key IN ({', '.join(sql_str(k) for k in keys)}) GROUP BY run_id), "
        f"_wide AS (SELECT runs.*, {sort_time}"
        + "".join(f", _m.{sql_ident(k)}" for k in keys)
        + " FROM runs LEFT JOIN _m USING (run_id))"
    )


def _check_expr(con: Any, expr: str, what: str) -> None:
    try:
        n = len(con.extract_statements(f"SELECT 1 WHERE ({expr})"))
    except duckdb.Error as e:
        raise QueryError(f"{what} {expr!r} is not a valid SQL expression: {_first_line(e)}") from None
    if n != 1:
        raise QueryError(f"{what} must be one SQL expression, not several statements")


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _where_error(con: Any, e: Exception, what: str, expr: str) -> QueryError:
    cols = ", ".join(RUN_COLUMNS[:20])
    keys = [k for k, split, _ in metric_keys(con) if split != "train"] or [
        k for k, _, _ in metric_keys(con)]
    hint = f'; metric keys are columns too, in double quotes (e.g. "{keys[0]}" > 0.5)' if keys else ""
    return QueryError(f"{what} {expr!r}: {_first_line(e)}. Columns: {cols}, ...{hint}")


def _order(con: Any, sort: str | None, keys: Sequence[str]) -> str:
    if not sort:
        return "sort_time DESC NULLS LAST, name"
    name, _, direction = sort.rpartition(":") if sort.endswith((":asc", ":desc")) else (sort, "", "")
    direction = (direction or "desc").upper()
    if name == "age":
        name, direction = "sort_time", ("DESC" if direction == "ASC" else "ASC")
    if name not in RUN_COLUMNS and name not in keys and name != "sort_time":
        known = [k for k, _, _ in metric_keys(con)]
        close = difflib.get_close_matches(name, [*RUN_COLUMNS, *known], n=5, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise QueryError(f"--sort {sort!r}: no such column or metric{hint} "
                         "(`evsys query \"select distinct key from metrics\"` lists metrics)")
    return f"{sql_ident(name)} {direction} NULLS LAST, sort_time DESC NULLS LAST"


# ------------------------------------------------------------------------- reports


def _kind_filter(kind: str | None) -> str:
    """`kind = ...` for a run kind ("train", "score"), or TRUE for every kind (None)."""
    if kind is None:
        return "TRUE"
    if kind not in ("train", "score"):
        raise UsageError(f"kind must be train, score or all, not {kind!r}")
    return f"_wide.kind = {sql_str(kind)}"


def list_runs(con: Any, where: str | None = None, sort: str | None = None,
              limit: int | None = None, kind: str | None = "train") -> list[dict[str, Any]]:
    """Runs of `kind` (default: training runs; None: every kind), newest first."""
    if where:
        _check_expr(con, where, "--where")
    keys = _referenced_keys(con, where, sort)
    sql = wide_cte(keys) + (" SELECT run_id, name, path, status, kind, algorithm, model, backend, "
                            "steps, max_steps, started_at, ended_at, conclusion, sort_time "
                            f"FROM _wide WHERE {_kind_filter(kind)}")
    if where:
        sql += f" AND ({where})"
    sql += f" ORDER BY {_order(con, sort, keys)}"
    if limit is not None:
        if limit < 0:
            raise UsageError(f"--limit must be 0 or more, got {limit}")
        sql += f" LIMIT {int(limit)}"
    try:
        rows = _dicts(con.execute(sql))
    except duckdb.Error as e:
        raise _where_error(con, e, "--where", where or "") from None
    evals = _eval_metrics(con, [r["run_id"] for r in rows])
    now = time.time()
    out = []
    for r in rows:
        t = _parse_iso(r.get("sort_time"))
        out.append({
            "run_id": r["run_id"], "name": r["name"], "path": r["path"], "status": r["status"],
            "kind": r["kind"], "algorithm": r["algorithm"], "model": r["model"], "backend": r["backend"],
            "steps": r["steps"], "max_steps": r["max_steps"],
            "started_at": r["started_at"], "ended_at": r["ended_at"],
            "age_s": (now - t) if t is not None else None,
            "metrics": evals.get(r["run_id"], {}),
            "conclusion": r["conclusion"],
        })
    return out


def _parse_iso(s: Any) -> float | None:
    if not isinstance(s, str):
        return None
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _eval_metrics(con: Any, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    if not run_ids:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for run_id, key, value, text in con.execute(
        "SELECT run_id, key, final_value, final_text FROM metric_summary "
        "WHERE split <> 'train' AND run_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY key",
        [run_ids],
    ).fetchall():
        out.setdefault(run_id, {})[key] = metric_value(value, text)
    return out


def resolve(con: Any, workspace: Path, run: str) -> dict[str, Any]:
    """A run by id, path, exact name, or unique prefix of a name or id."""
    s = str(run).strip()
    if not s:
        raise RunError("no run given: pass a run id, a name (or unique prefix), or a run directory")
    select = "SELECT * FROM runs WHERE "
    hit = _dicts(con.execute(select + "run_id = ?", [s]))
    if not hit and ("/" in s or os.sep in s or s in (".", "..") or os.path.isdir(s)):  # no OSError
        rel = _relative(workspace, s)
        hit = _dicts(con.execute(select + "path = ?", [rel]))
        if not hit:
            raise RunError(f"{s}: no indexed run directory there (looked for {rel or '.'} under "
                           f"{workspace}); a run directory holds run.json or metrics.jsonl")
    if not hit:
        hit = _dicts(con.execute(select + "name = ? ORDER BY started_at", [s]))
    if not hit:
        hit = _dicts(con.execute(
            select + "starts_with(name, ?) OR starts_with(run_id, ?) ORDER BY name", [s, s]))
    if len(hit) == 1:
        r = hit[0]
        r["run_dir"] = str(workspace / r["path"]) if r["path"] else str(workspace)
        return r
    if hit:
        shown = "\n".join(f"  {r['name']}  id={r['run_id']}  {r['status']}  {r['path']}"
                          for r in hit[:20])
        more = f"\n  ... and {len(hit) - 20} more" if len(hit) > 20 else ""
        raise RunError(f"{s!r} matches {len(hit)} runs; pass a run id or path instead:\n"
                       f"{shown}{more}")
    names = [n for (n,) in con.execute("SELECT DISTINCT name FROM runs").fetchall()]
    close = difflib.get_close_matches(s, names, n=5, cutoff=0.5)
    hint = f"; close names: {', '.join(close)}" if close else ""
    raise RunError(f"no run matches {s!r} (by id, name, name prefix or path){hint}. "
                   "`evsys runs` lists every run in the workspace.")


def _relative(workspace: Path, s: str) -> str:
    """A path given on the command line (relative to the current directory, or else to the
    workspace) as a workspace-relative path."""
    p = Path(s).expanduser()
    if not p.is_absolute():
        p = Path.cwd() / p if (Path.cwd() / p).exists() else workspace / p
    try:
        rel = p.resolve().relative_to(workspace)
    except ValueError:
        raise RunError(f"{s}: not inside the workspace {workspace}; pass --workspace DIR to "
                       "use the folder that holds it") from None
    return "" if rel == Path(".") else rel.as_posix()


def show(con: Any, workspace: Path, run: str) -> dict[str, Any]:
    r = resolve(con, workspace, run)
    run_id = r["run_id"]
    metrics = _dicts(con.execute(
        "SELECT key, split, n, first_step, final_step, final_value, final_text, max_value, "
        "max_step, min_value, min_step FROM metric_summary WHERE run_id = ? "
        "ORDER BY split = 'train', key", [run_id]))
    for m in metrics:
        m["final"] = metric_value(m.pop("final_value"), m.pop("final_text"))
    finals = {m["key"]: m["final"] for m in metrics}
    shown = stats.format_metrics(finals)
    for m in metrics:  # a score's final value with its 95% interval, as everywhere else
        m["shown"] = shown.get(m["key"])
    preds = _dicts(con.execute("""
        WITH last AS (SELECT benchmark, max(step) AS step FROM predictions WHERE run_id = ?
                      GROUP BY benchmark)
        SELECT p.benchmark, last.step AS last_step, count(*) AS rows_at_last_step,
               avg(p.score) AS mean_score, avg(p.passed::INT) AS pass_rate
        FROM predictions p JOIN last ON p.benchmark = last.benchmark
             AND p.step IS NOT DISTINCT FROM last.step
        WHERE p.run_id = ? GROUP BY p.benchmark, last.step ORDER BY p.benchmark""",
        [run_id, run_id]))
    conclusions = _dicts(con.execute(
        "SELECT time, author, text FROM conclusions WHERE run_id = ? ORDER BY ordinal", [run_id]))
    run_dir = Path(r["run_dir"])
    paths = {"run_dir": str(run_dir)}
    for key, name in (("run_json", rundir.RUN_JSON), ("config", CONFIG),
                      ("metrics", rundir.METRICS), ("summary", rundir.SUMMARY),
                      ("conclusion", rundir.CONCLUSION), ("train_log", rundir.TRAIN_LOG),
                      ("checkpoints", rundir.CHECKPOINTS)):
        if (run_dir / name).exists():
            paths[key] = str(run_dir / name)
    pred_dir = run_dir / rundir.PREDICTIONS
    if pred_dir.is_dir():
        paths["predictions"] = sorted(str(p) for p in pred_dir.glob("*.jsonl"))
    run = {k: r[k] for k in RUN_COLUMNS if k not in ("config", "run_json")}
    run["run_dir"] = r["run_dir"]
    return {
        "run": run,
        "config": json.loads(r["config"]) if r["config"] else None,
        "metrics": metrics,
        "predictions": preds,
        "conclusions": conclusions,
        "paths": paths,
    }


def best(con: Any, metric: str, maximize: bool = True, where: str | None = None,
         by: str = "final", limit: int | None = 5, kind: str | None = "train",
         offset: int = 0) -> list[dict[str, Any]]:
    if by not in ("final", "best"):
        raise UsageError(f"by must be 'final' or 'best', not {by!r}")
    if by == "final":
        value, step = "m.final_value", "m.final_step"
    else:
        value, step = ("m.max_value", "m.max_step") if maximize else ("m.min_value", "m.min_step")
    if where:
        _check_expr(con, where, "--where")
    keys = _referenced_keys(con, where)
    sql = (wide_cte(keys) + f" SELECT _wide.run_id, _wide.name, _wide.status, _wide.path, "
           f"_wide.algorithm, _wide.model, {value} AS value, {step} AS step "
           "FROM metric_summary m JOIN _wide ON m.run_id = _wide.run_id "
           f"WHERE m.key = ? AND {value} IS NOT NULL AND NOT isnan({value}) AND {_kind_filter(kind)}")
    if where:
        sql += f" AND ({where})"
    sql += f" ORDER BY value {'DESC' if maximize else 'ASC'}, _wide.sort_time DESC NULLS LAST"
    if limit:
        sql += f" LIMIT {int(limit) + int(offset)}"
    try:
        found = _dicts(con.execute(sql, [metric]))
    except duckdb.Error as e:
        raise _where_error(con, e, "--where", where or "") from None
    if not found:
        known = [k for k, _, _ in metric_keys(con)]
        if metric not in known:
            close = difflib.get_close_matches(metric, known, n=5, cutoff=0.4)
            hint = f"; did you mean {', '.join(close)}?" if close else (
                f"; known metrics: {', '.join(known[:15])}" if known
                else "; the index has no metrics yet")
            raise QueryError(f"no run has a metric named {metric!r}{hint}")
    page = found[int(offset):]
    if by == "final" and maximize and page:
        from evsys_core.history import paired

        sides = [{"name": r["name"], "run_ids": [r["run_id"]]} for r in [found[0], *page]]
        for r, vs in zip(page, paired.versus_top(con, sides, metric)[1:]):
            r["vs_top"] = vs if r is not found[0] else None
    return page


def _referenced_keys(con: Any, *texts: str | None) -> list[str]:
    """Metric keys a --where/--sort text mentions (only those become columns of _wide)."""
    text = " ".join(t for t in texts if t)
    if not text:
        return []
    return [k for k, _, _ in metric_keys(con) if k in text]


def side(con: Any, workspace: Path, ref: str) -> dict[str, Any]:
    """What `ref` names for compare and best: a run, or a replicate group (its completed runs).
    A run's id or exact name wins over a group's name (groups.find_group)."""
    from evsys_core.history import groups

    g = groups.find_group(con, ref)
    if g is None:
        r = resolve(con, workspace, ref)
        return {"kind": "run", "run_id": r["run_id"], "name": r["name"], "status": r["status"],
                "path": r["path"], "steps": r["steps"], "seeds": [r["seed"]],
                "run_ids": [r["run_id"]], "rows": [r]}
    run_ids = groups.group_run_ids(con, g["group_id"])
    if not run_ids:
        raise RunError(f"group {g['group_name']} ({g['group_id']}) has no completed run yet "
                       f"(statuses: {', '.join(map(str, g['statuses']))}); compare it once one "
                       "has completed, or compare single runs")
    rows = [resolve(con, workspace, r) for r in run_ids]
    return {"kind": "group", "run_id": g["group_id"], "name": g["group_name"],
            "status": f"{len(run_ids)}/{g['n_runs']} completed", "path": None,
            "steps": max((r["steps"] for r in rows if r["steps"] is not None), default=None),
            "seeds": [r["seed"] for r in rows], "run_ids": run_ids, "rows": rows}


def _side_config(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A side's flattened config: a key its replicates agree on has that value; one they do not
    (the seed) has the list of their values."""
    configs = [flatten(json.loads(r["config"])) if r["config"] else {} for r in rows]
    for r, c in zip(rows, configs):  # what run.json knows, for runs without config.yaml
        for k in ("algorithm", "model", "backend"):
            c.setdefault(f"run.{k}", r[k])
    out: dict[str, Any] = {}
    for k in sorted(set().union(*configs)):
        values = [c.get(k) for c in configs]
        same = all(_same(values[0], v) for v in values[1:])
        out[k] = values[0] if same else values
    return out


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def compare(con: Any, workspace: Path, base: str, cand: str, metric: str | None = None,
            step: int | None = None) -> dict[str, Any]:
    """BASE and CAND (each a run or a replicate group): their config differences and, per
    shared metric, both values, the delta CAND − BASE and (eval metrics) the paired test over
    every replicate's tasks and its verdict (see history/paired.py)."""
    from evsys_core.history import paired

    sides = [side(con, workspace, r) for r in (base, cand)]
    overlap = set(sides[0]["run_ids"]) & set(sides[1]["run_ids"])
    if overlap:
        what = "the same run" if sides[0]["run_id"] == sides[1]["run_id"] else \
            f"sides that share {len(overlap)} run(s)"
        raise UsageError(f"BASE and CAND are {what} ({sides[0]['name']}, {sides[1]['name']}); "
                         "compare two different runs or groups")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise UsageError(f"--step must be an evaluation step (an integer >= 0), got {step!r}")
    configs = [_side_config(s["rows"]) for s in sides]
    keys = sorted(set().union(*configs))
    config_diff = [{"key": k, "values": [c.get(k) for c in configs]} for k in keys
                   if not _same(configs[0].get(k), configs[1].get(k))]
    grouped = any(s["kind"] == "group" for s in sides)
    return {
        "runs": [{k: s[k] for k in ("kind", "run_id", "name", "status", "path", "steps", "seeds",
                                    "run_ids")} for s in sides],
        "config": config_diff,
        "config_keys_same": len(keys) - len(config_diff),
        "alpha": stats.ALPHA,
        "step": step,
        "metrics": paired.compare_metrics(con, sides[0], sides[1], metric=metric, step=step),
        "note": ("eval metrics are paired by task_id at each run's final evaluation (or --step)"
                 + ("; a group's task score is the mean over its completed replicates "
                    "(base_seeds/cand_seeds: how many were pooled), and the test is the "
                    "sign-flip test on the per-task differences" if grouped else "")
                 + "; verdict: better / worse when the paired test's p < alpha, else "
                 "inconclusive; training metrics have no per-task predictions: delta only, "
                 "no verdict"),
    }


def curves(con: Any, workspace: Path, run: str, keys: Sequence[str] | None = None,
           split: str | None = None, max_points: int | None = None) -> dict[str, Any]:
    r = resolve(con, workspace, run)
    known = [k for (k,) in con.execute(
        "SELECT key FROM metric_summary WHERE run_id = ? AND (? IS NULL OR split = ?) ORDER BY key",
        [r["run_id"], split, split]).fetchall()]
    wanted = list(keys) if keys else known
    missing = [k for k in wanted if k not in known]
    if missing:
        where = f" (split {split!r})" if split else ""
        raise QueryError(f"run {r['name']} has no metric {', '.join(map(repr, missing))}{where}; "
                         f"it has: {', '.join(known) or 'none'}")
    points: dict[str, list[list[Any]]] = {k: [] for k in wanted}
    for key, step, value in con.execute(
        "SELECT key, step, value FROM metrics WHERE run_id = ? AND value IS NOT NULL "
        "AND key IN (SELECT unnest(?::VARCHAR[])) ORDER BY key, step NULLS FIRST, line",
        [r["run_id"], wanted],
    ).fetchall():
        series = points[key]
        if series and series[-1][0] == step:
            series[-1][1] = value  # the same step logged again (a resumed run): keep the last
        else:
            series.append([step, value])
    if max_points is not None:
        points = {k: downsample(v, max_points) for k, v in points.items()}
    return {"run_id": r["run_id"], "name": r["name"], "path": r["path"], "curves": points}


def downsample(points: list, max_points: int) -> list:
    """At most `max_points` points, evenly spaced, always keeping the first and the last."""
    n = len(points)
    if max_points <= 0 or n <= max_points:
        return points
    if max_points == 1:
        return [points[-1]]
    idx = sorted({round(i * (n - 1) / (max_points - 1)) for i in range(max_points)})
    return [points[i] for i in idx]


def table_hint() -> str:
    return "tables: " + ", ".join(PUBLIC_TABLES)
