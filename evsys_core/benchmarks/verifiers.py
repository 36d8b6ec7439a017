"""Verifiers: turn a model's answer to a task into a score.

A task's `verifier` (`evsys_core.data.VerifierSpec`) is one of three kinds:

- `in_process`: a function registered here by name (`fn_name`), called as
  `fn(answer, expected)`. Built-ins: `exact`, `contains`, `one_of`, `regex`, `numeric`;
  `@register_verifier("name")` adds more.
- `python`: `fn: "module:function"`; the module is a `.py` file next to `tasks.jsonl`
  (`graders.py`, or `pkg/mod.py` for `pkg.mod`) and nothing else: installed and standard-library
  modules are never imported (evsys_core.usercode). Called the same way.
- `command`: a Harbor-style task directory (`path`, relative to `tasks.jsonl`'s directory)
  whose `tests/test.sh` is run locally with a timeout — see `commands.py` for the contract.

A verifier function returns a bool, a number or a `Verdict`. A sample *passes* when its
score is 1 (full credit). Nothing a verifier does at scoring time raises into the run: an
exception, a bad return value, a hang or a crash gives score 0 with the reason recorded.
Spec mistakes are caught earlier by `check_spec` (used by `evsys validate --deep` and by
scoring before any sampling), which raises `VerifierError`.

How the built-ins read text — `normalize(text)`:
  Unicode NFKD with accents (combining marks) removed, case-folded, runs of whitespace
  collapsed to one space, then repeatedly: surrounding whitespace, trailing punctuation
  (. , ; : ! ? and their full-width forms) and one matching pair of wrapping quotes, brackets
  or markdown marks (" ' ` * _ ( ) [ ] “ ” ‘ ’ « ») are stripped. Inner punctuation stays.
  So "**Berlin.**", " berlin " and "BERLIN!" all read as "berlin", and "São Paulo" as "sao paulo".
"""

from __future__ import annotations

import difflib
import math
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from evsys_core.errors import VerifierError

VerifierFn = Callable[[str, Any], Any]
ExpectedCheck = Callable[[Any], "str | None"]

VERIFIERS: dict[str, VerifierFn] = {}
# name -> function returning a problem with `expected` (or None); used by check_spec
EXPECTED_CHECKS: dict[str, ExpectedCheck] = {}

PASS_EPS = 1e-9


@dataclass(frozen=True)
class Verdict:
    score: float
    passed: bool
    reason: str | None = None

    @classmethod
    def of(cls, score: float, reason: str | None = None) -> "Verdict":
        return cls(float(score), bool(score >= 1.0 - PASS_EPS), reason)

    @classmethod
    def fail(cls, reason: str) -> "Verdict":
        return cls(0.0, False, reason)


def register_verifier(name: str, *, check_expected: ExpectedCheck | None = None):
    """Decorator: register `fn(answer: str, expected) -> bool | float | Verdict` as `name`.

    `check_expected(expected)` may return a message saying what is wrong with a task's
    `expected` value; `check_spec` reports it. Registering a different function under a
    taken name raises VerifierError (re-registering the same function is allowed).
    """

    def deco(fn: VerifierFn) -> VerifierFn:
        old = VERIFIERS.get(name)
        if old is not None and _qualname(old) != _qualname(fn):
            raise VerifierError(
                f"verifier name {name!r} is already registered to {_qualname(old)}; "
                f"register {_qualname(fn)} under another name"
            )
        VERIFIERS[name] = fn
        if check_expected is not None:
            EXPECTED_CHECKS[name] = check_expected
        return fn

    return deco


