"""`evsys validate CONFIG|BENCHMARK_DIR [--deep] [--json]`: check a config (or a benchmark)
offline and report every problem.

Shallow: the schema (types, unknown keys, values), and that a `module:function` transform is
a workspace file defining it (parsed, not imported: evsys_core.usercode). `--deep` also reads
everything the run will read, without loading a model or touching the network: the data rows
(through the transform), every template filled from every row as the run fills it, the
algorithm/data-format fit, each benchmark's tasks and verifiers, the model's files (local) or
name and API key (tinker), the output directory (writable, and where the run index looks),
and an existing run of the same name. A benchmark directory (one holding tasks.jsonl) gets
the benchmark part alone: every task row, and every verifier (a python verifier's module is
parsed; with `--deep` imported). Exit code: 0 valid (warnings allowed), 1 invalid, 2 usage.
`--json` prints the Report, which the MCP server returns as is.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from evsys_core.config import RunConfig, load_config, template_fields
from evsys_core.errors import ConfigError, DataError, UsageError
from evsys_core.report import Issue, Report

MAX_ROW_ISSUES = 5  # per check and file; the rest are counted




Add = Callable[[Issue], None]


def validate(path: str | Path, deep: bool = False, workspace: Path | None = None,
             overrides: Sequence[str] = ()) -> Report:
    """Check the config at `path` (and with `deep`, what it points at), or the benchmark
    directory at `path`; never raises for bad input."""
    report = Report(ok=True, config_path=str(path), deep=deep)
    bench = _benchmark_dir(path, workspace)
    if bench is not None:
        if overrides:
            report.add(Issue(field="--set", message=f"{len(overrides)} override(s) given, but "
                             f"{path} is a benchmark directory, which has no values to set; "
                             "drop --set, or give a config"))
        _check_tasks(bench, report.add, import_code=deep)
        return report
    try:
        cfg = load_config(path, overrides, workspace)
    except ConfigError as e:
        for issue in e.issues:
            report.add(issue)
        return report
    if deep:
        deep_checks(cfg, report.add)
    else:
        check_code(cfg, report.add)
    return report


def deep_checks(cfg: RunConfig, add: Add, dataset: Any = None) -> None:
    """Every offline check beyond the schema; each problem is passed to `add`.

    `dataset`: the training data when the caller has loaded it already (`evsys run` does)."""
    if dataset is None:
        dataset = check_data(cfg, add)
    if dataset is not None:
        if _check_format_fit(cfg, dataset, add):
            _check_templates(cfg, dataset, add)
        if dataset.format == "task":
            _check_verifiers(list(zip(dataset.lines, dataset.rows)), dataset.path.parent,
                             dataset.path, add)
    for i, bench in enumerate(cfg.metadata.benchmark):
        _check_benchmark(cfg, i, bench, add)
    _check_model(cfg, add)
    _check_output(cfg, add)


# ---- data ---------------------------------------------------------------------------------

def _raw(cfg: RunConfig, *path: str | int) -> Any:
    node: Any = cfg._loaded.data if cfg._loaded else None
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _relocate(cfg: RunConfig, issue: Issue) -> Issue:
    """An issue about a config field (no file of its own) placed at that field in the config."""
    if issue.file is None and issue.field:
        return cfg.issue(issue.field, issue.message, issue.severity)
    return issue


def check_code(cfg: RunConfig, add: Add) -> bool:
    """A `module:function` data.transform names a .py file in the config's folder or the
    workspace that defines it; checked by parsing the file, never by importing it."""
    spec = cfg.data.transform
    if not spec or ":" not in spec:
        return True
    from evsys_core import usercode
    from evsys_core.data import transform_homes

    try:
        file, name = usercode.locate(spec, transform_homes(cfg.data, cfg.workspace))
        usercode.check_defines(file, name, registrar="register_transform")
    except usercode.UserCodeError as e:
        add(cfg.issue("data.transform", str(e)))
        return False
    return True


def check_data(cfg: RunConfig, add: Add):
    """The training data, or None after passing its problems (at their config line) to `add`."""
    from evsys_core.data import display_path, load_dataset

    if not check_code(cfg, add):
        return None
    path = cfg.data.path
    if not path.exists():
        raw = _raw(cfg, "data", "path")
        hint = ""
        if raw and cfg.source_path and (cfg.source_path.parent / raw).exists():
            hint = (f"; {raw} exists next to the config file, but paths are relative to the "
                    f"workspace ({cfg.workspace}): write {display_path(cfg.source_path.parent / raw)}")
        add(cfg.issue("data.path", f"data file {display_path(path)} does not exist{hint}"))
        return None
    if cfg.data.source_kind == "jsonl" and path.suffix.lower() == ".csv":
        add(cfg.issue("data.source_kind", "source_kind is jsonl but the file ends in .csv; "
                      "set source_kind: csv if it is a CSV file", "warning"))
    try:
        return load_dataset(cfg.data, cfg.workspace)
    except DataError as e:
        for issue in e.issues or [Issue(field="data.path", message=str(e))]:
            add(_relocate(cfg, issue))
        return None


def _check_format_fit(cfg: RunConfig, dataset: Any, add: Add) -> bool:
    from evsys_core.data import FORMAT_SHAPES, FORMATS_FOR_ALGORITHM, display_path

    kind = cfg.algorithm.kind
    wanted = FORMATS_FOR_ALGORITHM[kind]
    if dataset.format in wanted:
        return True
    fits = [k for k, fmts in FORMATS_FOR_ALGORITHM.items() if dataset.format in fmts]
    add(cfg.issue("algorithm.kind", f"{kind} trains on {' or '.join(FORMAT_SHAPES[f] for f in wanted)} "
                  f"rows, but {display_path(dataset.path)} holds {FORMAT_SHAPES[dataset.format]} "
                  f"rows; use kind {' or '.join(fits)} for this data, or point data.path at "
                  "matching data (or convert it with data.transform)"))
    return False


def _check_templates(cfg: RunConfig, dataset: Any, add: Add) -> None:
    """Render every template against every row exactly as the run will (render.py)."""
    from evsys_core import render
    from evsys_core.data import display_path

    if dataset.format != "prompt":
        return
    params = cfg.algorithm.params
    template = params.user_template
    fields = template_fields(template)
    if not fields:
        add(cfg.issue("algorithm.params.user_template", f"{template!r} has no {{placeholder}}, "
                      "so every row gets the same prompt; use e.g. \"{question}\"", "warning"))
    file = display_path(dataset.path)
    renders = [("user_template", lambda row: render.user_text(params, row.inputs))]
    if hasattr(params, "demo_template"):
        renders.append(("demo_template", lambda row: render.demo_text(params, row.inputs, row.expected)))
    bad, failed = [], {}
    for line, row in zip(dataset.lines, dataset.rows):
        missing = [f for f in fields if f not in row.inputs]
        if missing:
            bad.append((line, row, missing))
            continue
        for name, fill in renders:
            try:
                fill(row)
            except Exception as e:  # noqa: BLE001 - what str.format raises is the run's crash
                failed.setdefault(name, []).append((line, f"{type(e).__name__}: {e}"))
                break
    for line, row, missing in bad[:MAX_ROW_ISSUES]:
        have = ", ".join(sorted(row.inputs)) or "none"
        add(Issue(file=file, line=line, field="inputs",
                  message=f"user_template {template!r} needs inputs."
                          f"{', inputs.'.join(missing)}, but this row's inputs have: {have}; "
                          "add the key or change algorithm.params.user_template"))
    if len(bad) > MAX_ROW_ISSUES:
        add(Issue(file=file, field="inputs", message=f"{len(bad) - MAX_ROW_ISSUES} more rows lack "
                  f"a user_template placeholder ({len(bad)} in total)"))
    for name, rows in failed.items():
        (line, error), n = rows[0], len(rows)
        others = f" (and {n - 1} more row{'s' if n > 2 else ''})" if n > 1 else ""
        add(cfg.issue(f"algorithm.params.{name}", f"{getattr(params, name)!r} cannot be filled "
                      f"from {file}:{line}{others}: {error}; the run would fail there. Fix the "
                      "template (a format spec such as {x:d} needs a value of that type; write "
                      "a literal brace as {{ or }}) or the rows"))


# ---- benchmarks ---------------------------------------------------------------------------

def _benchmark_dir(path: str | Path, workspace: Path | None) -> Path | None:
    """`path` as a directory (relative paths as load_config reads them), else None."""
    p = Path(path).expanduser()
    if not p.is_absolute() and workspace is not None and (Path(workspace) / p).exists():
        p = Path(workspace) / p
    return p if p.is_dir() else None


def _check_tasks(bench_dir: Path, add: Add, import_code: bool) -> None:
    """A benchmark directory on its own: its tasks.jsonl and every task's verifier."""
    from evsys_core.data import load_tasks_with_lines

    try:
        tasks = load_tasks_with_lines(bench_dir)
    except DataError as e:
        for issue in e.issues:
            add(issue)
        return
    _check_verifiers(tasks, bench_dir, bench_dir / "tasks.jsonl", add, import_code)


