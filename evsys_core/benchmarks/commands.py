"""The `command` verifier: run a Harbor-style task's `tests/test.sh` locally, untrusted.

The contract (also in docs/benchmarks.md):

- run as `bash tests/test.sh` with the task directory as the working directory, in a new
  session (its own process group), no container;
- the answer is on stdin, in the file `$EVSYS_ANSWER_FILE` (UTF-8), and in `$EVSYS_ANSWER`
  (left unset when longer than 64 KiB); `$EVSYS_EXPECTED` is the task's `expected` as JSON;
  `$EVSYS_TASK_DIR` is the task directory;
- the script writes its score into `$EVSYS_REWARD_DIR` (a fresh empty directory, the local
  stand-in for Harbor's `/logs/verifier`): `reward.json` — `{"reward": x}`, a bare number, or
  an object of named scores (the score is their mean) — or `reward.txt` holding one number.
  `reward.json` is read first when both exist;
- the environment is minimal (PATH, HOME, LANG, LC_ALL, TMPDIR, USER and the EVSYS_ variables):
  no API keys leak into verifier scripts;
- a non-zero exit status, a missing or unreadable reward, or running past `timeout_s`
  gives score 0 with the reason (exit status / timeout and the last lines of output). At the
  timeout, and after every run, the whole process group is killed, so background children
  do not outlive it. Output is read as it comes and only its last 16 KiB are kept.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Any

from evsys_core.benchmarks.verifiers import Verdict

OUTPUT_TAIL_BYTES = 16 * 1024
ANSWER_ENV_MAX = 64 * 1024
REASON_TAIL_CHARS = 400
_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER")


class _Tail(threading.Thread):
    """Drain a pipe, keeping only the last `limit` bytes and counting the rest."""

    def __init__(self, stream: IO[bytes], limit: int = OUTPUT_TAIL_BYTES):
        super().__init__(daemon=True)
        self.stream, self.limit = stream, limit
        self.chunks: deque[bytes] = deque()
        self.kept = 0
        self.total = 0

    def run(self) -> None:
        try:
            while chunk := self.stream.read1(65536):
                self.total += len(chunk)
                self.chunks.append(chunk)
                self.kept += len(chunk)
                while self.kept - len(self.chunks[0]) >= self.limit:
                    self.kept -= len(self.chunks.popleft())
        except (OSError, ValueError):
            pass

    def text(self) -> str:
        data = b"".join(self.chunks)[-self.limit:]
        return data.decode("utf-8", errors="replace")


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _output_note(tail: _Tail) -> str:
    text = tail.text().strip()
    if not text:
        return "no output"
    short = text[-REASON_TAIL_CHARS:]
    size = f"{tail.total} bytes of output" + (", last lines" if len(short) < tail.total else "")
    return f"{size}: {short!r}"


def _read_reward(reward_dir: Path) -> tuple[float | None, str | None]:
    """(score, detail-or-problem). score None means the problem explains why."""
    rj, rt = reward_dir / "reward.json", reward_dir / "reward.txt"
    if rj.is_file():
        try:
            data = json.loads(rj.read_text(errors="replace")[:1_000_000])
        except json.JSONDecodeError as e:
            return None, f"reward.json is not valid JSON ({e})"
        if isinstance(data, dict) and "reward" in data:
            data = data["reward"]
        if isinstance(data, dict):
            values = {k: v for k, v in data.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if not values or len(values) != len(data):
                return None, (f"reward.json must be {{\"reward\": x}}, a number, or an object "
                              f"of numeric scores; got {json.dumps(data)[:200]}")
            score = sum(values.values()) / len(values)
            return _finite(score, "reward.json"), f"reward.json scores: {json.dumps(values)[:300]}"
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            return _finite(float(data), "reward.json"), None
        return None, f"reward.json holds {json.dumps(data)[:200]}, not a number"
    if rt.is_file():
        text = rt.read_text(errors="replace")[:1000].strip()
        try:
            return _finite(float(text), "reward.txt"), None
        except ValueError:
            return None, f"reward.txt holds {text[:100]!r}, not a number"
    return None, "the script wrote neither reward.txt nor reward.json in $EVSYS_REWARD_DIR"


def _finite(value: float, name: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{name} holds a non-finite reward {value!r}")
    return value


def run_command_verifier(task_path: Path, answer: str, expected: Any, *,
                         timeout_s: float) -> Verdict:
    """Run `task_path/tests/test.sh` on `answer`; never raises, never outlives `timeout_s`
    by more than the time to kill and reap the process group."""
    task_path = Path(task_path).resolve()
    script = task_path / "tests" / "test.sh"
    with tempfile.TemporaryDirectory(prefix="evsys-verify-", ignore_cleanup_errors=True) as tmp:
        tmp_path = Path(tmp)
        reward_dir = tmp_path / "verifier"
        reward_dir.mkdir()
        answer_file = tmp_path / "answer.txt"
        answer_file.write_text(answer, encoding="utf-8")
        env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
        env.update(EVSYS_ANSWER_FILE=str(answer_file), EVSYS_REWARD_DIR=str(reward_dir),
                   EVSYS_TASK_DIR=str(task_path), EVSYS_EXPECTED=json.dumps(expected, default=str))
        if len(answer.encode("utf-8")) <= ANSWER_ENV_MAX and "\x00" not in answer:
            env["EVSYS_ANSWER"] = answer
        env.setdefault("PATH", os.defpath)
        started = time.monotonic()
        try:
            with answer_file.open("rb") as stdin:
                proc = subprocess.Popen(
                    ["bash", str(script)], cwd=task_path, env=env, stdin=stdin,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                )
        except OSError as e:
            return Verdict.fail(f"could not start {script}: {e}")
        tail = _Tail(proc.stdout)
        tail.start()
        timed_out = False
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            rc = proc.wait()
        finally:
            _kill_group(proc.pid)  # background children of a finished script, too
        tail.join(timeout=1.0)
        if not tail.is_alive():
            proc.stdout.close()
        elapsed = time.monotonic() - started
        if timed_out:
            return Verdict.fail(f"{script} timed out after {timeout_s:g}s and was killed; "
                                f"{_output_note(tail)}")
        if rc != 0:
            how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
            return Verdict.fail(f"{script} {how} after {elapsed:.1f}s; {_output_note(tail)}")
        try:
            score, detail = _read_reward(reward_dir)
        except (OSError, ValueError) as e:
            return Verdict.fail(f"{script}: {e}")
        if score is None:
            return Verdict.fail(f"{script}: {detail}; {_output_note(tail)}")
        verdict = Verdict.of(score, detail)
        if not verdict.passed and detail is None:
            verdict = Verdict(verdict.score, False, f"reward {score:g}; {_output_note(tail)}")
        return verdict
