"""The job engine: training runs and score runs as detached processes.

    Engine(workspace, max_concurrent=None)
      .launch_run(config, overrides, run_name, seeds=None) -> Launch (returns once the child is started;
                                                    with seeds, one process runs the replicate group)
      .launch_score(benchmark, model=|run=, ...)    -> Launch
      .status(run_dir)                              -> dict     (run.json, elapsed, latest metrics)
      .poll(run_dir) / .wait(run_dir, timeout_s)    -> (dict, finished) / dict
      .cancel(run_dir, grace_s, on_progress)        -> dict
      .logs(run_dir, offset, max_bytes)             -> dict     (train.log paged by bytes)
      .resolve(ref)                                 -> (run id, run dir)

`evsys launch|status|wait|cancel|logs` (jobs/cli.py) and the MCP tools are both thin faces
over these methods. A job's state lives only in its run directory (run.json, train.log), so a
restarted caller sees it exactly as the one that launched it did; see docs/design.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from evsys_core import rundir, safefs
from evsys_core.errors import ConfigError, EvsysError, RunError, UsageError
from evsys_core.jobs import pages, process
from evsys_core.jobs.record import SCORE, TRAIN, kind_of, new_record, shown_path

KILL_WAIT_S = 5.0
LATEST_METRICS_BYTES = 256 * 1024
Progress = Callable[[float, float | None, str], None]


@dataclass
class Launch:
    run_id: str
    run_name: str
    run_dir: Path
    pid: int
    kind: str
    config_path: Path | None
    log_path: Path
    seed: int | None = None
    group_id: str | None = None      # a replicate group's launch: every replicate, in run order
    group_name: str | None = None
    replicates: list["Launch"] = field(default_factory=list)

    def as_dict(self, workspace: Path) -> dict[str, Any]:
        return {**self._plain(workspace), "replicates": [r._plain(workspace) for r in self.replicates]}

    def _plain(self, workspace: Path) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "replicates"}  # (it holds self)
        for k in ("run_dir", "config_path", "log_path"):
            d[k] = shown_path(d[k], workspace)
        return {**d, "status": rundir.ACTIVE}


def _write_provisional(run_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Create run.json unless the child already wrote its own (link(2) never replaces a file,
    so the child's record always wins); returns the record in force."""
    tmp = run_dir / f".run.json.provisional.{os.getpid()}.{threading.get_ident()}.tmp"
    safefs.write_new(tmp, json.dumps(info, indent=2, default=str) + "\n", run_dir)
    try:
        os.link(tmp, run_dir / rundir.RUN_JSON)
        return info
    except FileExistsError:
        return rundir.read_run_json(run_dir) or info
    finally:
        tmp.unlink(missing_ok=True)


