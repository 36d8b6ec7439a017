"""evsys's SDFT step against tinker-cookbook's SDFT recipe (tinker_cookbook/distillation/sdft.py),
on the same student rollouts and the same teacher: the loss and the gradient with respect to
every LoRA parameter agree to 1e-6, for forward KL (top-K soft-target cross-entropy) and for
reverse KL (the recipe's custom loss through forward_backward_custom), with and without the
reference implementation's three skipped first tokens.

Both sides run their own code on one local training client: the cookbook builds its datums
from rollouts with its own `assemble_training_data`, scores them with its own teacher calls
and trains with its own `train_step` / `_train_step_reverse_kl`; evsys runs `distill_data`
and `TrainContext.train_step`, as in its training loop. The rollouts are fixed token ids (what
each side would otherwise sample), the teacher is the same frozen base model for both, and
the teacher prompt is evsys's, handed to the recipe as its `teacher_prompts_P` (the chat
rendering of that prompt is a documented difference, docs/sdft.md, not part of the loss).
The one wrapper is `GradTap`, a recorder on the real client: it keeps each forward_backward's
output and the gradients at optim_step, then steps with learning rate 0 so nothing moves.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tinker import types

import evsys_core
from evsys_core.algorithms import sdft
from evsys_core.algorithms.context import TrainContext
from evsys_core.config import SDFTParams
from evsys_core.rows import PromptExample

cookbook = pytest.importorskip("tinker_cookbook.distillation.sdft")
from tinker_cookbook.completers import TokensWithLogprobs  # noqa: E402
from tinker_cookbook.rl.data_processing import assemble_training_data, compute_advantages  # noqa: E402
from tinker_cookbook.rl.train import train_step as cookbook_train_step  # noqa: E402
from tinker_cookbook.rl.types import Trajectory, TrajectoryGroup, Transition  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-6
K = 6
# The cookbook's DEFAULT_DEMO_TEMPLATE in evsys's placeholders.
PAPER_TEMPLATE = ("{prompt}\n\nThis is an example for a response to the question:\n{expected}\n\n"
                  "Now answer with a response of your own, including the thinking process.")
ROWS = [PromptExample(inputs={"question": q}, expected=a) for q, a in [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Peru?", "The capital of Peru is Lima."),
    ("Name the capital of Australia.", "Canberra"),
]]
ANSWERS = ["Paris.", "I think the capital of Peru is Cusco, in the south.", "It is Sydney, I believe."]


class GradTap:
    """The local training client, recording forward_backward outputs and, at optim_step, the
    gradients (the step itself runs with learning rate 0: the weights do not move)."""

    def __init__(self, tc):
        self.tc, self.outputs, self.grads = tc, [], None

    def __getattr__(self, name):
        return getattr(self.tc, name)

    def forward_backward(self, *args, **kwargs):
        done = self.tc.forward_backward(*args, **kwargs)
        self.outputs.append(done.result())
        return done

    def forward_backward_custom(self, *args, **kwargs):
        done = self.tc.forward_backward_custom(*args, **kwargs)
        self.outputs.append(done.result())
        return done

    def optim_step(self, *args, **kwargs):
        self.grads = torch.cat([p.grad.detach().flatten().double() for p in self.lora()])
        return self.tc.optim_step(types.AdamParams(learning_rate=0.0))

    def lora(self):
        return [p for p in self.tc.model.parameters() if p.requires_grad]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    service = evsys_core.LocalServiceClient(device="cpu", checkpoint_dir=tmp_path_factory.mktemp("ckpt"))
    tc = service.create_lora_training_client(str(tiny_model_dir), rank=4, seed=0)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # move the student off the base model (LoRA B starts at 0)
        for p in tc.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    tc.model.double()  # float64 compute: what is left is the float32 of the datums' weights
    tok = tc.get_tokenizer()
    end = sdft.render.end_of_turn_tokens(tok)[0]
    completions = [tok.encode(a, add_special_tokens=False) + [end] for a in ANSWERS]
    return GradTap(tc), tc.base_sampling_client(), tok, completions


def params(**kw) -> SDFTParams:
    return SDFTParams(topk=K, demo_template=PAPER_TEMPLATE, learning_rate=1e-3, **kw)


def evsys_step(setup, p: SDFTParams, rows=ROWS, completions=None):
    """evsys's own step on fixed rollouts: (datums, loss:sum, step metrics, gradient)."""
    tap, teacher, tok, fixed = setup
    completions = completions or fixed
    prompts = [sdft.student_prompt(tok, p, ex) for ex in rows]
    data, targets = sdft.distill_data(tap, teacher, tok, p, rows, prompts, completions)
    out = TrainContext(params=p, training_client=tap, rows=rows).train_step(data, "cross_entropy")
    return data, out.metrics["loss:sum"], sdft.step_metrics(out, targets, completions), tap.grads


