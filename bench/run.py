"""Run every benchmark and rewrite bench/RESULTS.md from what ran (what `make bench` does).

    .venv/bin/python bench/run.py                 # full sizes
    .venv/bin/python bench/run.py --quick         # quick sizes (~15 minutes on 2 cores)
    .venv/bin/python bench/run.py --only B1,B2    # some of them (RESULTS.md still rewritten whole:
                                                  # the others' sections are kept from the old file)

Each benchmark runs in its own process with `--section-out`, so one failing does not lose the
others (its section then says that it failed, with the error's tail). Peers (TRL, MLflow) run
from bench/.venv-peers, which `make bench` sets up; without it their columns say so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# (id, title of its RESULTS.md section, script) in the order they run: B4 builds the history
# index that B5, B6 and B3 (`evsys runs`) read.
BENCHES = [
    ("B1", "B1 — SDFT step vs TRL", "bench_sdft.py"),
    ("B1s", "B1s — SDFT step scaling vs TRL", "bench_sdft.py --scaling"),
    ("B2", "B2 — sampling vs transformers generate", "bench_engine.py"),
    ("AB", "Engine changes, A/B", "bench_ab.py"),
    ("B4", "B4 — history at scale", "bench_history.py"),
    ("B5", "B5 — MCP latency", "bench_mcp.py"),
    ("B6", "B6 — ui page latency", "bench_ui.py"),
    ("B3", "B3 — start-up", "bench_startup.py"),
    ("GPU", "GPU check", "gpu_check.py"),
]
ORDER = ["B1", "B1s", "AB", "B2", "B3", "B4", "B5", "B6", "GPU"]  # in RESULTS.md


def old_sections() -> dict[str, str]:
    if not common.RESULTS.exists():
        return {}
    out: dict[str, str] = {}
    cur = None
    for line in common.RESULTS.read_text().splitlines(keepends=True):
        if line.startswith("## "):
            cur = line[3:].strip()
            out[cur] = ""
        if cur is not None:
            out[cur] += line
    return out


def old_header() -> str:
    """RESULTS.md up to its first section."""
    text = common.RESULTS.read_text()
    cut = text.find("\n## ")
    return text if cut < 0 else text[:cut + 1]


def later(args, ran: list[tuple[str, float, int]], new_header: str) -> str:
    """A paragraph for a run of some benchmarks (--only): which sections it rewrote, when,
    on what machine and under what load; the others stay the earlier run's."""
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = next((line for line in new_header.splitlines() if line.startswith("Machine:")), "")
    done = ", ".join(f"{bid} ({secs / 60:.1f} min, {'ok' if rc == 0 else f'failed ({rc})'})"
                     for bid, secs, rc in ran)
    return (f"Then `bench/run.py{' --quick' if args.quick else ''} --only {args.only}` on {when} "
            f"rewrote {done}; every other section is still the run above's. {machine}\n")


def header(args, ran: list[tuple[str, float, int]], load_start: float, load_end: float) -> str:
    import torch

    f = common.machine_facts(torch)
    threads = args.threads or common.usable_cores()
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "make bench" + ("-quick" if args.quick else "") if not args.only else \
        f"bench/run.py{' --quick' if args.quick else ''} --only {args.only}"
    peers = "bench/.venv-peers (TRL, MLflow)" if common.peers_available() else "no peers venv"
    lines = [
        "# Benchmark results", "",
        f"Written by `{cmd}` on {when}; every figure below is what that invocation measured, "
        "not edited by hand. Conventions: one warm-up, then >= 5 measured repetitions, shown as "
        "min / median / max; ratios to a peer are computed pair by pair (repetition i against "
        "repetition i); the 1-minute load average is given with each table, because other work "
        "shares this machine.", "",
        f"Machine: {f['cpu']} ({f['simd']}), {f['cores']} cores ({f['usable_cores']} usable), "
        f"{f['mem_gb']} GiB; Python {f['python']}, torch {f['torch']}, {threads} torch threads "
        f"for the engine benchmarks; {peers}. 1-minute load average {load_start:.2f} at the start "
        f"of the suite, {load_end:.2f} at the end.", "",
        "| benchmark | wall time | exit |", "|---|---|---|",
    ]
    for bid, secs, rc in ran:
        lines.append(f"| {bid} | {secs / 60:.1f} min | {'ok' if rc == 0 else f'failed ({rc})'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", default=None, help="comma-separated ids, e.g. B1,B4")
    args = ap.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None

    old = old_sections()
    sections: dict[str, str] = {}
    ran: list[tuple[str, float, int]] = []
    load_start = common.load1()
    with tempfile.TemporaryDirectory(prefix="evsys-bench-") as tmp:
        for bid, title, script in BENCHES:
            if only and bid not in only:
                if title in old:
                    sections[bid] = old[title]
                continue
            out = Path(tmp) / f"{bid}.md"
            script, *extra = script.split()
            cmd = [sys.executable, str(common.BENCH / script), *extra, "--reps", str(args.reps),
                   "--section-out", str(out)]
            if args.quick:
                cmd.append("--quick")
            if args.threads and bid in ("B1", "B1s", "B2", "AB"):
                cmd += ["--threads", str(args.threads)]
            common.log(f"== {bid}: {' '.join(cmd[1:])}")
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=common.ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            secs = time.perf_counter() - t0
            ran.append((bid, secs, proc.returncode))
            if proc.returncode == 0 and out.exists():
                sections[bid] = out.read_text()
            else:
                tail = (proc.stderr or "").strip().splitlines()[-15:]
                sections[bid] = (f"## {title}\n\n**Failed** (exit {proc.returncode}) in this run; the error's "
                                 "tail:\n\n```\n" + "\n".join(tail) + "\n```\n")
            common.log(f"== {bid}: {'ok' if proc.returncode == 0 else 'FAILED'} in {secs / 60:.1f} min")
            sys.stderr.write(proc.stderr[-3000:] if proc.returncode else "")
    text = header(args, ran, load_start, common.load1())
    if only and common.RESULTS.exists():  # keep the full run's header: its sections are kept
        text = old_header() + later(args, ran, text)
    for bid in ORDER:
        if bid in sections:
            text += "\n" + sections[bid].rstrip("\n") + "\n"
    common.RESULTS.write_text(text)
    common.log(f"wrote {common.RESULTS.relative_to(common.ROOT)}")
    return 0 if all(rc == 0 for _, _, rc in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
