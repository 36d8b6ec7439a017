"""`LocalServiceClient`: Tinker's ServiceClient, served by this process on PyTorch.

    client = LocalServiceClient()                       # Tinker's keyword arguments accepted
    tc = client.create_lora_training_client(base_model="HuggingFaceTB/SmolLM2-135M-Instruct", rank=8).result()
    tc.forward_backward(data, "cross_entropy"); tc.optim_step(types.AdamParams(learning_rate=1e-4))
    sampler = tc.save_weights_and_get_sampling_client().result()
    sampler.sample(prompt, 4, types.SamplingParams(max_tokens=32)).result()

Every method takes Tinker's parameters in Tinker's order and returns Tinker's types. The
client-creating methods return the client itself, which is also a finished future of itself
(`.result()`, `await`), as Tinker's return a future that can be used as the client.
Arguments that only mean something to the remote service — `base_url`, `api_key`,
`project_id`, `user_metadata`, `display_name`, headers, `ttl_seconds`, `retry_config`,
`weights_access_token`, `record_stability_info` — are accepted and ignored (docs/tinker-local.md).
Each base model is loaded once per client and shared by the training and sampling clients
made on it.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any, Mapping

from tinker import types

from evsys_core.backends import state_io
from evsys_core.backends.engine import BASE, Engine, Weights, configure_threads, pick_device
from evsys_core.backends.futures import Done
from evsys_core.backends.models import ModelSource, available_models, cache_dir, resolve_local_model
from evsys_core.backends.sampling import LocalSamplingClient
from evsys_core.backends.trainer import LocalTrainingClient
from evsys_core.errors import BackendError

CHECKPOINT_DIR_ENV = "EVSYS_CHECKPOINT_DIR"
# The Tinker SDK's client methods with no local counterpart (docs/tinker-local.md); the probe
# in tests/test_tinker_local.py fails on any other SDK method the local clients lack.
REMOTE_ONLY = {
    "ServiceClient": {"create_rest_client": "the REST API over Tinker's stored runs; raises RemoteOnlyError"},
    "SamplingClient": {"create": "builds a client from a remote session holder",
                       "from_sampler_handle": "reaches a sampler of another process through the service"},
}
# Where a checkpoint saved by name lands under the checkpoint directory, one folder per kind
# (Tinker's paths are .../weights/<name> and .../sampler_weights/<name>).
KIND_DIRS = {"state": "weights", "sampler": "sampler_weights", "external": "external_weights"}


class RemoteOnlyError(BackendError, ValueError):
    """A Tinker service feature with no local counterpart (a ValueError, as the SDK raises
    for unusable paths, so that code which tolerates those carries on)."""


class LocalServiceClient:
    """Makes local training and sampling clients; loads each base model once."""

    def __init__(self, user_metadata: dict[str, str] | None = None, project_id: str | None = None, *,
                 display_name: str | None = None, base_url: str | None = None, api_key: str | None = None,
                 default_headers_overrides: Mapping[str, str] | None = None,
                 device: str = "auto", seed: int = 0, checkpoint_dir: str | Path | None = None,
                 **kwargs: Any):
        configure_threads()
        self.device = pick_device(device)
        self.seed = seed
        self._rng = random.Random(seed)
        self._engines: list[Engine] = []
        self.session_id = f"local-{os.getpid()}-{id(self):x}"
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        root = checkpoint_dir or os.environ.get(CHECKPOINT_DIR_ENV)
        self.checkpoint_dir = Path(root).expanduser() / stamp if root else cache_dir() / "checkpoints" / stamp

    # --- training clients ---------------------------------------------------------------------
    def create_lora_training_client(self, base_model: str, rank: int = 32, seed: int | None = None,
                                    train_mlp: bool = True, train_attn: bool = True,
                                    train_unembed: bool = True, user_metadata: dict[str, str] | None = None,
                                    optimizer: Any = None) -> LocalTrainingClient:
        """A LoRA adapter on `base_model` (any linear layer; the unembedding is never adapted
        locally, whatever `train_unembed` says)."""
        if rank < 1:
            raise BackendError(f"lora rank must be >= 1, got {rank}")
        _check_optimizer(optimizer)
        source = resolve_local_model(base_model)
        engine = next((e for e in self._engines if e.source.path == source.path
                       and not e.has_trainer and e.peft is None), None)
        if engine is None:
            engine = self._load(base_model, source)
        engine.attach_lora(rank, self.seed if seed is None else seed, train_mlp=train_mlp, train_attn=train_attn)
        engine.has_trainer = True
        return LocalTrainingClient(self, engine)

    async def create_lora_training_client_async(self, base_model: str, rank: int = 32, seed: int | None = None,
                                                train_mlp: bool = True, train_attn: bool = True,
                                                train_unembed: bool = True,
                                                user_metadata: dict[str, str] | None = None,
                                                optimizer: Any = None) -> LocalTrainingClient:
        return self.create_lora_training_client(base_model, rank, seed, train_mlp, train_attn,
                                                train_unembed, user_metadata, optimizer)

    def create_training_client_from_state(self, path: str, base_model: str | None = None,
                                          user_metadata: dict[str, str] | None = None,
                                          weights_access_token: str | None = None,
                                          optimizer: Any = None) -> LocalTrainingClient:
        """A training client on the saved weights, with a fresh optimizer."""
        tc = self._from_state(path, base_model, optimizer)
        tc.load_state(path).result()
        return tc

    async def create_training_client_from_state_async(
            self, path: str, base_model: str | None = None, user_metadata: dict[str, str] | None = None,
            weights_access_token: str | None = None, optimizer: Any = None) -> LocalTrainingClient:
        return self.create_training_client_from_state(path, base_model, user_metadata, weights_access_token,
                                                      optimizer)

    def create_training_client_from_state_with_optimizer(
            self, path: str, base_model: str | None = None, user_metadata: dict[str, str] | None = None,
            weights_access_token: str | None = None) -> LocalTrainingClient:
        """A training client that continues exactly where save_state left off."""
        tc = self._from_state(path, base_model, None)
        tc.load_state_with_optimizer(path).result()
        return tc

    async def create_training_client_from_state_with_optimizer_async(
            self, path: str, base_model: str | None = None, user_metadata: dict[str, str] | None = None,
            weights_access_token: str | None = None) -> LocalTrainingClient:
        return self.create_training_client_from_state_with_optimizer(path, base_model, user_metadata,
                                                                     weights_access_token)

    def _from_state(self, path: str, base_model: str | None, optimizer: Any) -> LocalTrainingClient:
        state = state_io.read_state_meta(path)
        if base_model is not None and resolve_local_model(base_model).path != resolve_local_model(
                state["base_model"]).path:
            raise BackendError(f"{path}: saved on base model {state['base_model']!r}, not {base_model!r}")
        return self.create_lora_training_client(state["base_model"], rank=state["rank"], optimizer=optimizer)

    # --- sampling clients ---------------------------------------------------------------------
    def create_sampling_client(self, model_path: str | None = None, base_model: str | None = None,
                               retry_config: Any = None, record_stability_info: bool = False) -> LocalSamplingClient:
        """A sampler on saved weights (`model_path`, a directory save_state or
        save_weights_for_sampler wrote) or on a base model."""
        if model_path is not None:
            state = state_io.read_state_meta(model_path)
            engine = self._engine_with_rank(state["base_model"], state["rank"])
            return LocalSamplingClient(self, engine, Weights(state_io.read_adapter(engine, Path(model_path))))
        if base_model is None:
            raise BackendError("create_sampling_client needs base_model or model_path")
        source = resolve_local_model(base_model)
        engine = next((e for e in self._engines if e.source.path == source.path), None)
        return LocalSamplingClient(self, engine or self._load(base_model, source), BASE)

    async def create_sampling_client_async(self, model_path: str | None = None, base_model: str | None = None,
                                           retry_config: Any = None,
                                           record_stability_info: bool = False) -> LocalSamplingClient:
        return self.create_sampling_client(model_path, base_model, retry_config, record_stability_info)

    # --- custom losses, capabilities ----------------------------------------------------------
    def create_custom_loss(self, fn: Any, input_ranks: Mapping[str, Any]) -> Done:
        """Tinker's traced per-datum loss (checked by the SDK's own tracer), for
        forward_backward_custom; it runs in this process."""
        from tinker.lib.public_interfaces.custom_loss import trace_loss

        return Done(trace_loss(fn, input_ranks, self.session_id))

    def get_server_capabilities(self) -> types.GetServerCapabilitiesResponse:
        """The models this machine holds (found without loading any of them)."""
        return types.GetServerCapabilitiesResponse(supported_models=[
            types.SupportedModel(model_name=name, trainable=True, sampleable=True)
            for name in available_models()])

    async def get_server_capabilities_async(self) -> types.GetServerCapabilitiesResponse:
        return self.get_server_capabilities()

    # --- the session: nothing remote to manage ------------------------------------------------
    def close(self, status: str = "success", detail: str | None = None) -> Done:
        """Ends nothing (a local session is this process); here for Tinker programs that call it."""
        return Done(None)

    def copy_weights(self, path: str, *, ttl_seconds: int | None = None,
                     weights_access_token: str | None = None) -> Done:
        """Tinker copies weights between projects; locally a checkpoint is already readable
        where it is, so the answer is its own path."""
        state_io.read_state_meta(path)
        return Done(str(path))

    def create_rest_client(self) -> Any:
        raise RemoteOnlyError("the Tinker REST API (training runs, checkpoint listings) is remote-only; "
                              "local checkpoints are plain directories")

    def get_console_url(self) -> str:
        return ""

    def get_telemetry(self) -> None:
        return None

    # --- evsys's own helpers ------------------------------------------------------------------
    def state_path(self, name: str, kind: str = "state") -> Path:
        """Where a checkpoint `name` of `kind` is written: `name` itself if it is a path, else
        <checkpoint_dir>/<weights|sampler_weights|external_weights>/<name>."""
        if os.sep in name or name.startswith((".", "~")):
            return Path(name).expanduser()
        if not name:
            raise BackendError("a checkpoint name must not be empty")
        return self.checkpoint_dir / KIND_DIRS[kind] / name

    def next_seed(self) -> int:
        return self._rng.getrandbits(62)

    def _load(self, name: str, source: ModelSource) -> Engine:
        engine = Engine(name, source, self.device)
        self._engines.append(engine)
        return engine

    def _engine_with_rank(self, base_model: str, rank: int) -> Engine:
        source = resolve_local_model(base_model)
        same = [e for e in self._engines if e.source.path == source.path]
        engine = next((e for e in same if e.rank == rank), None)
        if engine is None:
            engine = next((e for e in same if e.peft is None), None) or self._load(base_model, source)
            engine.attach_lora(rank, self.seed)
        return engine


def _check_optimizer(optimizer: Any) -> None:
    if optimizer is not None and not isinstance(optimizer, types.AdamOptimizerConfig):
        raise BackendError(f"the local backend trains with AdamW (types.AdamOptimizerConfig); "
                           f"got {type(optimizer).__name__}")
