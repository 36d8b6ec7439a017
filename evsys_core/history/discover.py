"""Finding run directories under a workspace, and noticing which ones changed.

A run directory is any folder holding `run.json` or `metrics.jsonl`. The walk skips hidden
folders (`.git`, `.venv`, `.evsys`, ...), `node_modules`, `__pycache__`, `checkpoints` and
symbolic links, and never looks for runs inside a run directory (only at its `predictions/`).

The directory-mtime shortcut. Every directory walked is remembered with its mtime. On the
next refresh each remembered directory is stat'ed once; only a directory whose mtime changed
is listed again. Creating, deleting or renaming an entry changes its parent directory's
mtime, so this notices, without listing unchanged folders or stat'ing files in them:
  - new, removed and renamed run directories anywhere under the workspace;
  - files created, removed or atomically replaced (written to a temp file and renamed, as
    `run.json` is) inside a run directory or its `predictions/`.
What it does not notice by itself is a file changed in place inside a directory whose
mtime did not move (an append to `metrics.jsonl`, `echo >> conclusion.md`). So the files of
every run whose status is `running` are stat'ed on every refresh (appends to a live run are
seen), and `conclude()` tells the index which run it wrote to; an in-place edit of a file in
a finished run is only seen by `Index.refresh(full=True)`, which stats everything.
A directory whose mtime is within RACY_NS of the moment it was read is not trusted (an entry
created in the same clock tick would leave its mtime unchanged) and is listed again next time.
"""

from __future__ import annotations

import os
import stat as stat_mod
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from evsys_core import rundir

SKIP_NAMES = frozenset({"node_modules", "__pycache__", rundir.CHECKPOINTS, "site-packages"})
RUN_MARKERS = (rundir.RUN_JSON, rundir.METRICS)
RACY_NS = 200_000_000  # 0.2 s: covers the kernel's coarse file-time clock
RACY_COARSE_NS = 2_000_000_000  # on file systems with whole-second times


def skip_dir(name: str) -> bool:
    return name.startswith(".") or name in SKIP_NAMES


def recorded_mtime(mtime_ns: int, now_ns: int) -> int:
    """The mtime to remember: 0 (look again next time) when it is too recent to trust."""
    window = RACY_COARSE_NS if mtime_ns % 1_000_000_000 == 0 else RACY_NS
    return 0 if now_ns - mtime_ns < window else mtime_ns


def join(root: str, rel: str) -> str:
    return os.path.join(root, rel) if rel else root


