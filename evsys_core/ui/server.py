"""`evsys ui [--workspace DIR] [--port N]`: the HTTP server, its routes, and each page's data.

Routes (GET and HEAD only; every other method is refused with 405):
  /                          the runs table; filters and sort are in the query string
  /run?id=RUN_ID[&eval=N]    one run; `eval` picks which evaluation's predictions to list
  /compare?run=ID&run=ID...  two to eight runs or replicate groups (by id) side by side, the
                             first one as the base
  /api/status?id=ID...       JSON: status and step of these runs (the pages poll it)
  /api/log?id=ID             JSON: the last lines of a run's train.log
  /static/NAME               the CSS and JS shipped in evsys_core/ui/static/

Every page is gathered in one read of the index (`Index._read`: one read-only DuckDB
connection with external access disabled) through the history's own report functions;
every value a request carries reaches SQL only as a bound parameter, and a key (a metric or
a param) is matched against the keys the index holds before it names anything. Files read
beside the index (summary.md, train.log) are confined to the workspace, symlinks included.
The server answers only requests whose Host header names the address it is bound to, so a
web page elsewhere cannot reach it through DNS rebinding.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import parse_qs, urlsplit

from evsys_core import rundir, stats
from evsys_core.errors import EvsysError, UsageError
from evsys_core.history import reports
from evsys_core.history.ingest import flatten
from evsys_core.history.index import LONG_LIVED_RECHECK_S, Index, open_index
from evsys_core.ui import groups, pages

STATIC_DIR = Path(__file__).with_name("static")
STATIC = {"ui.css": "text/css; charset=utf-8", "ui.js": "text/javascript; charset=utf-8"}
PAGE_SIZE = 100          # runs per page of the runs table
MAX_POINTS = 300         # points per curve (the history's own downsampling)
MAX_PREDICTIONS = 1000   # prediction rows listed for one evaluation
MAX_COMPARE = 8
MAX_QUERY_CHARS = 8192
MAX_FILTER_CHARS = 500
MAX_TEXT_BYTES = 256 * 1024  # summary.md shown up to this size
LOG_LINES = 60
SHOWN_METRICS = 6        # eval metric columns of the runs table (plus those sorted/filtered on)
SHOWN_PARAMS = 4         # params that differ between runs, as columns
SHOWN_AS_COLUMNS = ("algorithm.kind", "model.name", "backend.kind")  # the table has these
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

# --------------------------------------------------------------------------------------------
# The seams: what the page shows of uncertainty, verdicts and logs comes from exactly one call
# each, so that each is swapped for its owner's function in one place (replicate groups are
# read in groups.py).


def interval(value: Any, stderr: Any) -> tuple[float, float] | None:
    """The 95% confidence interval of an eval metric from its `K_stderr` (`stats.ci95`)."""
    if not (_num(value) and _num(stderr)):
        return None
    return stats.ci95(value, stderr)


def compare_pair(con: Any, workspace: Path, base: str, cand: str) -> dict[str, Any]:
    """The history's comparison of two sides, each a run or a replicate group
    (`reports.compare`): {runs: [base, cand], config:
    [{key, values}], config_keys_same, verdicts: {metric key: the paired entry: delta,
    ci_low, ci_high, p_value, n_tasks, verdict (None without per-task predictions), note}}."""
    cmp = reports.compare(con, workspace, base, cand)
    return {"runs": cmp["runs"], "config": cmp["config"],
            "config_keys_same": cmp["config_keys_same"],
            "verdicts": {m["key"]: m for m in cmp["metrics"]}}


def log_tail(path: Path, lines: int) -> tuple[list[str], bool]:
    """The last `lines` lines of a log, read backwards within a byte bound (the reader the
    job engine's and the MCP server's log tools use)."""
    from evsys_core.jobs.pages import tail_lines

    return tail_lines(path, lines)


# --------------------------------------------------------------------------------------------

RUN_TEXT = ("name", "status", "algorithm", "model", "backend", "path", "conclusion",
            "data_path", "git_commit", "run_id")
RUN_NUM = ("steps", "max_steps", "duration_s", "learning_rate", "batch_size", "lora_rank",
           "epochs", "seed", "n_conclusions")
RUN_TIME = ("started_at", "created_at", "ended_at")
# a param's number; YAML reads `1e-05` (no dot) as text, which still compares as a number here
PARAM_NUM = "coalesce(value, TRY_CAST(value_text AS DOUBLE))"
OPS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "~": "~"}
_FILTER = re.compile(r"^\s*(.+?)\s*(<=|>=|!=|=|<|>|~)\s*(.*?)\s*$", re.S)


class BadRequest(EvsysError):
    """A query-string value the page cannot use (shown on the page, status 400)."""


@dataclass
class RunsQuery:
    status: str = ""
    algorithm: str = ""
    model: str = ""
    name: str = ""
    filters: list[str] = field(default_factory=list)
    sort: str = ""
    desc: bool = True
    page: int = 1

    @classmethod
    def parse(cls, qs: dict[str, list[str]]) -> "RunsQuery":
        one = lambda k: (qs.get(k) or [""])[-1]  # noqa: E731
        filters = [part.strip() for text in qs.get("f", []) for part in text.split(";")
                   if part.strip()]
        try:
            page = max(1, int(one("page") or 1))
        except ValueError:
            raise BadRequest(f"page must be a whole number, got {one('page')[:40]!r}") from None
        return cls(status=one("status"), algorithm=one("algorithm"), model=one("model"),
                   name=one("q"), filters=filters, sort=one("sort"),
                   desc=one("dir") != "asc", page=page)

    def params(self, **change: Any) -> dict[str, Any]:
        """The query string of this view, with `change` applied (for links)."""
        p = {"status": self.status, "algorithm": self.algorithm, "model": self.model,
             "q": self.name, "f": "; ".join(self.filters), "sort": self.sort,
             "dir": "desc" if self.desc else "asc", "page": self.page}
        p.update(change)
        return {k: v for k, v in p.items() if v not in ("", None) and not (k == "page" and v == 1)}


class Source:
    """Each page's data, read from the workspace's index."""

    def __init__(self, workspace: Path | str, refresh_s: float = 1.0):
        # a long-lived reader, as evsys-mcp: held read-only connection, settled refreshes
        self.index: Index = open_index(workspace, recheck_finished_s=LONG_LIVED_RECHECK_S, hold=True)
        self.workspace = self.index.workspace
        self.refresh_s = refresh_s
        self._refreshed = time.monotonic()
        self._lock = threading.Lock()
        self._meta_cache: tuple[tuple, dict[str, Any]] | None = None

    def fresh(self) -> None:
        """Bring the index up to date, at most once per `refresh_s` seconds."""
        with self._lock:
            if time.monotonic() - self._refreshed >= self.refresh_s:
                self.index.refresh()
                self._refreshed = time.monotonic()

    def _read(self, fn: Any) -> Any:
        self.fresh()
        return self.index._read(fn)

    # ---------------------------------------------------------------------- the runs table
    def runs(self, q: RunsQuery) -> dict[str, Any]:
        """One page of rows, each a run or a replicate group (its runs folded into one row).

        Conditions on runs columns and params pick runs (a group is in when any of its runs
        is); a condition on a metric, and a sort by one, use what the row shows: a run's final
        value, a group's mean over its completed runs (the `group_metrics` view)."""
        def read(con: Any) -> dict[str, Any]:
            meta = self._meta(con)
            known = meta["keys"]
            problems: list[str] = []
            conds, args, iconds, iargs = [], [], [], []
            for col, value in (("status", q.status), ("algorithm", q.algorithm),
                               ("model", q.model)):
                if value:
                    conds.append(f"r.{col} = ?")
                    args.append(value)
            if q.name:
                conds.append("contains(lower(coalesce(r.group_name, '') || ' ' || r.name), "
                             "lower(?))")
                args.append(q.name)
            used: list[str] = []
            for text in q.filters:
                try:
                    sql, a, key = known.condition(text)
                except BadRequest as e:
                    problems.append(str(e))
                    continue
                on_item = known.kind(key) == "metric"
                (iconds if on_item else conds).append(sql)
                (iargs if on_item else args).extend(a)
                used.append(key)
            join, jargs, order, agg = "", [], "i.sort_time DESC NULLS LAST", ""
            if q.sort:
                kind = known.kind(q.sort)
                way, pick = ("DESC", "max") if q.desc else ("ASC", "min")
                if kind is None:
                    problems.append(f"sort: {known.unknown(q.sort)}")
                elif q.sort == "name":
                    order = f"i.name {way} NULLS LAST, {order}"
                elif kind == "run":
                    agg = f", {pick}(r.{reports.sql_ident(q.sort)}) AS _s"
                    order = f"i._s {way} NULLS LAST, {order}"
                else:
                    if kind == "metric":
                        sub = ("SELECT run_id AS item, false AS is_group, final_value AS _n, "
                               "final_text AS _t FROM metric_summary WHERE key = ? UNION ALL "
                               "SELECT group_id, true, mean, NULL FROM group_metrics WHERE key = ?")
                        jargs = [q.sort, q.sort]
                    else:
                        sub = (f"SELECT coalesce(r.group_id, r.run_id) AS item, r.group_id IS NOT "
                               f"NULL AS is_group, {pick}({PARAM_NUM}) AS _n, {pick}(value_text) "
                               "AS _t FROM params JOIN runs r USING (run_id) WHERE key = ? "
                               "GROUP BY ALL")
                        jargs = [q.sort]
                    join = (f" LEFT JOIN ({sub}) s ON s.item = i.item "
                            "AND s.is_group = (i.group_id IS NOT NULL)")
                    order = f"s._n {way} NULLS LAST, s._t {way} NULLS LAST, {order}"
                    used.append(q.sort)
            where = (" WHERE " + " AND ".join(conds)) if conds else ""
            iwhere = (" WHERE " + " AND ".join(iconds)) if iconds else ""
            items = ("WITH r AS (SELECT *, coalesce(group_id, run_id) AS item, "
                     "coalesce(started_at, created_at, last_modified) AS sort_time FROM runs), "
                     "i AS (SELECT item, any_value(group_id) AS group_id, coalesce("
                     "any_value(group_name), any_value(name)) AS name, count(*) AS n_runs, "
                     f"max(sort_time) AS sort_time{agg} FROM r{where} GROUP BY item) ")
            rows = con.execute(
                f"{items}SELECT i.item, i.group_id, count(*) OVER (), sum(i.n_runs) OVER () "
                f"FROM i{join}{iwhere} ORDER BY {order}, i.name, i.item LIMIT ? OFFSET ?",
                [*args, *jargs, *iargs, PAGE_SIZE, (q.page - 1) * PAGE_SIZE]).fetchall()
            total, n_runs = (rows[0][2], rows[0][3]) if rows else con.execute(
                f"{items}SELECT count(*), sum(i.n_runs) FROM i{join}{iwhere}",
                [*args, *jargs, *iargs]).fetchone()
            metric_cols = _unique(meta["eval_keys"] + [k for k in used if known.kind(k) == "metric"])
            param_cols = _unique(meta["param_cols"] + [k for k in used if known.kind(k) == "param"])
            group_ids = [r[1] for r in rows if r[1] is not None]
            members = groups.members(con, group_ids)
            stats_of = groups.statistics(con, group_ids, metric_cols)
            ids = [r[0] for r in rows if r[1] is None] + [m for g in group_ids for m in members[g]]
            runs = _run_rows(con, ids, metric_cols, param_cols)
            shown = [runs[item] if gid is None else groups.row(
                stats_of[gid], [runs[m] for m in members[gid]], metric_cols, param_cols)
                for item, gid, *_ in rows]
            return {"rows": shown, "total": total or 0, "n_runs": n_runs or 0, "page": q.page,
                    "page_size": PAGE_SIZE, "metric_cols": metric_cols, "param_cols": param_cols,
                    "problems": problems, "options": meta["options"], "keys": meta["all_keys"]}

        return self._read(read)

    def _meta(self, con: Any) -> dict[str, Any]:
        """What the runs table needs of the whole index (its keys, the columns it shows, the
        filter choices), kept until the index file changes."""
        stamp = tuple(_file_id(Path(str(self.index.db_path) + x)) for x in ("", ".wal"))
        if self._meta_cache is not None and self._meta_cache[0] == stamp:
            return self._meta_cache[1]
        mkeys = reports.metric_keys(con)
        known = Keys({k for k, _, _ in mkeys}, {k for (k,) in con.execute(
            "SELECT DISTINCT key FROM params").fetchall()})
        options = con.execute(
            "SELECT list(DISTINCT status ORDER BY status) FILTER (WHERE status IS NOT NULL), "
            "list(DISTINCT algorithm ORDER BY algorithm) FILTER (WHERE algorithm IS NOT NULL), "
            "list(DISTINCT model ORDER BY model) FILTER (WHERE model IS NOT NULL) FROM runs"
        ).fetchone()
        meta = {
            "keys": known, "all_keys": sorted(known.metrics | known.params),
            "eval_keys": [k for k, split, _ in mkeys
                          if split != "train" and not stats.is_companion(k)][:SHOWN_METRICS],
            "param_cols": [k for (k,) in con.execute(  # params that differ between runs
                "SELECT key FROM params WHERE key NOT IN (SELECT unnest(?::VARCHAR[])) "
                "GROUP BY key HAVING count(DISTINCT coalesce(value_text, CAST(value AS VARCHAR)))"
                " > 1 ORDER BY bool_or(value_text IS NOT NULL), count(*) DESC, key LIMIT ?",
                [list(SHOWN_AS_COLUMNS), SHOWN_PARAMS]).fetchall()],
            "options": {"status": options[0] or [], "algorithm": options[1] or [],
                        "model": options[2] or []},
        }
        self._meta_cache = (stamp, meta)
        return meta

    # ------------------------------------------------------------------------------ a run
    def run(self, run_id: str, eval_index: int | None = None) -> dict[str, Any] | None:
        def read(con: Any) -> dict[str, Any] | None:
            if not _exists(con, run_id):
                return None
            shown = reports.show(con, self.workspace, run_id)
            curves = _curves(con, [run_id])[run_id]
            evals = [{"benchmark": b, "step": s, "n": n, "passed": p} for b, s, n, p in con.execute(
                "SELECT benchmark, step, count(*), count(*) FILTER (WHERE passed) FROM predictions "
                "WHERE run_id = ? GROUP BY ALL ORDER BY benchmark, step NULLS FIRST",
                [run_id]).fetchall()]
            pick = None
            if evals:
                if eval_index is None:
                    last = {e["benchmark"]: i for i, e in enumerate(evals)}
                    pick = last[evals[0]["benchmark"]]
                elif 0 <= eval_index < len(evals):
                    pick = eval_index
                else:
                    raise BadRequest(f"eval must be 0 to {len(evals) - 1}, got {eval_index}")
            preds: list[dict[str, Any]] = []
            if pick is not None:
                e = evals[pick]
                preds = _dicts(con.execute(
                    "SELECT task_id, sample, instruction, answer, score, passed, reason "
                    "FROM predictions WHERE run_id = ? AND benchmark = ? AND step IS NOT DISTINCT "
                    "FROM ? ORDER BY task_id, sample LIMIT ?",
                    [run_id, e["benchmark"], e["step"], MAX_PREDICTIONS + 1]))
            finals = {m["key"]: m["final"] for m in shown["metrics"]}
            for m in shown["metrics"]:
                m["ci"] = interval(m["final"], finals.get(m["key"] + "_stderr"))
                m["n_tasks"] = finals.get(stats.n_tasks_key(m["key"]))
            return {**shown, "curves": curves, "evals": evals, "eval": pick,
                    "preds": preds[:MAX_PREDICTIONS], "preds_cut": len(preds) > MAX_PREDICTIONS}

        data = self._read(read)
        if data is None:
            return None
        run_dir = self.workspace / (data["run"]["path"] or ".")
        data["flat_config"] = flatten(data["config"] or {})
        data["summary"] = self._text(run_dir / rundir.SUMMARY)
        data["log"] = self.log(run_id, data["run"]["status"], data["run"]["path"])
        return data

    # -------------------------------------------------------------------------- compare
    def compare(self, ids: Sequence[str]) -> dict[str, Any]:
        """Two to MAX_COMPARE sides, each a run or a replicate group (by id), against the
        first. Verdicts and the config diff come from the history's compare of each pair; a
        group's values are its mean over its completed runs (metrics from `group_metrics`;
        curves and per-task pass rates averaged over those runs)."""
        ids = list(dict.fromkeys(i for i in ids if i))
        if not 2 <= len(ids) <= MAX_COMPARE:
            raise BadRequest(f"compare takes 2 to {MAX_COMPARE} different runs or groups "
                             f"(run=ID&run=ID), got {len(ids)}; tick them in the runs table")

        def read(con: Any) -> dict[str, Any]:
            _check_ids(con, ids)
            pairs = [{"base": ids[0], "cand": c, **compare_pair(con, self.workspace, ids[0], c)}
                     for c in ids[1:]]
            sides = [pairs[0]["runs"][0]] + [p["runs"][1] for p in pairs]
            config: dict[str, list] = {}  # a key differs between some sides iff from the base
            for i, p in enumerate(pairs):
                for c in p["config"]:
                    config.setdefault(c["key"], [c["values"][0]] + [None] * len(pairs))
                    config[c["key"]][i + 1] = c["values"][1]
            for key, values in config.items():  # a candidate equal to the base on this key
                for i, p in enumerate(pairs):
                    if key not in {c["key"] for c in p["config"]}:
                        values[i + 1] = values[0]
            members = [m for s in sides for m in s["run_ids"]]
            names = dict(con.execute("SELECT run_id, name FROM runs WHERE run_id IN "
                                     "(SELECT unnest(?::VARCHAR[]))", [members]).fetchall())
            for s in sides:
                s["members"] = [{"run_id": m, "name": names.get(m)} for m in s["run_ids"]]
            finals = _finals(con, members)
            gm = groups.statistics(con, [s["run_id"] for s in sides if s["kind"] == "group"],
                                  [k for f in finals.values() for k in f])
            keys = sorted({k for f in finals.values() for k in f if not stats.is_companion(k)},
                          key=lambda k: (finals_split(finals, k) == "train", k))
            metrics = [{"key": k, "split": finals_split(finals, k), "values": [
                _with_ci({x: v for x, (_, v) in finals[s["run_id"]].items()}, k)
                if s["kind"] == "run" else gm[s["run_id"]]["metrics"].get(
                    k, {"value": None, "ci": None, "n": None}) for s in sides]} for k in keys]
            by_run = _curves(con, members)
            rates = _task_rates(con, members)
            side_rates = [groups.pooled_rates([rates[m] for m in s["run_ids"]]) for s in sides]
            for i, p in enumerate(pairs):
                p["tasks"] = _task_diff(side_rates[0], side_rates[i + 1])
            return {"runs": sides, "metrics": metrics, "pairs": pairs,
                    "config": [{"key": k, "values": v} for k, v in sorted(config.items())],
                    "config_keys_same": pairs[0]["config_keys_same"] if len(pairs) == 1 else None,
                    "curves": [groups.mean_curves([by_run[m] for m in s["run_ids"]])
                               for s in sides]}

        return self._read(read)

    # ----------------------------------------------------------------- live status, logs
    def status(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        ids = list(ids)[:PAGE_SIZE * 5]
        return self._read(lambda con: _dicts(con.execute(
            "SELECT r.run_id, r.status, coalesce(r.steps, (SELECT max(final_step) FROM "
            "metric_summary m WHERE m.run_id = r.run_id AND m.split = 'train')) AS steps, "
            "r.max_steps FROM runs r WHERE r.run_id IN (SELECT unnest(?::VARCHAR[]))", [ids])))

    def log(self, run_id: str, status: str | None = None, path: str | None = None
            ) -> dict[str, Any] | None:
        if path is None:
            row = self._read(lambda con: con.execute(
                "SELECT status, path FROM runs WHERE run_id = ?", [run_id]).fetchone())
            if row is None:
                return None
            status, path = row
        log = self._confined(self.workspace / (path or ".") / rundir.TRAIN_LOG)
        if log is None:
            return {"status": status, "lines": [], "cut": False, "exists": False}
        lines, cut = log_tail(log, LOG_LINES)
        return {"status": status, "lines": lines, "cut": cut, "exists": True}

    # -------------------------------------------------------------------------- files
    def _confined(self, p: Path) -> Path | None:
        """`p` if it is a regular file inside the workspace once symlinks are followed."""
        try:
            real = p.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        return real if real.is_relative_to(self.workspace) and real.is_file() else None

    def _text(self, p: Path) -> str | None:
        real = self._confined(p)
        if real is None:
            return None
        try:
            with real.open("rb") as f:
                data = f.read(MAX_TEXT_BYTES + 1)
        except OSError:
            return None
        text = data[:MAX_TEXT_BYTES].decode("utf-8", errors="replace")
        return text + ("\n… [cut]" if len(data) > MAX_TEXT_BYTES else "")


@dataclass
class Keys:
    """The metric and param keys the index holds: a key in a request must be one of these (or
    a runs column) before it is used, and then only as a bound parameter."""
    metrics: set[str]
    params: set[str]

    def kind(self, key: str) -> str | None:
        if key in RUN_TEXT or key in RUN_NUM or key in RUN_TIME:
            return "run"
        if key in self.metrics:
            return "metric"
        if key in self.params:
            return "param"
        return None

    def unknown(self, key: str) -> str:
        import difflib

        close = difflib.get_close_matches(
            key, [*RUN_TEXT, *RUN_NUM, *RUN_TIME, *self.metrics, *self.params], n=4, cutoff=0.5)
        return (f"no column, metric or param {key[:200]!r}"
                + (f"; did you mean {', '.join(close)}?" if close else ""))

    def condition(self, text: str) -> tuple[str, list[Any], str]:
        """(SQL with ? placeholders, its arguments, the key) for one `KEY OP VALUE` filter."""
        if len(text) > MAX_FILTER_CHARS:
            raise BadRequest(f"a filter is at most {MAX_FILTER_CHARS} characters; this one has "
                             f"{len(text)}")
        m = _FILTER.match(text)
        if not m:
            raise BadRequest(f"filter {text[:200]!r}: write KEY OP VALUE with OP one of "
                             "= != < <= > >= ~ (contains), e.g. val/val/pass@1 >= 0.5")
        key, op, raw = m.groups()
        kind = self.kind(key)
        if kind is None:
            raise BadRequest(f"filter {text[:200]!r}: {self.unknown(key)}")
        num = _float(raw) if op != "~" else None
        if kind == "run":
            col = f"r.{reports.sql_ident(key)}"
            if key in RUN_TIME:
                raise BadRequest(f"filter {text[:200]!r}: times are sortable, not filterable")
            if key in RUN_NUM:
                if num is None:
                    raise BadRequest(f"filter {text[:200]!r}: {key} is a number; compare it with "
                                     "a number, e.g. steps >= 10")
                return f"{col} {OPS[op]} ?", [num], key
            if op == "~":
                return f"contains(lower(coalesce({col}, '')), lower(?))", [raw], key
            return f"{col} {OPS[op]} ?", [raw], key
        if kind == "param":  # on runs (r): a group is in when one of its runs is
            sub = "r.run_id IN (SELECT run_id FROM params WHERE key = ? AND "
            if num is not None:
                return sub + f"{PARAM_NUM} {OPS[op]} ?)", [key, num], key
            if op == "~":
                return sub + "contains(lower(value_text), lower(?)))", [key, raw], key
            return sub + f"value_text {OPS[op]} ?)", [key, raw], key
        # a metric, on rows (i): a run's final value, a group's mean (a number, never text)
        run = ("i.group_id IS NULL AND i.item IN (SELECT run_id FROM metric_summary "
               "WHERE key = ? AND ")
        if num is not None:
            return (f"(({run}final_value {OPS[op]} ?)) OR (i.group_id IS NOT NULL AND i.item IN "
                    f"(SELECT group_id FROM group_metrics WHERE key = ? AND mean {OPS[op]} ?)))",
                    [key, num, key, num], key)
        if op == "~":
            return f"({run}contains(lower(final_text), lower(?))))", [key, raw], key
        return f"({run}final_text {OPS[op]} ?))", [key, raw], key


def _run_rows(con: Any, ids: list[str], metric_cols: list[str], param_cols: list[str]
              ) -> dict[str, dict[str, Any]]:
    """run id -> what its row of the runs table shows."""
    cells = _cells(con, ids, metric_cols, param_cols)
    out = {}
    for r in con.execute(
        "SELECT run_id, name, status, algorithm, model, steps, max_steps, started_at, "
        "duration_s, conclusion, seed FROM runs WHERE run_id IN (SELECT unnest(?::VARCHAR[]))",
        [ids]).fetchall():
        m, p = cells.get(r[0], ({}, {}))
        out[r[0]] = {
            "kind": "run", "run_id": r[0], "name": r[1], "status": r[2], "algorithm": r[3],
            "model": r[4], "steps": r[5], "max_steps": r[6], "started_at": reports.iso(r[7]),
            "duration_s": r[8], "conclusion": r[9], "seed": r[10],
            "metrics": {k: _with_ci(m, k) for k in metric_cols},
            "params": {k: p.get(k) for k in param_cols},
        }
    return out


def _cells(con: Any, ids: list[str], metric_cols: list[str], param_cols: list[str]
           ) -> dict[str, tuple[dict, dict]]:
    out: dict[str, tuple[dict, dict]] = {i: ({}, {}) for i in ids}
    if not ids:
        return out
    keys = _unique([x for k in metric_cols for x in (k, k + "_stderr", stats.n_tasks_key(k))])
    for run_id, key, value, text in con.execute(
        "SELECT run_id, key, final_value, final_text FROM metric_summary WHERE run_id IN "
        "(SELECT unnest(?::VARCHAR[])) AND key IN (SELECT unnest(?::VARCHAR[]))", [ids, keys]
    ).fetchall():
        out[run_id][0][key] = reports.metric_value(value, text)
    if param_cols:
        for run_id, key, value, text in con.execute(
            "SELECT run_id, key, value, value_text FROM params WHERE run_id IN "
            "(SELECT unnest(?::VARCHAR[])) AND key IN (SELECT unnest(?::VARCHAR[]))",
            [ids, param_cols]
        ).fetchall():
            out[run_id][1][key] = reports.metric_value(value, text)
    return out


def _curves(con: Any, ids: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Every metric's curve of each run in one scan of `metrics`, as `reports.curves` draws
    them (a step logged twice keeps its last value; at most MAX_POINTS points, by
    `reports.downsample`), with the `_stderr` keys folded into bands."""
    raw: dict[str, dict[str, list]] = {i: {} for i in ids}
    for run_id, key, step, value in con.execute(
        "SELECT run_id, key, step, value FROM metrics WHERE run_id IN (SELECT unnest(?::VARCHAR[])) "
        "AND value IS NOT NULL ORDER BY run_id, key, step NULLS FIRST, line", [ids]).fetchall():
        series = raw[run_id].setdefault(key, [])
        if series and series[-1][0] == step:
            series[-1][1] = value
        else:
            series.append([step, value])
    return {i: _with_bands({k: reports.downsample(v, MAX_POINTS) for k, v in c.items()})
            for i, c in raw.items()}


def _with_bands(curves: dict[str, list]) -> dict[str, dict[str, Any]]:
    """{key: {points, band}} for every metric but the `_stderr` ones, which become the band
    ([step, lo, hi] at each step where both were logged) of their metric."""
    out = {}
    for key, points in curves.items():
        if key.endswith("_stderr"):
            continue
        se = dict((s, v) for s, v in curves.get(key + "_stderr") or [])
        band = [[s, *ci] for s, v in points if s in se and (ci := interval(v, se[s])) is not None]
        out[key] = {"points": points, "band": band or None}
    return out


def _finals(con: Any, ids: list[str]) -> dict[str, dict[str, tuple[str, Any]]]:
    """run -> metric key -> (split, final value)."""
    out: dict[str, dict[str, tuple[str, Any]]] = {i: {} for i in ids}
    for run_id, key, split, value, text in con.execute(
        "SELECT run_id, key, split, final_value, final_text FROM metric_summary "
        "WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [ids]).fetchall():
        out[run_id][key] = (split, reports.metric_value(value, text))
    return out


def finals_split(finals: dict[str, dict[str, tuple[str, Any]]], key: str) -> str:
    return next(f[key][0] for f in finals.values() if key in f)


def _with_ci(m: dict[str, Any], key: str) -> dict[str, Any]:
    v = m.get(key)
    return {"value": v, "ci": interval(v, m.get(key + "_stderr")), "n": m.get(stats.n_tasks_key(key))}


def _task_rates(con: Any, ids: list[str]) -> dict[str, dict[str, dict[str, tuple]]]:
    """run -> benchmark -> task_id -> (pass rate over its samples, first answer, instruction),
    at each run's last evaluation of each benchmark, in one query for all the runs."""
    out: dict[str, dict[str, dict[str, tuple]]] = {i: {} for i in ids}
    for run_id, bench, task, rate, answer, instruction in con.execute("""
        WITH last AS (SELECT run_id, benchmark, max(step) AS step FROM predictions
                      WHERE run_id IN (SELECT unnest(?::VARCHAR[])) GROUP BY ALL)
        SELECT p.run_id, p.benchmark, p.task_id, coalesce(avg(p.passed::INT), avg(p.score)),
               arg_min(p.answer, p.sample), any_value(p.instruction)
        FROM predictions p JOIN last ON p.run_id = last.run_id AND p.benchmark = last.benchmark
             AND p.step IS NOT DISTINCT FROM last.step
        GROUP BY ALL ORDER BY p.benchmark, p.task_id""", [ids]).fetchall():
        out[run_id].setdefault(bench, {})[task] = (rate, answer, instruction)
    return out


def _check_ids(con: Any, ids: list[str]) -> None:
    """Each id must be exactly a run's or a replicate group's (no names, prefixes or paths)."""
    known = {i for (i,) in con.execute(
        "SELECT run_id FROM runs WHERE run_id IN (SELECT unnest(?::VARCHAR[])) UNION "
        "SELECT group_id FROM groups WHERE group_id IN (SELECT unnest(?::VARCHAR[]))",
        [ids, ids]).fetchall()}
    for i in ids:
        if i not in known:
            raise BadRequest(f"no run or replicate group with id {i[:80]!r} in this workspace")


def _task_diff(base: dict[str, dict[str, tuple]], cand: dict[str, dict[str, tuple]]
               ) -> list[dict[str, Any]]:
    """Per benchmark both runs evaluated: every task paired by task_id, and what the
    candidate did to it against the base (fixed: its pass rate rose; broken: it fell)."""
    benches = []
    for bench in sorted(set(base) & set(cand)):
        b, c = base[bench], cand[bench]
        counts = dict.fromkeys(("fixed", "broken", "unchanged", "unpaired"), 0)
        tasks = []
        for task in sorted(set(b) | set(c)):
            (rb, ab, ib), (rc, ac, ic) = b.get(task, (None,) * 3), c.get(task, (None,) * 3)
            if task not in b or task not in c:
                change = "unpaired"
            elif rb is None or rc is None:
                change = "unchanged" if rb == rc else "fixed" if rc is not None else "broken"
            else:
                change = "fixed" if rc > rb else "broken" if rc < rb else "unchanged"
            counts[change] += 1
            tasks.append({"task_id": task, "instruction": ib if ib is not None else ic,
                          "change": change, "base": rb, "cand": rc, "base_answer": ab,
                          "cand_answer": ac})
        benches.append({"benchmark": bench, "tasks": tasks, "counts": counts})
    return benches


def _file_id(p: Path) -> tuple[int, int, int] | None:
    try:
        st = p.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _exists(con: Any, run_id: str) -> bool:
    return con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchone() is not None


def _dicts(cur: Any) -> list[dict[str, Any]]:
    cols = [d[0] for d in cur.description]
    return [{c: reports.iso(v) for c, v in zip(cols, row)} for row in cur.fetchall()]


def _unique(xs: list[str]) -> list[str]:
    return list(dict.fromkeys(xs))


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _float(s: str) -> float | None:
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


# ------------------------------------------------------------------------------- HTTP


class Handler(BaseHTTPRequestHandler):
    server: "UIServer"
    server_version = "evsys-ui"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def _refuse_method(self) -> None:
        self._send(405, "text/plain; charset=utf-8", b"read-only: only GET and HEAD are served\n",
                   extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse_method

    def log_message(self, format: str, *args: Any) -> None:  # quiet: errors only
        pass

    def _answer(self, body: bool) -> None:
        self._body = body
        host = (self.headers.get("Host") or "").lower()
        if host and host not in self.server.hosts:
            return self._page(403, pages.error_page(403, f"this server answers only for "
                                                    f"{sorted(self.server.hosts)[0]}"))
        if len(self.path) > MAX_QUERY_CHARS:
            return self._page(414, pages.error_page(414, "the address is too long"))
        url = urlsplit(self.path)
        qs = parse_qs(url.query, keep_blank_values=True, max_num_fields=200)
        src = self.server.source
        try:
            if url.path == "/":
                q = RunsQuery.parse(qs)
                return self._page(200, pages.runs_page(src.runs(q), q))
            if url.path == "/run":
                run_id = _one(qs, "id")
                ev = _one(qs, "eval", "")
                data = src.run(run_id, int(ev) if ev.isdigit() else None)
                if data is None:
                    return self._page(404, pages.error_page(404, f"no run with id {run_id!r}"))
                return self._page(200, pages.run_page(data))
            if url.path == "/compare":
                return self._page(200, pages.compare_page(src.compare(qs.get("run", []))))
            if url.path == "/api/status":
                return self._json(200, {"runs": src.status(qs.get("id", []))})
            if url.path == "/api/log":
                log = src.log(_one(qs, "id"))
                return self._json(200 if log else 404, log or {"error": "no such run"})
            if url.path.startswith("/static/"):
                return self._static(url.path[len("/static/"):])
            return self._page(404, pages.error_page(404, f"no page {url.path!r}"))
        except (BadRequest, UsageError, EvsysError) as e:
            return self._page(400, pages.error_page(400, str(e)))
        except Exception as e:  # noqa: BLE001 — a page must not take the server down
            print(f"evsys ui: {self.path[:200]}: {type(e).__name__}: {e}", file=sys.stderr)
            return self._page(500, pages.error_page(500, "internal error; see the server's stderr"))

    def _static(self, name: str) -> None:
        if name not in STATIC:  # a fixed list: nothing else on disk can be named
            return self._page(404, pages.error_page(404, "no such file"))
        self._send(200, STATIC[name], (STATIC_DIR / name).read_bytes(),
                   extra={"Cache-Control": "max-age=300"})

    def _page(self, code: int, html: str) -> None:
        self._send(code, "text/html; charset=utf-8", html.encode())

    def _json(self, code: int, obj: Any) -> None:
        self._send(code, "application/json", json.dumps(reports.jsonable(obj)).encode())

    def _send(self, code: int, ctype: str, data: bytes, extra: dict | None = None) -> None:
        self.send_response(code)
        for k, v in {**HEADERS, "Content-Type": ctype, "Content-Length": str(len(data)),
                     **(extra or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if getattr(self, "_body", True):
            self.wfile.write(data)


def _one(qs: dict[str, list[str]], key: str, default: str | None = None) -> str:
    v = qs.get(key)
    if not v or not v[-1]:
        if default is not None:
            return default
        raise BadRequest(f"missing {key}= in the address")
    return v[-1]


class UIServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, source: Source, host: str = "127.0.0.1", port: int = 0):
        try:
            super().__init__((host, port), Handler)
        except OSError as e:
            raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}; pass --port N "
                             "with a free port (0 picks one)") from None
        self.source = source
        port = self.server_address[1]
        names = {host, "127.0.0.1", "localhost"} if host in ("127.0.0.1", "localhost") else {host}
        self.hosts = {f"{n}:{port}" for n in names} | {f"[{host}]:{port}"}

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


def make_server(workspace: Path | str, host: str = "127.0.0.1", port: int = 0,
                refresh_s: float = 1.0) -> UIServer:
    return UIServer(Source(workspace, refresh_s), host, port)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ui", help="a read-only web page over the run history",
        description="Serve the runs table, each run's curves and predictions, and side-by-side "
                    "comparisons as a local, read-only web page (no network assets).")
    p.add_argument("--workspace", default=".", metavar="DIR",
                   help="folder holding the run directories (default: .)")
    p.add_argument("--port", type=int, default=8765, metavar="N",
                   help="port to listen on (default 8765; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; the page has "
                        "no login, so reach it from elsewhere through an SSH tunnel instead)")
    p.set_defaults(func=cmd_ui)


def cmd_ui(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0 to 65535, got {args.port}")
    server = make_server(Path(args.workspace), args.host, args.port)
    print(f"evsys ui: serving {server.source.workspace} at {server.url} "
          "(read-only; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
