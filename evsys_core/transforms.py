"""Transforms: functions that turn raw rows into one of the row formats (`data.transform`).

A transform is a name registered with `@register_transform("name")`, or `module:function`
naming a .py file next to the config or in the workspace (evsys_core.usercode: nothing
installed or from the standard library is ever imported).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from pydantic import BaseModel

from evsys_core import usercode
from evsys_core.config import DataConfig, Issue
from evsys_core.errors import DataError

if TYPE_CHECKING:
    from evsys_core.sources import _Problems

TRANSFORMS: dict[str, Callable[[dict[str, Any]], Any]] = {}


def register_transform(name: str) -> Callable[[Callable], Callable]:
    """Register `fn(raw_row: dict) -> row` under `name` for `data.transform: name`.

    The function returns a dict (or model) in one of the formats, a list of them, or None
    to drop the row.
    """
    def deco(fn: Callable) -> Callable:
        old = TRANSFORMS.get(name)
        if old is not None and _qualname(old) != _qualname(fn):
            raise DataError(f"transform name {name!r} is already registered by {_qualname(old)}; "
                            "pick another name")
        TRANSFORMS[name] = fn
        return fn
    return deco


def _qualname(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def transform_homes(data: DataConfig, workspace: Path, config_dir: Path | None = None) -> list[Path]:
    """Where a `module:function` transform's file may live: the config's folder, the workspace."""
    return [d for d in (config_dir or data.config_dir, Path(workspace)) if d is not None]


def resolve_transform(spec: str, search_dirs: Sequence[Path] = ()) -> Callable[[dict[str, Any]], Any]:
    """The function for `data.transform`: a registered name, or `module:function` where the
    module is a .py file in one of `search_dirs` (the config's directory, the workspace); see
    evsys_core.usercode. Raises DataError (field data.transform) if it cannot be used."""
    def fail(message: str) -> DataError:
        issue = Issue(field="data.transform", message=message)
        return DataError(f"data.transform: {message}", [issue])

    if ":" not in spec:
        if spec in TRANSFORMS:
            return TRANSFORMS[spec]
        known = ", ".join(sorted(TRANSFORMS)) or "none"
        raise fail(f"no transform is registered as {spec!r} (registered: {known}); write "
                   "module:function to load it from a module next to the config")
    try:
        return usercode.load(spec, list(search_dirs), registry=TRANSFORMS)
    except usercode.UserCodeError as e:
        raise fail(str(e)) from None


def _apply_transform(fn: Callable, name: str, raw_rows: list[tuple[int, Any]],
                     problems: _Problems) -> list[tuple[int, Any]]:
    out = []
    for line, row in raw_rows:
        try:
            result = fn(row)
        except Exception as e:
            problems.add(line, f"transform {name} raised {type(e).__name__}: {e}")
            continue
        for item in result if isinstance(result, list) else [result]:
            if item is None:
                continue
            if isinstance(item, BaseModel):
                item = item.model_dump()
            if not isinstance(item, dict):
                problems.add(line, f"transform {name} returned a {type(item).__name__}; it must "
                             "return a dict in one of the row formats, a list of them, or None")
                continue
            out.append((line, item))
    return out
