"""The job engine through both of its faces: `evsys launch|status|wait|cancel|logs` and
`evsys score --detach` in real processes, the same jobs seen through the MCP tools, and
process identity: a pid is signalled only when it is proved to be that run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evsys_core import rundir
from evsys_core.errors import RunError
from evsys_core.jobs import process
from evsys_core.jobs.engine import Engine
from evsys_mcp.server import build_server
from test_mcp_server import CONFIG, err, make_run, ok, ws  # noqa: F401 (ws is a fixture)
from test_scoring import basic_tasks, write_bench


def evsys(ws: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evsys_core.cli", *args, "--workspace", str(ws)],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def js(out: subprocess.CompletedProcess) -> dict:
    assert out.stdout.strip(), out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_launch_status_logs_cancel_wait_at_the_terminal_and_over_mcp(ws):
    (ws / "experiments" / "go.yaml").write_text(CONFIG.format(lr=1e-4, name="go").replace(
        "max_steps: 1", "max_steps: 500"))
    launched = evsys(ws, "launch", "experiments/go.yaml", "--max-concurrent", "1", "--json")
    assert launched.returncode == 0, launched.stderr
    job = js(launched)
    run_dir = ws / "outputs" / "go"
    assert Path(job["run_dir"]) == run_dir and job["kind"] == "train" and job["status"] == "running"
    assert os.getpgid(job["pid"]) == job["pid"]  # its own session: the terminal's exit does not reach it
    info = json.loads((run_dir / "run.json").read_text())
    assert info["id"] == job["run_id"] and info["config_path"] == "experiments/go.yaml"

    again = evsys(ws, "launch", "experiments/go.yaml", "--max-concurrent", "1")
    assert again.returncode == 1 and "already running" in again.stderr and "evsys cancel" in again.stderr

    status = js(evsys(ws, "status", job["run_id"], "--json"))
    assert status["status"] == "running" and status["kind"] == "train" and status["run_dir"] == "outputs/go"
    server = build_server(ws, poll_s=0.2)
    assert ok(server, "run_status", run=job["run_id"])["status"] == "running"  # the same job, the other face
    assert "already running" in err(server, "launch_run", config_path="go.yaml")

    logs = js(evsys(ws, "logs", "go", "--json", "--max-bytes", "4000"))
    assert "evsys_core.cli run" in logs["text"] and logs["path"] == "outputs/go/train.log"

    cancelled = evsys(ws, "cancel", job["run_id"], "--grace", "30", "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    out = js(cancelled)
    assert out["was_running"] and out["status"] == "interrupted" and out["signal"] in ("SIGTERM", "SIGKILL")
    assert not rundir.pid_alive(job["pid"])
    waited = evsys(ws, "wait", job["run_id"], "--timeout", "30", "--json")
    assert waited.returncode == 1 and js(waited)["status"] == "interrupted" and not js(waited)["timed_out"]
    assert ok(server, "cancel_run", run=job["run_id"])["was_running"] is False


def test_a_score_is_a_detached_job_with_a_total(tmp_path, tiny_model_dir):
    ws = tmp_path
    write_bench(ws / "bench", basic_tasks())
    (ws / "bench" / "graders.py").write_text("def half(answer, expected):\n    return 0.5\n")
    started = evsys(ws, "score", "--benchmark", "bench", "--model", str(tiny_model_dir), "--max-tokens", "4",
                    "--detach", "--json")
    assert started.returncode == 0, started.stderr
    job = js(started)
    assert job["kind"] == "score" and Path(job["run_dir"]).parent == ws / "outputs" / "scores"
    waited = evsys(ws, "wait", job["run_id"], "--timeout", "300", "--json")
    assert waited.returncode == 0, (waited.stderr, (Path(job["run_dir"]) / "train.log").read_text()[-2000:])
    out = js(waited)
    assert out["status"] == "completed" and out["kind"] == "score"
    assert out["step"] == out["max_steps"] == 3  # progress counts the tasks scored, of all
    assert set(out["final_metrics"]) == {"val/bench/pass@1", "val/bench/pass@1_stderr", "val/bench/n_tasks"}
    assert "Scoring" in js(evsys(ws, "logs", job["run_id"], "--json"))["text"]
    listed = json.loads(evsys(ws, "runs", "--json", "--kind", "score").stdout)
    assert [r["run_id"] for r in listed] == [job["run_id"]]
    assert json.loads(evsys(ws, "runs", "--json").stdout) == []  # not a training run


# --- process identity ---------------------------------------------------------------------

@pytest.fixture
def children():
    procs: list[subprocess.Popen] = []

    def start(*argv: str, own_session: bool = True) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *argv],
                             start_new_session=own_session)
        procs.append(p)
        time.sleep(0.3)
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_only_a_process_proved_to_be_the_run_is_signalled(ws, children):
    engine = Engine(ws)
    # the same pid and start time and its run dir in argv, but in the caller's own process group
    grouped = children("--run-dir", str(ws / "outputs" / "grouped"), own_session=False)
    run = make_run(ws, "grouped", status="running", pid=grouped.pid)
    with pytest.raises(RunError, match="group"):
        engine.cancel(run["dir"], grace_s=1)
    # a live process whose command line does not name the run directory
    stranger = children("--run-dir", str(ws / "outputs" / "elsewhere"))
    run = make_run(ws, "stranger", status="running", pid=stranger.pid)
    with pytest.raises(RunError, match="does not name the run directory"):
        engine.cancel(run["dir"], grace_s=1)
    # the pid reused: the recorded start time is another process's
    reused = children("--run-dir", str(ws / "outputs" / "reused"))
    run = make_run(ws, "reused", status="running", pid=reused.pid)
    info = json.loads((run["dir"] / "run.json").read_text())
    rundir.write_json_atomic(run["dir"] / "run.json", {**info, "pid_started": info["pid_started"] - 100})
    assert engine.cancel(run["dir"], grace_s=1)["was_running"] is False
    # no start time recorded: it cannot be proved
    unproved = children("--run-dir", str(ws / "outputs" / "unproved"))
    run = make_run(ws, "unproved", status="running", pid=unproved.pid)
    info = json.loads((run["dir"] / "run.json").read_text())
    rundir.write_json_atomic(run["dir"] / "run.json", {**info, "pid_started": None})
    with pytest.raises(RunError, match="no start time"):
        engine.cancel(run["dir"], grace_s=1)
    # this very process
    run = make_run(ws, "myself", status="running", pid=os.getpid())
    with pytest.raises(RunError, match="this process"):
        engine.cancel(run["dir"], grace_s=1)
    assert all(p.poll() is None for p in (grouped, stranger, reused, unproved))  # nobody was signalled
    cli = evsys(ws, "cancel", "stranger")
    assert cli.returncode == 1 and "nothing was signalled" in cli.stderr and stranger.poll() is None


def test_identify_accepts_the_run_itself(ws, children):
    p = children("--run-dir", str(ws / "outputs" / "mine"))
    run = make_run(ws, "mine", status="running", pid=p.pid)
    target = process.identify(json.loads((run["dir"] / "run.json").read_text()), run["dir"])
    assert target is not None and target.pid == p.pid and target.leads_group


def test_a_job_that_dies_before_it_starts_is_failed_with_its_log(ws):
    engine = Engine(ws)
    (ws / "experiments" / "go.yaml").write_text(CONFIG.format(lr=1e-4, name="early"))
    run_dir = rundir.claim_run_dir(ws / "outputs", "early")
    (run_dir / "train.log").write_text("Traceback ...\nImportError: no module named nowhere\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from evsys_core.jobs.engine import _write_provisional
    from evsys_core.jobs.record import new_record

    _write_provisional(run_dir, {**new_record(run_dir, kind="train", algorithm="sdft", model="m", backend="local",
                                              pid=dead.pid), "provisional": True})
    st = engine.status(run_dir)
    assert st["status"] == "failed" and "ImportError: no module named nowhere" in st["error"]
