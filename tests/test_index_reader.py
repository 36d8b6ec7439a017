"""The long-lived reader (what evsys-mcp keeps): a settled check between full walks and a
read-only connection held between reads. The index must stay as correct as the CLI's: a new
run appears, a running run's new metrics appear, a deleted run disappears; a finished run
edited by hand is handled as docs/history.md says; a writer in another process is never kept
waiting on the held connection."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client

from evsys_core import rundir
from evsys_core.history import held
from evsys_core.history.index import Index, open_index
from evsys_core.history.ingest import format_conclusion
from evsys_mcp.server import build_server
from history_fixtures import age, config_yaml, make_run, train_rows

ROOT = Path(__file__).resolve().parent.parent
LONG = 3600.0  # a window no test outlives: every refresh after the first full walk is settled


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    out = tmp_path / "outputs"
    make_run(out, "alpha", rows=train_rows(6), config=config_yaml(lr=1e-4),
             summary="# alpha\n\nstatus: completed\n")
    make_run(out, "beta", status="running", rows=train_rows(4), config=config_yaml(lr=3e-4))
    make_run(tmp_path / "experiments" / "e1", "gamma", rows=train_rows(2))
    age(tmp_path)
    open_index(tmp_path)  # built (and its snapshot saved) by an ordinary refresh
    age(tmp_path)  # making .evsys/ moved the workspace folder's mtime
    return tmp_path


def reader(ws: Path, **kw) -> Index:
    idx = Index(ws, recheck_finished_s=kw.pop("recheck_finished_s", LONG), hold=kw.pop("hold", True), **kw)
    idx.refresh()  # the first refresh is a full walk
    return idx


def names(idx: Index) -> set[str]:
    return {r["name"] for r in idx.runs()}


def test_a_settled_refresh_stats_only_folders_and_running_runs(ws: Path) -> None:
    idx = reader(ws)
    stats = idx.refresh()
    assert stats.settled and stats.fast_path and not stats.changed
    assert stats.runs_total == 3
    # the workspace, outputs/, experiments/, experiments/e1/ — no finished run's folder
    assert stats.dirs_checked == 4
    assert stats.files_checked == len(os.listdir(ws / "outputs" / "beta"))  # the running run only
    plain = Index(ws).refresh()  # the CLI's refresh walks everything, as before
    assert not plain.settled and plain.dirs_checked >= 7


def test_a_new_run_appears_at_once(ws: Path) -> None:
    idx = reader(ws)
    assert names(idx) == {"alpha", "beta", "gamma"}
    make_run(ws / "outputs", "delta", rows=train_rows(3))
    make_run(ws / "experiments" / "e1", "epsilon", rows=train_rows(1))
    idx.refresh()
    assert names(idx) == {"alpha", "beta", "gamma", "delta", "epsilon"}
    assert idx.query("select steps from runs where name = 'delta'").rows == [(3,)]


def test_a_new_run_in_a_new_folder_appears_at_once(ws: Path) -> None:
    idx = reader(ws)
    make_run(ws / "experiments" / "e2" / "deeper", "zeta", rows=train_rows(2))
    idx.refresh()
    assert "zeta" in names(idx)


def test_a_running_runs_new_metrics_appear_at_once(ws: Path) -> None:
    idx = reader(ws)
    assert idx.refresh().settled
    rundir.append_jsonl(ws / "outputs/beta/metrics.jsonl",
                        {"step": 5, "split": "train", "metrics": {"train/mean_loss": 0.125}})
    stats = idx.refresh()
    assert "outputs/beta/metrics.jsonl" in stats.files_read
    assert idx.query("select m.value from metrics m join runs r using (run_id) where r.name = 'beta' "
                     "and m.step = 5 and m.key = 'train/mean_loss'").rows == [(0.125,)]
    # and it finishing (run.json rewritten) shows too
    info = rundir.read_run_json(ws / "outputs/beta")
    rundir.write_json_atomic(ws / "outputs/beta" / rundir.RUN_JSON, {**info, "status": "completed"})
    idx.refresh()
    assert idx.query("select status from runs where name = 'beta'").rows == [("completed",)]


def test_a_deleted_run_disappears_at_once(ws: Path) -> None:
    idx = reader(ws)
    assert idx.refresh().settled
    shutil.rmtree(ws / "outputs" / "alpha")
    stats = idx.refresh()
    assert stats.runs_removed == 1
    assert names(idx) == {"beta", "gamma"}
    assert idx.query("select count(*) from metrics m where not exists "
                     "(select 1 from runs r where r.run_id = m.run_id)").rows == [(0,)]
    shutil.rmtree(ws / "experiments")  # a whole folder of runs
    idx.refresh()
    assert names(idx) == {"beta"}


def test_a_file_added_inside_a_finished_run_shows_after_the_window(ws: Path) -> None:
    """docs/history.md: a file created, removed or replaced inside a finished run's folder
    (a hand-written conclusion.md) shows at the next full walk, at most recheck_finished_s
    after the last one."""
    idx = reader(ws)
    (ws / "outputs/alpha" / rundir.CONCLUSION).write_text(format_conclusion("the lower rate helps", "human"))
    assert idx.refresh().settled
    assert idx.query("select conclusion from runs where name = 'alpha'").rows == [(None,)]
    idx.recheck_finished_s = 0  # the window has passed
    stats = idx.refresh()
    assert not stats.settled
    assert idx.query("select conclusion from runs where name = 'alpha'").rows == [("the lower rate helps",)]


def test_an_in_place_edit_of_a_finished_run_needs_a_rescan_as_before(ws: Path) -> None:
    idx = reader(ws, recheck_finished_s=0)  # even walking everything every time
    rundir.append_jsonl(ws / "outputs/alpha/metrics.jsonl",
                        {"step": 7, "split": "train", "metrics": {"train/mean_loss": 0.01}})
    assert idx.refresh().files_read == []
    assert idx.refresh(full=True).files_read == ["outputs/alpha/metrics.jsonl"]
    assert idx.query("select steps from runs where name = 'alpha'").rows == [(7,)]


def test_the_held_connection_is_reused_and_keeps_no_temporary_objects(ws: Path) -> None:
    idx = reader(ws)
    assert idx.query("select count(*) from runs").rows == [(3,)]
    # a read-only DuckDB connection allows temporary objects; each read has its own cursor
    idx.query("create temp view runs as select 42 as n")
    assert idx.query("select count(*) from runs").rows == [(3,)]
    assert idx._held.opened == 1
    idx.close()
    assert idx.query("select count(*) from runs").rows == [(3,)]
    assert idx._held.opened == 2


def test_a_writer_in_another_process_is_not_kept_waiting(ws: Path, monkeypatch) -> None:
    """The held connection holds DuckDB's file lock; the watcher lets go as soon as a writer
    takes the index's flock (the idle timeout is made endless here, so only the watcher can)."""
    monkeypatch.setattr(held, "IDLE_S", 10**9)
    idx = reader(ws)
    assert names(idx) == {"alpha", "beta", "gamma"}
    assert idx._held._con is not None  # open and idle
    make_run(ws / "outputs", "from_a_shell", rows=train_rows(2))
    proc = subprocess.run([sys.executable, "-m", "evsys_core.cli", "runs", "--workspace", str(ws), "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "server")])})
    assert proc.returncode == 0, proc.stderr
    assert "from_a_shell" in {r["name"] for r in json.loads(proc.stdout)}
    assert "from_a_shell" in names(idx)  # the held reader reopened the rewritten file
    assert idx._held.opened == 2


def test_the_mcp_server_sees_new_running_and_deleted_runs(ws: Path) -> None:
    server = build_server(ws)

    async def flow(c):
        async def listed() -> dict[str, dict]:
            r = await c.call_tool("list_runs", {"limit": 100})
            assert not r.is_error, r.content[0].text
            return {row["name"]: row for row in r.structured_content["runs"]}

        assert set(await listed()) == {"alpha", "beta", "gamma"}
        make_run(ws / "outputs", "delta", rows=train_rows(3))
        assert "delta" in await listed()
        rundir.append_jsonl(ws / "outputs/beta/metrics.jsonl",
                            {"step": 9, "split": "train", "metrics": {"train/mean_loss": 0.5}})
        assert (await listed())["beta"]["step"] == 9
        shutil.rmtree(ws / "outputs" / "alpha")
        assert set(await listed()) == {"beta", "gamma", "delta"}
        q = await c.call_tool("query_runs", {"sql": "select count(*) as n from runs"})
        assert not q.is_error and q.structured_content["rows"] == [[3]]

    async def main():
        async with Client(server) as client:
            await flow(client)

    anyio.run(main)
