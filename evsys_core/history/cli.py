"""`evsys runs | show | best | compare | query | plot | conclude` — the run history commands.

Every command refreshes the index first (fast when nothing changed), takes `--workspace DIR`
(default: the current directory) and `--json`. Tables are drawn with rich in a terminal and
printed as plain aligned text when piped.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path
from typing import Any

from evsys_core.errors import UsageError
from evsys_core.history.schema import QUERY_TIMEOUT_S

MAX_METRIC_COLUMNS = 6  # eval metrics shown by `evsys runs` in a table (all of them in --json)


def register(subparsers: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", default=".", metavar="DIR",
                        help="folder holding the run directories (default: .)")
    common.add_argument("--json", action="store_true", help="print JSON")
    common.add_argument("--timeout", type=float, default=QUERY_TIMEOUT_S, metavar="S",
                        help=f"stop a query (SQL, --where, --sort) after S seconds "
                             f"(default {QUERY_TIMEOUT_S:g}; 0: no limit)")
    common.add_argument("--rescan", action="store_true",
                        help="stat every run file, not only those of changed folders and "
                             "running runs (catches in-place edits of finished runs)")

    p = subparsers.add_parser("runs", parents=[common], help="list the runs in the workspace",
                              description="One line per run: name, status, algorithm, model, "
                              "steps, the latest value of each eval metric, age.")
    p.add_argument("--where", metavar="EXPR",
                   help="SQL condition over runs columns and metric keys, e.g. "
                        "\"status = 'completed' and \\\"val/val/pass@1\\\" > 0.5\"")
    p.add_argument("--sort", metavar="KEY[:asc]",
                   help="a metric key or runs column; highest first unless :asc")
    p.add_argument("--limit", type=int, metavar="N", help="show at most N runs")
    p.add_argument("--kind", choices=("train", "score", "all"), default="train",
                   help="training runs (default), score runs, or all")
    p.add_argument("--groups", action="store_true",
                   help="list replicate groups (evsys run --seeds) instead: runs, seeds, and the "
                        "mean and 95%% interval of each eval metric across them")
    p.set_defaults(func=cmd_runs)

    p = subparsers.add_parser("show", parents=[common], help="one run (or replicate group) in full",
                              description="Config, status, final and best metrics, "
                              "predictions, conclusions and file paths of one run; for a "
                              "group, its runs and each metric's mean and 95%% interval.")
    p.add_argument("run", metavar="RUN", help="run id, name (or unique prefix), or directory; "
                   "or a group id or name")
    p.set_defaults(func=cmd_show)

    p = subparsers.add_parser("best", parents=[common], help="the best runs by a metric")
    p.add_argument("metric", metavar="METRIC", help="a metric key, e.g. val/val/pass@1")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--max", dest="maximize", action="store_true", default=True,
                   help="higher is better (default)")
    g.add_argument("--min", dest="maximize", action="store_false", help="lower is better")
    p.add_argument("--by", choices=("final", "best"), default="final",
                   help="rank by the final value (default) or the best value seen")
    p.add_argument("--where", metavar="EXPR", help="SQL condition, as for `evsys runs`")
    p.add_argument("--limit", type=int, default=5, metavar="N", help="how many (default 5)")
    p.add_argument("--kind", choices=("train", "score", "all"), default="train",
                   help="rank training runs (default), score runs, or all")
    p.add_argument("--groups", action="store_true",
                   help="rank replicate groups by the metric's mean over their completed runs")
    p.set_defaults(func=cmd_best)

    p = subparsers.add_parser(
        "compare", parents=[common], help="is CAND better than BASE? paired, with a verdict",
        description="Config differences of two runs (or replicate groups) and, per shared "
        "metric, both values and the delta CAND - BASE. Eval metrics are paired task by task "
        "(predictions/<bench>.jsonl) at each run's final evaluation or --step: 95% CI of the "
        "delta, p-value of an exact McNemar / sign-flip test, and a verdict (better, worse, "
        "inconclusive at alpha 0.05). A group pools its completed replicates: a task's score is "
        "the mean over them.")
    p.add_argument("base", metavar="BASE", help="the reference run, or a replicate group (id or name)")
    p.add_argument("cand", metavar="CAND", help="the run or group compared with it")
    p.add_argument("--metric", metavar="KEY", help="only this metric, e.g. val/val/pass@1")
    p.add_argument("--step", type=int, metavar="S",
                   help="compare at evaluation step S in both runs (default: each run's final)")
    p.set_defaults(func=cmd_compare)

    p = subparsers.add_parser(
        "query", parents=[common], help="read-only SQL over the run index",
        description="Run one read-only SQL statement over the tables runs, params, metrics, "
        "metric_summary, predictions, conclusions and the views latest_metrics, best_metrics "
        "(see docs/history.md). Writes and file access are refused by the database.")
    p.add_argument("sql", metavar="SQL")
    p.add_argument("--csv", action="store_true", help="print CSV")
    p.add_argument("--max-rows", type=int, default=1000, metavar="N",
                   help="print at most N rows (default 1000; 0: all)")
    p.set_defaults(func=cmd_query)

    p = subparsers.add_parser("plot", parents=[common], help="learning curves as a PNG")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--metric", action="append", required=True, metavar="KEY",
                   help="metric key to plot (repeat for several)")
    p.add_argument("-o", "--output", metavar="FILE.png",
                   help="where to write the image (default: plot_<metric>.png here)")
    p.add_argument("--max-points", type=int, default=2000, metavar="N",
                   help="downsample each curve to N points (default 2000)")
    p.set_defaults(func=cmd_plot)

    p = subparsers.add_parser("conclude", parents=[common],
                              help="record a conclusion about a run (appends to conclusion.md)")
    p.add_argument("run", metavar="RUN")
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--author", default="human", help="who concludes (default: human)")
    p.set_defaults(func=cmd_conclude)


def _index(args: argparse.Namespace):
    from evsys_core.history.index import Index

    if args.timeout < 0:
        raise UsageError(f"--timeout must be 0 (no limit) or more seconds, got {args.timeout:g}")
    idx = Index(Path(args.workspace), query_timeout_s=args.timeout or None)
    idx.refresh(full=bool(getattr(args, "rescan", False)))
    return idx


# ---------------------------------------------------------------------- commands


def _kind(args: argparse.Namespace) -> str | None:
    return None if args.kind == "all" else args.kind


def cmd_runs(args: argparse.Namespace) -> int:
    from evsys_core.history import tables
    from evsys_core.stats import is_companion

    if args.groups:
        if args.where or args.sort:
            raise UsageError("--where and --sort apply to runs, not to --groups; "
                             "query the groups and group_metrics views with `evsys query`")
        return _print_groups(_index(args).groups(limit=args.limit), args)
    rows = _index(args).runs(where=args.where, sort=args.sort, limit=args.limit, kind=_kind(args))
    if args.json:
        tables.print_json(rows)
        return 0
    if not rows:
        print(f"no runs under {Path(args.workspace).resolve()} (a run directory holds "
              "run.json or metrics.jsonl)")
        return 0
    counts: dict[str, int] = {}
    for r in rows:
        for k in r["metrics"]:
            if not is_companion(k):  # K_stderr and n_tasks stay in --json
                counts[k] = counts.get(k, 0) + 1
    keys = sorted(counts, key=lambda k: (-counts[k], k))[:MAX_METRIC_COLUMNS]
    keys.sort()
    cols = ["name", "status", "algorithm", "model", "steps", *keys, "age"]
    body = []
    for r in rows:
        steps = r["steps"]
        if steps is not None and r["max_steps"]:
            steps = f"{steps}/{r['max_steps']}"
        body.append([r["name"], r["status"], r["algorithm"], r["model"], steps,
                     *(r["metrics"].get(k) for k in keys), tables.age(r["age_s"])])
    tables.print_table(cols, body)
    hidden = len(counts) - len(keys)
    if hidden > 0:
        print(f"({hidden} more metrics not shown; --json lists them all)", file=sys.stderr)
    return 0


def _interval(m: dict[str, Any]) -> str:
    """'0.727 [0.650, 0.804] (3 runs)': the mean and its 95% t-interval across replicates."""
    from evsys_core.history import tables

    n = m["n_runs"]
    if m.get("ci95_low") is None:
        return f"{tables.fmt(m['mean'])} ({n} run{'s' if n != 1 else ''})"
    return f"{tables.fmt(m['mean'])} [{tables.fmt(m['ci95_low'])}, {tables.fmt(m['ci95_high'])}] ({n} runs)"


def _print_groups(rows: list[dict[str, Any]], args: argparse.Namespace) -> int:
    from evsys_core.history import tables

    if args.json:
        tables.print_json(rows)
        return 0
    if not rows:
        print("no replicate groups (evsys run CONFIG --seeds 0,1,2 runs one)")
        return 0
    keys = sorted({k for g in rows for k in g["metrics"]})[:MAX_METRIC_COLUMNS]
    tables.print_table(
        ["group", "id", "runs", "completed", "seeds", *(f"{k} (95% CI)" for k in keys)],
        [[g["group_name"], g["group_id"], g["n_runs"], g["n_completed"],
          ",".join(str(s) for s in g["seeds"] if s is not None),
          *(_interval(g["metrics"][k]) if k in g["metrics"] else None for k in keys)] for g in rows])
    return 0


def _show_group(info: dict[str, Any], args: argparse.Namespace) -> int:
    from evsys_core.history import tables

    if args.json:
        tables.print_json(info)
        return 0
    g = info["group"]
    print(f"group {g['group_name']}  (id {g['group_id']})  {g['n_completed']}/{g['n_runs']} runs completed")
    tables.print_table(["run", "seed", "status", "steps", "run id", "path"],
                       [[r["name"], r["seed"], r["status"], r["steps"], r["run_id"], r["path"]]
                        for r in info["runs"]], title="replicates")
    if info["metrics"]:
        print()
        tables.print_table(
            ["metric", "mean", "95% CI low", "95% CI high", "sd", "min", "max", "runs"],
            [[m["key"], m["mean"], m["ci95_low"], m["ci95_high"], m["sd"], m["min_value"],
              m["max_value"], m["n_runs"]] for m in info["metrics"]],
            title="final metrics across completed replicates (95% t-interval)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from evsys_core.history import tables
    from evsys_core.history.ingest import flatten

    idx = _index(args)
    group = idx.group(args.run)
    if group is not None:
        return _show_group(group, args)
    info = idx.show(args.run)
    if args.json:
        tables.print_json(info)
        return 0
    run = info["run"]
    print(f"{run['name']}  (id {run['run_id']})  {run['status']}")
    pairs = [("path", run["run_dir"]), ("algorithm", run["algorithm"]), ("model", run["model"]),
             ("backend", run["backend"]), ("steps", run["steps"]), ("max_steps", run["max_steps"]),
             ("started", run["started_at"]), ("ended", run["ended_at"]),
             ("duration_s", run["duration_s"]), ("parent run", run["parent_run_id"]),
             ("git commit", run["git_commit"])]
    if run["error"]:
        pairs.append(("error", run["error"]))
    if run["inferred"]:
        pairs.append(("note", "no usable run.json: status (and maybe name) inferred from the folder"))
    tables.print_pairs([(k, v) for k, v in pairs if v is not None])
    if info["config"]:
        print("\nconfig")
        tables.print_pairs(list(flatten(info["config"]).items()))
    scores = [m for m in info["metrics"] if m["shown"] is not None]  # K_stderr, n_tasks folded in
    if scores:
        print()
        tables.print_table(
            ["metric", "final", "at step", "max", "max step", "min", "min step", "points"],
            [[m["key"], m["shown"], m["final_step"], m["max_value"], m["max_step"],
              m["min_value"], m["min_step"], m["n"]] for m in scores],
            title="metrics (± is the 95% interval over tasks)", max_width=90)
    if info["predictions"]:
        print()
        tables.print_table(
            ["benchmark", "last step", "rows", "mean score", "pass rate"],
            [[p["benchmark"], p["last_step"], p["rows_at_last_step"], p["mean_score"],
              p["pass_rate"]] for p in info["predictions"]],
            title="predictions (at the last evaluated step)")
    if info["conclusions"]:
        print("\nconclusions")
        for c in info["conclusions"]:
            print(f"  {c['time']} — {c['author']}")
            for line in c["text"].splitlines():
                print(f"    {line}")
    print("\nfiles")
    tables.print_pairs([(k, ", ".join(v) if isinstance(v, list) else v)
                        for k, v in info["paths"].items()])
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from evsys_core.history import tables

    if args.groups:
        if args.where or args.by != "final":
            raise UsageError("--groups ranks by the mean final value; --where and --by best "
                             "apply to runs only")
        rows = _index(args).best_groups(args.metric, maximize=args.maximize, limit=args.limit)
        if args.json:
            tables.print_json(rows)
            return 0
        if not rows:
            print(f"no replicate group has a completed run with {args.metric}")
            return 0
        tables.print_table(
            ["#", "group", f"{args.metric} (mean)", "95% CI", "seeds", "#1 vs this (paired)",
             "algorithm", "group id"],
            [[i, r["group_name"], r["value"], _interval({**r, "mean": r["value"]}),
              ",".join(str(x) for x in r["seeds"] if x is not None), _vs_top(r.get("vs_top")),
              r["algorithm"], r["group_id"]] for i, r in enumerate(rows, 1)])
        _vs_top_note(rows)
        return 0
    rows = _index(args).best(args.metric, maximize=args.maximize, where=args.where,
                             by=args.by, limit=args.limit, kind=_kind(args))
    if args.json:
        tables.print_json(rows)
        return 0
    if not rows:
        print(f"no run has a numeric value for {args.metric}"
              + (" matching --where" if args.where else ""))
        return 0
    what = ("final" if args.by == "final" else ("max" if args.maximize else "min"))
    paired = any(r.get("vs_top") for r in rows)   # eval metrics ranked by final value, higher first
    tables.print_table(
        ["#", "name", f"{args.metric} ({what})", "step", *(["#1 vs this (paired)"] if paired else []),
         "status", "algorithm", "model", "run id"],
        [[i, r["name"], r["value"], r["step"], *([_vs_top(r.get("vs_top"))] if paired else []),
          r["status"], r["algorithm"], r["model"], r["run_id"]] for i, r in enumerate(rows, 1)])
    _vs_top_note(rows)
    return 0


def _vs_top(vs: dict[str, Any] | None) -> str | None:
    """'inconclusive +0.091 [-0.08, +0.26] p=0.5, 11 tasks' (the leader minus this row)."""
    if not vs or vs.get("verdict") is None:
        return None
    seeds = max(vs.get("base_seeds") or 1, vs.get("cand_seeds") or 1)
    return (f"{vs['verdict']} {vs['delta']:+.3f} [{vs['ci_low']:+.3f}, {vs['ci_high']:+.3f}] "
            f"p={vs['p_value']:.2g}, {vs['n_tasks']} tasks" + (f" x {seeds} seeds" if seeds > 1 else ""))


def _vs_top_note(rows: list[dict[str, Any]]) -> None:
    if any(r.get("vs_top") and r["vs_top"].get("verdict") for r in rows):
        print("\n#1 vs this: the top row paired task by task with each row (all replicates' tasks "
              "pooled): delta #1 - this, 95% CI, p; `better` = #1 is really ahead (alpha 0.05).")


def cmd_compare(args: argparse.Namespace) -> int:
    from evsys_core.history import tables

    info = _index(args).compare(args.base, args.cand, metric=args.metric, step=args.step)
    if args.json:
        tables.print_json(info)
        return 0
    base, cand = (r["name"] for r in info["runs"])
    tables.print_table(["", f"BASE {base}", f"CAND {cand}"],
                       [["kind", *(r["kind"] for r in info["runs"])],
                        ["status", *(r["status"] for r in info["runs"])],
                        ["steps", *(r["steps"] for r in info["runs"])],
                        ["seeds", *(",".join(str(x) for x in r["seeds"] if x is not None)
                                    for r in info["runs"])],
                        ["id", *(r["run_id"] for r in info["runs"])]])
    print()
    if info["config"]:
        tables.print_table(["config", base, cand], [[c["key"], *c["values"]] for c in info["config"]],
                           title=f"config differences ({info['config_keys_same']} keys equal)")
    else:
        print(f"configs are identical ({info['config_keys_same']} keys)")
    if info["metrics"]:
        print()
        rows = []
        for m in info["metrics"]:
            shown = m.get("shown") or {}
            delta = "-" if m["delta"] is None else f"{m['delta']:+.3g}"
            if m["verdict"] is not None:
                delta += f" [{m['ci_low']:+.3f}, {m['ci_high']:+.3f}]"
            rows.append([m["key"], shown.get("base", m["base"]), shown.get("cand", m["cand"]),
                         delta, m.get("p_value"), m.get("n_tasks"),
                         m["verdict"] or f"- ({m.get('note', 'no verdict')})"])
        tables.print_table(["metric", "BASE", "CAND", "delta (95% CI)", "p", "tasks", "verdict"],
                           rows, title="metrics (CAND - BASE)", max_width=90)
        print(f"\n{info['note']}; alpha = {info['alpha']}.")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from evsys_core.history import tables

    if args.csv and args.json:
        raise UsageError("choose one of --csv and --json")
    max_rows = args.max_rows if args.max_rows and args.max_rows > 0 else None
    res = _index(args).query(args.sql, max_rows=max_rows)
    if args.json:
        tables.print_json({"columns": res.columns, "rows": res.rows, "truncated": res.truncated})
    elif args.csv:
        w = csv.writer(sys.stdout)
        w.writerow(res.columns)
        for row in res.rows:
            w.writerow([_csv_cell(v) for v in row])
    elif res.columns:
        tables.print_table(res.columns, res.rows, max_width=80)
    if res.truncated:
        print(f"(only the first {max_rows} rows; --max-rows 0 prints all)", file=sys.stderr)
    return 0


def _csv_cell(v: Any) -> Any:
    from evsys_core.history.reports import jsonable

    v = jsonable(v)
    return "" if v is None else (v if not isinstance(v, (list, dict)) else str(v))


def cmd_plot(args: argparse.Namespace) -> int:
    from evsys_core.history import tables

    idx = _index(args)
    series = []
    for run in args.runs:
        c = idx.curves(run, keys=args.metric, max_points=args.max_points)
        for key, pts in c["curves"].items():
            series.append({"run": c["name"], "run_id": c["run_id"], "metric": key,
                           "points": pts})
    out = Path(args.output or f"plot_{_slug('_'.join(args.metric))}.png")
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UsageError(f"-o {out}: use a .png, .svg or .pdf file name")
    _draw(series, args.metric, out)
    if args.json:
        tables.print_json({"path": str(out.resolve()), "series": series})
    else:
        print(f"wrote {out}")
    return 0


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "metric"


def _draw(series: list[dict[str, Any]], metrics: list[str], out: Path) -> None:
    from evsys_core import plotting

    several = len(metrics) > 1
    panel = plotting.Panel(", ".join(metrics), [
        (f"{s['run']}: {s['metric']}" if several else s["run"], s["points"]) for s in series],
        ylabel=metrics[0] if not several else "value")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        plotting.draw([panel], out)
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e}") from None


def cmd_conclude(args: argparse.Namespace) -> int:
    from evsys_core.history import tables
    from evsys_core.history.index import conclude

    res = conclude(Path(args.workspace), args.run, args.text, author=args.author)
    if args.json:
        tables.print_json(res)
    else:
        print(f"recorded in {res['path']}")
    return 0
