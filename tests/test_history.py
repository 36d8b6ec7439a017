"""The run history index: discovery, incremental refresh, statuses, odd values, read-only SQL,
concurrency between processes, and rebuilding a damaged index."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from evsys_core import rundir
from evsys_core.errors import RunError
from evsys_core.history import discover, schema, store
from evsys_core.history.index import Index, QueryError, conclude, open_index
from history_fixtures import age, config_yaml, dead_pid, make_run, train_rows

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    """A workspace with a finished run, a running run (this test's pid), a killed run and a
    run from before run.json existed; all files aged out of the 'too recent' window."""
    out = tmp_path / "outputs"
    make_run(out, "alpha", rows=train_rows(6), config=config_yaml(lr=1e-4),
             summary="# alpha\n\nstatus: completed\n")
    make_run(out, "beta", status="running", rows=train_rows(4), config=config_yaml(lr=3e-4))
    make_run(out, "killed", status="running", pid=dead_pid(), rows=train_rows(3))
    make_run(out, "legacy", status=None, rows=train_rows(5), summary="Run completed.\n")
    age(tmp_path)
    return tmp_path


def rows(idx: Index, sql: str, params=None) -> list[tuple]:
    return idx.query(sql, params).rows


def test_index_file_tables_and_statuses(ws: Path) -> None:
    idx = open_index(ws)
    assert (ws / ".evsys" / "index.duckdb").is_file()
    got = {name: (status, inferred) for name, status, inferred in
           rows(idx, "select name, status, inferred from runs")}
    assert got == {
        "alpha": ("completed", False),
        "beta": ("running", False),  # its pid (this test process) is alive
        "killed": ("interrupted", False),  # `running` in run.json, but its process is gone
        "legacy": ("completed", True),  # no run.json: summary.md says completed
    }
    legacy = idx.resolve("legacy")
    assert legacy["run_id"] == rundir.inferred_run_id(ws / "outputs" / "legacy")
    assert legacy["path"] == "outputs/legacy"
    # the killed run's run.json was rewritten as interrupted by the reader
    assert json.loads((ws / "outputs/killed/run.json").read_text())["status"] == "interrupted"
    # metrics are long: one row per (line, key); steps come from the metrics
    assert rows(idx, "select count(*) from metrics where run_id = ?", [idx.resolve("alpha")["run_id"]]) == [(9,)]
    assert rows(idx, "select steps from runs where name = 'alpha'") == [(6,)]
    assert rows(idx, "select learning_rate, batch_size from runs where name = 'beta'") == [(3e-4, 4)]
    assert ("algorithm.params.topk", 20.0) in rows(
        idx, "select key, value from params join runs using (run_id) where name = 'alpha'")


def test_legacy_run_status_by_age(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    make_run(out, "old", status=None, rows=train_rows(2))
    make_run(out, "fresh", status=None, rows=train_rows(2))
    age(out / "old")
    idx = open_index(tmp_path)
    got = dict(rows(idx, "select name, status from runs"))
    assert got == {"old": "interrupted", "fresh": "running"}


def test_incremental_refresh_reads_only_the_appended_line_and_the_new_run(ws: Path) -> None:
    idx = open_index(ws)
    assert idx.refresh().files_read == []  # nothing changed: nothing read
    line = {"step": 5, "split": "train", "metrics": {"train/mean_loss": 0.125}}
    rundir.append_jsonl(ws / "outputs/beta/metrics.jsonl", line)
    make_run(ws / "outputs", "gamma", rows=train_rows(2), config=config_yaml())

    stats = idx.refresh()
    assert sorted(stats.files_read) == [
        "outputs/beta/metrics.jsonl",
        "outputs/gamma/config.yaml", "outputs/gamma/metrics.jsonl", "outputs/gamma/run.json",
    ]
    gamma_bytes = sum((ws / "outputs/gamma" / n).stat().st_size
                      for n in ("config.yaml", "metrics.jsonl", "run.json"))
    assert stats.bytes_read == len(json.dumps(line)) + 1 + gamma_bytes
    assert (stats.runs_added, stats.runs_updated, stats.runs_removed) == (1, 1, 0)
    assert rows(idx, "select steps from runs where name = 'beta'") == [(5,)]
    assert rows(idx, "select value from latest_metrics join runs using (run_id) "
                     "where name = 'beta' and key = 'train/mean_loss'") == [(0.125,)]
    assert idx.refresh().files_read == []


def test_partial_last_line_is_read_once_complete(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    d = make_run(out, "live", status="running", rows=train_rows(2, val_every=0))
    whole = json.dumps({"step": 3, "split": "train", "metrics": {"train/mean_loss": 0.3}})
    with open(d / "metrics.jsonl", "a") as f:
        f.write(whole[:17])  # a line being written
    age(tmp_path)
    idx = open_index(tmp_path)
    assert rows(idx, "select max(step), count(*) from metrics") == [(2, 2)]
    with open(d / "metrics.jsonl", "a") as f:
        f.write(whole[17:] + "\n")
    stats = idx.refresh()
    assert stats.bytes_read == len(whole) + 1 - 17 + 17  # from the end of the last whole line
    assert rows(idx, "select max(step), count(*) from metrics") == [(3, 3)]


def test_run_killed_while_indexed_as_running_becomes_interrupted(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        make_run(tmp_path / "outputs", "victim", status="running", pid=child.pid,
                 rows=train_rows(2))
        age(tmp_path)
        idx = open_index(tmp_path)
        assert rows(idx, "select status from runs") == [("running",)]
        child.kill()
        child.wait()
        idx.refresh()
        assert rows(idx, "select status, error is not null from runs") == [("interrupted", True)]
        assert idx.runs()[0]["status"] == "interrupted"
    finally:
        child.kill()


def test_metric_keys_appearing_only_in_later_runs(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    make_run(out, "first", rows=train_rows(4))
    age(tmp_path)
    idx = open_index(tmp_path)
    make_run(out, "second", rows=train_rows(4, val_key="val/math/pass@4", skill=0.9))
    idx.refresh()
    by_name = {r["name"]: r["metrics"] for r in idx.runs()}
    assert set(by_name["first"]) == {"val/val/pass@1"}
    assert set(by_name["second"]) == {"val/math/pass@4"}
    assert [r["name"] for r in idx.best("val/math/pass@4")] == ["second"]
    got = idx.runs(where='"val/math/pass@4" > 0.1')
    assert [r["name"] for r in got] == ["second"]
    assert {k for (k,) in rows(idx, "select distinct key from metrics")} == {
        "train/mean_loss", "val/val/pass@1", "val/math/pass@4"}


def test_nan_string_and_odd_values_keep_column_types(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    make_run(out, "odd", rows=[
        {"step": 1, "split": "val", "metrics": {"val/v/pass@1": 0.5, "val/v/note": "warmup",
                                                "val/v/flag": True, "val/v/none": None,
                                                "val/v/obj": {"a": 1}}},
        {"step": 2, "split": "val", "metrics": {"val/v/pass@1": float("nan"),
                                                "val/v/note": "done"}},
        {"step": 3, "split": "train", "metrics": {"train/loss": float("inf")}},
    ])
    make_run(out, "plain", rows=[{"step": 2, "split": "val", "metrics": {"val/v/pass@1": 0.25}}])
    idx = open_index(tmp_path)
    types = dict((c, t) for c, t, *_ in rows(idx, "describe metrics"))
    assert types["value"] == "DOUBLE" and types["value_text"] == "VARCHAR"
    got = {k: (v, t) for k, v, t in rows(
        idx, "select key, value, value_text from metrics join runs using (run_id) "
             "where name = 'odd' and metrics.step = 1")}
    assert got == {"val/v/pass@1": (0.5, None), "val/v/note": (None, "warmup"),
                   "val/v/flag": (1.0, None), "val/v/none": (None, None),
                   "val/v/obj": (None, '{"a": 1}')}
    (nan_final, note_final, best_max, is_nan), = rows(idx, """
        select l.value, n.value_text, b.max_value, isnan(l.value)
        from latest_metrics l join best_metrics b using (run_id, key)
        join latest_metrics n on n.run_id = l.run_id and n.key = 'val/v/note'
        join runs r on r.run_id = l.run_id
        where r.name = 'odd' and l.key = 'val/v/pass@1'""")
    assert math.isnan(nan_final) and is_nan and note_final == "done"
    assert best_max == 0.5  # NaN is never the best value
    # a NaN final value is not ranked
    assert [r["name"] for r in idx.best("val/v/pass@1")] == ["plain"]
    assert rows(idx, "select value from metrics where key = 'train/loss'") == [(math.inf,)]


def test_rewritten_and_removed_files(ws: Path) -> None:
    idx = open_index(ws)
    beta = ws / "outputs/beta"
    (beta / "metrics.jsonl").write_text(json.dumps(
        {"step": 1, "split": "train", "metrics": {"train/mean_loss": 9.0}}) + "\n")
    stats = idx.refresh()
    assert "outputs/beta/metrics.jsonl" in stats.files_read
    assert rows(idx, "select metrics.step, value from metrics join runs using (run_id) "
                     "where name = 'beta'") == [(1, 9.0)]
    shutil.rmtree(ws / "outputs/alpha")
    stats = idx.refresh()
    assert stats.runs_removed == 1
    assert "alpha" not in {r["name"] for r in idx.runs()}
    assert rows(idx, "select count(*) from metrics m where not exists "
                     "(select 1 from runs r where r.run_id = m.run_id)") == [(0,)]


def test_directory_shortcut_misses_in_place_edit_of_finished_run_until_full(ws: Path) -> None:
    idx = open_index(ws)
    rundir.append_jsonl(ws / "outputs/alpha/metrics.jsonl",
                        {"step": 7, "split": "train", "metrics": {"train/mean_loss": 0.01}})
    assert idx.refresh().files_read == []  # documented: alpha is finished, its folder unchanged
    stats = idx.refresh(full=True)
    assert stats.files_read == ["outputs/alpha/metrics.jsonl"]
    assert rows(idx, "select steps from runs where name = 'alpha'") == [(7,)]


def test_discovery_skips_hidden_vendored_and_checkpoint_folders(tmp_path: Path) -> None:
    make_run(tmp_path / "examples/sft/outputs", "found", rows=train_rows(1))
    make_run(tmp_path / "experiments/e1/runs", "deep", rows=train_rows(1))
    for skipped in (".venv/lib", ".git", ".hidden", "node_modules/pkg",
                    "examples/sft/outputs/found/checkpoints"):
        make_run(tmp_path / skipped, "nope", rows=train_rows(1))
    idx = open_index(tmp_path)
    assert sorted(rows(idx, "select path from runs")) == [
        ("examples/sft/outputs/found",), ("experiments/e1/runs/deep",)]
    # a run directory moved: the old one disappears, the new one is found
    os.rename(tmp_path / "experiments/e1", tmp_path / "experiments/e2")
    idx.refresh()
    assert sorted(rows(idx, "select path from runs")) == [
        ("examples/sft/outputs/found",), ("experiments/e2/runs/deep",)]


def test_predictions_and_conclusions(tmp_path: Path) -> None:
    preds = [{"step": s, "task_id": f"t{i}", "instruction": "q", "sample": 0,
              "answer": "Paris", "score": float(i % 2), "passed": bool(i % 2), "reason": None}
             for s in (1, 2) for i in range(4)]
    d = make_run(tmp_path / "outputs", "p", rows=train_rows(2), predictions={"val": preds},
                 conclusion="Hand-written note.\n")
    idx = open_index(tmp_path)
    assert rows(idx, "select benchmark, count(*), sum(passed::int) from predictions "
                     "group by all") == [("val", 8, 4)]
    info = idx.show("p")
    assert info["predictions"] == [{"benchmark": "val", "last_step": 2, "rows_at_last_step": 4,
                                    "mean_score": 0.5, "pass_rate": 0.5}]
    assert [(c["author"], c["text"]) for c in info["conclusions"]] == [("unknown",
                                                                       "Hand-written note.")]
    res = conclude(tmp_path, "p", "topk 20 beats 5", author="claude")
    conclude(tmp_path, "p", "second thought")
    text = (d / "conclusion.md").read_text()
    assert re.search(r"\n## \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ — claude\n\ntopk 20 beats 5\n\n## "
                     r"\S+ — human\n\nsecond thought\n\n$", text), text
    assert res["path"] == str(d / "conclusion.md")
    got = rows(idx, "select author, text from conclusions order by ordinal")
    assert got == [("unknown", "Hand-written note."), ("claude", "topk 20 beats 5"),
                   ("human", "second thought")]
    assert rows(idx, "select conclusion, n_conclusions from runs") == [("second thought", 3)]
    with pytest.raises(Exception, match="empty"):
        conclude(tmp_path, "p", "   ")


def test_resolve_by_id_prefix_path_and_errors(ws: Path) -> None:
    make_run(ws / "outputs", "alpha", rows=train_rows(1))  # claimed as alpha-2
    idx = open_index(ws)
    alpha = idx.resolve("alpha")  # the exact name wins over the prefix
    assert alpha["name"] == "alpha" and alpha["run_dir"] == str(ws / "outputs/alpha")
    assert idx.resolve(alpha["run_id"])["name"] == "alpha"
    assert idx.resolve(alpha["run_id"][:8])["name"] == "alpha"
    assert idx.resolve(str(ws / "outputs/alpha-2"))["name"] == "alpha-2"
    assert idx.resolve("alpha-")["name"] == "alpha-2"
    assert idx.resolve("leg")["name"] == "legacy"
    with pytest.raises(RunError) as e:
        idx.resolve("al")
    assert "matches 2 runs" in str(e.value) and "alpha-2" in str(e.value)
    with pytest.raises(RunError, match="close names: alpha"):
        idx.resolve("alpah")
    with pytest.raises(RunError, match="not inside the workspace"):
        idx.resolve("/etc")


def test_runs_sort_where_limit_and_best(ws: Path) -> None:
    idx = open_index(ws)
    names = [r["name"] for r in idx.runs(sort="val/val/pass@1")]
    assert names[0] == "alpha" and names[-1] == "killed"  # 0.3 ... 0.1 at their last val step
    assert set(names[1:3]) == {"beta", "legacy"}  # 0.2 each
    assert [r["name"] for r in idx.runs(sort="name:asc", limit=2)] == ["alpha", "beta"]
    assert {r["name"] for r in idx.runs(where="status = 'running'")} == {"beta"}
    top = idx.best("train/mean_loss", maximize=False, limit=2)
    assert [r["name"] for r in top] == ["alpha", "legacy"]
    assert top[0]["value"] == pytest.approx(1 / 6)
    by_best = idx.best("train/mean_loss", maximize=True, by="best", limit=1)
    assert by_best[0]["value"] == 1.0 and by_best[0]["step"] == 1
    with pytest.raises(QueryError, match="did you mean val/val/pass@1"):
        idx.best("val/val/pass@2")
    with pytest.raises(QueryError, match="nosuch"):
        idx.runs(where="nosuch > 1")
    with pytest.raises(QueryError, match="did you mean"):
        idx.runs(sort="val/val/pass")


def test_compare_and_curves(ws: Path) -> None:
    idx = open_index(ws)
    cmp = idx.compare("alpha", "beta")
    assert [r["name"] for r in cmp["runs"]] == ["alpha", "beta"]
    assert {"key": "algorithm.params.learning_rate", "values": [1e-4, 3e-4]} in cmp["config"]
    assert all(c["key"] != "algorithm.params.topk" for c in cmp["config"])  # equal: not shown
    loss = next(m for m in cmp["metrics"] if m["key"] == "train/mean_loss")
    assert (loss["base"], loss["cand"]) == (pytest.approx(1 / 6), 0.25)
    assert loss["delta"] == pytest.approx(0.25 - 1 / 6)
    assert loss["verdict"] is None and "no per-task predictions" in loss["note"]
    c = idx.curves("alpha", keys=["train/mean_loss"])
    assert [p[0] for p in c["curves"]["train/mean_loss"]] == [1, 2, 3, 4, 5, 6]
    c = idx.curves("alpha", keys=["train/mean_loss"], max_points=3)
    assert [p[0] for p in c["curves"]["train/mean_loss"]] == [1, 3, 6]  # first and last kept
    assert set(idx.curves("alpha", split="val")["curves"]) == {"val/val/pass@1"}
    with pytest.raises(QueryError, match="has no metric"):
        idx.curves("alpha", keys=["nope"])
    with pytest.raises(Exception, match="the same run"):
        idx.compare("alpha", "alpha")


REFUSED = [
    ("insert into runs (run_id) values ('x')", "read-only"),
    ("update runs set status = 'completed'", "read-only"),
    ("delete from metrics", "read-only"),
    ("drop table runs", "read-only"),
    ("create table t as select 1", "read-only"),
    ("create view v as select 1", "read-only"),
    ("attach '/tmp/other.duckdb' as other", "outside the index"),
    ("copy runs to '/tmp/evsys_leak.csv'", "outside the index"),
    ("install httpfs", "outside the index"),
    ("load httpfs", "outside the index"),
    ("select * from read_csv('/etc/passwd')", "outside the index"),
    ("select * from read_text('/etc/passwd')", "outside the index"),
    ("select * from read_parquet('/tmp/x.parquet')", "outside the index"),
    ("select * from glob('/etc/*')", "outside the index"),
    ("pragma enable_profiling", "settings cannot be changed"),
    ("pragma threads = 1", "settings cannot be changed"),
    ("set enable_external_access = true", "settings cannot be changed"),
    ("reset threads", "settings cannot be changed"),
    ("select 1; drop table runs", "one SQL statement"),
    ("select 1; select 2", "one SQL statement"),
    ("export database '/tmp/evsys_export'", "outside the index"),
]


@pytest.mark.parametrize("sql,why", REFUSED, ids=[s for s, _ in REFUSED])
def test_query_refuses_writes_and_file_access(ws: Path, sql: str, why: str) -> None:
    idx = open_index(ws)
    before = rows(idx, "select (select count(*) from runs), (select count(*) from metrics)")
    with pytest.raises(QueryError) as e:
        idx.query(sql)
    msg = str(e.value)
    assert why in msg, msg
    assert msg.startswith("refused") or why == "one SQL statement", msg
    assert "runs, params, metrics" in msg  # says what can be queried
    assert rows(idx, "select (select count(*) from runs), (select count(*) from metrics)") == before
    assert not Path("/tmp/evsys_leak.csv").exists()
    assert idx.refresh().files_read == []  # the index still opens for writing, unchanged


@pytest.mark.parametrize("sql", [
    "insert into runs (run_id) values ('x')", "copy runs to '/tmp/evsys_leak2.csv'",
    "select * from read_text('/etc/passwd')", "set threads = 1", "load httpfs",
])
def test_reader_connection_refuses_on_its_own(ws: Path, sql: str) -> None:
    """No string inspection: the database refuses these on the connection evsys hands out."""
    open_index(ws)
    con = store.connect(str(ws / ".evsys/index.duckdb"), read_only=True)
    try:
        with pytest.raises((duckdb.PermissionException, duckdb.InvalidInputException)):
            con.execute(sql)
    finally:
        con.close()


def test_query_results_limits_and_timeout(ws: Path) -> None:
    idx = open_index(ws)
    res = idx.query("select name from runs order by name", max_rows=2)
    assert res.columns == ["name"] and res.rows == [("alpha",), ("beta",)] and res.truncated
    res = idx.query("select name from runs where status = ? order by name", ["running"])
    assert res.rows == [("beta",)] and not res.truncated
    assert idx.query("select name, value from runs join latest_metrics using (run_id) "
                     "where key = 'val/val/pass@1' order by value desc").rows[0] == ("alpha", 0.3)
    t = time.perf_counter()
    with pytest.raises(QueryError, match="longer than 0.3 s"):
        idx.query("select sum(i) from range(100000000000) t(i)", timeout_s=0.3)
    assert time.perf_counter() - t < 10
    with pytest.raises(QueryError, match="does not parse"):
        idx.query("selec 1")
    with pytest.raises(QueryError, match="unknown table"):
        idx.query("select * from nosuch")


# ------------------------------------------------------------- processes, damage

HOLD_REFRESH = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from evsys_core.history import refresh
    from evsys_core.history.index import Index
    real = refresh.Refresher._apply
    def slow(self, *a, **k):
        real(self, *a, **k)
        Path({flag!r}).touch()
        time.sleep({hold})  # inside the transaction, holding the writer lock
    refresh.Refresher._apply = slow
    stats = Index({ws!r}).refresh()
    print(stats.runs_added)
""")


