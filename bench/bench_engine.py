"""B2 — sampling: the local engine's batched, KV-cached sampler against transformers' `generate`
called once per prompt; and the engine's forward+backward throughput.

    .venv/bin/python bench/bench_engine.py [--quick] [--reps 5] [--threads N] [--no-write]

Sampling: `batch` different chat prompts (bench/capitals.py), one sample each, temperature 1,
no top-k / top-p, exactly `gen` new tokens each (no early stop), on the base model (no adapter)
in float32. evsys: every request submitted to one sampling client, then awaited (one batch).
Peer: `model.generate(prompt, do_sample=True, max_new_tokens=gen, min_new_tokens=gen,
top_k=0)` for each prompt in turn, on the same weights loaded by transformers in the same
process. The two are interleaved repetition by repetition (one warm-up each first) and the
speed-up is computed pair by pair. Training: forward_backward (cross_entropy over every token)
of `batch` datums of `seq` tokens on a LoRA rank-8 client; optim_step timed apart.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import capitals  # noqa: E402
import common  # noqa: E402
from common import log  # noqa: E402

TITLE = "B2 — sampling vs transformers generate"
TARGET = 3.0  # at batch 16
BATCHES = (1, 8, 16)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(ap)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-train", action="store_true", help="skip the forward+backward table")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda (bf16 weights there)")
    args = ap.parse_args(argv)
    gen, seq = (16, 64) if args.quick else (64, 256)

    sys.path.insert(0, str(common.ROOT))
    import evsys_core.backends.service  # noqa: F401  (first, as in `evsys run`)
    import torch

    threads = common.set_threads(torch, args.threads or common.usable_cores())
    import os

    os.environ["EVSYS_NUM_THREADS"] = str(threads)
    from tinker import types
    from transformers import AutoModelForCausalLM

    from evsys_core import render
    from evsys_core.backends import get_service
    from evsys_core.backends.models import ensure_converted, resolve_local_model

    loads = [common.load1()]
    service = get_service("local", device=args.device, seed=0)
    gpu = args.device != "cpu"
    sampler = service.create_sampling_client(base_model=common.MODEL)
    tok = sampler.get_tokenizer()
    hf = AutoModelForCausalLM.from_pretrained(str(ensure_converted(resolve_local_model(common.MODEL))),
                                              dtype=torch.bfloat16 if gpu else torch.float32).eval().to(args.device)
    questions = [r["inputs"]["question"] for r in capitals.rows()]
    prompt_ids = [render.user_prompt_tokens(tok, q) for q in questions]
    params = types.SamplingParams(max_tokens=gen, temperature=1.0, stop=[], seed=0)

    def ev_sample(n: int):
        def fn():
            futs = [sampler.sample(types.ModelInput.from_ints(p), 1, params) for p in prompt_ids[:n]]
            for f in futs:
                assert len(f.result().sequences[0].tokens) == gen
        return fn

    def hf_generate(n: int):
        def fn():
            with torch.inference_mode():
                for p in prompt_ids[:n]:
                    ids = torch.tensor([p], device=args.device)
                    out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                      temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=gen,
                                      min_new_tokens=gen, pad_token_id=tok.pad_token_id or 0)
                    assert out.shape[1] - ids.shape[1] == gen
        return fn

    rows = []
    for n in BATCHES:
        ev_fn, hf_fn = ev_sample(n), hf_generate(n)
        ev_fn(), hf_fn()  # warm-up
        ev_t, hf_t = [], []
        for _ in range(args.reps):  # interleaved: a noisy moment hits both
            ev_t.append(common.timed(ev_fn))
            hf_t.append(common.timed(hf_fn))
        tokens = n * gen
        row = {"batch": n, "ev_tok_s": [tokens / t for t in ev_t], "hf_tok_s": [tokens / t for t in hf_t],
               "ratio": common.pairwise(hf_t, ev_t)}
        rows.append(row)
        log(f"B2 batch {n}: evsys {common.fmt3(row['ev_tok_s'], lambda x: f'{x:.1f}')} tok/s, "
            f"generate {common.fmt3(row['hf_tok_s'], lambda x: f'{x:.1f}')} tok/s, "
            f"x{common.stats(row['ratio'])[1]:.2f}")
    del hf

    train_rows = []
    if not args.no_train:
        tc = service.create_lora_training_client(common.MODEL, rank=8)
        text = " ".join(questions * 20)
        ids = tok.encode(text)[: seq + 1]
        datum = types.Datum(model_input=types.ModelInput.from_ints(ids[:-1]),
                            loss_fn_inputs={"target_tokens": ids[1:], "weights": [1.0] * seq})
        for n in (1, 8):
            fb = common.repeat(lambda: tc.forward_backward([datum] * n, "cross_entropy").result(), args.reps)
            opt = common.repeat(lambda: tc.optim_step(types.AdamParams(learning_rate=1e-6)).result(), args.reps)
            train_rows.append({"batch": n, "tok_s": [n * seq / t for t in fb], "opt": opt})
            log(f"B2 train batch {n}: {common.fmt3(train_rows[-1]['tok_s'], lambda x: f'{x:.0f}')} tok/s")
    loads.append(common.load1())

    f1 = lambda x: f"{x:.1f}"  # noqa: E731
    cmd = "bench/bench_engine.py" + (" --quick" if args.quick else "") + (f" --device {args.device}" if gpu else "")
    lines = [
        f"## {TITLE}", "",
        f"`{cmd}`: {common.MODEL} {'bf16 on ' + args.device if gpu else 'fp32'} base weights, {threads} torch threads, {gen} new tokens per prompt "
        f"(temperature 1, no early stop), {args.reps} interleaved repetitions after a warm-up. "
        + common.conditions(loads[0], loads[-1]), "",
        "| prompts | evsys batched tok/s (min / median / max) | `generate` per prompt tok/s | "
        "speed-up, pair by pair (min / median / max) | target | |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, mid, hi = common.stats(r["ratio"])
        tgt = f">= {TARGET:.0f}x" if r["batch"] == 16 else ""
        ok = "" if r["batch"] != 16 else common.verdict(mid >= TARGET, f"{mid:.2f}x of {TARGET:.0f}x")
        lines.append(f"| {r['batch']} | {common.fmt3(r['ev_tok_s'], f1)} | {common.fmt3(r['hf_tok_s'], f1)} | "
                     f"{lo:.2f}x / {mid:.2f}x / {hi:.2f}x | {tgt} | {ok} |")
    if train_rows:
        lines += ["", f"Engine training throughput (LoRA r8, cross_entropy on every token of {seq}-token datums):", "",
                  "| datums | forward+backward tok/s (min / median / max) | optim_step (median) |", "|---|---|---|"]
        for r in train_rows:
            lines.append(f"| {r['batch']} | {common.fmt3(r['tok_s'], lambda x: f'{x:.0f}')} | "
                         f"{common.fmt_s(common.stats(r['opt'])[1])} |")
    note = common.BENCH / "notes" / "sampling.md"
    if note.exists():
        lines += ["", note.read_text().strip()]
    common.finish(TITLE, "\n".join(lines) + "\n", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
