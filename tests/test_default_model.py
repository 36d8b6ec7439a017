"""End to end on the real default model (SmolLM2-135M-Instruct), loaded from the converted cache."""

from __future__ import annotations

import math

import pytest
from tinker import types

from evsys_core import render
from evsys_core.backends import get_service

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tc(default_model):
    service = get_service("local", device="cpu", seed=0)
    return service.create_lora_training_client("SmolLM2-135M-Instruct", rank=8)


def test_loads_from_the_safetensors_cache(tc, default_model):
    assert tc.model.config._name_or_path == str(default_model)
    assert (default_model / "model.safetensors").is_file()


def test_greedy_answer_names_paris(tc):
    tok = tc.get_tokenizer()
    sampler = tc.base_sampling_client()
    prompt = render.user_prompt_tokens(tok, "What is the capital of France?")
    params = types.SamplingParams(max_tokens=24, temperature=0.0, stop=render.end_of_turn_tokens(tok))
    seq = sampler.sample(types.ModelInput.from_ints(prompt), 1, params).result().sequences[0]
    answer = render.decode_completion(tok, seq.tokens)
    assert "Paris" in answer, answer


def test_two_training_steps_lower_the_loss(tc):
    tok = tc.get_tokenizer()
    prompt = render.user_prompt_tokens(tok, "What is the capital of Australia?")
    answer = tok.encode("The capital of Australia is Canberra.", add_special_tokens=False)
    full = prompt + answer + render.end_of_turn_tokens(tok)[:1]
    weights = [0.0] * (len(prompt) - 1) + [1.0] * (len(full) - len(prompt))
    datum = types.Datum(model_input=types.ModelInput.from_ints(full[:-1]),
                        loss_fn_inputs={"target_tokens": full[1:], "weights": weights})
    losses = []
    for _ in range(2):
        out = tc.forward_backward([datum], "cross_entropy").result()
        tc.optim_step(types.AdamParams(learning_rate=5e-4)).result()
        losses.append(out.metrics["loss:sum"])
    after = tc.forward([datum], "cross_entropy").result().metrics["loss:sum"]
    assert all(math.isfinite(x) for x in losses)
    assert after < losses[0]
