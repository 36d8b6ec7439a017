"""Batched sampling for the local engine: one prefill per prompt, then a KV-cached decode loop.

`generate(model, requests, ...)` answers a list of `SampleRequest`s together:
- prompts are left-padded into one batch and prefilled once; a request with
  `num_samples = n` has its prompt's KV cache replicated n times, never recomputed;
- the prefix all prompts share (a chat template's system prompt and headers: most of a short
  prompt) is prefilled once for the whole batch and its KV cache replicated to every row; each
  row's own part follows, left-padded after it (padding in the middle is masked out, and
  positions are each token's own);
- prompt logprobs and top-K prompt logprobs come from that same prefill (all of the prompt,
  or its last N tokens), whose lm_head runs only at those positions and the last one;
- the KV cache has room reserved for the whole decode (kv_cache.py), so a step writes its
  keys and values in place instead of copying the cache;
- every row then decodes with its own temperature / top_k / top_p / stop / max_tokens (and,
  only when a request asks for them, the top-K logprobs at each sampled position);
- a decode still going after PACK_AFTER_STEPS steps switches to packed oneDNN weights with
  the adapter merged in (packed.py: ~2x faster decode steps on a CPU, for one transient copy
  of the weights); short decodes never pay for the packing.

Reported logprobs are log_softmax of the raw logits (the model's own distribution, before
temperature and top-k/top-p), so that they equal what `forward` computes for the same tokens
— the quantity importance sampling and PPO divide by.

Randomness: each request owns a torch.Generator seeded from its `seed`, and draws Gumbel
noise for all of its rows at every step it is active, so a seeded request gives the same
tokens whatever else shares its batch (up to float rounding from padding).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from tinker import types
from tinker.types.topk_logprobs import MASK_LOGPROB, TopkLogprobs

from evsys_core.backends.packed import packed_linears

DEFAULT_MAX_TOKENS = 256
PACK_AFTER_STEPS = 2  # packing costs about what this many decode steps save


@dataclass
class SampleRequest:
    """One `sample` call, waiting in a client's queue."""

    tokens: list[int]
    num_samples: int
    params: types.SamplingParams
    prompt_logprobs: bool
    topk: int
    seed: int
    id: str
    topk_sample: int = 0                # top-K logprobs at every sampled position
    last_n: int | None = None           # score only the last N prompt tokens
    response: types.SampleResponse | None = None
    error: BaseException | None = None
    done: bool = field(default=False)


@dataclass
class _Stops:
    ids: list[int]
    strings: list[str]


def stop_rule(stop: Any, eos_ids: Sequence[int]) -> _Stops:
    """None: stop at EOS; [] : never stop early; ints: those tokens; strings: those texts."""
    if stop is None:
        return _Stops(list(eos_ids), [])
    if isinstance(stop, str):
        return _Stops([], [stop])
    stop = list(stop)
    return _Stops([int(s) for s in stop if not isinstance(s, str)], [s for s in stop if isinstance(s, str)])


MIN_SHARED_PREFIX = 8  # tokens: below this, running a shared prefix apart is not worth a call


