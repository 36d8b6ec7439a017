"""Saved local states on disk: one directory per checkpoint, of one of two kinds.

    <dir>/adapter_model.safetensors + adapter_config.json   the LoRA adapter, in PEFT's format
    <dir>/optimizer.pt                                      AdamW state (kind "state" only)
    <dir>/evsys_state.json                                  {"format", "kind", "base_model",
                                                             "rank", "lora_alpha", "step"}

Kind "state" is what `save_state` writes (weights and optimizer: enough to resume training
exactly); kind "sampler" is what `save_weights_for_sampler` writes (weights only). Both load
into `create_sampling_client(model_path=dir)`. A directory is written beside its target and
renamed into place, so a reader sees the old checkpoint or the new one, never half of one; a
checkpoint of the other kind is never replaced.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch

from evsys_core.backends.engine import ADAPTER_NAME, LORA_ALPHA, Engine
from evsys_core.errors import BackendError

STATE_FORMAT = "evsys-local-state/1"
STATE_FILE = "evsys_state.json"
ADAPTER_FILE = "adapter_model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
Kind = Literal["state", "sampler"]


def read_state_meta(path: str | Path) -> dict[str, Any]:
    """The evsys_state.json of a saved directory, with its `kind` (BackendError if none)."""
    if str(path).startswith("tinker://"):
        raise BackendError(f"{path} is a Tinker checkpoint; use backend.kind: tinker to load it")
    meta = Path(path) / STATE_FILE
    if not meta.is_file():
        raise BackendError(f"no saved local state at {path} (expected {STATE_FILE}, written by "
                           "save_state or save_weights_for_sampler)")
    try:
        state = json.loads(meta.read_text())
    except (OSError, ValueError) as e:
        raise BackendError(f"{meta}: unreadable ({e}); save the checkpoint again") from e
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise BackendError(f"{meta}: unknown format {got!r} (expected {STATE_FORMAT})")
    if not isinstance(state.get("base_model"), str) or not isinstance(state.get("rank"), int):
        raise BackendError(f"{meta}: base_model (a string) and rank (an integer) are required")
    # Directories written before kinds existed said only whether the optimizer was saved.
    state.setdefault("kind", "state" if state.get("optimizer", True) else "sampler")
    return state


def read_adapter(engine: Engine, state_dir: Path) -> tuple[torch.Tensor, ...]:
    """The adapter tensors of a saved directory, in the engine's parameter order."""
    from safetensors.torch import load_file

    stored = load_file(str(state_dir / ADAPTER_FILE), device=str(engine.device))
    out = []
    for key, (_, p) in zip(engine.file_keys(), engine.params):
        t = stored.get(key)
        if t is None or t.shape != p.shape:
            raise BackendError(f"{state_dir / ADAPTER_FILE}: tensor {key} is missing or has the "
                               f"wrong shape for a rank-{engine.rank} adapter on {engine.name}")
        out.append(t.to(p.dtype))
    return tuple(out)


def read_optimizer(state_dir: Path, device: str) -> dict | None:
    """The saved AdamW state_dict, or None when it was saved before any optimizer step."""
    path = state_dir / OPTIMIZER_FILE
    return torch.load(path, map_location=device, weights_only=True) if path.is_file() else None


def write_state(engine: Engine, path: Path, kind: Kind, step: int, optimizer: Any = None) -> None:
    """Write the engine's adapter (and, for kind "state", the optimizer) to `path` atomically."""
    from safetensors.torch import save_file

    if (path / STATE_FILE).is_file():
        old_kind = read_state_meta(path)["kind"]
        if old_kind != kind:
            raise BackendError(f"{path} holds a saved {old_kind!r} checkpoint; saving {kind!r} weights "
                               "there would lose it — use another name")
    elif path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise BackendError(f"{path} exists and is not a saved checkpoint; refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        with engine.lock:
            tensors = {k: p.detach().contiguous() for k, (_, p) in zip(engine.file_keys(), engine.params)}
            save_file(tensors, str(tmp / ADAPTER_FILE))
            if kind == "state" and optimizer is not None:
                torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        engine.peft.peft_config[ADAPTER_NAME].save_pretrained(str(tmp))
        meta = {"format": STATE_FORMAT, "kind": kind, "base_model": engine.name, "rank": engine.rank,
                "lora_alpha": LORA_ALPHA, "step": step}
        (tmp / STATE_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        os.chmod(tmp, 0o755)
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
