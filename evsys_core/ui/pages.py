"""HTML for the three pages of `evsys ui`, and the inline SVG charts.

Every value that came from a run (names, metric keys, answers, config values, log lines)
passes through `e()` before it is placed in the page, in text and in attributes alike; links
are built with `link()`, which URL-encodes the query and then escapes it. The pages carry no
inline script or style (the server's Content-Security-Policy forbids both): behaviour is in
static/ui.js, looks in static/ui.css.
"""

from __future__ import annotations

import html
import math
from typing import Any, Sequence
from urllib.parse import urlencode

from evsys_core.stats import is_companion as aux  # K_stderr, .../n_tasks: shown beside K

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
CHART_W, CHART_H, PAD_L, PAD_R, PAD_T, PAD_B = 400, 190, 56, 10, 22, 26


def e(v: Any) -> str:
    return html.escape(fmt(v), quote=True)


def fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        return f"{v:.4g}"
    return str(v)


def link(path: str, params: dict[str, Any] | Sequence[tuple[str, Any]] = ()) -> str:
    q = urlencode(params, doseq=True)
    return html.escape(path + ("?" + q if q else ""), quote=True)


def layout(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"<title>{e(title)} · evsys</title><link rel=stylesheet href='/static/ui.css'>"
        "<script src='/static/ui.js' defer></script></head><body>"
        "<header><a class=home href='/'>evsys runs</a></header>"
        f"<main>{body}</main></body></html>"
    )


def error_page(code: int, message: str) -> str:
    return layout(f"error {code}", f"<h1>Error {code}</h1><p class=problem>{e(message)}</p>"
                  "<p><a href='/'>back to the runs</a></p>")


def status_badge(run_id: str, status: Any) -> str:
    return (f"<span class='status st-{e(status)}' data-run='{e(run_id)}' "
            f"data-status='{e(status)}'>{e(status)}</span>")


def with_ci(value: Any, ci: Any, n: Any = None, unit: str = "tasks") -> str:
    """`0.727 ± 0.134` with the interval and the number of tasks (or, for a replicate group's
    mean, of runs) in its tooltip."""
    if ci is None or not isinstance(value, (int, float)):
        return e(value) + ("<small> (1 run)</small>" if unit == "runs" and n == 1 else "")
    lo, hi = ci
    tip = f"95% CI [{fmt(lo)}, {fmt(hi)}]" + (f", {fmt(n)} {unit}" if n is not None else "")
    return (f"<span class=ci title='{e(tip)}'>{e(value)}"
            f"<small> ± {e((hi - lo) / 2)}</small></span>")


def _steps(r: dict[str, Any]) -> str:
    return e(r.get("steps")) + (f"/{e(r['max_steps'])}" if r.get("max_steps") else "")


# ------------------------------------------------------------------------------ runs


