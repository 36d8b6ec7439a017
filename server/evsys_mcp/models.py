"""The structured results of the evsys-mcp tools (each tool's outputSchema).

Paths in every result are relative to the workspace. List-like results page: `offset` is
where this page starts, `next_offset` (null at the end) is what to pass to read on.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_serializer

from evsys_core.report import Report

NEXT = Field(None, description="pass as `offset` to read the next page; null when this is the last")


class RunRow(BaseModel):
    id: str
    name: str | None = None
    status: str | None = None
    kind: str | None = Field(None, description="train (a training run) or score (a score_benchmark run)")
    run_dir: str | None = Field(None, description="relative to the workspace")
    algorithm: str | None = None
    model: str | None = None
    backend: str | None = None
    started_at: float | None = Field(None, description="epoch seconds")
    ended_at: float | None = None
    step: int | None = None
    max_steps: int | None = None
    parent_run_id: str | None = None
    metrics: dict[str, float | None] | None = Field(None, description="final value of each evaluation metric")
    conclusion: str | None = Field(None, description="the latest conclusion, shortened")

    @model_serializer(mode="wrap")
    def _compact(self, handler: Any) -> dict[str, Any]:  # rows are many: absent fields are left out
        return {k: v for k, v in handler(self).items() if v is not None}


class RunList(BaseModel):
    runs: list[RunRow]
    count: int = Field(description="runs in this page")
    offset: int
    next_offset: int | None = NEXT
    total: int | None = Field(None, description="every matching run; known when this page reaches the end")
    note: str | None = None


class VsTop(BaseModel):
    verdict: str | None = Field(None, description="better: the top row is really ahead of this one (alpha 0.05); "
                                "inconclusive: the data cannot tell them apart")
    delta: float | None = Field(None, description="top row minus this row, over the paired tasks")
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    n_tasks: int | None = Field(None, description="tasks paired by task_id")
    seeds: int | None = Field(None, description="replicates pooled on this row's side")
    note: str | None = None


class BestRow(BaseModel):
    rank: int
    run_id: str = Field(description="the run's id, or the group's id when ranking groups")
    name: str | None = None
    status: str | None = None
    run_dir: str | None = None
    algorithm: str | None = None
    model: str | None = None
    value: float | None = Field(None, description="the run's value, or the mean over a group's completed runs")
    step: int | None = None
    seeds: list[int | None] | None = Field(None, description="a group's completed replicates' seeds")
    ci95_low: float | None = Field(None, description="a group's 95% t-interval of the mean across replicates")
    ci95_high: float | None = None
    vs_top: VsTop | None = Field(None, description="the top row paired with this one task by task (all "
                                 "replicates' tasks); absent for the top row and for training metrics")

    @model_serializer(mode="wrap")
    def _compact(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class BestList(BaseModel):
    metric: str
    by: str
    maximize: bool
    groups: bool = Field(False, description="true: the rows are replicate groups")
    runs: list[BestRow]
    offset: int
    next_offset: int | None = NEXT


class SummaryPage(BaseModel):
    run_id: str
    path: str
    text: str
    offset: int = Field(description="byte offset of this page in the file")
    next_offset: int | None = NEXT
    size: int = Field(description="the file's size in bytes")


class MetricSeries(BaseModel):
    key: str
    points: list[tuple[int, float | None]] = Field(description="[step, value] pairs, value to 6 significant digits")
    total_points: int
    downsampled: bool


class MetricsResult(BaseModel):
    run_id: str
    series: list[MetricSeries]
    keys_total: int = Field(description="how many metric keys matched (series page over them)")
    offset: int
    next_offset: int | None = NEXT
    splits: list[str] = Field(default_factory=list, description="the splits this run logged")
    available_keys: list[str] = Field(default_factory=list, description="metric keys of the run (the first 100)")
    note: str | None = None


class ValidationReport(Report):
    """The `evsys validate --json` report (evsys_core.validate.Report): ok when there are no
    errors (warnings allowed), each issue with file, line, column, field and message."""

    note: str | None = Field(None, description="set when issues were left out to fit the answer")


class WriteConfigResult(BaseModel):
    path: str
    written: bool
    overwritten: bool
    report: ValidationReport


class FileList(BaseModel):
    items: list[dict[str, Any]] = Field(description="path (relative to the workspace) and a few facts each")
    offset: int
    next_offset: int | None = NEXT
    total: int
    note: str | None = None


class Replicate(BaseModel):
    seed: int
    run_id: str
    run_name: str
    run_dir: str


class LaunchResult(BaseModel):
    run_id: str = Field(description="the run's id (a group: its first replicate's)")
    run_name: str
    run_dir: str
    kind: str = Field(description="train or score")
    pid: int
    status: str
    config_path: str | None = None
    log_path: str
    seed: int | None = None
    group_id: str | None = Field(None, description="a replicate group's id (launch_run with seeds)")
    group_name: str | None = None
    replicates: list[Replicate] = Field(default_factory=list, description="every replicate, in run order")
    message: str


class RunStatus(BaseModel):
    run_id: str
    name: str | None = None
    kind: str | None = None
    status: str | None = None
    run_dir: str
    pid: int | None = None
    step: int | None = Field(None, description="training step, or tasks scored for a score run")
    max_steps: int | None = Field(None, description="the total: training steps, or tasks of a score run")
    started_at: float | None = None
    ended_at: float | None = None
    elapsed_s: float | None = None
    error: str | None = None
    final_metrics: dict[str, float | None] = Field(default_factory=dict)
    scores: dict[str, str] = Field(default_factory=dict, description=(
        "final_metrics as shown to people: '0.727 ± 0.276 (95% CI, 11 tasks)' (± is 1.96 stderr)"))
    latest_metrics: dict[str, float | None] = Field(default_factory=dict, description="last logged value of each metric")
    log_tail: list[str] = Field(default_factory=list, description="last lines of train.log when the run failed")
    note: str | None = None


class WaitResult(RunStatus):
    timed_out: bool
    waited_s: float
    message: str


class LogPage(BaseModel):
    run_id: str
    path: str
    text: str
    offset: int = Field(description="byte offset of this page in train.log")
    next_offset: int | None = NEXT
    size: int = Field(description="train.log's size in bytes")


class CancelResult(BaseModel):
    run_id: str
    status: str | None
    was_running: bool
    signal: str | None
    message: str


class ConclusionResult(BaseModel):
    run_id: str
    path: str
    chars: int
    message: str


class QueryResult(BaseModel):
    columns: list[str]
    rows: list[list[Any]]
    row_count: int
    offset: int
    next_offset: int | None = NEXT
    truncated: bool
    note: str | None = None


class MetricComparison(BaseModel):
    key: str
    split: str | None = None
    base: float | None = Field(None, description="BASE's value (eval metrics: mean over the paired tasks)")
    cand: float | None = None
    delta: float | None = Field(None, description="CAND - BASE")
    ci_low: float | None = Field(None, description="95% interval of the delta")
    ci_high: float | None = None
    p_value: float | None = None
    test: str | None = Field(None, description="mcnemar exact, sign-flip exact, or sign-flip with seeded draws")
    n_tasks: int | None = Field(None, description="tasks paired by task_id")
    base_seeds: int | None = Field(None, description="replicates pooled on BASE's side (1 for a run)")
    cand_seeds: int | None = None
    base_tasks: int | None = Field(None, description="tasks BASE's side scored")
    cand_tasks: int | None = None
    base_step: int | None = None
    cand_step: int | None = None
    verdict: str | None = Field(None, description="better | worse | inconclusive (p < alpha); "
                                "null for metrics without per-task predictions")
    shown: dict[str, str] | None = Field(None, description="BASE and CAND as '0.727 ± 0.276 (95% CI, 11 tasks)'")
    note: str | None = None


class CompareSide(BaseModel):
    kind: str = Field(description="run, or group (a replicate group: its completed runs pooled)")
    id: str = Field(description="the run id or group id")
    name: str | None = None
    seeds: list[int | None] = Field(default_factory=list)
    run_ids: list[str] = Field(default_factory=list, description="the runs on this side")


class CompareResult(BaseModel):
    sides: list[CompareSide] = Field(description="[BASE, CAND]")
    runs: list[RunRow] = Field(description="[BASE, CAND] (a group: id = group id, status = 'k/n completed')")
    config_diff: dict[str, list[Any]] = Field(
        default_factory=dict, description="config field -> [BASE value, CAND value] (only fields that differ)")
    alpha: float
    metrics: list[MetricComparison] = Field(default_factory=list)
    note: str = ""
