"""Verifiers: built-ins and their normalization, python and command kinds, check_spec errors."""

from __future__ import annotations

import os
import stat
import textwrap
import time
from pathlib import Path

import pytest

from evsys_core.benchmarks import verifiers as V
from evsys_core.benchmarks.verifiers import (
    VERIFIERS, Verdict, check_spec, normalize, parse_last_number, register_verifier, verify,
)
from evsys_core.data import VerifierSpec
from evsys_core.errors import VerifierError


def spec(**fields) -> VerifierSpec:
    fields.setdefault("kind", "in_process")
    return VerifierSpec(**fields)


def run(fn_name: str, expected, answer: str, task_dir: Path = Path(".")) -> Verdict:
    return verify(spec(fn_name=fn_name, expected=expected), answer, task_dir)


# --------------------------------------------------------------------------- normalization

@pytest.mark.parametrize("raw, want", [
    ("Berlin", "berlin"),
    ("  BERLIN!  ", "berlin"),
    ("**Berlin.**", "berlin"),
    ('"Berlin"', "berlin"),
    ("`Berlin`.", "berlin"),
    ("(Berlin)", "berlin"),
    ("São  Paulo", "sao paulo"),
    ("Zürich\n", "zurich"),
    ("St. Louis", "st. louis"),          # inner punctuation stays
    ("f(x)", "f(x)"),                     # unmatched brackets are not stripped
    ("Ｂｅｒｌｉｎ", "berlin"),            # full-width letters
    ("Straße", "strasse"),                # case-folding
])
def test_normalize(raw, want):
    assert normalize(raw) == want


# --------------------------------------------------------------------------- built-ins

def test_builtins_registered():
    assert {"exact", "contains", "one_of", "regex", "numeric"} <= set(VERIFIERS)


@pytest.mark.parametrize("answer, passed", [
    ("Berlin", True), ("berlin.", True), ("**Berlin**", True), (" BERLIN ", True),
    ("The capital is Berlin.", False), ("Bern", False), ("", False), ("Berlin, Germany", False),
])
def test_exact(answer, passed):
    v = run("exact", "Berlin", answer)
    assert (v.score, v.passed) == ((1.0, True) if passed else (0.0, False))


def test_failures_say_what_was_compared():
    assert run("exact", "Paris", "The capital is Paris.").reason == "'the capital is paris' != 'paris'"
    assert "'berlin' not found in 'bonn'" in run("contains", "Berlin", "Bonn").reason
    assert "none of ['a', 'b']" in run("one_of", ["a", "B"], "c").reason
    assert "does not match 'abc'" in run("regex", r"^\d+$", "abc").reason
    assert run("exact", "Paris", "paris").reason is None


def test_exact_accents_fold_on_both_sides():
    assert run("exact", "São Paulo", "sao paulo").passed
    assert run("exact", "Sao Paulo", "SÃO PAULO!").passed


@pytest.mark.parametrize("answer, passed", [
    ("The capital of Germany is Berlin.", True),
    ("berlin", True),
    ("BERLIN!", True),
    ("Paris", False),
    ("Berliner Luft", False),             # whole words only
])
def test_contains(answer, passed):
    assert run("contains", "Berlin", answer).passed is passed


def test_contains_whole_numbers_and_lists():
    assert not run("contains", "4", "The answer is 42").passed
    assert run("contains", "4", "The answer is 4.").passed
    assert run("contains", ["Bonn", "Berlin"], "It is Berlin now").passed
    assert not run("contains", ["Bonn", "Berlin"], "It is Munich").passed


def test_one_of():
    assert run("one_of", ["NYC", "New York City", "New York"], "new york city.").passed
    assert not run("one_of", ["NYC", "New York"], "New York State").passed


