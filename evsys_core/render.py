"""Turning text turns into tokens and back, through the tokenizer's own chat template; and
filling the prompt templates (`user_template`, `demo_template`) from a row, for the run and
for `evsys validate --deep` alike.

One place, used by every algorithm and by benchmark scoring, so that the student's prompt,
the teacher's prompt and a benchmark prompt are built the same way.
"""

from __future__ import annotations

from typing import Any, Sequence


def user_text(params: Any, inputs: dict[str, Any]) -> str:
    """A prompt row's user turn: `user_template` filled from the row's `inputs`."""
    return params.user_template.format(**inputs)


def demo_text(params: Any, inputs: dict[str, Any], expected: str) -> str:
    """sdft's teacher turn: `demo_template` filled with the student's prompt and the gold
    answer (its only placeholders, so no `inputs` key can collide with them)."""
    return params.demo_template.format(prompt=user_text(params, inputs), expected=expected)


def chat_messages(user: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": user}]


def chat_tokens(tokenizer: Any, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    """Tokens of `messages` through the tokenizer's chat template."""
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=add_generation_prompt, tokenize=True
        )
        return list(out["input_ids"] if hasattr(out, "keys") else out)
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return tokenizer.encode(text + ("assistant: " if add_generation_prompt else ""), add_special_tokens=False)


def prompt_tokens(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Tokens of `messages` followed by the assistant header, ready for sampling."""
    return chat_tokens(tokenizer, messages, add_generation_prompt=True)


def assistant_mask(tokenizer: Any, messages: Sequence[dict[str, str]]) -> tuple[list[int], list[float]]:
    """Tokens of a whole conversation and a 0/1 weight per token: 1 on assistant turns only.

    Each assistant turn spans from the end of the conversation-so-far with the assistant
    header (add_generation_prompt) to the end of the conversation including that turn.
    """
    tokens = chat_tokens(tokenizer, messages, add_generation_prompt=False)
    weights = [0.0] * len(tokens)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(chat_tokens(tokenizer, messages[:i], add_generation_prompt=True))
        end = len(chat_tokens(tokenizer, messages[: i + 1], add_generation_prompt=False))
        weights[start:end] = [1.0] * (end - start)
    return tokens, weights


def user_prompt_tokens(tokenizer: Any, user: str, system_prompt: str | None = None) -> list[int]:
    return prompt_tokens(tokenizer, chat_messages(user, system_prompt))


def end_of_turn_tokens(tokenizer: Any) -> list[int]:
    """Token ids that end an assistant turn (stop tokens for sampling)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for tok in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid >= 0 and tid != getattr(tokenizer, "unk_token_id", None):
            ids.add(tid)
    return sorted(ids)


def decode_completion(tokenizer: Any, tokens: Sequence[int]) -> str:
    """The completion's text with stop tokens and surrounding whitespace removed."""
    stops = set(end_of_turn_tokens(tokenizer))
    kept = [t for t in tokens if t not in stops]
    return tokenizer.decode(kept, skip_special_tokens=True).strip()
