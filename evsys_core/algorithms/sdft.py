"""SDFT — self-distillation fine-tuning (Shenfeld et al., 2026).

There is no separate teacher model. Each step:
  1. the student samples an answer on-policy from the plain prompt;
  2. a frozen teacher — the same base model (adapter disabled), shown the gold `expected`
     answer in-context through `demo_template` — scores the student's tokens and returns its
     top-K next-token distribution at every completion position (`teacher: ema` uses an
     exponential moving average of the student instead, on the local backend);
  3. the student is trained toward the renormalised teacher top-K:
       kl=forward  cross-entropy on (N, K) soft targets   = KL(teacher || student) + const
       kl=reverse  the analytic gradient of KL(student || teacher) over the teacher's top-K,
                   passed to cross_entropy as signed per-token weights (one extra forward).
The loss is Tinker's plain sum over tokens and sequences (as tinker-cookbook's recipe);
loss_reduction=sequence_mean divides each sequence's weights by its distilled tokens and by
the batch's sequences: the paper's (1/T)·Σ_t per sequence, averaged over the batch.
docs/sdft.md compares all of this with the reference implementations.
Logged: train/mean_loss (per distilled token), train/kl (teacher→student over top-K),
train/reverse_kl (student→teacher over the same ids), train/completion_len,
train/teacher_top1_agree; at step 0 the teacher's ceiling, train/teacher_pass@1 beside
train/student_pass@1 on the training prompts (ceiling.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evsys_core import render
from evsys_core.algorithms.context import TrainContext
from evsys_core.benchmarks import ceiling


def student_prompt(tokenizer: Any, params: Any, example: Any) -> list[int]:
    return render.user_prompt_tokens(tokenizer, render.user_text(params, example.inputs), params.system_prompt)


def teacher_prompt(tokenizer: Any, params: Any, example: Any) -> list[int]:
    """The student's question with the gold answer shown as an in-context demonstration."""
    text = render.demo_text(params, example.inputs, example.expected)
    return render.user_prompt_tokens(tokenizer, text, params.system_prompt)


def make_teacher(tc: Any, params: Any) -> Any:
    """The frozen base model (adapter disabled), or an EMA of the student (local backend)."""
    if params.teacher == "frozen":
        return tc.base_sampling_client()
    if not hasattr(tc, "ema_sampling_client"):
        from evsys_core.errors import BackendError

        raise BackendError("teacher: ema needs backend.kind: local (Tinker's API has no weight "
                           "averaging); use teacher: frozen on Tinker")
    return tc.ema_sampling_client(params.ema_rate)


