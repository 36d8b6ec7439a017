"""The row formats of training data and benchmark tasks, and how a row's format is told.

    prompt             PromptExample    {"inputs": {...}, "expected": "..."}        sdft
    chat               ChatExample      {"messages": [{"role", "content"}, ...]}     sft
    prompt_completion  PromptCompletion {"prompt": "...", "completion": "..."}       sft
    task               Task             {"task_id", "instruction", "verifier"}      rl, benchmarks

A row's format is the one whose keys it matches (detect_format); parse_row validates it and
records each problem with its field path. Which algorithm trains on which format is
FORMATS_FOR_ALGORITHM (checked in one place: validate's format fit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from evsys_core.config import dotted

if TYPE_CHECKING:
    from evsys_core.sources import _Problems

Format = Literal["prompt", "chat", "prompt_completion", "task"]


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class PromptExample(_Row):
    inputs: dict[str, Any]
    expected: str


class Message(_Row):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatExample(_Row):
    messages: list[Message] = Field(min_length=1)

    @model_validator(mode="after")
    def _has_assistant(self) -> "ChatExample":
        if not any(m.role == "assistant" for m in self.messages):
            raise PydanticCustomError("invalid", "no assistant message: there is nothing to "
                                      "learn from; add a {\"role\": \"assistant\"} turn")
        return self


class PromptCompletion(_Row):
    prompt: str
    completion: str


class VerifierSpec(_Row):
    kind: Literal["in_process", "python", "command"]
    fn_name: str | None = None  # in_process: a registered verifier name
    fn: str | None = None  # python: "module:function"
    expected: Any = None
    path: str | None = None  # command: task dir relative to the tasks.jsonl directory
    timeout_s: float = Field(60, gt=0)

    @model_validator(mode="after")
    def _fields_for_kind(self) -> "VerifierSpec":
        needs = {"in_process": "fn_name", "python": "fn", "command": "path"}
        need = needs[self.kind]
        if not getattr(self, need):
            raise PydanticCustomError("invalid", f"a {self.kind} verifier needs {need!r}" + {
                "fn_name": " (a registered function such as contains, exact, regex, numeric)",
                "fn": " ('module:function')", "path": " (a task directory with tests/test.sh)",
            }[need])
        for other in needs.values():
            if other != need and getattr(self, other) is not None:
                raise PydanticCustomError("invalid", f"{other!r} is not used by a {self.kind} "
                                          f"verifier (it takes {need!r}); remove it or change kind")
        if self.kind == "python" and ":" not in (self.fn or ""):
            raise PydanticCustomError("invalid", f"fn {self.fn!r} must be 'module:function'")
        return self


class Task(_Row):
    task_id: str = Field(min_length=1)
    instruction: str
    verifier: VerifierSpec


FORMATS: dict[str, type[_Row]] = {
    "prompt": PromptExample, "chat": ChatExample,
    "prompt_completion": PromptCompletion, "task": Task,
}
FORMAT_SHAPES = {
    "prompt": 'PromptExample {"inputs": {...}, "expected": "..."}',
    "chat": 'Chat {"messages": [{"role": ..., "content": ...}, ...]}',
    "prompt_completion": 'PromptCompletion {"prompt": "...", "completion": "..."}',
    "task": 'Task {"task_id": ..., "instruction": ..., "verifier": {...}}',
}
FORMATS_FOR_ALGORITHM: dict[str, tuple[str, ...]] = {
    "sdft": ("prompt",), "sft": ("chat", "prompt_completion"), "rl": ("task",),
}
_SIGNATURES = {fmt: set(model.model_fields) for fmt, model in FORMATS.items()}


def detect_format(row: dict[str, Any]) -> str | None:
    """The format whose keys a row matches best (None if it shares no key with any, or ties)."""
    keys = set(row)
    for fmt, sig in _SIGNATURES.items():
        if keys == sig:
            return fmt
    scores = {fmt: len(keys & sig) for fmt, sig in _SIGNATURES.items()}
    best = max(scores.values())
    winners = [fmt for fmt, s in scores.items() if s == best]
    return winners[0] if best > 0 and len(winners) == 1 else None


def parse_row(fmt: str, row: dict[str, Any], line: int, problems: _Problems) -> Any | None:
    """Validate `row` as format `fmt`; record its problems (with field paths) at `line`."""
    try:
        return FORMATS[fmt].model_validate(row)
    except ValidationError as e:
        for err in e.errors(include_url=False):
            problems.add(line, _row_message(err, fmt), field=dotted(err["loc"]))
        return None


def _row_message(err: dict[str, Any], fmt: str) -> str:
    kind, loc = err["type"], err["loc"]
    if kind == "missing":
        return f"required key '{loc[-1]}' is missing (a {FORMAT_SHAPES[fmt]} row)"
    if kind == "extra_forbidden":
        return f"unknown key '{loc[-1]}'"
    msg = err["msg"].replace("Input should be", "must be")
    given = err.get("input")
    if kind != "invalid" and not isinstance(given, dict):
        text = repr(given)
        msg += f", got {text if len(text) < 60 else text[:57] + '...'}"
    return msg


def _no_format_message(row: dict[str, Any]) -> str:
    keys = ", ".join(sorted(map(str, row))) or "no keys"
    return (f"keys ({keys}) fit no row format; a row is one of "
            + "; ".join(FORMAT_SHAPES.values())
            + " — or set data.transform to convert your rows")
