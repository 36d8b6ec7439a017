"""Workspace confinement: every path an MCP client sends is checked here.

A path argument is refused, with a message the agent can act on, when it is empty, holds a
NUL byte, is over-long, contains a `..` component, or resolves (symlinks included) to a place
outside the workspace. Files the server reads on its own behalf (a run's summary.md, its
train.log) go through `confined_file` too, so a symlink planted in a run directory cannot
make the server read outside the workspace.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from evsys_core import safefs
from evsys_core.errors import EvsysError

MAX_PATH_CHARS = 1024
DEFAULT_CONFIG_DIR = "experiments"
CONFIG_SUFFIXES = (".yaml", ".yml")
MAX_RUN_NAME_CHARS = 100


class PathRefused(EvsysError):
    """A path argument points outside the workspace or is malformed."""


def check_text(value: str, what: str, max_chars: int) -> str:
    """Refuse NUL bytes and over-long strings in any free-text argument."""
    if "\x00" in value:
        raise PathRefused(f"{what} contains a NUL byte; remove it")
    if len(value) > max_chars:
        raise PathRefused(f"{what} is {len(value)} characters long; the limit is {max_chars}")
    return value


def _check_shape(raw: str, what: str) -> None:
    if not raw or not raw.strip():
        raise PathRefused(f"{what} is empty; give a path relative to the workspace")
    check_text(raw, what, MAX_PATH_CHARS)
    parts = PurePosixPath(raw.replace("\\", "/")).parts
    for part in parts:
        if part == "..":
            raise PathRefused(
                f"{what} {raw!r} contains '..'; give a path inside the workspace without '..'"
            )
        if safefs.long_name(part):
            raise PathRefused(
                f"{what} {raw!r} has a component longer than {safefs.NAME_MAX_BYTES} bytes; use a shorter name"
            )


def resolve_in_workspace(
    workspace: Path, raw: str, *, what: str = "path", bare_dir: str | None = None
) -> Path:
    """Resolve `raw` (relative to the workspace, or absolute inside it) and confine it.

    `bare_dir`: a bare file name (no '/') is taken relative to this workspace sub-directory
    (`experiments/` for configs).
    """
    _check_shape(raw, what)
    ws = workspace.resolve()
    p = Path(raw)
    if not p.is_absolute():
        if bare_dir and "/" not in raw and "\\" not in raw:
            p = ws / bare_dir / p
        else:
            p = ws / p
    try:
        resolved = p.resolve(strict=False)
    except (OSError, RuntimeError) as e:  # symlink loops, permission problems
        raise PathRefused(f"{what} {raw!r} cannot be resolved: {e}") from e
    if resolved != ws and not resolved.is_relative_to(ws):
        raise PathRefused(
            f"{what} {raw!r} resolves to {resolved}, which is outside the workspace {ws} "
            f"(absolute paths and symlinks must stay inside it); use a path inside the workspace, "
            f"e.g. {DEFAULT_CONFIG_DIR}/my_config.yaml"
        )
    return resolved


def config_path(workspace: Path, raw: str, *, must_exist: bool) -> Path:
    """A config file path: confined, `.yaml`/`.yml`, bare names under experiments/."""
    path = resolve_in_workspace(workspace, raw, what="config path", bare_dir=DEFAULT_CONFIG_DIR)
    if path.suffix.lower() not in CONFIG_SUFFIXES:
        raise PathRefused(
            f"config path {raw!r} does not end in .yaml or .yml; configs must be YAML files, "
            f"e.g. {DEFAULT_CONFIG_DIR}/{Path(raw).stem or 'my_config'}.yaml"
        )
    if must_exist and not path.is_file():
        raise PathRefused(
            f"config {rel(workspace, path)} does not exist; write it with write_config first "
            f"(bare names are looked up in {DEFAULT_CONFIG_DIR}/)"
        )
    return path


def confined_file(workspace: Path, path: Path, what: str) -> Path:
    """A file the server reads itself: refuse it if a symlink takes it out of the workspace."""
    ws = workspace.resolve()
    resolved = path.resolve(strict=False)
    if not resolved.is_relative_to(ws):
        raise PathRefused(f"{what} {path} points outside the workspace ({resolved}); refusing to read it")
    return resolved


def run_name(value: str) -> str:
    if len(value) > MAX_RUN_NAME_CHARS or not safefs.SAFE_NAME.fullmatch(value):
        raise PathRefused(
            f"run_name {value[:120]!r} is not allowed; use 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def rel(workspace: Path, path: Path) -> str:
    """`path` relative to the workspace when inside it (what tools report back)."""
    ws = workspace.resolve()
    try:
        return str(Path(path).resolve().relative_to(ws))
    except ValueError:
        return str(path)