def shared_prefix(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all `sequences` share, leaving each at least one of its own
    (0 for a single sequence, or when the shared part is too short to be worth running apart)."""
    if len(sequences) < 2:
        return 0
    first = sequences[0]
    n = min(len(t) for t in sequences) - 1
    for t in sequences[1:]:
        i = 0
        while i < n and t[i] == first[i]:
            i += 1
        n = i
    return n if n >= MIN_SHARED_PREFIX else 0


def _prefill_batch(reqs: Sequence[SampleRequest], pad_id: int, device: Any, skip: int = 0):
    """(ids, mask) of the prompts after their first `skip` tokens, left-padded."""
    width = max(len(r.tokens) for r in reqs) - skip
    ids = torch.full((len(reqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(reqs), width), dtype=torch.long)
    for i, r in enumerate(reqs):
        n = len(r.tokens) - skip
        ids[i, width - n:] = torch.tensor(r.tokens[skip:])
        mask[i, width - n:] = 1
    return ids.to(device), mask.to(device)


def _scored_positions(req: SampleRequest) -> int:
    """How many of the prompt's last positions need logits: the last (for the first sampled
    token) and, when prompt scores are asked, each position that predicts a scored token."""
    if not (req.prompt_logprobs or req.topk > 0):
        return 1
    return len(req.tokens) if req.last_n is None else req.last_n + 1


def _prompt_scores(logits: torch.Tensor, req: SampleRequest):
    """(prompt logprobs with NaN at 0, TopkLogprobs or None) from one row's prefill logits
    (its last _scored_positions(req) positions at least)."""
    n = len(req.tokens)
    first = 1 if req.last_n is None else n - req.last_n  # the first prompt position scored
    lp = torch.log_softmax(logits[logits.shape[0] - n + first - 1 : -1].float(), dim=-1)
    prompt_lp = None
    if req.prompt_logprobs:
        targets = torch.tensor(req.tokens[first:], device=lp.device)[:, None]
        prompt_lp = np.full(n, np.nan, dtype=np.float32)
        prompt_lp[first:] = lp.gather(-1, targets).squeeze(-1).cpu().numpy()
    topk = None
    if req.topk > 0:
        k = min(req.topk, lp.shape[-1])
        vals, idx = lp.topk(k, dim=-1)
        ids = np.zeros((n, k), dtype=np.int32)
        lps = np.full((n, k), MASK_LOGPROB, dtype=np.float32)
        ids[first:], lps[first:] = idx.cpu().numpy(), vals.cpu().numpy()
        topk = TopkLogprobs(token_ids=ids, logprobs=lps)
    return prompt_lp, topk


class _Rows:
    """Per-row decoding settings as tensors (rows = samples, grouped by request)."""

    def __init__(self, reqs: Sequence[SampleRequest], eos_ids: Sequence[int], max_len: int, device: Any):
        self.req_of_row = [i for i, r in enumerate(reqs) for _ in range(r.num_samples)]
        self.rules = [stop_rule(r.params.stop, eos_ids) for r in reqs]
        per_row = lambda f: [f(reqs[i]) for i in self.req_of_row]  # noqa: E731
        self.temp = torch.tensor(per_row(lambda r: float(r.params.temperature)), device=device)
        top_k = torch.tensor(per_row(lambda r: int(r.params.top_k)), device=device)
        self.top_k = torch.where(top_k > 0, top_k, torch.full_like(top_k, 1 << 30))
        self.top_p = torch.tensor(per_row(lambda r: float(r.params.top_p)), device=device)
        self.max_tokens = [
            min(r.params.max_tokens or DEFAULT_MAX_TOKENS, max(1, max_len - len(r.tokens)))
            for r in (reqs[i] for i in self.req_of_row)
        ]
        n_stop = max([len(self.rules[i].ids) for i in self.req_of_row] + [1])
        stop_ids = torch.full((len(self.req_of_row), n_stop), -1, dtype=torch.long)
        for row, i in enumerate(self.req_of_row):
            stop_ids[row, : len(self.rules[i].ids)] = torch.tensor(self.rules[i].ids, dtype=torch.long)
        self.stop_ids = stop_ids.to(device)


def _filter_mask(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """True where a token is outside the row's top-k / nucleus (top-p) set."""
    sorted_logits, order = scaled.sort(dim=-1, descending=True)
    rank = torch.arange(scaled.shape[-1], device=scaled.device)[None, :]
    probs = torch.softmax(sorted_logits, dim=-1)
    outside = (rank >= top_k[:, None]) | ((probs.cumsum(-1) - probs) > top_p[:, None])
    return torch.zeros_like(outside).scatter(-1, order, outside)


def _choose(logits: torch.Tensor, rows: _Rows, active: torch.Tensor, noise: torch.Tensor | float) -> torch.Tensor:
    """Next token per row: argmax for temperature 0, else Gumbel-max over the filtered set."""
    temp = rows.temp[active]
    greedy = temp <= 0
    scaled = logits / torch.where(greedy, torch.ones_like(temp), temp)[:, None]
    top_k, top_p = rows.top_k[active], rows.top_p[active]
    if bool(((top_k < logits.shape[-1]) | (top_p < 1)).any()):
        scaled = scaled.masked_fill(_filter_mask(scaled, top_k, top_p), -math.inf)
    sampled = (scaled + noise).argmax(-1)
    return torch.where(greedy, logits.argmax(-1), sampled)


