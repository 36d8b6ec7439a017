"""Loading training rows and benchmark tasks: read the source, transform, detect, validate.

    dataset = load_dataset(cfg.data, cfg.workspace)   # Dataset(format, rows, path, lines)
    tasks = load_tasks(Path("examples/sdft_walkthrough/data/val"))

Formats (detected from the rows' keys; a file holds one format):
    prompt             PromptExample    {"inputs": {...}, "expected": "..."}        sdft
    chat               ChatExample      {"messages": [{"role", "content"}, ...]}     sft
    prompt_completion  PromptCompletion {"prompt": "...", "completion": "..."}       sft
    task               Task             {"task_id", "instruction", "verifier"}      rl, benchmarks

Sources: `jsonl` (one JSON object a line) and `csv` (a header row; a dotted header such as
`inputs.question` becomes a nested key, a cell holding a JSON list or object is parsed,
an empty cell is left out). A transform (`@register_transform("name")`, or
`module:function` with the module next to the config) turns raw rows into a format.
Bad rows raise DataError naming the file and line: the first 5 bad lines and a total.
The parts live in their own modules: rows.py (formats), sources.py (reading jsonl/csv),
transforms.py; their public names import from here as well.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from evsys_core.config import DataConfig, Issue
from evsys_core.errors import DataError
# the formats, sources and transforms live in their own modules; their public names are
# importable from here too, as the rest of the code imports them
from evsys_core.rows import (  # noqa: F401
    FORMAT_SHAPES, FORMATS, FORMATS_FOR_ALGORITHM, ChatExample, Format, Message, PromptCompletion,
    PromptExample, Task, VerifierSpec, _no_format_message, detect_format, parse_row,
)
from evsys_core.sources import MAX_SHOWN, _Problems, _read_jsonl, _read_source, display_path  # noqa: F401
from evsys_core.transforms import (  # noqa: F401
    TRANSFORMS, _apply_transform, register_transform, resolve_transform, transform_homes,
)


@dataclass
class Dataset:
    """Typed rows of one format, with the source line of each row."""

    format: Format
    rows: list[Any]
    path: Path
    lines: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)


def load_dataset(data: DataConfig, workspace: Path | None = None, *,
                 config_dir: Path | None = None) -> Dataset:
    """Read data.path, apply data.transform, detect the format and validate every row.

    Raises DataError (with `.issues`) naming the file, the bad lines and what was expected.
    """
    ws = Path(workspace) if workspace else Path.cwd()
    path = data.path if data.path.is_absolute() else ws / data.path
    shown = display_path(path)
    if not path.exists():
        message = (f"data file {shown} does not exist (data.path is relative to the "
                   f"workspace {ws}); fix data.path or create the file")
        raise DataError(message, [Issue(field="data.path", message=message)])
    transform = None
    if data.transform:
        transform = resolve_transform(data.transform, transform_homes(data, ws, config_dir))
    problems = _Problems(shown)
    raw_rows = _read_source(path, data.source_kind or "jsonl", problems)
    if transform is not None:
        raw_rows = _apply_transform(transform, data.transform or "", raw_rows, problems)
    hint = ("Fix those lines" + (" or the transform" if transform else
                                 ", or set data.transform to convert the rows") + ".")
    problems.raise_if_any("line", hint)
    if not raw_rows:
        message = f"{shown} holds no rows; add training rows (one {data.source_kind} row each)"
        raise DataError(message, [Issue(file=shown, field="", message="the file holds no rows")])

    detected = [(line, row, detect_format(row)) for line, row in raw_rows]
    counts = Counter(fmt for _, _, fmt in detected if fmt)
    if not counts:
        for line, row, _ in detected:
            problems.add(line, _no_format_message(row))
        problems.raise_if_any("line", hint)
    fmt = max(counts, key=lambda f: (counts[f], -next(i for i, d in enumerate(detected)
                                                        if d[2] == f)))
    first = next(line for line, _, f in detected if f == fmt)
    rows, lines = [], []
    for line, row, row_fmt in detected:
        if row_fmt is None:
            problems.add(line, _no_format_message(row))
        elif row_fmt != fmt:
            problems.add(line, f"a {row_fmt} row in a file of {fmt} rows (the format of line "
                         f"{first} and {counts[fmt]} rows in all); a data file holds one format: "
                         f"{FORMAT_SHAPES[fmt]}")
        else:
            parsed = parse_row(fmt, row, line, problems)
            if parsed is not None:
                rows.append(parsed)
                lines.append(line)
    problems.raise_if_any("line", hint)
    return Dataset(format=fmt, rows=rows, path=path, lines=lines)  # type: ignore[arg-type]


# ---- benchmark tasks ----------------------------------------------------------------------

def load_tasks_with_lines(bench_dir: Path) -> list[tuple[int, Task]]:
    """(line, Task) for every row of bench_dir/tasks.jsonl; DataError with line numbers."""
    bench_dir = Path(bench_dir)
    path = bench_dir if bench_dir.suffix == ".jsonl" and bench_dir.is_file() \
        else bench_dir / "tasks.jsonl"
    shown = display_path(path)
    if not path.is_file():
        where = "does not exist" if not bench_dir.exists() else "has no tasks.jsonl"
        message = (f"benchmark directory {display_path(bench_dir)} {where}; a benchmark is a "
                   "directory holding tasks.jsonl (one Task row a line)")
        raise DataError(message, [Issue(file=shown, message=message)])
    problems = _Problems(shown)
    raw_rows = _read_jsonl(path, problems)
    tasks: list[tuple[int, Task]] = []
    seen: dict[str, int] = {}
    for line, row in raw_rows:
        fmt = detect_format(row)
        if fmt not in (None, "task"):
            problems.add(line, f"a {fmt} row; tasks.jsonl holds {FORMAT_SHAPES['task']} rows")
            continue
        task = parse_row("task", row, line, problems)
        if task is None:
            continue
        if task.task_id in seen:
            problems.add(line, f"task_id {task.task_id!r} is already used at line "
                         f"{seen[task.task_id]}; task ids must be unique", field="task_id")
            continue
        seen[task.task_id] = line
        tasks.append((line, task))
    problems.raise_if_any("task line", "Fix those lines of tasks.jsonl.")
    if not tasks:
        message = f"{shown} holds no tasks; add one Task row a line"
        raise DataError(message, [Issue(file=shown, message="the file holds no tasks")])
    return tasks


def load_tasks(bench_dir: Path) -> list[Task]:
    """The tasks of bench_dir/tasks.jsonl; DataError (with line numbers) if any row is bad."""
    return [task for _, task in load_tasks_with_lines(bench_dir)]
