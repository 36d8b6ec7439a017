"""The local backend: Tinker's client surface on PyTorch + transformers + PEFT LoRA.

    service = LocalService(device="auto", seed=0)
    tc = service.create_lora_training_client("SmolLM2-135M-Instruct", rank=8)
    tc.forward_backward(data, "cross_entropy"); tc.optim_step(types.AdamParams(learning_rate=1e-4))
    sampler = tc.save_weights_and_get_sampling_client()
    sampler.sample(prompt, 4, types.SamplingParams(max_tokens=32)).result()

Design:
- One loaded copy of a base model per `_Engine`; LoRA (all linear layers, alpha 32, no
  dropout) is injected into it with PEFT. Float32 on CPU, bf16 on CUDA.
- Training calls run when called and return finished futures; `forward_backward` runs its
  datums as right-padded batches of similar lengths, at most TRAIN_TOKENS_PER_PASS padded
  tokens each (no attention mask is needed: attention is causal, so real tokens never see the
  padding after them; the loss is a sum, so the passes add up exactly and memory stays bounded
  whatever the batch). Gradients accumulate until `optim_step` (torch AdamW with Tinker's
  AdamParams), as in Tinker.
- Sampling calls are queued per client; the first `.result()` runs every pending request of
  that client as one batch (local_sampler.py). Submitting a whole batch before waiting — the
  pattern Tinker recommends — therefore gets batched compute for free.
- Weights a sampling client sees are fixed when it is made (Tinker's snapshot semantics): a
  client from `save_weights_and_get_sampling_client()` holds a copy of the LoRA tensors (a few
  MB) and the engine's weight version at that moment. When it samples, the engine swaps that
  copy into the adapter if the training weights have moved since, and swaps them back after.
  `base_sampling_client()` runs the same model with the adapter disabled — no second copy.
- `save_state(name)` writes a directory: adapter_model.safetensors + adapter_config.json
  (PEFT's format), optimizer.pt (AdamW state) and evsys_state.json (base model, rank, step),
  enough for `load_state` to restore training exactly and for
  `create_sampling_client(model_path=dir)` to sample from it alone.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import json
import os
import random
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from tinker import types

from evsys_core.backends import local_sampler, losses
from evsys_core.backends.local_sampler import SampleRequest
from evsys_core.backends.models import ModelSource, cache_dir, load_model, resolve_local_model
from evsys_core.errors import BackendError

LORA_ALPHA = 32
ADAPTER_NAME = "default"
STATE_FORMAT = "evsys-local-state/1"
STATE_FILE = "evsys_state.json"
ADAPTER_FILE = "adapter_model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
MAX_BATCH_ROWS = 64              # sampled rows decoded together
PROMPT_LOGITS_BUDGET = 1 << 28   # prefill logits (floats) held at once when prompt logprobs are asked
# Padded tokens per forward/backward pass (bench/RESULTS.md, B1): activation memory grows with
# the tokens of a pass (~2 MB a token for the default model), speed does not grow past a few
# hundred tokens on a CPU.
TRAIN_TOKENS_PER_PASS = int(os.environ.get("EVSYS_TRAIN_TOKENS_PER_PASS", "256"))
TRAIN_TOKENS_PER_PASS_CUDA = 1 << 15


# ------------------------------------------------------------------------------- futures


class Done:
    """A finished future (training calls run when called)."""

    def __init__(self, value: Any):
        self._value = value

    def result(self, timeout: float | None = None) -> Any:
        return self._value

    def done(self) -> bool:
        return True

    async def result_async(self, timeout: float | None = None) -> Any:
        return self.result()

    def __await__(self):
        return self.result_async().__await__()


class Queued(Done):
    """The future of a queued `sample`: waiting on it runs the client's whole queue."""

    def __init__(self, client: "LocalSamplingClient", request: SampleRequest,
                 post: Callable[[types.SampleResponse], Any] | None = None):
        self._client, self._request, self._post = client, request, post

    def result(self, timeout: float | None = None) -> Any:
        if not self._request.done:
            self._client._flush()
        if self._request.error is not None:
            raise self._request.error
        return self._post(self._request.response) if self._post else self._request.response

    def done(self) -> bool:
        return self._request.done


# ------------------------------------------------------------------------------- engine


