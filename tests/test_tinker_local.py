"""The local backend as a drop-in `tinker.ServiceClient`: the SDK's surface, Tinker's
checkpoint semantics, offline hub names, and tinker-cookbook's own recipes run unmodified.

The recipes are tinker-cookbook 0.6.1's code, run through `evsys tinker-local` (in process);
only their data source is replaced (no hub here: `datasets.load_dataset` answers local rows,
or a recipe's own local-data option is used) and their model and renderer names are set.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tinker import types

import evsys_core
from evsys_core.backends.service import REMOTE_ONLY
from evsys_core.errors import BackendError


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return evsys_core.LocalServiceClient(base_url="http://ignored", user_metadata={"k": "v"}, display_name="x",
                                         device="cpu", checkpoint_dir=tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def ce_batch(tok) -> list[types.Datum]:
    out = []
    for text in ("The capital of France is Paris.", "One two three four five six."):
        ids = tok.encode(text)
        out.append(types.Datum(model_input=types.ModelInput.from_ints(ids[:-1]),
                               loss_fn_inputs={"target_tokens": ids[1:], "weights": [1.0] * (len(ids) - 1)}))
    return out


def lps(out) -> list[np.ndarray]:
    return [o["logprobs"].to_numpy() for o in out.loss_fn_outputs]


# ------------------------------------------------------------------------------ the surface


def _public_methods(cls) -> dict[str, inspect.Signature]:
    out = {}
    for name, fn in inspect.getmembers(cls):
        if not name.startswith("_") and callable(fn) and not isinstance(fn, type):
            out[name] = inspect.signature(fn)
    return out


@pytest.mark.parametrize("sdk_name, local_path", [
    ("ServiceClient", "evsys_core.backends.service:LocalServiceClient"),
    ("TrainingClient", "evsys_core.backends.trainer:LocalTrainingClient"),
    ("SamplingClient", "evsys_core.backends.sampling:LocalSamplingClient"),
])
def test_probe_local_clients_have_every_sdk_method_with_its_parameters(sdk_name, local_path):
    import importlib

    import tinker

    module, cls_name = local_path.split(":")
    local = _public_methods(getattr(importlib.import_module(module), cls_name))
    sdk = _public_methods(getattr(tinker, sdk_name))
    remote_only = REMOTE_ONLY.get(sdk_name, {})
    missing = sorted(set(sdk) - set(local) - set(remote_only))
    assert not missing, f"{sdk_name}: the local client lacks {missing} (implement, or document as remote-only)"
    assert len(sdk) > 10 or sdk_name == "SamplingClient"  # the probe really read the SDK
    for name, sig in sdk.items():
        if name in remote_only:
            continue
        want = [p for p in sig.parameters if p != "self" and sig.parameters[p].kind != p_kind_var()]
        got = [p for p in local[name].parameters if p != "self"]
        assert got[:len(want)] == want, f"{sdk_name}.{name}: parameters {got}, Tinker's are {want}"
        if name.endswith("_async"):
            assert inspect.iscoroutinefunction(local_fn(local_path, name)), f"{name} is not async"


def p_kind_var():
    return inspect.Parameter.VAR_KEYWORD


def local_fn(local_path: str, name: str):
    import importlib

    module, cls_name = local_path.split(":")
    return getattr(getattr(importlib.import_module(module), cls_name), name)


def test_futures_answer_result_await_and_result_async(client, tiny_model_dir, tok):
    tc = client.create_lora_training_client(base_model=str(tiny_model_dir), rank=4).result()
    data = ce_batch(tok)

    async def main():
        tc2 = await client.create_lora_training_client_async(str(tiny_model_dir), rank=4, seed=3)
        fut = await tc.forward_async(data, "cross_entropy")
        out = await fut
        sc = await tc.save_weights_and_get_sampling_client_async()
        prompt = types.ModelInput.from_ints(tok.encode("Hello there"))
        params = types.SamplingParams(max_tokens=3, temperature=0.0)
        resps = await asyncio.gather(*[sc.sample_async(prompt, 1, params) for _ in range(3)])
        assert not sc._pending  # the gathered requests ran as one batch
        lp = await sc.compute_logprobs(prompt).result_async()
        return tc2, out, resps, lp

    tc2, out, resps, lp = asyncio.run(main())
    assert tc2.get_info().lora_rank == 4 and tc2 is not tc
    assert [a.tolist() for a in lps(out)] == [a.tolist() for a in lps(tc.forward(data, "cross_entropy").result())]
    assert len({tuple(r.sequences[0].tokens) for r in resps}) == 1  # greedy: the same 3 answers
    assert lp[0] is None and len(lp) == 2
    assert tc.forward(data, "cross_entropy").future().result().loss_fn_outputs


def test_get_info_and_server_capabilities(client, tiny_model_dir):
    tc = client.create_lora_training_client(str(tiny_model_dir), rank=4)
    info = tc.get_info()
    assert (info.model_name, info.lora_rank, info.is_lora) == (str(tiny_model_dir), 4, True)
    assert info.model_data.arch == "LlamaForCausalLM"
    names = [m.model_name for m in client.get_server_capabilities().supported_models]
    assert names[:2] == ["SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"]


# ---------------------------------------------------------------------- checkpoint semantics


def test_save_state_and_sampler_weights_of_one_name_keep_the_optimizer(client, tiny_model_dir, tok):
    """The cookbook's checkpoint pattern: save_state(name) then save_weights_for_sampler(name)."""
    tc = client.create_lora_training_client(str(tiny_model_dir), rank=4)
    data = ce_batch(tok)
    tc.forward_backward(data, "cross_entropy")
    tc.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    state = Path(tc.save_state("final").result().path)
    sampler = Path(tc.save_weights_for_sampler("final").result().path)
    assert state != sampler and state.name == sampler.name == "final"
    assert (state / "optimizer.pt").is_file() and not (sampler / "optimizer.pt").exists()
    assert json.loads((state / "evsys_state.json").read_text())["kind"] == "state"
    with pytest.raises(BackendError, match="holds a saved 'state' checkpoint"):
        tc.save_weights_for_sampler(str(state))  # an explicit path never replaces the other kind
    resumed = client.create_training_client_from_state_with_optimizer(str(state)).result()
    assert resumed._optimizer is not None and resumed.step == 1
    with pytest.raises(BackendError, match="weights only"):
        tc.load_state_with_optimizer(str(sampler))