def runs_page(data: dict[str, Any], q: Any) -> str:
    opts = data["options"]

    def select(name: str, current: str) -> str:
        items = "".join(f"<option value='{e(v)}'{' selected' if v == current else ''}>{e(v)}"
                        f"</option>" for v in opts[name])
        return f"<label>{name} <select name={name}><option value=''>any</option>{items}</select></label>"

    keys = "".join(f"<option value='{e(k)}'>" for k in data["keys"][:2000])
    form = (
        "<form class=filters method=get action='/'>"
        + select("status", q.status) + select("algorithm", q.algorithm) + select("model", q.model)
        + f"<label>name <input name=q value='{e(q.name)}' size=14></label>"
        "<label>where <input name=f list=keys size=36 placeholder='val/val/pass@1 >= 0.5; "
        f"algorithm.params.learning_rate < 1e-3' value='{e('; '.join(q.filters))}'></label>"
        f"<datalist id=keys>{keys}</datalist>"
        + (f"<input type=hidden name=sort value='{e(q.sort)}'>"
           f"<input type=hidden name=dir value='{'desc' if q.desc else 'asc'}'>" if q.sort else "")
        + "<button type=submit>Filter</button> <a href='/'>clear</a></form>"
    )
    problems = "".join(f"<p class=problem>{e(p)}</p>" for p in data["problems"])

    def head(key: str, label: str | None = None) -> str:
        on = q.sort == key
        params = q.params(sort=key, dir="asc" if on and q.desc else "desc", page=1)
        arrow = (" ▼" if q.desc else " ▲") if on else ""
        aria = f" aria-sort={'descending' if q.desc else 'ascending'}" if on else ""
        return (f"<th data-key='{e(key)}' title='{e(key)}'{aria}><a href='{link('/', params)}'>"
                f"{e(label or key)}{arrow}</a></th>")

    cols = [("name", None), ("status", None), ("algorithm", None), ("model", None),
            ("steps", None), ("started_at", "started")]
    header = "<th></th>" + "".join(head(k, lbl) for k, lbl in cols)
    header += "".join(head(k, k.rsplit(".", 1)[-1]) for k in data["param_cols"]) + "".join(
        head(k) for k in data["metric_cols"]) + "<th>latest conclusion</th>"
    body = []
    for r in data["rows"]:
        if r["kind"] == "group":
            body.append(_group_tr(r, data))
            body += [_run_tr(m, data, member_of=r["group_id"]) for m in r["members"]]
        else:
            body.append(_run_tr(r, data))
    total, page, size = data["total"], data["page"], data["page_size"]
    last = max(1, -(-total // size))
    n_groups = sum(r["kind"] == "group" for r in data["rows"])
    rows = f" in {total} row{'s' if total != 1 else ''}" if total != data["n_runs"] else ""
    nav = f"<span class=count>{data['n_runs']} runs{rows}</span>"
    if page > 1:
        nav += f" <a rel=prev href='{link('/', q.params(page=page - 1))}'>← newer</a>"
    if last > 1:
        nav += f" page {page} of {last}"
    if page < last:
        nav += f" <a rel=next href='{link('/', q.params(page=page + 1))}'>older →</a>"
    if n_groups:
        nav += (" <small>(a replicate group is one row: mean over its completed runs ± half "
                "its 95% t-interval; ▸ lists its runs)</small>")
    table = (
        "<form method=get action='/compare' class=compare>"
        f"<div class=bar>{nav} <button type=submit>Compare selected</button></div>"
        f"<table id=runs class=runs><thead><tr>{header}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></form>"
    )
    return layout("runs", f"<h1>Runs</h1>{form}{problems}{table}")


def _run_tr(r: dict[str, Any], data: dict[str, Any], member_of: str | None = None) -> str:
    rid = r["run_id"]
    name = f"<a href='{link('/run', {'id': rid})}'>{e(r['name'])}</a>"
    cells = [
        f"<td><input type=checkbox name=run value='{e(rid)}' aria-label='compare "
        f"{e(r['name'])}'></td>",
        f"<td class=name>{name}</td>" if member_of is None or r["seed"] is None else
        f"<td class=name><span class=seed>seed {e(r['seed'])}</span> {name}</td>",
        f"<td>{status_badge(rid, r['status'])}</td>",
        f"<td>{e(r['algorithm'])}</td>", f"<td>{e(r['model'])}</td>",
        f"<td class=steps data-run='{e(rid)}'>{_steps(r)}</td>",
    ] + _value_cells(r, data)
    if member_of is None:
        return f"<tr data-run='{e(rid)}'>{''.join(cells)}</tr>"
    return (f"<tr class=member data-run='{e(rid)}' data-member-of='{e(member_of)}' hidden>"
            f"{''.join(cells)}</tr>")


def _group_tr(g: dict[str, Any], data: dict[str, Any]) -> str:
    gid = g["group_id"]
    seeds = ", ".join(map(fmt, g["seeds"]))
    cls = f" st-{e(g['status'])}" if g["one_status"] else ""
    cells = [
        f"<td><input type=checkbox name=run value='{e(gid)}' aria-label='compare group "
        f"{e(g['name'])}'></td>",
        f"<td class=name><button type=button class=expand data-group='{e(gid)}' "
        f"aria-expanded=false title='list its runs'>▸</button> <span class=group-name>"
        f"{e(g['name'])}</span> <small class=seeds title='seeds {e(seeds)}'>"
        f"{e(g['n_runs'])} seeds</small></td>",
        f"<td><span class='status group-status{cls}'>{e(g['status'])}</span></td>",
        f"<td>{e(g['algorithm'])}</td>", f"<td>{e(g['model'])}</td>",
        f"<td class=steps>{_steps(g)}</td>",
    ] + _value_cells(g, data)
    return f"<tr class=group data-group='{e(gid)}'>{''.join(cells)}</tr>"


def _value_cells(r: dict[str, Any], data: dict[str, Any]) -> list[str]:
    """A row's start time, params, metrics (with their intervals) and latest conclusion."""
    return ([f"<td class=time>{e(_time(r['started_at']))}</td>"]
            + [f"<td class=param>{e(r['params'].get(k))}</td>" for k in data["param_cols"]]
            + [f"<td class=num data-key='{e(k)}'>{with_ci(**r['metrics'][k])}</td>"
               for k in data["metric_cols"]]
            + [f"<td class=conclusion>{e(_short(r['conclusion'], 160))}</td>"])


def _time(t: Any) -> str:
    return (t or "").replace("T", " ").rstrip("Z")


def _short(text: Any, n: int) -> str:
    s = " ".join(str(text or "").split())
    return s if len(s) <= n else s[: n - 1] + "…"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "",
           raw_cols: set[int] = frozenset()) -> str:
    """A table; cells are escaped unless their column is in `raw_cols` (already HTML)."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if i in raw_cols else e(c)}</td>" for i, c in enumerate(row))
        + "</tr>" for row in rows)
    return f"<table class='{e(cls)}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ------------------------------------------------------------------------------- a run


def run_page(d: dict[str, Any]) -> str:
    r = d["run"]
    rid = r["run_id"]
    facts = [("id", rid), ("algorithm", r["algorithm"]), ("model", r["model"]),
             ("backend", r["backend"]), ("steps", f"{fmt(r['steps'])}/{fmt(r['max_steps'])}"),
             ("started", r["started_at"]), ("ended", r["ended_at"]),
             ("duration (s)", r["duration_s"]), ("path", r["path"]),
             ("git commit", r["git_commit"]), ("parent run", r["parent_run_id"]),
             ("replicate group", r.get("group_name")), ("seed", r.get("seed")),
             ("error", r["error"])]
    out = [f"<h1>{e(r['name'])} {status_badge(rid, r['status'])}</h1>",
           "<dl class=facts>" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts
                                        if v not in (None, "", "None/None")) + "</dl>"]
    if d["metrics"]:
        out.append("<h2>Metrics</h2>" + _table(
            ["key", "split", "final", "max (step)", "min (step)", "points"],
            [[m["key"], m["split"], with_ci(m["final"], m.get("ci"), m.get("n_tasks")),
              f"{fmt(m['max_value'])} ({fmt(m['max_step'])})",
              f"{fmt(m['min_value'])} ({fmt(m['min_step'])})", m["n"]]
             for m in d["metrics"] if not aux(m["key"])],
            cls="metrics", raw_cols={2}))
    charts = [chart(k, [{"label": r["name"], **c}]) for k, c in d["curves"].items()
              if c["points"] and not aux(k)]
    if charts:
        out.append("<h2>Curves</h2><div class=charts>" + "".join(charts) + "</div>")
    out.append(_predictions(d, rid))
    if d["conclusions"]:
        out.append("<h2>Conclusions</h2>" + "".join(
            f"<article class=conclusion><h3>{e(c['time'])} — {e(c['author'])}</h3>"
            f"<p>{e(c['text'])}</p></article>" for c in d["conclusions"]))
    log = d.get("log")
    if log and (log["exists"] or r["status"] == "running"):
        running = " data-running=1" if r["status"] == "running" else ""
        out.append(f"<h2>Log tail <small>(train.log)</small></h2><pre id=log class=log "
                   f"data-run='{e(rid)}'{running}>{e(chr(10).join(log['lines']))}</pre>")
    if d["flat_config"]:
        out.append("<h2>Config</h2>" + _table(
            ["key", "value"], [[k, _config_value(v)] for k, v in d["flat_config"].items()],
            cls="config"))
    if d.get("summary"):
        out.append(f"<h2>Summary <small>(summary.md)</small></h2><pre class=summary>"
                   f"{e(d['summary'])}</pre>")
    return layout(r["name"] or rid, "".join(out))


def _config_value(v: Any) -> str:
    if isinstance(v, (list, dict)):
        import json

        return json.dumps(v, default=str)
    return fmt(v)


def _predictions(d: dict[str, Any], rid: str) -> str:
    if not d["evals"]:
        return ""
    picks = []
    for i, ev in enumerate(d["evals"]):
        label = f"{ev['benchmark']} @ step {fmt(ev['step'])} ({ev['passed']}/{ev['n']} passed)"
        cls = " class=current aria-current=true" if i == d["eval"] else ""
        picks.append(f"<a{cls} href='{link('/run', {'id': rid, 'eval': i})}'>{e(label)}</a>")
    rows = []
    for p in d["preds"]:
        ok = p["passed"]
        mark = "<span class=pass>pass</span>" if ok else "<span class=fail>fail</span>"
        rows.append(f"<tr class={'pass' if ok else 'fail'}><td>{e(p['task_id'])}</td>"
                    f"<td>{e(p['sample'])}</td><td class=text>{e(p['instruction'])}</td>"
                    f"<td class=answer>{e(p['answer'])}</td><td>{e(p['score'])}</td>"
                    f"<td>{mark}</td><td class=text>{e(p['reason'])}</td></tr>")
    cut = f"<p>first {len(d['preds'])} rows shown</p>" if d["preds_cut"] else ""
    return ("<h2>Predictions</h2><nav class=evals>" + " ".join(picks) + "</nav>"
            "<table id=predictions class=predictions><thead><tr><th>task</th><th>sample</th>"
            "<th>instruction</th><th>answer</th><th>score</th><th>passed</th><th>reason</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>{cut}")


# ---------------------------------------------------------------------------- charts


def chart(title: str, series: Sequence[dict[str, Any]]) -> str:
    """An SVG line chart: one polyline per series (steps on x), an optional band per series."""
    pts = [(s, v) for sr in series for s, v in sr["points"] if _finite(s, v)]
    pts += [(s, y) for sr in series for s, lo, hi in (sr.get("band") or []) for y in (lo, hi)
            if _finite(s, y)]
    if not pts:
        return ""
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) * 0.1 or 1), y1 + (abs(y1) * 0.1 or 1)
    w, h = CHART_W - PAD_L - PAD_R, CHART_H - PAD_T - PAD_B

    def xy(s: float, v: float) -> str:
        return f"{PAD_L + (s - x0) / (x1 - x0) * w:.1f},{PAD_T + (y1 - v) / (y1 - y0) * h:.1f}"

    parts = [f"<svg class=chart viewBox='0 0 {CHART_W} {CHART_H}' role=img "
             f"data-key='{e(title)}' aria-label='{e(title)}'><title>{e(title)}</title>",
             f"<text class=title x={PAD_L} y=14>{e(title)}</text>",
             f"<rect class=frame x={PAD_L} y={PAD_T} width={w} height={h}></rect>",
             f"<text class=tick x={PAD_L - 4} y={PAD_T + 8} text-anchor=end>{e(y1)}</text>",
             f"<text class=tick x={PAD_L - 4} y={PAD_T + h} text-anchor=end>{e(y0)}</text>",
             f"<text class=tick x={PAD_L} y={CHART_H - 8}>{e(x0)}</text>",
             f"<text class=tick x={PAD_L + w} y={CHART_H - 8} text-anchor=end>step {e(x1)}</text>"]
    for i, sr in enumerate(series):
        color = sr.get("color") or COLORS[i % len(COLORS)]
        band = [b for b in (sr.get("band") or []) if _finite(b[0], b[1]) and _finite(b[0], b[2])]
        if band:
            poly = " ".join(xy(s, hi) for s, _, hi in band) + " " + " ".join(
                xy(s, lo) for s, lo, _ in reversed(band))
            parts.append(f"<polygon class=band points='{poly}' fill='{color}'></polygon>")
        line = [xy(s, v) for s, v in sr["points"] if _finite(s, v)]
        label = e(sr.get("label"))
        if len(line) == 1:
            cx, cy = line[0].split(",")
            parts.append(f"<circle class=series cx={cx} cy={cy} r=3 fill='{color}' "
                         f"data-label='{label}'><title>{label}</title></circle>")
        elif line:
            parts.append(f"<polyline class=series points='{' '.join(line)}' stroke='{color}' "
                         f"data-label='{label}'><title>{label}</title></polyline>")
    return "".join(parts) + "</svg>"


def _finite(*xs: Any) -> bool:
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
               for x in xs)


# ---------------------------------------------------------------------------- compare


def compare_page(d: dict[str, Any]) -> str:
    runs = d["runs"]
    names = [r["name"] for r in runs]
    legend = "<ol class=legend>" + "".join(
        f"<li data-side='{e(r['run_id'])}'><svg class=swatch viewBox='0 0 10 10'><rect width=10 "
        f"height=10 fill='{COLORS[i % len(COLORS)]}'></rect></svg>" + _side(r)
        + (" <em>(base)</em>" if i == 0 else "") + "</li>"
        for i, r in enumerate(runs)) + "</ol>"
    n_groups = sum(r["kind"] == "group" for r in runs)
    what = "runs" if not n_groups else "replicate groups" if n_groups == len(runs) else \
        "runs and groups"
    out = [f"<h1>Compare {len(runs)} {what}</h1>", legend]
    if n_groups:
        out.append("<p class=note>A replicate group's value is the mean over its completed runs "
                   "(± half its 95% t-interval); its verdict pools every replicate's paired "
                   "tasks; its curves are the mean over its runs at each step; its per-task "
                   "rate is the mean of its runs' pass rates on that task.</p>")
    rows = []
    for m in d["metrics"]:
        cells = [e(m["key"]), e(m["split"])]
        for i, v in enumerate(m["values"]):
            entry = d["pairs"][i - 1]["verdicts"].get(m["key"]) if i else None
            delta = (entry or {}).get("delta")
            cells.append(with_ci(**v) + (
                f" <small class=delta>({'+' if delta >= 0 else ''}{e(delta)})</small>"
                if isinstance(delta, float | int) else ""))
        for p in d["pairs"]:
            cells.append(_verdict(p["verdicts"].get(m["key"]), m["split"]))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    vheads = "".join(f"<th>verdict {e(names[i + 1])} vs {e(names[0])}</th>"
                     for i in range(len(d["pairs"])))
    out.append("<h2>Metrics <small>(final values; Δ against the base)</small></h2>"
               "<table id=metrics class=metrics><thead><tr><th>key</th><th>split</th>"
               + "".join(f"<th>{e(n)}</th>" for n in names) + vheads
               + f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    if not any((v or {}).get("verdict") for p in d["pairs"] for v in p["verdicts"].values()):
        out.append("<p class=note>No verdict: a verdict needs both runs' per-task predictions "
                   "of an eval metric; the deltas above carry no test.</p>")
    same = d["config_keys_same"]
    out.append("<h2>Config diff" + (f" <small>({same} keys the same)</small>" if same else "")
               + "</h2>"
               + (_table(["key", *names], [[c["key"], *map(_config_value, c["values"])]
                                           for c in d["config"]], cls="config-diff")
                  if d["config"] else "<p>The configs are the same.</p>"))
    for i, p in enumerate(d["pairs"]):
        out.append(_task_diff(p, names[0], names[i + 1]))
    keys = list(dict.fromkeys(k for c in d["curves"] for k in c if not aux(k)))
    empty = {"points": [], "band": None}
    charts = [chart(k, [{"label": names[i], **c.get(k, empty)} for i, c in enumerate(d["curves"])])
              for k in keys]
    if charts:
        out.append("<h2>Curves</h2><div class=charts>" + "".join(charts) + "</div>")
    return layout("compare", "".join(out))


def _side(r: dict[str, Any]) -> str:
    """A compared run (its link and status) or group (its name, runs and seeds)."""
    if r["kind"] == "run":
        return (f"<a href='{link('/run', {'id': r['run_id']})}'>{e(r['name'])}</a> "
                f"{status_badge(r['run_id'], r['status'])}")
    runs = ", ".join(f"<a href='{link('/run', {'id': m['run_id']})}'>{e(m['name'])}</a>"
                     for m in r["members"])
    return (f"<strong class=group-name>{e(r['name'])}</strong> <small>replicate group, "
            f"{e(r['status'])}: {runs}</small>")


def _verdict(entry: dict | None, split: str) -> str:
    v = (entry or {}).get("verdict")
    if not v:
        why = (entry or {}).get("note") or ("training metric: no per-task predictions"
                                            if split == "train" else "no verdict")
        return f"<span class='verdict none' title='{e(why)}'>—</span>"
    detail = (f"Δ {fmt(entry.get('delta'))}, 95% CI [{fmt(entry.get('ci_low'))}, "
              f"{fmt(entry.get('ci_high'))}], p {fmt(entry.get('p_value'))} "
              f"({entry.get('test') or 'paired test'}), {fmt(entry.get('n_tasks'))} paired tasks"
              + (f", {fmt(entry['base_seeds'])} and {fmt(entry['cand_seeds'])} replicates pooled"
                 if max(entry.get("base_seeds") or 1, entry.get("cand_seeds") or 1) > 1 else ""))
    return f"<span class='verdict v-{e(v)}' title='{e(detail)}'>{e(v)}</span>"


def _rate(v: Any) -> str:
    return "" if v is None else ("pass" if v == 1 else "fail" if v == 0 else f"{v:.2f}")


def _task_diff(p: dict[str, Any], base: str, cand: str) -> str:
    out = [f"<h2>Per task: {e(cand)} against {e(base)}</h2>"]
    if not p["tasks"]:
        out.append("<p>No benchmark has predictions from both sides.</p>")
    for b in p["tasks"]:
        c = b["counts"]
        out.append(f"<section class=taskdiff data-benchmark='{e(b['benchmark'])}'>"
                   f"<h3>{e(b['benchmark'])}: <span class=fixed>{c['fixed']} fixed</span>, "
                   f"<span class=broken>{c['broken']} broken</span>, "
                   f"{c['unchanged']} unchanged"
                   + (f", {c['unpaired']} in one run only" if c["unpaired"] else "") + "</h3>")
        for group, title in (("fixed", "Fixed"), ("broken", "Broken"),
                             ("unchanged", "Unchanged"), ("unpaired", "In one run only")):
            tasks = [t for t in b["tasks"] if t["change"] == group]
            if not tasks:
                continue
            rows = "".join(
                f"<tr class={group} data-task='{e(t['task_id'])}'><td>{e(t['task_id'])}</td>"
                f"<td class=text>{e(t['instruction'])}</td>"
                f"<td class=answer>{e(t['base_answer'])}</td><td>{e(_rate(t['base']))}</td>"
                f"<td class=answer>{e(t['cand_answer'])}</td><td>{e(_rate(t['cand']))}</td></tr>"
                for t in tasks)
            table = (f"<table class='tasks {group}'><thead><tr><th>task</th><th>instruction</th>"
                     f"<th>{e(base)} answer</th><th></th><th>{e(cand)} answer</th><th></th>"
                     f"</tr></thead><tbody>{rows}</tbody></table>")
            opened = " open" if group in ("fixed", "broken") else ""
            out.append(f"<details class={group}{opened}><summary>{title} ({len(tasks)})"
                       f"</summary>{table}</details>")
        out.append("</section>")
    return "".join(out)
