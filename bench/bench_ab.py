"""Engine changes, A/B: each performance change made for issue 7, switched off and on in the same
process, interleaved repetition by repetition, so that the effect holds on a busy machine.

    .venv/bin/python bench/bench_ab.py [--quick] [--reps 5] [--threads N]

On the B1 workload (8 capital prompts of bench/capitals.py, LoRA r8, 32 completion tokens):
  1. shared-prefix prefill (local_sampler.shared_prefix): the prefix every prompt of a batch
     shares (the chat template's system prompt and headers) prefilled once, not once per row.
     Measured on the teacher's scoring (8 teacher prompts + 32-token completions, prompt
     logprobs and top-20) and on the rollout (8 prompts, exactly 32 sampled tokens each).
  2. forward_backward in passes of at most TRAIN_TOKENS_PER_PASS padded tokens (local.py)
     against one pass over the whole batch: time (interleaved) and the process's peak RSS
     (each variant in a fresh process doing one load and one forward_backward).
  3. (issue 17) logits only where read: the teacher's scoring asks top-20 for its completion
     positions only (prompt_logprobs_last_n, as SDFT now does) against every position; and
     forward_backward's lm_head backward only over the positions with loss (trainer.SPAN_LOGITS).
  4. (issue 17) a KV cache with room reserved for the whole decode (kv_cache.py) against
     transformers' DynamicCache, which grows by concatenation: the rollout.
  5. (issue 17) bf16 decode weights (EVSYS_DECODE_DTYPE=bf16): how far sampled logprobs move
     from forward's float32 ones. Where the CPU has no native bf16 the packed products are
     emulated (weights and inputs rounded to bf16, float32 accumulation, as oneDNN computes
     them), which gives the agreement but not the speed.
  6. OMP_WAIT_POLICY=PASSIVE against OpenMP's default spinning (an experiment: evsys leaves
     it unset): the rollout, each repetition a fresh process per variant, alternating. Under
     contention passive waiting avoids a collapse; on a quiet machine it costs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import capitals  # noqa: E402
import common  # noqa: E402
from common import log  # noqa: E402

TITLE = "Engine changes, A/B"
OFF = 10**9


def datums(tok, n: int = 8, completion: int = 32):
    """SDFT-shaped datums: the student prompt, a 32-token completion, top-20 soft targets on it."""
    import numpy as np
    from tinker import types

    from evsys_core import render

    rng = np.random.default_rng(0)
    out = []
    for r in capitals.rows()[:n]:
        prompt = render.user_prompt_tokens(tok, r["inputs"]["question"])
        comp = rng.integers(0, 49152, completion).tolist()
        ids = prompt + comp[:-1]
        k = 20
        tg = np.zeros((len(ids), k), np.int64)
        w = np.zeros((len(ids), k), np.float32)
        tg[len(prompt) - 1:] = rng.integers(0, 49152, (completion, k))
        w[len(prompt) - 1:] = 1.0 / k
        out.append(types.Datum(model_input=types.ModelInput.from_ints(ids),
                               loss_fn_inputs={"target_tokens": tg, "weights": w}))
    return out


def omp_worker(threads: int) -> dict:
    """One rollout (8 prompts x 32 tokens) after a warm-up one, in this fresh process."""
    sys.path.insert(0, str(common.ROOT))
    import evsys_core.backends.service  # noqa: F401  (first, as in `evsys run`)
    import torch
    from tinker import types

    from evsys_core import render
    from evsys_core.backends import get_service

    common.set_threads(torch, threads)
    tc = get_service("local", device="cpu", seed=0).create_lora_training_client(common.MODEL, rank=8)
    tok = tc.get_tokenizer()
    sampler = tc.save_weights_and_get_sampling_client()
    roll = types.SamplingParams(max_tokens=32, temperature=1.0, stop=[], seed=0)
    prompts = [render.user_prompt_tokens(tok, r["inputs"]["question"]) for r in capitals.rows()[:8]]

    def rollout():
        for f in [sampler.sample(types.ModelInput.from_ints(p), 1, roll) for p in prompts]:
            f.result()

    rollout()
    return {"seconds": common.timed(rollout), "policy": os.environ.get("OMP_WAIT_POLICY")}


def rss_worker(budget: int, threads: int) -> dict:
    sys.path.insert(0, str(common.ROOT))
    import evsys_core.backends.service  # noqa: F401
    import torch

    common.set_threads(torch, threads)
    sys.path.insert(0, str(common.ROOT))
    import evsys_core.backends.trainer as local
    from evsys_core.backends import get_service

    local.TRAIN_TOKENS_PER_PASS = budget
    tc = get_service("local", device="cpu", seed=0).create_lora_training_client(common.MODEL, rank=8)
    data = datums(tc.get_tokenizer())
    tc.forward_backward(data[:1], "cross_entropy").result()  # touch the weights first
    before = common.peak_rss_mb()
    t = time.perf_counter()
    tc.forward_backward(data, "cross_entropy").result()
    return {"seconds": time.perf_counter() - t, "peak_rss_mb": common.peak_rss_mb(), "before_mb": before}


def bf16_agreement(tc, sampler, prompts) -> dict:
    """max / mean |sampled logprob − forward logprob| with float32 and with bf16 decode weights."""
    import contextlib

    import numpy as np
    import torch
    from tinker import types

    import evsys_core.backends.packed as packed

    native = packed.torch.ops.mkldnn._is_mkldnn_bf16_supported()

    @contextlib.contextmanager
    def bf16():
        if native:
            os.environ["EVSYS_DECODE_DTYPE"] = "bf16"
            try:
                yield
            finally:
                del os.environ["EVSYS_DECODE_DTYPE"]
            return
        eff, fwd = packed._effective_weight, packed._packed_forward
        round_ = lambda t: None if t is None else t.to(torch.bfloat16).float()  # noqa: E731

        def weight(module):
            found = eff(module)
            return None if found is None else (round_(found[0]), round_(found[1]))

        def forward(p, b):
            inner = fwd(p, b)
            return lambda x, *a, **k: inner(round_(x), *a, **k)

        packed._effective_weight, packed._packed_forward = weight, forward
        try:
            yield
        finally:
            packed._effective_weight, packed._packed_forward = eff, fwd

    params = types.SamplingParams(max_tokens=64, temperature=1.0, stop=[], seed=1)
    out = {}
    for name, ctx in (("float32 (default)", contextlib.nullcontext),
                      ("bf16" + ("" if native else ", emulated: no native bf16 on this CPU"), bf16)):
        with ctx():
            seqs = [f.result().sequences[0] for f in
                    [sampler.sample(types.ModelInput.from_ints(p), 1, params) for p in prompts]]
        data = [types.Datum(model_input=types.ModelInput.from_ints(p + s.tokens[:-1]),
                            loss_fn_inputs={"target_tokens": (p + s.tokens)[1:],
                                            "weights": [0.0] * (len(p) + len(s.tokens) - 1)})
                for p, s in zip(prompts, seqs)]
        fwd = tc.forward(data, "cross_entropy").result().loss_fn_outputs
        gaps = np.concatenate([np.abs(o["logprobs"].to_numpy()[len(p) - 1:] - np.asarray(s.logprobs))
                               for o, p, s in zip(fwd, prompts, seqs)])
        out[name] = {"max": float(gaps.max()), "mean": float(gaps.mean()), "n": int(gaps.size)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(ap)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rss-worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--omp-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    threads = args.threads or common.usable_cores()
    if args.rss_worker is not None:
        common.emit(rss_worker(args.rss_worker, threads))
        return 0
    if args.omp_worker:
        common.emit(omp_worker(threads))
        return 0

    sys.path.insert(0, str(common.ROOT))
    import evsys_core.backends.service  # noqa: F401  (first, as in `evsys run`)
    import torch

    common.set_threads(torch, threads)
    os.environ["EVSYS_NUM_THREADS"] = str(threads)
    sys.path.insert(0, str(common.ROOT))
    from tinker import types

    import evsys_core.backends.trainer as local
    import evsys_core.backends.local_sampler as ls
    from evsys_core import render
    from evsys_core.backends import get_service

    loads = [common.load1()]
    tc = get_service("local", device="cpu", seed=0).create_lora_training_client(common.MODEL, rank=8)
    tok = tc.get_tokenizer()
    rows = capitals.rows()[:8]
    student = [render.user_prompt_tokens(tok, r["inputs"]["question"]) for r in rows]
    teacher = [render.user_prompt_tokens(tok, capitals.DEMO_TEMPLATE.format(prompt=r["inputs"]["question"],
                                                                             expected=r["expected"])) for r in rows]
    sampler = tc.save_weights_and_get_sampling_client()
    base = tc.base_sampling_client()
    roll = types.SamplingParams(max_tokens=32, temperature=1.0, stop=[], seed=0)
    comps = [f.result().sequences[0].tokens for f in [sampler.sample(types.ModelInput.from_ints(p), 1, roll)
                                                       for p in student]]
    score = types.SamplingParams(max_tokens=1, temperature=0.0)
    shared = ls.shared_prefix(teacher)

    def teacher_scoring():
        fs = [base.sample(types.ModelInput.from_ints(t + c), 1, score, include_prompt_logprobs=True,
                          topk_prompt_logprobs=20) for t, c in zip(teacher, comps)]
        for f in fs:
            f.result()

    def rollout():
        fs = [sampler.sample(types.ModelInput.from_ints(p), 1, roll) for p in student]
        for f in fs:
            f.result()

    last_n = {"on": True}

    def teacher_completion_only():
        fs = [base.sample(types.ModelInput.from_ints(t + c), 1, score, include_prompt_logprobs=True,
                          topk_prompt_logprobs=20, prompt_logprobs_last_n=len(c) if last_n["on"] else None)
              for t, c in zip(teacher, comps)]
        for f in fs:
            f.result()

    data = datums(tok)

    def train():
        tc.forward_backward(data, "cross_entropy").result()
        tc._engine.net.zero_grad(set_to_none=True)

    def toggle(setter, off, on, fn):
        def run(which):
            setter(off if which == "off" else on)
            return common.timed(fn)
        return run

    import evsys_core.backends.kv_cache as kv_cache

    cases = [
        ("logits only where read: teacher top-20 over the completion only (8 x prompt+32 tokens)",
         toggle(lambda v: last_n.update(on=v), False, True, teacher_completion_only)),
        ("logits only where read: lm_head backward over the loss span only (8 SDFT datums)",
         toggle(lambda v: setattr(local, "SPAN_LOGITS", v), False, True, train)),
        ("reserved KV cache vs growth by concatenation: rollout (8 prompts x 32 sampled tokens)",
         toggle(lambda v: setattr(kv_cache, "ENABLED", v), False, True, rollout)),
        ("shared-prefix prefill: teacher scoring (8 x prompt+32 tokens, top-20)",
         toggle(lambda v: setattr(ls, "MIN_SHARED_PREFIX", v), OFF, ls.MIN_SHARED_PREFIX, teacher_scoring)),
        ("shared-prefix prefill: rollout (8 prompts x 32 sampled tokens)",
         toggle(lambda v: setattr(ls, "MIN_SHARED_PREFIX", v), OFF, ls.MIN_SHARED_PREFIX, rollout)),
        (f"forward_backward in passes of <= {local.TRAIN_TOKENS_PER_PASS} tokens (8 SDFT datums)",
         toggle(lambda v: setattr(local, "TRAIN_TOKENS_PER_PASS", v), OFF, local.TRAIN_TOKENS_PER_PASS, train)),
    ]
    res = []
    for label, run in cases:
        run("off"), run("on")  # warm-up
        off, on = [], []
        for _ in range(args.reps):
            off.append(run("off"))
            on.append(run("on"))
        res.append((label, off, on))
        log(f"AB {label}: off {common.fmt3(off)}, on {common.fmt3(on)}")
    agreement = bf16_agreement(tc, sampler, student)
    log(f"AB bf16 agreement: {agreement}")
    rss = {}
    for name, budget in (("one pass", OFF), (f"passes of <= {local.TRAIN_TOKENS_PER_PASS}", local.TRAIN_TOKENS_PER_PASS)):
        rss[name] = common.run_json([sys.executable, __file__, "--rss-worker", str(budget), "--threads", str(threads)],
                                    timeout=1800)
        log(f"AB rss {name}: {rss[name]}")
    omp: dict[str, list[float]] = {"ACTIVE": [], "PASSIVE": []}
    for rep in range(args.reps):
        for policy in ("ACTIVE", "PASSIVE"):
            r = common.run_json([sys.executable, __file__, "--omp-worker", "--threads", str(threads)],
                                timeout=1800, env={"OMP_WAIT_POLICY": policy})
            omp[policy].append(r["seconds"])
        log(f"AB omp rep {rep}: active {omp['ACTIVE'][-1]:.2f} s, passive {omp['PASSIVE'][-1]:.2f} s")
    res.append(("experiment, not in evsys: OMP_WAIT_POLICY=PASSIVE vs OpenMP's spinning (rollout, fresh processes, alternating)",
                omp["ACTIVE"], omp["PASSIVE"]))
    loads.append(common.load1())

    cmd = "bench/bench_ab.py" + (" --quick" if args.quick else "")
    lines = [f"## {TITLE}", "",
             f"`{cmd}`: each change off and on in one process, interleaved, {args.reps} repetitions after a "
             f"warm-up, {threads} torch threads; the speed-up is computed pair by pair. "
             + common.conditions(loads[0], loads[-1]), "",
             "| change (workload) | off | on | speed-up (min / median / max) |", "|---|---|---|---|"]
    for label, off, on in res:
        r = common.pairwise(off, on)
        lines.append(f"| {label} | {common.fmt3(off)} | {common.fmt3(on)} | "
                     + " / ".join(f"{x:.2f}x" for x in common.stats(r)) + " |")
    lines += ["", f"The 8 teacher prompts share their first {shared} tokens (of "
              f"{min(map(len, teacher))}–{max(map(len, teacher))}); the student prompts share about as many. "
              "Peak RSS of a fresh process that loads the model and runs one forward_backward of the 8 "
              "datums (before: after a one-datum call that touched every weight):", "",
              "| forward_backward | peak RSS before | peak RSS after | seconds |", "|---|---|---|---|"]
    for name, r in rss.items():
        lines.append(f"| {name} | {r['before_mb']:.0f} MB | {r['peak_rss_mb']:.0f} MB | {r['seconds']:.2f} s |")
    lines += ["", "Sampled vs `forward` logprobs of the same tokens (8 rollouts x 64 tokens at temperature 1, "
              "the decode packed after 2 steps; |sampled − forward| over every sampled token):", "",
              "| decode weights | max | mean | tokens |", "|---|---|---|---|"]
    for name, r in agreement.items():
        lines.append(f"| {name} | {r['max']:.2e} | {r['mean']:.2e} | {r['n']} |")
    note = common.BENCH / "notes" / "ab.md"
    if note.exists():
        lines += ["", note.read_text().strip()]
    common.finish(TITLE, "\n".join(lines) + "\n", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