@dataclass(frozen=True)
class _Weights:
    """What a sampling client runs: the base model (tensors None) or LoRA tensors."""

    tensors: tuple[torch.Tensor, ...] | None
    version: int | None = None  # engine version they were copied at; None when read from disk


BASE = _Weights(None)


class _Engine:
    """One loaded base model, optionally with one LoRA adapter, shared by its clients."""

    def __init__(self, name: str, source: ModelSource, device: str):
        self.name, self.source, self.device = name, source, device
        self.model, self.tokenizer = load_model(source, device)
        self.peft: Any = None
        self.rank: int | None = None
        self.params: list[tuple[str, torch.nn.Parameter]] = []  # the adapter's, in a fixed order
        self.version = 0  # bumped whenever the adapter's tensors change in place
        self.has_trainer = False
        self.lock = threading.RLock()
        forward = inspect.signature(type(self.model).forward).parameters
        self.cache_kw = "cache" if "cache" in forward else "past_key_values"
        eos = self.model.generation_config.eos_token_id if self.model.generation_config else None
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos_ids = sorted(set(eos) | ({self.tokenizer.eos_token_id} - {None}))
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.eos_ids or [0])[0]

    @property
    def net(self) -> Any:
        return self.peft if self.peft is not None else self.model

    def attach_lora(self, rank: int, seed: int) -> None:
        import warnings

        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=rank, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                            target_modules="all-linear", task_type="CAUSAL_LM")
        devices = [torch.device(self.device).index or 0] if self.device.startswith("cuda") else []
        with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.manual_seed(seed)
            self.peft = get_peft_model(self.model, config, adapter_name=ADAPTER_NAME)
        self.peft.eval()  # no dropout anywhere; gradients still flow
        self.rank = rank
        self.params = [(n, p) for n, p in self.peft.named_parameters() if p.requires_grad]

    def snapshot(self) -> _Weights:
        return _Weights(tuple(p.detach().clone() for _, p in self.params), self.version)

    def file_keys(self) -> list[str]:
        """PEFT's saved name of each adapter parameter (the adapter name left out)."""
        return [n.replace(f".{ADAPTER_NAME}.", ".", 1) for n, _ in self.params]

    def read_adapter(self, state_dir: Path) -> tuple[torch.Tensor, ...]:
        from safetensors.torch import load_file

        stored = load_file(str(state_dir / ADAPTER_FILE), device=str(self.device))
        out = []
        for key, (_, p) in zip(self.file_keys(), self.params):
            t = stored.get(key)
            if t is None or t.shape != p.shape:
                raise BackendError(f"{state_dir / ADAPTER_FILE}: tensor {key} is missing or has the "
                                   f"wrong shape for a rank-{self.rank} adapter on {self.name}")
            out.append(t.to(p.dtype))
        return tuple(out)

    @contextlib.contextmanager
    def using(self, weights: _Weights) -> Iterator[None]:
        """Run with `weights` in place; the training weights are back afterwards."""
        if weights.tensors is None:
            with self.peft.disable_adapter() if self.peft is not None else contextlib.nullcontext():
                yield
            return
        if weights.version == self.version:
            yield
            return
        with torch.no_grad():
            live = [p.detach().clone() for _, p in self.params]
            for (_, p), t in zip(self.params, weights.tensors):
                p.copy_(t)
        try:
            yield
        finally:
            with torch.no_grad():
                for (_, p), t in zip(self.params, live):
                    p.copy_(t)


def _pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendError("backend.device is 'cuda' but PyTorch sees no GPU; use device: cpu or auto")
    return device