def test_regex_is_raw_search():
    assert run("regex", r"^\d{3}-\d{4}$", "  555-1234\n").passed
    assert not run("regex", r"^\d{3}-\d{4}$", "call 555-1234").passed
    assert not run("regex", "berlin", "Berlin").passed            # no case folding
    assert run("regex", "(?i)berlin", "Berlin").passed


@pytest.mark.parametrize("text, want", [
    ("42", 42.0), ("The answer is 42.", 42.0), ("first 3, then 7", 7.0),
    ("-5", -5.0), ("x = −2.5", -2.5), ("1,234,567 apples", 1234567.0),
    ("1,2,3", 3.0), ("3/4", 0.75), ("1e-3", 0.001), ("about .5", 0.5),
    ("5-3", 3.0), ("$1,000.50", 1000.5), (r"so \boxed{17} and 99", 17.0),
    ("work... 12 #### 144", 144.0), ("no digits here", None),
])
def test_parse_last_number(text, want):
    assert parse_last_number(text) == (pytest.approx(want) if want is not None else None)


def test_numeric_matches_last_number_within_tolerance():
    assert run("numeric", 42, "Let me think: 6 * 7 = 42").passed
    assert run("numeric", "0.75", "It is 3/4").passed
    assert run("numeric", 1e6, "1,000,000").passed
    v = run("numeric", 42, "6 * 7 is 42, or maybe 41")
    assert (v.score, v.passed) == (0.0, False) and "41" in v.reason
    v = run("numeric", 42, "I don't know")
    assert not v.passed and "no number" in v.reason


def test_numeric_tolerances():
    assert run("numeric", {"value": 3.14159, "abs_tol": 0.01}, "pi is about 3.14").passed
    assert not run("numeric", 3.14159, "pi is about 3.14").passed
    assert run("numeric", {"value": 1000, "rel_tol": 0.01}, "1005").passed
    assert not run("numeric", {"value": 1000, "rel_tol": 0.001}, "1005").passed


# --------------------------------------------------------------------------- registry

def test_register_verifier_adds_and_guards_names():
    @register_verifier("_test_len_ratio")
    def len_ratio(answer, expected):
        return min(1.0, len(answer) / expected)

    try:
        v = run("_test_len_ratio", 10, "abcde")
        assert (v.score, v.passed) == (0.5, False)
        assert run("_test_len_ratio", 3, "abcde").passed
        check_spec(spec(fn_name="_test_len_ratio", expected=3), Path("."))
        with pytest.raises(VerifierError, match="already registered"):
            @register_verifier("_test_len_ratio")
            def other(answer, expected):
                return 1.0
    finally:
        VERIFIERS.pop("_test_len_ratio", None)


def test_raising_or_bad_verifier_scores_zero_with_reason():
    @register_verifier("_test_boom")
    def boom(answer, expected):
        raise KeyError("no such thing")

    @register_verifier("_test_weird")
    def weird(answer, expected):
        return "yes"

    @register_verifier("_test_nan")
    def nan(answer, expected):
        return float("nan")

    try:
        v = run("_test_boom", None, "x")
        assert (v.score, v.passed) == (0.0, False)
        assert "KeyError" in v.reason and "no such thing" in v.reason
        assert "returned str" in run("_test_weird", None, "x").reason
        assert "non-finite" in run("_test_nan", None, "x").reason
    finally:
        for name in ("_test_boom", "_test_weird", "_test_nan"):
            VERIFIERS.pop(name, None)


# --------------------------------------------------------------------------- check_spec

def test_check_spec_unknown_fn_suggests_and_lists(tmp_path):
    with pytest.raises(VerifierError) as e:
        check_spec(spec(fn_name="contians", expected="x"), tmp_path, line=7, task_id="q7")
    msg = str(e.value)
    assert f"{tmp_path / 'tasks.jsonl'}:7" in msg and "'q7'" in msg
    assert "verifier.fn_name" in msg and "did you mean 'contains'" in msg
    for name in ("exact", "regex", "numeric"):
        assert name in msg


