"""Code that a config names (`data.transform`, a `python` verifier's `fn`): found, checked, imported.

    file, name = locate("mytransforms:to_prompt", [config_dir, workspace])   # no import
    check_defines(file, name)                 # parses the file with ast, imports nothing
    fn = load("mytransforms:to_prompt", [config_dir, workspace])            # imports it

One rule for every `module:function`: `pkg.mod:fn` is the file `pkg/mod.py` (or
`pkg/mod/__init__.py`) in the first of `homes` that has it, and that file — symbolic links
followed — must lie inside the home it was found in. Nothing else is ever imported: not an
installed package, not the standard library (`subprocess:run`, `os:system`), not a file a
symlink leads out to. A name registered with `@register_transform` / `@register_verifier` is
looked up by the caller, never here.

`check_defines` is what a process that must not run user code (the MCP server) uses: it proves
the file exists in its home and defines the function at top level, without executing it.
Modules are loaded without writing `__pycache__` next to them, under a private module name per
file (so two benchmarks' `graders.py` never collide) unless the user's own code already
imported that file under its real name, and loaded again when the file changes.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Sequence

from evsys_core.errors import EvsysError

HOW = ("config-named code must be a .py file inside the workspace (a transform: next to the "
       "config or in the workspace; a python verifier: in the folder holding tasks.jsonl), or "
       "a registered name")


class UserCodeError(EvsysError):
    """A `module:function` that cannot be used; the message says what was given and how to fix it."""


def split_ref(ref: str | None) -> tuple[str, str]:
    """`("pkg.mod", "fn")` for `"pkg.mod:fn"`; UserCodeError unless both halves are identifiers."""
    module, colon, attr = (ref or "").partition(":")
    if not colon or not attr.isidentifier() or not all(p.isidentifier() for p in module.split(".")):
        raise UserCodeError(f"must be 'module:function' (e.g. 'graders:grade'), got {ref!r}")
    return module, attr


def locate(ref: str, homes: Sequence[Path]) -> tuple[Path, str]:
    """(the module's file, the function's name) for `ref`, without importing anything."""
    module, attr = split_ref(ref)
    rel = Path(*module.split("."))
    for home in homes:
        for candidate in (Path(home) / rel.with_suffix(".py"), Path(home) / rel / "__init__.py"):
            if not candidate.is_file():
                continue
            real, root = candidate.resolve(), Path(home).resolve()
            if not real.is_relative_to(root):
                raise UserCodeError(f"{ref!r}: {candidate} leads to {real}, outside {root}; "
                                    f"{HOW}. Copy the module into that folder instead of linking it")
            return candidate, attr
    looked = " and ".join(f"{Path(h) / rel}.py" for h in homes) or "nowhere"
    raise UserCodeError(f"module {module!r} not found: looked for {looked} (or a package's "
                        f"__init__.py there); installed and standard-library modules are never "
                        f"imported: {HOW}")


def check_defines(file: Path, attr: str, registrar: str | None = None) -> None:
    """UserCodeError unless `file` parses and defines `attr` at top level (a def, a class, an
    assignment or an import), or registers it by name with `@<registrar>("attr")`."""
    try:
        tree = ast.parse(Path(file).read_bytes(), filename=str(file))
    except SyntaxError as e:
        raise UserCodeError(f"{file}:{e.lineno}: not valid Python ({e.msg}); fix the module") from None
    except (OSError, ValueError, RecursionError) as e:
        raise UserCodeError(f"{file}: cannot be read as Python ({e}); fix the module") from None
    names = _top_level_names(tree.body, registrar)
    if attr not in names:
        defined = ", ".join(sorted(n for n in names if not n.startswith("_"))) or "no functions"
        raise UserCodeError(f"{file} has no function {attr!r}; it defines: {defined}")


def _top_level_names(body: list[ast.stmt], registrar: str | None) -> set[str]:
    names: set[str] = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            for deco in getattr(node, "decorator_list", []):
                if (registrar and isinstance(deco, ast.Call) and deco.args
                        and _called(deco.func) == registrar and isinstance(deco.args[0], ast.Constant)):
                    names.add(str(deco.args[0].value))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.If, ast.Try)):
            for part in (node.body, node.orelse, getattr(node, "finalbody", []),
                         *[h.body for h in getattr(node, "handlers", [])]):
                names |= _top_level_names(part, registrar)
    return names


def _called(func: ast.expr) -> str | None:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


# ---- importing ----------------------------------------------------------------------------

_LOADED: dict[tuple[str, int], ModuleType] = {}  # (file, mtime_ns) -> module


def load(ref: str, homes: Sequence[Path], registry: dict[str, Callable] | None = None) -> Callable:
    """Import the module `ref` names (see `locate`) and return its function; `registry` also
    answers for a name the module registered while it loaded. UserCodeError says what failed."""
    file, attr = locate(ref, homes)
    module_name = ref.partition(":")[0]
    try:
        module = import_file(file, module_name, homes)
    except UserCodeError:
        raise
    except ModuleNotFoundError as e:
        raise UserCodeError(f"importing {module_name!r} ({file}) failed: {e}") from None
    except Exception as e:  # the module's own code failed
        raise UserCodeError(f"importing {module_name!r} ({file}) raised {type(e).__name__}: {e}") from None
    fn = getattr(module, attr, None)
    if not callable(fn) and registry is not None:
        fn = registry.get(attr)
    if not callable(fn):
        names = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n, None)))
        import difflib

        close = difflib.get_close_matches(attr, names, n=1)
        hint = f" did you mean {close[0]!r}?" if close else ""
        raise UserCodeError(f"{module_name!r} ({file}) has no function {attr!r};{hint} it defines: "
                            f"{', '.join(names) or 'no functions'}")
    return fn


def import_file(file: Path, module_name: str, homes: Sequence[Path]) -> ModuleType:
    """Import `file` once per (path, mtime), its homes on sys.path while it loads."""
    file = Path(file).resolve()
    own = sys.modules.get(module_name)
    if own is not None and _file_of(own) == file:
        return own  # the user's own code imported this very file: its registrations stand
    key = (str(file), file.stat().st_mtime_ns)
    if key in _LOADED:
        return _LOADED[key]
    private = f"_evsys_user_{hashlib.sha1(key[0].encode()).hexdigest()[:12]}_{file.stem}"
    spec = importlib.util.spec_from_file_location(private, file)
    if spec is None or spec.loader is None:
        raise UserCodeError(f"{file} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    added = [str(h) for h in homes if str(h) not in sys.path]
    sys.path[:0] = added  # siblings import while it loads
    sys.modules[private] = module
    try:
        with no_bytecode():
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(private, None)
        raise
    finally:
        for h in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(h)
    _LOADED[key] = module
    return module


def _file_of(module: Any) -> Path | None:
    f = getattr(module, "__file__", None)
    return Path(f).resolve() if f else None


@contextlib.contextmanager
def no_bytecode() -> Iterator[None]:
    """Import without writing __pycache__ next to the user's files."""
    old = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = old

