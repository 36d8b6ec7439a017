"""Reading the files of one run directory into index rows.

JSONL files (`metrics.jsonl`, `predictions/<bench>.jsonl`) are read from the byte offset
where the previous refresh stopped, up to the last whole line: appends cost only the new
bytes, and a partial last line (a run still writing, or killed mid-write) is picked up once
it is complete. Small files (run.json, config.yaml, summary.md, conclusion.md) are re-read
whole when they change.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from evsys_core import rundir
from evsys_core.jobs.record import kind_of
from evsys_core.history import values
from evsys_core.history.values import Notes

CONFIG = "config.yaml"
STALE_AFTER_S = 600.0  # a run without run.json and untouched this long is `interrupted`
HEAD_BYTES = 256  # a JSONL file whose first bytes changed was rewritten, not appended to

# file kinds tracked in the `files` table
KIND_BY_NAME = {
    rundir.RUN_JSON: "run_json",
    rundir.METRICS: "metrics",
    CONFIG: "config",
    rundir.SUMMARY: "summary",
    rundir.CONCLUSION: "conclusion",
}


@dataclass(frozen=True)
class FileStat:
    kind: str
    size: int
    mtime_ns: int
    ino: int


def read_run_info(run_dir: str) -> tuple[dict[str, Any], FileStat | None]:
    """run.json and the stat of the very file read. A `running` run whose process is gone is
    turned into `interrupted` by `rundir.read_run_json` (which saves it) and read again."""
    info, st = _read_json_with_stat(os.path.join(run_dir, rundir.RUN_JSON))
    if info.get("status") == rundir.ACTIVE and not rundir.run_alive(info):
        saved = rundir.read_run_json(Path(run_dir))
        again, st2 = _read_json_with_stat(os.path.join(run_dir, rundir.RUN_JSON))
        if again.get("status") == saved.get("status"):
            return again, st2
        return saved, None  # could not save it: read it again next time
    return info, st


def _read_json_with_stat(path: str) -> tuple[dict[str, Any], FileStat | None]:
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except OSError:
        return {}, None
    try:
        info = json.loads(data)
    except (ValueError, RecursionError):
        info = {}
    stat = FileStat("run_json", st.st_size, st.st_mtime_ns, st.st_ino)
    return (info if isinstance(info, dict) else {}), stat


def list_run_files(run_dir: str, rel: str) -> dict[str, FileStat]:
    """The tracked files of a run directory, keyed by their workspace-relative path."""
    found: dict[str, FileStat] = {}
    for path, name, kind in _candidates(run_dir):
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not (st.st_mode & 0o170000 == 0o100000):  # regular files only, no symlinks
            continue
        key = f"{rel}/{name}" if rel else name
        found[key] = FileStat(kind, st.st_size, st.st_mtime_ns, st.st_ino)
    return found


def _candidates(run_dir: str):
    for name, kind in KIND_BY_NAME.items():
        yield os.path.join(run_dir, name), name, kind
    pred = os.path.join(run_dir, rundir.PREDICTIONS)
    try:
        with os.scandir(pred) as it:
            names = sorted(e.name for e in it if e.name.endswith(".jsonl"))
    except OSError:
        return
    for name in names:
        yield os.path.join(pred, name), f"{rundir.PREDICTIONS}/{name}", "predictions"


# ---------------------------------------------------------------------------- JSONL


@dataclass
class Chunk:
    rows: list[tuple[int, Any]]  # (line number, parsed object or None when not JSON)
    offset: int  # bytes consumed: the end of the last whole line
    lines: int  # whole lines consumed
    head: str
    bytes_read: int
    restarted: bool  # the file was read from the start again (it was rewritten)


def read_jsonl_from(path: str, offset: int, lines: int, head: str | None) -> Chunk:
    """Whole lines of `path` after byte `offset`; from the start if the file was rewritten."""
    with open(path, "rb") as f:
        first = f.read(HEAD_BYTES)
        new_head = hashlib.sha1(first).hexdigest()[:16]
        size = os.fstat(f.fileno()).st_size
        restarted = offset <= 0 or size < offset or head is None or (
            _stored_head(first, offset) != head
        )
        if restarted:
            offset, lines = 0, 0
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    objs = _parse_lines(data[:end].split(b"\n")[:-1])
    rows = list(enumerate(objs, lines + 1))
    return Chunk(rows, offset + end, lines + len(objs), _stored_head(first, offset + end),
                 len(data), restarted)


def _parse_lines(raw: list[bytes]) -> list[Any]:
    """Each line parsed (None for a line that is not JSON); one C-level parse when all are."""
    if not raw:
        return []
    try:
        objs = json.loads(b"[" + b",".join(raw) + b"]")
        if len(objs) == len(raw):
            return objs
    except (ValueError, RecursionError):
        pass
    out: list[Any] = []
    for line in raw:  # a blank or corrupt line somewhere: line by line
        try:
            out.append(json.loads(line))
        except (ValueError, RecursionError):
            out.append(None)
    return out


def _stored_head(first: bytes, consumed: int) -> str:
    return hashlib.sha1(first[: min(HEAD_BYTES, consumed)]).hexdigest()[:16]


def split_value(v: Any) -> tuple[float | None, str | None]:
    """A metric value as (number, text): numbers and booleans as numbers (NaN kept),
    strings as text, null as neither, anything else as its JSON text."""
    if isinstance(v, bool):
        return (1.0 if v else 0.0), None
    if isinstance(v, (int, float)):
        try:
            return float(v), None
        except OverflowError:
            return (math.inf if v > 0 else -math.inf), None
    if v is None:
        return None, None
    if isinstance(v, str):
        return None, v
    return None, json.dumps(v, default=str)


def metric_columns(run_id: str, chunk: Chunk, notes: Notes | None = None,
                   path: str = "") -> list[list[Any]]:
    """Columns (run_id, step, split, key, value, value_text, line) from metrics.jsonl lines.
    A step that is not a 64-bit whole number is left out (noted with its line).

    Lines are grouped by their set of keys (a training loop logs the same keys every step)
    so that each key's values are gathered with one list comprehension."""
    groups: dict[tuple, list[tuple[int, Any, Any, dict]]] = {}
    for line, obj in chunk.rows:
        if not isinstance(obj, dict):
            continue
        metrics = obj.get("metrics")
        if not isinstance(metrics, dict):  # tolerate flat lines: {"step": 1, "train/loss": 0.4}
            metrics = {k: v for k, v in obj.items() if k not in ("step", "split", "time")}
        split = obj.get("split")
        groups.setdefault(tuple(metrics), []).append(
            (line, obj.get("step"), split if isinstance(split, str) else None, metrics))
    steps: list[Any] = []
    splits: list[Any] = []
    keys: list[str] = []
    nums: list[Any] = []
    texts: list[Any] = []
    lines: list[int] = []
    for sig, items in groups.items():
        if not sig:  # lines without metrics add no rows
            continue
        n = len(items)
        g_lines = [it[0] for it in items]
        g_steps = [values.int64(s, notes, path, line, "step") for line, s, _, _ in items]
        g_splits = [it[2] for it in items]
        for key in sig:
            vals = [it[3][key] for it in items]
            skey = str(key)
            keys.extend([skey] * n)
            steps.extend(g_steps)
            lines.extend(g_lines)
            derived = skey.split("/", 1)[0]
            splits.extend([sp if sp is not None else derived for sp in g_splits])
            if all(type(v) is float for v in vals):
                nums.extend(vals)
                texts.extend([None] * n)
            else:
                for v in vals:
                    num, text = split_value(v)
                    nums.append(num)
                    texts.append(text)
    return [[run_id] * len(keys), steps, splits, keys, nums, texts, lines]