def test_load_state_restores_weights_only_and_with_optimizer_both(client, tiny_model_dir, tok):
    data = ce_batch(tok)
    tc = client.create_lora_training_client(str(tiny_model_dir), rank=4)
    tc.forward_backward(data, "cross_entropy")
    tc.optim_step(types.AdamParams(learning_rate=1e-2))
    path = tc.save_state("mid").result().path
    at_save = lps(tc.forward(data, "cross_entropy").result())

    def one_step(c):
        c.forward_backward(data, "cross_entropy")
        c.optim_step(types.AdamParams(learning_rate=1e-2))
        return lps(c.forward(data, "cross_entropy").result())

    exact = one_step(tc)
    weights_only = client.create_training_client_from_state(path).result()
    assert weights_only._optimizer is None and weights_only.step == 0
    assert all(np.array_equal(a, b) for a, b in zip(lps(weights_only.forward(data, "cross_entropy").result()), at_save))
    fresh_adam = one_step(weights_only)
    with_opt = client.create_training_client_from_state_with_optimizer(path).result()
    assert all(np.array_equal(a, b) for a, b in zip(one_step(with_opt), exact))
    assert not all(np.allclose(a, b) for a, b in zip(fresh_adam, exact))  # Adam's moments matter


def test_forward_backward_custom_matches_the_builtin_loss(client, tiny_model_dir, tok):
    data = ce_batch(tok)
    tc = client.create_lora_training_client(str(tiny_model_dir), rank=4, seed=0)
    tc.forward_backward(data, "cross_entropy").result()
    builtin = {n: p.grad.clone() for n, p in tc.model.named_parameters() if p.grad is not None}
    tc.optim_step(types.AdamParams(learning_rate=0.0))  # clears the gradients, moves nothing

    def nll(batch, logprobs):
        loss = sum(-(lp * torch.tensor(d.loss_fn_inputs["weights"].to_numpy())).sum()
                   for d, lp in zip(batch, logprobs))
        return loss, {"custom/nll:sum": float(loss.detach())}

    out = tc.forward_backward_custom(data, nll).result()
    custom = {n: p.grad for n, p in tc.model.named_parameters() if p.grad is not None}
    assert builtin.keys() == custom.keys()
    assert all(torch.allclose(builtin[n], custom[n], atol=1e-5) for n in builtin)
    assert out.metrics["loss:sum"] == pytest.approx(out.metrics["custom/nll:sum"])
    handle = client.create_custom_loss(lambda logprobs, weights: (-(logprobs * weights).sum(), {}),
                                       {"logprobs": 1, "weights": 1}).result()
    tc.optim_step(types.AdamParams(learning_rate=0.0))
    tc.forward_backward_custom(data, handle).result()
    assert all(torch.allclose(builtin[n], p.grad, atol=1e-5)
               for n, p in tc.model.named_parameters() if p.grad is not None)


