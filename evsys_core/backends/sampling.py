"""Tinker's SamplingClient on the local engine: queued requests run together when one is waited on.

Every `sample` is queued on its client; the first `.result()` (or `await`) runs all pending
requests of the client as padded batches with a KV cache (local_sampler.py). Submitting a
whole batch before waiting — the pattern Tinker recommends — gets batched compute for free;
`sample_async` calls gathered in one `asyncio.gather` are batched the same way.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterator

import torch
from tinker import types

from evsys_core.backends import local_sampler
from evsys_core.backends.engine import Engine, Weights
from evsys_core.backends.futures import Queued, Ready
from evsys_core.backends.local_sampler import SampleRequest
from evsys_core.errors import BackendError

MAX_BATCH_ROWS = 64              # sampled rows decoded together
PROMPT_LOGITS_BUDGET = 1 << 28   # prefill logits (floats) held at once when prompt logprobs are asked


class LocalSamplingClient(Ready):
    """Tinker's SamplingClient (and, as Tinker's client-creating calls return, its own future)."""

    def __init__(self, service: Any, engine: Engine, weights: Weights):
        self._service, self._engine, self._weights = service, engine, weights
        self._pending: list[SampleRequest] = []
        self._ids = itertools.count()
        self._tag = f"local{id(self):x}"

    @property
    def model(self) -> Any:
        """The torch module sampled from (shared with the training client on the same engine)."""
        return self._engine.net

    def get_tokenizer(self) -> Any:
        return self._engine.tokenizer

    def get_base_model(self) -> str:
        return self._engine.name

    async def get_base_model_async(self) -> str:
        return self.get_base_model()

    def sample(self, prompt: types.ModelInput, num_samples: int, sampling_params: types.SamplingParams,
               include_prompt_logprobs: bool = False, topk_prompt_logprobs: int = 0,
               topk_sample_logprobs: int = 0, target_prompt_logprobs: types.TensorData | None = None,
               prompt_alt_tokens_k: int = 0, prompt_logprobs_last_n: int | None = None) -> Queued:
        tokens = prompt.to_ints()
        if not tokens:
            raise BackendError("sample: the prompt is empty")
        vocab = self._engine.model.config.vocab_size
        if min(tokens) < 0 or max(tokens) >= vocab:
            raise BackendError(f"sample: prompt token ids must be in [0, {vocab}); got "
                               f"[{min(tokens)}, {max(tokens)}]")
        if num_samples < 1:
            raise BackendError(f"sample: num_samples must be >= 1, got {num_samples}")
        if target_prompt_logprobs is not None or prompt_alt_tokens_k:
            raise BackendError("sample: target_prompt_logprobs and prompt_alt_tokens_k are not "
                               "served by the local backend; use topk_prompt_logprobs")
        if topk_prompt_logprobs < 0 or topk_sample_logprobs < 0:
            raise BackendError("sample: topk_prompt_logprobs and topk_sample_logprobs must be >= 0")
        if prompt_logprobs_last_n is not None:
            if not include_prompt_logprobs:
                raise BackendError("sample: prompt_logprobs_last_n needs include_prompt_logprobs=True")
            if not 1 <= prompt_logprobs_last_n <= len(tokens) - 1:
                raise BackendError(f"sample: prompt_logprobs_last_n must be in [1, {len(tokens) - 1}] "
                                   f"(the prompt's length - 1), got {prompt_logprobs_last_n}")
        p = sampling_params
        seed = p.seed if p.seed is not None else self._service.next_seed()
        req = SampleRequest(tokens=tokens, num_samples=num_samples, params=p,
                            prompt_logprobs=include_prompt_logprobs, topk=int(topk_prompt_logprobs),
                            seed=seed, id=f"{self._tag}-{next(self._ids)}",
                            topk_sample=int(topk_sample_logprobs), last_n=prompt_logprobs_last_n)
        self._pending.append(req)
        return Queued(self._flush, req)

    async def sample_async(self, prompt: types.ModelInput, num_samples: int,
                           sampling_params: types.SamplingParams, include_prompt_logprobs: bool = False,
                           topk_prompt_logprobs: int = 0, topk_sample_logprobs: int = 0,
                           target_prompt_logprobs: types.TensorData | None = None,
                           prompt_alt_tokens_k: int = 0,
                           prompt_logprobs_last_n: int | None = None) -> types.SampleResponse:
        return await self.sample(prompt, num_samples, sampling_params, include_prompt_logprobs,
                                 topk_prompt_logprobs, topk_sample_logprobs, target_prompt_logprobs,
                                 prompt_alt_tokens_k, prompt_logprobs_last_n)

    def compute_logprobs(self, prompt: types.ModelInput, prompt_logprobs_last_n: int | None = None) -> Queued:
        """log p(token i | tokens < i) for every prompt token (None for the first, and for
        those before the last `prompt_logprobs_last_n` when it is set)."""
        fut = self.sample(prompt, 1, types.SamplingParams(max_tokens=1, temperature=0.0),
                          include_prompt_logprobs=True, prompt_logprobs_last_n=prompt_logprobs_last_n)
        return Queued(self._flush, fut._request, post=lambda r: r.prompt_logprobs)

    async def compute_logprobs_async(self, prompt: types.ModelInput,
                                     prompt_logprobs_last_n: int | None = None) -> list[float | None]:
        return await self.compute_logprobs(prompt, prompt_logprobs_last_n)

    # --- Tinker's service-side helpers, answered locally --------------------------------------
    def get_sampler_handle(self) -> str:
        """An id for this client (Tinker's handle lets another process reach the sampler; a
        local sampler lives in this process only)."""
        return self._tag

    def get_telemetry(self) -> None:
        return None

    def on_queue_state_change(self, queue_state: Any, queue_state_reason: str | None) -> None:
        """Tinker reports server queue states here; the local engine has no queue to report."""

    def _flush(self) -> None:
        eng = self._engine
        with eng.lock:
            pending, self._pending = self._pending, []
            chunks = list(_chunks(pending, eng.model.config.vocab_size))
            for n, chunk in enumerate(chunks):
                try:
                    with eng.using(self._weights), torch.inference_mode():
                        responses = local_sampler.generate(
                            eng.net, chunk, tokenizer=eng.tokenizer, eos_ids=eng.eos_ids,
                            pad_id=eng.pad_id, max_len=eng.model.config.max_position_embeddings,
                            device=eng.device, cache_kw=eng.cache_kw, new_cache=self._new_cache)
                    for req, resp in zip(chunk, responses):
                        req.response = resp
                except Exception as e:  # delivered to every waiting future of the chunk
                    for req in chunk:
                        req.error = e
                except BaseException:  # Ctrl-C: what did not run stays queued
                    self._pending = [r for c in chunks[n:] for r in c] + self._pending
                    raise
                for req in chunk:
                    req.done = True

    def _new_cache(self, capacity: int) -> Any:
        from evsys_core.backends.kv_cache import reserved_cache

        return reserved_cache(self._engine.model.config, capacity)


def _chunks(reqs: list[SampleRequest], vocab: int) -> Iterator[list[SampleRequest]]:
    """Requests by prompt length, in batches that bound rows and prompt-logit memory."""
    chunk: list[SampleRequest] = []
    rows = width = 0
    for r in sorted(reqs, key=lambda r: len(r.tokens)):
        w = max(width, len(r.tokens))
        needs_logits = any(q.prompt_logprobs or q.topk for q in chunk + [r])
        too_big = needs_logits and (len(chunk) + 1) * w * vocab > PROMPT_LOGITS_BUDGET
        if chunk and (rows + r.num_samples > MAX_BATCH_ROWS or too_big):
            yield chunk
            chunk, rows, w = [], 0, len(r.tokens)
        chunk.append(r)
        rows, width = rows + r.num_samples, w
    if chunk:
        yield chunk