def prediction_rows(run_id: str, benchmark: str, chunk: Chunk, notes: Notes | None = None,
                    path: str = "") -> list[tuple]:
    """(run_id, benchmark, step, task_id, instruction, sample, answer, score, passed, reason,
    line) rows from predictions/<benchmark>.jsonl lines."""
    out: list[tuple] = []
    for line, obj in chunk.rows:
        if not isinstance(obj, dict):
            continue
        score, _ = split_value(obj.get("score"))
        passed = obj.get("passed")
        out.append((
            run_id, benchmark, values.int64(obj.get("step"), notes, path, line, "step"),
            values.text(obj.get("task_id")), values.text(obj.get("instruction")),
            values.int64(obj.get("sample"), notes, path, line, "sample"),
            values.text(obj.get("answer")), score, passed if isinstance(passed, bool) else None,
            values.text(obj.get("reason")), line,
        ))
    return out


# ------------------------------------------------------------------- conclusion.md

_ENTRY = re.compile(r"^## (\S+) [—-] (.*)$")
_HEADING_LIKE = re.compile(r"^(\\*)## ")  # a line a reader could take for an entry's header


def escape_conclusion(text: str) -> str:
    """The text with one backslash before every line that starts with `## ` (after any
    backslashes), so no line of it reads as an entry's header; `unescape_line` undoes it."""
    return "".join("\\" + line if _HEADING_LIKE.match(line) else line
                   for line in text.splitlines(keepends=True))


