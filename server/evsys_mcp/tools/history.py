"""Tools over the run history: the index (list, rank, compare, query, curves) and run files."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.utilities.types import Image
from pydantic import Field

from evsys_core import rundir, safefs
from evsys_core.errors import RunError, UsageError
from evsys_core.jobs import pages

from .. import budget, paths
from ..boundary import tool_boundary
from ..models import (
    BestList, BestRow, CompareResult, CompareSide, ConclusionResult, MetricComparison, MetricSeries, MetricsResult, QueryResult, RunList,
    SummaryPage, VsTop,
)
from ..sqlguard import check_readonly_sql, check_where
from .base import Base, Offset, RunRef

MAX_CONCLUSION_CHARS = 20_000
MAX_SERIES = 20            # curves per get_metrics page
MAX_TOTAL_POINTS = 1_000   # points per get_metrics answer, shared by its curves (~26 characters each at most)
MAX_LISTED_KEYS = 100
IMAGE_BYTES = 30_000       # a PNG this size is ~40,000 characters of base64

Status = Literal["running", "completed", "failed", "interrupted"]
Kind = Literal["train", "score", "all"]
RowField = Literal["name", "status", "kind", "run_dir", "algorithm", "model", "backend", "started_at", "ended_at",
                   "step", "max_steps", "parent_run_id", "metrics", "conclusion"]
MetricKey = Annotated[str, Field(min_length=1, max_length=200)]
SPLIT_PATTERN = f"^{safefs.SAFE_NAME.pattern}$"  # a split is a safe name (config.py checks the same)
KIND_FIELD = Field(description="train: training runs (default); score: score_benchmark runs; all: both")


def _kind(kind: str) -> str | None:
    return None if kind == "all" else kind


class HistoryTools(Base):

    @tool_boundary
    def list_runs(
        self,
        where: Annotated[str | None, Field(max_length=2000, description=(
            "optional SQL boolean over the runs columns (status, name, algorithm, model, learning_rate, "
            "conclusion, ...) and metric keys in double quotes, e.g. "
            "status = 'completed' AND \"val/val/pass@1\" > 0.5"))] = None,
        status: Annotated[Status | None, Field(description="only runs with this status")] = None,
        kind: Annotated[Kind, KIND_FIELD] = "train",
        sort_by: Annotated[str | None, Field(max_length=200, pattern=r"^[A-Za-z_][\w./@-]*(:(asc|desc))?$",
                                             description="a runs column or metric key, optionally :asc or "
                                                         ":desc (default desc), e.g. 'val/val/pass@1:desc', "
                                                         "'learning_rate:asc', 'name:asc'; default newest first")] = None,
        offset: Offset = 0,
        limit: Annotated[int, Field(ge=1, le=100, description="runs per page (1-100)")] = 20,
        metrics: Annotated[list[MetricKey] | None, Field(
            max_length=20, description="metric keys to show per run; default the first 8 evaluation metrics")] = None,
        fields: Annotated[list[RowField] | None, Field(
            max_length=14, description="fields to return per run (id always); default all")] = None,
    ) -> RunList:
        """Past and running runs, newest first: status, headline metrics, latest conclusion.

        Pages: pass next_offset as offset. Costs ~300-600 characters a row (fewer with fields/metrics);
        an answer stays under ~45,000 characters, cutting the page short when rows are wide."""
        if where is not None:
            check_where(where)
        cond = " AND ".join(x for x in (f"status = '{status}'" if status else None,
                                        f"({where})" if where else None) if x) or None
        with self._index() as idx:
            rows = idx.runs(where=cond, sort=sort_by, limit=offset + limit + 1, kind=_kind(kind))
        page = rows[offset:offset + limit]
        built = [self._row(r, metrics, fields) for r in page]
        kept = budget.fit([r.model_dump(mode="json") for r in built], budget.FIT_CHARS)
        more = len(rows) > offset + kept
        return RunList(runs=built[:kept], count=kept, offset=offset, next_offset=offset + kept if more else None,
                       total=None if more else offset + kept,
                       note=("page cut to fit the answer; ask for fewer fields or metrics" if kept < len(page)
                             else None))

    @tool_boundary
    def best_runs(
        self,
        metric: Annotated[str, Field(min_length=1, max_length=200, description="a metric key, e.g. val/val/pass@1")],
        maximize: Annotated[bool, Field(description="true: higher is better (default); false: lower is better")] = True,
        by: Annotated[Literal["final", "best"], Field(
            description="rank by each run's final value (default) or the best value it reached")] = "final",
        where: Annotated[str | None, Field(max_length=2000, description="optional SQL boolean, as for list_runs")] = None,
        kind: Annotated[Kind, KIND_FIELD] = "train",
        groups: Annotated[bool, Field(description=(
            "true: rank replicate groups (launch_run with seeds) by the metric's mean over their completed "
            "runs, with its 95% interval; where and by=best apply to runs only"))] = False,
        offset: Offset = 0,
        limit: Annotated[int, Field(ge=1, le=100, description="runs per page (1-100)")] = 10,
    ) -> BestList:
        """The runs (or replicate groups) ranked by one metric (the CLI's `evsys best`); when higher is better,
        each row after the first has vs_top: the top row paired with it task by task (all replicates' tasks),
        delta, 95% CI, p and verdict, so a lead the data cannot support reads `inconclusive`; ~400 characters
        a row."""
        if where is not None:
            check_where(where)
        if groups and (where is not None or by != "final"):
            raise UsageError("groups ranks by the mean final value; where and by=best apply to runs only")
        with self._index() as idx:
            if groups:
                rows = idx.best_groups(metric, maximize=maximize, limit=offset + limit + 1)[offset:]
            else:
                rows = idx.best(metric, maximize=maximize, where=where, by=by, limit=limit + 1, kind=_kind(kind),
                                offset=offset)
        out = [BestRow(rank=offset + i + 1, run_id=str(r.get("group_id") or r["run_id"]),
                       name=budget.text(r.get("group_name") or r.get("name"), 200),
                       status=budget.text(r.get("status"), 100), run_dir=self._index_dir(r.get("path")),
                       algorithm=budget.text(r.get("algorithm"), 100), model=budget.text(r.get("model"), 300),
                       value=budget.num(r.get("value")), step=budget.integer(r.get("step")),
                       seeds=[budget.integer(x) for x in r["seeds"][:100]] if "seeds" in r else None,
                       ci95_low=budget.num(r.get("ci95_low")), ci95_high=budget.num(r.get("ci95_high")),
                       vs_top=self._vs_top(r.get("vs_top")))
               for i, r in enumerate(rows[:limit])]
        return BestList(metric=metric, by=by, maximize=maximize, groups=groups, runs=out, offset=offset,
                        next_offset=offset + limit if len(rows) > limit else None)

    @staticmethod
    def _vs_top(vs: dict[str, Any] | None) -> VsTop | None:
        if not vs:
            return None
        return VsTop(verdict=vs.get("verdict"), delta=budget.num(vs.get("delta")), ci_low=budget.num(vs.get("ci_low")),
                     ci_high=budget.num(vs.get("ci_high")), p_value=budget.num(vs.get("p_value")),
                     n_tasks=budget.integer(vs.get("n_tasks")), seeds=budget.integer(vs.get("base_seeds")),
                     note=budget.text(vs.get("note"), 300))

    def _names_a_path(self, ref: str) -> bool:
        """A reference only the run resolver knows (a directory, or a run this server launched)."""
        paths.check_text(ref, "run", 1024)
        return "/" in ref or "\\" in ref or ref in (".", "..") or ref in self.engine.launched

    @tool_boundary
    def read_summary(
        self,
        run: RunRef,
        offset: Offset = 0,
        max_bytes: Annotated[int, Field(ge=1, le=40_000, description="page size in bytes (at most 40000)")] = 20_000,
    ) -> SummaryPage:
        """A run's summary.md (status, final metrics, every evaluation), paged by bytes (up to ~40,000
        characters a page; next_offset reads on)."""
        run_id, run_dir = self._resolve(run)
        path = run_dir / rundir.SUMMARY
        if not path.is_file():
            status = rundir.read_run_json(run_dir).get("status")
            raise RunError(f"run {run_id} has no summary.md yet (status {status}); it is written when the "
                           "run ends — wait_for_run returns once it is there, then read it again")
        safe = paths.confined_file(self.workspace, path, "summary")
        page = budget.page(lambda o, n: pages.read_bytes(safe, o, n), offset, max_bytes)
        return SummaryPage(run_id=run_id, path=self._rel(path), text=page.text, offset=page.offset,
                           next_offset=page.next_offset, size=page.size)

    def _splits(self, run_id: str) -> list[str]:
        with self._index() as idx:
            res = idx.query("SELECT DISTINCT split FROM metric_summary WHERE run_id = ? ORDER BY split",
                            params=[run_id], max_rows=100)
        return [str(r[0]) for r in res.rows if r[0] is not None]

    def _curves(self, run: str, keys: list[str] | None, split: str | None) -> tuple[str, dict[str, Any], list[str]]:
        run_id, _ = self._resolve(run)
        splits = self._splits(run_id)
        if split is not None and split not in splits:
            raise UsageError(f"run {run_id} logged no metrics in split {split!r}; its splits are: "
                             f"{', '.join(splits) or 'none'} (leave split out for all)")
        with self._index() as idx:
            curves = idx.curves(run_id, keys, split)["curves"]
        return run_id, curves, splits

    @tool_boundary
    def get_metrics(
        self,
        run: RunRef,
        keys: Annotated[list[MetricKey] | None, Field(
            max_length=50, description="metric keys, e.g. ['train/mean_loss', 'val/val/pass@1']; default all")] = None,
        split: Annotated[str | None, Field(max_length=100, pattern=SPLIT_PATTERN, description=(
            "only metrics logged in this split: train, or a benchmark's split (val by default); an unknown "
            "split is answered with the run's splits"))] = None,
        max_points: Annotated[int, Field(ge=2, le=MAX_TOTAL_POINTS, description=(
            "points in the whole answer, shared by its curves (each downsampled evenly, first and last kept)"))] = 400,
        offset: Offset = 0,
    ) -> MetricsResult:
        """Metric curves of a run as [step, value] pairs; up to 20 curves a page (next_offset for more),
        ~15 characters a point, at most 1,000 points in all."""
        from evsys_core.history.reports import downsample

        run_id, curves, splits = self._curves(run, keys, split)
        names = list(curves)
        shown = names[offset:offset + MAX_SERIES]
        per_series = max(2, max_points // max(len(shown), 1))
        series = []
        for key in shown:
            points = [(int(p[0]), budget.short(p[1])) for p in curves[key]
                      if budget.integer(p[0]) is not None]
            kept = downsample(points, per_series)
            series.append(MetricSeries(key=budget.text(key, budget.NAME_CHARS), points=kept, total_points=len(points),
                                       downsampled=len(kept) < len(points)))
        end = offset + len(shown)
        listed = [budget.text(k, budget.NAME_CHARS) for k in sorted(names)[:MAX_LISTED_KEYS]]
        listed = listed[:budget.fit(listed, 8_000)]
        note = None
        if len(names) > MAX_SERIES:
            note = f"{len(names)} metrics: this page shows {len(shown)}; pass next_offset as offset or keys=[...]"
        return MetricsResult(run_id=run_id, series=series, keys_total=len(names), offset=offset,
                             next_offset=end if end < len(names) else None, splits=splits[:50],
                             available_keys=listed, note=note)

    @tool_boundary
    def plot_metrics(
        self,
        run: RunRef,
        keys: Annotated[list[MetricKey] | None, Field(
            max_length=10, description="metric keys to draw; default the training loss and every evaluation metric "
                                       "(at most 10)")] = None,
        split: Annotated[str | None, Field(max_length=100, pattern=SPLIT_PATTERN,
                                           description="only metrics of this split")] = None,
    ) -> Image:
        """The run's learning curves as a PNG image (~20-40,000 characters of base64)."""
        from evsys_core import plotting
        from evsys_core.history.reports import downsample

        if not plotting.available():
            raise ToolError("plot_metrics needs matplotlib (pip install 'evsys[local]'); use get_metrics instead")
        run_id, curves, _ = self._curves(run, keys, split)
        if keys is None:
            curves = {k: v for k, v in curves.items()
                      if k in ("train/mean_loss", "train/mean_reward") or not k.startswith("train/")}
        chosen = {k: downsample(v, 500) for k, v in list(curves.items())[:10]}
        if not chosen:
            raise ToolError(f"run {run_id} has no metrics to plot yet")
        train = plotting.Panel("training", [(k, p) for k, p in chosen.items() if k.startswith("train/")])
        evals = plotting.Panel("evaluation", [(k, p) for k, p in chosen.items() if not k.startswith("train/")])
        panels = [p for p in (train, evals) if p.series]
        for dpi in (80, 60, 45):
            png = plotting.draw(panels, size=(4.5 * len(panels), 3.2), dpi=dpi)
            if png is not None and len(png) <= IMAGE_BYTES:
                return Image(data=png, format="png")
        raise ToolError("the plot does not fit the answer budget; pass fewer keys")

    @tool_boundary
    def query_runs(
        self,
        sql: Annotated[str, Field(min_length=1, max_length=20_000, description=(
            "one read-only SELECT over the index tables runs, metrics(run_id, step, split, key, value), "
            "metric_summary, params, predictions, conclusions(run_id, time, author, text, ordinal)"))],
        max_rows: Annotated[int, Field(ge=1, le=1000, description="rows per page (1-1000)")] = 100,
        offset: Annotated[int, Field(ge=0, le=100_000, description="skip this many rows (a previous next_offset)")] = 0,
    ) -> QueryResult:
        """Read-only SQL over the run index; 10 s time limit; cells cut at 2,000 characters, an answer
        at ~45,000 (next_offset pages on)."""
        statement = check_readonly_sql(sql)
        with self._index() as idx:
            columns, rows, truncated = idx.query(statement, max_rows=offset + max_rows)
        columns = [budget.text(str(c), budget.NAME_CHARS) for c in columns[:500]]
        columns = columns[:budget.fit(columns, 10_000)]
        page = [[budget.cell(c) for c in row[:len(columns)]] for row in rows[offset:offset + max_rows]]
        kept = budget.fit(page, budget.FIT_CHARS - budget.size(columns))
        more = truncated or kept < len(page)
        note = None
        if kept < len(page):
            note = (f"answer cut at {kept} rows to fit; pass next_offset as offset, or select fewer columns"
                    if kept else "one row is wider than the answer budget; select fewer or shorter columns")
        elif truncated:
            note = f"more than {offset + max_rows} rows; pass next_offset as offset, or add LIMIT/WHERE"
        return QueryResult(columns=columns, rows=page[:kept], row_count=kept, offset=offset,
                           next_offset=offset + kept if more and kept else None, truncated=more, note=note)

    @tool_boundary
    def compare_runs(
        self,
        runs: Annotated[list[Annotated[str, Field(min_length=1, max_length=1024)]], Field(
            min_length=2, max_length=2, description=(
                "[BASE, CAND]: two run references (id, name prefix or directory) or replicate groups (group id "
                "or name, from launch_run with seeds); a group pools its completed replicates' tasks"))],
        metric: Annotated[str | None, Field(max_length=300, description="only this metric key")] = None,
        step: Annotated[int | None, Field(ge=0, description="evaluation step in both runs (default: each run's final)")] = None,
    ) -> CompareResult:
        """Is CAND better than BASE? Config differences and, per shared metric, both values and the delta;
        eval metrics are paired task by task with a 95% CI, p-value and verdict (better/worse/inconclusive);
        base_seeds/cand_seeds and n_tasks say how many replicates and tasks were pooled; ~45,000 characters
        at most (metrics past that are left out with a note)."""
        base, cand = (self._resolve(r)[0] if self._names_a_path(r) else r for r in runs)
        with self._index() as idx:
            cmp = idx.compare(base, cand, metric=metric, step=step)
        config = [(budget.text(str(d["key"]), budget.NAME_CHARS), [budget.cell(v, 200) for v in d["values"]])
                  for d in cmp.get("config", [])]
        fields = set(MetricComparison.model_fields)
        metrics = [MetricComparison(**{k: (budget.num(v) if isinstance(v, float) else
                                           budget.text(v, budget.NAME_CHARS) if isinstance(v, str) else v)
                                       for k, v in m.items() if k in fields}) for m in cmp.get("metrics", [])]
        rows = [self._row(r) for r in cmp["runs"]]
        sides = [CompareSide(kind=r["kind"], id=str(r["run_id"]), name=budget.text(r.get("name"), 200),
                             seeds=[budget.integer(x) for x in r["seeds"][:100]],
                             run_ids=[str(x) for x in r["run_ids"][:100]]) for r in cmp["runs"]]
        room = budget.FIT_CHARS - budget.size([r.model_dump(mode="json") for r in (*rows, *sides)])
        n_config = budget.fit(config, room // 3)
        n_metrics = budget.fit([m.model_dump(mode="json") for m in metrics], room - budget.size(config[:n_config]))
        note = cmp.get("note") or ""
        if n_config < len(config) or n_metrics < len(metrics):
            note = (f"{note} " if note else "") + (
                f"showing {n_config} of {len(config)} config differences and {n_metrics} of {len(metrics)} "
                "metrics; pass metric to compare one, or query_runs over metric_summary for the rest")
        return CompareResult(sides=sides, runs=rows, config_diff=dict(config[:n_config]), alpha=cmp["alpha"],
                             metrics=metrics[:n_metrics], note=note)

    @tool_boundary
    def record_conclusion(
        self,
        run: RunRef,
        text: Annotated[str, Field(min_length=1, max_length=MAX_CONCLUSION_CHARS, description=(
            "what the run showed and what to try next, in a few sentences"))],
    ) -> ConclusionResult:
        """Append a conclusion to the run's conclusion.md and the index (never replaces one); answers in
        ~200 characters."""
        from evsys_core.history.index import conclude

        paths.check_text(text, "text", MAX_CONCLUSION_CHARS)
        if not text.strip():
            raise ToolError("text is blank; write what the run showed")
        run_id, run_dir = self._resolve(run)
        with self._index() as idx:
            conclude(self.workspace, run_id, text.strip(), author="agent", index=idx)
        return ConclusionResult(run_id=run_id, path=self._rel(run_dir / rundir.CONCLUSION), chars=len(text.strip()),
                                message="recorded; list_runs and query_runs (table conclusions) now show it")