def _configure_threads() -> None:
    """torch threads: $EVSYS_NUM_THREADS if set, else torch's default (one per usable core).

    On a machine whose cores are busy with other work, fewer threads than cores is faster
    (a descheduled thread stalls every op): set EVSYS_NUM_THREADS there."""
    if os.environ.get("EVSYS_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["EVSYS_NUM_THREADS"]))


# ------------------------------------------------------------------------------- service


class LocalService:
    """Makes training and sampling clients; loads each base model once."""

    def __init__(self, device: str = "auto", seed: int = 0, checkpoint_dir: str | Path | None = None):
        _configure_threads()
        self.device = _pick_device(device)
        self.seed = seed
        self._rng = random.Random(seed)
        self._engines: list[_Engine] = []
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else cache_dir() / "checkpoints" / stamp

    def create_lora_training_client(self, base_model: str, rank: int = 8,
                                    seed: int | None = None) -> "LocalTrainingClient":
        if rank < 1:
            raise BackendError(f"lora rank must be >= 1, got {rank}")
        source = resolve_local_model(base_model)
        engine = next((e for e in self._engines if e.source.path == source.path
                       and not e.has_trainer and e.peft is None), None)
        if engine is None:
            engine = self._load(base_model, source)
        engine.attach_lora(rank, self.seed if seed is None else seed)
        engine.has_trainer = True
        return LocalTrainingClient(self, engine)

    def create_sampling_client(self, base_model: str | None = None,
                               model_path: str | None = None) -> "LocalSamplingClient":
        if model_path is not None:
            state = read_state_meta(model_path)
            engine = self._engine_with_rank(state["base_model"], int(state["rank"]))
            return LocalSamplingClient(self, engine, _Weights(engine.read_adapter(Path(model_path))))
        if base_model is None:
            raise BackendError("create_sampling_client needs base_model or model_path")
        source = resolve_local_model(base_model)
        engine = next((e for e in self._engines if e.source.path == source.path), None)
        return LocalSamplingClient(self, engine or self._load(base_model, source), BASE)

    def state_path(self, name: str) -> Path:
        """Where save_state(name) writes: `name` itself if it is a path, else under checkpoint_dir."""
        if os.sep in name or name.startswith((".", "~")):
            return Path(name).expanduser()
        return self.checkpoint_dir / name

    def next_seed(self) -> int:
        return self._rng.getrandbits(62)

    def _load(self, name: str, source: ModelSource) -> _Engine:
        engine = _Engine(name, source, self.device)
        self._engines.append(engine)
        return engine

    def _engine_with_rank(self, base_model: str, rank: int) -> _Engine:
        source = resolve_local_model(base_model)
        same = [e for e in self._engines if e.source.path == source.path]
        engine = next((e for e in same if e.rank == rank), None)
        if engine is None:
            engine = next((e for e in same if e.peft is None), None) or self._load(base_model, source)
            engine.attach_lora(rank, self.seed)
        return engine


# ------------------------------------------------------------------------------- training


@dataclass
class _Batch:
    ids: torch.Tensor                  # (B, T) right-padded
    inputs: dict[str, torch.Tensor]    # each (B, T) or (B, T, K), zero-padded
    lengths: list[int]


def collate(data: Sequence[types.Datum], loss_fn: str, vocab: int, device: str) -> _Batch:
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
    return _Batch(ids.to(device), inputs, lengths)


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


class LocalTrainingClient:
    """Tinker's TrainingClient, on a LoRA adapter over a locally loaded model."""

    def __init__(self, service: LocalService, engine: _Engine):
        self._service, self._engine = service, engine
        self._optimizer: torch.optim.AdamW | None = None
        self._emas: list[tuple[float, tuple[torch.Tensor, ...]]] = []
        self.step = 0

    @property
    def base_model(self) -> str:
        return self._engine.name

    @property
    def model(self) -> Any:
        """The torch module trained (the PEFT model), for tests and benchmarks."""
        return self._engine.net

    def get_tokenizer(self) -> Any:
        return self._engine.tokenizer

    def forward_backward(self, data: Sequence[types.Datum], loss_fn: str,
                         loss_fn_config: Mapping[str, float] | None = None) -> Done:
        """Loss and per-datum logprobs; gradients are added to the adapter's .grad."""
        return Done(self._run(data, loss_fn, loss_fn_config, backward=True))

    def forward(self, data: Sequence[types.Datum], loss_fn: str,
                loss_fn_config: Mapping[str, float] | None = None) -> Done:
        """Loss and per-datum logprobs, without gradients."""
        return Done(self._run(data, loss_fn, loss_fn_config, backward=False))

    def _run(self, data, loss_fn, config, backward: bool) -> types.ForwardBackwardOutput:
        losses.check_loss_fn(loss_fn, config)
        eng = self._engine
        batch = collate(data, loss_fn, eng.model.config.vocab_size, eng.device)
        budget = TRAIN_TOKENS_PER_PASS_CUDA if eng.device.startswith("cuda") else TRAIN_TOKENS_PER_PASS
        lps: list[torch.Tensor] = [torch.empty(0)] * len(data)
        metrics: dict[str, float] = {}
        with eng.lock, (contextlib.nullcontext() if backward else torch.no_grad()):
            for rows in token_passes(batch.lengths, budget):
                # Rows of similar length together, trimmed to the longest of them: the loss is a
                # sum, so passes add up exactly, and memory is bounded by the budget, not the batch.
                width = max(batch.lengths[i] for i in rows)
                sel = torch.tensor(rows, device=batch.ids.device)
                inputs = {k: v[sel, :width] for k, v in batch.inputs.items()}
                logits = eng.net(input_ids=batch.ids[sel, :width]).logits
                lp = target_logprobs(logits, inputs["target_tokens"])
                del logits
                loss, part = losses.compute_loss(loss_fn, lp, inputs, config)
                if backward:
                    loss.backward()
                del loss
                for k, v in part.items():  # every metric of compute_loss is a sum
                    metrics[k] = metrics.get(k, 0.0) + v
                lp = lp.detach().float().cpu()
                for j, i in enumerate(rows):
                    lps[i] = lp[j, : batch.lengths[i]].contiguous()
        outputs = [{"logprobs": types.TensorData.from_torch(t)} for t in lps]
        return types.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord",
                                           loss_fn_outputs=outputs, metrics=metrics)

    def optim_step(self, adam_params: types.AdamParams | None = None) -> Done:
        """One AdamW step with Tinker's hyperparameters, then clear the gradients."""
        p = adam_params or types.AdamParams()
        params = [t for _, t in self._engine.params]
        with self._engine.lock:
            if self._optimizer is None:
                self._optimizer = torch.optim.AdamW(params, lr=p.learning_rate)
            for group in self._optimizer.param_groups:
                group.update(lr=p.learning_rate, betas=(p.beta1, p.beta2), eps=p.eps,
                             weight_decay=p.weight_decay)
            clip = p.grad_clip_norm if p.grad_clip_norm > 0 else float("inf")
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
            self._optimizer.step()
            self._optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for rate, tensors in self._emas:
                    for t, p_ in zip(tensors, params):
                        t.mul_(1 - rate).add_(p_.detach(), alpha=rate)
            self._engine.version += 1
            self.step += 1
        return Done(types.OptimStepResponse(metrics={"grad_norm": float(norm)}))

    # --- state ------------------------------------------------------------------------------
    def save_state(self, name: str, **_: Any) -> Done:
        """Adapter + optimizer + metadata into a directory (replaced whole if it exists)."""
        path = self._service.state_path(name)
        self._write(path, with_optimizer=True)
        return Done(types.SaveWeightsResponse(path=str(path)))

    def save_weights_for_sampler(self, name: str, **_: Any) -> Done:
        """Adapter + metadata only: enough for create_sampling_client(model_path=...)."""
        path = self._service.state_path(name)
        self._write(path, with_optimizer=False)
        return Done(types.SaveWeightsForSamplerResponse(path=str(path)))

    def load_state(self, path: str) -> Done:
        """Restore the adapter and, when saved, the optimizer state, exactly."""
        state = read_state_meta(path)
        path_ = Path(path)
        eng = self._engine
        if int(state["rank"]) != eng.rank:
            raise BackendError(f"{path}: saved with LoRA rank {state['rank']}, this run uses rank {eng.rank}")
        if resolve_local_model(state["base_model"]).path != eng.source.path:
            raise BackendError(f"{path}: saved on base model {state['base_model']!r}, this run uses {eng.name!r}")
        tensors = eng.read_adapter(path_)
        with eng.lock, torch.no_grad():
            for (_, p), t in zip(eng.params, tensors):
                p.copy_(t)
                p.grad = None
            self._optimizer = None
            if (path_ / OPTIMIZER_FILE).is_file():
                self._optimizer = torch.optim.AdamW([p for _, p in eng.params])
                self._optimizer.load_state_dict(
                    torch.load(path_ / OPTIMIZER_FILE, map_location=eng.device, weights_only=True))
            eng.version += 1
            self.step = int(state.get("step", 0))
        return Done(types.LoadWeightsResponse(path=str(path_)))

    load_state_with_optimizer = load_state

    def _write(self, path: Path, with_optimizer: bool) -> None:
        from safetensors.torch import save_file

        eng = self._engine
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            with eng.lock:
                tensors = {k: p.detach().contiguous() for k, (_, p) in zip(eng.file_keys(), eng.params)}
                save_file(tensors, str(tmp / ADAPTER_FILE))
                if with_optimizer and self._optimizer is not None:
                    torch.save(self._optimizer.state_dict(), tmp / OPTIMIZER_FILE)
            eng.peft.peft_config[ADAPTER_NAME].save_pretrained(str(tmp))
            meta = {"format": STATE_FORMAT, "base_model": eng.name, "rank": eng.rank,
                    "lora_alpha": LORA_ALPHA, "step": self.step, "optimizer": with_optimizer}
            (tmp / STATE_FILE).write_text(json.dumps(meta, indent=1) + "\n")
            os.chmod(tmp, 0o755)
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            if path.exists():
                path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # --- samplers ---------------------------------------------------------------------------
    def save_weights_and_get_sampling_client(self, name: str | None = None, **_: Any) -> "LocalSamplingClient":
        """A sampler fixed at the current weights (a copy of the LoRA tensors, not the model)."""
        with self._engine.lock:
            return LocalSamplingClient(self._service, self._engine, self._engine.snapshot())

    def create_sampling_client(self, model_path: str) -> "LocalSamplingClient":
        return self._service.create_sampling_client(model_path=model_path)

    def ema_sampling_client(self, rate: float) -> "LocalSamplingClient":
        """A sampler on an exponential moving average of the adapter (local backend only):
        after every optim_step, ema <- (1 - rate) * ema + rate * current. Starts at the
        current weights; costs one more copy of the LoRA tensors, not of the model."""
        if not 0 < rate <= 1:
            raise BackendError(f"ema rate must be in (0, 1], got {rate}")
        with self._engine.lock:
            tensors = self._engine.snapshot().tensors
            self._emas.append((rate, tensors))
        return LocalSamplingClient(self._service, self._engine, _Weights(tensors))

    def base_sampling_client(self) -> "LocalSamplingClient":
        """The base model: the same weights in memory, with the adapter disabled."""
        return LocalSamplingClient(self._service, self._engine, BASE)


