"""Tests are hermetic: what runs leave in the checkout (`make demo`'s run directory under
examples/sdft_walkthrough/outputs, a `.evsys` index, even a broken one) changes no test's
result, and the tests write nothing into the checkout.

The second test is `make demo` then `make test` in miniature: a copy of the checkout with a
demo's leftovers planted in it runs every fast test that uses the examples (the tests that
request `examples_ws`), which must pass and leave every file of the copy as it was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import EXAMPLES, copy_examples
from history_fixtures import config_yaml, make_run, train_rows

REPO = EXAMPLES.parent


def tracked(root: Path, under: str = ".") -> list[str]:
    """Files git would commit under `under` (tracked, or new and not ignored), relative to root."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z", "--", under], cwd=root,
                         capture_output=True, check=True).stdout.decode()
    return sorted(p for p in out.split("\0") if p and (root / p).is_file())


def copy_tracked(dest: Path, under: str = ".") -> Path:
    """A copy of the checkout's tracked files (under `under`) at dest, nothing a run left."""
    for rel in tracked(REPO, under):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    return dest


def plant_demo_leftovers(checkout: Path) -> None:
    """What `make demo` leaves (its finished run, the workspace's index) plus a broken index and bytecode."""
    make_run(checkout / "examples/sdft_walkthrough/outputs", "sdft_capitals", rows=train_rows(2),
             config=config_yaml(), summary="# sdft_capitals\n")
    for index in (checkout / ".evsys", checkout / "examples/sdft_walkthrough/.evsys"):
        index.mkdir(parents=True)
        (index / "index.duckdb").write_bytes(b"not a duckdb file" * 100)  # broken: opening it would move it aside
        (index / "index.lock").touch()
    (checkout / "examples/sft_walkthrough/__pycache__").mkdir()
    (checkout / "examples/sft_walkthrough/__pycache__/run.cpython-311.pyc").write_bytes(b"\0" * 16)


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under root (ignored ones included), with its size, mtime and bytes."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file() or p.is_symlink()}


def test_the_examples_workspace_is_the_tracked_examples_without_what_runs_left(tmp_path):
    checkout = copy_tracked(tmp_path / "checkout", "examples")
    plant_demo_leftovers(checkout)
    ws = copy_examples(checkout / "examples", tmp_path / "ws")
    copied = sorted(str(p.relative_to(ws)) for p in ws.rglob("*") if p.is_file())
    assert copied == tracked(REPO, "examples")  # every tracked file, nothing a run left
    for rel in copied:
        assert (ws / rel).read_bytes() == (REPO / rel).read_bytes(), rel
    assert not [p for p in ws.rglob("*") if p.name in ("outputs", ".evsys", "__pycache__")]


def test_demo_leftovers_in_the_checkout_change_no_test_and_tests_write_nothing_there(tmp_path):
    checkout = copy_tracked(tmp_path / "checkout")
    plant_demo_leftovers(checkout)

    # the planted run is what used to trip the walkthrough tests: a deep check of the walkthrough
    # with the checkout as its workspace sees it (a second warning, about the existing run)
    from evsys_core.validate import validate

    report = validate(checkout / "examples/sdft_walkthrough/config.tinker.yaml", deep=True, workspace=checkout)
    assert any("sdft_capitals" in w.message for w in report.warnings), report.warnings

    users = sorted(str(p.relative_to(checkout)) for p in (checkout / "tests").glob("test_*.py")
                   if p.name != Path(__file__).name and "examples_ws" in p.read_text())
    assert {"tests/test_validate.py", "tests/test_config.py"} <= set(users), users
    before = snapshot(checkout)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(checkout), str(checkout / "server")]),
           "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                           *users],
                          cwd=checkout, env=env, capture_output=True, text=True, timeout=1200)
    tail = (done.stdout + done.stderr)[-3000:]
    assert done.returncode == 0 and " passed" in tail and "failed" not in tail, tail
    after = snapshot(checkout)
    assert sorted(set(after) - set(before)) == [] and sorted(set(before) - set(after)) == []
    assert [rel for rel in before if before[rel] != after[rel]] == []