def child(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


class DirRec(NamedTuple):
    mtime_ns: int
    kind: str  # "tree" (a plain folder), "run" (a run directory), "sub" (a run's predictions/)
    run_id: str | None = None


@dataclass
class Walk:
    """The outcome of checking the remembered directories against the disk."""

    dirs: dict[str, DirRec]
    to_check: set[str] = field(default_factory=set)  # run dirs whose files must be stat'ed
    removed_runs: set[str] = field(default_factory=set)  # run ids whose directory is gone
    dirty: set[str] = field(default_factory=set)  # dir paths whose record changed or is new
    deleted: set[str] = field(default_factory=set)  # dir paths no longer there
    dirs_checked: int = 0
    dirs_listed: int = 0
    runs: int = 0  # run directories found


def walk(root: str, stored: dict[str, DirRec], live: set[str], full: bool = False) -> Walk:
    """Check every remembered directory; list the changed ones; find new run directories.

    `live` holds the paths of run directories to check even if unchanged (running runs).
    """
    children: dict[str, list[tuple[str, str]]] = {}  # parent -> [(path, name)]
    for rel in stored:
        if rel:
            parent, _, name = rel.rpartition("/")
            children.setdefault(parent, []).append((rel, name))
    out = Walk(dirs={})
    now = time.time_ns()

    def forget(rel: str) -> None:
        rec = stored.get(rel)
        if rec is None or rel in out.deleted:
            return
        out.deleted.add(rel)
        if rec.kind == "run" and rec.run_id:
            out.removed_runs.add(rec.run_id)
        for c, _ in children.get(rel, ()):
            forget(c)

    def keep(rel: str, rec: DirRec) -> None:
        out.dirs[rel] = rec
        if stored.get(rel) != rec:
            out.dirty.add(rel)

    def check_children(rel: str, names: list[tuple[str, str]]) -> set[str]:
        """Stat each sub-directory (path, name) of `rel`; return the paths still there.
        The hot loop at 10,000 runs: an unchanged run directory costs one lstat."""
        prefix = join(root, rel) + os.sep
        there = set()
        lstat, dirs, get = os.lstat, out.dirs, stored.get
        for c, name in names:
            try:
                st = lstat(prefix + name)
            except OSError:
                continue
            if st.st_mode & 0o170000 != 0o040000:
                continue
            there.add(c)
            rec = get(c)
            if (rec is not None and rec.mtime_ns == st.st_mtime_ns and rec.kind == "run"
                    and not full and c not in live and c not in children):
                dirs[c] = rec
                out.runs += 1
            else:
                visit(c, st.st_mtime_ns)
        out.dirs_checked += len(there)
        return there

    def visit(rel: str, mtime_ns: int) -> None:
        old = stored.get(rel)
        same = old is not None and old.mtime_ns == mtime_ns and not full
        if same and old.kind == "run":
            out.dirs[rel] = old
            out.runs += 1
            if rel in live:
                out.to_check.add(rel)
            for c, _ in children.get(rel, ()):  # its predictions/ folder
                st = _lstat_dir(join(root, c))
                if st is None:
                    forget(c)
                    out.to_check.add(rel)
                elif st.st_mtime_ns != stored[c].mtime_ns:
                    keep(c, DirRec(recorded_mtime(st.st_mtime_ns, now), "sub", old.run_id))
                    out.to_check.add(rel)
                else:
                    out.dirs[c] = stored[c]
            return
        if same and old.kind == "tree":
            out.dirs[rel] = old
            known = children.get(rel, [])
            for c in {c for c, _ in known} - check_children(rel, known):
                forget(c)
            return
        # new or changed: list it again
        out.dirs_listed += 1
        try:
            files, subdirs = _list(join(root, rel))
        except OSError:
            forget(rel)
            return
        rec_mtime = recorded_mtime(mtime_ns, now)
        if any(m in files for m in RUN_MARKERS):
            run_id = old.run_id if old is not None and old.kind == "run" else None
            if old is not None and old.kind != "run":
                for c, _ in children.get(rel, ()):
                    forget(c)
            keep(rel, DirRec(rec_mtime, "run", run_id))
            out.runs += 1
            out.to_check.add(rel)
            pred = child(rel, rundir.PREDICTIONS)
            if rundir.PREDICTIONS in subdirs:
                st = _lstat_dir(join(root, pred))
                if st is not None:
                    keep(pred, DirRec(recorded_mtime(st.st_mtime_ns, now), "sub", run_id))
            elif pred in stored:
                forget(pred)
            return
        if old is not None and old.kind == "run":
            if old.run_id:
                out.removed_runs.add(old.run_id)  # its run.json and metrics.jsonl are gone
            for c, _ in children.get(rel, ()):
                forget(c)
        keep(rel, DirRec(rec_mtime, "tree"))
        there = check_children(rel, [(child(rel, n), n) for n in subdirs if not skip_dir(n)])
        if old is None or old.kind == "tree":
            for c, _ in children.get(rel, ()):
                if c not in there:
                    forget(c)

    st = _lstat_dir(root)
    if st is None:
        raise FileNotFoundError(root)
    out.dirs_checked += 1
    visit("", st.st_mtime_ns)
    # anything remembered but not reached (e.g. under a folder now skipped) is gone
    for rel in stored.keys() - out.dirs.keys() - out.deleted:
        forget(rel)
    return out


def _lstat_dir(path: str) -> os.stat_result | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st if stat_mod.S_ISDIR(st.st_mode) else None


def _list(path: str) -> tuple[set[str], list[str]]:
    """(regular file names, sub-directory names) of a folder; symbolic links are ignored."""
    files: set[str] = set()
    subdirs: list[str] = []
    with os.scandir(path) as it:
        for e in it:
            if e.is_symlink():
                continue
            if e.is_dir(follow_symlinks=False):
                subdirs.append(e.name)
            elif e.is_file(follow_symlinks=False):
                files.add(e.name)
    return files, subdirs
