"""Tinker's TrainingClient on a LoRA adapter over a locally loaded model.

- Training calls run when called and return finished futures. `forward_backward` runs its
  datums as right-padded batches of similar lengths, at most TRAIN_TOKENS_PER_PASS padded
  tokens each (no attention mask is needed: attention is causal, so real tokens never see the
  padding after them; the loss is a sum, so the passes add up exactly and memory stays bounded
  whatever the batch). Gradients accumulate until `optim_step` (torch AdamW with Tinker's
  AdamParams), as in Tinker.
- `forward_backward_custom` runs Tinker's recipe for a user loss over logprobs: a forward
  pass for the logprobs, the user's loss and its gradient with respect to them, then a
  backward pass of the linear loss −Σ grad·logprob, which gives the same parameter gradients.
- Checkpoints (state_io.py): `save_state` writes weights and optimizer, `save_weights_for_sampler`
  weights only, each under its own directory; `load_state` restores weights only (a fresh
  optimizer, as Tinker's), `load_state_with_optimizer` both.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from tinker import types

from evsys_core.backends import losses, state_io
from evsys_core.backends.collate import collate, span_logprobs, target_logprobs, token_passes
from evsys_core.backends.engine import BASE, LIVE, Engine, Weights
from evsys_core.backends.futures import Done, Ready
from evsys_core.backends.models import resolve_local_model
from evsys_core.backends.sampling import LocalSamplingClient
from evsys_core.errors import BackendError

# Padded tokens per forward/backward pass (bench/RESULTS.md, B1): activation memory grows with
# the tokens of a pass (~2 MB a token for the default model), speed does not grow past a few
# hundred tokens on a CPU.
TRAIN_TOKENS_PER_PASS = int(os.environ.get("EVSYS_TRAIN_TOKENS_PER_PASS", "256"))
TRAIN_TOKENS_PER_PASS_CUDA = 1 << 15
SPAN_LOGITS = True  # lm_head's backward only over the positions with loss (False: all; for A/B)


class LocalTrainingClient(Ready):
    """Tinker's TrainingClient (and, as Tinker's client-creating calls return, its own future)."""

    def __init__(self, service: Any, engine: Engine):
        self._service, self._engine = service, engine
        self._optimizer: torch.optim.AdamW | None = None
        self._emas: list[tuple[float, tuple[torch.Tensor, ...]]] = []
        self.step = 0
        self.model_id = f"local-{uuid.uuid4().hex[:12]}"

    @property
    def base_model(self) -> str:
        return self._engine.name

    @property
    def model(self) -> Any:
        """The torch module trained (the PEFT model), for tests and benchmarks."""
        return self._engine.net

    def get_tokenizer(self) -> Any:
        return self._engine.tokenizer

    def get_info(self) -> types.GetInfoResponse:
        eng = self._engine
        arch = (getattr(eng.model.config, "architectures", None) or [eng.model.config.model_type])[0]
        return types.GetInfoResponse(
            model_data=types.ModelData(arch=arch, model_name=eng.name, tokenizer_id=eng.name),
            model_id=self.model_id, optimizer_config=types.AdamOptimizerConfig(),
            is_lora=True, lora_rank=eng.rank, model_name=eng.name)

    async def get_info_async(self) -> types.GetInfoResponse:
        return self.get_info()

    # --- training -----------------------------------------------------------------------------
    def forward_backward(self, data: Sequence[types.Datum], loss_fn: str,
                         loss_fn_config: Mapping[str, float] | None = None) -> Done:
        """Loss and per-datum logprobs; gradients are added to the adapter's .grad."""
        return Done(self._run(data, loss_fn, loss_fn_config, backward=True))

    async def forward_backward_async(self, data: Sequence[types.Datum], loss_fn: str,
                                     loss_fn_config: Mapping[str, float] | None = None) -> Done:
        return self.forward_backward(data, loss_fn, loss_fn_config)

    def forward(self, data: Sequence[types.Datum], loss_fn: str,
                loss_fn_config: Mapping[str, float] | None = None) -> Done:
        """Loss and per-datum logprobs, without gradients."""
        return Done(self._run(data, loss_fn, loss_fn_config, backward=False))

    async def forward_async(self, data: Sequence[types.Datum], loss_fn: str,
                            loss_fn_config: Mapping[str, float] | None = None) -> Done:
        return self.forward(data, loss_fn, loss_fn_config)

    def forward_backward_custom(self, data: Sequence[types.Datum], loss_fn: Any, *,
                                loss_type_input: str | None = None) -> Done:
        """A user loss over logprobs: `loss_fn(data, logprobs_list) -> (loss, metrics)`, or a
        LossHandle from `create_custom_loss`. Gradients are added as by forward_backward."""
        from tinker.lib.public_interfaces.custom_loss import LossHandle, run_loss_handle

        if loss_type_input not in (None, "logprobs"):
            raise BackendError(f"forward_backward_custom: loss_type_input must be 'logprobs', got {loss_type_input!r}")
        data = list(data)
        plain = [types.Datum(model_input=d.model_input, loss_fn_inputs={
            "target_tokens": d.loss_fn_inputs["target_tokens"],
            "weights": types.TensorData.from_torch(torch.zeros(d.loss_fn_inputs["target_tokens"].to_torch().shape))})
            for d in data]
        forward = self._run(plain, "cross_entropy", None, backward=False)
        lps = [out["logprobs"].to_torch().clone().requires_grad_(True) for out in forward.loss_fn_outputs]
        loss, metrics = run_loss_handle(loss_fn, data, lps) if isinstance(loss_fn, LossHandle) else loss_fn(data, lps)
        loss.backward()
        if any(lp.grad is None for lp in lps):
            raise BackendError("forward_backward_custom: the loss does not depend on every datum's logprobs")
        linear = [types.Datum(model_input=d.model_input, loss_fn_inputs={
            "target_tokens": d.loss_fn_inputs["target_tokens"],
            "weights": types.TensorData.from_torch(-lp.grad)}) for d, lp in zip(data, lps)]
        out = self._run(linear, "cross_entropy", None, backward=True)
        surrogate = out.metrics.pop("loss:sum", 0.0)
        out.metrics.update({k: float(v) for k, v in metrics.items()})
        out.metrics["loss:sum"] = float(loss.detach().sum())
        out.metrics["surrogate_loss:sum"] = surrogate
        return Done(out)

    async def forward_backward_custom_async(self, data: Sequence[types.Datum], loss_fn: Any, *,
                                            loss_type_input: str | None = None) -> Done:
        return self.forward_backward_custom(data, loss_fn, loss_type_input=loss_type_input)

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
                lp = self._logprobs(batch.ids[sel, :width], inputs, loss_fn)
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

    def _logprobs(self, ids: torch.Tensor, inputs: dict[str, torch.Tensor], loss_fn: str) -> torch.Tensor:
        """log p(target) at every position; lm_head's gradient only where the loss is non-zero."""
        split = self._engine.split_head() if SPAN_LOGITS else None
        if split is None:
            return target_logprobs(self._engine.net(input_ids=ids).logits, inputs["target_tokens"])
        body, head = split
        hidden = body(input_ids=ids).last_hidden_state
        return span_logprobs(head, hidden, inputs["target_tokens"], losses.loss_span(loss_fn, inputs))

    def optim_step(self, optim_params: types.AdamParams | None = None, *,
                   adam_params: types.AdamParams | None = None) -> Done:
        """One AdamW step with Tinker's hyperparameters, then clear the gradients."""
        p = optim_params or adam_params or types.AdamParams()
        if not isinstance(p, types.AdamParams):
            raise BackendError(f"optim_step: the local backend runs AdamW (types.AdamParams); got {type(p).__name__}")
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

    async def optim_step_async(self, optim_params: types.AdamParams | None = None, *,
                               adam_params: types.AdamParams | None = None) -> Done:
        return self.optim_step(optim_params, adam_params=adam_params)

    # --- checkpoints --------------------------------------------------------------------------
    def save_state(self, name: str, ttl_seconds: int | None = None, overwrite: bool = False,
                   user_metadata: dict[str, str] | None = None) -> Done:
        """Weights + optimizer, to resume training exactly (`ttl_seconds` and `overwrite` are
        Tinker's storage options: a local checkpoint of the same name is replaced)."""
        path = self._service.state_path(name, "state")
        state_io.write_state(self._engine, path, "state", self.step, self._optimizer)
        return Done(types.SaveWeightsResponse(path=str(path)))

    async def save_state_async(self, name: str, ttl_seconds: int | None = None, overwrite: bool = False,
                               user_metadata: dict[str, str] | None = None) -> Done:
        return self.save_state(name, ttl_seconds, overwrite, user_metadata)

    def save_weights_for_sampler(self, name: str, ttl_seconds: int | None = None,
                                 user_metadata: dict[str, str] | None = None) -> Done:
        """Weights only, for create_sampling_client(model_path=...); never the same directory
        as save_state(name)."""
        path = self._service.state_path(name, "sampler")
        state_io.write_state(self._engine, path, "sampler", self.step)
        return Done(types.SaveWeightsForSamplerResponse(path=str(path)))

    async def save_weights_for_sampler_async(self, name: str, ttl_seconds: int | None = None,
                                             user_metadata: dict[str, str] | None = None) -> Done:
        return self.save_weights_for_sampler(name, ttl_seconds, user_metadata)

    def save_weights_external(self, name: str, ttl_seconds: int | None = None,
                              age_encryption_recipients: list[str] | None = None) -> Done:
        """The adapter in PEFT's format (loadable by `peft.PeftModel.from_pretrained`)."""
        if age_encryption_recipients:
            raise BackendError("save_weights_external: the local backend does not encrypt; "
                               "leave age_encryption_recipients unset")
        path = self._service.state_path(name, "external")
        state_io.write_state(self._engine, path, "sampler", self.step)
        return Done(types.SaveWeightsExternalResponse(path=str(path)))

    async def save_weights_external_async(self, name: str, ttl_seconds: int | None = None,
                                          age_encryption_recipients: list[str] | None = None) -> Done:
        return self.save_weights_external(name, ttl_seconds, age_encryption_recipients)

    def load_state(self, path: str, weights_access_token: str | None = None) -> Done:
        """The saved weights, with a fresh optimizer (Tinker's load_state)."""
        return Done(self._load(path, with_optimizer=False))

    async def load_state_async(self, path: str, weights_access_token: str | None = None) -> Done:
        return self.load_state(path, weights_access_token)

    def load_state_with_optimizer(self, path: str, weights_access_token: str | None = None) -> Done:
        """The saved weights, optimizer state and step: training continues exactly."""
        return Done(self._load(path, with_optimizer=True))

    async def load_state_with_optimizer_async(self, path: str, weights_access_token: str | None = None) -> Done:
        return self.load_state_with_optimizer(path, weights_access_token)

    def _load(self, path: str, with_optimizer: bool) -> types.LoadWeightsResponse:
        state = state_io.read_state_meta(path)
        path_, eng = Path(path), self._engine
        if with_optimizer and state["kind"] != "state":
            raise BackendError(f"{path}: holds weights only (save_weights_for_sampler); the optimizer "
                               "state is in the directory save_state wrote — or use load_state")
        if state["rank"] != eng.rank:
            raise BackendError(f"{path}: saved with LoRA rank {state['rank']}, this run uses rank {eng.rank}")
        if resolve_local_model(state["base_model"]).path != eng.source.path:
            raise BackendError(f"{path}: saved on base model {state['base_model']!r}, this run uses {eng.name!r}")
        tensors = state_io.read_adapter(eng, path_)
        optimizer = state_io.read_optimizer(path_, eng.device) if with_optimizer else None
        with eng.lock, torch.no_grad():
            for (_, p), t in zip(eng.params, tensors):
                p.copy_(t)
                p.grad = None
            self._optimizer = None
            if optimizer is not None:
                self._optimizer = torch.optim.AdamW([p for _, p in eng.params])
                self._optimizer.load_state_dict(optimizer)
            eng.version += 1
            self.step = int(state.get("step", 0)) if with_optimizer else 0
        return types.LoadWeightsResponse(path=str(path_))

    # --- samplers -----------------------------------------------------------------------------
    def save_weights_and_get_sampling_client(self, name: str | None = None, retry_config: Any = None,
                                             record_stability_info: bool = False,
                                             kind: str = "snapshot") -> LocalSamplingClient:
        """A sampler fixed at the current weights (a copy of the LoRA tensors, not the model);
        kind="inflight": one that always sees the training weights as they are."""
        if kind not in ("snapshot", "inflight"):
            raise BackendError(f"save_weights_and_get_sampling_client: kind must be 'snapshot' or 'inflight', got {kind!r}")
        if name is not None:
            self.save_weights_for_sampler(name)
        with self._engine.lock:
            weights = LIVE if kind == "inflight" else self._engine.snapshot()
            return LocalSamplingClient(self._service, self._engine, weights)

    async def save_weights_and_get_sampling_client_async(
            self, name: str | None = None, retry_config: Any = None, record_stability_info: bool = False,
            kind: str = "snapshot") -> LocalSamplingClient:
        return self.save_weights_and_get_sampling_client(name, retry_config, record_stability_info, kind)

    def create_sampling_client(self, model_path: str, retry_config: Any = None,
                               record_stability_info: bool = False) -> LocalSamplingClient:
        return self._service.create_sampling_client(model_path=model_path)

    async def create_sampling_client_async(self, model_path: str, retry_config: Any = None,
                                           record_stability_info: bool = False) -> LocalSamplingClient:
        return self.create_sampling_client(model_path, retry_config, record_stability_info)

    def ema_sampling_client(self, rate: float) -> LocalSamplingClient:
        """A sampler on an exponential moving average of the adapter (local backend only):
        after every optim_step, ema <- (1 - rate) * ema + rate * current. Starts at the
        current weights; costs one more copy of the LoRA tensors, not of the model."""
        if not 0 < rate <= 1:
            raise BackendError(f"ema rate must be in (0, 1], got {rate}")
        with self._engine.lock:
            tensors = self._engine.snapshot().tensors
            self._emas.append((rate, tensors))
        return LocalSamplingClient(self._service, self._engine, Weights(tensors))

    def base_sampling_client(self) -> LocalSamplingClient:
        """The base model: the same weights in memory, with the adapter disabled."""
        return LocalSamplingClient(self._service, self._engine, BASE)

    # --- Tinker's console and telemetry: nothing to show locally ------------------------------
    def get_console_url(self) -> str:
        return ""

    def get_telemetry(self) -> None:
        return None
