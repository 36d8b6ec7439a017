"""`evsys validate`: the deep checks (data, templates, format fit, tasks and verifiers, model,
output directory, existing runs), the report (human and --json) and the exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from evsys_core import cli
from evsys_core.validate import Report, validate

EVSYS = Path(sys.executable).with_name("evsys")

CONFIG = """\
model: {name: SmolLM2-135M-Instruct}
backend: {kind: local}
data: {path: data/train.jsonl}
algorithm:
  kind: sdft
  params: {max_steps: 1, user_template: "Q: {question}"}
metadata:
  benchmark:
    - {name: val, path: data/val, metrics: [pass@1]}
callbacks:
  - {kind: local_logger, params: {output_dir: outputs, run_name: exp}}
"""
ROWS = [{"inputs": {"question": "Capital of France?"}, "expected": "Paris"},
        {"inputs": {"question": "Capital of Japan?"}, "expected": "Tokyo"}]
TASKS = [{"task_id": "v0", "instruction": "Capital of Germany?",
          "verifier": {"kind": "in_process", "fn_name": "contains", "expected": "Berlin"}},
         {"task_id": "v1", "instruction": "Capital of Peru?",
          "verifier": {"kind": "in_process", "fn_name": "contains", "expected": "Lima"}}]


def lines(rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def project(tmp_path: Path, config: str = CONFIG, rows=ROWS, tasks=TASKS) -> Path:
    """A workspace with config.yaml, data/train.jsonl and data/val/tasks.jsonl."""
    (tmp_path / "data/val").mkdir(parents=True)
    (tmp_path / "data/train.jsonl").write_text(lines(rows))
    (tmp_path / "data/val/tasks.jsonl").write_text(lines(tasks))
    (tmp_path / "config.yaml").write_text(config)
    return tmp_path / "config.yaml"


def edit(old: str, new: str) -> str:
    assert old in CONFIG
    return CONFIG.replace(old, new, 1)


def run_cli(capsys, config: Path, *flags: str) -> tuple[int, str]:
    code = cli.main(["validate", str(config), "--deep", "--workspace", str(config.parent), *flags])
    return code, capsys.readouterr().out


def find(report: Report, field: str, fragment: str, severity: str = "error"):
    pool = report.errors if severity == "error" else report.warnings
    hits = [i for i in pool if i.field == field and fragment in i.message]
    assert hits, f"no {severity} on {field!r} with {fragment!r}: {[str(i) for i in pool]}"
    return hits[0]


# ---- a valid project ----------------------------------------------------------------------

def test_valid_project_passes_deep_validation(tmp_path, capsys):
    config = project(tmp_path)
    report = validate(config, deep=True, workspace=tmp_path)
    assert report.ok and report.errors == [] and report.warnings == []
    code, out = run_cli(capsys, config)
    assert code == 0 and out.strip() == f"{config}: valid (deep check)"


def test_deep_validation_leaves_no_files_behind(tmp_path):
    config = project(tmp_path, edit("output_dir: outputs", "output_dir: runs/new"))
    before = sorted(tmp_path.rglob("*"))
    assert validate(config, deep=True, workspace=tmp_path).ok
    assert sorted(tmp_path.rglob("*")) == before


def test_sdft_walkthrough_validates_deep(examples_ws, capsys, monkeypatch):
    monkeypatch.chdir(examples_ws)
    code = cli.main(["validate", "examples/sdft_walkthrough/config.yaml", "--deep"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.splitlines()[-1].startswith("examples/sdft_walkthrough/config.yaml: valid (deep check)")


def test_sdft_walkthrough_on_tinker_warns_only_about_the_key(examples_ws, monkeypatch):
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    config = examples_ws / "examples/sdft_walkthrough/config.tinker.yaml"
    report = validate(config, deep=True, workspace=examples_ws)
    assert report.ok and report.errors == []
    [warning] = report.warnings
    assert (warning.field, warning.line) == ("backend.kind", 2)
    assert "TINKER_API_KEY is not set" in warning.message
    monkeypatch.setenv("TINKER_API_KEY", "tml-test")
    report = validate(config, deep=True, workspace=examples_ws)
    assert report.ok and report.warnings == []


# ---- bad projects: each located, each exit code 1 -----------------------------------------

def bad(tmp_path, **kw):
    config = project(tmp_path, **kw)
    return config, validate(config, deep=True, workspace=tmp_path)


DEEP_CASES = [
    # id, project kwargs, file (relative to the workspace), line, field, message fragment
    ("missing-data-file", dict(config=edit("data/train.jsonl", "data/missing.jsonl")),
     "config.yaml", 3, "data.path", "data file"),
    ("malformed-json-line", dict(rows=[ROWS[0], '{"inputs": {"question": "x"}, "expected": "y"', ROWS[1]]),
     "data/train.jsonl", 2, "", "not valid JSON"),
    ("mixed-formats", dict(rows=[ROWS[0], ROWS[1], {"prompt": "a", "completion": "b"}]),
     "data/train.jsonl", 3, "", "a prompt_completion row in a file of prompt rows"),
    ("row-fits-no-format", dict(rows=[{"q": "x", "a": "y"}]),
     "data/train.jsonl", 1, "", "fit no row format"),
    ("template-placeholder-missing", dict(rows=[ROWS[0], {"inputs": {"query": "x"}, "expected": "y"}]),
     "data/train.jsonl", 2, "inputs", "needs inputs.question, but this row's inputs have: query"),
    ("algorithm-does-not-fit-data", dict(config=edit("kind: sdft", "kind: sft")),
     "config.yaml", 5, "algorithm.kind", "use kind sdft for this data"),
    ("unknown-verifier", dict(tasks=[TASKS[0], {**TASKS[1], "verifier": {
        "kind": "in_process", "fn_name": "contain", "expected": "Lima"}}]),
     "data/val/tasks.jsonl", 2, "verifier.fn_name", "unknown verifier 'contain'"),
    ("python-verifier-module-missing", dict(tasks=[{**TASKS[0], "verifier": {
        "kind": "python", "fn": "no_such_grader_mod:grade"}}]),
     "data/val/tasks.jsonl", 1, "verifier.fn", "no_such_grader_mod"),
    ("duplicate-task-id", dict(tasks=[TASKS[0], TASKS[1], TASKS[0]]),
     "data/val/tasks.jsonl", 3, "task_id", "already used at line 1"),
    ("task-row-malformed", dict(tasks=[TASKS[0], {"task_id": "v9", "instruction": "x"}]),
     "data/val/tasks.jsonl", 2, "verifier", "required key 'verifier' is missing"),
    ("benchmark-dir-missing", dict(config=edit("path: data/val", "path: data/test")),
     "config.yaml", 9, "metadata.benchmark.0.path", "does not exist"),
    ("local-model-not-found", dict(config=edit("SmolLM2-135M-Instruct", "no-such-model-xyz")),
     "config.yaml", 1, "model.name", "no-such-model-xyz"),
    ("unknown-tinker-model", dict(config=edit("{kind: local}", "{kind: tinker}")
                                  .replace("SmolLM2-135M-Instruct", "Qwen/Qwen3-9B")),
     "config.yaml", 1, "model.name", "is not a model Tinker serves (did you mean"),
    ("unknown-transform", dict(config=edit("{path: data/train.jsonl}",
                                           "{path: data/train.jsonl, transform: qa_rows}")),
     "config.yaml", 3, "data.transform", "no transform is registered as 'qa_rows'"),
    ("rl-training-task-verifier", dict(config=edit("kind: sdft", "kind: rl")
                                       .replace('user_template: "Q: {question}"', "group_size: 2"),
                                       rows=[TASKS[0], {**TASKS[1], "verifier": {
                                           "kind": "in_process", "fn_name": "nope"}}]),
     "data/train.jsonl", 2, "verifier.fn_name", "unknown verifier 'nope'"),
]


@pytest.mark.parametrize("kw,file,line,field,fragment", [c[1:] for c in DEEP_CASES],
                         ids=[c[0] for c in DEEP_CASES])
def test_deep_problem_is_located(tmp_path, capsys, kw, file, line, field, fragment):
    config, report = bad(tmp_path, **kw)
    assert not report.ok
    issue = find(report, field, fragment)
    shown = str(config) if file == "config.yaml" else str(tmp_path / file)
    assert (issue.file, issue.line) == (shown, line)
    code, out = run_cli(capsys, config)
    assert code == 1
    assert str(issue) in out.splitlines()
    assert str(issue).startswith(f"{shown}:{line}:")


def test_shallow_validation_does_not_read_the_data(tmp_path, capsys):
    config = project(tmp_path, edit("data/train.jsonl", "data/missing.jsonl"))
    assert validate(config, workspace=tmp_path).ok
    assert cli.main(["validate", str(config), "--workspace", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "schema only; add --deep" in out


def test_template_problems_show_five_rows_and_a_count(tmp_path):
    rows = [{"inputs": {"q": str(i)}, "expected": "x"} for i in range(8)]
    _, report = bad(tmp_path, rows=rows)
    issues = [i for i in report.errors if i.field == "inputs"]
    assert [i.line for i in issues[:5]] == [1, 2, 3, 4, 5]
    assert issues[5].message == "3 more rows lack a user_template placeholder (8 in total)"


def test_pass_at_k_above_num_samples_in_json_report(tmp_path, capsys):
    config = project(tmp_path, edit("metrics: [pass@1]", "metrics: [pass@4], num_samples: 2"))
    code, out = run_cli(capsys, config, "--json")
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False and report["deep"] is True
    assert report["config_path"] == str(config)
    [error] = report["errors"]
    assert error == {"file": str(config), "line": 9, "column": 45,
                     "field": "metadata.benchmark.0.metrics.0", "severity": "error",
                     "message": "pass@4 needs at least 4 samples per task but num_samples is 2; "
                                "raise num_samples to 4 (or leave it unset) or use pass@2"}


def test_output_dir_that_cannot_be_created(tmp_path, capsys):
    config = project(tmp_path, edit("output_dir: outputs", "output_dir: data/train.jsonl/runs"))
    report = validate(config, deep=True, workspace=tmp_path)
    issue = find(report, "callbacks.0.params.output_dir", "is a file")
    assert (issue.file, issue.line) == (str(config), 11)
    assert run_cli(capsys, config)[0] == 1


def test_existing_finished_run_is_a_warning(tmp_path, capsys):
    config = project(tmp_path)
    (tmp_path / "outputs/exp").mkdir(parents=True)
    (tmp_path / "outputs/exp/run.json").write_text(json.dumps({"status": "completed"}))
    (tmp_path / "outputs/exp-2").mkdir()
    report = validate(config, deep=True, workspace=tmp_path)
    assert report.ok
    warning = find(report, "callbacks.0.params.run_name", "a finished run (completed) already "
                   "exists", "warning")
    assert warning.line == 11
    assert "this run will get a new directory, " in warning.message
    assert warning.message.split("directory, ")[1].startswith(str(tmp_path / "outputs/exp-3"))
    code, out = run_cli(capsys, config)
    assert code == 0
    assert f"{config}:11:" in out and ": warning: a finished run" in out
    assert out.splitlines()[-1] == f"{config}: valid (deep check): 1 warning"


def test_template_without_placeholders_is_a_warning(tmp_path):
    config = project(tmp_path, edit('"Q: {question}"', '"Answer the question."'))
    report = validate(config, deep=True, workspace=tmp_path)
    assert report.ok
    find(report, "algorithm.params.user_template", "has no {placeholder}", "warning")


def test_csv_data_with_jsonl_source_kind_is_a_warning(tmp_path):
    config = project(tmp_path, edit("{path: data/train.jsonl}",
                                    "{path: data/train.csv, source_kind: jsonl}"))
    (tmp_path / "data/train.csv").write_text(lines(ROWS))
    report = validate(config, deep=True, workspace=tmp_path)
    find(report, "data.source_kind", "set source_kind: csv", "warning")


def test_relative_data_path_written_from_the_config_dir_gets_a_hint(tmp_path):
    sub = tmp_path / "exp"
    sub.mkdir()
    (sub / "rows.jsonl").write_text(lines(ROWS))
    config = project(tmp_path, edit("data/train.jsonl", "rows.jsonl"))
    config = config.rename(sub / "config.yaml")
    report = validate(config, deep=True, workspace=tmp_path)
    issue = find(report, "data.path", "exists next to the config file")
    assert "write exp/rows.jsonl" in issue.message or str(sub / "rows.jsonl") in issue.message


def test_schema_errors_stop_before_deep_checks(tmp_path):
    config = project(tmp_path, edit("max_steps: 1", "max_steps: 0"))
    report = validate(config, deep=True, workspace=tmp_path)
    [issue] = report.errors
    assert (issue.field, issue.line) == ("algorithm.params.max_steps", 6)


# ---- usage, subprocess, import weight -----------------------------------------------------

def test_usage_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["validate"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["validate", "c.yaml", "--deeep"])
    assert info.value.code == 2
    config = project(tmp_path)
    assert cli.main(["validate", str(config), "--workspace", str(tmp_path / "nope")]) == 2
    assert "--workspace" in capsys.readouterr().err


def test_validate_as_a_subprocess(tmp_path, examples_ws):
    config = project(tmp_path, edit("max_steps: 1", "max_steps: many"))
    done = subprocess.run([str(EVSYS), "validate", str(config), "--deep", "--json"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 1, done.stderr
    [error] = json.loads(done.stdout)["errors"]
    assert (error["field"], error["line"]) == ("algorithm.params.max_steps", 6)
    done = subprocess.run([str(EVSYS), "validate", "examples/sdft_walkthrough/config.yaml", "--deep"],
                          capture_output=True, text=True, cwd=examples_ws, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_validate_imports_no_heavy_library(examples_ws):
    code = textwrap.dedent(f"""\
        import os, sys
        os.chdir({str(examples_ws)!r})
        import evsys_core.validate, evsys_core.config, evsys_core.data
        report = evsys_core.validate.validate("examples/sdft_walkthrough/config.yaml", deep=True)
        assert report.ok, report
        heavy = [m for m in ("torch", "transformers", "peft", "tinker") if m in sys.modules]
        assert not heavy, heavy
        """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr


def test_a_benchmark_directory_validates_alone_importing_its_verifiers_only_when_deep(tmp_path, capsys):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "grader.py").write_text("open(__file__ + '.imported', 'w').close()\nraise RuntimeError('no key')\n"
                                     "def grade(answer, expected):\n    return True\n")
    (bench / "tasks.jsonl").write_text(lines([TASKS[0], {"task_id": "p", "instruction": "?", "verifier": {
        "kind": "python", "fn": "grader:grade"}}, {"task_id": "q", "instruction": "?", "verifier": {
        "kind": "python", "fn": "grader:grde"}}]))
    shallow = validate(bench, workspace=tmp_path)  # parsed: the misspelt function, not the import
    assert [(i.line, i.field) for i in shallow.errors] == [(3, "verifier.fn")]
    assert "has no function 'grde'" in shallow.errors[0].message
    assert not (bench / "grader.py.imported").exists()
    code, out = run_cli(capsys, bench)  # --deep: imported, in this process
    assert code == 1
    assert "tasks.jsonl:2: verifier.fn: importing 'grader'" in out and "raised RuntimeError: no key" in out, out
    assert (bench / "grader.py.imported").exists()
    report = validate(bench, deep=True, workspace=tmp_path, overrides=["seed=1"])
    assert any(i.field == "--set" and "benchmark directory" in i.message for i in report.errors)
