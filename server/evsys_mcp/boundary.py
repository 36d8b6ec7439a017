"""The one place where a tool's answers and failures take their final shape.

Every tool is wrapped by `tool_boundary`:
- a structured answer (a pydantic model) becomes a CallToolResult whose text content is its
  compact JSON, checked against the answer budget (`budget.ANSWER_CHARS`);
- a user-facing `EvsysError` keeps its message (what, where, how to fix), with the CLI's
  wording (`--where`, `evsys runs`) turned into the tools' own (`where`, list_runs) and its
  length bounded (`budget.ERROR_CHARS`);
- anything unexpected is logged with its traceback on stderr and reported as an internal
  error the agent can at least name. Nothing escapes, so no tool call can take the server down.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import re
from typing import Any, Callable, TypeVar

from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent
from pydantic import BaseModel

from evsys_core.errors import EvsysError

from . import budget

log = logging.getLogger("evsys_mcp")

F = TypeVar("F", bound=Callable[..., Any])

# what the shared functions say for the CLI, and what an agent calls the same thing
CLI_WORDS = [
    ("`evsys validate --deep`", "validate_config(deep=true)"), ("evsys validate --deep", "validate_config(deep=true)"),
    ("`evsys runs`", "list_runs"), ("evsys runs", "list_runs"), ("`evsys query", "`query_runs"),
    ("evsys query", "query_runs"), ("`evsys wait`", "wait_for_run"), ("`evsys cancel`", "cancel_run"),
    ("--where", "where"), ("--sort", "sort_by"), ("--limit", "limit"), ("--benchmark", "benchmark"),
    ("--model", "model"), ("--metrics", "metrics"), ("--num-samples", "num_samples"), ("--run-name", "run_name"),
]
_CLI_RE = re.compile("|".join(re.escape(a) for a, _ in CLI_WORDS))
_CLI_MAP = dict(CLI_WORDS)


def tool_words(text: str) -> str:
    return _CLI_RE.sub(lambda m: _CLI_MAP[m.group(0)], text)


def _bounded(text: str) -> str:
    if len(text) <= budget.ERROR_CHARS:
        return text
    return text[: budget.ERROR_CHARS - 60] + f"… [{len(text) - budget.ERROR_CHARS + 60} more characters]"


def _translate(name: str, exc: Exception, owner: Any = None) -> ToolError:
    if isinstance(exc, (ToolError, EvsysError)):
        text = tool_words(str(exc))
        workspace = getattr(owner, "workspace", None)
        if workspace is not None:  # paths as the tools show them: relative to the workspace
            text = text.replace(f"{workspace}{os.sep}", "").replace(f"outside the workspace {workspace}",
                                                                     "outside the workspace")
        return ToolError(_bounded(text))
    log.error("tool %s failed unexpectedly", name, exc_info=exc)
    return ToolError(
        f"internal error in {name}: {type(exc).__name__}: {str(exc)[:500]} "
        "(a bug in evsys, not in your arguments; the server is still running — "
        "try again or use another tool, and report it with the server's stderr log)"
    )


def answer(name: str, result: Any) -> Any:
    """A structured answer as compact text + structuredContent, within the budget."""
    if not isinstance(result, BaseModel):
        return result
    data = result.model_dump(mode="json")
    text = budget.compact(data)
    if len(text) > budget.ANSWER_CHARS:  # a bug in a tool's bounding: say so rather than flood
        log.error("tool %s built a %d-character answer", name, len(text))
        raise ToolError(f"internal error in {name}: the answer would be {len(text)} characters, over the "
                        f"{budget.ANSWER_CHARS} budget; ask for less (a smaller limit, fewer keys)")
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)


def tool_boundary(fn: F) -> F:
    """Shape every answer and turn every exception a tool raises into a ToolError."""
    name = fn.__name__
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return answer(name, await fn(*args, **kwargs))
            except Exception as exc:  # cancellation (BaseException) passes through untouched
                raise _translate(name, exc, args[0] if args else None) from exc

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return answer(name, fn(*args, **kwargs))
        except Exception as exc:
            raise _translate(name, exc, args[0] if args else None) from exc

    return wrapper  # type: ignore[return-value]
