"""State and helpers every tool shares: the workspace, the job engine, the index, run lookup."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Annotated, Any, Iterator

from pydantic import Field

from evsys_core import rundir
from evsys_core.errors import RunError
from evsys_core.jobs.engine import Engine

from .. import budget, paths
from ..models import RunRow

RunRef = Annotated[str, Field(
    min_length=1, max_length=1024,
    description="a run id, a unique prefix of its id or name, or its directory relative to the workspace")]
ConfigPath = Annotated[str, Field(
    min_length=1, max_length=1024,
    description="a .yaml/.yml path relative to the workspace; a bare file name means experiments/<name>")]
Offset = Annotated[int, Field(ge=0, le=10**12, description="where this page starts (a previous answer's next_offset)")]

ROW_METRICS = 8          # metrics per list_runs row unless `metrics` names them
ROW_METRIC_CHARS = 1_500


class Base:
    def __init__(self, workspace: Path, max_concurrent_runs: int = 1, poll_s: float = 1.0,
                 cancel_grace_s: float = 30.0, query_timeout_s: float | None = None) -> None:
        self.workspace = workspace.resolve()
        self.max_concurrent_runs = max_concurrent_runs
        self.poll_s = poll_s
        self.cancel_grace_s = cancel_grace_s
        self.query_timeout_s = query_timeout_s  # None: the index's limit (schema.QUERY_TIMEOUT_S)
        self._index_lock = threading.Lock()
        self._idx: Any = None
        self.engine = Engine(self.workspace, max_concurrent=max_concurrent_runs, index=self._index)

    @contextlib.contextmanager
    def _index(self) -> Iterator[Any]:
        """The workspace's index, refreshed: one Index kept for the server's life, holding its
        read-only connection and taking a settled walk between full ones (LONG_LIVED_RECHECK_S;
        docs/history.md, "A long-lived reader")."""
        from evsys_core.history.index import LONG_LIVED_RECHECK_S, Index

        with self._index_lock:  # one call at a time on the index
            if self._idx is None:
                self._idx = Index(self.workspace, **({} if self.query_timeout_s is None
                                                      else {"query_timeout_s": self.query_timeout_s}),
                                  recheck_finished_s=LONG_LIVED_RECHECK_S, hold=True)
            self._idx.refresh()
            yield self._idx

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
        """(run id, run dir) for a run reference, confined to the workspace; RunError lists
        candidates when it is ambiguous."""
        paths.check_text(run, "run", 1024)
        if run in self.engine.launched:  # launched by this server, maybe not indexed yet
            return run, self.engine.launched[run]
        if "/" in run or "\\" in run or run in (".", ".."):
            d = paths.resolve_in_workspace(self.workspace, run, what="run directory")
            if not (d / rundir.RUN_JSON).is_file():
                raise RunError(f"{run}: not a run directory (no run.json); list runs with list_runs")
            info = rundir.read_run_json(d)
            return str(info.get("id") or rundir.inferred_run_id(d)), d
        with self._index() as idx:
            row = idx.resolve(run)
        return str(row["run_id"]), self._run_dir_of(row)

    def _row(self, r: dict[str, Any], metric_keys: list[str] | None = None,
             fields: list[str] | None = None) -> RunRow:
        """A row of Index.runs()/compare() as a RunRow (times as epoch seconds, text bounded);
        `fields` projects it (id always kept)."""
        conclusion = r.get("conclusion")
        raw = r.get("metrics") if isinstance(r.get("metrics"), dict) else {}
        if metric_keys is None:
            raw = dict(list(raw.items())[:ROW_METRICS])
        metrics, _ = budget.metrics(raw, ROW_METRIC_CHARS, metric_keys)
        row = RunRow(
            id=str(r["run_id"]), name=budget.text(r.get("name"), 200), status=budget.text(r.get("status"), 100),
            kind=budget.text(r.get("kind"), 20), run_dir=self._index_dir(r.get("path")),
            algorithm=budget.text(r.get("algorithm"), 100), model=budget.text(r.get("model"), 300),
            backend=budget.text(r.get("backend"), 100), started_at=budget.when(r.get("started_at")),
            ended_at=budget.when(r.get("ended_at")), step=budget.integer(r.get("steps")),
            max_steps=budget.integer(r.get("max_steps")), parent_run_id=budget.text(r.get("parent_run_id"), 100),
            metrics=metrics, conclusion=budget.text(conclusion, 500) if isinstance(conclusion, str) else None,
        )
        if fields:
            keep = {"id", *fields}
            row = RunRow(**{k: v for k, v in row.model_dump().items() if k in keep})
        return row
