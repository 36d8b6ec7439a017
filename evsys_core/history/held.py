"""A read-only connection kept open between reads, for a long-lived reader (the MCP server).

Opening the index costs 15-40 ms (DuckDB builds a whole database instance each time), more
than the rest of a small read. A long-lived process may keep its read-only connection
instead (`Index(hold=True)`), under rules that keep it out of every writer's way:
- it is used only under the shared flock, like any reader, and each read runs on a cursor of
  its own, closed after the read (temporary tables, views and variables die with it);
- a writer holds the exclusive flock while it writes. A watcher thread probes the flock every
  PROBE_S and closes the connection as soon as it finds the flock taken, and a read that
  finds it taken closes the connection before it waits. (DuckDB's own file lock would refuse
  the writer's connection while ours is open; the writer retries, so it waits about PROBE_S.)
- it is closed after IDLE_S without a read, and reopened when the index file at the path is
  no longer the one it opened (rebuilt, deleted, replaced).
A program outside evsys opening the file for writing (a duckdb shell) takes no flock: it
waits until the connection goes idle.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from typing import Any

from evsys_core.errors import EvsysError
from evsys_core.history.store import connect

PROBE_S = 0.02
IDLE_S = 10.0


def writer_active(lock_path: str) -> bool:
    """Whether some process holds the exclusive flock on the lock file (or it is gone)."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return True  # no lock file: the index folder went away; let go of the file too
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the probe's shared lock


def file_identity(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class HeldConnection:
    def __init__(self, db_path: str, lock_path: str):
        self.db_path = db_path
        self.lock_path = lock_path
        self._lock = threading.Lock()  # one read at a time; the watcher waits for it
        self._con: Any = None
        self._ident: tuple | None = None
        self._used = 0.0
        self._gen = 0  # which open the running watcher belongs to
        self.opened = 0  # connections opened so far (tests read it)

    def read(self, fn: Any) -> Any:
        """`fn(cursor)` on the held connection (opened if needed); call it under the shared
        flock."""
        with self._lock:
            ident = file_identity(self.db_path)
            if self._con is not None and ident != self._ident:
                self._close()
            if self._con is None:
                self._con = connect(self.db_path, read_only=True)
                self._ident = ident
                self.opened += 1
                self._gen += 1
                threading.Thread(target=self._watch, args=(self._gen,), name="evsys-index-held",
                                 daemon=True).start()
            self._used = time.monotonic()
            cur = self._con.cursor()
            try:
                return fn(cur)
            except EvsysError:
                raise  # the query's own fault (bad SQL, time limit): the connection is fine
            except BaseException:
                self._close()  # anything else: the next read starts from a fresh open
                raise
            finally:
                cur.close()

    def release_if_writer(self) -> None:
        """Close the connection now if a writer holds the flock (before waiting for it)."""
        if self._con is not None and writer_active(self.lock_path):
            self.close()

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        con, self._con, self._ident = self._con, None, None
        if con is not None:
            try:
                con.close()
            except Exception:  # noqa: BLE001 - a connection to a vanished file
                pass

    def _watch(self, gen: int) -> None:
        while True:
            time.sleep(PROBE_S)
            if not self._lock.acquire(blocking=False):
                continue  # a read is under way (it holds the shared flock: writers wait anyway)
            try:
                if self._con is None or gen != self._gen:
                    return  # closed meanwhile; a later open has its own watcher
                if time.monotonic() - self._used > IDLE_S or writer_active(self.lock_path):
                    self._close()
                    return
            finally:
                self._lock.release()
