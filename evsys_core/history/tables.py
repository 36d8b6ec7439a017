"""Printing results: rich tables in a terminal, plain aligned text when piped, JSON on request."""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Sequence, TextIO

from evsys_core.history.reports import jsonable


def fmt(v: Any) -> str:
    """A cell: numbers to 4 significant digits, None as '-', times without seconds' noise."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v == int(v) and abs(v) < 1e15:
            return str(int(v)) if abs(v) >= 1 or v == 0 else f"{v:.4g}"
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        return json.dumps(jsonable(v))
    s = str(v)
    return s.replace("\n", " ")


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit}"
    return f"{s:.0f}s"


def print_json(obj: Any, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    json.dump(jsonable(obj), out, indent=2, ensure_ascii=False)
    out.write("\n")


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None,
                out: TextIO | None = None, max_width: int = 60) -> None:
    """A table: rich in a terminal, plain space-aligned columns otherwise."""
    out = out or sys.stdout
    cells = [[_cut(fmt(v), max_width) for v in row] for row in rows]
    if out.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, title_justify="left", header_style="bold")
        for c in columns:
            table.add_column(str(c), overflow="fold")
        for row in cells:
            table.add_row(*row)
        Console(file=out).print(table)
        return
    if title:
        out.write(f"{title}\n")
    widths = [len(str(c)) for c in columns]
    for row in cells:
        widths = [max(w, len(x)) for w, x in zip(widths, row)]
    line = "  ".join(str(c).ljust(w) for c, w in zip(columns, widths)).rstrip()
    out.write(line + "\n")
    for row in cells:
        out.write("  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() + "\n")


def print_pairs(pairs: Sequence[tuple[str, Any]], out: TextIO | None = None,
                indent: str = "  ") -> None:
    out = out or sys.stdout
    width = max((len(k) for k, _ in pairs), default=0)
    for k, v in pairs:
        out.write(f"{indent}{k.ljust(width)}  {fmt(v)}\n")


def _cut(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"