def _qualname(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


# --------------------------------------------------------------------------- text


_TRAILING_PUNCT = ".,;:!?。，；：！？"
_PAIRS = {'"': '"', "'": "'", "`": "`", "*": "*", "_": "_", "(": ")", "[": "]",
          "“": "”", "‘": "’", "«": "»"}


def normalize(text: str) -> str:
    """The built-ins' reading of a text (see the module docstring)."""
    t = unicodedata.normalize("NFKD", str(text))
    t = "".join(c for c in t if not unicodedata.combining(c)).casefold()
    t = " ".join(t.split())
    prev = None
    while t != prev:
        prev = t
        t = t.strip().rstrip(_TRAILING_PUNCT).strip()
        if len(t) >= 2 and _PAIRS.get(t[0]) == t[-1]:
            t = t[1:-1]
    return t


def _short(text: str, limit: int = 120) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _need_text(expected: Any) -> str | None:
    if isinstance(expected, bool) or not isinstance(expected, (str, int, float)):
        return f"expected must be a string, got {type(expected).__name__} {expected!r}"
    if not normalize(str(expected)):
        return "expected is empty after normalization; give the answer text"
    return None


def _need_text_or_list(expected: Any) -> str | None:
    if isinstance(expected, list):
        if not expected:
            return "expected is an empty list; give at least one answer"
        for i, item in enumerate(expected):
            if problem := _need_text(item):
                return f"expected[{i}]: {problem}"
        return None
    return _need_text(expected)


def _exact_check(expected: Any) -> str | None:
    if isinstance(expected, list):
        return "expected is a list; for several accepted answers use fn_name 'one_of'"
    return _need_text(expected)


@register_verifier("exact", check_expected=_exact_check)
def exact(answer: str, expected: Any) -> Verdict:
    """normalize(answer) == normalize(expected)."""
    got, want = normalize(answer), normalize(str(expected))
    return Verdict.of(1.0) if got == want else Verdict.fail(f"{_short(got)} != {want!r}")


@register_verifier("one_of", check_expected=_need_text_or_list)
def one_of(answer: str, expected: Any) -> Verdict:
    """`exact` against any of a list of accepted answers."""
    options = expected if isinstance(expected, list) else [expected]
    norm = normalize(answer)
    if any(norm == normalize(str(o)) for o in options):
        return Verdict.of(1.0)
    return Verdict.fail(f"{_short(norm)} is none of {[normalize(str(o)) for o in options]!r:.200}")


@register_verifier("contains", check_expected=_need_text_or_list)
def contains(answer: str, expected: Any) -> Verdict:
    """normalize(expected) occurs in normalize(answer) as whole words ("4" is not in "42").

    A list of expected strings passes when any of them occurs.
    """
    options = expected if isinstance(expected, list) else [expected]
    norm = normalize(answer)
    for option in options:
        needle = normalize(str(option))
        if needle and re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", norm):
            return Verdict.of(1.0)
    wanted = " or ".join(repr(normalize(str(o))) for o in options)
    return Verdict.fail(f"{wanted:.200} not found in {_short(norm)}")


def _regex_check(expected: Any) -> str | None:
    if not isinstance(expected, str) or not expected:
        return f"expected must be a non-empty regular expression string, got {expected!r}"
    try:
        re.compile(expected)
    except re.error as e:
        return f"expected is not a valid regular expression: {e}"
    return None


@register_verifier("regex", check_expected=_regex_check)
def regex(answer: str, expected: Any) -> Verdict:
    """`re.search(expected, answer)` on the answer with only surrounding whitespace stripped
    (no other normalization: use inline flags such as `(?i)` for case-insensitivity)."""
    if re.search(expected, answer.strip()) is not None:
        return Verdict.of(1.0)
    return Verdict.fail(f"/{expected}/ does not match {_short(answer.strip())}")


# --------------------------------------------------------------------------- numbers

_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-+])?"
    r"(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)?(?P<frac>\.\d+)?"
    r"(?:[eE](?P<exp>[-+]?\d+))?"
    r"(?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?"
)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def _to_float(m: re.Match) -> float | None:
    if not m.group("int") and not m.group("frac"):
        return None
    text = (m.group("int") or "0").replace(",", "") + (m.group("frac") or "")
    value = float(text) * (10.0 ** int(m.group("exp")) if m.group("exp") else 1.0)
    if m.group("den"):
        den = float(m.group("den"))
        if den == 0:
            return None
        value /= den
    return -value if m.group("sign") == "-" else value


def parse_last_number(text: str) -> float | None:
    """The number an answer gives: inside the last `\\boxed{...}` if any, else after the last
    `####` if any, else the last number in the text. Understands signs (including "−"),
    thousands separators (1,234), decimals, exponents (1e-3) and fractions (3/4)."""
    text = unicodedata.normalize("NFKC", str(text)).replace("−", "-")
    boxed = _BOXED.findall(text)
    if boxed:
        text = boxed[-1]
    elif "####" in text:
        text = text.rsplit("####", 1)[1]
    last = None
    for m in _NUMBER.finditer(text):
        value = _to_float(m)
        if value is not None:
            last = value
    return last


