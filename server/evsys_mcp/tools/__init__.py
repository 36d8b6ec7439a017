"""The evsys-mcp tools: one small method each, over the same functions the `evsys` CLI uses.

Arguments are typed and bounded (pydantic checks them, and refuses unknown ones, before a
tool runs); paths are confined to the workspace (`paths.py`); SQL is checked (`sqlguard.py`);
every answer fits the budget of `budget.py`; every failure is a ToolError with a message the
agent can act on (`boundary.py`). Jobs go through `evsys_core.jobs.engine`, the history
through `evsys_core.history.index`.

Heavy modules (duckdb through the history index, torch through scoring) are imported inside
the tools, never at import time, so the server answers tools/list at once.
"""

from __future__ import annotations

from .configs import ConfigTools
from .history import HistoryTools
from .jobs import JobTools


class EvsysTools(HistoryTools, JobTools, ConfigTools):
    """Every tool, sharing one workspace, job engine and index lock (`base.Base`)."""


__all__ = ["EvsysTools"]