def _spawn(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _wait_for(path: Path, timeout: float = 30) -> None:
    end = time.time() + timeout
    while not path.exists():
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.02)


def test_reader_process_waits_for_a_refreshing_process(ws: Path, tmp_path: Path) -> None:
    open_index(ws)
    for i in range(3):
        make_run(ws / "outputs", f"new{i}", rows=train_rows(3))
    flag = tmp_path / "in_transaction"
    writer = _spawn(HOLD_REFRESH.format(root=str(ROOT), flag=str(flag), hold=1.5, ws=str(ws)))
    try:
        _wait_for(flag)
        t = time.perf_counter()
        reader = subprocess.run(
            [sys.executable, "-m", "evsys_core.cli", "query", "--workspace", str(ws), "--json",
             "select count(*) as n from runs"],
            capture_output=True, text=True, cwd=ROOT, timeout=60)
        waited = time.perf_counter() - t
        plain = subprocess.run(  # a reader that does not refresh: still waits, never fails
            [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
             "from evsys_core.history.index import open_index; "
             f"print(open_index({str(ws)!r}, refresh=False).query('select count(*) from runs').rows[0][0])"],
            capture_output=True, text=True, cwd=ROOT, timeout=60)
    finally:
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert out.strip() == "3"
    assert reader.returncode == 0, reader.stderr
    assert json.loads(reader.stdout)["rows"] == [[7]]  # sees the writer's committed runs
    assert plain.returncode == 0 and plain.stdout.strip() == "7", plain.stderr
    assert waited > 0.3  # it did wait for the writer


