"""Answer budgets: every tool answer fits an agent's context.

Claude Code keeps a tool answer in the conversation only up to 50,000 characters (longer ones
go to a file) and cuts error texts near 11,000. So each answer is built to fit ANSWER_CHARS
(its compact JSON, which is also its text content), each error to ERROR_CHARS; list-like
answers page (`offset` / `next_offset`) instead of growing, and every value read from a file
is bounded here before it is echoed.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable

ANSWER_CHARS = 50_000   # hard limit of a tool answer's text content
FIT_CHARS = 44_000      # what the list-like answers fill, leaving room for their other fields
ERROR_CHARS = 10_000    # hard limit of an error text
NAME_CHARS = 200        # a metric key, a run name, a column name
CELL_CHARS = 2_000      # one query cell, one config value


def compact(obj: Any) -> str:
    """The text content of an answer: compact JSON (no indentation)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str)


def size(obj: Any) -> int:
    return len(compact(obj))


def escaped(s: str) -> int:
    """Characters `s` takes in an answer (JSON escapes control characters as \\uXXXX)."""
    return len(json.dumps(s, ensure_ascii=False)) - 2


def _kept(v: str, limit: int) -> int:
    """How many leading characters of `v` take at most `limit` characters in the answer."""
    keep = min(len(v), limit)
    while keep and escaped(v[:keep]) > limit:
        keep = keep * 3 // 4
    return keep


def text(v: Any, limit: int) -> str | None:
    """A value read from a file as a string of at most ~`limit` characters in the answer."""
    if v is None:
        return None
    v = v if isinstance(v, str) else str(v)
    if escaped(v) <= limit:
        return v
    keep = _kept(v, limit)
    return v[:keep] + f"… [{len(v) - keep} more characters]"


def page(read: Any, offset: int | None, max_bytes: int, max_chars: int = FIT_CHARS) -> Any:
    """`read(offset, max_bytes)` (a pages.Page), shortened until its text fits `max_chars`:
    bytes that JSON escapes (control characters) take up to six characters each."""
    p = read(offset, max_bytes)
    while escaped(p.text) > max_chars and max_bytes > 1:
        max_bytes = max(1, max_bytes * max_chars // (escaped(p.text) + 1) * 9 // 10)
        p = read(p.offset, max_bytes)
    return p


def num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, int) and abs(v) > 2**63:
        return float(v) if abs(v) < 1e308 else None
    return None if (isinstance(v, float) and not math.isfinite(v)) else float(v)


def short(v: Any) -> float | None:
    """A number rounded to 6 significant digits (a curve's point: what a plot can show)."""
    f = num(v)
    return None if f is None else float(f"{f:.6g}")


def integer(v: Any) -> int | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return int(v) if abs(v) < 2**63 else None


def when(v: Any) -> float | None:
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
    return num(v)


def metrics(d: Any, max_chars: int, keys: Iterable[str] | None = None) -> tuple[dict[str, float | None], int]:
    """Metric name -> number, as many as fit in `max_chars` (only `keys` when given);
    returns (the dict, how many were left out)."""
    if isinstance(d, str):
        try:
            d = json.loads(d)
        except (ValueError, RecursionError):
            return {}, 0
    if not isinstance(d, dict):
        return {}, 0
    if keys is not None:
        wanted = set(keys)
        d = {k: v for k, v in d.items() if k in wanted}
    out: dict[str, float | None] = {}
    used = 2
    for k, v in d.items():
        name = text(k, NAME_CHARS)
        value = short(v)
        cost = escaped(name) + len(str(value)) + 6
        if used + cost > max_chars:
            return out, len(d) - len(out)
        out[name] = value
        used += cost
    return out, 0


def cell(v: Any, limit: int = CELL_CHARS) -> Any:
    """A query cell or config value as bounded JSON."""
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int):
        return v if abs(v) < 2**53 else str(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (list, tuple)):
        return [cell(x, limit) for x in v[:100]]
    if isinstance(v, dict):
        return {text(k, NAME_CHARS): cell(x, limit) for k, x in list(v.items())[:100]}
    s = v.hex() if isinstance(v, (bytes, bytearray)) else str(v)
    return s if escaped(s) <= limit else s[:_kept(s, limit)] + "…"


def lines(items: list[str], max_chars: int, line_chars: int = 500) -> list[str]:
    """The last lines that fit in `max_chars`, each cut to `line_chars`."""
    out: list[str] = []
    used = 0
    for line in reversed(items):
        line = text(line, line_chars)
        used += escaped(line) + 3
        if used > max_chars:
            break
        out.append(line)
    return out[::-1]


def fit(items: list[Any], max_chars: int) -> int:
    """How many of `items` (from the first) fit in `max_chars` of compact JSON."""
    used = 2
    for i, item in enumerate(items):
        used += size(item) + 1
        if used > max_chars:
            return i
    return len(items)
