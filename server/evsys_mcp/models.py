"""The structured results of the evsys-mcp tools (each tool's outputSchema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

class RunRow(BaseModel):
    id: str
    name: str | None = None
    status: str | None = None
    run_dir: str | None = Field(None, description="relative to the workspace")
    algorithm: str | None = None
    model: str | None = None
    backend: str | None = None
    started_at: float | None = Field(None, description="epoch seconds")
    ended_at: float | None = None
    step: int | None = None
    max_steps: int | None = None
    parent_run_id: str | None = None
    metrics: dict[str, float | None] = Field(default_factory=dict, description="final value of each evaluation metric")
    conclusion: str | None = Field(None, description="the latest conclusion, shortened")


class RunList(BaseModel):
    runs: list[RunRow]
    count: int
    truncated: bool = Field(description="more runs matched than `limit`")


class SummaryPage(BaseModel):
    run_id: str
    path: str
    text: str
    offset: int
    next_offset: int | None = Field(description="pass as `offset` to read on; null at the end")
    total_chars: int


class MetricPoint(BaseModel):
    step: int
    value: float | None


class MetricSeries(BaseModel):
    key: str
    split: str | None = None
    points: list[MetricPoint]
    total_points: int
    downsampled: bool


class MetricsResult(BaseModel):
    run_id: str
    series: list[MetricSeries]
    available_keys: list[str]
    note: str | None = Field(None, description="set when series or available_keys were cut")


class ConfigIssue(BaseModel):
    file: str | None = None
    line: int | None = None
    column: int | None = None
    field: str = ""
    message: str
    severity: str = "error"


class ValidationReport(BaseModel):
    """The `evsys validate --json` report: ok when there are no errors (warnings allowed)."""

    ok: bool
    config_path: str
    deep: bool = False
    errors: list[ConfigIssue] = Field(default_factory=list)
    warnings: list[ConfigIssue] = Field(default_factory=list)


class WriteConfigResult(BaseModel):
    path: str
    written: bool
    overwritten: bool
    report: ValidationReport


class LaunchResult(BaseModel):
    run_id: str
    run_name: str
    run_dir: str
    pid: int
    status: str
    config_path: str
    log_path: str
    message: str


class RunStatus(BaseModel):
    run_id: str
    name: str | None = None
    status: str | None = None
    run_dir: str
    pid: int | None = None
    step: int | None = None
    max_steps: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    elapsed_s: float | None = None
    error: str | None = None
    final_metrics: dict[str, float | None] = Field(default_factory=dict)
    scores: dict[str, str] = Field(default_factory=dict, description=(
        "final_metrics as shown to people: '0.727 ± 0.276 (95% CI, 11 tasks)' (± is 1.96 stderr)"))
    latest_metrics: dict[str, float | None] = Field(default_factory=dict, description="last logged value of each metric")
    log_tail: list[str] = Field(default_factory=list, description="last lines of train.log when the run failed")


class WaitResult(RunStatus):
    timed_out: bool
    waited_s: float
    message: str


class LogTail(BaseModel):
    run_id: str
    path: str
    lines: list[str]
    truncated: bool


class CancelResult(BaseModel):
    run_id: str
    status: str | None
    was_running: bool
    signal: str | None
    message: str


class ScoreOutput(BaseModel):
    run_id: str
    run_dir: str
    benchmark: str
    scored: str = Field(description="the model name or run that was scored")
    num_tasks: int
    metrics: dict[str, float | None]
    scores: dict[str, str] = Field(default_factory=dict,
                                   description="each score as '0.727 ± 0.276 (95% CI, 11 tasks)'")


class ConclusionResult(BaseModel):
    run_id: str
    path: str
    chars: int
    message: str


class QueryResult(BaseModel):
    columns: list[str]
    rows: list[list[Any]]
    row_count: int
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
    base_step: int | None = None
    cand_step: int | None = None
    verdict: str | None = Field(None, description="better | worse | inconclusive (p < alpha); "
                                "null for metrics without per-task predictions")
    shown: dict[str, str] | None = Field(None, description="BASE and CAND as '0.727 ± 0.276 (95% CI, 11 tasks)'")
    note: str | None = None


class CompareResult(BaseModel):
    runs: list[RunRow] = Field(description="[BASE, CAND]")
    config_diff: dict[str, list[Any]] = Field(
        default_factory=dict, description="config field -> [BASE value, CAND value] (only fields that differ)")
    alpha: float
    metrics: list[MetricComparison] = Field(default_factory=list)
    note: str = ""
