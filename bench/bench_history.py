"""B4 — run history at scale: the DuckDB index against a plain-Python scan of the JSONL files.

    .venv/bin/python bench/bench_history.py            # 10,000 runs x 200 steps
    .venv/bin/python bench/bench_history.py --quick    # 1,000 runs
    .venv/bin/python bench/bench_history.py --runs 3000 --reps 7 --no-write

A synthetic history (run.json, config.yaml, metrics.jsonl with 4 train metrics per step and
2 val metrics every 20 steps, summary.md) is generated once into bench/.cache/ and reused.
Measured, each with one warm-up and `--reps` repetitions (min / median / max):
  - full index build (the index file deleted first);
  - refresh with nothing changed;
  - refresh after one new run (a fresh 200-step run written before each repetition);
  - "top 5 runs by final val/val/pass@1" through the index (`Index.best` and `Index.query`)
    and through a plain-Python scan of every metrics.jsonl, interleaved, with the ratio
    computed pair by pair.
  - the same top-5 through MLflow's `MlflowClient.search_runs` on the same runs logged into
    MLflow's SQLite store (bench/peer_mlflow.py, under bench/.venv-peers; the database is
    built once into bench/.cache, ~15 minutes for 10,000 runs, and reused), interleaved with
    the others, with its answer checked against the index's and the ratio computed pair by pair.
The `## B4 — history at scale` section of bench/RESULTS.md is replaced with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

from evsys_core.history import store  # noqa: E402
from evsys_core.history.index import Index, open_index  # noqa: E402

CACHE = ROOT / "bench" / ".cache"
RESULTS = ROOT / "bench" / "RESULTS.md"
METRIC = "val/val/pass@1"
TARGETS = {  # issue 7, B4
    "top5": 0.050,
    "nothing_changed": 0.100,
    "one_new_run": 0.250,
    "ratio_vs_scan": 100.0,
}

TITLE = "B4 — history at scale"
BENCH = ROOT / "bench"
PEERS_PY = BENCH / ".venv-peers" / "bin" / "python"


class MLflowPeer:
    """`peer_mlflow.py serve` kept running: each call asks one top-5 and returns the seconds
    MLflow took in its own process (its client, engine and imports warm) and its answer."""

    name = "MLflow `search_runs` (SQLite store)"

    def __init__(self, ws: Path, n_runs: int, steps: int):
        import subprocess

        self.db = CACHE / f"mlflow-{n_runs}x{steps}.db"
        if not self.db.exists():
            print(f"  logging {n_runs} runs into MLflow ({self.db.name}; cached for later runs)",
                  file=sys.stderr, flush=True)
            subprocess.run([str(PEERS_PY), str(BENCH / "peer_mlflow.py"), "build", "--history", str(ws),
                            "--db", str(self.db)], check=True)
        self.proc = subprocess.Popen([str(PEERS_PY), str(BENCH / "peer_mlflow.py"), "serve", "--db",
                                      str(self.db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        hello = json.loads(self.proc.stdout.readline())
        self.version = hello["mlflow"]

    def __call__(self) -> tuple[float, list[float]]:
        self.proc.stdin.write("top5\n")
        self.proc.stdin.flush()
        ans = json.loads(self.proc.stdout.readline())
        return ans["seconds"], ans["top5"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def make_peers(ws: Path, n_runs: int, steps: int) -> list:
    if not PEERS_PY.exists():
        print("  MLflow not measured: bench/.venv-peers is missing (make bench-peers)", file=sys.stderr)
        return []
    return [MLflowPeer(ws, n_runs, steps)]


# ------------------------------------------------------------------ synthetic history


def write_run(out: Path, i: int, steps: int, rng: random.Random, now: float) -> Path:
    d = out / f"run-{i:05d}"
    d.mkdir(parents=True, exist_ok=False)
    lr = rng.choice([1e-5, 3e-5, 1e-4, 3e-4])
    skill = rng.random()
    started = now - 86400 * 30 + i * 60.0
    info = {
        "id": f"b{i:011d}", "name": d.name, "status": "completed",
        "created_at": started - 5, "started_at": started, "ended_at": started + 300,
        "algorithm": rng.choice(["sft", "sdft", "rl"]), "model": "SmolLM2-135M-Instruct",
        "backend": "local", "config_hash": f"{i:016x}", "git_commit": "0" * 40,
        "parent_run_id": None, "pid": 1, "step": steps, "max_steps": steps, "error": None,
        "config_path": "config.yaml", "final_metrics": {},
    }
    (d / "config.yaml").write_text(
        f"model: {{name: SmolLM2-135M-Instruct}}\nbackend: {{kind: local}}\n"
        f"data: {{source_kind: jsonl, path: data/train.jsonl}}\n"
        f"algorithm:\n  kind: {info['algorithm']}\n  params: {{learning_rate: {lr}, "
        f"max_steps: {steps}, batch_size: 4, lora_rank: 8}}\n"
        f"metadata:\n  benchmark:\n    - {{name: val, path: data/val, run_every: 20, "
        f"metrics: [pass@1], split: val}}\nseed: {i}\n"
    )
    lines = []
    loss = 2.5
    for s in range(1, steps + 1):
        loss *= 0.99 + 0.005 * rng.random()
        lines.append(json.dumps({"step": s, "split": "train", "metrics": {
            "train/mean_loss": round(loss, 5), "train/lr": lr,
            "train/grad_norm": round(rng.uniform(0.1, 3.0), 4),
            "train/tokens_per_s": round(rng.uniform(500, 900), 1)}}))
        if s % 20 == 0:
            p = min(1.0, max(0.0, skill * s / steps + rng.gauss(0, 0.05)))
            lines.append(json.dumps({"step": s, "split": "val", "metrics": {
                "val/val/pass@1": round(p, 4), "val/val/mean_score": round(p * 0.9, 4)}}))
    final = json.loads(lines[-1])["metrics"] if steps >= 20 else {}
    info["final_metrics"] = final
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (d / "summary.md").write_text(f"# {d.name}\n\nstatus: completed\n\n"
                                  + "".join(f"- {k}: {v}\n" for k, v in final.items()))
    (d / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    return d


def ensure_history(n_runs: int, steps: int, cache: Path = CACHE) -> Path:
    """The synthetic history of `n_runs` runs under `cache`, generated once (files only: the
    index is built by whoever reads it first)."""
    ws = cache / f"history-{n_runs}x{steps}"
    manifest = ws / "bench_manifest.json"
    if manifest.exists():
        return ws
    if ws.exists():
        shutil.rmtree(ws)
    out = ws / "outputs"
    out.mkdir(parents=True)
    rng = random.Random(0)
    now = time.time()
    t0 = time.perf_counter()
    for i in range(n_runs):
        write_run(out, i, steps, rng, now)
        if (i + 1) % 1000 == 0:
            print(f"  generated {i + 1}/{n_runs} runs", file=sys.stderr, flush=True)
    old = now - 3600  # age everything, as a real history would be
    for d in out.iterdir():
        for f in d.iterdir():
            os.utime(f, (old, old))
        os.utime(d, (old, old))
    os.utime(out, (old, old))
    manifest.write_text(json.dumps({"runs": n_runs, "steps": steps}) + "\n")
    print(f"  generated in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return ws


# --------------------------------------------------------------------------- peers


def scan_top5(ws: Path) -> list[tuple[float, str]]:
    """The plain way: read every metrics.jsonl, keep each run's last val/val/pass@1."""
    finals = []
    for root, dirs, files in os.walk(ws):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if "metrics.jsonl" not in files:
            continue
        best_step, value = -1, None
        with open(os.path.join(root, "metrics.jsonl"), "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break
                row = json.loads(raw)
                m = row.get("metrics", {})
                if METRIC in m and row.get("step", 0) >= best_step:
                    best_step, value = row.get("step", 0), m[METRIC]
        if value is not None:
            finals.append((value, os.path.basename(root)))
    finals.sort(reverse=True)
    return finals[:5]


def index_top5_best(idx: Index) -> list:
    return idx.best(METRIC, limit=5)


def index_top5_sql(idx: Index) -> list:
    return idx.query(
        "SELECT r.name, l.value FROM latest_metrics l JOIN runs r USING (run_id) "
        "WHERE l.key = ? AND NOT isnan(l.value) ORDER BY l.value DESC LIMIT 5", [METRIC]).rows


# ---------------------------------------------------------------------- measuring


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def stats(xs: list[float]) -> tuple[float, float, float]:
    return min(xs), statistics.median(xs), max(xs)


def run(n_runs: int, steps: int, reps: int) -> dict:
    print(f"history bench: {n_runs} runs x {steps} steps, {reps} reps", file=sys.stderr)
    ws = ensure_history(n_runs, steps)
    out = ws / "outputs"
    shutil.rmtree(ws / ".evsys", ignore_errors=True)
    res: dict = {"runs": n_runs, "steps": steps, "reps": reps, "load": [os.getloadavg()[0]]}

    builds = []
    for r in range(reps + 1):
        shutil.rmtree(ws / ".evsys", ignore_errors=True)
        t = timed(lambda: open_index(ws))
        print(f"  full build {r}: {t:.2f} s", file=sys.stderr, flush=True)
        if r:
            builds.append(t)
    res["build"] = builds
    idx = Index(ws)
    res["index_mb"] = idx.db_path.stat().st_size / 1e6
    res["metric_rows"] = idx.query("SELECT count(*) FROM metrics").rows[0][0]

    time.sleep(2.1)  # let directories written a moment ago leave the "too recent" window
    idx.refresh()
    res["nothing_changed"] = [timed(idx.refresh) for _ in range(reps)]
    last = idx.last_refresh
    res["nothing_changed_dirs"] = last.dirs_checked if last else None

    rng = random.Random(1)
    added = []
    new_times = []
    try:
        for r in range(reps + 1):
            added.append(write_run(out, n_runs + r, steps, rng, time.time()))
            t = timed(idx.refresh)
            assert idx.last_refresh and idx.last_refresh.runs_added == 1, idx.last_refresh
            if r:
                new_times.append(t)
    finally:
        for d in added:
            shutil.rmtree(d, ignore_errors=True)
        idx.refresh()
    res["one_new_run"] = new_times

    expect = [round(v, 4) for v, _ in scan_top5(ws)]
    got_best = [round(r["value"], 4) for r in index_top5_best(idx)]
    got_sql = [round(v, 4) for _, v in index_top5_sql(idx)]
    assert expect == got_best == got_sql, (expect, got_best, got_sql)
    peers = make_peers(ws, n_runs, steps)
    best_t, sql_t, scan_t = [], [], []
    peer_t: dict[str, list[float]] = {p.name: [] for p in peers}
    for r in range(reps + 1):  # interleaved, so a noisy moment hits every contender
        b = timed(lambda: index_top5_best(idx))
        q = timed(lambda: index_top5_sql(idx))
        s = timed(lambda: scan_top5(ws))
        p = {}
        for peer in peers:
            p[peer.name], top = peer()
            assert top == expect, (peer.name, top, expect)
        print(f"  top-5 {r}: best {b * 1e3:.1f} ms, sql {q * 1e3:.1f} ms, scan {s:.2f} s"
              + "".join(f", {k.split()[0]} {v * 1e3:.1f} ms" for k, v in p.items()),
              file=sys.stderr, flush=True)
        if r:
            best_t.append(b)
            sql_t.append(q)
            scan_t.append(s)
            for name in p:
                peer_t[name].append(p[name])
    for peer in peers:
        peer.close()
    res["peer_versions"] = {peer.name: peer.version for peer in peers}
    res["top5_best"], res["top5_sql"], res["top5_scan"] = best_t, sql_t, scan_t
    res["connect"] = [timed(lambda: store.connect(str(idx.db_path), read_only=True).close())
                      for _ in range(reps)]
    res["ratio_best"] = [s / b for s, b in zip(scan_t, best_t)]
    res["ratio_sql"] = [s / q for s, q in zip(scan_t, sql_t)]
    res["peers"] = peer_t
    res["load"].append(os.getloadavg()[0])
    return res


# -------------------------------------------------------------------------- report


def ms(x: float) -> str:
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


FULL_SIZE = 10_000  # the targets are stated for this many runs


def row(name: str, xs: list[float], target: float | None = None, runs: int = FULL_SIZE) -> str:
    lo, mid, hi = stats(xs)
    tgt = "" if target is None else f"< {ms(target)}"
    verdict = "" if target is None else ("met" if mid <= target else
                                        f"missed by {ms(mid - target)}")
    if target is not None and runs < FULL_SIZE:
        verdict = f"(target is for {FULL_SIZE:,} runs) {verdict}"
    return f"| {name} | {ms(lo)} | {ms(mid)} | {ms(hi)} | {tgt} | {verdict} |"


def ratio_row(name: str, xs: list[float], target: float, runs: int = FULL_SIZE) -> str:
    lo, mid, hi = stats(xs)
    verdict = "met" if mid >= target else f"missed ({mid:.0f}x of {target:.0f}x)"
    if runs < FULL_SIZE:
        verdict = f"(target is for {FULL_SIZE:,} runs: the scan grows with the runs) {verdict}"
    return f"| {name} | {lo:.0f}x | {mid:.0f}x | {hi:.0f}x | >= {target:.0f}x | {verdict} |"


def section(res: dict, command: str) -> str:
    n = res["runs"]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## {TITLE}",
        "",
        f"{res['runs']:,} runs x {res['steps']} steps ({res['metric_rows']:,} metric rows, "
        f"index {res['index_mb']:.0f} MB); {res['reps']} repetitions after a warm-up. "
        f"`{command}`, {when}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"DuckDB {duckdb.__version__}; 1-minute load average {res['load'][0]:.1f} at the start, "
        f"{res['load'][1]:.1f} at the end (other work shares the machine). "
        "Figures as measured, not edited.",
        "",
        "| measurement | min | median | max | target | |",
        "|---|---|---|---|---|---|",
        row("full index build", res["build"]),
        row("refresh, nothing changed", res["nothing_changed"], TARGETS["nothing_changed"], n),
        row("refresh after one new run", res["one_new_run"], TARGETS["one_new_run"], n),
        row("top-5 by final val/val/pass@1: `Index.best`", res["top5_best"], TARGETS["top5"], n),
        row("top-5 by final val/val/pass@1: `Index.query` (SQL)", res["top5_sql"],
            TARGETS["top5"], n),
        row("(of which: opening + closing the read-only connection)", res["connect"]),
        row("top-5: plain-Python scan of every metrics.jsonl", res["top5_scan"]),
        ratio_row("scan / `Index.best` (pair by pair)", res["ratio_best"],
                  TARGETS["ratio_vs_scan"], n),
        ratio_row("scan / `Index.query` (pair by pair)", res["ratio_sql"],
                  TARGETS["ratio_vs_scan"], n),
    ]
    for name, xs in res["peers"].items():
        lines.append(row(f"top-5 through {name} {res['peer_versions'][name]}", xs))
        ratios = [p / b for p, b in zip(xs, res["top5_best"])]
        lo, mid, hi = stats(ratios)
        ok = "met" if mid > 1 else f"**missed**: MLflow is {1 / mid:.2f}x faster"
        lines.append(f"| {name.split()[0]} / `Index.best` (pair by pair) | {lo:.2f}x | {mid:.2f}x | "
                     f"{hi:.2f}x | > 1x (faster than MLflow) | {ok} |")
        ratios = [p / q for p, q in zip(xs, res["top5_sql"])]
        lo, mid, hi = stats(ratios)
        ok = "met" if mid > 1 else f"**missed**: MLflow is {1 / mid:.2f}x faster"
        lines.append(f"| {name.split()[0]} / `Index.query` (pair by pair) | {lo:.2f}x | {mid:.2f}x | "
                     f"{hi:.2f}x | > 1x (faster than MLflow) | {ok} |")
    if not res["peers"]:
        lines += ["", "MLflow was not measured: bench/.venv-peers is missing (`make bench-peers`)."]
    else:
        lines += ["", "MLflow's figure is the time `MlflowClient.search_runs(order_by=[\"metrics.`val/val/"
                  "pass_at_1` DESC\"], max_results=5)` takes inside a process where the client is already "
                  "made (MLflow refuses '@' in metric names, so `pass@1` is logged as `pass_at_1`); the "
                  "index's figures include opening and closing a DuckDB connection per query. Both return "
                  "the same five values (checked every repetition)."]
    lines += ["", "Each top-5 figure includes opening and closing a read-only DuckDB "
              "connection (the row above: DuckDB's own start-up). The nothing-changed refresh "
              f"stats {res['nothing_changed_dirs']:,} directories, reads no file and opens no "
              f"database; a refresh after one new run lists the folder of {n:,} runs again, "
              "reads the new run's files, writes one transaction and checkpoints.", ""]
    return "\n".join(lines)


def write_section(text: str) -> None:
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    lines = old.splitlines(keepends=True)
    start = next((i for i, l in enumerate(lines) if l.rstrip() == f"## {TITLE}"), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        new = "".join(lines[:start]) + text + ("\n" if end < len(lines) else "") + "".join(
            lines[end:])
    RESULTS.write_text(new if new.endswith("\n") else new + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--quick", action="store_true", help="1,000 runs")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    ap.add_argument("--section-out", type=Path, default=None,
                    help="write this benchmark's RESULTS.md section to FILE (used by bench/run.py)")
    args = ap.parse_args(argv)
    n = 1000 if args.quick else args.runs
    res = run(n, args.steps, max(1, args.reps))
    command = "bench/bench_history.py" + (" --quick" if args.quick else
                                                 f" --runs {n}" if n != 10_000 else "")
    text = section(res, command)
    print(text)
    if args.section_out is not None:
        args.section_out.write_text(text.rstrip("\n") + "\n")
    elif not args.no_write:
        write_section(text)
        print(f"updated {RESULTS.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