def unescape_line(line: str) -> str:
    return line[1:] if line.startswith("\\") and _HEADING_LIKE.match(line) else line


def parse_conclusions(text: str, fallback_time: float) -> list[tuple[float | None, str, str]]:
    """Entries `## <ISO-8601 UTC time> — <author>` then text, whose heading-like lines evsys
    wrote escaped (`escape_conclusion`); text before the first header (a hand-written file)
    becomes one entry by "unknown" at the file's mtime."""
    entries: list[tuple[float | None, str, str]] = []
    cur: list[str] = []
    head: tuple[float | None, str] | None = None

    def close() -> None:
        body = "\n".join(cur).strip()
        if head is None:
            if body:
                entries.append((fallback_time, "unknown", body))
        else:
            entries.append((head[0], head[1], body))

    for line in text.splitlines():
        m = _ENTRY.match(line)
        t = _parse_time(m.group(1)) if m else None
        if m and t is not None:
            close()
            head, cur = (t, m.group(2).strip() or "unknown"), []
        else:
            cur.append(unescape_line(line))
    close()
    return entries


def _parse_time(s: str) -> float | None:
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def format_conclusion(text: str, author: str, when: float | None = None) -> str:
    """One conclusion.md entry (the format pinned in docs/internals.md): the author on one
    line, the text escaped so that it cannot make a second entry."""
    stamp = datetime.fromtimestamp(when if when is not None else time.time(), timezone.utc)
    iso = stamp.isoformat(timespec="seconds").replace("+00:00", "Z")
    author = " ".join(author.split()) or "unknown"
    return f"## {iso} — {author}\n\n{escape_conclusion(text.strip())}\n\n"


# ------------------------------------------------------------------------ the run row


def read_text(path: str, limit: int = 1 << 20) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return None


def load_config(path: str) -> dict[str, Any] | None:
    text = read_text(path)
    if text is None:
        return None
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


_STATUS_IN_SUMMARY = re.compile(
    r"status\W{0,6}(completed|failed|interrupted|running)", re.IGNORECASE
)


def status_from_summary(text: str | None) -> str | None:
    if not text:
        return None
    m = _STATUS_IN_SUMMARY.search(text)
    if m:
        return m.group(1).lower()
    if re.search(r"\bcompleted\b", text, re.IGNORECASE):
        return "completed"
    return None


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}, "c": [1, 2]} -> {"a.b": 1, "c": [1, 2]} (lists stay whole)."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and v:
                out.update(flatten(v, key))
            else:
                out[key] = v
    elif prefix:
        out[prefix] = obj
    return out


