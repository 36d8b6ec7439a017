"""Bringing the index up to date with the run directories, in one transaction.

1. Check the remembered directories (`discover.walk`): which run dirs are new, gone, or
   changed, plus every run still `running` (its files grow without its directory changing).
2. For those runs only, stat the tracked files and compare size, mtime and inode with the
   `files` table. A running run whose process died, or an inferred run gone quiet, counts as
   changed too (its status changes).
3. If anything changed: read only the changed files (JSONL from the last whole line read),
   rebuild those runs' rows, their metric summaries, and the bookkeeping; commit.
Nothing changed means no write at all.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evsys_core import rundir
from evsys_core.history import discover, ingest, values
from evsys_core.history.discover import DirRec
from evsys_core.history.snapshot import LiveRun, Snapshot
from evsys_core.history.schema import COLUMNS, RUN_TABLES, SUMMARY_FOR_TOUCHED
from evsys_core.history.store import Batch, warn

SMALL_KINDS = ("run_json", "config", "summary", "conclusion")
IDS = "(SELECT unnest(?::VARCHAR[]))"  # a list parameter as a set, for `... IN {IDS}`


@dataclass
class RefreshStats:
    """What one refresh looked at and what it read (paths are workspace-relative)."""

    runs_total: int = 0
    runs_added: int = 0
    runs_updated: int = 0
    runs_removed: int = 0
    dirs_checked: int = 0
    dirs_listed: int = 0
    files_checked: int = 0
    files_read: list[str] = field(default_factory=list)
    bytes_read: int = 0
    rows_added: int = 0
    rebuilt: bool = False
    full: bool = False
    fast_path: bool = False  # answered from the snapshot, without opening the database
    settled: bool = False  # a settled check: finished run directories not stat'ed
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.runs_added or self.runs_updated or self.runs_removed)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["changed"] = self.changed
        return d


@dataclass
class StoredFile:
    run_id: str
    kind: str
    size: int
    mtime_ns: int
    ino: int
    offset: int
    lines: int
    head: str | None
    facts: str | None


@dataclass
class RunChange:
    rel: str
    old_id: str | None
    files: dict[str, ingest.FileStat]  # what is on disk now
    changed: set[str]  # paths new or different
    removed: set[str]  # paths remembered but gone
    recheck_status: bool = False


def unchanged(root: str, snap: Snapshot) -> tuple[RefreshStats | None, discover.Walk]:
    """(stats of a refresh with nothing to do, the walk) if the disk still matches the
    snapshot; (None, the walk) if anything may have changed — the normal path then decides,
    reusing the walk if the index is still the one the snapshot describes."""
    t0 = time.perf_counter()
    walk = discover.walk(root, snap.dirs, set(snap.live))
    if walk.dirty or walk.deleted or walk.removed_runs:
        return None, walk
    if any(rel not in snap.live for rel in walk.to_check):
        return None, walk
    checked = _live_unchanged(root, snap, walk.to_check)
    if checked is None:
        return None, walk
    return RefreshStats(runs_total=walk.runs, dirs_checked=walk.dirs_checked, files_checked=checked,
                        fast_path=True, seconds=time.perf_counter() - t0), walk


def settled_unchanged(root: str, snap: Snapshot) -> RefreshStats | None:
    """The settled check (what a long-lived reader does between full walks): stats of a
    refresh with nothing to do if every folder that is not a run directory still has its
    remembered mtime and every running run's files are as remembered; None if anything may
    have changed (then the full walk decides). Finished run directories are not stat'ed:
    under an unchanged folder none was added, removed or renamed, but a file created,
    removed or replaced inside one is not seen here (the next full walk sees it)."""
    t0 = time.perf_counter()
    watch = snap.watched(root)
    lstat = os.lstat
    for path, mtime in watch:
        try:
            if lstat(path).st_mtime_ns != mtime:
                return None
        except OSError:
            return None
    checked = _live_unchanged(root, snap, snap.live)
    if checked is None:
        return None
    return RefreshStats(runs_total=snap.n_runs, dirs_checked=len(watch), files_checked=checked,
                        fast_path=True, settled=True, seconds=time.perf_counter() - t0)


def _live_unchanged(root: str, snap: Snapshot, rels: Any) -> int | None:
    """Files stat'ed if the running runs `rels` are as the snapshot remembers them, else None."""
    now = time.time()
    checked = 0
    for rel in rels:
        lr = snap.live[rel]
        run_dir = discover.join(root, rel)
        on_disk = ingest.list_run_files(run_dir, rel)
        checked += len(on_disk)
        if {p: (st.size, st.mtime_ns, st.ino) for p, st in on_disk.items()} != lr.files:
            return None
        if _status_moved(run_dir, lr.pid, lr.inferred, on_disk, now):
            return None
    return checked


