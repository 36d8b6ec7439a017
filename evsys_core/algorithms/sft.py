"""SFT — supervised fine-tuning: cross-entropy on the assistant's tokens only.

Each step renders the batch's conversations through the chat template, weights assistant
tokens 1 and everything else 0, and takes one pipelined forward_backward + optim_step.
Logged: train/mean_loss (mean NLL per assistant token), train/num_tokens.
"""

from __future__ import annotations

from typing import Any

from evsys_core import render
from evsys_core.algorithms.context import TrainContext


def messages_of(example: Any, params: Any) -> list[dict[str, str]]:
    """Chat rows as they are; prompt/completion rows as one user and one assistant turn."""
    if hasattr(example, "messages"):
        return [m.model_dump() for m in example.messages]
    system = [{"role": "system", "content": params.system_prompt}] if params.system_prompt else []
    return system + [{"role": "user", "content": example.prompt},
                     {"role": "assistant", "content": example.completion}]


def sft_datum(tokens: list[int], weights: list[float], max_length: int) -> Any:
    """Next-token targets: input tokens[:-1] predict tokens[1:], weighted by the mask."""
    from tinker import types

    tokens, weights = tokens[: max_length + 1], weights[: max_length + 1]
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights[1:]},
    )


def train(ctx: TrainContext) -> None:
    p, tok = ctx.params, ctx.tokenizer
    for step, batch in ctx.batches():
        data, n_tokens = [], 0.0
        for ex in batch:
            tokens, weights = render.assistant_mask(tok, messages_of(ex, p))
            d = sft_datum(tokens, weights, p.max_length)
            n_tokens += float(sum(d.loss_fn_inputs["weights"].tolist()))
            data.append(d)

        out = ctx.train_step(data, "cross_entropy")

        ctx.end_step(step, {"mean_loss": out.metrics["loss:sum"] / max(n_tokens, 1.0),
                            "num_tokens": n_tokens})
