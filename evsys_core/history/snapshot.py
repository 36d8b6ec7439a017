"""A snapshot of the refresh bookkeeping, so that a refresh with nothing to do opens no database.

After every refresh that writes, the writer (still holding the exclusive lock, after closing
the database) saves `.evsys/state.marshal`: every remembered directory with its mtime, the
files of each running run with their size/mtime/inode, and the identity (inode, size, mtime)
of the index file and its WAL at that moment. A later refresh first checks the disk against
the snapshot; if nothing moved and the index file is still the one the snapshot describes, it
is done — no lock, no DuckDB connection. Otherwise it takes the normal path.

The snapshot is deleted before a write transaction begins, so a writer killed half-way
leaves none behind; a stale or unreadable snapshot only costs the normal path.
"""

from __future__ import annotations

import marshal
import os
from dataclasses import dataclass

from evsys_core.history.discover import DirRec
from evsys_core.history.schema import SCHEMA_VERSION

FORMAT = f"1/{SCHEMA_VERSION}"  # an index of another schema is never trusted from here
NAME = "state.marshal"


@dataclass
class LiveRun:
    run_id: str
    pid: int | None
    inferred: bool
    files: dict[str, tuple[int, int, int]]  # path -> (size, mtime_ns, inode)


@dataclass
class Snapshot:
    dirs: dict[str, DirRec]
    live: dict[str, LiveRun]  # run dir (relative) -> its state
    ident: tuple = ()  # db_identity() of the index it describes (set by load)
    _watch: list | None = None
    _runs: int | None = None

    def watched(self, root: str) -> list[tuple[str, int]]:
        """(absolute path, remembered mtime) of every folder a settled check stats: the root,
        every folder that is not a run directory, and any directory whose record is too
        recent to trust (mtime 0: it never matches, so the full walk looks again)."""
        if self._watch is None:
            self._watch = [(os.path.join(root, p) if p else root, r.mtime_ns)
                           for p, r in self.dirs.items()
                           if not p or r.kind == "tree" or not r.mtime_ns]
        return self._watch

    @property
    def n_runs(self) -> int:
        if self._runs is None:
            self._runs = sum(1 for r in self.dirs.values() if r.kind == "run")
        return self._runs


def db_identity(db_path: str) -> tuple:
    out = []
    for p in (db_path, db_path + ".wal"):
        try:
            st = os.stat(p)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def save(path: str, db_path: str, snap: Snapshot, root: str | os.PathLike | None = None) -> None:
    data = (
        FORMAT,
        db_identity(db_path),
        {p: (r.mtime_ns, r.kind, r.run_id) for p, r in snap.dirs.items()},
        {p: (lr.run_id, lr.pid, lr.inferred, lr.files) for p, lr in snap.live.items()},
    )
    from evsys_core import safefs

    try:
        safefs.write_atomic(path, marshal.dumps(data), root)  # leaves no temp file on failure
    except OSError:
        discard(path)


def load(path: str, db_path: str) -> Snapshot | None:
    """The snapshot, or None if missing, unreadable, or not about the current index file."""
    try:
        with open(path, "rb") as f:
            data = marshal.loads(f.read())  # marshal.load(f) is many times slower
        fmt, ident, dirs, live = data
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if fmt != FORMAT or ident != db_identity(db_path):
        return None
    return Snapshot(
        dict(zip(dirs, map(DirRec._make, dirs.values()))),
        {p: LiveRun(rid, pid, inf, files) for p, (rid, pid, inf, files) in live.items()},
        ident,
    )


def discard(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
