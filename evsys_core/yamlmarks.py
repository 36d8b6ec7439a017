"""YAML with positions: load a document and remember where every key and value came from.

PyYAML's composer gives each node a start mark; `load_with_marks` builds plain Python data
from the node tree and records, for every path (`("algorithm", "params", "topk")`,
`("metadata", "benchmark", 0)`), the 1-based line and column of its value and of its key.
Paths use str keys and int list indices, the same shape as pydantic error locations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

KeyPath = tuple[str | int, ...]

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# A config is a few hundred values; aliases can make a few hundred bytes of YAML expand to
# billions of them ("billion laughs"). Building stops, with a YAMLProblem, past this many.
MAX_VALUES = 20_000
_TOO_BIG = (f"expands to more than {MAX_VALUES} values (YAML aliases that repeat other "
            "aliases?); a config needs no such structure — write the values out plainly")


def _count_exceeds(value: Any, limit: int = MAX_VALUES) -> bool:
    """Does `value` (aliases counted at every place they appear) hold more than `limit` values?"""
    stack, n = [value], 0
    while stack:
        v = stack.pop()
        n += 1
        if n > limit:
            return True
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


@dataclass(frozen=True)
class Mark:
    """Where a value came from: a file (or `--set KEY=VALUE`), 1-based line and column."""

    file: str | None
    line: int | None = None
    column: int | None = None


class YAMLProblem(Exception):
    """The text is not valid YAML (or uses a construct a config cannot hold)."""

    def __init__(self, message: str, mark: Mark) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark


@dataclass
class Loaded:
    """Plain data plus the marks of its values and keys, and non-fatal problems found."""

    data: Any
    value_marks: dict[KeyPath, Mark] = field(default_factory=dict)
    key_marks: dict[KeyPath, Mark] = field(default_factory=dict)
    problems: list[tuple[KeyPath, Mark, str]] = field(default_factory=list)

    def mark_for(self, path: KeyPath, key: bool = False) -> Mark | None:
        """The mark of `path` (its key when `key`), else of its nearest recorded ancestor."""
        if key and path in self.key_marks:
            return self.key_marks[path]
        p = tuple(path)
        while True:
            if p in self.value_marks:
                return self.value_marks[p]
            if not p:
                return None
            p = p[:-1]


    def set_value(self, path: KeyPath, value: Any, mark: Mark) -> str | None:
        """Set `path` to `value` (creating mappings on the way), marking it with `mark`.

        Returns what is wrong with `path` instead, e.g. a list index out of range.
        """
        if _count_exceeds(value):
            return f"VALUE {_TOO_BIG}"
        node: Any = self.data
        walked: list[str | int] = []
        for i, part in enumerate(path):
            last = i == len(path) - 1
            where = ".".join(map(str, walked)) or "the config"
            if isinstance(node, list):
                if not isinstance(part, int) or not 0 <= part < len(node):
                    return f"{where} is a list of {len(node)} items; use an index 0..{len(node) - 1}"
            elif isinstance(node, dict):
                part = str(part)
                if not last and not isinstance(node.get(part), (dict, list)):
                    if node.get(part) is not None:
                        here = ".".join(map(str, walked + [part]))
                        return f"{here} is a {type(node[part]).__name__}, not a mapping"
                    node[part] = {}
                    self.value_marks[tuple(walked) + (part,)] = mark
            else:
                return f"{where} is a {type(node).__name__}, not a mapping"
            walked.append(part)
            if last:
                node[part] = value
            else:
                node = node[part]
        target = tuple(walked)
        for marks in (self.value_marks, self.key_marks):
            for p in [p for p in marks if p[:len(target)] == target]:
                del marks[p]
        self.key_marks[target] = mark
        stack = [(target, value)]
        while stack:
            p, v = stack.pop()
            self.value_marks[p] = mark
            items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
            stack.extend((p + (k,), child) for k, child in items)
        return None


def _mark(source: str, node_or_mark: Any) -> Mark:
    m = getattr(node_or_mark, "start_mark", node_or_mark)
    if m is None:
        return Mark(source)
    return Mark(source, m.line + 1, m.column + 1)


def load_with_marks(text: str, source: str) -> Loaded:
    """Parse one YAML document; raise YAMLProblem (with its line and column) if it is invalid."""
    loader = _Loader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            raise YAMLProblem(_syntax_message(e, text), _mark(source, e.problem_mark or e.context_mark)) from None
        except yaml.YAMLError as e:
            raise YAMLProblem(f"YAML syntax error: {e}", Mark(source)) from None
        out = Loaded(data=None)
        if root is None:
            return out
        out.data = _build(loader, root, (), source, out, set())
        return out
    finally:
        loader.dispose()


def _syntax_message(e: yaml.MarkedYAMLError, text: str) -> str:
    detail = e.problem or e.context or "invalid YAML"
    context = ""
    if e.context and e.problem:
        context = f" ({e.context}"
        cm, pm = e.context_mark, e.problem_mark
        if cm is not None and pm is not None and (cm.line, cm.column) != (pm.line, pm.column):
            context += f" that started at line {cm.line + 1}, column {cm.column + 1}"
        context += ")"
    hint = ""
    pm = e.problem_mark
    if pm is not None:
        lines = text.splitlines()
        if pm.line < len(lines) and lines[pm.line][pm.column:pm.column + 1] == "\t":
            hint = "; YAML indentation must use spaces, not tabs"
    return f"YAML syntax error: {detail}{context}{hint}"


def _build(loader: Any, node: Any, path: KeyPath, source: str, out: Loaded, active: set[int]) -> Any:
    out.value_marks[path] = _mark(source, node)
    if len(out.value_marks) > MAX_VALUES:
        raise YAMLProblem(f"the document {_TOO_BIG}", _mark(source, node))
    if id(node) in active:
        raise YAMLProblem("a YAML alias refers to its own ancestor (a recursive structure)",
                          _mark(source, node))
    if isinstance(node, yaml.ScalarNode):
        try:
            return loader.construct_object(node, deep=True)
        except yaml.YAMLError as e:
            raise YAMLProblem(f"cannot read this value: {getattr(e, 'problem', e)}",
                              _mark(source, node)) from None
    active.add(id(node))
    try:
        if isinstance(node, yaml.SequenceNode):
            return [_build(loader, item, path + (i,), source, out, active)
                    for i, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            own_keys = {id(k) for k, _ in node.value}
            try:
                loader.flatten_mapping(node)  # resolve `<<: *anchor` merge keys
            except yaml.YAMLError as e:
                raise YAMLProblem(f"bad merge key: {getattr(e, 'problem', e)}",
                                  _mark(source, node)) from None
            result: dict[Any, Any] = {}
            seen: dict[Any, Mark] = {}  # keys written in this mapping (not merged in)
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise YAMLProblem("a mapping key must be a plain value, not a list or mapping",
                                      _mark(source, key_node))
                key = loader.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    key = str(key) if not isinstance(key, bool) else str(key).lower()
                key_mark = _mark(source, key_node)
                if id(key_node) in own_keys:
                    if key in seen:
                        out.problems.append((path + (key,), key_mark,
                                             f"duplicate key '{key}' (first given at line "
                                             f"{seen[key].line}); remove one of them"))
                    seen[key] = key_mark
                out.key_marks[path + (key,)] = key_mark
                result[key] = _build(loader, value_node, path + (key,), source, out, active)
            return result
    finally:
        active.discard(id(node))
    raise YAMLProblem(f"unsupported YAML node {type(node).__name__}", _mark(source, node))