def test_topk_sample_logprobs_and_prompt_logprobs_last_n(client, tiny_model_dir, tok):
    sc = client.create_sampling_client(base_model=str(tiny_model_dir)).result()
    prompt = types.ModelInput.from_ints(tok.encode("One two three four five"))
    resp = sc.sample(prompt, 2, types.SamplingParams(max_tokens=4, temperature=0.0, stop=[]),
                     topk_sample_logprobs=3, include_prompt_logprobs=True, prompt_logprobs_last_n=2).result()
    for seq in resp.sequences:
        assert len(seq.topk_logprobs) == len(seq.tokens) == 4
        for token, lp, top in zip(seq.tokens, seq.logprobs, seq.topk_logprobs):
            assert top[0][0] == token and top[0][1] == pytest.approx(lp, abs=1e-5)  # greedy: the top one
            assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1]
    full = sc.compute_logprobs(prompt).result()
    assert resp.prompt_logprobs[:-2] == [None] * (prompt.length - 2)
    assert resp.prompt_logprobs[-2:] == pytest.approx(full[-2:], abs=1e-5)
    plain = sc.sample(prompt, 1, types.SamplingParams(max_tokens=2)).result()
    assert plain.sequences[0].topk_logprobs is None
    with pytest.raises(BackendError, match="prompt_logprobs_last_n must be in"):
        sc.sample(prompt, 1, types.SamplingParams(max_tokens=1), include_prompt_logprobs=True,
                  prompt_logprobs_last_n=prompt.length)


# ------------------------------------------------------------------------ offline hub names


