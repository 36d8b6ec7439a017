"""Loss functions against hand-written references of Tinker's documented formulas."""

from __future__ import annotations

import math

import pytest
import torch

from evsys_core.backends import losses
from evsys_core.errors import BackendError


def rand(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def test_cross_entropy_is_weighted_negative_log_likelihood():
    lp = -rand(2, 5, seed=1).abs()
    w = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0.5, 0]], dtype=torch.float32)
    loss, metrics = losses.compute_loss("cross_entropy", lp, {"weights": w})
    expected = 0.0
    for b in range(2):
        for t in range(5):
            expected -= float(w[b, t]) * float(lp[b, t])
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics == {"loss:sum": pytest.approx(expected, rel=1e-6)}


def test_soft_target_cross_entropy_is_topk_forward_kl_plus_teacher_entropy():
    # Student: a full distribution over 50 tokens at 3 positions; teacher: top-4 ids + probs.
    student = torch.log_softmax(rand(3, 50, seed=2, scale=2.0), dim=-1)
    teacher_logits = rand(3, 50, seed=3, scale=3.0)
    top_lp, top_ids = torch.log_softmax(teacher_logits, -1).topk(4, dim=-1)
    p = torch.softmax(top_lp, -1)  # renormalised over the top-K
    target_lp = student.gather(-1, top_ids)[None]  # (1, N, K), as the engine gathers it
    loss, _ = losses.compute_loss("cross_entropy", target_lp, {"weights": p[None]})
    kl = sum(float(p[t, k]) * (math.log(float(p[t, k])) - float(student[t, top_ids[t, k]]))
             for t in range(3) for k in range(4))
    entropy = -sum(float(p[t, k]) * math.log(float(p[t, k])) for t in range(3) for k in range(4))
    assert loss.item() == pytest.approx(kl + entropy, rel=1e-5)


def test_importance_sampling_value_and_gradient():
    lp = (-rand(1, 6, seed=4).abs()).requires_grad_()
    q = -rand(1, 6, seed=5).abs()
    adv = torch.tensor([[0.0, 0.0, 1.5, 1.5, -0.5, -0.5]])
    loss, _ = losses.compute_loss("importance_sampling", lp, {"logprobs": q, "advantages": adv})
    ratios = [math.exp(float(lp.detach()[0, t]) - float(q[0, t])) for t in range(6)]
    assert loss.item() == pytest.approx(-sum(r * float(a) for r, a in zip(ratios, adv[0])), rel=1e-6)
    loss.backward()
    # d/dlogp of −ratio·A is −ratio·A
    assert torch.allclose(lp.grad[0], torch.tensor([-r * float(a) for r, a in zip(ratios, adv[0])]), rtol=1e-5)


def ppo_reference(lp, q, adv, low, high):
    total = 0.0
    for x, y, a in zip(lp, q, adv):
        r = math.exp(x - y)
        total -= min(r * a, min(max(r, low), high) * a)
    return total


@pytest.mark.parametrize("config,low,high", [(None, 0.8, 1.2),
                                             ({"clip_low_threshold": 0.9, "clip_high_threshold": 1.05}, 0.9, 1.05)])
def test_ppo_clipped_objective(config, low, high):
    q = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5, 0.5, 0.5]]))
    # ratios 0.5, 0.85, 1.0, 1.1, 1.5, 2.0 against positive and negative advantages
    lp = torch.log(torch.tensor([[0.25, 0.425, 0.5, 0.55, 0.75, 1.0]])).requires_grad_()
    adv = torch.tensor([[1.0, -1.0, 2.0, 1.0, 1.0, -1.0]])
    loss, _ = losses.compute_loss("ppo", lp, {"logprobs": q, "advantages": adv}, config)
    expected = ppo_reference(lp.detach()[0].tolist(), q[0].tolist(), adv[0].tolist(), low, high)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # Where the clipped term is the minimum, the gradient is zero: ratio 1.5 with A > 0.
    assert lp.grad[0, 4].item() == 0.0
    # A ratio below the clip with A > 0 keeps its gradient (the unclipped term is smaller).
    assert lp.grad[0, 0].item() != 0.0


def test_padding_with_zeros_contributes_nothing():
    lp = -rand(1, 4, seed=6).abs()
    padded = torch.cat([lp, torch.full((1, 3), -5.0)], dim=1)
    for fn, inputs, pad in [
        ("cross_entropy", {"weights": torch.ones(1, 4)}, {"weights": torch.zeros(1, 3)}),
        ("importance_sampling", {"logprobs": lp - 0.1, "advantages": torch.ones(1, 4)},
         {"logprobs": torch.zeros(1, 3), "advantages": torch.zeros(1, 3)}),
        ("ppo", {"logprobs": lp - 0.1, "advantages": torch.ones(1, 4)},
         {"logprobs": torch.zeros(1, 3), "advantages": torch.zeros(1, 3)}),
    ]:
        full = {k: torch.cat([v, pad[k]], dim=1) for k, v in inputs.items()}
        a, _ = losses.compute_loss(fn, lp, inputs)
        b, _ = losses.compute_loss(fn, padded, full)
        assert a.item() == pytest.approx(b.item(), rel=1e-6), fn


def test_unknown_loss_and_config_key_are_clear_errors():
    with pytest.raises(BackendError, match="unknown loss_fn 'dpo'.*cross_entropy"):
        losses.compute_loss("dpo", torch.zeros(1, 1), {})
    with pytest.raises(BackendError, match="clip_ratio.*not used by ppo.*clip_low_threshold"):
        losses.check_loss_fn("ppo", {"clip_ratio": 0.2})
