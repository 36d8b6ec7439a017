"""Data rows and tasks: formats detected from the rows, sources (jsonl, csv), transforms, and
bad files reported with their line numbers (the first 5 bad lines and a total)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from evsys_core.config import DataConfig, load_config
from evsys_core.data import (
    TRANSFORMS,
    ChatExample,
    PromptCompletion,
    PromptExample,
    Task,
    VerifierSpec,
    detect_format,
    load_dataset,
    load_tasks,
    load_tasks_with_lines,
    register_transform,
)
from evsys_core.errors import DataError

REPO = Path(__file__).resolve().parents[1]
WALKTHROUGH = REPO / "examples/sdft_walkthrough/data"

PROMPT = {"inputs": {"question": "What is the capital of France?"}, "expected": "Paris"}
CHAT = {"messages": [{"role": "user", "content": "Capital of Japan?"},
                     {"role": "assistant", "content": "Tokyo"}]}
PC = {"prompt": "Capital of Italy?", "completion": "Rome"}
TASK = {"task_id": "t0", "instruction": "Capital of Germany?",
        "verifier": {"kind": "in_process", "fn_name": "contains", "expected": "Berlin"}}


def jsonl(tmp_path: Path, *rows, name: str = "rows.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def load(path: Path, **kw):
    return load_dataset(DataConfig(path=path, **kw), path.parent)


def data_error(path: Path, **kw) -> DataError:
    with pytest.raises(DataError) as info:
        load(path, **kw)
    return info.value


# ---- the walkthrough data -----------------------------------------------------------------

def test_walkthrough_train_rows_are_prompt_examples():
    ds = load_dataset(DataConfig(path=WALKTHROUGH / "train.jsonl"), REPO)
    assert ds.format == "prompt" and len(ds) >= 12
    assert ds.rows[0] == PromptExample(**PROMPT)
    assert ds.rows[1].inputs == {"question": "What is the capital of Japan?"}
    assert ds.rows[1].expected == "Tokyo"
    answers = {r.expected for r in ds.rows}
    assert {"Brasilia", "Ankara", "Bern", "Ottawa", "Rabat", "Hanoi", "Islamabad", "Wellington",
            "Canberra", "Abuja"} <= answers
    assert ds.lines == list(range(1, len(ds) + 1))


def test_walkthrough_val_tasks():
    tasks = load_tasks(WALKTHROUGH / "val")
    first = json.loads((WALKTHROUGH / "val/tasks.jsonl").read_text().splitlines()[0])
    assert first == {"task_id": "val_0", "instruction": "What is the capital of Germany? Answer "
                     "with just the city name.", "verifier": {"kind": "in_process",
                     "fn_name": "contains", "expected": "Berlin"}}
    assert tasks[0].task_id == "val_0" and tasks[0].verifier.expected == "Berlin"
    assert len(tasks) >= 11 and all(t.verifier.fn_name == "contains" for t in tasks)
    assert tasks[1].instruction == "Which city is the capital of Brazil? Name it."
    trained = {r.expected for r in load_dataset(DataConfig(path=WALKTHROUGH / "train.jsonl"), REPO)}
    assert {t.verifier.expected for t in tasks[1:]} <= trained  # the same countries, rephrased


# ---- formats ------------------------------------------------------------------------------

@pytest.mark.parametrize("row,fmt,model", [
    (PROMPT, "prompt", PromptExample), (CHAT, "chat", ChatExample),
    (PC, "prompt_completion", PromptCompletion), (TASK, "task", Task),
])
def test_each_format_is_detected(tmp_path, row, fmt, model):
    assert detect_format(row) == fmt
    ds = load(jsonl(tmp_path, row, row))
    assert ds.format == fmt and len(ds) == 2 and isinstance(ds.rows[0], model)


def test_detection_follows_the_majority_and_blank_lines_are_skipped(tmp_path):
    path = jsonl(tmp_path, PROMPT, "", "   ", PROMPT)
    ds = load(path)
    assert ds.format == "prompt" and ds.lines == [1, 4]


def test_numbers_become_strings(tmp_path):
    ds = load(jsonl(tmp_path, {"inputs": {"q": "1+1"}, "expected": 2}))
    assert ds.rows[0].expected == "2"


# ---- bad data files -----------------------------------------------------------------------

def test_malformed_json_line_is_reported_with_line_and_column(tmp_path):
    path = jsonl(tmp_path, PROMPT, PROMPT, '{"inputs": {"question": "x"}, "expected": }', PROMPT)
    err = data_error(path)
    [issue] = err.issues
    assert (issue.file, issue.line, issue.column) == (str(path), 3, 43)
    assert "not valid JSON" in issue.message
    assert f"{path}:3:43: not valid JSON" in str(err)
    assert str(err).startswith(f"{path}: 1 bad line:")


def test_first_five_bad_lines_and_a_count(tmp_path):
    rows = [PROMPT] + ["{oops"] * 7 + [PROMPT]
    err = data_error(jsonl(tmp_path, *rows))
    assert [i.line for i in err.issues[:5]] == [2, 3, 4, 5, 6]
    assert err.issues[5].message == "2 more bad lines not shown (7 in total)"
    assert "7 bad lines (first 5 shown)" in str(err)
    assert ":7:" not in str(err)


def test_mixed_formats_name_the_line_and_the_expected_format(tmp_path):
    path = jsonl(tmp_path, PROMPT, PROMPT, CHAT, PROMPT)
    [issue] = data_error(path).issues
    assert issue.line == 3
    assert "a chat row in a file of prompt rows (the format of line 1" in issue.message
    assert 'PromptExample {"inputs"' in issue.message


def test_row_fitting_no_format(tmp_path):
    path = jsonl(tmp_path, PROMPT, {"question": "q", "answer": "a"})
    [issue] = data_error(path).issues
    assert issue.line == 2
    assert "keys (answer, question) fit no row format" in issue.message
    assert "data.transform" in issue.message


def test_missing_and_unknown_keys_in_a_row(tmp_path):
    path = jsonl(tmp_path, PROMPT, {"inputs": {"question": "q"}, "expcted": "a"})
    issues = data_error(path).issues
    assert {(i.line, i.field) for i in issues} == {(2, "expected"), (2, "expcted")}
    assert any("required key 'expected' is missing" in i.message for i in issues)


def test_bad_chat_role_has_the_field_path(tmp_path):
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}
    [issue] = data_error(jsonl(tmp_path, CHAT, bad)).issues
    assert (issue.line, issue.field) == (2, "messages.1.role")
    assert "'system', 'user' or 'assistant'" in issue.message


def test_chat_without_assistant_turn(tmp_path):
    [issue] = data_error(jsonl(tmp_path, {"messages": [{"role": "user", "content": "hi"}]})).issues
    assert issue.line == 1 and "no assistant message" in issue.message


def test_non_object_line_and_non_utf8_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(json.dumps(PROMPT).encode() + b"\n[1, 2]\n" + b'{"a": "\xff"}\n')
    issues = data_error(path).issues
    assert [(i.line, i.message.split(";")[0]) for i in issues] == [
        (2, "expected a JSON object {...}, got a JSON list"),
        (3, "not UTF-8 text (bad byte at column 8)"),
    ]


def test_missing_and_empty_files(tmp_path):
    err = data_error(tmp_path / "absent.jsonl")
    assert err.issues[0].field == "data.path" and "does not exist" in str(err)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "holds no rows" in str(data_error(empty))


# ---- csv ----------------------------------------------------------------------------------

def test_csv_dotted_headers_become_nested_keys(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('inputs.question,inputs.context,expected\n'
                    'What is the capital of France?,Europe,Paris\n'
                    '"Capital of\nJapan?",,Tokyo\n')
    ds = load(path)
    assert ds.format == "prompt"
    assert ds.rows[0].inputs == {"question": "What is the capital of France?", "context": "Europe"}
    assert ds.rows[1].inputs == {"question": "Capital of\nJapan?"}  # empty cell left out
    assert ds.lines == [2, 3]


def test_csv_json_cells_are_parsed(tmp_path):
    path = tmp_path / "chat.csv"
    path.write_text('messages\n"[{""role"": ""user"", ""content"": ""hi""}, '
                    '{""role"": ""assistant"", ""content"": ""hello""}]"\n')
    ds = load(path)
    assert ds.format == "chat" and ds.rows[0].messages[1].content == "hello"


def test_csv_row_with_wrong_cell_count(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('prompt,completion\n"a\nb",c\nx,y,z\n')
    [issue] = data_error(path).issues
    assert issue.line == 4 and "has 3 cells but the header has 2 columns" in issue.message


def test_csv_duplicate_header(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("prompt,prompt\na,b\n")
    [issue] = data_error(path).issues
    assert issue.line == 1 and "'prompt' appears twice" in issue.message


# ---- transforms ---------------------------------------------------------------------------

def test_registered_transform(tmp_path):
    @register_transform("qa_to_prompt_test")
    def qa(row):
        if row.get("skip"):
            return None
        return [{"inputs": {"question": row["q"]}, "expected": a} for a in row["a"].split("|")]

    try:
        path = jsonl(tmp_path, {"q": "x", "a": "1|2"}, {"q": "y", "a": "3", "skip": True},
                     {"q": "z", "a": "4"})
        ds = load(path, transform="qa_to_prompt_test")
        assert ds.format == "prompt"
        assert [(r.inputs["question"], r.expected) for r in ds.rows] == [("x", "1"), ("x", "2"),
                                                                          ("z", "4")]
        assert ds.lines == [1, 1, 3]
    finally:
        TRANSFORMS.pop("qa_to_prompt_test", None)


def test_transform_errors_are_reported_per_line(tmp_path):
    TRANSFORMS["needs_q_test"] = lambda row: {"inputs": {"question": row["q"]}, "expected": "a"}
    try:
        [issue] = data_error(jsonl(tmp_path, {"q": 1}, {"x": 2}), transform="needs_q_test").issues
        assert issue.line == 2 and issue.message == "transform needs_q_test raised KeyError: 'q'"
    finally:
        TRANSFORMS.pop("needs_q_test")


def test_unknown_transform_name(tmp_path):
    err = data_error(jsonl(tmp_path, PROMPT), transform="nope")
    [issue] = err.issues
    assert issue.field == "data.transform" and "no transform is registered as 'nope'" in issue.message


def test_module_function_transform_next_to_the_config(tmp_path):
    (tmp_path / "my_rows_tf.py").write_text(textwrap.dedent("""\
        def to_prompt(row):
            return {"inputs": {"question": row["question"]}, "expected": row["answer"]}
        """))
    jsonl(tmp_path, {"question": "Capital of Peru?", "answer": "Lima"}, name="raw.jsonl")
    (tmp_path / "exp.yaml").write_text(
        "data: {path: raw.jsonl, transform: 'my_rows_tf:to_prompt'}\nalgorithm: {kind: sdft}\n")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    cfg = load_config(tmp_path / "exp.yaml", workspace=tmp_path)
    path_before = list(sys.path)
    try:
        ds = load_dataset(cfg.data, workspace)  # the module is found next to the config
    finally:
        sys.modules.pop("my_rows_tf", None)
    assert ds.rows == [PromptExample(inputs={"question": "Capital of Peru?"}, expected="Lima")]
    assert sys.path == path_before


def test_module_function_transform_missing_module_or_function(tmp_path):
    path = jsonl(tmp_path, PROMPT)
    [issue] = data_error(path, transform="no_such_module_xyz:f").issues
    assert issue.field == "data.transform" and "module 'no_such_module_xyz' not found" in issue.message
    (tmp_path / "tf_mod_test.py").write_text("def other(row):\n    return row\n")
    try:
        [issue] = data_error(path, transform="tf_mod_test:missing").issues
        assert "has no function 'missing'" in issue.message
    finally:
        sys.modules.pop("tf_mod_test", None)


# ---- tasks --------------------------------------------------------------------------------

def test_tasks_with_line_numbers(tmp_path):
    jsonl(tmp_path, TASK, "", {**TASK, "task_id": "t1"}, name="tasks.jsonl")
    assert [(line, t.task_id) for line, t in load_tasks_with_lines(tmp_path)] == [(1, "t0"), (3, "t1")]


def test_duplicate_task_id(tmp_path):
    jsonl(tmp_path, TASK, {**TASK, "task_id": "t1"}, TASK, name="tasks.jsonl")
    with pytest.raises(DataError) as info:
        load_tasks(tmp_path)
    [issue] = info.value.issues
    assert (issue.line, issue.field) == (3, "task_id")
    assert "task_id 't0' is already used at line 1" in issue.message


def test_bad_task_rows(tmp_path):
    no_fn = {**TASK, "task_id": "t1", "verifier": {"kind": "in_process", "expected": "x"}}
    python_bad = {**TASK, "task_id": "t2", "verifier": {"kind": "python", "fn": "grade"}}
    wrong_field = {**TASK, "task_id": "t3",
                   "verifier": {"kind": "command", "path": "t", "fn_name": "contains"}}
    jsonl(tmp_path, TASK, no_fn, python_bad, wrong_field, PROMPT, '{"task_id": ', name="tasks.jsonl")
    with pytest.raises(DataError) as info:
        load_tasks(tmp_path)
    got = [(i.line, i.field, i.message) for i in info.value.issues]
    assert got[0] == (2, "verifier", "a in_process verifier needs 'fn_name' (a registered function "
                      "such as contains, exact, regex, numeric)")
    assert got[1] == (3, "verifier", "fn 'grade' must be 'module:function'")
    assert got[2][:2] == (4, "verifier") and "'fn_name' is not used by a command verifier" in got[2][2]
    assert got[3][0] == 5 and "a prompt row; tasks.jsonl holds Task" in got[3][2]
    assert got[4][0] == 6 and "not valid JSON" in got[4][2]


def test_missing_benchmark_dir_and_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_tasks(tmp_path / "nope")
    with pytest.raises(DataError, match="has no tasks.jsonl"):
        load_tasks(tmp_path)


def test_verifier_spec_kinds():
    assert VerifierSpec(kind="python", fn="graders:score").timeout_s == 60
    assert VerifierSpec(kind="command", path="task1", timeout_s=5).path == "task1"
    with pytest.raises(ValueError):
        VerifierSpec(kind="in_process", fn_name="contains", timeout_s=0)
    with pytest.raises(ValueError):
        VerifierSpec(kind="shell", fn_name="x")


def test_transform_module_named_like_an_imported_module_does_not_replace_it(tmp_path):
    import colorsys

    (tmp_path / "colorsys.py").write_text(
        "def to_pc(row):\n    return {'prompt': row['p'], 'completion': 'c'}\n")
    ds = load(jsonl(tmp_path, {"p": "a"}), transform="colorsys:to_pc")
    assert ds.rows == [PromptCompletion(prompt="a", completion="c")]
    assert sys.modules["colorsys"] is colorsys and hasattr(colorsys, "rgb_to_hsv")
