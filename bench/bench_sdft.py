"""B1 — one SDFT optimizer step: evsys's local engine against TRL 1.16's `trl.experimental.sdft`.

    .venv/bin/python bench/bench_sdft.py [--quick] [--reps 5] [--threads N] [--no-write]
    .venv/bin/python bench/bench_sdft.py --worker evsys --steps 3     # one side alone, JSON out

Same task on both sides: SmolLM2-135M-Instruct (the GGUF converted once to a local HF
directory, float32), the 64 capital questions of bench/capitals.py with the gold answer as
privileged context ("{question}\\n\\nHint: the answer is {answer}."), batch 8 prompts x 1
completion, LoRA rank 8 (alpha 32) on all linear layers, at most 32 completion tokens,
temperature 1 (no top-k / top-p filter on sampling), distillation over top-K 20 with the
forward KL(teacher || student), the frozen base model (adapter disabled) as the teacher,
learning rate 1e-4, seed 0. TRL gets `bf16=False`, `num_generations=1`,
`distillation_alpha=0` (forward KL), `distillation_topk=20`.

Each side runs in its own subprocess (so peak RSS is its own): loads the model, runs one
warm-up step, then `--reps` measured steps; the sides run one after the other, evsys
first, with the same thread count. Per step:
seconds, completion tokens (the sampled tokens, EOS included), and the model FLOPs the step
needed (2·P per token for every forward, 2·P more per trained token for the backward through the
frozen base, P = the matmul parameters incl. lm_head, plus attention scores); MFU divides the
achieved FLOP/s by a measured fp32 matmul rate on the same threads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import capitals  # noqa: E402
import common  # noqa: E402
from common import log  # noqa: E402

TITLE = "B1 — SDFT step vs TRL"
BATCH, RANK, ALPHA, MAX_TOKENS, TOPK, LR, SEED = 8, 8, 32, 32, 20, 1e-4, 0
TARGET_RATIO = 2.0


# ------------------------------------------------------------------------------- FLOPs


def model_dims(config: dict) -> dict:
    h, L = config["hidden_size"], config["num_hidden_layers"]
    inter, vocab = config["intermediate_size"], config["vocab_size"]
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    hd = h // heads
    per_layer = h * heads * hd + 2 * h * kv * hd + heads * hd * h + 3 * h * inter
    return {"matmul_params": L * per_layer + h * vocab, "layers": L, "attn_dim": heads * hd}


def forward_flops(dims: dict, context: int, new: int) -> float:
    """FLOPs of a forward over `new` tokens that follow `context` cached ones (one sequence)."""
    linear = 2 * dims["matmul_params"] * new
    # scores and weighted sum: 2 matmuls of (new x d) by (d x keys), keys growing 1..context+new
    keys = new * context + new * (new + 1) / 2
    return linear + 4 * dims["layers"] * dims["attn_dim"] * keys


def step_flops(dims: dict, prompts: list[int], teacher_prompts: list[int], completions: list[int]) -> float:
    """The work one SDFT step needs, whoever does it: rollout (prefill + one token at a time),
    teacher scoring of prompt+completion, and the student's forward + backward on its own
    prompt+completion (the backward through a frozen base costs about one more forward)."""
    total = 0.0
    for p, t, c in zip(prompts, teacher_prompts, completions):
        total += forward_flops(dims, 0, p) + forward_flops(dims, p, c)   # rollout
        total += forward_flops(dims, 0, t + c)                          # teacher
        total += 2 * forward_flops(dims, 0, p + c)                      # train fwd + bwd
    return total


# ------------------------------------------------------------------------------- workers


def worker_evsys(args) -> dict:
    sys.path.insert(0, str(common.ROOT))
    import evsys_core.backends.service  # noqa: F401  (first, as in `evsys run`)
    import numpy as np
    import torch

    threads = common.set_threads(torch, args.threads)
    os.environ["EVSYS_NUM_THREADS"] = str(threads)
    from evsys_core.algorithms import sdft
    from evsys_core.algorithms.context import TrainContext
    from evsys_core.backends import get_service
    from evsys_core.config import SDFTParams
    from evsys_core.data import PromptExample

    t0 = time.perf_counter()
    if args.scaling:  # the step-0 teacher ceiling (outside the measured steps) on one batch only
        from evsys_core.benchmarks import ceiling

        ceiling.MAX_PROMPTS = args.batch
    params = SDFTParams(learning_rate=LR, batch_size=args.batch, lora_rank=RANK, topk=TOPK, max_tokens=args.max_tokens,
                        temperature=1.0, demo_template=capitals.DEMO_TEMPLATE, max_steps=args.steps)
    rows = [PromptExample(**r) for r in capitals.rows()]
    service = get_service("local", device=args.device, seed=SEED)
    tc = service.create_lora_training_client(common.MODEL, rank=RANK)
    tok = tc.get_tokenizer()
    load_s = time.perf_counter() - t0

    steps: list[dict] = []
    state = {"t": 0.0}

    def on_end(step: int, metrics: dict) -> None:
        now = time.perf_counter()
        steps.append({"step": step, "seconds": now - state["t"], "metrics": metrics})
        state["t"] = time.perf_counter()

    # Where each step's time goes: the student's rollout, the teacher's scoring, the training.
    from evsys_core.backends import sampling, trainer

    phase = {"rollout": 0.0, "teacher": 0.0, "train": 0.0}

    def timed_method(cls, name, key_of):
        orig = getattr(cls, name)

        def wrapper(self, *a, **k):
            t = time.perf_counter()
            try:
                return orig(self, *a, **k)
            finally:
                phase[key_of(self)] += time.perf_counter() - t
        setattr(cls, name, wrapper)

    timed_method(sampling.LocalSamplingClient, "_flush",
                 lambda self: "teacher" if self._weights.tensors is None else "rollout")
    timed_method(trainer.LocalTrainingClient, "_run", lambda self: "train")
    timed_method(trainer.LocalTrainingClient, "optim_step", lambda self: "train")

    def on_end_phases(step: int, metrics: dict) -> None:
        on_end(step, metrics)
        steps[-1]["phases"] = dict(phase)
        for k in phase:
            phase[k] = 0.0
        state["t"] = time.perf_counter()

    ctx = TrainContext(params=params, training_client=tc, rows=rows, seed=SEED, on_step_end=on_end_phases)
    # Token counts for the FLOP model: each step's rollout futures (the student sampler's).
    comp_lens: list[list[int]] = []
    orig_sampler = ctx.sampler

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def sample(self, prompt, n, sp, **kw):
            fut = self.inner.sample(prompt, n, sp, **kw)
            comp_lens[-1].append(fut)
            return fut

    def sampler():
        comp_lens.append([])
        return Counting(orig_sampler())

    ctx.sampler = sampler  # type: ignore[method-assign]
    state["t"] = time.perf_counter()
    sdft.train(ctx)
    for step, futs in zip(steps, comp_lens):
        batch = ctx.batch_at(step["step"])
        prompts = [len(sdft.student_prompt(tok, params, ex)) for ex in batch]
        tprompts = [len(sdft.teacher_prompt(tok, params, ex)) for ex in batch]
        comps = [len(f.result().sequences[0].tokens) for f in futs]
        step.update(prompt_tokens=prompts, teacher_prompt_tokens=tprompts, completion_tokens=comps)
    return {"side": "evsys", "threads": threads, "load_s": load_s, "steps": steps,
            "config": json.loads(tc.model.base_model.model.config.to_json_string()),
            "peak_rss_mb": common.peak_rss_mb(), "load_end": common.load1(), "numpy": np.__version__}


def worker_trl(args) -> dict:
    import torch

    threads = common.set_threads(torch, args.threads)
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    t0 = time.perf_counter()
    gpu = args.device != "cpu"
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.bfloat16 if gpu else torch.float32)
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    rows = [{"prompt": [{"role": "user", "content": r["inputs"]["question"]}],
             "privileged_context": r["expected"]} for r in capitals.rows()]
    ds = Dataset.from_list(rows)
    cfg = SDFTConfig(
        output_dir=str(common.CACHE / "trl-out"), per_device_train_batch_size=args.batch, num_generations=1,
        gradient_accumulation_steps=1, max_steps=args.steps, learning_rate=LR, bf16=gpu, fp16=False,
        use_cpu=not gpu, max_completion_length=args.max_tokens, temperature=1.0, top_k=0, top_p=1.0,
        distillation_mode="topk_logits", distillation_topk=TOPK, distillation_alpha=0.0,
        teacher_model_kind="base", teacher_prompt_template="{prompt}\n\nHint: the answer is {privileged_context}.",
        logging_steps=1, save_strategy="no", report_to=[], seed=SEED, dataloader_num_workers=0,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0,
    )
    peft_cfg = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear",
                          task_type="CAUSAL_LM")
    steps: list[dict] = []
    state = {"t": 0.0}

    class Timer(TrainerCallback):
        def on_step_begin(self, a, s, c, **kw):
            state["t"] = time.perf_counter()

        def on_step_end(self, a, s, c, **kw):
            steps.append({"step": s.global_step, "seconds": time.perf_counter() - state["t"],
                          "phases": dict(phase)})
            for k in phase:
                phase[k] = 0.0

    trainer = SDFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=peft_cfg,
                          callbacks=[Timer()])
    # The completions each step sampled, and the prompt lengths, for the FLOP model.
    batches: list[dict] = []
    orig = trainer._prepare_training_batch

    def prepare(inputs):
        batch = orig(inputs)
        lens = batch["raw_completion_lengths"].tolist()
        p = batch["prompt_mask"].sum(1).tolist()
        t = (batch["teacher_attention_mask"].sum(1) - batch["completion_mask"].sum(1)).tolist()
        batches.append({"completion_tokens": lens, "prompt_tokens": p, "teacher_prompt_tokens": t})
        return batch

    trainer._prepare_training_batch = prepare  # type: ignore[method-assign]
    # Where each step's time goes: generation, then the loss (teacher forward + student
    # forward), then the rest (backward, optimizer, bookkeeping) as the remainder.
    phase = {"rollout": 0.0, "teacher+student forward": 0.0}

    def timing(name, key):
        orig_fn = getattr(trainer, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return orig_fn(*a, **k)
            finally:
                phase[key] += time.perf_counter() - t
        setattr(trainer, name, wrapper)

    timing("_generate", "rollout")
    timing("compute_loss", "teacher+student forward")
    load_s = time.perf_counter() - t0
    state["t"] = time.perf_counter()
    trainer.train()
    for s, b in zip(steps, batches):
        s.update(b)
    return {"side": "trl", "threads": threads, "load_s": load_s, "steps": steps, "trl": trl.__version__,
            "config": model.config.to_dict() if hasattr(model.config, "to_dict") else {},
            "peak_rss_mb": common.peak_rss_mb(), "load_end": common.load1()}


# ------------------------------------------------------------------------------- driver


def model_dir() -> str:
    sys.path.insert(0, str(common.ROOT))
    from evsys_core.backends.models import ensure_converted, resolve_local_model

    return str(ensure_converted(resolve_local_model(common.MODEL)))


def summarise(res: dict, reps: int, peak_gflops: float) -> dict:
    dims = model_dims(res["config"])
    measured = res["steps"][-reps:]
    secs = [s["seconds"] for s in measured]
    toks = [sum(s["completion_tokens"]) for s in measured]
    flops = [step_flops(dims, s["prompt_tokens"], s["teacher_prompt_tokens"], s["completion_tokens"])
             for s in measured]
    return {
        "seconds": secs,
        "tok_s": [t / s for t, s in zip(toks, secs)],
        "tokens": toks,
        "tflop": [f / 1e12 for f in flops],
        "mfu": [f / s / (peak_gflops * 1e9) for f, s in zip(flops, secs)],
        "rss_mb": res["peak_rss_mb"],
        "load_s": res["load_s"],
        "gflops_peak": peak_gflops,
        "threads": res["threads"],
        "phases": {k: [s["phases"][k] for s in measured] for k in measured[0].get("phases", {})},
    }


def section(ev: dict, tr: dict | None, args, loads: list[float], note: str) -> str:
    f1 = lambda x: f"{x:.1f}"  # noqa: E731
    f2 = lambda x: f"{x:.2f}"  # noqa: E731
    pct = lambda x: f"{x * 100:.1f}%"  # noqa: E731
    gpu = args.device != "cpu"
    cmd = "bench/bench_sdft.py" + (" --quick" if args.quick else "") + (f" --device {args.device}" if gpu else "")
    dtype = f"bf16 on {args.device} (MFU below is against the CPU matmul rate: ignore it)" if gpu else "fp32"
    lines = [
        f"## {TITLE}", "",
        f"`{cmd}`: {common.MODEL} {dtype}, 64 capital prompts with the answer as privileged context, batch 8, "
        f"LoRA r{RANK} all linear, <= {MAX_TOKENS} completion tokens, temperature 1, top-K {TOPK} forward-KL "
        f"distillation, frozen base teacher; {args.steps_run} steps each: 1 warm-up + {args.reps} measured, "
        f"{ev['threads']} torch threads on both sides, each side in its own process (evsys first). "
        + common.conditions(loads[0], loads[-1]), "",
        "| side | s / optimizer step | completion tok/s | completion tokens / step | model TFLOP / step "
        "| MFU | peak RSS | model load |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def row(name: str, r: dict) -> str:
        return (f"| {name} | {common.fmt3(r['seconds'], f2)} | {common.fmt3(r['tok_s'], f1)} | "
                f"{common.fmt3(r['tokens'], lambda x: f'{x:.0f}')} | {common.fmt3(r['tflop'], f2)} | "
                f"{common.fmt3(r['mfu'], pct)} | {r['rss_mb']:.0f} MB | {r['load_s']:.1f} s |")

    lines.append(row("evsys", ev))
    if tr is not None:
        lines.append(row(f"TRL {args.trl_version}", tr))
        ratio = common.pairwise(ev["tok_s"], tr["tok_s"])
        step_ratio = common.pairwise(tr["seconds"], ev["seconds"])
        lo, mid, hi = common.stats(ratio)
        ok_speed = mid >= TARGET_RATIO
        ok_mem = ev["rss_mb"] <= tr["rss_mb"]
        lines += [
            "",
            "| ratio, pair by pair (rep i of evsys / rep i of TRL) | min | median | max | target | |",
            "|---|---|---|---|---|---|",
            f"| completion tok/s, evsys / TRL | {lo:.2f}x | {mid:.2f}x | {hi:.2f}x | >= {TARGET_RATIO:.0f}x | "
            f"{common.verdict(ok_speed, f'{mid:.2f}x of {TARGET_RATIO:.0f}x ({(TARGET_RATIO - mid) / TARGET_RATIO * 100:.0f}% short)')} |",
            "| s / step, TRL / evsys | " + " | ".join(f"{x:.2f}x" for x in common.stats(step_ratio)) + " |  |  |",
            f"| peak RSS, evsys / TRL | {ev['rss_mb'] / tr['rss_mb']:.2f} | | | <= 1 | "
            f"{common.verdict(ok_mem, '%.0f MB over' % (ev['rss_mb'] - tr['rss_mb']))} |",
        ]
    elif args.only == "evsys":
        lines += ["", "TRL was not run (`--only evsys`)."]
    else:
        lines += ["", "TRL was not measured: bench/.venv-peers is missing (`make bench-peers` sets it up)."]
    lines += ["", "Where a step's time goes (median seconds of the measured steps; evsys's train phase is "
              "forward + backward + optimizer step; TRL's backward is in its rest):", "",
              "| side | " + " | ".join(["phase", "s / step (median)", "share"]) + " |", "|---|---|---|---|"]
    for name, r in (("evsys", ev), (f"TRL {getattr(args, 'trl_version', '')}", tr)):
        if r is None:
            continue
        total = common.stats(r["seconds"])[1]
        rest = list(r["seconds"])
        for k, xs in r["phases"].items():
            mid = common.stats(xs)[1]
            rest = [a - b for a, b in zip(rest, xs)]
            lines.append(f"| {name} | {k} | {mid:.2f} | {mid / total * 100:.0f}% |")
        mid = common.stats(rest)[1]
        lines.append(f"| {name} | rest ({'bookkeeping' if name == 'evsys' else 'backward, optimizer, bookkeeping'}) "
                     f"| {mid:.2f} | {mid / total * 100:.0f}% |")
    lines += ["", f"MFU = the step's model FLOPs (counted the same way for both sides from their own prompts and "
              f"completions) / its seconds / the fp32 matmul rate ({ev['gflops_peak']:.0f} GFLOP/s: the "
              f"best of 20 1024x1024 matmuls on {ev['threads']} threads, measured by the driver before the two sides "
              "ran). "
              "Tokens/s counts the sampled completion tokens: sampling at temperature 1 gives each side "
              "different completions, so tok/s (not s/step) is the fair speed."]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


NOTE_FILE = common.BENCH / "notes" / "sdft.md"


# ------------------------------------------------------------------------------- scaling

SCALING_TITLE = "B1s — SDFT step scaling vs TRL"
SCALING_BATCHES, SCALING_TOKENS = (1, 8, 32), (32, 128)
PLOT = common.BENCH / "plots" / "b1_scaling.png"
PEER_ENV = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1"}


def scaling(args) -> int:
    """B1's step at each batch x max_tokens, both sides, each in fresh processes: a table and a plot."""
    threads = args.threads or common.usable_cores()
    reps = 1 if args.quick else min(args.reps, 2)
    mdir = model_dir()
    import torch

    common.set_threads(torch, threads)
    peak = common.matmul_gflops(torch)
    loads = [common.load1()]
    have_trl = common.peers_available() and args.only != "evsys"
    rows = []
    for max_tokens in SCALING_TOKENS:
        for batch in SCALING_BATCHES:
            base = [str(Path(__file__).resolve()), "--steps", str(reps + 1), "--threads", str(threads),
                    "--model-dir", mdir, "--batch", str(batch), "--max-tokens", str(max_tokens), "--scaling"]
            ev = summarise(common.run_json([str(common.MAIN_PY), *base, "--worker", "evsys"], timeout=3600), reps, peak)
            tr = None
            if have_trl:
                tr = summarise(common.run_json([str(common.PEERS_PY), *base, "--worker", "trl"], timeout=3600,
                                               env=PEER_ENV), reps, peak)
            rows.append((batch, max_tokens, ev, tr))
            log(f"B1s batch {batch} x {max_tokens}: evsys {ev['seconds']} s, TRL {tr and tr['seconds']} s")
    loads.append(common.load1())
    common.finish(SCALING_TITLE, scaling_section(rows, reps, threads, loads, args.quick, have_trl), args)
    return 0