def unchecked(**fields) -> VerifierSpec:
    """A spec that skipped VerifierSpec's own validation (built in code, not loaded)."""
    base = dict(kind="in_process", fn_name=None, fn=None, expected=None, path=None, timeout_s=60)
    return VerifierSpec.model_construct(**{**base, **fields})


def test_check_spec_missing_fields_and_bad_timeout(tmp_path):
    with pytest.raises(VerifierError, match=r"verifier\.fn_name: missing"):
        check_spec(unchecked(expected="x"), tmp_path)
    with pytest.raises(VerifierError, match=r"verifier\.path: missing"):
        check_spec(unchecked(kind="command"), tmp_path)
    with pytest.raises(VerifierError, match="'module:function'"):
        check_spec(unchecked(kind="python", fn="graders.grade"), tmp_path)
    with pytest.raises(VerifierError, match=r"verifier\.timeout_s: must be > 0"):
        check_spec(unchecked(fn_name="exact", expected="a", timeout_s=0), tmp_path)


@pytest.mark.parametrize("fn_name, expected, words", [
    ("exact", ["a", "b"], "one_of"),
    ("exact", None, "must be a string"),
    ("exact", " . ", "empty"),
    ("regex", "([a-z", "not a valid regular expression"),
    ("numeric", "forty-two", "must be a number"),
    ("numeric", {"value": 1, "tol": 2}, "rel_tol, abs_tol"),
    ("one_of", [], "empty list"),
    ("contains", ["ok", 3.5, {"x": 1}], "expected[2]"),
])
def test_check_spec_bad_expected(tmp_path, fn_name, expected, words):
    with pytest.raises(VerifierError) as e:
        check_spec(spec(fn_name=fn_name, expected=expected), tmp_path, line=2)
    assert "verifier.expected" in str(e.value) and words in str(e.value)
    assert ":2" in str(e.value)


def test_verify_with_bad_spec_scores_zero_not_raises(tmp_path):
    v = verify(spec(fn_name="nope"), "x", tmp_path)
    assert v.score == 0.0 and "unknown verifier 'nope'" in v.reason


def test_verify_accepts_plain_dicts(tmp_path):
    v = verify({"kind": "in_process", "fn_name": "exact", "expected": "Paris"}, "paris", tmp_path)
    assert v.passed


# --------------------------------------------------------------------------- python kind

def test_python_verifier_next_to_tasks(tmp_path):
    (tmp_path / "helpers.py").write_text("def clean(s):\n    return s.strip().lower()\n")
    (tmp_path / "graders.py").write_text(textwrap.dedent("""
        from helpers import clean          # a sibling module imports fine

        def grade(answer, expected):
            return 1.0 if clean(answer) == expected else 0.25

        def explode(answer, expected):
            return 1 / 0
    """))
    s = spec(kind="python", fn="graders:grade", expected="paris")
    check_spec(s, tmp_path)
    assert verify(s, "  PARIS ", tmp_path) == Verdict(1.0, True, None)
    assert verify(s, "Lyon", tmp_path) == Verdict(0.25, False, None)
    v = verify(spec(kind="python", fn="graders:explode"), "x", tmp_path)
    assert v.score == 0.0 and "ZeroDivisionError" in v.reason