def read_state_meta(path: str | Path) -> dict[str, Any]:
    """The evsys_state.json of a saved state directory (BackendError if there is none)."""
    if str(path).startswith("tinker://"):
        raise BackendError(f"{path} is a Tinker checkpoint; use backend.kind: tinker to load it")
    meta = Path(path) / STATE_FILE
    if not meta.is_file():
        raise BackendError(f"no saved local state at {path} (expected {STATE_FILE}, written by save_state)")
    state = json.loads(meta.read_text())
    if state.get("format") != STATE_FORMAT:
        raise BackendError(f"{meta}: unknown format {state.get('format')!r} (expected {STATE_FORMAT})")
    return state


# ------------------------------------------------------------------------------- sampling


class LocalSamplingClient:
    """Tinker's SamplingClient; queued requests run together when one is waited on."""

    def __init__(self, service: LocalService, engine: _Engine, weights: _Weights):
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

    def sample(self, prompt: types.ModelInput, num_samples: int, sampling_params: types.SamplingParams,
               include_prompt_logprobs: bool = False, topk_prompt_logprobs: int = 0) -> Queued:
        tokens = prompt.to_ints()
        if not tokens:
            raise BackendError("sample: the prompt is empty")
        vocab = self._engine.model.config.vocab_size
        if min(tokens) < 0 or max(tokens) >= vocab:
            raise BackendError(f"sample: prompt token ids must be in [0, {vocab}); got "
                               f"[{min(tokens)}, {max(tokens)}]")
        if num_samples < 1:
            raise BackendError(f"sample: num_samples must be >= 1, got {num_samples}")
        p = sampling_params
        seed = p.seed if p.seed is not None else self._service.next_seed()
        req = SampleRequest(tokens=tokens, num_samples=num_samples, params=p,
                            prompt_logprobs=include_prompt_logprobs, topk=int(topk_prompt_logprobs),
                            seed=seed, id=f"{self._tag}-{next(self._ids)}")
        self._pending.append(req)
        return Queued(self, req)

    def compute_logprobs(self, prompt: types.ModelInput) -> Queued:
        """log p(token i | tokens < i) for every prompt token (None for the first)."""
        fut = self.sample(prompt, 1, types.SamplingParams(max_tokens=1, temperature=0.0),
                          include_prompt_logprobs=True)
        return Queued(self, fut._request, post=lambda r: r.prompt_logprobs)

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

    def _new_cache(self) -> Any:
        from transformers.cache_utils import DynamicCache

        return DynamicCache(config=self._engine.model.config)


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
