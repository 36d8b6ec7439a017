"""One exception type per user-facing failure class.

Every message says what went wrong, where (file, line, field) and how to fix it.
The CLI prints `str(error)` and exits 1; the MCP server turns it into a tool error.
"""

from __future__ import annotations

from typing import Any, Sequence


class EvsysError(Exception):
    """Base class: a failure the user can act on (not a bug in evsys)."""


class ConfigError(EvsysError):
    """The YAML config is malformed or fails the schema.

    `issues` holds every problem found (`evsys_core.config.Issue`), not just the first.
    """

    def __init__(self, message: str, issues: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.issues = list(issues)


class DataError(EvsysError):
    """A data or task file is missing, unreadable, or has rows of the wrong shape.

    `issues` holds the problems found (`evsys_core.config.Issue`), each with file and line.
    """

    def __init__(self, message: str, issues: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.issues = list(issues)


class VerifierError(EvsysError):
    """A verifier spec names an unknown function or is malformed."""


class ModelNotFoundError(EvsysError):
    """`model.name` resolves to nothing installed locally."""


class BackendError(EvsysError):
    """The training/sampling backend failed (auth, network, unknown model, ...)."""


class RunError(EvsysError):
    """A run cannot be created, resumed or found."""


class UsageError(EvsysError):
    """A command was called wrongly (exit code 2)."""
