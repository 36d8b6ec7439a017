"""One loaded base model, optionally with one LoRA adapter, shared by the clients made on it.

- LoRA (all linear layers, alpha 32, no dropout) is injected with PEFT. Float32 on CPU,
  bf16 on CUDA.
- `Weights` is what a sampling client runs: the base model (`BASE`, the adapter disabled — no
  second copy) or a copy of the LoRA tensors (a few MB) taken at some engine version.
  `Engine.using(weights)` swaps such a copy into the adapter if the training weights have
  moved since, and swaps them back after: Tinker's snapshot semantics, without copying the model.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from evsys_core.backends.models import ModelSource, load_model
from evsys_core.backends.packed import decode_dtype
from evsys_core.errors import BackendError

LORA_ALPHA = 32
ADAPTER_NAME = "default"
ATTN_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Weights:
    """What a sampling client runs: the base model (tensors None) or LoRA tensors."""

    tensors: tuple[torch.Tensor, ...] | None
    version: int | None = None  # engine version they were copied at; None when read from disk
    live: bool = False          # the training weights as they are (Tinker's "inflight" sampler)


BASE = Weights(None)
LIVE = Weights(None, live=True)


class Engine:
    """One loaded base model, optionally with one LoRA adapter, shared by its clients."""

    def __init__(self, name: str, source: ModelSource, device: str):
        self.name, self.source, self.device = name, source, device
        decode_dtype()  # a bad EVSYS_DECODE_DTYPE is refused here, before any work
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

    def attach_lora(self, rank: int, seed: int, train_mlp: bool = True, train_attn: bool = True) -> None:
        import warnings

        from peft import LoraConfig, get_peft_model

        targets: Any = "all-linear"
        if not (train_mlp and train_attn):
            targets = [n for n, on in ((ATTN_LINEARS, train_attn), (MLP_LINEARS, train_mlp)) if on]
            targets = [t for group in targets for t in group]
            if not targets:
                raise BackendError("create_lora_training_client: train_mlp and train_attn are both False, "
                                   "so there is nothing to train")
        config = LoraConfig(r=rank, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                            target_modules=targets, task_type="CAUSAL_LM")
        devices = [torch.device(self.device).index or 0] if self.device.startswith("cuda") else []
        with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.manual_seed(seed)
            self.peft = get_peft_model(self.model, config, adapter_name=ADAPTER_NAME)
        self.peft.eval()  # no dropout anywhere; gradients still flow
        self.rank = rank
        self.params = [(n, p) for n, p in self.peft.named_parameters() if p.requires_grad]

    def split_head(self) -> tuple[Any, Any] | None:
        """(decoder, lm_head) when the model's logits are exactly lm_head(decoder(ids)'s last
        hidden state), so a caller may run the head on some positions only; else None."""
        cfg = self.model.config
        if getattr(cfg, "final_logit_softcapping", None) or hasattr(self.model, "logit_scale"):
            return None
        body, head = getattr(self.model, "model", None), self.model.get_output_embeddings()
        return None if body is None or head is None else (body, head)

    def snapshot(self) -> Weights:
        return Weights(tuple(p.detach().clone() for _, p in self.params), self.version)

    def file_keys(self) -> list[str]:
        """PEFT's saved name of each adapter parameter (the adapter name left out)."""
        return [n.replace(f".{ADAPTER_NAME}.", ".", 1) for n, _ in self.params]

    @contextlib.contextmanager
    def using(self, weights: Weights) -> Iterator[None]:
        """Run with `weights` in place; the training weights are back afterwards."""
        if weights.live:
            yield
            return
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


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendError("backend.device is 'cuda' but PyTorch sees no GPU; use device: cpu or auto")
    return device


def configure_threads() -> None:
    """torch threads: $EVSYS_NUM_THREADS if set, else torch's default (one per usable core).

    On a machine whose cores are busy with other work, fewer threads than cores is faster
    (a descheduled thread stalls every op): set EVSYS_NUM_THREADS there."""
    if os.environ.get("EVSYS_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["EVSYS_NUM_THREADS"]))