def _numeric_target(expected: Any) -> tuple[float | None, float, float, str | None]:
    """(value, rel_tol, abs_tol, problem)."""
    rel_tol, abs_tol = 1e-6, 1e-9
    if isinstance(expected, dict):
        unknown = set(expected) - {"value", "rel_tol", "abs_tol"}
        if unknown or "value" not in expected:
            return None, rel_tol, abs_tol, (
                f"expected as an object takes keys value, rel_tol, abs_tol; got {sorted(expected)}"
            )
        try:
            rel_tol = float(expected.get("rel_tol", rel_tol))
            abs_tol = float(expected.get("abs_tol", abs_tol))
        except (TypeError, ValueError):
            return None, rel_tol, abs_tol, "expected.rel_tol and expected.abs_tol must be numbers"
        if rel_tol < 0 or abs_tol < 0:
            return None, rel_tol, abs_tol, "expected.rel_tol and expected.abs_tol must be >= 0"
        expected = expected["value"]
    if isinstance(expected, bool):
        value = None
    elif isinstance(expected, (int, float)):
        value = float(expected)
    elif isinstance(expected, str):
        value = parse_last_number(expected)
    else:
        value = None
    if value is None or not math.isfinite(value):
        return None, rel_tol, abs_tol, (
            f"expected must be a number, a numeric string or "
            f'{{"value": x, "rel_tol": r, "abs_tol": a}}, got {expected!r}'
        )
    return value, rel_tol, abs_tol, None


@register_verifier("numeric", check_expected=lambda e: _numeric_target(e)[3])
def numeric(answer: str, expected: Any) -> Verdict:
    """The answer's number (`parse_last_number`) equals `expected` within tolerance:
    `math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)` unless `expected` is
    `{"value": x, "rel_tol": r, "abs_tol": a}`."""
    want, rel_tol, abs_tol, problem = _numeric_target(expected)
    if problem:
        return Verdict.fail(problem)
    got = parse_last_number(answer)
    if got is None:
        return Verdict.fail("no number in the answer")
    if math.isclose(got, want, rel_tol=rel_tol, abs_tol=abs_tol):
        return Verdict.of(1.0)
    return Verdict.fail(f"answer's number {got:g} != expected {want:g}")


# --------------------------------------------------------------------------- specs


def _where(task_dir: Path, line: int | None, task_id: str | None) -> str:
    loc = str(Path(task_dir) / "tasks.jsonl") + (f":{line}" if line else "")
    return loc + (f" (task {task_id!r})" if task_id else "")


def _as_spec(spec: Any) -> Any:
    if isinstance(spec, dict):
        from evsys_core.data import VerifierSpec

        return VerifierSpec.model_validate(spec)
    return spec


