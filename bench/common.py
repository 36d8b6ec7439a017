"""What every benchmark in bench/ shares: timing, statistics, machine facts, RESULTS.md sections.

Conventions (all benchmarks):
- one warm-up, then `reps` measured repetitions (>= 5 for RESULTS.md), reported as
  min / median / max;
- a ratio to a peer is computed pair by pair (repetition i of evsys against repetition i of
  the peer, run interleaved or back to back) and its min / median / max reported;
- the 1-minute load average is recorded at the start and the end of every benchmark, next to
  its figures: other work shares this machine;
- each benchmark replaces its own `## <title>` section of bench/RESULTS.md (or writes it to
  `--section-out FILE`, which is how `bench/run.py` assembles the whole file).

No third-party import at module level: peers' workers run this file under bench/.venv-peers.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "RESULTS.md"
CACHE = BENCH / ".cache"
# generated inputs any checkout may reuse (B5's history when B4's is not built here)
SHARED_CACHE = Path(os.environ.get("EVSYS_BENCH_CACHE", "~/.cache/evsys/bench")).expanduser()
PEERS_VENV = BENCH / ".venv-peers"
PEERS_PY = PEERS_VENV / "bin" / "python"
MAIN_PY = ROOT / ".venv" / "bin" / "python"
MODEL = "SmolLM2-135M-Instruct"


# ---------------------------------------------------------------------------------- timing


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def repeat(fn: Callable[[], object], reps: int, warmup: int = 1) -> list[float]:
    """Seconds of each of `reps` calls of fn after `warmup` unmeasured calls."""
    for _ in range(warmup):
        fn()
    return [timed(fn) for _ in range(reps)]


def stats(xs: Sequence[float]) -> tuple[float, float, float]:
    return min(xs), statistics.median(xs), max(xs)


def pairwise(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """num[i] / den[i] for each repetition: the ratio of one pair run side by side."""
    return [a / b for a, b in zip(num, den)]


def load1() -> float:
    return os.getloadavg()[0]


def peak_rss_mb() -> float:
    """This process's peak resident set size, in MB.

    VmHWM, not ru_maxrss: a child inherits its parent's resident size at fork, and Linux keeps
    that in ru_maxrss across exec, so a worker spawned by a big parent would read the parent's."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fmt_s(x: float) -> str:
    if x < 1e-3:
        return f"{x * 1e6:.0f} µs"
    if x < 1:
        return f"{x * 1e3:.1f} ms"
    return f"{x:.2f} s"


def fmt3(xs: Sequence[float], f: Callable[[float], str] = fmt_s) -> str:
    lo, mid, hi = stats(xs)
    return f"{f(lo)} / {f(mid)} / {f(hi)}"


def verdict(ok: bool, miss: str) -> str:
    return "met" if ok else f"**missed**: {miss}"


# ---------------------------------------------------------------------------- the machine


def cpu_model() -> str:
    p = Path("/proc/cpuinfo")
    if p.exists():
        for line in p.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    p = Path("/proc/cpuinfo")
    if p.exists():
        for line in p.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine_facts(torch: Any = None) -> dict[str, Any]:
    flags = cpu_flags()
    facts = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "simd": ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "?",
        "python": platform.python_version(),
        "load1": load1(),
        "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }
    if torch is not None:
        facts["torch"] = torch.__version__
        facts["torch_threads"] = torch.get_num_threads()
    return facts


def matmul_gflops(torch: Any, n: int = 1024, reps: int = 20) -> float:
    """The fp32 matmul rate (GFLOP/s, best of `reps`) at the current thread count: MFU's
    denominator (the best, not the median: it stands for what the cores can do)."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    times = repeat(lambda: a @ b, reps, warmup=2)
    return 2 * n**3 / min(times) / 1e9


def set_threads(torch: Any, n: int | None) -> int:
    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


# ------------------------------------------------------------------------------ processes


def run_json(cmd: Sequence[str], timeout: float, env: dict[str, str] | None = None,
             cwd: Path | None = None) -> dict[str, Any]:
    """Run a worker that prints one JSON object as its last stdout line; stderr streams through."""
    proc = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=str(cwd or ROOT))
    lines = [l for l in proc.stdout.splitlines() if l.strip()]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {proc.returncode}; stdout tail: {lines[-5:]}")
    return json.loads(lines[-1])


def emit(obj: Any) -> None:
    """A worker's answer: one JSON line on stdout."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def peers_available() -> bool:
    return PEERS_PY.exists()


# -------------------------------------------------------------------------------- results


def write_section(title: str, text: str, out: Path | None = None) -> Path:
    """Replace the `## {title}` section of RESULTS.md (up to the next `## `) with `text`,
    or append it; with `out`, write `text` to that file instead (bench/run.py collects them)."""
    text = text.rstrip("\n") + "\n"
    if out is not None:
        out.write_text(text)
        return out
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    lines = old.splitlines(keepends=True)
    head = f"## {title}"
    start = next((i for i, l in enumerate(lines) if l.rstrip() == head), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + text + ("\n" + tail if tail else "")
    RESULTS.write_text(new)
    return RESULTS


def add_common_args(ap: Any) -> None:
    ap.add_argument("--quick", action="store_true", help="the quick size (what `make bench-quick` runs)")
    ap.add_argument("--reps", type=int, default=5, help="measured repetitions after the warm-up")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--section-out", type=Path, default=None,
                    help="write this benchmark's RESULTS.md section to FILE (used by bench/run.py)")


def finish(title: str, text: str, args: Any) -> None:
    print(text)
    if args.section_out is not None:
        write_section(title, text, args.section_out)
    elif not args.no_write:
        log(f"updated {write_section(title, text).relative_to(ROOT)}")


def conditions(load_start: float, load_end: float, extra: str = "") -> str:
    return (f"1-minute load average {load_start:.2f} at the start, {load_end:.2f} at the end"
            + (f"; {extra}" if extra else "") + ".")


def dump(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n")


def mcp_server(ws: Path):
    """The MCP SDK's parameters for spawning `evsys-mcp --workspace ws` over stdio: this
    checkout's .venv script, or (a checkout without one) this interpreter with `-m evsys_mcp`.
    The environment is passed on whole: the SDK's client otherwise passes only a few
    variables (not PYTHONPATH)."""
    from mcp import StdioServerParameters

    script = ROOT / ".venv" / "bin" / "evsys-mcp"
    cmd, pre = (str(script), []) if script.exists() else (sys.executable, ["-m", "evsys_mcp"])
    return StdioServerParameters(command=cmd, args=[*pre, "--workspace", str(ws)], cwd=str(ws),
                                 env=dict(os.environ))
