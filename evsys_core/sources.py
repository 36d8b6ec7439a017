"""Reading a data or task file into raw rows with their line numbers: jsonl and csv.

`jsonl`: one JSON object a line. `csv`: a header row; a dotted header such as
`inputs.question` becomes a nested key, a cell holding a JSON list or object is parsed, an
empty cell is left out. Problems are gathered by line (`_Problems`): a report shows the first
MAX_SHOWN bad lines and counts the rest.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from evsys_core.config import Issue
from evsys_core.errors import DataError

MAX_SHOWN = 5  # bad lines listed in full; the rest are counted


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
