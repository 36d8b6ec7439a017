"""Faults, with real processes on the tiny random model: kill -9 mid-run and --resume, SIGTERM and
Ctrl-C, the MCP server killed under a running run, two runs with one run_name at once, a damaged
index, an unwritable output directory or a full disk, a reused pid, and command verifiers that
hang, flood or crash inside a real run. docs/reliability.md lists each case and its test here.

The training processes are `python -m evsys_core.cli run ...` exactly as a person or the MCP
server starts them. Tests poll metrics.jsonl for progress instead of sleeping blindly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import evsys_core
from evsys_core import rundir
from evsys_core.cli import main as evsys_main
from evsys_core.errors import EvsysError
from history_fixtures import make_run, train_rows

CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Peru", "Lima")]
EVSYS_MCP = Path(sys.executable).parent / "evsys-mcp"
START_TIMEOUT_S = 180  # a cold start (torch import + model load) on a busy 2-core machine


def jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def tasks(n: int = 2) -> list[dict]:
    return [{"task_id": f"t{i}", "instruction": f"What is the capital of {c}?",
             "verifier": {"kind": "in_process", "fn_name": "contains", "expected": cap}}
            for i, (c, cap) in enumerate(CAPITALS[:n])]


def workspace(root: Path, model: Path | str, *, max_steps: int, checkpoint_every: int | None = 1,
              bench_tokens: int = 8, run_name: str = "fault") -> Path:
    """config.yaml (sft, an in-loop benchmark every step) + data; model.name is the tiny model;
    `checkpoint_every=None` leaves it out (the default cadence)."""
    every = "" if checkpoint_every is None else f", checkpoint_every: {checkpoint_every}"
    root.mkdir(parents=True, exist_ok=True)
    jsonl(root / "data" / "train.jsonl",
          [{"messages": [{"role": "user", "content": f"What is the capital of {c}?"},
                         {"role": "assistant", "content": cap}]} for c, cap in CAPITALS])
    jsonl(root / "bench" / "val" / "tasks.jsonl", tasks())
    (root / "experiments").mkdir(exist_ok=True)
    (root / "experiments" / "config.yaml").write_text(textwrap.dedent(f"""\
        model: {{ name: "{model}" }}
        backend: {{ kind: local, device: cpu }}
        data: {{ path: data/train.jsonl }}
        algorithm:
          kind: sft
          params: {{ learning_rate: 1.0e-3, max_steps: {max_steps}, batch_size: 2, lora_rank: 2{every} }}
        metadata:
          benchmark:
            - {{ name: val, path: bench/val, run_every: 1, metrics: [pass@1], max_tokens: {bench_tokens} }}
        callbacks:
          - {{ kind: local_logger, params: {{ output_dir: outputs, run_name: {run_name} }} }}
        """))
    return root


def link_model(ws: Path, model: Path) -> str:
    """The tiny model inside the workspace (hard links: no copy), for MCP's confinement."""
    shutil.copytree(model, ws / "model", copy_function=os.link)
    return "model"


def start(ws: Path, *args: str, log: str = "run.log") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "evsys_core.cli", "run", *args, "--workspace", str(ws)]
    out = open(ws / log, "ab")  # noqa: SIM115 - closed with the process by the caller's wait
    try:
        return subprocess.Popen(cmd, cwd=ws, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        out.close()


def train_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in rundir.read_jsonl(run_dir / rundir.METRICS) if r.get("split") == "train"]


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen | None, ws: Path,
                  timeout: float = START_TIMEOUT_S) -> int:
    """Poll metrics.jsonl until a train row with step >= `step` is there; return the last step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = train_steps(run_dir)
        if done and done[-1] >= step:
            return done[-1]
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run exited with {proc.returncode} before step {step}:\n{log_tail(ws)}")
        time.sleep(0.05)
    pytest.fail(f"no step {step} after {timeout} s:\n{log_tail(ws)}")


def log_tail(ws: Path, name: str = "run.log") -> str:
    path = ws / name
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


def assert_valid_jsonl(path: Path) -> list[dict]:
    """Every whole line parses; at most the last line is partial (and then readers skip it)."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    whole, tail = lines[:-1], lines[-1]
    rows = [json.loads(line) for line in whole]
    assert rows == list(rundir.read_jsonl(path)), f"{path}: readers disagree with the whole lines"
    if tail:  # a line cut by the kill: readers ignore it
        with pytest.raises(ValueError):
            json.loads(tail)
    return rows


