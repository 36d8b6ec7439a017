"""The run history: a DuckDB index over every run directory under a workspace.

    idx = open_index(Path("."))            # refreshes: only changed files are read
    idx.runs(where="status = 'completed'", sort="val/val/pass@1", limit=10)
    idx.best("val/val/pass@1")
    idx.query("select name, value from runs join latest_metrics using (run_id) "
              "where key = 'val/val/pass@1'")
    conclude(Path("."), "sdft_capitals", "the hint template helps", author="claude")

The index lives at `<workspace>/.evsys/index.duckdb` and can always be rebuilt: the run
directories are the source of truth. A missing or unreadable index is rebuilt on the next
call, with a warning on stderr. Schema, refresh and locking: schema.py, refresh.py, store.py.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence, TypeVar

import duckdb

from evsys_core import rundir, safefs
from evsys_core.errors import RunError, UsageError
from evsys_core.history import groups, reports, schema, snapshot
from evsys_core.history.held import HeldConnection
from evsys_core.history.ingest import format_conclusion
from evsys_core.history.refresh import Refresher, RefreshStats, settled_unchanged, unchanged
from evsys_core.history.store import (
    QUERY_TIMEOUT_S,
    CorruptIndexError,
    HistoryIndexError,
    QueryError,
    connect,
    HeldLock,
    file_lock,
    is_damage,
    run_bounded,
    warn,
)

__all__ = [
    "Index", "HistoryIndexError", "QueryError", "QueryResult", "RefreshStats", "conclude",
    "open_index", "jsonable",
]

INDEX_DIR = ".evsys"
INDEX_FILE = "index.duckdb"
LOCK_FILE = "index.lock"
VANISHED_RETRIES = 4  # times a command starts over when .evsys is deleted under it
LONG_LIVED_RECHECK_S = 2.0  # a long-lived reader (evsys-mcp, evsys ui): a change inside a finished
                            # run's folder shows within this long (docs/history.md)

jsonable = reports.jsonable
T = TypeVar("T")



class _Outdated(Exception):
    """The index file was written with another schema version (its version is the message)."""


class QueryResult(NamedTuple):
    columns: list[str]
    rows: list[tuple]
    truncated: bool


def open_index(workspace: Path | str, refresh: bool = True,
               query_timeout_s: float | None = QUERY_TIMEOUT_S, **options: Any) -> "Index":
    """The index of `workspace`, brought up to date first unless `refresh=False` (it is still
    built if missing or unreadable). Every read stops after `query_timeout_s` (None: never).
    `options` go to Index (recheck_finished_s, hold: for a long-lived reader)."""
    idx = Index(workspace, query_timeout_s, **options)
    if refresh or not idx.db_path.exists():
        idx.refresh()
    return idx


class Index:
    """One workspace's index. Each refresh checks the disk and each read opens its own
    read-only connection, unless a long-lived reader asks otherwise:
    - `recheck_finished_s`: a refresh within that many seconds of the last full walk is a
      settled check (refresh.settled_unchanged): new, removed and running runs are seen at
      once, a file added, removed or replaced inside a finished run's directory within that
      window (an in-place edit of one, as always, only with `full=True`);
    - `hold`: keep the read-only connection open between reads (held.py; never in a
      writer's way)."""

    def __init__(self, workspace: Path | str, query_timeout_s: float | None = QUERY_TIMEOUT_S,
                 recheck_finished_s: float = 0.0, hold: bool = False):
        ws = Path(workspace).expanduser()
        if not ws.is_dir():
            raise UsageError(f"workspace {ws} is not a directory; pass --workspace DIR "
                             "(the folder that holds your run directories)")
        self.workspace = ws.resolve()
        self.dir = self.workspace / INDEX_DIR
        self.db_path = self.dir / INDEX_FILE
        self.lock_path = self.dir / LOCK_FILE
        self.snapshot_path = self.dir / snapshot.NAME
        self.last_refresh: RefreshStats | None = None
        self.query_timeout_s = query_timeout_s or None  # one limit for every read, SQL or not
        self._mutex = threading.RLock()  # one DuckDB connection per Index at a time
        self.recheck_finished_s = recheck_finished_s
        self._swept: float | None = None  # monotonic time of the last full walk
        self._snap: tuple | None = None  # (file identities, the snapshot loaded from them)
        self._held = HeldConnection(str(self.db_path), str(self.lock_path)) if hold else None

    # ---------------------------------------------------------------- refreshing
    def refresh(self, full: bool = False, runs: Sequence[str] = ()) -> RefreshStats:
        """Bring the index up to date. `full=True` stats every file (catches in-place edits of
        finished runs); `runs` are run directories (workspace-relative) to re-check."""
        with self._mutex:
            return self._again_if_deleted(lambda: self._refresh_once(full, runs))

    def _again_if_deleted(self, fn: Callable[[], T]) -> T:
        """`fn()`, done again from the start when the index folder or file was deleted (or
        replaced) under it: `rm -rf .evsys` while other commands run makes them rebuild."""
        for attempt in range(1, VANISHED_RETRIES + 1):
            before = _file_id(self.dir, inode_only=True)
            try:
                return fn()
            except (OSError, duckdb.Error, HistoryIndexError):
                gone = (_file_id(self.dir, inode_only=True) != before
                        or not self.db_path.exists())
                if attempt == VANISHED_RETRIES or not gone:
                    raise
        raise AssertionError("unreachable")

    def _refresh_once(self, full: bool, runs: Sequence[str]) -> RefreshStats:
        hint = None
        started = time.monotonic()
        settled = (not full and not runs and self._swept is not None
                   and started - self._swept < self.recheck_finished_s)
        if not full and not runs and self.db_path.exists():
            snap = self._snapshot()
            if snap is not None and settled:
                stats = settled_unchanged(str(self.workspace), snap)
                if stats is not None:
                    self.last_refresh = stats
                    return stats
            if snap is not None:
                stats, walk = unchanged(str(self.workspace), snap)
                if stats is not None:
                    self.last_refresh = stats
                    self._swept = started
                    return stats
                hint = (snap.ident, walk)
        if self._held is not None:
            self._held.close()  # this process is about to write the file
        stats = self._refresh_written(full, runs, hint)
        self._swept = started  # every path below the settled check walks everything
        return stats

    def _snapshot(self) -> snapshot.Snapshot | None:
        """The snapshot, loaded again only when its file was rewritten (a long-lived reader
        checks it on every call; loading 10,000 runs' worth takes ~10 ms)."""
        key = (_file_id(self.snapshot_path), snapshot.db_identity(str(self.db_path)))
        if self._snap is not None and key[0] is not None and self._snap[0] == key:
            return self._snap[1]
        snap = snapshot.load(str(self.snapshot_path), str(self.db_path))
        self._snap = (key, snap) if snap is not None else None
        return snap

    def _refresh_written(self, full: bool, runs: Sequence[str], hint: tuple | None) -> RefreshStats:
        try:
            safefs.makedirs(self.dir, self.workspace)  # never a link out of the workspace
            for p in (self.db_path, Path(f"{self.db_path}.wal")):  # DuckDB follows links
                if p.is_symlink():
                    raise safefs.UnsafePathError(f"refusing to write {p}: it is a symbolic "
                                                 "link; remove it (the index is rebuilt)")
        except OSError as e:
            raise HistoryIndexError(f"cannot create the run index folder {self.dir}: {e}; pass "
                           "--workspace to a folder you can write to") from None
        with file_lock(str(self.lock_path), exclusive=True, root=self.workspace) as lock:
            return self._refresh_locked(full, set(runs), hint, lock)

    def _refresh_locked(self, full: bool, force: set[str], hint: tuple | None,
                        lock: HeldLock) -> RefreshStats:
        fresh = not self.db_path.exists()
        if fresh and self._existed_before():
            warn(f"the run index {self._rel(self.db_path)} was missing; "
                 "rebuilding it from the run directories")
        for attempt in (1, 2):
            try:
                # the walk done against the snapshot holds if nobody wrote the index since
                walk = hint[1] if hint and attempt == 1 and hint[0] == snapshot.db_identity(
                    str(self.db_path)) else None
                con = connect(str(self.db_path), read_only=False)
                try:
                    rebuilt = self._prepare(con, lock)
                    refresher = Refresher(con, str(self.workspace), full=full, force=force,
                                          before_write=self._drop_snapshot,
                                          before_commit=lambda: _still_held(lock),
                                          walk=None if rebuilt else walk)
                    stats = refresher.run()
                    snap = refresher.snapshot()
                finally:
                    if not lock.held():  # the folder was deleted: leave whatever is there now
                        with contextlib.suppress(duckdb.Error):
                            con.execute("PRAGMA disable_checkpoint_on_shutdown")
                    con.close()
                if lock.held():  # else the folder was deleted: the snapshot describes nothing
                    snapshot.save(str(self.snapshot_path), str(self.db_path), snap,
                                  root=self.workspace)
            except _Outdated as e:
                warn(f"the run index was built by another version of evsys (schema {e}); "
                     "rebuilding it from the run directories")
                damage = None
            except CorruptIndexError as e:
                damage = str(e)
            except duckdb.Error as e:
                if attempt == 2 or not is_damage(e):
                    raise
                damage = str(e)
            else:
                stats.rebuilt = rebuilt or fresh
                self.last_refresh = stats
                return stats
            self._discard(damage)
            fresh = True
        raise HistoryIndexError(f"cannot build the run index {self.db_path}: {damage}")

    def _drop_snapshot(self) -> None:
        snapshot.discard(str(self.snapshot_path))

    def _existed_before(self) -> bool:
        return self._marker().exists()  # touched when an index is created

    def _marker(self) -> Path:
        return self.dir / "index.built"

    def _prepare(self, con: Any, lock: HeldLock) -> bool:
        """Create the schema in a new file; rebuild one from another schema version."""
        try:  # the usual case, in one statement
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row and row[0] == schema.SCHEMA_VERSION:
                return False
        except duckdb.CatalogException:
            row = None
        tables = {t for (t,) in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()"
        ).fetchall()}
        if tables:
            if row is None or not set(schema.COLUMNS) <= tables:
                raise CorruptIndexError("not an evsys run index: tables are missing")
            raise _Outdated(row[0])  # a fresh file: dropping tables would not shrink this one
        con.execute("BEGIN TRANSACTION")
        con.execute(schema.create_sql())
        con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [schema.SCHEMA_VERSION])
        _still_held(lock)
        con.execute("COMMIT")
        safefs.append(self._marker(), b"", self.workspace)
        return True

    def _discard(self, damage: str | None) -> None:
        """Move the index file aside (kept as *.corrupt when damaged) so it is built anew."""
        self._drop_snapshot()
        if damage is not None:
            first = damage.strip().splitlines()[0] if damage.strip() else "unreadable"
            warn(f"the run index {self._rel(self.db_path)} is unreadable ({first}); "
                 "rebuilding it from the run directories (they are the source of truth)")
        for suffix in ("", ".wal"):
            p = Path(str(self.db_path) + suffix)
            if p.exists():
                if damage is None:
                    p.unlink()
                else:
                    os.replace(p, str(p) + ".corrupt")

    def _rel(self, p: Path) -> str:
        try:
            return str(p.relative_to(Path.cwd()))
        except ValueError:
            return str(p)

    # ------------------------------------------------------------------- reading
    def _read(self, fn: Callable[[Any], T], timeout_s: float | None = None) -> T:
        """Run `fn(con)` on a read-only connection with external access disabled, stopped
        after the time limit (`timeout_s`, else the index's) or at once by Ctrl-C."""
        limit = timeout_s or self.query_timeout_s
        with self._mutex:
            return self._again_if_deleted(lambda: self._read_once(fn, limit))

    def _read_once(self, fn: Callable[[Any], T], limit: float | None) -> T:
        for attempt in (1, 2):
            if not self.db_path.exists():
                self.refresh()
            seen = _file_id(self.db_path)
            held = self._held
            if held is not None:
                held.release_if_writer()  # never sit on the file while a writer waits for it
            try:
                with file_lock(str(self.lock_path), exclusive=False, root=self.workspace) as lock:
                    if held is not None:
                        _still_held(lock)
                        return held.read(lambda cur: run_bounded(cur, fn, limit))
                    con = connect(str(self.db_path), read_only=True)
                    try:
                        _still_held(lock)  # else the file opened may be a new one half built
                        return run_bounded(con, fn, limit)
                    finally:
                        con.close()
            except CorruptIndexError as e:
                damage: str = str(e)
            except duckdb.Error as e:
                if attempt == 2 or not is_damage(e):
                    raise
                damage = str(e)
            if attempt == 2:
                break
            if held is not None:
                held.close()
            with file_lock(str(self.lock_path), exclusive=True, root=self.workspace):
                if _file_id(self.db_path) == seen:  # nobody rebuilt it meanwhile
                    self._discard(damage)
            self.refresh()
        raise CorruptIndexError(f"{self.db_path}: still unreadable after a rebuild")

    def query(self, sql: str, params: Sequence[Any] | dict | None = None,
              max_rows: int | None = None, timeout_s: float | None = None) -> QueryResult:
        """Run one read-only SQL statement (stopped after `timeout_s`, default the index's limit). The connection is read-only with external access
        disabled and its configuration locked: writes, ATTACH, COPY, INSTALL/LOAD, SET and
        functions reading files are refused by DuckDB itself."""
        if not isinstance(sql, str) or not sql.strip():
            raise QueryError("empty SQL: pass one SELECT statement, e.g. "
                             "\"select name, status from runs\"")

        def run(con: Any) -> QueryResult:
            try:
                n = len(con.extract_statements(sql))
            except duckdb.Error as e:
                raise QueryError(_explain(e)) from None
            if n != 1:
                raise QueryError(f"one SQL statement at a time, got {n}; run them as separate "
                                 f"queries over the tables {', '.join(schema.PUBLIC_TABLES)}")
            try:
                cur = con.execute(sql, params) if params is not None else con.execute(sql)
                columns = [d[0] for d in cur.description] if cur.description else []
                if not columns:
                    return QueryResult([], [], False)
                if max_rows is None:
                    return QueryResult(columns, cur.fetchall(), False)
                rows = cur.fetchmany(max_rows + 1)
                return QueryResult(columns, rows[:max_rows], len(rows) > max_rows)
            except duckdb.Error as e:
                if is_damage(e):
                    raise
                raise QueryError(_explain(e)) from None

        return self._read(run, timeout_s)

    def runs(self, where: str | None = None, sort: str | None = None,
             limit: int | None = None, kind: str | None = "train") -> list[dict[str, Any]]:
        """Runs of `kind` ("train" by default, "score", or None for both), newest first."""
        return self._read(lambda con: reports.list_runs(con, where, sort, limit, kind))

    def resolve(self, run: str) -> dict[str, Any]:
        return self._read(lambda con: reports.resolve(con, self.workspace, run))

    def show(self, run: str) -> dict[str, Any]:
        return self._read(lambda con: reports.show(con, self.workspace, run))

    def best(self, metric: str, maximize: bool = True, where: str | None = None,
             by: str = "final", limit: int | None = 5, kind: str | None = "train",
             offset: int = 0) -> list[dict[str, Any]]:
        return self._read(lambda con: reports.best(con, metric, maximize, where, by, limit, kind, offset))

    def groups(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Replicate groups, newest first, with mean and 95% interval of each eval metric."""
        return self._read(lambda con: groups.list_groups(con, limit))

    def group(self, ref: str) -> dict[str, Any] | None:
        """{group, runs, metrics} of the group `ref` names (id, name, id prefix), or None when
        it names no group (or names a run: a run's id or exact name wins)."""
        def read(con: Any) -> dict[str, Any] | None:
            g = groups.find_group(con, ref)
            return groups.show_group(con, g) if g else None

        return self._read(read)

    def best_groups(self, metric: str, maximize: bool = True,
                    limit: int | None = 5) -> list[dict[str, Any]]:
        return self._read(lambda con: groups.best_groups(con, metric, maximize, limit))

    def compare(self, base: str, cand: str, metric: str | None = None,
                step: int | None = None) -> dict[str, Any]:
        return self._read(lambda con: reports.compare(con, self.workspace, base, cand, metric, step))

    def curves(self, run: str, keys: Sequence[str] | None = None, split: str | None = None,
               max_points: int | None = None) -> dict[str, Any]:
        return self._read(
            lambda con: reports.curves(con, self.workspace, run, keys, split, max_points))

    def metric_keys(self) -> list[tuple[str, str, int]]:
        return self._read(reports.metric_keys)

    def close(self) -> None:
        """Close the held connection, if any (the next read opens one again)."""
        if self._held is not None:
            self._held.close()

    def __repr__(self) -> str:
        return f"Index({str(self.workspace)!r})"


def conclude(workspace: Path | str, run: str, text: str, author: str = "human",
             index: "Index | None" = None) -> dict[str, Any]:
    """Append a conclusion to the run's conclusion.md and update the index (`index`, already
    refreshed, if the caller keeps one: e.g. one holding its connection).

    Returns {run_id, name, path (of conclusion.md), author, text}."""
    text = (text or "").strip()
    if not text:
        raise UsageError("the conclusion is empty; pass the text to record")
    author = " ".join(str(author or "").split()) or "human"
    idx = index or open_index(workspace)
    r = idx.resolve(run)
    path = Path(r["run_dir"]) / rundir.CONCLUSION
    entry = format_conclusion(text, author)
    try:
        size = path.stat().st_size if path.exists() else 0
        if size:  # keep entries separated by a blank line, whatever the file ends with
            with path.open("rb") as f:
                f.seek(max(0, size - 2))
                tail = f.read()
            entry = ("" if tail.endswith(b"\n\n") else "\n" if tail.endswith(b"\n")
                     else "\n\n") + entry
        safefs.append(path, entry, idx.workspace)  # no link out of the workspace
    except OSError as e:
        raise RunError(f"cannot write {path}: {e}") from None
    idx.refresh(runs=[r["path"]])
    return {"run_id": r["run_id"], "name": r["name"], "path": str(path), "author": author,
            "text": text}


class _Vanished(HistoryIndexError):
    """The index folder was deleted (or replaced) while this process wrote to it."""


def _still_held(lock: HeldLock) -> None:
    """Before a commit: the lock file is still ours, so the folder we write to is the live one
    (after `rm -rf .evsys` another process may be building a new index at the same path)."""
    if not lock.held():
        raise _Vanished("the run index folder was deleted while it was being written")


def _file_id(p: Path, inode_only: bool = False) -> tuple[int, ...] | None:
    try:
        st = p.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_dev) if inode_only else (st.st_ino, st.st_size, st.st_mtime_ns)


def _explain(e: Exception) -> str:
    """A DuckDB error as a message that says what was refused and what can be done."""
    msg = str(e).strip().rstrip(".!")
    tables = ", ".join(schema.PUBLIC_TABLES)
    low = msg.lower()
    if "read-only mode" in low:
        why = ("refused: the index is read-only; statements that write (INSERT, UPDATE, "
               "DELETE, CREATE, DROP, ...) are not allowed")
    elif isinstance(e, duckdb.PermissionException) or "disabled by configuration" in low:
        why = ("refused: nothing outside the index can be read or written (ATTACH, COPY, "
               "EXPORT, INSTALL, LOAD, read_csv, read_text, ...)")
    elif "configuration has been locked" in low:
        why = "refused: settings cannot be changed (SET, RESET, PRAGMA that sets)"
    elif isinstance(e, duckdb.ParserException):
        why = "the SQL does not parse"
    elif isinstance(e, duckdb.CatalogException):
        why = "unknown table, column or function"
    elif isinstance(e, duckdb.BinderException):
        why = "a name in the query does not exist or is ambiguous (`describe runs` lists columns)"
    else:
        why = "the query failed"
    return f"{why}. DuckDB: {msg}. Query the tables {tables} with one SELECT statement."