def _check_benchmark(cfg: RunConfig, i: int, bench: Any, add: Add) -> None:
    from evsys_core.data import display_path, load_tasks_with_lines

    field = f"metadata.benchmark.{i}.path"
    if not bench.path.is_dir():
        what = "is a file, not a directory" if bench.path.exists() else "does not exist"
        add(cfg.issue(field, f"benchmark directory {display_path(bench.path)} {what}; a "
                      "benchmark is a directory holding tasks.jsonl"))
        return
    try:
        tasks = load_tasks_with_lines(bench.path)
    except DataError as e:
        for issue in e.issues:
            add(_relocate(cfg, issue))
        return
    _check_verifiers(tasks, bench.path, bench.path / "tasks.jsonl", add)


_VERIFIER_MSG = re.compile(r"^.*?: (verifier(?:\.\w+)*): (.*)$", re.S)


def _check_verifiers(tasks: list[tuple[int, Any]], task_dir: Path, file: Path, add: Add,
                     import_code: bool = True) -> None:
    from evsys_core.benchmarks.verifiers import check_spec
    from evsys_core.data import display_path
    from evsys_core.errors import VerifierError

    shown = display_path(file)
    bad = 0
    for line, task in tasks:
        try:
            check_spec(task.verifier, task_dir, line=line, task_id=task.task_id, import_code=import_code)
        except VerifierError as e:
            bad += 1
            if bad <= MAX_ROW_ISSUES:
                m = _VERIFIER_MSG.match(str(e))
                field, message = (m.group(1), m.group(2)) if m else ("verifier", str(e))
                add(Issue(file=shown, line=line, field=field, message=message))
    if bad > MAX_ROW_ISSUES:
        add(Issue(file=shown, field="verifier", message=f"{bad - MAX_ROW_ISSUES} more tasks have "
                  f"a bad verifier ({bad} in total)"))