def no_duplicates(rows: list[dict], key) -> None:
    keys = [key(r) for r in rows]
    assert len(keys) == len(set(keys)), f"logged twice: {sorted(k for k in keys if keys.count(k) > 1)}"


def runs_json(ws: Path) -> tuple[list[dict], str]:
    out = subprocess.run([sys.executable, "-m", "evsys_core.cli", "runs", "--json", "--workspace", str(ws)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout), out.stderr


# --- kill -9 mid-run, then --resume -----------------------------------------------------------

@pytest.mark.slow
def test_kill_9_leaves_valid_files_reads_interrupted_and_resumes_to_the_same_end(tmp_path, tiny_model_dir):
    steps = 6
    ws = workspace(tmp_path / "ws", tiny_model_dir, max_steps=steps)
    proc = start(ws, "experiments/config.yaml")
    run_dir = ws / "outputs" / "fault"
    wait_for_step(run_dir, 2, proc, ws)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL

    # the files are valid JSONL as they lie, before any reader repairs anything
    raw = json.loads((run_dir / rundir.RUN_JSON).read_text())
    assert raw["status"] == "running" and raw["pid"] == proc.pid
    assert raw["pid_started"] is not None  # the pid's start time, against pid reuse
    metrics = assert_valid_jsonl(run_dir / rundir.METRICS)
    preds = assert_valid_jsonl(run_dir / rundir.PREDICTIONS / "val.jsonl")
    killed_at = max(r["step"] for r in metrics if r["split"] == "train")
    assert 2 <= killed_at < steps
    assert {p["step"] for p in preds} <= set(range(0, killed_at + 1))

    # the next thing that looks — the index behind `evsys runs --json` — sees it interrupted ...
    listed, _ = runs_json(ws)
    assert [(r["name"], r["status"]) for r in listed] == [("fault", "interrupted")]
    # ... and says so in run.json for every later reader
    assert json.loads((run_dir / rundir.RUN_JSON).read_text())["status"] == "interrupted"
    info = rundir.read_run_json(run_dir)
    assert info["status"] == "interrupted" and info["ended_at"] and "ended without finishing" in info["error"]

    ckpt = json.loads((run_dir / rundir.CHECKPOINTS / "latest.json").read_text())["step"]
    assert 1 <= ckpt <= killed_at
    resumed = subprocess.run([sys.executable, "-m", "evsys_core.cli", "run", "--resume", str(run_dir),
                              "--workspace", str(ws)], cwd=ws, capture_output=True, text=True,
                             timeout=START_TIMEOUT_S + 120)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    info = json.loads((run_dir / rundir.RUN_JSON).read_text())
    assert info["status"] == "completed" and info["step"] == steps and info["resumed_at"]
    rows = assert_valid_jsonl(run_dir / rundir.METRICS)
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, steps + 1))
    assert [r["step"] for r in rows if r["split"] == "val"] == list(range(0, steps + 1))
    preds = assert_valid_jsonl(run_dir / rundir.PREDICTIONS / "val.jsonl")
    no_duplicates(preds, lambda p: (p["step"], p["task_id"], p.get("sample", 0)))
    assert sorted({p["step"] for p in preds}) == list(range(0, steps + 1))
    assert (run_dir / rundir.CHECKPOINTS / "final").is_dir()
    assert "Status: completed" in (run_dir / rundir.SUMMARY).read_text()
    assert list(ws.glob("outputs/*")) == [run_dir]  # resumed in place, no new directory


