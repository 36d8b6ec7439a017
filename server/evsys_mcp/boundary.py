"""The one place where a tool's failures become tool errors.

mcp 2.3 shows a client only the text of a `ToolError`; any other exception reaches the agent
as a bare "Error executing tool X". So every tool is wrapped: a user-facing `EvsysError` keeps
its message (what, where, how to fix); anything unexpected is logged with its traceback on
stderr and reported as an internal error the agent can at least name. Nothing escapes, so no
tool call can take the server down.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, Callable, TypeVar

from mcp.server.mcpserver.exceptions import ToolError

from evsys_core.errors import EvsysError

log = logging.getLogger("evsys_mcp")

F = TypeVar("F", bound=Callable[..., Any])


def _translate(name: str, exc: Exception) -> ToolError:
    if isinstance(exc, ToolError):
        return exc
    if isinstance(exc, EvsysError):
        return ToolError(str(exc))
    log.error("tool %s failed unexpectedly", name, exc_info=exc)
    text = str(exc)[:500]
    return ToolError(
        f"internal error in {name}: {type(exc).__name__}: {text} "
        "(a bug in evsys, not in your arguments; the server is still running — "
        "try again or use another tool, and report it with the server's stderr log)"
    )


def tool_boundary(fn: F) -> F:
    """Turn every exception a tool raises into a ToolError with an actionable message."""
    name = fn.__name__
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:  # cancellation (BaseException) passes through untouched
                raise _translate(name, exc) from exc

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise _translate(name, exc) from exc

    return wrapper  # type: ignore[return-value]