def offline_hub_cache(monkeypatch, path: Path) -> None:
    """The Hugging Face cache at `path`, offline, for evsys and for huggingface_hub alike: evsys
    reads the environment at each call, huggingface_hub read it once, when it was imported
    (earlier in this process), so its constants are set as well. Without them the hub library
    looked in ~/.cache/huggingface and passed only where an earlier run had left the entry."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_default_tokenizer_materialised_in_the_hub_cache_offline(tmp_path, monkeypatch, default_model):
    from transformers import AutoTokenizer

    from evsys_core.backends import hf_cache
    from evsys_core.backends.models import resolve_local_model

    offline_hub_cache(monkeypatch, tmp_path / "hub")
    snap = hf_cache.materialise_default_tokenizer()
    assert snap is not None and (snap / "tokenizer.json").is_file() and not list(snap.glob("*.safetensors"))
    assert hf_cache.materialise_default_tokenizer() == snap  # once: the second call writes nothing new
    tok = AutoTokenizer.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert tok.encode("Hello world") == AutoTokenizer.from_pretrained(str(default_model)).encode("Hello world")
    # The hub id still loads the default model from evsys's own cache, not the tokenizer-only entry.
    assert resolve_local_model("HuggingFaceTB/SmolLM2-135M-Instruct").path == resolve_local_model(
        "SmolLM2-135M-Instruct").path

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "real"))
    real = hf_cache.repo_dir() / "snapshots" / "abc"
    real.mkdir(parents=True)
    (real / "config.json").write_text("{}")
    assert hf_cache.materialise_default_tokenizer() is None  # a real entry is left alone
    assert sorted(p.name for p in real.iterdir()) == ["config.json"]


# --------------------------------------------------------------- tinker-cookbook's recipes


@pytest.fixture
def local_tinker(monkeypatch, tmp_path):
    """Undo what `evsys tinker-local` installs once the test ends."""
    import tinker
    from tinker_cookbook import model_info

    monkeypatch.setattr(tinker, "ServiceClient", tinker.ServiceClient)
    monkeypatch.setattr(model_info, "get_model_attributes", model_info.get_model_attributes)
    offline_hub_cache(monkeypatch, tmp_path / "hub")
    monkeypatch.setenv("EVSYS_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    monkeypatch.setattr("sys.argv", list(__import__("sys").argv))


def local_rows(monkeypatch, rows):
    """The data source: `datasets.load_dataset` answers these rows (no hub here)."""
    import datasets

    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *a, **k: datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}))


def tinker_local(*argv: str) -> int:
    from evsys_core.cli import main

    return main(["tinker-local", "--device", "cpu", *argv])


def metrics_of(log_path: Path) -> list[dict]:
    return [json.loads(line) for line in (log_path / "metrics.jsonl").read_text().splitlines()]


SL_ROWS = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                         {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(8)]
RL_ROWS = [{"question": f"What is {i} plus {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"}
           for i in range(1, 9)]


def run_sl_loop(model: str, log: Path, monkeypatch) -> list[dict]:
    local_rows(monkeypatch, SL_ROWS)
    rc = tinker_local("-m", "tinker_cookbook.recipes.sl_loop", f"model_name={model}", f"log_path={log}",
                      "batch_size=2", "max_steps=2", "save_every=1", "lora_rank=4", "max_length=128")
    assert rc == 0
    return metrics_of(log)


def check_sl_loop(log: Path, metrics: list[dict]) -> None:
    assert [m["step"] for m in metrics] == [0, 1]
    assert all(m["train_mean_nll"] > 0 and m["num_sequences"] == 2 for m in metrics)
    records = [json.loads(line) for line in (log / "checkpoints.jsonl").read_text().splitlines()]
    assert [r["name"] for r in records] == ["000001", "final"]
    final = records[-1]
    assert final["state_path"] != final["sampler_path"]
    assert (Path(final["state_path"]) / "optimizer.pt").is_file()  # the full state kept its optimizer


def test_cookbook_sl_loop_runs_locally_and_resumes(local_tinker, monkeypatch, tmp_path, tiny_model_dir):
    log = tmp_path / "sl"
    metrics = run_sl_loop(str(tiny_model_dir), log, monkeypatch)
    check_sl_loop(log, metrics)
    # Run again on the same log dir: the recipe resumes from its last state, with the optimizer.
    rc = tinker_local("-m", "tinker_cookbook.recipes.sl_loop", f"model_name={tiny_model_dir}", f"log_path={log}",
                      "batch_size=2", "max_steps=3", "save_every=0", "lora_rank=4", "max_length=128")
    assert rc == 0
    assert [m["step"] for m in metrics_of(log)] == [0, 1]  # resumed at batch 4 of 4: nothing left


def run_rl_loop(model: str, log: Path, monkeypatch, group_size: int = 2, max_tokens: int = 8) -> list[dict]:
    local_rows(monkeypatch, RL_ROWS)
    rc = tinker_local("-m", "tinker_cookbook.recipes.rl_loop", f"model_name={model}", f"log_path={log}",
                      "batch_size=2", f"group_size={group_size}", "max_steps=2", "save_every=0", "lora_rank=4",
                      f"max_tokens={max_tokens}", "loss_fn=importance_sampling")
    assert rc == 0
    return metrics_of(log)


def test_cookbook_rl_loop_runs_locally(local_tinker, monkeypatch, tmp_path, tiny_model_dir):
    log = tmp_path / "rl"
    metrics = run_rl_loop(str(tiny_model_dir), log, monkeypatch)
    assert [m["progress/batch"] for m in metrics] == [0, 1]
    assert all(0.0 <= m["reward/total"] <= 1.0 for m in metrics)
    final = json.loads((log / "checkpoints.jsonl").read_text().splitlines()[-1])
    assert Path(final["sampler_path"], "adapter_model.safetensors").is_file()


def run_sdft(model: str, log: Path, tmp_path: Path, *extra: str) -> list[dict]:
    import datasets

    data = tmp_path / "toolalpaca"
    datasets.Dataset.from_list([
        {"prompt": f"Use the calculator to add {i} and {i}.",
         "golden_response": f"Action: add\nAction Input: {{\"a\": {i}, \"b\": {i}}}\nThe sum is {2 * i}."}
        for i in range(6)]).save_to_disk(str(data))
    rc = tinker_local("-m", "tinker_cookbook.recipes.sdft.train", f"model_name={model}", "dataset=toolalpaca",
                      f"toolalpaca_data_path={data}", "groups_per_batch=2", "max_tokens=8", "max_steps=2",
                      "lora_rank=4", "eval_every=0", "save_every=0", f"log_path={log}",
                      "behavior_if_log_dir_exists=delete", *extra)
    assert rc == 0
    return metrics_of(log)


@pytest.mark.parametrize("reverse", [False, True], ids=["topk-distillation", "reverse-kl-custom-loss"])
def test_cookbook_sdft_runs_locally(local_tinker, tmp_path, tiny_model_dir, reverse):
    metrics = run_sdft(str(tiny_model_dir), tmp_path / "sdft", tmp_path, f"reverse={reverse}")
    assert [m["progress/batch"] for m in metrics] == [0, 1]
    assert all(m["sdft/num_datums"] == 2 for m in metrics)


def test_tinker_local_refuses_a_missing_script(capsys):
    assert tinker_local("no_such_script.py") == 2
    assert "script 'no_such_script.py' not found" in capsys.readouterr().err


# ------------------------------------------------------------ the same on the default model


@pytest.mark.slow
def test_cookbook_recipes_on_the_default_model(local_tinker, monkeypatch, tmp_path):
    model = "HuggingFaceTB/SmolLM2-135M-Instruct"
    sl = run_sl_loop(model, tmp_path / "sl", monkeypatch)
    check_sl_loop(tmp_path / "sl", sl)
    assert sl[1]["train_mean_nll"] < 5
    rl = run_rl_loop(model, tmp_path / "rl", monkeypatch, group_size=4, max_tokens=48)
    assert [m["progress/batch"] for m in rl] == [0, 1]
    sdft = run_sdft(model, tmp_path / "sdft", tmp_path)
    assert all(m["sdft/num_datums"] == 2 and m["sdft/mean_teacher_entropy"] > 0 for m in sdft)