def cookbook_step(setup, p: SDFTParams, skip: int, reverse: bool):
    """The recipe's own datums, teacher calls and train step on the same rollouts."""
    tap, teacher, tok, completions = setup
    groups = [TrajectoryGroup(
        trajectories_G=[Trajectory(transitions=[Transition(
            ob=types.ModelInput.from_ints(sdft.student_prompt(tok, p, ex)),
            ac=TokensWithLogprobs(tokens=c, maybe_logprobs=[0.0] * len(c)), reward=0.0, episode_done=True)],
            final_ob=types.ModelInput.empty())],
        final_rewards_G=[0.0], metrics_G=[{}]) for ex, c in zip(ROWS, completions)]
    data_D, metadata_D = assemble_training_data(groups, compute_advantages(groups))
    teacher_prompts = [types.ModelInput.from_ints(sdft.teacher_prompt(tok, p, ex)) for ex in ROWS]
    build = cookbook.build_reverse_kl_datums if reverse else cookbook.build_topk_distillation_datums
    datums, metrics = asyncio.run(build(data_D, metadata_D, teacher, teacher_prompts, topk=K,
                                        vocab_size=len(tok), skip_first_n_tokens=skip))
    if reverse:
        asyncio.run(cookbook._train_step_reverse_kl(datums, tap, learning_rate=1e-3, num_substeps=1,
                                                    metrics=metrics))
    else:
        asyncio.run(cookbook_train_step(datums, tap, learning_rate=1e-3, num_substeps=1,
                                        loss_fn="cross_entropy", metrics=metrics))
    return datums, tap.outputs[-1].metrics["loss:sum"], metrics, tap.grads


def close(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the gradient's largest entry."""
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("skip", [0, 3])
@pytest.mark.parametrize("kl", ["forward", "reverse"])
def test_evsys_sdft_loss_and_gradient_equal_the_cookbook_recipe(setup, kl, skip):
    p = params(kl=kl, skip_first_tokens=skip)
    data, loss, metrics, grad = evsys_step(setup, p)
    ref_data, ref_loss, ref_metrics, ref_grad = cookbook_step(setup, p, skip, reverse=kl == "reverse")
    n_tok = sum(len(c) - skip for c in setup[3])
    assert grad.abs().max() > 1e-3 and ref_grad.abs().max() > 1e-3  # a real gradient, not zeros
    assert close(grad, ref_grad) < TOL
    # The same targets at the same positions: the teacher's top-K ids, exactly.
    for d, r, c in zip(data, ref_data, setup[3]):
        ids, ref_ids = d.loss_fn_inputs["target_tokens"].to_numpy(), r.loss_fn_inputs["target_tokens"].to_numpy()
        w, ref_w = d.loss_fn_inputs["weights"].to_numpy(), r.loss_fn_inputs["weights"].to_numpy()
        on = ref_w > 0
        assert np.array_equal(ids[on], ref_ids[on])
        assert np.array_equal(on.any(axis=1), (w != 0).any(axis=1)) and on.any(axis=1).sum() == len(c) - skip
        if kl == "forward":
            assert np.abs(w - ref_w).max() < TOL
    if kl == "forward":
        # Tinker's cross_entropy sum on both sides; evsys's per-token mean_loss is the same sum.
        assert loss == pytest.approx(ref_loss, rel=TOL)
        assert metrics["mean_loss"] * n_tok == pytest.approx(ref_loss, rel=TOL)
    else:
        # The recipe's custom loss *is* the reverse KL summed over positions; evsys's loss:sum
        # is a surrogate with the same gradient, and it logs the KL itself as train/reverse_kl.
        assert ref_metrics["sdft/reverse_kl_positions"] == n_tok
        # Nats per token, to 1e-6 absolute: the recipe sums KL terms of order 1 in float32.
        assert metrics["reverse_kl"] == pytest.approx(ref_metrics["sdft/reverse_kl_mean"], abs=TOL)
        assert metrics["reverse_kl"] * n_tok == pytest.approx(ref_loss, abs=TOL * n_tok)


def test_the_paper_template_of_docs_sdft_md_is_the_recipes():
    recipe = cookbook.DEFAULT_DEMO_TEMPLATE.replace("{question}", "{prompt}").replace("{golden_answer}", "{expected}")
    assert PAPER_TEMPLATE == recipe and "Hint" not in recipe
    assert f"demo_template: {json.dumps(PAPER_TEMPLATE)}" in (REPO / "docs/sdft.md").read_text()


def test_the_comparison_sees_a_one_token_misalignment(setup):
    # Skipping one token on one side only moves the gradient far beyond the tolerance.
    *_, grad = evsys_step(setup, params(skip_first_tokens=1))
    *_, ref_grad = cookbook_step(setup, params(), 0, reverse=False)
    assert close(grad, ref_grad) > 1e-2


@pytest.mark.parametrize("kl", ["forward", "reverse"])
def test_sequence_mean_weighs_each_rollout_by_one_over_its_tokens_and_the_batch(setup, kl):
    skip = 1
    *_, grad = evsys_step(setup, params(kl=kl, skip_first_tokens=skip, loss_reduction="sequence_mean"))
    singles = [evsys_step(setup, params(kl=kl, skip_first_tokens=skip), [ex], [c])[3]
               for ex, c in zip(ROWS, setup[3])]
    expected = sum(g / (len(ROWS) * (len(c) - skip)) for g, c in zip(singles, setup[3]))
    assert close(grad, expected) < TOL
    *_, summed = evsys_step(setup, params(kl=kl, skip_first_tokens=skip))
    assert close(summed, sum(singles)) < TOL and close(grad, summed) > 1e-2