def param_rows(run_id: str, config: dict[str, Any] | None) -> list[tuple]:
    rows = []
    for key, v in flatten(config or {}).items():
        num, text = split_value(v)
        if num is not None and not isinstance(v, bool):
            text = None
        elif isinstance(v, bool):
            text = "true" if v else "false"
        rows.append((run_id, key, num, text))
    return rows


def _get(d: dict | None, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def run_row(
    *,
    run_id: str,
    rel: str,
    abs_dir: str,
    info: dict[str, Any],
    config: dict[str, Any] | None,
    config_json: str | None,
    summary_status: str | None,
    conclusions: list[tuple[float | None, str, str]],
    last_modified: float | None,
    now: float,
    notes: Notes | None = None,
) -> dict[str, Any]:
    """The `runs` row of a run directory, from run.json or, for older runs, inferred.
    A run.json value that does not fit its column is left out or cut, and noted."""
    params = _get(config, "algorithm", "params") or {}
    params = params if isinstance(params, dict) else {}
    f = f"{rel}/{rundir.RUN_JSON}" if rel else rundir.RUN_JSON
    c = f"{rel}/{CONFIG}" if rel else CONFIG
    status = info.get("status") if info else None
    known = isinstance(status, str) and status in ("running", *rundir.FINAL_STATUSES)
    if info and not known and notes is not None:
        notes.add(f, None, "status", status, "is not one of running, completed, failed, "
                  "interrupted; the status is inferred from summary.md and the file times")
    if not known:
        status = summary_status
        if status in (None, "running"):
            recent = last_modified is not None and now - last_modified < STALE_AFTER_S
            status = "running" if recent else "interrupted"

    def info_int(key: str) -> int | None:
        return values.int64(info.get(key), notes, f, None, key)

    def info_time(key: str) -> float | None:
        return values.epoch(info.get(key), notes, f, None, key)

    def info_text(key: str, fallback: Any = None) -> str | None:
        v = info.get(key)
        return values.text(fallback if v is None else v, notes, f, None, key)

    def param_int(key: str, v: Any) -> int | None:
        return values.int64(v, notes, c, None, key)

    started, ended = info_time("started_at"), info_time("ended_at")
    latest = conclusions[-1][2] if conclusions else None
    return {
        "run_id": run_id,
        "name": values.name(info.get("name"), notes, f, "name") or Path(abs_dir).name,
        "path": rel,
        "status": status,
        "kind": kind_of(info or {}),
        "algorithm": info_text("algorithm", _get(config, "algorithm", "kind")),
        "model": info_text("model", _get(config, "model", "name")),
        "backend": info_text("backend", _get(config, "backend", "kind")),
        "created_at": info_time("created_at"),
        "started_at": started,
        "ended_at": ended,
        "duration_s": (ended - started) if started is not None and ended is not None else None,
        "steps": info_int("step"),
        "max_steps": info_int("max_steps")
        or param_int("algorithm.params.max_steps", params.get("max_steps")),
        "learning_rate": values.number(params.get("learning_rate"), notes, c, None,
                                       "algorithm.params.learning_rate"),
        "batch_size": param_int("algorithm.params.batch_size", params.get("batch_size")),
        "lora_rank": param_int("algorithm.params.lora_rank", params.get("lora_rank")),
        "epochs": param_int("algorithm.params.epochs", params.get("epochs")),
        "seed": param_int("seed", _get(config, "seed")),
        "data_path": values.text(_get(config, "data", "path")),
        "config": config_json,
        "config_hash": info_text("config_hash"),
        "git_commit": info_text("git_commit"),
        "parent_run_id": info_text("parent_run_id"),
        "pid": info_int("pid"),
        "error": info_text("error"),
        "conclusion": latest,
        "n_conclusions": len(conclusions),
        "inferred": not known,  # name and status from the folder (no usable run.json)
        "last_modified": values.epoch(last_modified),
        "group_id": info_text("group_id"),
        "group_name": info_text("group_name"),
    }


def config_json(config: dict[str, Any] | None) -> str | None:
    if config is None:
        return None
    return json.dumps(config, default=str, sort_keys=True)
