"""Training rows and benchmark tasks: the four row formats, sources, detection, transforms.

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
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from evsys_core import usercode
from evsys_core.config import DataConfig, Issue, dotted
from evsys_core.errors import DataError

MAX_SHOWN = 5  # bad lines listed in full; the rest are counted

Format = Literal["prompt", "chat", "prompt_completion", "task"]


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class PromptExample(_Row):
    inputs: dict[str, Any]
    expected: str


class Message(_Row):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatExample(_Row):
    messages: list[Message] = Field(min_length=1)

    @model_validator(mode="after")
    def _has_assistant(self) -> "ChatExample":
        if not any(m.role == "assistant" for m in self.messages):
            raise PydanticCustomError("invalid", "no assistant message: there is nothing to "
                                      "learn from; add a {\"role\": \"assistant\"} turn")
        return self


class PromptCompletion(_Row):
    prompt: str
    completion: str


class VerifierSpec(_Row):
    kind: Literal["in_process", "python", "command"]
    fn_name: str | None = None  # in_process: a registered verifier name
    fn: str | None = None  # python: "module:function"
    expected: Any = None
    path: str | None = None  # command: task dir relative to the tasks.jsonl directory
    timeout_s: float = Field(60, gt=0)

    @model_validator(mode="after")
    def _fields_for_kind(self) -> "VerifierSpec":
        needs = {"in_process": "fn_name", "python": "fn", "command": "path"}
        need = needs[self.kind]
        if not getattr(self, need):
            raise PydanticCustomError("invalid", f"a {self.kind} verifier needs {need!r}" + {
                "fn_name": " (a registered function such as contains, exact, regex, numeric)",
                "fn": " ('module:function')", "path": " (a task directory with tests/test.sh)",
            }[need])
        for other in needs.values():
            if other != need and getattr(self, other) is not None:
                raise PydanticCustomError("invalid", f"{other!r} is not used by a {self.kind} "
                                          f"verifier (it takes {need!r}); remove it or change kind")
        if self.kind == "python" and ":" not in (self.fn or ""):
            raise PydanticCustomError("invalid", f"fn {self.fn!r} must be 'module:function'")
        return self


class Task(_Row):
    task_id: str = Field(min_length=1)
    instruction: str
    verifier: VerifierSpec


FORMATS: dict[str, type[_Row]] = {
    "prompt": PromptExample, "chat": ChatExample,
    "prompt_completion": PromptCompletion, "task": Task,
}
FORMAT_SHAPES = {
    "prompt": 'PromptExample {"inputs": {...}, "expected": "..."}',
    "chat": 'Chat {"messages": [{"role": ..., "content": ...}, ...]}',
    "prompt_completion": 'PromptCompletion {"prompt": "...", "completion": "..."}',
    "task": 'Task {"task_id": ..., "instruction": ..., "verifier": {...}}',
}
FORMATS_FOR_ALGORITHM: dict[str, tuple[str, ...]] = {
    "sdft": ("prompt",), "sft": ("chat", "prompt_completion"), "rl": ("task",),
}
_SIGNATURES = {fmt: set(model.model_fields) for fmt, model in FORMATS.items()}


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


# ---- transforms ---------------------------------------------------------------------------

TRANSFORMS: dict[str, Callable[[dict[str, Any]], Any]] = {}


def register_transform(name: str) -> Callable[[Callable], Callable]:
    """Register `fn(raw_row: dict) -> row` under `name` for `data.transform: name`.

    The function returns a dict (or model) in one of the formats, a list of them, or None
    to drop the row.
    """
    def deco(fn: Callable) -> Callable:
        old = TRANSFORMS.get(name)
        if old is not None and _qualname(old) != _qualname(fn):
            raise DataError(f"transform name {name!r} is already registered by {_qualname(old)}; "
                            "pick another name")
        TRANSFORMS[name] = fn
        return fn
    return deco


def _qualname(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def transform_homes(data: DataConfig, workspace: Path, config_dir: Path | None = None) -> list[Path]:
    """Where a `module:function` transform's file may live: the config's folder, the workspace."""
    return [d for d in (config_dir or data.config_dir, Path(workspace)) if d is not None]


def resolve_transform(spec: str, search_dirs: Sequence[Path] = ()) -> Callable[[dict[str, Any]], Any]:
    """The function for `data.transform`: a registered name, or `module:function` where the
    module is a .py file in one of `search_dirs` (the config's directory, the workspace); see
    evsys_core.usercode. Raises DataError (field data.transform) if it cannot be used."""
    def fail(message: str) -> DataError:
        issue = Issue(field="data.transform", message=message)
        return DataError(f"data.transform: {message}", [issue])

    if ":" not in spec:
        if spec in TRANSFORMS:
            return TRANSFORMS[spec]
        known = ", ".join(sorted(TRANSFORMS)) or "none"
        raise fail(f"no transform is registered as {spec!r} (registered: {known}); write "
                   "module:function to load it from a module next to the config")
    try:
        return usercode.load(spec, list(search_dirs), registry=TRANSFORMS)
    except usercode.UserCodeError as e:
        raise fail(str(e)) from None


# ---- reading sources ----------------------------------------------------------------------

def display_path(path: Path) -> str:
    """`path` relative to the current directory when inside it, else absolute."""
    try:
        return str(Path(path).absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class _Problems:
    """Issues grouped by line, so that a report can show the first few lines and a count."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.by_line: dict[int, list[Issue]] = {}

    def add(self, line: int, message: str, field: str = "", column: int | None = None) -> None:
        self.by_line.setdefault(line, []).append(
            Issue(file=self.file, line=line, column=column, field=field, message=message))

    def raise_if_any(self, what: str, hint: str) -> None:
        if not self.by_line:
            return
        lines = sorted(self.by_line)
        issues = [i for n in lines[:MAX_SHOWN] for i in self.by_line[n]]
        if len(lines) > MAX_SHOWN:
            issues.append(Issue(file=self.file, message=f"{len(lines) - MAX_SHOWN} more bad "
                                f"lines not shown ({len(lines)} in total)"))
        n = len(lines)
        head = f"{self.file}: {n} bad {what}{'s' if n != 1 else ''}"
        head += f" (first {MAX_SHOWN} shown)" if n > MAX_SHOWN else ""
        raise DataError("\n".join([head + ":"] + [f"  {i}" for i in issues] + [hint]), issues)


def _read_jsonl(path: Path, problems: _Problems) -> list[tuple[int, Any]]:
    rows = []
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.add(n, f"not UTF-8 text (bad byte at column {e.start + 1}); save the "
                             "file as UTF-8")
                continue
            if n == 1:
                text = text.lstrip("\ufeff")
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                problems.add(n, f"not valid JSON: {e.msg} (column {e.colno}); each line must "
                             "be one whole JSON object", column=e.colno)
                continue
            except RecursionError:
                problems.add(n, "JSON nested too deeply to read; each line must be one flat "
                             "JSON object")
                continue
            if not isinstance(value, dict):
                problems.add(n, f"expected a JSON object {{...}}, got a JSON "
                             f"{type(value).__name__}")
                continue
            rows.append((n, value))
    return rows


def _read_csv(path: Path, problems: _Problems) -> list[tuple[int, Any]]:
    rows = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                return rows
            header = [h.strip() for h in header]
            for i, name in enumerate(header):
                if not name:
                    problems.add(1, f"column {i + 1} has no name; name every column")
                elif header.index(name) != i:
                    problems.add(1, f"column name {name!r} appears twice")
                elif any(other.startswith(name + ".") for other in header):
                    problems.add(1, f"column {name!r} clashes with the nested columns "
                                 f"{name}.*; keep one of them")
            if problems.by_line:
                return rows
            end = reader.line_num
            for record in reader:
                start, end = end + 1, reader.line_num
                if not any(cell.strip() for cell in record):
                    continue
                if len(record) != len(header):
                    problems.add(start, f"has {len(record)} cells but the header has "
                                 f"{len(header)} columns")
                    continue
                row: dict[str, Any] = {}
                for name, cell in zip(header, record):
                    if cell != "":
                        _set_dotted(row, name.split("."), _cell_value(cell))
                rows.append((start, row))
        except csv.Error as e:
            problems.add(reader.line_num, f"not valid CSV: {e}")
        except UnicodeDecodeError as e:
            problems.add(reader.line_num + 1, f"not UTF-8 text ({e.reason}); save the file "
                         "as UTF-8")
    return rows


def _cell_value(cell: str) -> Any:
    if cell[:1] in "[{":
        try:
            return json.loads(cell)
        except json.JSONDecodeError:
            pass
    return cell


def _set_dotted(row: dict[str, Any], parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        row = row.setdefault(part, {})
    row[parts[-1]] = value


def _read_source(path: Path, source_kind: str, problems: _Problems) -> list[tuple[int, Any]]:
    reader = _read_csv if source_kind == "csv" else _read_jsonl
    try:
        return reader(path, problems)
    except IsADirectoryError:
        raise DataError(f"{problems.file} is a directory; data.path must name a "
                        f"{source_kind} file", [Issue(field="data.path", message=(
                            f"{problems.file} is a directory, not a {source_kind} file"))]) from None
    except OSError as e:
        raise DataError(f"cannot read {problems.file}: {e.strerror}",
                        [Issue(field="data.path", message=f"cannot read {problems.file}: "
                               f"{e.strerror}")]) from None


# ---- formats ------------------------------------------------------------------------------

def detect_format(row: dict[str, Any]) -> str | None:
    """The format whose keys a row matches best (None if it shares no key with any, or ties)."""
    keys = set(row)
    for fmt, sig in _SIGNATURES.items():
        if keys == sig:
            return fmt
    scores = {fmt: len(keys & sig) for fmt, sig in _SIGNATURES.items()}
    best = max(scores.values())
    winners = [fmt for fmt, s in scores.items() if s == best]
    return winners[0] if best > 0 and len(winners) == 1 else None


def parse_row(fmt: str, row: dict[str, Any], line: int, problems: _Problems) -> Any | None:
    """Validate `row` as format `fmt`; record its problems (with field paths) at `line`."""
    try:
        return FORMATS[fmt].model_validate(row)
    except ValidationError as e:
        for err in e.errors(include_url=False):
            problems.add(line, _row_message(err, fmt), field=dotted(err["loc"]))
        return None


def _row_message(err: dict[str, Any], fmt: str) -> str:
    kind, loc = err["type"], err["loc"]
    if kind == "missing":
        return f"required key '{loc[-1]}' is missing (a {FORMAT_SHAPES[fmt]} row)"
    if kind == "extra_forbidden":
        return f"unknown key '{loc[-1]}'"
    msg = err["msg"].replace("Input should be", "must be")
    given = err.get("input")
    if kind != "invalid" and not isinstance(given, dict):
        text = repr(given)
        msg += f", got {text if len(text) < 60 else text[:57] + '...'}"
    return msg


def _no_format_message(row: dict[str, Any]) -> str:
    keys = ", ".join(sorted(map(str, row))) or "no keys"
    return (f"keys ({keys}) fit no row format; a row is one of "
            + "; ".join(FORMAT_SHAPES.values())
            + " — or set data.transform to convert your rows")


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


def _apply_transform(fn: Callable, name: str, raw_rows: list[tuple[int, Any]],
                     problems: _Problems) -> list[tuple[int, Any]]:
    out = []
    for line, row in raw_rows:
        try:
            result = fn(row)
        except Exception as e:
            problems.add(line, f"transform {name} raised {type(e).__name__}: {e}")
            continue
        for item in result if isinstance(result, list) else [result]:
            if item is None:
                continue
            if isinstance(item, BaseModel):
                item = item.model_dump()
            if not isinstance(item, dict):
                problems.add(line, f"transform {name} returned a {type(item).__name__}; it must "
                             "return a dict in one of the row formats, a list of them, or None")
                continue
            out.append((line, item))
    return out


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