def _status_moved(run_dir: str, pid: int | None, inferred: bool,
                  on_disk: dict[str, ingest.FileStat], now: float) -> bool:
    """A `running` run whose process is gone (or whose pid now names another process, by its
    start time in run.json), or an inferred run gone quiet."""
    if not inferred:
        if not rundir.pid_alive(pid):
            return True
        info, _ = ingest._read_json_with_stat(os.path.join(run_dir, rundir.RUN_JSON))
        return bool(info) and not rundir.run_alive(info)
    newest = max((st.mtime_ns for st in on_disk.values()), default=0) / 1e9
    return now - newest >= ingest.STALE_AFTER_S


class Refresher:
    def __init__(self, con: Any, root: str, *, full: bool = False, force: set[str] = frozenset(),
                 before_write: Any = None, before_commit: Any = None,
                 walk: discover.Walk | None = None):
        self.con = con
        self.root = root
        self.full = full
        self.force = set(force)  # run dirs (relative) to check even if unchanged
        self.before_write = before_write  # called before the write transaction begins
        self.before_commit = before_commit  # called before it commits (may raise: rollback)
        self.stats = RefreshStats(full=full)
        self.now = time.time()
        self.dirs: dict[str, DirRec] = {}
        self.walk = walk  # already done against this very index (from the snapshot check)
        self.notes = values.Notes()  # values left out or cut, printed once the refresh ends

    # ------------------------------------------------------------------ detection
    def run(self) -> RefreshStats:
        try:
            return self._run()
        finally:
            self.notes.flush()

    def _run(self) -> RefreshStats:
        t0 = time.perf_counter()
        live = {
            path: (run_id, pid, inferred, status)
            for run_id, path, pid, inferred, status in self.con.execute(
                "SELECT run_id, path, pid, inferred, status FROM runs WHERE status = 'running'"
            ).fetchall()
        }
        walk = self.walk
        if walk is None or self.force or self.full:
            stored_dirs = {p: DirRec(m, k, r) for p, m, k, r in self.con.execute(
                "SELECT path, mtime_ns, kind, run_id FROM dirs").fetchall()}
            walk = discover.walk(self.root, stored_dirs, set(live) | self.force, self.full)
        self.dirs = walk.dirs
        self.stats.dirs_checked, self.stats.dirs_listed = walk.dirs_checked, walk.dirs_listed

        ids = [walk.dirs[rel].run_id for rel in walk.to_check if walk.dirs[rel].run_id]
        stored_files = self._stored_files(ids)
        changes: list[RunChange] = []
        for rel in sorted(walk.to_check):
            old_id = walk.dirs[rel].run_id
            on_disk = ingest.list_run_files(discover.join(self.root, rel), rel)
            self.stats.files_checked += len(on_disk)
            mine = stored_files.get(old_id, {}) if old_id else {}
            changed = {
                p for p, st in on_disk.items()
                if (old := mine.get(p)) is None
                or (old.size, old.mtime_ns, old.ino) != (st.size, st.mtime_ns, st.ino)
            }
            removed = set(mine) - set(on_disk)
            recheck = rel in live and _status_moved(discover.join(self.root, rel), live[rel][1], live[rel][2],
                                                    on_disk, self.now)
            if old_id is None or changed or removed or recheck:
                changes.append(RunChange(rel, old_id, on_disk, changed, removed, recheck))

        if not (changes or walk.dirty or walk.deleted or walk.removed_runs):
            self.stats.runs_total = walk.runs
            self.stats.seconds = time.perf_counter() - t0
            return self.stats
        if self.before_write:
            self.before_write()
        self.con.execute("BEGIN TRANSACTION")
        try:
            self._apply(walk, changes, stored_files)
            if self.before_commit:
                self.before_commit()
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.stats.runs_total = walk.runs
        self.stats.seconds = time.perf_counter() - t0
        return self.stats

    def _stored_files(self, run_ids: list[str]) -> dict[str, dict[str, StoredFile]]:
        out: dict[str, dict[str, StoredFile]] = {}
        if not run_ids:
            return out
        rows = self.con.execute(
            'SELECT path, run_id, kind, size, mtime_ns, ino, "offset", lines, head, facts '
            "FROM files WHERE run_id IN (SELECT unnest(?::VARCHAR[]))",
            [run_ids],
        ).fetchall()
        for path, *rest in rows:
            out.setdefault(rest[0], {})[path] = StoredFile(*rest)
        return out

    def snapshot(self) -> Snapshot:
        """The bookkeeping as it now stands, for the next refresh's fast path."""
        live: dict[str, LiveRun] = {}
        rows = self.con.execute(
            "SELECT path, run_id, pid, inferred FROM runs WHERE status = 'running'").fetchall()
        for path, run_id, pid, inferred in rows:
            live[path] = LiveRun(run_id, pid, bool(inferred), {})
        if live:
            by_id = {lr.run_id: lr for lr in live.values()}
            for path, run_id, size, mtime, ino in self.con.execute(
                "SELECT path, run_id, size, mtime_ns, ino FROM files "
                "WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [list(by_id)]
            ).fetchall():
                by_id[run_id].files[path] = (size, mtime, ino)
        return Snapshot(self.dirs, live)

    # ------------------------------------------------------------------- applying
    def _apply(self, walk: discover.Walk, changes: list[RunChange],
               stored_files: dict[str, dict[str, StoredFile]]) -> None:
        con = self.con
        removed = set(walk.removed_runs)
        if removed:
            self._purge(removed)
        owners: dict[str, str] | None = None  # run_id -> path, loaded when a new id shows up
        batches = {t: Batch(t, COLUMNS[t]) for t in
                   ("runs", "params", "metrics", "predictions", "conclusions", "files")}
        touched: set[str] = set()  # runs whose metrics changed
        rebuilt: list[str] = []
        existing = [ch.old_id for ch in changes if ch.old_id]
        if existing:  # their rows are rebuilt below (a changed id is purged instead)
            con.execute(f"DELETE FROM runs WHERE run_id IN {IDS}", [existing])
            reconf = [ch.old_id for ch in changes if ch.old_id and _config_changed(ch)]
            if reconf:
                con.execute(f"DELETE FROM params WHERE run_id IN {IDS}", [reconf])
        for ch in changes:
            abs_dir = discover.join(self.root, ch.rel)
            info, info_read = self._read_info(ch, stored_files)
            run_id = values.name(info.get("id"), self.notes,
                                 discover.child(ch.rel, rundir.RUN_JSON), "id") \
                or rundir.inferred_run_id(Path(abs_dir))
            if run_id != ch.old_id:
                if owners is None:  # which directory holds each known run id
                    owners = {r.run_id: p for p, r in walk.dirs.items()
                              if r.kind == "run" and r.run_id}
                if owners.get(run_id, ch.rel) != ch.rel:
                    other = owners[run_id]
                    run_id = f"{run_id}-{rundir.inferred_run_id(Path(abs_dir))[:6]}"
                    if run_id != ch.old_id:
                        warn(f"{ch.rel}: its run.json has the same id as {other} (a copied "
                             f"run directory?); indexed as {run_id}")
                owners[run_id] = ch.rel
            mine = stored_files.get(ch.old_id, {}) if ch.old_id else {}
            if ch.old_id and run_id != ch.old_id:
                self._purge({ch.old_id})  # run.json appeared or its id changed: read it all
                removed.discard(ch.old_id)
                mine = {}
                ch.changed = set(ch.files)
            if ch.old_id is None or run_id != ch.old_id:
                self.stats.runs_added += 1
            else:
                self.stats.runs_updated += 1
            walk.dirs[ch.rel] = walk.dirs[ch.rel]._replace(run_id=run_id)
            walk.dirty.add(ch.rel)
            sub = discover.child(ch.rel, rundir.PREDICTIONS)
            if sub in walk.dirs:
                walk.dirs[sub] = walk.dirs[sub]._replace(run_id=run_id)
                walk.dirty.add(sub)
            facts = self._ingest_files(run_id, ch, mine, batches, touched, info, info_read)
            fresh = info_read or _config_changed(ch) or ch.old_id != run_id  # warn once
            row = self._run_row(run_id, ch, abs_dir, info, facts, self.notes if fresh else None)
            batches["runs"].add_dict(con, row)
            if ch.old_id != run_id or _config_changed(ch):
                batches["params"].add_rows(con, ingest.param_rows(run_id, facts.get("config")))
            rebuilt.append(run_id)
        self.stats.runs_removed = len(removed)

        for b in batches.values():
            b.flush(con)
        self.stats.rows_added = batches["metrics"].total + batches["predictions"].total
        if touched:
            ids = sorted(touched)
            con.execute(f"DELETE FROM metric_summary WHERE run_id IN {IDS}", [ids])
            con.execute(SUMMARY_FOR_TOUCHED, [ids])
        if rebuilt:  # steps: the highest step logged, if above what run.json says
            con.execute(f"""
                UPDATE runs SET steps = greatest(coalesce(runs.steps, s.top), s.top)
                FROM (SELECT run_id, max(final_step) AS top FROM metric_summary
                      WHERE run_id IN {IDS} GROUP BY run_id) s
                WHERE runs.run_id = s.run_id AND s.top IS NOT NULL""", [rebuilt])
        self._save_dirs(walk)

    def _purge(self, run_ids: set[str]) -> None:
        for t in RUN_TABLES:
            self.con.execute(f"DELETE FROM {t} WHERE run_id IN {IDS}", [sorted(run_ids)])

    def _save_dirs(self, walk: discover.Walk) -> None:
        gone = sorted(walk.dirty | walk.deleted)
        if not gone:
            return
        self.con.execute(f"DELETE FROM dirs WHERE path IN {IDS}", [gone])
        b = Batch("dirs", COLUMNS["dirs"])
        b.add_rows(self.con, [(p, r.mtime_ns, r.kind, r.run_id)
                            for p in sorted(walk.dirty) if (r := walk.dirs.get(p))])
        b.flush(self.con)

    # -------------------------------------------------------------------- reading
    def _read_info(self, ch: RunChange, stored_files: dict) -> tuple[dict[str, Any], bool]:
        """(run.json, whether it was read now); a dead `running` run reads as `interrupted`."""
        path = discover.child(ch.rel, rundir.RUN_JSON)
        if path not in ch.files:
            return {}, False
        old = stored_files.get(ch.old_id, {}).get(path) if ch.old_id else None
        if path not in ch.changed and not ch.recheck_status and old and old.facts:
            return json.loads(old.facts), False
        info, st = ingest.read_run_info(discover.join(self.root, ch.rel))
        self._note_read(path, st.size if st else ch.files[path].size)
        if st is not None:
            ch.files[path] = st  # the file actually read (it may have just been rewritten)
        else:
            ch.files[path] = ingest.FileStat("run_json", -1, 0, 0)  # read it again next time
        return info, True

    def _note_read(self, path: str, nbytes: int) -> None:
        self.stats.files_read.append(path)
        self.stats.bytes_read += nbytes

    def _ingest_files(self, run_id: str, ch: RunChange, mine: dict[str, StoredFile],
                      batches: dict[str, Batch], touched: set[str], info: dict[str, Any],
                      info_read: bool) -> dict[str, Any]:
        """Read the changed files of one run into the batches; return the small-file facts."""
        con = self.con
        facts: dict[str, Any] = {}
        drop = sorted(ch.removed | ch.changed)
        if drop and mine:
            con.execute("DELETE FROM files WHERE run_id = ? AND path IN (SELECT unnest(?::VARCHAR[]))",
                        [run_id, drop])
        for path in ch.removed:
            old = mine[path]
            if old.kind == "metrics":
                con.execute("DELETE FROM metrics WHERE run_id = ?", [run_id])
                touched.add(run_id)
            elif old.kind == "predictions":
                con.execute("DELETE FROM predictions WHERE run_id = ? AND benchmark = ?",
                            [run_id, _benchmark(path)])
            elif old.kind == "conclusion":
                con.execute("DELETE FROM conclusions WHERE run_id = ?", [run_id])
        for path, st in sorted(ch.files.items()):
            old = mine.get(path)
            full = discover.join(self.root, path)
            offset, lines, head, fact = 0, 0, None, None
            if st.kind in ("metrics", "predictions"):
                if path in ch.changed:
                    chunk = ingest.read_jsonl_from(
                        full, old.offset if old else 0, old.lines if old else 0,
                        old.head if old else None)
                    self.stats.bytes_read += chunk.bytes_read
                    if chunk.bytes_read or chunk.restarted:
                        self.stats.files_read.append(path)
                    if st.kind == "metrics":
                        if chunk.restarted and old:
                            con.execute("DELETE FROM metrics WHERE run_id = ?", [run_id])
                        batches["metrics"].add_columns(
                            con, ingest.metric_columns(run_id, chunk, self.notes, path))
                        touched.add(run_id)
                    else:
                        bench = _benchmark(path)
                        if chunk.restarted and old:
                            con.execute("DELETE FROM predictions WHERE run_id = ? AND benchmark = ?",
                                        [run_id, bench])
                        batches["predictions"].add_rows(
                            con, ingest.prediction_rows(run_id, bench, chunk, self.notes, path))
                    offset, lines, head = chunk.offset, chunk.lines, chunk.head
                else:
                    continue
            elif st.kind == "run_json":  # read (or recalled) by _read_info
                fact = facts[st.kind] = info
                if not (info_read or path in ch.changed or old is None):
                    continue
            else:
                fresh = path in ch.changed or old is None
                if st.kind == "summary" and info:
                    fact = None  # only runs without run.json take their status from it
                elif fresh or old.facts is None:
                    fact = self._read_small(st.kind, full, path, st, run_id, batches)
                    fresh = True
                else:
                    fact = json.loads(old.facts)
                facts[st.kind] = fact
                if not fresh:
                    continue
            if old is not None and path not in ch.changed:  # its row is replaced
                con.execute("DELETE FROM files WHERE run_id = ? AND path = ?", [run_id, path])
            batches["files"].add_rows(con, [(path, run_id, st.kind, st.size, st.mtime_ns,
                                           st.ino, offset, lines, head,
                                           None if fact is None else json.dumps(fact))])
        return facts

    def _read_small(self, kind: str, full: str, path: str, st: ingest.FileStat, run_id: str,
                    batches: dict[str, Batch]) -> Any:
        self._note_read(path, st.size)
        if kind == "config":
            return ingest.load_config(full)
        text = ingest.read_text(full) or ""
        if kind == "summary":
            return {"status": ingest.status_from_summary(text)}
        # conclusion.md: replace this run's entries
        entries = ingest.parse_conclusions(text, st.mtime_ns / 1e9)
        self.con.execute("DELETE FROM conclusions WHERE run_id = ?", [run_id])
        batches["conclusions"].add_rows(self.con, [
            (run_id, t, author, body, i) for i, (t, author, body) in enumerate(entries)])
        return [[t, author, body] for t, author, body in entries]

    def _run_row(self, run_id: str, ch: RunChange, abs_dir: str, info: dict[str, Any],
                 facts: dict[str, Any], notes: values.Notes | None) -> dict[str, Any]:
        config = facts.get("config")
        summary = facts.get("summary") or {}
        conclusions = [tuple(e) for e in facts.get("conclusion") or []]
        newest = max((st.mtime_ns for st in ch.files.values()), default=0)
        row = ingest.run_row(
            run_id=run_id, rel=ch.rel, abs_dir=abs_dir, info=info, config=config,
            config_json=ingest.config_json(config), summary_status=summary.get("status"),
            conclusions=conclusions, last_modified=newest / 1e9 if newest else None,
            now=self.now, notes=notes,
        )
        row["run_json"] = json.dumps(info, default=str) if info else None
        return row


def _config_changed(ch: RunChange) -> bool:
    return any(ch.files[p].kind == "config" for p in ch.changed) or any(
        p.endswith("/" + ingest.CONFIG) or p == ingest.CONFIG for p in ch.removed)


def _benchmark(path: str) -> str:
    return os.path.basename(path)[: -len(".jsonl")]
