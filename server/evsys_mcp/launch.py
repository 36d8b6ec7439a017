"""Detached training runs: start, count, stop.

A run launched by the server is `python -m evsys_core.cli run CONFIG --run-dir DIR ...` in its
own session (so neither a cancelled MCP request nor the server's own exit reaches it), with
stdin closed and stdout+stderr appended to DIR/train.log. Its state lives in DIR/run.json, so
a restarted server sees it exactly as the old one did. Only `terminate_run` stops a run.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from evsys_core import rundir, safefs
from evsys_core.errors import RunError

log = logging.getLogger("evsys_mcp.launch")

KILL_WAIT_S = 5.0


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    # the child must import the same evsys_core as this server, installed or not
    import evsys_core

    root = str(Path(evsys_core.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def run_command(workspace: Path, config: Path, run_dir: Path, overrides: Iterable[str]) -> list[str]:
    cmd = [sys.executable, "-m", "evsys_core.cli", "run", str(config), "--run-dir", str(run_dir),
           "--workspace", str(workspace)]
    for item in overrides:
        cmd += ["--set", item]
    return cmd


def write_provisional_run_json(run_dir: Path, info: dict[str, Any]) -> bool:
    """Create run.json unless the child already wrote its own; never overwrites it.

    Uses link(2), which fails if the target exists, so the child's file always wins.
    """
    tmp = run_dir / f".run.json.provisional.{os.getpid()}.{threading.get_ident()}.tmp"
    safefs.write_new(tmp, json.dumps(info, indent=2, default=str) + "\n", run_dir)
    try:
        os.link(tmp, run_dir / rundir.RUN_JSON)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


class RunLauncher:
    """Spawns runs and keeps the server's own children reaped (no zombies)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._children: dict[int, tuple[subprocess.Popen, Path]] = {}
        self.launched: dict[str, Path] = {}  # run id -> run dir, for runs not yet indexed

    def reap(self) -> None:
        for pid, (proc, run_dir) in list(self._children.items()):
            code = proc.poll()
            if code is not None:
                del self._children[pid]
                if not (run_dir / "config.yaml").exists():
                    _mark_failed_before_start(run_dir, code)

    def active(self, candidates: Iterable[Path]) -> list[dict[str, Any]]:
        """run.json of every candidate (plus our own launches) that is running with a live pid."""
        self.reap()
        seen: set[Path] = set()
        out = []
        for d in [*candidates, *self.launched.values()]:
            d = Path(d).resolve()
            if d in seen:
                continue
            seen.add(d)
            info = rundir.read_run_json(d)
            if info.get("status") == rundir.ACTIVE:
                out.append({**info, "_dir": d})
        return out

    def spawn(self, workspace: Path, config: Path, run_dir: Path, overrides: list[str]) -> subprocess.Popen:
        cmd = run_command(workspace, config, run_dir, overrides)
        log_path = run_dir / rundir.TRAIN_LOG
        fd = safefs.open_fd(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, run_dir)
        try:
            os.write(fd, f"# evsys-mcp launched at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}: "
                         f"{shlex.join(cmd)}\n".encode())
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
                cwd=workspace, env=_child_env(), start_new_session=True, close_fds=True,
            )
        finally:
            os.close(fd)
        self._children[proc.pid] = (proc, run_dir)
        log.info("launched run in %s (pid %d)", run_dir, proc.pid)
        return proc


def _mark_failed_before_start(run_dir: Path, code: int) -> None:
    """The child exited before the runner took the directory over (bad data, import error, ...)."""
    info = rundir.read_run_json(run_dir)
    if not info or info.get("status") == "completed":
        return
    last = ""
    try:
        from .readers import tail_lines

        lines = [ln for ln in tail_lines(run_dir / rundir.TRAIN_LOG, 5)[0] if ln.strip()]
        last = lines[-1] if lines else ""
    except OSError:
        pass
    info.update(status="failed", ended_at=info.get("ended_at") or time.time(),
                error=f"the run exited with code {code} before training started: {last[:500]} "
                      "(see tail_log for the whole output)")
    rundir.write_json_atomic(run_dir / rundir.RUN_JSON, info, run_dir)


def _is_evsys_process(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no procfs: cannot check, trust run.json
    except OSError:
        return False
    return b"evsys" in cmdline


def _signal_run(pid: int, sig: int) -> None:
    """Signal the run's process group when it leads one of its own, else just the process."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    try:
        if pgid == pid and pgid != os.getpgrp():
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pid: int, launcher: RunLauncher, deadline: float) -> bool:
    while time.monotonic() < deadline:
        launcher.reap()
        if not rundir.pid_alive(pid):
            return True
        time.sleep(0.1)
    launcher.reap()
    return not rundir.pid_alive(pid)


def terminate_run(run_dir: Path, launcher: RunLauncher, grace_s: float) -> tuple[dict[str, Any], str | None]:
    """SIGTERM the run's process group, SIGKILL it after `grace_s`; returns (run.json, signal used)."""
    info = rundir.read_run_json(run_dir)
    pid = info.get("pid")
    if info.get("status") != rundir.ACTIVE or not rundir.pid_alive(pid):
        return info, None
    if pid == os.getpid() or pid == os.getppid():
        raise RunError(f"run {run_dir.name} runs inside this server (a score_benchmark in progress); "
                       "it cannot be cancelled on its own — wait for it to finish")
    if not _is_evsys_process(pid):
        raise RunError(
            f"run.json of {run_dir.name} names pid {pid}, which is no longer an evsys process "
            "(the run has ended and the pid was reused); nothing was killed"
        )
    try:
        leads_group = os.getpgid(pid) == pid and pid != os.getpgrp()
    except ProcessLookupError:
        leads_group = False
    sent_at = time.time()
    _signal_run(pid, signal.SIGTERM)
    used = "SIGTERM"
    if not _wait_gone(pid, launcher, time.monotonic() + grace_s):
        _signal_run(pid, signal.SIGKILL)
        used = "SIGKILL"
        if not _wait_gone(pid, launcher, time.monotonic() + KILL_WAIT_S):
            raise RunError(f"run {run_dir.name} (pid {pid}) survived SIGKILL; check the machine")
    # the group may hold children of the run (a verifier's command); leave none behind
    if leads_group:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    info = rundir.read_run_json(run_dir)
    ended = info.get("ended_at") or 0
    if info.get("status") == rundir.ACTIVE or (info.get("status") == "failed" and ended >= sent_at):
        info.update(status="interrupted", ended_at=info.get("ended_at") or time.time(),
                    error=f"cancelled with cancel_run ({used})")
        rundir.write_json_atomic(run_dir / rundir.RUN_JSON, info, run_dir)
    return info, used