# ---- model and output ---------------------------------------------------------------------

def _check_model(cfg: RunConfig, add: Add) -> None:
    name = cfg.model.name
    if cfg.backend.kind == "local":
        from evsys_core.backends.models import resolve_local_model
        from evsys_core.errors import ModelNotFoundError

        try:
            resolve_local_model(name, workspace=cfg.workspace)
        except ModelNotFoundError as e:
            add(cfg.issue("model.name", str(e)))
        return
    from evsys_core.backends.tinker_models import KNOWN_TINKER_MODELS

    if name not in KNOWN_TINKER_MODELS:
        close = difflib.get_close_matches(name, KNOWN_TINKER_MODELS, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        org = name.split("/")[0] + "/"
        same_org = [m for m in KNOWN_TINKER_MODELS if m.startswith(org)]
        known = f"known {org[:-1]} models" if same_org else "known models"
        add(cfg.issue("model.name", f"{name!r} is not a model Tinker serves{hint}; {known}: "
                      f"{', '.join(same_org or KNOWN_TINKER_MODELS)} (if Tinker added it since, "
                      "add it to evsys_core/backends/tinker_models.py)"))
    if not os.environ.get("TINKER_API_KEY"):
        add(cfg.issue("backend.kind", "TINKER_API_KEY is not set; the run will fail to connect "
                      "until you export it (or use backend kind local)", "warning"))


def _check_output(cfg: RunConfig, add: Add) -> None:
    from evsys_core import rundir
    from evsys_core.data import display_path

    index = next((i for i, c in enumerate(cfg.callbacks) if c.kind == "local_logger"), None)
    if index is None:
        return
    params = cfg.callbacks[index].params
    field = f"callbacks.{index}.params.output_dir"
    out = params.output_dir
    problem = rundir.output_dir_problem(out, cfg.workspace)
    if problem:
        add(cfg.issue(field, f"{problem}; choose another output_dir"))
        return
    if not params.run_name:
        return
    run_dir = out / params.run_name
    unseen = index_would_skip(cfg.workspace, run_dir)
    if unseen:
        last = unseen[0] == run_dir
        add(cfg.issue(f"callbacks.{index}.params.{'run_name' if last else 'output_dir'}",
                      f"the run directory {display_path(run_dir)} would never be indexed: {unseen[1]}; "
                      "evsys runs, the MCP server and its --max-concurrent-runs would not see the "
                      "run. Choose another " + ("run_name" if last else "output_dir (e.g. outputs)")))
        return
    if not run_dir.exists():
        return
    n = 2
    while (out / f"{params.run_name}-{n}").exists():
        n += 1
    new = display_path(out / f"{params.run_name}-{n}")
    try:
        status = json.loads((run_dir / rundir.RUN_JSON).read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        status = None
    if status in rundir.FINAL_STATUSES:
        what = f"a finished run ({status}) already exists in {display_path(run_dir)}"
    elif status == rundir.ACTIVE:
        what = f"a run in {display_path(run_dir)} is marked running"
    else:
        what = f"{display_path(run_dir)} already exists"
    add(cfg.issue(f"callbacks.{index}.params.run_name", f"{what}; this run will get a new "
                  f"directory, {new} (set another run_name to choose the name)", "warning"))


def index_would_skip(workspace: Path, run_dir: Path) -> tuple[Path, str] | None:
    """(the folder, why) when the history index's walk (history/discover.py) would not find a
    run in `run_dir` under `workspace`; None when it would, or when `run_dir` is outside it."""
    from evsys_core.data import display_path
    from evsys_core.history.discover import RUN_MARKERS, SKIP_NAMES, skip_dir

    try:
        rel = Path(os.path.normpath(run_dir)).relative_to(workspace)
    except ValueError:
        return None  # another workspace's runs; that workspace's index finds it
    node = Path(workspace)
    for part in rel.parts:
        node = node / part
        if skip_dir(part):
            return node, (f"the index never looks into a folder named {part!r} (hidden folders and "
                          f"{', '.join(sorted(SKIP_NAMES))} are skipped)")
        if node.is_symlink():
            return node, f"{display_path(node)} is a symbolic link, which the index does not follow"
        if node != run_dir and any((node / m).is_file() for m in RUN_MARKERS):
            return node, (f"{display_path(node)} is itself a run directory, and the index does not "
                          "look for runs inside one")
    return None


# ---- command line -------------------------------------------------------------------------

def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "validate", help="check a config offline (--deep: data, tasks, model, output dir)",
        description="Check a YAML config without training, or a benchmark directory without "
                    "scoring (its tasks and verifiers). Exit 0 when valid (warnings allowed), "
                    "1 when invalid, 2 on usage errors.")
    p.add_argument("config", help="path to the YAML config, or a benchmark directory (tasks.jsonl)")
    p.add_argument("--deep", action="store_true",
                   help="also read the data, tasks and verifiers, find the model, check the "
                        "output directory (offline)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--workspace", type=Path, default=None, metavar="DIR",
                   help="resolve relative paths against DIR (default: current directory)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set algorithm.params.max_steps=10")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.workspace is not None and not args.workspace.is_dir():
        raise UsageError(f"--workspace {args.workspace} is not a directory")
    # what the config's own code prints (a transform, a verifier module) goes to stderr, so
    # that --json prints the report alone
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        report = validate(args.config, deep=args.deep, workspace=args.workspace,
                          overrides=args.overrides)
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print(format_report(report))
    return 0 if report.ok else 1


def format_report(report: Report) -> str:
    """Human-readable report: one `file:line:col: field: message` line per issue, then a verdict."""
    lines = [str(i) for i in report.errors + report.warnings]
    n_err, n_warn = len(report.errors), len(report.warnings)
    counts = ", ".join(f"{n} {word}{'s' if n != 1 else ''}"
                       for n, word in ((n_err, "error"), (n_warn, "warning")) if n)
    verdict = "valid" if report.ok else "invalid"
    check = "deep check" if report.deep else "schema only; add --deep to check data, tasks, model"
    lines.append(f"{report.config_path}: {verdict} ({check})" + (f": {counts}" if counts else ""))
    return "\n".join(lines)
