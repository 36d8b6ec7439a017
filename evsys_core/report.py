"""What checking a config finds: one Issue per problem, collected in a Report.

Kept apart from config.py and validate.py (which use them) so that reading or returning a
report (the MCP server's answer schemas) does not import the config machinery.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Issue(BaseModel):
    """One problem found in a config or data file; `str(issue)` is `file:line:col: field: message`."""

    file: str | None = None
    line: int | None = None
    column: int | None = None
    field: str = ""
    message: str
    severity: Literal["error", "warning"] = "error"

    def location(self) -> str:
        parts = [p for p in (self.file, self.line, self.column) if p is not None]
        if self.file is None:
            return ""
        return ":".join(str(p) for p in parts)

    def __str__(self) -> str:
        parts = [self.location()] if self.location() else []
        if self.field:
            parts.append(self.field)
        if self.severity == "warning":
            parts.append("warning")
        parts.append(self.message)
        return ": ".join(parts)


class Report(BaseModel):
    """The outcome of `validate`: `ok` is true when there are no errors."""

    ok: bool
    config_path: str
    deep: bool = False
    errors: list[Issue] = Field(default_factory=list)
    warnings: list[Issue] = Field(default_factory=list)

    def add(self, issue: Issue) -> None:
        (self.warnings if issue.severity == "warning" else self.errors).append(issue)
        self.ok = not self.errors
