"""Tinker datums to padded tensors for a forward/backward pass, and the passes' shapes.

`collate` right-pads a batch of datums and checks each carries what its loss needs, in the
right shape; `token_passes` groups them into passes of bounded padded tokens; `target_logprobs`
is log p(target) from a pass's logits; `span_logprobs` the same from its hidden states, with
the gradient kept only inside the span of positions that carry loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from tinker import types

from evsys_core.backends import losses
from evsys_core.errors import BackendError


@dataclass
class Batch:
    ids: torch.Tensor                  # (B, T) right-padded
    inputs: dict[str, torch.Tensor]    # each (B, T) or (B, T, K), zero-padded
    lengths: list[int]


def collate(data: Sequence[types.Datum], loss_fn: str, vocab: int, device: str) -> Batch:
    """Pad datums into one batch, checking each has what `loss_fn` needs in the right shape."""
    if not data:
        raise BackendError(f"{loss_fn}: got no datums")
    need = ("target_tokens",) + losses.REQUIRED_INPUTS[loss_fn]
    tokens = [d.model_input.to_ints() for d in data]
    lengths = [len(t) for t in tokens]
    width = max(lengths)
    ids = torch.zeros((len(data), width), dtype=torch.long)
    arrays: dict[str, list[torch.Tensor]] = {k: [] for k in need}
    for i, (d, toks) in enumerate(zip(data, tokens)):
        if not toks:
            raise BackendError(f"datum {i}: model_input is empty")
        ids[i, : len(toks)] = torch.tensor(toks)
        missing = [k for k in need if k not in d.loss_fn_inputs]
        if missing:
            raise BackendError(f"datum {i}: {loss_fn} needs loss_fn_inputs {missing}; "
                               f"it has {sorted(d.loss_fn_inputs)}")
        for k in need:
            a = d.loss_fn_inputs[k].to_torch()
            if a.shape[:1] != (len(toks),):
                raise BackendError(f"datum {i}: loss_fn_inputs[{k!r}] has shape {tuple(a.shape)}; "
                                   f"its first dimension must be the {len(toks)} input tokens")
            arrays[k].append(a)
    inputs = {}
    for k, items in arrays.items():
        trailing = {tuple(a.shape[1:]) for a in items}
        if len(trailing) > 1:
            raise BackendError(f"loss_fn_inputs[{k!r}] mixes shapes {sorted(trailing)} across datums")
        dtype = torch.long if k == "target_tokens" else torch.float32
        out = torch.zeros((len(items), width, *trailing.pop()), dtype=dtype)
        for i, a in enumerate(items):
            out[i, : a.shape[0]] = a.to(dtype)
        inputs[k] = out.to(device)
    targets = inputs["target_tokens"]
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
        raise BackendError(f"target_tokens must be token ids in [0, {vocab}); got "
                           f"[{int(targets.min())}, {int(targets.max())}]")
    for k in need[1:]:
        if inputs[k].shape != targets.shape:
            raise BackendError(f"loss_fn_inputs[{k!r}] must have the shape of target_tokens "
                               f"({tuple(targets.shape[2:]) or 'one per position'} per position)")
    return Batch(ids.to(device), inputs, lengths)


def token_passes(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Datum indices grouped into forward/backward passes of at most `budget` padded tokens
    (one datum alone may exceed it), shortest first so that each pass pads little."""
    passes: list[list[int]] = []
    cur: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if cur and (len(cur) + 1) * lengths[i] > budget:
            passes.append(cur)
            cur = []
        cur.append(i)
    if cur:
        passes.append(cur)
    return passes


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position: (B, T) for (B, T) targets, (B, T, K) for (B, T, K)."""
    logits = logits.float()
    norm = logits.logsumexp(-1, keepdim=True)
    if targets.dim() == 2:
        return (logits.gather(-1, targets[..., None]) - norm).squeeze(-1)
    return logits.gather(-1, targets) - norm


def span_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                  span: tuple[int, int]) -> torch.Tensor:
    """target_logprobs(head(hidden), targets), with autograd only for positions in `span`.

    Outside the span every loss scale is zero, so those positions add nothing to the loss or
    its gradient: their logits are computed without a graph (and freed at once), which saves
    the lm_head and log-softmax backward there and the memory autograd would hold for them."""
    width = hidden.shape[1]
    parts = []
    for lo, hi, grad in ((0, span[0], False), (span[0], span[1], True), (span[1], width, False)):
        if hi > lo:
            with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                parts.append(target_logprobs(head(hidden[:, lo:hi]), targets[:, lo:hi]))
    return torch.cat(parts, dim=1)
