"""The index file on disk: locking, connections, fast inserts.

Two kinds of connection, never open at the same time in one process:
- the writer: read-write, used only by refresh, under an exclusive `flock` on
  `.evsys/index.lock`, so two refreshing processes run one after the other;
- readers: read-only, with `enable_external_access=false` and `lock_configuration=true`, under
  a shared `flock`, opened per call and closed before the lock is released (a long-lived
  reader may keep its one open between calls: held.py says how it stays out of the way).
DuckDB itself lets one process write or many read a file; the flock makes a reader wait for a
refresh in progress instead of failing. A program outside evsys holding the file (the duckdb
CLI, say) is waited for too, up to the timeout.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import threading
import time
from typing import Any, Callable, Iterator, Sequence, TypeVar

import duckdb

from evsys_core.errors import EvsysError
from evsys_core.history.schema import QUERY_TIMEOUT_S  # noqa: F401 - the limit run_bounded applies

LOCK_TIMEOUT_S = 300.0
READER_CONFIG = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "lock_configuration": True,  # last: nothing after it can change the settings above
}


T = TypeVar("T")


class QueryError(EvsysError):
    """SQL over the index failed or was refused, or a metric/column name is unknown."""


class HistoryIndexError(EvsysError):
    """The run index cannot be opened, or stayed locked by another process too long."""


class CorruptIndexError(Exception):
    """The index file cannot be read as an evsys index (internal: triggers a rebuild)."""


def warn(message: str) -> None:
    print(f"evsys: warning: {message}", file=sys.stderr, flush=True)


class HeldLock:
    """An flock held on a lock file. `rm -rf .evsys` can unlink the file under it: `held()`
    says whether the path still names the file locked (if not, another process may lock the
    new one, so nothing should be written as if this lock still excluded it)."""

    def __init__(self, fd: int, path: str):
        self.fd = fd
        self.path = path

    def held(self) -> bool:
        try:
            a, b = os.fstat(self.fd), os.stat(self.path)
        except OSError:
            return False
        return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


@contextlib.contextmanager
def file_lock(path: str, exclusive: bool, timeout_s: float = LOCK_TIMEOUT_S,
              root: Any = None) -> Iterator[HeldLock]:
    """Hold an flock on `path` (shared or exclusive), waiting up to `timeout_s`; the file is
    never opened through a link out of `root` (safefs).

    The lock file (and its folder) are created when missing. A lock file deleted or replaced
    while we waited is not the lock any more: we lock the one now at the path instead, so
    that processes that start after `rm -rf .evsys` still exclude each other."""
    from evsys_core import safefs

    op = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    start = time.monotonic()
    noted = False
    while True:
        try:
            fd = safefs.open_fd(path, os.O_RDWR | os.O_CREAT, root)
        except FileNotFoundError:  # the folder was deleted: make it again
            if time.monotonic() - start > timeout_s:
                raise
            safefs.makedirs(os.path.dirname(path), root)
            continue
        lock = HeldLock(fd, path)
        delay = 0.005
        try:
            while True:
                try:
                    fcntl.flock(fd, op | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    waited = time.monotonic() - start
                    if waited > timeout_s:
                        raise HistoryIndexError(
                            f"{path}: another evsys process has held the run index for "
                            f"{waited:.0f} s (a refresh of many runs?); try again when it ends"
                        ) from None
                    if waited > 2.0 and not noted:
                        print("evsys: waiting for another process updating the run index ...",
                              file=sys.stderr, flush=True)
                        noted = True
                    time.sleep(delay)
                    delay = min(delay * 2, 0.1)
        except BaseException:
            os.close(fd)
            raise
        if lock.held():
            break
        os.close(fd)  # deleted or replaced while we waited: lock the file there now
    try:
        yield lock
    finally:
        os.close(fd)  # releases the lock


class QueryTimeout(QueryError):
    """A read of the index ran past its time limit and was interrupted."""


def run_bounded(con: Any, fn: Callable[[Any], T], timeout_s: float | None) -> T:
    """`fn(con)` with a time limit, and stoppable by Ctrl-C at once.

    The work runs in a helper thread while the caller waits: on the limit, or on a
    KeyboardInterrupt in the caller (DuckDB does not look at Python's signals while it
    executes), the connection is interrupted and the helper is waited for."""
    box: dict[str, Any] = {}
    done = threading.Event()  # not Thread.join: a join cut short by Ctrl-C can lie afterwards

    def work() -> None:
        try:
            box["value"] = fn(con)
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=work, name="evsys-index-read", daemon=True).start()
    try:
        finished = done.wait(timeout_s)
    except KeyboardInterrupt:
        con.interrupt()
        done.wait()
        raise
    if not finished:
        con.interrupt()
        done.wait()
        if "value" not in box:
            raise QueryTimeout(
                f"the query ran longer than {timeout_s:g} s and was stopped; add a WHERE or "
                "LIMIT, or aggregate (the CLI's --timeout raises the limit)")
    if "error" in box:
        raise box["error"]
    return box["value"]


# DuckDB errors that mean the file itself is damaged (as opposed to a bad query)
_DAMAGE = ("corrupt", "checksum", "not a valid duckdb", "invalid database", "serializ",
           "failed to read", "could not read", "truncated", "unexpected end")


def is_damage(e: Exception) -> bool:
    msg = str(e).lower()
    return isinstance(e, (duckdb.IOException, duckdb.SerializationException,
                          duckdb.InternalException, duckdb.FatalException)) and any(
        w in msg for w in _DAMAGE)


def is_lock_conflict(e: Exception) -> bool:
    """Another connection holds the file: another process (DuckDB's file lock), or another
    Index in this one with its read-only connection held (held.py: it lets go shortly)."""
    msg = str(e).lower()
    return ((isinstance(e, duckdb.IOException) and "lock" in msg)
            or (isinstance(e, duckdb.ConnectionException) and "different configuration" in msg))


def connect(db_path: str, read_only: bool, timeout_s: float = LOCK_TIMEOUT_S):
    """Open the index, retrying while a program outside evsys holds DuckDB's file lock."""
    start = time.monotonic()
    delay = 0.01
    while True:
        try:
            if read_only:
                return duckdb.connect(db_path, read_only=True, config=dict(READER_CONFIG))
            return duckdb.connect(db_path)
        except duckdb.Error as e:
            if not is_lock_conflict(e):
                if is_damage(e):
                    raise CorruptIndexError(str(e)) from e
                raise HistoryIndexError(f"cannot open the run index {db_path}: {e}") from None
            if time.monotonic() - start > timeout_s:
                raise HistoryIndexError(
                    f"{db_path} is held open by another program for more than "
                    f"{timeout_s:.0f} s: {e}. Close it (e.g. a duckdb shell) and try again."
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


class Batch:
    """Rows for one table, kept as columns and inserted in bulk through numpy arrays (far
    faster than executemany). DOUBLE columns keep NaN apart from NULL (a numpy scan reads
    NaN as NULL); TIMESTAMP columns take epoch seconds (UTC)."""

    def __init__(self, table: str, columns: Sequence[tuple[str, str]], flush_every: int = 250_000):
        self.table = table
        self.columns = list(columns)
        self.cols: list[list[Any]] = [[] for _ in self.columns]
        self.n = 0
        self.flush_every = flush_every
        self.total = 0

    def add_rows(self, con: Any, rows: Sequence[tuple]) -> None:
        for row in rows:
            for col, v in zip(self.cols, row):
                col.append(v)
        self._added(con, len(rows))

    def add_columns(self, con: Any, columns: Sequence[list[Any]]) -> None:
        for col, new in zip(self.cols, columns):
            col.extend(new)
        self._added(con, len(columns[0]) if columns else 0)

    def add_dict(self, con: Any, row: dict[str, Any]) -> None:
        self.add_rows(con, [tuple(row[name] for name, _ in self.columns)])

    def _added(self, con: Any, n: int) -> None:
        self.n += n
        if self.n >= self.flush_every:
            self.flush(con)

    def flush(self, con: Any) -> None:
        if not self.n:
            return
        import numpy as np  # only refreshes that write need it (saves ~0.1 s per command)

        arrays: dict[str, Any] = {}
        exprs: list[str] = []
        for i, ((_name, typ), col) in enumerate(zip(self.columns, self.cols)):
            c = f"c{i}"
            if typ in ("DOUBLE", "TIMESTAMP"):
                arr = arrays[c] = np.array(col, dtype=np.float64)  # None -> NaN -> NULL
                if typ == "TIMESTAMP":
                    exprs.append(f"make_timestamp(CAST(round({c} * 1e6) AS BIGINT))")
                    continue
                nans = np.isnan(arr)
                if nans.any():
                    nans &= ~np.fromiter((v is None for v in col), dtype=bool, count=len(col))
                if nans.any():
                    arrays[f"{c}_nan"] = nans
                    exprs.append(f"CASE WHEN {c}_nan THEN 'NaN'::DOUBLE ELSE {c} END")
                else:
                    exprs.append(f"CAST({c} AS DOUBLE)")
            elif typ == "BIGINT":
                try:
                    arrays[c] = np.array(col, dtype=np.int64)
                    exprs.append(c)
                except (TypeError, ValueError, OverflowError):  # NULLs (values.int64 made
                    # every other value fit; anything else is stored as NULL too)
                    fits = [type(v) is int and -(2**63) <= v < 2**63 for v in col]
                    arrays[f"{c}_n"] = np.array([not f for f in fits], dtype=bool)
                    arrays[c] = np.array([v if f else 0 for v, f in zip(col, fits)], dtype=np.int64)
                    exprs.append(f"CASE WHEN NOT {c}_n THEN {c} END")
            else:
                arrays[c] = np.array(col, dtype=object)
                exprs.append(f"CAST({c} AS {typ})")
        names = ", ".join(f'"{name}"' for name, _ in self.columns)
        view = f"_batch_{self.table}"
        con.register(view, arrays)
        try:
            con.execute(f"INSERT INTO {self.table} ({names}) SELECT {', '.join(exprs)} FROM {view}")
        finally:
            con.unregister(view)
        self.total += self.n
        self.cols = [[] for _ in self.columns]
        self.n = 0