def teacher_topk(response: Any, start: int, length: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-K ids and renormalised probabilities at prompt positions [start, start+length)."""
    ids = np.zeros((length, k), dtype=np.int64)
    probs = np.zeros((length, k), dtype=np.float32)
    for t, entry in enumerate(response.topk_prompt_logprobs[start:start + length]):
        tok, lp = zip(*entry[:k])
        p = np.exp(np.asarray(lp, dtype=np.float64) - max(lp))
        ids[t, :len(tok)] = tok
        probs[t, :len(tok)] = p / p.sum()
    return ids, probs


def distill_datum(prompt: list[int], completion: list[int], ids: np.ndarray, weights: np.ndarray) -> Any:
    """A datum whose targets at each completion position are the teacher's top-K ids."""
    from tinker import types

    n_prompt = len(prompt) - 1          # positions that predict prompt tokens carry no loss
    k = ids.shape[1]
    targets = np.concatenate([np.zeros((n_prompt, k), np.int64), ids])
    w = np.concatenate([np.zeros((n_prompt, k), np.float32), weights])
    return types.Datum(
        model_input=types.ModelInput.from_ints(prompt + completion[:-1]),
        loss_fn_inputs={"target_tokens": targets, "weights": w},
    )


def train(ctx: TrainContext) -> None:
    p, tc, tok = ctx.params, ctx.training_client, ctx.tokenizer
    from tinker import types

    teacher = make_teacher(tc, p)
    stop = render.end_of_turn_tokens(tok)
    rollout_params = types.SamplingParams(max_tokens=p.max_tokens, temperature=p.temperature, stop=stop)
    if ctx.start_step == 0:  # can the teacher answer with the hint at all? (benchmarks/ceiling.py)
        rows = ctx.rows[:ceiling.MAX_PROMPTS]
        ctx.log(0, ceiling.measure(teacher, ctx.sampler(), tok, [teacher_prompt(tok, p, ex) for ex in rows],
                                   [student_prompt(tok, p, ex) for ex in rows], [ex.expected for ex in rows],
                                   p.max_tokens))

    for step, batch in ctx.batches():
        # 1. Student rollouts, on-policy, from the plain prompt (all submitted, then awaited).
        student = ctx.sampler()
        prompts = [student_prompt(tok, p, ex) for ex in batch]
        rollouts = [student.sample(types.ModelInput.from_ints(pr), 1, rollout_params) for pr in prompts]
        completions = [r.result().sequences[0].tokens for r in rollouts]

        data, targets = distill_data(tc, teacher, tok, p, batch, prompts, completions)
        if not data:
            ctx.end_step(step, {"mean_loss": 0.0, "kl": 0.0, "completion_len": 0.0})
            continue
        out = ctx.train_step(data, "cross_entropy")
        ctx.end_step(step, step_metrics(out, targets, completions))


def distill_data(tc: Any, teacher: Any, tok: Any, p: Any, batch: list[Any], prompts: list[list[int]],
                 completions: list[list[int]]) -> tuple[list[Any], list[tuple[int, np.ndarray]]]:
    """Steps 2–3 on a batch of rollouts: cross_entropy datums, and (start, teacher top-K) per datum."""
    from tinker import types

    # 2. The teacher scores each rollout with the gold answer in context: top-K at each
    #    completion position (only those are asked for: the last len(c) prompt tokens).
    score_params = types.SamplingParams(max_tokens=1, temperature=0.0)
    t_prompts = [teacher_prompt(tok, p, ex) for ex in batch]
    scored = [teacher.sample(types.ModelInput.from_ints(tp + c), 1, score_params,
                             include_prompt_logprobs=True, topk_prompt_logprobs=p.topk,
                             prompt_logprobs_last_n=len(c))
              if c else None for tp, c in zip(t_prompts, completions)]
    data, targets = [], []
    for pr, tp, c, s in zip(prompts, t_prompts, completions, scored):
        if not c:
            continue
        ids, probs = teacher_topk(s.result(), len(tp), len(c), p.topk)
        probs[: p.skip_first_tokens] = 0.0
        data.append(distill_datum(pr, c, ids, probs))
        targets.append((len(pr) - 1, probs))

    # 3. Forward KL is plain soft-target cross-entropy; reverse KL needs the student's own
    #    top-K log-probs first, to turn its gradient into signed weights.
    if data and p.kl == "reverse":
        student_lp = [o["logprobs"].to_numpy() for o in tc.forward(data, "cross_entropy").result().loss_fn_outputs]
        data = [_reverse_kl_datum(d, lp, start, probs) for d, lp, (start, probs) in zip(data, student_lp, targets)]
    if p.loss_reduction == "sequence_mean":  # mean over each sequence's tokens, then over sequences
        data = [_scaled(d, 1.0 / (max(int((probs.sum(axis=1) > 0).sum()), 1) * len(data)))
                for d, (_, probs) in zip(data, targets)]
    return data, targets


def _reverse_kl_datum(datum: Any, student_lp: np.ndarray, start: int, teacher_p: np.ndarray) -> Any:
    """Weights w with −Σ w·logp having the gradient of KL(q‖p) over the teacher's top-K.

    q is the student renormalised over the K ids; dKL/dlogq_k = q_k (log q_k − log p_k − KL).
    """
    from tinker import types

    lp = student_lp[start:start + len(teacher_p)].astype(np.float64)
    mask = teacher_p > 0
    rows_on = mask.any(axis=1, keepdims=True)
    norm = np.logaddexp.reduce(np.where(mask, lp, -np.inf), axis=1, keepdims=True)
    lq = np.where(mask, lp - np.where(rows_on, norm, 0.0), 0.0)
    q = np.where(mask, np.exp(lq), 0.0)
    log_ratio = np.where(mask, lq - np.log(np.where(mask, teacher_p, 1.0)), 0.0)
    kl = (q * log_ratio).sum(axis=1, keepdims=True)
    w = np.where(mask, -q * (log_ratio - kl), 0.0).astype(np.float32)
    weights = datum.loss_fn_inputs["weights"].to_numpy().copy()
    weights[start:start + len(teacher_p)] = w
    return types.Datum(model_input=datum.model_input,
                       loss_fn_inputs={"target_tokens": datum.loss_fn_inputs["target_tokens"], "weights": weights})


def _scaled(datum: Any, factor: float) -> Any:
    from tinker import types

    weights = datum.loss_fn_inputs["weights"].to_numpy() * np.float32(factor)
    return types.Datum(model_input=datum.model_input,
                       loss_fn_inputs={"target_tokens": datum.loss_fn_inputs["target_tokens"], "weights": weights})


def step_metrics(out: Any, targets: list[tuple[int, np.ndarray]], completions: list[list[int]]) -> dict[str, float]:
    """Per distilled token: the loss, KL(teacher‖student) and KL(student‖teacher) over the
    teacher's top-K (the student renormalised over those ids), and agreement of the argmaxes."""
    kl_sum, rkl_sum, ce_sum, agree, n_tok = 0.0, 0.0, 0.0, 0.0, 0
    for o, (start, probs) in zip(out.loss_fn_outputs, targets):
        lp = o["logprobs"].to_numpy()[start:start + len(probs)].astype(np.float64)
        on = probs.sum(axis=1) > 0
        if not on.any():
            continue
        pt, lpt = probs[on].astype(np.float64), lp[on]
        slot = pt > 0
        log_pt = np.log(np.where(slot, pt, 1.0))
        ce = -(pt * lpt).sum(axis=1)
        ce_sum += ce.sum()
        kl_sum += (ce + (pt * log_pt).sum(axis=1)).sum()
        lq = lpt - np.logaddexp.reduce(np.where(slot, lpt, -np.inf), axis=1, keepdims=True)
        rkl_sum += np.where(slot, np.exp(lq) * (lq - log_pt), 0.0).sum()
        agree += (np.argmax(lpt, axis=1) == np.argmax(pt, axis=1)).sum()
        n_tok += int(on.sum())
    n = max(n_tok, 1)
    return {
        "mean_loss": ce_sum / n,
        "kl": kl_sum / n,
        "reverse_kl": rkl_sum / n,
        "teacher_top1_agree": agree / n,
        "completion_len": float(np.mean([len(c) for c in completions])),
    }