@pytest.mark.slow
def test_a_default_config_killed_with_sigkill_resumes_with_every_step_logged_once(tmp_path, tiny_model_dir):
    steps = 12
    ws = workspace(tmp_path / "ws", tiny_model_dir, max_steps=steps, checkpoint_every=None)
    proc = start(ws, "experiments/config.yaml")
    run_dir = ws / "outputs" / "fault"
    wait_for_step(run_dir, 5, proc, ws)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    killed_at = train_steps(run_dir)[-1]
    assert killed_at < steps

    resumed = subprocess.run([sys.executable, "-m", "evsys_core.cli", "run", "--resume", str(run_dir),
                              "--workspace", str(ws)], cwd=ws, capture_output=True, text=True,
                             timeout=START_TIMEOUT_S + 120)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    info = json.loads((run_dir / rundir.RUN_JSON).read_text())
    assert info["status"] == "completed" and info["step"] == steps
    assert info["resumes"][0]["from_step"] >= 4  # from a checkpoint of the default cadence, not step 0
    rows = assert_valid_jsonl(run_dir / rundir.METRICS)
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, steps + 1))
    assert [r["step"] for r in rows if r["split"] == "val"] == list(range(0, steps + 1))
    preds = assert_valid_jsonl(run_dir / rundir.PREDICTIONS / "val.jsonl")
    no_duplicates(preds, lambda p: (p["step"], p["task_id"], p.get("sample", 0)))
    kept = sorted(p.name for p in (run_dir / rundir.CHECKPOINTS).iterdir() if p.is_dir())
    assert "final" in kept and len(kept) <= 3  # the newest two step checkpoints and final


@contextlib.contextmanager
def small_disk(where: Path):
    """A 64 MiB tmpfs mounted at `where` (we run as root), unmounted after; None if this
    machine cannot mount one (the caller then limits file sizes instead)."""
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(where)],
                             capture_output=True, text=True)
    try:
        yield None if mounted.returncode else where
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(disk: Path) -> None:
    chunk = b"\0" * (1 << 20)
    with open(disk / "filler", "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError:
                break
    with contextlib.suppress(OSError):  # whatever small room is left, take it too
        with open(disk / "filler2", "wb", buffering=0) as f:
            while True:
                f.write(b"\0" * 512)


def _limit_file_size() -> None:  # the fallback: no file may grow past 16 KiB (EFBIG)
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, 16 << 10))


@pytest.mark.slow
def test_a_disk_filling_mid_run_fails_the_run_with_one_line_and_no_temporary_files(tmp_path, tiny_model_dir):
    steps = 12
    with small_disk(tmp_path / "disk") as disk:
        if disk is None:
            import warnings

            warnings.warn("cannot mount a tmpfs here: the disk-full test limits file sizes instead")
        ws = workspace((disk or tmp_path) / "ws", tiny_model_dir, max_steps=steps, checkpoint_every=None)
        run_dir = ws / "outputs" / "fault"
        with open(tmp_path / "run.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "evsys_core.cli", "run", "experiments/config.yaml",
                                     "--workspace", str(ws)], cwd=ws, stdout=log, stderr=subprocess.STDOUT,
                                    preexec_fn=None if disk else _limit_file_size)
        if disk:
            wait_for_step(run_dir, 3, proc, tmp_path)
            _fill(disk)
        assert proc.wait(timeout=START_TIMEOUT_S + 120) == 1, log_tail(tmp_path)
        info = json.loads((run_dir / rundir.RUN_JSON).read_text())
        assert info["status"] == "failed", info
        assert "\n" not in info["error"] and ("disk is full" in info["error"]), info["error"]
        assert "Traceback" not in log_tail(tmp_path)
        left = [p for p in ws.rglob("*") if ".tmp" in p.name or (p.is_file() and p.stat().st_size == 0)]
        assert left == [], left
        png = run_dir / "learning_curve.png"
        assert not png.exists() or png.read_bytes().startswith(b"\x89PNG")
        assert_valid_jsonl(run_dir / rundir.METRICS)
        if disk:  # room again: the run resumes to its end
            (disk / "filler").unlink()
            (disk / "filler2").unlink(missing_ok=True)
            resumed = subprocess.run([sys.executable, "-m", "evsys_core.cli", "run", "--resume", str(run_dir),
                                      "--workspace", str(ws)], cwd=ws, capture_output=True, text=True,
                                     timeout=START_TIMEOUT_S + 120)
            assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
            assert train_steps(run_dir) == list(range(1, steps + 1))


