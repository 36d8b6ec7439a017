"""Deleting `.evsys/` while several evsys commands run at once: they rebuild, none fails.

Real processes (`evsys runs`, `query`, `show`, `best`) and the folder removed as `rm -rf`
does (shutil.rmtree). The fix has three parts, and the last two tests pin one each, by
stopping real processes at the moment that matters (no timing):
- a lock file deleted while a command waited on it is no lock: it locks the one now there
  (`test_a_command_woken_holding_a_deleted_lock_file_waits_for_the_one_now_there`);
- a writer whose index was deleted before its commit rolls back instead of committing beside
  the new index (`test_a_writer_whose_index_was_deleted_before_its_commit_leaves_the_new_index_alone`);
- a command whose index vanished under it starts over (both of those, and the first test).
The first test makes the race certain: the commands wait on the index lock (held here, as a
long refresh would hold it), the folder is deleted, the lock released, so every one of them
wakes up holding a lock on a deleted file. The second deletes the folder at random moments
while the commands work. Each command must exit 0 with a complete answer: all the runs, not
an index caught half-built.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
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


def _has_open(pid: int, inode: int) -> bool:
    """Whether process `pid` has a file of that inode open (Linux: /proc/PID/fd)."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.stat(f"/proc/{pid}/fd/{fd}").st_ino == inode:
                return True
        except OSError:
            continue
    return False


def test_a_command_woken_holding_a_deleted_lock_file_waits_for_the_one_now_there(tmp_path):
    """After `rm -rf .evsys`, another process takes the new lock file; a command that was waiting
    on the old one must wait on the new one too, never build an index while the other holds it."""
    ws = _workspace(tmp_path, 20)
    assert _start(ws, ["runs", "--json"]).wait(timeout=300) == 0
    make_run(ws / "outputs", "new", rows=train_rows(40), config=config_yaml())  # it must write
    old = os.open(ws / ".evsys" / "index.lock", os.O_RDWR)
    fcntl.flock(old, fcntl.LOCK_EX)
    try:
        cmd = _start(ws, ["runs", "--json"])
        line = cmd.stderr.readline()
        assert "waiting for another process updating the run index" in line, line
        shutil.rmtree(ws / ".evsys")
        (ws / ".evsys").mkdir()
        new = os.open(ws / ".evsys" / "index.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(new, fcntl.LOCK_EX)  # as a process started after the deletion would
    finally:
        os.close(old)  # the command wakes up holding a lock on the deleted file
    try:
        inode = os.fstat(new).st_ino
        while True:  # until it has opened the new lock file (to wait on it) or gone on without it
            waits = _has_open(cmd.pid, inode)
            built = (ws / ".evsys" / "index.duckdb").exists()  # checked after: it builds before it reads
            assert not built and cmd.poll() is None, "it built an index while another process held the lock"
            if waits:
                break
            time.sleep(0.01)
    finally:
        os.close(new)
    out, err = cmd.communicate(timeout=300)
    assert cmd.returncode == 0, err
    assert len(json.loads(out)) == 21


HOLD_AT_COMMIT = textwrap.dedent("""
    import json, os, sys, time
    from evsys_core.history import refresh
    from evsys_core.history.index import Index
    def wait_for(path):
        while not os.path.exists(path):
            time.sleep(0.01)
    apply, prepare, snap, locked = (refresh.Refresher._apply, Index._prepare, refresh.Refresher.snapshot,
                                    Index._refresh_locked)
    def hold():
        open({name!r} + ".held", "w").close()
        wait_for({name!r} + ".go")
    def before_commit(self, *a, **k):  # the refresh's writes are done, its commit comes next
        apply(self, *a, **k)
        hold()
    def before_prepare(self, *a, **k):  # the database file is open, nothing written yet
        hold()
        return prepare(self, *a, **k)
    def after_commit(self):  # committed, its connection still open
        open({name!r} + ".committed", "w").close()
        wait_for({name!r} + ".resume")
        return snap(self)
    def marked(self, *a, **k):  # committed or rolled back, and its connection closed
        try:
            return locked(self, *a, **k)
        finally:
            open({name!r} + ".done", "a").close()
    refresh.Refresher.snapshot, Index._refresh_locked = after_commit, marked
    if {at!r} == "commit":
        refresh.Refresher._apply = before_commit
    else:
        Index._prepare = before_prepare
    index = Index({ws!r})
    index.refresh()
    print(json.dumps(index.query("select count(*) from runs").rows))
""")


def _held_writer(ws: Path, name: Path, at: str) -> subprocess.Popen:
    """A process refreshing the index that stops until `name`.go exists, before its commit (`at`
    "commit") or before it writes a new index's schema ("prepare"), and after its commit (its
    connection open) until `name`.resume exists."""
    p = subprocess.Popen([sys.executable, "-c", HOLD_AT_COMMIT.format(ws=str(ws), name=str(name), at=at)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_file(Path(f"{name}.held"), p)
    return p


def _wait_file(path: Path, proc: subprocess.Popen, *alternatives: Path) -> None:
    """Until `path` (or an alternative) exists; `proc` must not end before it made one."""
    while not any(p.exists() for p in (path, *alternatives)):
        if proc.poll() is not None:  # it may have made the file just before it ended
            assert any(p.exists() for p in (path, *alternatives)), proc.communicate()
            return
        time.sleep(0.01)


def test_a_writer_whose_index_was_deleted_before_its_commit_leaves_the_new_index_alone(tmp_path):
    """Writer X is about to commit when `.evsys` is deleted; writer Y has begun the new index there.
    X must not commit: DuckDB would open (and lock) X's log beside Y's database, by its path, so
    Y's first commit would fail. Both must end with every run, the index reading cleanly."""
    ws = _workspace(tmp_path, 20)
    assert _start(ws, ["runs", "--json"]).wait(timeout=300) == 0
    make_run(ws / "outputs", "new", rows=train_rows(40), config=config_yaml())
    x = _held_writer(ws, tmp_path / "x", "commit")
    shutil.rmtree(ws / ".evsys")
    y = _held_writer(ws, tmp_path / "y", "prepare")  # the new index: its file made, nothing written yet
    (tmp_path / "x.go").touch()
    _wait_file(tmp_path / "x.committed", x, tmp_path / "x.done")  # X committed, or rolled back
    for step in ("go", "resume"):
        (tmp_path / f"y.{step}").touch()
    _wait_file(tmp_path / "y.done", y)  # Y committed (or failed to) with X as it is now
    (tmp_path / "x.resume").touch()
    for p in (x, y):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        assert json.loads(out) == [[21]], (out, err)
    after = subprocess.run([sys.executable, "-m", "evsys_core.cli", "query", "select count(*) as n from runs",
                            "--json", "--workspace", str(ws)], capture_output=True, text=True, timeout=300)
    assert after.returncode == 0 and json.loads(after.stdout)["rows"] == [[21]], after.stderr
    assert "warning" not in after.stderr, after.stderr  # nothing damaged, nothing rebuilt