def test_two_refreshing_processes_serialize(ws: Path, tmp_path: Path) -> None:
    open_index(ws)
    for i in range(5):
        make_run(ws / "outputs", f"n{i}", rows=train_rows(4))
    flag = tmp_path / "a"
    code = HOLD_REFRESH.format(root=str(ROOT), flag=str(flag), hold=0.5, ws=str(ws))
    procs = [_spawn(code), _spawn(code)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(o.strip() for o, _ in outs) == ["0", "5"]  # one added them, one saw no change
    idx = Index(ws)
    assert rows(idx, "select count(*) from runs") == [(9,)]
    assert rows(idx, "select count(*) from (select run_id, line, key from metrics "
                     "group by all having count(*) > 1)") == [(0,)]


def test_reader_waits_for_a_foreign_duckdb_holder(ws: Path, tmp_path: Path) -> None:
    open_index(ws)
    flag = tmp_path / "held"
    holder = _spawn(textwrap.dedent(f"""
        import duckdb, time
        from pathlib import Path
        con = duckdb.connect({str(ws / '.evsys/index.duckdb')!r})
        Path({str(flag)!r}).touch()
        time.sleep(1.0)
        con.close()
    """))
    try:
        _wait_for(flag)
        idx = Index(ws)
        assert rows(idx, "select count(*) from runs") == [(4,)]
    finally:
        holder.communicate(timeout=30)


def test_corrupted_index_is_rebuilt_with_a_warning(ws: Path, capsys) -> None:
    open_index(ws)
    capsys.readouterr()
    db = ws / ".evsys/index.duckdb"
    db.write_bytes(b"this is not a duckdb file" * 1000)
    idx = open_index(ws)
    err = capsys.readouterr().err
    assert "warning" in err and "unreadable" in err and "rebuilding" in err
    assert idx.last_refresh is not None and idx.last_refresh.rebuilt
    assert rows(idx, "select count(*) from runs") == [(4,)]
    # a truncated file
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.truncate(size // 3)
    idx = open_index(ws)
    assert "rebuilding" in capsys.readouterr().err
    assert rows(idx, "select count(*) from runs") == [(4,)]


def test_deleted_index_is_rebuilt_with_a_warning(ws: Path, capsys) -> None:
    open_index(ws)
    capsys.readouterr()
    (ws / ".evsys/index.duckdb").unlink()
    idx = Index(ws)
    assert rows(idx, "select count(*) from runs") == [(4,)]
    assert "was missing" in capsys.readouterr().err


def test_empty_workspace_and_bad_workspace(tmp_path: Path) -> None:
    idx = open_index(tmp_path)
    assert idx.runs() == [] and idx.last_refresh.runs_total == 0
    with pytest.raises(Exception, match="not a directory"):
        open_index(tmp_path / "missing")


def test_other_schema_version_is_rebuilt(ws: Path, capsys) -> None:
    open_index(ws)
    con = duckdb.connect(str(ws / ".evsys/index.duckdb"))
    con.execute("update meta set value = '0' where key = 'schema_version'")
    con.close()
    capsys.readouterr()
    idx = open_index(ws)
    assert "another version of evsys" in capsys.readouterr().err
    assert idx.last_refresh.rebuilt and rows(idx, "select count(*) from runs") == [(4,)]
    assert rows(idx, "select value from meta where key = 'schema_version'") == [
        (schema.SCHEMA_VERSION,)]


def test_nothing_changed_refresh_opens_no_database(ws: Path, monkeypatch) -> None:
    idx = open_index(ws)  # rewrites the killed run's run.json: its folder changes
    time.sleep(discover.RACY_NS / 1e9 + 0.05)  # a folder changed just now is not trusted yet
    idx.refresh()  # settles it

    def no_connect(*a, **k):
        raise AssertionError("a refresh with nothing to do opened the database")

    monkeypatch.setattr("evsys_core.history.index.connect", no_connect)
    stats = idx.refresh()
    assert stats.fast_path and stats.runs_total == 4 and stats.files_read == []
    assert stats.files_checked > 0  # the running run's files were looked at
    monkeypatch.undo()
    # a change in the running run leaves the fast path
    rundir.append_jsonl(ws / "outputs/beta/metrics.jsonl",
                        {"step": 9, "split": "train", "metrics": {"train/mean_loss": 0.1}})
    stats = idx.refresh()
    assert not stats.fast_path and stats.files_read == ["outputs/beta/metrics.jsonl"]
    # a snapshot that does not describe the index file is not trusted
    snap = ws / ".evsys/state.marshal"
    assert snap.exists()
    os.utime(ws / ".evsys/index.duckdb", (1, 1))
    assert not idx.refresh().fast_path
    snap.write_bytes(b"garbage")
    assert not idx.refresh().fast_path
    assert idx.refresh().fast_path


def test_docs_list_every_queryable_column() -> None:
    doc = (ROOT / "docs/history.md").read_text()
    for table in schema.PUBLIC_TABLES:
        assert f"`{table}`" in doc, table
        for col, _ in schema.COLUMNS.get(table, []):
            assert re.search(rf"\b{re.escape(col)}\b", doc), f"{table}.{col} is not documented"


def _bookkeeping_is_unique(idx: Index) -> None:
    for table in ("files", "dirs", "runs"):
        col = "run_id" if table == "runs" else "path"
        dup = idx.query(f"select {col} from {table} group by all having count(*) > 1").rows
        assert dup == [], f"duplicate {table} rows: {dup}"


def test_bookkeeping_stays_unique_through_changes(ws: Path) -> None:
    idx = open_index(ws)
    for i in range(3):
        rundir.append_jsonl(ws / "outputs/beta/metrics.jsonl",
                            {"step": 10 + i, "split": "train", "metrics": {"train/x": i}})
        (ws / "outputs/legacy/summary.md").write_text(f"status: completed ({i})\n")
        conclude(ws, "alpha", f"note {i}")
        idx.refresh()
        idx.refresh(full=True)
    _bookkeeping_is_unique(idx)
    assert rows(idx, "select count(*) from metrics where key = 'train/x'") == [(3,)]
    assert rows(idx, "select n_conclusions from runs where name = 'alpha'") == [(3,)]


def test_copied_run_directory_gets_its_own_id(ws: Path, capsys) -> None:
    idx = open_index(ws)
    shutil.copytree(ws / "outputs/alpha", ws / "outputs/alpha-copy")
    capsys.readouterr()
    idx.refresh()
    assert "same id as outputs/alpha" in capsys.readouterr().err
    got = dict(rows(idx, "select path, run_id from runs where name = 'alpha'"))
    assert set(got) == {"outputs/alpha", "outputs/alpha-copy"}
    assert got["outputs/alpha-copy"].startswith(got["outputs/alpha"] + "-")
    rundir.append_jsonl(ws / "outputs/alpha-copy/metrics.jsonl",
                        {"step": 8, "split": "train", "metrics": {"train/mean_loss": 0.5}})
    idx.refresh(full=True)
    assert "same id" not in capsys.readouterr().err  # said once, not on every refresh
    assert dict(rows(idx, "select path, run_id from runs where name = 'alpha'")) == got
    _bookkeeping_is_unique(idx)
