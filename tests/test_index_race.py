"""Deleting `.evsys/` while several evsys commands run at once: they rebuild, none fails.

Real processes (`evsys runs`, `query`, `show`, `best`) and the folder removed as `rm -rf`
does (shutil.rmtree). The first test makes the race certain: the commands wait on the index
lock (held here, as a long refresh would hold it), the folder is deleted, the lock released,
so every one of them wakes up holding a lock on a deleted file. The second deletes the folder
at random moments while the commands work. Each command must exit 0 with a complete answer:
all the runs, not an index caught half-built.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from history_fixtures import config_yaml, make_run, train_rows

N_RUNS = 150  # enough that a rebuild takes a while: deletions land mid-build
COMMANDS = [
    ["runs", "--json"],
    ["query", "select count(*) as n from runs", "--json"],
    ["show", "r1", "--json"],
    ["best", "val/val/pass@1", "--limit", "1000", "--json"],
]


def _complete(argv: list[str], out: str, n: int = N_RUNS) -> bool:
    data = json.loads(out)
    if argv[0] == "runs":
        return len(data) == n
    if argv[0] == "query":
        return data["rows"] == [[n]]
    if argv[0] == "show":
        return data["run"]["name"] == "r1" and len(data["metrics"]) == 2
    return len(data) == n


def _workspace(root: Path, n: int) -> Path:
    ws = root / "ws"
    for i in range(n):
        make_run(ws / "outputs", f"r{i}", rows=train_rows(40), config=config_yaml())
    return ws


def _start(ws: Path, argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "evsys_core.cli", *argv, "--workspace", str(ws)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("writers", [False, True], ids=["readers", "writers"])
def test_commands_waiting_on_the_lock_when_the_folder_is_deleted_rebuild(tmp_path, writers):
    ws = _workspace(tmp_path, 20)
    first = _start(ws, ["runs", "--json"])
    assert first.wait(timeout=300) == 0
    n = 20
    if writers:  # a new run: every command must refresh (and so write) before it reads
        make_run(ws / "outputs", "new", rows=train_rows(40), config=config_yaml())
        n = 21
    fd = os.open(ws / ".evsys" / "index.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a long refresh in another process would
    try:
        procs = [(argv, _start(ws, argv)) for argv in COMMANDS]
        for _, p in procs:  # each says so once it has waited 2 s for the lock
            line = p.stderr.readline()
            assert "waiting for another process updating the run index" in line, line
        shutil.rmtree(ws / ".evsys")
    finally:
        os.close(fd)  # release: they all wake up holding a lock on a deleted file
    for argv, p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, (argv, err)
        assert _complete(argv, out, n), (argv, out[:300])


def test_deleting_the_index_folder_under_concurrent_commands_makes_them_rebuild(tmp_path: Path):
    ws = _workspace(tmp_path, N_RUNS)
    rng = random.Random(12)
    failures: list[str] = []
    deleted = 0
    for _round in range(2):
        procs = [(argv, _start(ws, argv)) for argv in COMMANDS + COMMANDS[:2]]
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