# --- SIGTERM and Ctrl-C -----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_and_ctrl_c_stop_cleanly_with_a_final_checkpoint(tmp_path, tiny_model_dir, sig):
    steps = 40
    ws = workspace(tmp_path / "ws", tiny_model_dir, max_steps=steps, checkpoint_every=0)
    proc = start(ws, "experiments/config.yaml")
    run_dir = ws / "outputs" / "fault"
    wait_for_step(run_dir, 2, proc, ws)
    os.kill(proc.pid, sig)
    code = proc.wait(timeout=120)
    assert code == 1, log_tail(ws)  # a clean exit with the "did not complete" code, not a signal death
    log = log_tail(ws)
    assert f"{sig.name}: stopping after this step" in log and "Traceback" not in log
    info = json.loads((run_dir / rundir.RUN_JSON).read_text())
    assert info["status"] == "interrupted" and info["ended_at"]
    stopped = info["step"]
    assert 2 <= stopped < steps and train_steps(run_dir)[-1] == stopped
    latest = json.loads((run_dir / rundir.CHECKPOINTS / "latest.json").read_text())
    assert latest["step"] == stopped and (run_dir / latest["path"]).is_dir()  # final checkpoint at the stop
    assert "Status: interrupted" in (run_dir / rundir.SUMMARY).read_text()
    assert_valid_jsonl(run_dir / rundir.METRICS)
    assert_valid_jsonl(run_dir / rundir.PREDICTIONS / "val.jsonl")


# --- the MCP server killed while its launched run goes on -------------------------------------

def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(") ", 1)[1].split()[1])


def _stdio(ws: Path, errlog: Path, fn):
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=str(EVSYS_MCP), args=["--workspace", str(ws)], cwd=str(ws))

    async def go():
        with errlog.open("a") as err:
            async with Client(stdio_client(params, errlog=err), read_timeout_seconds=600) as client:
                return await fn(client)
    return anyio.run(go)


@pytest.mark.slow
def test_mcp_server_killed_and_restarted_sees_the_run_running_then_completed(tmp_path, tiny_model_dir):
    ws = tmp_path / "ws"
    ws.mkdir()
    steps = 6
    workspace(ws, link_model(ws, tiny_model_dir), max_steps=steps, checkpoint_every=0)
    errlog = tmp_path / "mcp-stderr.log"
    seen: dict[str, Any] = {}

    async def launch_then_kill_the_server(c):
        r = await c.call_tool("launch_run", {"config_path": "config.yaml"})
        assert not r.is_error, r.content[0].text
        seen.update(r.structured_content)
        seen["server_pid"] = _ppid(seen["pid"])  # the run is the server's own child
        os.kill(seen["server_pid"], signal.SIGKILL)
        with anyio.fail_after(60):
            await c.call_tool("list_runs", {})  # the server is gone: this cannot be answered

    with pytest.raises(BaseException):  # noqa: B017 - the client loses its server, as it would
        _stdio(ws, errlog, launch_then_kill_the_server)
    assert seen["server_pid"] != os.getpid() and not rundir.pid_alive(seen["server_pid"])
    assert rundir.pid_alive(seen["pid"]), "the run died with its server"

    async def follow(c):
        status = await c.call_tool("run_status", {"run": seen["run_id"]})
        waited = await c.call_tool("wait_for_run", {"run": seen["run_id"], "timeout_s": 500})
        return status, waited

    status, waited = _stdio(ws, errlog, follow)
    assert not status.is_error, status.content[0].text
    assert status.structured_content["status"] == "running", status.structured_content
    assert status.structured_content["pid"] == seen["pid"]
    assert not waited.is_error, waited.content[0].text
    out = waited.structured_content
    assert out["status"] == "completed" and out["step"] == steps and not out["timed_out"], out
    assert out["run_dir"] == seen["run_dir"] == "outputs/fault"


# --- two runs with one run_name at once -------------------------------------------------------

