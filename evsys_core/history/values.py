"""Values read from run files, made to fit the index's columns. Every one is untrusted.

A run directory may come from anywhere (a copied folder, another tool, a hand edit), so a
value that does not fit its column — a step of 1e300, a 30-digit integer, NaN or an
out-of-range time, a pid of 2**32, a list where a name belongs, a megabyte of text — is left
out (stored as NULL) or cut, and noted. `Notes.flush()` then prints one warning per file that
names the line (or the field) and what was done, so one bad file never takes the history down.
"""

from __future__ import annotations

import json
import math
from typing import Any

from evsys_core.history.store import warn

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_TIME = 253402300799.0  # 9999-12-31T23:59:59Z, the last second DuckDB and Python both show
MAX_TEXT = 10_000  # characters kept of a text field of run.json (error, name, ...)
MAX_ID = 200  # a run id longer than this (or not a string) is replaced by the folder's hash
NOTES_PER_FILE = 3  # warnings printed per file; the rest are counted


class Notes:
    """Warnings about values that were dropped or cut, grouped by file."""

    def __init__(self) -> None:
        self.by_file: dict[str, list[str]] = {}
        self.counts: dict[str, int] = {}

    def add(self, path: str, line: int | None, field: str, value: Any, what: str) -> None:
        self.counts[path] = self.counts.get(path, 0) + 1
        shown = self.by_file.setdefault(path, [])
        if len(shown) < NOTES_PER_FILE:
            where = f"{path}:{line}" if line is not None else path
            shown.append(f"{where}: {field}: {_show(value)} {what}")

    def flush(self) -> None:
        for path, shown in self.by_file.items():
            more = self.counts[path] - len(shown)
            for text in shown:
                warn(text)
            if more > 0:
                warn(f"{path}: {more} more value(s) like these were left out or cut")
        self.by_file.clear()
        self.counts.clear()


def _show(v: Any) -> str:
    try:
        text = json.dumps(v, allow_nan=True, default=str)
    except (ValueError, RecursionError):
        text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def int64(v: Any, notes: Notes | None = None, path: str = "", line: int | None = None,
          field: str = "") -> int | None:
    """An integer column (step, pid, max_steps): a whole number within 64 bits, else None."""
    if v is None:
        return None
    if type(v) is int and INT64_MIN <= v <= INT64_MAX:
        return v
    if isinstance(v, float) and math.isfinite(v) and v.is_integer() and INT64_MIN <= v <= INT64_MAX:
        return int(v)
    if notes is not None:
        notes.add(path, line, field, v, "is not a whole number within 64 bits; left out")
    return None


def number(v: Any, notes: Notes | None = None, path: str = "", line: int | None = None,
           field: str = "") -> float | None:
    """A DOUBLE column from run.json or config: finite numbers (huge integers become ±inf)."""
    if v is None:
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        try:
            return float(v)
        except OverflowError:
            return math.inf if v > 0 else -math.inf
    if notes is not None:
        notes.add(path, line, field, v, "is not a number; left out")
    return None


def epoch(v: Any, notes: Notes | None = None, path: str = "", line: int | None = None,
          field: str = "") -> float | None:
    """A TIMESTAMP column: epoch seconds from 1970 to the year 9999, else None."""
    if v is None:
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        try:
            t = float(v)
        except OverflowError:
            t = math.inf
        if 0.0 <= t <= MAX_TIME:
            return t
    if notes is not None:
        notes.add(path, line, field, v, "is not a time in epoch seconds (1970 to 9999); left out")
    return None


def text(v: Any, notes: Notes | None = None, path: str = "", line: int | None = None,
         field: str = "", limit: int = MAX_TEXT) -> str | None:
    """A VARCHAR column: strings as they are (cut at `limit`), other values as JSON text."""
    if v is None:
        return None
    if not isinstance(v, str):
        try:
            v = json.dumps(v, default=str)
        except (ValueError, RecursionError):
            v = repr(v)
    if len(v) > limit:
        if notes is not None:
            notes.add(path, line, field, v, f"is {len(v)} characters long; cut to {limit}")
        v = v[:limit] + f"… [{len(v) - limit} more characters]"
    return v


def name(v: Any, notes: Notes | None = None, path: str = "", field: str = "",
         limit: int = MAX_ID) -> str | None:
    """A run id or name: a non-empty string of at most `limit` characters, else None."""
    if v is None or v == "":
        return None
    if isinstance(v, str) and len(v) <= limit and "\x00" not in v:
        return v
    if notes is not None:
        notes.add(path, None, field, v, f"is not a string of at most {limit} characters; "
                  "the folder stands in for it")
    return None
