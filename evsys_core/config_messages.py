"""Turn pydantic validation errors into located, actionable config `Issue`s.

Each pydantic error has a location (`("algorithm", "params", "topk")`); the YAML marks give
its file, line and column, and the schema gives what would be valid there (the keys of a
section, the choices of a literal), so a message can say what was given, what is valid, and
the nearest valid name for a typo.
"""

from __future__ import annotations

import difflib
import re
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from evsys_core.config import PARAMS_BY_KIND, AlgorithmConfig, Issue, RunConfig, dotted
from evsys_core.yamlmarks import Loaded

_HINTS = {
    ("data",): "add a data section, e.g. `data: {path: data/train.jsonl}`",
    ("data", "path"): "set it to your .jsonl or .csv file",
    ("algorithm",): "add an algorithm section, e.g. `algorithm: {kind: sft}` (sft, sdft or rl)",
    ("algorithm", "kind"): "set it to sft, sdft or rl",
}


def issues_from_validation(err: ValidationError, loaded: Loaded) -> list[Issue]:
    """One Issue per pydantic error, located by the YAML marks in `loaded`."""
    issues = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        kind = e["type"]
        mark = loaded.mark_for(loc, key=kind == "extra_forbidden")
        issues.append(Issue(
            file=mark.file if mark else None,
            line=mark.line if mark else None,
            column=mark.column if mark else None,
            field=dotted(loc),
            message=_message(e, loc, loaded.data),
        ))
    return issues


def _message(e: dict[str, Any], loc: tuple[str | int, ...], data: Any) -> str:
    kind, given, msg = e["type"], e.get("input"), e["msg"]
    if kind == "extra_forbidden":
        valid = valid_keys(loc[:-1], data)
        text = f"unknown key '{loc[-1]}'" + _did_you_mean(str(loc[-1]), valid)
        return text + (f"; valid keys here: {', '.join(valid)}" if valid else "")
    if kind == "missing":
        what = "section" if len(loc) == 1 and loc[0] != "seed" else "key"
        hint = _HINTS.get(loc)
        return f"required {what} '{loc[-1]}' is missing" + (f"; {hint}" if hint else "")
    if kind in ("literal_error", "enum"):
        choices = re.findall(r"'([^']*)'", (e.get("ctx") or {}).get("expected", ""))
        hint = _did_you_mean(given, choices) if isinstance(given, str) else ""
        return f"got {_show(given)}{hint}; valid values: {', '.join(choices)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        valid = valid_keys(loc, data)
        keys = f" (keys: {', '.join(valid)})" if valid else ""
        return f"expected a mapping{keys}, got {_show(given)}"
    if kind == "list_type":
        return f"expected a list, got {_show(given)}; write [a, b] or one '- item' per line"
    if kind == "invalid":  # our own validators: the message is complete
        return msg
    text = re.sub(r"^Input should be", "must be", msg)
    text = re.sub(r"^Value error, ", "", text)
    return text if "got" in text else f"{text}, got {_show(given)}"


def _did_you_mean(word: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not match:
        match = [c for c in choices if c.lower() == word.lower()]
    return f" (did you mean '{match[0]}'?)" if match else ""


def _show(value: Any) -> str:
    if value is None:
        return "nothing (an empty value)"
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({type(value).__name__})" if not isinstance(value, str) else text


def valid_keys(path: tuple[str | int, ...], data: Any) -> list[str]:
    """The keys the section at `path` accepts (the params of the chosen algorithm kind)."""
    model = _model_at(path, data)
    return list(model.model_fields) if model else []


def _model_at(path: tuple[str | int, ...], data: Any) -> type[BaseModel] | None:
    cls: type[BaseModel] | None = RunConfig
    node = data
    for part in path:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            continue
        if cls is None or part not in cls.model_fields:
            return None
        parent, node = node, node.get(part) if isinstance(node, dict) else None
        if cls is AlgorithmConfig and part == "params":
            kind = parent.get("kind") if isinstance(parent, dict) else None
            cls = PARAMS_BY_KIND.get(kind) if isinstance(kind, str) else None
        else:
            cls = _model_in(cls.model_fields[part].annotation)
    return cls


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found:
            return found
    return None
