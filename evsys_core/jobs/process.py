"""Processes of runs: start one detached, prove a pid is still that run, signal it.

A run's process is only ever signalled after `identify` has proved, from the live process
table (psutil), that the pid recorded in run.json is that run: the same pid, the same start
time (`pid_started`, clock ticks since boot as `rundir.owner` records it), and a command line
naming the run's own directory (`--run-dir DIR`, `--resume DIR`). The caller's own process,
its ancestors and its process group are never signalled, whatever run.json says.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import psutil

from evsys_core import rundir, safefs
from evsys_core.errors import RunError


def child_env() -> dict[str, str]:
    """The environment of a launched run: unbuffered output, the same evsys_core as ours."""
    import evsys_core

    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    root = str(Path(evsys_core.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def evsys_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "evsys_core.cli", *args]


def spawn(cmd: Sequence[str], run_dir: Path, cwd: Path) -> subprocess.Popen:
    """Start `cmd` in its own session (so neither the caller's exit nor a signal to the caller's
    group reaches it), stdin closed, stdout and stderr appended to RUN_DIR/train.log."""
    fd = safefs.open_fd(run_dir / rundir.TRAIN_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, run_dir)
    try:
        os.write(fd, f"# evsys launched at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}: "
                     f"{shlex.join(cmd)}\n".encode())
        return subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
                                cwd=cwd, env=child_env(), start_new_session=True, close_fds=True)
    finally:
        os.close(fd)


@dataclass
class Target:
    """A live process proved to be a run's own."""
    proc: psutil.Process
    leads_group: bool  # it leads a process group of its own (launched detached): signal the group

    @property
    def pid(self) -> int:
        return self.proc.pid


def _names_dir(proc: psutil.Process, run_dir: Path) -> bool:
    try:
        argv, cwd = proc.cmdline(), proc.cwd()
    except (psutil.Error, OSError):
        return False
    want = run_dir.resolve()
    for arg in argv:
        if not arg or "\x00" in arg or len(arg) > 4096:
            continue
        try:
            if (Path(cwd) / arg).resolve() == want:
                return True
        except (OSError, RuntimeError, ValueError):
            continue
    return False


def _protected() -> set[int]:
    """This process and its ancestors: never signalled."""
    me = psutil.Process()
    try:
        return {me.pid, *(p.pid for p in me.parents())}
    except psutil.Error:
        return {me.pid, os.getppid()}


def identify(info: dict[str, Any], run_dir: Path) -> Target | None:
    """The run's live process, or None when it has none; RunError when run.json names a live
    process that cannot be proved to be the run (nothing may be signalled then)."""
    pid = info.get("pid")
    name = info.get("name") or run_dir.name
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2**31:
        return None
    if pid in _protected():
        raise RunError(f"run {name}: run.json names pid {pid}, which is this process (or one of its "
                       "parents); nothing was signalled")
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.NoSuchProcess:
        return None
    except psutil.Error as e:
        raise RunError(f"run {name}: cannot inspect pid {pid} ({e}); nothing was signalled") from None
    started = info.get("pid_started")
    if not isinstance(started, int) or isinstance(started, bool):
        raise RunError(f"run {name}: run.json records no start time for pid {pid}, so the process cannot "
                       "be proved to be the run; nothing was signalled")
    if rundir.process_start_time(pid) != started:
        return None  # the run's process is gone and its pid was reused: not ours to signal
    if not _names_dir(proc, run_dir):
        raise RunError(f"run {name}: pid {pid} is no longer an evsys process for {run_dir.name} (its command "
                       "line does not name the run directory; a run started by hand with `evsys run CONFIG` "
                       "is stopped with Ctrl-C in its terminal); nothing was signalled")
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return None
    if pgid == os.getpgrp():
        raise RunError(f"run {name}: pid {pid} shares this process's group; nothing was signalled")
    return Target(proc, leads_group=pgid == pid)


def send(target: Target, sig: int) -> None:
    """Signal the run: its whole group when it leads one (a verifier's child goes too)."""
    try:
        if target.leads_group:
            os.killpg(target.pid, sig)
        else:
            target.proc.send_signal(sig)
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass


def gone(target: Target) -> bool:
    try:
        return not target.proc.is_running() or target.proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_group_leftovers(target: Target) -> None:
    """After the run itself is gone, leave none of its group behind."""
    if target.leads_group:
        try:
            os.killpg(target.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
