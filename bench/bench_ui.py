"""B6 — `evsys ui`: how long each page takes to answer on a large history.

    .venv/bin/python bench/bench_ui.py [--quick] [--reps 5] [--calls 10]

The server (`evsys_core.ui.server.make_server`) runs in this process on a free loopback port
over the B4 history (10,000 runs x 200 steps; 1,000 with --quick; built by bench_history.py
if missing), with its refresh throttle off, so every request includes the index refresh a
page does (nothing changed: the cheap one). Two runs with predictions on 250 tasks are added
for the pages that show them (and removed after). After one warm-up request of each page,
each repetition requests every page `--calls` times, interleaved, timed at the client (the
whole HTTP round trip and the body read); the table gives min / median / p90 / max over all
requests and the median of each repetition. The last row is the floor every page pays (an
`/api/status` request for no run: the refresh and one connection), and each page's median
minus it is the page's own work.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common  # noqa: E402
from common import log  # noqa: E402

TITLE = "B6 — ui page latency"
TARGET = 0.200
TASKS = 250
FLOOR = "floor: `/api/status` of no run (the refresh and one connection, nothing else)"


def add_prediction_runs(ws: Path) -> list[Path]:
    """Two 200-step runs under <ws>/ui-bench/ with predictions on TASKS tasks."""
    import bench_history

    rng = random.Random(7)
    out = []
    for i, name in enumerate(("ui-bench-base", "ui-bench-cand")):
        d = bench_history.write_run(ws / "ui-bench", i, 200, rng, time.time())
        d = d.rename(d.parent / name)
        info = json.loads((d / "run.json").read_text())
        (d / "run.json").write_text(json.dumps({**info, "name": name, "id": f"uibench{i}"}))
        (d / "predictions").mkdir()
        lines = []
        for step in (100, 200):
            for t in range(TASKS):
                ok = rng.random() < 0.4 + 0.2 * i
                lines.append(json.dumps({"step": step, "task_id": f"task-{t:03d}",
                                         "instruction": f"What is the capital of country {t}?",
                                         "sample": 0, "answer": f"city {t}" if ok else "no idea",
                                         "score": float(ok), "passed": ok, "reason": None}))
        (d / "predictions" / "val.jsonl").write_text("\n".join(lines) + "\n")
        out.append(d)
    return out


def pages(run_ids: list[str]) -> list[tuple[str, str]]:
    return [
        ("runs table (100 newest)", "/"),
        ("runs sorted by val/val/pass@1", "/?" + urlencode({"sort": "val/val/pass@1"})),
        ("runs filtered by a param and a metric", "/?" + urlencode(
            {"f": "algorithm.params.learning_rate >= 1e-4; val/val/pass@1 > 0.5",
             "sort": "val/val/pass@1"})),
        ("run page (curves, 250 predictions)", "/run?id=uibench0"),
        ("compare 2 runs (per-task diff of 250 tasks)", "/compare?run=uibench0&run=uibench1"),
        ("compare 4 runs", "/compare?" + urlencode([("run", r) for r in run_ids[:4]])),
        ("`/api/status` of 100 runs", "/api/status?" + urlencode([("id", r) for r in run_ids])),
        (FLOOR, "/api/status"),
    ]


def measure(ws: Path, reps: int, calls: int) -> dict[str, list[list[float]]]:
    from evsys_core.history.index import open_index
    from evsys_core.ui.server import make_server

    add_prediction_runs(ws)
    try:
        idx = open_index(ws)
        ids = [r for (r,) in idx.query("SELECT run_id FROM runs WHERE run_id NOT LIKE 'uibench%' "
                                       "ORDER BY run_id LIMIT 100").rows]
        server = make_server(ws, port=0, refresh_s=0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = server.url.rstrip("/")

        def fetch(path: str) -> None:
            with urllib.request.urlopen(base + path, timeout=120) as r:
                assert r.status == 200, (path, r.status)
                r.read()

        todo = pages(ids)
        for _, path in todo:
            fetch(path)  # warm-up
        out: dict[str, list[list[float]]] = {label: [] for label, _ in todo}
        for rep in range(reps):
            per: dict[str, list[float]] = {label: [] for label, _ in todo}
            for _ in range(calls):
                for label, path in todo:
                    per[label].append(common.timed(lambda: fetch(path)))
            for label in per:
                out[label].append(per[label])
            log(f"B6 rep {rep}: " + ", ".join(f"{statistics.median(v) * 1e3:.0f} ms"
                                             for v in per.values()))
        server.shutdown()
        server.server_close()
        return out
    finally:
        shutil.rmtree(ws / "ui-bench", ignore_errors=True)
        open_index(ws)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(ap)
    ap.add_argument("--calls", type=int, default=10, help="requests of each page per repetition")
    ap.add_argument("--workspace", type=Path, default=None)
    args = ap.parse_args(argv)
    n_runs = 1000 if args.quick else 10_000
    ws = args.workspace or common.CACHE / f"history-{n_runs}x200"
    if not ws.exists():
        import bench_history

        ws = bench_history.ensure_history(n_runs, 200)
    loads = [common.load1()]
    res = measure(ws, max(1, args.reps), args.calls)
    loads.append(common.load1())
    cmd = "bench/bench_ui.py" + (" --quick" if args.quick else "")
    lines = [f"## {TITLE}", "",
             f"`{cmd}`: `evsys ui` over a history of {n_runs:,} runs x 200 steps (plus two runs "
             f"with predictions on {TASKS} tasks at two evaluations); {args.reps} repetitions x "
             f"{args.calls} requests of each page after a warm-up, each timed at the client "
             "(HTTP round trip and body), each including the server's index refresh. "
             + common.conditions(loads[0], loads[-1]), "",
             "| page | min | median | p90 | max | median per repetition (min / median / max) "
             "| median − floor | target | |", "|---|---|---|---|---|---|---|---|---|"]
    floor = statistics.median([x for r in res[FLOOR] for x in r])
    for label, reps in res.items():
        flat = [x for r in reps for x in r]
        mid = statistics.median(flat)
        own = "" if label == FLOOR else common.fmt_s(mid - floor)
        ok = common.verdict(mid < TARGET, f"{common.fmt_s(mid - TARGET)} over")
        if n_runs < 10_000:
            ok = f"(target is for 10,000 runs) {ok}"
        lines.append(f"| {label} | {common.fmt_s(min(flat))} | {common.fmt_s(mid)} | "
                     f"{common.fmt_s(pct(flat, 0.9))} | {common.fmt_s(max(flat))} | "
                     f"{common.fmt3([statistics.median(r) for r in reps])} | {own} | "
                     f"< {common.fmt_s(TARGET)} | {ok} |")
    lines += ["", "The floor is what every page pays before its own queries: the index's "
              "nothing-changed refresh (B4) and opening and closing one read-only DuckDB "
              "connection; `evsys ui` refreshes at most once a second, so most requests of a "
              "person clicking around skip the refresh part."]
    common.finish(TITLE, "\n".join(lines) + "\n", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
