"""Local engine throughput on the default model: forward+backward and sampling tokens/s.

    .venv/bin/python bench/bench_engine.py [--quick] [--device cpu|cuda|auto] [--reps 5]

Batch 1 and batch 8, a warm-up run, then `--reps` timed repetitions (min / median / max).
Training: forward_backward (cross_entropy on every token) of `batch` datums of `seq` tokens;
the optimizer step is timed apart. Sampling: `batch` different prompts, one sample each,
temperature 1, exactly `gen` new tokens (no early stop), submitted together and then awaited.
The results replace the `## Engine` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "RESULTS.md"
MODEL = "SmolLM2-135M-Instruct"
QUESTIONS = [
    "What is the capital of France?", "Name three primary colours.", "Why is the sky blue?",
    "Write a haiku about rain.", "What is 17 times 23?", "Who wrote Hamlet?",
    "Explain photosynthesis briefly.", "List the planets of the solar system.",
]


def timed(fn: Callable[[], object], reps: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def rate(work: float, seconds: list[float]) -> tuple[float, float, float]:
    """(min, median, max) of work/second over the repetitions."""
    rates = sorted(work / s for s in seconds)
    return rates[0], statistics.median(rates), rates[-1]


def machine_facts(torch, device: str) -> list[str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    facts = [f"device {device}", f"CPU {cpu}", f"{os.cpu_count()} cores ({usable} usable)",
             f"torch {torch.__version__}", f"{torch.get_num_threads()} torch threads",
             f"load average at start {os.getloadavg()[0]:.2f}"]
    if device.startswith("cuda"):
        facts.append(torch.cuda.get_device_name())
    return facts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short sequences (64 tokens, 16 generated)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args(argv)
    seq, gen = (64, 16) if args.quick else (256, 64)

    import torch
    from tinker import types

    from evsys_core import render
    from evsys_core.backends import get_service

    service = get_service("local", device=args.device, seed=0)
    tc = service.create_lora_training_client(MODEL, rank=8)
    tok = tc.get_tokenizer()
    facts = machine_facts(torch, service.device)
    print("; ".join(facts), flush=True)

    text = " ".join(QUESTIONS * 40)
    ids = tok.encode(text)[: seq + 1]
    datum = types.Datum(model_input=types.ModelInput.from_ints(ids[:-1]),
                        loss_fn_inputs={"target_tokens": ids[1:], "weights": [1.0] * seq})
    sampler = tc.base_sampling_client()
    prompts = [types.ModelInput.from_ints(render.user_prompt_tokens(tok, q)) for q in QUESTIONS]
    params = types.SamplingParams(max_tokens=gen, temperature=1.0, stop=[], seed=0)

    rows = []
    for batch in (1, 8):
        fb = timed(lambda: tc.forward_backward([datum] * batch, "cross_entropy").result(), args.reps)
        opt = timed(lambda: tc.optim_step(types.AdamParams(learning_rate=1e-6)).result(), args.reps)

        def sample() -> None:
            futures = [sampler.sample(prompts[i], 1, params) for i in range(batch)]
            for f in futures:
                assert len(f.result().sequences[0].tokens) == gen

        sm = timed(sample, args.reps)
        r_fb, r_sm = rate(batch * seq, fb), rate(batch * gen, sm)
        rows.append((batch, r_fb, statistics.median(opt), r_sm))
        print(f"batch {batch}: forward+backward {r_fb[1]:.0f} tok/s (min {r_fb[0]:.0f}, max {r_fb[2]:.0f}); "
              f"optim_step {statistics.median(opt) * 1000:.0f} ms; sampling {r_sm[1]:.1f} tok/s "
              f"(min {r_sm[0]:.1f}, max {r_sm[2]:.1f})", flush=True)

    section = render_section(rows, facts, seq, gen, args)
    if not args.no_write:
        write_section(RESULTS, section)
        print(f"wrote the Engine section of {RESULTS}")
    return 0


def render_section(rows, facts, seq, gen, args) -> str:
    cmd = "bench/bench_engine.py" + (" --quick" if args.quick else "")
    lines = [
        "## Engine", "",
        f"Local engine on {MODEL} (LoRA rank 8), `{cmd}`, {dt.date.today().isoformat()}: "
        f"{args.reps} timed repetitions after a warm-up; tokens/s as min / median / max.",
        f"Machine: {'; '.join(facts)}.", "",
        f"| batch | forward+backward tok/s ({seq}-token datums) | optim_step ms (median) "
        f"| sampling tok/s ({gen} new tokens per prompt) |",
        "|---|---|---|---|",
    ]
    for batch, fb, opt, sm in rows:
        lines.append(f"| {batch} | {fb[0]:.0f} / {fb[1]:.0f} / {fb[2]:.0f} | {opt * 1000:.0f} "
                     f"| {sm[0]:.1f} / {sm[1]:.1f} / {sm[2]:.1f} |")
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace the `## Engine` section of `path` (up to the next `## `), or append it."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, l in enumerate(lines) if l.rstrip() == "## Engine"), None)
    if start is None:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        text = "".join(lines[:start]) + section + ("\n" + tail if tail else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
