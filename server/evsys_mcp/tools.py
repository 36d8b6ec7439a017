"""The evsys-mcp tools: one small method each, over the same functions the `evsys` CLI uses.

Arguments are typed and bounded (pydantic checks them before a tool runs); paths are confined
to the workspace (`paths.py`); SQL is checked (`sqlguard.py`); every output is bounded; every
failure is a ToolError with a message the agent can act on (`boundary.py`).

Heavy modules (duckdb through the history index, torch through scoring) are imported inside
the tools, never at import time, so the server answers tools/list at once.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Iterator

import anyio
import anyio.to_thread
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from evsys_core import rundir, safefs
from evsys_core.benchmarks.passk import METRIC_PATTERN
from evsys_core.errors import ConfigError, EvsysError, RunError
from evsys_core.stats import format_metrics

from . import paths
from .boundary import tool_boundary
from .launch import RunLauncher, terminate_run, write_provisional_run_json
from .models import (
    CancelResult, CompareResult, ConclusionResult, LaunchResult, LogTail, MetricComparison,
    MetricPoint, MetricSeries, MetricsResult, QueryResult, RunList, RunRow, RunStatus,
    ScoreOutput, SummaryPage, ValidationReport, WaitResult, WriteConfigResult,
)
from .readers import read_page, read_tail_bytes, tail_lines
from .sqlguard import check_readonly_sql, check_where

MAX_WAIT_S = 600
MAX_YAML_CHARS = 200_000
MAX_CONCLUSION_CHARS = 20_000
MAX_CELL_CHARS = 2_000
MAX_QUERY_CHARS = 200_000
QUERY_TIMEOUT_S = 10.0
POLL_S = 1.0
MAX_ERROR_CHARS = 4_000   # run.json is a file anything may have written: bound what we echo
MAX_METRIC_KEYS = 500
MAX_SERIES = 50        # curves per get_metrics answer
MAX_TOTAL_POINTS = 10_000  # points per get_metrics answer, shared by its curves

RunRef = Annotated[str, Field(
    min_length=1, max_length=1024,
    description="a run id, a unique prefix of its id or name, or its directory relative to the workspace")]
ConfigPath = Annotated[str, Field(
    min_length=1, max_length=1024,
    description="a .yaml/.yml path relative to the workspace; a bare file name means experiments/<name>")]


def _time(v: Any) -> float | None:
    """Epoch seconds from a number, a datetime or an ISO-8601 string (the index's times)."""
    if isinstance(v, str):
        from datetime import datetime

        try:
            v = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            return None
    if hasattr(v, "timestamp") and callable(v.timestamp):
        try:
            return float(v.timestamp())
        except (OverflowError, OSError, ValueError):
            return None
    return _num(v)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return None if (isinstance(v, float) and not math.isfinite(v)) else float(v)


def _metrics_dict(d: Any, limit: int = MAX_METRIC_KEYS) -> dict[str, float | None]:
    """Metric name -> number, at most `limit` of them (names cut to 200 characters)."""
    if isinstance(d, str):
        try:
            d = json.loads(d)
        except (ValueError, RecursionError):
            return {}
    if not isinstance(d, dict):
        return {}
    out: dict[str, float | None] = {}
    for k, v in d.items():
        if len(out) >= limit:
            break
        out[str(k)[:200]] = _num(v)
    return out


def _text(v: Any, limit: int) -> str | None:
    """A run.json text field as a bounded string."""
    if v is None:
        return None
    v = v if isinstance(v, str) else str(v)
    return v if len(v) <= limit else v[:limit] + f"… [{len(v) - limit} more characters]"


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _jsonable(v: Any) -> Any:
    """A query cell as JSON, bounded."""
    if v is None or isinstance(v, (bool, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v[:100]]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in list(v.items())[:100]}
    text = v.hex() if isinstance(v, (bytes, bytearray)) else str(v)
    return text if len(text) <= MAX_CELL_CHARS else text[:MAX_CELL_CHARS] + "…"


def _downsample(points: list[tuple[int, float | None]], n: int) -> list[tuple[int, float | None]]:
    """At most n points, evenly spaced, always keeping the first and the last."""
    if len(points) <= n:
        return points
    if n == 1:
        return [points[-1]]
    idx = sorted({round(i * (len(points) - 1) / (n - 1)) for i in range(n)})
    return [points[i] for i in idx]


class EvsysTools:
    """State shared by the tools: the workspace, the run launcher, the index lock."""

    def __init__(self, workspace: Path, max_concurrent_runs: int = 1, poll_s: float = POLL_S,
                 cancel_grace_s: float = 30.0) -> None:
        self.workspace = workspace.resolve()
        self.max_concurrent_runs = max_concurrent_runs
        self.poll_s = poll_s
        self.cancel_grace_s = cancel_grace_s
        self.launcher = RunLauncher()
        self._index_lock = threading.Lock()
        self._score_lock = threading.Lock()

    # --- shared helpers -------------------------------------------------------------

    @contextlib.contextmanager
    def _index(self) -> Iterator[Any]:
        from evsys_core.history.index import open_index

        with self._index_lock:  # the index opens one connection per call; one call at a time here
            yield open_index(self.workspace)

    def _rel(self, p: Path | str) -> str:
        return paths.rel(self.workspace, Path(p))

    def _index_dir(self, where: str | None) -> str | None:
        """A run directory from the index, as tools report it. The index stores it
        workspace-relative, as its walk found it (no symlink followed), so it is shown as is:
        resolving it per row was ~0.2 ms a row; anything else goes through _rel."""
        if not where:
            return None
        p = Path(where)
        return where if not p.is_absolute() and ".." not in p.parts else self._rel(self.workspace / p)

    def _run_dir_of(self, row: dict[str, Any]) -> Path:
        where = row.get("run_dir") or row.get("path")
        if not where:
            raise RunError(f"the index has no directory for run {row.get('run_id')}")
        p = Path(where)
        p = p if p.is_absolute() else self.workspace / p
        return paths.confined_file(self.workspace, p, "run directory")

    def _resolve(self, run: str) -> tuple[str, Path]:
        """(run id, run dir) for a run reference; RunError lists candidates when ambiguous."""
        paths.check_text(run, "run", 1024)
        if run in self.launcher.launched:  # launched by this server, maybe not indexed yet
            return run, self.launcher.launched[run]
        if "/" in run or "\\" in run or run in (".", ".."):
            d = paths.resolve_in_workspace(self.workspace, run, what="run directory")
            if not (d / rundir.RUN_JSON).is_file():
                raise RunError(f"{run}: not a run directory (no run.json); list runs with list_runs")
            info = rundir.read_run_json(d)
            return str(info.get("id") or rundir.inferred_run_id(d)), d
        with self._index() as idx:
            row = idx.resolve(run)
        return str(row["run_id"]), self._run_dir_of(row)

    def _row(self, r: dict[str, Any]) -> RunRow:
        """A row of Index.runs()/compare() as a RunRow (times as epoch seconds, text bounded)."""
        where = r.get("path")
        conclusion = r.get("conclusion")
        if isinstance(conclusion, str) and len(conclusion) > 500:
            conclusion = conclusion[:500] + "…"
        return RunRow(
            id=str(r["run_id"]), name=_text(r.get("name"), 200), status=_text(r.get("status"), 100),
            run_dir=self._index_dir(where),
            algorithm=_text(r.get("algorithm"), 100), model=_text(r.get("model"), 300),
            backend=_text(r.get("backend"), 100), started_at=_time(r.get("started_at")),
            ended_at=_time(r.get("ended_at")), step=r.get("steps"), max_steps=r.get("max_steps"),
            parent_run_id=r.get("parent_run_id"), metrics=_metrics_dict(r.get("metrics")),
            conclusion=conclusion if isinstance(conclusion, str) else None,
        )

    def _status(self, run_id: str, run_dir: Path) -> RunStatus:
        self.launcher.reap()
        info = rundir.read_run_json(run_dir)
        if not info:
            raise RunError(f"{self._rel(run_dir)}/run.json is missing or unreadable; the run has not started")
        started = _num(info.get("started_at")) or _num(info.get("created_at"))
        ended = _num(info.get("ended_at"))
        status = info.get("status")
        log_tail: list[str] = []
        if status in ("failed", "interrupted") and (run_dir / rundir.TRAIN_LOG).is_file():
            log_tail, _ = tail_lines(paths.confined_file(self.workspace, run_dir / rundir.TRAIN_LOG, "log"), 20)
        return RunStatus(
            run_id=_text(info.get("id") or run_id, 200), name=_text(info.get("name"), 200),
            status=_text(status, 100), run_dir=self._rel(run_dir), pid=_int(info.get("pid")),
            step=_int(info.get("step")), max_steps=_int(info.get("max_steps")), started_at=started,
            ended_at=ended, elapsed_s=round((ended or time.time()) - started, 1) if started else None,
            error=_text(info.get("error"), MAX_ERROR_CHARS),
            final_metrics=(final := _metrics_dict(info.get("final_metrics"))),
            scores=format_metrics(final), latest_metrics=self._latest_metrics(run_dir), log_tail=log_tail,
        )

    def _latest_metrics(self, run_dir: Path) -> dict[str, float | None]:
        path = run_dir / rundir.METRICS
        if not path.is_file():
            return {}
        data, _ = read_tail_bytes(paths.confined_file(self.workspace, path, "metrics file"), 256 * 1024)
        latest: dict[str, float | None] = {}
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break
            try:
                row = json.loads(raw)
            except (ValueError, RecursionError):
                continue
            if isinstance(row, dict):
                latest.update(_metrics_dict(row.get("metrics")))
        return dict(list(latest.items())[-MAX_METRIC_KEYS:])

    def _validate(self, path: Path, deep: bool, overrides: list[str] | None = None) -> ValidationReport:
        """`evsys validate --json` for a confined path, with the path shown relative to the workspace.
        A deep check runs the config's own code, so it runs in a child process (deepcheck.py)."""
        if deep:
            from .deepcheck import deep_validate

            out = ValidationReport.model_validate(deep_validate(self.workspace, path, overrides or ()))
        else:
            from evsys_core.validate import validate

            report = validate(path, deep=False, workspace=self.workspace, overrides=overrides or ())
            out = ValidationReport.model_validate(report.model_dump(mode="json"))
        out.config_path = self._rel(path)
        return out

    @staticmethod
    def _issues_text(report: ValidationReport) -> str:
        lines = []
        for i in report.errors:
            where = ":".join(str(x) for x in (i.file, i.line, i.column) if x is not None)
            lines.append("- " + ": ".join(x for x in (where, i.field, i.message) if x))
        return "\n".join(lines)

    # --- tools: history -------------------------------------------------------------

    @tool_boundary
    def list_runs(
        self,
        where: Annotated[str | None, Field(max_length=2000, description=(
            "optional SQL boolean over the runs columns (status, name, algorithm, model, learning_rate, "
            "conclusion, ...) and metric keys in double quotes, e.g. "
            "status = 'completed' AND \"val/val/pass@1\" > 0.5"))] = None,
        sort_by: Annotated[str | None, Field(max_length=200, pattern=r"^[A-Za-z_][\w./@-]*(:(asc|desc))?$",
                                             description="a runs column or metric key, optionally :asc or "
                                                         ":desc (default desc), e.g. 'val/val/pass@1:desc', "
                                                         "'learning_rate:asc', 'age'")] = None,
        limit: Annotated[int, Field(ge=1, le=500)] = 50,
    ) -> RunList:
        """Past and running runs, newest first, with status and headline metrics."""
        if where is not None:
            check_where(where)
        with self._index() as idx:
            rows = idx.runs(where=where, sort=sort_by, limit=limit + 1)
        return RunList(runs=[self._row(r) for r in rows[:limit]], count=min(len(rows), limit),
                       truncated=len(rows) > limit)

    @tool_boundary
    def read_summary(
        self,
        run: RunRef,
        offset: Annotated[int, Field(ge=0)] = 0,
        max_chars: Annotated[int, Field(ge=1, le=100_000)] = 20_000,
    ) -> SummaryPage:
        """A run's summary.md (status, final metrics, every evaluation), paged by characters."""
        run_id, run_dir = self._resolve(run)
        path = run_dir / rundir.SUMMARY
        if not path.is_file():
            status = rundir.read_run_json(run_dir).get("status")
            raise RunError(f"run {run_id} has no summary.md yet (status {status}); it is written when the "
                           "run ends — wait_for_run returns once it is there, then read it again")
        text, total, _ = read_page(paths.confined_file(self.workspace, path, "summary"), offset, max_chars)
        end = offset + len(text)
        return SummaryPage(run_id=run_id, path=self._rel(path), text=text, offset=offset,
                           next_offset=end if end < total else None, total_chars=total)

    @tool_boundary
    def get_metrics(
        self,
        run: RunRef,
        keys: Annotated[list[Annotated[str, Field(max_length=200)]] | None, Field(
            max_length=50, description="metric keys, e.g. ['train/mean_loss', 'val/val/pass@1']; default all")] = None,
        split: Annotated[str | None, Field(max_length=100, description="only this split, e.g. train or val")] = None,
        max_points: Annotated[int, Field(ge=2, le=2000)] = 200,
    ) -> MetricsResult:
        """Metric curves of a run (step, value), evenly downsampled to at most max_points each."""
        run_id, _ = self._resolve(run)
        with self._index() as idx:
            curves = idx.curves(run_id, keys, split)["curves"]
        series = []
        shown = list(curves.items())[:MAX_SERIES]
        per_series = max(2, min(max_points, MAX_TOTAL_POINTS // max(len(shown), 1)))
        for key, pts in shown:
            points = [(int(p[0]), _num(p[1])) for p in pts if p[0] is not None]
            kept = _downsample(points, per_series)
            series.append(MetricSeries(key=key, split=split, points=[MetricPoint(step=s, value=v) for s, v in kept],
                                       total_points=len(points), downsampled=len(kept) < len(points)))
        available = sorted(curves)
        note = None
        if len(curves) > MAX_SERIES or len(available) > MAX_METRIC_KEYS:
            note = (f"{len(curves)} metrics; the first {min(len(curves), MAX_SERIES)} are shown and "
                    f"{min(len(available), MAX_METRIC_KEYS)} names listed — pass keys=[...] to choose")
        return MetricsResult(run_id=run_id, series=series, available_keys=available[:MAX_METRIC_KEYS], note=note)

    @tool_boundary
    def query_runs(
        self,
        sql: Annotated[str, Field(min_length=1, max_length=20_000, description=(
            "one read-only SELECT over the index tables runs, metrics(run_id, step, split, key, value), "
            "predictions, conclusions"))],
        max_rows: Annotated[int, Field(ge=1, le=1000)] = 100,
    ) -> QueryResult:
        """Read-only SQL over the run index; rows, characters and time are bounded."""
        statement = check_readonly_sql(sql)
        columns, rows, truncated = self._bounded_query(statement, max_rows)
        out_rows: list[list[Any]] = []
        size = 0
        note = None
        for row in rows:
            cells = [_jsonable(c) for c in row]
            size += len(json.dumps(cells, default=str))
            if size > MAX_QUERY_CHARS:
                truncated = True
                note = f"result cut at {MAX_QUERY_CHARS} characters; select fewer columns or rows"
                break
            out_rows.append(cells)
        if truncated and note is None:
            note = f"more than {max_rows} rows; add LIMIT/WHERE or raise max_rows (≤ 1000)"
        return QueryResult(columns=[str(c) for c in columns], rows=out_rows, row_count=len(out_rows),
                           truncated=truncated, note=note)

    def _bounded_query(self, statement: str, max_rows: int) -> tuple[list[str], list[Any], bool]:
        """Index.query with a time limit: the connection is interrupted when it runs too long."""
        with self._index() as idx:
            columns, rows, truncated = idx.query(statement, max_rows=max_rows, timeout_s=QUERY_TIMEOUT_S)
        return columns, rows, truncated

    @tool_boundary
    def compare_runs(
        self,
        runs: Annotated[list[Annotated[str, Field(min_length=1, max_length=1024)]], Field(
            min_length=2, max_length=2, description="[BASE, CAND]: two run references")],
        metric: Annotated[str | None, Field(max_length=300, description="only this metric key")] = None,
        step: Annotated[int | None, Field(ge=0, description="evaluation step in both runs (default: each run's final)")] = None,
    ) -> CompareResult:
        """Is CAND better than BASE? Config differences and, per shared metric, both values and the delta;
        eval metrics are paired task by task with a 95% CI, p-value and verdict (better/worse/inconclusive)."""
        base, cand = (self._resolve(r)[0] for r in runs)
        with self._index() as idx:
            cmp = idx.compare(base, cand, metric=metric, step=step)
        return self._comparison(cmp)

    def _comparison(self, cmp: dict[str, Any]) -> CompareResult:
        config = cmp.get("config", [])[:MAX_METRIC_KEYS]
        metrics = cmp.get("metrics", [])[:MAX_METRIC_KEYS]  # bounded however many a run logged
        fields = set(MetricComparison.model_fields)
        return CompareResult(
            runs=[self._row(r) for r in cmp["runs"]],
            config_diff={str(d["key"])[:200]: [_jsonable(v) for v in d["values"]] for d in config},
            alpha=cmp["alpha"], note=cmp["note"],
            metrics=[MetricComparison(**{k: (_num(v) if isinstance(v, float) else v)
                                         for k, v in m.items() if k in fields}) for m in metrics],
        )

    @tool_boundary
    def record_conclusion(
        self,
        run: RunRef,
        text: Annotated[str, Field(min_length=1, max_length=MAX_CONCLUSION_CHARS, description=(
            "what the run showed and what to try next, in a few sentences"))],
    ) -> ConclusionResult:
        """Append a conclusion to the run's conclusion.md and the index."""
        from evsys_core.history.index import conclude

        paths.check_text(text, "text", MAX_CONCLUSION_CHARS)
        if not text.strip():
            raise ToolError("text is blank; write what the run showed")
        run_id, run_dir = self._resolve(run)
        with self._index_lock:
            conclude(self.workspace, run_id, text.strip(), author="agent")
        return ConclusionResult(run_id=run_id, path=self._rel(run_dir / rundir.CONCLUSION), chars=len(text.strip()),
                                message="recorded; list_runs and query_runs (table conclusions) now show it")

    # --- tools: configs -------------------------------------------------------------

    @tool_boundary
    def validate_config(
        self,
        path: ConfigPath,
        deep: Annotated[bool, Field(description="also load data and tasks and check every verifier")] = False,
    ) -> ValidationReport:
        """The `evsys validate --json` report of a config: ok, and every issue with file:line:column."""
        cfg = paths.config_path(self.workspace, path, must_exist=True)
        return self._validate(cfg, deep)

    @tool_boundary
    def write_config(
        self,
        path: ConfigPath,
        yaml_text: Annotated[str, Field(min_length=1, max_length=MAX_YAML_CHARS)],
        overwrite: bool = False,
    ) -> WriteConfigResult:
        """Validate a YAML config and, only if it is valid, write it atomically inside the workspace."""
        paths.check_text(yaml_text, "yaml_text", MAX_YAML_CHARS)
        target = paths.config_path(self.workspace, path, must_exist=False)
        existed = target.exists()
        if existed and not overwrite:
            raise ToolError(f"{self._rel(target)} already exists; pass overwrite=true to replace it, "
                            "or choose a new name")
        if target.exists() and not target.is_file():
            raise ToolError(f"{self._rel(target)} exists and is not a file; choose another path")
        created = [d for d in [target.parent, *target.parent.parents] if not d.exists()]
        tmp = target.with_name(f".{target.stem}.{os.getpid()}.{threading.get_ident()}.candidate{target.suffix}")
        written = False
        try:
            safefs.makedirs(target.parent, self.workspace)  # no link out of the workspace on the way
            safefs.write_new(tmp, yaml_text, self.workspace)
            report = self._validate(tmp, deep=False)
            report = self._renamed(report, tmp, target)
            if not report.ok:
                raise ToolError(f"{self._rel(target)} is not valid, nothing was written:\n"
                                f"{self._issues_text(report)}\nfix these and call write_config again")
            self._confine_config(self._parse(yaml_text, target), self._rel(target), "written")
            os.replace(tmp, target)  # replaces a link at the target, never writes through it
            written = True
        finally:
            tmp.unlink(missing_ok=True)
            if not written:  # leave nothing behind, not even the folders made for it
                for d in created:
                    with contextlib.suppress(OSError):
                        d.rmdir()
        return WriteConfigResult(path=self._rel(target), written=True, overwritten=existed, report=report)

    def _parse(self, yaml_text: str, target: Path) -> Any:
        from evsys_core.config import parse_config_text

        try:
            return parse_config_text(yaml_text, self._rel(target), workspace=self.workspace, source_path=target)
        except ConfigError as e:
            raise ToolError(f"{self._rel(target)} is not valid, nothing was written:\n{e}") from e

    def _confine_config(self, cfg: Any, source: str, verb: str) -> None:
        """Every path a config names (data, benchmarks, output) must stay inside the workspace."""
        fields = [("data.path", cfg.data.path)]
        fields += [(f"metadata.benchmark[{i}].path", b.path) for i, b in enumerate(cfg.metadata.benchmark)]
        fields += [(f"callbacks[{i}].params.output_dir", c.params.output_dir) for i, c in enumerate(cfg.callbacks)]
        for name, value in fields:
            resolved = (self.workspace / Path(value)).resolve()
            if not resolved.is_relative_to(self.workspace):
                raise ToolError(f"{source}: {name} = {value} resolves to {resolved}, outside the workspace "
                                f"{self.workspace}; nothing was {verb}. Use a path inside the workspace.")
        model = str(cfg.model.name)
        if not self._model_inside(model):
            raise ToolError(f"{source}: model.name = {model} is a path outside the workspace; nothing was "
                            f"{verb}. Use a model name or a model directory inside the workspace.")

    def _model_inside(self, model: str) -> bool:
        """False when `model` is a path (or a symlink inside the workspace) leading outside it."""
        p = self.workspace / Path(model).expanduser()
        if model.startswith(("/", "~", ".")) or ".." in Path(model).parts or os.path.lexists(p):
            return p.resolve().is_relative_to(self.workspace)
        return True  # a model name (a hub id, the default model), not a path

    def _renamed(self, report: ValidationReport, tmp: Path, target: Path) -> ValidationReport:
        """Issues name the file the agent asked for, not the candidate file."""
        names = {str(tmp), tmp.name, self._rel(tmp)}
        text = report.model_dump_json()
        for n in sorted(names, key=len, reverse=True):
            text = text.replace(json.dumps(n)[1:-1], json.dumps(self._rel(target))[1:-1])
        return ValidationReport.model_validate_json(text)

    # --- tools: runs ----------------------------------------------------------------

    @tool_boundary
    def launch_run(
        self,
        config_path: ConfigPath,
        overrides: Annotated[list[Annotated[str, Field(min_length=3, max_length=2000, pattern=r"^[A-Za-z_][\w.\[\]-]*=")]],
                             Field(max_length=50, description="KEY=VALUE overrides, e.g. "
                                   "['algorithm.params.learning_rate=3e-4']")] = [],  # noqa: B006
        run_name: Annotated[str | None, Field(max_length=100, description="name of the run directory "
                                              "(default: the config's run_name)")] = None,
    ) -> LaunchResult:
        """Start a training run as a detached process and return at once with its id and directory."""
        from evsys_core.config import load_config

        cfg_path = paths.config_path(self.workspace, config_path, must_exist=True)
        for o in overrides:
            paths.check_text(o, "override", 2000)
        if run_name is not None:
            paths.run_name(run_name)
        report = self._validate(cfg_path, deep=True, overrides=list(overrides))
        if not report.ok:
            raise ToolError(f"{self._rel(cfg_path)} is not valid (deep check), nothing was launched:\n"
                            f"{self._issues_text(report)}\nfix the config (validate_config shows the same report)")
        try:
            cfg = load_config(cfg_path, overrides, self.workspace)
        except ConfigError as e:
            raise ToolError(f"{self._rel(cfg_path)} is not valid, nothing was launched:\n{e}") from e
        logger = cfg.local_logger()
        problem = rundir.output_dir_problem(logger.output_dir) if logger else None
        if problem:  # checked here too: this process writes the run's first files there
            raise ToolError(f"{self._rel(cfg_path)}: callbacks[].params.output_dir: {problem}; nothing was launched")
        self._confine_config(cfg, self._rel(cfg_path), "launched")
        output_dir, default_name = self._output_of(cfg, cfg_path)
        with self.launcher.lock:
            self._check_capacity()
            run_dir = rundir.claim_run_dir(output_dir, run_name or default_name, self.workspace)
            proc = self.launcher.spawn(self.workspace, cfg_path, run_dir, list(overrides))
            run_id = self._provisional(run_dir, proc.pid, cfg, cfg_path)
            self.launcher.launched[run_id] = run_dir
        return LaunchResult(
            run_id=run_id, run_name=run_dir.name, run_dir=self._rel(run_dir), pid=proc.pid, status="running",
            config_path=self._rel(cfg_path), log_path=self._rel(run_dir / rundir.TRAIN_LOG),
            message=f"launched; call wait_for_run(run='{run_id}') to follow it, tail_log to see its output")

    def _output_of(self, cfg: Any, cfg_path: Path) -> tuple[Path, str]:
        """Where the run directory goes, as `evsys run` would put it."""
        logger = cfg.local_logger()
        out = Path(logger.output_dir) if logger else self.workspace / "outputs"
        out = out if out.is_absolute() else self.workspace / out
        out = paths.resolve_in_workspace(self.workspace, str(out), what="callbacks[].params.output_dir")
        return out, (logger.run_name if logger else None) or cfg_path.stem

    def _check_capacity(self) -> None:
        candidates: list[Path] = []
        try:
            with self._index() as idx:
                rows = idx.runs(where="status = 'running'", limit=1000)
            candidates = [self._run_dir_of(r) for r in rows]
        except EvsysError:
            pass
        active = self.launcher.active(candidates)
        if len(active) >= self.max_concurrent_runs:
            names = ", ".join(f"{a.get('id')} ({a.get('name')}, pid {a.get('pid')})" for a in active)
            raise ToolError(
                f"{len(active)} run(s) already running, the limit is {self.max_concurrent_runs}: {names}; "
                "wait_for_run or cancel_run one of them first (the server's --max-concurrent-runs sets the limit)")

    def _provisional(self, run_dir: Path, pid: int, cfg: Any, cfg_path: Path) -> str:
        now = time.time()
        info = {
            "id": rundir.new_run_id(), "name": run_dir.name, "status": rundir.ACTIVE,
            "created_at": now, "started_at": now, "ended_at": None,
            "algorithm": cfg.algorithm.kind, "model": cfg.model.name, "backend": cfg.backend.kind,
            "config_hash": None, "git_commit": None, "parent_run_id": None, **rundir.owner(pid), "step": 0,
            "max_steps": getattr(cfg.algorithm.params, "max_steps", None), "error": None,
            "config_path": str(cfg_path), "final_metrics": {},
        }
        if not write_provisional_run_json(run_dir, info):
            info = rundir.read_run_json(run_dir) or info  # the run wrote its own first
        return str(info["id"])

    @tool_boundary
    def run_status(self, run: RunRef) -> RunStatus:
        """A run's status, step, elapsed time, error and latest metrics (from its run.json)."""
        return self._status(*self._resolve(run))

    @tool_boundary
    async def wait_for_run(
        self,
        run: RunRef,
        ctx: Context,
        timeout_s: Annotated[float, Field(gt=0, le=MAX_WAIT_S, description="at most 600 s; call again to wait longer")] = 300,
    ) -> WaitResult:
        """Wait until a run ends or timeout_s passes, sending progress notifications meanwhile.

        A timeout is not an error: the result says timed_out=true with the status at that moment.
        Cancelling this call never stops the run.
        """
        run_id, run_dir = await anyio.to_thread.run_sync(self._resolve, run)
        start = time.monotonic()
        while True:
            status = await anyio.to_thread.run_sync(self._status, run_id, run_dir)
            waited = time.monotonic() - start
            if status.status in rundir.FINAL_STATUSES and self._settled(run_dir, status):
                return WaitResult(**status.model_dump(), timed_out=False, waited_s=round(waited, 1),
                                  message=f"run {status.status} after waiting {waited:.0f} s")
            if waited >= timeout_s:
                return WaitResult(**status.model_dump(), timed_out=True, waited_s=round(waited, 1),
                                  message=f"still {status.status} after {timeout_s:g} s; call wait_for_run again "
                                          "to keep waiting, or cancel_run to stop it")
            await self._progress(ctx, status)
            await anyio.sleep(min(self.poll_s, max(0.0, timeout_s - waited)))

    @staticmethod
    def _settled(run_dir: Path, status: RunStatus) -> bool:
        """A final status counts once the run has written its summary or its process is gone
        (the runner marks run.json final a moment before summary.md is written)."""
        return (run_dir / rundir.SUMMARY).exists() or not rundir.pid_alive(status.pid)

    @staticmethod
    async def _progress(ctx: Context, status: RunStatus) -> None:
        step = status.step or 0
        total = float(status.max_steps) if status.max_steps else None
        try:
            await ctx.report_progress(float(step), total, f"{status.name}: {status.status}, step {step}"
                                      + (f"/{status.max_steps}" if status.max_steps else ""))
        except Exception:  # noqa: BLE001 - a client that cannot take progress still gets the result
            pass

    @tool_boundary
    def tail_log(
        self,
        run: RunRef,
        lines: Annotated[int, Field(ge=1, le=1000)] = 50,
    ) -> LogTail:
        """The last lines of a launched run's train.log (its stdout and stderr)."""
        run_id, run_dir = self._resolve(run)
        path = run_dir / rundir.TRAIN_LOG
        if not path.is_file():
            raise RunError(f"run {run_id} has no train.log (only runs started with launch_run have one); "
                           "use run_status or read_summary instead")
        out, cut = tail_lines(paths.confined_file(self.workspace, path, "log"), lines)
        return LogTail(run_id=run_id, path=self._rel(path), lines=out, truncated=cut)

    @tool_boundary
    def cancel_run(self, run: RunRef) -> CancelResult:
        """Stop a running run: SIGTERM to its process group (it stops after the current step with a final
        checkpoint), SIGKILL if it is still there after 30 s.

        Its status becomes interrupted; its files stay. Cancelling a finished run changes nothing.
        """
        run_id, run_dir = self._resolve(run)
        info, used = terminate_run(run_dir, self.launcher, self.cancel_grace_s)
        if used is None:
            return CancelResult(run_id=run_id, status=info.get("status"), was_running=False, signal=None,
                                message=f"run {run_id} is not running (status {info.get('status')}); nothing to cancel")
        return CancelResult(run_id=run_id, status=info.get("status"), was_running=True, signal=used,
                            message=f"stopped with {used}; its files and checkpoints are kept")

    # --- tools: scoring -------------------------------------------------------------

    @tool_boundary
    async def score_benchmark(
        self,
        benchmark: Annotated[str, Field(min_length=1, max_length=1024, description=(
            "benchmark directory holding tasks.jsonl, relative to the workspace"))],
        ctx: Context,
        model: Annotated[str | None, Field(max_length=300, description="a base model to score")] = None,
        run: Annotated[str | None, Field(max_length=1024, description="a finished run whose final weights to score")] = None,
        metrics: Annotated[list[Annotated[str, Field(pattern=METRIC_PATTERN)]] | None,
                           Field(max_length=10, description="e.g. ['pass@1', 'mean_score']")] = None,
        num_samples: Annotated[int | None, Field(ge=1, le=64)] = None,
    ) -> ScoreOutput:
        """Score a base model (model) or a run's trained weights (run) on a benchmark; the result is a run
        directory of its own, listed by list_runs."""
        if (model is None) == (run is None):
            raise ToolError("give exactly one of model (a base model name) or run (a finished training run)")
        bench = paths.resolve_in_workspace(self.workspace, benchmark, what="benchmark")
        if model is not None:
            paths.check_text(model, "model", 300)
            if model.startswith(("/", "~")) or ".." in Path(model).parts or not self._model_inside(model):
                raise ToolError(f"model {model!r}: give a model name or a path inside the workspace")
        run_dir = self._resolve(run)[1] if run is not None else None

        def work() -> Any:
            from evsys_core.benchmarks.cli import score_benchmark

            with self._score_lock:
                return score_benchmark(self.workspace, bench, model=model, run=run_dir, metrics=metrics,
                                       num_samples=num_samples)

        result = await self._with_heartbeat(ctx, work, "scoring")
        return ScoreOutput(run_id=str(result.run_id), run_dir=self._rel(result.run_dir),
                           benchmark=self._rel(bench), scored=model or self._rel(run_dir),
                           num_tasks=int(getattr(result, "num_tasks", 0)), metrics=_metrics_dict(result.metrics),
                           scores=format_metrics(_metrics_dict(result.metrics)))

    @staticmethod
    async def _with_heartbeat(ctx: Context, fn: Any, what: str) -> Any:
        """Run blocking work on a thread, reporting progress every few seconds meanwhile."""
        outcome: dict[str, Any] = {}

        async def beat() -> None:
            n = 0
            while True:
                await anyio.sleep(5)
                n += 1
                try:
                    await ctx.report_progress(float(n), None, f"{what}: {5 * n} s")
                except Exception:  # noqa: BLE001 - a client that cannot take progress still gets the result
                    pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(beat)
            try:
                outcome["value"] = await anyio.to_thread.run_sync(fn)
            except Exception as e:  # re-raised below, outside the task group (no ExceptionGroup)
                outcome["error"] = e
            finally:
                tg.cancel_scope.cancel()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]