@pytest.mark.slow
def test_two_runs_launched_at_once_with_the_same_name_get_two_directories(tmp_path, tiny_model_dir):
    steps = 1
    ws = workspace(tmp_path / "ws", tiny_model_dir, max_steps=steps, checkpoint_every=0, bench_tokens=4)
    procs = {seed: start(ws, "experiments/config.yaml", "--set", f"seed={seed}", log=f"run{seed}.log")
             for seed in (11, 22)}
    for seed, p in procs.items():
        assert p.wait(timeout=START_TIMEOUT_S + 120) == 0, log_tail(ws, f"run{seed}.log")
    dirs = sorted((ws / "outputs").iterdir())
    assert [d.name for d in dirs] == ["fault", "fault-2"]
    by_pid = {}
    for d in dirs:
        info = json.loads((d / rundir.RUN_JSON).read_text())
        assert info["status"] == "completed" and info["name"] == d.name
        by_pid[info["pid"]] = d
        seed = next(s for s, p in procs.items() if p.pid == info["pid"])
        assert f"seed: {seed}" in (d / "config.yaml").read_text()  # each directory holds its own run
        rows = assert_valid_jsonl(d / rundir.METRICS)
        assert [r["step"] for r in rows if r["split"] == "train"] == [1]
        assert [r["step"] for r in rows if r["split"] == "val"] == [0, 1]
        preds = assert_valid_jsonl(d / rundir.PREDICTIONS / "val.jsonl")
        no_duplicates(preds, lambda p: (p["step"], p["task_id"], p.get("sample", 0)))
        assert len(preds) == 2 * (steps + 1)
        assert not [p.name for p in d.rglob(".*.tmp")]
    assert set(by_pid) == {p.pid for p in procs.values()}
    ids = {json.loads((d / rundir.RUN_JSON).read_text())["id"] for d in dirs}
    assert len(ids) == 2


def test_two_launch_run_calls_at_once_claim_two_directories(tmp_path, tiny_model_dir):
    """The same through the MCP server: concurrent launch_run calls, then both cancelled."""
    from mcp import Client

    from evsys_mcp.server import build_server

    ws = tmp_path / "ws"
    ws.mkdir()
    workspace(ws, link_model(ws, tiny_model_dir), max_steps=50, checkpoint_every=0)
    server = build_server(ws, max_concurrent_runs=2, cancel_grace_s=20)
    results: list[Any] = []

    async def go():
        async with Client(server) as c:
            async def one():
                results.append(await c.call_tool("launch_run", {"config_path": "config.yaml"}))
            async with anyio.create_task_group() as tg:
                tg.start_soon(one)
                tg.start_soon(one)
            for r in results:
                if not r.is_error:
                    await c.call_tool("cancel_run", {"run": r.structured_content["run_id"]})

    anyio.run(go)
    assert all(not r.is_error for r in results), [r.content[0].text for r in results]
    dirs = sorted(r.structured_content["run_dir"] for r in results)
    assert dirs == ["outputs/fault", "outputs/fault-2"]
    for r in results:
        assert not rundir.pid_alive(r.structured_content["pid"])
        info = json.loads((ws / r.structured_content["run_dir"] / rundir.RUN_JSON).read_text())
        assert info["id"] == r.structured_content["run_id"] and info["status"] == "interrupted"


# --- the index deleted or corrupted -----------------------------------------------------------

@pytest.fixture
def history_ws(tmp_path: Path) -> Path:
    ws = tmp_path / "hws"
    for name in ("a", "b"):
        make_run(ws / "outputs", name, rows=train_rows(4))
    return ws


def test_deleted_or_corrupted_index_is_rebuilt_by_the_next_command_with_a_warning(history_ws):
    """`evsys runs` (a real process) and the MCP server each rebuild the index from the run
    directories — the source of truth — and say so on stderr."""
    from evsys_mcp.server import build_server
    from test_mcp_server import ok

    ws = history_ws
    first, _ = runs_json(ws)
    db = ws / ".evsys" / "index.duckdb"
    assert db.is_file() and sorted(r["name"] for r in first) == ["a", "b"]

    db.unlink()
    after_delete, err = runs_json(ws)
    assert "warning" in err and "missing" in err and "rebuilding" in err
    assert [(r["name"], r["metrics"]) for r in after_delete] == [(r["name"], r["metrics"]) for r in first]

    db.write_bytes(b"\x00garbage, not a duckdb file" * 4096)
    after_corrupt, err = runs_json(ws)
    assert "warning" in err and "unreadable" in err and "rebuilding" in err
    assert sorted(r["name"] for r in after_corrupt) == ["a", "b"]
    assert [r["metrics"] for r in after_corrupt] == [r["metrics"] for r in first]

    with open(db, "r+b") as f:  # a torn file, as a crash in the middle of a write leaves it
        f.truncate(db.stat().st_size // 2)
    out = ok(build_server(ws), "list_runs")
    assert sorted(r["name"] for r in out["runs"]) == ["a", "b"]


# --- unwritable output directory, full disk ---------------------------------------------------

def test_unwritable_output_dir_is_a_clear_error_before_training(tmp_path, tiny_model_dir):
    """The session runs as root, for whom permission bits are not enforced (chmod a-w would not
    stop it), so the unwritable place is under /proc, which nobody can create files in."""
    ws = workspace(tmp_path / "ws", tiny_model_dir, max_steps=1)
    before = sorted(ws.rglob("*"))
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "evsys_core.cli", "run", "experiments/config.yaml",
                          "--set", "callbacks.0.params.output_dir=/proc/evsys-test/outputs",
                          "--workspace", str(ws)], cwd=ws, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "callbacks.0.params.output_dir" in out.stderr and "cannot write in /proc" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""  # nothing started: no "Run ..." line
    assert sorted(ws.rglob("*")) == before and not Path("/proc/evsys-test").exists()
    assert time.monotonic() - t0 < 60