class Engine:
    def __init__(self, workspace: Path | str, max_concurrent: int | None = None,
                 index: Callable[[], contextlib.AbstractContextManager] | None = None) -> None:
        self.workspace = Path(workspace).resolve()
        self.max_concurrent = max_concurrent
        self._index_cm = index
        self.lock = threading.Lock()
        self._children: dict[int, subprocess.Popen] = {}
        self.launched: dict[str, Path] = {}  # run id -> run dir, for jobs not yet indexed

    # --- the index, resolving runs ------------------------------------------------------

    @contextlib.contextmanager
    def _index(self) -> Iterator[Any]:
        if self._index_cm is not None:
            with self._index_cm() as idx:
                yield idx
            return
        from evsys_core.history.index import open_index

        yield open_index(self.workspace)

    def resolve(self, ref: str) -> tuple[str, Path]:
        """(run id, run dir) for a run id, a unique prefix of its id or name, or its directory."""
        if ref in self.launched:
            return ref, self.launched[ref]
        p = Path(ref)
        p = p if p.is_absolute() else self.workspace / p
        if ("/" in ref or os.path.isdir(p)) and (p / rundir.RUN_JSON).is_file():
            info = rundir.read_run_json(p)
            return str(info.get("id") or rundir.inferred_run_id(p)), p
        with self._index() as idx:
            row = idx.resolve(ref)
        where = Path(row.get("path") or row.get("run_dir") or ref)
        return str(row["run_id"]), where if where.is_absolute() else self.workspace / where

    # --- launching ----------------------------------------------------------------------

    def launch_run(self, config: Path | str, overrides: Sequence[str] = (), run_name: str | None = None,
                   check: Callable[[Any], None] | None = None,
                   deep_check: Callable[[Path, Sequence[str]], None] | None = None,
                   seeds: Sequence[int] | str | None = None) -> Launch:
        """Check the config as `evsys run` would (loading it once), claim a run directory and
        start `evsys run CONFIG --run-dir DIR` detached. `check(cfg)` may refuse it first;
        `deep_check(config, overrides)` replaces the in-process deep check (`runner.plan`, which
        runs the config's own code) for a caller that must not run it (the MCP server).

        With `seeds` it launches one replicate group (replicates.py): a directory
        `<run_name>-s<seed>` and a provisional run.json per seed, and one process running
        `evsys run CONFIG --seeds ... --group-id G --run-dir D0 --run-dir D1 ...`, the seeds
        one after another. It takes one place under max_concurrent (one process); the Launch
        is the first replicate's, with every replicate in `replicates`."""
        from evsys_core import runner
        from evsys_core.config import load_config
        from evsys_core.replicates import new_group_id, parse_seeds

        config = Path(config)
        try:
            if seeds is not None:
                seeds = parse_seeds(seeds)
                if any(o.split("=", 1)[0].strip() == "seed" for o in overrides):
                    raise UsageError("an override sets seed and seeds sets it too; give the seeds alone")
            cfg = load_config(config, overrides, self.workspace)
            if check is not None:
                check(cfg)
            if deep_check is None:
                checked = runner.plan(cfg)
                output_dir, default_name = checked.output_dir, checked.run_name
            else:
                deep_check(Path(getattr(cfg, "source_path", None) or config), overrides)
                output_dir, default_name = runner.output_of(cfg)
                runner.check_writable(output_dir, self.workspace)  # this process writes the run's first files there
        except ConfigError as e:
            raise ConfigError(f"{shown_path(config, self.workspace)} is not valid, nothing was launched:\n{e}",
                              e.issues) from None
        except EvsysError as e:
            raise type(e)(f"{e}; nothing was launched") from None
        config = Path(getattr(cfg, "source_path", None) or config).resolve()  # where load_config found it
        args = ["run", str(config), "--workspace", str(self.workspace)]
        for item in overrides:
            args += ["--set", item]
        record = dict(kind=TRAIN, algorithm=cfg.algorithm.kind, model=cfg.model.name, backend=cfg.backend.kind,
                      max_steps=getattr(cfg.algorithm.params, "max_steps", None),
                      config_path=shown_path(config, self.workspace))
        name = run_name or default_name
        if seeds is None:
            return self._start(TRAIN, output_dir, [name], args, [record], config)
        from evsys_core.replicates import replicate_name

        group = {"group_id": new_group_id(), "group_name": name}
        args += ["--seeds", ",".join(map(str, seeds)), "--group-id", group["group_id"], "--run-name", name]
        launches = self._start(TRAIN, output_dir, [replicate_name(name, s) for s in seeds], args,
                               [{**record, **group} for _ in seeds], config, every=True)
        for launch, seed in zip(launches, seeds):
            launch.seed, launch.group_id, launch.group_name = seed, group["group_id"], name
        first = launches[0]
        first.replicates = launches
        return first

    def launch_score(self, benchmark: Path | str, deep_check: Callable[[Path], None] | None = None,
                     **options: Any) -> Launch:
        """Check a score as `evsys score` would and start it detached (kind "score").
        `deep_check(benchmark_dir)`: a caller that must not import the benchmark's python
        verifiers (the MCP server) checks them with it instead (in a child process)."""
        from evsys_core.benchmarks.cli import plan_score, score_record

        plan = plan_score(self.workspace, benchmark, import_code=deep_check is None, **options)
        if deep_check is not None and any(t.verifier.kind == "python" for t in plan.tasks):
            deep_check(plan.bench_dir)
        args = ["score", "--benchmark", str(plan.bench_dir), "--workspace", str(self.workspace)]
        for key, value in options.items():
            if value is None:
                continue
            flag = "--" + key.replace("_", "-")
            args += [flag, *map(str, value)] if isinstance(value, (list, tuple)) else [flag, str(value)]
        if not options.get("output"):
            args += ["--output", str(plan.out_dir)]
        return self._start(SCORE, plan.out_dir, [plan.dir_name], args, [{}], None,
                           record_of=lambda d, pid: score_record(plan, d, pid))

    def _start(self, kind: str, output_dir: Path, names: list[str], args: list[str],
               records: list[dict[str, Any]], config: Path | None,
               record_of: Callable[[Path, int], dict[str, Any]] | None = None, every: bool = False) -> Any:
        """Claim one run directory per name, start ONE process naming them all (`--run-dir`
        each; its output goes to the first one's train.log) and write each a provisional
        run.json owned by it. The first Launch, or (`every`) all of them."""
        with self._capacity_lock():
            self.check_capacity(kind)
            dirs: list[Path] = []
            try:
                for name in names:
                    dirs.append(rundir.claim_run_dir(output_dir, name, self.workspace))
                run_dirs = [x for d in dirs for x in ("--run-dir", str(d))]
                proc = process.spawn(process.evsys_command(*args, *run_dirs), dirs[0], self.workspace)
            except BaseException:
                for d in dirs:  # nothing started: leave no claimed directory behind
                    with contextlib.suppress(OSError):
                        (d / rundir.TRAIN_LOG).unlink(missing_ok=True)
                        d.rmdir()
                raise
            self._children[proc.pid] = proc
            launches = []
            for run_dir, record in zip(dirs, records):
                info = record_of(run_dir, proc.pid) if record_of else new_record(run_dir, pid=proc.pid, **record)
                info = _write_provisional(run_dir, {**info, "provisional": True})
                run_id = str(info["id"])
                self.launched[run_id] = run_dir
                launches.append(Launch(run_id, run_dir.name, run_dir, proc.pid, kind, config,
                                       run_dir / rundir.TRAIN_LOG))
        return launches if every else launches[0]

    @contextlib.contextmanager
    def _capacity_lock(self) -> Iterator[None]:
        """One launch at a time in this process and across processes (`evsys launch` beside a server)."""
        with self.lock:
            lock_dir = self.workspace / ".evsys"
            try:
                lock_dir.mkdir(exist_ok=True)
                if lock_dir.is_symlink():  # never create files through a link planted in the workspace
                    raise OSError(f"{lock_dir} is a symlink")
                fd = os.open(lock_dir / "launch.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError:
                fd = None  # a read-only workspace still launches (the in-process lock holds)
            try:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                if fd is not None:
                    os.close(fd)

    def reap(self) -> None:
        """Collect the exit of children this engine started (no zombies)."""
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]

    def active(self, kind: str | None = None) -> list[dict[str, Any]]:
        """run.json of every running job (of `kind`) with a live process."""
        self.reap()
        candidates: list[Path] = list(self.launched.values())
        try:
            with self._index() as idx:
                rows = idx.runs(where="status = 'running'", limit=10_000, kind=None)
            candidates += [Path(r["path"]) if Path(r["path"]).is_absolute() else self.workspace / r["path"]
                           for r in rows if r.get("path")]
        except EvsysError:
            pass
        seen: set[Path] = set()
        out = []
        for d in candidates:
            d = d.resolve()
            if d in seen:
                continue
            seen.add(d)
            info = rundir.read_run_json(d)
            if info.get("status") == rundir.ACTIVE and (kind is None or kind_of(info) == kind):
                out.append({**info, "_dir": d})
        return out

    def check_capacity(self, kind: str) -> None:
        if self.max_concurrent is None:
            return
        active = self.active(kind)
        processes = {(a.get("pid"), a.get("pid_started")) for a in active}  # a group's replicates share one
        if len(processes) >= self.max_concurrent:
            what = "score run" if kind == SCORE else "run"
            names = ", ".join(f"{a.get('id')} ({a.get('name')}, pid {a.get('pid')})" for a in active)
            raise RunError(f"{len(processes)} {what}(s) already running, the limit is {self.max_concurrent}: {names}; "
                           "wait for one to finish (`evsys wait`) or cancel one (`evsys cancel`) first")

    # --- following a job ----------------------------------------------------------------

    def status(self, run_dir: Path) -> dict[str, Any]:
        """run.json, read as the index reads it, with elapsed time, the latest value of each
        metric, and the log's last lines when the job failed."""
        self.reap()
        info = rundir.read_run_json(run_dir)
        if not info:
            raise RunError(f"{shown_path(run_dir, self.workspace)}/run.json is missing or unreadable; "
                           "the run has not started")
        if info.get("provisional") and info.get("status") != rundir.ACTIVE:
            info = self._failed_before_start(run_dir, info)
        started = _num(info.get("started_at")) or _num(info.get("created_at"))
        ended = _num(info.get("ended_at"))
        tail: list[str] = []
        if info.get("status") in ("failed", "interrupted") and (run_dir / rundir.TRAIN_LOG).is_file():
            tail, _ = pages.tail_lines(run_dir / rundir.TRAIN_LOG, 20, max_line_chars=500)
        return {
            **info, "kind": kind_of(info), "run_dir": shown_path(run_dir, self.workspace),
            "elapsed_s": round((ended or time.time()) - started, 1) if started else None,
            "latest_metrics": self.latest_metrics(run_dir), "log_tail": tail,
        }

    def _failed_before_start(self, run_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
        """The child died before it took the directory over (bad data, an import error, ...)."""
        last = ""
        if (run_dir / rundir.TRAIN_LOG).is_file():
            lines = [ln for ln in pages.tail_lines(run_dir / rundir.TRAIN_LOG, 5)[0] if ln.strip()]
            last = lines[-1] if lines else ""
        if info.get("group_id") and not last:  # a replicate whose turn never came
            info.update(status="interrupted", provisional=False, ended_at=info.get("ended_at") or time.time(),
                        error="the replicate group's process ended before this replicate's turn (cancelled, "
                              "or an earlier replicate was interrupted); the first replicate's train.log has "
                              "its output")
        else:
            info.update(status="failed", provisional=False, ended_at=info.get("ended_at") or time.time(),
                        error=f"the job exited before it started: {last[:500]} (its log has the whole output)")
        rundir.write_json_atomic(run_dir / rundir.RUN_JSON, info, run_dir)
        return info

    @staticmethod
    def latest_metrics(run_dir: Path) -> dict[str, Any]:
        path = run_dir / rundir.METRICS
        if not path.is_file():
            return {}
        data, _ = pages.read_tail_bytes(path, LATEST_METRICS_BYTES)
        latest: dict[str, Any] = {}
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break
            try:
                row = json.loads(raw)
            except (ValueError, RecursionError):
                continue
            if isinstance(row, dict) and isinstance(row.get("metrics"), dict):
                latest.update(row["metrics"])
        return latest

    def poll(self, run_dir: Path) -> tuple[dict[str, Any], bool]:
        """(status, finished): finished once the status is final and the job has written its
        summary or its process is gone (run.json turns final a moment before summary.md)."""
        st = self.status(run_dir)
        done = st.get("status") in rundir.FINAL_STATUSES and (
            (run_dir / rundir.SUMMARY).exists() or not rundir.run_alive(st))
        return st, done

    @staticmethod
    def progress_of(st: dict[str, Any]) -> tuple[float, float | None, str]:
        step = _num(st.get("step")) or 0.0
        total = _num(st.get("max_steps"))
        unit = "tasks" if st.get("kind") == SCORE else "step"
        shown = f"{int(step)}/{int(total)}" if total else f"{int(step)}"
        return step, total or None, f"{st.get('name')}: {st.get('status')}, {unit} {shown}"

    def wait(self, run_dir: Path, timeout_s: float, poll_s: float = 1.0,
             on_progress: Progress | None = None) -> dict[str, Any]:
        start = time.monotonic()
        while True:
            st, done = self.poll(run_dir)
            waited = time.monotonic() - start
            if done or waited >= timeout_s:
                return wait_result(st, not done, waited, timeout_s)
            if on_progress is not None:
                on_progress(*self.progress_of(st))
            time.sleep(min(poll_s, max(0.0, timeout_s - waited)))

    # --- stopping a job -----------------------------------------------------------------

    def cancel(self, run_dir: Path, grace_s: float = 30.0, poll_s: float = 0.5,
               on_progress: Progress | None = None) -> dict[str, Any]:
        """SIGTERM the job (it stops after the current step, with a final checkpoint), SIGKILL
        after `grace_s`; never a process that `process.identify` cannot prove is the job."""
        info = rundir.read_run_json(run_dir)
        run_id = str(info.get("id") or rundir.inferred_run_id(run_dir))
        target = process.identify(info, run_dir) if info.get("status") == rundir.ACTIVE else None
        if target is None:
            status = rundir.read_run_json(run_dir).get("status")
            return {"run_id": run_id, "status": status, "was_running": False, "signal": None,
                    "message": f"run {run_id} is not running (status {status}); nothing to cancel"}
        sent_at = time.time()
        process.send(target, signal.SIGTERM)
        used = "SIGTERM"
        if not self._wait_gone(target, grace_s, poll_s, on_progress, "stopping after its current step"):
            process.send(target, signal.SIGKILL)
            used = "SIGKILL"
            if not self._wait_gone(target, KILL_WAIT_S, poll_s, on_progress, "killed, waiting for it to exit"):
                raise RunError(f"run {run_id} (pid {target.pid}) survived SIGKILL; check the machine")
        process.kill_group_leftovers(target)
        info = rundir.read_run_json(run_dir)
        ended = _num(info.get("ended_at")) or 0
        if info.get("status") == rundir.ACTIVE or (info.get("status") == "failed" and ended >= sent_at):
            info.update(status="interrupted", ended_at=info.get("ended_at") or time.time(),
                        error=f"cancelled ({used})", provisional=False)
            rundir.write_json_atomic(run_dir / rundir.RUN_JSON, info, run_dir)
        return {"run_id": run_id, "status": info.get("status"), "was_running": True, "signal": used,
                "message": f"stopped with {used} after {time.time() - sent_at:.1f} s; its files and "
                           "checkpoints are kept"}

    def _wait_gone(self, target: process.Target, limit_s: float, poll_s: float,
                   on_progress: Progress | None, what: str) -> bool:
        start = time.monotonic()
        while time.monotonic() - start < limit_s:
            self.reap()
            if process.gone(target):
                return True
            if on_progress is not None:
                waited = time.monotonic() - start
                on_progress(waited, limit_s, f"pid {target.pid} {what}: {waited:.0f}/{limit_s:g} s")
            time.sleep(poll_s)
        self.reap()
        return process.gone(target)

    # --- logs ---------------------------------------------------------------------------

    def logs(self, run_dir: Path, offset: int | None = None, max_bytes: int = 20_000,
             path: Path | None = None) -> dict[str, Any]:
        """A page of the job's train.log: from byte `offset`, or (None) its last `max_bytes`."""
        path = path or run_dir / rundir.TRAIN_LOG
        if not path.is_file():
            raise RunError(f"run {run_dir.name} has no train.log (only launched jobs have one); "
                           "its status and summary still tell how it went")
        page = pages.read_bytes(path, offset, max_bytes)
        return {"path": shown_path(run_dir / rundir.TRAIN_LOG, self.workspace), "text": page.text,
                "offset": page.offset, "next_offset": page.next_offset, "size": page.size}


def wait_result(st: dict[str, Any], timed_out: bool, waited: float, timeout_s: float) -> dict[str, Any]:
    if timed_out:
        message = (f"still {st.get('status')} after {timeout_s:g} s; wait again to keep waiting, "
                   "or cancel it")
    else:
        message = f"run {st.get('status')} after waiting {waited:.0f} s"
    return {**st, "timed_out": timed_out, "waited_s": round(waited, 1), "message": message}


def _num(v: Any) -> float | None:
    import math

    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None
