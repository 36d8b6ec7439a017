"""bench/gpu_check.sh and bench/gpu_check.py, the parts that need no GPU: the script parses, its
dry run lists every step without installing or running anything, a bad argument is refused,
and on a machine without CUDA the section says it was not run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def sh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *args], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "EVSYS_PY": sys.executable})


def test_the_gpu_check_script_parses_and_its_dry_run_lists_each_step():
    assert sh("-n", str(SCRIPT)).returncode == 0
    done = sh(str(SCRIPT), "--dry-run")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("1. engine checks on cuda (bf16)") for line in lines)
    assert any("bench_sdft.py --device cuda --reps 3" in line for line in lines)
    assert any("bench_engine.py --device cuda --reps 3" in line for line in lines)


def test_the_gpu_check_script_refuses_an_unknown_argument():
    done = sh(str(SCRIPT), "--now")
    assert done.returncode == 2 and "usage: bash bench/gpu_check.sh [--dry-run]" in done.stderr


def test_without_cuda_the_gpu_section_says_not_run(tmp_path, monkeypatch):
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.md"
    assert gpu_check.main(["--section-out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("## GPU check\n") and "not run: no GPU available" in text