def test_full_disk_is_a_clear_error_before_training(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """A full disk cannot be made for a test without root tricks (a tiny tmpfs), so os.statvfs is
    replaced in-process to report 1 MB free; the run, `validate --deep` and launch_run refuse."""
    from evsys_mcp.server import build_server
    from test_mcp_server import err

    ws = workspace(tmp_path / "ws", tiny_model_dir, max_steps=1)
    (ws / "outputs").mkdir()
    shutil.copytree(tiny_model_dir, ws / "model")  # the server refuses a model outside the workspace first
    config = ws / "experiments" / "config.yaml"
    config.write_text(config.read_text().replace(str(tiny_model_dir), "model"))
    before = sorted(ws.rglob("*"))
    real = os.statvfs

    class Full:
        def __init__(self, st):
            self.f_frsize, self.f_bavail = st.f_frsize, 2**20 // st.f_frsize

    monkeypatch.setattr(os, "statvfs", lambda p: Full(real(p)))
    with pytest.raises(EvsysError) as e:
        evsys_core.run(ws / "experiments" / "config.yaml", workspace=ws)
    assert "callbacks.0.params.output_dir" in str(e.value) and "disk is full" in str(e.value)
    assert evsys_main(["validate", str(ws / "experiments/config.yaml"), "--deep", "--workspace", str(ws)]) == 1
    assert "disk is full" in capsys.readouterr().out
    assert "disk is full" in err(build_server(ws), "launch_run", config_path="config.yaml")
    assert sorted(ws.rglob("*")) == before


# --- pid reuse --------------------------------------------------------------------------------

def test_a_reused_pid_does_not_keep_a_dead_run_running(tmp_path):
    """run.json records the pid's start time; a live process with that pid but another start time
    is not the run. Here the pid is this test's own (alive) and the start time is off by one."""
    out = tmp_path / "outputs"
    me = rundir.owner()
    assert me["pid"] == os.getpid() and me["pid_started"] == rundir.process_start_time(os.getpid())
    live = make_run(out, "live", status="running", rows=train_rows(2))
    reused = make_run(out, "reused", status="running", rows=train_rows(2))
    for d, started in ((live, me["pid_started"]), (reused, me["pid_started"] + 1)):
        info = json.loads((d / rundir.RUN_JSON).read_text())
        rundir.write_json_atomic(d / rundir.RUN_JSON, {**info, **me, "pid_started": started})
    assert rundir.read_run_json(live)["status"] == "running"
    info = rundir.read_run_json(reused)
    assert info["status"] == "interrupted" and info["ended_at"]
    assert json.loads((reused / rundir.RUN_JSON).read_text())["status"] == "interrupted"  # saved
    from evsys_core.history.index import open_index

    rows = {r["name"]: r["status"] for r in open_index(tmp_path).runs()}
    assert rows == {"live": "running", "reused": "interrupted"}
    # an old run.json without pid_started still counts on the pid alone
    legacy = make_run(out, "legacy", status="running", pid=os.getpid())
    assert rundir.read_run_json(legacy)["status"] == "running"


# --- verifiers are untrusted code: inside a real run ------------------------------------------

def _command_task(bench: Path, name: str, script: str) -> dict:
    d = bench / name
    (d / "tests").mkdir(parents=True)
    (d / "instruction.md").write_text("What is the capital of France?\n")
    (d / "tests" / "test.sh").write_text("#!/bin/bash\n" + textwrap.dedent(script))
    return {"task_id": name, "instruction": "What is the capital of France?",
            "verifier": {"kind": "command", "path": name, "timeout_s": 1}}


def test_hanging_flooding_and_crashing_verifiers_do_not_kill_a_real_run(tmp_path, tiny_model_dir):
    """An rl run whose training task's verifier hangs, with an in-loop benchmark of a hanging, a
    flooding and a crashing command verifier: the run completes, each scores 0 with its reason,
    and every verifier call ends at its 1 s timeout."""
    ws = tmp_path / "ws"
    bench = ws / "bench" / "cmd"
    bench.mkdir(parents=True)
    hang = "echo started; sleep 100\n"
    rows = [_command_task(bench, "hang", hang),
            _command_task(bench, "flood", "head -c 5000000 /dev/zero | tr '\\0' 'x'; echo 1 > \"$EVSYS_REWARD_DIR/reward.txt\"; exit 1\n"),
            _command_task(bench, "crash", "echo boom >&2; exit 3\n")]
    jsonl(bench / "tasks.jsonl", rows)
    train = ws / "data"
    jsonl(train / "train.jsonl", [_command_task(train, "hang", hang)])
    (ws / "config.yaml").write_text(textwrap.dedent(f"""\
        model: {{ name: "{tiny_model_dir}" }}
        backend: {{ kind: local, device: cpu }}
        data: {{ path: data/train.jsonl }}
        algorithm:
          kind: rl
          params: {{ max_steps: 1, batch_size: 1, lora_rank: 2, group_size: 2, max_tokens: 4 }}
        metadata:
          benchmark:
            - {{ name: cmd, path: bench/cmd, run_every: 1, metrics: [pass@1], max_tokens: 4 }}
        callbacks:
          - {{ kind: local_logger, params: {{ output_dir: outputs, run_name: untrusted }} }}
        """))
    import io

    t0 = time.monotonic()
    result = evsys_core.run(ws / "config.yaml", workspace=ws, stream=io.StringIO())
    elapsed = time.monotonic() - t0
    assert result.status == "completed", result.error
    train_rows_ = [r for r in rundir.read_jsonl(result.run_dir / rundir.METRICS) if r["split"] == "train"]
    assert train_rows_[0]["metrics"]["train/mean_reward"] == 0.0
    preds = list(rundir.read_jsonl(result.run_dir / rundir.PREDICTIONS / "cmd.jsonl"))
    assert sorted({p["step"] for p in preds}) == [0, 1] and len(preds) == 6
    by_task = {p["task_id"]: p for p in preds if p["step"] == 1}
    assert all(p["score"] == 0.0 and not p["passed"] for p in preds)
    assert "timed out after 1s" in by_task["hang"]["reason"] and "started" in by_task["hang"]["reason"]
    assert "exited with status 1" in by_task["flood"]["reason"] and len(by_task["flood"]["reason"]) < 2000
    assert "exited with status 3" in by_task["crash"]["reason"] and "boom" in by_task["crash"]["reason"]
    assert result.metrics["val/cmd/pass@1"] == 0.0
    # 2 training rollouts + 2 evaluations hit the 1 s timeout: ~4 s of waiting, not 100 s per call
    assert elapsed < 90


def test_the_reliability_table_names_tests_that_exist():
    """docs/reliability.md cites `file::test` (and `::test` for the same file): each must exist."""
    import re

    root = Path(__file__).resolve().parent.parent
    text = (root / "docs" / "reliability.md").read_text()
    cited, current = [], None
    for m in re.finditer(r"`(tests/[\w/]+\.py)?::(\w+)", text):
        current = m.group(1) or current
        cited.append((current, m.group(2)))
    assert len(cited) >= 40
    for file, name in cited:
        assert file and re.search(rf"^def {name}\(", (root / file).read_text(), re.M), f"{file}::{name}"
    for case in re.findall(r"`tests/bad_inputs/([\w/.]+)`", text):
        assert (root / "tests" / "bad_inputs" / case).exists(), case
