"""Tools over jobs (training runs and score runs): thin faces over `evsys_core.jobs.engine`,
adding only argument checks, workspace confinement and answer bounds."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from evsys_core.benchmarks.passk import METRIC_PATTERN
from evsys_core.jobs.engine import wait_result
from evsys_core.stats import format_metrics

from .. import budget, paths
from ..boundary import tool_boundary
from ..models import CancelResult, LaunchResult, LogPage, Replicate, RunStatus, WaitResult
from .base import Base, ConfigPath, RunRef

MAX_WAIT_S = 600
METRICS_CHARS = 12_000  # each of final_metrics and latest_metrics in a status
LOG_TAIL_CHARS = 8_000


class JobTools(Base):

    def _launched(self, launch: Any, what: str) -> LaunchResult:
        d = launch.as_dict(self.workspace)
        d["replicates"] = [Replicate(**{k: r[k] for k in ("seed", "run_id", "run_name", "run_dir")})
                           for r in d["replicates"]]
        if not launch.group_id:
            return LaunchResult(**d, message=f"{what}; call wait_for_run(run='{launch.run_id}') to follow it, "
                                             "tail_log to see its output, cancel_run to stop it")
        last = launch.replicates[-1].run_id
        return LaunchResult(**d, message=(
            f"{what} group {launch.group_name} ({len(launch.replicates)} seeds, one after another in one "
            f"process); wait_for_run(run='{last}') waits for the last seed, tail_log on a replicate shows its "
            f"output, cancel_run on any replicate stops the group; then compare_runs with "
            f"'{launch.group_name}' pools its replicates"))

    def _check_capacity_words(self, e: Exception) -> ToolError:
        return ToolError(f"{e} (the server's --max-concurrent-runs sets the limit)")

    @tool_boundary
    def launch_run(
        self,
        config_path: ConfigPath,
        overrides: Annotated[list[Annotated[str, Field(min_length=3, max_length=2000, pattern=r"^[A-Za-z_][\w.\[\]-]*=")]],
                             Field(max_length=50, description="KEY=VALUE overrides, e.g. "
                                   "['algorithm.params.learning_rate=3e-4']")] = [],  # noqa: B006
        run_name: Annotated[str | None, Field(max_length=100, description="name of the run directory "
                                              "(default: the config's run_name)")] = None,
        seeds: Annotated[str | None, Field(max_length=1_000, pattern=r"^\s*\d{1,9}(\s*,\s*\d{1,9}){0,99}\s*$",
                                           description=(
            "launch a replicate group instead: the config once per seed, e.g. '0,1,2' (at most 100 distinct "
            "seeds), one after another in one process; compare_runs and best_runs take the group's name"))] = None,
    ) -> LaunchResult:
        """Check a config as `evsys run` does (deep), start the run as a detached process and return at
        once with its id and directory (~400 characters; with seeds, plus ~150 a replicate). Refused while the
        server's run limit is reached (a group is one process: it takes one place)."""
        from evsys_core.errors import RunError

        cfg_path = paths.config_path(self.workspace, config_path, must_exist=True)
        for o in overrides:
            paths.check_text(o, "override", 2000)
        if run_name is not None:
            paths.run_name(run_name)
        try:
            launch = self.engine.launch_run(cfg_path, overrides, run_name,
                                            check=lambda cfg: self._confine_config(cfg, self._rel(cfg_path),
                                                                                   "launched"),
                                            deep_check=self._deep_check, seeds=seeds)
        except RunError as e:
            if "already running" in str(e):
                raise self._check_capacity_words(e) from None
            raise
        return self._launched(launch, "launched")

    def _deep_check(self, config: Path, overrides: Any) -> None:
        """validate_config(deep=true) in a child process; refuse the launch on any error."""
        report = self._validate(config, deep=True, overrides=list(overrides))
        if not report.ok:
            raise ToolError(f"{self._rel(config)} is not valid (deep check), nothing was launched:\n"
                            f"{self._issues_text(report)}\nfix the config (validate_config shows the same report)")

    def _deep_check_benchmark(self, bench: Path) -> None:
        """The benchmark's python verifiers imported in the deep check's child process (never in this
        one); refuse the score on any error."""
        report = self._validate(bench, deep=True)
        if not report.ok:
            raise ToolError(f"{self._rel(bench)} is not valid (deep check), nothing was scored:\n"
                            f"{self._issues_text(report)}\nfix its tasks or verifier modules "
                            f"(`evsys validate --deep {self._rel(bench)}` shows the same report)")

    def _status(self, st: dict[str, Any], run_id: str) -> RunStatus:
        final, cut_f = budget.metrics(st.get("final_metrics"), METRICS_CHARS)
        latest, cut_l = budget.metrics(st.get("latest_metrics"), METRICS_CHARS)
        note = f"{cut_f + cut_l} metrics left out; get_metrics pages through all" if cut_f or cut_l else None
        return RunStatus(
            run_id=budget.text(st.get("id"), 200) or run_id, name=budget.text(st.get("name"), 200),
            kind=budget.text(st.get("kind"), 20), status=budget.text(st.get("status"), 100),
            run_dir=st.get("run_dir") or "", pid=budget.integer(st.get("pid")), step=budget.integer(st.get("step")),
            max_steps=budget.integer(st.get("max_steps")), started_at=budget.num(st.get("started_at")),
            ended_at=budget.num(st.get("ended_at")), elapsed_s=budget.num(st.get("elapsed_s")),
            error=budget.text(self._shown(st.get("error")), 4_000), final_metrics=final,
            scores=format_metrics(final), latest_metrics=latest,
            log_tail=budget.lines([self._shown(x) for x in st.get("log_tail") or []], LOG_TAIL_CHARS), note=note)

    def _shown(self, text: Any) -> Any:
        """Text from a run's files with the workspace's own paths shown relative to it."""
        return text.replace(f"{self.workspace}{os.sep}", "") if isinstance(text, str) else text

    @tool_boundary
    def run_status(self, run: RunRef) -> RunStatus:
        """A run's status, step of max_steps (tasks scored of all, for a score run), elapsed time, error,
        latest metrics, and the log's last lines when it failed (under ~35,000 characters)."""
        run_id, run_dir = self._resolve(run)
        return self._status(self.engine.status(run_dir), run_id)

    @tool_boundary
    async def wait_for_run(
        self,
        run: RunRef,
        ctx: Context,
        timeout_s: Annotated[float, Field(gt=0, le=MAX_WAIT_S, description="at most 600 s; call again to wait longer")] = 300,
    ) -> WaitResult:
        """Wait until a run (or score run) ends or timeout_s passes, with progress notifications (step of
        total) meanwhile; answers as run_status does (under ~35,000 characters).

        A timeout is not an error: the result says timed_out=true with the status at that moment.
        Cancelling this call never stops the run.
        """
        run_id, run_dir = await anyio.to_thread.run_sync(self._resolve, run)
        start = time.monotonic()
        while True:
            st, done = await anyio.to_thread.run_sync(self.engine.poll, run_dir)
            waited = time.monotonic() - start
            if done or waited >= timeout_s:
                out = wait_result(st, not done, waited, timeout_s)
                message = out["message"].replace("wait again", "call wait_for_run again").replace(
                    "or cancel it", "or cancel_run to stop it")
                return WaitResult(**self._status(st, run_id).model_dump(), timed_out=out["timed_out"],
                                  waited_s=out["waited_s"], message=message)
            await _report(ctx, *self.engine.progress_of(st))
            await anyio.sleep(min(self.poll_s, max(0.0, timeout_s - waited)))

    @tool_boundary
    def tail_log(
        self,
        run: RunRef,
        offset: Annotated[int | None, Field(ge=0, le=10**12, description=(
            "byte offset to read from (a previous next_offset); default: the last max_bytes of the log"))] = None,
        max_bytes: Annotated[int, Field(ge=1, le=40_000, description="page size in bytes (at most 40000)")] = 10_000,
    ) -> LogPage:
        """A page of a launched run's train.log (its stdout and stderr), by bytes: the end by default
        (up to ~40,000 characters a page; next_offset reads on)."""
        from evsys_core import rundir

        run_id, run_dir = self._resolve(run)
        path = run_dir / rundir.TRAIN_LOG
        safe = paths.confined_file(self.workspace, path, "log") if path.exists() else path
        page = budget.page(lambda o, n: _Page(self.engine.logs(run_dir, o, n, path=safe)), offset, max_bytes)
        return LogPage(run_id=run_id, **page.d)

    @tool_boundary
    async def cancel_run(
        self,
        run: RunRef,
        ctx: Context,
        grace_s: Annotated[float | None, Field(gt=0, le=120, description=(
            "seconds to let it stop on its own (final checkpoint) before SIGKILL; default 30"))] = None,
    ) -> CancelResult:
        """Stop a running run or score run: SIGTERM (it stops after the current step with a final checkpoint),
        SIGKILL after grace_s; progress notifications while it stops. Only a process proved to be that run
        (pid, start time, command line naming its directory) is ever signalled.

        Its status becomes interrupted; its files stay. Cancelling a finished run changes nothing.
        Answers in ~200 characters.
        """
        _, run_dir = await anyio.to_thread.run_sync(self._resolve, run)
        grace = grace_s if grace_s is not None else self.cancel_grace_s

        def progress(done: float, total: float | None, message: str) -> None:
            try:
                anyio.from_thread.run(_report, ctx, done, total, message)
            except Exception:  # noqa: BLE001 - the client may be gone; the cancel goes on
                pass

        out = await anyio.to_thread.run_sync(
            lambda: self.engine.cancel(run_dir, grace, poll_s=min(0.5, self.poll_s), on_progress=progress))
        return CancelResult(**out)

    @tool_boundary
    def score_benchmark(
        self,
        benchmark: Annotated[str, Field(min_length=1, max_length=1024, description=(
            "benchmark directory holding tasks.jsonl, relative to the workspace"))],
        model: Annotated[str | None, Field(max_length=300, description=(
            "a base model to score (name or a model directory in the workspace); give this or run, not both"))] = None,
        run: Annotated[str | None, Field(max_length=1024, description=(
            "a finished training run whose final weights to score; give this or model, not both"))] = None,
        metrics: Annotated[list[Annotated[str, Field(pattern=METRIC_PATTERN)]] | None,
                           Field(max_length=10, description="e.g. ['pass@1', 'mean_score']; default the run's "
                                                            "own for this benchmark, else pass@1")] = None,
        num_samples: Annotated[int | None, Field(ge=1, le=64, description="samples per task (default: max k)")] = None,
    ) -> LaunchResult:
        """Score a base model (model) or a run's trained weights (run) on a benchmark, as a detached score run
        (kind score) that returns at once (~400 characters): follow it with wait_for_run (progress counts tasks),
        stop it with cancel_run; list_runs(kind='score') lists score runs."""
        if (model is None) == (run is None):
            raise ToolError("give exactly one of model (a base model name) or run (a finished training run)")
        bench = paths.resolve_in_workspace(self.workspace, benchmark, what="benchmark")
        if model is not None:
            paths.check_text(model, "model", 300)
            if model.startswith(("/", "~")) or ".." in Path(model).parts or not self._model_inside(model):
                raise ToolError(f"model {model!r}: give a model name or a path inside the workspace")
        run_dir = self._resolve(run)[1] if run is not None else None
        try:
            launch = self.engine.launch_score(bench, deep_check=self._deep_check_benchmark, model=model,
                                              run=str(run_dir) if run_dir else None,
                                              metrics=metrics, num_samples=num_samples)
        except Exception as e:
            if "already running" in str(e):
                raise self._check_capacity_words(e) from None
            raise
        return self._launched(launch, f"scoring {model or self._rel(run_dir)} on {self._rel(bench)}")


class _Page:
    """An engine log page as budget.page reads it."""

    def __init__(self, d: dict[str, Any]) -> None:
        self.d, self.text, self.offset = d, d["text"], d["offset"]


async def _report(ctx: Context, done: float, total: float | None, message: str) -> None:
    try:
        await ctx.report_progress(float(done), total, message)
    except Exception:  # noqa: BLE001 - a client that cannot take progress still gets the result
        pass
