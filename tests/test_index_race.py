"""Deleting `.evsys/` while several evsys commands run at once: they rebuild, none fails.

Real processes (`evsys runs`, `query`, `show`, `best`), the folder removed with `rm -rf`
semantics (shutil.rmtree) at random moments while they work, several times a round. Each
command must exit 0 with a complete answer: all the runs, not an index caught half-built.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from history_fixtures import config_yaml, make_run, train_rows

N_RUNS = 80
COMMANDS = [
    ["runs", "--json"],
    ["query", "select count(*) as n from runs", "--json"],
    ["show", "r1", "--json"],
    ["best", "val/val/pass@1", "--limit", "1000", "--json"],
]


def _complete(argv: list[str], out: str) -> bool:
    data = json.loads(out)
    if argv[0] == "runs":
        return len(data) == N_RUNS
    if argv[0] == "query":
        return data["rows"] == [[N_RUNS]]
    if argv[0] == "show":
        return data["run"]["name"] == "r1" and len(data["metrics"]) == 2
    return len(data) == N_RUNS


def test_deleting_the_index_folder_under_concurrent_commands_makes_them_rebuild(tmp_path: Path):
    ws = tmp_path / "ws"
    for i in range(N_RUNS):
        make_run(ws / "outputs", f"r{i}", rows=train_rows(30), config=config_yaml())
    rng = random.Random(12)
    failures: list[str] = []
    deleted = 0
    for _round in range(4):
        procs = [(argv, subprocess.Popen(
            [sys.executable, "-m", "evsys_core.cli", *argv, "--workspace", str(ws)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            for argv in COMMANDS + COMMANDS[:2]]
        todo = 3  # deletions this round, each once an index exists again
        start = time.monotonic()
        while todo and any(p.poll() is None for _, p in procs) and time.monotonic() - start < 120:
            if (ws / ".evsys" / "index.duckdb").exists():
                time.sleep(rng.uniform(0.0, 0.15))
                shutil.rmtree(ws / ".evsys", ignore_errors=True)
                deleted += 1
                todo -= 1
            time.sleep(0.005)
        for argv, p in procs:
            out, err = p.communicate(timeout=300)
            if p.returncode != 0 or not _complete(argv, out):
                failures.append(f"{argv}: exit {p.returncode}: {err.strip()[-300:]}")
    assert deleted >= 4  # the race really happened
    assert failures == []
    # and the index left behind is whole
    p = subprocess.run([sys.executable, "-m", "evsys_core.cli", "runs", "--json", "--workspace",
                        str(ws)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and len(json.loads(p.stdout)) == N_RUNS