def scaling_section(rows: list, reps: int, threads: int, loads: list[float], quick: bool, have_trl: bool,
                    plot: Path = PLOT) -> str:
    """The B1s section: a row per (batch, max_tokens) point and, with matplotlib, `plot`."""
    med = lambda xs: common.stats(xs)[1]  # noqa: E731
    lines = [f"## {SCALING_TITLE}", "",
             f"`bench/bench_sdft.py --scaling{' --quick' if quick else ''}`: B1's SDFT step (same model, "
             f"LoRA, top-K {TOPK}, temperature 1) at batch {', '.join(map(str, SCALING_BATCHES))} x at most "
             f"{' or '.join(map(str, SCALING_TOKENS))} completion tokens; each point a fresh process per side, "
             f"1 warm-up + {reps} measured step{'s' if reps > 1 else ''} (medians shown; a quick size: the "
             f"ratios carry the noise of {reps} step{'s' if reps > 1 else ''}), {threads} torch threads. "
             + common.conditions(loads[0], loads[-1]), "",
             "| batch | max tokens | evsys s/step | TRL s/step | evsys tok/s | TRL tok/s | tok/s evsys / TRL "
             "| evsys peak RSS | TRL peak RSS |", "|---|---|---|---|---|---|---|---|---|"]
    for batch, mt, ev, tr in rows:
        if tr:
            peer = [f"{med(tr['seconds']):.2f}", f"{med(tr['tok_s']):.1f}",
                    f"{med(ev['tok_s']) / med(tr['tok_s']):.2f}x", f"{tr['rss_mb']:.0f} MB"]
        else:
            peer = ["—"] * 4
        lines.append(f"| {batch} | {mt} | {med(ev['seconds']):.2f} | {peer[0]} | {med(ev['tok_s']):.1f} | "
                     f"{peer[1]} | {peer[2]} | {ev['rss_mb']:.0f} MB | {peer[3]} |")
    if not have_trl:
        lines += ["", "TRL was not measured: bench/.venv-peers is missing (`make bench-peers` sets it up)."]
    from evsys_core import plotting

    if plotting.available():
        panels = []
        for key, title in (("seconds", "seconds per step"), ("tok_s", "completion tokens/s")):
            series = []
            for mt in SCALING_TOKENS:
                for side, idx in (("evsys", 2), ("TRL", 3)):
                    pts = [(r[0] * mt, med(r[idx][key])) for r in rows if r[1] == mt and r[idx]]
                    if pts:
                        series.append((f"{side}, <= {mt} tokens", pts))
            panels.append(plotting.Panel(title, series, ylabel=title, xlabel="batch x max tokens (log)", logx=True))
        plot.parent.mkdir(exist_ok=True)
        plotting.draw(panels, plot, size=(10, 4))
        lines += ["", f"![B1 scaling]({plot.relative_to(common.BENCH) if plot.is_relative_to(common.BENCH) else plot})"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(ap)
    ap.add_argument("--worker", choices=["evsys", "trl"])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both sides (default: cores)")
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--only", choices=["evsys", "trl"], default=None)
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda: both sides on it (bf16 on cuda)")
    ap.add_argument("--batch", type=int, default=BATCH, help=argparse.SUPPRESS)
    ap.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help=argparse.SUPPRESS)
    ap.add_argument("--scaling", action="store_true",
                    help=f"B1 at batch {SCALING_BATCHES} x max_tokens {SCALING_TOKENS} instead (section '{SCALING_TITLE}')")
    args = ap.parse_args(argv)
    if args.quick:
        args.reps = min(args.reps, 5)
    args.steps = args.steps or args.reps + 1
    if args.worker:
        res = worker_evsys(args) if args.worker == "evsys" else worker_trl(args)
        common.emit(res)
        return 0
    if args.scaling:
        return scaling(args)

    threads = args.threads or common.usable_cores()
    mdir = model_dir()
    import torch

    common.set_threads(torch, threads)
    peak = common.matmul_gflops(torch)  # MFU's denominator, one figure for both sides
    loads = [common.load1()]
    base = [str(Path(__file__).resolve()), "--steps", str(args.steps), "--threads", str(threads),
            "--model-dir", mdir, "--device", args.device]
    ev = tr = None
    if args.only != "trl":
        log(f"B1 evsys: {args.steps} steps on {threads} threads")
        ev_raw = common.run_json([str(common.MAIN_PY), *base, "--worker", "evsys"], timeout=3600)
        loads.append(ev_raw["load_end"])
        ev = summarise(ev_raw, args.reps, peak)
        log(f"  evsys s/step {ev['seconds']}, tok/s {[round(x, 1) for x in ev['tok_s']]}, rss {ev['rss_mb']:.0f} MB")
    if args.only != "evsys" and common.peers_available():
        log(f"B1 TRL: {args.steps} steps on {threads} threads")
        tr_raw = common.run_json([str(common.PEERS_PY), *base, "--worker", "trl"], timeout=3600,
                                 env={"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                                      "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
        loads.append(tr_raw["load_end"])
        tr = summarise(tr_raw, args.reps, peak)
        args.trl_version = tr_raw["trl"]
        log(f"  TRL s/step {tr['seconds']}, tok/s {[round(x, 1) for x in tr['tok_s']]}, rss {tr['rss_mb']:.0f} MB")
    if ev is None:
        return 0
    args.steps_run = args.steps
    note = NOTE_FILE.read_text().strip() if NOTE_FILE.exists() else ""
    common.finish(TITLE, section(ev, tr, args, loads, note), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
