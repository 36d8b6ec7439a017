"""RL with verifier rewards: group rollouts, reward − group mean, importance sampling.

Each step, for every task in the batch the current policy samples `group_size` answers;
the task's verifier scores each; the advantage of an answer is its reward minus its group's
mean (groups where every answer scored the same teach nothing and are dropped); the policy
is updated with Tinker's `importance_sampling` (or `ppo`) loss on the sampled tokens.
Logged: train/mean_reward, train/mean_loss (per token), train/completion_len,
train/groups_used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evsys_core import render
from evsys_core.algorithms.context import TrainContext
from evsys_core.benchmarks.verifiers import verify


def rollout_datum(prompt: list[int], tokens: list[int], logprobs: list[float], advantage: float) -> Any:
    from tinker import types

    n = len(prompt) - 1
    return types.Datum(
        model_input=types.ModelInput.from_ints(prompt + tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": (prompt + tokens)[1:],
            "logprobs": [0.0] * n + list(logprobs),
            "advantages": [0.0] * n + [advantage] * len(tokens),
        },
    )


def train(ctx: TrainContext) -> None:
    p, tok = ctx.params, ctx.tokenizer
    from tinker import types

    sampling = types.SamplingParams(max_tokens=p.max_tokens, temperature=p.temperature,
                                    stop=render.end_of_turn_tokens(tok))
    for step, batch in ctx.batches():
        # 1. Rollouts: group_size answers per task from the current policy.
        policy = ctx.sampler()
        prompts = [render.user_prompt_tokens(tok, task.instruction, p.system_prompt) for task in batch]
        futures = [policy.sample(types.ModelInput.from_ints(pr), p.group_size, sampling) for pr in prompts]

        # 2. Rewards from each task's verifier; advantages centred within the group.
        data, rewards, lengths, groups, n_tokens = [], [], [], 0, 0
        for task, prompt, fut in zip(batch, prompts, futures):
            seqs = [s for s in fut.result().sequences if s.tokens]
            scores = [verify(task.verifier, render.decode_completion(tok, s.tokens), ctx.task_dir).score
                      for s in seqs]
            rewards += scores
            lengths += [len(s.tokens) for s in seqs]
            mean = float(np.mean(scores)) if scores else 0.0
            if not scores or all(r == mean for r in scores):
                continue
            groups += 1
            n_tokens += sum(len(s.tokens) for s in seqs)
            data += [rollout_datum(prompt, s.tokens, s.logprobs, r - mean) for s, r in zip(seqs, scores)]

        # 3. Policy-gradient step on the groups that carry signal.
        metrics = {"mean_reward": float(np.mean(rewards)) if rewards else 0.0,
                   "completion_len": float(np.mean(lengths)) if lengths else 0.0,
                   "groups_used": float(groups), "mean_loss": 0.0}
        if data:
            out = ctx.train_step(data, p.loss_fn)
            metrics["mean_loss"] = out.metrics["loss:sum"] / n_tokens
        ctx.end_step(step, metrics)
