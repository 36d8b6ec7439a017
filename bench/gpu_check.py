"""GPU check — the engine's CUDA/bf16 path and B1/B2 against TRL on one GPU, as one RESULTS section.

    .venv/bin/python bench/gpu_check.py [--reps 3] [--no-write | --section-out FILE]
    .venv/bin/python bench/gpu_check.py --dry-run     # the plan, without a GPU

Run by `bash bench/gpu_check.sh` (which sets up from the repo first) or by bench/run.py. On a
machine where torch sees no CUDA device it writes the section as "not run: no GPU available".
With a GPU (< 5 minutes on one):
  1. engine checks on cuda in bf16, on the default model: `forward` logprobs against the model
     loaded on its own with transformers; sampled logprobs against `forward`'s for the same
     tokens; top-K prompt logprobs over the last N tokens equal those over every token; three
     optimizer steps on a fixed batch lower its loss. Each is PASS or FAIL (exit 1 on a FAIL);
  2. B1 (bench_sdft.py --device cuda) and B2 (bench_engine.py --device cuda), their tables
     included under this section.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import log  # noqa: E402

TITLE = "GPU check"
BENCHES = (("B1", "bench_sdft.py"), ("B2", "bench_engine.py"))
TOLERANCE = {"forward": 0.15, "sampled": 0.25}  # nats: bf16 logits against a float32 reference / forward


def plan(reps: int) -> list[str]:
    """The steps, as they will run (what --dry-run prints)."""
    steps = ["engine checks on cuda (bf16): forward vs transformers, sampled vs forward, "
             "top-K last-N vs full, optimizer steps lower the loss"]
    for bid, script in BENCHES:
        steps.append(f"{bid}: {sys.executable} {common.BENCH / script} --device cuda --reps {reps} --section-out FILE")
    return steps


def engine_checks() -> list[tuple[str, bool, str]]:
    """(check, passed, what was measured) for the engine on cuda in bf16."""
    sys.path.insert(0, str(common.ROOT))
    import torch
    from tinker import types
    from transformers import AutoModelForCausalLM

    import capitals
    from evsys_core import render
    from evsys_core.backends import get_service
    from evsys_core.backends.models import ensure_converted, resolve_local_model

    service = get_service("local", device="cuda", seed=0)
    tc = service.create_lora_training_client(common.MODEL, rank=8)
    tok = tc.get_tokenizer()
    prompts = [render.user_prompt_tokens(tok, r["inputs"]["question"]) for r in capitals.rows()[:8]]
    out: list[tuple[str, bool, str]] = []

    ref = AutoModelForCausalLM.from_pretrained(str(ensure_converted(resolve_local_model(common.MODEL))),
                                               dtype=torch.float32).eval()
    toks = prompts[0] + tok.encode(" The capital is Paris, of course.")
    with torch.no_grad():
        full = torch.log_softmax(ref(torch.tensor([toks])).logits[0, :-1].float(), -1)
    want = full.gather(-1, torch.tensor(toks[1:])[:, None]).squeeze(-1)
    datum = types.Datum(model_input=types.ModelInput.from_ints(toks[:-1]),
                        loss_fn_inputs={"target_tokens": toks[1:], "weights": [1.0] * (len(toks) - 1)})
    got = tc.forward([datum], "cross_entropy").result().loss_fn_outputs[0]["logprobs"].to_torch()
    gap = float((got - want).abs().max())
    out.append(("forward logprobs (bf16, cuda) vs transformers float32 on CPU", gap < TOLERANCE["forward"],
                f"max |Δ| {gap:.3f} nats (tolerance {TOLERANCE['forward']})"))

    sampler = tc.save_weights_and_get_sampling_client()
    params = types.SamplingParams(max_tokens=64, temperature=1.0, stop=[], seed=1)
    seqs = [f.result().sequences[0] for f in [sampler.sample(types.ModelInput.from_ints(p), 1, params) for p in prompts]]
    data = [types.Datum(model_input=types.ModelInput.from_ints(p + s.tokens[:-1]),
                        loss_fn_inputs={"target_tokens": (p + s.tokens)[1:], "weights": [0.0] * (len(p) + len(s.tokens) - 1)})
            for p, s in zip(prompts, seqs)]
    fwd = tc.forward(data, "cross_entropy").result().loss_fn_outputs
    gaps = [float((o["logprobs"].to_torch()[len(p) - 1:] - torch.tensor(s.logprobs)).abs().max())
            for o, p, s in zip(fwd, prompts, seqs)]
    out.append(("sampled vs forward logprobs, 8 x 64 tokens", max(gaps) < TOLERANCE["sampled"],
                f"max |Δ| {max(gaps):.3f} nats (tolerance {TOLERANCE['sampled']})"))

    score = types.SamplingParams(max_tokens=1, temperature=0.0)
    base = tc.base_sampling_client()
    whole, last = [base.sample(types.ModelInput.from_ints(toks), 1, score, include_prompt_logprobs=True,
                               topk_prompt_logprobs=5, prompt_logprobs_last_n=n).result() for n in (None, 6)]
    same = all([t for t, _ in whole.topk_prompt_logprobs[i]] == [t for t, _ in last.topk_prompt_logprobs[i]]
               for i in range(len(toks) - 6, len(toks)))
    out.append(("top-K prompt logprobs over the last 6 tokens = over every token", same, "top-5 ids compared"))

    losses = [tc.forward_backward([datum], "cross_entropy").result().metrics["loss:sum"]]
    for _ in range(3):
        tc.optim_step(types.AdamParams(learning_rate=1e-3)).result()
        losses.append(tc.forward_backward([datum], "cross_entropy").result().metrics["loss:sum"])
    out.append(("3 optimizer steps on one datum lower its loss", losses[-1] < losses[0],
                " → ".join(f"{x:.2f}" for x in losses)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(ap)
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    ap.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    reps = min(args.reps, 3)
    if args.dry_run:
        missing = [s for _, s in BENCHES if not (common.BENCH / s).exists()]
        for i, step in enumerate(plan(reps), 1):
            print(f"{i}. {step}")
        if missing:
            print(f"missing: {', '.join(missing)}", file=sys.stderr)
            return 1
        return 0
    import torch

    if not torch.cuda.is_available():
        text = (f"## {TITLE}\n\nnot run: no GPU available (torch {torch.__version__} sees no CUDA device on this "
                "machine). `bash bench/gpu_check.sh` sets up from the repo and writes this section on a "
                "machine with one GPU in under 5 minutes: the engine's CUDA/bf16 checks, then B1 and B2 "
                "against TRL / `generate` on the GPU.\n")
        common.finish(TITLE, text, args)
        return 0
    loads = [common.load1()]
    checks = engine_checks()
    lines = [f"## {TITLE}", "", f"`bench/gpu_check.py`: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
             "the default model in bf16. " + common.conditions(loads[0], common.load1()), "",
             "| engine check | result | measured |", "|---|---|---|"]
    lines += [f"| {name} | {'PASS' if ok else '**FAIL**'} | {what} |" for name, ok, what in checks]
    with tempfile.TemporaryDirectory() as tmp:
        for bid, script in BENCHES:
            out = Path(tmp) / f"{bid}.md"
            cmd = [sys.executable, str(common.BENCH / script), "--device", "cuda", "--reps", str(reps),
                   "--section-out", str(out)]
            log(f"GPU {bid}: {' '.join(cmd[1:])}")
            rc = subprocess.run(cmd, cwd=common.ROOT).returncode
            body = out.read_text() if rc == 0 and out.exists() else f"## {bid}\n\n**Failed** (exit {rc}).\n"
            head, _, rest = body.partition("\n")  # "## B1 — ..." becomes a subsection of this one
            lines += ["", "#" + head + " (on the GPU)", rest.rstrip("\n")]
    common.finish(TITLE, "\n".join(lines) + "\n", args)
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