def _gumbel(reqs: Sequence[SampleRequest], gens: list[torch.Generator], rows: _Rows,
            active_rows: list[int], vocab: int, device: Any) -> torch.Tensor | float:
    """Gumbel noise for the active rows; every active request draws for all its rows."""
    by_req: dict[int, list[int]] = {}
    for pos, row in enumerate(active_rows):
        if reqs[rows.req_of_row[row]].params.temperature > 0:
            by_req.setdefault(rows.req_of_row[row], []).append(pos)
    if not by_req:
        return 0.0
    noise = torch.zeros((len(active_rows), vocab), device=device)
    first_row = np.cumsum([0] + [r.num_samples for r in reqs])
    for i, positions in by_req.items():
        u = torch.rand((reqs[i].num_samples, vocab), generator=gens[i], device=device)
        g = -torch.log(-torch.log(u.clamp_min(1e-20)))
        local = [active_rows[p] - first_row[i] for p in positions]
        noise[positions] = g[local]
    return noise


class _Outputs:
    """What each row has generated so far, and whether it is still going."""

    def __init__(self, rows: _Rows, tokenizer: Any):
        n = len(rows.req_of_row)
        self.rows, self.tokenizer = rows, tokenizer
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.logprobs: list[list[float]] = [[] for _ in range(n)]
        self.topk: list[list[tuple[Any, Any]]] = [[] for _ in range(n)]  # (ids, logprobs) per token
        self.reason = ["length"] * n
        self.live = [True] * n

    def add(self, row: int, token: int, logprob: float, is_stop_id: bool, topk: Any = None) -> None:
        if not self.live[row]:
            return
        self.tokens[row].append(token)
        self.logprobs[row].append(logprob)
        if topk is not None:
            self.topk[row].append(topk)
        strings = self.rows.rules[self.rows.req_of_row[row]].strings
        if is_stop_id or (strings and _hit_string(self.tokenizer, self.tokens[row], strings)):
            self.live[row], self.reason[row] = False, "stop"
        elif len(self.tokens[row]) >= self.rows.max_tokens[row]:
            self.live[row] = False