def test_python_modules_with_same_name_do_not_collide(tmp_path):
    for name, value in (("a", 1.0), ("b", 0.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "graders.py").write_text(f"def g(answer, expected):\n    return {value}\n")
    s = spec(kind="python", fn="graders:g")
    assert verify(s, "x", tmp_path / "a").score == 1.0
    assert verify(s, "x", tmp_path / "b").score == 0.0


def test_python_dotted_module(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "check.py").write_text("def ok(answer, expected):\n    return True\n")
    assert verify(spec(kind="python", fn="pkg.check:ok"), "x", tmp_path).passed


def test_python_check_spec_errors(tmp_path):
    (tmp_path / "graders.py").write_text("def grade(a, e):\n    return 1\n")
    with pytest.raises(VerifierError) as e:
        check_spec(spec(kind="python", fn="gradrs:grade"), tmp_path, line=4)
    assert "module 'gradrs' not found" in str(e.value) and str(tmp_path / "gradrs.py") in str(e.value)
    with pytest.raises(VerifierError, match="did you mean 'grade'"):
        check_spec(spec(kind="python", fn="graders:grad"), tmp_path)
    (tmp_path / "broken.py").write_text("raise RuntimeError('bad import')\n")
    with pytest.raises(VerifierError, match="RuntimeError: bad import"):
        check_spec(spec(kind="python", fn="broken:x"), tmp_path)


# --------------------------------------------------------------------------- command kind

def make_task(root: Path, name: str, script: str) -> Path:
    task = root / name
    (task / "tests").mkdir(parents=True)
    (task / "instruction.md").write_text("What is the capital of Germany?\n")
    (task / "tests" / "test.sh").write_text("#!/bin/bash\n" + textwrap.dedent(script))
    return task


def cmd(name: str, timeout_s: float = 10, expected=None) -> VerifierSpec:
    return spec(kind="command", path=name, timeout_s=timeout_s, expected=expected)


def test_command_pass_and_fail(tmp_path):
    make_task(tmp_path, "capital", """
        # the answer arrives three ways; use them all to prove the contract
        from_stdin=$(cat)
        from_file=$(cat "$EVSYS_ANSWER_FILE")
        [ "$from_stdin" = "$from_file" ] && [ "$from_file" = "$EVSYS_ANSWER" ] || exit 3
        [ "$EVSYS_EXPECTED" = '"Berlin"' ] || exit 4
        [ -f "$EVSYS_TASK_DIR/instruction.md" ] && [ -f instruction.md ] || exit 5
        if grep -qi berlin "$EVSYS_ANSWER_FILE"; then echo 1 > "$EVSYS_REWARD_DIR/reward.txt"
        else echo 0 > "$EVSYS_REWARD_DIR/reward.txt"; fi
        echo checked
    """)
    s = cmd("capital", expected="Berlin")
    check_spec(s, tmp_path)
    assert verify(s, "It is Berlin.", tmp_path) == Verdict(1.0, True, None)
    v = verify(s, "Paris", tmp_path)
    assert (v.score, v.passed) == (0.0, False) and "checked" in v.reason


def test_command_reward_json_forms(tmp_path):
    make_task(tmp_path, "single", """echo '{"reward": 0.5}' > "$EVSYS_REWARD_DIR/reward.json"\n""")
    make_task(tmp_path, "multi", """echo '{"a": 1, "b": 0.5}' > "$EVSYS_REWARD_DIR/reward.json"\n""")
    make_task(tmp_path, "both", """
        echo 0 > "$EVSYS_REWARD_DIR/reward.txt"; echo 1 > "$EVSYS_REWARD_DIR/reward.json"
    """)
    make_task(tmp_path, "junk", """echo lots > "$EVSYS_REWARD_DIR/reward.txt"\n""")
    make_task(tmp_path, "none", "echo nothing written\n")
    assert verify(cmd("single"), "x", tmp_path).score == 0.5
    v = verify(cmd("multi"), "x", tmp_path)
    assert v.score == 0.75 and '"a": 1' in v.reason
    assert verify(cmd("both"), "x", tmp_path).passed          # reward.json is read first
    v = verify(cmd("junk"), "x", tmp_path)
    assert v.score == 0.0 and "not a number" in v.reason
    v = verify(cmd("none"), "x", tmp_path)
    assert v.score == 0.0 and "neither reward.txt nor reward.json" in v.reason


def test_command_nonzero_exit_scores_zero_even_with_reward(tmp_path):
    make_task(tmp_path, "crash", """
        echo 1 > "$EVSYS_REWARD_DIR/reward.txt"
        echo "Traceback: something broke" >&2
        exit 7
    """)
    v = verify(cmd("crash"), "x", tmp_path)
    assert (v.score, v.passed) == (0.0, False)
    assert "exited with status 7" in v.reason and "something broke" in v.reason


def test_command_megabytes_of_output_are_bounded(tmp_path):
    make_task(tmp_path, "loud", """
        head -c 8000000 /dev/zero | tr '\\0' 'x'
        echo; echo THE-END
        echo 1 > "$EVSYS_REWARD_DIR/reward.txt"
        exit 1
    """)
    v = verify(cmd("loud"), "x", tmp_path)
    assert v.score == 0.0
    assert "8000009 bytes of output" in v.reason and "THE-END" in v.reason
    assert len(v.reason) < 2000


def test_command_hang_is_killed_at_timeout(tmp_path):
    marker = tmp_path / "child-survived"
    make_task(tmp_path, "hang", f"""
        (sleep 1.5; touch {marker}) &
        echo started
        sleep 100
    """)
    t0 = time.monotonic()
    v = verify(cmd("hang", timeout_s=1), "x", tmp_path)
    elapsed = time.monotonic() - t0
    assert (v.score, v.passed) == (0.0, False)
    assert "timed out after 1s" in v.reason and "started" in v.reason
    assert elapsed < 2.5
    time.sleep(max(0.0, 2.0 - elapsed))
    assert not marker.exists(), "a background child of the script outlived the timeout"


def test_command_background_child_holding_output_does_not_block(tmp_path):
    make_task(tmp_path, "detached", """
        sleep 100 &
        echo 1 > "$EVSYS_REWARD_DIR/reward.txt"
    """)
    t0 = time.monotonic()
    assert verify(cmd("detached", timeout_s=5), "x", tmp_path).passed
    assert time.monotonic() - t0 < 2.5


def test_command_env_is_minimal(tmp_path, monkeypatch):
    monkeypatch.setenv("TINKER_API_KEY", "secret-value")
    make_task(tmp_path, "env", """
        [ -z "$TINKER_API_KEY" ] && echo 1 > "$EVSYS_REWARD_DIR/reward.txt"
    """)
    assert verify(cmd("env"), "x", tmp_path).passed


def test_command_check_spec_errors(tmp_path):
    with pytest.raises(VerifierError, match="does not exist"):
        check_spec(cmd("nowhere"), tmp_path, line=5)
    (tmp_path / "empty" / "tests").mkdir(parents=True)
    with pytest.raises(VerifierError) as e:
        check_spec(cmd("empty"), tmp_path, line=5)
    assert str(tmp_path / "empty" / "tests" / "test.sh") in str(e.value)
    assert f"tasks.jsonl:5" in str(e.value)
    v = verify(cmd("empty"), "x", tmp_path)
    assert v.score == 0.0 and "test.sh" in v.reason


def test_command_script_needs_no_exec_bit(tmp_path):
    task = make_task(tmp_path, "noexec", """echo 1 > "$EVSYS_REWARD_DIR/reward.txt"\n""")
    script = task / "tests" / "test.sh"
    os.chmod(script, stat.S_IRUSR | stat.S_IWUSR)
    assert verify(cmd("noexec"), "x", tmp_path).passed


def test_module_cache_reloads_edited_file(tmp_path):
    path = tmp_path / "g.py"
    path.write_text("def f(a, e):\n    return 0.0\n")
    s = spec(kind="python", fn="g:f")
    assert verify(s, "x", tmp_path).score == 0.0
    time.sleep(0.01)
    path.write_text("def f(a, e):\n    return 1.0\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert verify(s, "x", tmp_path).score == 1.0
    from evsys_core import usercode

    assert len([k for k in usercode._LOADED if k[0] == str(path.resolve())]) == 2  # one per (path, mtime)
