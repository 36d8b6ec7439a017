"""Backends: Tinker's client surface, served locally (PyTorch) or by Tinker itself.

    service = get_service("local")          # or "tinker"
    tc = service.create_lora_training_client(base_model="SmolLM2-135M-Instruct", rank=8)
    sampler = service.create_sampling_client(base_model="SmolLM2-135M-Instruct")

The local service is `LocalServiceClient` (service.py), Tinker's ServiceClient surface in full;
the tinker one wraps Tinker's own SDK. Both hand out clients with the same methods and
`tinker.types` data (see docs/internals.md). Heavy imports (torch, transformers, tinker) happen
only in the modules named there, on demand.
"""

from __future__ import annotations

from typing import Any

from evsys_core.errors import BackendError

BACKEND_KINDS = ("local", "tinker")


def get_service(kind: str, *, device: str = "auto", seed: int = 0) -> Any:
    """A LocalServiceClient or a TinkerService; `device` applies to the local backend only."""
    if kind == "local":
        from evsys_core.backends.service import LocalServiceClient

        return LocalServiceClient(device=device, seed=seed)
    if kind == "tinker":
        from evsys_core.backends.tinker_backend import TinkerService

        return TinkerService(seed=seed)
    raise BackendError(f"unknown backend kind {kind!r}; use one of: {', '.join(BACKEND_KINDS)}")