def check_spec(spec: Any, task_dir: Path, *, line: int | None = None,
               task_id: str | None = None, import_code: bool = True) -> None:
    """Raise VerifierError if `spec` cannot work: an unknown or missing function, a module
    that is not there, a command task without tests/test.sh, a bad `expected`.

    `task_dir` is the directory holding tasks.jsonl; `line` and `task_id` only sharpen
    the message ("…/tasks.jsonl:3 (task 'q3'): verifier.fn_name: …"). `import_code=False`
    (a process that must not run the workspace's code: the MCP server) only parses a python
    verifier's module to see that it defines the function; it is not imported.
    """
    spec = _as_spec(spec)
    task_dir = Path(task_dir)
    where = _where(task_dir, line, task_id)

    def fail(field: str, message: str) -> VerifierError:
        return VerifierError(f"{where}: verifier.{field}: {message}")

    if spec.kind == "in_process":
        name = spec.fn_name
        if not name:
            raise fail("fn_name", "missing; in_process verifiers name a registered "
                       f"function: {', '.join(sorted(VERIFIERS))}")
        if name not in VERIFIERS:
            close = difflib.get_close_matches(name, list(VERIFIERS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise fail("fn_name", f"unknown verifier {name!r}; {hint}registered: "
                       f"{', '.join(sorted(VERIFIERS))} (add one with @register_verifier, "
                       "or use kind 'python' with fn 'module:function')")
        check = EXPECTED_CHECKS.get(name)
        problem = check(spec.expected) if check else None
        if problem:
            raise fail("expected", f"{problem} (verifier {name!r})")
    elif spec.kind == "python":
        if import_code:
            _load_python_fn(spec.fn, task_dir, fail)
        else:
            _parse_python_fn(spec.fn, task_dir, fail)
    elif spec.kind == "command":
        if not spec.path:
            raise fail("path", "missing; command verifiers name a task directory (relative "
                       "to tasks.jsonl) holding tests/test.sh")
        tdir = task_dir / spec.path
        if Path(spec.path).is_absolute() or not (os.path.normpath(tdir) + os.sep).startswith(
                os.path.normpath(task_dir) + os.sep):
            raise fail("path", f"{spec.path!r} leaves the benchmark directory; a command task is "
                       "a sub-directory of the folder holding tasks.jsonl (e.g. \"path\": "
                       "\"my_task\")")
        if not tdir.is_dir():
            raise fail("path", f"task directory {tdir} does not exist; create it with "
                       "tests/test.sh, or fix the path (relative to tasks.jsonl's directory)")
        if not (tdir / "tests" / "test.sh").is_file():
            raise fail("path", f"{tdir / 'tests' / 'test.sh'} does not exist; a command "
                       "verifier runs that script (see docs/benchmarks.md)")
    else:
        raise fail("kind", f"unknown kind {spec.kind!r}; use in_process, python or command")
    timeout = getattr(spec, "timeout_s", None)
    if timeout is not None and not (timeout > 0):
        raise fail("timeout_s", f"must be > 0 seconds, got {timeout!r}")


# --------------------------------------------------------------------------- python kind


def _load_python_fn(ref: str | None, task_dir: Path, fail: Callable[[str, str], Exception]):
    """The `python` verifier's function: a .py file in the folder holding tasks.jsonl
    (evsys_core.usercode: installed and standard-library modules are never imported)."""
    from evsys_core import usercode

    try:
        return usercode.load(ref or "", [Path(task_dir)])
    except usercode.UserCodeError as e:
        raise fail("fn", str(e)) from None


def _parse_python_fn(ref: str | None, task_dir: Path, fail: Callable[[str, str], Exception]) -> None:
    """`_load_python_fn`'s checks short of importing: the file is found and defines the function."""
    from evsys_core import usercode

    try:
        usercode.check_defines(*usercode.locate(ref or "", [Path(task_dir)]))
    except usercode.UserCodeError as e:
        raise fail("fn", str(e)) from None


# --------------------------------------------------------------------------- verify


def _coerce(result: Any, who: str) -> Verdict:
    if isinstance(result, Verdict):
        if not math.isfinite(result.score):
            return Verdict.fail(f"{who} returned a non-finite score {result.score!r}")
        return result
    if isinstance(result, bool):
        return Verdict.of(1.0 if result else 0.0)
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        if not math.isfinite(result):
            return Verdict.fail(f"{who} returned a non-finite score {result!r}")
        return Verdict.of(float(result))
    return Verdict.fail(f"{who} returned {type(result).__name__} {result!r:.80}; "
                        "a verifier returns a bool, a number or a Verdict")


def _call(fn: VerifierFn, answer: str, expected: Any, who: str) -> Verdict:
    try:
        result = fn(answer, expected)
    except (Exception, SystemExit) as e:
        return Verdict.fail(f"{who} raised {type(e).__name__}: {e}")
    return _coerce(result, who)


def verify(spec: Any, answer: str, task_dir: Path) -> Verdict:
    """Score one answer. Never raises: any failure is score 0 with the reason."""
    try:
        spec = _as_spec(spec)
        task_dir = Path(task_dir)
        if spec.kind == "in_process":
            fn = VERIFIERS.get(spec.fn_name or "")
            if fn is None:
                check_spec(spec, task_dir)  # raises the did-you-mean message
            return _call(fn, answer, spec.expected, f"verifier {spec.fn_name!r}")
        if spec.kind == "python":
            def fail(field: str, message: str) -> VerifierError:
                return VerifierError(f"{_where(task_dir, None, None)}: verifier.{field}: {message}")

            fn = _load_python_fn(spec.fn, task_dir, fail)
            return _call(fn, answer, spec.expected, f"verifier {spec.fn!r}")
        if spec.kind == "command":
            from evsys_core.benchmarks.commands import run_command_verifier

            check_spec(spec, task_dir)
            return run_command_verifier(task_dir / spec.path, answer, spec.expected,
                                        timeout_s=float(spec.timeout_s))
        check_spec(spec, task_dir)
        return Verdict.fail(f"unknown verifier kind {spec.kind!r}")
    except Exception as e:  # noqa: BLE001 - a verifier never takes the run down
        return Verdict.fail(f"{type(e).__name__}: {e}")