def generate(model: Any, reqs: Sequence[SampleRequest], *, tokenizer: Any, eos_ids: Sequence[int],
             pad_id: int, max_len: int, device: Any, cache_kw: str, new_cache: Any
             ) -> list[types.SampleResponse]:
    """Answer `reqs` as one batch (see the module docstring). Call under torch.inference_mode().

    `new_cache(capacity)` makes an empty KV cache for rows of up to `capacity` tokens;
    `cache_kw` is the model's keyword for it
    ("cache" in transformers 5, "past_key_values" before)."""
    # Prefill: the shared prefix once, then each prompt's own part, left-padded after it. Logits
    # only at the positions read: the last one, and those a request's prompt scores need.
    longest = max(len(r.tokens) for r in reqs)
    kv = new_cache(longest + max(min(r.params.max_tokens or DEFAULT_MAX_TOKENS, max_len) for r in reqs))
    skip = shared_prefix([r.tokens for r in reqs])
    need = [_scored_positions(r) for r in reqs]
    head_logits = None
    if skip:
        head_needed = any(n > len(r.tokens) - skip for n, r in zip(need, reqs))
        head = torch.tensor([reqs[0].tokens[:skip]], dtype=torch.long, device=device)
        out = model(input_ids=head, use_cache=True, logits_to_keep=0 if head_needed else 1, **{cache_kw: kv})
        head_logits = out.logits[0] if head_needed else None
        del out
        kv.batch_repeat_interleave(len(reqs))
    ids, tail_mask = _prefill_batch(reqs, pad_id, device, skip)
    mask = torch.cat([tail_mask.new_ones((len(reqs), skip)), tail_mask], dim=1)
    keep = min(max(need), ids.shape[1])
    out = model(input_ids=ids, attention_mask=mask, position_ids=(skip + tail_mask.cumsum(-1) - 1).clamp(min=0),
                use_cache=True, logits_to_keep=0 if keep == ids.shape[1] else keep, **{cache_kw: kv})

    def row_logits(i: int) -> torch.Tensor:
        """Row i's logits at its last need[i] prompt positions (at least)."""
        own_len = len(reqs[i].tokens) - skip
        own = out.logits[i, keep - min(keep, own_len):]
        return own if need[i] <= own_len else torch.cat([head_logits, own])

    scores = [_prompt_scores(row_logits(i), r) if (r.prompt_logprobs or r.topk > 0) else (None, None)
              for i, r in enumerate(reqs)]
    logits = out.logits[:, -1].float()
    del out, head_logits

    # One row per sample: the prompt's KV cache is replicated, not recomputed.
    rows = _Rows(reqs, eos_ids, max_len, device)
    row_index = torch.tensor(rows.req_of_row, device=device)
    kv.batch_select_indices(row_index)
    mask, logits = mask[row_index], logits[row_index]
    next_pos = mask.sum(-1)
    gens = [torch.Generator(device=device).manual_seed(r.seed) for r in reqs]
    outputs = _Outputs(rows, tokenizer)
    active = list(range(len(rows.req_of_row)))  # rows still in the batch, in batch order
    topk_of_row = [reqs[i].topk_sample for i in rows.req_of_row]
    max_topk = min(max(topk_of_row), logits.shape[-1])

    with contextlib.ExitStack() as packed:
        for step in range(max(rows.max_tokens)):
            if step == PACK_AFTER_STEPS:
                packed.enter_context(packed_linears(model, len(active)))
            act = torch.tensor(active, device=device)
            chosen = _choose(logits, rows, act, _gumbel(reqs, gens, rows, active, logits.shape[-1], device))
            chosen_lp = logits.gather(-1, chosen[:, None]).squeeze(-1) - logits.logsumexp(-1)
            is_stop = (rows.stop_ids[act] == chosen[:, None]).any(-1)
            top = _topk_rows(logits, max_topk, [topk_of_row[r] for r in active]) if max_topk else None
            for pos, (row, token, lp, stop) in enumerate(
                    zip(active, chosen.tolist(), chosen_lp.tolist(), is_stop.tolist())):
                outputs.add(row, token, lp, stop, top[pos] if top else None)
            keep = [pos for pos, row in enumerate(active) if outputs.live[row]]
            if not keep:
                break
            if len(keep) <= len(active) // 2:  # drop finished rows from the batch
                sel = torch.tensor(keep, device=device)
                kv.batch_select_indices(sel)
                mask, next_pos, chosen = mask[sel], next_pos[sel], chosen[sel]
                active = [active[p] for p in keep]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            out = model(input_ids=chosen[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                        use_cache=True, **{cache_kw: kv})
            logits = out.logits[:, -1].float()
            next_pos = next_pos + 1
    return _responses(reqs, scores, outputs)


def _topk_rows(logits: torch.Tensor, k: int, ks: list[int]) -> list[Any]:
    """(ids, logprobs) of each row's top-`ks[row]` tokens at this step (None where 0)."""
    vals, idx = (logits - logits.logsumexp(-1, keepdim=True)).topk(k, dim=-1)
    vals, idx = vals.cpu().numpy(), idx.cpu().numpy()
    return [(idx[i, :n], vals[i, :n]) if n else None for i, n in enumerate(ks)]


def _responses(reqs: Sequence[SampleRequest], scores: list, outputs: _Outputs) -> list[types.SampleResponse]:
    responses, row = [], 0
    for r, (prompt_lp, topk) in zip(reqs, scores):
        seqs = []
        for j in range(r.num_samples):
            sample_topk = None
            if r.topk_sample:
                k = min(r.topk_sample, max([len(t[0]) for t in outputs.topk[row]] + [0]))
                n = len(outputs.tokens[row])
                sample_topk = TopkLogprobs(
                    token_ids=np.array([t[0] for t in outputs.topk[row]], dtype=np.int32).reshape(n, k),
                    logprobs=np.array([t[1] for t in outputs.topk[row]], dtype=np.float32).reshape(n, k))
            seqs.append(types.SampledSequence(
                stop_reason=outputs.reason[row], sequence_id=f"{r.id}-{j}",
                tokens_np=np.asarray(outputs.tokens[row], dtype=np.int32),
                logprobs_np=np.asarray(outputs.logprobs[row], dtype=np.float32), topk_logprobs_np=sample_topk))
            row += 1
        responses.append(types.SampleResponse(sequences=seqs, prompt_logprobs_np=prompt_lp,
                                              topk_prompt_logprobs_np=topk))
    return responses


def _hit_string(tokenizer: Any, tokens: list[int], strings: list[str]) -> bool:
    """Whether the generated text now contains a stop string (checks a short tail only)."""
    width = max(len(s) for s in strings) + 4
    tail = tokenizer.decode(tokens[-width:], skip_special_tokens=False)
    return any(s in tail for s in strings)
