"""Tinker's built-in loss functions, in PyTorch, with Tinker's documented formulas.

Every loss is a function of the model's log-probabilities of the target tokens
(`target_logprobs`, shape (B, N) or (B, N, K)) and the datum's `loss_fn_inputs`, padded into
the same shape with zeros — a zero weight or advantage makes a padded position contribute
exactly nothing. The loss is a *sum* over tokens and datums (Tinker does not average), and
the metric `loss:sum` reports it.

- cross_entropy:       loss = −Σ weights · logp(target)            (targets (N,) or (N, K))
- importance_sampling: loss = −Σ exp(logp − sampler_logp) · advantages
- ppo:                 loss = −Σ min(r·A, clip(r, low, high)·A),   r = exp(logp − sampler_logp),
                       low/high from loss_fn_config `clip_low_threshold` / `clip_high_threshold`
                       (defaults 0.8 / 1.2)
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from evsys_core.errors import BackendError

Inputs = Mapping[str, torch.Tensor]

PPO_CLIP_LOW = 0.8
PPO_CLIP_HIGH = 1.2


def cross_entropy(target_logprobs: torch.Tensor, inputs: Inputs, config: Mapping) -> torch.Tensor:
    """Elementwise −weights·logp. With (N, K) targets and weights = a teacher's renormalised
    top-K probabilities this is the forward KL to the teacher over its top-K, up to the
    teacher's entropy (a constant)."""
    return -target_logprobs * inputs["weights"]


def importance_sampling(target_logprobs: torch.Tensor, inputs: Inputs, config: Mapping) -> torch.Tensor:
    """Elementwise −ratio·advantage, ratio = p_θ(x)/q(x) of the learner and the sampler."""
    ratio = torch.exp(target_logprobs - inputs["logprobs"])
    return -ratio * inputs["advantages"]


def ppo(target_logprobs: torch.Tensor, inputs: Inputs, config: Mapping) -> torch.Tensor:
    """Elementwise −min(ratio·A, clip(ratio, low, high)·A), the clipped PPO objective."""
    low = float(config.get("clip_low_threshold", PPO_CLIP_LOW))
    high = float(config.get("clip_high_threshold", PPO_CLIP_HIGH))
    ratio = torch.exp(target_logprobs - inputs["logprobs"])
    advantages = inputs["advantages"]
    return -torch.minimum(ratio * advantages, ratio.clamp(low, high) * advantages)


LossFn = Callable[[torch.Tensor, Inputs, Mapping], torch.Tensor]

LOSS_FNS: dict[str, LossFn] = {
    "cross_entropy": cross_entropy,
    "importance_sampling": importance_sampling,
    "ppo": ppo,
}

# loss_fn_inputs each loss needs, beside `target_tokens`.
REQUIRED_INPUTS: dict[str, tuple[str, ...]] = {
    "cross_entropy": ("weights",),
    "importance_sampling": ("logprobs", "advantages"),
    "ppo": ("logprobs", "advantages"),
}
# The input that scales each position's loss: where it is zero the position contributes exactly
# nothing (no loss, no gradient), so its logits need no backward pass.
SCALE_INPUT: dict[str, str] = {
    "cross_entropy": "weights",
    "importance_sampling": "advantages",
    "ppo": "advantages",
}
CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "cross_entropy": (),
    "importance_sampling": (),
    "ppo": ("clip_low_threshold", "clip_high_threshold"),
}


def check_loss_fn(loss_fn: str, config: Mapping | None) -> None:
    """Raise BackendError for an unknown loss or an unknown loss_fn_config key."""
    if loss_fn not in LOSS_FNS:
        raise BackendError(
            f"unknown loss_fn {loss_fn!r}; the local backend implements: {', '.join(LOSS_FNS)}"
        )
    unknown = sorted(set(config or {}) - set(CONFIG_KEYS[loss_fn]))
    if unknown:
        allowed = ", ".join(CONFIG_KEYS[loss_fn]) or "none"
        raise BackendError(f"loss_fn_config keys {unknown} are not used by {loss_fn} (allowed: {allowed})")


def loss_span(loss_fn: str, inputs: Inputs) -> tuple[int, int]:
    """[start, end): the positions of a (B, T) pass where any row's loss scale is non-zero
    ((0, 0) when none is)."""
    scale = inputs[SCALE_INPUT[loss_fn]]
    on = (scale != 0).reshape(scale.shape[0], scale.shape[1], -1).any(-1).any(0).nonzero()
    if not len(on):
        return 0, 0
    return int(on[0]), int(on[-1]) + 1


def compute_loss(
    loss_fn: str, target_logprobs: torch.Tensor, inputs: Inputs, config: Mapping | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """(scalar loss to backpropagate, Tinker's metrics {"loss:sum": ...})."""
    check_loss_fn(loss_fn, config)
    loss = LOSS_FNS[loss_fn](target_logprobs, inputs, config or {}).sum()
    return loss, {"loss:sum": float(loss.detach())}
